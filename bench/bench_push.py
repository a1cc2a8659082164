"""Benchmark: bytes a registry receives for an update push, over the image's total bytes.

Starts Debian's ``docker-registry`` on loopback (the test fixture's ``start_registry``), pushes an
image of several made-up layers (a few MB each, incompressible), then an update with one layer
changed, and measures from the registry's side: the blobs whose upload sessions the registry
closed (its access log) and their sizes as stored in its filesystem storage.

    python3 bench/bench_push.py [--layers 6] [--layer-mb 3] [--chunk-mb 0]

Prints the time and bytes of each push and the ratio update_bytes / total_image_bytes.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from registry_fixture import make_image, start_registry  # noqa: E402

from nixlayer.mediatypes import MEDIA_TYPE_OCI_MANIFEST  # noqa: E402
from nixlayer.registry import PushOptions, push_image  # noqa: E402


def made_up_layers(count: int, size: int, seed: int) -> list[dict[str, bytes]]:
    rng = random.Random(seed)
    return [{f"/nix/store/layer-{i}/data.bin": rng.randbytes(size)} for i in range(count)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--layer-mb", type=float, default=3.0)
    parser.add_argument("--chunk-mb", type=float, default=0.0, help="0 = monolithic PUT")
    args = parser.parse_args(argv)
    size = int(args.layer_mb * 1024 * 1024)
    chunk = int(args.chunk_mb * 1024 * 1024) or None

    with tempfile.TemporaryDirectory(prefix="bench-push-") as tmp:
        work = Path(tmp)
        server = start_registry(work / "registry")
        try:
            layers = made_up_layers(args.layers, size, seed=1)
            image = make_image(work / "v1", layers, compress_level=1)
            changed = list(layers)
            changed[-1] = {"/nix/store/layer-last/data.bin": random.Random(2).randbytes(size)}
            update = make_image(work / "v2", changed, compress_level=1)

            def pushed(img, tag: str) -> tuple[float, int, int]:
                mark = server.mark()
                start = time.perf_counter()
                push_image(
                    f"docker://{server.host}/bench/app:{tag}",
                    img.manifest,
                    MEDIA_TYPE_OCI_MANIFEST,
                    img.config,
                    img.layers,
                    PushOptions(chunk_size=chunk),
                )
                seconds = time.perf_counter() - start
                digests = server.blob_activity("bench/app", mark)["uploaded"]
                return seconds, len(digests), sum(server.stored_blob_size(d) for d in digests)

            t1, n1, b1 = pushed(image, "1")
            t2, n2, b2 = pushed(update, "2")
        finally:
            server.stop()

    total = update.total_bytes
    print(f"layers: {args.layers} x {args.layer_mb} MB, upload: {'chunked ' + str(chunk) if chunk else 'monolithic'}")
    print(
        f"first push:  {n1} blobs, {b1} of {image.total_bytes} bytes received by the registry, "
        f"{t1:.2f}s ({b1 / t1 / 1e6:.1f} MB/s)"
    )
    print(f"update push: {n2} blobs, {b2} bytes received by the registry, {t2:.2f}s")
    print(f"update bytes / image bytes = {b2}/{total} = {b2 / total:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
