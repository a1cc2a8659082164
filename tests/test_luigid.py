"""A real luigid, two BuildImages runs at once against it over one shared layer store, as two
machines would: each layer task runs exactly once across both, and both give the same bytes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, SLOW
from registry_fixture import free_port
from test_batch import synthetic_store, verify_layer_store, write_batch


def api(port: int, method: str, **data) -> dict:
    query = urllib.parse.urlencode({"data": json.dumps(data)})
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/{method}?{query}", timeout=30) as r:
        return json.loads(r.read())["response"]


@pytest.fixture
def luigid(tmp_path):
    """luigid on 127.0.0.1, a free port, its own state, pidfile, logs and SQLite task history."""
    home = tmp_path / "luigid"
    home.mkdir()
    port = free_port()
    cfg = home / "luigid.cfg"
    # stable_done_cooldown_secs = 0: luigid takes a task marked done within that many seconds
    # (default 10) as done whatever a worker says; a test that builds again at once needs none.
    cfg.write_text(f"[scheduler]\nrecord_task_history = true\nstate_path = {home / 'state.pickle'}\n"
                   "stable_done_cooldown_secs = 0\n"
                   f"[task_history]\ndb_connection = sqlite:///{home / 'history.db'}\n")
    pidfile = home / "luigid.pid"
    subprocess.run(
        ["luigid", "--background", "--port", str(port), "--address", "127.0.0.1",
         "--state-path", str(home / "state.pickle"), "--pidfile", str(pidfile), "--logdir", str(home / "log")],
        cwd=home, env=dict(os.environ, LUIGI_CONFIG_PATH=str(cfg)), check=True, timeout=60)
    deadline = time.monotonic() + 30
    while True:
        try:
            api(port, "ping", worker="test")
            break
        except OSError:
            assert time.monotonic() < deadline, "luigid did not start"
            time.sleep(0.2)
    pid = int(pidfile.read_text())
    yield {"port": port, "pid": pid, "history": home / "history.db"}
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "luigid did not stop"
        time.sleep(0.1)


@SLOW
def test_two_machines_one_luigid_each_layer_once(tmp_path, luigid):
    roots = synthetic_store(tmp_path / "root", images=5, base=40, unique=40)
    store = tmp_path / "shared-layer-store"
    port = str(luigid["port"])
    runs, machines = [], []
    for n in range(2):
        machine = tmp_path / f"machine{n}"
        for sub in ("work", "tmp", "home", "cache"):
            (machine / sub).mkdir(parents=True)
        work = machine / "work"
        images = [f'name = "img{i}"\ncontents = ["{r}"]\noutput = "out/img{i}.tar"' for i, r in enumerate(roots)]
        batch = write_batch(work / "batch.toml", f'store_root = "{tmp_path / "root"}"\ntag = "t"\n', images)
        cfg = work / "luigi.cfg"  # read from the working directory, as on a machine of its own
        cfg.write_text(f"[core]\nlocal_scheduler = false\n[nixlayer]\nlayer_store = {store}\nlayer_batches = 100\n"
                       "[retcode]\ntask_failed = 30\nscheduling_error = 35\nunhandled_exception = 40\n")
        env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), "HOME": str(machine / "home"),
               "XDG_CACHE_HOME": str(machine / "cache"), "TMPDIR": str(machine / "tmp"), "LANG": "C.UTF-8"}
        # Output to files, not pipes: each run may wait on the other (a layer it is building),
        # so one whose pipe nobody reads meanwhile would block both.
        with open(machine / "out.log", "w") as out, open(machine / "err.log", "w") as err:
            runs.append(subprocess.Popen(
                # The same command line on both (relative paths): still a report on each.
                ["luigi", "--module", "pipelines", "BuildImages", "--batch-file", batch.name, "--report",
                 "report.json", "--scheduler-host", "127.0.0.1", "--scheduler-port", port],
                cwd=work, env=env, stdout=out, stderr=err))
        machines.append(work)
    for run, work in zip(runs, machines):
        run.wait(timeout=300)
        assert run.returncode == 0, (work.parent / "err.log").read_text()[-5000:]
        assert "nixlayer: batch " in (work.parent / "out.log").read_text()

    # Each layer task ran exactly once across both runs: the layer records each run wrote are
    # disjoint and together are every layer of the batch.
    reports = [json.loads((m / "report.json").read_text()) for m in machines]
    built = [set(r["built_layers"]) for r in reports]
    distinct = reports[0]["totals"]["distinct_layers"]
    assert distinct == 40 + 5 * 41 + 5
    print("layers built per machine:", [len(b) for b in built])  # pytest -s shows the split
    # Both built layers (in 100 batches, the second machine gets some while the first is busy),
    # and both finished every image of their own: waiting on a layer the other was building
    # kept the worker polling luigid (CENTRAL_DEFAULTS) instead of exiting with it unbuilt.
    assert all(built)
    assert not built[0] & built[1]
    assert len(built[0] | built[1]) == distinct == verify_layer_store(store)
    for i in range(5):
        assert (machines[0] / "out" / f"img{i}.tar").read_bytes() == (machines[1] / "out" / f"img{i}.tar").read_bytes()
    assert [i["digest"] for i in reports[0]["images"]] == [i["digest"] for i in reports[1]["images"]]

    # The scheduler saw every layer task, done, with its progress and status message.
    done = api(luigid["port"], "task_list", status="DONE", upstream_status="", search="")
    # A batch of layers runs as one more task of the class, its batched parameter holding all
    # the members' values (a JSON list of store paths, a list of contents lists).
    layers = {tid: t for tid, t in done.items() if t["name"] in ("StorePathLayer", "CustomisationLayer")
              and not t["params"].get("store_path", "").startswith("[") and not t["params"].get("contents", "").startswith("[[")}
    assert len(layers) == distinct
    assert all(t["progress_percentage"] == 100 for t in layers.values())
    assert all("diff_id sha256:" in t["status_message"] for t in layers.values())
    assert {t["name"] for t in done.values()} >= {"BuildImages", "AssembleImage"}

    # Task history (SQLite): no customisation layer was handed out to run twice, alone or in a
    # batch (a batch is one task whose contents list its members' contents).
    with sqlite3.connect(luigid["history"]) as db:
        running = db.execute(
            "SELECT t.id, t.task_id FROM tasks t JOIN task_events e ON e.task_id = t.id"
            " WHERE e.event_name = 'RUNNING' AND t.name = 'CustomisationLayer'").fetchall()
        contents = [json.loads(value) for (value,) in db.execute(
            f"SELECT value FROM task_parameters WHERE name = 'contents' AND task_id IN ({','.join('?' * len(running))})",
            [row_id for row_id, _ in running])]
    assert len({task_id for _, task_id in running}) == len(running)
    members = [c for value in contents for c in (value if value and isinstance(value[0], list) else [value])]
    assert sorted(members) == sorted([root] for root in roots)


def test_an_unreachable_luigid_is_one_error_line(tmp_path):
    cfg = tmp_path / "luigi.cfg"
    cfg.write_text(f"[core]\nrpc-retry-attempts = 2\nrpc-retry-wait = 0\n[nixlayer]\nlayer_store = {tmp_path / 'store'}\n")
    port = free_port()  # nothing listens there
    run = subprocess.run(
        ["luigi", "--module", "pipelines", "BuildImage", "--name", "x", "--output", str(tmp_path / "x.tar"),
         "--scheduler-host", "127.0.0.1", "--scheduler-port", str(port)],
        cwd=REPO, env=dict(os.environ, LUIGI_CONFIG_PATH=str(cfg)), capture_output=True, text=True, timeout=120)
    assert run.returncode == 40
    # Only the error line: luigid is asked before the image is planned (no plan line); none of
    # Luigi's retries, framework error or warnings about the rpc-retry settings it names.
    assert run.stderr == (f"nixlayer: error: Errors (2 attempts) when connecting to remote scheduler "
                          f"'http://127.0.0.1:{port}': is luigid running there? ([core] rpc-retry-attempts and "
                          "rpc-retry-wait set how long luigi keeps trying)\n"), run.stderr
    assert not (tmp_path / "x.tar").exists()


def two_image_batch(tmp_path) -> Path:
    """A batch of two images of 10 shared and 6 own store paths (24 layers with their
    customisation layers), written to ``tmp_path/batch.toml``."""
    roots = synthetic_store(tmp_path / "root", images=2, base=10, unique=5)
    return write_batch(tmp_path / "batch.toml", f'store_root = "{tmp_path / "root"}"\ntag = "t"\n', [
        f'name = "img{i}"\ncontents = ["{r}"]\noutput = "out/img{i}.tar"' for i, r in enumerate(roots)])


def build_images(tmp_path, luigid, batch: Path, store: Path, n: int, **popen) -> subprocess.Popen:
    """``luigi --module pipelines BuildImages`` of ``batch`` into ``store`` through ``luigid``,
    started (run ``n``: its own luigi.cfg and report), waiting 20 s at most for others' work."""
    cfg = tmp_path / f"luigi{n}.cfg"
    cfg.write_text(f"[core]\nlocal_scheduler = false\n[nixlayer]\nlayer_store = {store}\nlayer_batches = 20\n"
                   "[worker]\nmax_keep_alive_idle_duration = 20 seconds\n")
    return subprocess.Popen(
        ["luigi", "--module", "pipelines", "BuildImages", "--batch-file", str(batch), "--report", f"r{n}.json",
         "--scheduler-host", "127.0.0.1", "--scheduler-port", str(luigid["port"])],
        cwd=tmp_path, env=dict(os.environ, LUIGI_CONFIG_PATH=str(cfg), PYTHONPATH=str(REPO)), **popen)


@SLOW
def test_the_same_batch_again_at_once_builds_and_finishes(tmp_path, luigid):
    """luigid remembers a finished batch of layers, with the worker that ran it, for ten minutes;
    a run handed the same batch soon after (here: the layer store emptied) must not have its work
    ignored and the batch handed out again, forever."""
    batch, store = two_image_batch(tmp_path), tmp_path / "store"
    for n in range(2):
        shutil.rmtree(store, ignore_errors=True)
        run = build_images(tmp_path, luigid, batch, store, n, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _, err = run.communicate(timeout=120)
        assert run.returncode == 0, err[-3000:]
        assert verify_layer_store(store) == 10 + 2 * 6 + 2


def test_two_layer_stores_on_one_luigid(tmp_path, luigid):
    """The layer store is part of every task's id: builds into two stores at once through one
    luigid each write all their layers (a layer done in one store is not done in the other)."""
    batch = two_image_batch(tmp_path)
    runs = []
    for n in range(2):
        with open(tmp_path / f"err{n}.log", "w") as err:  # a file: a waiting run must not block on a pipe
            runs.append(build_images(tmp_path, luigid, batch, tmp_path / f"store{n}", n,
                                     stdout=subprocess.DEVNULL, stderr=err))
    for n, run in enumerate(runs):
        run.wait(timeout=120)
        assert run.returncode == 0, (tmp_path / f"err{n}.log").read_text()[-3000:]
        assert verify_layer_store(tmp_path / f"store{n}") == 10 + 2 * 6 + 2


def test_a_layer_that_fails_on_its_own_says_so_on_the_dashboard(tmp_path, luigid, vectors_app):
    """A layer run alone (not in a batch) that fails: its row's status says it failed and why,
    as a batch member's does, not the "writing" it started with."""
    cfg = tmp_path / "luigi.cfg"
    cfg.write_text(f"[core]\nlocal_scheduler = false\n[nixlayer]\nlayer_store = {tmp_path / 'store'}\n")
    run = subprocess.run(
        ["luigi", "--module", "pipelines", "BuildImage", "--name", "x", "--contents", json.dumps([vectors_app]),
         "--extra-commands", "echo no >&2; exit 3", "--output", str(tmp_path / "x.tar"),
         "--scheduler-host", "127.0.0.1", "--scheduler-port", str(luigid["port"])],
        cwd=REPO, env=dict(os.environ, LUIGI_CONFIG_PATH=str(cfg)), capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and run.stderr.splitlines()[-1].startswith("nixlayer: error: "), run.stderr
    failed = api(luigid["port"], "task_list", status="FAILED", upstream_status="", search="CustomisationLayer")
    assert [t["status_message"] for t in failed.values()] == ["failed: " + run.stderr.splitlines()[-1][len("nixlayer: error: "):]]
