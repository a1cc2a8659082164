"""Which store paths go into which layer, as nixpkgs ``streamLayeredImage`` decides.

An image is: the base image's layers (if any), then the store-path layers planned here, then
the customisation layer (the symlinks of ``contents`` into the image root; no store paths).
With ``available = max_layers - (base_layers + 1)`` layers left for store paths, the first
``available - 1`` paths in popularity order get one layer each and every remaining path goes
into one last layer, still in popularity order (nixpkgs: ``(.[:available-1] | map([.])) +
[ .[available-1:] ]``, empty layers dropped).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nixlayer.closure import ClosureGraph
from nixlayer.errors import NixlayerError, NixlayerWarning
from nixlayer.popularity import image_popularity, order_by_popularity

DEFAULT_MAX_LAYERS = 100
DOCKER_LAYER_LIMIT = 127  # overlay mounts fail beyond this: "max depth exceeded"
DOCKER_SAFE_LAYERS = 125


@dataclass(frozen=True)
class PlannedLayer:
    """One store-path layer.

    Attributes:
        store_paths: its store paths, in popularity order.
        nar_size: the sum of their NAR sizes in bytes, counting only the known ones.
        nar_size_complete: False if some path's NAR size was unknown.
        popularity: the popularity of its most popular path, or None if not given.
    """

    store_paths: tuple[str, ...]
    nar_size: int
    nar_size_complete: bool
    popularity: int | None


@dataclass(frozen=True)
class LayerPlan:
    """The layers of an image: store-path layers, then the customisation layer.

    Attributes:
        layers: the store-path layers, bottom first; every store path is in exactly one.
        max_layers: the layer budget of the whole image (base + store paths + customisation).
        base_layers: how many layers the base image (``fromImage``) brings, below ``layers``.
    """

    layers: tuple[PlannedLayer, ...]
    max_layers: int
    base_layers: int

    @property
    def store_paths(self) -> tuple[str, ...]:
        """Every store path of the plan, layer by layer."""
        return tuple(path for layer in self.layers for path in layer.store_paths)

    @property
    def customisation_layer_index(self) -> int:
        """The 0-based position of the customisation layer in the image: it is always last."""
        return self.base_layers + len(self.layers)

    def to_json(self) -> dict[str, Any]:
        """The plan as JSON-ready data (popularities as ints, sizes in bytes)."""
        return {
            "max_layers": self.max_layers,
            "base_layers": self.base_layers,
            "layers": [
                {
                    "store_paths": list(layer.store_paths),
                    "nar_size": layer.nar_size,
                    "nar_size_complete": layer.nar_size_complete,
                    "popularity": layer.popularity,
                }
                for layer in self.layers
            ],
            "customisation_layer_index": self.customisation_layer_index,
        }


def check_max_layers(max_layers: int, base_layers: int = 0) -> int:
    """Return how many layers are left for store paths: ``max_layers - base_layers - 1``.

    Raises NixlayerError if ``max_layers`` exceeds 127 (Docker fails with "max depth
    exceeded") or leaves no layer for store paths after the base layers and the
    customisation layer; warns (``warnings.warn``) above 125, where some Docker setups fail.
    """
    if not isinstance(max_layers, int) or max_layers < 2:
        raise NixlayerError(f"max_layers is {max_layers!r}: at least 2 are needed (store paths and customisation)")
    if max_layers > DOCKER_LAYER_LIMIT:
        raise NixlayerError(
            f"max_layers is {max_layers}: Docker stops at about 125-127 layers: max depth exceeded"
        )
    if not isinstance(base_layers, int) or base_layers < 0:
        raise NixlayerError(f"base_layers is {base_layers!r}: expected a count >= 0")
    available = max_layers - base_layers - 1
    if available < 1:
        raise NixlayerError(
            f"max_layers is {max_layers}: the {base_layers} base layers and the customisation layer leave no layer for store paths"
        )
    if max_layers > DOCKER_SAFE_LAYERS:
        warnings.warn(f"max_layers is {max_layers}: Docker may fail above {DOCKER_SAFE_LAYERS} layers",
                      NixlayerWarning, stacklevel=3)
    return available


def plan_layers(
    order: Sequence[str],
    max_layers: int = DEFAULT_MAX_LAYERS,
    base_layers: int = 0,
    *,
    nar_sizes: Mapping[str, int | None] | None = None,
    popularities: Mapping[str, int] | None = None,
) -> LayerPlan:
    """Group store paths, already in popularity order, into layers as nixpkgs does.

    Args:
        order: the image's store paths, most popular first (see ``nixlayer.popularity``).
        max_layers: the layer budget of the whole image, as nixpkgs ``maxLayers``.
        base_layers: layers of the base image, counted against ``max_layers``.
        nar_sizes: store path -> NAR size in bytes (or None), for the layer totals.
        popularities: store path -> popularity, reported per layer.
    Returns:
        The plan: ``max_layers - base_layers - 2`` single-path layers, then one layer with
        every remaining path (only when there are paths left), then the customisation layer.
    Raises:
        NixlayerError: a bad ``max_layers``/``base_layers`` (see :func:`check_max_layers`) or
            a store path listed twice.
    """
    available = check_max_layers(max_layers, base_layers)
    seen: set[str] = set()
    for path in order:
        if path in seen:
            raise NixlayerError(f"store path {path} is listed twice in the layer order")
        seen.add(path)
    groups = [[path] for path in order[:available - 1]] + [list(order[available - 1:])]
    nar_sizes = nar_sizes or {}
    layers = []
    for group in filter(None, groups):
        sizes = [nar_sizes.get(path) for path in group]
        layers.append(PlannedLayer(
            store_paths=tuple(group),
            nar_size=sum(size for size in sizes if size is not None),
            nar_size_complete=None not in sizes,
            popularity=popularities[group[0]] if popularities else None,
        ))
    return LayerPlan(tuple(layers), max_layers, base_layers)


def plan_image(
    graph: ClosureGraph,
    contents: Sequence[str],
    config_paths: Sequence[str] = (),
    max_layers: int = DEFAULT_MAX_LAYERS,
    base_layers: int = 0,
    include_store_paths: bool = True,
) -> LayerPlan:
    """Plan the layers of an image holding ``contents`` and the store paths its config
    mentions (``config_paths``), with their closures taken from ``graph``; ordered with
    :func:`nixlayer.popularity.image_popularity` as nixpkgs ``streamLayeredImage`` does.
    With ``include_store_paths`` false (nixpkgs ``includeStorePaths``), only the customisation
    layer: no store path layers, the layer budget still checked.

    Raises NixlayerError for a path missing from ``graph`` or a bad layer budget.
    """
    if not include_store_paths:
        return plan_layers([], max_layers, base_layers)
    popularities = image_popularity(graph, contents, config_paths)
    return plan_layers(
        order_by_popularity(popularities),
        max_layers,
        base_layers,
        nar_sizes={path: graph.nar_size(path) for path in popularities},
        popularities=popularities,
    )
