"""The benchmarks still run: each one on a tiny input (figures are not checked here; the
README's figures come from full runs). bench_build.py and bench_layering.py need minutes of
Nix builds on a fresh machine and are left to full runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SLOW

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.parametrize("script, args, expect", [
    ("bench_popularity.py", ["--paths", "300", "--baseline-paths", "300"], "(same order)"),
    ("bench_batch.py", ["--images", "2", "--base", "2", "--base-mib", "1", "--unique", "2"], "per task"),
    pytest.param("bench_layers.py", ["--megabytes", "5", "--repeat", "1", "--big-gib", "1"], "floor/this", marks=SLOW),
    ("bench_push.py", ["--layers", "2", "--layer-mb", "1"], "update bytes / image bytes"),
])
def test_benchmark_runs(script, args, expect):
    run = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert expect in run.stdout
