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
import struct
import zlib

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
    not be negative. :class:`Headers` makes the same headers quicker for many members of one
    owner and mtime."""
    return _headers(uid, gid, mtime, uname, gname)(name, kind, mode, size, linkname)


class Headers:
    """The headers (:func:`header`) of members that share their owner (uid, gid, uname, gname)
    and mtime, as a layer's members do: what those fields make is made once."""

    def __init__(self, *, uid: int = 0, gid: int = 0, mtime: int = 0, uname: str = "", gname: str = "") -> None:
        # The pax records of these fields, in tarfile's order (path, linkpath, uname, gname,
        # uid, gid, size, mtime); a number a pax record holds is 0 in the ustar header.
        self._owner_records: dict[str, str] = {}
        self._mtime_records: dict[str, str] = {}
        if len(uname) > 32 or not uname.isascii():
            self._owner_records["uname"] = uname
        if len(gname) > 32 or not gname.isascii():
            self._owner_records["gname"] = gname
        if uid >= _MAX_ID:
            self._owner_records["uid"], uid = str(uid), 0
        if gid >= _MAX_ID:
            self._owner_records["gid"], gid = str(gid), 0
        if mtime >= _MAX_NUMBER:
            self._mtime_records["mtime"], mtime = str(mtime), 0
        self._plain = not (self._owner_records or self._mtime_records)  # no pax record for these
        self._ids = b"%07o\0%07o\0" % (uid, gid)
        self._mtime = b"%011o\0" % mtime
        self._owners = _MAGIC + _field(uname, 32) + _field(gname, 32) + _TAIL
        self._sum = _SPACES_SUM + sum(self._ids) + sum(self._mtime) + sum(self._owners)

    def __call__(self, name: str, kind: bytes, mode: int, size: int = 0, linkname: str = "") -> bytes:
        """The header block(s) of the member ``name``; see :func:`header`."""
        if kind == DIRTYPE and not name.endswith("/"):
            name += "/"
        # Written out field by field: this runs for every member of every layer, and nearly
        # every one needs at most a path record (a long ASCII name).
        if (self._plain and linkname.isascii() and len(linkname) <= 100 and size < _MAX_NUMBER
                and name.isascii()):
            block = self._ustar(name, kind, mode, size, linkname)
            return block if len(name) <= 100 else _pax_blocks(_record("path", name.encode("ascii"))) + block
        records = {}
        if len(name) > 100 or not name.isascii():
            records["path"] = name
        if len(linkname) > 100 or not linkname.isascii():
            records["linkpath"] = linkname
        records.update(self._owner_records)
        if size >= _MAX_NUMBER:
            records["size"], size = str(size), 0
        records.update(self._mtime_records)
        block = self._ustar(name, kind, mode, size, linkname)
        return _pax_extended(records) + block if records else block

    def _ustar(self, name: str, kind: bytes, mode: int, size: int, linkname: str) -> bytes:
        name_field = name.encode("ascii", "replace")[:100]
        link_field = linkname.encode("ascii", "replace")[:100]
        mode_field = b"%07o\0" % (mode & 0o7777)
        size_field = b"%011o\0" % size
        # The checksum is the sum of the block's bytes with its own field as spaces; the NULs
        # that fill the fields add nothing to it. The sum of the name, mode, size and link name
        # (220 bytes at most) is adler32's first half less its initial 1: exact, the sum being
        # far below adler32's modulus (65521), and a loop in C rather than in Python.
        checksum = self._sum + kind[0] - 1 + (zlib.adler32(link_field, zlib.adler32(
            size_field, zlib.adler32(mode_field, zlib.adler32(name_field)))) & 0xFFFF)
        return _USTAR.pack(name_field, mode_field, self._ids, size_field, self._mtime, b"%06o\0 " % checksum, kind,
                           link_field, self._owners)


@functools.lru_cache(maxsize=64)
def _headers(uid: int, gid: int, mtime: int, uname: str, gname: str) -> Headers:
    return Headers(uid=uid, gid=gid, mtime=mtime, uname=uname, gname=gname)


# The ustar header block: name, mode, uid and gid, size, mtime, checksum, type, link name, then
# magic, owner names and the empty rest (``Headers._owners``). ``s`` fills with NULs.
_USTAR = struct.Struct("100s8s16s12s12s8sc100s255s")


def end(size: int) -> bytes:
    """What a TarFile writes when it closes after ``size`` bytes of members: two zero blocks,
    then zeros up to a multiple of its record size (10240 bytes)."""
    blocks = NUL * (2 * BLOCKSIZE)
    return blocks + NUL * (-(size + len(blocks)) % RECORDSIZE)


def padding(size: int) -> bytes:
    """The zeros that follow ``size`` bytes of a member's contents, up to a whole block."""
    return _PADDINGS[size % BLOCKSIZE]


_PADDINGS = [NUL * (-n % BLOCKSIZE) for n in range(BLOCKSIZE)]  # made once: one for every member


def _field(value: str, length: int) -> bytes:
    """A name as a ustar field holds it: ASCII (``?`` for the rest), cut or NUL-filled to ``length``."""
    return value.encode("ascii", "replace")[:length].ljust(length, NUL)


def _pax_extended(records: dict[str, str]) -> bytes:
    """A pax extended header (``././@PaxHeader``) holding ``records``, and its data blocks.
    Values that are not UTF-8 (surrogate escapes) are written as their bytes, after a
    ``hdrcharset=BINARY`` record, as tarfile does."""
    try:
        data = b"".join([_record(key, value.encode("utf-8")) for key, value in records.items()])
    except UnicodeEncodeError:
        data = b"21 hdrcharset=BINARY\n" + b"".join(
            [_record(key, value.encode("utf-8", "surrogateescape")) for key, value in records.items()])
    return _pax_blocks(data)


def _pax_blocks(data: bytes) -> bytes:
    """The pax extended header of the records ``data``: its ustar header, the records, zeros
    to a whole block."""
    return _pax_header_block(len(data)) + data + padding(len(data))


def _record(key: str, value: bytes) -> bytes:
    """One pax record, ``"<length> <key>=<value>\\n"``; its length counts its own digits (the
    least length that does)."""
    length = len(key) + len(value) + 3
    digits = len(str(length))
    if len(str(length + digits)) > digits:
        digits += 1
    return b"%d %s=%s\n" % (length + digits, key.encode("ascii"), value)


@functools.lru_cache(maxsize=1024)
def _pax_header_block(size: int) -> bytes:
    """The ustar header of a pax extended header of ``size`` bytes of records."""
    return _headers(0, 0, 0, "", "")._ustar("././@PaxHeader", _PAXTYPE, 0, size, "")
