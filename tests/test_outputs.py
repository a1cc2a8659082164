"""Outputs that are not regular files (issue 18, class 1), built as a user builds: a device or a
FIFO is written through, every time, and stays what it was; a symlink is followed (its target
gets the image, the symlink stays); a socket is refused with one line. Device nodes and FIFOs
are made in the test's own directory (mknod, mkfifo), never the machine's."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, SLOW, first_fast, nix_build, run_pipelines
from test_user_errors import error_lines


@pytest.fixture(scope="module")
def hello() -> str:
    return nix_build(REPO / "examples" / "hello.nix", "hello")


def build(tmp_path: Path, hello: str, output: Path, *args: str) -> subprocess.CompletedProcess:
    return run_pipelines(["BuildImage", "--name", "x", "--tag", "1", "--contents", json.dumps([hello]),
                          "--output", str(output), *args], tmp_path / "store")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, hello) -> bytes:
    """The image as a regular file gets it (built once, with a layer store of its own)."""
    root = tmp_path_factory.mktemp("reference")
    run = build(root, hello, root / "reference.tar")
    assert run.returncode == 0, run.stderr
    return (root / "reference.tar").read_bytes()


def test_a_device_is_written_through_every_time_and_stays_a_device(tmp_path, hello, reference):
    null = tmp_path / "null"
    subprocess.run(["mknod", str(null), "c", "1", "3"], check=True)  # a /dev/null of the test's own
    before = os.stat(null)
    for _ in range(2):  # never "up to date": a device keeps nothing to compare with
        run = build(tmp_path, hello, null)
        assert run.returncode == 0, run.stderr
        assert f"nixlayer: wrote docker-archive {null}: x:1 " in run.stderr
        after = os.lstat(null)
        assert stat.S_ISCHR(after.st_mode) and (after.st_rdev, after.st_ino) == (before.st_rdev, before.st_ino)


@pytest.mark.parametrize("format", first_fast(["docker-archive", "oci-archive"]))
def test_a_fifo_is_written_through_to_its_reader(tmp_path, hello, reference, format):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with open(tmp_path / "read.tar", "wb") as out:
        reader = subprocess.Popen(["cat", str(fifo)], stdout=out)
        run = build(tmp_path, hello, fifo, "--format", format)
        reader.wait(timeout=60)
    assert run.returncode == 0, run.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    if format == "docker-archive":
        assert (tmp_path / "read.tar").read_bytes() == reference
    load = subprocess.run(["podman", "load", "-i", str(tmp_path / "read.tar")], capture_output=True, text=True)
    assert load.returncode == 0, load.stderr


@SLOW
def test_a_symlink_is_followed_to_its_target(tmp_path, hello, reference):
    (tmp_path / "images").mkdir()
    link = tmp_path / "link.tar"
    link.symlink_to(tmp_path / "images" / "real.tar")  # dangling: its target is made
    for _ in range(2):
        run = build(tmp_path, hello, link)
        assert run.returncode == 0, run.stderr
        assert link.is_symlink() and os.readlink(link) == str(tmp_path / "images" / "real.tar")
        assert (tmp_path / "images" / "real.tar").read_bytes() == reference
    assert "is up to date" in run.stderr


@SLOW
def test_a_symlink_to_a_layout_directory_is_followed(tmp_path, hello):
    (tmp_path / "real-layout").mkdir()
    (tmp_path / "layout").symlink_to(tmp_path / "real-layout")
    run = build(tmp_path, hello, tmp_path / "layout", "--format", "oci")
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "layout").is_symlink() and (tmp_path / "real-layout" / "index.json").is_file()


@SLOW
def test_a_socket_is_refused_with_one_line(tmp_path, hello):
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "sock"))
    try:
        run = build(tmp_path, hello, tmp_path / "sock")
    finally:
        server.close()
    assert run.returncode != 0
    assert error_lines(run) == [f"nixlayer: error: cannot write output {tmp_path / 'sock'}: it is a socket; give a"
                                " file, a device or a FIFO"]
    assert stat.S_ISSOCK(os.lstat(tmp_path / "sock").st_mode) and not (tmp_path / "store").exists()
