"""Layer store garbage collection: `python -m nixlayer gc` removes what no build has used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO, SLOW, run_pipelines
from nixlayer.human import size

MONTH_AGO = time.time() - 30 * 86400


def age(path: Path) -> None:
    os.utime(path, (MONTH_AGO, MONTH_AGO))


def gc(store: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nixlayer", "gc", "--unused-days", "7", "--layer-store", str(store),
                           *extra], cwd=REPO, capture_output=True, text=True, timeout=60)


def build(tmp_path: Path, store: Path, app: str) -> None:
    run = run_pipelines(["BuildImage", "--name", "vec", "--tag", "t", "--contents", json.dumps([app]),
                         "--output", str(tmp_path / "vec.tar")], store)
    assert run.returncode == 0, run.stderr


def files(store: Path) -> set[Path]:
    return {p for p in store.rglob("*") if p.is_file()}


def test_gc_removes_what_no_build_used_and_a_rebuild_restores_it(tmp_path, vectors, vectors_app):
    store = tmp_path / "store"
    build(tmp_path, store, vectors_app)
    image = (tmp_path / "vec.tar").read_bytes()
    libc_hash = os.path.basename(vectors["store_paths"]["libc"]).split("-")[0]
    (record,) = store.glob(f"layers/*/{libc_hash}.json")
    blob = store / "blobs" / "sha256" / json.loads(record.read_text())["digest"].split(":")[1]
    (fragment,) = store.glob(f"customisation/*/{os.path.basename(vectors_app)}")
    (stamp,) = store.glob("images/*.json")
    (pointer,) = store.glob("latest/*.json")  # to the stamp, for the stable layering: goes with it, uncounted
    other_blob = next(p for p in (store / "blobs" / "sha256").iterdir() if p != blob)
    killed = store / "tmp" / ".blob.tmp-killed"  # a killed writer's temporary, and a live one's
    killed.write_bytes(b"x" * 100)
    live = store / "tmp" / ".blob.tmp-writing"
    live.write_bytes(b"x")
    killed_fragment = fragment.parent / f".{fragment.name}.tmp-killed"  # a killed fragment writer's
    killed_fragment.write_bytes(b"y" * 10)
    staging = store / ".oci-archive-killed"  # a killed oci-archive writer's staging layout,
    (staging / "blobs" / "sha256").mkdir(parents=True)  # its layer blob a hard link of the store's
    os.link(other_blob, staging / "blobs" / "sha256" / other_blob.name)
    (staging / "index.json").write_bytes(b"z" * 20)
    live_staging = store / ".oci-archive-writing"
    live_staging.mkdir()
    (live_staging / "index.json").write_bytes(b"z")
    staged = [staging / "blobs" / "sha256" / other_blob.name, staging / "index.json"]
    for path in (record, blob, fragment, stamp, other_blob, killed, killed_fragment, *staged,
                 staging / "blobs" / "sha256", staging / "blobs", staging):  # other_blob: old, but its record is in use
        age(path)
    before = files(store)

    dry = gc(store, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    removed = (record, blob, fragment, stamp, killed, killed_fragment, staging / "index.json")  # the blob's link: no bytes
    assert f"would remove 1 layer record, 1 blob, 1 customisation fragment, 1 image stamp, 3 abandoned " \
           f"temporary files: {size(sum(p.stat().st_size for p in removed))}" in dry.stdout
    assert files(store) == before

    run = gc(store)
    assert run.returncode == 0 and "removed 1 layer record, 1 blob, 1 customisation fragment, 1 image stamp, " \
        "3 abandoned temporary files" in run.stdout
    assert files(store) == before - {record, blob, fragment, stamp, pointer, killed, killed_fragment, *staged}
    assert not staging.exists() and live_staging.exists() and other_blob.exists()

    build(tmp_path, store, vectors_app)  # the libc layer and the image again (the customisation
    assert record.exists() and blob.exists() and stamp.exists() and pointer.exists()  # layer is there: no fragment needed)
    assert (tmp_path / "vec.tar").read_bytes() == image


@SLOW
def test_a_build_marks_what_it_uses(tmp_path, vectors_app):
    """Every build reads its image stamps (which name its layer records) and fragments, even
    one with nothing to do: the access time that leaves (relatime) keeps them, and the layers
    the stamps name, from the next collection even when they were written long ago."""
    store = tmp_path / "store"
    build(tmp_path, store, vectors_app)
    for path in files(store):
        age(path)
    build(tmp_path, store, vectors_app)  # nothing to do, but everything is read
    run = gc(store)
    assert "removed 0 layer records, 0 blobs, 0 customisation fragments, 0 image stamps, 0 abandoned temporary files: 0 B" in run.stdout


def test_gc_of_a_missing_store_is_one_error_line(tmp_path):
    run = gc(tmp_path / "none")
    assert run.returncode == 2 and run.stderr == f"nixlayer: error: layer store {tmp_path / 'none'} does not exist\n"


@SLOW
def test_gc_refuses_what_is_not_a_layer_store_and_touches_nothing(tmp_path, vectors_app):
    layout = tmp_path / "layout"
    run = run_pipelines(["BuildImage", "--name", "vec", "--tag", "t", "--contents", json.dumps([vectors_app]),
                         "--format", "oci", "--output", str(layout)], tmp_path / "store")
    assert run.returncode == 0, run.stderr
    for path in files(layout):
        age(path)
    before = files(layout)
    for store, message in [(layout, f"{layout} is not a layer store (no layers/ directory in it)"),
                           (tmp_path, f"{tmp_path} is not a layer store (no layers/ directory in it)"),
                           (layout / "index.json", f"layer store {layout / 'index.json'} is not a directory")]:
        run = gc(store)
        assert run.returncode == 2 and run.stderr == f"nixlayer: error: {message}\n"
    assert files(layout) == before
    for days in ("0", "0.5", "-1", "nan", "inf"):
        run = subprocess.run([sys.executable, "-m", "nixlayer", "gc", f"--unused-days={days}", "--layer-store",
                              str(tmp_path / "store")], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert run.returncode == 2 and "--unused-days must be 1 or more" in run.stderr, days


def test_looking_at_a_stamp_does_not_mark_it_used(tmp_path):
    from nixlayer.layerstore import read_json

    stamp = tmp_path / "stamp.json"
    stamp.write_text('{"layers": []}')
    age(stamp)
    assert read_json(str(stamp), mark_used=False) == {"layers": []}
    assert stamp.stat().st_atime == MONTH_AGO  # (another push's stamp, read for blob mounts)
    assert read_json(str(stamp)) == {"layers": []}
    assert stamp.stat().st_atime > MONTH_AGO  # (this image's own stamp: it is in use)
    os.unlink(stamp)
    os.mkfifo(stamp)
    assert read_json(str(stamp)) == {}  # a FIFO put there does not hang the reader


def test_gc_help_says_plainly_what_it_removes_and_keeps():
    """``gc --help`` names what goes and what stays in words a user knows, not code."""
    run = subprocess.run([sys.executable, "-m", "nixlayer", "gc", "--help"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    text = " ".join(run.stdout.split())
    assert "collect_garbage" not in text and "LayerStore" not in text, text
    for said in (
        "Removes from the layer store what no build has used in the last DAYS days:",
        "layers (their records and blobs), customisation layer fragments, the stamps that mark an image as written or"
        " pushed (a later build of that image writes or pushes it again), and temporary files of killed builds.",
        "Keeps everything a build used in those days (a build that has nothing to write still uses its images'"
        " layers) and everything outside the layer store: image files, OCI layouts, registries.",
        "What it removes is a cache: a later build writes again what it needs.",
        "Run it when no build uses this layer store.",
        "--unused-days DAYS remove what no build has used in the last DAYS days (1 or more)",
        "--dry-run say what would be removed, and remove nothing",
    ):
        assert said in text, said
