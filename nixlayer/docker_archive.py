"""docker-archive: the tarball ``docker load`` and ``podman load`` read (Docker image spec v1.2).

Members, in this order, so the archive can be streamed to a pipe:

- ``<diff_id hex>/layer.tar`` for each layer, the uncompressed layer tar;
- ``<config sha256 hex>.json``, the image config;
- ``manifest.json``: ``[{"Config": ..., "RepoTags": ["name:tag"], "Layers": [...]}]``.

As in nixpkgs ``stream_layered_image.py``; layers come from files already written, so nothing
is tarred twice.
"""

from __future__ import annotations

import io
import tarfile
from typing import BinaryIO, Sequence

from nixlayer.mediatypes import MEDIA_TYPE_OCI_LAYER
from nixlayer.errors import NixlayerError
from nixlayer.image import ImageLayer, canonical_json, sha256_digest
from nixlayer.layer import COPY_BUFFER


def check_media_type(media_type: str) -> None:
    """Raise NixlayerError unless ``media_type`` is an uncompressed layer, as docker-archive needs."""
    if media_type != MEDIA_TYPE_OCI_LAYER:
        raise NixlayerError(
            "docker-archive holds uncompressed layers: use --compression none, or an OCI"
            " format (oci, oci-archive) or a registry push for gzip and zstd"
        )


def write_docker_archive(
    out: BinaryIO, layers: Sequence[ImageLayer], config: bytes, repo_tag: str, mtime: int
) -> str:
    """Stream a docker-archive of ``layers`` and ``config`` to ``out``; return the image ID.

    ``repo_tag`` is ``name:tag``; ``mtime`` (seconds since the epoch) is every member's mtime.
    The image ID is the config's ``sha256:<hex>``. Raises NixlayerError for compressed layers.
    """
    for layer in layers:
        check_media_type(layer.blob.media_type)
    config_name = sha256_digest(config).removeprefix("sha256:") + ".json"
    layer_names = [layer.blob.diff_id.removeprefix("sha256:") + "/layer.tar" for layer in layers]
    manifest = canonical_json([{"Config": config_name, "RepoTags": [repo_tag], "Layers": layer_names}])
    with tarfile.open(fileobj=out, mode="w|", bufsize=COPY_BUFFER, format=tarfile.PAX_FORMAT, encoding="utf-8") as tar:
        tar.copybufsize = COPY_BUFFER
        for name, layer in dict(zip(layer_names, layers)).items():  # a repeated layer once
            with open(layer.file, "rb") as f:
                tar.addfile(_member(name, layer.blob.size, mtime), f)
        for name, data in ((config_name, config), ("manifest.json", manifest)):
            tar.addfile(_member(name, len(data), mtime), io.BytesIO(data))
    return sha256_digest(config)


def _member(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = 0o644
    return info
