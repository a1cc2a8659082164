"""docker-archive: the tarball ``docker load`` and ``podman load`` read (Docker image spec v1.2).

Members, in this order, so the archive can be streamed to a pipe:

- ``<diff_id hex>/layer.tar`` for each layer, the uncompressed layer tar;
- ``<config sha256 hex>.json``, the image config;
- ``manifest.json``: ``[{"Config": ..., "RepoTags": ["name:tag"], "Layers": [...]}]``.

As in nixpkgs ``stream_layered_image.py``; layers come from files already written, so nothing
is tarred twice.
"""

from __future__ import annotations

import hashlib
from typing import BinaryIO, Sequence

from nixlayer.mediatypes import MEDIA_TYPE_OCI_LAYER
from nixlayer.errors import NixlayerError
from nixlayer.image import ImageLayer, canonical_json, damaged_blob, sha256_digest
from nixlayer import tar
from nixlayer.layer import COPY_BUFFER


def check_media_type(media_type: str) -> None:
    """Raise NixlayerError unless ``media_type`` is an uncompressed layer, as docker-archive needs."""
    if media_type != MEDIA_TYPE_OCI_LAYER:
        raise NixlayerError(
            "docker-archive holds uncompressed layers: use compression none (--compression none), or an OCI"
            " format (oci, oci-archive) or a registry push for gzip and zstd"
        )


def write_docker_archive(
    out: BinaryIO, layers: Sequence[ImageLayer], config: bytes, repo_tag: str, mtime: int
) -> str:
    """Stream a docker-archive of ``layers`` and ``config`` to ``out``; return the image ID.

    ``repo_tag`` is ``name:tag``; ``mtime`` (seconds since the epoch) is every member's mtime.
    The image ID is the config's ``sha256:<hex>``. Raises NixlayerError for compressed layers,
    and for a layer blob that does not match its digest.
    """
    for layer in layers:
        check_media_type(layer.blob.media_type)
    config_name = sha256_digest(config).removeprefix("sha256:") + ".json"
    layer_names = [layer.blob.diff_id.removeprefix("sha256:") + "/layer.tar" for layer in layers]
    manifest = canonical_json([{"Config": config_name, "RepoTags": [repo_tag], "Layers": layer_names}])
    # Written member by member as TarFile writes them (same bytes), each layer's blob hashed as
    # it is copied: a blob damaged on disk never reaches the archive whole.
    written = 0
    for name, layer in dict(zip(layer_names, layers)).items():  # a repeated layer once
        header = _member(name, layer.blob.size, mtime)
        out.write(header)
        _copy_blob(layer, out)
        out.write(tar.padding(layer.blob.size))
        written += len(header) + layer.blob.size + len(tar.padding(layer.blob.size))
    for name, data in ((config_name, config), ("manifest.json", manifest)):
        member = _member(name, len(data), mtime) + data + tar.padding(len(data))
        out.write(member)
        written += len(member)
    out.write(tar.end(written))
    return sha256_digest(config)


def _copy_blob(layer: ImageLayer, out: BinaryIO) -> None:
    """Copy the blob of ``layer`` (uncompressed: its digest is its diff_id) to ``out``, hashing
    it on the way. Raises NixlayerError naming the blob file if it is shorter than recorded or
    its bytes do not match its digest (damaged on disk: the caller discards the output)."""
    size, path = layer.blob.size, layer.file
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        copied = 0
        while copied < size:
            data = f.read(min(size - copied, COPY_BUFFER))
            if not data:
                raise NixlayerError(f"layer blob {path} is shorter than its recorded {size} bytes")
            digest.update(data)
            out.write(data)
            copied += len(data)
    if "sha256:" + digest.hexdigest() != layer.blob.digest:
        raise NixlayerError(damaged_blob(path))


def _member(name: str, size: int, mtime: int) -> bytes:
    """The tar header of a member, as TarFile (pax format, UTF-8) writes it."""
    return tar.header(name, tar.REGTYPE, 0o644, size=size, mtime=mtime)
