"""The ``auto`` layering against the layers nixpkgs' auto-layer.py made of the same graphs
(``fixtures/layering-vectors.json``, read its ``about``)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import FIXTURES
from nixlayer.autolayer import auto_layers, name_then_hash
from nixlayer.closure import ClosureGraph, graph_from_json
from nixlayer.errors import NixlayerError
from random_graphs import dag_references

VECTORS = json.loads((FIXTURES / "layering-vectors.json").read_text())


def case_id(case: dict) -> str:
    return f"graph{case['graph']}-limit{case['limit']}"


@pytest.mark.parametrize("case", VECTORS["cases"], ids=case_id)
def test_same_layers_as_nixpkgs(case):
    nodes = VECTORS["graphs"][case["graph"]]
    graph = graph_from_json(nodes)
    layers = [list(layer.store_paths) for layer in auto_layers(graph, case["limit"], order=[n["path"] for n in nodes])]
    if case["order_ties"]:  # nixpkgs' order of layers with equal closure sizes is its set order
        assert sorted(layers) == sorted(case["layers"])
    else:
        assert layers == case["layers"]


def test_ties_of_nar_size_follow_the_graph_order():
    """Two cases of the vectors change when equal NAR sizes are taken in store path order (the
    order Nix writes) instead of the vectors' own: the order is an input of the algorithm."""
    changed = 0
    for case in VECTORS["cases"]:
        graph = graph_from_json(VECTORS["graphs"][case["graph"]])
        layers = sorted(list(layer.store_paths) for layer in auto_layers(graph, case["limit"]))
        changed += layers != sorted(case["layers"])
    assert changed == 2


def test_layer_details():
    """Each layer says its primary store paths and closure size; the last primaries' leftovers
    are in a layer of no primary; equal closure sizes are ordered by store paths."""
    p = {name: f"/nix/store/{name * 32}-{name}" for name in "abcd"}
    graph = ClosureGraph({p["a"]: [p["c"]], p["b"]: [p["c"]], p["c"]: [p["d"]], p["d"]: []},
                         {p["a"]: 100, p["b"]: 100, p["c"]: 1, p["d"]: 10})
    layers = auto_layers(graph, 3)
    # b (later in path order) is taken first, then a: c and d are shared by both; d as a
    # primary would make a fourth layer.
    assert [(layer.store_paths, layer.primary_paths, layer.closure_size) for layer in layers] == [
        ((p["c"], p["d"]), (p["a"], p["b"]), 11),
        ((p["a"],), (p["a"],), 111),
        ((p["b"],), (p["b"],), 111),
    ]
    assert [layer.store_paths for layer in auto_layers(graph, 1)] == [(p["a"], p["b"], p["c"], p["d"])]
    # Limit 2: b then a would make 3 identities; a stays with the paths no primary reaches.
    assert [(layer.store_paths, layer.primary_paths) for layer in auto_layers(graph, 2)] == [
        ((p["a"],), ()),
        ((p["b"], p["c"], p["d"]), (p["b"],)),
    ]


@settings(max_examples=100, deadline=None)
@given(dag_references(), st.integers(1, 12), st.data())
def test_every_path_in_exactly_one_layer_within_the_limit(references, limit, data):
    sizes = {path: data.draw(st.integers(0, 1000)) for path in references}
    graph = ClosureGraph(references, sizes)
    layers = auto_layers(graph, limit)
    assert sorted(path for layer in layers for path in layer.store_paths) == list(graph.paths)
    assert len(layers) <= limit
    for layer in layers:
        assert list(layer.store_paths) == sorted(layer.store_paths, key=name_then_hash)


def test_name_then_hash():
    assert name_then_hash("/nix/store/abc-zlib-1.3") == ("zlib-1.3", "/nix/store/abc")


@pytest.mark.parametrize("limit, message", [
    (0, "the auto layering needs a layer limit of at least 1, not 0"),
])
def test_bad_limit(limit, message):
    with pytest.raises(NixlayerError, match=f"^{message}$"):
        auto_layers(ClosureGraph({}), limit)


def test_unknown_nar_size_is_refused():
    path = "/nix/store/" + "a" * 32 + "-x"
    with pytest.raises(NixlayerError, match=f"NAR size; {path} has none"):
        auto_layers(ClosureGraph({path: []}), 3)
