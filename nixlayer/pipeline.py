"""The ``pipeline`` layering: nixpkgs' ``layeringPipeline``, the layers ``flatten_references_graph`` makes.

nixpkgs ``streamLayeredImage { layeringPipeline = [...]; }`` hands the image's closure graph and a
pipeline, a JSON list of steps ``[NAME, ARGUMENT...]``, to its tool ``flatten_references_graph``
(``pkgs/by-name/fl/flatten-references-graph``); the layers it prints are the image's store
layers, bottom first. The first step gets the closure as a *graph*: its store paths in *base
order* (ascending NAR size, equal sizes in the graph's order) and their references. Steps:

- ``["popularity_contest"]``: graph -> a sequence of one-path graphs, by descending popularity
  within this graph (:func:`nixlayer.popularity.references_popularity`; ties by
  :func:`nixlayer.storepath.package_name`);
- ``["limit_layers", N]``: sequence of graphs -> the first N-1 unchanged and one graph of all
  the others (always appended, empty if there are none);
- ``["split_every", N]``: graph -> graphs of N consecutive store paths in base order;
- ``["split_paths", [PATH or {"children_of": PATH or [PATH...]}, ...]]``: graph -> a mapping
  ``main`` (the paths given and the dependencies only they reach), ``common`` (their
  dependencies something else reaches too), ``rest`` (everything else); parts left empty are left
  out, and references to the paths given are cut inside every part;
- ``["subcomponent_out", [PATH...]]`` / ``["subcomponent_in", [PATH...]]``: graph -> ``main``
  (the paths and every path they reach / that reaches them) and ``rest`` (both always there);
- ``["over", KEY, STEP]``: mapping -> the same mapping with STEP applied to its part KEY;
- ``["map", STEP]``: sequence -> STEP applied to each element;
- ``["pipe", [STEP...]]``: the steps one after another;
- ``["flatten"]``: mapping or sequence -> the graphs in it, depth first, parts in key order;
- ``["remove_paths", PATH or [PATH...]]``: graph -> the graph without those paths;
- ``["reverse"]``: sequence -> the same, last first.

Paths no part of the graph holds are ignored. The end result is flattened; each non-empty graph
is a layer, its store paths in the graph's order. ``tests/fixtures/pipeline-vectors.json`` holds
nixpkgs' output for 140 pipelines over the graphs of ``layering-vectors.json``, which
:func:`pipeline_layers` reproduces, and nixpkgs' error for 10 bad ones.

What nixlayer does differently: a pipeline is checked whole before any work (:func:`parse_pipeline`),
each step's arguments and the kind of value each step gets (graph, sequence, mapping), and every
fault is one NixlayerError line naming the step; nixpkgs fails with a traceback, or runs on. So
nixlayer refuses, where nixpkgs would run: ``map`` with more than one argument (nixpkgs ignores
the others), ``split_every`` below 1 (nixpkgs drops every store path for a negative count), store
paths given by vertex number, and ``limit_layers`` on a sequence that is not of graphs (nixpkgs
fails only when it has to merge them). A string where a list of store paths is expected is read
as nixpkgs reads it, as its characters, which name no store path: the step matches nothing, and
a warning says so. ``over`` on a part ``split_paths`` left out of this closure fails when the
image is planned, still before any layer is written.

In an image, nixpkgs passes its two helper derivations (the config file and the customisation
layer, the closure's roots) as ``exclude_paths``: the graph the pipeline gets is exactly the
closure of the image's contents and config store paths, which nixlayer gives it. nixpkgs does not
count the layers a pipeline makes against ``maxLayers``; nixlayer does (:mod:`nixlayer.plan`).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

from nixlayer.closure import ClosureGraph
from nixlayer.errors import NixlayerError, NixlayerWarning
from nixlayer.popularity import order_by_popularity, references_popularity

STEP_NAMES = ("popularity_contest", "limit_layers", "split_every", "split_paths", "subcomponent_out",
              "subcomponent_in", "over", "map", "pipe", "flatten", "remove_paths", "reverse")
"""Every step name nixpkgs' ``flatten_references_graph`` knows."""


@dataclass(frozen=True)
class Step:
    """One checked step of a pipeline.

    Attributes:
        name: one of :data:`STEP_NAMES`.
        arguments: its arguments, checked: ints, tuples of store paths or of split_paths specs
            (a store path, or ``("children_of", (PATH, ...))``), a key, nested Steps (``over``,
            ``map``) or a tuple of Steps (``pipe``).
        where: how messages name it, e.g. ``step 2 (over)`` or ``step 2 (over), step 1 (pipe)``.
    """

    name: str
    arguments: tuple[Any, ...]
    where: str


@dataclass(frozen=True)
class PipelineLayer:
    """One layer a pipeline made: its store paths, in the order of the graph it was, and
    ``origin``, the steps that made that graph (``split_paths: main > popularity_contest:
    popularity 15``; empty for the closure as a whole)."""

    store_paths: tuple[str, ...]
    origin: tuple[str, ...]


# --- checking ------------------------------------------------------------------------------


def _fail(where: str, message: str) -> NixlayerError:
    return NixlayerError(f"layering pipeline: {where}: {message}")


def parse_pipeline(pipeline: Any) -> tuple[Step, ...]:
    """Check a layering pipeline: a JSON list of steps, or its JSON text.

    Checks each step's name and arguments, and that each step gets the kind of value it works
    on and the last makes layers (a sequence or mapping, not a bare graph).

    Returns the checked steps, ready for :func:`pipeline_layers`.
    Raises:
        NixlayerError: one line, ``layering pipeline: step N (NAME): ...``: not JSON, not a
            list of steps, an unknown step, a wrong argument, a step given a value it cannot
            take, a pipeline that is empty or ends with a graph.
    Warns:
        NixlayerWarning: a string given where a list of store paths is expected.
    """
    if isinstance(pipeline, str):
        try:
            pipeline = json.loads(pipeline)
        except ValueError as error:
            raise NixlayerError(f"layering pipeline is not valid JSON: {error}") from None
    steps = _steps(pipeline, "")
    if not steps:
        raise NixlayerError('layering pipeline is empty: it must make layers, e.g. [["popularity_contest"],'
                            ' ["limit_layers", 99]]')
    result = _kind_after(steps, _GRAPH)
    if result == _GRAPH:
        raise NixlayerError(f"layering pipeline: ends with a graph ({steps[-1].where}): end it with a step that makes"
                            " layers, such as popularity_contest, split_every or split_paths")
    return steps


def _steps(value: Any, context: str) -> tuple[Step, ...]:
    if not isinstance(value, list):
        raise NixlayerError(f"layering pipeline{context and ': ' + context}: expected a list of steps such as"
                            f' [["popularity_contest"], ["limit_layers", 99]], not {json.dumps(value)[:80]}')
    return tuple(_step(step, f"{context}{', ' if context else ''}step {number}") for number, step in enumerate(value, 1))


def _step(value: Any, where: str) -> Step:
    if not isinstance(value, list) or not value or not isinstance(value[0], str):
        raise _fail(where, f'expected a step ["NAME", ARGUMENT...], not {json.dumps(value)[:80]}')
    name, arguments = value[0], value[1:]
    where = f"{where} ({name})"
    if name not in STEP_NAMES:
        raise _fail(where, f"unknown step {name!r}; the steps are {', '.join(STEP_NAMES)}")
    expected = {"over": 2, "popularity_contest": 0, "flatten": 0, "reverse": 0}.get(name, 1)
    if len(arguments) != expected:
        usage = {"over": '["over", KEY, STEP]', "limit_layers": '["limit_layers", N]', "split_every": '["split_every", N]',
                 "split_paths": '["split_paths", [PATH, ...]]', "subcomponent_out": '["subcomponent_out", [PATH, ...]]',
                 "subcomponent_in": '["subcomponent_in", [PATH, ...]]', "map": '["map", STEP]',
                 "pipe": '["pipe", [STEP, ...]]', "remove_paths": '["remove_paths", [PATH, ...]]'}.get(name, f'["{name}"]')
        raise _fail(where, f"takes {expected} argument{'s' if expected != 1 else ''} ({usage}), not {len(arguments)}")
    if name in ("limit_layers", "split_every"):
        count = arguments[0]
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise _fail(where, f"the count must be an integer of at least 1, not {json.dumps(count)}")
        return Step(name, (count,), where)
    if name == "split_paths":
        return Step(name, (_split_specs(arguments[0], where),), where)
    if name in ("subcomponent_out", "subcomponent_in"):
        return Step(name, (_paths(arguments[0], where, string_is_one=False),), where)
    if name == "remove_paths":
        return Step(name, (_paths(arguments[0], where, string_is_one=True),), where)
    if name == "over":
        key, step = arguments
        if not isinstance(key, str):
            raise _fail(where, f"the key must be a string (main, common, rest), not {json.dumps(key)}")
        return Step(name, (key, _step(step, f"{where}, its step")), where)
    if name == "map":
        return Step(name, (_step(arguments[0], f"{where}, its step"),), where)
    if name == "pipe":
        return Step(name, (_steps(arguments[0], where),), where)
    return Step(name, (), where)


def _paths(value: Any, where: str, string_is_one: bool) -> tuple[str, ...]:
    """Store paths given to a step: a list of strings; a string alone is one path if
    ``string_is_one`` (remove_paths), else, as nixpkgs reads it, its characters."""
    if isinstance(value, str):
        if string_is_one:
            return (value,)
        warnings.warn(f"layering pipeline: {where}: {value[:60]!r} is a string, not a list of store paths: nixpkgs reads"
                      " it as its characters, which name no store path, so the step matches nothing (write [PATH])",
                      NixlayerWarning, stacklevel=2)
        return tuple(value)
    if not isinstance(value, list) or not all(isinstance(path, str) for path in value):
        raise _fail(where, f"expected a list of store paths, not {json.dumps(value)[:80]}")
    return tuple(value)


def _split_specs(value: Any, where: str) -> tuple[Any, ...]:
    if isinstance(value, str):
        return _paths(value, where, string_is_one=False)
    if not isinstance(value, list):
        raise _fail(where, f'expected a list of store paths and {{"children_of": PATH}}, not {json.dumps(value)[:80]}')
    specs: list[Any] = []
    for spec in value:
        if isinstance(spec, str):
            specs.append(spec)
        elif isinstance(spec, dict) and set(spec) == {"children_of"}:
            parents = spec["children_of"]
            specs.append(("children_of", _paths(parents, where, string_is_one=True)))
        else:
            raise _fail(where, f'{json.dumps(spec)[:80]} is neither a store path nor {{"children_of": PATH or [PATH, ...]}}')
    return tuple(specs)


# The kinds of value steps pass on, checked before any work.
_GRAPH = "graph"


@dataclass(frozen=True)
class _Sequence:
    item: _Kind


@dataclass(frozen=True)
class _Mapping:
    made_by: str
    parts: tuple[tuple[str, _Kind], ...]


_Kind = Union[str, _Sequence, _Mapping]


def _described(kind: _Kind) -> str:
    if kind == _GRAPH:
        return "a graph"
    if isinstance(kind, _Mapping):
        return f"the mapping {kind.made_by} makes ({', '.join(key for key, _ in kind.parts)})"
    return "a sequence of graphs" if kind == _Sequence(_GRAPH) else "a sequence of sequences or mappings"


_TAKES = {"popularity_contest": "a graph", "split_every": "a graph", "split_paths": "a graph",
          "subcomponent_out": "a graph", "subcomponent_in": "a graph", "remove_paths": "a graph",
          "limit_layers": "a sequence of graphs (flatten first)", "reverse": "a sequence", "map": "a sequence",
          "over": "a mapping (made by split_paths or subcomponent_*)", "flatten": "a sequence or a mapping"}


def _kind_after(steps: Sequence[Step], kind: _Kind) -> _Kind:
    for step in steps:
        kind = _kind_of(step, kind)
    return kind


def _kind_of(step: Step, kind: _Kind) -> _Kind:
    """The kind of value ``step`` makes of a value of ``kind``; raises NixlayerError if it cannot."""
    name = step.name
    if name == "pipe":
        return _kind_after(step.arguments[0], kind)
    fits = {
        "popularity_contest": kind == _GRAPH, "split_every": kind == _GRAPH, "split_paths": kind == _GRAPH,
        "subcomponent_out": kind == _GRAPH, "subcomponent_in": kind == _GRAPH, "remove_paths": kind == _GRAPH,
        "limit_layers": kind == _Sequence(_GRAPH), "reverse": isinstance(kind, _Sequence),
        "map": isinstance(kind, _Sequence), "over": isinstance(kind, _Mapping), "flatten": kind != _GRAPH,
    }[name]
    if not fits:
        raise _fail(step.where, f"takes {_TAKES[name]}, but gets {_described(kind)}")
    if name in ("popularity_contest", "split_every", "limit_layers", "flatten"):
        return _Sequence(_GRAPH)
    if name == "split_paths":
        return _Mapping("split_paths", (("main", _GRAPH), ("common", _GRAPH), ("rest", _GRAPH)))
    if name in ("subcomponent_out", "subcomponent_in"):
        return _Mapping(name, (("main", _GRAPH), ("rest", _GRAPH)))
    if name in ("remove_paths", "reverse"):
        return kind
    if name == "map":
        assert isinstance(kind, _Sequence)
        return _Sequence(_kind_of(step.arguments[0], kind.item))
    assert isinstance(kind, _Mapping)  # over
    key, inner = step.arguments
    parts = dict(kind.parts)
    if key not in parts:
        raise _fail(step.where, f"{kind.made_by} makes no part {key!r}: it makes {', '.join(parts)}")
    return _Mapping(kind.made_by, tuple((k, _kind_of(inner, v) if k == key else v) for k, v in kind.parts))


# --- running -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Graph:
    """A graph a step works on: its store paths in base order, the references among them, and
    the steps that made it."""

    paths: tuple[str, ...]
    references: Mapping[str, frozenset[str]]
    origin: tuple[str, ...]

    def part(self, keep: Iterable[str], origin: str, references: Mapping[str, frozenset[str]] | None = None) -> _Graph:
        """The sub-graph of the paths in ``keep``, in this graph's order, with the references
        among them (of ``references``, by default this graph's)."""
        keep = set(keep)
        references = self.references if references is None else references
        return _Graph(tuple(p for p in self.paths if p in keep),
                      {p: references[p] & keep for p in self.paths if p in keep}, (*self.origin, origin))

    @staticmethod
    def reachable(starts: Iterable[str], edges: Mapping[str, Iterable[str]]) -> set[str]:
        """``starts`` and everything reachable from them along ``edges``."""
        seen: set[str] = set()
        pending = list(starts)
        while pending:
            path = pending.pop()
            if path not in seen:
                seen.add(path)
                pending.extend(edges[path])
        return seen

    def referrers(self) -> dict[str, set[str]]:
        result: dict[str, set[str]] = {path: set() for path in self.paths}
        for path, refs in self.references.items():
            for ref in refs:
                result[ref].add(path)
        return result

    def roots(self) -> list[str]:
        referenced = set().union(*self.references.values())
        return [path for path in self.paths if path not in referenced]


def _popularity_contest(step: Step, graph: _Graph) -> list[_Graph]:
    popularities = references_popularity(graph.references)
    return [_Graph((path,), {path: frozenset()}, (*graph.origin, f"popularity_contest: popularity {popularities[path]}"))
            for path in order_by_popularity(popularities)]


def _limit_layers(step: Step, items: list[_Graph]) -> list[_Graph]:
    count = step.arguments[0]
    merged = items[count - 1:]
    references: dict[str, frozenset[str]] = {}
    for item in merged:
        references.update(item.references)
    origin = tuple(os.path.commonprefix([item.origin[:-1] for item in merged])) if merged else ()
    union = _Graph(tuple(path for item in merged for path in item.paths), references,
                   (*origin, f"limit_layers {count}: {len(merged)} merged"))
    return [*items[:count - 1], union]


def _split_every(step: Step, graph: _Graph) -> list[_Graph]:
    count = step.arguments[0]
    return [graph.part(graph.paths[start:start + count], f"split_every {count}: part {start // count + 1}")
            for start in range(0, len(graph.paths), count)]


def _split_paths(step: Step, graph: _Graph) -> dict[str, _Graph]:
    chosen: set[str] = set()
    for spec in step.arguments[0]:
        if isinstance(spec, tuple):
            for parent in spec[1]:
                chosen |= graph.references.get(parent, frozenset())
        elif spec in graph.references:
            chosen.add(spec)
    if not chosen:
        return {"rest": graph}
    roots = graph.roots()
    if len(roots) == 1 and roots[0] in chosen:
        return {"main": graph}
    cut = {path: refs - chosen for path, refs in graph.references.items()}
    split = graph.reachable(chosen, graph.references)
    # Several roots: those not chosen, as nixpkgs' synthetic root reaches them once its edges
    # to the chosen paths are cut.
    starts = [root for root in roots if root not in chosen]
    kept = graph.reachable(starts, cut)
    parts = {"main": split - kept, "common": split & kept, "rest": kept - split}
    return {key: graph.part(paths, f"split_paths: {key}", cut) for key, paths in parts.items() if paths}


def _subcomponent(step: Step, graph: _Graph) -> dict[str, _Graph]:
    starts = [path for path in step.arguments[0] if path in graph.references]
    edges = graph.references if step.name == "subcomponent_out" else graph.referrers()
    main = graph.reachable(starts, edges)
    return {"main": graph.part(main, f"{step.name}: main"),
            "rest": graph.part(set(graph.paths) - main, f"{step.name}: rest")}


def _remove_paths(step: Step, graph: _Graph) -> _Graph:
    gone = set(step.arguments[0])
    kept = [path for path in graph.paths if path not in gone]
    return _Graph(tuple(kept), {path: graph.references[path] - gone for path in kept}, graph.origin)


def _over(step: Step, parts: dict[str, Any]) -> dict[str, Any]:
    key, inner = step.arguments
    if key not in parts:
        raise _fail(step.where, f"split_paths made no part {key!r} of this closure, only {', '.join(parts)}")
    return {name: _run(inner, value) if name == key else value for name, value in parts.items()}


def _flatten(value: Any) -> Iterator[_Graph]:
    if isinstance(value, _Graph):
        yield value
    else:
        for item in value.values() if isinstance(value, dict) else value:
            yield from _flatten(item)


_RUN: dict[str, Callable[[Step, Any], Any]] = {
    "popularity_contest": _popularity_contest,
    "limit_layers": _limit_layers,
    "split_every": _split_every,
    "split_paths": _split_paths,
    "subcomponent_out": _subcomponent,
    "subcomponent_in": _subcomponent,
    "remove_paths": _remove_paths,
    "over": _over,
    "map": lambda step, items: [_run(step.arguments[0], item) for item in items],
    "pipe": lambda step, value: _run_all(step.arguments[0], value),
    "flatten": lambda step, value: list(_flatten(value)),
    "reverse": lambda step, items: items[::-1],
}


def _run(step: Step, value: Any) -> Any:
    return _RUN[step.name](step, value)


def _run_all(steps: Sequence[Step], value: Any) -> Any:
    for step in steps:
        value = _run(step, value)
    return value


def pipeline_layers(
    graph: ClosureGraph,
    pipeline: Sequence[Step],
    *,
    order: Sequence[str] | None = None,
    exclude_paths: Iterable[str] = (),
) -> list[PipelineLayer]:
    """The layers nixpkgs' ``flatten_references_graph`` makes of ``graph`` with ``pipeline``.

    Args:
        graph: the closure; every store path needs its NAR size (the base order).
        pipeline: steps checked by :func:`parse_pipeline`.
        order: every store path of ``graph`` in the order nixpkgs reads the graph, which orders
            equal NAR sizes; default: by store path, the order Nix writes.
        exclude_paths: store paths taken out of the graph first, with the references to them
            (nixpkgs' ``exclude_paths``; paths not in the graph are ignored).
    Returns:
        The layers, bottom first; empty ones dropped, as nixpkgs does.
    Raises:
        NixlayerError: a store path without a NAR size, an ``order`` that is not the graph's
            store paths, or ``over`` on a part ``split_paths`` did not make of this graph.
    """
    paths, sizes = graph.sized_paths(order, "pipeline")
    excluded = set(exclude_paths)
    kept = sorted((path for path in paths if path not in excluded), key=sizes.__getitem__)
    working = _Graph(tuple(kept), {path: graph.references(path) - {path} - excluded for path in kept}, ())
    return [PipelineLayer(layer.paths, layer.origin) for layer in _flatten(_run_all(pipeline, working)) if layer.paths]
