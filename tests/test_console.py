"""What a build prints (tasks/console.py): quiet by default, a plan line, progress on a terminal
(a real pseudo-terminal) and without one, a summary, the error line last; and what luigid's
dashboard shows of a batch of layers while it is written."""

from __future__ import annotations

import fcntl
import json
import os
import random
import re
import select
import signal
import struct
import subprocess
import tarfile
import termios
import time
from pathlib import Path

import pytest

from conftest import REPO, SLOW, first_fast, run_pipelines
from nixlayer.closure import graph_from_store_dir
from nixlayer.storepath import NIX_BASE32
from tasks import console
from test_batch import synthetic_store, write_batch
from test_luigid import api, luigid  # noqa: F401 - the fixture

PLAN = re.compile(r"nixlayer: \S+: (\d+) store paths \([\d.]+ [kMG]?B\) in (\d+) layers: (\d+) to write"
                  r"(?: \([\d.]+ [kMG]?B\))?, (\d+) reused")
SUMMARY = re.compile(r"nixlayer: (wrote \S+ \S+|\S+ \S+ is up to date): \S+:\S+ sha256:[0-9a-f]{64}; layers: (\d+) built,"
                     r" (\d+) reused; [\d.]+ [kMG]?B written in [\d.]+ s")


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> dict:
    """A store directory of 8 store paths of 25 MB of random bytes each (a chain of references),
    and its closure graph: gzip writes it in some seconds here."""
    root = tmp_path_factory.mktemp("big")
    disk = root / "nix" / "store"
    disk.mkdir(parents=True)
    rng = random.Random(3)
    paths: list[str] = []
    for i in range(8):
        name = f"{''.join(rng.choices(NIX_BASE32, k=32))}-big{i}"
        (disk / name / "share").mkdir(parents=True)
        with open(disk / name / "share" / "data", "wb") as f:
            f.write(f"needs {' '.join(paths[-1:])}\n".encode() + rng.randbytes(25_000_000))
        paths.append(f"/nix/store/{name}")
    graph = graph_from_store_dir(paths[-1:], str(root), "/nix/store")
    (root / "graph.json").write_text(json.dumps(
        [{"path": p, "narSize": graph.nar_size(p), "references": sorted(graph.references(p))} for p in graph]))
    return {"root": root, "contents": [paths[-1]], "graph": root / "graph.json"}


def big_args(big: dict, out: Path, *extra: str) -> list[str]:
    return ["BuildImage", "--name", "big", "--tag", "1", "--contents", json.dumps(big["contents"]),
            "--store-root", str(big["root"]), "--closure-graph", str(big["graph"]),
            "--format", "oci", "--compression", "gzip", "--output", str(out),
            # One thread compresses, so the build lasts the seconds these tests watch it for.
            "--nixlayer-compression-threads", "1", *extra]


@pytest.mark.parametrize("to", ["file", "stdout"])
@SLOW
def test_quiet_default_a_plan_line_and_a_summary(tmp_path, vectors_app, to):
    """From the repository (its luigi.cfg) and from elsewhere (nixlayer's defaults): stderr is
    the plan line and the summary, and nothing else; again, everything reused (written to
    standard output: written again)."""
    for cwd in (REPO, tmp_path):
        store, out = tmp_path / f"store-{cwd == REPO}", tmp_path / f"out-{cwd == REPO}.tar"
        args = ["BuildImage", "--name", "vec", "--tag", "1", "--contents", json.dumps([vectors_app]),
                "--output", str(out) if to == "file" else "-"]
        stdout = None if to == "file" else out
        run = run_pipelines(args, store, cwd=cwd, stdout=stdout)
        assert run.returncode == 0, run.stderr
        plan, summary = run.stderr.splitlines()
        paths, layers, to_write, reused = PLAN.fullmatch(plan).groups()
        assert (paths, layers, to_write, reused) == ("5", "6", "6", "0"), plan
        where = f"wrote docker-archive {out}" if to == "file" else "wrote docker-archive -"
        assert SUMMARY.fullmatch(summary).groups() == (where, "6", "0"), summary
        again = run_pipelines(args, store, cwd=cwd, stdout=stdout)
        plan, summary = again.stderr.splitlines()
        assert PLAN.fullmatch(plan).groups() == ("5", "6", "0", "6"), plan
        where = f"docker-archive {out} is up to date" if to == "file" else "wrote docker-archive -"
        assert SUMMARY.fullmatch(summary).groups() == (where, "0", "6"), summary
        if to == "file":
            assert run.stdout == again.stdout == ""
        else:
            assert tarfile.open(out).getmember("manifest.json")


def test_log_level_info_brings_luigis_log_back(tmp_path, vectors_app):
    run = run_pipelines(["BuildImage", "--name", "vec", "--contents", json.dumps([vectors_app]),
                         "--output", str(tmp_path / "v.tar"), "--log-level", "INFO"], tmp_path / "store")
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    assert "INFO: Done scheduling tasks" in lines and "===== Luigi Execution Summary =====" in lines
    assert SUMMARY.fullmatch(lines[-1]), lines[-1]  # nixlayer's summary after Luigi's


@pytest.mark.parametrize("task", first_fast(["BuildImages", "BuildImage --output -"]))
def test_a_check_of_completeness_after_the_run_keeps_the_run(tmp_path, vectors_app, task):
    """``[worker] check_complete_on_run``: Luigi asks an entry task's complete() again after
    its run; the run (its run log: summary, report) goes on, and the task is complete."""
    if task == "BuildImages":
        batch = write_batch(tmp_path / "batch.toml", 'tag = "t"\n', [
            f'name = "vec"\ncontents = ["{vectors_app}"]\noutput = "out/vec.tar"'])
        args = ["BuildImages", "--batch-file", str(batch), "--report", str(tmp_path / "report.json")]
    else:
        args = ["BuildImage", "--name", "vec", "--tag", "1", "--contents", json.dumps([vectors_app]), "--output", "-"]
    run = run_pipelines(args, tmp_path / "store", stdout=tmp_path / "stdout", cfg="[worker]\ncheck_complete_on_run = true\n")
    assert run.returncode == 0, run.stderr
    plan, *rest = run.stderr.splitlines()
    title = f"batch {batch}: 1 image" if task == "BuildImages" else "vec:1"
    assert PLAN.fullmatch(plan.replace(title, "t")).groups() == ("5", "6", "6", "0"), run.stderr
    if task == "BuildImages":
        assert rest == [], run.stderr
        summary = (tmp_path / "stdout").read_text().splitlines()
        assert summary[0].startswith(f"nixlayer: batch {batch}: 1 image in "), summary
        assert json.loads((tmp_path / "report.json").read_text())["totals"]["layers_built"] == 6
    else:
        assert len(rest) == 1 and SUMMARY.fullmatch(rest[0]).groups() == ("wrote docker-archive -", "6", "0"), run.stderr


def failing_store(tmp_path) -> tuple[list[str], str]:
    """Arguments of a build whose layer of one store path fails (the path is gone from disk), and
    that store path."""
    roots = synthetic_store(tmp_path / "root", images=1, base=4, unique=2)
    graph = graph_from_store_dir(roots, str(tmp_path / "root"), "/nix/store")
    (tmp_path / "graph.json").write_text(json.dumps(
        [{"path": p, "narSize": graph.nar_size(p), "references": sorted(graph.references(p))} for p in graph]))
    lib = next(p for p in graph if "-lib0-1" in p)
    os.rename(tmp_path / "root" / lib.lstrip("/"), tmp_path / "gone")
    return ["BuildImage", "--name", "bad", "--contents", json.dumps(roots), "--store-root", str(tmp_path / "root"),
            "--closure-graph", str(tmp_path / "graph.json"), "--output", str(tmp_path / "bad.tar")], lib


@pytest.mark.parametrize("extra", first_fast([["--workers", "1"], ["--workers", "2"], ["--log-level", "INFO"]]))
def test_the_error_line_is_last(tmp_path, extra):
    args, lib = failing_store(tmp_path)
    run = run_pipelines(args + extra, tmp_path / "store")
    assert run.returncode == 30, run.stderr
    lines = run.stderr.splitlines()
    assert lines[-1] == f"nixlayer: error: {tmp_path / 'root'}{lib} does not exist", run.stderr
    assert sum(line.startswith("nixlayer: error: ") for line in lines) == 1, run.stderr
    assert "Traceback" not in run.stderr and "ERROR:" not in run.stderr
    if "INFO" not in extra:  # only the plan line before it, no Luigi summary
        assert len(lines) == 2 and PLAN.fullmatch(lines[0]), run.stderr


def test_an_error_found_while_planning_is_last_after_luigis_summary(tmp_path):
    missing = "/nix/store/00000000000000000000000000000000-missing"
    run = run_pipelines(["BuildImage", "--name", "x", "--contents", json.dumps([missing]), "--output",
                         str(tmp_path / "x.tar"), "--log-level", "INFO"], tmp_path / "store")
    assert run.returncode == 35, run.stderr
    lines = run.stderr.splitlines()
    assert "===== Luigi Execution Summary =====" in lines, run.stderr
    assert lines[-1].startswith(f"nixlayer: error: {missing}"), run.stderr
    assert sum(line.startswith("nixlayer: error: ") for line in lines) == 1, run.stderr


def run_on_terminal(argv: list[str], env: dict, cwd: Path, columns: int = 100) -> tuple[int, str]:
    """Run ``argv`` with standard error on a pseudo-terminal of ``columns`` columns (0: a size
    nobody set, as ``script`` leaves it); its exit status and what it wrote there."""
    master, slave = os.openpty()
    if columns:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    process = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if select.select([master], [], [], 0.5)[0]:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every holder of the terminal closed it
                break
            if not data:
                break
            out += data
        elif process.poll() is not None:
            break
    os.close(master)
    return process.wait(timeout=60), out.decode()


@pytest.mark.parametrize("workers", ["1", "2"])
@SLOW
def test_progress_bar_on_a_terminal(tmp_path, big, workers):
    cfg = tmp_path / "luigi.cfg"
    cfg.write_text(f"[nixlayer]\nlayer_store = {tmp_path / 'store'}\n")
    status, out = run_on_terminal(["luigi", "--module", "pipelines", *big_args(big, tmp_path / "out", "--workers", workers)],
                                  dict(os.environ, LUIGI_CONFIG_PATH=str(cfg)), REPO)
    assert status == 0, out
    # tqdm's bar, redrawn in place: layers written, percentage, bytes of the 200 MB, rate.
    bars = re.findall(r"\rnixlayer: (\d)/9 layers: +(\d+)%\|[^|]*\| *([\d.]+)M/200M \[[\d:]+<[\d:?]+, +[\d.?]+M?B/s", out)
    assert len(bars) >= 3, out
    assert any(0 < int(percent) < 100 for _, percent, _ in bars), out
    lines = out.replace("\r\n", "\n").split("\n")
    assert PLAN.fullmatch(lines[0]) and SUMMARY.fullmatch(lines[-2].rsplit("\r", 1)[-1]) and lines[-1] == "", out


@SLOW
def test_plain_progress_lines_without_a_terminal(tmp_path, big):
    run = run_pipelines(big_args(big, tmp_path / "out", "--compression-level", "9"), tmp_path / "store")
    assert run.returncode == 0, run.stderr
    assert "\x1b" not in run.stderr and "\r" not in run.stderr
    lines = run.stderr.splitlines()
    progress = [re.fullmatch(r"nixlayer: writing layers: (\d)/9 layers, [\d.]+ MB of 200.0 MB \((\d+)%\),"
                             r" [\d.]+ MB/s, [\d.]+ s left", line) for line in lines[1:-1]]
    assert progress and all(progress), run.stderr
    assert PLAN.fullmatch(lines[0]) and SUMMARY.fullmatch(lines[-1]), run.stderr


@SLOW
def test_plain_progress_lines_on_a_terminal_of_unknown_size(tmp_path, big):
    """tqdm draws nothing on a terminal of 0 columns (``script``'s, a serial console's): there
    the plain lines show instead."""
    cfg = tmp_path / "luigi.cfg"
    cfg.write_text(f"[nixlayer]\nlayer_store = {tmp_path / 'store'}\n")
    status, out = run_on_terminal(["luigi", "--module", "pipelines", *big_args(big, tmp_path / "out", "--compression-level", "9")],
                                  dict(os.environ, LUIGI_CONFIG_PATH=str(cfg)), REPO, columns=0)
    assert status == 0, out
    lines = out.replace("\r\n", "\n").splitlines()
    assert "\x1b" not in out and "\r" not in "".join(lines), out
    assert any(re.fullmatch(r"nixlayer: writing layers: \d/9 layers, .* left", line) for line in lines), out


@SLOW
def test_the_dashboard_shows_a_batch_of_layers_writing(tmp_path, big, luigid):  # noqa: F811
    """Through a real luigid: while the build runs, the row of its batch of layers has a
    progress percentage between 0 and 100 and a status naming the store path being written
    and the bytes written of the batch's; afterwards each layer's row names its store path."""
    cfg = tmp_path / "luigi.cfg"
    cfg.write_text(f"[core]\nlocal_scheduler = false\n[nixlayer]\nlayer_store = {tmp_path / 'store'}\nlayer_batches = 1\n")
    with open(tmp_path / "err.log", "w") as err:
        run = subprocess.Popen(
            ["luigi", "--module", "pipelines", *big_args(big, tmp_path / "out"),
             "--scheduler-host", "127.0.0.1", "--scheduler-port", str(luigid["port"])],
            cwd=REPO, env=dict(os.environ, LUIGI_CONFIG_PATH=str(cfg)), stdout=subprocess.DEVNULL, stderr=err)
        seen = []
        while run.poll() is None:
            running = api(luigid["port"], "task_list", status="RUNNING", upstream_status="", search="")
            seen += [t for t in running.values() if t["name"] == "StorePathLayer"]
            time.sleep(0.2)
    assert run.returncode == 0, (tmp_path / "err.log").read_text()
    batch = [t for t in seen if t["params"]["store_path"].startswith("[")]
    assert batch, seen
    assert {len(json.loads(t["params"]["store_path"])) for t in batch} == {8}  # one batch of every store path layer
    # (A row read before the batch's first progress call has none yet.)
    writing = [t for t in batch if 0 < (t["progress_percentage"] or 0) < 100]
    assert writing, batch
    # (Progress and message are two calls to luigid: a row read between them pairs a new
    # percentage with the message before it, which may be "0 B of ...".)
    pattern = re.compile(r"([\d.]+ [kMG]?B) of 200.0 MB written; StorePathLayer (\d) of 8: (/nix/store/\S+)(: | \()")
    for t in writing:
        match = pattern.match(t["status_message"])
        assert match and match[3] in json.loads(t["params"]["store_path"]), t["status_message"]
    done = api(luigid["port"], "task_list", status="DONE", upstream_status="", search="StorePathLayer")
    layers = [t for t in done.values() if not t["params"]["store_path"].startswith("[")]
    assert len(layers) == 8
    for t in layers:
        assert t["progress_percentage"] == 100
        assert t["status_message"].startswith(t["params"]["store_path"] + ": 25.0 MB, diff_id sha256:"), t["status_message"]


@pytest.mark.parametrize("workers", ["1", "2"])
@SLOW
def test_an_interrupt_is_one_line(tmp_path, big, workers):
    """Ctrl-C (SIGINT to the terminal's process group) while layers are written: one line, last,
    and the process ends by SIGINT, as any interrupted command (130 in a shell); no layer's
    half-written blob is left in the layer store (with 2 workers, Luigi terminates the
    processes it forked: they remove theirs)."""
    cfg = tmp_path / "luigi.cfg"
    cfg.write_text(f"[nixlayer]\nlayer_store = {tmp_path / 'store'}\n")
    run = subprocess.Popen(["luigi", "--module", "pipelines", *big_args(big, tmp_path / "out", "--compression-level", "9",
                                                                        "--workers", workers)],
                           cwd=REPO, env=dict(os.environ, LUIGI_CONFIG_PATH=str(cfg)), stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True, start_new_session=True,
                           # as from a terminal, whatever this process inherited (a background
                           # job of a script, nohup: SIGINT ignored, and so in luigi)
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert PLAN.fullmatch(run.stderr.readline().rstrip("\n"))  # layers are being written now
    deadline = time.monotonic() + 30
    while not list((tmp_path / "store" / "tmp").glob(".blob.tmp-*")):
        assert time.monotonic() < deadline, "no layer was being written"
        time.sleep(0.05)
    time.sleep(0.5)
    os.killpg(run.pid, signal.SIGINT)
    rest = run.stderr.read()
    assert run.wait(timeout=60) == -signal.SIGINT, rest
    assert rest.splitlines() == ["nixlayer: error: interrupted: the layers written so far are kept in the layer store, and"
                                 " nothing half-written is taken as done; run the same command again to go on"], rest
    assert not (tmp_path / "out").exists()
    deadline = time.monotonic() + 10  # Luigi's worker does not wait for the processes it terminates
    while list((tmp_path / "store" / "tmp").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert list((tmp_path / "store" / "tmp").iterdir()) == []


@pytest.mark.parametrize("to", ["stdout", "fifo"])
def test_a_stream_counts_the_bytes_it_streamed(tmp_path, vectors_app, to):
    """An image written to standard output or a FIFO: the summary counts the bytes streamed
    (the archive's size), not 0 B."""
    out = tmp_path / "out.tar"
    args = ["BuildImage", "--name", "vec", "--tag", "1", "--contents", json.dumps([vectors_app])]
    store = tmp_path / "store"
    if to == "stdout":
        run = run_pipelines([*args, "--output", "-"], store, stdout=out)
    else:
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        reader = subprocess.Popen(["cp", str(fifo), str(out)])
        run = run_pipelines([*args, "--output", str(fifo)], store)
        assert reader.wait(timeout=60) == 0
    assert run.returncode == 0, run.stderr
    summary = run.stderr.splitlines()[-1]
    layer_bytes = sum(int(member.size) for member in tarfile.open(out) if member.name.endswith(".tar"))
    assert layer_bytes > 0 and out.stat().st_size > 0
    # the layers built (their blobs) and the archive streamed
    where = "-" if to == "stdout" else str(tmp_path / "fifo")
    assert summary.startswith(f"nixlayer: wrote docker-archive {where}: vec:1 sha256:"), summary
    assert summary.endswith(f"; layers: 6 built, 0 reused; {console.size(layer_bytes + out.stat().st_size)} written"
                            f" in {summary.rsplit(' in ', 1)[1]}"), summary


def test_the_plan_line_gives_no_closure_size_it_does_not_know(tmp_path, vectors_app):
    """A closure graph without NAR sizes: the plan line gives the store paths, not "(0 B)"."""
    closure = subprocess.run(["nix-store", "-qR", vectors_app], capture_output=True, text=True, check=True).stdout.split()
    graph = [{"path": p, "references": subprocess.run(["nix-store", "-q", "--references", p], capture_output=True,
                                                      text=True, check=True).stdout.split()} for p in closure]
    (tmp_path / "graph.json").write_text(json.dumps(graph))
    run = run_pipelines(["BuildImage", "--name", "vec", "--tag", "1", "--contents", json.dumps([vectors_app]),
                         "--closure-graph", str(tmp_path / "graph.json"), "--layering", "popularity",
                         "--output", str(tmp_path / "v.tar")], tmp_path / "store")
    assert run.returncode == 0, run.stderr
    assert run.stderr.splitlines()[0] == "nixlayer: vec:1: 5 store paths in 6 layers: 6 to write, 0 reused", run.stderr


def test_the_plan_line_gives_no_size_it_does_not_know(tmp_path, vectors_app):
    """A rebuild that writes only the customisation layer (links and commands: no NAR size to
    plan by) says how many layers it writes, not "(0 B)"; the summary gives the bytes written."""
    args = ["BuildImage", "--name", "vec", "--tag", "1", "--contents", json.dumps([vectors_app]),
            "--output", str(tmp_path / "v.tar")]
    assert run_pipelines(args, tmp_path / "store").returncode == 0
    run = run_pipelines([*args, "--extra-commands", "mkdir -m 1777 tmp"], tmp_path / "store")
    assert run.returncode == 0, run.stderr
    plan, summary = run.stderr.splitlines()
    assert re.fullmatch(r"nixlayer: vec:1: 5 store paths \([\d.]+ kB\) in 6 layers: 1 to write, 5 reused", plan), plan
    assert re.search(r"; layers: 1 built, 5 reused; [\d.]+ kB written in", summary), summary
