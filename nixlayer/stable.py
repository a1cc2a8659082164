"""The ``stable`` layering: a rebuild keeps the layers of the previous build of the same image.

An update of a closure changes some store paths (a changed package and everything that depends
on it get new store paths, as in Nix) and leaves the others. What a host holding the previous
image pulls is every layer whose bytes changed; a layer's bytes change as soon as one of its
store paths does. So instead of grouping the new closure afresh (where one changed path can
move the boundaries of many layers), ``stable`` starts from the previous build's layers:

1. Each store path still in the closure stays in its layer, in its place.
2. A new store path that is a new version of a store path gone from the closure (the same
   package name and output, :func:`package_key`) takes that path's place, so new versions land
   where the old ones were, and only the layers holding changed packages change.
3. The other new store paths get layers of their own, as many as the layer limit leaves
   (grouped among themselves by :func:`nixlayer.autolayer.auto_layers`), on top of the kept
   layers; with no layer left, they join the smallest layer that changes anyway (else the
   smallest layer).
4. Layers left empty are dropped. Over the limit (a lower ``max_layers``), the smallest layers
   are merged into one, in their image order, until the layers fit.

A layer none of whose store paths changed keeps its store paths in their order, so its bytes,
key and digest are the previous build's. With no previous build, the layers are the ``first``
layering's (:data:`FIRST_BUILD_LAYERING`): nothing is known yet about what changes together.
Planning twice in a row gives the same layers (a build's own plan, taken as the previous one,
is kept whole).
"""

from __future__ import annotations

from collections.abc import Sequence

from nixlayer.autolayer import auto_layers, name_then_hash
from nixlayer.closure import ClosureGraph
from nixlayer.errors import NixlayerError
from nixlayer.storepath import parse_drv_name

FIRST_BUILD_LAYERING = "auto"
"""What ``stable`` does for an image's first build: nixpkgs' auto-layer, which moved the fewest
bytes of nixpkgs' layerings in the figures of issue 15 (1.04 and 1.23 times the new store
paths' bytes at 100 and 20 layers, popularity 1.38 and 1.56); the benchmark of that issue is to
confirm it."""

def package_key(path: str) -> tuple[str, str]:
    """What stays when a package gets a new version: its name without the version (as Nix's
    ``builtins.parseDrvName``), and its output when the store path name ends with one
    (``/nix/store/...-openssl-3.0.13-bin`` -> ``("openssl", "bin")``, ``...-zlib-1.3`` ->
    ``("zlib", "")``, ``...-hello`` -> ``("hello", "")``)."""
    name, version = parse_drv_name(name_then_hash(path)[0])
    last = version.rsplit("-", 1)
    output = last[1] if len(last) == 2 and last[1].isalpha() else ""
    return name, output


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
        The layers, bottom first, each as (its store paths, why they are there): ``kept`` (no
        store path changed), ``kept, with new versions`` (some did), ``new store paths``,
        ``merged to fit the limit``, or for a first build the ``auto`` reasons.
    Raises:
        NixlayerError: ``limit`` below 1, a store path without a NAR size, or a store path
            listed twice in ``previous``.
    """
    if not isinstance(limit, int) or limit < 1:
        raise NixlayerError(f"the stable layering needs a layer limit of at least 1, not {limit!r}")
    if not previous:
        return [(list(layer.store_paths), f"first build, {layer.reason}") for layer in auto_layers(graph, limit)]
    current = set(graph.paths)
    seen: set[str] = set()
    for layer in previous:
        for path in layer:
            if path in seen:
                raise NixlayerError(f"store path {path} is in two layers of the previous build")
            seen.add(path)
    sizes = {path: graph.nar_size(path) for path in graph.paths}
    if None in sizes.values():
        missing = next(path for path, size in sizes.items() if size is None)
        raise NixlayerError(f"the stable layering needs every store path's NAR size; {missing} has none")

    # New versions take the places of the store paths they replace.
    gone = {package_key(path): path for path in sorted(seen - current, key=name_then_hash)}
    replacing: dict[str, list[str]] = {}
    unplaced = []
    for path in sorted(current - seen, key=name_then_hash):
        old = gone.get(package_key(path))
        if old is None:
            unplaced.append(path)
        else:
            replacing.setdefault(old, []).append(path)
    layers: list[tuple[list[str], str]] = []
    for layer in previous:
        paths = [new for path in layer for new in ([path] if path in current else replacing.get(path, []))]
        if paths:
            layers.append((paths, "kept" if list(layer) == paths else "kept, with new versions"))

    if unplaced:
        free = limit - len(layers)
        if free >= 1:
            own = ClosureGraph({path: graph.references(path) & set(unplaced) for path in unplaced},
                               {path: sizes[path] for path in unplaced}, graph.store_dir)
            layers += [(list(layer.store_paths), "new store paths") for layer in auto_layers(own, free)]
        else:
            changed = [i for i, (_, why) in enumerate(layers) if why != "kept"] or range(len(layers))
            at = min(changed, key=lambda i: sum(sizes[path] for path in layers[i][0]))
            layers[at] = (layers[at][0] + unplaced, "kept, with new store paths")

    if len(layers) > limit:  # fewer layers than before: merge the smallest, in image order
        by_size = sorted(range(len(layers)), key=lambda i: (sum(sizes[path] for path in layers[i][0]), i))
        merged = sorted(by_size[:len(layers) - limit + 1])
        union = [path for i in merged for path in layers[i][0]]
        layers = [(union, "merged to fit the limit") if i == merged[0] else layer
                  for i, layer in enumerate(layers) if i == merged[0] or i not in merged]
    return layers
