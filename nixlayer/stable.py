"""The ``stable`` layering: layers grouped by what changes together, kept from build to build.

What a host holding an image's previous version pulls after an update is every layer whose
bytes changed, and a layer's bytes change as soon as one of its store paths does. In Nix a
store path changes when it or anything in its closure changes (a new version of a package
gives it and every package that depends on it new store paths). So:

- A layer costs, over updates to come, its bytes each time something in the closure of one of its
  store paths changes. ``stable`` estimates that as its bytes times the number of store paths an
  update of which changes it (the union of its store paths' closures): every store path as likely
  to be updated as any other. Weighing each such update by ``1 / sqrt(B)`` or ``1 / B`` instead
  (B: the bytes it changes at least, the store path and everything depending on it), so that a
  deep update counts less, did no better: over six update sequences of five Debian closures at 20
  layers (bench/README.md: bench_layering.py with --roots and --updates), ``1 / sqrt(B)`` moved
  less on three and more on three, the widest included (1.24 times the new store paths' bytes
  against 1.20), and more over random closures; ``1 / B`` moved more on all six.
- Groups are made by merging, from small units (a store path each, or for more store paths
  than :data:`UNITS_PER_LAYER` per layer of the image, nixpkgs' auto-layer groups), the two
  groups whose merge adds the least to that cost, until they fit the layer limit
  (:func:`group_by_change`). Store paths that change together (a library and the program only
  it serves) merge first; a large store path that rarely changes stays apart from small ones
  that change often.
- That cost is an average over updates to come, and an average can buy a cheap common update with
  a dear rare one (a large data package in libc's layer: cheap, until libc changes). So no merge
  may make an update of any one store path pull more than it would under nixpkgs' auto-layer of
  the same closure and limit (the *budget*), while a merge within the budget is left; past that,
  the merge that exceeds the budget least. Merging greedily can leave no merge within the budget
  where another order would have: then the store paths are grouped again, merging only those in
  the same layer of auto's (which keeps within the budget, as auto's layers do), and the grouping
  that exceeds the budget less is taken. Over six update sequences of five Debian closures
  (bench/README.md: bench_layering.py with --roots and --updates) no update then pulls more than
  under ``auto``, where 9 of 114 did before (a libc update 1.17 times its bytes, auto 1.03); over
  random updates of random closures 4 of 1,800 (before the budget 86).

The first build of an image is grouped so. A rebuild keeps the previous build's layers:

1. A layer none of whose store paths changed (all still in the closure) is kept whole, in its
   place: its bytes, key and digest are the previous build's.
2. The layers that change anyway (a store path of theirs left the closure) are pulled whole, so
   their remaining store paths and the store paths new in the closure can be grouped afresh at
   no extra cost: they are, as above, into as many layers as the kept ones leave under the
   limit, in the changed layers' places (the ones least likely to change lowest), any more on top.
3. When no layer is left for them (a lower ``max_layers``, or new store paths and no changed
   layer), the smallest kept layers join them, as few as needed.

So an update changes only the layers that held changed store paths, and leaves behind layers
grouped to change less next time. Planning twice in a row gives the same layers.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence

from nixlayer.autolayer import auto_layers, name_then_hash
from nixlayer.closure import ClosureGraph
from nixlayer.errors import NixlayerError

UNITS_PER_LAYER = 4
MAX_UNITS = 400
"""The most groups :func:`group_by_change` starts from: ``UNITS_PER_LAYER`` per layer of the
image, at most ``MAX_UNITS``. More store paths than that are first grouped into this many by
nixpkgs' auto-layer (each large store path with the dependencies only it needs). Over the update
sequences of five Debian closures at 20 layers (bench/README.md: bench_layering.py with --roots
and --updates), 4 per layer moved the fewest bytes (1.02 to 1.18 times the new store paths'; 3 per
layer 1.03 to 1.20, 6 1.02 to 1.24, one group per store path 1.03 to 1.22, 2 1.04 to 1.32). Per
layer *of the image*, not of the layers left to regroup after an update: a few changed layers
would otherwise make units so coarse that a store path's update is judged with its unit's. The cap
keeps planning a 20,000-store-path closure to seconds (a few on a loaded 2-core machine)."""


def _reachable(start: int, edges: Sequence[set[int]]) -> frozenset[int]:
    seen = {start}
    pending = [start]
    while pending:
        for node in edges[pending.pop()] - seen:
            seen.add(node)
            pending.append(node)
    return frozenset(seen)


def group_by_change(graph: ClosureGraph, sizes: Mapping[str, int], groupable: Iterable[str],
                    fixed: Sequence[Sequence[str]], limit: int, reference: Sequence[Sequence[str]],
                    most_units: int) -> list[list[str]]:
    """Group the store paths ``groupable`` into at most ``limit`` layers that change rarely
    (the cost in the module docstring), the layers ``fixed`` being left as they are, within the
    budget that ``reference`` sets (module docstring).

    Args:
        graph: the image's closure; ``sizes``: every store path's NAR size.
        groupable: the store paths to group; with ``fixed``, every store path of ``graph``.
        fixed: layers kept as they are (each counts as one store path here).
        limit: the most layers to make, at least 1.
        reference: layers of every store path of ``graph`` (auto's) whose pulled bytes on an
            update of each store path are the budget.
        most_units: the most groups to start from (auto-layer groups past that).
    Returns:
        The layers, each sorted by :func:`name_then_hash`, in ascending order of the number of
        store paths whose updates change them (then by store paths).
    """
    groupable = sorted(groupable, key=name_then_hash)
    if len(groupable) > most_units:
        members = set(groupable)
        own = ClosureGraph({path: graph.references(path) & members for path in groupable},
                           {path: sizes[path] for path in groupable}, graph.store_dir)
        units = [list(layer.store_paths) for layer in auto_layers(own, most_units)]
    else:
        units = [[path] for path in groupable]
    nodes = units + [list(layer) for layer in fixed]
    node_of = {path: i for i, node in enumerate(nodes) for path in node}
    edges = [{node_of[ref] for path in node for ref in graph.references(path)} for node in nodes]
    node_bytes = [sum(sizes[path] for path in node) for node in nodes]
    closures = [_reachable(i, edges) for i in range(len(nodes))]

    def pulled_on_update(layers: Iterable[tuple[int, frozenset[int]]]) -> list[int]:
        """Node -> the bytes of the layers (bytes, closure) an update of it changes."""
        pulled = [0] * len(nodes)
        for layer_bytes, closure in layers:
            for node in closure:
                pulled[node] += layer_bytes
        return pulled

    budget = pulled_on_update((sum(sizes[path] for path in layer),
                               frozenset().union(*(closures[node_of[path]] for path in layer)))
                              for layer in reference)

    def overflow(pulled: list[int]) -> int:
        """The bytes by which the updates of every node pass their budget, in sum."""
        return sum(max(0, pulled[node] - budget[node]) for node in range(len(nodes)))

    layer_of = {path: i for i, layer in enumerate(reference) for path in layer}
    home = [max(unit, key=lambda path: (sizes[path], path)) for unit in units]  # its largest store path's
    home = [layer_of[path] for path in home]

    def merged(within_reference: bool) -> tuple[dict[int, tuple[int, frozenset[int], list[int]]], int]:
        """Groups of the units, merged as the module docstring says, and their overflow. Only
        units whose largest store paths share a reference layer merge ``within_reference``: a
        split of the reference's layers, within the budget wherever the units are single store
        paths (and no fixed layer passes it)."""
        # group id -> (bytes, closure, unit indexes)
        groups = {i: (node_bytes[i], closures[i], [i]) for i in range(len(units))}
        pulled = pulled_on_update(zip(node_bytes, closures))

        def over_budget(a: int, b: int) -> int:
            """How far merging groups a and b takes updates past their budget (bytes, summed
            over updates): a merged layer changes on the updates of either's closure, which the
            other's did not."""
            bytes_a, closure_a, _ = groups[a]
            bytes_b, closure_b, _ = groups[b]
            return sum(max(pulled[node] + more, budget[node]) - max(pulled[node], budget[node])
                       for closure, more in ((closure_a - closure_b, bytes_b), (closure_b - closure_a, bytes_a))
                       for node in closure)

        def added_cost(a: int, b: int) -> int:
            bytes_a, closure_a, _ = groups[a]
            bytes_b, closure_b, _ = groups[b]
            return bytes_a * len(closure_b - closure_a) + bytes_b * len(closure_a - closure_b)

        def allowed(a: int, b: int) -> bool:
            return not within_reference or home[groups[a][2][0]] == home[groups[b][2][0]]

        heap = [(added_cost(a, b), a, b) for a in groups for b in groups if a < b and allowed(a, b)]
        heapq.heapify(heap)
        beyond: list[tuple[int, int, int]] = []  # merges past the budget (for good: pulled only grows)
        next_id = len(units)
        while len(groups) > limit:
            if heap:
                entry = heapq.heappop(heap)
                if entry[1] not in groups or entry[2] not in groups:
                    continue
                if over_budget(entry[1], entry[2]) > 0:
                    beyond.append(entry)
                    continue
            else:  # none within the budget left: the one past it least, then the cheapest
                beyond = [entry for entry in beyond if entry[1] in groups and entry[2] in groups]
                if not beyond:  # within_reference, and more reference layers than limit
                    beyond = [(added_cost(a, b), a, b) for a in groups for b in groups if a < b]
                entry = min(beyond, key=lambda entry: (over_budget(entry[1], entry[2]), entry))
                beyond.remove(entry)
            _, a, b = entry
            bytes_a, closure_a, units_a = groups.pop(a)
            bytes_b, closure_b, units_b = groups.pop(b)
            for node in closure_a - closure_b:
                pulled[node] += bytes_b
            for node in closure_b - closure_a:
                pulled[node] += bytes_a
            groups[next_id] = (bytes_a + bytes_b, closure_a | closure_b, units_a + units_b)
            for other in groups:
                if other != next_id and allowed(other, next_id):
                    heapq.heappush(heap, (added_cost(other, next_id), other, next_id))
            next_id += 1
        return groups, overflow(pulled)

    groups, passed = merged(False)
    if passed > overflow(pulled_on_update(zip(node_bytes, closures))):  # more than the fixed layers alone
        # The greedy merging can leave no merge within the budget where splitting the
        # reference's layers would have: the one that passes it less.
        groups = min((groups, passed), merged(True), key=lambda run: run[1])[0]
    layers = [(len(closure), sorted((path for unit in group_units for path in units[unit]), key=name_then_hash))
              for _, closure, group_units in groups.values()]
    layers.sort(key=lambda layer: (layer[0], [name_then_hash(path) for path in layer[1]]))
    return [paths for _, paths in layers]


def stable_layers(
    graph: ClosureGraph,
    limit: int,
    previous: Sequence[Sequence[str]] | None,
) -> list[tuple[list[str], str]]:
    """The layers of ``graph``'s store paths, keeping those of the previous build.

    Args:
        graph: the image's closure, with NAR sizes.
        limit: the most layers to make, at least 1 (``max_layers - 1`` minus base layers).
        previous: the store layers of the previous build of this image, bottom first, each a
            list of store paths; None (or empty) for a first build.
    Returns:
        The layers, bottom first, each as (its store paths, why they are there): ``first
        build, grouped by what changes together``, ``kept`` (no store path changed),
        ``changed, grouped by what changes together``.
    Raises:
        NixlayerError: ``limit`` below 1, a store path without a NAR size, or a store path
            listed twice in ``previous``.
    """
    if not isinstance(limit, int) or limit < 1:
        raise NixlayerError(f"the stable layering needs a layer limit of at least 1, not {limit!r}")
    _, sizes = graph.sized_paths(None, "stable")

    def grouped(groupable: Iterable[str], fixed: Sequence[Sequence[str]], free: int) -> list[list[str]]:
        reference = [list(layer.store_paths) for layer in auto_layers(graph, limit)]
        return group_by_change(graph, sizes, groupable, fixed, free, reference, min(UNITS_PER_LAYER * limit, MAX_UNITS))

    if not previous:
        return [(paths, "first build, grouped by what changes together") for paths in grouped(graph.paths, [], limit)]
    seen: set[str] = set()
    for layer in previous:
        for path in layer:
            if path in seen:
                raise NixlayerError(f"store path {path} is in two layers of the previous build")
            seen.add(path)

    kept: list[int] = []  # indexes into ``previous`` of the layers kept whole
    regroup = [path for path in graph.paths if path not in seen]
    for i, layer in enumerate(previous):
        paths = [path for path in layer if path in sizes]
        if len(paths) == len(layer):
            kept.append(i)
        else:
            regroup += paths
    free = limit - len(kept)
    while kept and free < (1 if regroup else 0):  # the smallest kept layers join the changed ones
        smallest = min(kept, key=lambda i: (sum(sizes[path] for path in previous[i]), i))
        kept.remove(smallest)
        regroup += previous[smallest]
        free += 1
    if not regroup:
        return [(list(previous[i]), "kept") for i in kept]
    groups = grouped(regroup, [previous[i] for i in kept], free)
    # Kept layers in their places; the new groups in the places of the layers not kept (the
    # groups least likely to change lowest), any more on top.
    layers: list[tuple[list[str], str]] = []
    for i, layer in enumerate(previous):
        if i in kept:
            layers.append((list(layer), "kept"))
        elif groups:
            layers.append((groups.pop(0), ""))
    layers += [(group, "") for group in groups]
    before = {tuple(layer) for layer in previous}
    return [(paths, why or ("kept" if tuple(paths) in before else "changed, grouped by what changes together"))
            for paths, why in layers]
