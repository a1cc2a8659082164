"""Image specs: nixlayer's Nix library (nix/default.nix) evaluated and built with real Nix,
offline, and the images nixlayer builds from the specs (BuildImage, PushImage, BuildImages,
``python3 -m nixlayer plan``), without asking Nix for the closure."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FIXTURES, REPO, SLOW, first_fast, run_luigi, run_pipelines
from nixlayer.closure import graph_from_json
from nixlayer.errors import NixlayerError
from nixlayer.image import config_store_paths
from nixlayer.spec import SPEC_VERSION, ImageSpec, parse_spec, read_spec
from pipelines import BuildImage, BuildImages
from registry_fixture import registry  # noqa: F401 - the fixture
from test_build import PODMAN_RUN, archive_config

IMAGES = FIXTURES / "images.nix"
NIXLAYER = REPO / "nix"


def spec_build(expr: Path, attr: str | None = None, *args: str) -> str:
    """``nix-build EXPR [-A ATTR] ARGS`` with real Nix: the spec's store path (a failure shows
    what Nix said)."""
    out = subprocess.run(["nix-build", str(expr), *(["-A", attr] if attr else []), *args, "--no-out-link"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def nix_eval_error(tmp_path: Path, expression: str) -> str:
    """Build the Nix ``expression`` (``nixlayer`` and ``vec`` in scope); it must fail: its error."""
    file = tmp_path / "image.nix"
    file.write_text(f"let nixlayer = import {NIXLAYER} {{ }}; vec = import {FIXTURES / 'vectors.nix'}; in {expression}")
    run = subprocess.run(["nix-build", str(file), "--no-out-link"], capture_output=True, text=True)
    assert run.returncode != 0
    return run.stderr


def no_nix_path(tmp_path: Path) -> tuple[str, Path]:
    """A PATH whose ``nix`` and ``nix-store`` come first and only leave a mark: a build run
    with it must not ask Nix anything. Returns (PATH, the mark)."""
    trap = tmp_path / "trap"
    trap.mkdir()
    mark = tmp_path / "nix-was-called"
    for name in ("nix", "nix-store"):
        (trap / name).write_text(f"#!/bin/sh\necho \"$0 $*\" >> {mark}\nexit 1\n")
        (trap / name).chmod(0o755)
    return f"{trap}:{os.environ['PATH']}", mark


def one_error(run: subprocess.CompletedProcess, status: int) -> str:
    """The one error line of a ``luigi`` run that must have exited with ``status`` (README, Exit statuses)."""
    errors = [line for line in run.stderr.splitlines() if line.startswith("nixlayer: error:")]
    assert run.returncode == status and len(errors) == 1, run.stderr
    return errors[0]


# --- the Nix library -----------------------------------------------------------------------


def test_spec_closure_graph_is_what_nix_path_info_says(vectors):
    spec = read_spec(spec_build(IMAGES, "withConfig"))
    roots = [vectors["store_paths"][name] for name in ("zlib", "script", "longnames")]
    info = subprocess.run(["nix", "--extra-experimental-features", "nix-command", "path-info", "--json",
                           "--recursive", *roots], check=True, capture_output=True, text=True).stdout
    assert spec.graph == graph_from_json(info)  # paths, references and NAR sizes
    assert set(spec.graph.roots()) == {vectors["store_paths"]["script"], vectors["store_paths"]["longnames"]}
    (image,) = spec.images
    assert image.key == "vec-config" and image.parameters["contents"] == [vectors["store_paths"]["zlib"]]
    assert image.parameters["config"]["Cmd"] == [vectors["store_paths"]["script"]]


@SLOW
def test_spec_keeps_its_store_paths_alive(vectors):
    spec = spec_build(IMAGES, "app")
    requisites = subprocess.run(["nix-store", "--query", "--requisites", spec], check=True,
                                capture_output=True, text=True).stdout.split()
    assert set(vectors["store_paths"].values()) <= set(requisites)  # a GC root on the spec is one on them


@pytest.mark.parametrize("expression, message", first_fast([
    ('nixlayer.buildLayeredImage { name = "x"; fromImage = "base.tar"; }', 'fromImage: expected a docker-archive file (a path or a derivation) or a base image such as'),
    ('nixlayer.buildLayeredImage { name = "x"; enableFakechroot = true; }',
     "'enableFakechroot' is not supported: fakeRootCommands run under fakeroot"),
    ('nixlayer.buildLayeredImage { name = "x"; copyToRoot = [ "/etc" ]; }', "copyToRoot: /etc is not a store path"),
    ('nixlayer.buildLayeredImage { name = "x"; perms = { regex = "x"; }; }', "perms: expected a list of rules"),
    ('nixlayer.buildLayeredImage { name = "x"; perms = [ "x" ]; }', "perms: expected a list of attribute sets"),
    ('nixlayer.buildLayeredImage { name = "x"; layeringPipeline = [ ]; }', "layeringPipeline is empty"),
    ('nixlayer.buildLayeredImage { name = "x"; layering = "auto"; layeringPipeline = [ [ "flatten" ] ]; }',
     'layeringPipeline is given, but layering is "auto"'),
    ('nixlayer.buildLayeredImage { name = "x"; compressor = "gz"; }', "'compressor'"),
    ('nixlayer.buildLayeredImage { name = "x"; maxLayer = 3; }', "unknown argument 'maxLayer'"),
    ('nixlayer.buildLayeredImage { contents = [ vec.app ]; }', "name: expected a string"),
    ('nixlayer.buildLayeredImage { name = "x"; contents = [ "/tmp" ]; }', "contents: /tmp is not a store path"),
    ('nixlayer.buildLayeredImage { name = "x"; config = [ ]; }', "config: expected an attribute set"),
    ('nixlayer.buildImages [ (nixlayer.buildLayeredImage { name = "a/x"; }) (nixlayer.buildLayeredImage { name = "b/x"; }) ]',
     "two images are called 'x'"),
    ('nixlayer.buildImages { x = vec.app; }', "buildImages: x is not a nixlayer.buildLayeredImage image"),
    ('nixlayer.buildImages { ".x" = nixlayer.buildLayeredImage { name = "x"; }; }', "'.x' cannot name an image's output file"),
]))
def test_what_nixlayer_cannot_do_fails_evaluation_naming_it(tmp_path, expression, message):
    assert f"error: nixlayer." in (stderr := nix_eval_error(tmp_path, expression)) and message in stderr, stderr


def test_unsupported_arguments_at_their_unused_values_are_accepted(tmp_path):
    file = tmp_path / "image.nix"
    file.write_text(f'(import {NIXLAYER} {{ }}).buildLayeredImage {{ name = "MyApp"; fromImage = null; enableFakechroot = false;'
                    ' debug = false; passthru.answer = 42; }')
    spec = read_spec(spec_build(file))
    assert spec.image().parameters == {"name": "myapp", "contents": [], "config": {}}  # lower case, as nixpkgs
    answer = subprocess.run(["nix-instantiate", "--eval", "-E", f"(import {file}).answer"], capture_output=True, text=True)
    assert answer.stdout.strip() == "42"


# --- building from a spec ------------------------------------------------------------------


@pytest.mark.parametrize("max_layers", first_fast(["3", "4", "100"]))
def test_spec_image_has_the_store_layers_of_contents_without_asking_nix(tmp_path, vectors, vectors_app, max_layers):
    spec = spec_build(IMAGES, "app", "--arg", "maxLayers", max_layers, "--argstr", "layering", "popularity")
    path, mark = no_nix_path(tmp_path)
    run = run_pipelines(["BuildImage", "--spec", spec, "--output", str(tmp_path / "spec.tar")], tmp_path / "store", path=path)
    assert run.returncode == 0, run.stderr
    assert not mark.exists()
    config, _ = archive_config(tmp_path / "spec.tar")
    expected = vectors["image_store_layers_by_max_layers"][max_layers]
    assert config["rootfs"]["diff_ids"][:-1] == [layer["diff_id"] for layer in expected]
    # The same image, byte for byte, as from --contents with the same parameters.
    run = run_pipelines(["BuildImage", "--name", "vec", "--tag", "spec", "--contents", json.dumps([vectors_app]),
                         "--max-layers", max_layers, "--layering", "popularity", "--output", str(tmp_path / "contents.tar")],
                         tmp_path / "store")
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "spec.tar").read_bytes() == (tmp_path / "contents.tar").read_bytes()


@SLOW
def test_example_hello_image_from_a_spec_runs_in_podman(tmp_path):
    spec = spec_build(REPO / "examples" / "hello-image.nix")
    out = tmp_path / "hello.tar"
    run = run_pipelines(["BuildImage", "--spec", spec, "--tag", "spec-t1", "--output", str(out)], tmp_path / "store")
    assert run.returncode == 0, run.stderr
    warnings = [line for line in run.stderr.splitlines() if line.startswith("nixlayer: warning:")]
    assert warnings == [f"nixlayer: warning: spec {spec}: overridden by what is given beside it: --tag spec-t1 (spec: latest)"]
    subprocess.run(["podman", "load", "-i", str(out)], check=True, capture_output=True)
    try:
        shown = subprocess.run([*PODMAN_RUN, "localhost/hello:spec-t1"], capture_output=True, text=True, timeout=120)
        assert shown.stdout == "Hello from a nixlayer image!\n", shown.stderr
    finally:
        subprocess.run(["podman", "rmi", "-f", "localhost/hello:spec-t1"], capture_output=True)


def test_multi_image_spec_builds_all_in_one_run_shared_layers_once(tmp_path, layer_store, vectors):
    spec = spec_build(IMAGES, "batch")
    report = tmp_path / "report.json"
    first = run_luigi(BuildImages(spec=spec, output_dir=str(tmp_path / "out"), report=str(report)))
    data = json.loads(report.read_text())
    images = {i["name"]: i for i in data["images"]}
    assert sorted(images) == ["inc", "vec", "vec-zlib"] and data["batch"] == spec
    assert (tmp_path / "out" / "app.tar").is_file() and (tmp_path / "out" / "zlib.tar").is_file()
    assert (tmp_path / "out" / "inc" / "index.json").is_file()  # format = "oci" in Nix
    # vec-libc and vec-zlib are layers of both vec and vec-zlib: each built once.
    layer_tasks = [t for t in first["ran_tasks"] if t.task_family in ("StorePathLayer", "OverflowLayer", "CustomisationLayer")]
    assert len(layer_tasks) == len({t.task_id for t in layer_tasks}) == data["totals"]["distinct_layers"]
    assert images["vec"]["layers"] + images["vec-zlib"]["layers"] + images["inc"]["layers"] == data["totals"]["distinct_layers"] + 2
    config, _ = archive_config(tmp_path / "out" / "zlib.tar")
    assert config["rootfs"]["diff_ids"][:2] == [vectors["single_path_layers"][name]["diff_id"] for name in ("libc", "zlib")]
    again = run_luigi(BuildImages(spec=spec, output_dir=str(tmp_path / "out"), report=str(report)))
    assert again["ran"] == ["BuildImages"]


def test_build_images_reads_each_spec_images_closure_once(tmp_path, layer_store, monkeypatch):
    # ImageSpec.closure checks every store path of the closure on disk: once per image is enough.
    spec = spec_build(IMAGES, "batch")
    calls = []
    closure = ImageSpec.closure
    monkeypatch.setattr(ImageSpec, "closure", lambda self, roots, *args: calls.append(sorted(roots)) or closure(self, roots, *args))
    run_luigi(BuildImages(spec=spec, output_dir=str(tmp_path / "out"), report=str(tmp_path / "report.json")))
    read = read_spec(spec)
    roots = [sorted({*i.parameters.get("contents", []), *config_store_paths(i.parameters.get("config", {}), read.store_dir)})
             for i in read.images]
    assert sorted(calls) == sorted(roots) and len(calls) == 3


@SLOW
def test_one_image_of_a_multi_image_spec_and_its_plan(tmp_path):
    spec = spec_build(IMAGES, "batch")
    run = run_pipelines(["BuildImage", "--spec", spec, "--output", str(tmp_path / "x.tar")], tmp_path / "store")
    assert "holds 3 images (app, inc, zlib): name one with --spec-image KEY" in one_error(run, 40)
    run = run_pipelines(["BuildImage", "--spec", spec, "--spec-image", "zlib", "--output", str(tmp_path / "zlib.tar")],
                        tmp_path / "store")
    assert run.returncode == 0, run.stderr
    plan = subprocess.run([sys.executable, "-m", "nixlayer", "plan", "--spec", spec, "--spec-image", "zlib", "--json"],
                          capture_output=True, text=True, check=True)
    layers = [layer["store_paths"] for layer in json.loads(plan.stdout)["layers"]]
    config, _ = archive_config(tmp_path / "zlib.tar")
    assert [json.loads(h["comment"].removeprefix("store paths: ")) for h in config["history"][:-1]] == layers


def test_spec_parameters_given_values_win_and_only_what_the_spec_sets_is_overridden(vectors_app):
    closure = [{"path": vectors_app, "narSize": 1, "references": []}]
    image = {"key": "a", "name": "a", "tag": "1", "contents": [vectors_app], "config": {"User": "x"}}
    spec = parse_spec(json.dumps({"nixlayer_spec": 1, "store_dir": "/nix/store", "images": [image], "closure": closure}), "s")
    parameters, overrides = spec.parameters(None, {"tag": "2", "max_layers": 3, "config": {"User": "x"}})
    assert parameters == {"name": "a", "tag": "2", "contents": [vectors_app], "config": {"User": "x"}, "max_layers": 3,
                          "store_dir": "/nix/store"}
    assert [str(o) for o in overrides] == ["--tag 2 (spec: 1)"]  # max_layers: the spec leaves it out; config: equal


@SLOW
def test_plan_and_build_take_a_spec_and_what_is_given_beside_it_alike(tmp_path):
    built = json.loads(Path(spec_build(IMAGES, "withConfig")).read_text())

    def variant(name: str, **fields) -> str:
        data = {**built, "images": [{**built["images"][0], **fields}]}
        (tmp_path / name).write_text(json.dumps(data))
        return str(tmp_path / name)

    def plan(spec: str, *args: str) -> tuple[subprocess.CompletedProcess, int | None]:
        run = subprocess.run([sys.executable, "-m", "nixlayer", "plan", "--spec", spec, "--json", *args],
                             capture_output=True, text=True)
        return run, len(json.loads(run.stdout)["layers"]) + 1 if run.returncode == 0 else None

    def build(spec: str, *args: str) -> tuple[subprocess.CompletedProcess, int | None]:
        out = tmp_path / "image.tar"
        out.unlink(missing_ok=True)
        run = run_pipelines(["BuildImage", "--spec", spec, "--output", str(out), *args], tmp_path / "store")
        return run, len(archive_config(out)[0]["rootfs"]["diff_ids"]) if run.returncode == 0 else None

    def lines(run: subprocess.CompletedProcess) -> list[str]:
        return [line for line in run.stderr.splitlines() if line.startswith(("nixlayer: warning:", "nixlayer: error:"))]

    leaves_it_out, sets_four = variant("default.json"), variant("four.json", max_layers=4)
    no_store_paths = variant("custom.json", include_store_paths=False)
    for command in (plan, build):
        run, layers = command(leaves_it_out, "--max-layers", "3")  # the spec leaves max_layers out: no warning
        assert (lines(run), layers) == ([], 3), run.stderr
        run, layers = command(sets_four, "--max-layers", "3")
        assert (lines(run), layers) == ([f"nixlayer: warning: spec {sets_four}: overridden by what is given beside it:"
                                         " --max-layers 3 (spec: 4)"], 3), run.stderr
        run, layers = command(no_store_paths)
        assert (lines(run), layers) == ([], 1), run.stderr  # the customisation layer only
        run, _ = command(leaves_it_out, "--store-dir", "/other/store")
        assert lines(run)[0] == (f"nixlayer: warning: spec {leaves_it_out}: overridden by what is given beside it:"
                                 " --store-dir /other/store (spec: /nix/store)"), run.stderr
        assert run.returncode == (2 if command is plan else 35) and len(lines(run)) == 2
        assert lines(run)[1].startswith(f"nixlayer: error: {built['images'][0]['contents'][0]}"), run.stderr


# --- bad specs -------------------------------------------------------------------------------


def bad_spec_run(tmp_path: Path, spec: str, *args: str, status: int = 40) -> str:
    """The one error line of BuildImage --spec SPEC ARGS, which must exit with ``status`` and
    write nothing; without ARGS, BuildImages --spec SPEC must say the same and exit the same."""
    out = tmp_path / "out.tar"
    run = run_pipelines(["BuildImage", "--spec", spec, "--output", str(out), *args], tmp_path / "store")
    error = one_error(run, status)
    assert not out.exists() and not (tmp_path / "store").exists()
    if not args:
        run = run_pipelines(["BuildImages", "--spec", spec, "--output-dir", str(tmp_path / "out"),
                             "--report", str(tmp_path / "report.json")], tmp_path / "store")
        assert one_error(run, status) == error
        assert not (tmp_path / "out").exists() and not (tmp_path / "report.json").exists()
        assert not (tmp_path / "store").exists()
    return error


@SLOW
def test_spec_whose_store_paths_are_gone_one_line(tmp_path):
    file = tmp_path / "gone.nix"
    file.write_text(f"""
      let nixlayer = import {NIXLAYER} {{ }};
          leaf = derivation {{ name = "gone-{os.getpid()}-{tmp_path.name}"; system = builtins.currentSystem;
                              builder = "/bin/sh"; args = [ "-c" "/bin/mkdir $out" ]; }};
      in nixlayer.buildLayeredImage {{ name = "gone"; contents = [ leaf ]; }}""")
    built = spec_build(file)
    copy = tmp_path / "spec.json"
    shutil.copy(built, copy)
    (leaf,) = read_spec(str(copy)).image().parameters["contents"]
    subprocess.run(["nix-store", "--delete", built, leaf], check=True, capture_output=True)
    error = bad_spec_run(tmp_path, str(copy), status=35)  # found when the image is planned
    assert f"store path {leaf} is gone from the store: build the spec again" in error


@pytest.mark.parametrize("text, message", first_fast([
    ('{"nixlayer_spec": 2, "images": []}', "format version 2 is not supported: this nixlayer reads version 1"),
    ("{not json", "not valid JSON"),
    ('{"images": []}', 'not a nixlayer image spec (it has no "nixlayer_spec" version)'),
]))
def test_bad_spec_one_line_nothing_written(tmp_path, text, message):
    spec = tmp_path / "spec.json"
    spec.write_text(text)
    assert message in bad_spec_run(tmp_path, str(spec))


@pytest.mark.parametrize("field, value, takes", [
    ("compression", "zip", "one of auto, gzip, none, zstd"),
    ("format", "tar", "one of docker-archive, oci, oci-archive"),
])
@SLOW
def test_spec_value_a_parameter_refuses_one_line_as_on_the_command_line(tmp_path, field, value, takes):
    built = json.loads(Path(spec_build(IMAGES, "app")).read_text())
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({**built, "images": [{**built["images"][0], field: value}]}))
    error = bad_spec_run(tmp_path, str(spec))
    assert error == f"nixlayer: error: spec {spec}: image vec: {field} must be {takes}, not {value!r}"
    run = run_pipelines(["BuildImage", "--name", "x", f"--{field}", value, "--output", str(tmp_path / "x.tar")], tmp_path / "store")
    assert one_error(run, 40) == f"nixlayer: error: invalid parameter: --{field} must be {takes}, not {value!r}"


@SLOW
def test_spec_with_closure_graph_or_paths_it_lacks_is_refused(tmp_path, vectors):
    spec = spec_build(IMAGES, "app")
    assert "--spec and --closure-graph cannot be used together" in bad_spec_run(tmp_path, spec, "--closure-graph", spec)
    other = vectors["store_paths"]["libc"].replace("vec-libc", "vec-libx")
    error = bad_spec_run(tmp_path, spec, "--contents", json.dumps([vectors["store_paths"]["app"], other]), status=35)
    assert f"{other} is not in the closure of spec {spec}" in error
    run = run_pipelines(["BuildImage", "--name", "x", "--spec-image", "app", "--output", str(tmp_path / "x.tar")],
                        tmp_path / "store")
    assert "--spec-image names an image of a spec: give the spec too" in one_error(run, 40)


def test_parse_spec_checks_every_field(vectors_app):
    closure = [{"path": vectors_app, "narSize": 1, "references": []}]

    def error(images, **top) -> str:
        data = {"nixlayer_spec": SPEC_VERSION, "store_dir": "/nix/store", "images": images, "closure": closure, **top}
        with pytest.raises(NixlayerError) as raised:
            parse_spec(json.dumps(data), "s.json")
        return str(raised.value)

    image = {"key": "a", "name": "a", "contents": [vectors_app]}
    assert error([{**image, "max_layers": "3"}]) == 'spec s.json: image 1 (a): max_layers must be an integer, not "3"'
    assert error([{**image, "uid": True}]) == "spec s.json: image 1 (a): uid must be an integer, not true"
    assert error([{**image, "maxLayers": 3}]) == "spec s.json: image 1 (a): unknown field 'maxLayers'"
    assert error([image, image]) == "spec s.json: image 2 (a): another image has the key 'a'"
    assert error([{**image, "key": "../x"}]).startswith("spec s.json: image 1 (../x): key '../x' is not a file name")
    assert error([{"key": "a", "contents": []}]) == "spec s.json: image 1 (a): no name"
    assert error([{**image, "config": {"Cmd": ["/nix/store/" + "0" * 32 + "-x"]}}]).endswith("-x is not in the spec's closure")
    assert error([]) == 'spec s.json: no "images": a non-empty list of images'
    assert error([image], closure=[{"path": vectors_app, "references": ["/nix/store/" + "1" * 32 + "-y"]}]).startswith(
        "spec s.json: closure: ")
    assert error([image], nixlayer_spec="1") == 'spec s.json: format version "1" is not an integer'
    spec = parse_spec(json.dumps({"nixlayer_spec": 1, "store_dir": "/nix/store", "images": [image], "closure": closure,
                                  "builder": "/bin/sh"}), "s.json")  # the derivation's own keys are ignored
    assert spec.image("a").parameters == {"name": "a", "contents": [vectors_app]}


@SLOW
def test_push_image_from_a_spec_without_asking_nix(tmp_path, registry, vectors):
    spec = spec_build(IMAGES, "app", "--arg", "maxLayers", "4", "--argstr", "layering", "popularity")
    path, mark = no_nix_path(tmp_path)
    run = run_pipelines(["PushImage", "--spec", spec, "--target", f"docker://{registry.host}/spec/vec:pushed"],
                        tmp_path / "store", path=path)
    assert run.returncode == 0, run.stderr
    assert not mark.exists()
    shown = json.loads(subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--config",
                                       f"docker://{registry.host}/spec/vec:pushed"],
                                      check=True, capture_output=True, text=True).stdout)
    expected = vectors["image_store_layers_by_max_layers"]["4"]
    assert shown["rootfs"]["diff_ids"][:-1] == [layer["diff_id"] for layer in expected]


SANDBOX = ("--option", "sandbox", "true", "--option", "sandbox-fallback", "false", "--option", "sandbox-paths", "/bin/sh=/bin/busybox")
"""nix-build options of a build in Nix's sandbox holding only a static /bin/sh, as on a machine with nixpkgs; without
the sandbox-fallback Nix has, a machine that cannot make a sandbox fails the build instead of building outside one."""


@SLOW
def test_spec_builds_in_nix_sandbox_with_only_a_static_sh(tmp_path):
    # New derivations each run, so they are built. The builder uses shell built-ins only; PATH is unset.
    unique = time.time_ns()
    file = tmp_path / "image.nix"
    file.write_text(f'(import {NIXLAYER} {{ }}).buildLayeredImage {{ name = "sandboxed"; tag = "t{unique}";'
                    f' contents = [ (import {FIXTURES / "vectors.nix"}).app ]; }}')
    spec = spec_build(file, None, *SANDBOX)
    unsandboxed = read_spec(spec_build(IMAGES, "app"))
    assert read_spec(spec).graph == unsandboxed.graph
    # The options make a sandbox: a builder that finds /usr/bin fails; it builds with them, not without.
    probe = tmp_path / "probe.nix"
    probe.write_text('{ n }: derivation { name = "sandbox-probe-${n}"; system = builtins.currentSystem; builder = "/bin/sh";'
                     ' args = [ "-c" "if cd /usr/bin 2>/dev/null; then echo outside the sandbox >&2; exit 1; fi; printf in > $out" ]; }')
    assert Path(spec_build(probe, None, "--argstr", "n", f"a{unique}", *SANDBOX)).read_text() == "in"
    outside = subprocess.run(["nix-build", str(probe), "--argstr", "n", f"b{unique}", "--option", "sandbox", "false",
                              "--no-out-link"], capture_output=True, text=True)
    assert outside.returncode != 0 and "outside the sandbox" in outside.stderr, outside.stderr


@SLOW
def test_example_images_spec_builds_with_the_command_it_gives(tmp_path):
    spec = spec_build(REPO / "examples" / "images.nix")
    out = tmp_path / "out"
    run = run_pipelines(["BuildImages", "--spec", spec, "--output-dir", str(out), "--report", str(tmp_path / "report.json")],
                        tmp_path / "store")
    assert run.returncode == 0, run.stderr
    (plan,) = [line for line in run.stderr.splitlines() if line.startswith("nixlayer: batch ")]
    assert re.fullmatch(rf"nixlayer: batch {re.escape(spec)}: 2 images: 3 store paths \(.+\) in 5 layers:"
                        r" 5 to write \(.+\), 0 reused", plan), plan
    report = json.loads((tmp_path / "report.json").read_text())
    assert sorted(i["name"] for i in report["images"]) == ["busybox-shell", "hello"]
    assert sorted(p.name for p in out.iterdir()) == ["hello.tar", "shell.tar"]
    # busybox and the greeting (which shell's config mentions) are layers of both, built once.
    assert report["totals"]["distinct_layers"] == sum(i["layers"] for i in report["images"]) - 2


@SLOW
def test_a_spec_given_as_contents_says_to_give_it_as_spec(tmp_path):
    spec = spec_build(IMAGES, "app")
    result = tmp_path / "result"
    result.symlink_to(spec)  # as nix-build leaves it
    run = run_pipelines(["BuildImage", "--name", "x", "--contents", json.dumps([str(result)]),
                         "--output", str(tmp_path / "x.tar")], tmp_path / "store", cwd=tmp_path)
    assert (run.returncode, run.stderr.splitlines()[-1]) == (
        35, f"nixlayer: error: contents path {spec} is an image spec, not a package: give it as --spec {spec}"), run.stderr
    assert not (tmp_path / "x.tar").exists()


@SLOW
def test_the_nix_library_from_fetch_git(tmp_path, vectors):
    """``builtins.fetchGit`` of this repository (its committed tree), as a user's own Nix code
    takes it: the spec names the same closure as the checkout's library gives."""
    file = tmp_path / "image.nix"
    file.write_text(f'let nixlayer = import "${{builtins.fetchGit {{ url = "{REPO}"; }}}}/nix" {{ }}; in'
                    f' nixlayer.buildLayeredImage {{ name = "fetched"; contents = [ (import {FIXTURES / "vectors.nix"}).app ]; }}')
    spec = json.loads(Path(spec_build(file)).read_text())
    assert spec["nixlayer_spec"] == 1 and spec["images"][0]["name"] == "fetched"
    assert {entry["path"] for entry in spec["closure"]} == set(vectors["store_paths"].values())
