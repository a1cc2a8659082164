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
import functools
import hashlib
import os
import queue
import stat
import sys
import threading
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterable, Iterator, Mapping, Sequence

from nixlayer import tar
from nixlayer.compression import Compression
from nixlayer.errors import NixlayerError
from nixlayer.perms import Matcher, PermRule
from nixlayer.storepath import DEFAULT_STORE_DIR, check_store_path, normalize_store_dir, on_disk

COPY_BUFFER = 1 << 20
MAX_ID = 2**32 - 1  # the largest uid or gid Linux (uid_t, gid_t) has
Progress = Callable[[int], None]
"""Called as ``progress(bytes_done)`` with the file-content bytes written so far, as a layer is written."""


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

    @functools.cached_property
    def headers(self) -> tar.Headers:
        """What makes the tar headers of the members with these settings' owner and mtime."""
        return tar.Headers(uid=self.uid, gid=self.gid, mtime=self.mtime, uname=self.uname, gname=self.gname)


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


@dataclass(slots=True)
class Entry:
    """One tar member to write: its name in the image and, for files and symlinks, its source.

    ``uid``, ``gid``, ``uname``, ``gname``: its own owner, where it has one (permission rules,
    fakeroot); None takes the layer settings'. Treated as a value (never changed once made;
    :func:`with_perms` makes a changed copy), though not frozen: a layer lists one per file,
    and a frozen dataclass took four times as long to make.
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
    """Where a layer's tar goes: gathers it into pieces of about 1 MiB (small members together),
    hashes them, compresses them, hashes the blob, writes that to ``out``; ends the tar.

    The work on the pieces runs on a thread of its own, beside the thread that lists and reads the files and
    makes the tar headers: hashing, compressing and writing a piece hold Python's lock only
    briefly, while the per-file work of the other thread is Python code that holds it. Use it
    as a context manager: entering it starts that thread, leaving it stops it, whether the
    layer was finished or not.
    """

    _QUEUE = 4  # pieces handed over but not yet written, at most (about 1 MiB each)

    def __init__(self, out: BinaryIO, compression: Compression) -> None:
        self._out = out
        self._media_type = compression.media_type
        self._compressor = compression.compressor()
        self._diff = hashlib.sha256()
        # Uncompressed, the blob is the tar: one hash serves for both digests.
        self._blob = self._diff if compression.name == "none" else hashlib.sha256()
        self.size = 0  # bytes of the tar handed over as pieces (not those pending)
        self.blob_size = 0
        self._pending = bytearray()  # tar bytes not yet handed over as a piece
        self._pieces: queue.Queue[bytes | None] = queue.Queue(self._QUEUE)
        self._error: BaseException | None = None
        self._abandoned = False  # left unfinished: the pieces still queued are not written
        self._thread = threading.Thread(target=self._work, name="layer-writer", daemon=True)

    def __enter__(self) -> "_DigestingWriter":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            self._abandoned = True
            self._pieces.put(None)
            self._thread.join()

    def write(self, *parts: bytes) -> bool:
        """Add ``parts``, the next bytes of the tar. Returns whether a piece was handed over to be
        written with them. Raises what writing earlier pieces raised."""
        pending = self._pending
        for data in parts:
            pending += data
        if len(pending) < COPY_BUFFER:
            return False
        self._hand_over()
        return True

    def _hand_over(self) -> None:
        if self._error is not None:
            raise self._error
        self.size += len(self._pending)
        self._pieces.put(self._pending)
        self._pending = bytearray()  # a new one: the thread keeps the old one until it is written

    def _work(self) -> None:
        while (data := self._pieces.get()) is not None:
            if self._error is None and not self._abandoned:
                try:
                    self._diff.update(data)
                    self._emit(self._compressor.compress(data))
                except BaseException as e:  # raised in the listing thread, by write or finish
                    self._error = e

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
        """End the tar as Python's tarfile ends one (:func:`nixlayer.tar.end`), wait for every
        piece to be written, flush the compressor; the layer's digests and sizes."""
        self.write(tar.end(self.size + len(self._pending)))
        self._hand_over()
        self._pieces.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
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
    path that is not a store path (:func:`nixlayer.storepath.check_store_path`), a missing
    path, a FIFO, socket or device file, an unreadable directory, or a directory that changed
    while it was walked (see :func:`read_directory`), naming the file.
    """
    yield from tree_entries(path, on_disk(store_root, check_store_path(path, store_dir)))


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
            yield Entry(name, "file", mode, st.st_size, disk, "", (st.st_dev, st.st_ino))  # positional: quicker
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


# Whether os.listdir's names are already what file_name makes of their bytes (the file system
# encoding is UTF-8 with surrogate escapes: Linux in a UTF-8 or the C locale).
_UTF8_FILE_NAMES = (sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()) == ("utf-8", "surrogateescape")


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
        names = os.listdir(fd)  # decoded as the file system encoding says
        if not _UTF8_FILE_NAMES:
            names = [file_name(os.fsencode(name)) for name in names]
        names.sort()
        children = []
        for name in names:
            raw = name.encode("utf-8", "surrogateescape")
            try:
                children.append((name, disk + b"/" + raw, os.lstat(raw, dir_fd=fd)))
            except FileNotFoundError:
                raise NixlayerError(_changed(os.fsdecode(disk + b"/" + raw), "it was removed")) from None
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


_KINDS = {"file": tar.REGTYPE, "dir": tar.DIRTYPE, "symlink": tar.SYMTYPE}


def encode_entry(entry: Entry, settings: LayerSettings) -> bytes:
    """The tar header block(s) of a directory or symlink ``entry``, exactly as ``write_entries``
    writes them, for :func:`write_encoded`. Raises ValueError for a file (its header promises
    contents that only ``write_entries`` writes)."""
    if entry.kind == "file":
        raise ValueError("encode_entry takes directories and symlinks; files have contents")
    return _header(entry, settings)


def _header(entry: Entry, settings: LayerSettings) -> bytes:
    """The tar header block(s) of ``entry`` with its owner and mtime from ``settings`` where it
    has none of its own, as Python's tarfile writes them (pax format, UTF-8: ``nixlayer.tar``)."""
    size = entry.size if entry.kind == "file" else 0
    linkname = entry.target if entry.kind == "symlink" else ""
    if entry.uid is None and entry.gid is None and entry.uname is None and entry.gname is None:
        return settings.headers(entry.name, _KINDS[entry.kind], entry.mode, size, linkname)
    return tar.header(
        entry.name,
        _KINDS[entry.kind],
        entry.mode,
        uid=settings.uid if entry.uid is None else entry.uid,
        gid=settings.gid if entry.gid is None else entry.gid,
        size=size,
        mtime=settings.mtime,
        linkname=linkname,
        uname=settings.uname if entry.uname is None else entry.uname,
        gname=settings.gname if entry.gname is None else entry.gname,
    )


def write_encoded(members: Iterable[bytes], out: BinaryIO, compression: Compression = Compression()) -> LayerBlob:
    """Write a tar of ``members`` (each from :func:`encode_entry`, directories and symlinks) to
    ``out``, compressed, and return the layer's digests. The archive ends as Python's tarfile
    ends one (:func:`nixlayer.tar.end`), so the bytes equal those ``write_entries`` gives for
    the same entries. Raises NixlayerError when ``out`` fails."""
    with _DigestingWriter(out, compression) as writer:
        for member in members:
            writer.write(member)
        return writer.finish()


def write_entries(
    entries: Iterable[Entry],
    out: BinaryIO,
    settings: LayerSettings,
    compression: Compression = Compression(),
    progress: Progress | None = None,
) -> LayerBlob:
    """Write ``entries`` as one tar to ``out``, compressed, and return the layer's digests.

    The entries are written as they come: a layer's tar is hashed and compressed while its
    files are still being listed (listing first, then writing, left a core idle for the
    listing). Headers and small files are gathered into pieces of about 1 MiB before they are
    hashed and compressed; bigger files are streamed in 1 MiB pieces: memory does not grow with
    file size. Files of 8 GiB and more get a pax size record. ``progress(done)`` is called with
    the content bytes written so far after each piece, and at the end.

    A file is opened without following symlinks and must be the file listed (type, device,
    inode, size), before and after it is read. Raises NixlayerError naming the file if it
    cannot be read or has changed since it was listed, or what listing ``entries`` raised (the
    caller discards what was written), or "cannot write layer blob" when ``out`` fails.
    """
    done = 0
    with _DigestingWriter(out, compression) as writer:

        def add(*parts: bytes) -> None:
            if writer.write(*parts) and progress is not None:
                progress(done)

        for entry in entries:
            header = _header(entry, settings)
            if entry.kind != "file":
                add(header)
                continue
            fd = _open_listed(entry)
            try:
                # Read to the end of the file, one byte more than is left: a read that brings
                # more than the listed size, or the end before it, is a change. Each read is
                # added once the next one is in: the last goes with the padding, and a file
                # read whole at once goes with its header too.
                left = entry.size
                data = b""
                while chunk := os.read(fd, min(left + 1, COPY_BUFFER)):
                    if len(chunk) > left:
                        break
                    left -= len(chunk)
                    if data:
                        done += len(data)
                        add(header, data)
                        header = b""
                    data = chunk
                if chunk or left:
                    _check_unchanged(entry, os.fstat(fd), "was written to while it was read")
                    raise NixlayerError(_changed(os.fsdecode(entry.source), "was written to while it was read"))
            except OSError as e:
                raise NixlayerError(f"cannot read {os.fsdecode(entry.source)}: {e.strerror or e}") from None
            finally:
                os.close(fd)
            done += len(data)
            add(header, data, tar.padding(entry.size))
        blob = writer.finish()
    if progress is not None:
        progress(done)
    return blob


def _open_listed(entry: Entry) -> int:
    """The file ``entry`` lists, opened for reading without following a symlink (nor blocking
    on a FIFO), once checked to be the regular file listed: same device and inode, same size.
    Returns its file descriptor. Raises NixlayerError naming it when it cannot be opened or is
    no longer that file."""
    assert entry.source is not None
    try:
        fd = os.open(entry.source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        where = os.fsdecode(entry.source)
        if e.errno == errno.ELOOP:
            raise NixlayerError(_changed(where, "it is a symlink now")) from None
        if e.errno == errno.ENOENT:
            raise NixlayerError(_changed(where, "it was removed")) from None
        raise NixlayerError(f"cannot read {where}: {e.strerror or e}") from None
    try:
        _check_unchanged(entry, os.fstat(fd), "it is another file now")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_unchanged(entry: Entry, st: os.stat_result, how: str) -> None:
    """Raise NixlayerError unless ``st`` is the regular file ``entry`` listed, at its size."""
    if not stat.S_ISREG(st.st_mode):
        how = "it is not a regular file now"
    elif entry.inode is None or (st.st_dev, st.st_ino) == entry.inode:
        if st.st_size == entry.size:
            return
        how = f"{st.st_size} bytes now, {entry.size} when listed"
    raise NixlayerError(_changed(os.fsdecode(entry.source), how))


def write_store_layer(
    paths: Iterable[str],
    out: BinaryIO,
    settings: LayerSettings = LayerSettings(),
    compression: Compression = Compression(),
    store_root: str = "/",
    store_dir: str = DEFAULT_STORE_DIR,
    progress: Progress | None = None,
    perms: Sequence[PermRule] = (),
    nar_sizes: Mapping[str, int] | None = None,
) -> LayerBlob:
    """Write the layer of ``paths`` (store paths, in layer order) to ``out``; see the module doc.
    ``perms``: the permission rules to apply (``nixlayer.perms``). ``nar_sizes``: the NAR size
    the closure gives a store path (Nix's ``narSize``), for those it knows: each of those store
    paths, as listed, must make a NAR of that size (:func:`_nar_checked`), so a file added or
    removed since the closure was read is found.

    Returns the LayerBlob (diff_id, size, digest, blob_size, media_type). Raises NixlayerError
    naming the culprit for a path that is not a store path directly in ``store_dir``
    (:func:`nixlayer.storepath.check_store_path`, every path before anything is written), a
    missing path, a FIFO, socket or device file, an unreadable file, or a store path whose NAR
    size is not the closure's; the caller discards what was written to ``out`` (the tar is
    written as it is listed: these errors may come after some of it).
    """
    paths = [check_store_path(path, store_dir) for path in paths]
    matcher = Matcher(perms)
    nar_sizes = nar_sizes or {}

    def entries() -> Iterator[Entry]:
        yield from (with_perms(entry, matcher, None) for entry in parent_dirs(store_dir))
        for path in paths:  # checked above: store_path_entries would check each again
            listed = tree_entries(path, on_disk(store_root, path))
            if nar_sizes.get(path) is not None:
                listed = _nar_checked(listed, path, nar_sizes[path])
            yield from (with_perms(entry, matcher, path) for entry in listed) if perms else listed

    return write_entries(entries(), out, settings, compression, progress)


def _nar_checked(entries: Iterator[Entry], path: str, nar_size: int) -> Iterator[Entry]:
    """The entries of the store path ``path`` (:func:`store_path_entries`, as listed: modes
    before any permission rule), passed on; once they end, the NAR they make must be
    ``nar_size`` bytes (:class:`NarSize`), else NixlayerError."""
    nar = NarSize(path)
    add = nar.add
    for entry in entries:
        yield entry
        name, kind = entry.name, entry.kind
        # ASCII names and link targets, nearly all, need no encoding to be counted in bytes
        if name.isascii():
            name_length = len(name) - name.rfind("/") - 1
        else:
            name_length = len(name[name.rfind("/") + 1:].encode("utf-8", "surrogateescape"))
        if kind == "file":
            add(name_length, kind, entry.size, entry.mode)
        else:
            target = entry.target
            add(name_length, kind, len(target) if target.isascii() else len(target.encode("utf-8", "surrogateescape")),
                entry.mode)
    nar.check(nar_size)


class NarSize:
    """The size of a store path's NAR (Nix's serialisation, ``nix-store --dump``), counted from
    its listing: its ``narSize``, which Nix registers and a closure gives, so a store path on
    disk is checked against it without reading its files again.

    In a NAR each string is its 8-byte length and its bytes, padded to 8; it is
    ``nix-archive-1``, then the store path's node: ``( type regular [executable ""] contents
    <size> <bytes> )`` (executable when its owner may run it), ``( type symlink target
    <target> )``, or ``( type directory <entries> )``, each entry ``entry ( name <name> node
    <node> )``.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        # "nix-archive-1"; less the entry framing that add counts for the store path itself,
        # which has none (its name: ASCII, as every store path's)
        self.size = 24 - 88 - (len(path.rpartition("/")[2]) + 7 & -8)

    def add(self, name_length: int, kind: str, length: int, mode: int) -> None:
        """Count a node: the store path or a file below it, its name's length in bytes, its
        ``kind`` ("file", "dir" or "symlink"), ``length`` (a file's size, a symlink target's
        bytes) and ``mode`` (its permission bits)."""
        # entry ( name <name> node ( type ...: 88 bytes and the name; then the node's own
        if kind == "file":  # regular [executable ""] contents <size> <bytes> )
            self.size += 176 + (name_length + 7 & -8) + (length + 7 & -8) + (32 if mode & stat.S_IXUSR else 0)
        elif kind == "symlink":  # symlink target <target> )
            self.size += 176 + (name_length + 7 & -8) + (length + 7 & -8)
        else:  # directory <entries> )
            self.size += 160 + (name_length + 7 & -8)

    def check(self, nar_size: int) -> None:
        """Raise NixlayerError unless the nodes counted make a NAR of ``nar_size`` bytes."""
        if self.size != nar_size:
            raise NixlayerError(
                f"{self.path} is not the store path the closure names: its files make a NAR of {self.size} bytes, the"
                f" closure gives {nar_size} (narSize); a file was added or removed since, or the closure graph is"
                " wrong (store paths are never changed by Nix): build again when nothing writes to the store path")
