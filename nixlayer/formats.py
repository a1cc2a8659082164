"""Writing an image in the format asked for: docker-archive, oci (a directory), oci-archive;
and a multi-platform image index (``nixlayer.index``) as oci or oci-archive.

One entry point for every output. Archive files are written atomically (temporary path, then
rename); ``-`` streams docker-archive or oci-archive to standard output, and an output that is
a character or block device or a FIFO is written through, as a stream, never replaced
(``docker save -o /dev/stdout`` does the same). An output that is a symlink is followed: the file
it points to is written (atomically, beside it), the symlink kept. An OCI layout is
written in place, blobs first and ``index.json`` last under a lock (see ``oci_layout``), so a
reader never sees a half-written image, and a failed first image leaves no directory.
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from typing import BinaryIO, Callable, NamedTuple, Sequence

from nixlayer.atomic import atomic_file, remove_stale_temporaries
from nixlayer.docker_archive import check_media_type, write_docker_archive
from nixlayer.errors import NixlayerError
from nixlayer.image import Artifact, ImageLayer, oci_manifest
from nixlayer.index import PlatformImage
from nixlayer.oci_layout import (
    OCI_ARCHIVE_STAGING, check_layout_output, remove_unfinished_layout, write_oci_archive, write_oci_index,
    write_oci_layout,
)

FORMATS = ("docker-archive", "oci", "oci-archive")
STDOUT = "-"


class Written(NamedTuple):
    """What writing an image gave: its digest, and the bytes written to the output (an archive
    whole, streamed ones too: standard output, a device or a FIFO; for an OCI layout the files
    added, layer blobs hard-linked from the layer store costing none)."""

    digest: str
    bytes: int


def is_stream(output: str) -> bool:
    """Whether the image goes to ``output`` as a stream: standard output (``-``), or an existing
    character or block device or FIFO (symlinks followed), written through and never replaced."""
    if output == STDOUT:
        return True
    try:
        mode = os.stat(output).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode)


def check_output(format: str, output: str) -> None:
    """Raise NixlayerError unless ``output`` can take an image of ``format``: an OCI layout is
    a directory (see ``check_layout_output``), an archive a file, a device or a FIFO (a
    socket, or a directory, is refused). Run before any work."""
    if format == "oci":
        if output == STDOUT:
            raise NixlayerError("format 'oci' is a directory and cannot go to standard output; use oci-archive")
        check_layout_output(os.path.realpath(output))
        return
    if output == STDOUT:
        return
    try:
        mode = os.stat(output).st_mode
    except OSError:
        return  # a new file (where a symlink points, if it is one)
    if stat.S_ISDIR(mode):
        raise NixlayerError(f"cannot write output {output}: it is a directory")
    if stat.S_ISSOCK(mode):
        raise NixlayerError(f"cannot write output {output}: it is a socket; give a file, a device or a FIFO")


def check_format(format: str, media_type: str, output: str) -> None:
    """Raise NixlayerError if ``format`` cannot take layers of ``media_type`` or go to ``output``.

    Run before any work: see :func:`check_output`.
    """
    if format not in FORMATS:
        raise NixlayerError(f"unknown format {format!r}: use one of {', '.join(FORMATS)}")
    if format == "docker-archive":
        check_media_type(media_type)
    check_output(format, output)


def write_image(
    format: str,
    output: str,
    layers: Sequence[ImageLayer],
    config: bytes,
    name: str,
    tag: str,
    mtime: int,
    scratch: str,
    *,
    manifest: bytes | None = None,
    artifacts: Sequence[Artifact] = (),
) -> Written:
    """Write the image of ``layers`` and ``config`` (image config JSON) to ``output``.

    ``manifest`` is its OCI image manifest for the OCI formats (default: ``oci_manifest`` of
    the layers and config, without annotations); ``artifacts`` (its SBOM) are attached to it in
    an OCI layout directory (not in archives: ``podman load`` of an oci-archive takes its one
    manifest, and refuses an index of several).

    ``name`` and ``tag`` name the image: docker-archive ``RepoTags`` and the oci-archive's
    ``org.opencontainers.image.ref.name`` are ``name:tag`` (so ``podman load`` names the image);
    in an OCI layout directory the ref name is the tag (``skopeo ... oci:DIR:TAG``), and the
    image is added to the layout there, next to its other tags. ``mtime`` (seconds since the epoch) is
    the archive members' mtime. ``scratch`` is a directory on the layer blobs' file system,
    for the temporary OCI layout of an oci-archive (blobs are hard-linked, not copied).

    Returns the image's digest (the config digest, i.e. the image ID, for docker-archive; the
    manifest digest for OCI) and the bytes written (see :class:`Written`). Raises NixlayerError
    for a format that cannot hold the layers, or naming the file when a layer blob cannot be
    read or the output cannot be written.
    """
    check_format(format, layers[0].blob.media_type if layers else "", output)
    if format == "docker-archive":
        return _write(format, output, lambda out: write_docker_archive(out, layers, config, f"{name}:{tag}", mtime))
    manifest = oci_manifest(config, layers) if manifest is None else manifest
    attached = artifacts if format == "oci" else ()
    return _write_oci(format, output,
                      lambda layout, ref_name: write_oci_layout(layout, layers, config, manifest, ref_name, attached),
                      name, tag, mtime, scratch)


def write_index(
    format: str, output: str, images: Sequence[PlatformImage], name: str, tag: str, mtime: int, scratch: str,
) -> Written:
    """Write the image index of ``images`` (one per platform, see ``nixlayer.index``) to
    ``output``, an OCI layout (``oci``) or an ``oci-archive``, named as :func:`write_image`
    names an image, the images' artifacts attached to them in a layout (as :func:`write_image`
    attaches an image's); return the index digest and the bytes written.

    Raises NixlayerError for docker-archive (it holds images, not an index), two images of one
    platform, or as :func:`write_image`.
    """
    if format == "docker-archive":
        raise NixlayerError("format docker-archive cannot hold a multi-platform image index: use oci or oci-archive")
    for image in images:
        check_format(format, image.layers[0].blob.media_type if image.layers else "", output)
    attached = [artifact for image in images for artifact in image.artifacts] if format == "oci" else ()
    return _write_oci(format, output, lambda layout, ref_name: write_oci_index(layout, images, ref_name, attached),
                      name, tag, mtime, scratch)


def _write_oci(format: str, output: str, add: Callable[[str, str], tuple[str, int]],
               name: str, tag: str, mtime: int, scratch: str) -> Written:
    """Write to ``output``, in ``format`` oci or oci-archive, what ``add(layout, ref_name)``
    adds to an OCI layout (it returns the digest and the bytes written)."""
    if not is_stream(output):
        output = os.path.realpath(output)  # a symlink is followed: its target is written
    if format == "oci":
        def to_layout() -> Written:
            try:  # only the writer that made the directory removes it if its first image fails
                os.mkdir(output)
                created = True
            except FileExistsError:
                created = False
            try:
                return Written(*add(output, tag))
            except BaseException:
                if created:
                    remove_unfinished_layout(output)
                raise
        return _guarded(format, output, to_layout)

    def to_archive(out: BinaryIO) -> str:
        with tempfile.TemporaryDirectory(prefix=OCI_ARCHIVE_STAGING, dir=scratch) as layout:
            remove_stale_temporaries(scratch, OCI_ARCHIVE_STAGING, layout)  # left by killed writers
            digest, _ = add(layout, f"{name}:{tag}")
            write_oci_archive(out, layout, mtime)
        return digest
    return _write(format, output, to_archive)


def _write(format: str, output: str, write: Callable[[BinaryIO], str]) -> Written:
    """Write an archive file with ``write(file) -> digest``: standard output (``-``), a device or
    a FIFO written through (a FIFO waits for its reader), never replaced; a symlink followed, its
    target written atomically; else the file written atomically."""
    if not is_stream(output):
        output = os.path.realpath(output)

    def to_file() -> Written:
        if output == STDOUT:
            stream = _Counted(sys.stdout.buffer)
            digest = write(stream)
            sys.stdout.buffer.flush()
            return Written(digest, stream.count)
        if is_stream(output):
            with open(os.open(output, os.O_WRONLY | os.O_CLOEXEC), "wb") as f:
                stream = _Counted(f)
                return Written(write(stream), stream.count)
        with atomic_file(output) as f:
            return Written(write(f), f.tell())
    return _guarded(format, output, to_file)


class _Counted:
    """A stream that counts the bytes written through it (a pipe or a FIFO has no ``tell``).
    The archive writers only ``write``."""

    def __init__(self, out: BinaryIO) -> None:
        self.out, self.count = out, 0

    def write(self, data) -> int:
        written = self.out.write(data)
        self.count += len(data)
        return written


def _guarded(format: str, output: str, write: Callable[[], Written]) -> Written:
    """``write()``, an OSError raised as the NixlayerError naming the output (and file)."""
    try:
        return write()
    except OSError as e:
        where = f" {e.filename}" if e.filename else ""
        raise NixlayerError(f"cannot write {format} {output}:{where} {e.strerror or e}") from None
