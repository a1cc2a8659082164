"""The ``stable`` layering: rebuilds after updates of different depths keep the previous layers."""

from __future__ import annotations

import hashlib
import json
import subprocess

import pytest

from conftest import FIXTURES, run_luigi
from nixlayer.__main__ import main
from nixlayer.autolayer import auto_layers
from nixlayer.closure import ClosureGraph
from nixlayer.errors import NixlayerError
from nixlayer.stable import package_key, stable_layers
from nixlayer.storepath import NIX_BASE32
from pipelines import BuildImage

# name -> (version, NAR size, dependencies): a small closure shaped like a real one.
PACKAGES = {
    "libc": ("2.40", 30_000_000, []),
    "zlib": ("1.3", 200_000, ["libc"]),
    "openssl": ("3.0.13", 6_000_000, ["libc", "zlib"]),
    "curl": ("8.5.0", 1_500_000, ["libc", "zlib", "openssl"]),
    "python3": ("3.11.8", 60_000_000, ["libc", "zlib", "openssl"]),
    "tzdata": ("2024a", 3_000_000, []),
    "app": ("1.0", 500_000, ["curl", "python3", "tzdata"]),
}


def closure(packages: dict) -> tuple[ClosureGraph, dict[str, str]]:
    """The graph of ``packages`` and each package's store path. A store path's hash covers its
    name, version and its dependencies' store paths, as in Nix: a change reaches every
    package that depends on it."""
    paths: dict[str, str] = {}

    def path(name: str) -> str:
        if name not in paths:
            version, _, deps = packages[name]
            digest = hashlib.sha256(repr((name, version, [path(d) for d in deps])).encode()).digest()
            hash_part = "".join(NIX_BASE32[b % 32] for b in digest[:32])
            paths[name] = f"/nix/store/{hash_part}-{name}-{version}"
        return paths[name]

    for name in packages:
        path(name)
    graph = ClosureGraph({paths[n]: [paths[d] for d in deps] for n, (_, _, deps) in packages.items()},
                         {paths[n]: size for n, (_, size, _) in packages.items()})
    return graph, paths


def names(layers, paths: dict[str, str]) -> list[list[str]]:
    by_path = {path: name for name, path in paths.items()}
    return [[by_path[path] for path in layer] for layer, _ in layers]


def updated(**changes) -> dict:
    """PACKAGES with some packages changed: name=(version, size, deps), or None to drop one."""
    packages = {**PACKAGES, **changes}
    return {name: value for name, value in packages.items() if value is not None}


@pytest.fixture
def before():
    """The first build at limit 4: auto layers, then that build's plan."""
    graph, paths = closure(PACKAGES)
    layers = stable_layers(graph, 4, None)
    return graph, paths, [paths_of for paths_of, _ in layers]


def test_first_build_is_auto(before):
    graph, paths, previous = before
    assert previous == [list(layer.store_paths) for layer in auto_layers(graph, 4)]
    # python3 takes libc, zlib and openssl first; libc then takes itself, openssl takes zlib.
    assert names(stable_layers(graph, 4, None), paths) == [["libc"], ["openssl", "zlib"], ["python3"],
                                                            ["app", "curl", "tzdata"]]


def test_the_same_closure_keeps_every_layer(before):
    graph, _, previous = before
    layers = stable_layers(graph, 4, previous)
    assert [paths for paths, _ in layers] == previous
    assert {why for _, why in layers} == {"kept"}


def test_leaf_update_changes_only_the_leafs_layer(before):
    _, old, previous = before
    graph, new = closure(updated(app=("1.1", 510_000, ["curl", "python3", "tzdata"])))
    layers = stable_layers(graph, 4, previous)
    assert names(layers, new) == names([(p, "") for p in previous], old)  # app in its old place
    assert [why for _, why in layers] == ["kept", "kept", "kept", "kept, with new versions"]
    assert [paths for paths, _ in layers][:3] == previous[:3]


def test_deep_update_puts_each_new_version_where_the_old_one_was(before):
    _, old, previous = before
    # zlib changes: it and everything depending on it get new store paths; libc and tzdata not.
    graph, new = closure(updated(zlib=("1.3.1", 201_000, ["libc"])))
    assert {n for n in new if new[n] != old[n]} == {"zlib", "openssl", "curl", "python3", "app"}
    layers = stable_layers(graph, 4, previous)
    assert names(layers, new) == [["libc"], ["openssl", "zlib"], ["python3"], ["app", "curl", "tzdata"]]
    assert [why for _, why in layers] == ["kept"] + ["kept, with new versions"] * 3
    assert layers[0][0] == previous[0]
    assert sorted(p for paths, _ in layers for p in paths) == list(graph.paths)


def test_a_store_path_removed_leaves_its_layer(before):
    _, old, previous = before
    graph, new = closure(updated(python3=None, app=("1.0", 500_000, ["curl", "tzdata"])))
    layers = stable_layers(graph, 4, previous)
    assert names(layers, new) == [["libc"], ["openssl", "zlib"], ["app", "curl", "tzdata"]]
    assert [why for _, why in layers] == ["kept", "kept", "kept, with new versions"]
    assert [paths for paths, _ in layers][:2] == previous[:2]


def test_a_store_path_added_gets_a_free_layer_or_joins_a_changed_one(before):
    _, _, previous = before
    packages = updated(jq=("1.7", 400_000, ["libc"]), app=("1.0", 500_000, ["curl", "python3", "tzdata", "jq"]))
    graph, new = closure(packages)
    # A fifth layer is free at limit 5: jq gets it, on top.
    layers = stable_layers(graph, 5, previous)
    assert names(layers, new) == [["libc"], ["openssl", "zlib"], ["python3"], ["app", "curl", "tzdata"], ["jq"]]
    assert layers[-1][1] == "new store paths"
    # At limit 4 no layer is free: jq joins app's layer, which changes anyway.
    layers = stable_layers(graph, 4, previous)
    assert names(layers, new) == [["libc"], ["openssl", "zlib"], ["python3"], ["app", "curl", "tzdata", "jq"]]
    assert [paths for paths, _ in layers][:3] == previous[:3]


def test_a_lower_max_layers_merges_the_smallest_layers(before):
    graph, paths, previous = before
    layers = stable_layers(graph, 3, previous)
    # By size: openssl+zlib 6.2 MB and app+curl+tzdata 5.0 MB are the two smallest.
    assert names(layers, paths) == [["libc"], ["openssl", "zlib", "app", "curl", "tzdata"], ["python3"]]
    assert [why for _, why in layers] == ["kept", "merged to fit the limit", "kept"]
    assert stable_layers(graph, 1, previous)[0][0] == [p for layer in previous for p in layer]
    # A higher one changes nothing; planning again keeps the merged layers.
    assert [p for p, _ in stable_layers(graph, 10, previous)] == previous
    assert [p for p, _ in stable_layers(graph, 3, [p for p, _ in layers])] == [p for p, _ in layers]


@pytest.mark.parametrize("path, key", [
    ("/nix/store/abc-openssl-3.0.13-bin", ("openssl", "bin")),
    ("/nix/store/abc-zlib-1.3", ("zlib", "")),
    ("/nix/store/abc-hello", ("hello", "")),
    ("/nix/store/abc-glibc-2.39-52", ("glibc", "")),
    ("/nix/store/abc-python3.11-requests-2.31.0", ("python3.11-requests", "")),
    ("/nix/store/abc-tzdata-2024a", ("tzdata", "")),
])
def test_package_key(path, key):
    assert package_key(path) == key


def test_bad_input():
    graph, paths = closure(PACKAGES)
    with pytest.raises(NixlayerError, match="at least 1, not 0"):
        stable_layers(graph, 0, None)
    with pytest.raises(NixlayerError, match="is in two layers of the previous build"):
        stable_layers(graph, 3, [[paths["libc"]], [paths["libc"]]])


# --- end to end: the previous build found in the layer store ------------------------------


def _incremental(version: str) -> dict[str, str]:
    """The store paths of ``fixtures/incremental.nix`` with its tool at ``version``."""
    def build(attr: str) -> str:
        return subprocess.run(["nix-build", str(FIXTURES / "incremental.nix"), "--argstr", "version", version,
                               "-A", attr, "--no-out-link"], check=True, capture_output=True, text=True).stdout.strip()

    return {attr: build(attr) for attr in ("lib", "data", "app", "tool")}


def test_rebuild_keeps_the_layers_of_the_last_build_to_the_same_output(tmp_path, layer_store):
    v1, v2 = _incremental("1"), _incremental("2")
    params = dict(name="inc", layering="stable", max_layers=3, output=str(tmp_path / "inc.tar"))
    first = BuildImage(contents=[v1["app"], v1["tool"]], **params)
    # No previous build in the layer store: the first build's layers are auto's.
    first_layers = first.plan["store_layers"]
    assert first_layers == [list(layer.store_paths) for layer in auto_layers(first._graph, 2)]
    run_luigi(first)

    second = BuildImage(contents=[v1["app"], v2["tool"]], **params)
    expected = [[v2["tool"] if path == v1["tool"] else path for path in layer] for layer in first_layers]
    assert second.plan["store_layers"] == expected
    ran = run_luigi(second)["ran_tasks"]
    # Only the layer that held the tool is written again (with the customisation layer).
    written = [task for task in ran if task.task_family in ("StorePathLayer", "OverflowLayer")]
    assert [task.store_paths() for task in written] == [layer for layer in expected if v2["tool"] in layer]

    # Another output, or another name, is another image: a first build.
    other = BuildImage(contents=[v1["app"], v2["tool"]], **{**params, "output": str(tmp_path / "other.tar")})
    assert other.plan["store_layers"] == [list(layer.store_paths) for layer in auto_layers(other._graph, 2)]


def test_plan_command_previous(tmp_path, capsys):
    v1, v2 = _incremental("1"), _incremental("2")
    assert main(["plan", "--layering", "stable", "--max-layers", "3", "--json", v1["app"], v1["tool"]]) == 0
    previous = tmp_path / "previous.json"
    previous.write_text(capsys.readouterr().out)
    assert main(["plan", "--layering", "stable", "--max-layers", "3", "--json", "--previous", str(previous),
                 v1["app"], v2["tool"]]) == 0
    plan = json.loads(capsys.readouterr().out)
    old = json.loads(previous.read_text())
    assert [layer["store_paths"] for layer in plan["layers"]] == [
        [v2["tool"] if p == v1["tool"] else p for p in layer["store_paths"]] for layer in old["layers"]]
    assert {layer["reason"] for layer in plan["layers"]} <= {"stable: kept", "stable: kept, with new versions"}
    (tmp_path / "bad.json").write_text("[]")
    assert main(["plan", "--layering", "stable", "--previous", str(tmp_path / "bad.json"), v1["app"]]) == 2
    assert "is not a plan as plan --json prints it" in capsys.readouterr().err
