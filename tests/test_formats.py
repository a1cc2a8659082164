"""Image formats checked with the real tools (skopeo, podman, umoci), not by reading our output back.

Images are built from the vectors closure with the core library only (``tests/imagebuild.py``):
one layer per store path in popularity order, then the customisation layer of the app.
A missing tool makes a test fail, never skip.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from imagebuild import Built, build_layers, write
from nixlayer.compression import Compression
from nixlayer.errors import NixlayerError
from nixlayer.formats import write_image
from nixlayer.reference import check_name, check_tag

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
LAYER_MEDIA = "application/vnd.oci.image.layer.v1.tar"
PODMAN_RUN = ["podman", "--runtime", "runc"]


def tool(*argv: str, input: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run a real tool; a tool that is not installed fails the test (never skips it)."""
    path = shutil.which(argv[0])
    assert path is not None, f"{argv[0]} is not installed: the format tests need it (CI installs it)"
    result = subprocess.run([path, *argv[1:]], input=input, capture_output=True, timeout=120)
    if check:
        assert result.returncode == 0, (
            f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.decode(errors='replace')}"
        )
    return result


def skopeo_json(*argv: str) -> dict:
    return json.loads(tool("skopeo", *argv).stdout)


# --- building -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def closure(vectors, vectors_app) -> list[str]:
    """The app's store paths in popularity order; checked against Nix's own closure."""
    order = vectors["popularity_order"]
    requisites = subprocess.run(
        ["nix-store", "--query", "--requisites", vectors_app], check=True, capture_output=True, text=True
    ).stdout.split()
    assert sorted(order) == sorted(requisites)
    return order


@pytest.fixture(scope="module")
def built(tmp_path_factory, closure, vectors_app) -> dict[str, Built]:
    """The vectors image's layers in one fresh layer store per compression."""
    root = tmp_path_factory.mktemp("layerstores")
    config = {"Cmd": [f"{vectors_app}/bin/vec-app"], "Env": ["PATH=/bin"]}
    return {
        name: build_layers(root / name, closure, [vectors_app], Compression(name), config=config)
        for name in ("none", "gzip", "zstd")
    }


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("images")


@pytest.fixture(scope="module")
def docker_archive(built, outputs) -> tuple[Path, str]:
    path = outputs / "vectors.tar"
    return path, write(built["none"], "docker-archive", path, name="vectors", tag="1")


@pytest.fixture(scope="module")
def oci_dirs(built, outputs) -> dict[str, tuple[Path, str]]:
    """An OCI layout per compression, tagged ``1``, with the manifest digest write_image returned."""
    result = {}
    for name, b in built.items():
        path = outputs / f"oci-{name}"
        result[name] = path, write(b, "oci", path, tag="1")
    return result


def expected_diff_ids(vectors, closure, b: Built) -> list[str]:
    names = {path: name for name, path in vectors["store_paths"].items()}
    store = [vectors["single_path_layers"][names[path]]["diff_id"] for path in closure]
    return store + [b.layers[-1].blob.diff_id]


# --- docker-archive -------------------------------------------------------------------------


def test_docker_archive_skopeo_lists_the_expected_layers(vectors, closure, built, docker_archive):
    path, image_id = docker_archive
    expected = expected_diff_ids(vectors, closure, built["none"])
    assert len(expected) == len(closure) + 1
    info = skopeo_json("inspect", f"docker-archive:{path}")
    assert info["Layers"] == expected
    assert (info["Architecture"], info["Os"], info["Created"]) == ("amd64", "linux", "1970-01-01T00:00:01Z")
    config = skopeo_json("inspect", "--config", f"docker-archive:{path}")
    assert config["rootfs"]["diff_ids"] == expected
    raw_config = tool("skopeo", "inspect", "--config", "--raw", f"docker-archive:{path}").stdout
    assert "sha256:" + hashlib.sha256(raw_config).hexdigest() == image_id


def test_docker_archive_members_manifest_and_config(vectors, closure, built, docker_archive):
    path, image_id = docker_archive
    b = built["none"]
    with tarfile.open(path) as tar:
        members = tar.getmembers()
        data = {m.name: tar.extractfile(m).read() for m in members}
    layer_names = [layer.blob.diff_id.removeprefix("sha256:") + "/layer.tar" for layer in b.layers]
    config_name = image_id.removeprefix("sha256:") + ".json"
    assert [m.name for m in members] == layer_names + [config_name, "manifest.json"]
    assert all(m.isfile() and m.mtime == 1 for m in members)
    for name, layer in zip(layer_names, b.layers):
        assert "sha256:" + hashlib.sha256(data[name]).hexdigest() == layer.blob.diff_id
        assert data[name] == Path(layer.file).read_bytes()
    assert hashlib.sha256(data[config_name]).hexdigest() + ".json" == config_name

    manifest = json.loads(data["manifest.json"])
    assert manifest == [{"Config": config_name, "RepoTags": ["vectors:1"], "Layers": layer_names}]

    config = json.loads(data[config_name])
    assert {"created", "architecture", "os", "config", "rootfs", "history"} <= set(config)
    assert config["created"] == "1970-01-01T00:00:01Z"
    assert (config["architecture"], config["os"]) == ("amd64", "linux")
    assert config["config"]["Cmd"] == [f"{vectors['store_paths']['app']}/bin/vec-app"]
    assert config["rootfs"] == {"type": "layers", "diff_ids": expected_diff_ids(vectors, closure, b)}
    assert len(config["history"]) == len(b.layers)
    for entry, path in zip(config["history"], closure):
        assert entry["created"] == config["created"] and path in entry["comment"]


@pytest.fixture
def podman_name() -> str:
    """A name no other test run uses, removed from podman's store afterwards."""
    name = f"registry:5000/nixlayer-tests/formats-{os.getpid()}"
    yield name
    # check=False: with other podman users on the machine, a listing can fail transiently
    images = tool("podman", "images", "--format", "{{.Repository}}:{{.Tag}}", check=False).stdout.decode().split()
    for image in images:
        if image.startswith(name + ":"):
            tool("podman", "rmi", image, check=False)


def podman_image_id(reference: str) -> str:
    out = tool("podman", "image", "inspect", "--format", "{{.Id}}", reference).stdout.decode().strip()
    return "sha256:" + out.removeprefix("sha256:")


def test_podman_loads_the_docker_archive(built, outputs, podman_name):
    path = outputs / "podman.tar"
    image_id = write(built["none"], "docker-archive", path, name=podman_name, tag="v1")
    load = tool("podman", "load", "-i", str(path))
    assert f"{podman_name}:v1" in load.stdout.decode() + load.stderr.decode()
    assert podman_image_id(f"{podman_name}:v1") == image_id
    tool("podman", "rmi", f"{podman_name}:v1")
    assert tool("podman", "image", "exists", f"{podman_name}:v1", check=False).returncode == 1


def test_docker_archive_streamed_to_a_pipe_loads(tmp_path, closure, vectors_app, built, podman_name):
    """write_image(..., output='-') in a child process, piped straight into ``podman load``."""
    script = (
        "import sys, json\n"
        f"sys.path[:0] = [{str(REPO)!r}, {str(TESTS)!r}]\n"
        "from imagebuild import build_layers, write\n"
        f"b = build_layers({str(tmp_path / 'store')!r}, {closure!r}, [{vectors_app!r}],"
        f" config={{'Cmd': [{vectors_app + '/bin/vec-app'!r}], 'Env': ['PATH=/bin']}})\n"
        f"print(write(b, 'docker-archive', '-', name={podman_name!r}, tag='stream'), file=sys.stderr)\n"
    )
    podman = shutil.which("podman")
    assert podman is not None, "podman is not installed"
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    load = subprocess.run([podman, "load"], stdin=writer.stdout, capture_output=True, timeout=120)
    writer.stdout.close()
    err = writer.stderr.read().decode()
    assert writer.wait(timeout=60) == 0, err
    assert load.returncode == 0, load.stderr.decode()
    image_id = err.strip().splitlines()[-1]
    assert podman_image_id(f"{podman_name}:stream") == image_id
    # the streamed image is the one written to a file from the same layers
    assert image_id == "sha256:" + hashlib.sha256(built["none"].config).hexdigest()
    tool("podman", "rmi", f"{podman_name}:stream")


# --- OCI layout -----------------------------------------------------------------------------


def tree(root: Path) -> dict[str, tuple]:
    """Every entry below ``root`` (not following symlinks): relative path -> what it is.

    Files: ("file", mode, sha256 of the contents); symlinks: ("link", target);
    directories: ("dir", mode).
    """
    result = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                result[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                result[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                result[rel] = ("file", stat.S_IMODE(st.st_mode), hashlib.sha256(path.read_bytes()).hexdigest())
    return result


def closure_tree(closure: list[str]) -> dict[str, tuple]:
    """The tree of the real store paths, as ``tree`` would list it under ``nix/store``."""
    result = {}
    for path in closure:
        base = os.path.basename(path)
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            result[base] = ("dir", stat.S_IMODE(st.st_mode))
            result.update({f"{base}/{rel}": v for rel, v in tree(Path(path)).items()})
        else:
            result[base] = ("file", stat.S_IMODE(st.st_mode), hashlib.sha256(Path(path).read_bytes()).hexdigest())
    return result


def read_json(path: Path) -> dict:
    return json.loads(path.read_bytes())


def manifest_of(layout: Path) -> tuple[dict, dict]:
    index = read_json(layout / "index.json")
    (entry,) = index["manifests"]
    digest = entry["digest"]
    return index, read_json(layout / "blobs" / "sha256" / digest.removeprefix("sha256:"))


def test_oci_layout_structure(oci_dirs, built):
    for name, (layout, digest) in oci_dirs.items():
        assert read_json(layout / "oci-layout") == {"imageLayoutVersion": "1.0.0"}
        index, manifest = manifest_of(layout)
        assert index["schemaVersion"] == 2
        (entry,) = index["manifests"]
        assert entry["annotations"]["org.opencontainers.image.ref.name"] == "1"
        assert entry["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
        assert entry["digest"] == digest
        blobs = layout / "blobs" / "sha256"
        assert sorted(os.listdir(layout)) == ["blobs", "index.json", "oci-layout"]
        assert os.listdir(layout / "blobs") == ["sha256"]
        # every blob is stored under its own digest, with its size
        for hex_digest in os.listdir(blobs):
            assert hashlib.sha256((blobs / hex_digest).read_bytes()).hexdigest() == hex_digest
        descriptors = [entry, manifest["config"], *manifest["layers"]]
        for d in descriptors:
            assert (blobs / d["digest"].removeprefix("sha256:")).stat().st_size == d["size"]
        assert {d["digest"].removeprefix("sha256:") for d in descriptors} == set(os.listdir(blobs))
        assert [d["digest"] for d in manifest["layers"]] == [l.blob.digest for l in built[name].layers]


MAGIC = {
    "none": lambda data: data[257:262] == b"ustar",
    "gzip": lambda data: data[:2] == b"\x1f\x8b",
    "zstd": lambda data: data[:4] == b"\x28\xb5\x2f\xfd",
}


def test_oci_layer_media_types_match_the_blob_bytes(oci_dirs):
    for name, (layout, _) in oci_dirs.items():
        _, manifest = manifest_of(layout)
        for d in manifest["layers"]:
            data = (layout / "blobs" / "sha256" / d["digest"].removeprefix("sha256:")).read_bytes()
            assert d["mediaType"] == LAYER_MEDIA + ("" if name == "none" else f"+{name}")
            kinds = [kind for kind, matches in MAGIC.items() if matches(data)]
            assert kinds == [name], (name, d["digest"], data[:8])


@pytest.mark.parametrize("name", ["none", "gzip", "zstd"])
def test_skopeo_reads_the_oci_layout_and_decompresses_every_layer_to_its_diff_id(
    tmp_path, vectors, closure, built, oci_dirs, name
):
    layout, digest = oci_dirs[name]
    info = skopeo_json("inspect", f"oci:{layout}:1")
    assert info["Digest"] == digest
    assert info["Layers"] == [l.blob.digest for l in built[name].layers]
    config = skopeo_json("inspect", "--config", f"oci:{layout}:1")
    diff_ids = expected_diff_ids(vectors, closure, built[name])
    assert config["rootfs"]["diff_ids"] == diff_ids
    # skopeo's own gzip/zstd decoders: each layer must decompress to exactly its diff_id
    tool("skopeo", "copy", "--dest-decompress", f"oci:{layout}:1", f"dir:{tmp_path / 'dir'}")
    for diff_id in diff_ids:
        data = (tmp_path / "dir" / diff_id.removeprefix("sha256:")).read_bytes()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == diff_id


# umoci 0.4.7 (Debian 12) cannot unpack zstd layers ("blob is not correct mediatype"); the zstd
# layout is checked by skopeo decompressing each layer to its diff_id above.
@pytest.mark.parametrize("name", ["none", "gzip"])
def test_umoci_unpacks_exactly_the_closure_and_the_customisation_links(
    tmp_path, vectors, closure, oci_dirs, name
):
    layout, _ = oci_dirs[name]
    bundle = tmp_path / "bundle"
    tool("umoci", "unpack", "--image", f"{layout}:1", str(bundle))
    rootfs = bundle / "rootfs"
    assert sorted(os.listdir(rootfs)) == ["bin", "etc", "nix"]
    assert os.listdir(rootfs / "nix") == ["store"]
    assert tree(rootfs / "nix" / "store") == closure_tree(closure)
    app = vectors["store_paths"]["app"]
    assert tree(rootfs / "bin") == {"vec-app": ("link", f"{app}/bin/vec-app")}
    assert tree(rootfs / "etc") == {"app.conf": ("link", f"{app}/etc/app.conf")}


# --- oci-archive ----------------------------------------------------------------------------


def test_oci_archive_skopeo_inspect_and_copy(tmp_path, built, oci_dirs):
    for name in ("none", "zstd"):
        archive = tmp_path / f"{name}.tar"
        digest = write(built[name], "oci-archive", archive, tag="1")
        assert digest == oci_dirs[name][1]
        info = skopeo_json("inspect", f"oci-archive:{archive}")
        assert info["Digest"] == digest
        assert info["Layers"] == [l.blob.digest for l in built[name].layers]
        assert skopeo_json("inspect", f"oci-archive:{archive}:vectors:1")["Digest"] == digest
        copy = tmp_path / f"copy-{name}"
        tool("skopeo", "copy", "--preserve-digests", f"oci-archive:{archive}", f"oci:{copy}:tag")
        index, manifest = manifest_of(copy)
        assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "tag"
        assert index["manifests"][0]["digest"] == digest  # the manifest came over unchanged
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
        blobs = sorted(f"blobs/sha256/{h}" for h in os.listdir(oci_dirs[name][0] / "blobs" / "sha256"))
        assert [m.name for m in members] == ["index.json", "oci-layout", "blobs", "blobs/sha256", *blobs]
        assert all(m.mtime == 1 and m.uid == 0 and m.gid == 0 for m in members)


# --- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gzip", "zstd"])
def test_docker_archive_refuses_compressed_layers(tmp_path, built, name):
    output = tmp_path / "image.tar"
    with pytest.raises(NixlayerError) as error:
        write(built[name], "docker-archive", output)
    message = str(error.value)
    assert "docker-archive holds uncompressed layers" in message
    assert "compression none (--compression none)" in message and "oci-archive" in message
    assert os.listdir(tmp_path) == []


def test_docker_archive_refuses_a_compressed_layer_after_uncompressed_ones(tmp_path, built):
    layers = built["none"].layers[:-1] + built["zstd"].layers[-1:]
    with pytest.raises(NixlayerError, match="docker-archive holds uncompressed layers"):
        write_image("docker-archive", str(tmp_path / "x.tar"), layers, built["none"].config, "x", "1", 1, str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_unknown_format_and_oci_to_stdout_are_refused(tmp_path, built):
    with pytest.raises(NixlayerError, match="unknown format 'docker'.*docker-archive, oci, oci-archive"):
        write(built["none"], "docker", tmp_path / "x")
    with pytest.raises(NixlayerError, match="cannot go to standard output; use oci-archive"):
        write(built["none"], "oci", "-")
    assert os.listdir(tmp_path) == []


# --- reproducibility ------------------------------------------------------------------------


def test_the_same_image_twice_is_byte_identical(tmp_path, closure, vectors_app):
    """Two fresh layer stores, the same inputs: identical archives and digests."""
    results = []
    for run in ("a", "b"):
        out = tmp_path / f"out-{run}"
        out.mkdir()
        none = build_layers(tmp_path / f"store-{run}", closure, [vectors_app])
        zstd = build_layers(tmp_path / f"store-zstd-{run}", closure, [vectors_app], Compression("zstd"))
        digests = (
            write(none, "docker-archive", out / "docker.tar"),
            write(none, "oci-archive", out / "oci.tar"),
            write(zstd, "oci-archive", out / "oci-zstd.tar"),
            write(zstd, "oci", out / "oci-zstd"),
        )
        files = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
        layout = {p.name: p.read_bytes() for p in (out / "oci-zstd" / "blobs" / "sha256").iterdir()}
        results.append((digests, files, layout, (out / "oci-zstd" / "index.json").read_bytes()))
    assert results[0] == results[1]
    digests, files, _, _ = results[0]
    assert sorted(files) == ["docker.tar", "oci-zstd.tar", "oci.tar"]
    assert digests[1] != digests[2]  # zstd layers give another manifest, reproducibly


# --- image references -----------------------------------------------------------------------


def test_valid_names_and_tags():
    assert check_name("registry:5000/team/app") == "registry:5000/team/app"
    assert check_name("Registry.Example.com/app") == "Registry.Example.com/app"  # a host, as podman takes it
    assert check_name("localhost/app") == "localhost/app"
    assert check_name("app") == "app"
    assert check_tag("v1") == "v1"
    assert check_tag("a" * 128) == "a" * 128


@pytest.mark.parametrize(
    "name, allowed",
    [
        ("MyApp", "use lowercase letters, digits and separators"),
        ("UPPER/app", "use lowercase letters, digits and separators"),  # a path component, not a host
        ("", "image name is empty: give a name such as"),
        ("app:v1", "use lowercase letters, digits and separators"),
        ("a" * 256, "at most 255 are allowed"),
    ],
)
def test_bad_names_are_refused_saying_what_is_allowed(name, allowed):
    with pytest.raises(NixlayerError, match=allowed):
        check_name(name)


@pytest.mark.parametrize("tag", ["a" * 129, "", ".v1", "v1:2"])
def test_bad_tags_are_refused_saying_what_is_allowed(tag):
    with pytest.raises(NixlayerError, match=r"a tag is 1 to 128 letters, digits, '_', '.' or '-'"):
        check_tag(tag)


def test_podman_agrees_with_the_reference_checks(built, outputs, podman_name):
    """A name and tag check_name/check_tag accept load under exactly that name; one they refuse,
    podman refuses too."""
    good = outputs / "good.tar"
    write(built["none"], "docker-archive", good, name=check_name(podman_name), tag=check_tag("v1.0_rc-1"))
    tool("podman", "load", "-i", str(good))
    assert tool("podman", "image", "exists", f"{podman_name}:v1.0_rc-1", check=False).returncode == 0
    tool("podman", "rmi", f"{podman_name}:v1.0_rc-1")
    with pytest.raises(NixlayerError):
        check_name("MyApp")
    for name in ("MyApp", "UPPER/app"):
        with pytest.raises(NixlayerError):
            check_name(name)
        bad = outputs / "bad.tar"
        write(built["none"], "docker-archive", bad, name=name, tag="1")  # write_image does not check
        assert tool("podman", "load", "-i", str(bad), check=False).returncode != 0


# --- atomic output --------------------------------------------------------------------------


def vanish_midway(b: Built, tmp_path: Path) -> Built:
    """``b`` with its fourth layer's file gone (a copy of the blob, deleted): the writer has
    already written three layers when it finds out."""
    layers = list(b.layers)
    gone = tmp_path / "gone-blob"
    shutil.copyfile(layers[3].file, gone)
    layers[3] = dataclasses.replace(layers[3], file=str(gone))
    os.unlink(gone)
    return dataclasses.replace(b, layers=layers)


@pytest.mark.parametrize("format", ["docker-archive", "oci", "oci-archive"])
def test_a_write_failing_midway_leaves_no_output_and_no_temp_file(tmp_path, built, format):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    broken = vanish_midway(built["none"], tmp_path)
    scratch_before = sorted(os.listdir(built["none"].store.root))
    with pytest.raises(NixlayerError, match="gone-blob"):
        write(broken, format, out_dir / "image")
    assert os.listdir(out_dir) == []
    assert sorted(os.listdir(built["none"].store.root)) == scratch_before  # no .oci-archive-* left


@pytest.mark.parametrize("format", ["docker-archive", "oci-archive"])
def test_a_failed_rewrite_keeps_the_previous_output(tmp_path, built, format):
    output = tmp_path / "out" / "image"
    output.parent.mkdir()
    digest = write(built["none"], format, output)
    before = output.read_bytes()
    with pytest.raises(NixlayerError):
        write(vanish_midway(built["none"], tmp_path), format, output)
    assert os.listdir(output.parent) == ["image"]
    assert output.read_bytes() == before
    assert write(built["none"], format, output) == digest


def test_an_oci_layout_keeps_its_tags_and_a_failed_addition_changes_no_tag(tmp_path, built):
    """Images are added to a layout by tag, as skopeo copy does; a failed one adds no entry."""
    layout = tmp_path / "layout"
    first = write(built["none"], "oci", layout, tag="1")
    second = write(built["zstd"], "oci", layout, tag="2")
    assert skopeo_json("inspect", f"oci:{layout}:1")["Digest"] == first
    assert skopeo_json("inspect", f"oci:{layout}:2")["Digest"] == second
    index = (layout / "index.json").read_bytes()
    with pytest.raises(NixlayerError):
        write(vanish_midway(built["gzip"], tmp_path), "oci", layout, tag="3")
    assert (layout / "index.json").read_bytes() == index
    assert write(built["gzip"], "oci", layout, tag="1") != first  # tag 1 now names the gzip image
    assert skopeo_json("inspect", f"oci:{layout}:2")["Digest"] == second


def test_an_oci_output_that_is_another_directory_is_refused_untouched(tmp_path, built):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    with pytest.raises(NixlayerError, match="not an OCI image layout"):
        write(built["none"], "oci", work)
    assert os.listdir(work) == ["notes.txt"]
    afile = tmp_path / "afile"
    afile.write_text("mine")
    with pytest.raises(NixlayerError, match="not a directory"):
        write(built["none"], "oci", afile)
    assert afile.read_text() == "mine"


def test_a_layout_another_writer_is_creating_is_not_taken_for_other_files(tmp_path, built):
    """Another writer has made blobs/ and is renaming its oci-layout file into place."""
    layout = tmp_path / "layout"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / ".oci-layout.tmp-x1y2").write_bytes(b"")
    write(built["none"], "oci", layout, tag="t")
    tool("skopeo", "inspect", f"oci:{layout}:t")


def test_a_failure_in_the_archive_writer_after_some_bytes_leaves_nothing(tmp_path, built, monkeypatch):
    """The oci-archive writer dies after streaming part of the archive."""
    import nixlayer.formats as formats

    real = formats.write_oci_archive

    def dies(out, layout, mtime):
        class Cut(io.RawIOBase):
            written = 0

            def write(self, data):
                out.write(data)
                Cut.written += len(data)
                if Cut.written > 4096:
                    raise RuntimeError("disk gone")
                return len(data)

        real(Cut(), layout, mtime)

    monkeypatch.setattr(formats, "write_oci_archive", dies)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(RuntimeError, match="disk gone"):
        write(built["none"], "oci-archive", out_dir / "image.tar")
    assert os.listdir(out_dir) == []
    assert not [n for n in os.listdir(built["none"].store.root) if n.startswith(".oci-archive-")]


# --- more real-tool checks ------------------------------------------------------------------


def test_podman_loads_the_oci_archive_with_zstd_layers(tmp_path, built):
    """podman reads our oci-archive, zstd layers included, as the image whose ID is the config
    digest, named by ``org.opencontainers.image.ref.name``, which is ``name:tag`` there."""
    tag = f"nixlayer-formats-{os.getpid()}"
    archive = tmp_path / "zstd.tar"
    write(built["zstd"], "oci-archive", archive, tag=tag)
    try:
        tool("podman", "load", "-i", str(archive))
        assert podman_image_id(f"localhost/vectors:{tag}") == "sha256:" + hashlib.sha256(built["zstd"].config).hexdigest()
    finally:
        tool("podman", "rmi", f"localhost/vectors:{tag}", check=False)


@pytest.mark.parametrize("format", ["docker-archive", "oci-archive"])
def test_standard_output_gets_the_same_bytes_as_a_file(tmp_path, closure, vectors_app, format):
    store = tmp_path / "store"
    script = (
        "import sys\n"
        f"sys.path[:0] = [{str(REPO)!r}, {str(TESTS)!r}]\n"
        "from imagebuild import build_layers, write\n"
        f"b = build_layers({str(store)!r}, {closure!r}, [{vectors_app!r}])\n"
        f"write(b, {format!r}, '-')\n"
        f"write(b, {format!r}, {str(tmp_path / 'file.tar')!r})\n"
    )
    streamed = subprocess.run([sys.executable, "-c", script], capture_output=True, check=True, timeout=60).stdout
    assert streamed == (tmp_path / "file.tar").read_bytes()
    assert not [n for n in os.listdir(store) if n.startswith(".")]


def test_concurrent_writers_of_one_new_layout_keep_every_tag(tmp_path, built):
    """Writers that create the same layout at once (threads here; flock works between them as
    between processes) all end up in its index."""
    import threading

    layout = tmp_path / "race"
    errors = []

    def add(tag: str, b) -> None:
        try:
            write(b, "oci", layout, tag=tag)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=add, args=(f"t{i}", built[c])) for i, c in enumerate(["none", "gzip", "zstd", "none"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    index = json.loads((layout / "index.json").read_text())
    assert sorted(m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]) == ["t0", "t1", "t2", "t3"]
    for i in range(4):
        tool("skopeo", "inspect", f"oci:{layout}:t{i}")


def test_a_layout_removed_by_a_failed_first_writer_meanwhile_is_made_whole(tmp_path, built, monkeypatch):
    """Writer A made the layout and failed; it removes the layout (no index.json yet) while
    writer B, which found the directory there, has linked its layer blobs but not yet written
    its index: B puts every blob again under the lock, so its image is whole."""
    from nixlayer import oci_layout

    layout = tmp_path / "layout"
    layout.mkdir()  # as A made it
    put_data, removed = oci_layout._put_data, []

    def put_data_after_a_failed(root, data):
        if not removed:  # B is past its layer blobs: A fails now and removes its layout
            removed.append(True)
            oci_layout.remove_unfinished_layout(str(layout))
        return put_data(root, data)

    monkeypatch.setattr(oci_layout, "_put_data", put_data_after_a_failed)
    digest = write(built["none"], "oci", layout, tag="1")
    assert removed
    manifest = json.loads((layout / "blobs" / "sha256" / digest.split(":")[1]).read_text())
    for blob in [manifest["config"], *manifest["layers"]]:
        assert (layout / "blobs" / "sha256" / blob["digest"].split(":")[1]).stat().st_size == blob["size"]
    inspect = subprocess.run(["skopeo", "inspect", f"oci:{layout}:1"], capture_output=True, text=True)
    assert inspect.returncode == 0, inspect.stderr
