"""The ``auto`` layering: nixpkgs' auto-layer (``dockerAutoLayer``), the same layers for the same graph.

nixpkgs (``pkgs/build-support/docker/auto-layer.py``, PR #355189, the ``streamLayeredImage``
default since 2025) splits a closure into at most ``limit`` layers, largest store paths first:

1. Every store path starts in one layer, identified by the empty set of *primary* store paths.
2. The store paths are taken by descending NAR size (equal sizes: the one later in the graph's
   order first). Each becomes a primary store path, identifying a layer of its own. Each of its
   dependencies (its closure, itself excluded) then loses from its layer identity every primary
   that depends on the new primary path; if no primary left in it is itself a dependency of the
   new one, the new primary is added. So a dependency stays with the largest primary that
   reaches it, unless something that does not reach that primary reaches it too: then it lands
   in a layer of the set of primaries that share it.
3. As soon as a new primary would make more distinct identities than ``limit``, that step is
   undone and the split is final.

Layers are ordered by the NAR size of their closure (every store path their store paths
reference, transitively), smallest first, so a layer comes after the layers it depends on; each
layer's store paths are sorted by name, then hash (:func:`name_then_hash`).

Where nixlayer differs, and why:

- nixpkgs orders layers of equal closure size by Python's set iteration order, which depends on
  the hash seed; nixlayer orders them by their store paths (:func:`name_then_hash`, layer
  against layer), so a plan never changes between runs.
- nixpkgs runs the algorithm on a graph whose roots are two helper derivations of its own, the
  image config file (``baseJson``, referencing the store paths the config mentions) and the
  customisation layer (referencing ``contents``), and drops them from the result (a layer left
  empty goes). nixlayer has neither as a store path (it writes the config and the customisation
  layer itself), so it runs the algorithm on the image's closure alone: the store paths of
  ``contents`` and of the config, and their references, with the same limit. The helpers change
  nixpkgs' layers in two ways, both on the side of fewer layers: (a) until they are taken as
  primaries they sit in the layer of no primary, so once every root of the closure is a primary
  (a large application at the top), that layer holds nothing but the helpers and still counts
  against the limit: nixpkgs then stops one primary earlier and its image has one layer fewer
  than nixlayer's; (b) being a few KB, they are taken as primaries only after every larger store
  path, so on a closure with fewer store paths than the limit they can also pull small shared
  dependencies into layers of their own. On a graph without them (``layering-vectors.json``),
  the layers are nixpkgs' exactly.

The graph's order (step 2's ties) is Nix's ``exportReferencesGraph`` order, by store path, unless
another is given: ``tests/fixtures/layering-vectors.json`` feeds nixpkgs graphs in other orders.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from nixlayer.closure import ClosureGraph
from nixlayer.errors import NixlayerError


def name_then_hash(path: str) -> tuple[str, str]:
    """The key nixpkgs auto-layer sorts store paths by: the name after the hash, then the
    store directory and hash (``/nix/store/abc-zlib-1.3`` -> ``("zlib-1.3", "/nix/store/abc")``).

    Not :func:`nixlayer.storepath.package_name`, popularity's key, which compares one joined
    string: the two disagree where a name continues with a character below ``-``, such as ``+``.
    """
    directory_and_hash, _, name = path.partition("-")
    return name, directory_and_hash


@dataclass(frozen=True)
class AutoLayer:
    """One layer of the ``auto`` layering.

    Attributes:
        store_paths: its store paths, sorted by :func:`name_then_hash`.
        primary_paths: the primary store paths the layer belongs to, sorted the same way: one
            for a store path and the dependencies only it reaches, several for the dependencies
            those share, none for the store paths no primary reaches (the last ones, when the
            layer limit is reached).
        closure_size: the NAR size in bytes of the closure of its store paths, what layers are
            ordered by.
    """

    store_paths: tuple[str, ...]
    primary_paths: tuple[str, ...]
    closure_size: int

    @property
    def reason(self) -> str:
        """Why its store paths are together, for people: ``auto: primary store path P``."""
        if not self.primary_paths:
            return "auto: no primary store path, left over at the limit"
        if len(self.primary_paths) == 1:
            return f"auto: primary store path {self.primary_paths[0]}"
        return f"auto: shared by the primary store paths {', '.join(self.primary_paths)}"


def _reachable(starts: Iterable[str], edges: Mapping[str, frozenset[str]]) -> set[str]:
    """Every node reachable from ``starts`` along ``edges`` (a start only if reachable from another)."""
    seen: set[str] = set()
    pending = [node for start in starts for node in edges[start]]
    while pending:
        node = pending.pop()
        if node not in seen:
            seen.add(node)
            pending.extend(edges[node] - seen)
    return seen


def auto_layers(graph: ClosureGraph, limit: int, *, order: Sequence[str] | None = None) -> list[AutoLayer]:
    """Split every store path of ``graph`` into at most ``limit`` layers as nixpkgs' auto-layer.

    Args:
        graph: the closure to split; every store path needs its NAR size.
        limit: the most layers to make, at least 1 (in an image: ``max_layers - 1`` minus the
            base image's layers, as nixpkgs' ``availableLayers``).
        order: every store path of ``graph`` in the order nixpkgs reads the graph, which breaks
            ties between equal NAR sizes; default: by store path, the order Nix writes.
    Returns:
        The layers, bottom first (ascending closure size), each store path in exactly one.
    Raises:
        NixlayerError: ``limit`` below 1, a store path without a NAR size, or an ``order`` that
            is not the graph's store paths.
    """
    if not isinstance(limit, int) or limit < 1:
        raise NixlayerError(f"the auto layering needs a layer limit of at least 1, not {limit!r}")
    paths, sizes = graph.sized_paths(order, "auto")
    references = {path: graph.references(path) - {path} for path in paths}
    referrers: dict[str, set[str]] = {path: set() for path in paths}
    for path, refs in references.items():
        for ref in refs:
            referrers[ref].add(path)
    users = {path: frozenset(refs) for path, refs in referrers.items()}

    identity: dict[str, frozenset[str]] = dict.fromkeys(paths, frozenset())
    layer_count: Counter[frozenset[str]] = Counter(identity.values())
    # Largest first; among equal sizes the later in ``order`` first (a stable ascending sort, popped).
    for primary in reversed(sorted(paths, key=sizes.__getitem__)):
        dependencies = _reachable((primary,), references)
        dependents = _reachable((primary,), users)
        changed = {primary: frozenset((primary,))}
        for dependency in dependencies:
            kept = identity[dependency] - dependents
            changed[dependency] = kept if kept & dependencies else kept | {primary}
        counts = layer_count.copy()
        for path, new in changed.items():
            counts[identity[path]] -= 1
            counts[new] += 1
        counts = +counts  # identities no store path has any more are gone
        if len(counts) > limit:
            break
        layer_count = counts
        identity.update(changed)

    members: dict[frozenset[str], list[str]] = {}
    for path in paths:
        members.setdefault(identity[path], []).append(path)
    layers = []
    for primaries, group in members.items():
        closure = set(group) | _reachable(group, references)
        layers.append(AutoLayer(tuple(sorted(group, key=name_then_hash)), tuple(sorted(primaries, key=name_then_hash)),
                                sum(sizes[path] for path in closure)))
    layers.sort(key=lambda layer: (layer.closure_size, [name_then_hash(path) for path in layer.store_paths]))
    return layers
