"""Benchmark: BuildImages on a batch of images sharing a base, against single-image builds.

Generates a synthetic store directory (no Nix needed; nixlayer scans it as Nix would, via
``store_root``): ``--base`` store paths every image shares, and per image ``--unique`` paths
of its own plus a root that refers to them, each a directory with a small file naming the paths it refers to.
Every image has fewer than ``max_layers - 2`` store paths, so every store path is a layer
task of its own: ``base + images * (unique + 1)`` StorePathLayer tasks plus one
customisation layer per image.

In one run it times each image built alone (fresh layer store, ``BuildImage``), then the
whole batch (fresh layer store, ``BuildImages``), then the batch again (nothing changed),
and prints per task the scheduling overhead: the batch's Luigi run time minus the time spent
in the tasks' ``run`` (Luigi's PROCESSING_TIME events), over the number of tasks. Layer plans
(closure scan, popularity order) are timed apart as "planning".

    python bench/bench_batch.py [--images 50] [--base 30] [--unique 60] [--layer-batch-size 50]

``--layer-batch-size 1`` turns off batching of layer tasks (Luigi's per-task scheduling).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import luigi  # noqa: E402
import luigi.configuration  # noqa: E402
from luigi.execution_summary import _summary_dict  # noqa: E402
from luigi.task_register import Register  # noqa: E402

from nixlayer.storepath import NIX_BASE32  # noqa: E402
from pipelines import BuildImage, BuildImages  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
STORE_DIR = "/nix/store"
RUN_SECONDS: list[float] = []


@luigi.Task.event_handler(luigi.Event.PROCESSING_TIME)
def _processing_time(task, seconds):
    RUN_SECONDS.append(seconds)


def make_store(root: Path, images: int, base: int, unique: int, seed: int) -> list[str]:
    """Write the synthetic store under ``root``; return each image's root store path."""
    rng = random.Random(seed)
    disk = root / STORE_DIR.lstrip("/")
    disk.mkdir(parents=True)

    def new_path(name: str, refs: list[str]) -> str:
        path = f"{STORE_DIR}/{''.join(rng.choices(NIX_BASE32, k=32))}-{name}"
        share = disk / path.rsplit("/", 1)[1] / "share"
        share.mkdir(parents=True)
        # Text naming the references, then binary filler: like real store files, it has few
        # long runs of base-32 characters (a run of 4,000 "x" costs the reference scan a
        # set look-up per position, which no real file does).
        (share / f"{name}.txt").write_bytes(
            (f"{name}\n" + "".join(f"needs {r}\n" for r in refs)).encode() + rng.randbytes(rng.randrange(64, 4096)))
        return path

    base_paths: list[str] = []
    for i in range(base):
        base_paths.append(new_path(f"base{i}-1.0", rng.sample(base_paths, min(len(base_paths), 3))))
    roots = []
    for image in range(images):
        own = [new_path(f"img{image}-lib{j}-1.0", rng.sample(base_paths, min(base, 4))) for j in range(unique)]
        roots.append(new_path(f"img{image}-app-1.0", own))
    return roots


def set_layer_store(path: Path) -> None:
    luigi.configuration.get_config().set("nixlayer", "layer_store", str(path))


def build(task: luigi.Task) -> tuple[float, float, int, int]:
    """Run ``task``; return (wall seconds, seconds in run(), tasks scheduled, tasks run)."""
    RUN_SECONDS.clear()
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # BuildImages prints its summary
        result = luigi.build([task], local_scheduler=True, detailed_summary=True, log_level="WARNING")
    wall = time.perf_counter() - start
    summary = _summary_dict(result.worker)
    assert not summary["failed"] and not summary["scheduling_error"], result.summary_text
    scheduled = len(result.worker._scheduled_tasks)
    return wall, sum(RUN_SECONDS), scheduled, len(summary["completed"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--base", type=int, default=30)
    parser.add_argument("--unique", type=int, default=60)
    parser.add_argument("--layer-batch-size", type=int, default=None, help="default: luigi.cfg's, else 50")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    logging.getLogger("luigi-interface").setLevel(logging.WARNING)
    luigi.configuration.add_config_path(str(REPO / "luigi.cfg"))  # the repository's settings
    config = luigi.configuration.get_config()
    if not config.has_section("nixlayer"):
        config.add_section("nixlayer")
    if args.layer_batch_size is not None:
        config.set("nixlayer", "layer_batch_size", str(args.layer_batch_size))

    tmp = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    try:
        roots = make_store(tmp / "root", args.images, args.base, args.unique, args.seed)
        common = dict(store_root=str(tmp / "root"), max_layers=100)
        images = []
        for i, root in enumerate(roots):
            images.append(dict(name=f"bench/img{i}", tag="t", contents=[root], output=str(tmp / "out" / f"img{i}.tar"), **common))
        (tmp / "out").mkdir()
        (tmp / "single").mkdir()

        singles = []
        for i, params in enumerate(images):
            Register.clear_instance_cache()
            set_layer_store(tmp / "single" / f"store{i}")
            start = time.perf_counter()
            BuildImage(**{**params, "output": str(tmp / "single" / f"img{i}.tar")}).plan
            plan = time.perf_counter() - start
            wall, _, _, _ = build(BuildImage(**{**params, "output": str(tmp / "single" / f"img{i}.tar")}))
            singles.append(plan + wall)
            shutil.rmtree(tmp / "single" / f"store{i}")

        batch_file = tmp / "batch.toml"
        with open(batch_file, "w") as f:
            f.write(f'store_root = "{common["store_root"]}"\nmax_layers = 100\ntag = "t"\n')
            for params in images:
                f.write(f'\n[[image]]\nname = "{params["name"]}"\ncontents = {json.dumps(params["contents"])}\n'
                        f'output = "{params["output"]}"\n')
        set_layer_store(tmp / "batch-store")
        Register.clear_instance_cache()
        batch = BuildImages(batch_file=str(batch_file), report=str(tmp / "report.json"))
        start = time.perf_counter()
        batch.images()  # the layer plans: closure scans and popularity order of every image
        plan = time.perf_counter() - start
        wall, in_run, scheduled, ran = build(batch)
        report = json.loads((tmp / "report.json").read_text())
        layer_tasks = report["totals"]["distinct_layers"]
        noop_wall, _, noop_scheduled, noop_ran = build(batch)
        noop = json.loads((tmp / "report.json").read_text())["totals"]

        total = plan + wall
        overhead = wall - in_run
        largest = max(singles)
        layer_work = in_run  # every task's run(): the layers, the images, the report
        bound = 1.3 * largest + layer_work
        print(f"batch: {args.images} images, {layer_tasks} distinct layer tasks "
              f"({report['totals']['layers_built']} built), {scheduled} tasks scheduled, {ran} ran; "
              f"layer_batch_size {luigi.configuration.get_config().get('nixlayer', 'layer_batch_size', '50')}")
        print(f"single-image builds: sum {sum(singles):.2f} s, largest {largest:.2f} s, mean {sum(singles) / len(singles):.2f} s")
        print(f"batch total: {total:.2f} s = planning {plan:.2f} s + luigi run {wall:.2f} s "
              f"(tasks' run() {in_run:.2f} s)")
        print(f"scheduling overhead: {overhead:.2f} s over {scheduled} tasks = {1000 * overhead / scheduled:.2f} ms per task")
        print(f"batch vs bound 1.3 x largest image + work of the batch's tasks = {bound:.2f} s: "
              f"{total / bound:.2f}x ({'within' if total <= bound else 'OVER'}); batch / sum of singles = {total / sum(singles):.2f}")
        print(f"no-op rebuild: {noop_wall:.2f} s, {noop_scheduled} tasks scheduled, {noop_ran} ran, "
              f"{noop['layers_built']} layers built")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
