"""Tar headers in the pax format, byte for byte as Python's ``tarfile`` writes them.

nixpkgs writes its layers with ``tarfile`` (``format=PAX_FORMAT``, UTF-8): a ustar header per
member, preceded by a pax extended header (``././@PaxHeader``) for every member that ustar
cannot hold (a name or link target over 100 bytes or not ASCII, an owner name over 32 bytes or
not ASCII, a number too big for its octal field). To give the same bytes, and so the same
digests, nixlayer writes the same headers; it builds them here rather than through
``tarfile.TarInfo.tobuf``, whose per-member overhead made it the most expensive part of writing
a layer of small files (2.7 of 5.8 seconds profiled for 37,000 members). What fixes the format
is nixpkgs' output: the digests nixpkgs gives for ``tests/fixtures/vectors.nix``, which the
layers must match (tests/test_layer.py); tests/test_tar.py also compares every header with the
running Python's ``tarfile`` for the members a layer holds, including long, non-ASCII and
non-UTF-8 names and big numbers.

Member types: regular files, directories (``tarfile`` appends a ``/`` to their names) and
symbolic links; all numbers integers, as a layer's are.
"""

from __future__ import annotations

import functools

BLOCKSIZE = 512
RECORDSIZE = 20 * BLOCKSIZE
NUL = b"\0"
REGTYPE, SYMTYPE, DIRTYPE = b"0", b"2", b"5"
_PAXTYPE = b"x"
_MAGIC = b"ustar\x0000"
# devmajor and devminor (empty: no member is a device), prefix (empty: tarfile's pax format never
# splits a name into it), and the zeros that fill the 512-byte block.
_TAIL = NUL * (16 + 155 + 12)
_SPACES_SUM = 8 * ord(" ")  # the checksum field, counted as spaces
# The numbers a ustar header holds in octal: uid and gid in 7 digits, size and mtime in 11.
_MAX_ID, _MAX_NUMBER = 8**7, 8**11


def header(name: str, kind: bytes, mode: int, *, uid: int = 0, gid: int = 0, size: int = 0, mtime: int = 0,
           linkname: str = "", uname: str = "", gname: str = "") -> bytes:
    """The header block(s) of one tar member: a pax extended header first when the member needs
    one, then its ustar header, exactly as ``TarFile(format=PAX_FORMAT, encoding="utf-8")``
    writes them (``TarInfo.tobuf``). ``kind``: REGTYPE, DIRTYPE or SYMTYPE; names are ``str``
    (bytes that are not UTF-8 as surrogate escapes, written back as those bytes). Numbers must
    not be negative."""
    if kind == DIRTYPE and not name.endswith("/"):
        name += "/"
    # Written out field by field, not looped over: this runs for every member of every layer.
    pax = {}
    if len(name) > 100 or not name.isascii():
        pax["path"] = name
    if len(linkname) > 100 or not linkname.isascii():
        pax["linkpath"] = linkname
    if len(uname) > 32 or not uname.isascii():
        pax["uname"] = uname
    if len(gname) > 32 or not gname.isascii():
        pax["gname"] = gname
    if uid >= _MAX_ID or gid >= _MAX_ID or size >= _MAX_NUMBER or mtime >= _MAX_NUMBER:
        # A number a pax record holds is 0 in the ustar header, as tarfile writes it.
        if uid >= _MAX_ID:
            pax["uid"], uid = str(uid), 0
        if gid >= _MAX_ID:
            pax["gid"], gid = str(gid), 0
        if size >= _MAX_NUMBER:
            pax["size"], size = str(size), 0
        if mtime >= _MAX_NUMBER:
            pax["mtime"], mtime = str(mtime), 0
    block = _ustar(name, kind, mode, uid, gid, size, mtime, linkname, uname, gname)
    return _pax_extended(pax) + block if pax else block


def end(size: int) -> bytes:
    """What a TarFile writes when it closes after ``size`` bytes of members: two zero blocks,
    then zeros up to a multiple of its record size (10240 bytes)."""
    blocks = NUL * (2 * BLOCKSIZE)
    return blocks + NUL * (-(size + len(blocks)) % RECORDSIZE)


def padding(size: int) -> bytes:
    """The zeros that follow ``size`` bytes of a member's contents, up to a whole block."""
    return NUL * (-size % BLOCKSIZE)


def _ascii(value: str, length: int) -> bytes:
    return value.encode("ascii", "replace")[:length]


@functools.lru_cache(maxsize=64)
def _owner_fields(uname: str, gname: str) -> tuple[bytes, int]:
    """The end of a ustar header from the magic on (its owner names, then zeros), and the sum of
    its bytes: the same for nearly every member of a layer, so made once."""
    fields = _MAGIC + _ascii(uname, 32).ljust(32, NUL) + _ascii(gname, 32).ljust(32, NUL) + _TAIL
    return fields, sum(fields)


def _ustar(name: str, kind: bytes, mode: int, uid: int, gid: int, size: int, mtime: int,
           linkname: str, uname: str, gname: str) -> bytes:
    name_field, link_field = _ascii(name, 100), _ascii(linkname, 100)
    numbers = b"%07o\0%07o\0%07o\0%011o\0%011o\0" % (mode & 0o7777, uid, gid, size, mtime)
    owners, owners_sum = _owner_fields(uname, gname)
    # The checksum is the sum of the block's bytes with its own field as spaces; the zeros that
    # fill the name fields add nothing to it.
    checksum = _SPACES_SUM + sum(name_field) + sum(numbers) + kind[0] + sum(link_field) + owners_sum
    return b"".join((name_field.ljust(100, NUL), numbers, b"%06o\0 " % checksum, kind, link_field.ljust(100, NUL), owners))


def _pax_extended(records: dict[str, str]) -> bytes:
    """A pax extended header (``././@PaxHeader``) holding ``records``, and its data blocks.
    Values that are not UTF-8 (surrogate escapes) are written as their bytes, after a
    ``hdrcharset=BINARY`` record, as tarfile does."""
    try:
        encoded = [(key, value.encode("utf-8")) for key, value in records.items()]
        data = b""
    except UnicodeEncodeError:
        encoded = [(key, value.encode("utf-8", "surrogateescape")) for key, value in records.items()]
        data = b"21 hdrcharset=BINARY\n"
    for key, value in encoded:
        record = b" %s=%s\n" % (key.encode("ascii"), value)
        # The record's length counts its own digits: the least length that does.
        digits = len(str(len(record)))
        if len(str(len(record) + digits)) > digits:
            digits += 1
        data += b"%d%s" % (len(record) + digits, record)
    return _pax_header_block(len(data)) + data + padding(len(data))


@functools.lru_cache(maxsize=1024)
def _pax_header_block(size: int) -> bytes:
    """The ustar header of a pax extended header of ``size`` bytes of records."""
    return _ustar("././@PaxHeader", _PAXTYPE, 0, 0, 0, size, 0, "", "", "")
