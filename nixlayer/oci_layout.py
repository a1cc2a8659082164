"""OCI image layout (a directory) and oci-archive (that directory as a tar).

Source: OCI image-spec v1.1 ``image-layout.md``: an ``oci-layout`` file, ``index.json`` whose
manifest descriptor carries ``org.opencontainers.image.ref.name`` (the tag), and every blob under
``blobs/sha256/<hex>``. Layer blobs are hard-linked from where they were written when the file
system allows (they are immutable and content-addressed), and copied otherwise.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from typing import BinaryIO, Sequence

from nixlayer.image import ImageLayer, canonical_json, descriptor, oci_manifest
from nixlayer.mediatypes import MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST
from nixlayer.layer import COPY_BUFFER

REF_NAME = "org.opencontainers.image.ref.name"
LAYOUT = canonical_json({"imageLayoutVersion": "1.0.0"})


def _blob_path(root: str, digest: str) -> str:
    algorithm, hex_digest = digest.split(":", 1)
    return os.path.join(root, "blobs", algorithm, hex_digest)


def _put_bytes(root: str, data: bytes) -> None:
    path = _blob_path(root, descriptor("", data)["digest"])
    with open(path, "wb") as f:
        f.write(data)


def _put_file(root: str, digest: str, source: str) -> None:
    path = _blob_path(root, digest)
    if os.path.exists(path):
        return
    try:
        os.link(source, path)
    except OSError:
        shutil.copyfile(source, path)


def write_oci_layout(directory: str, layers: Sequence[ImageLayer], config: bytes, tag: str) -> str:
    """Fill the empty ``directory`` with an OCI image layout of one image tagged ``tag``.

    Returns the manifest digest (``sha256:<hex>``).
    """
    os.makedirs(os.path.join(directory, "blobs", "sha256"), exist_ok=True)
    manifest = oci_manifest(config, layers)
    for layer in layers:
        _put_file(directory, layer.blob.digest, layer.file)
    _put_bytes(directory, config)
    _put_bytes(directory, manifest)
    entry = descriptor(MEDIA_TYPE_OCI_MANIFEST, manifest)
    entry["annotations"] = {REF_NAME: tag}
    index = canonical_json({"schemaVersion": 2, "mediaType": MEDIA_TYPE_OCI_INDEX, "manifests": [entry]})
    with open(os.path.join(directory, "index.json"), "wb") as f:
        f.write(index)
    with open(os.path.join(directory, "oci-layout"), "wb") as f:
        f.write(LAYOUT)
    return entry["digest"]


def write_oci_archive(out: BinaryIO, layout: str, mtime: int) -> None:
    """Stream the OCI layout directory ``layout`` to ``out`` as a tar (an oci-archive).

    Members are sorted, with ``mtime`` (seconds since the epoch) and root ownership, so the
    archive is reproducible.
    """
    with tarfile.open(fileobj=out, mode="w|", bufsize=COPY_BUFFER, format=tarfile.PAX_FORMAT, encoding="utf-8") as tar:
        tar.copybufsize = COPY_BUFFER
        for dirpath, dirnames, filenames in os.walk(layout):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, layout)
            if rel_dir != ".":
                tar.addfile(_member(rel_dir, tarfile.DIRTYPE, 0, mtime))
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                rel = os.path.normpath(os.path.join(rel_dir, name))
                with open(path, "rb") as f:
                    tar.addfile(_member(rel, tarfile.REGTYPE, os.fstat(f.fileno()).st_size, mtime), f)


def _member(name: str, kind: bytes, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.mtime = mtime
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info
