"""Benchmark: `luigi --module pipelines BuildImage` on a realistic closure, against a tar floor.

The closure is made offline from installed Debian packages (``debian_closure.py``): the
dependency closure of a few root packages (``--roots``), one Nix derivation per package. The
image's contents are the packages nothing else depends on. One of them, ``--leaf``, has a
second version (its revision raised) that differs in one file; being a leaf, nothing else's
hash changes with it. The generated .nix file lives in a temporary directory; the derivations
are input-addressed, so a rerun builds nothing.

Two scenarios, each on its own closure. Every build is a subprocess `python -m luigi --module
pipelines BuildImage ...` (the luigi command without a version manager's shim in front) with a
temporary luigi.cfg (LUIGI_CONFIG_PATH) naming its layer store; the floor is
``tar -c <the closure's store paths> | sha256sum``. The python is, by default (``--python
venv``), that of a virtual environment made for the run with ``pip install`` of this checkout:
nixlayer and its dependencies, as a user installs it. A machine's own interpreter may carry
packages that slow every run down (Luigi imports jsonschema when it is there: 35 ms here), so
the incremental scenario also times its no-op and one-leaf rebuilds (oci, ``--workers 1``) with
``--python current``'s interpreter (the one running this script), and ``--python current`` runs
every build with it.

1. Default (``--roots``, 142 store paths, 547 MiB): nixpkgs' default ``--max-layers 100``,
   ``--layering popularity`` (nixpkgs 2018-2024) and docker-archive output. Cold build (empty layer store) with ``--workers 1`` and ``--workers
   2`` (same bytes?), the no-op rebuild, and the rebuild after the leaf changed (``--workers 2``,
   on a hard-linked copy of the cold build's layer store); peak RSS of the cold builds (wait4
   rusage of luigi and what it waited for).
2. Incremental (``--incremental-roots``, 107 store paths, 2.1 GiB): the configuration nixlayer's
   incremental rebuilds are designed for. ``--max-layers`` is the number of store paths + 1, so
   every store path has a layer of its own (no overflow layer; checked on the plan and on the
   image) and a changed leaf rebuilds its own layer and the customisation layer only. Built
   as ``--format oci`` (``--oci-compression``, default none as for docker-archive: the OCI
   layout hard-links the layer blobs, so assembly copies no layer bytes) with ``--workers 1``
   (Luigi's default) and ``--workers 2``, and as docker-archive with ``--workers 2``: cold,
   no-op, and one-leaf rebuild on hard-linked copies of the cold layer store and output
   (written where the cold build wrote, as a periodic rebuild would).
   Also timed: ``nix path-info`` (every run makes that call) and writing the customisation
   layer alone, in one process: from scratch, and with the kept fragments of every content
   but the changed leaf (what a one-leaf rebuild does).

Targets, printed per scenario as MET or MISSED: no-op under 1 s + 1 ms per store path; cold
build with ``--workers 2`` under 1.5x the floor; one-leaf rebuild under 5 % of the cold build
(as the issue words them: "the cold build" and "the cold build with --workers 2" apart, so
the one-leaf target compares the two with Luigi's default ``--workers 1``). Exits 1 if a
counted target is missed (0 otherwise), 2 if a build fails. Counted: the default scenario's
no-op and cold targets, the incremental scenario's no-op targets and its oci cold and one-leaf
targets. Printed as "(not counted)", with the reason: the one-leaf comparison with
``--workers 2`` on both sides (a second worker halves the cold build, not a one-layer
rebuild), the one-leaf targets of the docker-archive builds (unmeetable by design: the default
scenario's leaf sits in the overflow layer, and a docker-archive is one file written whole for
any change), and the incremental scenario's docker-archive cold target (a comparison: it
writes the image bytes twice, the floor none). Each build runs ``--repeat`` times (the fastest counts; the floor is the faster of
two), with ``sync`` before each, since the machine may be shared. About 4 minutes on 2 cores;
the work directory (up to ~9 GB in the incremental scenario) is removed at the end, the
generated store paths (~2.4 GB) are kept for the next run unless ``--delete-store-paths``.

    python3 bench/bench_build.py [--scenarios default,incremental] [--roots ...] [--leaf curl]
        [--incremental-roots ...] [--incremental-leaf curl] [--oci-compression none]
        [--repeat 3] [--python venv|current] [--keep] [--delete-store-paths]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from debian_closure import contents_of, dependency_dag, nix_build, write_closure_nix  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ROOTS = "git,python3.11,vim,postgresql-15,cmake,curl,openssh-client,gdb"
DEFAULT_MAX_LAYERS = 100  # BuildImage's default, as nixpkgs
# The default scenario's layering: nixpkgs' 2018-2024 one, where the leaf is the least popular
# store path, in the overflow layer (not BuildImage's default, stable: see bench_layering.py).
DEFAULT_SCENARIO = ("--layering", "popularity")
# 107 store paths, 2.1 GiB of files: large next to a run's fixed cost, and few enough for a
# layer each under --max-layers 125.
INCREMENTAL_ROOTS = ("kubectl,google-cloud-cli-anthoscli,google-cloud-cli-spanner-emulator,google-cloud-cli-kpt,"
                     "google-cloud-cli-local-extract,google-cloud-cli-cbt,llvm-14-dev,nodejs,curl")
def requisites(paths: list[str]) -> list[str]:
    out = subprocess.run(["nix-store", "--query", "--requisites", *paths], check=True,
                         capture_output=True, text=True).stdout
    return out.split()


def tree_bytes(paths: list[str]) -> int:
    total = 0
    for path in paths:
        for directory, _, files in os.walk(path):
            for f in files:
                st = os.lstat(os.path.join(directory, f))
                if stat.S_ISREG(st.st_mode):
                    total += st.st_size
    return total


# --- Measuring -------------------------------------------------------------------------------

class Build:
    """One `luigi --module pipelines BuildImage` run: seconds, peak RSS in KiB, output."""

    def __init__(self, seconds: float, max_rss_kib: int, stderr: str) -> None:
        self.seconds, self.max_rss_kib, self.stderr = seconds, max_rss_kib, stderr


# The python of the builds (see --python), with its options: set once by main().
PYTHON = [sys.executable]


def make_venv(work: Path) -> list[str]:
    """A virtual environment in ``work`` with this checkout installed by pip: its python, with
    ``-P`` (the builds run in the checkout, whose packages would otherwise come first on
    sys.path). Exits 2 if venv or pip fails (``--python current`` does without)."""
    python = str(work / "venv" / "bin" / "python")
    for argv in ([sys.executable, "-m", "venv", str(work / "venv")],
                 [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(ROOT)]):
        made = subprocess.run(argv, capture_output=True, text=True)
        if made.returncode != 0:
            print(f"bench_build: {' '.join(argv[1:4])} failed (--python current uses this interpreter "
                  f"instead):\n{made.stderr[-2000:]}", file=sys.stderr)
            raise SystemExit(2)
    return [python, "-P"]


def site_packages(python: str) -> int:
    """How many distributions ``python`` has installed."""
    return int(subprocess.run([python, "-c", "import importlib.metadata as m; print(len(list(m.distributions())))"],
                              capture_output=True, text=True, check=True).stdout)


def run_build(work: Path, store: Path, contents: list[str], output: Path, workers: int,
              extra: tuple[str, ...] = (), python: list[str] | None = None) -> Build:
    """One build; ``extra``: more BuildImage arguments (``--max-layers``, ``--format``, ...);
    ``python``: the interpreter and its options, default ``PYTHON``."""
    cfg = work / f"luigi-{store.name}.cfg"
    cfg.write_text(f"[nixlayer]\nlayer_store = {store}\n")
    env = dict(os.environ, LUIGI_CONFIG_PATH=str(cfg))
    # python -m luigi: what the luigi script runs, without a version manager's shim (pyenv's
    # adds a shell start, 0.05 s here) in front of it.
    argv = [*(python or PYTHON), "-m", "luigi", "--module", "pipelines", "BuildImage", "--name", "bench",
            "--contents", json.dumps(contents), "--output", str(output), "--workers", str(workers), *extra]
    os.sync()  # the previous step's writeback is not this build's time
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    if proc.returncode != 0:
        print(f"bench_build: build failed (exit {proc.returncode}):\n{stderr[-4000:]}", file=sys.stderr)
        raise SystemExit(2)
    return Build(seconds, usage.ru_maxrss, stderr)


def best(builds: list[Build]) -> Build:
    return min(builds, key=lambda b: b.seconds)


def ran_tasks(build: Build) -> str:
    """The tasks that ran, from Luigi's execution summary (count and family)."""
    lines = build.stderr.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if "===== Luigi Execution Summary =====" in line)
    except StopIteration:
        return "?"
    summary, ran = [], False
    for line in lines[start + 1:]:
        if "=====" in line:
            break
        if line.strip().startswith("* ") and "ran successfully" in line:
            ran = True
        elif line.strip().startswith("* "):
            ran = False
        elif line.strip().startswith("- ") and ran:
            summary.append(line.strip()[2:].split("(")[0])
    return ", ".join(summary) or "nothing"


def floor_seconds(paths: list[str]) -> float:
    """Seconds of `tar -c <paths> | sha256sum` (best of two)."""
    rel = [p.lstrip("/") for p in paths]
    best_seconds = float("inf")
    for _ in range(2):
        os.sync()
        start = time.perf_counter()
        subprocess.run(["sh", "-c", 'tar -C / -cf - "$@" | sha256sum > /dev/null', "floor", *rel], check=True)
        best_seconds = min(best_seconds, time.perf_counter() - start)
    return best_seconds


def path_info_seconds(paths: list[str]) -> float:
    """Seconds of the `nix path-info --json --recursive` call every run makes (best of two)."""
    argv = ["nix", "path-info", "--json", "--recursive", "--offline",
            "--extra-experimental-features", "nix-command", *paths]
    best_seconds = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        best_seconds = min(best_seconds, time.perf_counter() - start)
    return best_seconds


CUSTOMISATION_TIMER = """
import json, os, sys, tempfile, time
from nixlayer.customisation import Fragments, customisation_entries, write_customisation_layer
from nixlayer.layer import LayerSettings
contents, changed = json.loads(sys.argv[1]), sys.argv[2]
cold, warm = [], []
with tempfile.TemporaryDirectory() as fragments:
    for _ in range(3):
        for name in os.listdir(fragments):
            os.unlink(os.path.join(fragments, name))
        with open("/dev/null", "wb") as out:
            start = time.perf_counter()
            write_customisation_layer(contents, out, fragments_dir=fragments)
            cold.append(time.perf_counter() - start)
        os.unlink(Fragments(fragments, LayerSettings()).path(changed))
        with open("/dev/null", "wb") as out:
            start = time.perf_counter()
            write_customisation_layer(contents, out, fragments_dir=fragments)
            warm.append(time.perf_counter() - start)
print(len(customisation_entries(contents)), min(cold), min(warm))
"""


def customisation_seconds(contents: list[str], changed: str) -> tuple[int, float, float]:
    """Entries and seconds (best of three, in one process) of writing the customisation layer
    of ``contents``: with no fragments (every content walked and encoded), and with the
    fragments of every content but ``changed`` (a one-leaf rebuild)."""
    out = subprocess.run([sys.executable, "-c", CUSTOMISATION_TIMER, json.dumps(contents), changed], cwd=ROOT,
                         check=True, capture_output=True, text=True).stdout.split()
    return int(out[0]), float(out[1]), float(out[2])


class Closure:
    """The image contents made from Debian packages, and the same with the leaf changed."""

    def __init__(self, work: Path, roots: list[str], leaf: str) -> None:
        start = time.perf_counter()
        self.roots, self.leaf = roots, leaf
        dag = dependency_dag(roots)
        content_names = contents_of(dag)
        if leaf not in content_names:
            raise SystemExit(f"bench_build: --leaf {leaf} is not a leaf of the closure of {','.join(roots)}; "
                             f"leaves: {' '.join(content_names)}")
        work.mkdir(parents=True, exist_ok=True)
        nix_file = write_closure_nix(work, dag)
        self.contents = nix_build(nix_file, "contents", {})
        self.contents2 = nix_build(nix_file, "contents", {leaf: 1})
        self.leaf1 = self.contents[content_names.index(leaf)]
        self.leaf2 = self.contents2[content_names.index(leaf)]
        self.paths = requisites(self.contents)
        paths2 = requisites(self.contents2)
        assert set(self.paths) - set(paths2) == {self.leaf1} and set(paths2) - set(self.paths) == {self.leaf2}, \
            "the second version must change the leaf's store path only"
        self.nbytes = tree_bytes(self.paths)
        self.leaf_bytes = tree_bytes([self.leaf1])
        self.packages = len(dag)
        self.seconds = time.perf_counter() - start

    def describe(self) -> str:
        return (f"closure: {len(self.paths)} store paths, {self.nbytes} bytes ({self.nbytes / 2**20:.0f} MiB) of files, "
                f"{len(self.contents)} contents (the leaves), from {self.packages} Debian packages "
                f"(roots: {','.join(self.roots)}); generated and built in {self.seconds:.1f} s\n"
                f"changed leaf: {self.leaf} ({self.leaf1} -> {self.leaf2}), {self.leaf_bytes} bytes of files")

    def plan(self, max_layers: int, extra: tuple[str, ...] = ()) -> list[dict]:
        """The store-path layers `python3 -m nixlayer plan` gives for the contents (a first
        build), with ``extra`` arguments (``--layering``)."""
        out = subprocess.run([sys.executable, "-m", "nixlayer", "plan", "--json", "--max-layers", str(max_layers),
                              *extra, *self.contents], cwd=ROOT, check=True, capture_output=True, text=True).stdout
        return json.loads(out)["layers"]

    def leaf_layer(self, max_layers: int, extra: tuple[str, ...] = ()) -> str:
        """Which layer the changed leaf is in, and how big that layer is."""
        layers = self.plan(max_layers, extra)
        (index, layer), = [(i, layer) for i, layer in enumerate(layers) if self.leaf1 in layer["store_paths"]]
        return (f"store-path layer {index + 1} of {len(layers)}, holding {len(layer['store_paths'])} store path(s), "
                f"NAR {layer['nar_size'] / 2**20:.1f} MiB")


class Target:
    """A target: ``value`` < ``limit``; an uncounted one is printed but leaves the exit status alone."""

    def __init__(self, label: str, value: float, limit: float, counted: bool = True, why: str = "") -> None:
        self.label, self.value, self.limit, self.counted, self.why = label, value, limit, counted, why

    @property
    def met(self) -> bool:
        return self.value < self.limit


def print_targets(title: str, targets: list[Target]) -> int:
    """Print the targets; return how many counted ones were missed."""
    print(f"targets, {title}:")
    missed = 0
    for t in targets:
        missed += t.counted and not t.met
        state = ("MET   " if t.met else "MISSED") + ("" if t.counted else " (not counted)")
        print(f"  {state} {t.label}: {t.value:.3f} s ({t.value / t.limit:.2f}x the limit)")
        if t.why:
            print(f"         {t.why}")
    return missed


def line(label: str, seconds: float, floor: float, note: str = "") -> str:
    return f"  {label:<44} {seconds:8.3f} s  {seconds / floor:6.2f}x floor" + (f"  {note}" if note else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--roots", default=DEFAULT_ROOTS, help="default scenario: comma-separated Debian packages")
    parser.add_argument("--leaf", default="curl", help="default scenario: the leaf package that gets a second version")
    parser.add_argument("--incremental-roots", default=INCREMENTAL_ROOTS,
                        help="incremental scenario: comma-separated Debian packages (at most 124 store paths)")
    parser.add_argument("--incremental-leaf", default="curl", help="incremental scenario: the changed leaf package")
    parser.add_argument("--oci-compression", default="none", choices=["none", "gzip", "zstd"],
                        help="incremental scenario: --compression of the oci builds (default: none, as docker-archive)")
    parser.add_argument("--scenarios", default="default,incremental", help="which scenarios to run")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each build; the fastest counts")
    parser.add_argument("--python", default="venv", choices=["venv", "current"],
                        help="the builds' python: a virtual environment with nixlayer installed (default), or this one")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--delete-store-paths", action="store_true",
                        help="delete the generated store paths at the end (a rerun then builds them again)")
    args = parser.parse_args(argv)
    scenarios = [s for s in args.scenarios.split(",") if s]
    if not scenarios or set(scenarios) - {"default", "incremental"}:
        parser.error("--scenarios takes default, incremental or both")

    work = Path(tempfile.mkdtemp(prefix="nixlayer-bench-build-"))
    start = time.perf_counter()
    missed = 0
    made: list[str] = []  # the generated store paths, for --delete-store-paths
    global PYTHON
    try:
        if args.python == "venv":
            PYTHON = make_venv(work)
        print(f"builds run by {' '.join(PYTHON)} ({site_packages(PYTHON[0])} installed distributions); this "
              f"script's {sys.executable} has {site_packages(sys.executable)}")
        if "default" in scenarios:
            missed += bench_default(work / "default", [r for r in args.roots.split(",") if r], args.leaf,
                                    args.repeat, args.keep, made)
        if "incremental" in scenarios:
            if "default" in scenarios:
                print()
            missed += bench_incremental(work / "incremental", [r for r in args.incremental_roots.split(",") if r],
                                        args.incremental_leaf, args.oci_compression, args.repeat, args.keep, made)
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        if args.delete_store_paths and made:
            delete_store_paths(sorted(set(made)))
    print()
    print(f"benchmark took {time.perf_counter() - start:.0f} s; "
          + (f"{missed} counted target(s) missed: exit 1" if missed else "every counted target met: exit 0"))
    return 1 if missed else 0


def delete_store_paths(paths: list[str]) -> None:
    """``nix-store --delete`` the generated ``paths`` that nothing else in the store refers to
    (store paths of earlier runs with other roots may still refer to some: those are kept)."""
    made = set(paths)
    referrers = subprocess.run(["nix-store", "--query", "--referrers-closure", *paths], check=True,
                               capture_output=True, text=True).stdout.split()
    outside = [p for p in referrers if p not in made]
    kept = set(requisites(outside)) & made if outside else set()
    deletable = sorted(made - kept)
    deleted = subprocess.run(["nix-store", "--delete", *deletable], capture_output=True, text=True) \
        if deletable else None
    if deleted is not None and deleted.returncode != 0:
        print(f"bench_build: nix-store --delete failed: {deleted.stderr.strip().splitlines()[-1]}", file=sys.stderr)
    left = [p for p in paths if os.path.lexists(p)]
    print(f"deleted {len(paths) - len(left)} of the {len(paths)} generated store paths"
          + (f"; {len(left)} kept: other store paths refer to them" if left else ""))


def bench_default(work: Path, roots: list[str], leaf: str, repeat: int, keep: bool, made: list[str]) -> int:
    """nixpkgs' default layering (--max-layers 100) and docker-archive; returns counted targets missed."""
    print(f"== default scenario: --max-layers {DEFAULT_MAX_LAYERS} (nixpkgs' default), {' '.join(DEFAULT_SCENARIO)},"
          " docker-archive")
    c = Closure(work, roots, leaf)
    made += [*c.paths, c.leaf2]
    print(c.describe())
    print(f"the changed leaf's layer: {c.leaf_layer(DEFAULT_MAX_LAYERS, DEFAULT_SCENARIO)}")

    floor = floor_seconds(c.paths)

    def cold(workers: int) -> Build:  # each from an empty layer store
        runs = []
        for i in range(repeat):
            shutil.rmtree(work / f"store-w{workers}", ignore_errors=True)
            runs.append(run_build(work, work / f"store-w{workers}", c.contents, work / f"w{workers}.tar", workers,
                                  DEFAULT_SCENARIO))
        return best(runs)

    def after_leaf_change() -> Build:  # each from a copy of the layer store of the cold build
        runs = []
        for i in range(repeat):
            copy = work / f"store-leaf{i}"
            subprocess.run(["cp", "-al", str(work / "store-w2"), str(copy)], check=True)
            runs.append(run_build(work, copy, c.contents2, work / "w2.tar", 2, DEFAULT_SCENARIO))
        return best(runs)

    cold1 = cold(1)
    shutil.rmtree(work / "store-w1")
    cold2 = cold(2)
    same = (work / "w1.tar").stat().st_size == (work / "w2.tar").stat().st_size and \
        subprocess.run(["cmp", "-s", str(work / "w1.tar"), str(work / "w2.tar")]).returncode == 0
    (work / "w1.tar").unlink()
    noop = best([run_build(work, work / "store-w2", c.contents, work / "w2.tar", 2, DEFAULT_SCENARIO)
                 for _ in range(repeat)])
    leafbuild = after_leaf_change()
    image_bytes = (work / "w2.tar").stat().st_size
    if not keep:
        shutil.rmtree(work, ignore_errors=True)

    print(f"image: {image_bytes} bytes docker-archive; --workers 1 and 2 give the same bytes: {same}; "
          f"each time the fastest of {repeat} runs")
    print(line("floor: tar -c paths | sha256sum", floor, floor))
    print(line("cold build --workers 1", cold1.seconds, floor, f"peak RSS {cold1.max_rss_kib / 1024:.0f} MiB"))
    print(line("cold build --workers 2", cold2.seconds, floor, f"peak RSS {cold2.max_rss_kib / 1024:.0f} MiB"))
    print(line("one-leaf rebuild --workers 2", leafbuild.seconds, floor, f"ran: {ran_tasks(leafbuild)}"))
    print(line("no-op rebuild --workers 2", noop.seconds, floor, f"ran: {ran_tasks(noop)}"))

    noop_target = 1.0 + 0.001 * len(c.paths)
    return print_targets("default scenario", [
        Target(f"no-op < 1 s + 1 ms x {len(c.paths)} paths = {noop_target:.3f} s", noop.seconds, noop_target),
        Target(f"one-leaf rebuild < 5 % of cold --workers 2 = {0.05 * cold2.seconds:.3f} s",
               leafbuild.seconds, 0.05 * cold2.seconds, counted=False,
               why="unmeetable by design here: the leaf (least popular) is in the overflow layer, which is "
                   "rewritten whole, and the docker-archive is one file rewritten whole; see the incremental scenario"),
        Target(f"cold --workers 2 < 1.5x floor = {1.5 * floor:.3f} s", cold2.seconds, 1.5 * floor),
    ])


def bench_incremental(work: Path, roots: list[str], leaf: str, oci_compression: str, repeat: int,
                      keep: bool, made: list[str]) -> int:
    """Every store path its own layer, docker-archive and oci; returns counted targets missed."""
    c = Closure(work, roots, leaf)
    made += [*c.paths, c.leaf2]
    max_layers = len(c.paths) + 1  # a layer per store path, plus the customisation layer
    print(f"== incremental scenario: --max-layers {max_layers} (a layer per store path), docker-archive and "
          f"oci (--compression {oci_compression}, blobs hard-linked from the layer store)")
    if max_layers > 125:
        raise SystemExit(f"bench_build: the incremental closure has {len(c.paths)} store paths; at most 124 "
                         f"fit --max-layers 125 with a layer each: choose fewer --incremental-roots")
    plan = c.plan(max_layers)
    assert len(plan) == len(c.paths) and all(len(layer["store_paths"]) == 1 for layer in plan), \
        "every store path must have a layer of its own"
    print(c.describe())
    print(f"the changed leaf's layer: {c.leaf_layer(max_layers)}")

    floor = floor_seconds(c.paths)
    path_info = path_info_seconds(c.contents)
    custom_entries, custom_cold, custom_warm = customisation_seconds(c.contents2, c.leaf2)
    common = ("--max-layers", str(max_layers))
    formats = {
        "docker-archive": (*common, "--format", "docker-archive"),
        "oci": (*common, "--format", "oci", "--compression", oci_compression),
    }
    outputs = {"docker-archive": "image.tar", "oci": "image-oci"}

    def cold(fmt: str, workers: int) -> Build:  # each from an empty layer store and no output
        runs = []
        for i in range(repeat):
            shutil.rmtree(work / f"store-{fmt}", ignore_errors=True)
            shutil.rmtree(work / outputs[fmt], ignore_errors=True)
            runs.append(run_build(work, work / f"store-{fmt}", c.contents, work / outputs[fmt], workers, formats[fmt]))
        return best(runs)

    def noop(fmt: str, workers: int, python: list[str] | None = None) -> Build:
        return best([run_build(work, work / f"store-{fmt}", c.contents, work / outputs[fmt], workers, formats[fmt],
                               python) for _ in range(repeat)])

    def after_leaf_change(fmt: str, workers: int, python: list[str] | None = None) -> Build:
        """Each from hard-linked copies of the cold build's layer store and (oci) layout; the
        rebuild writes to where the cold build wrote, as a periodic rebuild would."""
        runs = []
        for i in range(repeat):
            store, output = work / f"store-{fmt}-leaf{i}", work / f"leaf{i}-{outputs[fmt]}"
            subprocess.run(["cp", "-al", str(work / f"store-{fmt}"), str(store)], check=True)
            subprocess.run(["cp", "-al", str(work / outputs[fmt]), str(output)], check=True)
            runs.append(run_build(work, store, c.contents2, output, workers, formats[fmt], python))
            shutil.rmtree(store)
            if output.is_dir():
                shutil.rmtree(output)
            else:
                output.unlink()
        return best(runs)

    # OCI with Luigi's default --workers 1 and with --workers 2; the docker-archive, a
    # comparison, with --workers 2. The layer store of the last cold build serves the rest.
    runs = {"oci": (1, 2), "docker-archive": (2,)}
    builds = {}
    for fmt, worker_counts in runs.items():
        for workers in worker_counts:
            builds["cold", fmt, workers] = cold(fmt, workers)
            builds["noop", fmt, workers] = noop(fmt, workers)
            builds["leaf", fmt, workers] = after_leaf_change(fmt, workers)
            if (fmt, workers) == ("oci", 1) and PYTHON != [sys.executable]:
                builds["noop-current", fmt, workers] = noop(fmt, workers, [sys.executable])
                builds["leaf-current", fmt, workers] = after_leaf_change(fmt, workers, [sys.executable])
    image_bytes = (work / "image.tar").stat().st_size
    oci_blobs = list((work / outputs["oci"] / "blobs" / "sha256").iterdir())
    linked = sum(p.stat().st_nlink > 1 for p in oci_blobs)
    with open(work / outputs["oci"] / "index.json") as f:
        (entry,) = json.load(f)["manifests"]
    with open(work / outputs["oci"] / "blobs" / "sha256" / entry["digest"].split(":")[1]) as f:
        oci_layers = len(json.load(f)["layers"])
    assert oci_layers == len(c.paths) + 1, f"the oci image has {oci_layers} layers, not one per store path + 1"
    if not keep:
        shutil.rmtree(work, ignore_errors=True)

    print(f"image: {image_bytes} bytes docker-archive; oci layout of {oci_layers} layers "
          f"({len(c.paths)} store paths + customisation), {linked} of its {len(oci_blobs)} blobs hard-linked "
          f"from the layer store; each time the fastest of {repeat} runs")
    print(line("floor: tar -c paths | sha256sum", floor, floor))
    print(line("nix path-info --json --recursive (every run)", path_info, floor))
    print(line("customisation layer alone, in-process", custom_cold, floor,
               f"{custom_entries} entries (symlinks to every file of the {len(c.contents)} contents)"))
    print(line("the same, other contents' fragments kept", custom_warm, floor,
               "only the changed leaf walked and encoded"))
    for fmt, worker_counts in runs.items():
        for workers in worker_counts:
            cold_b, leaf_b, noop_b = (builds[kind, fmt, workers] for kind in ("cold", "leaf", "noop"))
            label = f"{fmt} --workers {workers}"
            print(line(f"cold build, {label}", cold_b.seconds, floor, f"peak RSS {cold_b.max_rss_kib / 1024:.0f} MiB"))
            print(line(f"one-leaf rebuild, {label}", leaf_b.seconds, floor,
                       f"{100 * leaf_b.seconds / cold_b.seconds:.1f} % of cold; ran: {ran_tasks(leaf_b)}"))
            print(line(f"no-op rebuild, {label}", noop_b.seconds, floor,
                       f"{100 * noop_b.seconds / cold_b.seconds:.1f} % of cold; ran: {ran_tasks(noop_b)}"))
            print(line(f"one-leaf minus no-op, {label}", leaf_b.seconds - noop_b.seconds, floor,
                       "beyond a run's fixed cost: the leaf's layer, the customisation layer, the image"))
            if ("noop-current", fmt, workers) in builds:
                current = builds["noop-current", fmt, workers].seconds
                print(line(f"no-op rebuild, {label}, --python current", current, floor,
                           f"{sys.executable}: {current - noop_b.seconds:+.3f} s a run"))
                current = builds["leaf-current", fmt, workers].seconds
                print(line(f"one-leaf rebuild, {label}, --python current", current, floor,
                           f"{100 * current / cold_b.seconds:.1f} % of the cold build above"))
    assembly = builds["cold", "docker-archive", 2].seconds - builds["cold", "oci", 2].seconds
    print(line("cold docker-archive minus cold oci, --workers 2", assembly, floor,
               f"writing the {image_bytes}-byte archive after the layers"))

    noop_target = 1.0 + 0.001 * len(c.paths)
    oci1, oci2, archive = (lambda kind: builds[kind, "oci", 1]), (lambda kind: builds[kind, "oci", 2]), \
        (lambda kind: builds[kind, "docker-archive", 2])
    targets = [
        Target(f"oci: no-op < 1 s + 1 ms x {len(c.paths)} paths = {noop_target:.3f} s",
               oci1("noop").seconds, noop_target),
        Target(f"oci: cold --workers 2 < 1.5x floor = {1.5 * floor:.3f} s", oci2("cold").seconds, 1.5 * floor),
        Target(f"oci: one-leaf rebuild < 5 % of the cold build (both --workers 1, Luigi's default) = "
               f"{0.05 * oci1('cold').seconds:.3f} s", oci1("leaf").seconds, 0.05 * oci1("cold").seconds),
        Target(f"oci: the same, both --workers 2 = {0.05 * oci2('cold').seconds:.3f} s",
               oci2("leaf").seconds, 0.05 * oci2("cold").seconds, counted=False,
               why="the issue names the cold build and the cold build with --workers 2 apart: a second worker "
                   "halves the cold build, while a one-leaf rebuild has one layer to write and gains nothing"),
        Target(f"docker-archive: no-op < 1 s + 1 ms x {len(c.paths)} paths = {noop_target:.3f} s",
               archive("noop").seconds, noop_target),
        Target(f"docker-archive: cold --workers 2 < 1.5x floor = {1.5 * floor:.3f} s", archive("cold").seconds,
               1.5 * floor, counted=False,
               why=f"a comparison, not the configuration under test: besides the layers, a docker-archive writes "
                   f"all {image_bytes} bytes again into one file, which the floor does not (it writes nothing)"),
        Target(f"docker-archive: one-leaf rebuild < 5 % of cold = {0.05 * archive('cold').seconds:.3f} s",
               archive("leaf").seconds, 0.05 * archive("cold").seconds, counted=False,
               why=f"unmeetable by design: a docker-archive is one file, and all {image_bytes} bytes are "
                   f"written again for any change"),
    ]
    return print_targets("incremental scenario", targets)


if __name__ == "__main__":
    sys.exit(main())
