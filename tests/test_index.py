"""Multi-platform images: a batch's images of one name, tag and output (or push target), each of
its own platform, make one OCI image index, in an OCI layout, an oci-archive and a registry.

The "arm64" images hold the same store paths as the amd64 ones (this machine builds x86_64
store paths): what is checked is the index, the platforms, which image a client picks, and that
shared layers are stored and uploaded once.
"""

from __future__ import annotations

import collections
import hashlib
import json
import subprocess
from pathlib import Path

import luigi
import pytest

from conftest import FIXTURES, REPO, first_fast, nix_build, run_luigi, run_pipelines
from nixlayer.errors import NixlayerError
from nixlayer.index import Platform, image_platform, parse_platform
from nixlayer.layer import LayerBlob
from nixlayer.layerstore import LayerStore, record_name
from nixlayer.oci_layout import blob_path, layout_digest, layout_referrers
from nixlayer.registry import find_referrers
from nixlayer.sbom import SBOM_MEDIA_TYPE
from pipelines import BuildImage, BuildImages
from registry_fixture import registry  # noqa: F401 - the fixture
from test_batch import run_batch_cli, write_batch
from test_build import PODMAN_RUN
from test_sbom import check_sbom, oci_config, validate
from test_spec import spec_build
from test_stable import _incremental

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def skopeo(*args: str) -> str:
    return subprocess.run(["skopeo", *args], check=True, capture_output=True, text=True).stdout


def picked(source: str, arch: str, tmp_path: Path, *extra: str) -> dict:
    """The image config of the image ``skopeo copy --override-arch ARCH`` takes from ``source``."""
    copy = tmp_path / f"copy-{arch}-{len(list(tmp_path.iterdir()))}"
    skopeo("copy", "-q", *extra, "--override-arch", arch, source, f"oci:{copy}:x")
    return json.loads(skopeo("inspect", "--config", f"oci:{copy}:x"))


@pytest.fixture(scope="module")
def hello() -> tuple[str, str]:
    return nix_build(REPO / "examples" / "hello.nix", "hello"), nix_build(REPO / "examples" / "hello.nix", "busybox")


def new_process() -> None:
    """Make the next build in this process plan its images anew, as a new process would: Luigi
    keeps the tasks it made (an instance cache), a BuildImage its plan."""
    luigi.task_register.Register.clear_instance_cache()


def two_platforms(hello: tuple[str, str], destination: str, arm64_extra: str = "") -> list[str]:
    """An amd64 image of hello and busybox, and an arm64/v8 one (a table) with ``arm64_extra`` too."""
    contents = json.dumps(list(hello))
    extra = json.dumps([*hello, arm64_extra] if arm64_extra else list(hello))
    return [f'contents = {contents}\nplatform = "linux/amd64"\n{destination}',
            f'contents = {extra}\nplatform = {{ architecture = "arm64", variant = "v8" }}\n{destination}']


def test_index_in_an_oci_layout_and_an_oci_archive(tmp_path, layer_store, hello):
    tool = nix_build(FIXTURES / "incremental.nix", "tool")
    batch = write_batch(tmp_path / "batch.toml", 'name = "hello"\ntag = "1"\nconfig = { Cmd = ["/bin/hello"] }\n', [
        *two_platforms(hello, 'format = "oci"\noutput = "out/layout"', tool),
        *two_platforms(hello, 'format = "oci-archive"\noutput = "out/hello.oci.tar"', tool),
    ])
    report = tmp_path / "report.json"
    run_luigi(BuildImages(batch_file=str(batch), report=str(report)))
    layout = tmp_path / "out" / "layout"

    index = json.loads(skopeo("inspect", "--raw", f"oci:{layout}:1"))
    assert index["mediaType"] == INDEX
    assert [(m["mediaType"], m["platform"]) for m in index["manifests"]] == [
        (MANIFEST, {"architecture": "amd64", "os": "linux"}),
        (MANIFEST, {"architecture": "arm64", "os": "linux", "variant": "v8"}),
    ]
    # The layout names the index, not its images; the images are its blobs, each with its SBOM.
    entries = json.loads((layout / "index.json").read_text())["manifests"]
    assert [(e["mediaType"], e["annotations"]) for e in entries if "artifactType" not in e] == [
        (INDEX, {"org.opencontainers.image.ref.name": "1"})]
    assert [len(layout_referrers(str(layout), m["digest"])) for m in index["manifests"]] == [1, 1]
    assert len(entries) == 3
    manifests = [json.loads((layout / "blobs" / "sha256" / m["digest"].split(":")[1]).read_text()) for m in index["manifests"]]
    amd64, arm64 = ([layer["digest"] for layer in m["layers"]] for m in manifests)
    # hello, busybox, greeting are shared; arm64 adds tool (and its lib); each has its own
    # customisation layer. Every layer blob is in the layout once.
    shared = set(amd64) & set(arm64)
    assert len(amd64) == 4 and len(arm64) == 6 and len(shared) == 3
    blobs = {p.name for p in (layout / "blobs" / "sha256").iterdir()}
    # layers, configs, manifests, the index; two SBOMs, their manifests, and the empty config they share
    assert len(blobs) == len(set(amd64) | set(arm64)) + 2 + 2 + 1 + 2 + 2 + 1

    for source in (f"oci:{layout}:1", f"oci-archive:{tmp_path / 'out' / 'hello.oci.tar'}"):
        arm = picked(source, "arm64", tmp_path)
        assert (arm["architecture"], arm.get("variant"), len(arm["rootfs"]["diff_ids"])) == ("arm64", "v8", 6)
        amd = picked(source, "amd64", tmp_path)
        assert (amd["architecture"], "variant" in amd, len(amd["rootfs"]["diff_ids"])) == ("amd64", False, 4)
    archived = json.loads(skopeo("inspect", "--raw", f"oci-archive:{tmp_path / 'out' / 'hello.oci.tar'}"))
    assert archived == index  # the same images: the same index, whatever the format

    data = json.loads(report.read_text())
    assert [(i["name"], i["tag"], i["platforms"], i["layers"]) for i in data["images"]] == [
        ("hello", "1", ["linux/amd64", "linux/arm64/v8"], 7)] * 2
    assert data["images"][0]["digest"] == layout_digest(str(layout), "1")

    # Nothing changed: nothing written again, the images planned anew as a new process plans them.
    new_process()
    again = run_luigi(BuildImages(batch_file=str(batch), report=str(report)))
    assert again["ran"] == ["BuildImages"]


def test_index_pushed_once_per_blob_and_pulled_per_platform(tmp_path, layer_store, registry, hello):
    ref = f"{registry.host}/multi/hello:1"
    batch = write_batch(tmp_path / "batch.toml", 'name = "hello"\nconfig = { Cmd = ["/bin/hello"] }\n',
                        two_platforms(hello, f'push = "docker://{ref}"'))
    mark = registry.mark()
    run_luigi(BuildImages(batch_file=str(batch), report=str(tmp_path / "report.json")))

    index = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}"))
    assert index["mediaType"] == INDEX
    assert [m["platform"] for m in index["manifests"]] == [
        {"architecture": "amd64", "os": "linux"}, {"architecture": "arm64", "os": "linux", "variant": "v8"}]
    manifests = [json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/multi/hello@{m['digest']}"))
                 for m in index["manifests"]]
    layers = [[layer["digest"] for layer in m["layers"]] for m in manifests]
    configs = {m["config"]["digest"] for m in manifests}
    assert layers[0] == layers[1] and len(configs) == 2  # same store paths: the same layers, two configs

    # The registry's own log: each blob uploaded once, the shared layers too (and each image's
    # SBOM, with the empty config both SBOMs' manifests name).
    digests = [m["digest"] for m in index["manifests"]]
    sboms = [find_referrers(ref, digest, artifact_type=SBOM_MEDIA_TYPE) for digest in digests]
    uploaded = collections.Counter(registry.blob_activity("multi/hello", mark)["uploaded"])
    assert set(uploaded.values()) == {1} and set(layers[0]) | configs <= set(uploaded)
    assert len(uploaded) == len(layers[0]) + 2 + 2 + 1
    # Each image's manifest, its SBOM's, the SBOM listed in the referrers tag; then the index.
    puts = [r for r in registry.requests()[mark:] if r.method == "PUT" and "/manifests/" in r.path]
    assert [r.path.rsplit("/", 1)[1] for r in puts] == [
        *(part for digest, (sbom,) in zip(digests, sboms) for part in (digest, sbom["digest"], digest.replace(":", "-"))),
        "1"]

    arm = picked(f"docker://{ref}", "arm64", tmp_path, "--src-tls-verify=false")
    assert (arm["architecture"], arm["variant"]) == ("arm64", "v8")
    assert picked(f"docker://{ref}", "amd64", tmp_path, "--src-tls-verify=false")["architecture"] == "amd64"
    for arch in ("arm64", "amd64"):
        subprocess.run(["podman", "pull", "-q", "--tls-verify=false", "--arch", arch, ref], check=True, capture_output=True)
        shown = subprocess.run(["podman", "image", "inspect", "--format", "{{.Architecture}}", ref],
                               check=True, capture_output=True, text=True).stdout.strip()
        assert shown == arch
    try:  # the image this machine pulled runs
        out = subprocess.run([*PODMAN_RUN, ref], capture_output=True, text=True, timeout=120)
        assert out.stdout == "Hello from a nixlayer image!\n", out.stderr
    finally:
        subprocess.run(["podman", "rmi", "-f", ref], capture_output=True)

    # Pushed again, nothing changed (planned anew, as by a new process): complete without a
    # request that changes anything.
    new_process()
    mark = registry.mark()
    run_luigi(BuildImages(batch_file=str(batch), report=str(tmp_path / "report.json")))
    assert not [r for r in registry.requests()[mark:] if r.method in ("PUT", "POST", "PATCH")]


@pytest.mark.parametrize("defaults, images, message", first_fast([
    ('name = "a"\ntag = "1"\nformat = "oci"\noutput = "l"\n', ['platform = "linux/arm64"', 'platform = "linux/arm64/v8"'],
     "image 2: platform linux/arm64/v8 is also the platform of image 1, in the index of output"),
    ('name = "a"\ntag = "1"\nformat = "oci"\noutput = "l"\n', ['platform = "linux/amd64"', ''],
     "image 2: platform linux/amd64 is also the platform of image 1,"),
    ('name = "a"\nformat = "oci"\noutput = "l"\n', ['platform = "linux/aarch64"'],
     "image 1: unknown architecture 'aarch64' (Go calls it arm64): use a Go architecture name"),
    ('name = "a"\nformat = "oci"\noutput = "l"\n', ['platform = "linux/arm/v9"'], "image 1: platform linux/arm/v9: arm has no variant 'v9'; use one of v5, v6, v7, v8"),
    ('name = "a"\nformat = "oci"\noutput = "l"\n', ['platform = "windows/amd64"'], "os 'windows' is not supported"),
    ('name = "a"\nformat = "oci"\noutput = "l"\n', ['platform = "arm64"'], "platform 'arm64' is not os/architecture[/variant]"),
    ('name = "a"\nformat = "oci"\noutput = "l"\n', ['platform = 64'], "platform must be a string such as"),
    ('name = "a"\nformat = "oci"\noutput = "l"\n', ['architecture = "amd64"\nplatform = "linux/arm64"'],
     "architecture amd64 is not the architecture of platform linux/arm64"),
    ('name = "a"\ntag = "1"\noutput = "a.tar"\n', ['platform = "linux/amd64"', 'platform = "linux/arm64"'],
     "image 2: output {out}/a.tar is also the output of image 1: a docker-archive holds one image"),
    ('tag = "1"\nformat = "oci"\noutput = "l"\n', ['name = "a"\nplatform = "linux/amd64"', 'name = "b"\nplatform = "linux/arm64"'],
     "image 2 (b): output {out}/l is also the output of image 1 (a), another name"),
    ('name = "a"\ntag = "1"\nformat = "oci-archive"\noutput = "a.tar"\n',
     ['platform = "linux/amd64"', 'platform = "linux/arm64"\nsbom = "arm64.cdx.json"'],
     "image 2: sbom {out}/arm64.cdx.json: an image of a multi-platform index has its SBOM attached to it"),
    ('name = "a"\nformat = "oci"\n', ['output = "l"\npush = "docker://127.0.0.1:1/a:1"\nplatform = "linux/amd64"',
                                      'output = "m"\npush = "docker://127.0.0.1:1/a:1"\nplatform = "linux/arm64"'],
     "image 2: push 127.0.0.1:1/a:1 is also the push of image 1, whose output is another"),
]))
def test_bad_index_is_one_line_before_any_work(tmp_path, hello, defaults, images, message):
    body = defaults + f"contents = {json.dumps(list(hello))}\n"
    batch = write_batch(tmp_path / "batch.toml", body, images)
    store = tmp_path / "store"
    run = run_batch_cli(batch, store, "--report", str(tmp_path / "r.json"))
    assert run.returncode == 35, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("nixlayer: error:")]
    assert len(errors) == 1, run.stderr
    message = message.format(out=tmp_path)
    assert errors[0].startswith(f"nixlayer: error: {batch}: ") and message in errors[0], errors[0]
    assert not store.exists() and not (tmp_path / "l").exists() and not (tmp_path / "r.json").exists()


def test_parse_platform():
    assert parse_platform("linux/arm/v7") == Platform("arm", "v7") and str(Platform("arm", "v7")) == "linux/arm/v7"
    assert parse_platform({"architecture": "riscv64"}) == Platform("riscv64")
    assert Platform("arm64", "v8").key == Platform("arm64").key != Platform("arm64", "v9").key
    for bad in ("linux/amd64/v7", "linux//arm64", "linux/arm64/v8/x", {"arch": "amd64"}, {"architecture": 1}):
        with pytest.raises(NixlayerError):
            parse_platform(bad)
    # An image's platform (BuildImage's, and a batch's as it finds its indexes): one function.
    assert image_platform("linux/arm/v7", "") == image_platform("linux/arm/v7", "arm") == Platform("arm", "v7")
    assert image_platform("", "riscv64") == Platform("riscv64") and image_platform("", "") == Platform("amd64")
    with pytest.raises(NixlayerError, match="architecture amd64 is not the architecture of platform linux/arm64"):
        image_platform("linux/arm64", "amd64")
    with pytest.raises(NixlayerError, match="Go calls it arm64"):
        image_platform("", "aarch64")


def test_nix_build_images_list_is_an_index(tmp_path, layer_store):
    """buildImages { hello = [ amd64 arm/v7 ]; }: one index, written to the output named hello."""
    file = tmp_path / "images.nix"
    file.write_text(f"""let nixlayer = import {REPO / 'nix'} {{ }}; vec = import {FIXTURES / 'vectors.nix'};
  image = platform: nixlayer.buildLayeredImage {{ name = "vec"; tag = "1"; format = "oci"; contents = [ vec.app ]; inherit platform; }};
in nixlayer.buildImages {{ hello = [ (image "linux/amd64") (image {{ architecture = "arm"; variant = "v7"; }}) ]; }}""")
    spec = spec_build(file)
    keys = [(image["key"], image["index"], image["platform"]) for image in json.loads(Path(spec).read_text())["images"]]
    assert keys == [("hello-1", "hello", "linux/amd64"), ("hello-2", "hello", {"architecture": "arm", "variant": "v7"})]
    run_luigi(BuildImages(spec=spec, output_dir=str(tmp_path / "out"), report=str(tmp_path / "report.json")))
    index = json.loads(skopeo("inspect", "--raw", f"oci:{tmp_path / 'out' / 'hello'}:1"))
    assert [m["platform"] for m in index["manifests"]] == [
        {"architecture": "amd64", "os": "linux"}, {"architecture": "arm", "os": "linux", "variant": "v7"}]
    assert picked(f"oci:{tmp_path / 'out' / 'hello'}:1", "arm", tmp_path, "--override-variant", "v7")["variant"] == "v7"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["hello"]

    # The same platform twice: one line, naming the spec's images, nothing written.
    file.write_text(file.read_text().replace('{ architecture = "arm"; variant = "v7"; }', '"linux/amd64"'))
    run = run_pipelines(["BuildImages", "--spec", spec_build(file), "--output-dir", str(tmp_path / "out2")], tmp_path / "store")
    errors = [line for line in run.stderr.splitlines() if line.startswith("nixlayer: error:")]
    assert run.returncode == 35 and len(errors) == 1, run.stderr
    assert "image hello-2: platform linux/amd64 is also the platform of image hello-1" in errors[0], errors[0]
    assert not (tmp_path / "out2").exists() and not (tmp_path / "store").exists()


def test_one_image_of_a_platform_is_an_image_not_an_index(tmp_path, layer_store, vectors_app):
    """BuildImage --platform (or a batch image alone at its output): the image config says the
    platform; an image without one is as before (no variant, this machine's architecture)."""
    run_luigi(BuildImage(name="vec", tag="1", contents=[vectors_app], platform="linux/arm/v7", format="oci",
                         output=str(tmp_path / "arm")))
    raw = json.loads(skopeo("inspect", "--raw", f"oci:{tmp_path / 'arm'}:1"))
    assert raw["mediaType"] == MANIFEST
    config = json.loads(skopeo("inspect", "--config", f"oci:{tmp_path / 'arm'}:1"))
    assert (config["os"], config["architecture"], config["variant"]) == ("linux", "arm", "v7")
    run_luigi(BuildImage(name="vec", tag="1", contents=[vectors_app], format="oci", output=str(tmp_path / "host")))
    config = json.loads(skopeo("inspect", "--config", f"oci:{tmp_path / 'host'}:1"))
    assert (config["architecture"], "variant" in config) == ("amd64", False)


def _members(batch: Path, report: Path) -> list:
    """The BuildImage of each image of ``batch``'s one index, planned as a new process plans
    them."""
    new_process()
    ((_, index),) = BuildImages(batch_file=str(batch), report=str(report)).images()
    return index.images


@pytest.mark.parametrize("destination", ["output", "push"])
def test_index_rebuilt_keeps_each_platforms_layers(tmp_path, layer_store, registry, destination):
    """The stable layering (the default) keeps, for each image of an index, the layers of that
    platform's image in the index last written to the output (or pushed to the target)."""
    v1, v2 = _incremental("1"), _incremental("2")
    where = ('format = "oci"\noutput = "out/layout"' if destination == "output"
             else f'push = "docker://{registry.host}/stable/{destination}:1"')

    def batch(version: dict) -> Path:
        return write_batch(tmp_path / "batch.toml", f'name = "inc"\ntag = "1"\nmax_layers = 3\n{where}\n', [
            f'contents = ["{version["app"]}"]\nplatform = "linux/amd64"',
            f'contents = ["{version["app"]}", "{version["tool"]}"]\nplatform = "linux/arm64"'])

    report = tmp_path / "report.json"
    first = [image.plan["store_layers"] for image in _members(batch(v1), report)]
    run_luigi(BuildImages(batch_file=str(batch(v1)), report=str(report)))
    # The tool updated: the amd64 image (without it) keeps every layer, the arm64 one all but
    # the tool's, as one image's rebuild does (test_stable).
    second = [image.plan["store_layers"] for image in _members(batch(v2), report)]
    assert second == [first[0], [[v2["tool"] if path == v1["tool"] else path for path in layer] for layer in first[1]]]
    assert second[1] != first[1]
    ran = run_luigi(BuildImages(batch_file=str(batch(v2)), report=str(report)))["ran_tasks"]
    written = [task.store_paths() for task in ran if task.task_family in ("StorePathLayer", "OverflowLayer")]
    assert written == [layer for layer in second[1] if v2["tool"] in layer]
    # Each platform's layers are found through one pointer (an output's) or the push's stamp.
    store = LayerStore(str(layer_store))
    target = f"{registry.host}/stable/{destination}:1" if destination == "push" else None
    output = str(tmp_path / "out" / "layout") if destination == "output" else None
    assert [store.previous_layers(output=output, name="inc", target=target, platform=platform)
            for platform in ("linux/amd64", "linux/arm64")] == second


def test_the_previous_image_of_a_platform_is_the_last_written(tmp_path):
    """An output's previous image of a platform (``LayerStore.previous_layers``) is the last
    of that platform written there, an index's or a lone image's, whichever came last."""
    store = LayerStore(str(tmp_path / "store"))

    def record(path: str, kind: str = "store") -> str:  # a layer record holding the store path ``path``
        data = f"{kind} {path}".encode()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()

        def write_blob(f):
            f.write(data)
            return LayerBlob(digest, len(data), digest, len(data), "application/vnd.oci.image.layer.v1.tar")
        store.write(store.record_path("s", hashlib.sha256(data).hexdigest()[:8]), [path], "", write_blob)
        return record_name("s", hashlib.sha256(data).hexdigest()[:8])

    def image(*paths: str) -> list[str]:  # an image's records: its store layers, then a customisation layer
        return [*(record(path) for path in paths), record("/nix/store/c-" + "-".join(paths))]

    def write(stamp: str, **data) -> None:
        store.write_image_stamp(store.stamp_path("images", stamp), {"output": "/o", "name": "n", **data})

    def previous(platform: str) -> list[list[str]] | None:
        return store.previous_layers(output="/o", name="n", platform=platform)

    write("single", platform="linux/amd64", layers=image("/a1"))  # as AssembleImage writes it
    assert previous("linux/amd64") == previous("linux/arm64") == [["/a1"]]  # the image there, of any platform
    write("index", images={"linux/amd64": image("/a2"), "linux/arm64": image("/b2")})
    assert (previous("linux/amd64"), previous("linux/arm64"), previous("linux/riscv64")) == ([["/a2"]], [["/b2"]], [["/a1"]])
    write("single2", platform="linux/amd64", layers=image("/a3"))  # the index's amd64 image replaced
    assert (previous("linux/amd64"), previous("linux/arm64")) == ([["/a3"]], [["/b2"]])

    # The push stamp of an index written before its images' layers were named apart (every
    # platform's records, sorted, as one list): a first build, not an error.
    stamp = Path(store.stamp_path("pushes", "r:1/i:1"))
    stamp.parent.mkdir()
    customisation = [record(path, "customisation") for path in ("/a5", "/b5")]  # holding the contents
    stamp.write_text(json.dumps({"layers": sorted([record("/a5"), record("/b5"), *customisation])}))
    assert store.previous_layers(target="r:1/i:1", platform="linux/amd64") is None


def test_index_images_are_the_images_alone_with_their_sboms(tmp_path, layer_store, registry, vectors_app):
    """Each image of an index is the image it is alone, manifest annotations too (the same
    digest), with its SBOM attached: in the OCI layout (kept there when another image is added)
    and as a referrer of its manifest in the registry."""
    ref = f"{registry.host}/multi/vec:1"
    defaults = (f'name = "vec"\ntag = "1"\ncontents = ["{vectors_app}"]\nsource = "https://example.org/vec"\n'
                f'format = "oci"\noutput = "out/layout"\npush = "docker://{ref}"\n')
    batch = write_batch(tmp_path / "batch.toml", defaults, ['platform = "linux/amd64"', 'platform = "linux/arm64"'])
    report = tmp_path / "report.json"
    run_luigi(BuildImages(batch_file=str(batch), report=str(report)))
    layout = tmp_path / "out" / "layout"
    # The amd64 image alone, added to the layout as tag 2: the manifest the index names.
    run_luigi(BuildImage(name="vec", tag="2", contents=[vectors_app], source="https://example.org/vec",
                         platform="linux/amd64", format="oci", output=str(layout)))
    index = json.loads(skopeo("inspect", "--raw", f"oci:{layout}:1"))
    assert json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}")) == index
    digests = [m["digest"] for m in index["manifests"]]
    assert digests[0] == layout_digest(str(layout), "2") and len(set(digests)) == 2
    for digest in digests:
        manifest = json.loads(Path(blob_path(str(layout), digest)).read_bytes())
        assert manifest["annotations"]["org.opencontainers.image.source"] == "https://example.org/vec"
        (entry,) = layout_referrers(str(layout), digest)
        artifact = json.loads(Path(blob_path(str(layout), entry["digest"])).read_bytes())
        sbom = Path(blob_path(str(layout), artifact["layers"][0]["digest"])).read_bytes()
        check_sbom(validate(sbom), vectors_app, oci_config(layout, manifest), "vec")
        assert find_referrers(ref, digest, artifact_type=SBOM_MEDIA_TYPE) == [entry]

    # Nothing changed: nothing done. Without SBOMs attached: the push is made again (its
    # referrers are not those pushed).
    new_process()
    assert run_luigi(BuildImages(batch_file=str(batch), report=str(report)))["ran"] == ["BuildImages"]
    new_process()
    write_batch(batch, defaults + "attach_sbom = false\n", ['platform = "linux/amd64"', 'platform = "linux/arm64"'])
    assert "PushIndex" in run_luigi(BuildImages(batch_file=str(batch), report=str(report)))["ran"]
