"""The ``pipeline`` layering against the layers nixpkgs' flatten_references_graph made
(``fixtures/pipeline-vectors.json``, of the graphs of ``fixtures/layering-vectors.json``)."""

from __future__ import annotations

import json
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import FIXTURES
from nixlayer.closure import graph_from_json
from nixlayer.errors import NixlayerError, NixlayerWarning
from nixlayer.closure import ClosureGraph
from nixlayer.pipeline import parse_pipeline, pipeline_layers
from random_graphs import dag_references

PIPELINES = json.loads((FIXTURES / "pipeline-vectors.json").read_text())
GRAPHS = json.loads((FIXTURES / "layering-vectors.json").read_text())["graphs"]


def run(case: dict) -> list[list[str]]:
    nodes = GRAPHS[case["graph"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NixlayerWarning)
        steps = parse_pipeline(case["pipeline"])
    layers = pipeline_layers(graph_from_json(nodes), steps, order=[n["path"] for n in nodes],
                             exclude_paths=case["exclude_paths"])
    return [list(layer.store_paths) for layer in layers]


@pytest.mark.parametrize("case", PIPELINES["cases"], ids=lambda case: f"graph{case['graph']}-{case['label']}")
def test_same_layers_as_nixpkgs(case):
    assert run(case) == case["layers"]


# Each of nixpkgs' error cases, and the one line nixlayer says instead of its traceback.
ERRORS = {
    "limit_layers_0": "step 2 (limit_layers): the count must be an integer of at least 1, not 0",
    "unregistered_step_reorder": "step 2 (reorder): unknown step 'reorder'; the steps are popularity_contest,",
    "over_missing_key": "step 2 (over): subcomponent_out makes no part 'common': it makes main, rest",
    "empty_pipeline": "layering pipeline is empty: it must make layers",
    "pipeline_ending_in_graph": "ends with a graph (step 1 (remove_paths)): end it with a step that makes layers",
    "children_of_bad_key": 'step 1 (split_paths): {"parents_of": "/nix/store/',
    "map_on_single_graph": "step 1 (map): takes a sequence, but gets a graph",
    "split_every_0": "step 1 (split_every): the count must be an integer of at least 1, not 0",
    "popularity_on_dict": "step 2 (popularity_contest): takes a graph, but gets the mapping split_paths makes (main, common, rest)",
    "limit_layers_on_dict": "step 2 (limit_layers): takes a sequence of graphs (flatten first), but gets the mapping split_paths makes",
}


@pytest.mark.parametrize("case", PIPELINES["error_cases"], ids=lambda case: case["label"])
def test_nixpkgs_errors_are_one_line_before_any_work(case):
    with pytest.raises(NixlayerError) as error:
        parse_pipeline(case["pipeline"])
    message = str(error.value)
    assert "\n" not in message
    assert ERRORS[case["label"]] in message


@pytest.mark.parametrize("pipeline, message", [
    ("[[", "layering pipeline is not valid JSON"),
    ('{"a": 1}', 'expected a list of steps such as [["popularity_contest"], ["limit_layers", 99]]'),
    ('[["limit_layers", 3, 4]]', 'step 1 (limit_layers): takes 1 argument (["limit_layers", N]), not 2'),
    ('[["over", "main"]]', 'step 1 (over): takes 2 arguments (["over", KEY, STEP]), not 1'),
    ('[["split_every", 2], ["map", ["popularity_contest"], 3]]', "step 2 (map): takes 1 argument"),
    ('[["split_every", -1]]', "not -1"),
    ('[["split_every", true]]', "not true"),
    ('[["split_paths", [3]]]', '3 is neither a store path nor {"children_of"'),
    ('[["subcomponent_in", ["/nix/store/x"]], ["over", "main", ["pipe", [["popularity_contest"], ["oops"]]]]]',
     "step 2 (over), its step (pipe), step 2 (oops): unknown step 'oops'"),
    ('[["popularity_contest"], ["map", ["limit_layers", 2]]]',
     "step 2 (map), its step (limit_layers): takes a sequence of graphs (flatten first), but gets a graph"),
    ('["popularity_contest"]', 'step 1: expected a step ["NAME", ARGUMENT...], not "popularity_contest"'),
])
def test_bad_pipelines(pipeline, message):
    with pytest.raises(NixlayerError, match="^layering pipeline") as error:
        parse_pipeline(pipeline)
    assert message in str(error.value)


def test_a_string_for_a_list_of_paths_warns():
    with pytest.warns(NixlayerWarning, match="is a string, not a list of store paths"):
        parse_pipeline('[["split_paths", "/nix/store/abc-x"], ["flatten"]]')


def test_over_a_part_split_paths_did_not_make():
    """split_paths leaves out empty parts: over one of those fails when planned, in one line.
    xz, a leaf of graph 0, shares no dependency with anything: no common part."""
    graph = graph_from_json(GRAPHS[0])
    xz = next(path for path in graph.paths if path.endswith("-xz-0.5"))
    steps = parse_pipeline([["split_paths", [xz]], ["over", "common", ["popularity_contest"]]])
    with pytest.raises(NixlayerError, match=r"^layering pipeline: step 2 \(over\): split_paths made no part 'common'"
                                            r" of this closure, only main, rest$"):
        pipeline_layers(graph, steps)


def test_layers_say_where_they_come_from():
    nodes = GRAPHS[0]
    graph = graph_from_json(nodes)
    steps = parse_pipeline([["popularity_contest"], ["limit_layers", 5]])
    layers = pipeline_layers(graph, steps, order=[n["path"] for n in nodes])
    assert [layer.origin for layer in layers] == [
        ("popularity_contest: popularity 15",), ("popularity_contest: popularity 9",),
        ("popularity_contest: popularity 4",), ("popularity_contest: popularity 2",),
        ("limit_layers 5: 2 merged",),
    ]


@settings(max_examples=100, deadline=None)
@given(dag_references(), st.data())
def test_every_store_path_in_exactly_one_layer(references, data):
    """Pipelines that drop nothing put each store path in exactly one layer, whatever the graph."""
    graph = ClosureGraph(references, {path: data.draw(st.integers(0, 100)) for path in references})
    paths = list(graph.paths)
    chosen = data.draw(st.lists(st.sampled_from(paths), max_size=3))
    limit = data.draw(st.integers(1, 5))
    pipeline = data.draw(st.sampled_from([
        [["popularity_contest"], ["limit_layers", limit]],
        [["split_every", limit], ["reverse"]],
        [["split_paths", chosen], ["flatten"], ["map", ["split_every", limit]]],
        [["split_paths", [{"children_of": chosen}]]],
        [["subcomponent_in", chosen], ["over", "rest", ["popularity_contest"]]],
        [["subcomponent_out", chosen], ["over", "main", ["pipe", [["popularity_contest"], ["limit_layers", limit]]]]],
    ]))
    layers = pipeline_layers(graph, parse_pipeline(pipeline))
    assert sorted(path for layer in layers for path in layer.store_paths) == paths
    assert all(layer.store_paths for layer in layers)
