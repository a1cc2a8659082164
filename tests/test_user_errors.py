"""The mistakes a new user makes, each one line ``nixlayer: error: ...`` saying what to do, and
the exit status it gives: run as the user runs them (``luigi --module pipelines ...``,
``python3 -m nixlayer plan``), with real Nix."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FIXTURES, REPO, SLOW, first_fast, nix_build, run_pipelines
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


@SLOW
def test_a_store_path_on_disk_that_nix_does_not_know(tmp_path, unregistered):
    line = (f"{unregistered} exists on disk but Nix does not know it as valid (an interrupted build, or copied in"
            f" without Nix): build it again (`nix-build FILE.nix -A ATTR`) or fetch it (`nix-store --realise"
            f" {unregistered}`)")
    assert_refused(tmp_path, build_image(tmp_path, "--contents", json.dumps([unregistered])), 35, line)


# 2. A derivation given as contents.

@SLOW
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

@SLOW
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


@SLOW
def test_a_relative_link_is_absolute_in_the_task_id(tmp_path, monkeypatch):
    """With luigid, ``--contents '["./result"]'`` run from two directories is two images."""
    from pipelines import BuildImage

    ids = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        task = BuildImage(name="x", contents=["./result"], output="/tmp/x.tar")
        assert list(task.contents) == [str(tmp_path / name / "result")]
        ids.append(task.task_id)
    assert ids[0] != ids[1]


@SLOW
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
    for given, line in cases:  # BuildImage names the link from / (its task id holds it so)
        assert_refused(tmp_path, build_image(tmp_path, "--contents", json.dumps([given]), cwd=work), 35,
                       f"{work}/{line}")
        run = plan(given, cwd=work)
        assert (run.returncode, error_lines(run)) == (2, [f"nixlayer: error: {line}"]), given


# 4. Values a parameter cannot parse: the line names the parameter and the value.

@pytest.mark.parametrize("args, line", first_fast([
    (["--uid", "abc"], "--uid must be a whole number, not 'abc'"),
    (["--max-layers", "x"], "--max-layers must be a whole number, not 'x'"),
    (["--include-store-paths", "maybe"], "--include-store-paths must be true or false, not 'maybe'"),
    (["--compression", "zip"], "--compression must be one of auto, gzip, none, zstd, not 'zip'"),
    (["--contents", "/nix/store/x"], "--contents must be a JSON list of store paths such as"
                                     " '[\"/nix/store/...-hello\"]', not '/nix/store/x'"),
    (["--BuildImage-gid", "q"], "--gid must be a whole number, not 'q'"),  # the global form
    (["--workers", "two"], "--workers must be a whole number, not 'two'"),  # one of Luigi's own
]))
def test_a_value_that_does_not_parse_names_its_parameter(tmp_path, args, line):
    assert_refused(tmp_path, build_image(tmp_path, *args), 40, f"invalid parameter: {line}")


@pytest.mark.parametrize("flag", first_fast(["--created", "--mtime"]))
def test_a_time_that_does_not_parse_names_its_flag(tmp_path, hello, flag):
    run = build_image(tmp_path, "--contents", json.dumps([hello]), flag, "yesterday")
    assert_refused(tmp_path, run, 35, f"{flag} must be ISO 8601 (1970-01-01T00:00:01Z) or 'now', not 'yesterday'")


@SLOW
def test_an_mtime_before_1970_names_its_flag_and_the_least_time(tmp_path, hello):
    run = build_image(tmp_path, "--contents", json.dumps([hello]), "--mtime", "1960-01-01T00:00:00Z")
    assert_refused(tmp_path, run, 35, "--mtime 1960-01-01T00:00:00Z is before 1970-01-01T00:00:00Z, where a layer's"
                   " file times start: give that time or a later one")


@SLOW
def test_a_bad_value_in_luigi_cfg_names_its_parameter(tmp_path):
    cfg = tmp_path / "luigi.cfg"
    cfg.write_text(f"[nixlayer]\nlayer_store = {tmp_path / 'store'}\n[BuildImage]\nuid = zz\n")
    run = subprocess.run(["luigi", "--module", "pipelines", "BuildImage", "--name", "x", "--output",
                          str(tmp_path / "x.tar")], cwd=tmp_path, env=dict(os.environ, LUIGI_CONFIG_PATH=str(cfg)),
                         capture_output=True, text=True, timeout=120)
    assert_refused(tmp_path, run, 40, "invalid parameter: --uid must be a whole number, not 'zz'")


# 8. An image to standard output when it is a terminal.

@SLOW
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


# 7. With luigid, a failed task ends the run in seconds (workers wait only on running work).

from test_luigid import luigid  # noqa: E402,F401 - a real luigid, see test_luigid.py
from registry_fixture import free_port  # noqa: E402


@SLOW
def test_with_luigid_a_failed_push_ends_the_run_at_once(tmp_path, luigid, hello):  # noqa: F811
    port = free_port()  # no registry listens there
    cfg = tmp_path / "luigi.cfg"  # nixlayer's luigid defaults: keep_alive, 10 minutes idle
    cfg.write_text(f"[core]\nlocal_scheduler = false\n[nixlayer]\nlayer_store = {tmp_path / 'store'}\n")
    started = time.monotonic()
    run = subprocess.run(["luigi", "--module", "pipelines", "BuildImage", "--name", "x", "--contents",
                          json.dumps([hello]), "--push", f"docker://127.0.0.1:{port}/x:1", "--scheduler-host",
                          "127.0.0.1", "--scheduler-port", str(luigid["port"])],
                         cwd=tmp_path, env=dict(os.environ, LUIGI_CONFIG_PATH=str(cfg)),
                         capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    assert (run.returncode, error_lines(run)) == (30, [
        f"nixlayer: error: cannot reach registry 127.0.0.1:{port} (repository x), asking for its API version:"
        " connection refused after 5 tries; is a registry listening there? Start it, or correct the push target"]), run.stderr
    assert elapsed < 30, elapsed  # the registry client's retries take ~6 s of it
    print(f"failed push with luigid: exit {run.returncode} after {elapsed:.1f} s")


@SLOW
def test_with_luigid_a_worker_waits_on_a_batch_another_machine_runs(tmp_path, luigid):  # noqa: F811
    """Machine B runs the image's store path layers in one batch (luigid: BATCH_RUNNING, which
    its count of running tasks leaves out) and is held stopped there; machine A, with nothing
    else to run, keeps waiting instead of ending its run, and builds its image once B is done."""
    from test_batch import synthetic_store
    from test_luigid import api

    app = synthetic_store(tmp_path / "root", images=1, base=2, unique=1)[0]
    big = tmp_path / "root" / app.lstrip("/") / "share" / "big.bin"
    big.write_bytes(os.urandom(64 << 20))  # gzip takes a second or two: B is caught in its batch
    runs = {}
    for machine in ("b", "a"):
        work = tmp_path / machine
        work.mkdir()
        (work / "luigi.cfg").write_text(f"[core]\nlocal_scheduler = false\n[nixlayer]\nlayer_store ="
                                        f" {tmp_path / 'store'}\nlayer_batches = 1\n")
        argv = ["luigi", "--module", "pipelines", "BuildImage", "--name", "x", "--tag", "t", "--contents",
                json.dumps([app]), "--store-root", str(tmp_path / "root"), "--format", "oci", "--output",
                str(work / "out"), "--scheduler-host", "127.0.0.1", "--scheduler-port", str(luigid["port"])]
        with open(work / "err.log", "w") as err:
            runs[machine] = subprocess.Popen(argv, cwd=work, stdout=subprocess.DEVNULL, stderr=err,
                                             env=dict(os.environ, LUIGI_CONFIG_PATH=str(work / "luigi.cfg")))
        if machine == "b":
            deadline = time.monotonic() + 60
            while not api(luigid["port"], "task_list", status="BATCH_RUNNING", upstream_status="", search=""):
                assert time.monotonic() < deadline and runs["b"].poll() is None, "B ran no batch"
                time.sleep(0.02)
            os.kill(runs["b"].pid, signal.SIGSTOP)
    try:
        try:
            time.sleep(8)  # A asks for work every 1-2 s; under luigid's worker_disconnect_delay (60 s)
            assert runs["a"].poll() is None, (tmp_path / "a" / "err.log").read_text()[-3000:]
        finally:
            os.kill(runs["b"].pid, signal.SIGCONT)
        for machine, run in runs.items():
            assert run.wait(timeout=120) == 0, (tmp_path / machine / "err.log").read_text()[-3000:]
            assert (tmp_path / machine / "out" / "index.json").exists()
    finally:  # a failed test leaves no run behind
        for run in runs.values():
            if run.poll() is None:
                run.kill()
                run.wait()


# 5. `luigi BuildImage ...` without --module pipelines.

@pytest.fixture(scope="module")
def python_with_hint(tmp_path_factory) -> str:
    """A Python whose site-packages hold scripts/nixlayer-luigi.pth, as scripts/install-deps
    installs it (a venv over this Python's packages, so this machine's is left as it is)."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True)
    site = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "nixlayer-luigi.pth").write_text((REPO / "scripts" / "nixlayer-luigi.pth").read_text())
    return str(venv / "bin" / "python")


@pytest.mark.parametrize("where", ["repository", "elsewhere"])
@SLOW
def test_luigi_without_module_says_to_add_it(tmp_path, python_with_hint, where):
    import sysconfig
    luigi_script = os.path.join(sysconfig.get_path("scripts"), "luigi")  # the luigi command itself
    cwd = REPO if where == "repository" else tmp_path
    for task in ("BuildImage", "BuildImages"):
        run = subprocess.run([python_with_hint, luigi_script, task, "--name", "x"], cwd=cwd,
                             capture_output=True, text=True, timeout=120)
        assert (run.returncode, run.stderr) == (1, f"nixlayer: error: luigi finds {task} only with --module pipelines:"
                                                   f" run luigi --module pipelines {task} ...\n")
    # Any other task Luigi does not know keeps Luigi's own error.
    other = subprocess.run([python_with_hint, luigi_script, "NoSuchTask"], cwd=cwd, capture_output=True, text=True)
    assert other.returncode == 1 and "TaskClassNotFoundException: No task NoSuchTask" in other.stderr
    # The hook runs in luigi only: another program that fails the same way keeps its traceback.
    probe = subprocess.run([python_with_hint, "-c", "from luigi.task_register import Register;"
                            " Register.get_task_cls('BuildImage')"], capture_output=True, text=True)
    assert probe.returncode == 1 and "Traceback" in probe.stderr


# 6. Every exit status, each from the case it documents (see also the tests above: 30, 35, 40).

@SLOW
def test_the_same_command_twice_exits_10_with_one_line(tmp_path, hello):
    """Luigi's process lock (embedded scheduler): the second of two identical commands exits 10
    at once, saying so on standard error; nothing of it reaches standard output."""
    locks = tmp_path / "locks"
    cfg = tmp_path / "luigi.cfg"
    cfg.write_text(f"[core]\nlock_pid_dir = {locks}\n[nixlayer]\nlayer_store = {tmp_path / 'store'}\n")
    argv = ["luigi", "--module", "pipelines", "BuildImage", "--name", "x", "--contents", json.dumps([hello]),
            "--output", "-"]
    env = dict(os.environ, LUIGI_CONFIG_PATH=str(cfg))
    # The first writes the image into a pipe nobody reads: it holds the lock, blocked.
    first = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (locks.exists() and any(locks.iterdir())):
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.05)
        second = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    finally:
        first.kill()
        first.wait()
    assert (second.returncode, error_lines(second), second.stdout) == (10, [
        f"nixlayer: error: the same command is already running on this machine (pid {first.pid}): wait for it to"
        " finish, or stop it (Luigi's process lock compares command lines; [core] no_lock = true turns it off)"], "")


@pytest.mark.parametrize("args, status, last_line", first_fast([
    ([], 1, "No task specified"),  # Luigi's own line
    (["BuildImag", "--name", "x"], 1, "nixlayer: error: there is no task BuildImag: nixlayer's are BuildImage,"
                                      " BuildImages, PushImage (luigi --module pipelines TASK --help lists its parameters)"),
    (["BuildImage", "--name", "x", "--bogus", "1"], 2, "luigi: error: unrecognized arguments: --bogus 1"),  # argparse
    (["BuildImage"], 40, "nixlayer: error: BuildImage needs --name: give it (luigi --module pipelines BuildImage"
                         " --help lists every parameter)"),
    (["BuildImages"], 35, "nixlayer: error: BuildImages needs --batch-file FILE (TOML) or --spec FILE"
                          " (nix-build of buildImages), one of them; neither given"),
], keep=2))
def test_luigi_command_line_mistakes_exit_status(tmp_path, args, status, last_line):
    run = run_pipelines(args, tmp_path / "store")
    assert "Traceback" not in run.stderr, run.stderr
    assert (run.returncode, run.stderr.splitlines()[-1]) == (status, last_line), run.stderr


@pytest.mark.parametrize("args, status", first_fast([
    (["plan", "--help"], 0),
    ([], 2),  # usage: the argparse line
    (["plan", "--max-layers", "x", "/nix/store/" + "0" * 32 + "-x"], 2),
    (["plan", "/nix/store/" + "0" * 32 + "-x"], 2),  # bad input: nixlayer: error: ...
], keep=2))
def test_python_m_nixlayer_exit_status(args, status):
    run = subprocess.run([sys.executable, "-m", "nixlayer", *args], capture_output=True, text=True, timeout=60)
    assert run.returncode == status and "Traceback" not in run.stderr, run.stderr


def test_the_command_line_has_the_flags_of_the_entry_tasks_only(tmp_path):
    """Luigi's parser takes no flags for nixlayer's layer and image tasks (tasks.runtime, 9):
    --help-all lists the entry tasks' and Luigi's own, and a flag of an inner task is refused
    as any unknown flag."""
    run = run_pipelines(["BuildImage", "--help-all"], tmp_path / "store")
    assert run.returncode == 0, run.stderr
    flags = set(re.findall(r"--([A-Za-z]+)-[a-z]", run.stdout))
    assert {"BuildImage", "PushImage", "BuildImages", "nixlayer", "worker", "scheduler", "retcode"} <= flags
    inner = {"StorePathLayer", "OverflowLayer", "CustomisationLayer", "BaseImageLayer", "AssembleImage",
             "PushToRegistry", "IndexImage", "AssembleIndex", "PushIndex"}
    assert not flags & inner
    run = run_pipelines(["BuildImage", "--name", "x", "--StorePathLayer-uid", "1"], tmp_path / "store")
    assert (run.returncode, run.stderr.splitlines()[-1]) == (2, "luigi: error: unrecognized arguments: --StorePathLayer-uid 1")
