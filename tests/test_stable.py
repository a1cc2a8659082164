"""The ``stable`` layering: rebuilds after updates of different depths keep the previous layers."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess

import pytest

from conftest import FIXTURES, REPO, run_luigi
from random_graphs import random_packages
from nixlayer.__main__ import main
from nixlayer.autolayer import auto_layers
from nixlayer.closure import ClosureGraph
from nixlayer.errors import NixlayerError
from nixlayer.layerstore import LayerStore
from nixlayer.stable import MAX_UNITS, group_by_change, stable_layers
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
    """The first build at limit 4, and that build's plan."""
    graph, paths = closure(PACKAGES)
    layers = stable_layers(graph, 4, None)
    return graph, paths, [paths_of for paths_of, _ in layers]


def pulled(layers, previous, graph) -> int:
    """The NAR bytes of the layers a host holding ``previous`` pulls."""
    before = {tuple(layer) for layer in previous}
    return sum(graph.nar_size(path) for paths, _ in layers if tuple(paths) not in before for path in paths)


def test_first_build_groups_by_what_changes_together(before):
    graph, paths, previous = before
    # libc (30 MB) changes with nothing else; openssl and zlib with libc only; tzdata with
    # nothing; app and curl, small, with almost anything. python3 (60 MB) changes with libc,
    # zlib and openssl, as openssl and zlib do, but in their layer a python3 update would pull
    # them too (66.2 MB) where auto's layers pull python3 and the top layer (65 MB): the budget
    # keeps it apart, and at 4 layers the first build is auto's.
    assert names(stable_layers(graph, 4, None), paths) == [["libc"], ["openssl", "zlib"], ["python3"],
                                                            ["app", "curl", "tzdata"]]
    assert [list(layer.store_paths) for layer in auto_layers(graph, 4)][-1] == [
        paths["app"], paths["curl"], paths["tzdata"]]
    assert {why for _, why in stable_layers(graph, 4, None)} == {"first build, grouped by what changes together"}
    # Fewer layers: the rarely changing large ones take the rest in; more: each its own.
    assert names(stable_layers(graph, 2, None), paths) == [["libc", "openssl", "python3", "zlib"],
                                                            ["app", "curl", "tzdata"]]
    # Layers are ordered by how many store paths' updates change them: libc and tzdata one each.
    assert names(stable_layers(graph, 5, None), paths) == [["libc"], ["tzdata"], ["openssl", "zlib"], ["python3"],
                                                            ["app", "curl"]]
    assert len(stable_layers(graph, 7, None)) == 7


def pulled_on_update(layers: list[list[str]], graph: ClosureGraph) -> dict[str, int]:
    """Store path -> the NAR bytes of the layers an update of it changes (every layer holding
    it or a store path whose closure holds it)."""
    closures = {path: set(graph.closure([path]).paths) for path in graph.paths}
    return {changed: sum(graph.nar_size(path) for layer in layers if any(changed in closures[p] for p in layer)
                         for path in layer)
            for changed in graph.paths}


def test_no_update_of_a_first_build_pulls_more_than_with_auto():
    # vim-runtime (35 MB) changes with nothing else, libc (12 MB) with nothing else; openssl
    # with libc only. Grouped by the average cost alone, openssl (6 MB) would join libc at 4
    # layers: an openssl update would pull libc too.
    graph, paths = closure({
        "libc": ("2.40", 12_000_000, []), "ncurses": ("6.4", 1_000_000, ["libc"]),
        "gpm": ("1.20", 100_000, ["libc"]), "sodium": ("1.0", 400_000, ["libc"]), "acl": ("2.3", 100_000, ["libc"]),
        "vim-runtime": ("9.0", 35_000_000, []),
        "vim": ("9.0", 3_000_000, ["libc", "ncurses", "gpm", "sodium", "acl", "vim-runtime"]),
        "openssl": ("3.0", 6_000_000, ["libc"]), "curl": ("8.5", 1_500_000, ["libc", "openssl"]),
        "less": ("643", 300_000, ["libc", "ncurses"]),
    })
    sizes = {path: graph.nar_size(path) for path in graph.paths}
    unbudgeted = group_by_change(graph, sizes, graph.paths, [], 4, [list(graph.paths)], 16)
    assert [paths["libc"], paths["openssl"]] in unbudgeted
    auto = pulled_on_update([list(layer.store_paths) for layer in auto_layers(graph, 4)], graph)
    assert pulled_on_update(unbudgeted, graph)[paths["openssl"]] > auto[paths["openssl"]]
    for limit in range(1, 9):
        auto = pulled_on_update([list(layer.store_paths) for layer in auto_layers(graph, limit)], graph)
        stable = pulled_on_update([layer for layer, _ in stable_layers(graph, limit, None)], graph)
        assert all(stable[path] <= auto[path] for path in graph.paths), limit
    assert names(stable_layers(graph, 4, None), paths) == [["libc"], ["vim-runtime"], ["openssl"],
                                                            ["acl", "curl", "gpm", "less", "ncurses", "sodium", "vim"]]


def test_the_same_closure_keeps_every_layer(before):
    graph, _, previous = before
    layers = stable_layers(graph, 4, previous)
    assert [paths for paths, _ in layers] == previous
    assert {why for _, why in layers} == {"kept"}


def test_leaf_update_changes_only_the_leafs_layer(before):
    _, old, previous = before
    graph, new = closure(updated(app=("1.1", 510_000, ["curl", "python3", "tzdata"])))
    layers = stable_layers(graph, 4, previous)
    assert [paths for paths, _ in layers][:3] == previous[:3]
    assert names(layers, new) == [["libc"], ["openssl", "zlib"], ["python3"], ["app", "curl", "tzdata"]]
    assert [why for _, why in layers] == ["kept"] * 3 + ["changed, grouped by what changes together"]
    assert pulled(layers, previous, graph) == 510_000 + 1_500_000 + 3_000_000
    # One more layer free: tzdata, pulled with app anyway, leaves app's layer.
    layers = stable_layers(graph, 5, previous)
    assert names(layers, new) == [["libc"], ["openssl", "zlib"], ["python3"], ["tzdata"], ["app", "curl"]]
    assert pulled(layers, previous, graph) == 510_000 + 1_500_000 + 3_000_000


def test_deep_update_changes_only_the_layers_holding_changed_store_paths(before):
    _, old, previous = before
    # zlib changes: it and everything depending on it get new store paths; libc and tzdata not.
    graph, new = closure(updated(zlib=("1.3.1", 201_000, ["libc"])))
    assert {n for n in new if new[n] != old[n]} == {"zlib", "openssl", "curl", "python3", "app"}
    layers = stable_layers(graph, 4, previous)
    assert names(layers, new) == [["libc"], ["openssl", "zlib"], ["python3"], ["app", "curl", "tzdata"]]
    assert [why for _, why in layers] == ["kept"] + ["changed, grouped by what changes together"] * 3
    assert layers[0][0] == previous[0]
    assert sorted(p for paths, _ in layers for p in paths) == list(graph.paths)
    assert pulled(layers, previous, graph) == 201_000 + 6_000_000 + 60_000_000 + 1_500_000 + 500_000 + 3_000_000


def test_a_changed_layer_is_split_so_that_the_next_update_moves_less():
    # A previous build (an auto one, say) with python3 sharing the top layer with app and curl.
    graph, old = closure(PACKAGES)
    previous = [[old["libc"]], [old["openssl"], old["zlib"]], [old["app"], old["curl"], old["python3"], old["tzdata"]]]
    assert [p for p, _ in stable_layers(graph, 5, previous)] == previous  # nothing changed, nothing moves
    # curl changes: the top layer is pulled whole anyway, and split into the three layers free.
    curl = ("8.6.0", 1_500_000, ["libc", "zlib", "openssl"])
    graph, new = closure(updated(curl=curl))
    layers = stable_layers(graph, 5, previous)
    assert names(layers, new) == [["libc"], ["openssl", "zlib"], ["tzdata"], ["python3"], ["app", "curl"]]
    assert pulled(layers, previous, graph) == 500_000 + 1_500_000 + 60_000_000 + 3_000_000
    # curl again: python3 and tzdata stay where they are now.
    graph, _ = closure(updated(curl=("8.7.0", *curl[1:])))
    again = stable_layers(graph, 5, [p for p, _ in layers])
    assert pulled(again, [p for p, _ in layers], graph) == 500_000 + 1_500_000


@pytest.mark.parametrize("count, limit", [(40, 19), (40, 9), (150, 19), (150, 9)])
def test_random_updates_of_random_closures_pull_less_than_auto(count, limit):
    # Ten closures, each through eight updates of random packages (each 3 % larger; it and
    # its dependents get new store paths): over each sequence a host pulls no more bytes with
    # stable than with auto, fewer over all ten (measured: 1.06 to 3.0 times the new store
    # paths' bytes, auto 1.3 to 5.9), and in at least 9 updates of 10 no more than with auto.
    updates = worse = 0
    totals = {"stable": 0, "auto": 0}
    for seed in range(10):
        rng = random.Random(seed)
        packages = random_packages(rng, count)
        graph, _ = closure(packages)
        layers = {"stable": [paths for paths, _ in stable_layers(graph, limit, None)],
                  "auto": [list(layer.store_paths) for layer in auto_layers(graph, limit)]}
        total = {"stable": 0, "auto": 0}
        for _ in range(8):
            name = rng.choice(sorted(packages))
            version, size, deps = packages[name]
            packages[name] = (str(int(version) + 1), size * 103 // 100, deps)
            graph, _ = closure(packages)
            new = {"stable": [paths for paths, _ in stable_layers(graph, limit, layers["stable"])],
                   "auto": [list(layer.store_paths) for layer in auto_layers(graph, limit)]}
            step = {name: pulled([(paths, "") for paths in new[name]], layers[name], graph) for name in new}
            updates += 1
            worse += step["stable"] > step["auto"]
            for name in new:
                total[name] += step[name]
            layers = new
        assert total["stable"] <= total["auto"], seed
        for name in totals:
            totals[name] += total[name]
    assert totals["stable"] < totals["auto"]
    assert worse * 10 <= updates


def test_a_store_path_removed_changes_its_layer(before):
    _, old, previous = before
    graph, new = closure(updated(python3=None, app=("1.0", 500_000, ["curl", "tzdata"])))
    layers = stable_layers(graph, 4, previous)
    # python3's layer and app's change: their store paths left, regrouped in two layers.
    assert names(layers, new) == [["libc"], ["openssl", "zlib"], ["tzdata"], ["app", "curl"]]
    assert [why for _, why in layers] == ["kept", "kept", "changed, grouped by what changes together",
                                          "changed, grouped by what changes together"]
    assert [layers[0][0], layers[1][0]] == [previous[0], previous[1]]


def test_a_store_path_added_gets_a_free_layer_or_joins_a_changed_one(before):
    _, _, previous = before
    packages = updated(jq=("1.7", 400_000, ["libc"]), app=("1.0", 500_000, ["curl", "python3", "tzdata", "jq"]))
    graph, new = closure(packages)
    # A fifth layer is free at limit 5: the changed layer and jq share two.
    layers = stable_layers(graph, 5, previous)
    assert names(layers, new) == [["libc"], ["openssl", "zlib"], ["python3"], ["tzdata"], ["app", "curl", "jq"]]
    # At limit 4 no layer is free: jq joins app's layer, which changes anyway.
    layers = stable_layers(graph, 4, previous)
    assert names(layers, new) == [["libc"], ["openssl", "zlib"], ["python3"], ["app", "curl", "jq", "tzdata"]]
    assert [paths for paths, _ in layers][:3] == previous[:3]
    # jq alone added (no layer changes) and no layer free: the smallest layer (app, curl and
    # tzdata, 5 MB) takes it in.
    graph, new = closure(updated(jq=("1.7", 400_000, ["libc"])))
    layers = stable_layers(graph, 4, previous)
    assert names(layers, new) == [["libc"], ["openssl", "zlib"], ["python3"], ["app", "curl", "jq", "tzdata"]]
    assert [why for _, why in layers] == ["kept"] * 3 + ["changed, grouped by what changes together"]


def test_a_lower_max_layers_merges_the_smallest_layers(before):
    graph, paths, previous = before
    layers = stable_layers(graph, 3, previous)
    # By size: app, curl and tzdata 5.0 MB and openssl and zlib 6.2 MB are the two smallest.
    assert names(layers, paths) == [["libc"], ["app", "curl", "openssl", "tzdata", "zlib"], ["python3"]]
    assert [why for _, why in layers] == ["kept", "changed, grouped by what changes together", "kept"]
    assert sorted(stable_layers(graph, 1, previous)[0][0]) == list(graph.paths)
    # A higher one changes nothing; planning again keeps the merged layers.
    assert [p for p, _ in stable_layers(graph, 10, previous)] == previous
    assert [p for p, _ in stable_layers(graph, 3, [p for p, _ in layers])] == [p for p, _ in layers]


def test_many_store_paths_are_grouped_from_auto_layers_first():
    # More store paths than MAX_UNITS: planned in seconds, every store path in one layer.
    count = MAX_UNITS * 3
    packages = {f"lib{i}": ("1.0", 1000 + i * 37 % 5000, [f"lib{j}" for j in (i // 2, i // 3) if j < i])
                for i in range(count)}
    graph, paths = closure(packages)
    layers = stable_layers(graph, 20, None)
    assert len(layers) == 20
    assert sorted(p for layer, _ in layers for p in layer) == list(graph.paths)


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
    params = dict(name="inc", max_layers=3, output=str(tmp_path / "inc.tar"))  # stable: the default layering
    first = BuildImage(contents=[v1["app"], v1["tool"]], **params)
    # No previous build in the layer store: a first build.
    first_layers = first.plan["store_layers"]
    assert first_layers == [paths for paths, _ in stable_layers(first._graph, 2, None)]
    run_luigi(first)

    # The previous build is found through the pointer for its output and name (latest/), not by
    # reading every image stamp: many other stamps, even ones naming the same output and name
    # with other layers, change nothing.
    (stamp,) = layer_store.glob("images/*.json")
    decoy = {**json.loads(stamp.read_text()), "layers": json.loads(stamp.read_text())["layers"][-1:] * 2}
    for i in range(300):
        (layer_store / "images" / f"decoy{i}.json").write_text(json.dumps(decoy))
    second = BuildImage(contents=[v1["app"], v2["tool"]], **params)
    expected = [[v2["tool"] if path == v1["tool"] else path for path in layer] for layer in first_layers]
    assert second.plan["store_layers"] == expected
    (pointer,) = layer_store.glob("latest/*.json")
    assert json.loads(pointer.read_text()) == {"stamp": str(stamp.relative_to(layer_store))}
    store = LayerStore(str(layer_store))
    assert store.previous_layers(output=params["output"], name="inc") == first_layers
    saved = pointer.read_bytes()
    pointer.unlink()  # without it, no previous build: the stamps are not searched
    assert store.previous_layers(output=params["output"], name="inc") is None
    pointer.write_bytes(saved)
    for i in range(300):
        (layer_store / "images" / f"decoy{i}.json").unlink()
    ran = run_luigi(second)["ran_tasks"]
    # Only the layer that held the tool is written again (with the customisation layer).
    written = [task for task in ran if task.task_family in ("StorePathLayer", "OverflowLayer")]
    assert [task.store_paths() for task in written] == [layer for layer in expected if v2["tool"] in layer]

    # Another output, or another name, is another image: a first build.
    other = BuildImage(contents=[v1["app"], v2["tool"]], **{**params, "output": str(tmp_path / "other.tar")})
    assert other.plan["store_layers"] == [paths for paths, _ in stable_layers(other._graph, 2, None)]


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
    assert {layer["reason"] for layer in plan["layers"]} <= {
        "stable: kept", "stable: changed, grouped by what changes together"}
    (tmp_path / "bad.json").write_text("[]")
    assert main(["plan", "--layering", "stable", "--previous", str(tmp_path / "bad.json"), v1["app"]]) == 2
    assert "is not a plan as plan --json prints it" in capsys.readouterr().err


def test_plan_command_finds_the_previous_build_as_build_image_does(tmp_path, layer_store, capsys):
    v1, v2 = _incremental("1"), _incremental("2")
    output = tmp_path / "inc.tar"
    run_luigi(BuildImage(name="inc", max_layers=3, output=str(output), contents=[v1["app"], v1["tool"]]))
    built = BuildImage(name="inc", max_layers=3, output=str(output), contents=[v1["app"], v2["tool"]]).plan["store_layers"]

    def plan(*options: str) -> list[tuple[list[str], str]]:
        assert main(["plan", "--max-layers", "3", "--json", "--layer-store", str(layer_store), *options,
                     v1["app"], v2["tool"]]) == 0
        return [(layer["store_paths"], layer["reason"]) for layer in json.loads(capsys.readouterr().out)["layers"]]

    # The same output (given relative, as on a command line) and name: the build BuildImage keeps.
    first = plan()
    assert {why for _, why in first} == {"stable: first build, grouped by what changes together"}
    kept = plan("--output", os.path.relpath(output), "--name", "inc")
    assert [paths for paths, _ in kept] == built
    assert [why for _, why in kept] == [
        "stable: changed, grouped by what changes together" if v2["tool"] in paths else "stable: kept"
        for paths in built]
    # Another name or output, a push target never pushed to: first builds.
    assert plan("--output", str(output), "--name", "other") == first
    assert plan("--output", str(tmp_path / "other.tar"), "--name", "inc") == first
    assert plan("--push", "docker://127.0.0.1:5000/inc:1") == first
    # Another platform, as BuildImage finds it (the pointer of an image written alone names none).
    riscv = BuildImage(name="inc", max_layers=3, output=str(output), contents=[v1["app"], v2["tool"]],
                       platform="linux/riscv64").plan["store_layers"]
    assert [paths for paths, _ in plan("--output", str(output), "--name", "inc", "--platform", "linux/riscv64")] == riscv
    # Another layering ignores the previous build.
    assert plan("--output", str(output), "--name", "inc", "--layering", "popularity") == plan("--layering", "popularity")

    # Without --layer-store: the builds' own, from the luigi.cfg Luigi reads where plan runs.
    (tmp_path / "luigi.cfg").write_text(f"[nixlayer]\nlayer_store = {layer_store}\n")
    run = subprocess.run(["python3", "-m", "nixlayer", "plan", "--max-layers", "3", "--json", "--output", str(output),
                          "--name", "inc", v1["app"], v2["tool"]], cwd=tmp_path, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert run.returncode == 0, run.stderr
    assert [(layer["store_paths"], layer["reason"]) for layer in json.loads(run.stdout)["layers"]] == kept

    for options, message in [
        (["--output", str(output), "--name", "MULTI"], "invalid image name 'MULTI'"),
        (["--push", "docker://127.0.0.1:5000/inc:5", "--tag", "6"], "--tag 6 and push target"),
        (["--output", str(output)], "--output finds the previous build of an image by its name too: give --name"),
        (["--output", str(output), "--name", "inc", "--previous", str(tmp_path / "p.json")],
         "--previous gives the previous build: no --output or --push with it"),
        (["--push", "docker://inc"], "push target"),
    ]:
        assert main(["plan", "--layer-store", str(layer_store), *options, v1["app"]]) == 2
        err = capsys.readouterr().err
        assert err.startswith("nixlayer: error: ") and message in err and err.count("\n") == 1


def test_plan_command_with_a_spec_takes_its_name(tmp_path, layer_store, capsys):
    """With --spec, the image's name is the spec's: --output alone finds the previous build."""
    file = tmp_path / "image.nix"
    file.write_text(f'''let nixlayer = import {REPO / "nix"} {{ }}; inc = import {FIXTURES / "incremental.nix"} {{ }}; in
nixlayer.buildLayeredImage {{ name = "inc-spec"; contents = [ inc.app inc.tool ]; maxLayers = 3; }}''')
    spec = subprocess.run(["nix-build", str(file), "--no-out-link"], check=True, capture_output=True,
                          text=True).stdout.strip()
    output = tmp_path / "inc.tar"
    run_luigi(BuildImage(spec=spec, output=str(output)))
    assert main(["plan", "--spec", spec, "--json", "--layer-store", str(layer_store), "--output", str(output)]) == 0
    assert {layer["reason"] for layer in json.loads(capsys.readouterr().out)["layers"]} == {"stable: kept"}
    assert main(["plan", "--spec", spec, "--json", "--layer-store", str(layer_store), "--output", str(output),
                 "--name", "other"]) == 0
    captured = capsys.readouterr()
    assert {layer["reason"] for layer in json.loads(captured.out)["layers"]} == {
        "stable: first build, grouped by what changes together"}
    assert "--name other (spec: inc-spec)" in captured.err
