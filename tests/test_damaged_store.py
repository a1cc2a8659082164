"""A damaged layer store (issue 18, class 4), built as a user builds (``luigi --module pipelines
BuildImage``, real Nix, podman): a blob with a byte changed (with its modification time changed,
or put back), a blob damaged under an OCI layout that hard-links it, a record replaced by a
FIFO or a directory, a records directory that cannot be written. A blob that does not match
its digest never reaches an output; a damaged entry is written again, or one line names it
and says what to do."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, SLOW, nix_build, run_pipelines
from registry_fixture import registry  # noqa: F401 - the fixture
from test_user_errors import error_lines


@pytest.fixture(scope="module")
def hello() -> str:
    return nix_build(REPO / "examples" / "hello.nix", "hello")


def build(tmp_path: Path, hello: str, output: str, *args: str) -> subprocess.CompletedProcess:
    return run_pipelines(["BuildImage", "--name", "x", "--contents", json.dumps([hello]),
                          "--output", str(tmp_path / output), *args], tmp_path / "store")


def hello_layer(tmp_path: Path, hello: str) -> tuple[Path, Path]:
    """The record of the layer of ``hello`` alone, and its blob."""
    for record in (tmp_path / "store" / "layers").glob("*/*.json"):
        data = json.loads(record.read_bytes())
        if data["store_paths"] == [hello]:
            return record, tmp_path / "store" / "blobs" / "sha256" / data["digest"].removeprefix("sha256:")
    raise AssertionError("no layer of hello alone")


def damage(blob: Path, keep_mtime: bool) -> None:
    """Change one byte in the middle of ``blob`` (same size); with ``keep_mtime``, put its
    modification time back (as damage on the disk itself leaves it)."""
    before = os.stat(blob)
    with open(blob, "r+b") as f:
        f.seek(before.st_size // 2)
        byte = f.read(1)
        f.seek(before.st_size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    if keep_mtime:
        os.utime(blob, ns=(before.st_atime_ns, before.st_mtime_ns))


def matches(path: Path, digest: str) -> bool:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest() == digest


def loads(archive: Path) -> None:
    """podman load checks every layer's digest."""
    run = subprocess.run(["podman", "load", "-i", str(archive)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr


def test_a_blob_written_to_is_found_and_its_layer_written_again(tmp_path, hello):
    assert build(tmp_path, hello, "x.tar").returncode == 0
    record, blob = hello_layer(tmp_path, hello)
    damage(blob, keep_mtime=False)
    run = build(tmp_path, hello, "y.tar")
    assert run.returncode == 0, run.stderr
    assert (f"nixlayer: warning: layer store blob {blob} did not match its digest (damaged): removed; its layer"
            " is written again") in run.stderr.splitlines()
    assert matches(blob, json.loads(record.read_bytes())["digest"])
    loads(tmp_path / "y.tar")


@SLOW
def test_a_blob_damaged_with_its_mtime_put_back_never_reaches_an_archive(tmp_path, hello):
    assert build(tmp_path, hello, "x.tar").returncode == 0
    _, blob = hello_layer(tmp_path, hello)
    damage(blob, keep_mtime=True)
    run = build(tmp_path, hello, "y.tar")
    assert run.returncode != 0
    assert error_lines(run) == [f"nixlayer: error: blob {blob} does not match its digest (damaged on disk): remove"
                                f" it (rm -f '{blob}') and build again to write its layer anew"]
    assert not (tmp_path / "y.tar").exists()
    blob.unlink()  # as the line says
    assert build(tmp_path, hello, "y.tar").returncode == 0
    loads(tmp_path / "y.tar")


def layout_blobs_match(layout: Path) -> None:
    """Every blob of the layout ``layout`` matches its name, and every tag's manifest is there."""
    for blob in (layout / "blobs" / "sha256").iterdir():
        assert matches(blob, "sha256:" + blob.name), blob
    for entry in json.loads((layout / "index.json").read_bytes())["manifests"]:
        manifest = json.loads((layout / "blobs" / "sha256" / entry["digest"].removeprefix("sha256:")).read_bytes())
        for layer in manifest["layers"]:
            assert (layout / "blobs" / "sha256" / layer["digest"].removeprefix("sha256:")).is_file()


@SLOW
def test_an_oci_layout_never_keeps_or_gains_a_damaged_blob(tmp_path, hello):
    assert build(tmp_path, hello, "layout", "--format", "oci", "--tag", "one").returncode == 0
    _, blob = hello_layer(tmp_path, hello)
    linked = tmp_path / "layout" / "blobs" / "sha256" / blob.name
    assert os.path.samefile(blob, linked)  # hard-linked: damaged in the store, damaged in the layout
    damage(blob, keep_mtime=False)
    run = build(tmp_path, hello, "layout", "--format", "oci", "--tag", "two")  # a new tag in that layout
    assert run.returncode == 0, run.stderr
    layout_blobs_match(tmp_path / "layout")
    damage(blob, keep_mtime=False)
    run = build(tmp_path, hello, "layout", "--format", "oci", "--tag", "two")  # the same image again
    assert run.returncode == 0, run.stderr
    assert "did not match its digest" in run.stderr and "is up to date" not in run.stderr
    layout_blobs_match(tmp_path / "layout")
    check = subprocess.run(["umoci", "stat", "--image", f"{tmp_path / 'layout'}:one"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize("how", ["copy with a byte changed", "empty directory", "fifo", "manifest changed"])
@SLOW
def test_a_layout_whose_own_blob_is_damaged_is_written_again(tmp_path, hello, how):
    """A blob of the layout itself (not the layer store's) damaged or replaced: the same build
    again is not "up to date", and writes the layout whole again."""
    assert build(tmp_path, hello, "layout", "--format", "oci", "--tag", "one").returncode == 0
    layout = tmp_path / "layout"
    _, blob = hello_layer(tmp_path, hello)
    target = layout / "blobs" / "sha256" / blob.name
    if how == "manifest changed":
        entry = json.loads((layout / "index.json").read_bytes())["manifests"][0]
        target = layout / "blobs" / "sha256" / entry["digest"].removeprefix("sha256:")
    copy = tmp_path / "copy"
    shutil.copyfile(target, copy)
    target.unlink()
    if how == "empty directory":
        target.mkdir()
    elif how == "fifo":
        os.mkfifo(target)
    else:
        damage(copy, keep_mtime=False)
        shutil.copyfile(copy, target)
    run = build(tmp_path, hello, "layout", "--format", "oci", "--tag", "one")
    assert run.returncode == 0, run.stderr
    assert "is up to date" not in run.stderr
    layout_blobs_match(layout)
    check = subprocess.run(["skopeo", "copy", f"oci:{layout}:one", f"dir:{tmp_path / 'copied'}"],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr


@SLOW
def test_a_layouts_index_that_is_a_fifo_is_one_line_not_a_hang(tmp_path, hello):
    assert build(tmp_path, hello, "layout", "--format", "oci", "--tag", "one").returncode == 0
    index = tmp_path / "layout" / "index.json"
    index.unlink()
    os.mkfifo(index)
    run = build(tmp_path, hello, "layout", "--format", "oci", "--tag", "one")  # run_pipelines times out at 300 s
    assert run.returncode != 0
    assert error_lines(run) == [f"nixlayer: error: {index} is not a regular file; refusing to change the"
                                       " layout: remove it"], run.stderr


@SLOW
def test_a_record_replaced_by_a_fifo_is_written_again(tmp_path, hello):
    assert build(tmp_path, hello, "x.tar").returncode == 0
    record, _ = hello_layer(tmp_path, hello)
    record.unlink()
    os.mkfifo(record)
    run = build(tmp_path, hello, "y.tar")  # (run_pipelines times out after 300 s, were it to hang)
    assert run.returncode == 0, run.stderr
    assert record.is_file() and not record.is_fifo()
    loads(tmp_path / "y.tar")


@SLOW
def test_a_record_replaced_by_a_directory_is_written_again_or_named(tmp_path, hello):
    assert build(tmp_path, hello, "x.tar").returncode == 0
    record, _ = hello_layer(tmp_path, hello)
    record.unlink()
    record.mkdir()
    (record / "something").write_text("")
    run = build(tmp_path, hello, "y.tar")
    assert run.returncode != 0
    assert error_lines(run) == [f"nixlayer: error: layer store entry {record} is a directory, not a file (Directory"
                                f" not empty): remove it (rm -r '{record}') and build again"]
    assert not (tmp_path / "y.tar").exists()
    (record / "something").unlink()  # an empty directory is taken away
    run = build(tmp_path, hello, "y.tar")
    assert run.returncode == 0, run.stderr
    assert record.is_file()


@SLOW
def test_a_records_directory_that_cannot_be_written_is_one_line(tmp_path, hello):
    assert build(tmp_path, hello, "x.tar").returncode == 0
    record, _ = hello_layer(tmp_path, hello)
    record.unlink()
    subprocess.run(["chattr", "+i", str(record.parent)], check=True)  # unwritable even for root
    try:
        run = build(tmp_path, hello, "y.tar")
    finally:
        subprocess.run(["chattr", "-i", str(record.parent)], check=True)
    assert run.returncode != 0
    assert error_lines(run) == [f"nixlayer: error: cannot write layer store record {record}: Operation not permitted"]
    assert not (tmp_path / "y.tar").exists()


@SLOW
def test_a_damaged_blob_never_reaches_a_registry(tmp_path, hello, registry):
    def push(repository: str) -> subprocess.CompletedProcess:
        return run_pipelines(["PushImage", "--name", "x", "--contents", json.dumps([hello]),
                              "--target", f"docker://{registry.host}/{repository}:1"], tmp_path / "store")

    assert push("damaged/x").returncode == 0  # the layers, gzip-compressed
    shutil.rmtree(tmp_path / "store" / "pushes")  # no repository to mount from: blobs are uploaded
    _, blob = hello_layer(tmp_path, hello)
    damage(blob, keep_mtime=True)
    mark = registry.mark()
    run = push("damaged/y")
    assert run.returncode != 0
    assert error_lines(run) == [f"nixlayer: error: blob {blob} does not match its digest (damaged on disk): remove"
                                f" it (rm -f '{blob}') and build again to write its layer anew"]
    assert "sha256:" + blob.name not in registry.blob_activity("damaged/y", mark)["uploaded"]
