"""docker-archive: the tarball ``docker load`` and ``podman load`` read (Docker image spec v1.2).

Members, in this order, so the archive can be streamed to a pipe:

- ``<diff_id hex>/layer.tar`` for each layer, the uncompressed layer tar;
- ``<config sha256 hex>.json``, the image config;
- ``manifest.json``: ``[{"Config": ..., "RepoTags": ["name:tag"], "Layers": [...]}]``.

As in nixpkgs ``stream_layered_image.py``; layers come from files already written, so nothing
is tarred twice.
"""

from __future__ import annotations

import errno
import os
import tarfile
from typing import BinaryIO, Sequence

from nixlayer.mediatypes import MEDIA_TYPE_OCI_LAYER
from nixlayer.errors import NixlayerError
from nixlayer.image import ImageLayer, canonical_json, sha256_digest
from nixlayer.layer import COPY_BUFFER, encode_header, tar_end


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
    The image ID is the config's ``sha256:<hex>``. Raises NixlayerError for compressed layers.
    """
    for layer in layers:
        check_media_type(layer.blob.media_type)
    config_name = sha256_digest(config).removeprefix("sha256:") + ".json"
    layer_names = [layer.blob.diff_id.removeprefix("sha256:") + "/layer.tar" for layer in layers]
    manifest = canonical_json([{"Config": config_name, "RepoTags": [repo_tag], "Layers": layer_names}])
    # Written member by member as TarFile writes them (same bytes), so that each layer's bytes
    # go from its blob file to ``out`` inside the kernel (sendfile), not through Python.
    written = 0
    for name, layer in dict(zip(layer_names, layers)).items():  # a repeated layer once
        header = _member(name, layer.blob.size, mtime)
        out.write(header)
        _copy_blob(layer.file, out, layer.blob.size)
        out.write(_padding(layer.blob.size))
        written += len(header) + layer.blob.size + len(_padding(layer.blob.size))
    for name, data in ((config_name, config), ("manifest.json", manifest)):
        member = _member(name, len(data), mtime) + data + _padding(len(data))
        out.write(member)
        written += len(member)
    out.write(tar_end(written))
    return sha256_digest(config)


def _padding(size: int) -> bytes:
    return tarfile.NUL * (-size % tarfile.BLOCKSIZE)


def _copy_blob(path: str, out: BinaryIO, size: int) -> None:
    """Copy ``size`` bytes of the blob file ``path`` to ``out``: sendfile when ``out`` has a
    file descriptor (a file or a pipe), else through a buffer. Raises NixlayerError if the
    blob is shorter than recorded."""
    with open(path, "rb") as f:
        copied = 0
        try:
            out_fd = out.fileno()
        except (AttributeError, OSError, ValueError):
            out_fd = None
        if out_fd is not None:
            out.flush()
            try:
                while copied < size:
                    sent = os.sendfile(out_fd, f.fileno(), copied, min(size - copied, 1 << 30))
                    if sent == 0:
                        break
                    copied += sent
            except OSError as e:
                if copied or e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
            f.seek(copied)
        while copied < size:
            data = f.read(min(size - copied, COPY_BUFFER))
            if not data:
                raise NixlayerError(f"layer blob {path} is shorter than its recorded {size} bytes")
            out.write(data)
            copied += len(data)


def _member(name: str, size: int, mtime: int) -> bytes:
    """The tar header of a member, as TarFile (pax format, UTF-8) writes it."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = 0o644
    return encode_header(info)
