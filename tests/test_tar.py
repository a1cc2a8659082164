"""nixlayer.tar writes the headers Python's tarfile writes (pax format, UTF-8), byte for byte:
the layers' digests equal nixpkgs' only as long as this holds."""

from __future__ import annotations

import itertools
import random
import tarfile

import pytest

from nixlayer import tar

NAME_PIECES = ["a", "b", "/", "é", "\udcff", "x" * 30, "ü" * 10, "-", ".", "日本"]
NUMBERS = {
    "uid": [0, 1000, 8**7 - 1, 8**7, 2**32 - 1],
    "gid": [0, 8**7],
    "size": [0, 5, 8**11 - 1, 8**11, 2**40],
    "mtime": [0, 1, 8**11 - 1, 8**11],
}
OWNER_NAMES = ["root", "", "a" * 32, "a" * 33, "ü", "\udcfe"]


def tarfile_header(name, kind, mode, uid, gid, size, mtime, linkname, uname, gname) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.size, info.mtime = kind, mode, uid, gid, size, mtime
    info.linkname, info.uname, info.gname = linkname, uname, gname
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def test_random_members_equal_tarfile() -> None:
    rng = random.Random(20261206)
    for _ in range(5000):
        kind = rng.choice([tar.REGTYPE, tar.DIRTYPE, tar.SYMTYPE])
        fields = dict(
            name="/" + "".join(rng.choice(NAME_PIECES) for _ in range(rng.randrange(1, 14))),
            kind=kind,
            mode=rng.choice([0o755, 0o644, 0o4755, 0o1777, 0o100644]),
            **{key: rng.choice(values) for key, values in NUMBERS.items()},
            linkname="".join(rng.choice(NAME_PIECES) for _ in range(rng.randrange(0, 14))) if kind == tar.SYMTYPE else "",
            uname=rng.choice(OWNER_NAMES),
            gname=rng.choice(OWNER_NAMES),
        )
        if kind != tar.REGTYPE:
            fields["size"] = 0
        expected = tarfile_header(**fields)
        name, kind, mode = fields.pop("name"), fields.pop("kind"), fields.pop("mode")
        assert tar.header(name, kind, mode, **fields) == expected, (name, kind, fields)


@pytest.mark.parametrize("length", range(90, 112))
def test_pax_record_lengths_around_their_digit_counts(length: int) -> None:
    """A pax record's length counts its own digits: names whose record is 99-101 bytes long
    (where two lengths could be self-consistent) are written as tarfile writes them."""
    for name in ("/" + "n" * (length - 1), "/" + "é" * (length // 2)):
        for kind in (tar.REGTYPE, tar.DIRTYPE):
            assert tar.header(name, kind, 0o644, mtime=1) == tarfile_header(name, kind, 0o644, 0, 0, 0, 1, "", "", "")


@pytest.mark.parametrize("owner", [dict(), dict(uid=1000, gid=100, mtime=1, uname="root", gname="root"),
                                   dict(uid=8**7, mtime=8**11, uname="u" * 33, gname="é")])
def test_names_and_link_targets_around_100_characters(owner: dict) -> None:
    """Where ustar's 100-byte name and link fields end (a directory's name counting the ``/``
    tarfile appends), with one :class:`tar.Headers` reused for every member, as a layer uses
    its settings' one: the quick path (owner and mtime fit ustar) and the other."""
    headers = tar.Headers(**owner)
    for length in range(97, 104):
        for name, target in (("/" + "n" * (length - 1), "t"), ("/é" + "n" * (length - 2), "é" * length),
                             ("/a", "t" * length), ("/a", "t" * (length - 1) + "\udcff")):
            for kind in (tar.REGTYPE, tar.DIRTYPE, tar.SYMTYPE):
                link = target if kind == tar.SYMTYPE else ""
                fields = {"uid": 0, "gid": 0, "mtime": 0, "uname": "", "gname": "", **owner}
                expected = tarfile_header(name, kind, 0o755, size=0, linkname=link, **fields)
                assert headers(name, kind, 0o755, 0, link) == expected, (name, kind, link)


def test_end_and_padding_equal_tarfile() -> None:
    import io

    for sizes in itertools.product([0, 1, 511, 512, 513, 10_000], repeat=2):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8") as archive:
            for number, size in enumerate(sizes):
                info = tarfile.TarInfo(f"/f{number}")
                info.size = size
                archive.addfile(info, io.BytesIO(b"z" * size))
        ours = b"".join(tar.header(f"/f{number}", tar.REGTYPE, 0o644, size=size) + b"z" * size + tar.padding(size)
                        for number, size in enumerate(sizes))
        assert ours + tar.end(len(ours)) == buffer.getvalue()
