"""Base images (--from-image, the Nix library's fromImage): a small base made by nixlayer itself
(a static busybox, an Env and a WorkingDir), read from a docker-archive, an OCI layout, an
oci-archive, a registry (through an index) and a spec, run in podman."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import zstandard

from conftest import REPO, SLOW, first_fast, nix_build, run_pipelines
from nixlayer.__main__ import main
from nixlayer.base_image import inherit_config, read_base_image
from nixlayer.errors import NixlayerError
from nixlayer.index import Platform
from nixlayer.layerstore import LayerStore
from nixlayer.mediatypes import MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST
from pipelines import BuildImage
from tasks import console
from registry_fixture import AUTH_PASSWORD, AUTH_USER, FaultProxy, auth_registry, registry  # noqa: F401 - fixtures
from test_batch import run_batch_cli, write_batch
from test_registry import write_auth
from test_build import PODMAN_RUN

HELLO = REPO / "examples" / "hello.nix"
BASE_CONFIG = {"Env": ["PATH=/bin", "GREETING=base"], "WorkingDir": "/srv", "Cmd": ["/bin/sh"], "User": "0"}
# The app's program is the base's shell: its Env (GREETING, PATH) and WorkingDir come from the base.
APP_CONFIG = {"Env": ["EXTRA=app"], "Cmd": ["/bin/sh", "-c", "cat /share/hello/greeting.txt; echo $GREETING $EXTRA; pwd"]}
APP_OUTPUT = "Hello from a nixlayer image!\nbase app\n/srv\n"


def skopeo(*args: str) -> str:
    return subprocess.run(["skopeo", *args], check=True, capture_output=True, text=True).stdout


def inspect(ref: str, *flags: str) -> dict:
    return json.loads(skopeo("inspect", "--tls-verify=false", *flags, ref) if ref.startswith("docker://")
                      else skopeo("inspect", *flags, ref))


def one_error(run: subprocess.CompletedProcess) -> str:
    errors = [line for line in run.stderr.splitlines() if line.startswith("nixlayer: error:")]
    assert run.returncode != 0 and len(errors) == 1 and "Traceback" not in run.stderr, run.stderr
    return errors[0]


@pytest.fixture(scope="module")
def base(tmp_path_factory, registry) -> dict:
    """The base image in every place a base is read from: ``archive`` (docker-archive),
    ``layout`` (oci:DIR:TAG, gzip layers), ``oci_archive``, ``registry`` (an index of
    linux/arm64 and linux/amd64 images, the arm64 one first) and ``arm_only`` (an OCI layout
    tag naming an index of linux/arm64 alone); ``diff_ids`` and ``history`` of the base."""
    root = tmp_path_factory.mktemp("base")
    busybox = nix_build(HELLO, "busybox")
    run = run_pipelines(["BuildImage", "--name", "base", "--tag", "1", "--contents", json.dumps([busybox]),
                         "--config", json.dumps(BASE_CONFIG), "--output", str(root / "base.tar")], root / "store")
    assert run.returncode == 0, run.stderr
    layout = root / "layout"
    skopeo("copy", f"docker-archive:{root / 'base.tar'}", f"oci:{layout}:b1")
    skopeo("copy", f"docker-archive:{root / 'base.tar'}", f"oci-archive:{root / 'base.oci.tar'}:b1")
    add_index(layout, "multi", ["arm64", "amd64"])
    add_index(layout, "arm-only", ["arm64"])
    skopeo("copy", "--all", "--dest-tls-verify=false", f"oci:{layout}:multi", f"docker://{registry.host}/team/base:1")
    config = inspect(f"docker-archive:{root / 'base.tar'}", "--config")
    return {
        "root": root, "archive": f"docker-archive:{root / 'base.tar'}", "layout": f"oci:{layout}:b1",
        "oci_archive": f"oci-archive:{root / 'base.oci.tar'}", "registry": f"docker://{registry.host}/team/base:1",
        "arm_only": f"oci:{layout}:arm-only", "diff_ids": config["rootfs"]["diff_ids"], "history": config["history"],
        "layout_layers": json.loads(skopeo("inspect", "--raw", f"oci:{layout}:b1"))["layers"],
    }


def add_index(layout: Path, tag: str, architectures: list[str]) -> None:
    """Tag in ``layout`` an OCI image index of the image ``b1`` for each of ``architectures``
    (``arm64``, or ``arm/v7`` with a variant; its image config's architecture and variant
    changed: a real image of that platform, same layers)."""
    index = json.loads((layout / "index.json").read_text())
    entry = next(m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == "b1")

    def blob(data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (layout / "blobs" / "sha256" / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    manifest = json.loads((layout / "blobs" / "sha256" / entry["digest"].split(":")[1]).read_bytes())
    config = json.loads((layout / "blobs" / "sha256" / manifest["config"]["digest"].split(":")[1]).read_bytes())
    entries = []
    for name in architectures:  # an architecture, or architecture/variant
        platform = dict(zip(("architecture", "variant"), name.split("/")))
        manifest["config"].update(blob(json.dumps({**config, **platform}).encode()))
        entries.append({"mediaType": MEDIA_TYPE_OCI_MANIFEST, **blob(json.dumps(manifest).encode()),
                        "platform": {"os": "linux", **platform}})
    data = json.dumps({"schemaVersion": 2, "mediaType": MEDIA_TYPE_OCI_INDEX, "manifests": entries}).encode()
    index["manifests"].append({"mediaType": MEDIA_TYPE_OCI_INDEX, **blob(data),
                               "annotations": {"org.opencontainers.image.ref.name": tag}})
    (layout / "index.json").write_text(json.dumps(index))


def build_app(tmp_path: Path, store: Path, source: str, *extra: str, output: str | None = "app.tar") -> subprocess.CompletedProcess:
    """Build the app on the base ``source``, written to ``output`` in ``tmp_path`` (None: no output)."""
    greeting = nix_build(HELLO, "greeting")
    return run_pipelines(["BuildImage", "--name", "app", "--tag", "1", "--from-image", source,
                          "--contents", json.dumps([greeting]), "--config", json.dumps(APP_CONFIG),
                          *(["--output", str(tmp_path / output)] if output else []), *extra], store)


@pytest.fixture(scope="module")
def on_archive(tmp_path_factory, base) -> Path:
    """The app built on the docker-archive base (a layer store of its own), once it has run in
    podman with the base's Env and WorkingDir: an image on this base is these bytes, wherever the
    base is read from (a docker-archive file)."""
    root = tmp_path_factory.mktemp("on-archive")
    run = build_app(root, root / "store", base["archive"])
    assert run.returncode == 0, run.stderr
    subprocess.run(["podman", "load", "-i", str(root / "app.tar")], check=True, capture_output=True)
    try:
        out = subprocess.run([*PODMAN_RUN, "localhost/app:1"], capture_output=True, text=True, timeout=120)
        assert out.stdout == APP_OUTPUT, out.stderr
    finally:
        subprocess.run(["podman", "rmi", "-f", "localhost/app:1"], capture_output=True)
    return root / "app.tar"


@pytest.mark.parametrize("where", first_fast(["archive", "layout", "oci_archive", "registry"]))
def test_an_image_on_a_base_runs_with_the_bases_env_and_workdir(tmp_path, base, on_archive, where):
    run = build_app(tmp_path, tmp_path / "store", base[where])
    assert run.returncode == 0, run.stderr
    config = inspect(f"docker-archive:{tmp_path / 'app.tar'}", "--config")
    assert config["rootfs"]["diff_ids"][:2] == base["diff_ids"]  # the base's layers first, unchanged
    assert len(config["rootfs"]["diff_ids"]) == 4  # then greeting and the customisation layer
    assert config["history"][:2] == base["history"] and len(config["history"]) == 4
    assert config["config"] == {"Env": ["PATH=/bin", "GREETING=base", "EXTRA=app"], "WorkingDir": "/srv",
                                "User": "0", "Cmd": APP_CONFIG["Cmd"]}
    # Wherever the base is read from, the image is the same (its ID is the config's digest): the
    # one that ran in podman.
    assert (tmp_path / "app.tar").read_bytes() == on_archive.read_bytes()


@SLOW
def test_an_oci_output_keeps_the_bases_compressed_blobs(tmp_path, base):
    run = build_app(tmp_path, tmp_path / "store", base["layout"], "--format", "oci", output="app-oci")
    assert run.returncode == 0, run.stderr
    manifest = json.loads(skopeo("inspect", "--raw", f"oci:{tmp_path / 'app-oci'}:1"))
    assert manifest["layers"][:2] == base["layout_layers"]  # digests, sizes, gzip media type
    again = build_app(tmp_path, tmp_path / "store2", base["layout"], "--format", "oci", output="app-oci2")
    assert again.returncode == 0, again.stderr
    assert skopeo("inspect", "--raw", f"oci:{tmp_path / 'app-oci2'}:1") == skopeo("inspect", "--raw", f"oci:{tmp_path / 'app-oci'}:1")
    # A layout nixlayer wrote holds the image and its SBOM: named without a tag, the image is the base.
    index = json.loads((tmp_path / "app-oci" / "index.json").read_text())
    assert sorted("artifactType" in entry for entry in index["manifests"]) == [False, True]
    on_it = build_app(tmp_path, tmp_path / "store", f"oci:{tmp_path / 'app-oci'}", output="on-app.tar")
    assert on_it.returncode == 0, on_it.stderr
    assert inspect(f"docker-archive:{tmp_path / 'on-app.tar'}", "--config")["rootfs"]["diff_ids"][:4] == \
        inspect(f"oci:{tmp_path / 'app-oci'}:1", "--config")["rootfs"]["diff_ids"]


@SLOW
def test_a_rebuild_on_a_registry_base_downloads_nothing_and_a_push_mounts_its_blobs(tmp_path, base, registry):
    store = tmp_path / "store"
    first = registry.mark()
    push = ["--push", f"docker://{registry.host}/team/app:1"]
    run = build_app(tmp_path, store, base["registry"], *push)
    assert run.returncode == 0, run.stderr
    downloads = [r for r in registry.requests()[first:] if r.method == "GET" and "/blobs/" in r.path]
    assert len(downloads) == 3  # the amd64 image's config and its two layers: not the arm64 config
    pushed = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/team/app:1"))
    base_layers = pushed["layers"][:2]
    assert [layer["digest"] for layer in base_layers] == [layer["digest"] for layer in base["layout_layers"]]
    assert set(registry.blob_activity("team/app", first)["mounted"]) >= {layer["digest"] for layer in base_layers}

    mark = registry.mark()
    (tmp_path / "app.tar").unlink()
    again = build_app(tmp_path, store, base["registry"], *push)
    assert again.returncode == 0, again.stderr
    reads = [r for r in registry.requests()[mark:] if r.method == "GET" and r.path.startswith("/v2/team/base/")]
    assert reads == []  # a HEAD for the tag's digest, nothing downloaded
    assert (tmp_path / "app.tar").exists()


def pushed_manifest(host: str, repository: str) -> bytes:
    return subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{host}/{repository}:1"],
                          check=True, capture_output=True).stdout


def runs_as_pulled(host: str, repository: str, tmp_path: Path) -> None:
    """Copy the pushed app (every blob read from the registry) to an OCI layout; it runs in podman."""
    layout = tmp_path / f"pulled-{repository.replace('/', '-')}"
    skopeo("copy", "--src-tls-verify=false", f"docker://{host}/{repository}:1", f"oci:{layout}:app")
    image = subprocess.run(["podman", "pull", "-q", f"oci:{layout}:app"], check=True, capture_output=True,
                           text=True).stdout.strip()
    try:
        out = subprocess.run([*PODMAN_RUN, image], capture_output=True, text=True, timeout=120)
        assert out.stdout == APP_OUTPUT, out.stderr
    finally:
        subprocess.run(["podman", "rmi", "-f", image], capture_output=True)


def test_a_push_to_the_bases_registry_mounts_the_base_layers_without_downloading_them(tmp_path, base, registry):
    """No output, a push to the base's registry: the base layers are neither downloaded nor in
    the layer store; the push mounts them from the base's repository, and the image is the one
    a build with an output (which copies them) pushes."""
    layers = {layer["digest"] for layer in base["layout_layers"]}
    with_output = build_app(tmp_path, tmp_path / "store-out", base["registry"],
                            "--push", f"docker://{registry.host}/team/app-out:1")
    assert with_output.returncode == 0, with_output.stderr

    mark = registry.mark()
    store = tmp_path / "store"
    run = build_app(tmp_path, store, base["registry"], "--push", f"docker://{registry.host}/team/app-mounted:1",
                    output=None)
    assert run.returncode == 0, run.stderr
    plan, summary = run.stderr.splitlines()
    assert " in 4 layers: 2 to write (" in plan and plan.endswith(", 2 reused"), plan  # the base's are not written
    assert "(5 blobs uploaded" in summary and "; 2 mounted, 0 already there)" in summary, summary
    assert "; layers: 2 built, 2 reused;" in summary, summary
    requests = registry.requests()[mark:]
    downloads = [r.path for r in requests if r.method == "GET" and "/blobs/" in r.path]
    assert len(downloads) == 1 and downloads[0].startswith("/v2/team/base/blobs/"), downloads  # its config
    assert not layers & {path.rsplit("/", 1)[1] for path in downloads}
    assert set(registry.blob_activity("team/app-mounted", mark)["mounted"]) >= layers
    assert not any(Path(LayerStore(str(store)).blob_path(digest)).exists() for digest in layers)
    assert pushed_manifest(registry.host, "team/app-mounted") == pushed_manifest(registry.host, "team/app-out")
    runs_as_pulled(registry.host, "team/app-mounted", tmp_path)

    mark = registry.mark()  # pushed again to where the blobs are: found there, nothing read
    again = build_app(tmp_path, tmp_path / "store2", base["registry"], "--push",
                      f"docker://{registry.host}/team/app-out:1", output=None)
    assert again.returncode == 0, again.stderr
    assert [r for r in registry.requests()[mark:] if r.method == "GET" and "/blobs/" in r.path and
            r.path.rsplit("/", 1)[1] in layers] == []


def test_a_base_layer_gone_from_the_base_repository_fails_the_push_and_cancels_its_upload(tmp_path, base, registry):
    """A base whose repository no longer holds one of its layers (deleted there): the mount
    opens an upload session instead (202), the download then finds nothing; the push fails in
    one line naming the blob, and cancels that session rather than leave it to expire."""
    source = f"docker://{registry.host}/lib/gone:1"
    skopeo("copy", "--src-tls-verify=false", "--dest-tls-verify=false", base["registry"], source)
    digest = sorted(layer["digest"] for layer in base["layout_layers"])[0]
    subprocess.run(["curl", "-sSf", "-X", "DELETE", f"http://{registry.host}/v2/lib/gone/blobs/{digest}"], check=True)
    mark = registry.mark()
    run = build_app(tmp_path, tmp_path / "store", source, "--push", f"docker://{registry.host}/team/app-gone:1",
                    output=None)
    assert run.returncode == 30, run.stderr
    assert run.stderr.splitlines()[-1].startswith("nixlayer: error: ") and digest in run.stderr.splitlines()[-1]
    requests = registry.requests()[mark:]
    mounts = [r for r in requests if r.method == "POST" and r.query.get("mount") == digest]
    assert [r.status for r in mounts] == [202], requests
    cancelled = [r for r in requests if r.method == "DELETE" and r.path.startswith("/v2/team/app-gone/blobs/uploads/")]
    assert [r.status for r in cancelled] == [204], requests


def test_a_base_layer_the_registry_will_not_mount_is_downloaded_then_and_uploaded(tmp_path, base, registry):
    """A registry that refuses to mount from the base's repository (403, as distribution answers
    a pusher without pull access there; a proxy in front of the registry answers it): each base
    layer is downloaded, verified and uploaded when the push needs it, and the image is the same."""
    layers = {layer["digest"] for layer in base["layout_layers"]}
    with_output = build_app(tmp_path, tmp_path / "store-out", base["registry"],
                            "--push", f"docker://{registry.host}/team/app-out:1")
    assert with_output.returncode == 0, with_output.stderr

    def refuse_mounts(method: str, path: str) -> int | None:
        return 403 if method == "POST" and "mount=" in path else None

    with FaultProxy(registry.port, refuse_mounts) as proxy:
        source = base["registry"].replace(registry.host, proxy.host)
        mark = registry.mark()
        store = tmp_path / "store"
        run = build_app(tmp_path, store, source, "--push", f"docker://{proxy.host}/team/app-unmounted:1", output=None)
        assert run.returncode == 0, run.stderr
        # Each base layer is downloaded after its mount was refused, when the push needs it.
        order = [("mount", parse_qs(urlsplit(path).query)["mount"][0]) if method == "POST" and status == 403
                 else ("download", path.rsplit("/", 1)[1]) for method, path, status in proxy.seen
                 if (method == "POST" and status == 403) or (method == "GET" and "/blobs/" in path)]
        for digest in layers:
            assert order.index(("mount", digest)) < order.index(("download", digest)), order
    downloads = [r.path.rsplit("/", 1)[1] for r in registry.requests()[mark:] if r.method == "GET" and "/blobs/" in r.path]
    assert sorted(d for d in downloads if d in layers) == sorted(layers)  # each once
    activity = registry.blob_activity("team/app-unmounted", mark)
    assert set(activity["uploaded"]) >= layers and activity["mounted"] == []
    assert all(Path(LayerStore(str(store)).blob_path(digest)).exists() for digest in layers)  # kept, verified
    assert pushed_manifest(registry.host, "team/app-unmounted") == pushed_manifest(registry.host, "team/app-out")
    runs_as_pulled(registry.host, "team/app-unmounted", tmp_path)


@SLOW
def test_an_index_pushed_to_the_bases_registry_mounts_each_platforms_base_layers(tmp_path, base, registry):
    """An amd64 and an arm64 image on the registry base (an index), pushed as one index to its
    registry: no base layer downloaded, each mounted, the index the one a batch writing an OCI
    layout too pushes, each platform's image whole in the registry."""
    greeting = nix_build(HELLO, "greeting")

    def batch(name: str, target: str, *extra: str) -> Path:
        image = (f'name = "app"\ntag = "1"\nfrom_image = "{base["registry"]}"\ncontents = ["{greeting}"]\n'
                 f'config = {{ Env = {json.dumps(APP_CONFIG["Env"])}, Cmd = {json.dumps(APP_CONFIG["Cmd"])} }}\n'
                 f'push = "docker://{registry.host}/{target}"\n' + "".join(extra))
        return write_batch(tmp_path / name, "", [f'{image}platform = "linux/{arch}"\n' for arch in ("amd64", "arm64")])

    with_output = run_batch_cli(batch("out.toml", "team/app-index-out:1", f'output = "{tmp_path / "layout"}"\n',
                                      'format = "oci"\n'), tmp_path / "store-out")
    assert with_output.returncode == 0, with_output.stderr
    mark = registry.mark()
    run = run_batch_cli(batch("push.toml", "team/app-index:1"), tmp_path / "store")
    assert run.returncode == 0, run.stderr
    layers = {layer["digest"] for layer in base["layout_layers"]}
    downloads = {r.path.rsplit("/", 1)[1] for r in registry.requests()[mark:] if r.method == "GET" and "/blobs/" in r.path}
    assert len(downloads) == 2 and not downloads & layers  # each platform's base config
    assert set(registry.blob_activity("team/app-index", mark)["mounted"]) >= layers
    assert pushed_manifest(registry.host, "team/app-index") == pushed_manifest(registry.host, "team/app-index-out")
    for arch in ("arm64", "amd64"):  # every blob of each platform's image is read
        copy = tmp_path / f"copy-{arch}"
        skopeo("copy", "--src-tls-verify=false", "--override-arch", arch, f"docker://{registry.host}/team/app-index:1",
               f"oci:{copy}:x")
        assert inspect(f"oci:{copy}:x", "--config")["architecture"] == arch


@SLOW
def test_a_spec_and_a_batch_file_take_a_base_image(tmp_path, base, on_archive, capsys):
    greeting = nix_build(HELLO, "greeting")
    shutil.copy(base["archive"].split(":", 1)[1], tmp_path / "base.tar")
    (tmp_path / "image.nix").write_text(
        f'(import {REPO / "nix"} {{ }}).buildLayeredImage {{ name = "app"; tag = "1"; fromImage = ./base.tar;'
        f' contents = [ (import {HELLO}).greeting ]; config = builtins.fromJSON \'\'{json.dumps(APP_CONFIG)}\'\'; }}')
    spec = subprocess.run(["nix-build", str(tmp_path / "image.nix"), "--no-out-link"], check=True,
                          capture_output=True, text=True).stdout.strip()
    run = run_pipelines(["BuildImage", "--spec", spec, "--output", str(tmp_path / "spec.tar")], tmp_path / "store")
    assert run.returncode == 0, run.stderr
    assert main(["plan", "--spec", spec, "--max-layers", "4", "--json"]) == 0  # the plan command counts them too
    plan = json.loads(capsys.readouterr().out)
    assert plan["base_layers"] == 2 and len(plan["layers"]) == 1 and plan["customisation_layer_index"] == 3
    (tmp_path / "batch.toml").write_text(
        f'from_image = "docker-archive:base.tar"\n[[image]]\nname = "app"\ntag = "1"\ncontents = ["{greeting}"]\n'
        f"output = \"batch.tar\"\nconfig = '{json.dumps(APP_CONFIG)}'\n"
        f'[[image]]\nname = "plain"\nfrom_image = ""\ncontents = ["{greeting}"]\noutput = "plain.tar"\n')
    run = run_pipelines(["BuildImages", "--batch-file", str(tmp_path / "batch.toml"),
                         "--report", str(tmp_path / "report.json")], tmp_path / "store")
    assert run.returncode == 0, run.stderr
    assert len(inspect(f"docker-archive:{tmp_path / 'plain.tar'}")["Layers"]) == 2  # its images batched, one on no base
    shutil.copy(on_archive, tmp_path / "direct.tar")  # built by BuildImage --from-image on the same base
    digests = {name: inspect(f"docker-archive:{tmp_path / name}")["Digest"] for name in ("spec.tar", "batch.tar", "direct.tar")}
    assert len(set(digests.values())) == 1, digests
    assert inspect(f"docker-archive:{tmp_path / 'spec.tar'}", "--config")["rootfs"]["diff_ids"][:2] == base["diff_ids"]


@pytest.mark.parametrize("layering", ["popularity", "auto", "pipeline", "stable"])
def test_the_bases_layers_count_against_max_layers(tmp_path, base, layer_store, vectors, vectors_app, layering):
    pipeline = json.dumps([["popularity_contest"], ["limit_layers", 2]]) if layering == "pipeline" else ""
    image = BuildImage(name="vec", from_image=base["archive"], contents=[vectors_app], max_layers=5, layering=layering,
                       layering_pipeline=pipeline, output=str(tmp_path / "vec.tar"))
    layers = image.plan["store_layers"]
    assert len(layers) <= 2 and sorted(p for layer in layers for p in layer) == sorted(vectors["store_paths"].values())
    if layering == "pipeline":  # a pipeline that makes more layers than the base leaves
        wide = BuildImage(name="vec", from_image=base["archive"], contents=[vectors_app], max_layers=5, layering=layering,
                          layering_pipeline=json.dumps([["popularity_contest"], ["limit_layers", 3]]),
                          output=str(tmp_path / "vec.tar"))
        with pytest.raises(Exception, match="max_layers 5 leaves 2"):
            wide.plan


@SLOW
def test_errors_are_one_line_and_write_nothing(tmp_path, base, registry):
    layout = Path(base["layout"].split(":")[1])
    cases = {
        "docker-archive:" + str(tmp_path / "missing.tar"): "cannot read base image docker-archive:",
        f"docker://{registry.host}/team/base:missing": "has no tag missing",
        f"docker://{registry.host}/team/base@sha256:{'0' * 64}": f"has no manifest sha256:{'0' * 64}",
        f"docker://{registry.host}/team/base@sha256:abc": "has an invalid digest 'sha256:abc'",
        f"oci:{layout}:missing": "the layout has no image tagged 'missing' (it has: b1, multi, arm-only)",
        base["arm_only"]: "is an index without a linux/amd64 image (it has: linux/arm64)",
        str(base["root"] / "base.tar"): "is not named in a transport nixlayer reads",
    }
    for source, message in cases.items():
        assert message in one_error(build_app(tmp_path, tmp_path / "store", source)), source
        assert not (tmp_path / "app.tar").exists()
    other = one_error(build_app(tmp_path, tmp_path / "store", base["archive"], "--architecture", "arm64"))
    assert "is for linux/amd64, not linux/arm64: give --architecture amd64" in other
    # A layer blob that does not match its digest: found when copied, and nothing is written.
    broken = tmp_path / "broken"
    shutil.copytree(layout, broken)
    blob = broken / "blobs" / "sha256" / base["layout_layers"][1]["digest"].split(":")[1]
    data = bytearray(blob.read_bytes())
    data[-10] ^= 0xFF
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    message = one_error(build_app(tmp_path, tmp_path / "store", f"oci:{broken}:b1"))
    assert f"layer blob {base['layout_layers'][1]['digest']} does not match its digest" in message
    assert not (tmp_path / "app.tar").exists()
    assert not list((tmp_path / "store" / "layers" / "base").glob(f"{blob.name}-*"))


def test_config_inheritance_follows_nixpkgs_for_env_and_keeps_the_rest():
    base = {"Env": ["PATH=/bin", "A=1", "B=2"], "Cmd": ["/bin/sh"], "WorkingDir": "/srv", "Entrypoint": None,
            "Labels": {"from": "base"}, "Hostname": "x"}
    merged = inherit_config(base, {"Env": ["B=3", "C=4"], "Labels": {"app": "1"}})
    assert merged == {"Env": ["PATH=/bin", "A=1", "B=3", "C=4"], "Cmd": ["/bin/sh"], "WorkingDir": "/srv",
                      "Labels": {"from": "base", "app": "1"}}
    assert inherit_config({}, {"Cmd": ["/x"]}) == {"Cmd": ["/x"]}


def test_config_inheritance_follows_docker_build_for_entrypoint_and_object_fields():
    base = {"Cmd": ["bash"], "Entrypoint": ["/bin/sh", "-c"], "ExposedPorts": {"80/tcp": {}},
            "Volumes": {"/data": {}}, "Labels": {"a": "base", "b": "base"}}
    merged = inherit_config(base, {"Entrypoint": ["/bin/app"], "ExposedPorts": {"8080/tcp": {}},
                                   "Labels": {"b": "app"}})
    assert merged == {"Entrypoint": ["/bin/app"], "ExposedPorts": {"80/tcp": {}, "8080/tcp": {}},
                      "Volumes": {"/data": {}}, "Labels": {"a": "base", "b": "app"}}
    # Cmd given with the Entrypoint, even empty, is the new image's own.
    assert inherit_config(base, {"Entrypoint": ["/bin/app"], "Cmd": []})["Cmd"] == []
    assert inherit_config(base, {"WorkingDir": "/w"})["Cmd"] == ["bash"]


@SLOW
def test_a_base_in_a_registry_with_authentication_is_read_with_the_pushs_credentials(tmp_path, base, auth_registry,
                                                                                     monkeypatch):
    creds = f"--dest-creds={AUTH_USER}:{AUTH_PASSWORD}"
    skopeo("copy", "--dest-tls-verify=false", creds, base["layout"], f"docker://{auth_registry.host}/team/base:1")
    source = f"docker://{auth_registry.host}/team/base:1"
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "none.json"))
    assert "authentication failed for 127.0.0.1" in one_error(build_app(tmp_path, tmp_path / "store", source))
    write_auth(tmp_path / "auth.json", auth_registry.host, AUTH_USER, AUTH_PASSWORD)
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "auth.json"))
    run = build_app(tmp_path, tmp_path / "store", source)
    assert run.returncode == 0, run.stderr
    assert inspect(f"docker-archive:{tmp_path / 'app.tar'}", "--config")["rootfs"]["diff_ids"][:2] == base["diff_ids"]


def edited_layout(base: dict, where: Path, config=None, manifest=None, entry=None) -> str:
    """A copy of the base's OCI layout in ``where`` whose image ``b1`` has its image config,
    manifest and index.json entry changed by the functions ``config``, ``manifest``, ``entry``
    (each takes the JSON object and changes it in place); its name (``oci:DIR:b1``)."""
    shutil.copytree(Path(base["layout"].split(":")[1]), where)
    blobs = where / "blobs" / "sha256"

    def rewrite(descriptor: dict, edit) -> None:
        data = json.loads((blobs / descriptor["digest"].split(":")[1]).read_bytes())
        edit(data)
        data = json.dumps(data).encode()
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        descriptor.update(digest=f"sha256:{digest}", size=len(data))

    index = json.loads((where / "index.json").read_text())
    top = next(m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == "b1")
    rewrite(top, lambda m: (rewrite(m["config"], config or (lambda c: None)), (manifest or (lambda m: None))(m)))
    (entry or (lambda e: None))(top)
    (where / "index.json").write_text(json.dumps(index))
    return f"oci:{where}:b1"


@pytest.mark.parametrize("edit, message", [
    (dict(entry=lambda e: e["annotations"].update(x=1)),
     "annotation 'x' of an index.json entry must be a string, not 1"),
    (dict(config=lambda c: c["config"].update(Env="PATH=/bin")), 'image config field Env must be a list of strings, not "PATH=/bin"'),
    (dict(config=lambda c: c["config"].update(Env=[None])), "image config field Env must be a list of strings, not [null]"),
    (dict(config=lambda c: c.update(rootfs="layers")), 'the rootfs field of its image config must be a JSON object, not "layers"'),
    (dict(config=lambda c: c.update(history=["x"])), "an entry of the history of its image config must be a JSON object"),
    (dict(manifest=lambda m: m["layers"][0].update(mediaType=["x"])), 'the media type of a layer must be a string, not ["x"]'),
])
def test_a_base_with_fields_of_the_wrong_type_is_one_line_naming_the_field(tmp_path, base, edit, message):
    source = edited_layout(base, tmp_path / "layout", **edit)
    with pytest.raises(NixlayerError) as error:
        read_base_image(source, Platform("amd64"), LayerStore(str(tmp_path / "store")))
    assert str(error.value).startswith(f"base image {source}: ") and message in str(error.value), error.value
    assert "\n" not in str(error.value)


def test_an_index_entry_with_annotations_or_a_platform_not_an_object_is_one_line(tmp_path, base):
    layout = Path(base["layout"].split(":")[1])
    copy = tmp_path / "layout"
    shutil.copytree(layout, copy)
    index = json.loads((copy / "index.json").read_text())
    index["manifests"].append({**index["manifests"][0], "annotations": None})
    (copy / "index.json").write_text(json.dumps(index))
    # null is no annotations (an entry without a tag), as a null config field is no field
    assert len(read_base_image(f"oci:{copy}:b1", Platform("amd64"), LayerStore(str(tmp_path / "store"))).layers) == 2
    index["manifests"][-1]["annotations"] = "b1"
    (copy / "index.json").write_text(json.dumps(index))
    with pytest.raises(NixlayerError, match=r"the annotations of an index.json entry must be a JSON object, not \"b1\""):
        read_base_image(f"oci:{copy}:b1", Platform("amd64"), LayerStore(str(tmp_path / "store")))
    multi = json.loads((copy / "blobs" / "sha256" / next(
        m for m in index["manifests"] if (m["annotations"] or {}).get("org.opencontainers.image.ref.name") == "multi"
    )["digest"].split(":")[1]).read_bytes())
    multi["manifests"][0]["platform"] = "linux/arm64"
    data = json.dumps(multi).encode()
    digest = hashlib.sha256(data).hexdigest()
    (copy / "blobs" / "sha256" / digest).write_bytes(data)
    index["manifests"] = [{"mediaType": MEDIA_TYPE_OCI_INDEX, "digest": f"sha256:{digest}", "size": len(data)}]
    (copy / "index.json").write_text(json.dumps(index))
    with pytest.raises(NixlayerError, match=r"the platform of an index entry must be a JSON object, not \"linux/arm64\""):
        read_base_image(f"oci:{copy}", Platform("amd64"), LayerStore(str(tmp_path / "store")))


def test_an_index_base_is_resolved_by_os_architecture_and_variant(tmp_path, base):
    layout = tmp_path / "layout"
    shutil.copytree(Path(base["layout"].split(":")[1]), layout)
    add_index(layout, "arms", ["arm/v6", "arm/v7", "arm64/v8"])
    store = LayerStore(str(tmp_path / "store"))
    # The image of each platform is read (another's config would be refused: its variant differs);
    # arm64/v8 is arm64 (containerd's default variant).
    for platform in (Platform("arm", "v7"), Platform("arm", "v6"), Platform("arm64")):
        assert len(read_base_image(f"oci:{layout}:arms", platform, store).layers) == 2
    with pytest.raises(NixlayerError, match=r"is for linux/arm/v6, not linux/arm/v7: give --platform linux/arm/v6"):
        read_base_image(edited_layout(base, tmp_path / "v6", config=lambda c: c.update(architecture="arm", variant="v6")),
                        Platform("arm", "v7"), store)
    with pytest.raises(NixlayerError, match=r"is an index without a linux/arm/v5 image \(it has: linux/arm/v6,"
                                            r" linux/arm/v7, linux/arm64/v8\)"):
        read_base_image(f"oci:{layout}:arms", Platform("arm", "v5"), store)


@SLOW
def test_the_sbom_of_an_image_on_a_base_indexes_layers_in_rootfs_and_roots_copy_to_root(tmp_path, base):
    hello = nix_build(HELLO, "hello")  # in the root by copy_to_root, its closure (greeting) with it
    run = build_app(tmp_path, tmp_path / "store", base["archive"], "--copy-to-root", json.dumps([hello]),
                    "--sbom", str(tmp_path / "app.cdx.json"))
    assert run.returncode == 0, run.stderr
    diff_ids = inspect(f"docker-archive:{tmp_path / 'app.tar'}", "--config")["rootfs"]["diff_ids"]
    sbom = json.loads((tmp_path / "app.cdx.json").read_text())
    props = {c["bom-ref"]: {p["name"]: p["value"] for p in c["properties"]} for c in sbom["components"]}
    assert props and all(int(p["nixlayer:layer_index"]) >= 2 for p in props.values())  # after the base's 2
    for p in props.values():
        assert diff_ids[int(p["nixlayer:layer_index"])] == p["nixlayer:layer_diff_id"]
    image = next(d for d in sbom["dependencies"] if d["ref"] == sbom["metadata"]["component"]["bom-ref"])
    assert hello in image["dependsOn"] and nix_build(HELLO, "greeting") in image["dependsOn"]


@SLOW
def test_a_gzip_compressed_docker_archive_base_is_read(tmp_path, base, on_archive):
    archive = Path(base["archive"].split(":", 1)[1])
    gzipped = tmp_path / "base.tar.gz"  # as nixpkgs' buildLayeredImage writes it
    with archive.open("rb") as f, gzipped.open("wb") as out:
        subprocess.run(["gzip", "-n", "-c"], stdin=f, stdout=out, check=True)
    run = build_app(tmp_path, tmp_path / "store", f"docker-archive:{gzipped}")
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "app.tar").read_bytes() == on_archive.read_bytes()  # as on the plain archive
    zstd = tmp_path / "base.tar.zst"
    zstd.write_bytes(zstandard.ZstdCompressor().compress(archive.read_bytes()))
    assert "is a zstd-compressed archive, which nixlayer does not read: decompress it (zstd -d)" in one_error(
        build_app(tmp_path, tmp_path / "store", f"docker-archive:{zstd}", output="zstd.tar"))
    assert not (tmp_path / "zstd.tar").exists()


@SLOW
@pytest.mark.parametrize("history", ["short", "long"])
def test_the_history_has_one_entry_per_base_layer_whatever_the_bases_says(tmp_path, base, history):
    """A base whose history has fewer or more non-empty entries than layers: the image's own
    entries still describe its own layers (as podman history pairs them)."""
    first, second = base["history"]
    entries = {"short": [{"created_by": "empty", "empty_layer": True}, first],
               "long": [first, second, {"created_by": "extra"}, {"created_by": "empty", "empty_layer": True}]}[history]
    source = edited_layout(base, tmp_path / "layout", config=lambda c: c.update(history=entries))
    run = build_app(tmp_path, tmp_path / "store", source)
    assert run.returncode == 0, run.stderr
    config = inspect(f"docker-archive:{tmp_path / 'app.tar'}", "--config")
    expected = ([*entries, {"created_by": "base image layer"}] if history == "short"
                else [first, second, entries[3]])
    assert config["history"][:len(expected)] == expected
    layers = [entry for entry in config["history"] if not entry.get("empty_layer")]
    assert len(layers) == len(config["rootfs"]["diff_ids"]) == 4
    assert [entry["created_by"] for entry in layers[2:]] == ["nixlayer", "nixlayer"]
    assert nix_build(HELLO, "greeting") in layers[2]["comment"]
    subprocess.run(["podman", "load", "-i", str(tmp_path / "app.tar")], check=True, capture_output=True)
    try:
        shown = json.loads(subprocess.run(["podman", "history", "--format", "json", "localhost/app:1"], check=True,
                                          capture_output=True, text=True).stdout)
        assert nix_build(HELLO, "greeting") in shown[1]["comment"]  # newest first: the greeting's layer
        assert [entry["CreatedBy"] for entry in shown[2:4]] == [layer["created_by"] for layer in expected[-2:]][::-1]
    finally:
        subprocess.run(["podman", "rmi", "-f", "localhost/app:1"], capture_output=True)


@SLOW
def test_include_nix_db_on_a_base_is_refused_and_perms_without_a_path_warn(tmp_path, base):
    message = one_error(build_app(tmp_path, tmp_path / "store", base["archive"], "--include-nix-db", "true"))
    assert message == ("nixlayer: error: include_nix_db with from_image would replace the base image's Nix database"
                       " (/nix/var/nix/db), leaving its store paths unregistered: give one of them")
    assert not (tmp_path / "app.tar").exists() and not (tmp_path / "store" / "layers").exists()
    run = build_app(tmp_path, tmp_path / "store", base["archive"], "--perms", json.dumps([{"regex": "^/srv", "mode": "0700"}]))
    assert run.returncode == 0, run.stderr
    warnings = [line for line in run.stderr.splitlines() if line.startswith("nixlayer: warning:")]
    assert warnings == ["nixlayer: warning: perms rules without a path do not change the base image's files (its layers"
                        " are copied as they are): give the rule a path, or change them in the base image"], run.stderr


@SLOW
def test_the_base_manifests_annotations_are_kept_unless_the_image_sets_them(tmp_path, base):
    annotations = {"org.example.team": "base", "org.opencontainers.image.created": "2000-01-01T00:00:00Z",
                   "org.opencontainers.image.version": "1"}
    source = edited_layout(base, tmp_path / "layout", manifest=lambda m: m.update(annotations=annotations))
    run = build_app(tmp_path, tmp_path / "store", source, "--format", "oci", "--version", "2", output="app-oci")
    assert run.returncode == 0, run.stderr
    manifest = json.loads(skopeo("inspect", "--raw", f"oci:{tmp_path / 'app-oci'}:1"))
    assert manifest["annotations"] == {"org.example.team": "base", "org.opencontainers.image.created": "1970-01-01T00:00:01Z",
                                       "org.opencontainers.image.version": "2"}


def test_the_plan_line_counts_the_base_layers_to_write(tmp_path, base):
    """An image whose store path layers are in the layer store, on a base whose layers are
    not: the plan line's bytes to write are the base layers' (their blobs' sizes; a
    docker-archive holds their tars), not 0 B."""
    store = tmp_path / "store"
    assert build_app(tmp_path, store, base["archive"]).returncode == 0
    run = build_app(tmp_path, store, base["layout"], output="again.tar")
    assert run.returncode == 0, run.stderr
    planned = sum(layer["size"] for layer in base["layout_layers"])
    plan = run.stderr.splitlines()[0]
    assert plan.endswith(f": {len(base['layout_layers'])} to write ({console.size(planned)}), 2 reused"), plan


def test_an_unreachable_base_image_registry_is_named_as_the_base_image(tmp_path):
    """A base image whose registry does not answer: the line says it is the base image (not a
    push target) to correct, before any work."""
    from registry_fixture import free_port
    source = f"docker://127.0.0.1:{free_port()}/team/base:1"
    message = one_error(build_app(tmp_path, tmp_path / "store", source))
    assert message == (f"nixlayer: error: cannot reach registry {source[9:].split('/')[0]} (repository team/base), base"
                       f" image {source}: checking 1: connection refused after 5 tries; is a registry listening there?"
                       " Start it, or correct the base image (--from-image)"), message
    assert not (tmp_path / "app.tar").exists() and not (tmp_path / "store" / "layers").exists()


def test_max_layers_too_small_for_the_base_says_the_least_that_works(tmp_path, base):
    """max_layers that leaves no layer for store paths beside the base's: the line gives the
    least max_layers that does (the base's layers, one store layer, the customisation layer)."""
    n = len(base["diff_ids"])
    message = one_error(build_app(tmp_path, tmp_path / "store", base["archive"], "--max-layers", str(n + 1)))
    assert message == (f"nixlayer: error: max_layers is {n + 1}: the {n} base layers and the customisation layer leave"
                       f" no layer for store paths: give max_layers {n + 2} or more"), message
    assert not (tmp_path / "app.tar").exists()
    assert build_app(tmp_path, tmp_path / "store", base["archive"], "--max-layers", str(n + 2)).returncode == 0
