"""Benchmark: `luigi --module pipelines BuildImage` on a realistic closure, against a tar floor.

The closure is made offline from installed Debian packages: the dependency closure of a few
root packages (``--roots``) becomes one Nix derivation per package (builder /bin/sh), which
copies the package's world-readable regular files (``dpkg -L``, /etc and /var left out) into
``$out`` and writes the store paths of its dependencies (``${dep}``) into
``$out/nix-support/depends-NAME``, so Nix records them as references. Dependency cycles are
broken (the edge that closes a cycle in a depth-first walk is dropped). The image's contents
are the packages nothing else depends on. One of them, ``--leaf``, has a second version that
differs in one file; being a leaf, nothing else's hash changes with it. The generated .nix file
lives in a temporary directory; the derivations are input-addressed, so a rerun builds nothing.

Then, in one run, each build a subprocess `luigi --module pipelines BuildImage ...` with a
temporary luigi.cfg (LUIGI_CONFIG_PATH) naming its layer store:

- cold build (empty layer store) with ``--workers 1``, and with ``--workers 2``;
- the no-op rebuild (nothing changed) and the rebuild after the leaf changed (``--workers 2``,
  on the layer store of the cold ``--workers 2`` build, or a hard-linked copy of it);
- the floor: ``tar -c <the same store paths> | sha256sum``;
- peak RSS of the cold builds (wait4 rusage of the luigi process and what it waited for).

Prints every time with its ratio to the floor, the store paths and bytes, and the targets:
no-op under 1 s + 1 ms per store path; one-leaf rebuild under 5 % of the cold build
(``--workers 2``); cold build with ``--workers 2`` under 1.5x the floor. Exits 1 if a target
is missed (0 otherwise), 2 if a build fails. Each build runs ``--repeat`` times (the fastest
counts; the floor is the faster of two), with ``sync`` before each, since the machine may be
shared.

    python3 bench/bench_build.py [--roots git,python3.11,...] [--leaf curl] [--repeat 3] [--keep]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ROOTS = "git,python3.11,vim,postgresql-15,cmake,curl,openssh-client,gdb"
SKIPPED_DIRS = ("/etc/", "/var/", "/proc/", "/sys/", "/dev/", "/run/", "/tmp/")
NAME_OK = re.compile(r"^[A-Za-z0-9+._-]+$")


# --- The closure: Debian packages as Nix store paths ---------------------------------------

def installed_packages() -> tuple[dict[str, list[list[str]]], dict[str, list[str]]]:
    """Installed package -> its Depends and Pre-Depends (clauses of alternatives); virtual
    package -> the installed packages that provide it."""
    fmt = "${Package}\t${db:Status-Abbrev}\t${Provides}\t${Depends}, ${Pre-Depends}\n"
    out = subprocess.run(["dpkg-query", "-W", "-f=" + fmt], check=True, capture_output=True, text=True).stdout
    depends: dict[str, list[list[str]]] = {}
    provides: dict[str, list[str]] = collections.defaultdict(list)
    for line in out.splitlines():
        name, status, provided, deps = line.split("\t")
        if not status.startswith("ii"):
            continue
        depends[name] = [
            [alt.strip().split(" ")[0].split(":")[0] for alt in clause.split("|")]
            for clause in deps.split(",") if clause.strip()
        ]
        for virtual in provided.split(","):
            if virtual.strip():
                provides[virtual.strip().split(" ")[0]].append(name)
    return depends, provides


def dependency_dag(roots: list[str]) -> dict[str, list[str]]:
    """The dependency closure of ``roots`` among installed packages, cycles broken: package ->
    the packages it depends on (first installed alternative; virtual packages resolved)."""
    depends, provides = installed_packages()
    for root in roots:
        if root not in depends:
            raise SystemExit(f"bench_build: package {root} is not installed")

    def resolve(name: str) -> list[str]:
        found = []
        for clause in depends[name]:
            for alt in clause:
                if alt in depends:
                    found.append(alt)
                    break
                if alt in provides:
                    found.append(sorted(provides[alt])[0])
                    break
        return sorted(set(found) - {name})

    dag: dict[str, list[str]] = {}
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(name: str) -> None:
        state[name] = 1
        kept = []
        for dep in resolve(name):
            if state.get(dep) == 1:
                continue  # this edge closes a cycle: drop it
            if dep not in state:
                visit(dep)
            kept.append(dep)
        dag[name] = kept
        state[name] = 2

    sys.setrecursionlimit(10000)
    for root in sorted(roots):
        if root not in state:
            visit(root)
    return dag


def package_files(name: str) -> list[str]:
    """The package's world-readable regular files, as paths relative to /."""
    out = subprocess.run(["dpkg", "-L", name], capture_output=True, text=True, errors="surrogateescape").stdout
    files = []
    for path in out.splitlines():
        if not path.startswith("/") or path.startswith(SKIPPED_DIRS) or "\\" in path:
            continue
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o004:
            files.append(path.lstrip("/"))
    return sorted(set(files))


def nix_string(s: str) -> str:
    return json.dumps(s).replace("${", "\\${")


def write_closure_nix(work: Path, dag: dict[str, list[str]], contents: list[str], leaf: str) -> Path:
    """Write closure.nix (and one file list per package) into ``work``."""
    lists = work / "lists"
    lists.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Generated by bench/bench_build.py: Debian packages as Nix store paths.",
        '{ leafVersion ? "1" }:',
        "let",
        "  mk = name: deps: files: extra: derivation {",
        '    name = "deb-" + name;',
        "    system = builtins.currentSystem;",
        '    builder = "/bin/sh";',
        '    args = [ "-c" (\'\'',
        "      PATH=/usr/bin:/bin",
        "      set -e",
        "      umask 022",
        "      mkdir -p $out/nix-support",
        "      tar -C / --no-recursion --verbatim-files-from -cf - -T ${files} | tar -C $out -xf - --no-same-owner --no-same-permissions",
        "      chmod -R u+w,go-w,ugo-s $out",
        "      printf '%s\\n' ${toString deps} > $out/nix-support/depends-${name}",
        "    '' + extra) ];",
        "  };",
        "  pkgs = {",
    ]
    for name in sorted(dag):
        if not NAME_OK.match(name):
            raise SystemExit(f"bench_build: package name {name!r} is not a store path name")
        (lists / f"{name}.files").write_text("".join(f + "\n" for f in package_files(name)))
        deps = " ".join(f"pkgs.{nix_string(d)}" for d in dag[name])
        extra = '""'
        if name == leaf:
            extra = f'"printf \'%s\\\\n\' ${{leafVersion}} > $out/nix-support/version-{name}\\n"'
        lines.append(f"    {nix_string(name)} = mk {nix_string(name)} [ {deps} ] ./lists/{name}.files {extra};")
    lines += [
        "  };",
        "in {",
        "  inherit pkgs;",
        "  contents = [ " + " ".join(f"pkgs.{nix_string(c)}" for c in contents) + " ];",
        f"  leaf = pkgs.{nix_string(leaf)};",
        "}",
    ]
    path = work / "closure.nix"
    path.write_text("\n".join(lines) + "\n")
    return path


def nix_build(nix_file: Path, attr: str, leaf_version: str) -> list[str]:
    out = subprocess.run(
        ["nix-build", str(nix_file), "-A", attr, "--argstr", "leafVersion", leaf_version,
         "--no-out-link", "--max-jobs", "2", "--quiet"],
        capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"bench_build: nix-build -A {attr} failed:\n{out.stderr[-3000:]}")
    return out.stdout.split()


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


def run_build(work: Path, store: Path, contents: list[str], output: Path, workers: int) -> Build:
    cfg = work / f"luigi-{store.name}.cfg"
    cfg.write_text(f"[nixlayer]\nlayer_store = {store}\n")
    env = dict(os.environ, LUIGI_CONFIG_PATH=str(cfg))
    argv = ["luigi", "--module", "pipelines", "BuildImage", "--name", "bench",
            "--contents", json.dumps(contents), "--output", str(output), "--workers", str(workers)]
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
    best = float("inf")
    for _ in range(2):
        os.sync()
        start = time.perf_counter()
        subprocess.run(["sh", "-c", 'tar -C / -cf - "$@" | sha256sum > /dev/null', "floor", *rel], check=True)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--roots", default=DEFAULT_ROOTS, help="comma-separated Debian packages")
    parser.add_argument("--leaf", default="curl", help="the leaf package that gets a second version")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each build; the fastest counts")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    roots = [r for r in args.roots.split(",") if r]

    work = Path(tempfile.mkdtemp(prefix="nixlayer-bench-build-"))
    try:
        return bench(work, roots, args.leaf, args.repeat)
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def bench(work: Path, roots: list[str], leaf: str, repeat: int) -> int:
    start = time.perf_counter()
    dag = dependency_dag(roots)
    referenced = {dep for deps in dag.values() for dep in deps}
    content_names = sorted(set(dag) - referenced)
    if leaf not in content_names:
        raise SystemExit(f"bench_build: --leaf {leaf} is not a leaf of the closure; leaves: {' '.join(content_names)}")
    nix_file = write_closure_nix(work, dag, content_names, leaf)
    contents = nix_build(nix_file, "contents", "1")
    (leaf2,) = nix_build(nix_file, "leaf", "2")
    leaf1 = contents[content_names.index(leaf)]
    contents2 = [leaf2 if p == leaf1 else p for p in contents]
    closure = requisites(contents)
    closure2 = requisites(contents2)
    assert set(closure) - set(closure2) == {leaf1} and set(closure2) - set(closure) == {leaf2}, \
        "the second version must change the leaf's store path only"
    nbytes = tree_bytes(closure)
    print(f"closure: {len(closure)} store paths, {nbytes} bytes ({nbytes / 2**20:.0f} MiB) of files, "
          f"{len(contents)} contents (the leaves), from {len(dag)} Debian packages "
          f"(roots: {','.join(roots)}); generated and built in {time.perf_counter() - start:.1f} s")
    print(f"changed leaf: {leaf} ({leaf1} -> {leaf2})")

    floor = floor_seconds(closure)

    def best(builds: list[Build]) -> Build:
        return min(builds, key=lambda b: b.seconds)

    def cold(workers: int) -> Build:  # each from an empty layer store
        runs = []
        for i in range(repeat):
            shutil.rmtree(work / f"store-w{workers}", ignore_errors=True)
            runs.append(run_build(work, work / f"store-w{workers}", contents, work / f"w{workers}.tar", workers))
        return best(runs)

    def after_leaf_change() -> Build:  # each from a copy of the layer store of the cold build
        runs = []
        for i in range(repeat):
            copy = work / f"store-leaf{i}"
            subprocess.run(["cp", "-al", str(work / "store-w2"), str(copy)], check=True)
            runs.append(run_build(work, copy, contents2, work / "w2.tar", 2))
        return best(runs)

    cold1 = cold(1)
    cold2 = cold(2)
    same = (work / "w1.tar").stat().st_size == (work / "w2.tar").stat().st_size and \
        subprocess.run(["cmp", "-s", str(work / "w1.tar"), str(work / "w2.tar")]).returncode == 0
    noop = best([run_build(work, work / "store-w2", contents, work / "w2.tar", 2) for _ in range(repeat)])
    leafbuild = after_leaf_change()
    image_bytes = (work / "w2.tar").stat().st_size

    def line(label: str, seconds: float) -> str:
        return f"  {label:<36} {seconds:8.3f} s  {seconds / floor:6.2f}x floor"

    print(f"image: {image_bytes} bytes docker-archive; --workers 1 and 2 give the same bytes: {same}; "
          f"each time the fastest of {repeat} runs")
    print(line("floor: tar -c paths | sha256sum", floor))
    print(line("cold build --workers 1", cold1.seconds) + f"  peak RSS {cold1.max_rss_kib / 1024:.0f} MiB")
    print(line("cold build --workers 2", cold2.seconds) + f"  peak RSS {cold2.max_rss_kib / 1024:.0f} MiB")
    print(line("one-leaf rebuild --workers 2", leafbuild.seconds) + f"  ran: {ran_tasks(leafbuild)}")
    print(line("no-op rebuild --workers 2", noop.seconds) + f"  ran: {ran_tasks(noop)}")

    noop_target = 1.0 + 0.001 * len(closure)
    targets = [
        (f"no-op < 1 s + 1 ms x {len(closure)} paths = {noop_target:.3f} s", noop.seconds, noop_target),
        (f"one-leaf rebuild < 5 % of cold --workers 2 = {0.05 * cold2.seconds:.3f} s",
         leafbuild.seconds, 0.05 * cold2.seconds),
        (f"cold --workers 2 < 1.5x floor = {1.5 * floor:.3f} s", cold2.seconds, 1.5 * floor),
    ]
    print("targets:")
    missed = 0
    for label, value, limit in targets:
        ok = value < limit
        missed += not ok
        print(f"  {'MET   ' if ok else 'MISSED'} {label}: {value:.3f} s ({value / limit:.2f}x the limit)")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
