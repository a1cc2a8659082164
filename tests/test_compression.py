"""Layer compression on several threads: the same bytes for every thread count, read by the
command-line tools; the thread count set in luigi.cfg or on the command line."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import subprocess

import pytest
import zstandard

from conftest import first_fast
from nixlayer.compression import GZIP_BLOCK, Compression
from nixlayer.errors import NixlayerError
from nixlayer.layer import LayerSettings, write_store_layer
from nixlayer.layerstore import settings_key
from tests.conftest import run_pipelines

STORE_PATH = "/nix/store/" + "c" * 32 + "-compressible-1.0"


@pytest.fixture(scope="module")
def big_store(tmp_path_factory):
    """A store root holding one store path of 3 files, 24 MB of words (compressible, with long and
    short matches): 24 gzip blocks, and more than one job of libzstd's multi-threaded mode at
    level 3 (8 MiB each)."""
    root = tmp_path_factory.mktemp("big-store")
    path = root / STORE_PATH.lstrip("/")
    path.mkdir(parents=True)
    rng = random.Random(17)
    words = [rng.randbytes(rng.randint(2, 12)) for _ in range(5000)]
    for name in ("a", "b", "c"):
        (path / name).write_bytes(b" ".join(rng.choices(words, k=1_100_000))[:8_000_000])
    return str(root)


def written(root: str, compression: Compression) -> tuple[object, bytes]:
    out = io.BytesIO()
    blob = write_store_layer([STORE_PATH], out, LayerSettings(), compression, store_root=root)
    return blob, out.getvalue()


@pytest.mark.parametrize("name", first_fast(["zstd", "gzip"]))
def test_every_thread_count_gives_the_same_blob(big_store, name):
    blobs = {threads: written(big_store, Compression(name, threads=threads)) for threads in (1, 2, 4)}
    (blob, data), *others = blobs.values()
    assert all(other == (blob, data) for other in others), {t: b.digest for t, (b, _) in blobs.items()}
    assert blob.digest == "sha256:" + hashlib.sha256(data).hexdigest() and blob.blob_size == len(data)
    plain, tar = written(big_store, Compression("none"))
    assert blob.diff_id == plain.diff_id and blob.size == len(tar) > 20 * GZIP_BLOCK
    assert len(data) < len(tar) * 0.8
    # The tools a user has decompress it to the layer's tar (pigz and zstd on several threads).
    tool = ["pigz", "-dc", "-p", "4"] if name == "gzip" else ["zstd", "-dc", "-T4"]
    assert subprocess.run(tool, input=data, capture_output=True, check=True).stdout == tar
    if name == "gzip":
        assert gzip.decompress(data) == tar
        assert data[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # no name, MTIME 0, OS unknown
        assert subprocess.run(["gzip", "-dc"], input=data, capture_output=True, check=True).stdout == tar
    else:
        assert zstandard.ZstdDecompressor().decompressobj().decompress(data) == tar


@pytest.mark.parametrize("name", ["gzip", "zstd"])
def test_the_blob_does_not_depend_on_how_the_input_is_cut(name):
    rng = random.Random(5)
    data = b"".join(rng.randbytes(rng.randint(1, 40)) * rng.randint(1, 30) for _ in range(60_000))
    assert len(data) > 3 * GZIP_BLOCK

    def compressed(cut: int, threads: int) -> bytes:
        compressor = Compression(name, threads=threads).compressor()
        parts = [compressor.compress(data[i:i + cut]) for i in range(0, len(data), cut)]
        return b"".join(parts) + compressor.flush()

    whole = compressed(len(data), 1)
    assert all(compressed(cut, threads) == whole for cut in (512, 10_240, GZIP_BLOCK + 1) for threads in (1, 3))
    # A stream of exactly whole blocks, and an empty one, end as well as any other.
    for size in (0, 1, GZIP_BLOCK, 2 * GZIP_BLOCK):
        compressor = Compression(name, threads=2).compressor()
        blob = compressor.compress(data[:size]) + compressor.flush()
        assert (gzip.decompress(blob) if name == "gzip" else zstandard.ZstdDecompressor().decompressobj().decompress(blob)) == data[:size]


@pytest.mark.parametrize("name", ["gzip", "zstd"])
def test_a_full_disk_midway_through_many_blocks_is_one_error(big_store, name):
    class FullAfter3MB(io.BytesIO):
        def write(self, data):
            if self.tell() + len(data) > 3_000_000:
                raise OSError(28, "No space left on device")
            return super().write(data)

    with pytest.raises(NixlayerError, match="^cannot write layer blob: No space left on device$"):
        write_store_layer([STORE_PATH], FullAfter3MB(), compression=Compression(name, threads=2), store_root=big_store)


def test_threads_are_no_part_of_the_compression_or_its_layer_store_key():
    one, four, default = Compression("gzip", threads=1), Compression("gzip", threads=4), Compression("gzip")
    assert one == four == default and one.key == four.key == default.key
    assert one.effective_threads == 1 and default.effective_threads >= 1
    assert settings_key(LayerSettings(), one, "/nix/store") == settings_key(LayerSettings(), four, "/nix/store")
    # The level and the library do change the bytes: they are in the key.
    assert Compression("gzip", 9).key != one.key and "zlib-ng" in one.key
    assert Compression("zstd", threads=1).key == Compression("zstd", threads=8).key != Compression("zstd", 4).key
    with pytest.raises(NixlayerError, match="compression threads must be 1 or more, not 0"):
        Compression("zstd", threads=0)


def manifest_of(layout) -> dict:
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"].split(":")[1]
    return json.loads((layout / "blobs" / "sha256" / digest).read_text())


@pytest.mark.parametrize("compression", first_fast(["gzip", "zstd"]))
def test_a_build_on_one_thread_and_on_four_gives_one_image(tmp_path, vectors_app, compression):
    """luigi.cfg's compression_threads and --nixlayer-compression-threads reach the layers (a
    bad value is refused, see below), and the image's digests do not change with them."""
    manifests = []
    for threads, flags, cfg in ((1, [], "compression_threads = 1\n"),
                                (4, ["--nixlayer-compression-threads", "4"], "")):
        out = tmp_path / f"oci-{threads}"
        run = run_pipelines(["BuildImage", "--name", "vec", "--contents", json.dumps([vectors_app]), "--format", "oci",
                             "--compression", compression, "--output", str(out), *flags],
                            tmp_path / f"store-{threads}", cfg=cfg)
        assert run.returncode == 0, run.stderr
        manifests.append(manifest_of(out))
    assert manifests[0] == manifests[1]
    assert {layer["mediaType"] for layer in manifests[0]["layers"]} == {f"application/vnd.oci.image.layer.v1.tar+{compression}"}


@pytest.mark.parametrize("setting, flags", first_fast([
    ("compression_threads = 0\n", []),
    ("", ["--nixlayer-compression-threads", "many"]),
]))
def test_bad_compression_threads_one_line_nothing_left(tmp_path, vectors_app, setting, flags):
    store, out = tmp_path / "store", tmp_path / "out"
    run = run_pipelines(["BuildImage", "--name", "vec", "--contents", json.dumps([vectors_app]), "--format", "oci",
                         "--compression", "gzip", "--output", str(out), *flags], store, cfg=setting)
    assert run.returncode != 0
    errors = [line for line in run.stderr.splitlines() if line.startswith("nixlayer: error:")]
    assert errors == ["nixlayer: error: [nixlayer] compression_threads (--nixlayer-compression-threads) must be a"
                      " whole number from 1 to 65535"], run.stderr
    assert "Traceback" not in run.stderr
    assert not out.exists() and not store.exists()
