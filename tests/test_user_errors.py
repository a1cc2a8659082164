"""The mistakes a new user makes, each one line ``nixlayer: error: ...`` saying what to do, and
the exit status it gives: run as the user runs them (``luigi --module pipelines ...``,
``python3 -m nixlayer plan``), with real Nix."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FIXTURES, REPO, nix_build, run_pipelines
from nixlayer.storepath import NIX_BASE32

EXAMPLE = REPO / "examples" / "hello.nix"


def error_lines(run: subprocess.CompletedProcess) -> list[str]:
    """The ``nixlayer: error:`` lines of a run; a traceback fails the test."""
    assert "Traceback" not in run.stderr, run.stderr
    return [line for line in run.stderr.splitlines() if line.startswith("nixlayer: error:")]


def build_image(tmp_path: Path, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """``luigi --module pipelines BuildImage --name x --output tmp_path/x.tar ARGS`` (a layer
    store of its own under tmp_path)."""
    return run_pipelines(["BuildImage", "--name", "x", "--output", str(tmp_path / "x.tar"), *args],
                         tmp_path / "store", cwd=cwd)


def plan(*roots: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nixlayer", "plan", *roots], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def assert_refused(tmp_path: Path, run: subprocess.CompletedProcess, status: int, line: str) -> None:
    """``run`` exited ``status`` with ``line`` as its one error line, and wrote nothing."""
    assert (run.returncode, error_lines(run)) == (status, [f"nixlayer: error: {line}"]), run.stderr
    assert not (tmp_path / "x.tar").exists() and not (tmp_path / "store").exists()


@pytest.fixture(scope="module")
def hello() -> str:
    return nix_build(EXAMPLE, "hello")


@pytest.fixture
def unregistered():
    """A directory in /nix/store that Nix does not know as valid (removed afterwards)."""
    path = Path("/nix/store/" + "".join(random.choices(NIX_BASE32, k=32)) + "-nixlayer-test-unregistered")
    path.mkdir()
    yield str(path)
    path.rmdir()


# 1. A store path that is not built, or not valid in the store.

def test_a_store_path_not_built(tmp_path):
    missing = "/nix/store/" + "0" * 32 + "-hello"
    line = (f"{missing} is not in the Nix store (not built, or garbage-collected): build it (`nix-build FILE.nix -A"
            f" ATTR` prints its path) or fetch it (`nix-store --realise {missing}`)")
    assert_refused(tmp_path, build_image(tmp_path, "--contents", json.dumps([missing])), 35, line)
    run = plan(missing)
    assert (run.returncode, error_lines(run)) == (2, [f"nixlayer: error: {line}"])


def test_a_store_path_on_disk_that_nix_does_not_know(tmp_path, unregistered):
    line = (f"{unregistered} exists on disk but Nix does not know it as valid (an interrupted build, or copied in"
            f" without Nix): build it again (`nix-build FILE.nix -A ATTR`) or fetch it (`nix-store --realise"
            f" {unregistered}`)")
    assert_refused(tmp_path, build_image(tmp_path, "--contents", json.dumps([unregistered])), 35, line)


# 2. A derivation given as contents.

def test_a_derivation_as_contents(tmp_path):
    drv = subprocess.run(["nix-instantiate", str(EXAMPLE), "-A", "hello"], capture_output=True, text=True,
                         check=True).stdout.strip()
    line = (f"{drv} is a derivation, not a build output: run `nix-store --realise {drv}` (or `nix-build {drv}`)"
            " and give the output path it prints")
    assert_refused(tmp_path, build_image(tmp_path, "--contents", json.dumps([drv])), 35, line)
    run = plan(drv)
    assert (run.returncode, error_lines(run)) == (2, [f"nixlayer: error: {line}"])
    # What the line says to do works: the path nix-store --realise prints builds.
    out = subprocess.run(["nix-store", "--realise", drv], capture_output=True, text=True, check=True).stdout.split()[-1]
    assert plan(out).returncode == 0


# 3. ./result and other links into the store.

def test_a_result_link_is_its_store_path(tmp_path, hello):
    work = tmp_path / "work"
    work.mkdir()
    (work / "result").symlink_to(hello)
    (work / "again").symlink_to("result")  # a link to a link
    run = build_image(tmp_path, "--contents", '["./result"]', "--tag", "t", cwd=work)
    assert run.returncode == 0, run.stderr
    by_path = build_image(tmp_path, "--contents", json.dumps([hello]), "--tag", "t", "--output",
                          str(tmp_path / "y.tar"))
    assert by_path.returncode == 0, by_path.stderr
    assert (tmp_path / "x.tar").read_bytes() == (tmp_path / "y.tar").read_bytes()
    linked, direct = plan("./again", cwd=work), plan(hello)
    assert linked.returncode == 0 and linked.stdout == direct.stdout and hello in linked.stdout, linked.stderr


def test_links_that_do_not_name_a_store_path(tmp_path, hello):
    work = tmp_path / "work"
    work.mkdir()
    (work / "outside").symlink_to(tmp_path)
    (work / "result").symlink_to(hello)
    cases = [
        ("outside", f"outside resolves to {tmp_path}, which is not in the store directory /nix/store: give a store"
                    " path (nix-build prints one) or a link to one such as ./result"),
        ("result/bin", f"result/bin (which resolves to {hello}/bin) is inside the store path {hello}: give {hello}"
                       " itself (its whole contents are linked into /)"),
        ("resutl", "resutl does not exist: give a store path (nix-build prints one) or a link to one such as ./result"),
    ]
    for given, line in cases:
        assert_refused(tmp_path, build_image(tmp_path, "--contents", json.dumps([given]), cwd=work), 35, line)
        run = plan(given, cwd=work)
        assert (run.returncode, error_lines(run)) == (2, [f"nixlayer: error: {line}"]), given


# 4. Values a parameter cannot parse: the line names the parameter and the value.

@pytest.mark.parametrize("args, line", [
    (["--uid", "abc"], "--uid must be a whole number, not 'abc'"),
    (["--max-layers", "x"], "--max-layers must be a whole number, not 'x'"),
    (["--include-store-paths", "maybe"], "--include-store-paths must be true or false, not 'maybe'"),
    (["--compression", "zip"], "--compression must be one of auto, gzip, none, zstd, not 'zip'"),
    (["--contents", "/nix/store/x"], "--contents must be a JSON list of store paths such as"
                                     " '[\"/nix/store/...-hello\"]', not '/nix/store/x'"),
    (["--BuildImage-gid", "q"], "--gid must be a whole number, not 'q'"),  # the global form
    (["--workers", "two"], "--workers must be a whole number, not 'two'"),  # one of Luigi's own
])
def test_a_value_that_does_not_parse_names_its_parameter(tmp_path, args, line):
    assert_refused(tmp_path, build_image(tmp_path, *args), 40, f"invalid parameter: {line}")


def test_a_bad_value_in_luigi_cfg_names_its_parameter(tmp_path):
    cfg = tmp_path / "luigi.cfg"
    cfg.write_text(f"[nixlayer]\nlayer_store = {tmp_path / 'store'}\n[BuildImage]\nuid = zz\n")
    run = subprocess.run(["luigi", "--module", "pipelines", "BuildImage", "--name", "x", "--output",
                          str(tmp_path / "x.tar")], cwd=tmp_path, env=dict(os.environ, LUIGI_CONFIG_PATH=str(cfg)),
                         capture_output=True, text=True, timeout=120)
    assert_refused(tmp_path, run, 40, "invalid parameter: --uid must be a whole number, not 'zz'")


# 8. An image to standard output when it is a terminal.

def test_an_image_is_not_written_to_a_terminal(tmp_path, hello):
    import pty
    import select
    leader, follower = pty.openpty()
    try:
        cfg = tmp_path / "luigi.cfg"
        cfg.write_text(f"[nixlayer]\nlayer_store = {tmp_path / 'store'}\n")
        run = subprocess.run(["luigi", "--module", "pipelines", "BuildImage", "--name", "x", "--contents",
                              json.dumps([hello]), "--output", "-"], cwd=REPO, stdout=follower,
                             stderr=subprocess.PIPE, text=True, timeout=120,
                             env=dict(os.environ, LUIGI_CONFIG_PATH=str(cfg)))
        assert_refused(tmp_path, run, 35, "cowardly refusing to write an image to a terminal; redirect or pipe it"
                                          " (--output - > FILE, --output - | podman load) or give --output FILE")
        assert select.select([leader], [], [], 0)[0] == []  # nothing written to the terminal
    finally:
        os.close(leader)
        os.close(follower)
    # To a pipe it is written (test_build.py: to a file).
    run = subprocess.run(f"set -o pipefail; luigi --module pipelines BuildImage --name x --tag t --contents"
                         f" '{json.dumps([hello])}' --output - | tar -t", shell=True, executable="/bin/bash", cwd=REPO, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, LUIGI_CONFIG_PATH=str(cfg)))
    assert run.returncode == 0 and "manifest.json" in run.stdout.split(), run.stderr
