"""Benchmark: what each layering makes a host pull after updates of different depths, and the
time of an update build against a tar floor.

The closure is made from installed Debian packages by ``debian_closure.py`` (``--roots``: 152
store paths, about 560 MiB), one Nix derivation per package; an update raises a package's
revision, which grows it by 3 % of its files' bytes (as new versions change sizes) and gives it
and every package that depends on it new store paths, as in Nix. The updates (``UPDATES``)
change packages at the top (applications), in the middle (OpenSSL, GnuTLS, SQLite) and deep
(zlib, libc), one after the other; ``--updates`` gives others (``package:depth,...``).

1. Pulled bytes. For each layering and ``--max-layers`` (100 and 20) every update's image is
   planned (``nixlayer.plan.plan_image``; ``stable`` with the previous update's plan as its
   previous build, as the layer store gives it), and compared with the previous update's
   image of the same layering:

   - pulled: the bytes of the layers of the new image the previous image did not have (a layer
     is the same when it holds the same store paths in the same order: its key, hence its
     bytes); a layer's bytes are taken as its store paths' NAR sizes (a layer's tar is within
     a few per cent of them), the customisation layer left out (a few KB);
   - new: the NAR bytes of the store paths new in this update, which no layering can avoid;
   - the ratio pulled / new (1.00 is the floor) and the number of store layers.

   It prints a table per ``--max-layers``: per update and in total, each layering's ratio and
   layers.
2. Update builds (unless ``--no-builds``): ``luigi --module pipelines BuildImage`` with the
   default layering and ``--max-layers``, ``--format oci --compression none`` (the OCI layout
   hard-links the layer blobs of the layer store), ``--workers 2``, one layer store and output
   for the whole sequence: the first image (not timed), then each update, timed (best of two,
   each from the same layer store and output: hard-linked copies put back after the first),
   against the floor ``tar -c <the update's new store paths> | sha256sum`` (best of two),
   measured in the same run. The builds' python is, as in ``bench_build.py`` (``--python``), by default that of
   a virtual environment with this checkout installed by pip, as a user installs it: a
   machine's own interpreter may carry packages that slow every run down (Luigi imports
   jsonschema when it is there; with rfc3987-syntax, which jsonschema's format-nongpl extra
   installs, that is 1.4 s a run here). Printed per update and in total (the sum of the builds' seconds over the sum of
   the floors; target 1.3), with the layers built and reused; also the no-op rebuild's seconds
   (what every build pays before its layers: Luigi, Nix's closure, the plan, the layer store),
   also with this script's interpreter when the builds' is another, and each build's seconds less those against the floor.

The first run copies the packages' files into the Nix store (a few minutes); later runs reuse
them. About 2 minutes then on 2 cores.

    python3 bench/bench_layering.py [--roots git,python3.11,...] [--updates curl:top,libc6:deepest,...]
        [--max-layers 100,20] [--no-builds] [--python venv|current] [--work DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_build  # noqa: E402
from bench_build import DEFAULT_ROOTS, Build, best, floor_seconds, make_venv, run_build, site_packages  # noqa: E402
from debian_closure import contents_of, dependency_dag, nix_build, write_closure_nix  # noqa: E402
from nixlayer.closure import graph_from_nix  # noqa: E402
from nixlayer.plan import DEFAULT_LAYERING, DEFAULT_MAX_LAYERS, plan_image  # noqa: E402

ROOTS = DEFAULT_ROOTS + ",wget,jq,less,file,zstd,bzip2"
LAYERINGS = ("popularity", "auto", "stable")
GROWTH_PERCENT = 3  # what each revision adds to a package, of its files' bytes
BUILD_TARGET = 1.3  # an update build's seconds / the floor's, in total
# (what changes, its depth): applied in this order, each on top of the previous ones (--updates).
UPDATES = "curl:top,libssl3:middle,git:top,zlib1g:deep,libsqlite3-0:middle,vim:top,libc6:deepest,libgnutls30:middle"


def pulled_bytes(graphs: list, updates: list[tuple[str, str]], max_layers_list: list[int]) -> None:
    """Print, per max_layers, each layering's pulled bytes / new bytes per update and in total."""
    for max_layers in max_layers_list:
        print(f"\nmax_layers {max_layers}: pulled bytes / bytes of new store paths (layers)")
        print(f"{'update':<26} {'new store paths':>22}  " + "  ".join(f"{name:>16}" for name in LAYERINGS))
        plans: dict[str, list[list[list[str]]]] = {name: [] for name in LAYERINGS}
        for name in LAYERINGS:
            previous = None
            for graph in graphs:
                plan = plan_image(graph, list(graph.roots()), max_layers=max_layers, layering=name, previous=previous)
                previous = [list(layer.store_paths) for layer in plan.layers]
                plans[name].append(previous)
        totals = dict.fromkeys(LAYERINGS, 0)
        total_new = 0
        worse = []  # the updates where the default pulled more than auto
        for step in range(1, len(graphs)):
            old, new = graphs[step - 1], graphs[step]
            fresh = [p for p in new if p not in old]
            new_bytes = sum(new.nar_size(p) or 0 for p in fresh)
            total_new += new_bytes
            cells = []
            pulled_by = {}
            for name in LAYERINGS:
                before = {tuple(layer) for layer in plans[name][step - 1]}
                pulled = sum(new.nar_size(p) or 0 for layer in plans[name][step] if tuple(layer) not in before
                             for p in layer)
                totals[name] += pulled
                pulled_by[name] = pulled
                cells.append(f"{pulled / new_bytes:>10.2f} ({len(plans[name][step]):>3})")
            label = "{} ({})".format(*updates[step - 1])
            print(f"{label:<26} {len(fresh):>5} {new_bytes / 2**20:>9.1f} MiB    " + "  ".join(cells))
            if pulled_by[DEFAULT_LAYERING] > pulled_by["auto"]:
                worse.append(label)
        print(f"{'total':<26} {'':>5} {total_new / 2**20:>9.1f} MiB    "
              + "  ".join(f"{totals[name] / total_new:>10.2f}      " for name in LAYERINGS))
        print(f"{DEFAULT_LAYERING} (the default) pulled more than auto on: {', '.join(worse) or 'no update'}")
        print(json.dumps({"max_layers": max_layers, "ratios": {n: round(totals[n] / total_new, 3) for n in LAYERINGS},
                          "worse_than_auto": worse}))


def layers_line(stderr: str) -> str:
    """What a build says it did with its layers (``2 built, 98 reused``), from its last line."""
    wrote = [line for line in stderr.splitlines() if line.startswith("nixlayer: wrote")]
    return wrote[-1].rsplit("layers: ", 1)[-1].split(";")[0] if wrote else "?"


def update_build(work: Path, store: Path, contents: list[str], output: Path, options: tuple[str, ...]) -> Build:
    """The faster of two builds of ``contents`` from the same layer store and output, as the
    floor is the faster of two: hard-linked copies of both are taken before the first and put
    back after it (the layer store and the OCI layout replace files, never write into them),
    and the second leaves them as the sequence goes on."""
    builds = []
    for attempt in range(2):
        if attempt == 0:
            for path in (store, output):
                subprocess.run(["cp", "-al", str(path), f"{path}.before"], check=True)
        builds.append(run_build(work, store, contents, output, 2, options))
        if attempt == 0:
            for path in (store, output):
                shutil.rmtree(path)
                os.rename(f"{path}.before", path)
    return best(builds)


def update_builds(work: Path, steps: list[list[str]], graphs: list, updates: list[tuple[str, str]]) -> None:
    """Print the seconds of each update build against its floor (see the module docstring)."""
    print(f"\nupdate builds: BuildImage --layering {DEFAULT_LAYERING} (the default) --max-layers {DEFAULT_MAX_LAYERS}"
          " --format oci --compression none --workers 2, against tar -c <new store paths> | sha256sum")
    options = ("--format", "oci", "--compression", "none")
    store, output = work / "store", work / "image"
    run_build(work, store, steps[0], output, 2, options)  # the first image, not timed
    noop = min(run_build(work, store, steps[0], output, 2, options).seconds for _ in range(2))
    print(f"no-op rebuild (nothing changed; what every build pays before its layers): {noop:.2f} s")
    if bench_build.PYTHON[0] != sys.executable:
        current = min(run_build(work, store, steps[0], output, 2, options, [sys.executable]).seconds
                      for _ in range(2))
        print(f"no-op rebuild with {sys.executable} (--python current): {current:.2f} s")
    print(f"{'update':<26} {'new store paths':>22}  {'build s':>8} {'floor s':>8} {'ratio':>7}"
          f" {'build - no-op':>14} {'ratio':>6}  layers")
    build_total = floor_total = 0.0
    for step in range(1, len(steps)):
        fresh = [p for p in graphs[step] if p not in graphs[step - 1]]
        new_bytes = sum(graphs[step].nar_size(p) or 0 for p in fresh)
        build = update_build(work, store, steps[step], output, options)
        floor = floor_seconds(fresh)
        build_total += build.seconds
        floor_total += floor
        label = "{} ({})".format(*updates[step - 1])
        work_seconds = build.seconds - noop
        print(f"{label:<26} {len(fresh):>5} {new_bytes / 2**20:>9.1f} MiB    {build.seconds:>8.2f} {floor:>8.2f}"
              f" {build.seconds / floor:>7.2f} {work_seconds:>14.2f} {work_seconds / floor:>6.2f}  {layers_line(build.stderr)}")
    count = len(steps) - 1
    ratio = build_total / floor_total
    work_ratio = (build_total - count * noop) / floor_total
    print(f"{'total':<26} {'':>22}    {build_total:>8.2f} {floor_total:>8.2f} {ratio:>7.2f}"
          f" {build_total - count * noop:>14.2f} {work_ratio:>6.2f}  target {BUILD_TARGET}:"
          f" {'MET' if ratio <= BUILD_TARGET else 'MISSED'}")
    print(json.dumps({"update_builds": {"seconds": round(build_total, 2), "floor_seconds": round(floor_total, 2),
                                        "ratio": round(ratio, 3), "noop_seconds": round(noop, 2),
                                        "ratio_less_noop": round(work_ratio, 3)}}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--roots", default=ROOTS)
    parser.add_argument("--max-layers", default="100,20")
    parser.add_argument("--updates", default=UPDATES,
                        help="the updates, in order: package:depth,... (the depth is only a label)")
    parser.add_argument("--no-builds", action="store_true", help="plan only: no update builds timed")
    parser.add_argument("--work", type=Path, help="work directory to use and keep (default: a temporary one);"
                        " a later run with the same one reuses its Nix expression, not its layer store")
    parser.add_argument("--python", default="venv", choices=["venv", "current"],
                        help="the builds' python: a virtual environment with nixlayer installed (default), or this one")
    args = parser.parse_args(argv)
    updates = [tuple(item.partition(":")[::2]) for item in args.updates.split(",")]
    dag = dependency_dag(args.roots.split(","))
    for name, _ in updates:
        if name not in dag:
            raise SystemExit(f"bench_layering: {name} (an update) is not in the closure of {args.roots}")
    with contextlib.ExitStack() as stack:
        if args.work:
            work = args.work.resolve()
            work.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(work / "store", ignore_errors=True)
            shutil.rmtree(work / "image", ignore_errors=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-layering-")))
        nix_file = write_closure_nix(work, dag, GROWTH_PERCENT)
        revisions: dict[str, int] = {}
        steps = [nix_build(nix_file, "contents", revisions)]
        for number, (name, _) in enumerate(updates, 1):
            revisions[name] = number
            steps.append(nix_build(nix_file, "contents", revisions))
        graphs = [graph_from_nix(contents) for contents in steps]
        (work / "steps.json").write_text(json.dumps(steps))  # each image's contents, to build by hand
        first = graphs[0]
        total_bytes = sum(first.nar_size(p) or 0 for p in first)
        print(f"closure: {len(first)} store paths, {total_bytes / 2**20:.0f} MiB, {len(contents_of(dag))} contents;"
              f" roots {args.roots}")
        pulled_bytes(graphs, updates, [int(n) for n in args.max_layers.split(",")])
        if not args.no_builds:
            if args.python == "venv":
                shutil.rmtree(work / "venv", ignore_errors=True)
                bench_build.PYTHON = make_venv(work)
            print(f"\nbuilds run by {' '.join(bench_build.PYTHON)} ({site_packages(bench_build.PYTHON[0])} installed"
                  f" distributions); this script's {sys.executable} has {site_packages(sys.executable)}")
            update_builds(work, steps, graphs, updates)
    return 0


if __name__ == "__main__":
    sys.exit(main())
