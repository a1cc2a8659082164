"""The layer store: layer blobs kept on disk between builds, found again by what made them.

Layout under the store's root directory:

- ``blobs/sha256/<hex>``: layer blobs, content-addressed and immutable (an OCI layout's blob
  directory, so images hard-link from it);
- ``layers/<settings key>/<layer key>.json``: one record per layer, naming its blob: diff_id,
  size, digest, blob_size, media_type, its store paths, and the blob file's inode and mtime
  when its bytes last matched its digest (``blob_seen``);
- ``customisation/<settings key>/<store path name>``: the customisation-layer entries of one
  contents store path, encoded (``nixlayer.customisation.Fragments``);
- ``images/<key>.json``, ``pushes/<key>.json``: stamps of the images written and pushed (by the
  Luigi tasks), naming what was written (an image stamp its output and image name too) and its
  layer records (an index's stamp each platform's too): the ``stable`` layering reads them
  (:meth:`LayerStore.previous_layers`);
- ``latest/<key>.json``: for each output and image name (and platform, for the images of an
  index), the image stamp last written there (``{"stamp": "images/<key>.json"}``), so the
  ``stable`` layering reads one stamp, not all;
- ``tmp/``: the temporaries of blobs and records being written, renamed into place when whole.

Everything in it is a cache: deleting any part only makes a later build do that work again.
:meth:`LayerStore.collect_garbage` removes what no build has used for a while.

A blob is checked at every look, cheaply: the size, inode and mtime its record saw; where they
differ it is hashed once, then kept (its record updated) or removed, so its layer is written
again (:meth:`LayerStore.check`). Outputs that copy a blob hash it on the way
(``nixlayer.docker_archive``, ``nixlayer.oci_layout``, ``nixlayer.registry``). Anything but a
regular file where a blob or record belongs is removed before one is written there, or named
(a directory with files in it).

A record is written only after its blob is in place, both by atomic rename, so a killed build
leaves no record without its blob, and two builders writing the same layer at once both end
with the same complete entry. The settings key covers every setting that changes a layer's
bytes (owner, mtime, compression, store directory), so a changed setting never reuses a layer.

Temporaries are made in ``tmp/`` rather than beside their destinations: creating a file under
a random name in a directory of thousands (``blobs/sha256``, a settings key's records) costs
~4x more than in a small one, then renaming it there (measured on ext4 here). A writer killed
outright leaves its temporaries in ``tmp/``; writers remove those untouched for
``nixlayer.atomic.STALE_TEMP_SECONDS`` (10 minutes), at most once per process every 10
minutes, so one scan of ``tmp/`` serves many layers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import shutil
import stat
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from typing import BinaryIO, Callable, Sequence

from nixlayer.atomic import STALE_TEMP_SECONDS, atomic_file, remove_stale_temporaries, writing
from nixlayer.compression import Compression
from nixlayer.customisation import FRAGMENT_FORMAT
from nixlayer.errors import NixlayerError, NixlayerWarning
from nixlayer.image import ImageLayer
from nixlayer.layer import LayerBlob, LayerSettings
from nixlayer.oci_layout import OCI_ARCHIVE_STAGING, blob_path, put_blob
from nixlayer.registry import push_reference
from nixlayer.storepath import hash_part


def default_layer_store() -> str:
    """The layer store used when none is configured: ``$XDG_CACHE_HOME/nixlayer``, else
    ``~/.cache/nixlayer``."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "nixlayer")


@dataclass
class Garbage:
    """What :meth:`LayerStore.collect_garbage` removed (or would remove): counts and bytes."""

    records: int = 0
    blobs: int = 0
    fragments: int = 0
    stamps: int = 0
    temporaries: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class LayerRecord:
    """What the layer store knows of one layer: its blob, the store paths it holds, and the
    blob file as it was when its bytes were last found to match its digest (``blob_seen``:
    inode and modification time in nanoseconds; None in records older than that field)."""

    blob: LayerBlob
    store_paths: tuple[str, ...]
    comment: str
    blob_seen: tuple[int, int] | None = None

    def to_json(self) -> bytes:
        return json.dumps(
            {**asdict(self.blob), "store_paths": list(self.store_paths), "comment": self.comment,
             "blob_seen": self.blob_seen},
            sort_keys=True, indent=1,
        ).encode()

    @staticmethod
    def from_json(data: bytes) -> "LayerRecord":
        raw = json.loads(data)
        blob = LayerBlob(**{k: raw[k] for k in LayerBlob.__dataclass_fields__})
        seen = raw.get("blob_seen")
        seen = (int(seen[0]), int(seen[1])) if seen is not None else None
        return LayerRecord(blob, tuple(raw["store_paths"]), raw["comment"], seen)


BLOB_TEMP_PREFIX = ".blob.tmp-"

# Temporaries directory -> time.monotonic() of this process's last sweep of abandoned ones.
_swept: dict[str, float] = {}


def _sweep_temporaries(temps: str, temp: str) -> None:
    """Remove abandoned temporaries in ``temps`` (a layer store's ``tmp/``; ``temp`` is the
    caller's own) unless this process just did."""
    last = _swept.get(temps)
    if last is None or time.monotonic() - last >= STALE_TEMP_SECONDS:
        remove_stale_temporaries(temps, ".", temp)
        _swept[temps] = time.monotonic()


def _directory_key(*parts) -> str:
    """A directory name (16 hex digits) for ``parts`` (JSON values)."""
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


# Part of every settings key: layers of an older format are never reused. 2: file names are their
# bytes on disk in every locale (1 named them in the builder's locale: other bytes outside UTF-8).
LAYER_FORMAT = 2


@functools.lru_cache(maxsize=64)  # asked for each of a build's thousands of layer tasks
def settings_key(settings: LayerSettings, compression: Compression, store_dir: str) -> str:
    """A directory name (16 hex digits) naming every setting that changes a layer's bytes, and
    the layer format (``LAYER_FORMAT``)."""
    return _directory_key(asdict(settings), compression.key, store_dir, LAYER_FORMAT)


def store_path_layer_key(store_path: str) -> str:
    """The record name of a one-store-path layer: the store path's hash part."""
    return hash_part(store_path)


def paths_layer_key(kind: str, store_paths: Sequence[str]) -> str:
    """The record name of a layer of several store paths (overflow, customisation).

    ``kind`` plus the sha256 of the ordered store paths: a different order is another layer.
    """
    return f"{kind}-" + hashlib.sha256("\n".join(store_paths).encode()).hexdigest()[:32]


def customisation_layer_key(contents: Sequence[str], tree: dict) -> str:
    """The record name of a customisation layer: that of its contents (``paths_layer_key``)
    when it holds nothing else (``tree``, ``nixlayer.rootfs.RootTree.key``, is empty), else
    ``customisation-`` and the sha256 of the contents and ``tree``."""
    if not tree:
        return paths_layer_key("customisation", contents)
    return "customisation-" + hashlib.sha256(json.dumps([list(contents), tree], sort_keys=True).encode()).hexdigest()[:32]


_UNREADABLE = (OSError, ValueError, KeyError, TypeError)  # what _load_record raises


def record_name(settings_dir: str, layer_key: str) -> str:
    """A layer record's path relative to the layer store's root (as image stamps name it)."""
    return os.path.join("layers", settings_dir, layer_key + ".json")


def _load_record(record_path: str) -> LayerRecord:
    """The record in the regular file ``record_path``. Raises OSError (also for anything but
    a regular file there: a FIFO put in its place is not waited on), ValueError, KeyError or
    TypeError."""
    fd = os.open(record_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{record_path} is not a regular file")
        return LayerRecord.from_json(f.read())


def _seen(st: os.stat_result) -> tuple[int, int]:
    """What a record keeps of its blob file's lstat (see ``LayerRecord.blob_seen``)."""
    return st.st_ino, st.st_mtime_ns


def _make_room(path: str) -> None:
    """Clear the way for a file to be renamed to ``path`` in the layer store: anything there
    that is not a regular file (a symlink, FIFO, device, socket, empty directory) is removed.
    Raises NixlayerError naming a directory with files in it, and saying what to do."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise NixlayerError(f"cannot write layer store entry {path}: {e.strerror}") from None
    if stat.S_ISREG(st.st_mode):
        return
    try:
        os.rmdir(path) if stat.S_ISDIR(st.st_mode) else os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise NixlayerError(f"layer store entry {path} is a directory, not a file ({e.strerror}): remove it"
                            f" (rm -r '{path}') and build again") from None


class LayerStore:
    """A layer store rooted at ``root`` (created on first write)."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(os.path.expanduser(root))

    def record_path(self, settings_dir: str, layer_key: str) -> str:
        return os.path.join(self.root, record_name(settings_dir, layer_key))

    def fragments_dir(self, settings: LayerSettings, store_dir: str) -> str:
        """Where the customisation fragments of contents in ``store_dir`` encoded with
        ``settings`` are kept (a file per store path name; the store directory is in the key,
        as the symlink targets name it)."""
        return os.path.join(self.root, "customisation", _directory_key(asdict(settings), store_dir, FRAGMENT_FORMAT))

    def blob_path(self, digest: str) -> str:
        """Where the blob ``digest`` lives in this store."""
        return blob_path(self.root, digest)

    def stamp_path(self, kind: str, key: str) -> str:
        """Where the stamp of an image written (``kind`` ``images``) or pushed (``pushes``)
        under ``key`` lives: ``KIND/<sha256 of key, 32 hex digits>.json``."""
        return os.path.join(self.root, kind, hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")

    def latest_path(self, output: str, name: str, platform: str | None = None) -> str:
        """Where the pointer to the stamp of the image last written to ``output`` under ``name``
        lives (``latest/``): written with each image stamp (:meth:`write_image_stamp`). The
        images of an index have one each, by ``platform`` (``os/architecture[/variant]``)."""
        return self.stamp_path("latest", json.dumps([output, name] if platform is None else [output, name, platform]))

    def write_image_stamp(self, stamp: str, data: dict) -> None:
        """Write the image stamp ``stamp`` (a path under ``images/``) holding ``data`` (its
        ``output``, ``name`` and ``layers`` records among others), then the pointers to it
        (:meth:`latest_path`), each atomically.

        An image's stamp names its ``platform``: its pointer is the one for its output and name,
        and the pointer of an index's image of that platform there goes (this image is the
        last of that platform written there). An index's stamp names, in ``images``, each
        platform's layer records, bottom first: each platform gets its pointer."""
        pointer = {"stamp": os.path.relpath(stamp, self.root)}
        output, name = data["output"], data["name"]
        images = data.get("images")
        pointers = [self.latest_path(output, name, platform) for platform in images] if images else [
            self.latest_path(output, name)]
        for path, content in ((stamp, data), *((path, pointer) for path in pointers)):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with atomic_file(path) as f:
                f.write(json.dumps(content).encode())
        if not images and data.get("platform"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.latest_path(output, name, data["platform"]))

    def previous_layers(self, *, output: str | None = None, name: str | None = None,
                        target: str | None = None, platform: str | None = None) -> list[list[str]] | None:
        """The store layers (each a list of store paths, bottom first) of the image this store
        last wrote to ``output`` under ``name`` (the stamp a ``latest/`` pointer names: one file
        read, however many images the store holds), else last pushed to ``target``: what the
        ``stable`` layering keeps. With ``platform``, the image of that platform: of an index
        (its own pointer, its own layers in the index's stamp), else the image there.

        Returns None when there is no such stamp (or an index's without that platform), a
        layer record it names cannot be read (gone with a garbage collection), or a store path
        is in two of its layers (the push stamp of an index by nixlayer before its ``images``
        named every platform's layers as one list): the next build is then planned as a first
        one. Looking does not mark anything used.
        """
        stamp: dict = {}
        if output is not None and name is not None:
            for key in ([platform] if platform else []) + [None]:
                pointer = read_json(self.latest_path(output, name, key), mark_used=False).get("stamp")
                if isinstance(pointer, str):
                    candidate = read_json(os.path.join(self.root, pointer), mark_used=False)
                    if candidate.get("output") == output and candidate.get("name") == name:
                        stamp = candidate
                        break
        if not stamp and target is not None:
            stamp = read_json(self.stamp_path("pushes", target), mark_used=False)
        images = stamp.get("images")
        records = images.get(platform) if isinstance(images, dict) else stamp.get("layers")
        if not isinstance(records, list) or not records:
            return None
        layers = []
        for record in records[:-1]:  # the last is the customisation layer
            try:
                paths = list(_load_record(os.path.join(self.root, record)).store_paths)
            except _UNREADABLE:
                return None
            if paths:  # a base image's layer holds none
                layers.append(paths)
        if len({path for paths in layers for path in paths}) != sum(map(len, layers)):
            return None
        return layers

    def previous_build(self, *, name: str, output: str = "", push: str = "", tag: str = "",
                       platform: str) -> list[list[str]] | None:
        """The store layers of the previous build of an image (:meth:`previous_layers`), as a
        build asks with its options: ``name``; ``output`` as given on the command line (a path,
        made absolute, or ``-`` or empty: none); ``push`` a push target as given
        (``docker://HOST/REPO[:TAG]``, or empty: none) and ``tag`` the image's tag, which a
        target without one takes (``nixlayer.registry.push_reference``); ``platform`` the
        image's ``os/architecture[/variant]``. BuildImage, PushImage and the plan command ask
        this, so they find the same build. Raises NixlayerError for a bad push target."""
        target = str(push_reference(push, tag, tag_yields=True)) if push else None
        return self.previous_layers(output=os.path.abspath(output) if output and output != "-" else None, name=name,
                                    target=target, platform=platform)

    def read(self, record_path: str) -> LayerRecord:
        """Read a record whose blob is checked (:meth:`check`). Raises NixlayerError if it is
        unreadable or its blob is missing or damaged."""
        try:
            record = _load_record(record_path)
        except _UNREADABLE as e:
            raise NixlayerError(f"layer store record {record_path} is unreadable: {e}") from None
        if self.check(record_path, record) is None:
            raise NixlayerError(f"layer store record {record_path} names a missing or damaged blob {record.blob.digest}:"
                                " build again to write the layer anew")
        return record

    def find(self, record_path: str) -> LayerRecord | None:
        """The record if it reads and its blob is checked (:meth:`check`), else None (what
        :meth:`read` would raise for, without the message: a build asks this of every layer
        it may write, and writes again those it gets None for)."""
        try:
            record = _load_record(record_path)
        except _UNREADABLE:
            return None
        return self.check(record_path, record)

    def check(self, record_path: str, record: LayerRecord) -> LayerRecord | None:
        """``record`` (from ``record_path``) if its blob is there and matches its digest, else None.

        The cheap check, at every look: the blob is a regular file of the recorded size, and has
        the inode and modification time the record saw (``blob_seen``) when its bytes last matched.
        Where they differ (a blob copied or written again, a record from before ``blob_seen``,
        a blob written to), the blob is read and hashed once: if it matches, the record is
        written again with what it now sees (the record returned); if not, the blob is removed
        (with a warning naming it), so the layer is written anew. The bytes of a blob changed
        in place with its modification time put back are found when an output copies it
        (those hash what they copy), not here.
        """
        path = self.blob_path(record.blob.digest)
        try:
            st = os.lstat(path)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_size != record.blob.blob_size:
            return None
        if record.blob_seen == _seen(st):
            return record
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                matches = "sha256:" + hashlib.file_digest(f, "sha256").hexdigest() == record.blob.digest
        except OSError:
            return None
        if not matches:
            with contextlib.suppress(OSError):
                os.unlink(path)
            warnings.warn(f"layer store blob {path} did not match its digest (damaged): removed; its layer is"
                          " written again", NixlayerWarning)
            return None
        record = dataclasses.replace(record, blob_seen=_seen(st))
        with contextlib.suppress(NixlayerError, OSError):  # a read-only store: hashed again next time
            with atomic_file(record_path, temp_dir=os.path.join(self.root, "tmp")) as f:
                f.write(record.to_json())
        return record

    def write(
        self,
        record_path: str,
        store_paths: Sequence[str],
        comment: str,
        write_blob: Callable[[BinaryIO], LayerBlob],
    ) -> LayerRecord:
        """Write a layer: ``write_blob(file)`` writes the blob bytes and returns its digests.

        The blob goes to a temporary file, is renamed to ``blobs/sha256/<hex>``, then the record
        is written atomically. On any error nothing is left behind. Temporary blobs abandoned by
        killed writers are removed (see the module docstring). Raises NixlayerError naming the
        layer store when it cannot be written (not writable, full), and whatever ``write_blob``
        raises.
        """
        temps = os.path.join(self.root, "tmp")
        try:
            os.makedirs(os.path.join(self.root, "blobs", "sha256"), exist_ok=True)
            os.makedirs(os.path.dirname(record_path), exist_ok=True)
            os.makedirs(temps, exist_ok=True)
            fd, temp = tempfile.mkstemp(prefix=BLOB_TEMP_PREFIX, dir=temps)
        except OSError as e:
            raise NixlayerError(f"cannot write to layer store {self.root}: {e.strerror}") from None
        try:
            with writing(temp), os.fdopen(fd, "wb") as f:
                _sweep_temporaries(temps, temp)
                blob = write_blob(f)
            os.chmod(temp, 0o444)
            _make_room(self.blob_path(blob.digest))
            os.replace(temp, self.blob_path(blob.digest))
            seen = _seen(os.lstat(self.blob_path(blob.digest)))
        except OSError as e:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise NixlayerError(f"cannot write to layer store {self.root}: {e.strerror or e}") from None
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        record = LayerRecord(blob, tuple(store_paths), comment, seen)
        _make_room(record_path)
        try:
            with atomic_file(record_path, temp_dir=temps) as f:
                f.write(record.to_json())
        except OSError as e:
            raise NixlayerError(f"cannot write layer store record {record_path}: {e.strerror or e}") from None
        return record

    def put_bytes(self, data: bytes) -> str:
        """Keep ``data`` (a config or manifest) as a blob; return its path. Atomic, idempotent."""
        return put_blob(self.root, data)

    def image_layer(self, record: LayerRecord) -> ImageLayer:
        """The record as an ImageLayer ready to assemble."""
        return ImageLayer(record.blob, self.blob_path(record.blob.digest), record.comment)

    def collect_garbage(self, unused_days: float, dry_run: bool = False) -> Garbage:
        """Remove what no build has used for ``unused_days`` (1 or more), and return what was
        removed (counts, and bytes of the files).

        Used means read or written. Every build reads the stamp of each of its images
        (``images/``, ``pushes/``) and the customisation fragments of its contents, and a stamp
        names the image's layer records, so a build that finds nothing to do still marks its
        layers as used: the roots are the stamps, by their access time (which Linux's default
        ``relatime`` mount option refreshes at most daily; under ``noatime`` they age from
        when they were written, and a build after a collection writes again what it needs).
        A layer record is kept if a kept stamp names it or it was itself used; a blob goes
        with the last record naming it, once it is itself older than ``unused_days`` (so one
        a build is writing now stays), and so do what killed writers left, untouched that long:
        temporaries in ``tmp/`` and beside fragments, and ``.oci-archive-*`` staging
        directories. Nothing outside the store is touched: OCI layouts hold hard links of their
        own. With ``dry_run`` nothing is removed. Files that vanish
        meanwhile are skipped; a build running during a collection may find a layer gone and
        fail once.
        """
        if not (math.isfinite(unused_days) and unused_days >= 1):
            raise NixlayerError(f"--unused-days must be 1 or more (access times are kept to within a day), "
                                f"not {unused_days:g}")
        if not os.path.isdir(self.root):
            raise NixlayerError(f"layer store {self.root} "
                                + ("is not a directory" if os.path.lexists(self.root) else "does not exist"))
        if not os.path.isdir(os.path.join(self.root, "layers")) or os.path.exists(os.path.join(self.root, "oci-layout")):
            raise NixlayerError(f"{self.root} is not a layer store (no layers/ directory in it)")
        cutoff = time.time() - unused_days * 86400
        garbage = Garbage()

        def unused(path: str) -> os.stat_result | None:
            try:
                st = os.stat(path)
            except OSError:
                return None
            return st if max(st.st_atime, st.st_mtime) < cutoff else None

        def remove(path: str, st: os.stat_result) -> bool:
            if not dry_run:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    return False
            garbage.bytes += st.st_size
            return True

        named: set[str] = set()  # layer records the kept stamps name, relative to the root
        for kind in ("images", "pushes"):
            for stamp in _files(os.path.join(self.root, kind), depth=1):
                st = unused(stamp)
                if st is not None:
                    garbage.stamps += remove(stamp, st)
                    continue
                layers = read_json(stamp, mark_used=False).get("layers")
                if isinstance(layers, list):
                    named.update(p for p in layers if isinstance(p, str))
        for pointer in _files(os.path.join(self.root, "latest"), depth=1):  # a few bytes each: not counted
            stamp = read_json(pointer, mark_used=False).get("stamp")
            if not dry_run and not (isinstance(stamp, str) and os.path.isfile(os.path.join(self.root, stamp))):
                with contextlib.suppress(OSError):
                    os.unlink(pointer)
        for fragment in _files(os.path.join(self.root, "customisation"), depth=2):
            st = unused(fragment)
            if st is not None:
                garbage.fragments += remove(fragment, st)
        referenced: set[str] = set()  # blob names (hex digests) the kept records name
        for record in _files(os.path.join(self.root, "layers"), depth=2):
            st = unused(record)
            if st is not None and os.path.relpath(record, self.root) not in named:
                garbage.records += remove(record, st)
                continue
            digest = read_json(record, mark_used=False).get("digest")
            if isinstance(digest, str):
                referenced.add(digest.split(":", 1)[-1])
        for blob in _files(os.path.join(self.root, "blobs", "sha256"), depth=1):
            if os.path.basename(blob) in referenced:
                continue
            try:
                st = os.stat(blob)
            except OSError:
                continue
            if st.st_mtime < cutoff:
                garbage.blobs += remove(blob, st)
        # What killed writers left (a live writer writes to its file all the time): files in tmp/
        # and beside fragments, and the directories oci-archives are staged in.
        temporaries = _files(os.path.join(self.root, "tmp"), depth=1, temporaries=True) + [
            f for f in _files(os.path.join(self.root, "customisation"), depth=2, temporaries=True)
            if os.path.basename(f).startswith(".")]
        for temp in temporaries:
            st = unused(temp)
            if st is not None:
                garbage.temporaries += remove(temp, st)
        for staging in _dirs(self.root):
            if os.path.basename(staging).startswith(OCI_ARCHIVE_STAGING):
                try:
                    stats = [os.lstat(os.path.join(d, f)) for d, _, names in os.walk(staging) for f in names]
                    stats.append(os.lstat(staging))
                except OSError:
                    continue  # being removed by its writer
                if all(st.st_mtime < cutoff for st in stats):  # (listing a directory is no use of it)
                    garbage.temporaries += 1
                    garbage.bytes += sum(st.st_size for st in stats if st.st_nlink == 1)  # not the blobs' links
                    if not dry_run:
                        shutil.rmtree(staging, ignore_errors=True)
        if not dry_run:
            for kind in ("layers", "customisation"):
                for directory in _dirs(os.path.join(self.root, kind)):
                    with contextlib.suppress(OSError):
                        os.rmdir(directory)  # only if empty
        return garbage


def read_json(path: str, mark_used: bool = True) -> dict:
    """The JSON object in the regular file ``path``, or ``{}`` if there is none or it cannot
    be read. ``mark_used=False`` leaves its access time alone where the system allows (reading
    a stamp or record to look at it is not using it; see :meth:`LayerStore.collect_garbage`)."""
    flags = os.O_RDONLY | os.O_NONBLOCK  # NONBLOCK: a FIFO put there does not hang the reader
    try:
        try:
            fd = os.open(path, flags | (0 if mark_used else getattr(os, "O_NOATIME", 0)))
        except PermissionError:
            if mark_used:
                raise
            fd = os.open(path, flags)  # O_NOATIME is for the file's owner only
    except OSError:
        return {}
    try:
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return {}
            data = json.loads(f.read())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _files(directory: str, depth: int, temporaries: bool = False) -> list[str]:
    """Regular files ``depth`` levels below ``directory`` (1: its own files); temporaries
    (``.NAME`` files) only with ``temporaries``."""
    if depth == 1:
        try:
            return [e.path for e in os.scandir(directory) if e.is_file(follow_symlinks=False)
                    and (temporaries or not e.name.startswith("."))]
        except OSError:
            return []
    return [f for sub in _dirs(directory) for f in _files(sub, depth - 1, temporaries)]


def _dirs(directory: str) -> list[str]:
    try:
        return [e.path for e in os.scandir(directory) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []

