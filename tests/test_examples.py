"""The scheduled-rebuild examples match the documented Nix setup: single-user Nix as root, a
root-owned store, no nix-daemon; and what the example batch writes is ignored by git."""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import REPO

EXAMPLES = REPO / "examples"


def unit_settings(path: Path) -> dict[str, list[str]]:
    """KEY -> values of a systemd unit file (continuation lines joined)."""
    settings: dict[str, list[str]] = {}
    text = path.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_service_runs_as_root_without_nix_daemon_and_finds_luigi_and_nix():
    unit = unit_settings(EXAMPLES / "nixlayer-rebuild.service")
    assert unit.get("User", ["root"]) == ["root"]
    assert not any("nix-daemon" in v for key in ("Wants", "After", "Requires") for v in unit.get(key, []))
    command = unit["ExecStart"][0].split()
    assert command[0] == "luigi" and command[1:4] == ["--module", "pipelines", "BuildImages"]
    report = command[command.index("--report") + 1]  # each run writes it, or the unit fails
    assert unit["ExecStartPre"] == [f"rm -f {report}"] and unit["ExecStartPost"] == [f"test -s {report}"]
    assert unit["ExecStopPost"][0].split()[:4] == ["python3", "-m", "nixlayer", "gc"]  # after each rebuild
    path = next(v.split("=", 1)[1] for v in unit["Environment"] if v.startswith("PATH="))
    assert {"/usr/bin", "/root/.nix-profile/bin"} <= set(path.split(":"))


def test_cron_line_runs_as_root_with_a_path_holding_luigi_and_nix():
    lines = [l for l in (EXAMPLES / "nixlayer-rebuild.cron").read_text().splitlines() if l and not l.startswith("#")]
    path = next(l.split("=", 1)[1] for l in lines if l.startswith("PATH="))
    assert {"/usr/local/bin", "/usr/bin", "/root/.nix-profile/bin"} <= set(path.split(":"))
    job, gc = [l for l in lines if not l.startswith("PATH=")]
    assert job.split()[:6] == ["0", "3", "*", "*", "*", "root"]
    assert "luigi --module pipelines BuildImages" in job
    assert "rm -f report.json; luigi " in job and "--report report.json && test -s report.json ||" in job
    assert "python3 -m nixlayer gc --unused-days" in gc
    assert "flock -n rebuild.lock" in job and "flock -w 21600 rebuild.lock" in gc  # never at the same time


def test_example_batch_outputs_are_ignored_by_git():
    assert subprocess.run(["git", "check-ignore", "-q", "examples/out/hello.tar"], cwd=REPO).returncode == 0
    assert subprocess.run(["git", "check-ignore", "-q", "examples/batch.toml"], cwd=REPO).returncode == 1
