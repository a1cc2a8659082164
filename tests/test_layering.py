"""Layerings end to end: ``--layering`` on BuildImage and PushImage, batch files, specs and the
plan command, on the real closure of ``fixtures/vectors.nix``."""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from conftest import FIXTURES, REPO, SLOW, first_fast, run_pipelines
from nixlayer.__main__ import main
from nixlayer.errors import NixlayerError
from pipelines import BuildImage, PushImage
from pipelines.batch import load_batch

PIPELINE = [["subcomponent_out", ["STORE_PATH"]], ["over", "main", ["popularity_contest"]], ["flatten"]]


@pytest.fixture(scope="module")
def paths(vectors) -> dict[str, str]:
    return vectors["store_paths"]


def auto_layers_of_app(paths: dict[str, str], max_layers: int) -> list[list[str]]:
    """The auto layers of vec-app's closure, worked out by hand from nixpkgs' algorithm: NAR
    sizes app 1056, longnames 2376, zlib 1752, libc 1248, script 232."""
    p = paths
    # Largest first: longnames takes zlib and libc; zlib then takes libc back from it; libc
    # would make a fourth layer. app and script stay in the layer of no primary.
    if max_layers == 3:  # limit 2: zlib is one primary too many
        return [[p["libc"], p["longnames"], p["zlib"]], [p["app"], p["script"]]]
    if max_layers == 4:  # limit 3
        return [[p["libc"], p["zlib"]], [p["longnames"]], [p["app"], p["script"]]]
    # Every store path a primary, by closure size: libc 1248, script 1480, zlib 3000, ...
    return [[p["libc"]], [p["script"]], [p["zlib"]], [p["longnames"]], [p["app"]]]


def archive_layers(path: Path) -> list[list[str]]:
    """The store paths of each store layer of a docker-archive, from its history comments."""
    with tarfile.open(path) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))[0]
        config = json.load(tar.extractfile(manifest["Config"]))
    assert len(config["rootfs"]["diff_ids"]) == len(config["history"])
    return [json.loads(h["comment"].removeprefix("store paths: ")) for h in config["history"][:-1]]


@pytest.mark.parametrize("max_layers", first_fast([3, 4, 100]))
def test_luigi_build_image_layering_auto(tmp_path, vectors_app, paths, max_layers):
    output = tmp_path / "vec.tar"
    run = run_pipelines(["BuildImage", "--name", "vec", "--contents", json.dumps([vectors_app]), "--layering", "auto",
                         "--max-layers", str(max_layers), "--output", str(output)], tmp_path / "store")
    assert run.returncode == 0, run.stderr
    assert archive_layers(output) == auto_layers_of_app(paths, max_layers)


def test_luigi_build_image_layering_pipeline(tmp_path, vectors_app, paths):
    output = tmp_path / "vec.tar"
    pipeline = json.dumps(PIPELINE).replace("STORE_PATH", paths["zlib"])
    run = run_pipelines(["BuildImage", "--name", "vec", "--contents", json.dumps([vectors_app]), "--layering", "pipeline",
                         "--layering-pipeline", pipeline, "--output", str(output)], tmp_path / "store")
    assert run.returncode == 0, run.stderr
    # main: zlib and libc by popularity (libc 2: zlib references it); rest: the others in one
    # graph, by NAR size.
    assert archive_layers(output) == [[paths["libc"]], [paths["zlib"]], [paths["script"], paths["app"], paths["longnames"]]]


@pytest.mark.parametrize("args, message", first_fast([
    (["--layering", "pipeline", "--layering-pipeline", '[["popularity_contest"], ["limit_layer", 3]]'],
     "nixlayer: error: layering pipeline: step 2 (limit_layer): unknown step 'limit_layer'; the steps are "),
    (["--layering", "pipeline", "--layering-pipeline", '[["split_paths", ["/nix/store/x"]], ["popularity_contest"]]'],
     "nixlayer: error: layering pipeline: step 2 (popularity_contest): takes a graph, but gets the mapping split_paths"
     " makes (main, common, rest)"),
    (["--layering", "pipeline"], "nixlayer: error: the pipeline layering needs a layering pipeline"),
    (["--layering-pipeline", '[["popularity_contest"]]'],
     "nixlayer: error: a layering pipeline is given, but the layering is stable"),  # (the default)
    (["--layering", "pipeline", "--layering-pipeline", '[["split_every", 1]]', "--max-layers", "3"],
     "nixlayer: error: the layering pipeline makes 5 layers, but max_layers 3 leaves 2 beside the customisation layer"),
]))
def test_bad_pipeline_is_one_line_before_any_work(tmp_path, vectors_app, args, message):
    output = tmp_path / "vec.tar"
    store = tmp_path / "store"
    run = run_pipelines(["BuildImage", "--name", "vec", "--contents", json.dumps([vectors_app]), *args,
                         "--output", str(output)], store)
    assert run.returncode == 35, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("nixlayer: error:")]
    assert len(errors) == 1 and errors[0].startswith(message), run.stderr
    assert run.stderr.splitlines()[-1] == errors[0]
    assert not output.exists() and not store.exists()


@SLOW
def test_bad_layering_name_is_refused(tmp_path, vectors_app):
    run = run_pipelines(["BuildImage", "--name", "vec", "--contents", json.dumps([vectors_app]), "--layering", "sizes",
                         "--output", str(tmp_path / "vec.tar")], tmp_path / "store")
    assert run.returncode == 40
    assert "--layering must be one of auto, pipeline, popularity, stable, not 'sizes'" in run.stderr.splitlines()[-1]


def test_push_image_plans_as_build_image(layer_store, vectors_app, paths):
    common = {"name": "vec", "contents": [vectors_app], "layering": "auto", "max_layers": 4}
    pushed = PushImage(target="docker://127.0.0.1:5000/vec:1", **common).plan
    built = BuildImage(output="/tmp/unused-vec.tar", **common).plan
    assert pushed["store_layers"] == built["store_layers"] == auto_layers_of_app(paths, 4)


def test_the_default_tag_covers_the_layering_where_it_changes_the_layers(layer_store, vectors_app, tmp_path):
    def plan(**changed) -> dict:
        return BuildImage(name="vec", contents=[vectors_app], output=str(tmp_path / "x.tar"), **changed).plan

    popularity, auto = plan(max_layers=4, layering="popularity"), plan(max_layers=4, layering="auto")
    assert popularity["store_layers"] != auto["store_layers"] and popularity["tag"] != auto["tag"]
    # One pipeline that makes popularity's layers makes popularity's image, tag and all.
    same = plan(max_layers=4, layering="pipeline", layering_pipeline='[["popularity_contest"], ["limit_layers", 3]]')
    assert same["store_layers"] == popularity["store_layers"] and same["tag"] == popularity["tag"]


@SLOW
def test_luigi_build_images_batch_with_layerings(tmp_path, vectors_app, paths):
    """One batch, two layerings of one closure (the defaults' max_layers for both): each image
    gets the layers of its own layering."""
    batch = tmp_path / "batch.toml"
    batch.write_text(f'''max_layers = 4
[[image]]
name = "a"
contents = ["{vectors_app}"]
output = "a.tar"
layering = "auto"
[[image]]
name = "b"
contents = ["{vectors_app}"]
output = "b.tar"
layering = "pipeline"
layering_pipeline = [["popularity_contest"], ["limit_layers", 3]]
''')
    run = run_pipelines(["BuildImages", "--batch-file", str(batch), "--report", str(tmp_path / "report.json")],
                        tmp_path / "store")
    assert run.returncode == 0, run.stderr
    assert archive_layers(tmp_path / "a.tar") == auto_layers_of_app(paths, 4)
    p = paths
    assert archive_layers(tmp_path / "b.tar") == [[p["libc"]], [p["zlib"]], [p["longnames"], p["script"], p["app"]]]


def test_batch_file_takes_the_layering_keys(tmp_path, vectors_app, paths):
    batch = tmp_path / "batch.toml"
    batch.write_text(f'''layering = "auto"
[[image]]
name = "a"
contents = ["{vectors_app}"]
output = "a.tar"
[[image]]
name = "b"
contents = ["{vectors_app}"]
output = "b.tar"
layering = "pipeline"
layering_pipeline = [["popularity_contest"], ["limit_layers", 2]]
''')
    (_, a), (_, b) = load_batch(str(batch))
    assert a["layering"] == "auto"
    assert b["layering"] == "pipeline" and json.loads(b["layering_pipeline"]) == [["popularity_contest"], ["limit_layers", 2]]
    batch.write_text(batch.read_text().replace('"limit_layers", 2', '"limit_layers", 0'))
    with pytest.raises(NixlayerError, match=r"image 2 \(b\): layering pipeline: step 2 \(limit_layers\): the count must be"):
        load_batch(str(batch))


@pytest.fixture(scope="module")
def pipeline_spec(tmp_path_factory, vectors_app) -> str:
    """A spec of vec-app made with nixpkgs' layeringPipeline argument."""
    file = tmp_path_factory.mktemp("spec") / "image.nix"
    file.write_text(f'''let nixlayer = import {REPO / "nix"} {{ }}; vec = import {FIXTURES / "vectors.nix"}; in
nixlayer.buildLayeredImage {{
  name = "vec"; contents = [ vec.app ];
  layeringPipeline = [ [ "popularity_contest" ] [ "reverse" ] [ "limit_layers" 2 ] ];
}}''')
    out = subprocess.run(["nix-build", str(file), "--no-out-link"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_spec_with_layering_pipeline(pipeline_spec, paths, layer_store, capsys):
    spec = json.loads(Path(pipeline_spec).read_text())
    assert spec["images"][0]["layering"] == "pipeline"
    # popularity order reversed: app first, libc last; limit 2 merges all but the first.
    expected = [[paths["app"]], [paths["script"], paths["longnames"], paths["zlib"], paths["libc"]]]
    assert BuildImage(spec=pipeline_spec, output="/tmp/unused-vec.tar").plan["store_layers"] == expected
    assert main(["plan", "--spec", pipeline_spec, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["layering"] == "pipeline"
    assert [layer["store_paths"] for layer in plan["layers"]] == expected
    assert plan["layers"][1]["reason"] == "pipeline: limit_layers 2: 4 merged"
    # Overridden beside the spec, with the warning line.
    assert main(["plan", "--spec", pipeline_spec, "--json", "--layering", "auto", "--layering-pipeline", ""]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["layering"] == "auto"
    assert "--layering auto (spec: pipeline)" in captured.err


def test_plan_command_layering_auto(vectors_app, paths, capsys):
    assert main(["plan", "--layering", "auto", "--max-layers", "4", "--json", vectors_app]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["layering"] == "auto"
    assert [layer["store_paths"] for layer in plan["layers"]] == auto_layers_of_app(paths, 4)
    assert [layer["reason"] for layer in plan["layers"]] == [
        f"auto: primary store path {paths['zlib']}",
        f"auto: primary store path {paths['longnames']}",
        "auto: no primary store path, left over at the limit",
    ]


def test_plan_command_bad_pipeline_is_one_line(vectors_app, capsys):
    assert main(["plan", "--layering", "pipeline", "--layering-pipeline", '[["reverse"]]', vectors_app]) == 2
    err = capsys.readouterr().err
    assert err == ("nixlayer: error: layering pipeline: step 1 (reverse): takes a sequence, but gets a graph\n")


def test_spec_with_a_bad_pipeline_is_refused_when_read(tmp_path, vectors_app):
    from nixlayer.spec import parse_spec

    spec = {"nixlayer_spec": 1, "store_dir": "/nix/store", "closure": [],
            "images": [{"key": "vec", "name": "vec", "layering": "pipeline", "layering_pipeline": [["split_every", 0]]}]}
    with pytest.raises(NixlayerError, match=r"^spec S: image 1 \(vec\): layering pipeline: step 1 \(split_every\): the count"
                                            r" must be an integer of at least 1, not 0$"):
        parse_spec(json.dumps(spec), "S")


def test_plan_table_says_why_and_totals(vectors_app, paths, capsys):
    assert main(["plan", "--max-layers", "3", vectors_app]) == 0  # the default layering, stable
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].endswith("  (stable: first build, grouped by what changes together)")
    assert lines[-1] == "total: 5 store paths (6.7 kB) in 2 store layers of max_layers 3, stable layering"
    assert main(["plan", "--max-layers", "3", "--layering", "popularity", vectors_app]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].endswith(f"{paths['libc']}  (popularity rank 1)")
    assert lines[2].endswith(f"{paths['zlib']}  (popularity ranks 2-5: past the 1 single-path layers, max_layers - 2)")
    assert lines[-1] == "total: 5 store paths (6.7 kB) in 2 store layers of max_layers 3, popularity layering"
    split = ('[["split_paths", ["%s"]], ["over", "rest", ["popularity_contest"]]]' % paths["zlib"])
    assert main(["plan", "--layering", "pipeline", "--layering-pipeline", split, vectors_app]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].endswith(f"{paths['zlib']}  (pipeline: split_paths: main)")
    assert lines[3].endswith(f"{paths['longnames']}  (pipeline: split_paths: rest > popularity_contest: popularity 2)")
