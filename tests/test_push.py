"""Pushing with BuildImage --push and PushImage to a real registry on loopback."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import tarfile

from conftest import FIXTURES, REPO, SLOW, nix_build, run_luigi, run_pipelines
from pipelines import BuildImage, PushImage
from registry_fixture import registry  # noqa: F401 - the fixture
from test_batch import write_batch
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


def _image_id(archive) -> str:
    """The image ID (config digest) of a docker-archive."""
    with tarfile.open(archive) as tar:
        config = json.load(tar.extractfile("manifest.json"))[0]["Config"]
        return "sha256:" + hashlib.sha256(tar.extractfile(config).read()).hexdigest()


def test_output_and_push_the_summary_names_what_was_written_and_what_was_pushed(tmp_path, registry, vectors_app):
    """BuildImage --output and --push: the summary line gives the archive's image ID and the
    pushed manifest's digest, each beside where it went, and counts the layers of both (the
    output's tars and the push's gzip blobs)."""
    target, out = f"docker://{registry.host}/both/vec:1", tmp_path / "vec.tar"
    args = ["BuildImage", "--name", "vec", "--tag", "1", "--contents", json.dumps([vectors_app]),
            "--output", str(out), "--push", target]
    run = run_pipelines(args, tmp_path / "store")
    assert run.returncode == 0, run.stderr
    image_id, manifest = _image_id(out), inspect(registry.host, "both/vec:1")["Digest"]
    assert image_id != manifest
    plan, summary = run.stderr.splitlines()
    assert re.fullmatch(
        rf"nixlayer: wrote docker-archive {re.escape(str(out))}: vec:1 {image_id}; pushed {re.escape(target)} \(9 blobs"
        rf" uploaded, [\d.]+ kB; 0 mounted, 0 already there\): vec:1 {manifest}; layers: 12 built, 0 reused;"
        r" [\d.]+ kB written in [\d.]+ s", summary), summary
    again = run_pipelines(args, tmp_path / "store").stderr.splitlines()[-1]
    assert re.fullmatch(
        rf"nixlayer: docker-archive {re.escape(str(out))} is up to date: vec:1 {image_id}; {re.escape(target)} is up"
        rf" to date: vec:1 {manifest}; layers: 0 built, 12 reused; 0 B written in [\d.]+ s", again), again


def test_a_batch_with_pushes_says_pushed_and_counts_each(tmp_path, registry, vectors_app):
    """A batch of an image pushed, one written and one both: each line says what happened to
    it, the total counts images written and pushed apart; a rebuild changes nothing."""
    push = f"docker://{registry.host}/batch"
    batch = write_batch(tmp_path / "batch.toml", f'tag = "1"\ncontents = ["{vectors_app}"]\n', [
        f'name = "p"\npush = "{push}/p:1"',
        'name = "w"\noutput = "w.tar"',
        f'name = "b"\noutput = "b.tar"\npush = "{push}/b:1"',
    ])
    args = ["BuildImages", "--batch-file", str(batch), "--report", str(tmp_path / "report.json")]
    run = run_pipelines(args, tmp_path / "store")
    assert run.returncode == 0, run.stderr
    p, b = (inspect(registry.host, f"batch/{name}:1")["Digest"] for name in ("p", "b"))
    w_id, b_id = _image_id(tmp_path / "w.tar"), _image_id(tmp_path / "b.tar")
    lines = run.stdout.splitlines()
    size = r"[\d.]+ [kM]?B"
    expected = [
        rf"nixlayer: batch {re.escape(str(batch))}: 3 images in [\d.]+ s",
        rf"  p:1 {p}  layers: 6 built, 0 reused; {size} written; pushed",
        rf"  w:1 {w_id}  layers: 6 built, 0 reused; {size} written",
        rf"  b:1 {b_id}  layers: 12 built, 0 reused; {size} written; pushed {b}",
        rf"  total: 12 distinct layers, 12 built, 0 reused; 2 images written, 2 pushed; {size} written",
    ]
    assert len(lines) == len(expected) and all(re.fullmatch(e, line) for e, line in zip(expected, lines)), lines
    report = json.loads((tmp_path / "report.json").read_text())
    assert [(i["image_written"], i["image_pushed"], i["push_digest"]) for i in report["images"]] == [
        (False, True, p), (True, False, None), (True, True, b)]
    assert (report["totals"]["images_written"], report["totals"]["images_pushed"]) == (2, 2)
    lines = run_pipelines(args, tmp_path / "store").stdout.splitlines()
    expected = [
        expected[0],
        rf"  p:1 {p}  layers: 0 built, 6 reused; 0 B written \(image unchanged\)",
        rf"  w:1 {w_id}  layers: 0 built, 6 reused; 0 B written \(image unchanged\)",
        rf"  b:1 {b_id}  layers: 0 built, 12 reused; 0 B written \(image unchanged\)",
        r"  total: 12 distinct layers, 0 built, 12 reused; 0 images written, 0 pushed; 0 B written",
    ]
    assert len(lines) == len(expected) and all(re.fullmatch(e, line) for e, line in zip(expected, lines)), lines


def _errors(run: subprocess.CompletedProcess) -> list[str]:
    return [line for line in run.stderr.splitlines() if line.startswith("nixlayer: error:")]


def test_a_target_tag_and_another_tag_are_one_error_and_a_target_without_one_takes_the_tag(tmp_path, registry,
                                                                                             vectors_app):
    """The tag pushed is the target's; a target without one takes the image's tag (else latest);
    a --tag that differs from the target's is one line before any work, in PushImage,
    BuildImage --push and a batch alike; an equal one is fine."""
    repo = f"docker://{registry.host}/tags/vec"
    image = ["--name", "vec", "--contents", json.dumps([vectors_app])]
    store = tmp_path / "store"
    for args in (["PushImage", *image, "--tag", "2", "--target", f"{repo}:1"],
                 ["BuildImage", *image, "--tag", "2", "--push", f"{repo}:1", "--output", str(tmp_path / "v.tar")]):
        run = run_pipelines(args, store)
        assert run.returncode == 35 and _errors(run) == [
            f"nixlayer: error: --tag 2 and push target {repo}:1 name two tags: give the tag once, in --tag or in"
            " the target (a target without a tag takes --tag)"], run.stderr
        assert "Traceback" not in run.stderr and not (tmp_path / "v.tar").exists()
    batch = write_batch(tmp_path / "batch.toml", 'tag = "2"\n', [
        f'name = "vec"\ncontents = ["{vectors_app}"]\npush = "{repo}:1"'])
    run = run_pipelines(["BuildImages", "--batch-file", str(batch)], store)
    assert run.returncode == 35 and _errors(run) == [
        f"nixlayer: error: {batch}: image 1 (vec): --tag 2 and push target {repo}:1 name two tags: give the tag"
        " once, in --tag or in the target (a target without a tag takes --tag)"], run.stderr
    assert not (store / "layers").exists()
    refused = subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"{repo}:1"], capture_output=True, text=True)
    assert refused.returncode != 0 and "manifest unknown" in refused.stderr, refused.stderr

    run = run_pipelines(["PushImage", *image, "--tag", "1", "--target", f"{repo}:1"], store)
    assert run.returncode == 0 and run.stderr.splitlines()[-1].startswith(f"nixlayer: pushed {repo}:1 ("), run.stderr
    run = run_pipelines(["PushImage", *image, "--tag", "3", "--target", repo], store)
    assert run.returncode == 0 and run.stderr.splitlines()[-1].startswith(f"nixlayer: pushed {repo}:3 ("), run.stderr
    assert inspect(registry.host, "tags/vec:3")["Digest"] == inspect(registry.host, "tags/vec:1")["Digest"]
    run = run_pipelines(["PushImage", *image, "--target", repo], store)
    assert run.returncode == 0 and run.stderr.splitlines()[-1].startswith(f"nixlayer: pushed {repo}:latest ("), run.stderr

    # The plan command finds a push by the same rule: a target without a tag takes --tag.
    def reasons(*options: str) -> set[str]:
        plan = subprocess.run(["python3", "-m", "nixlayer", "plan", "--json", "--layer-store", str(store), "--name",
                               "vec", "--push", repo, *options, vectors_app], cwd=REPO, capture_output=True, text=True)
        assert plan.returncode == 0, plan.stderr
        return {layer["reason"] for layer in json.loads(plan.stdout)["layers"]}

    assert reasons("--tag", "3") == reasons() == {"stable: kept"}
    assert reasons("--tag", "9") == {"stable: first build, grouped by what changes together"}


def test_a_target_tag_wins_over_a_specs_tag(tmp_path, registry):
    """A spec's tag names the image as an archive's own tag does for skopeo copy: a target with
    its own tag pushes there (the README's recipe); without one, the spec's tag is pushed."""
    spec = nix_build(REPO / "examples" / "hello-image.nix", "")  # tag = "latest"
    repo = f"docker://{registry.host}/spec/hello"
    for target, pushed in ((f"{repo}:1", f"{repo}:1"), (repo, f"{repo}:latest")):
        run = run_pipelines(["PushImage", "--spec", spec, "--target", target], tmp_path / "store")
        assert run.returncode == 0, run.stderr
        assert run.stderr.splitlines()[-1].startswith(f"nixlayer: pushed {pushed} ("), run.stderr


def test_an_image_of_a_batch_that_fails_is_named_in_its_error_line(tmp_path, registry, vectors_app):
    """A batch whose second image's registry cannot be reached: the others are written, and the
    one error line names the image as the batch file does (its entry), exit 30."""
    from registry_fixture import free_port
    port = free_port()
    batch = write_batch(tmp_path / "batch.toml", f'tag = "1"\ncontents = ["{vectors_app}"]\n', [
        'name = "good"\noutput = "good.tar"',
        f'name = "bad"\npush = "docker://127.0.0.1:{port}/x/bad:1"',
    ])
    run = run_pipelines(["BuildImages", "--batch-file", str(batch), "--report", str(tmp_path / "r.json")],
                        tmp_path / "store")
    assert run.returncode == 30 and _errors(run) == [
        f"nixlayer: error: {batch}: image 2 (bad): cannot reach registry 127.0.0.1:{port} (repository x/bad), asking for"
        " its API version: connection refused after 5 tries; is a registry listening there? Start it, or correct the"
        " push target"], run.stderr
    assert (tmp_path / "good.tar").exists() and not (tmp_path / "r.json").exists()
