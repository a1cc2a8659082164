"""Shared fixtures: the vectors closure built with real Nix, and its expected values.

A missing tool (nix-build, podman, skopeo, umoci, docker-registry) makes a test fail, never
skip: CI installs them all.

``slow`` (pyproject.toml) marks the expensive end-to-end tests, and the further cases of a list of
like ones: the fast suite (``pytest tests -m "not slow"``) leaves them out, CI runs every test.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import luigi
import luigi.configuration
import pytest
from luigi.execution_summary import _summary_dict

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parent.parent
# Subprocesses (luigi, python -m nixlayer) import this checkout, whichever one pip installed.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))


SLOW = pytest.mark.slow


def first_fast(cases: list, keep: int = 1) -> list:
    """``cases`` for ``pytest.mark.parametrize``, all but the first ``keep`` marked slow: the fast
    suite runs a representative of a list of like cases (each its own build or process), CI all.
    A tuple is the values of several argument names."""
    return [case if i < keep else pytest.param(*(case if isinstance(case, tuple) else (case,)), marks=SLOW)
            for i, case in enumerate(cases)]


@pytest.fixture(scope="session", autouse=True)
def podman_storage(tmp_path_factory):
    """A podman image store of this test run's own (CONTAINERS_STORAGE_CONF, read by every
    podman the tests start): the tests neither see nor change the machine's podman images, and
    test runs at once on one machine do not remove each other's (reproducible images share
    their IDs)."""
    root = tmp_path_factory.mktemp("podman")
    conf = root / "storage.conf"
    conf.write_text(f'[storage]\ndriver = "overlay"\ngraphroot = "{root}/graph"\nrunroot = "{root}/run"\n')
    os.environ["CONTAINERS_STORAGE_CONF"] = str(conf)
    yield
    subprocess.run(["podman", "rmi", "--all", "--force"], capture_output=True, timeout=120)
    del os.environ["CONTAINERS_STORAGE_CONF"]


@pytest.fixture(scope="session")
def vectors() -> dict:
    """The expected values nixpkgs computes for the closure of ``fixtures/vectors.nix``."""
    return json.loads((FIXTURES / "vectors.json").read_text())


def nix_build(expr: Path, attr: str) -> str:
    """Build ``attr`` of the Nix file ``expr`` with real Nix and return its store path."""
    out = subprocess.run(
        ["nix-build", str(expr), "-A", attr, "--no-out-link"],
        check=True, capture_output=True, text=True,
    )
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def vectors_app(vectors) -> str:
    """The store path of ``vectors.nix -A app`` (its whole closure is built and valid)."""
    path = nix_build(FIXTURES / "vectors.nix", "app")
    assert path == vectors["store_paths"]["app"]
    return path


@pytest.fixture
def layer_store(tmp_path):
    """A fresh layer store for in-process builds, set in Luigi's configuration."""
    config = luigi.configuration.get_config()
    if not config.has_section("nixlayer"):
        config.add_section("nixlayer")
    store = tmp_path / "layer-store"
    config.set("nixlayer", "layer_store", str(store))
    yield store
    config.remove_option("nixlayer", "layer_store")


def run_luigi(task: luigi.Task, workers: int = 1) -> dict:
    """Run ``task`` in-process with the local scheduler; return Luigi's record of the run.

    ``ran``: sorted families of the tasks that ran; ``ran_tasks``: those tasks; ``worker``.
    Fails the test if a task failed or could not be scheduled.
    """
    result = luigi.build([task], local_scheduler=True, detailed_summary=True, workers=workers)
    summary = _summary_dict(result.worker)
    assert not summary["failed"] and not summary["scheduling_error"], result.summary_text
    return {
        "ran": sorted(t.task_family for t in summary["completed"]),
        "ran_tasks": list(summary["completed"]),
        "worker": result.worker,
    }


def run_pipelines(args: list[str], store: Path, cwd: Path = REPO, path: str | None = None,
                  stdout: Path | None = None, cfg: str = "") -> subprocess.CompletedProcess:
    """Run ``luigi --module pipelines ARGS`` as a user would (the repository's luigi.cfg when
    run from it), with ``store`` as the layer store; ``path`` replaces $PATH; ``stdout``: a
    file that takes standard output (an image written to ``-``); ``cfg``: more of luigi.cfg."""
    config = store.parent / f"{store.name}-luigi.cfg"
    config.write_text(f"[nixlayer]\nlayer_store = {store}\n{cfg}")
    env = dict(os.environ, LUIGI_CONFIG_PATH=str(config), **({"PATH": path} if path else {}))
    if stdout is None:
        return subprocess.run(["luigi", "--module", "pipelines", *args], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=300)
    with open(stdout, "wb") as out:
        return subprocess.run(["luigi", "--module", "pipelines", *args], cwd=cwd, env=env,
                              stdout=out, stderr=subprocess.PIPE, text=True, timeout=300)
