"""BuildImage end to end: the Luigi DAG on real Nix closures, incremental and parallel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import luigi.configuration
import pytest

from conftest import FIXTURES, REPO, SLOW, first_fast, nix_build, run_luigi, run_pipelines
from nixlayer.errors import NixlayerError
from pipelines import BuildImage

PODMAN_RUN = ["podman", "--runtime", "runc", "run", "--rm", "--network", "none",
              "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]


def build(workers: int = 1, **params) -> dict:
    return run_luigi(BuildImage(**params), workers)


def archive_config(path: Path) -> tuple[dict, list[str]]:
    with tarfile.open(path) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))[0]
        config = json.load(tar.extractfile(manifest["Config"]))
    return config, manifest["Layers"]




@pytest.mark.parametrize("max_layers", first_fast(["4", "3", "100"]))
def test_store_layers_match_nixpkgs_for_max_layers(tmp_path, layer_store, vectors, vectors_app, max_layers):
    output = tmp_path / "vec.tar"
    build(name="vec", contents=[vectors_app], max_layers=int(max_layers), layering="popularity", output=str(output))
    config, layers = archive_config(output)
    expected = vectors["image_store_layers_by_max_layers"][max_layers]  # nixpkgs' popularity layers
    diff_ids = config["rootfs"]["diff_ids"]
    assert diff_ids[:-1] == [layer["diff_id"] for layer in expected]
    assert len(diff_ids) == len(expected) + 1  # plus the customisation layer
    comments = [h["comment"] for h in config["history"][:-1]]
    assert comments == ["store paths: " + json.dumps(layer["paths"]) for layer in expected]
    assert layers == [d.removeprefix("sha256:") + "/layer.tar" for d in diff_ids]


def test_rebuild_runs_only_what_changed(tmp_path, layer_store):
    lib, data, app, tool1 = (nix_build(FIXTURES / "incremental.nix", a) for a in ("lib", "data", "app", "tool"))
    tool2 = subprocess.run(
        ["nix-build", str(FIXTURES / "incremental.nix"), "--argstr", "version", "2", "-A", "tool", "--no-out-link"],
        check=True, capture_output=True, text=True).stdout.strip()
    params = dict(name="inc", tag="t", output=str(tmp_path / "inc.tar"))

    first = build(contents=[app, tool1], **params)
    assert first["ran"].count("StorePathLayer") == 4
    assert {"CustomisationLayer", "AssembleImage", "BuildImage"} <= set(first["ran"])

    assert build(contents=[app, tool1], **params)["ran"] == []  # nothing changed: nothing runs

    changed = build(contents=[app, tool2], **params)
    assert changed["ran"] == ["AssembleImage", "BuildImage", "CustomisationLayer", "StorePathLayer"]
    (layer,) = [t for t in changed["ran_tasks"] if t.task_family == "StorePathLayer"]
    assert layer.store_path == tool2

    # With max_layers 3 the new tool sits in the overflow layer: that layer runs, not the others
    # (the customisation layer of these contents is in the layer store already).
    build(contents=[app, tool1], max_layers=3, **params)
    overflow = build(contents=[app, tool2], max_layers=3, **params)
    assert overflow["ran"] == ["AssembleImage", "BuildImage", "OverflowLayer"]


@SLOW
def test_layer_tasks_report_progress_to_the_scheduler(tmp_path, layer_store, vectors_app):
    result = build(name="vec", contents=[vectors_app], output=str(tmp_path / "v.tar"))
    tasks = result["worker"]._scheduler.task_list("DONE", "")
    # A batch of store path layers runs as one more StorePathLayer whose store_path lists them
    # (a JSON list); each member reports its own progress.
    layers = [t for t in tasks.values() if t["name"] == "StorePathLayer" and not t["params"]["store_path"].startswith("[")]
    (batch,) = [t for t in tasks.values() if t["name"] == "StorePathLayer" and t["params"]["store_path"].startswith("[")]
    assert len(json.loads(batch["params"]["store_path"])) == 5  # one worker: one batch
    assert len(layers) == 5
    assert all(t["progress_percentage"] == 100 for t in layers)
    assert all("diff_id sha256:" in t["status_message"] for t in layers)


@SLOW
def test_layer_batches_are_sized_from_the_layers_left_to_write(tmp_path, layer_store, vectors_app, monkeypatch):
    monkeypatch.setitem(luigi.configuration.get_config()["nixlayer"], "layer_batches", "2")
    task = BuildImage(name="vec", contents=[vectors_app], output=str(tmp_path / "v.tar"))
    store_layers = [t for t in task.assemble_task().requires() if t.task_family == "StorePathLayer"]
    assert len(store_layers) == 5
    task.requires()
    assert store_layers[0].max_batch_size == 3  # 5 layers to write, in 2 batches
    build(name="vec", contents=[vectors_app], output=str(tmp_path / "v.tar"))
    os.unlink(store_layers[0].output().path)  # one layer left to write again
    task.requires()
    assert store_layers[0].max_batch_size == 1


@SLOW
def test_changed_setting_never_reuses_a_layer(tmp_path, layer_store, vectors, vectors_app):
    build(name="vec", contents=[vectors_app], output=str(tmp_path / "a.tar"))
    again = build(name="vec", contents=[vectors_app], uid=1000, gid=100, uname="user", gname="users",
                  output=str(tmp_path / "b.tar"))
    assert again["ran"].count("StorePathLayer") == 5
    config, _ = archive_config(tmp_path / "b.tar")
    libc = vectors["single_path_layers_uid1000"]["libc"]["diff_id"]
    assert config["rootfs"]["diff_ids"][0] == libc


@SLOW
def test_corrupt_layer_store_entry_is_rebuilt(tmp_path, layer_store, vectors_app):
    build(name="vec", contents=[vectors_app], output=str(tmp_path / "a.tar"))
    blobs = list((layer_store / "blobs" / "sha256").iterdir())
    os.chmod(blobs[0], 0o644)
    with open(blobs[0], "ab") as f:
        f.write(b"junk")
    rebuilt = build(name="vec", contents=[vectors_app], output=str(tmp_path / "b.tar"))
    assert rebuilt["ran"].count("StorePathLayer") + rebuilt["ran"].count("CustomisationLayer") == 1
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()


@SLOW
def test_workers_2_gives_the_same_bytes_as_workers_1(tmp_path, vectors_app):
    outputs = []
    for workers in ("1", "2"):
        out = tmp_path / f"w{workers}.tar"
        run = run_pipelines(["BuildImage", "--name", "vec", "--contents", json.dumps([vectors_app]),
                   "--output", str(out), "--workers", workers], tmp_path / f"store{workers}")
        assert run.returncode == 0, run.stderr
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]


def test_example_image_runs_in_podman(tmp_path):
    hello = nix_build(REPO / "examples" / "hello.nix", "hello")
    busybox = nix_build(REPO / "examples" / "hello.nix", "busybox")
    out = tmp_path / "hello.tar"
    run = run_pipelines(["BuildImage", "--name", "nixlayer-test/hello", "--tag", "t1",
               "--contents", json.dumps([hello, busybox]), "--config", '{"Cmd": ["/bin/hello"]}',
               "--output", str(out)], tmp_path / "store")
    assert run.returncode == 0, run.stderr
    subprocess.run(["podman", "load", "-i", str(out)], check=True, capture_output=True)
    try:
        shown = subprocess.run([*PODMAN_RUN, "localhost/nixlayer-test/hello:t1"],
                               capture_output=True, text=True, timeout=120)
        assert shown.stdout == "Hello from a nixlayer image!\n", shown.stderr
    finally:
        subprocess.run(["podman", "rmi", "-f", "localhost/nixlayer-test/hello:t1"], capture_output=True)


@SLOW
def test_docker_archive_streams_to_stdout(tmp_path, vectors_app):
    run = subprocess.run(
        f"luigi --module pipelines BuildImage --name vec --tag s --contents '{json.dumps([vectors_app])}'"
        f" --output - > {tmp_path / 'out.tar'}",
        shell=True, cwd=REPO, capture_output=True, text=True,
        env=dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache")))
    assert run.returncode == 0, run.stderr
    inspect = subprocess.run(["skopeo", "inspect", f"docker-archive:{tmp_path / 'out.tar'}"],
                             capture_output=True, text=True, check=True)
    assert len(json.loads(inspect.stdout)["Layers"]) == 6


@pytest.mark.parametrize("args, message", first_fast([
    (["--contents", '["/nix/store/00000000000000000000000000000000-missing"]'], "missing"),
    (["--contents", '["/usr/bin/env"]'], "not a store path"),
    (["--config", "{not json"], "not valid JSON"),
    (["--max-layers", "1"], "at least 2"),
    (["--uid", "70000000000"], "uid must be between 0 and 4294967295"),
    (["--name", "MyApp"], "invalid image name"),
    (["--tag", "x" * 129], "invalid tag"),
    (["--output", "/proc/nixlayer-cannot-write.tar"], "cannot write /proc/nixlayer-cannot-write.tar"),
    (["--format", "docker-archive", "--compression", "zstd"], "docker-archive holds uncompressed layers"),
    (["--format", "ocii"], "invalid parameter: --format must be one of docker-archive, oci, oci-archive, not 'ocii'"),
    (["--contents", "/nix/store/abc-not-a-list"], "--contents must be a JSON list of store paths"),
    (["--max-layers", "abc"], "invalid parameter"),
    (["--output", ""], "nothing to do"),
    (["--architecture", "x86 64"], "unknown architecture 'x86 64'"),
    (["--format", "oci", "--compression-level", "30"], "gzip level 30 is out of range 1-9"),
    (["--push", "docker://127.0.0.1:5000/a/b:1", "--compression-level", "0"], "gzip level 0 is out of range"),
]))
def test_bad_input_one_line_nonzero_exit_nothing_left(tmp_path, vectors_app, args, message):
    out = tmp_path / "out.tar"
    base = {"--name": "vec", "--contents": json.dumps([vectors_app]), "--output": str(out)}
    base.update(dict(zip(args[::2], args[1::2])))
    store = tmp_path / "store"
    run = run_pipelines(["BuildImage", *[x for kv in base.items() for x in kv]], store)
    assert run.returncode != 0
    errors = [line for line in run.stderr.splitlines() if line.startswith("nixlayer: error:")]
    assert len(errors) == 1 and message in errors[0], run.stderr
    assert not out.exists()
    assert not list(tmp_path.glob(".out.tar*"))
    assert not store.exists()  # no layer, record, fragment or stamp


@SLOW
def test_bad_layer_batches_setting_one_line_nothing_left(tmp_path, vectors_app):
    store = tmp_path / "store"
    cfg = tmp_path / "luigi.cfg"
    cfg.write_text(f"[nixlayer]\nlayer_store = {store}\nlayer_batches = 0\n")
    run = subprocess.run(["luigi", "--module", "pipelines", "BuildImage", "--name", "vec", "--contents",
                          json.dumps([vectors_app]), "--output", str(tmp_path / "out.tar")], cwd=REPO,
                         env=dict(os.environ, LUIGI_CONFIG_PATH=str(cfg)), capture_output=True, text=True)
    assert run.returncode != 0
    errors = [line for line in run.stderr.splitlines() if line.startswith("nixlayer: error:")]
    assert errors == ["nixlayer: error: [nixlayer] layer_batches (--nixlayer-layer-batches) must be a whole number"
                      " from 1 to 2147483647"], run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "out.tar").exists() and not store.exists()


@SLOW
def test_layer_store_on_the_command_line_wins_over_luigi_cfg(tmp_path, vectors_app):
    store, other = tmp_path / "store", tmp_path / "other"
    run = run_pipelines(["BuildImage", "--name", "vec", "--contents", json.dumps([vectors_app]),
                         "--output", str(tmp_path / "v.tar"), "--nixlayer-layer-store", str(other)], store)
    assert run.returncode == 0, run.stderr
    assert not store.exists() and len(list((other / "layers").glob("*/*.json"))) == 6


@SLOW
def test_oci_output_into_a_directory_of_other_files_is_refused_before_any_work(tmp_path, vectors_app):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    store = tmp_path / "store"
    run = run_pipelines(["BuildImage", "--name", "vec", "--contents", json.dumps([vectors_app]),
               "--format", "oci", "--output", str(work)], store)
    assert run.returncode != 0
    assert "not an OCI image layout" in run.stderr
    assert os.listdir(work) == ["notes.txt"]
    assert not (store / "blobs").exists()


@SLOW
@pytest.mark.parametrize("place", [".", "blobs/sha256"])
def test_an_existing_oci_layout_that_takes_no_new_files_is_refused_before_any_work(tmp_path, vectors_app, place):
    layout = tmp_path / "layout"
    first = run_pipelines(["BuildImage", "--name", "vec", "--tag", "one", "--contents", json.dumps([vectors_app]),
                           "--format", "oci", "--output", str(layout)], tmp_path / "first-store")
    assert first.returncode == 0, first.stderr
    before = sorted(str(p.relative_to(layout)) for p in layout.rglob("*"))
    store = tmp_path / "store"
    subprocess.run(["chattr", "+i", str(layout / place)], check=True)  # unwritable even for root
    try:
        run = run_pipelines(["BuildImage", "--name", "vec", "--tag", "two", "--contents", json.dumps([vectors_app]),
                             "--format", "oci", "--output", str(layout)], store)
    finally:
        subprocess.run(["chattr", "-i", str(layout / place)], check=True)
    errors = [line for line in run.stderr.splitlines() if line.startswith("nixlayer: error:")]
    assert run.returncode == 35 and errors == [f"nixlayer: error: cannot write into {layout / place}: "
                                               "Operation not permitted"], run.stderr
    assert sorted(str(p.relative_to(layout)) for p in layout.rglob("*")) == before
    assert not store.exists()


@SLOW
def test_two_contents_with_the_same_file_fail_before_any_layer_is_written(tmp_path):
    store = tmp_path / "root" / "nix" / "store"
    paths = []
    for name in ("a" * 32 + "-one", "b" * 32 + "-two"):
        (store / name / "bin").mkdir(parents=True)
        (store / name / "bin" / "tool").write_text(name)
        paths.append(f"/nix/store/{name}")
    layer_root = tmp_path / "store"
    run = run_pipelines(["BuildImage", "--name", "x", "--contents", json.dumps(paths), "--store-root", str(tmp_path / "root"),
               "--output", str(tmp_path / "x.tar")], layer_root)
    assert run.returncode != 0
    errors = [line for line in run.stderr.splitlines() if line.startswith("nixlayer: error:")]
    assert len(errors) == 1 and "both provide /bin/tool" in errors[0], run.stderr
    assert not layer_root.exists()


def test_config_over_4_mib_is_refused_before_any_work(tmp_path, layer_store):
    """Only a batch file can carry such a config (a command-line argument is at most 128 KiB)."""
    big = json.dumps({"Labels": {"big": "x" * (4 * 2**20)}})
    with pytest.raises(NixlayerError, match="podman and skopeo refuse configs over 4194304 bytes"):
        BuildImage(name="x", config=big, output=str(tmp_path / "x.tar")).plan
    assert not layer_store.exists()


def test_the_default_tag_is_a_hash_of_what_determines_the_image(tmp_path, layer_store, vectors_app):
    def tag(**changed) -> str:
        params = {"name": "vec", "contents": [vectors_app], "format": "oci", "output": str(tmp_path / "layout"), **changed}
        return BuildImage(**params).plan["tag"]

    base = tag()
    assert len(base) == 32 and tag() == base
    changes = [{"name": "other"}, {"compression": "zstd"}, {"compression": "gzip", "compression_level": 9},
               {"uid": 1000}, {"config": '{"Cmd": ["x"]}'}, {"max_layers": 3}, {"created": "2020-01-01T00:00:00Z"}]
    tags = [tag(**change) for change in changes]
    assert base not in tags and len(set(tags)) == len(tags)
    assert tag(format="oci-archive", output=str(tmp_path / "x.tar")) == base  # the same image, another file


def test_two_tags_in_one_oci_layout_rebuild_nothing(tmp_path, layer_store, vectors_app):
    layout = str(tmp_path / "layout")
    for tag in ("a", "b"):
        build(name="vec", tag=tag, contents=[vectors_app], format="oci", output=layout)
    for tag in ("a", "b"):
        assert build(name="vec", tag=tag, contents=[vectors_app], format="oci", output=layout)["ran"] == []
    index = json.loads((tmp_path / "layout" / "index.json").read_text())
    images = [m for m in index["manifests"] if "artifactType" not in m]
    assert sorted(m["annotations"]["org.opencontainers.image.ref.name"] for m in images) == ["a", "b"]
    assert len(index["manifests"]) == 3  # one image under two tags has one SBOM


@SLOW
def test_outside_the_repository_defaults_hold_and_warnings_are_one_line(tmp_path, vectors_app):
    """Run from a directory without luigi.cfg (only the layer store configured): nixlayer's own
    defaults apply (no Luigi log below WARNING, non-zero exit on failure) and its warnings are one line."""
    store = tmp_path / "store"
    out = tmp_path / "vec.tar"
    run = run_pipelines(["BuildImage", "--name", "vec", "--contents", json.dumps([vectors_app]),
                         "--max-layers", "126", "--output", str(out)], store, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "nixlayer: warning: max_layers is 126: Docker may fail above 125 layers" in run.stderr.splitlines()
    assert "UserWarning" not in run.stderr and "DEBUG:" not in run.stderr and "INFO:" not in run.stderr
    bad = run_pipelines(["BuildImage", "--name", "Bad", "--contents", json.dumps([vectors_app]),
                         "--output", str(tmp_path / "bad.tar")], store, cwd=tmp_path)
    assert bad.returncode != 0 and "nixlayer: error: invalid image name" in bad.stderr


@pytest.mark.parametrize("cfg, argv, keep_alive", first_fast([
    ("", [], "None 10 None"),  # the embedded scheduler: a run alone exits when it has nothing left to run
    ("", ["--scheduler-host", "127.0.0.1"], "true 0 true"),  # luigid: wait for layers other machines build
    ("[core]\nlocal_scheduler = false\n", [], "true 0 true"),
    ("[core]\nlocal_scheduler = false\n", ["--local-scheduler"], "None 10 None"),
    ("[worker]\nkeep_alive = false\n[retcode]\nalready_running = 5\n", ["--scheduler-url=http://127.0.0.1:8082/"],
     "false 5 true"),  # luigi.cfg's own
], keep=2))
def test_central_scheduler_workers_keep_alive(tmp_path, cfg, argv, keep_alive):
    (tmp_path / "luigi.cfg").write_text(cfg)
    probe = ("import sys; sys.argv = ['luigi'] + sys.argv[1:]; import tasks, luigi.configuration as c; "
             "print(c.get_config().get('worker', 'keep_alive', None), c.get_config().get('retcode', 'already_running'), "
             "c.get_config().get('core', 'no_lock', None))")
    run = subprocess.run([sys.executable, "-c", probe, *argv], cwd=tmp_path, capture_output=True, text=True,
                         env=dict(os.environ, LUIGI_CONFIG_PATH=str(tmp_path / "luigi.cfg"), PYTHONPATH=str(REPO)))
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(keep_alive)


def test_abstract_task_classes_are_not_on_the_command_line():
    from luigi.task_register import Register, TaskClassNotFoundException

    # The command line's flags: the entry tasks' only (tasks.runtime, 9); the inner tasks stay
    # registered, so a worker makes them by name (luigid's batches).
    families = {family for family, _, _, _ in Register.get_all_params()}
    assert {"BuildImage", "BuildImages", "PushImage"} <= families
    for inner in ("AssembleImage", "PushToRegistry", "StorePathLayer", "OverflowLayer", "CustomisationLayer"):
        assert inner not in families
        assert Register.get_task_cls(inner).get_task_family() == inner
    for abstract in ("NixlayerTask", "BatchableTask", "LayerParameters", "LayerTask", "BatchableLayer", "ImageTask",
                     "ImageParameters"):
        assert abstract not in families
        with pytest.raises(TaskClassNotFoundException):
            Register.get_task_cls(abstract)


def test_only_nixlayer_warnings_are_reworded(capsys):
    """The hook prints NixlayerWarning as one nixlayer line and leaves other warnings as they are."""
    import warnings

    import tasks.errors  # noqa: F401 - installs the hook
    from nixlayer.errors import NixlayerWarning

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = tasks.errors._one_line_warning
        warnings.warn("ours", NixlayerWarning)
        warnings.warn("theirs", DeprecationWarning)
    err = capsys.readouterr().err
    assert "nixlayer: warning: ours\n" in err
    assert "DeprecationWarning: theirs" in err and "nixlayer: warning: theirs" not in err


def test_tasks_made_with_every_parameter_named_get_luigis_values():
    """NixlayerTask.get_param_values' short way gives what Luigi's own does, and anything it
    does not cover goes Luigi's way, with Luigi's errors and config lookups."""
    import luigi
    from luigi.parameter import MissingParameterException, UnknownParameterException

    from tasks.layers import CustomisationLayer, StorePathLayer

    settings = dict(mtime=1, uid=0, gid=0, uname="root", gname="root", compression="none", compression_level=None,
                    store_dir="/nix/store", store_root="/", layer_store_dir="/var/cache/nixlayer", perms="")
    for cls, own in ((StorePathLayer, {"store_path": "/nix/store/" + "a" * 32 + "-x"}),
                     (CustomisationLayer, {"contents": ["/nix/store/" + "b" * 32 + "-y"], "copy_to_root": [],
                                           "extra_commands": "", "fake_root_commands": "", "nix_db": []})):
        params, kwargs = cls.get_params(), {**settings, **own}
        ours = cls.get_param_values(params, (), kwargs)
        assert ours == luigi.Task.get_param_values.__func__(cls, params, (), kwargs)
        assert all(not isinstance(value, list) for _, value in ours)  # lists become tuples, as Luigi's
        with pytest.MonkeyPatch.context() as patch:  # the short way it is: Luigi's is not asked
            patch.setattr(luigi.Task, "get_param_values", None)
            assert cls.get_param_values(params, (), kwargs) == ours
    with pytest.raises(UnknownParameterException):
        StorePathLayer(**settings, storepath="/nix/store/x")
    with pytest.raises(MissingParameterException):
        StorePathLayer(**settings)
    # A parameter left out takes its luigi.cfg value, as Luigi's way gives it.
    config = luigi.configuration.get_config()
    config.add_section("StorePathLayer")
    try:
        config.set("StorePathLayer", "uid", "7")
        partial = {k: v for k, v in settings.items() if k != "uid"}
        assert StorePathLayer(**partial, store_path="/nix/store/" + "c" * 32 + "-z").uid == 7
    finally:
        config.remove_section("StorePathLayer")


def test_wasm_is_not_an_architecture_of_a_linux_image(tmp_path, vectors_app):
    """Go's wasm goes with GOOS js or wasip1, never linux (``go tool dist list``): nixlayer's
    images are linux ones, so --architecture wasm is one line, as any unknown architecture."""
    run = run_pipelines(["BuildImage", "--name", "vec", "--contents", json.dumps([vectors_app]), "--architecture", "wasm",
                         "--output", str(tmp_path / "out.tar")], tmp_path / "store")
    errors = [line for line in run.stderr.splitlines() if line.startswith("nixlayer: error:")]
    assert (run.returncode, errors) == (35, [
        "nixlayer: error: unknown architecture 'wasm': use a Go architecture name of linux, one of 386, amd64, arm,"
        " arm64, loong64, mips, mips64, mips64le, mipsle, ppc64, ppc64le, riscv64, s390x"]), run.stderr
    assert not (tmp_path / "out.tar").exists()
