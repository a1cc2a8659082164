"""Closure graphs: which store paths a set of roots needs, and what each one references.

A :class:`ClosureGraph` maps each store path to its references (the store paths whose hash
part occurs in its contents, itself included when it refers to itself), to its NAR size and to
its NAR hash (the SBOM's component hash, :mod:`nixlayer.sbom`).
Three readers build one:

- :func:`graph_from_json`: the JSON of ``nix path-info --json --recursive`` (list or object
  form) or of nixpkgs ``exportReferencesGraph``.
- :func:`graph_from_nix`: asks the Nix installed on this machine.
- :func:`graph_from_store_dir`: scans a plain store directory the way Nix finds references,
  with no Nix and no Nix database at all.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import shutil
import stat
import struct
import sys
import subprocess
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from nixlayer.errors import NixlayerError
from nixlayer.storepath import (
    DEFAULT_STORE_DIR,
    HASH_LENGTH,
    NIX_BASE32,
    check_store_path,
    hash_part,
    normalize_store_dir,
    on_disk,
)


class ClosureGraph:
    """An immutable closure graph: store path -> references, plus NAR sizes and NAR hashes.

    Construction validates the whole graph and raises NixlayerError (one line naming the
    culprit) for a path outside ``store_dir``, a reference to a path missing from the graph,
    or a cycle between two distinct store paths. Self-references are kept as data (Nix
    records them) but are never treated as edges for ordering.

    Attributes:
        store_dir: the store directory every path lives in, e.g. ``/nix/store``.
    """

    __slots__ = ("store_dir", "_references", "_nar_sizes", "_nar_hashes")

    def __init__(
        self,
        references: Mapping[str, Iterable[str]],
        nar_sizes: Mapping[str, int | None] | None = None,
        store_dir: str = DEFAULT_STORE_DIR,
        nar_hashes: Mapping[str, str | None] | None = None,
    ) -> None:
        """Build and validate a graph.

        Args:
            references: every store path of the graph -> the store paths it references
                (duplicates are merged; a path may reference itself).
            nar_sizes: store path -> NAR size in bytes, or None when unknown. Paths left out
                have an unknown size.
            store_dir: the store directory; every path must be directly inside it.
            nar_hashes: store path -> NAR hash in any form Nix prints (see
                :func:`nar_hash_digest`), or None when unknown; kept as ``sha256:<hex>``.
        Raises:
            NixlayerError: bad store path, dangling reference, cycle, a size or hash for a
                path that is not in the graph, or a NAR hash Nix would not print.
        """
        store_dir = normalize_store_dir(store_dir)
        refs: dict[str, frozenset[str]] = {}
        for path, path_refs in references.items():
            check_store_path(path, store_dir)
            refs[path] = frozenset(path_refs)
        for path in sorted(refs):
            for ref in sorted(refs[path]):
                if ref not in refs:
                    check_store_path(ref, store_dir)
                    raise NixlayerError(f"{path} references {ref}, which is not in the closure graph")
        sizes = dict.fromkeys(refs)
        for path, size in (nar_sizes or {}).items():
            if path not in refs:
                raise NixlayerError(f"NAR size given for {path}, which is not in the closure graph")
            if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
                raise NixlayerError(f"NAR size of {path} is {size!r}, not a byte count")
            sizes[path] = size
        hashes = dict.fromkeys(refs)
        for path, nar_hash in (nar_hashes or {}).items():
            if path not in refs:
                raise NixlayerError(f"NAR hash given for {path}, which is not in the closure graph")
            hashes[path] = None if nar_hash is None else nar_hash_digest(nar_hash, path)
        object.__setattr__(self, "store_dir", store_dir)
        object.__setattr__(self, "_references", MappingProxyType(refs))
        object.__setattr__(self, "_nar_sizes", MappingProxyType(sizes))
        object.__setattr__(self, "_nar_hashes", MappingProxyType(hashes))
        _check_acyclic(refs)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("ClosureGraph is immutable")

    @property
    def paths(self) -> tuple[str, ...]:
        """All store paths of the graph, sorted."""
        return tuple(sorted(self._references))

    def references(self, path: str) -> frozenset[str]:
        """The store paths ``path`` references, itself included if it refers to itself.

        Raises NixlayerError if ``path`` is not in the graph.
        """
        return self._references[self._known(path)]

    def nar_size(self, path: str) -> int | None:
        """The NAR size of ``path`` in bytes, or None if unknown. Raises NixlayerError if
        ``path`` is not in the graph."""
        return self._nar_sizes[self._known(path)]

    def nar_hash(self, path: str) -> str | None:
        """The NAR hash of ``path`` as ``sha256:<hex>``, or None if unknown. Raises
        NixlayerError if ``path`` is not in the graph."""
        return self._nar_hashes[self._known(path)]

    def sized_paths(self, order: Sequence[str] | None, layering: str) -> tuple[list[str], dict[str, int]]:
        """Every store path, in ``order`` (default: by store path, the order Nix writes the
        graph), and each one's NAR size, for a layering that needs them all (``layering``
        names it in errors). Raises NixlayerError for a store path without a NAR size, or an
        ``order`` that is not the graph's store paths, each once."""
        paths = list(self.paths) if order is None else list(order)
        if sorted(paths) != list(self.paths):
            raise NixlayerError(f"the order given to the {layering} layering is not the closure's store paths, each once")
        sizes: dict[str, int] = {}
        for path in paths:
            size = self.nar_size(path)
            if size is None:
                raise NixlayerError(f"the {layering} layering needs every store path's NAR size; {path} has none"
                                    " (read the closure from Nix, a spec or nix path-info --json; or use --layering popularity,"
                                    " which needs none)")
            sizes[path] = size
        return paths, sizes

    def to_json(self) -> list[dict[str, Any]]:
        """The graph as ``nix path-info --json --recursive`` (Nix 2.8) prints it, sorted by
        store path: ``{path, narHash, narSize, references}`` each, unknown values left out;
        :func:`graph_from_json` reads it back to an equal graph."""
        entries = []
        for path in self.paths:
            entry: dict[str, Any] = {"path": path, "references": sorted(self._references[path])}
            if self._nar_hashes[path] is not None:
                entry["narHash"] = self._nar_hashes[path]
            if self._nar_sizes[path] is not None:
                entry["narSize"] = self._nar_sizes[path]
            entries.append(entry)
        return entries

    def references_map(self) -> Mapping[str, frozenset[str]]:
        """A read-only view: store path -> references (self-references included)."""
        return self._references

    def roots(self) -> tuple[str, ...]:
        """The paths no other path references (self-references do not count), sorted."""
        referenced = {ref for path, refs in self._references.items() for ref in refs if ref != path}
        return tuple(sorted(set(self._references) - referenced))

    def closure(self, roots: Iterable[str]) -> ClosureGraph:
        """The sub-graph of every path reachable from ``roots`` (roots included).

        Raises NixlayerError naming the first root that is not in the graph.
        """
        seen: set[str] = set()
        pending = [self._known(root, "root") for root in roots]
        while pending:
            path = pending.pop()
            if path not in seen:
                seen.add(path)
                pending.extend(self._references[path] - seen)
        # A closed subset of a valid graph is valid: no need to check it again.
        graph = object.__new__(ClosureGraph)
        object.__setattr__(graph, "store_dir", self.store_dir)
        object.__setattr__(graph, "_references", MappingProxyType({path: self._references[path] for path in seen}))
        object.__setattr__(graph, "_nar_sizes", MappingProxyType({path: self._nar_sizes[path] for path in seen}))
        object.__setattr__(graph, "_nar_hashes", MappingProxyType({path: self._nar_hashes[path] for path in seen}))
        return graph

    def _known(self, path: str, role: str = "store path") -> str:
        if path not in self._references:
            check_store_path(path, self.store_dir)
            raise NixlayerError(f"{role} {path} is not in the closure graph")
        return path

    def __contains__(self, path: object) -> bool:
        return path in self._references

    def __iter__(self) -> Iterator[str]:
        return iter(self.paths)

    def __len__(self) -> int:
        return len(self._references)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClosureGraph):
            return NotImplemented
        return (self.store_dir, self._references, self._nar_sizes, self._nar_hashes) == (
            other.store_dir, other._references, other._nar_sizes, other._nar_hashes
        )

    def __hash__(self) -> int:
        return hash((self.store_dir, frozenset(self._references.items())))

    def __repr__(self) -> str:
        return f"ClosureGraph({len(self)} store paths in {self.store_dir})"


def _check_acyclic(references: Mapping[str, frozenset[str]]) -> None:
    """Raise NixlayerError naming two paths of a cycle (self-references are ignored)."""
    state: dict[str, int] = {}  # 1: on the current DFS stack, 2: finished
    for start in sorted(references):
        if start in state:
            continue
        state[start] = 1
        stack = [(start, iter(sorted(references[start])))]
        while stack:
            path, refs = stack[-1]
            for ref in refs:
                if ref == path:
                    continue
                if state.get(ref) == 1:
                    raise NixlayerError(f"reference cycle: {path} references {ref}, which leads back to it")
                if ref not in state:
                    state[ref] = 1
                    stack.append((ref, iter(sorted(references[ref]))))
                    break
            else:
                state[path] = 2
                stack.pop()


def image_closure(graph: ClosureGraph, contents: Iterable[str], config_paths: Iterable[str] = ()) -> ClosureGraph:
    """The closure of an image's store paths: its ``contents`` and the store paths its config
    mentions (``config_paths``), taken from ``graph``.

    Raises NixlayerError naming the first of them that is not a store path or not in ``graph``.
    """
    roots = [*contents, *config_paths]
    for path in roots:
        if path not in graph:
            check_store_path(path, graph.store_dir)
            raise NixlayerError(f"image store path {path} is not in the closure graph")
    return graph.closure(roots)


_SHA256_BYTES = 32


def nar_hash_digest(text: str, path: str = "a store path") -> str:
    """A NAR hash as Nix prints it, as ``sha256:<64 hex digits>``.

    Nix prints SHA-256 hashes in three encodings: SRI ``sha256-<base64>`` (``nix path-info``
    since Nix 2.4), ``sha256:<52 characters of Nix's base-32>`` (older Nix, nixpkgs'
    ``exportReferencesGraph``), and base-16 (``nix-store --dump-db``, with or without
    ``sha256:``). Nix's base-32 writes the hash's bits from the last character on, five at a
    time, least significant first (``printHash32`` in Nix's ``hash.cc``). Raises NixlayerError
    naming ``path`` for anything else.
    """
    value = text.removeprefix("sha256:") if isinstance(text, str) else ""
    raw: bytes | None = None
    try:
        if isinstance(text, str) and text.startswith("sha256-"):
            raw = base64.b64decode(text.removeprefix("sha256-"), validate=True)
        elif re.fullmatch(r"[0-9a-f]{64}", value):
            raw = bytes.fromhex(value)
        elif len(value) == 52 and all(c in NIX_BASE32 for c in value):
            raw = _from_nix_base32(value)
    except (binascii.Error, ValueError):
        raw = None
    if raw is None or len(raw) != _SHA256_BYTES:
        raise NixlayerError(f"NAR hash of {path} is {text!r}, not a SHA-256 hash as Nix prints it")
    return "sha256:" + raw.hex()


def _from_nix_base32(text: str) -> bytes:
    """The bytes of a hash in Nix's base-32 (raises ValueError if it does not fit 32 bytes)."""
    out = bytearray(_SHA256_BYTES)
    for n, char in enumerate(reversed(text)):
        digit = NIX_BASE32.index(char)
        bit = n * 5
        i, j = divmod(bit, 8)
        out[i] |= (digit << j) & 0xFF
        carry = digit >> (8 - j)
        if i + 1 < _SHA256_BYTES:
            out[i + 1] |= carry
        elif carry:
            raise ValueError("base-32 hash longer than SHA-256")
    return bytes(out)


# --- JSON --------------------------------------------------------------------------------


def graph_from_json(data: Any, store_dir: str = DEFAULT_STORE_DIR) -> ClosureGraph:
    """Read a closure graph from Nix or nixpkgs JSON.

    Accepted forms (``data`` is the parsed value, or the raw JSON text as str, or as bytes
    in UTF-8, the encoding Nix writes):

    - ``nix path-info --json --recursive`` from Nix 2.8 and older: a list of objects with
      ``path``, ``narSize`` and ``references``;
    - the same from newer Nix: an object keyed by store path whose values lack ``path``
      (references given as base names are taken relative to ``store_dir``);
    - nixpkgs ``exportReferencesGraph``: a list of ``{path, narSize, narHash, closureSize,
      references}``, or an object with one key holding that list (as nixpkgs passes it to
      ``closure-graph.py``).

    ``narSize`` (bytes) becomes :meth:`ClosureGraph.nar_size` and ``narHash``
    :meth:`ClosureGraph.nar_hash`; each is None when absent.

    Raises:
        NixlayerError: bytes that are not UTF-8, invalid JSON, an unexpected shape (the message says what was found),
            a path marked invalid (``"valid": false`` or ``null``), or any graph error.
    """
    if isinstance(data, (bytes, bytearray)):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError as error:
            raise NixlayerError(
                f"malformed closure graph JSON: not UTF-8 (byte 0x{error.object[error.start]:02x} at offset {error.start})"
            ) from None
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError as error:
            raise NixlayerError(f"malformed closure graph JSON: {error}") from None
    store_dir = normalize_store_dir(store_dir)
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))
    if isinstance(data, list):
        entries = [(_entry_path(entry), entry) for entry in data]
    elif isinstance(data, dict):
        entries = list(data.items())
    else:
        raise NixlayerError(f"malformed closure graph JSON: expected a list or an object, got {type(data).__name__}")
    references: dict[str, list[str]] = {}
    nar_sizes: dict[str, int | None] = {}
    nar_hashes: dict[str, str | None] = {}
    for path, entry in entries:
        if entry is None or (isinstance(entry, dict) and entry.get("valid") is False):
            raise NixlayerError(f"{path} is not valid in the Nix store")
        if not isinstance(entry, dict):
            raise NixlayerError(f"malformed closure graph JSON: entry for {path} is {type(entry).__name__}, not an object")
        refs = entry.get("references", [])
        if not isinstance(refs, list) or not all(isinstance(ref, str) for ref in refs):
            raise NixlayerError(f"malformed closure graph JSON: references of {path} are not a list of strings")
        if path in references:
            raise NixlayerError(f"malformed closure graph JSON: {path} appears twice")
        references[path] = [ref if ref.startswith("/") else f"{store_dir}/{ref}" for ref in refs]
        nar_sizes[path] = entry.get("narSize")
        nar_hashes[path] = entry.get("narHash")
    return ClosureGraph(references, nar_sizes, store_dir, nar_hashes)


def _entry_path(entry: Any) -> str:
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
        raise NixlayerError(f"malformed closure graph JSON: list entry {str(entry)[:80]!r} has no \"path\" string")
    return entry["path"]


# --- live Nix ----------------------------------------------------------------------------


def graph_from_nix(roots: Iterable[str], store_dir: str = DEFAULT_STORE_DIR) -> ClosureGraph:
    """Ask the local Nix store for the closure of ``roots``.

    Runs ``nix path-info --json --recursive --offline --extra-experimental-features
    nix-command ROOTS...`` when ``nix`` is on PATH (``--offline``: only the local store
    counts, no substituter is asked). With only ``nix-store`` available it runs
    ``nix-store --query --requisites ROOTS...`` and then ``nix-store --dump-db PATHS...``,
    which prints each path's NAR size and references in one call (instead of one
    ``--query --references`` process per path).

    Returns the closure graph with NAR sizes in bytes.

    Raises:
        NixlayerError: neither program is on PATH, a root is not a valid path of the store
            (the message says how to build or fetch it), Nix failed otherwise (the message
            repeats Nix's own error line), or Nix printed something unreadable.
    """
    roots = [check_store_path(root, store_dir) for root in roots]
    if not roots:
        raise NixlayerError("no root store paths given")
    if shutil.which("nix"):
        output = _ask_about(roots, ["nix", "path-info", "--json", "--recursive", "--offline",
                                    "--extra-experimental-features", "nix-command", *roots])
        return graph_from_json(output, store_dir).closure(roots)
    if shutil.which("nix-store"):
        requisites = _ask_about(roots, ["nix-store", "--query", "--requisites", *roots]).split()
        references: dict[str, list[str]] = {}
        nar_sizes: dict[str, int | None] = {}
        nar_hashes: dict[str, str | None] = {}
        for start in range(0, len(requisites), 1000):  # stay far below the argument size limit
            dump = _run_nix(["nix-store", "--dump-db", *requisites[start:start + 1000]])
            _read_validity_registration(dump, references, nar_sizes, nar_hashes)
        return ClosureGraph(references, nar_sizes, store_dir, nar_hashes).closure(roots)
    raise NixlayerError("neither nix nor nix-store is on PATH: install Nix, or read the graph from JSON or a store directory")


def _ask_about(roots: list[str], argv: list[str]) -> str:
    """``_run_nix(argv)``, a query about ``roots``: when it fails, a root that is not valid is
    named first (how to build or fetch it), else Nix's own error."""
    try:
        return _run_nix(argv)
    except NixlayerError:
        _check_valid(roots)
        raise


def _check_valid(roots: list[str]) -> None:
    """Raise NixlayerError for the first of ``roots`` that is not a valid path of the Nix store
    (not built, garbage-collected, or a directory Nix never registered), saying how to get it.
    Asked only after a Nix command failed, to tell this commonest mistake from other failures;
    returns if all are valid, or if ``nix-store`` cannot say."""
    try:
        result = subprocess.run(["nix-store", "--check-validity", "--print-invalid", *roots],
                                capture_output=True, text=True, errors="replace", check=False)
    except OSError:
        return
    invalid = result.stdout.split() if result.returncode == 0 else []
    if invalid:
        path = invalid[0]
        if os.path.lexists(path):
            raise NixlayerError(
                f"{path} exists on disk but Nix does not know it as valid (an interrupted build, or copied in"
                f" without Nix): build it again (`nix-build FILE.nix -A ATTR`) or fetch it (`nix-store --realise {path}`)")
        raise NixlayerError(
            f"{path} is not in the Nix store (not built, or garbage-collected): build it (`nix-build FILE.nix -A"
            f" ATTR` prints its path) or fetch it (`nix-store --realise {path}`)")


def nix_error_line(stderr: str) -> str:
    """The error of a failed Nix command, as one line, from its standard error.

    That is the last line starting with ``error:`` (indentation stripped): Nix's own error
    comes last, after any ``warning: error: ...`` lines, build logs, source excerpts and hints
    such as ``Did you mean hello?``. A bare ``error:`` (newer Nix, followed by a trace) is
    joined with the next line. Without an ``error:`` line: the last non-blank line, or
    ``no message``.
    """
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for at in range(len(lines) - 1, -1, -1):
        if lines[at].startswith("error:"):
            if lines[at] == "error:" and at + 1 < len(lines):
                return f"error: {lines[at + 1]}"
            return lines[at]
    return lines[-1] if lines else "no message"


def _run_nix(argv: list[str]) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, errors="replace", check=False)
    except OSError as error:
        raise NixlayerError(f"cannot run {argv[0]}: {error.strerror}") from None
    if result.returncode != 0:
        detail = nix_error_line(result.stderr)
        raise NixlayerError(f"{argv[0]} {argv[1]} failed (exit {result.returncode}): {detail}")
    return result.stdout


def _read_validity_registration(text: str, references: dict[str, list[str]], nar_sizes: dict[str, int | None],
                                nar_hashes: dict[str, str | None]) -> None:
    """Parse ``nix-store --dump-db`` output: per path, lines ``path``, ``narHash`` (base-16
    SHA-256), ``narSize``, ``deriver``, reference count, then the references."""
    lines = text.splitlines()
    at = 0
    try:
        while at < len(lines):
            path, size, count = lines[at], int(lines[at + 2]), int(lines[at + 4])
            references[path] = lines[at + 5:at + 5 + count]
            nar_sizes[path] = size
            nar_hashes[path] = lines[at + 1]
            at += 5 + count
    except (IndexError, ValueError):
        raise NixlayerError(f"nix-store --dump-db printed unreadable output near line {at + 1}") from None


# --- plain store directory ---------------------------------------------------------------

_CHUNK_SIZE = 1 << 20
_CARRY = HASH_LENGTH - 1
_HASH_RUN = re.compile(rb"[0-9a-df-np-sv-z]{32,}")
class _ReferenceScanner:
    """Finds the known hash parts in a stream of bytes, chunk by chunk."""

    def __init__(self, hashes: frozenset[bytes]) -> None:
        self.hashes = hashes
        self.found: set[bytes] = set()

    def scan(self, data: bytes) -> None:
        """Record every known hash part that occurs in ``data``."""
        hashes = self.hashes
        for run in _HASH_RUN.finditer(data):
            text = run.group()
            for start in range(len(text) - HASH_LENGTH + 1):
                window = text[start:start + HASH_LENGTH]
                if window in hashes:
                    self.found.add(window)

    def scan_file(self, file_path: bytes, each_chunk: Callable[[bytes], None]) -> int:
        """Scan a file in chunks, each also given to ``each_chunk``; return its bytes. The last
        31 bytes of each buffer are scanned again with the next chunk, so a hash part spanning
        two chunks is found."""
        size = 0
        with open(file_path, "rb") as file:
            carry = b""
            while chunk := file.read(_CHUNK_SIZE):
                each_chunk(chunk)
                size += len(chunk)
                buffer = carry + chunk
                self.scan(buffer)
                carry = buffer[-_CARRY:]
        return size


class _Nar:
    """A store path's NAR serialisation (Nix's ``dumpPath``), hashed (SHA-256) and counted as
    it is made, never kept: every string is its length (64-bit little-endian), its bytes, and
    zeros up to a multiple of 8."""

    def __init__(self) -> None:
        self.sha256 = hashlib.sha256()
        self.size = 0

    def add(self, data: bytes) -> None:
        self.sha256.update(data)
        self.size += len(data)

    def string(self, *values: bytes) -> None:
        for value in values:
            self.add(struct.pack("<Q", len(value)) + value + bytes(-len(value) % 8))


def _scan_store_path(disk_path: bytes, scanner: _ReferenceScanner) -> tuple[int, str]:
    """Scan one store path on disk as Nix scans its NAR; return its exact NAR size in bytes and
    its NAR hash (``sha256:<hex>``), as Nix registers them."""
    nar = _Nar()
    nar.string(b"nix-archive-1")
    _dump(disk_path, scanner, nar)
    return nar.size, "sha256:" + nar.sha256.hexdigest()


def _dump(entry: bytes, scanner: _ReferenceScanner, nar: _Nar) -> None:
    """One node of the NAR: a symlink, a regular file (executable if its owner may run it), or
    a directory with its entries sorted by name (bytes), each node in its turn."""
    info = os.lstat(entry)
    nar.string(b"(", b"type")
    if stat.S_ISLNK(info.st_mode):
        target = os.readlink(entry)
        scanner.scan(target)
        nar.string(b"symlink", b"target", target)
    elif stat.S_ISREG(info.st_mode):
        nar.string(b"regular")
        if info.st_mode & stat.S_IXUSR:
            nar.string(b"executable", b"")
        nar.string(b"contents")
        nar.add(struct.pack("<Q", info.st_size))
        size = scanner.scan_file(entry, nar.add)
        if size != info.st_size:
            raise NixlayerError(f"{os.fsdecode(entry)} changed size while it was read: build again when nothing"
                                " writes to the store path (store paths are never changed by Nix)")
        nar.add(bytes(-size % 8))
    elif stat.S_ISDIR(info.st_mode):
        nar.string(b"directory")
        for name in sorted(os.listdir(entry)):
            scanner.scan(name)
            nar.string(b"entry", b"(", b"name", name, b"node")
            _dump(os.path.join(entry, name), scanner, nar)
            nar.string(b")")
    else:
        raise NixlayerError(f"{os.fsdecode(entry)} is neither a file, a directory nor a symlink: Nix cannot store it")
    nar.string(b")")


def graph_from_store_dir(
    roots: Iterable[str], store_root: str = "/", store_dir: str = DEFAULT_STORE_DIR
) -> ClosureGraph:
    """Find the closure of ``roots`` in a plain store directory, without Nix.

    The store directory is read at ``store_root + store_dir`` on disk (``store_root="/"`` is
    the live store; a chroot store has its paths under ``ROOT/nix/store``), while the graph's
    paths stay named ``store_dir/HASH-NAME``. References are found as Nix finds them: each
    store path reachable from the roots is scanned (file contents, symlink targets and entry
    names, i.e. what its NAR serialisation contains) for the 32-character hash part of every
    store path present in the directory; a path that contains its own hash references itself.
    Files are read in 1 MiB chunks with a 31-byte overlap, never whole. Entries ending in
    ``.lock`` (Nix's lock files) are not store paths.

    Returns the closure graph with NAR sizes in bytes and NAR hashes computed exactly from the
    files (the size and SHA-256 of what ``nix-store --dump`` would write).

    Raises:
        NixlayerError: the store directory is unreadable, a root is not in it, a path holds
            something Nix cannot store (a device, a socket), or a graph error such as a cycle.
    """
    store_dir = normalize_store_dir(store_dir)
    disk_store = on_disk(store_root, store_dir)
    try:
        names = [name for name in os.listdir(disk_store) if not name.endswith(".lock")]
    except OSError as error:
        raise NixlayerError(f"cannot read store directory {disk_store}: {error.strerror}") from None
    path_of_hash: dict[bytes, str] = {}
    for name in names:
        path = f"{store_dir}/{name}"
        try:
            check_store_path(path, store_dir)
        except NixlayerError:
            continue  # not a store path: .links, temporary files
        path_of_hash[hash_part(path).encode()] = path
    hashes = frozenset(path_of_hash)
    references: dict[str, set[str]] = {}
    nar_sizes: dict[str, int | None] = {}
    nar_hashes: dict[str, str | None] = {}
    pending = []
    for root in roots:
        check_store_path(root, store_dir)
        if path_of_hash.get(hash_part(root).encode()) != root:
            raise NixlayerError(f"root {root} is not in the store directory {disk_store}")
        pending.append(root)
    while pending:
        path = pending.pop()
        if path in references:
            continue
        scanner = _ReferenceScanner(hashes)
        try:
            nar_sizes[path], nar_hashes[path] = _scan_store_path(
                os.fsencode(os.path.join(disk_store, path[len(store_dir) + 1:])), scanner)
        except OSError as error:
            culprit = os.fsdecode(error.filename) if error.filename else path
            raise NixlayerError(f"cannot read {culprit}: {error.strerror}") from None
        references[path] = {path_of_hash[found] for found in scanner.found}
        pending.extend(references[path] - references.keys())
    return ClosureGraph(references, nar_sizes, store_dir, nar_hashes)


def read_graph(
    roots: Iterable[str],
    *,
    graph_file: str | None = None,
    scan_root: str | None = None,
    store_dir: str = DEFAULT_STORE_DIR,
) -> ClosureGraph:
    """A graph holding the closure of ``roots``, from one of three sources, in this order:

    ``graph_file``, a JSON graph, returned whole (:func:`graph_from_json`; ``-`` reads
    standard input);
    ``scan_root``, a store directory under that root scanned without Nix
    (:func:`graph_from_store_dir`); otherwise live Nix (:func:`graph_from_nix`).

    Raises NixlayerError, naming the graph file when it cannot be read.
    """
    roots = list(roots)
    if graph_file is not None:
        # Bytes: graph_from_json decodes them and reports a file that is not UTF-8 as one line.
        if graph_file == "-":
            data = sys.stdin.buffer.read()
        else:
            try:
                with open(graph_file, "rb") as file:
                    data = file.read()
            except OSError as error:
                raise NixlayerError(f"cannot read graph file {graph_file}: {error.strerror}") from None
        return graph_from_json(data, store_dir)
    if scan_root is not None:
        return graph_from_store_dir(roots, scan_root, store_dir)
    return graph_from_nix(roots, store_dir)
