"""The SBOM (CycloneDX 1.6) and provenance of images: what the SBOM lists, checked against
real Nix and validated with CycloneDX's own library; attached in an OCI layout (found from the
image by its subject) and pushed to a real registry (found from the image digest: the referrers
API, or the referrers tag schema this registry needs); history and manifest annotations."""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import pytest
import requests
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from conftest import FIXTURES, nix_build, run_luigi, run_pipelines
from nixlayer.closure import nar_hash_digest
from nixlayer.oci_layout import blob_path, layout_digest, layout_referrers
from nixlayer.registry import find_referrers
from nixlayer.sbom import SBOM_MEDIA_TYPE
from nixlayer.storepath import parse_drv_name
from pipelines import BuildImage
from registry_fixture import registry  # noqa: F401 - the fixture
from test_user_errors import error_lines


def validate(sbom: bytes) -> dict:
    """The SBOM, once CycloneDX's validator has found it valid against the 1.6 JSON schema."""
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(sbom.decode())
    assert error is None, error.data.message
    return json.loads(sbom)


def nix_query(flag: str, path: str) -> list[str]:
    return subprocess.run(["nix-store", "--query", flag, path], check=True, capture_output=True, text=True).stdout.split()


def path_info(path: str) -> dict[str, dict]:
    out = subprocess.run(["nix", "path-info", "--json", "--recursive", "--extra-experimental-features", "nix-command",
                          path], check=True, capture_output=True, text=True).stdout
    return {entry["path"]: entry for entry in json.loads(out)}


def prop(component: dict, name: str) -> str:
    (value,) = [p["value"] for p in component["properties"] if p["name"] == name]
    return value


def check_sbom(sbom: dict, app: str, config: dict, name: str) -> None:
    """``sbom`` lists exactly the closure of ``app`` (Nix's), each store path with its
    parseDrvName name and version, NAR hash, references, and the diff_id of the layer the image
    config's history says holds it."""
    closure = nix_query("--requisites", app)
    info = path_info(app)
    components = {c["bom-ref"]: c for c in sbom["components"]}
    assert sorted(components) == sorted(closure)
    layer_of = {path: i for i, h in enumerate(config["history"][:-1])
                for path in json.loads(h["comment"].removeprefix("store paths: "))}
    for path, component in components.items():
        name_, version = parse_drv_name(path.split("-", 1)[1])
        assert (component["name"], component.get("version", "")) == (name_, version)
        assert component["hashes"] == [{"alg": "SHA-256",
                                        "content": nar_hash_digest(info[path]["narHash"]).removeprefix("sha256:")}]
        assert prop(component, "nix:nar_hash") == info[path]["narHash"]
        assert prop(component, "nix:nar_size") == str(info[path]["narSize"])
        assert component["evidence"]["occurrences"] == [{"location": path}]
        assert prop(component, "nixlayer:layer_diff_id") == config["rootfs"]["diff_ids"][layer_of[path]]
        assert prop(component, "nixlayer:layer_index") == str(layer_of[path])
    dependencies = {d["ref"]: d.get("dependsOn", []) for d in sbom["dependencies"]}
    image_id = sbom["metadata"]["component"]["bom-ref"]
    assert dependencies.pop(image_id) == [app]
    assert dependencies == {path: sorted(set(nix_query("--references", path)) - {path}) for path in closure}
    assert sbom["metadata"]["component"] == {"type": "container", "bom-ref": image_id, "name": name}
    assert sbom["metadata"]["timestamp"] == config["created"]


def test_parse_drv_name():
    assert parse_drv_name("openssl-3.0.13") == ("openssl", "3.0.13")
    assert parse_drv_name("openssl-3.0.13-bin") == ("openssl", "3.0.13-bin")
    assert parse_drv_name("vec-script.sh") == ("vec-script.sh", "")
    assert parse_drv_name("python3.11-requests-2.31.0") == ("python3.11-requests", "2.31.0")
    assert parse_drv_name("hello") == ("hello", "")


def oci_config(layout: Path, manifest: dict) -> dict:
    return json.loads(Path(blob_path(str(layout), manifest["config"]["digest"])).read_bytes())


def test_sbom_in_an_oci_layout_and_beside_an_archive(tmp_path, layer_store, vectors_app):
    """The SBOM is attached in an OCI layout (found from the image: its subject), valid, and
    lists the closure with the right layers (max_layers 3: one layer holds several store paths);
    --sbom writes the same bytes beside a docker-archive of the same image; the history names
    nixlayer, the manifest carries the annotations given."""
    layout, sbom_file = tmp_path / "oci", tmp_path / "vec.cdx.json"
    params = dict(name="vec", tag="1", contents=[vectors_app], max_layers=3)
    run_luigi(BuildImage(format="oci", output=str(layout), source="https://example.org/vec", revision="abc123",
                         version="0.1", **params))
    digest = layout_digest(str(layout), "1")
    manifest = json.loads(Path(blob_path(str(layout), digest)).read_bytes())
    assert manifest["annotations"] == {
        "org.opencontainers.image.created": "1970-01-01T00:00:01Z",
        "org.opencontainers.image.source": "https://example.org/vec",
        "org.opencontainers.image.revision": "abc123", "org.opencontainers.image.version": "0.1"}
    config = oci_config(layout, manifest)
    assert {h["created_by"] for h in config["history"]} == {"nixlayer"}
    assert any(len(json.loads(h["comment"].removeprefix("store paths: "))) > 1 for h in config["history"][:-1])

    (referrer,) = layout_referrers(str(layout), digest)
    assert referrer["artifactType"] == SBOM_MEDIA_TYPE
    artifact = json.loads(Path(blob_path(str(layout), referrer["digest"])).read_bytes())
    assert artifact["subject"] == {"mediaType": manifest["mediaType"], "digest": digest,
                                   "size": Path(blob_path(str(layout), digest)).stat().st_size}
    assert artifact["config"]["mediaType"] == "application/vnd.oci.empty.v1+json"
    (layer,) = artifact["layers"]
    assert layer["mediaType"] == SBOM_MEDIA_TYPE
    attached = Path(blob_path(str(layout), layer["digest"])).read_bytes()
    check_sbom(validate(attached), vectors_app, config, "vec")
    # skopeo still reads the image by its tag beside the artifact
    subprocess.run(["skopeo", "inspect", f"oci:{layout}:1"], check=True, capture_output=True)

    # The same image (another output format and compression): the same SBOM bytes, written by
    # a forked worker (Luigi's --workers 2), which has the closure graph its parent planned.
    run_luigi(BuildImage(format="docker-archive", output=str(tmp_path / "vec.tar"), sbom=str(sbom_file), **params),
              workers=2)
    assert sbom_file.read_bytes() == attached
    with tarfile.open(tmp_path / "vec.tar") as tar:
        entry = json.load(tar.extractfile("manifest.json"))[0]
        assert json.load(tar.extractfile(entry["Config"]))["rootfs"] == config["rootfs"]


def test_a_replaced_image_takes_its_sbom_along(tmp_path, layer_store, vectors_app):
    layout = tmp_path / "oci"
    zlib = nix_query("--references", vectors_app)[0]
    run_luigi(BuildImage(name="vec", tag="1", contents=[zlib], format="oci", output=str(layout)))
    first = layout_digest(str(layout), "1")
    run_luigi(BuildImage(name="vec", tag="2", contents=[zlib], format="oci", output=str(layout)))
    run_luigi(BuildImage(name="vec", tag="1", contents=[vectors_app], format="oci", output=str(layout)))
    index = json.loads((layout / "index.json").read_text())["manifests"]
    images = [m["digest"] for m in index if "artifactType" not in m]
    assert first in images  # still tag 2
    assert len(images) == 2 and len(index) == 4  # each image its own SBOM, none left over
    assert len(layout_referrers(str(layout), layout_digest(str(layout), "1"))) == 1
    run_luigi(BuildImage(name="vec", tag="2", contents=[vectors_app], format="oci", output=str(layout),
                         attach_sbom=False))
    index = json.loads((layout / "index.json").read_text())["manifests"]
    assert layout_referrers(str(layout), first) == []
    assert len(index) == 3  # tags 1 and 2 (the same image now) and one SBOM


def test_sbom_pushed_with_the_image(registry, layer_store, vectors_app):  # noqa: F811 - the fixture
    """After a push, the SBOM is found from the image digest (this registry has no referrers
    API: the referrers tag schema) and its blob downloads and validates."""
    target = f"{registry.host}/sbom/vec:1"
    mark = registry.mark()
    run_luigi(BuildImage(name="vec", tag="1", contents=[vectors_app], push=f"docker://{target}"))
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{target}"],
                         check=True, capture_output=True).stdout
    digest = "sha256:" + __import__("hashlib").sha256(raw).hexdigest()
    tag = "sha256-" + digest.removeprefix("sha256:")
    logged = [(r.method, r.path, r.status) for r in registry.requests()[mark:]]
    assert ("PUT", f"/v2/sbom/vec/manifests/{tag}", 201) in logged

    (referrer,) = find_referrers(target, digest, artifact_type=SBOM_MEDIA_TYPE)
    logged = [(r.method, r.path, r.status) for r in registry.requests()[mark:]]
    assert ("GET", f"/v2/sbom/vec/referrers/{digest}", 404) in logged
    base = f"http://{registry.host}/v2/sbom/vec"
    artifact = requests.get(f"{base}/manifests/{referrer['digest']}",
                            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}, timeout=30).json()
    assert artifact["subject"]["digest"] == digest
    sbom = requests.get(f"{base}/blobs/{artifact['layers'][0]['digest']}", timeout=30).content
    manifest = json.loads(raw)
    config = requests.get(f"{base}/blobs/{manifest['config']['digest']}", timeout=30).json()
    check_sbom(validate(sbom), vectors_app, config, "vec")

    # Pushed again: nothing to do, and the referrers list holds the SBOM once.
    assert run_luigi(BuildImage(name="vec", tag="1", contents=[vectors_app], push=f"docker://{target}"))["ran"] == []
    assert len(find_referrers(target, digest)) == 1


def test_sbom_needs_an_output(tmp_path):
    app = nix_build(FIXTURES / "vectors.nix", "app")
    run = run_pipelines(["BuildImage", "--name", "x", "--contents", json.dumps([app]), "--push",
                         "docker://127.0.0.1:1/x:1", "--sbom", str(tmp_path / "x.json")], tmp_path / "store")
    assert error_lines(run) == ["nixlayer: error: --sbom FILE is written beside an image output: give --output too"
                                " (a push carries the SBOM attached to the image)"]
    assert run.returncode != 0 and not (tmp_path / "x.json").exists()


def test_a_spec_sets_the_annotations_and_its_sbom_has_the_nar_hashes(tmp_path, layer_store, vectors_app):
    """nixlayer's Nix library takes source, revision and version; the spec's closure
    (exportReferencesGraph: Nix base-32 NAR hashes) gives the SBOM the same hashes as Nix."""
    nix = tmp_path / "image.nix"
    nix.write_text(f"let nixlayer = import {FIXTURES.parent.parent / 'nix'} {{ }}; vec = import {FIXTURES / 'vectors.nix'};"
                   ' in nixlayer.buildLayeredImage { name = "vec"; tag = "s"; contents = [ vec.app ];'
                   ' source = "https://example.org/vec"; revision = "abc123"; version = "0.1"; }')
    spec = subprocess.run(["nix-build", str(nix), "--no-out-link"], check=True, capture_output=True,
                          text=True).stdout.strip().splitlines()[-1]
    layout = tmp_path / "oci"
    run_luigi(BuildImage(spec=spec, format="oci", output=str(layout)))
    digest = layout_digest(str(layout), "s")
    manifest = json.loads(Path(blob_path(str(layout), digest)).read_bytes())
    assert {key: value for key, value in manifest["annotations"].items() if "created" not in key} == {
        "org.opencontainers.image.source": "https://example.org/vec",
        "org.opencontainers.image.revision": "abc123", "org.opencontainers.image.version": "0.1"}
    (referrer,) = layout_referrers(str(layout), digest)
    artifact = json.loads(Path(blob_path(str(layout), referrer["digest"])).read_bytes())
    sbom = validate(Path(blob_path(str(layout), artifact["layers"][0]["digest"])).read_bytes())
    check_sbom(sbom, vectors_app, oci_config(layout, manifest), "vec")
