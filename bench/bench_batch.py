"""Benchmark: BuildImages on a batch of images sharing a base, against single-image builds.

Generates a synthetic store directory (no Nix needed; nixlayer reads it through ``store_root``
and a closure graph file, as ``nix path-info --json --recursive`` would give it): ``--base``
store paths every image shares, holding ``--base-mib`` MiB of files between them (a few large
paths and many small ones, as a real base of libc, a language runtime and libraries), and per
image ``--unique`` small paths of its own plus a root that refers to them. Every image has
fewer than ``max_layers - 2`` store paths, so every store path is a layer task of its own:
``base + images * (unique + 1)`` StorePathLayer tasks plus one customisation layer per image.

In one run it times each image built alone (fresh layer store, ``BuildImage``), then the
whole batch (fresh layer store, ``BuildImages``), then the batch again (nothing changed),
and prints per task the scheduling overhead: the batch's Luigi run time minus the time spent
in the tasks' ``run`` (Luigi's PROCESSING_TIME events) and in planning, over the number of
tasks. The run plans its images (closure graph, popularity order) as a ``luigi`` command
does, from nothing (``BuildImages.images``, timed as "planning"). The bound is 1.3x the
slowest single-image build plus the time the batch spent in its layer tasks' ``run``; also
printed: what the batch spends beyond its layers' work against that 1.3x, and the bound read
as 1.3x (slowest single-image build + the layers' work).

The images are OCI layouts with uncompressed layers (``--format``), which hard-link the layer
blobs: the work measured is the layers'. A docker-archive copies every layer into every image,
so 50 images of a 512 MiB base write 25 GiB of archives.

    python bench/bench_batch.py [--images 50] [--base 30] [--base-mib 512] [--unique 60]
        [--format oci] [--layer-batches 8]

``--base-mib 0`` leaves the base as small as the other paths: the batch is then all
scheduling, Luigi's per-task cost against a few milliseconds of work per image.
``--layer-batches 100000`` hands out every layer task alone (Luigi's per-task scheduling).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
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

from nixlayer.closure import graph_from_store_dir  # noqa: E402
from nixlayer.storepath import NIX_BASE32  # noqa: E402
import pipelines.build  # noqa: E402
from pipelines import BuildImage, BuildImages  # noqa: E402
from tasks.config import batches, nixlayer  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
STORE_DIR = "/nix/store"
FILE_BYTES = 4 << 20
LAYER_FAMILIES = ("StorePathLayer", "OverflowLayer", "CustomisationLayer")
RUN_SECONDS: list[tuple[str, float]] = []  # (task family, seconds in run()) of the build running


PLANNING: list[float] = []  # seconds in BuildImages.images() (the batch's planning) of the build running


@luigi.Task.event_handler(luigi.Event.PROCESSING_TIME)
def _processing_time(task, seconds):
    RUN_SECONDS.append((task.task_family, seconds))


def _timed(images):
    def timed_images(self):
        start = time.perf_counter()
        try:
            return images(self)
        finally:
            PLANNING.append(time.perf_counter() - start)
    return timed_images


BuildImages.images = _timed(BuildImages.images)


def new_process_state() -> None:
    """Forget what a new luigi command starts without: Luigi's task instances (with the plans
    they hold) and the closure graphs read."""
    Register.clear_instance_cache()
    pipelines.build._GRAPHS.clear()


def make_store(root: Path, images: int, base: int, base_mib: int, unique: int, seed: int) -> tuple[list[str], Path]:
    """Write the synthetic store under ``root`` and its closure graph (``root/graph.json``, in
    the form of ``nix path-info --json --recursive``); return each image's root store path and
    the graph file."""
    rng = random.Random(seed)
    disk = root / STORE_DIR.lstrip("/")
    disk.mkdir(parents=True)
    graph = []
    # Base path i holds a share of --base-mib proportional to 1/(i+1): a few large paths, many small.
    weights = [1 / (i + 1) for i in range(base)]
    base_bytes = [int(base_mib * 2**20 * w / sum(weights)) for w in weights]

    def new_path(name: str, refs: list[str], bulk: int = 0) -> str:
        path = f"{STORE_DIR}/{''.join(rng.choices(NIX_BASE32, k=32))}-{name}"
        share = disk / path.rsplit("/", 1)[1] / "share"
        share.mkdir(parents=True)
        # Text naming the references, then binary filler.
        (share / f"{name}.txt").write_bytes(
            (f"{name}\n" + "".join(f"needs {r}\n" for r in refs)).encode() + rng.randbytes(rng.randrange(64, 4096)))
        for n in range(0, bulk, FILE_BYTES):  # bulk in files of up to 4 MiB
            (share / f"data{n // FILE_BYTES}.bin").write_bytes(rng.randbytes(min(FILE_BYTES, bulk - n)))
        graph.append({"path": path, "references": sorted(refs)})
        return path

    base_paths: list[str] = []
    for i in range(base):
        base_paths.append(new_path(f"base{i}-1.0", rng.sample(base_paths, min(len(base_paths), 3)), base_bytes[i]))
    roots = []
    for image in range(images):
        own = [new_path(f"img{image}-lib{j}-1.0", rng.sample(base_paths, min(base, 4))) for j in range(unique)]
        roots.append(new_path(f"img{image}-app-1.0", own))
    # Each path's NAR size as Nix registers it (a layer is checked against it as it is written).
    scanned = graph_from_store_dir(roots, str(root), STORE_DIR)
    for entry in graph:
        entry["narSize"] = scanned.nar_size(entry["path"])
    graph_file = root / "graph.json"
    graph_file.write_text(json.dumps(graph))
    return roots, graph_file


def set_layer_store(path: Path) -> None:
    luigi.configuration.get_config().set("nixlayer", "layer_store", str(path))


class Run:
    """One Luigi run: wall seconds, seconds in the layer tasks' and the other tasks' run(),
    tasks scheduled and run."""

    def __init__(self, task: luigi.Task) -> None:
        RUN_SECONDS.clear()
        PLANNING.clear()
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # BuildImages prints its summary
            result = luigi.build([task], local_scheduler=True, detailed_summary=True, log_level="WARNING")
        self.wall = time.perf_counter() - start
        summary = _summary_dict(result.worker)
        assert not summary["failed"] and not summary["scheduling_error"], result.summary_text
        self.layer_work = sum(s for family, s in RUN_SECONDS if family in LAYER_FAMILIES)
        self.other_work = sum(s for family, s in RUN_SECONDS if family not in LAYER_FAMILIES)
        self.planning = sum(PLANNING)
        self.scheduled = len(result.worker._scheduled_tasks)
        self.ran = len(summary["completed"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--base", type=int, default=30)
    parser.add_argument("--base-mib", type=int, default=512, help="MiB of files in the base store paths")
    parser.add_argument("--unique", type=int, default=60)
    parser.add_argument("--format", default="oci", choices=["oci", "docker-archive"],
                        help="the images' format (layers uncompressed; an OCI layout hard-links them)")
    parser.add_argument("--layer-batches", type=int, default=None, help="default: luigi.cfg's, else unset (here: one batch per kind)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    logging.getLogger("luigi-interface").setLevel(logging.WARNING)
    luigi.configuration.add_config_path(str(REPO / "luigi.cfg"))  # the repository's settings
    config = luigi.configuration.get_config()
    if not config.has_section("nixlayer"):
        config.add_section("nixlayer")
    if args.layer_batches is not None:
        config.set("nixlayer", "layer_batches", str(args.layer_batches))

    tmp = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    suffix = ".tar" if args.format == "docker-archive" else ""
    try:
        roots, graph_file = make_store(tmp / "root", args.images, args.base, args.base_mib, args.unique, args.seed)
        common = dict(store_root=str(tmp / "root"), closure_graph=str(graph_file), max_layers=100,
                      format=args.format, compression="none", tag="t")
        images = [dict(name=f"bench/img{i}", contents=[root], **common) for i, root in enumerate(roots)]
        (tmp / "single").mkdir()

        singles = []  # seconds of each image built alone: planning + Luigi run
        for i, params in enumerate(images):
            os.sync()  # the previous build's writeback is not this build's time
            new_process_state()
            set_layer_store(tmp / "single" / "store")
            output = str(tmp / "single" / f"img{i}{suffix}")
            start = time.perf_counter()
            BuildImage(**params, output=output).plan
            singles.append(time.perf_counter() - start + Run(BuildImage(**params, output=output)).wall)
            shutil.rmtree(tmp / "single")
            (tmp / "single").mkdir()

        batch_file = tmp / "batch.toml"
        with open(batch_file, "w") as f:
            f.write("".join(f'{k} = {json.dumps(v)}\n' for k, v in common.items()))
            for i, params in enumerate(images):
                f.write(f'\n[[image]]\nname = "{params["name"]}"\ncontents = {json.dumps(params["contents"])}\n'
                        f'output = "{tmp / "out" / f"img{i}{suffix}"}"\n')
        set_layer_store(tmp / "batch-store")
        new_process_state()
        os.sync()
        batch = BuildImages(batch_file=str(batch_file), report=str(tmp / "report.json"))
        run = Run(batch)
        plan = run.planning
        report = json.loads((tmp / "report.json").read_text())
        noop = Run(batch)
        noop_totals = json.loads((tmp / "report.json").read_text())["totals"]

        total = run.wall
        overhead = run.wall - plan - run.layer_work - run.other_work
        largest = max(singles)
        bound = 1.3 * largest + run.layer_work
        print(f"store: {args.base} base store paths with {args.base_mib} MiB of files, shared by every image; "
              f"{args.unique + 1} small store paths of each image's own; images: {args.format}, layers uncompressed")
        print(f"batch: {args.images} images, {report['totals']['distinct_layers']} distinct layer tasks "
              f"({report['totals']['layers_built']} built), {run.scheduled} tasks scheduled, {run.ran} ran; "
              f"layer_batches {config.get('nixlayer', 'layer_batches', 'unset')}: batches per kind: {batches(nixlayer().layer_batches)}")
        print(f"single-image builds: sum {sum(singles):.2f} s, largest {largest:.2f} s, mean {sum(singles) / len(singles):.2f} s")
        print(f"batch total (its luigi run): {total:.2f} s = planning {plan:.2f} s + layer tasks' run() "
              f"{run.layer_work:.2f} s + image and report tasks' run() {run.other_work:.2f} s + scheduling {overhead:.2f} s")
        print(f"scheduling overhead: {overhead:.2f} s over {run.scheduled} tasks = "
              f"{1000 * overhead / run.scheduled:.2f} ms per task (target < 3 ms)")
        print(f"batch vs bound 1.3 x largest image + work of the distinct layers = {bound:.2f} s: "
              f"{total / bound:.2f}x ({'within' if total <= bound else 'OVER'}); batch / sum of singles = {total / sum(singles):.2f}")
        beyond = total - run.layer_work
        print(f"  beyond the layers' work: {beyond:.2f} s (scheduling, images, planning) against the bound's "
              f"1.3 x largest image = {1.3 * largest:.2f} s, {1000 * beyond / run.scheduled:.2f} ms per task")
        loose = 1.3 * (largest + run.layer_work)
        print(f"  read as 1.3 x (largest image + work of the distinct layers) = {loose:.2f} s: {total / loose:.2f}x "
              f"({'within' if total <= loose else 'OVER'})")
        print(f"no-op rebuild: {noop.wall:.2f} s, {noop.scheduled} tasks scheduled, {noop.ran} ran, "
              f"{noop_totals['layers_built']} layers built")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
