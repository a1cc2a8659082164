"""The customisation layer: symlinks at the image root into each ``contents`` store path.

Follows nixpkgs ``buildLayeredImage``, whose customisation layer is a ``symlinkJoin`` of the
contents: every directory found in a contents store path becomes a real directory at the same
place under ``/`` (directories present in several contents are merged), and everything else
(a file or a symlink) becomes a symlink to its place in the store, for example
``/bin/git -> /nix/store/...-git/bin/git``. Unlike ``symlinkJoin``, which silently keeps the
first of two contents that provide the same file, that is an error naming both.

The layer is reproducible: entries sorted by name, the settings' owner and mtime on each.

Each content's entries are encoded once and kept in a *fragment* file (:class:`Fragments`), by
store path and settings: a store path never changes, so when one content of an image changes,
a rebuild walks and encodes that content only, and the layer is a merge of the fragments.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import json
import operator
import os
import shutil
import stat
import tempfile
from typing import BinaryIO, Iterable, Iterator, Mapping

from nixlayer.atomic import atomic_file
from nixlayer.compression import Compression
from nixlayer.errors import NixlayerError
from nixlayer.layer import Entry, LayerBlob, LayerSettings, NarSize, encode_entry, read_directory, write_encoded
from nixlayer.spec import SPEC_SUFFIX
from nixlayer.storepath import on_disk

# Part of the fragments' directory key: a new format never reads an old file. 3: names are
# their bytes on disk in every locale (2 named them in the builder's locale).
FRAGMENT_FORMAT = 3
FragmentRows = list[list]
"""A content's entries in layer order, each as [name, kind, length]: ``kind`` "dir" or
"symlink", ``length`` the bytes of its encoded tar header(s) in the content's fragment file,
where they follow one another from offset 0 (0 for entries walked, not read from a fragment)."""
_DIGEST_LINE = 64 + 1  # sha256 hex and a newline
_TRAILER = len(b"%020d\n" % 0)
_READ_RUN = 1 << 20  # bytes of consecutive headers read from a fragment at once (one header more at most)


def _content_dir(content: str, store_root: str) -> tuple[bytes, os.stat_result]:
    """Where ``content`` is on disk (bytes) and its lstat; raises NixlayerError unless it is a
    directory there."""
    disk = os.fsencode(on_disk(store_root, content))
    try:
        st = os.lstat(disk)
    except OSError:
        raise NixlayerError(f"contents path {content} does not exist") from None
    if not stat.S_ISDIR(st.st_mode) and content.endswith(SPEC_SUFFIX):
        raise NixlayerError(f"contents path {content} is an image spec, not a package: give it as --spec {content}")
    if not stat.S_ISDIR(st.st_mode):
        raise NixlayerError(f"contents path {content} is not a directory; it cannot be joined at /: put a"
                            " single-file store path into the image through a package or the config")
    return disk, st


def content_entries(content: str, store_root: str = "/", nar_size: int | None = None) -> list[Entry]:
    """The entries one contents store path gives the layer, in layer order (by name, compared
    component by component: a depth-first walk by name): each directory below it as a
    directory (mode 0755), everything else as a symlink (mode 0777) to its place in the store.
    Names are their bytes on disk, in every locale, and directories are read as
    ``nixlayer.layer.read_directory`` reads them (never through a symlink swapped in).
    ``nar_size``: the closure's NAR size of ``content``, which its files must make
    (``nixlayer.layer.NarSize``; None: not checked).

    Raises NixlayerError when the path is missing or not a directory, a directory below it
    cannot be read or changed while it was walked, or its NAR size is not ``nar_size``.
    """
    entries: list[Entry] = []
    disk, st = _content_dir(content, store_root)
    nar = NarSize(content)
    nar.add(len(content.rpartition("/")[2]), "dir", 0, st.st_mode)  # a store path's name is ASCII
    # Depth-first without recursion: what is still to go, last first.
    stack = [(f"/{child}", *rest) for child, *rest in reversed(read_directory(disk, st))]
    while stack:
        name, disk, st = stack.pop()
        if stat.S_ISDIR(st.st_mode):
            entries.append(Entry(name, "dir", 0o755))
            stack.extend((f"{name}/{child}", *rest) for child, *rest in reversed(read_directory(disk, st)))
            kind = "dir"
        else:
            entries.append(Entry(name, "symlink", 0o777, target=content + name))
            kind = "symlink" if stat.S_ISLNK(st.st_mode) else "file"
        # The name's bytes are the end of its path on disk; a symlink's size is its target's.
        nar.add(len(disk) - disk.rfind(b"/") - 1, kind, st.st_size, st.st_mode)
    if nar_size is not None:
        nar.check(nar_size)
    return entries


class _Fragment:
    """A fragment file checked and read: its path and rows."""

    def __init__(self, path: str, rows: FragmentRows) -> None:
        self.path, self.rows = path, rows


class _Readers:
    """Reads pieces of fragment files, keeping at most ``MAX_OPEN`` of them open (the least
    recently used is closed), so an image of thousands of contents does not run out of file
    descriptors."""

    MAX_OPEN = 64

    def __init__(self) -> None:
        self._open: collections.OrderedDict[str, int] = collections.OrderedDict()

    def read(self, path: str, offset: int, length: int) -> bytes:
        fd = self._open.pop(path, None)
        if fd is None:
            if len(self._open) >= self.MAX_OPEN:
                os.close(self._open.popitem(last=False)[1])
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as e:
                raise NixlayerError(f"cannot read customisation fragment {path}: {e.strerror}") from None
        self._open[path] = fd
        data = os.pread(fd, length, offset)
        if len(data) != length:
            raise NixlayerError(f"customisation fragment {path} is shorter than its index says")
        return data

    def close(self) -> None:
        while self._open:
            os.close(self._open.popitem()[1])


class Fragments:
    """Fragment files under ``directory``: each content's entries, encoded with ``settings``.

    One file per contents store path: the entries' tar headers (:func:`nixlayer.layer.encode_entry`)
    one after another in layer order; then the index, one JSON line ``[content, [[name, kind,
    length], ...]]``; then the sha256 (hex) of everything before it, a line; then the index's
    offset, 20 digits and a newline. Files are written atomically and never change; one that
    is missing, not a regular file, does not match its sha256, or is of another content is
    made again. Fragments read in this process are kept (a build reads each twice: the check,
    then the layer).
    """

    def __init__(self, directory: str, settings: LayerSettings) -> None:
        self.directory = directory
        self.settings = settings

    def path(self, content: str) -> str:
        """The fragment file of ``content``."""
        return os.path.join(self.directory, os.path.basename(content))

    def read(self, content: str, store_root: str = "/", nar_size: int | None = None) -> _Fragment:
        """The fragment of ``content``, made first if it is missing or damaged (its files
        checked against ``nar_size``, see :func:`content_entries`). Raises NixlayerError as
        :func:`content_entries` does (also when a fragment exists: the contents path must
        still be there), or when the fragment cannot be written."""
        _content_dir(content, store_root)
        path = self.path(content)
        fragment = _read(path, content)
        if fragment is None:
            entries = content_entries(content, store_root, nar_size)
            try:
                os.makedirs(self.directory, exist_ok=True)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)  # damage: a directory where the file belongs
            except OSError as e:
                raise NixlayerError(f"cannot write customisation fragment {path}: {e.strerror}") from None
            rows, digest = [], hashlib.sha256()
            with atomic_file(path) as f:
                for entry in entries:
                    encoded = encode_entry(entry, self.settings)
                    rows.append([entry.name, entry.kind, len(encoded)])
                    digest.update(encoded)
                    f.write(encoded)
                start = f.tell()
                index = json.dumps([content, rows]).encode() + b"\n"
                digest.update(index)
                f.write(index + digest.hexdigest().encode() + b"\n" + b"%020d\n" % start)
            fragment = _read(path, content)
            if fragment is None:
                raise NixlayerError(f"customisation fragment {path} does not read back as written")
        return fragment


def _read(path: str, content: str) -> _Fragment | None:
    """The fragment of ``content`` in the file at ``path``, or None if it is missing or damaged."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None  # (never opened: a FIFO there would hang the reader)
    return _parse(path, content, st.st_ino, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _parse(path: str, content: str, inode: int, size: int, mtime_ns: int) -> _Fragment | None:
    """The fragment of ``content`` in the file at ``path`` as it is (inode, size, mtime), or
    None if it is damaged.

    Its sha256 covers the headers and the index as stored, so once it matches, the rows are
    the ones written (in layer order, each name once) and only their sum is checked."""
    try:
        with open(path, "rb") as f:
            f.seek(size - _TRAILER)
            start = int(f.read(_TRAILER))
            end = size - _TRAILER - _DIGEST_LINE
            if not 0 <= start < end:
                return None
            f.seek(start)
            tail = f.read(size - start)
            index, digest = tail[:end - start], tail[end - start:end - start + 64].decode()
            f.seek(0)
            if hashlib.file_digest(_Prefix(f, end), "sha256").hexdigest() != digest:
                return None
        of, rows = json.loads(index)
        if of != content or sum(length for _, _, length in rows) != start:
            return None
    except (OSError, ValueError, TypeError, RecursionError):
        return None
    return _Fragment(path, rows)


class _Prefix:
    """The first ``size`` bytes of a binary file, as a file to read (for hashlib.file_digest)."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self._f, self._left = f, size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        view = memoryview(buffer)[:self._left]
        count = self._f.readinto(view)
        self._left -= count
        return count


def _merge(contents: list[str], rows: list[FragmentRows]) -> list[tuple[int, str, str, int, int]]:
    """The layer's entries, from the contents' rows: (content number, name, kind, offset,
    length), in layer order; a directory several contents hold comes once. Raises
    NixlayerError when two contents provide the same path and it is not a directory in both."""
    keyed = []
    for number, content_rows in enumerate(rows):
        offset = 0
        for name, kind, length in content_rows:
            keyed.append((name.split("/"), number, name, kind, offset, length))
            offset += length
    keyed.sort(key=operator.itemgetter(0))  # stable: a name several contents hold, in contents order
    merged: list[tuple[int, str, str, int, int]] = []
    for _, number, name, kind, offset, length in keyed:
        if merged and merged[-1][1] == name:
            if (merged[-1][2], kind) != ("dir", "dir"):
                raise NixlayerError(f"contents {contents[merged[-1][0]]} and {contents[number]} both provide "
                                    f"{name}; remove one from contents")
            continue
        merged.append((number, name, kind, offset, length))
    return merged


@contextlib.contextmanager
def _fragments(settings: LayerSettings, directory: str | None) -> Iterator[Fragments]:
    """Fragments in ``directory``, or in a temporary directory for this call if it is None."""
    if directory is not None:
        yield Fragments(directory, settings)
        return
    with tempfile.TemporaryDirectory(prefix="nixlayer-fragments-") as temporary:
        yield Fragments(temporary, settings)


def _rows(contents: list[str], store_root: str, settings: LayerSettings, fragments_dir: str | None) -> list[FragmentRows]:
    """Each content's rows: from its fragment in ``fragments_dir`` if it has a sound one there,
    else walked (lengths 0); nothing is written. Raises NixlayerError as :func:`content_entries`."""
    fragments = None if fragments_dir is None else Fragments(fragments_dir, settings)
    rows = []
    for content in contents:
        _content_dir(content, store_root)
        fragment = None if fragments is None else _read(fragments.path(content), content)
        rows.append(fragment.rows if fragment is not None else
                    [[e.name, e.kind, 0] for e in content_entries(content, store_root)])
    return rows


def customisation_entries(
    contents: Iterable[str],
    store_root: str = "/",
    settings: LayerSettings = LayerSettings(),
    fragments_dir: str | None = None,
) -> list[Entry]:
    """The tar entries of the customisation layer for ``contents`` (store paths, image order).

    Directories get mode 0755, symlinks mode 0777. A content's entries are read from its
    fragment in ``fragments_dir`` if it has a sound one there, else walked; nothing is written.
    Raises NixlayerError as :func:`check_contents`.
    """
    contents = list(contents)
    return [Entry(name, kind, 0o755) if kind == "dir" else Entry(name, kind, 0o777, target=contents[number] + name)
            for number, name, kind, _, _ in _merge(contents, _rows(contents, store_root, settings, fragments_dir))]


def check_contents(
    contents: Iterable[str],
    store_root: str = "/",
    settings: LayerSettings = LayerSettings(),
    fragments_dir: str | None = None,
) -> None:
    """Check that ``contents`` (store paths) make a customisation layer, as
    :func:`customisation_entries` reads them, without listing its entries (a build checks
    before it writes any layer). Raises NixlayerError when a contents path is missing or not a
    directory, or when two contents provide the same non-directory path.
    """
    contents = list(contents)
    _merge(contents, _rows(contents, store_root, settings, fragments_dir))


def write_customisation_layer(
    contents: Iterable[str],
    out: BinaryIO,
    settings: LayerSettings = LayerSettings(),
    compression: Compression = Compression(),
    store_root: str = "/",
    fragments_dir: str | None = None,
    nar_sizes: Mapping[str, int] | None = None,
) -> LayerBlob:
    """Write the customisation layer of ``contents`` to ``out``; return its digests.

    The layer is merged from the contents' fragments in ``fragments_dir`` (made there for the
    contents that have none, each checked against its NAR size in ``nar_sizes`` if there;
    a temporary directory if None): the entries are ordered first, then their headers are
    copied from the fragments in runs of about 1 MiB. Raises NixlayerError as
    :func:`check_contents`, or for a NAR size that is not the closure's, before writing a byte.
    """
    contents = list(contents)
    nar_sizes = nar_sizes or {}
    readers = _Readers()
    with _fragments(settings, fragments_dir) as fragments, contextlib.closing(readers):
        read = [fragments.read(content, store_root, nar_sizes.get(content)) for content in contents]

        merged = _merge(contents, [fragment.rows for fragment in read])  # conflicts raise here

        def members() -> Iterator[bytes]:
            """The headers in layer order, read in runs of consecutive ones of one fragment."""
            run: list[int] | None = None  # [content number, offset, length]
            for number, _, _, offset, length in merged:
                if run is not None and run[0] == number and run[1] + run[2] == offset and run[2] < _READ_RUN:
                    run[2] += length
                    continue
                if run is not None:
                    yield readers.read(read[run[0]].path, run[1], run[2])
                run = [number, offset, length]
            if run is not None:
                yield readers.read(read[run[0]].path, run[1], run[2])

        return write_encoded(members(), out, compression)
