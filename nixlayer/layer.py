"""Reproducible layer tarballs, written once, with their digests computed on the way.

A store-path layer holds ``/nix``, ``/nix/store`` and then each store path with every file below
it, exactly as nixpkgs ``stream_layered_image.py`` (``archive_paths_to``) writes it, so the same
store paths and settings give the same bytes and diff_id as nixpkgs:

- POSIX.1-2001 (pax) tar as Python's ``tarfile`` writes it, absolute member names;
- the parent directories of the store directory first, mode 0755;
- each store path in the order given, then its files depth-first, sorted by name (the order of
  ``sorted(Path.rglob("*"))``); symlinks are stored, never followed;
- every entry gets the settings' mtime, uid, gid, uname and gname; file modes are kept;
- hard links are stored as regular files;
- names and symlink targets are their bytes on disk (read as UTF-8, other bytes kept as they
  are), whatever the locale, as nixpkgs writes them in its UTF-8 locale.

Files are read as they were listed (no symlink followed, the same inode and size before and
after reading, directories checked likewise, see :func:`read_directory`): a store path that
changes under a build is refused, naming the path, rather than let another file of the host in.

Permission rules (``nixlayer.perms``, nix2container's ``perms``) may then set the mode and owner
of the entries whose names they match, as the tar is written.

Unlike nixpkgs, which tars each layer twice (once to learn its size and checksum), the tar is
written once: the diff_id (sha256 of the uncompressed tar) and size, and the compressed blob's
digest and size, are computed while the bytes stream to the output.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import posixpath
import stat
import tarfile
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterable, Iterator, Sequence

from nixlayer.compression import Compression
from nixlayer.errors import NixlayerError
from nixlayer.perms import Matcher, PermRule
from nixlayer.storepath import DEFAULT_STORE_DIR, normalize_store_dir, on_disk

COPY_BUFFER = 1 << 20
TAR_ENCODING = "utf-8"
MAX_ID = 2**32 - 1  # the largest uid or gid Linux (uid_t, gid_t) has
Progress = Callable[[int, int], None]
"""Called as ``progress(bytes_done, bytes_total)`` with file-content bytes, as a layer is written."""


@dataclass(frozen=True)
class LayerSettings:
    """What every tar entry of a layer gets: mtime (seconds since the epoch) and owner.

    nixpkgs defaults: mtime 1 (1970-01-01T00:00:01Z), uid 0, gid 0, uname and gname ``root``.
    """

    mtime: int = 1
    uid: int = 0
    gid: int = 0
    uname: str = "root"
    gname: str = "root"

    def __post_init__(self) -> None:
        if self.mtime < 0:
            raise NixlayerError("layer setting mtime must not be negative")
        for name in ("uid", "gid"):
            if not 0 <= getattr(self, name) <= MAX_ID:
                raise NixlayerError(f"layer setting {name} must be between 0 and {MAX_ID} (a Linux {name}), "
                                    f"not {getattr(self, name)}")

    @property
    def key(self) -> str:
        """A string naming every setting that changes the layer's bytes."""
        return f"m{self.mtime}-u{self.uid}-g{self.gid}-{self.uname}-{self.gname}"


@dataclass(frozen=True)
class LayerBlob:
    """A written layer: its uncompressed identity and the blob as stored.

    diff_id: ``sha256:<hex>`` of the uncompressed tar (OCI image-spec config ``rootfs.diff_ids``).
    size: bytes of the uncompressed tar.
    digest: ``sha256:<hex>`` of the blob as stored (equals diff_id when uncompressed).
    blob_size: bytes of the stored blob.
    media_type: the OCI layer media type of the blob.
    """

    diff_id: str
    size: int
    digest: str
    blob_size: int
    media_type: str


@dataclass(frozen=True)
class Entry:
    """One tar member to write: its name in the image and, for files and symlinks, its source.

    ``uid``, ``gid``, ``uname``, ``gname``: its own owner, where it has one (permission rules,
    fakeroot); None takes the layer settings'.
    """

    name: str
    kind: str  # "dir", "file" or "symlink"
    mode: int = 0o755
    size: int = 0
    source: bytes | str | None = None
    target: str = ""
    inode: tuple[int, int] | None = None  # a file's (st_dev, st_ino) when listed, checked when opened
    uid: int | None = None
    gid: int | None = None
    uname: str | None = None
    gname: str | None = None


def with_perms(entry: Entry, matcher: Matcher, source: str | None) -> Entry:
    """``entry`` with what ``matcher``'s rules set on it (``source``: the store path it comes
    from, None for none); a symlink keeps its mode."""
    owner = matcher.owner(entry.name, source) if matcher else None
    if owner is None:
        return entry
    changes = {k: v for k, v in dataclasses.asdict(owner).items() if v is not None}
    if entry.kind == "symlink":
        changes.pop("mode", None)
    return dataclasses.replace(entry, **changes)


class _DigestingWriter:
    """The file object tarfile writes to: hashes the tar, compresses it, hashes the blob."""

    def __init__(self, out: BinaryIO, compression: Compression) -> None:
        self._out = out
        self._media_type = compression.media_type
        self._compressor = compression.compressor()
        self._diff = hashlib.sha256()
        # Uncompressed, the blob is the tar: one hash serves for both digests.
        self._blob = self._diff if compression.name == "none" else hashlib.sha256()
        self.size = 0
        self.blob_size = 0

    def tell(self) -> int:
        """Bytes of tar written so far (TarFile in mode "w" asks once, at the start)."""
        return self.size

    def write(self, data: bytes) -> int:
        self._diff.update(data)
        self.size += len(data)
        self._emit(self._compressor.compress(data))
        return len(data)

    def _emit(self, data: bytes) -> None:
        if data:
            if self._blob is not self._diff:
                self._blob.update(data)
            self.blob_size += len(data)
            try:
                self._out.write(data)
            except OSError as e:  # the blob's side (a full disk), not the store path's
                raise NixlayerError(f"cannot write layer blob: {e.strerror or e}") from None

    def finish(self) -> LayerBlob:
        """Flush the compressor; the layer's digests and sizes."""
        self._emit(self._compressor.flush())
        return LayerBlob(
            diff_id="sha256:" + self._diff.hexdigest(),
            size=self.size,
            digest="sha256:" + self._blob.hexdigest(),
            blob_size=self.blob_size,
            media_type=self._media_type,
        )


def store_path_entries(
    path: str, store_root: str = "/", store_dir: str = DEFAULT_STORE_DIR
) -> Iterator[Entry]:
    """The entries of one store path, in nixpkgs order: the path itself, then depth-first by name.

    ``path`` is the store path as seen in the image (``/nix/store/HASH-NAME``); its files are read
    from ``store_root`` joined with it (a chroot store or a copy). Raises NixlayerError for a
    missing path, a FIFO, socket or device file, an unreadable directory, or a directory that
    changed while it was walked (see :func:`read_directory`), naming the file.
    """
    store_dir = normalize_store_dir(store_dir)
    if posixpath.dirname(posixpath.normpath(path)) != store_dir:
        raise NixlayerError(f"{path} is not in the store directory {store_dir}")
    yield from tree_entries(path, on_disk(store_root, path))


def tree_entries(name: str, disk: str | bytes) -> Iterator[Entry]:
    """The entries of the file tree at ``disk`` (a file, symlink or directory), named ``name``
    and below in the image: itself, then depth-first by name; modes kept, symlinks not
    followed, directories read with :func:`read_directory`. Raises NixlayerError for a missing
    or unreadable file, a FIFO, socket or device, or a tree that changes while it is walked."""
    disk = os.fsencode(disk)
    try:
        st = os.lstat(disk)
    except FileNotFoundError:
        raise NixlayerError(f"{os.fsdecode(disk)} does not exist") from None
    except OSError as e:
        raise NixlayerError(f"cannot read {os.fsdecode(disk)}: {e.strerror}") from None
    # Depth-first without recursion (a tree may be deeper than Python's recursion limit): a
    # stack of the directories being walked, each with its children still to go, last first.
    stack = [[(name, disk, st)]]
    while stack:
        if not stack[-1]:
            stack.pop()
            continue
        name, disk, st = stack[-1].pop()
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            yield Entry(name, "symlink", mode, target=_readlink(disk))
        elif stat.S_ISREG(st.st_mode):
            yield Entry(name, "file", mode, size=st.st_size, source=disk, inode=(st.st_dev, st.st_ino))
        elif stat.S_ISDIR(st.st_mode):
            yield Entry(name, "dir", mode)
            children = read_directory(disk, st)
            stack.append([(f"{name}/{child}", child_disk, child_st) for child, child_disk, child_st in reversed(children)])
        else:
            raise NixlayerError(f"{os.fsdecode(disk)} is a FIFO, socket or device file; a layer cannot hold one")


def file_name(name: bytes) -> str:
    """A file name as a layer names it: its bytes on disk read as UTF-8, bytes that are not
    UTF-8 kept as they are (``surrogateescape``; the tar header writes the same bytes back), so
    the name, its sort order and the layer are the same in every locale. nixpkgs' Python reads
    names the same way in the UTF-8 locales it builds in."""
    return name.decode("utf-8", "surrogateescape")


def _readlink(disk: bytes) -> str:
    try:
        return file_name(os.readlink(disk))
    except OSError as e:
        raise NixlayerError(f"cannot read symlink {os.fsdecode(disk)}: {e.strerror}") from None


def read_directory(disk: bytes, listed: os.stat_result) -> list[tuple[str, bytes, os.stat_result]]:
    """The children of the directory ``disk`` (a path as bytes) that was ``listed`` (its lstat
    from its parent's listing), sorted by name as nixpkgs sorts them: each as (its name, see
    :func:`file_name`; its path on disk, bytes; its lstat).

    The directory is opened without following a symlink and checked to be the one listed
    (device and inode) before it is read, and its children are looked at relative to it: a
    directory swapped for a symlink, or a parent swapped under it, is never walked into.
    Raises NixlayerError naming the directory when it cannot be read or has changed.
    """
    where = os.fsdecode(disk)
    try:
        fd = os.open(disk, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
            raise NixlayerError(_changed(where, "it is no longer that directory")) from None
        raise NixlayerError(f"cannot read directory {where}: {e.strerror}") from None
    try:
        if not _same_file(os.fstat(fd), listed):
            raise NixlayerError(_changed(where, "it is another directory now"))
        names = sorted((os.fsencode(name) for name in os.listdir(fd)), key=file_name)
        children = []
        for name in names:
            try:
                children.append((file_name(name), os.path.join(disk, name), os.lstat(name, dir_fd=fd)))
            except FileNotFoundError:
                raise NixlayerError(_changed(os.fsdecode(os.path.join(disk, name)), "it was removed")) from None
        return children
    except OSError as e:
        raise NixlayerError(f"cannot read directory {where}: {e.strerror}") from None
    finally:
        os.close(fd)


def _same_file(st: os.stat_result, listed: os.stat_result) -> bool:
    return (st.st_dev, st.st_ino, stat.S_IFMT(st.st_mode)) == (listed.st_dev, listed.st_ino, stat.S_IFMT(listed.st_mode))


def _changed(path: str, how: str) -> str:
    return (f"{path} changed while the layer was written ({how}): nothing was written; build again when"
            " nothing writes to the store path (store paths are never changed by Nix)")


def parent_dirs(store_dir: str = DEFAULT_STORE_DIR) -> list[Entry]:
    """The directories leading to the store directory (``/nix``, ``/nix/store``), mode 0755."""
    parts = normalize_store_dir(store_dir).strip("/").split("/")
    return [Entry("/" + "/".join(parts[: i + 1]), "dir", 0o755) for i in range(len(parts))]


def _tarinfo(entry: Entry, settings: LayerSettings) -> tarfile.TarInfo:
    info = tarfile.TarInfo(entry.name)
    info.mode = entry.mode
    info.mtime = settings.mtime
    info.uid = settings.uid if entry.uid is None else entry.uid
    info.gid = settings.gid if entry.gid is None else entry.gid
    info.uname = settings.uname if entry.uname is None else entry.uname
    info.gname = settings.gname if entry.gname is None else entry.gname
    if entry.kind == "dir":
        info.type = tarfile.DIRTYPE
    elif entry.kind == "symlink":
        info.type = tarfile.SYMTYPE
        info.linkname = entry.target
    else:
        info.size = entry.size
    return info


def encode_header(info: tarfile.TarInfo) -> bytes:
    """The tar header block(s) of ``info`` (a pax header first when a field does not fit
    ustar), exactly as a TarFile in pax format, UTF-8, writes them."""
    return info.tobuf(tarfile.PAX_FORMAT, TAR_ENCODING, "surrogateescape")


def tar_end(size: int) -> bytes:
    """What a TarFile writes when it closes after ``size`` bytes of members: two zero blocks,
    then zeros up to a multiple of its record size (10240 bytes)."""
    end = tarfile.NUL * (2 * tarfile.BLOCKSIZE)
    return end + tarfile.NUL * (-(size + len(end)) % tarfile.RECORDSIZE)


def encode_entry(entry: Entry, settings: LayerSettings) -> bytes:
    """The tar header block(s) of a directory or symlink ``entry``, exactly as
    ``write_entries`` writes them."""
    if entry.kind == "file":
        raise ValueError("encode_entry takes directories and symlinks; files have contents")
    return encode_header(_tarinfo(entry, settings))


def write_encoded(members: Iterable[bytes], out: BinaryIO, compression: Compression = Compression()) -> LayerBlob:
    """Write a tar of ``members`` (each from :func:`encode_entry`) to ``out``, compressed, and
    return the layer's digests. The archive ends as Python's tarfile ends one (:func:`tar_end`),
    so the bytes equal those ``write_entries`` gives for the same entries. Raises NixlayerError
    when ``out`` fails."""
    writer = _DigestingWriter(out, compression)
    for member in members:
        writer.write(member)
    writer.write(tar_end(writer.size))
    return writer.finish()


def write_entries(
    entries: Iterable[Entry],
    out: BinaryIO,
    settings: LayerSettings,
    compression: Compression = Compression(),
    progress: Progress | None = None,
) -> LayerBlob:
    """Write ``entries`` as one tar to ``out``, compressed, and return the layer's digests.

    The entries are listed first (so errors such as a FIFO surface before any byte is written
    and the progress total is known), then written in one pass. File contents are streamed in
    1 MiB pieces; memory does not grow with file size. Files of 8 GiB and more get a pax size
    record. ``progress(done, total)`` is called with content bytes after each piece read.

    A file is opened without following symlinks and must be the file listed (type, device,
    inode, size), before and after it is read. Raises NixlayerError naming the file if it
    cannot be read or has changed since it was listed (the caller discards what was written),
    or "cannot write layer blob" when ``out`` fails.
    """
    entries = list(entries)
    total = sum(e.size for e in entries)
    done = 0
    writer = _DigestingWriter(out, compression)
    with tarfile.open(
        fileobj=writer, mode="w", format=tarfile.PAX_FORMAT, encoding=TAR_ENCODING
    ) as tar:
        tar.copybufsize = COPY_BUFFER
        for entry in entries:
            info = _tarinfo(entry, settings)
            if entry.kind != "file":
                tar.addfile(info)
                continue
            with _open_listed(entry) as f:
                try:
                    tar.addfile(info, f if progress is None else _ProgressReader(f, done, total, progress))
                    _check_unchanged(entry, os.fstat(f.fileno()), "was written to while it was read")
                except OSError as e:
                    raise NixlayerError(f"cannot read {os.fsdecode(entry.source)}: {e.strerror or e}") from None
            done += entry.size
    return writer.finish()


def _open_listed(entry: Entry) -> BinaryIO:
    """The file ``entry`` lists, opened for reading without following a symlink (nor blocking
    on a FIFO), once checked to be the regular file listed: same device and inode, same size.
    Raises NixlayerError naming it when it cannot be opened or is no longer that file."""
    assert entry.source is not None
    where = os.fsdecode(entry.source)
    try:
        fd = os.open(entry.source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NixlayerError(_changed(where, "it is a symlink now")) from None
        if e.errno == errno.ENOENT:
            raise NixlayerError(_changed(where, "it was removed")) from None
        raise NixlayerError(f"cannot read {where}: {e.strerror or e}") from None
    f = os.fdopen(fd, "rb")
    try:
        _check_unchanged(entry, os.fstat(fd), "it is another file now")
    except BaseException:
        f.close()
        raise
    return f


def _check_unchanged(entry: Entry, st: os.stat_result, how: str) -> None:
    """Raise NixlayerError unless ``st`` is the regular file ``entry`` listed, at its size."""
    if not stat.S_ISREG(st.st_mode):
        how = "it is not a regular file now"
    elif entry.inode is None or (st.st_dev, st.st_ino) == entry.inode:
        if st.st_size == entry.size:
            return
        how = f"{st.st_size} bytes now, {entry.size} when listed"
    raise NixlayerError(_changed(os.fsdecode(entry.source), how))


class _ProgressReader:
    """A file as ``tarfile`` reads it, in pieces, telling ``progress(done, total)`` the content
    bytes of the layer read so far (``done``: before this file) after each piece."""

    def __init__(self, f: BinaryIO, done: int, total: int, progress: Progress) -> None:
        self._f, self._done, self._total, self._progress = f, done, total, progress

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self._done += len(data)
        self._progress(self._done, self._total)
        return data


def write_store_layer(
    paths: Iterable[str],
    out: BinaryIO,
    settings: LayerSettings = LayerSettings(),
    compression: Compression = Compression(),
    store_root: str = "/",
    store_dir: str = DEFAULT_STORE_DIR,
    progress: Progress | None = None,
    perms: Sequence[PermRule] = (),
) -> LayerBlob:
    """Write the layer of ``paths`` (store paths, in layer order) to ``out``; see the module doc.
    ``perms``: the permission rules to apply (``nixlayer.perms``).

    Returns the LayerBlob (diff_id, size, digest, blob_size, media_type). Raises NixlayerError
    naming the culprit for a path outside ``store_dir``, a missing path, a FIFO, socket or
    device file, or an unreadable file; the caller discards what was written to ``out``.
    """
    matcher = Matcher(perms)
    entries = [with_perms(entry, matcher, None) for entry in parent_dirs(store_dir)]
    for path in paths:
        entries.extend(with_perms(entry, matcher, path) for entry in store_path_entries(path, store_root, store_dir))
    return write_entries(entries, out, settings, compression, progress)
