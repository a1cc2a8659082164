"""Layer compression: none, gzip and zstd, as incremental, deterministic streams.

A ``Compression`` names the algorithm and its settings; ``Compression.compressor()`` returns a
fresh object with ``compress(bytes) -> bytes`` and ``flush() -> bytes``, so layer bytes can be
compressed while they are written (memory stays bounded). The media types are those of the OCI
image-spec, "Image Layer Filesystem Changeset" (layer.md).

Determinism: gzip output has a fixed header (no file name, MTIME 0, XFL 0, OS 255) written here,
around a raw deflate stream from zlib; the same zlib and level give the same bytes on every
machine. zstd output depends on level and threads: ``threads=0`` (single-threaded, the default)
and ``threads>=1`` give different, but each reproducible, bytes.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Protocol

import zstandard

from nixlayer.errors import NixlayerError
from nixlayer.mediatypes import MEDIA_TYPE_OCI_LAYER

NAMES = ("none", "gzip", "zstd")
_DEFAULT_LEVELS = {"none": 0, "gzip": 6, "zstd": 3}
_LEVEL_RANGES = {"none": (0, 0), "gzip": (1, 9), "zstd": (1, 22)}
# RFC 1952: ID1 ID2 CM=deflate FLG=0 MTIME=0 XFL=0 OS=255 (unknown).
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


class Compressor(Protocol):
    def compress(self, data: bytes) -> bytes: ...

    def flush(self) -> bytes: ...


class _Identity:
    def compress(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


class _Gzip:
    """RFC 1952 gzip member with a fixed header: raw deflate plus CRC-32 and ISIZE trailer."""

    def __init__(self, level: int) -> None:
        self._deflate = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, 9)
        self._crc = 0
        self._size = 0
        self._header: bytes = _GZIP_HEADER

    def compress(self, data: bytes) -> bytes:
        self._crc = zlib.crc32(data, self._crc)
        self._size += len(data)
        out = self._header + self._deflate.compress(data)
        self._header = b""
        return out

    def flush(self) -> bytes:
        trailer = struct.pack("<II", self._crc, self._size & 0xFFFFFFFF)
        out = self._header + self._deflate.flush() + trailer
        self._header = b""
        return out


@dataclass(frozen=True)
class Compression:
    """An algorithm (``none``, ``gzip``, ``zstd``), its level and, for zstd, worker threads.

    ``level=None`` takes the default (gzip 6, zstd 3). Raises NixlayerError for an unknown name
    or a level out of range (gzip 1-9, zstd 1-22).
    """

    name: str = "none"
    level: int | None = None
    threads: int = 0

    def __post_init__(self) -> None:
        if self.name not in NAMES:
            raise NixlayerError(f"unknown compression {self.name!r}: use one of {', '.join(NAMES)}")
        low, high = _LEVEL_RANGES[self.name]
        if self.level is not None and not low <= self.level <= high and self.name != "none":
            raise NixlayerError(f"{self.name} level {self.level} is out of range {low}-{high}")
        if self.threads < 0:
            raise NixlayerError(f"compression threads must be 0 or more, not {self.threads}")

    @property
    def effective_level(self) -> int:
        return _DEFAULT_LEVELS[self.name] if self.level is None else self.level

    @property
    def media_type(self) -> str:
        """The OCI layer media type for blobs made with this compression."""
        return MEDIA_TYPE_OCI_LAYER if self.name == "none" else f"{MEDIA_TYPE_OCI_LAYER}+{self.name}"

    @property
    def key(self) -> str:
        """A short string naming everything that changes the compressed bytes."""
        if self.name == "none":
            return "none"
        if self.name == "gzip":
            return f"gzip-{self.effective_level}"
        return f"zstd-{self.effective_level}-t{self.threads}"

    def compressor(self) -> Compressor:
        """A new incremental compressor for one blob."""
        if self.name == "gzip":
            return _Gzip(self.effective_level)
        if self.name == "zstd":
            params = zstandard.ZstdCompressionParameters.from_level(
                self.effective_level, threads=self.threads, write_checksum=True
            )
            return zstandard.ZstdCompressor(compression_params=params).compressobj()
        return _Identity()
