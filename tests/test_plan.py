"""Layer plans as nixpkgs groups them, and the ``nixlayer plan`` command line."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nixlayer.__main__ import main
from nixlayer.closure import ClosureGraph
from nixlayer.errors import NixlayerError, NixlayerWarning
from nixlayer.plan import plan_image, plan_layers
from random_graphs import dag_references


def groups(plan) -> list[list[str]]:
    return [list(layer.store_paths) for layer in plan.layers]


@pytest.mark.parametrize("count", [0, 1, 2, 3, 4, 5, 9])
def test_groups_around_the_layer_budget(count):
    order = [f"/nix/store/{i:032d}-p" for i in range(count)]
    plan = plan_layers(order, max_layers=5, base_layers=1)  # 3 layers left: 2 single + 1 rest
    expected = [[p] for p in order[:2]] + ([order[2:]] if order[2:] else [])
    assert groups(plan) == expected
    assert plan.customisation_layer_index == 1 + len(expected)


@pytest.mark.parametrize("layering", ["stable", "popularity", "auto"])
@settings(max_examples=100, deadline=None)
@given(dag_references(), st.integers(2, 12), st.data())
def test_every_path_in_exactly_one_layer(layering, references, max_layers, data):
    sizes = data.draw(st.lists(st.integers(0, 10**6), min_size=len(references), max_size=len(references)))
    graph = ClosureGraph(references, dict(zip(references, sizes)))
    contents = data.draw(st.lists(st.sampled_from(list(references)), min_size=1, unique=True))
    plan = plan_image(graph, contents, max_layers=max_layers, layering=layering)
    assert plan.layering == layering
    assert sorted(plan.store_paths) == sorted(graph.closure(contents).paths)
    assert len(plan.layers) <= max_layers - 1
    assert all(layer.store_paths for layer in plan.layers)


def test_sizes_and_popularity():
    a, b, c = (f"/nix/store/{ch * 32}-{ch}" for ch in "abc")
    plan = plan_layers([a, b, c], max_layers=3, nar_sizes={a: 10, b: 5, c: None}, popularities={a: 3, b: 2, c: 1})
    assert [(layer.nar_size, layer.nar_size_complete, layer.popularity) for layer in plan.layers] == [
        (10, True, 3), (5, False, 2)]
    assert plan.to_json()["layers"][1]["store_paths"] == [b, c]


@pytest.mark.parametrize(
    ("max_layers", "base_layers", "message"),
    [
        (1, 0, "max_layers is 1: at least 2"),
        (128, 0, "max_layers is 128: Docker stops at about 125-127 layers: max depth exceeded"),
        (10, 9, "the 9 base layers and the customisation layer leave no layer for store paths: give max_layers 11 or more"),
        (127, 126, "the base image has 126 layers: with a store layer and the customisation layer that is more than"
                   " the 127 Docker takes; use a base of fewer layers"),
        (10, -1, "base_layers is -1"),
    ],
)
def test_bad_layer_budget(max_layers, base_layers, message):
    with pytest.raises(NixlayerError, match=message):
        plan_layers([], max_layers, base_layers)


def test_more_than_125_layers_warns():
    with pytest.warns(NixlayerWarning, match="max_layers is 126"):
        plan_layers([], 126)


def test_duplicate_path_in_order():
    path = "/nix/store/" + "a" * 32 + "-a"
    with pytest.raises(NixlayerError, match=f"store path {path} is listed twice"):
        plan_layers([path, path])


# --- command line ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph_file(tmp_path_factory, vectors_app):
    out = subprocess.run(
        ["nix", "path-info", "--json", "--recursive", "--extra-experimental-features", "nix-command", vectors_app],
        check=True, capture_output=True, text=True,
    )
    path = tmp_path_factory.mktemp("graph") / "graph.json"
    path.write_text(out.stdout)
    return path


def expected_json_groups(vectors, max_layers):
    return [layer["paths"] for layer in vectors["image_store_layers_by_max_layers"][str(max_layers)]]


@pytest.mark.parametrize("source", ["graph", "scan", "nix"])
def test_cli_plan_json(source, graph_file, vectors_app, vectors, capsys):
    options = {"graph": ["--graph", str(graph_file)], "scan": ["--store-dir-scan", "/"], "nix": []}[source]
    assert main(["plan", *options, "--max-layers", "4", "--layering", "popularity", "--json", vectors_app]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [layer["store_paths"] for layer in plan["layers"]] == expected_json_groups(vectors, 4)
    assert plan["customisation_layer_index"] == 3


def test_cli_plan_table_from_stdin(graph_file, vectors_app, vectors, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(graph_file.read_bytes())))
    assert main(["plan", "--graph", "-", "--max-layers", "3", "--layering", "popularity", vectors_app]) == 0
    lines = capsys.readouterr().out.splitlines()
    libc = vectors["store_paths"]["libc"]
    assert lines[1].split()[:4] == ["1", "1248", "10", libc]
    assert lines[-2].split() == ["3", "(customisation", "layer)"]
    assert lines[-1].startswith("total: 5 store paths")
    assert len(lines) == 1 + len(vectors["popularity_order"]) + 2


def test_cli_config_paths(graph_file, vectors, capsys):
    s = vectors["store_paths"]
    assert main(["plan", "--graph", str(graph_file), "--json", "--config-path", s["script"], s["zlib"]]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert sorted(p for layer in plan["layers"] for p in layer["store_paths"]) == sorted(
        [s["libc"], s["zlib"], s["script"]])


@pytest.mark.parametrize(
    ("argv", "culprit"),
    [
        (["plan", "--max-layers", "200", "ROOT"], "max_layers is 200"),
        (["plan", "--graph", "/nonexistent.json", "ROOT"], "cannot read graph file /nonexistent.json"),
        (["plan", "/nix/store/" + "0" * 32 + "-missing"], "0" * 32 + "-missing"),
        (["plan", "--store-dir-scan", "/", "/tmp/not-a-store-path"], "/tmp/not-a-store-path"),
    ],
)
def test_cli_errors_are_one_line(argv, culprit, vectors_app, capsys):
    argv = [vectors_app if arg == "ROOT" else arg for arg in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("nixlayer: error: ") and captured.err.count("\n") == 1
    assert culprit in captured.err


def test_cli_as_module_with_bad_json(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = subprocess.run([sys.executable, "-m", "nixlayer", "plan", "--graph", str(bad), "/nix/store/" + "a" * 32 + "-a"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("nixlayer: error: malformed closure graph JSON") and result.stderr.count("\n") == 1


@pytest.mark.parametrize("stdin", [False, True])
def test_cli_graph_file_not_utf8_is_one_line(tmp_path, stdin):
    bad = tmp_path / "utf16.json"
    bad.write_bytes(b"\xff\xfe" + "[]".encode("utf-16-le"))
    argv = [sys.executable, "-m", "nixlayer", "plan", "--graph", "-" if stdin else str(bad), "/nix/store/" + "a" * 32 + "-a"]
    result = subprocess.run(argv, input=bad.read_bytes() if stdin else None, capture_output=True)
    assert result.returncode == 2
    assert result.stderr.decode() == "nixlayer: error: malformed closure graph JSON: not UTF-8 (byte 0xff at offset 0)\n"


def test_cli_root_missing_from_graph_file(graph_file, capsys):
    other = "/nix/store/" + "1" * 32 + "-other"
    assert main(["plan", "--graph", str(graph_file), other]) == 2
    assert f"image store path {other} is not in the closure graph" in capsys.readouterr().err
