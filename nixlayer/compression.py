"""Layer compression: none, gzip and zstd, as incremental, deterministic, multi-threaded streams.

A ``Compression`` names the algorithm and its settings; ``Compression.compressor()`` returns a
fresh object with ``compress(bytes) -> bytes`` and ``flush() -> bytes``, so layer bytes can be
compressed while they are written (memory stays bounded: a few blocks per thread). The media
types are those of the OCI image-spec, "Image Layer Filesystem Changeset" (layer.md).

Determinism: the compressed bytes depend on the algorithm, its level and the library that makes
them (its version is in ``Compression.key``, and pyproject.toml pins it), never on the number of
threads, on how the input is cut into ``compress`` calls, or on the machine's core count, so a
layer has one digest on every machine of one CPU architecture. zlib-ng promises no more than
that (its matchers are chosen per architecture, and other deflate output has been reported on
aarch64 than on x86-64), so the gzip key names the architecture too: a layer store shared by
machines of two architectures keeps a gzip blob for each.

- gzip: as pigz does it, the tar stream is cut into blocks of ``GZIP_BLOCK`` bytes, each deflated
  on its own (zlib-ng, in a thread pool) with the previous block's last 32 KiB as its preset
  dictionary, and ended on a byte boundary (a sync flush; the last block ends the stream); the
  blocks' deflate streams are joined in order into one RFC 1952 member with a fixed header (no
  file name, MTIME 0, XFL 0, OS 255) and the CRC-32 and size of the whole tar. Every block is
  a pure function of its bytes and its dictionary, so the thread count cannot change them.
- zstd: libzstd's multi-threaded mode (``nbWorkers`` >= 1 even for one thread): its jobs are
  sized from the level, not the worker count, so every thread count gives the same frame (the
  single-threaded mode, ``nbWorkers`` 0, gives other bytes, and is not used).
"""

from __future__ import annotations

import os
import platform
import struct
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import zstandard
from zlib_ng import zlib_ng

from nixlayer.errors import NixlayerError
from nixlayer.mediatypes import MEDIA_TYPE_OCI_LAYER

NAMES = ("none", "gzip", "zstd")
_DEFAULT_LEVELS = {"none": 0, "gzip": 6, "zstd": 3}
_LEVEL_RANGES = {"none": (0, 0), "gzip": (1, 9), "zstd": (1, 22)}
# RFC 1952: ID1 ID2 CM=deflate FLG=0 MTIME=0 XFL=0 OS=255 (unknown).
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
# Bytes of tar per gzip block: part of the compressed bytes (and of Compression.key). 1 MiB, as
# python-zlib-ng's threaded writer: fewer sync markers and dictionary restarts than pigz's
# 128 KiB (0.0005% and about 0.1% larger than one deflate stream here), still many blocks per
# thread in a layer of some megabytes.
GZIP_BLOCK = 1 << 20
_DEFLATE_WINDOW = 1 << 15  # the dictionary each block starts from: deflate's whole window


def machine_threads() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class Compressor(Protocol):
    def compress(self, data: bytes) -> bytes: ...

    def flush(self) -> bytes: ...


class _Identity:
    def compress(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


def _deflate_block(block: bytes, dictionary: bytes, level: int, last: bool) -> bytes:
    """Raw deflate of one block, primed with ``dictionary``: ends the stream if ``last``, else
    ends on a byte boundary (sync flush) so the next block's deflate data can follow it."""
    if dictionary:
        deflate = zlib_ng.compressobj(level, zlib_ng.DEFLATED, -15, 8, zlib_ng.Z_DEFAULT_STRATEGY, dictionary)
    else:
        deflate = zlib_ng.compressobj(level, zlib_ng.DEFLATED, -15, 8)
    return deflate.compress(block) + deflate.flush(zlib_ng.Z_FINISH if last else zlib_ng.Z_SYNC_FLUSH)


class _ParallelGzip:
    """One RFC 1952 member from blocks of ``GZIP_BLOCK`` bytes deflated by ``threads`` threads.

    At most two blocks per thread are in flight; ``compress`` returns the compressed blocks that
    are done, in order, and waits only when that many are pending.
    """

    def __init__(self, level: int, threads: int) -> None:
        self._level = level
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="gzip") if threads > 1 else None
        self._in_flight = 2 * threads
        self._jobs: deque[Future[bytes]] = deque()
        self._pending = bytearray()
        self._dictionary = b""
        self._crc = 0
        self._size = 0
        self._out = [_GZIP_HEADER]

    def compress(self, data: bytes) -> bytes:
        self._crc = zlib_ng.crc32(data, self._crc)
        self._size += len(data)
        self._pending += data
        if len(self._pending) >= GZIP_BLOCK:
            view = memoryview(self._pending)
            start = 0
            while len(view) - start >= GZIP_BLOCK:
                self._submit(bytes(view[start:start + GZIP_BLOCK]), last=False)
                start += GZIP_BLOCK
            view.release()
            del self._pending[:start]
        while self._jobs and self._jobs[0].done():
            self._out.append(self._jobs.popleft().result())
        return self._take()

    def flush(self) -> bytes:
        self._submit(bytes(self._pending), last=True)
        self._pending.clear()
        while self._jobs:
            self._out.append(self._jobs.popleft().result())
        if self._pool is not None:
            self._pool.shutdown()
        self._out.append(struct.pack("<II", self._crc, self._size & 0xFFFFFFFF))
        return self._take()

    def _submit(self, block: bytes, last: bool) -> None:
        dictionary, self._dictionary = self._dictionary, block[-_DEFLATE_WINDOW:]
        if self._pool is None:
            self._out.append(_deflate_block(block, dictionary, self._level, last))
            return
        self._jobs.append(self._pool.submit(_deflate_block, block, dictionary, self._level, last))
        while len(self._jobs) > self._in_flight:
            self._out.append(self._jobs.popleft().result())

    def _take(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out


@dataclass(frozen=True)
class Compression:
    """An algorithm (``none``, ``gzip``, ``zstd``), its level, and the threads that compress.

    ``level=None`` takes the default (gzip 6, zstd 3). ``threads=None`` uses every core this
    process may run on; the thread count changes the speed, never the bytes, so it takes no part
    in equality or in ``key``. Raises NixlayerError for an unknown name, a level out of range
    (gzip 1-9, zstd 1-22) or fewer than 1 thread.
    """

    name: str = "none"
    level: int | None = None
    threads: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.name not in NAMES:
            raise NixlayerError(f"unknown compression {self.name!r}: use one of {', '.join(NAMES)}")
        low, high = _LEVEL_RANGES[self.name]
        if self.level is not None and not low <= self.level <= high and self.name != "none":
            raise NixlayerError(f"{self.name} level {self.level} is out of range {low}-{high}")
        if self.threads is not None and self.threads < 1:
            raise NixlayerError(f"compression threads must be 1 or more, not {self.threads}")

    @property
    def effective_level(self) -> int:
        return _DEFAULT_LEVELS[self.name] if self.level is None else self.level

    @property
    def effective_threads(self) -> int:
        return machine_threads() if self.threads is None else self.threads

    @property
    def media_type(self) -> str:
        """The OCI layer media type for blobs made with this compression."""
        return MEDIA_TYPE_OCI_LAYER if self.name == "none" else f"{MEDIA_TYPE_OCI_LAYER}+{self.name}"

    @property
    def key(self) -> str:
        """A short string naming everything that changes the compressed bytes: the algorithm,
        its level, the library and its version, and (gzip) the block size and the CPU
        architecture (see the module docstring)."""
        if self.name == "none":
            return "none"
        if self.name == "gzip":
            return f"gzip-{self.effective_level}-zlib-ng-{zlib_ng.ZLIBNG_VERSION}-b{GZIP_BLOCK}-{platform.machine()}"
        version = ".".join(map(str, zstandard.ZSTD_VERSION))
        return f"zstd-{self.effective_level}-mt-libzstd-{version}"

    def compressor(self) -> Compressor:
        """A new incremental compressor for one blob."""
        if self.name == "gzip":
            return _ParallelGzip(self.effective_level, self.effective_threads)
        if self.name == "zstd":
            params = zstandard.ZstdCompressionParameters.from_level(
                self.effective_level, threads=self.effective_threads, write_checksum=True
            )
            return zstandard.ZstdCompressor(compression_params=params).compressobj()
        return _Identity()
