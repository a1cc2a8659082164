"""OCI image layout (a directory) and oci-archive (that directory as a tar).

Source: OCI image-spec v1.1 ``image-layout.md``: an ``oci-layout`` file, ``index.json`` whose
manifest descriptors carry ``org.opencontainers.image.ref.name``, and every blob under
``blobs/sha256/<hex>``. Layer blobs are hard-linked from where they were written when the file
system allows (they are immutable and content-addressed), and copied otherwise, hashed on the
way; a blob file already in the layout that is not the one linked is replaced, so the layout
never keeps or gains a blob that does not match its digest.

An image is *added* to a layout, as ``skopeo copy ... oci:DIR:TAG`` does: a layout can hold
many tags, and an image replaces only the entry with its own ref name. Artifacts attached to an
image (its SBOM) are entries of ``index.json`` too, without a ref name, with their
``artifactType``; their manifest's ``subject`` names the image manifest (image-spec 1.1, as
``oras`` and ``regctl`` keep referrers in a layout; :func:`layout_referrers` finds them); those
of the images of an index the same. An artifact whose image no entry names any more (itself,
or in the index it names) goes when that image is replaced. Blobs are written by
atomic rename and ``index.json`` last, under a lock, so concurrent writers of one layout and
readers never see a half-written image. A directory that is neither empty nor a layout is
never touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import stat
import tempfile
import uuid
from typing import BinaryIO, Iterator, Sequence

from nixlayer import tar
from nixlayer.atomic import atomic_file
from nixlayer.errors import NixlayerError
from nixlayer.image import Artifact, ImageLayer, canonical_json, damaged_blob, descriptor, sha256_digest
from nixlayer.index import PlatformImage, oci_index
from nixlayer.layer import COPY_BUFFER
from nixlayer.mediatypes import MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST

REF_NAME = "org.opencontainers.image.ref.name"
LAYOUT_FILE = "oci-layout"
LAYOUT_ENTRIES = {LAYOUT_FILE, "index.json", "blobs"}
LAYOUT = canonical_json({"imageLayoutVersion": "1.0.0"})
OCI_ARCHIVE_STAGING = ".oci-archive-"  # name prefix of the temporary layouts oci-archives are made from
_LAYOUT_TEMPORARIES = tuple(f".{name}.tmp-" for name in (LAYOUT_FILE, "index.json"))


def check_layout_output(directory: str) -> None:
    """Raise NixlayerError unless ``directory`` is absent, empty, or an OCI image layout
    (finished, or being written: nothing but ``oci-layout``, ``index.json`` and ``blobs``).

    Run before any work, so a build never clobbers a directory of other files.
    """
    if not os.path.lexists(directory):
        return
    if not os.path.isdir(directory):
        raise NixlayerError(f"output {directory} exists and is not a directory; an OCI layout is a directory")
    # A concurrent writer's temporaries (``.index.json.tmp-*``, see ``atomic``) are layout files.
    entries = {e for e in os.listdir(directory) if not e.startswith(_LAYOUT_TEMPORARIES)}
    if LAYOUT_FILE not in entries and not entries <= LAYOUT_ENTRIES:
        raise NixlayerError(
            f"output {directory} is a directory of other files, not an OCI image layout"
            f" (no {LAYOUT_FILE} file); refusing to write into it"
        )


def check_layout_writable(directory: str) -> None:
    """Raise NixlayerError unless an existing layout ``directory`` takes new files where an
    image adds them (``index.json`` beside the others, blobs in ``blobs/sha256``): a probe
    file is made and removed in each. Run before any work; nothing to check where it is absent."""
    for place in (directory, os.path.join(directory, "blobs", "sha256")):
        if os.path.isdir(place):
            try:  # named as the layout's own temporaries, which a concurrent check accepts
                fd, probe = tempfile.mkstemp(prefix=".index.json.tmp-", dir=place)
            except OSError as e:
                raise NixlayerError(f"cannot write into {place}: {e.strerror}") from None
            os.close(fd)
            os.unlink(probe)


def blob_path(root: str, digest: str) -> str:
    """Where the blob ``digest`` (``sha256:<hex>``) lives under ``root``: ``blobs/sha256/<hex>``
    (image-layout.md "Blobs"; the layer store keeps its blobs the same way)."""
    algorithm, hex_digest = digest.split(":", 1)
    return os.path.join(root, "blobs", algorithm, hex_digest)


def put_blob(root: str, data: bytes) -> str:
    """Keep ``data`` as a blob under ``root`` unless it is there; return its path.

    Written atomically, so concurrent writers of the same blob are harmless. Abandoned
    temporaries are not swept here: a blob directory can be large (see ``atomic``)."""
    return _put_data(root, data)[0]


def _put_data(root: str, data: bytes) -> tuple[str, int]:
    """``put_blob``; also the bytes written (0 if the blob was there with these bytes; a file
    there with other bytes is replaced)."""
    path = blob_path(root, sha256_digest(data))
    if _regular(path):
        with contextlib.suppress(OSError), open(path, "rb") as f:
            if f.read(len(data) + 1) == data:
                return path, 0
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_file(path, sweep=False) as f:
        f.write(data)
    return path, len(data)


def _put_file(path: str, layer: ImageLayer) -> int:
    """Put the blob of ``layer`` at ``path`` (its place in a layout) and return the bytes
    copied: hard-linked from ``layer.file`` where it can be (0 bytes), else copied, hashed on
    the way. A file already at ``path`` is kept if it is ``layer.file`` itself, or (on another
    file system) its bytes match the digest; any other is replaced, so a layout never keeps a
    blob that does not match. Raises NixlayerError if ``layer.file`` does not match its digest
    as it is copied."""
    source = layer.file
    _regular(path)
    try:
        os.link(source, path)
        return 0
    except FileExistsError:  # (Linux says so before it looks at the file systems)
        if _same_file(path, source):
            return 0
        temp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:12]}")
        try:
            os.link(source, temp)
            os.replace(temp, path)  # another file of that name: this one, checked by its layer store
            return 0
        except OSError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
        if _digest_of(path) == layer.blob.digest:
            return 0
    except OSError:  # another file system: a copy
        pass
    digest = hashlib.sha256()
    with atomic_file(path) as out, open(source, "rb") as f:
        while data := f.read(COPY_BUFFER):
            digest.update(data)
            out.write(data)
        if "sha256:" + digest.hexdigest() != layer.blob.digest:
            raise NixlayerError(damaged_blob(source))
        return out.tell()


def _regular(path: str) -> bool:
    """Whether a regular file is at ``path``. Anything else there that is not a directory with
    files in it (a FIFO, a symlink, a device, an empty directory) is removed, so that it is
    never opened (a FIFO would block) and a file can take its place. Raises NixlayerError,
    naming it and what to do, for a directory with files in it."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISREG(st.st_mode):
        return True
    try:
        os.rmdir(path) if stat.S_ISDIR(st.st_mode) else os.unlink(path)
    except OSError:
        raise NixlayerError(f"{path} is a directory where a blob belongs: remove it (rm -r '{path}')"
                            " and build again") from None
    return False


def layout_holds(directory: str, digest: str, layers: Sequence[ImageLayer]) -> bool:
    """Whether the OCI layout ``directory`` holds the image whose manifest is ``digest`` intact,
    checked without reading its layers: the manifest and config blobs (small) hash to their
    digests, and each layer blob is the layer store's file (hard-linked: the same inode, which
    the layer store checks) or, on another file system, a regular file of the blob's size. A
    layer blob copied to another file system and damaged without a change of size is not found
    here (``skopeo copy`` of the layout would)."""
    try:
        manifest = _small_blob(directory, digest)
        _small_blob(directory, json.loads(manifest)["config"]["digest"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    for layer in layers:
        try:
            st, source = os.lstat(blob_path(directory, layer.blob.digest)), os.stat(layer.file)
        except OSError:
            return False
        if not stat.S_ISREG(st.st_mode):
            return False
        if (st.st_ino != source.st_ino) if st.st_dev == source.st_dev else (st.st_size != layer.blob.blob_size):
            return False
    return True


def _small_blob(directory: str, digest: str) -> bytes:
    """The bytes of the manifest or config blob ``digest`` of the layout; raises ValueError if
    it is not a regular file of at most 4 MiB whose bytes match the digest, OSError if absent."""
    fd = os.open(blob_path(directory, digest), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ValueError(digest)
        data = f.read(4 * 1024 * 1024 + 1)
    if sha256_digest(data) != digest:
        raise ValueError(digest)
    return data


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samestat(os.lstat(a), os.lstat(b))
    except OSError:
        return False


def _digest_of(path: str) -> str | None:
    """The sha256 digest of the file at ``path``, or None if it cannot be read."""
    try:
        with open(path, "rb") as f:
            return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return None


@contextlib.contextmanager
def _locked(directory: str) -> Iterator[None]:
    """Hold the lock of the layout ``directory``: an exclusive flock on its parent directory,
    which outlives the layout (a failed first writer removes the layout under this lock)."""
    fd = os.open(os.path.dirname(os.path.abspath(directory)), os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read_index(directory: str) -> list[dict]:
    path = os.path.join(directory, "index.json")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    except OSError as e:
        raise NixlayerError(f"cannot read {path}: {e.strerror}; refusing to change the layout") from None
    try:
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise NixlayerError(f"{path} is not a regular file; refusing to change the layout: remove it")
            manifests = json.load(f)["manifests"]
    except (ValueError, KeyError, TypeError):
        raise NixlayerError(f"{path} is not a valid OCI image index; refusing to change it") from None
    if not isinstance(manifests, list):
        raise NixlayerError(f"{path} is not a valid OCI image index; refusing to change it")
    return manifests


def layout_digest(directory: str, ref_name: str) -> str | None:
    """The manifest digest the layout at ``directory`` names ``ref_name``, or None (no layout,
    no such entry, or an unreadable index)."""
    try:
        manifests = _read_index(directory)
    except NixlayerError:
        return None
    for entry in manifests:
        if isinstance(entry, dict) and entry.get("annotations", {}).get(REF_NAME) == ref_name:
            return entry.get("digest")
    return None


def _subject(directory: str, entry: dict) -> str | None:
    """The subject digest of the artifact manifest ``entry`` of the layout's index, or None
    (not an artifact, or its manifest unreadable)."""
    if not isinstance(entry, dict) or "artifactType" not in entry or not isinstance(entry.get("digest"), str):
        return None
    try:
        with open(blob_path(directory, entry["digest"]), "rb") as f:
            subject = json.load(f).get("subject")
    except (OSError, ValueError, AttributeError):
        return None
    return subject.get("digest") if isinstance(subject, dict) else None


def _manifests(directory: str, entry: dict) -> set[str]:
    """The digests of the image manifests the layout's index entry ``entry`` names: its own,
    and for an image index, those of its images (an artifact's subject may be any of them)."""
    digests = {entry.get("digest")}
    if entry.get("mediaType") == MEDIA_TYPE_OCI_INDEX:
        try:
            with open(blob_path(directory, entry["digest"]), "rb") as f:
                manifests = json.load(f)["manifests"]
            digests |= {m.get("digest") for m in manifests if isinstance(m, dict)}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass  # unreadable: its images' artifacts go with the next image added
    return digests


def layout_referrers(directory: str, digest: str) -> list[dict]:
    """The index entries (descriptors, with ``artifactType``) of the artifacts in the layout
    at ``directory`` whose ``subject`` is the manifest ``digest``; none if it has no layout.
    Raises NixlayerError for an unreadable ``index.json``."""
    return [entry for entry in _read_index(directory) if _subject(directory, entry) == digest]


def write_oci_layout(
    directory: str, layers: Sequence[ImageLayer], config: bytes, manifest: bytes, ref_name: str,
    artifacts: Sequence[Artifact] = (),
) -> tuple[str, int]:
    """Add the image of ``layers``, ``config`` and ``manifest`` (its OCI image manifest) to the
    OCI layout ``directory`` as ``ref_name``, with ``artifacts`` attached to it.

    ``directory`` is created if absent; an existing layout keeps its other images and their
    artifacts, and an entry already named ``ref_name`` is replaced (with the artifacts of the
    image it named, unless another entry names that image). Returns the manifest digest
    (``sha256:<hex>``) and the bytes written: the blobs it added (a layer blob hard-linked from
    its file costs none), ``index.json`` and ``oci-layout``. Raises NixlayerError if
    ``directory`` holds other files (``check_layout_output``) or an unreadable ``index.json``.
    """
    return _add(directory, layers, [config, manifest], descriptor(MEDIA_TYPE_OCI_MANIFEST, manifest), ref_name,
                artifacts)


def write_oci_index(directory: str, images: Sequence[PlatformImage], ref_name: str,
                    artifacts: Sequence[Artifact] = ()) -> tuple[str, int]:
    """Add the image index of ``images`` (one per platform, see ``nixlayer.index``) to the OCI
    layout ``directory`` as ``ref_name``: every image's blobs and manifest, a layer blob the
    images share once, then the index, which ``index.json`` names, with ``artifacts`` (those of
    the images) attached. Returns the index digest and the bytes written; raises NixlayerError
    as :func:`write_oci_layout`, or for two images of one platform."""
    index = oci_index(images)
    documents = [document for image in images for document in (image.config, image.manifest)]
    layers = [layer for image in images for layer in image.layers]
    return _add(directory, layers, [*documents, index], descriptor(MEDIA_TYPE_OCI_INDEX, index), ref_name, artifacts)


def _add(directory: str, layers: Sequence[ImageLayer], documents: Sequence[bytes], entry: dict, ref_name: str,
         artifacts: Sequence[Artifact] = ()) -> tuple[str, int]:
    """Put the ``layers``' blobs and the ``documents`` (configs, manifests, an index) as blobs
    into the layout ``directory``, then name ``entry`` (the descriptor of the last document)
    ``ref_name`` in its ``index.json``, with ``artifacts`` (their blobs and manifests) attached;
    return the entry's digest and the bytes written."""
    check_layout_output(directory)
    # One blob per digest (an index's images share layers), by path.
    files = sorted({blob_path(directory, layer.blob.digest): layer for layer in layers}.items(), key=lambda f: f[0])
    documents = [*documents, *(blob for a in artifacts for blob in (*a.blobs, a.manifest))]

    def put_blobs(files: list[tuple[str, ImageLayer]]) -> int:
        os.makedirs(os.path.join(directory, "blobs", "sha256"), exist_ok=True)
        written = sum(_put_file(path, layer) for path, layer in files)
        return written + sum(_put_data(directory, document)[1] for document in documents)

    written = put_blobs(files)  # unlocked: blobs are content-addressed, and a copy can take long
    entry = {**entry, "annotations": {REF_NAME: ref_name}}
    with _locked(directory):
        # A first writer that failed meanwhile removed the layout, blobs and all, under this
        # lock (it had no index.json yet): whatever is missing is put again before the index.
        written += put_blobs([(path, layer) for path, layer in files if not os.path.exists(path)])
        if not os.path.exists(os.path.join(directory, LAYOUT_FILE)):
            with atomic_file(os.path.join(directory, LAYOUT_FILE)) as f:
                f.write(LAYOUT)
            written += len(LAYOUT)
        others = [m for m in _read_index(directory) if m.get("annotations", {}).get(REF_NAME) != ref_name]
        images = {digest for m in [*others, entry] if "artifactType" not in m for digest in _manifests(directory, m)}
        attached = [a.descriptor for a in artifacts]
        others = [m for m in others if m not in attached and _subject(directory, m) in images | {None}]
        manifests = [*others, entry, *attached]
        index = canonical_json({"schemaVersion": 2, "mediaType": MEDIA_TYPE_OCI_INDEX, "manifests": manifests})
        with atomic_file(os.path.join(directory, "index.json")) as f:
            f.write(index)
        written += len(index)
    return entry["digest"], written


def remove_unfinished_layout(directory: str) -> None:
    """Remove ``directory``, a layout this writer created, unless an image was finished in it
    meanwhile (by a concurrent writer): a failed first write leaves nothing behind."""
    with _locked(directory):
        if not os.path.exists(os.path.join(directory, "index.json")):
            shutil.rmtree(directory, ignore_errors=True)


def write_oci_archive(out: BinaryIO, layout: str, mtime: int) -> None:
    """Stream the OCI layout directory ``layout`` to ``out`` as a tar (an oci-archive).

    Members are sorted, with ``mtime`` (seconds since the epoch) and root ownership, so the
    archive is reproducible.
    """
    written = 0
    for dirpath, dirnames, filenames in os.walk(layout):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, layout)
        if rel_dir != ".":
            member = tar.header(rel_dir, tar.DIRTYPE, 0o755, mtime=mtime)
            out.write(member)
            written += len(member)
        for name in sorted(filenames):
            rel = os.path.normpath(os.path.join(rel_dir, name))
            with open(os.path.join(dirpath, name), "rb") as f:
                size = os.fstat(f.fileno()).st_size
                member = tar.header(rel, tar.REGTYPE, 0o644, size=size, mtime=mtime)
                out.write(member)
                copied = 0
                while data := f.read(min(COPY_BUFFER, size - copied)):
                    out.write(data)
                    copied += len(data)
                if copied != size:
                    raise NixlayerError(f"{f.name} changed while the oci-archive was written: build again")
                out.write(tar.padding(size))
                written += len(member) + size + len(tar.padding(size))
    out.write(tar.end(written))
