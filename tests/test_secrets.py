"""Secrets in user input (issue 18, class 6): a push target with a user name and password in it
(``docker://user:password@host/...``) is refused with one line that shows it without them; the
password is in no message, no log line (Luigi's, at DEBUG too), nothing luigid's dashboard or
task history holds, whichever way the target came (``--push``, ``--target``, a batch file)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import REPO, SLOW, nix_build, run_pipelines
from nixlayer.errors import NixlayerError
from nixlayer.registry import parse_push_target
from test_luigid import api, luigid  # noqa: F401 - a real luigid
from test_user_errors import error_lines

SECRET = "s3cr3t-Pa55"
LINE = ("nixlayer: error: push target {shown} has a user name or password in it: nixlayer takes credentials only"
        " from an auth file (`podman login HOST` writes one), never from an image reference")


@pytest.fixture(scope="module")
def hello() -> str:
    return nix_build(REPO / "examples" / "hello.nix", "hello")


@pytest.mark.parametrize("target, shown", [
    (f"docker://user:{SECRET}@localhost:5000/team/app:1", "docker://***@localhost:5000/team/app:1"),
    (f"user:{SECRET}@registry.example/app", "***@registry.example/app"),
    (f"docker://user:{SECRET}/x@localhost:5000/app:1", "docker://***@localhost:5000/app:1"),  # a / in it
    (f"docker://user:{SECRET}@x@localhost:5000/app:1", "docker://***@localhost:5000/app:1"),  # an @ in it
    (f"docker://{SECRET}@localhost:5000", "docker://***@localhost:5000"),  # a token, no repository
    (f"docker://user:{SECRET}@localhost:5000/app@sha256:{'a' * 64}", f"docker://***@localhost:5000/app@sha256:{'a' * 64}"),
])
def test_a_target_with_credentials_is_refused_without_showing_them(target, shown):
    with pytest.raises(NixlayerError) as error:
        parse_push_target(target)
    assert f"nixlayer: error: {error.value}" == LINE.format(shown=shown)


@SLOW
def test_no_message_log_or_dashboard_shows_the_password(tmp_path, luigid, hello):  # noqa: F811
    target = f"docker://user:{SECRET}@127.0.0.1:5000/team/app:1"
    cfg = f"[core]\nlocal_scheduler = false\nscheduler_host = 127.0.0.1\nscheduler_port = {luigid['port']}\n"
    batch = tmp_path / "batch.toml"
    batch.write_text(f'[[image]]\nname = "app"\ncontents = ["{hello}"]\npush = "{target}"\n')
    runs = {
        "--push": ["BuildImage", "--name", "app", "--contents", json.dumps([hello]), "--push", target],
        "--target": ["PushImage", "--name", "app", "--contents", json.dumps([hello]), "--target", target],
        "batch": ["BuildImages", "--batch-file", str(batch)],
    }
    for how, args in runs.items():
        run = run_pipelines([*args, "--log-level", "DEBUG"], tmp_path / "store", cwd=tmp_path, cfg=cfg)
        assert run.returncode != 0, how
        assert SECRET not in run.stdout + run.stderr, how
        line = LINE.format(shown="docker://***@127.0.0.1:5000/team/app:1").removeprefix("nixlayer: error: ")
        assert [error.endswith(line) for error in error_lines(run)] == [True], (how, run.stderr)
    tasks = api(luigid["port"], "task_list", status="", upstream_status="", search="")
    assert SECRET not in json.dumps(tasks)
    home = luigid["history"].parent
    for path in [p for p in home.rglob("*") if p.is_file()]:
        assert SECRET.encode() not in path.read_bytes(), path
    assert not (tmp_path / "store").exists() or SECRET.encode() not in b"".join(
        p.read_bytes() for p in (tmp_path / "store").rglob("*") if p.is_file())
