"""The nixpkgs ``referencesByPopularity`` order of a closure, computed fast and exactly.

nixpkgs (``pkgs/build-support/references-by-popularity/closure-graph.py``) takes the roots of
the closure (the paths no other path references, self-references aside), expands the graph
into a tree from them (a path reachable along several routes appears once per route) and
gives each path a popularity: every node of that tree counts once for each path that occurs
in its subtree, itself included. Paths are then listed by descending popularity, ties broken
by ascending :func:`nixlayer.storepath.package_name` (name after the hash, then the hash).

Expanding the tree costs time exponential in the depth of the graph. This module uses the
equivalent closed form: with N(t) the number of distinct routes from the roots to t (a root
has N = 1),

    popularity(s) = sum of N(t) over t in {s} and all ancestors of s (paths that reach s),

since each tree node whose subtree contains s is one route to one such t. N comes from one
pass in topological order; ancestor sets are Python-int bitsets (a path's set is its own bit
OR its referrers' sets); the sum is taken by bit slicing: with B_k the set of paths whose N has
bit k set, popularity(s) = sum over k of 2**k * popcount(ancestors(s) & B_k). Popularities
grow beyond 64 bits on large closures and are kept as exact Python ints.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from nixlayer.closure import ClosureGraph, image_closure
from nixlayer.storepath import package_name

# The three derivations nixpkgs streamLayeredImage adds on top of the image's closure before
# ordering it. They are not store paths (no "/"), so they cannot clash with real ones.
_OVERALL_CLOSURE = "closure"
_BASE_JSON = "base.json"
_CUSTOMISATION_LAYER = "customisation-layer"


def popularity(graph: ClosureGraph) -> dict[str, int]:
    """The nixpkgs popularity of every store path of ``graph`` (exact ints, all >= 1)."""
    return references_popularity(graph.references_map())


def order_by_popularity(popularities: Mapping[str, int]) -> list[str]:
    """The paths of ``popularities`` by descending popularity, ties by ascending package_name."""
    return sorted(popularities, key=lambda path: (-popularities[path], package_name(path)))


def popularity_order(graph: ClosureGraph) -> list[str]:
    """Every store path of ``graph``, most popular first, as nixpkgs
    ``referencesByPopularity`` prints them (ties: ascending package_name)."""
    return order_by_popularity(popularity(graph))


def image_popularity(
    graph: ClosureGraph, contents: Iterable[str], config_paths: Iterable[str] = ()
) -> dict[str, int]:
    """The popularity nixpkgs ``streamLayeredImage`` gives each store path of an image.

    The image holds the closure of ``contents`` (the store paths linked into the image root)
    and of ``config_paths`` (store paths the image config mentions). nixpkgs orders the
    closure of a synthetic root ``closure`` that refers to ``baseJson`` (which refers to the
    config paths) and to ``customisationLayer`` (which refers to each content path); the three
    synthetic nodes are then dropped. They shape the real paths' popularity exactly as in
    nixpkgs and, being removed, cannot change the relative order of real paths otherwise.

    Returns store path -> popularity for every path of the image (synthetic nodes excluded).

    Raises NixlayerError if a content or config path is not in ``graph``.
    """
    contents = list(contents)
    config_paths = list(config_paths)
    image_graph = image_closure(graph, contents, config_paths)
    references: dict[str, Iterable[str]] = dict(image_graph.references_map())
    references[_OVERALL_CLOSURE] = (_BASE_JSON, _CUSTOMISATION_LAYER)
    references[_BASE_JSON] = config_paths
    references[_CUSTOMISATION_LAYER] = contents
    popularities = references_popularity(references)
    return {path: popularities[path] for path in image_graph.paths}


def references_popularity(references: Mapping[str, Iterable[str]]) -> dict[str, int]:
    """The popularity of every node of an acyclic graph given as node -> references (self-references
    ignored; every node a key), its roots being the nodes nothing references: also what nixpkgs'
    ``flatten_references_graph`` step ``popularity_contest`` computes for a graph."""
    children = {path: [ref for ref in set(refs) if ref != path] for path, refs in references.items()}
    referrers: dict[str, list[str]] = {path: [] for path in children}
    for path, refs in children.items():
        for ref in refs:
            referrers[ref].append(path)

    # Topological order, roots first (Kahn).
    waiting = {path: len(parents) for path, parents in referrers.items()}
    topological = [path for path, count in waiting.items() if count == 0]
    for path in topological:
        for ref in children[path]:
            waiting[ref] -= 1
            if waiting[ref] == 0:
                topological.append(ref)
    assert len(topological) == len(children), "ClosureGraph rejects cycles"

    # Bit i of a bitset stands for the i-th path in topological order.
    bit = {path: i for i, path in enumerate(topological)}
    routes: dict[str, int] = {}
    for path in topological:
        routes[path] = sum(routes[parent] for parent in referrers[path]) or 1
    width = max(routes.values(), default=0).bit_length()
    slices = [bytearray((len(topological) + 7) // 8) for _ in range(width)]
    for path, count in routes.items():
        byte, mask = divmod(bit[path], 8)
        mask = 1 << mask
        while count:
            low = count & -count
            slices[low.bit_length() - 1][byte] |= mask
            count ^= low
    route_bits = [(k, int.from_bytes(s, "little")) for k, s in enumerate(slices)]

    # Ancestor sets (self included), computed parents first, freed once all children are done.
    pending_children = {path: len(refs) for path, refs in children.items()}
    ancestors: dict[str, int] = {}
    result: dict[str, int] = {}
    for path in topological:
        own = 1 << bit[path]
        for parent in referrers[path]:
            own |= ancestors[parent]
            pending_children[parent] -= 1
            if pending_children[parent] == 0:
                del ancestors[parent]
        if children[path]:
            ancestors[path] = own
        result[path] = sum((own & slice_).bit_count() << k for k, slice_ in route_bits)
    return result
