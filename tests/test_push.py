"""Pushing with BuildImage --push and PushImage to a real registry on loopback."""

from __future__ import annotations

import json
import re
import subprocess

from conftest import FIXTURES, REPO, SLOW, nix_build, run_luigi, run_pipelines
from pipelines import BuildImage, PushImage
from registry_fixture import registry  # noqa: F401 - the fixture
from test_build import PODMAN_RUN


def inc(version: str) -> str:
    return subprocess.run(
        ["nix-build", str(FIXTURES / "incremental.nix"), "--argstr", "version", version, "-A", "tool", "--no-out-link"],
        check=True, capture_output=True, text=True).stdout.strip()


def inspect(host: str, ref: str) -> dict:
    out = subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{host}/{ref}"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def test_pushed_image_pulls_and_runs(registry, layer_store):
    hello = nix_build(REPO / "examples" / "hello.nix", "hello")
    busybox = nix_build(REPO / "examples" / "hello.nix", "busybox")
    ref = f"{registry.host}/nixlayer-test/hello:pushed"
    run_luigi(BuildImage(name="hello", contents=[hello, busybox], config='{"Cmd": ["/bin/hello"]}',
                         push=f"docker://{ref}"))
    shown = inspect(registry.host, "nixlayer-test/hello:pushed")
    assert len(shown["Layers"]) == 4  # hello, busybox, greeting, customisation
    manifest = _raw_manifest(registry.host, "nixlayer-test/hello:pushed")
    assert [layer["mediaType"] for layer in manifest["layers"]] == ["application/vnd.oci.image.layer.v1.tar+gzip"] * 4
    subprocess.run(["podman", "pull", "--tls-verify=false", ref], check=True, capture_output=True)
    try:
        out = subprocess.run([*PODMAN_RUN, ref], capture_output=True, text=True, timeout=120)
        assert out.stdout == "Hello from a nixlayer image!\n", out.stderr
    finally:
        subprocess.run(["podman", "rmi", "-f", ref], capture_output=True)


@SLOW
def test_update_uploads_only_changed_layers_and_second_repository_mounts(registry, layer_store):
    app = nix_build(FIXTURES / "incremental.nix", "app")
    params = dict(name="inc", config='{"Cmd": ["/bin/app"]}')
    first = run_luigi(PushImage(contents=[app, inc("1")], target=f"{registry.host}/inc/app:v1", **params))
    assert first["ran"].count("StorePathLayer") == 4
    uploaded = registry.blob_activity("inc/app")["uploaded"]
    assert len(uploaded) == 8  # 4 store-path layers, customisation layer, config; the SBOM and its empty config

    mark = registry.mark()
    again = run_luigi(PushImage(contents=[app, inc("1")], target=f"{registry.host}/inc/app:v1", **params))
    assert again["ran"] == []
    assert registry.blob_activity("inc/app", mark)["uploaded"] == []

    mark = registry.mark()
    update = run_luigi(PushImage(contents=[app, inc("2")], target=f"{registry.host}/inc/app:v2", **params))
    assert update["ran"] == ["CustomisationLayer", "PushImage", "PushToRegistry", "StorePathLayer"]
    activity = registry.blob_activity("inc/app", mark)
    manifest = inspect(registry.host, "inc/app:v2")
    assert len(activity["uploaded"]) == 4  # the new tool layer, customisation layer, config, the new SBOM
    assert len(set(activity["uploaded"]) - set(manifest["Layers"]) - {_config_digest(registry.host, "inc/app:v2")}) == 1

    mark = registry.mark()
    run_luigi(PushImage(contents=[app, inc("2")], target=f"{registry.host}/other/app:v2", **params))
    other = registry.blob_activity("other/app", mark)
    assert other["uploaded"] == []  # layers and config are mounted from inc/app
    assert set(other["mounted"]) >= set(manifest["Layers"])
    assert inspect(registry.host, "other/app:v2")["Digest"] == manifest["Digest"]


def _raw_manifest(host: str, ref: str) -> dict:
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{host}/{ref}"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(raw)


def _config_digest(host: str, ref: str) -> str:
    return _raw_manifest(host, ref)["config"]["digest"]


def test_bad_push_target_is_one_line_error(tmp_path):
    run = run_pipelines(["PushImage", "--name", "x", "--target", "NotARegistry/x"], tmp_path / "store")
    assert run.returncode != 0
    errors = [line for line in run.stderr.splitlines() if line.startswith("nixlayer: error:")]
    assert len(errors) == 1 and "push target" in errors[0]


@SLOW
def test_unreachable_registry_is_one_line_error_and_no_tag(tmp_path, vectors_app):
    from registry_fixture import free_port
    target = f"docker://127.0.0.1:{free_port()}/team/vec:1"
    run = run_pipelines(["PushImage", "--name", "vec", "--contents", json.dumps([vectors_app]), "--target", target],
                        tmp_path / "store")
    assert run.returncode != 0
    errors = [line for line in run.stderr.splitlines() if line.startswith("nixlayer: error:")]
    assert len(errors) == 1 and "cannot reach registry 127.0.0.1" in errors[0], run.stderr
    assert "Traceback" not in run.stderr


@SLOW
def test_a_tag_moved_by_another_tool_is_pushed_again(registry, layer_store):
    app = nix_build(FIXTURES / "incremental.nix", "app")
    one = dict(name="inc", contents=[app, inc("1")], target=f"{registry.host}/moved/app:v1")
    run_luigi(PushImage(**one))
    first = inspect(registry.host, "moved/app:v1")["Digest"]
    run_luigi(PushImage(name="inc", contents=[app, inc("2")], target=f"{registry.host}/moved/app:v2"))
    subprocess.run(["skopeo", "copy", "--src-tls-verify=false", "--dest-tls-verify=false", "--preserve-digests",
                    f"docker://{registry.host}/moved/app:v2", f"docker://{registry.host}/moved/app:v1"],
                   check=True, capture_output=True)
    assert inspect(registry.host, "moved/app:v1")["Digest"] != first
    again = run_luigi(PushImage(**one))
    assert again["ran"] == ["PushImage", "PushToRegistry"]  # nothing to build, the tag to restore
    assert inspect(registry.host, "moved/app:v1")["Digest"] == first
    assert run_luigi(PushImage(**one))["ran"] == []


@SLOW
def test_a_push_prints_the_plan_line_and_one_summary_line(tmp_path, registry, vectors_app):
    target = f"docker://{registry.host}/console/vec:1"
    args = ["PushImage", "--name", "vec", "--contents", json.dumps([vectors_app]), "--target", target]
    run = run_pipelines(args, tmp_path / "store")
    assert run.returncode == 0, run.stderr
    plan, summary = run.stderr.splitlines()
    assert plan.startswith("nixlayer: vec:"), run.stderr
    # 9 blobs: 6 layers, the config, the SBOM and its (empty) config
    assert re.fullmatch(rf"nixlayer: pushed {re.escape(target)} \(9 blobs uploaded, [\d.]+ kB; 0 mounted, 0 already"
                        r" there\): vec:\S+ sha256:[0-9a-f]{64}; layers: 6 built, 0 reused; .* written in .*", summary), summary
    again = run_pipelines(args, tmp_path / "store")
    assert again.stderr.splitlines()[-1].startswith(f"nixlayer: {target} is up to date: vec:"), again.stderr
