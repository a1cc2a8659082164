"""Shared fixtures: the vectors closure built with real Nix, and its expected values.

A missing tool (nix-build, podman, skopeo, umoci, docker-registry) makes a test fail, never
skip: CI installs them all.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


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
