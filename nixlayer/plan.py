"""Which store paths go into which layer, as nixpkgs ``streamLayeredImage`` decides.

An image is: the base image's layers (if any), then the store-path layers planned here, then
the customisation layer (the symlinks of ``contents`` into the image root; no store paths).
``available = max_layers - (base_layers + 1)`` layers are left for store paths. The layering
(:data:`LAYERINGS`) decides how they are used:

- ``popularity`` (nixpkgs 2018-2024): the first ``available - 1`` paths in popularity order get
  one layer each and every remaining path goes into one last layer, still in popularity order
  (nixpkgs: ``(.[:available-1] | map([.])) + [ .[available-1:] ]``, empty layers dropped);
- ``auto`` (nixpkgs' ``dockerAutoLayer``, its default since 2025): :mod:`nixlayer.autolayer`
  with ``available`` as its limit, as nixpkgs' ``availableLayers``;
- ``pipeline`` (nixpkgs' ``layeringPipeline``): :mod:`nixlayer.pipeline`; the layers it makes
  must fit in ``available`` (nixpkgs does not check);
- ``stable`` (nixlayer's, the default): :mod:`nixlayer.stable`, store paths grouped by what
  changes together, the previous build's unchanged layers kept whole.

A plan is a list of layers, each a list of store paths: the image, its layer keys and its
default tag follow from that list alone, so two layerings that make the same list make the same
image.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from nixlayer.autolayer import auto_layers
from nixlayer.closure import ClosureGraph, image_closure
from nixlayer.errors import NixlayerError, NixlayerWarning
from nixlayer.pipeline import Step, parse_pipeline, pipeline_layers
from nixlayer.popularity import image_popularity, order_by_popularity
from nixlayer.stable import stable_layers

DEFAULT_MAX_LAYERS = 100
DOCKER_LAYER_LIMIT = 127  # overlay mounts fail beyond this: "max depth exceeded"
DOCKER_SAFE_LAYERS = 125

LAYERINGS = ("stable", "popularity", "auto", "pipeline")
"""The layerings nixlayer knows, the default first: ``stable`` moved the fewest bytes over the
updates of ``bench/bench_layering.py`` (1.00 and 1.12 times the new store paths' bytes at 100
and 20 layers; ``auto`` 1.01 and 1.42, ``popularity`` 2.61 and 3.37), and over five other
update sequences and closures (``--roots``, ``--updates``), no update more than ``auto``."""
DEFAULT_LAYERING = LAYERINGS[0]


@dataclass(frozen=True)
class PlannedLayer:
    """One store-path layer.

    Attributes:
        store_paths: its store paths, in popularity order.
        nar_size: the sum of their NAR sizes in bytes, counting only the known ones.
        nar_size_complete: False if some path's NAR size was unknown.
        popularity: the popularity of its most popular path, or None if not given.
        reason: why these store paths are together, for people: ``popularity rank 3``,
            ``auto: primary store path /nix/store/...-glibc-2.40``, the pipeline steps that
            made it; empty if not given.
    """

    store_paths: tuple[str, ...]
    nar_size: int
    nar_size_complete: bool
    popularity: int | None
    reason: str = ""


@dataclass(frozen=True)
class LayerPlan:
    """The layers of an image: store-path layers, then the customisation layer.

    Attributes:
        layers: the store-path layers, bottom first; every store path is in exactly one.
        max_layers: the layer budget of the whole image (base + store paths + customisation).
        base_layers: how many layers the base image (``fromImage``) brings, below ``layers``.
        layering: the layering that made it (one of :data:`LAYERINGS`).
    """

    layers: tuple[PlannedLayer, ...]
    max_layers: int
    base_layers: int
    layering: str

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
            "layering": self.layering,
            "max_layers": self.max_layers,
            "base_layers": self.base_layers,
            "layers": [
                {
                    "store_paths": list(layer.store_paths),
                    "nar_size": layer.nar_size,
                    "nar_size_complete": layer.nar_size_complete,
                    "popularity": layer.popularity,
                    "reason": layer.reason,
                }
                for layer in self.layers
            ],
            "customisation_layer_index": self.customisation_layer_index,
        }


def check_max_layers(max_layers: int, base_layers: int = 0) -> int:
    """Return how many layers are left for store paths: ``max_layers - base_layers - 1``.

    Raises NixlayerError if ``max_layers`` exceeds 127 (Docker fails with "max depth
    exceeded") or leaves no layer for store paths after the base layers and the
    customisation layer (saying the least that does, or that the base has too many layers
    for any); warns (``warnings.warn``) above 125, where some Docker setups fail.
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
        least = base_layers + 2  # the base's layers, one store layer, the customisation layer
        if least > DOCKER_LAYER_LIMIT:
            raise NixlayerError(f"the base image has {base_layers} layers: with a store layer and the customisation"
                                f" layer that is more than the {DOCKER_LAYER_LIMIT} Docker takes; use a base of fewer layers")
        raise NixlayerError(f"max_layers is {max_layers}: the {base_layers} base layers and the customisation layer leave"
                            f" no layer for store paths: give max_layers {least} or more")
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
    reasons = [f"popularity rank {rank}" for rank in range(1, available)]
    reasons.append(f"popularity ranks {available}-{len(order)}: past the {available - 1} single-path layers,"
                   f" max_layers - {max_layers - available + 1}" if len(order) > available
                   else f"popularity rank {available}")
    layers = [_planned(group, nar_sizes, popularities, reason) for group, reason in zip(groups, reasons) if group]
    return LayerPlan(tuple(layers), max_layers, base_layers, "popularity")


def _planned(store_paths: Sequence[str], nar_sizes: Mapping[str, int | None] | None,
             popularities: Mapping[str, int] | None, reason: str) -> PlannedLayer:
    sizes = [(nar_sizes or {}).get(path) for path in store_paths]
    return PlannedLayer(
        store_paths=tuple(store_paths),
        nar_size=sum(size for size in sizes if size is not None),
        nar_size_complete=None not in sizes,
        popularity=popularities[store_paths[0]] if popularities else None,
        reason=reason,
    )


def check_layering(layering: str, pipeline: Any = None) -> tuple[Step, ...] | None:
    """Check a layering and its pipeline before any work.

    Args:
        layering: one of :data:`LAYERINGS`.
        pipeline: for ``pipeline``, the layering pipeline (a JSON list of steps or its text,
            see :func:`nixlayer.pipeline.parse_pipeline`); for the others, None or empty.
    Returns:
        The checked pipeline steps for ``pipeline``, else None.
    Raises:
        NixlayerError: an unknown layering, ``pipeline`` without a pipeline or another
            layering with one, or a bad pipeline (one line naming the step).
    """
    if layering not in LAYERINGS:
        raise NixlayerError(f"layering must be one of {', '.join(LAYERINGS)}, not {layering!r}")
    given = pipeline not in (None, "", [])
    if layering != "pipeline":
        if given:
            raise NixlayerError(f"a layering pipeline is given, but the layering is {layering}: give the layering"
                                " pipeline too, or leave the pipeline out")
        return None
    if not given:
        raise NixlayerError('the pipeline layering needs a layering pipeline, a JSON list of steps such as'
                            ' [["popularity_contest"], ["limit_layers", 99]]')
    if isinstance(pipeline, tuple) and all(isinstance(step, Step) for step in pipeline):
        return pipeline
    return parse_pipeline(pipeline)


def plan_image(
    graph: ClosureGraph,
    contents: Sequence[str],
    config_paths: Sequence[str] = (),
    max_layers: int = DEFAULT_MAX_LAYERS,
    base_layers: int = 0,
    include_store_paths: bool = True,
    *,
    layering: str = DEFAULT_LAYERING,
    pipeline: Any = None,
    previous: Sequence[Sequence[str]] | None = None,
) -> LayerPlan:
    """Plan the layers of an image holding ``contents`` and the store paths its config
    mentions (``config_paths``), with their closures taken from ``graph``.

    ``layering`` (:data:`LAYERINGS`) says how: ``popularity`` orders the closure with
    :func:`nixlayer.popularity.image_popularity` as nixpkgs ``streamLayeredImage`` did until
    2024; ``auto`` splits it as nixpkgs' auto-layer (:func:`nixlayer.autolayer.auto_layers`,
    limit ``max_layers - base_layers - 1``); ``pipeline`` runs ``pipeline`` (checked by
    :func:`check_layering`) as nixpkgs' ``layeringPipeline``; ``stable`` keeps the layers of
    ``previous`` (the store layers of the previous build of this image, or None) as
    :func:`nixlayer.stable.stable_layers` says. With ``include_store_paths``
    false (nixpkgs ``includeStorePaths``), only the customisation layer: no store path layers,
    the layer budget and the layering still checked.

    Raises NixlayerError for a path missing from ``graph``, a bad layer budget, a bad layering
    or pipeline, a closure without NAR sizes (``auto``, ``pipeline``), or a pipeline that makes
    more layers than the budget leaves.
    """
    steps = check_layering(layering, pipeline)
    if not include_store_paths:
        return replace(plan_layers([], max_layers, base_layers), layering=layering)
    if layering == "popularity":
        popularities = image_popularity(graph, contents, config_paths)
        return plan_layers(
            order_by_popularity(popularities),
            max_layers,
            base_layers,
            nar_sizes={path: graph.nar_size(path) for path in popularities},
            popularities=popularities,
        )
    available = check_max_layers(max_layers, base_layers)
    image_graph = image_closure(graph, contents, config_paths)
    sizes = {path: image_graph.nar_size(path) for path in image_graph}
    if layering == "auto":
        layers = [_planned(layer.store_paths, sizes, None, layer.reason)
                  for layer in auto_layers(image_graph, available)]
    elif layering == "stable":
        layers = [_planned(paths, sizes, None, f"stable: {why}") for paths, why in stable_layers(image_graph, available, previous)]
    else:
        assert steps is not None
        layers = [_planned(layer.store_paths, sizes, None, "pipeline: " + (" > ".join(layer.origin) or "the whole closure"))
                  for layer in pipeline_layers(image_graph, steps)]
        if len(layers) > available:
            raise NixlayerError(
                f"the layering pipeline makes {len(layers)} layers, but max_layers {max_layers} leaves {available}"
                f" beside the customisation layer: end it with [\"limit_layers\", {available}] or raise max_layers")
    return LayerPlan(tuple(layers), max_layers, base_layers, layering)
