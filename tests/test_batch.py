"""BuildImages: a batch file of images in one run; shared layers once; report; bad batch files;
two independent runs sharing one layer store at the same time."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import luigi
import pytest

from conftest import FIXTURES, REPO, SLOW, first_fast, nix_build, run_luigi, run_pipelines
from nixlayer.storepath import NIX_BASE32
from pipelines import BuildImages



def synthetic_store(root: Path, images: int, base: int, unique: int, seed: int = 7) -> list[str]:
    """A store directory under ``root`` (scanned with store_root, no Nix): ``base`` paths all
    images share and ``unique`` paths per image; returns each image's root store path."""
    rng = random.Random(seed)
    disk = root / "nix" / "store"
    disk.mkdir(parents=True)

    def new_path(name: str, refs: list[str]) -> str:
        path = f"/nix/store/{''.join(rng.choices(NIX_BASE32, k=32))}-{name}"
        share = disk / path.rsplit("/", 1)[1] / "share"
        share.mkdir(parents=True)
        (share / f"{name}.txt").write_text("".join(f"needs {r}\n" for r in refs) + "x" * rng.randrange(10, 50_000))
        return path

    shared = []
    for i in range(base):
        shared.append(new_path(f"base{i}", shared[-2:]))
    return [new_path(f"app{i}", [new_path(f"lib{i}-{j}", shared[-3:]) for j in range(unique)]) for i in range(images)]


def write_batch(path: Path, defaults: str, images: list[str]) -> Path:
    path.write_text(defaults + "\n" + "\n".join(f"[[image]]\n{image}" for image in images))
    return path


def test_batch_builds_shared_layers_once_reports_and_rebuilds_nothing(tmp_path, layer_store, vectors_app):
    lib, app, tool = (nix_build(FIXTURES / "incremental.nix", a) for a in ("lib", "app", "tool"))
    batch = write_batch(tmp_path / "batch.toml", 'tag = "t"\nmax_layers = 100\n', [
        f'name = "vec"\ncontents = ["{vectors_app}"]\noutput = "out/vec.tar"\nconfig = {{ Cmd = ["/bin/vec-app"] }}',
        f'name = "inc"\ncontents = ["{app}", "{tool}"]\noutput = "out/inc.tar"',
        f'name = "inc-oci"\ncontents = ["{app}"]\nformat = "oci"\noutput = "out/inc-oci"',
        f'name = "inc-uid"\ncontents = ["{app}"]\nuid = 1000\noutput = "out/inc-uid.tar"',
    ])
    report = tmp_path / "report.json"
    first = run_luigi(BuildImages(batch_file=str(batch), report=str(report)))
    data = json.loads(report.read_text())
    images = {i["name"]: i for i in data["images"]}
    assert (tmp_path / "out" / "vec.tar").is_file() and (tmp_path / "out" / "inc-oci" / "index.json").is_file()
    # inc and inc-uid differ in uid: no shared layers. inc-oci has gzip layers (oci's default).
    # inc's app closure (app, lib, data) is a subset of inc's: one task per layer, run once.
    layer_tasks = [t for t in first["ran_tasks"] if t.task_family in ("StorePathLayer", "OverflowLayer", "CustomisationLayer")]
    assert len(layer_tasks) == len({t.task_id for t in layer_tasks}) == data["totals"]["distinct_layers"]
    assert data["totals"]["layers_built"] == data["totals"]["distinct_layers"] == len(data["built_layers"])
    assert all(i["layers_built"] == i["layers"] and i["image_written"] and i["digest"].startswith("sha256:")
               for i in data["images"])
    assert images["vec"]["layers"] == 6 and images["inc"]["layers"] == 5
    assert all(i["bytes_written"] > 0 for i in data["images"])
    assert data["totals"]["layer_bytes_written"] == sum(
        json.loads((layer_store / p).read_text())["blob_size"] for p in data["built_layers"])

    # Nothing changed: no layer work, no image written; the report says so with the same digests.
    again = run_luigi(BuildImages(batch_file=str(batch), report=str(report)))
    assert again["ran"] == ["BuildImages"]
    data2 = json.loads(report.read_text())
    assert data2["totals"]["layers_built"] == 0 and data2["built_layers"] == []
    assert all(i["layers_built"] == 0 and i["layers_reused"] == i["layers"] and not i["image_written"]
               and i["bytes_written"] == 0 for i in data2["images"])
    assert [i["digest"] for i in data2["images"]] == [i["digest"] for i in data["images"]]


def test_shared_base_is_one_task_per_layer(tmp_path, layer_store, monkeypatch):
    roots = synthetic_store(tmp_path / "root", images=4, base=10, unique=5)
    batch = write_batch(tmp_path / "batch.toml", f'store_root = "{tmp_path / "root"}"\ntag = "t"\n', [
        f'name = "img{i}"\ncontents = ["{r}"]\noutput = "out/img{i}.tar"' for i, r in enumerate(roots)])
    monkeypatch.setitem(luigi.configuration.get_config()["nixlayer"], "layer_batches", "2")
    result = run_luigi(BuildImages(batch_file=str(batch), report=str(tmp_path / "r.json")))
    store_layers = [t for t in result["ran_tasks"] if t.task_family == "StorePathLayer"]
    assert len(store_layers) == 10 + 4 * 6  # the base once, then each image's own paths
    data = json.loads((tmp_path / "r.json").read_text())
    assert [i["layers_built"] for i in data["images"]] == [17] * 4  # 10 base + 6 own + customisation
    assert data["totals"]["distinct_layers"] == 10 + 4 * 6 + 4
    assert data["totals"]["images_written"] == 4 and all(i["image_written"] for i in data["images"])
    # In layer_batches = 2 batches each: the 34 store path layers in two of 17, the four
    # customisation layers in two of 2, the four images in two of 2.
    scheduled = result["worker"]._scheduled_tasks.values()
    batches = {family: [t.members() for t in scheduled if t.task_family == family and len(t.members()) > 1]
               for family in ("StorePathLayer", "CustomisationLayer", "AssembleImage")}
    assert [len(m) for m in batches["StorePathLayer"]] == [17, 17]
    assert sorted(m.store_path for b in batches["StorePathLayer"] for m in b) == sorted(t.store_path for t in store_layers)
    assert [len(m) for m in batches["CustomisationLayer"]] == [2, 2]
    assert sorted(m.contents for b in batches["CustomisationLayer"] for m in b) == sorted((r,) for r in roots)
    assert [len(m) for m in batches["AssembleImage"]] == [2, 2]
    assert sorted(m.output for b in batches["AssembleImage"] for m in b) == \
        sorted(str(batch.parent / "out" / f"img{i}.tar") for i in range(4))
    for i in range(4):  # each image whole, as its own task would write it
        with tarfile.open(batch.parent / "out" / f"img{i}.tar") as tar:
            (manifest,) = json.load(tar.extractfile("manifest.json"))
            assert manifest["RepoTags"] == [f"img{i}:t"] and len(manifest["Layers"]) == 17


def test_run_log_leaves_no_file_and_counts_forked_workers(tmp_path, layer_store, monkeypatch):
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    roots = synthetic_store(tmp_path / "root", images=2, base=4, unique=2)
    batch = write_batch(tmp_path / "batch.toml", f'store_root = "{tmp_path / "root"}"\ntag = "t"\n', [
        f'name = "img{i}"\ncontents = ["{r}"]\noutput = "out/img{i}.tar"' for i, r in enumerate(roots)])
    # Two batches of each kind, so both worker processes write to the run log (luigi.build's
    # workers=2 does not reach the configuration, from which an unset layer_batches is sized).
    monkeypatch.setitem(luigi.configuration.get_config()["nixlayer"], "layer_batches", "2")
    run_luigi(BuildImages(batch_file=str(batch), report=str(tmp_path / "r.json")), workers=2)
    totals = json.loads((tmp_path / "r.json").read_text())["totals"]
    assert totals["layers_built"] == totals["distinct_layers"] == 4 + 2 * 3 + 2 and totals["images_written"] == 2
    assert list(temp.iterdir()) == []
    bad = write_batch(tmp_path / "bad.toml", "", ['name = "Bad"\noutput = "bad.tar"'])
    assert not luigi.build([BuildImages(batch_file=str(bad), report=str(tmp_path / "r2.json"))], local_scheduler=True)
    assert list(temp.iterdir()) == []


def run_batch_cli(batch: Path, store: Path, *extra: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return run_pipelines(["BuildImages", "--batch-file", str(batch), *extra], store, cwd)


@pytest.mark.parametrize("body, message", first_fast([
    ('[[image]]\nname = "a"\ncontents = [\n', "not valid TOML"),
    ('max_layers = 100\n', "no [[image]] tables"),
    ('[[image]]\nname = "a"\noutput = "a.tar"\n[[image]]\nname = "b"\nmax_layer = 3\noutput = "b.tar"\n',
     "image 2 (b): unknown key 'max_layer'"),
    ('max_layers = "ten"\n[[image]]\nname = "a"\noutput = "a.tar"\n', 'defaults: max_layers must be an integer, not "ten"'),
    ('[[image]]\nname = "a"\ncontents = "/nix/store/x"\noutput = "a.tar"\n', "image 1 (a): contents must be a list of strings"),
    ('[[image]]\noutput = "a.tar"\n', "image 1: no name"),
    ('[[image]]\nname = "a"\n', "image 1 (a): no output"),
    ('[[image]]\nname = "a"\noutput = "-"\n', "standard output"),
    ('[[image]]\nname = "a"\noutput = "a.tar"\n[[image]]\nname = "b"\noutput = "a.tar"\n', "image 2 (b): output"),
    ('format = "oci"\n[[image]]\nname = "a"\ntag = "1"\noutput = "l"\n[[image]]\nname = "b"\ntag = "2"\noutput = "l"\n',
     "image 2 (b): output"),
    ('[[image]]\nname = "Bad"\noutput = "a.tar"\n', "image 1 (Bad): invalid image name"),
    ('format = "ocii"\n[[image]]\nname = "a"\noutput = "a.tar"\n',
     "defaults: format must be one of docker-archive, oci, oci-archive, not 'ocii'"),
    ('[[image]]\nname = "a"\noutput = "a.tar"\ncompression = "zip"\n',
     "image 1 (a): compression must be one of auto, gzip, none, zstd, not 'zip'"),
    ('[[image]]\nname = "a"\noutput = "a.tar"\ncontents = ["/nix/store/00000000000000000000000000000000-missing"]\n',
     "image 1 (a): "),
    ('nix_file = "x.nix"\n[[image]]\nname = "a"\noutput = "a.tar"\nnix_attrs = "hello"\n',
     "image 1 (a): nix_attrs must be a list of attribute names"),
    ('[[image]]\nname = "a"\noutput = "a.tar"\nnix_attrs = ["hello"]\n', "image 1 (a): nix_attrs needs nix_file"),
    ('[[image]]\nname = "a"\noutput = "a.tar"\nnix_file = "x.nix"\n', "image 1 (a): nix_file without nix_attrs"),
    ('[[image]]\nname = "a"\noutput = "a.tar"\nspec = "result"\n', "image 1 (a): spec cannot be used in a batch file:"
     " build a spec's images with BuildImages --spec FILE --output-dir DIR"),
    ('spec_image = "a"\n[[image]]\nname = "a"\noutput = "a.tar"\n', "defaults: spec_image cannot be used in a batch file"),
]))
def test_bad_batch_file_one_line_nonzero_exit_no_work(tmp_path, body, message):
    batch = tmp_path / "batch.toml"
    batch.write_text(body)
    store = tmp_path / "store"
    run = run_batch_cli(batch, store, "--report", str(tmp_path / "r.json"))
    assert run.returncode == 35, run.stderr  # found while planning (README, Exit statuses)
    errors = [line for line in run.stderr.splitlines() if line.startswith("nixlayer: error:")]
    assert len(errors) == 1, run.stderr
    assert errors[0].startswith(f"nixlayer: error: {batch}: ") and message in errors[0], errors[0]
    assert not store.exists() and not (tmp_path / "r.json").exists()


@SLOW
def test_bad_image_removes_the_output_directories_the_run_made(tmp_path):
    (root,) = synthetic_store(tmp_path / "root", images=1, base=1, unique=1)
    (tmp_path / "keep").mkdir()
    batch = write_batch(tmp_path / "batch.toml", f'store_root = "{tmp_path / "root"}"\ncontents = ["{root}"]\n', [
        'name = "a"\noutput = "out/a/b/a.tar"', 'name = "k"\noutput = "keep/new/k.tar"', 'name = "Bad"\noutput = "bad.tar"'])
    run = run_batch_cli(batch, tmp_path / "store", "--report", str(tmp_path / "r.json"))
    assert run.returncode != 0 and f"nixlayer: error: {batch}: image 3 (Bad): invalid image name" in run.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "keep" / "new").exists()
    assert (tmp_path / "keep").is_dir() and not (tmp_path / "store").exists()
    # A good batch keeps them, and builds.
    batch.write_text(batch.read_text().replace('"Bad"', '"good"'))
    run = run_batch_cli(batch, tmp_path / "store", "--report", str(tmp_path / "r.json"))
    assert run.returncode == 0, run.stderr
    assert all((tmp_path / p).is_file() for p in ("out/a/b/a.tar", "keep/new/k.tar", "bad.tar"))


@SLOW
def test_failed_nix_build_reports_nix_error_line(tmp_path):
    batch = tmp_path / "batch.toml"
    batch.write_text(f'[[image]]\nname = "a"\noutput = "a.tar"\nnix_file = "{REPO / "examples" / "hello.nix"}"\n'
                     'nix_attrs = ["helo"]\n')
    run = run_batch_cli(batch, tmp_path / "store", "--report", str(tmp_path / "r.json"))
    assert run.returncode != 0
    errors = [line for line in run.stderr.splitlines() if line.startswith("nixlayer: error:")]
    assert errors == [f"nixlayer: error: {batch}: image 1 (a): nix-build {REPO / 'examples' / 'hello.nix'} -A helo"
                      " failed (exit 1): error: attribute 'helo' in selection path 'helo' not found"], run.stderr


def test_a_default_nix_file_leaves_images_without_nix_attrs_alone(tmp_path):
    """nix_file among the defaults: images with nix_attrs build from it, the others need none."""
    from pipelines.batch import load_batch

    batch = write_batch(tmp_path / "batch.toml", f'nix_file = "{REPO / "examples" / "hello.nix"}"\n', [
        'name = "a"\noutput = "a.tar"\nnix_attrs = ["busybox"]', 'name = "b"\noutput = "b.tar"\ncontents = []'])
    (_, a), (_, b) = load_batch(str(batch))
    assert [p.split("-", 1)[1] for p in a["contents"]] == ["busybox-1.0"]
    assert b["contents"] == [] and "nix_file" not in b


@SLOW
def test_example_batch_file_builds(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    for name in ("batch.toml", "hello.nix"):
        (work / name).write_text((REPO / "examples" / name).read_text())
    run = run_batch_cli(work / "batch.toml", tmp_path / "store", "--report", "report.json", cwd=work)
    assert run.returncode == 0, run.stderr
    data = json.loads((work / "report.json").read_text())
    assert [i["name"] for i in data["images"]] == ["nixlayer/hello", "nixlayer/busybox", "nixlayer/hello-oci"]
    assert all((work / "out" / f).is_file() for f in ("hello.tar", "busybox.tar", "hello-oci.tar"))
    assert "nixlayer/hello:latest sha256:" in run.stdout
    again = run_batch_cli(work / "batch.toml", tmp_path / "store", "--report", "report.json", cwd=work)
    assert again.returncode == 0 and json.loads((work / "report.json").read_text())["totals"]["layers_built"] == 0


def verify_layer_store(store: Path) -> int:
    """Every record names a blob that exists with the recorded size and digest; no temporary
    file is left. Returns the number of records."""
    records = list((store / "layers").glob("*/*.json"))
    for record in records:
        data = json.loads(record.read_text())
        blob = store / "blobs" / "sha256" / data["digest"].removeprefix("sha256:")
        content = blob.read_bytes()
        assert len(content) == data["blob_size"], record
        assert "sha256:" + hashlib.sha256(content).hexdigest() == data["digest"], record
    leftovers = [p for p in store.rglob("*") if ".tmp-" in p.name]
    assert not leftovers, leftovers
    return len(records)


@SLOW
def test_two_local_runs_at_once_share_a_layer_store_safely(tmp_path):
    roots = synthetic_store(tmp_path / "root", images=6, base=40, unique=20)
    images = [f'name = "img{i}"\ncontents = ["{r}"]\noutput = "out/img{i}.tar"' for i, r in enumerate(roots)]
    store = tmp_path / "store"
    runs, dirs = [], []
    for n in range(2):
        work = tmp_path / f"run{n}"
        work.mkdir()
        # Each run its own batch order, so each writes layers the other is writing too.
        batch = write_batch(work / "batch.toml", f'store_root = "{tmp_path / "root"}"\ntag = "t"\n',
                            images if n == 0 else images[::-1])
        cfg = work / "luigi.cfg"
        cfg.write_text(f"[core]\nlocal_scheduler = true\n[nixlayer]\nlayer_store = {store}\nlayer_batches = 30\n")
        env = dict(os.environ, LUIGI_CONFIG_PATH=str(cfg), PYTHONPATH=str(REPO), TMPDIR=str(work))
        runs.append(subprocess.Popen(
            ["luigi", "--module", "pipelines", "BuildImages", "--batch-file", str(batch), "--report", "r.json",
             "--local-scheduler"], cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        dirs.append(work)
    for run in runs:
        out, err = run.communicate(timeout=600)
        assert run.returncode == 0, err
    assert verify_layer_store(store) == 40 + 6 * 21 + 6
    for i in range(6):
        assert (dirs[0] / "out" / f"img{i}.tar").read_bytes() == (dirs[1] / "out" / f"img{i}.tar").read_bytes()


@SLOW
def test_batch_asks_nix_for_the_closure_once(tmp_path, vectors_app):
    """Five images, one `nix path-info` call: counted by a `nix` on PATH that logs each call."""
    lib, app, tool = (nix_build(FIXTURES / "incremental.nix", a) for a in ("lib", "app", "tool"))
    shims, calls = tmp_path / "bin", tmp_path / "nix-calls"
    shims.mkdir()
    real = subprocess.run(["sh", "-c", "command -v nix"], capture_output=True, text=True, check=True).stdout.strip()
    (shims / "nix").write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec {real} "$@"\n')
    (shims / "nix").chmod(0o755)
    images = [f'name = "img{i}"\ncontents = {json.dumps(c)}\noutput = "out/img{i}.tar"'
              for i, c in enumerate([[vectors_app], [app], [tool], [app, tool], [lib]])]
    batch = write_batch(tmp_path / "batch.toml", 'tag = "t"\n', images)
    run = run_pipelines(["BuildImages", "--batch-file", str(batch), "--report", str(tmp_path / "report.json")],
                        tmp_path / "store", path=f"{shims}:{os.environ['PATH']}")
    assert run.returncode == 0, run.stderr
    assert [line.split()[0] for line in calls.read_text().splitlines()] == ["path-info"]
    assert len(list((tmp_path / "out").iterdir())) == 5


@SLOW
def test_unwritable_report_fails_before_any_work(tmp_path):
    (root,) = synthetic_store(tmp_path / "root", images=1, base=1, unique=1)
    batch = write_batch(tmp_path / "batch.toml", f'store_root = "{tmp_path / "root"}"\ncontents = ["{root}"]\n',
                        ['name = "a"\noutput = "out/a.tar"'])
    run = run_batch_cli(batch, tmp_path / "store", "--report", str(tmp_path / "missing" / "r.json"))
    assert run.returncode != 0
    errors = [line for line in run.stderr.splitlines() if line.startswith("nixlayer: error:")]
    assert len(errors) == 1 and f"cannot write {tmp_path / 'missing' / 'r.json'}" in errors[0], run.stderr
    assert not (tmp_path / "store").exists() and not (tmp_path / "out").exists()


@SLOW
def test_a_failing_image_does_not_stop_the_rest_of_its_batch(tmp_path):
    """Three images in one batch, the middle one into an OCI layout with a damaged index: the
    other two are written, the run fails naming the damage, and a rerun once it is mended
    writes that image only."""
    roots = synthetic_store(tmp_path / "root", images=3, base=4, unique=2)
    layout = tmp_path / "out" / "img1"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text("not json")
    batch = write_batch(tmp_path / "batch.toml", f'store_root = "{tmp_path / "root"}"\ntag = "t"\nformat = "oci"\n',
                        [f'name = "img{i}"\ncontents = ["{r}"]\noutput = "out/img{i}"' for i, r in enumerate(roots)])
    store = tmp_path / "store"
    run = run_batch_cli(batch, store, "--report", str(tmp_path / "r.json"), "--nixlayer-layer-batches", "1",
                        "--log-level", "INFO")  # Luigi's log names the batches
    assert run.returncode == 30, run.stderr
    assert run.stderr.splitlines()[-1].startswith("nixlayer: error: "), run.stderr  # last, after Luigi's summary
    errors = [line for line in run.stderr.splitlines() if line.startswith("nixlayer: error:")]
    assert errors and all("index.json is not a valid OCI image index" in e for e in errors), run.stderr
    batches = {tuple(sorted(json.loads(line.split(", name=")[1].split("]")[0] + "]"))) for line in run.stderr.splitlines()
               if "AssembleImage(" in line and ", name=[" in line}
    assert batches == {("img0", "img1", "img2")}, batches  # one batch of three
    index = {i: (tmp_path / "out" / f"img{i}" / "index.json").read_bytes() for i in (0, 2)}
    assert all(b'"t"' in data for data in index.values())
    assert not (tmp_path / "r.json").exists()
    (layout / "index.json").write_text('{"schemaVersion": 2, "manifests": []}')
    run = run_batch_cli(batch, store, "--report", str(tmp_path / "r.json"), "--nixlayer-layer-batches", "1")
    assert run.returncode == 0, run.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert [i["image_written"] for i in report["images"]] == [False, True, False]
    assert report["totals"]["layers_built"] == 0
    assert {i: (tmp_path / "out" / f"img{i}" / "index.json").read_bytes() for i in (0, 2)} == index
    assert b'"t"' in (layout / "index.json").read_bytes()


def test_report_counts_the_bytes_each_image_wrote(tmp_path, layer_store):
    """A docker-archive counts whole; an OCI layout the files its write added: its manifest,
    config, index.json and oci-layout, its layer blobs being hard links of the layer store's;
    on another file system the layer blobs are copies, and count when they are copied."""
    roots = synthetic_store(tmp_path / "root", images=3, base=3, unique=1)
    elsewhere = Path(tempfile.mkdtemp(dir="/dev/shm"))  # tmpfs: not the layer store's file system
    try:
        batch = write_batch(tmp_path / "batch.toml", f'store_root = "{tmp_path / "root"}"\ntag = "t"\n', [
            f'name = "oci"\ncontents = ["{roots[0]}"]\noutput = "out/oci"\nformat = "oci"\ncompression = "none"',
            f'name = "arch"\ncontents = ["{roots[1]}"]\noutput = "out/arch.tar"',
            f'name = "far"\ncontents = ["{roots[2]}"]\noutput = "{elsewhere / "far"}"\nformat = "oci"\ncompression = "none"'])
        layout, archive, far = tmp_path / "out" / "oci", tmp_path / "out" / "arch.tar", elsewhere / "far"

        def image_files(layout: Path, layers: bool = False) -> int:
            """The bytes of the image's files: manifest, config, index.json, oci-layout (and
            its layers' blobs if ``layers``), and of its SBOM's: manifest, empty config, SBOM."""
            image, sbom = json.loads((layout / "index.json").read_text())["manifests"]
            assert "artifactType" in sbom
            files = [layout / "index.json", layout / "oci-layout"]
            for entry, with_layers in ((image, layers), (sbom, True)):
                manifest = layout / "blobs" / "sha256" / entry["digest"].split(":")[1]
                blobs = [json.loads(manifest.read_text())["config"], *(json.loads(manifest.read_text())["layers"] if with_layers else [])]
                files += [manifest, *(layout / "blobs" / "sha256" / b["digest"].split(":")[1] for b in blobs)]
            return sum(p.stat().st_size for p in files)

        run_luigi(BuildImages(batch_file=str(batch), report=str(tmp_path / "r.json")))
        totals = json.loads((tmp_path / "r.json").read_text())["totals"]
        assert totals["image_bytes_written"] == image_files(layout) + archive.stat().st_size + image_files(far, layers=True)
        assert 0 < image_files(layout) < 16384 and image_files(far, layers=True) > 50_000  # small files, the SBOM 5 kB
        shutil.rmtree(layout)  # written again from the layer store: no layer, a few small files
        (far / "oci-layout").unlink()  # and far's index again, its blobs kept: those are not written
        (far / "index.json").write_text('{"schemaVersion": 2, "manifests": []}')
        run_luigi(BuildImages(batch_file=str(batch), report=str(tmp_path / "r.json")))
        report = json.loads((tmp_path / "r.json").read_text())
        assert [(i["layers_built"], i["bytes_written"]) for i in report["images"]] == \
            [(0, image_files(layout)), (0, 0), (0, sum((far / f).stat().st_size for f in ("index.json", "oci-layout")))]
    finally:
        shutil.rmtree(elsewhere)


def test_a_batch_with_several_failures_shows_each(capsys, caplog):
    from nixlayer.errors import NixlayerError
    from tasks.base import _batch_failure

    one, two, bug, other_bug = NixlayerError("one"), NixlayerError("two"), ValueError("bug"), KeyError("other")
    assert _batch_failure([one]) is one
    assert str(_batch_failure([one, two, NixlayerError("one")])) == "3 failed: one; two"
    assert _batch_failure([one, bug, other_bug]) is bug  # raised, its traceback kept; the others shown now:
    assert capsys.readouterr().err == "nixlayer: error: one\n"
    assert [r.exc_info[1] for r in caplog.records if r.exc_info] == [other_bug]


def test_a_failing_layer_stops_only_the_images_that_need_it(tmp_path, layer_store):
    """Three images whose layers go out in one batch; one store path of the middle image is
    gone from disk when its layer is written. The batch fails (exit 30 from the command line),
    but the layers it did write are done for the scheduler: the other two images are still
    written in the same run, and the middle one is not."""
    from nixlayer.closure import graph_from_store_dir

    roots = synthetic_store(tmp_path / "root", images=3, base=4, unique=2)
    graph = graph_from_store_dir(roots, str(tmp_path / "root"), "/nix/store")
    (tmp_path / "graph.json").write_text(json.dumps(
        [{"path": p, "narSize": graph.nar_size(p), "references": sorted(graph.references(p))} for p in graph]))
    lib = next(p for p in graph if "-lib1-" in p)  # one of the middle image's own store paths
    shutil.rmtree(tmp_path / "root" / lib.lstrip("/"))
    batch = write_batch(tmp_path / "batch.toml",
                        f'store_root = "{tmp_path / "root"}"\nclosure_graph = "{tmp_path / "graph.json"}"\n'
                        'tag = "t"\nformat = "oci"\n',
                        [f'name = "img{i}"\ncontents = ["{r}"]\noutput = "out/img{i}"' for i, r in enumerate(roots)])
    result = luigi.build([BuildImages(batch_file=str(batch), report=str(tmp_path / "r.json"))],
                         local_scheduler=True, detailed_summary=True)
    assert result.status.name == "FAILED"
    batches = [t for t in result.worker._scheduled_tasks.values()
               if t.task_family == "StorePathLayer" and len(t.members()) > 1]
    assert len(batches) == 1  # one worker, the embedded scheduler: one batch of every layer
    assert [(tmp_path / "out" / f"img{i}" / "index.json").exists() for i in range(3)] == [True, False, True]
