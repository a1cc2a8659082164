"""A real closure for the benchmarks: installed Debian packages as Nix store paths.

The dependency closure of a few root packages becomes one Nix derivation per package (builder
/bin/sh), which copies the package's world-readable regular files (``dpkg -L``, /etc and /var
left out) into ``$out`` and writes the store paths of its dependencies (``${dep}``) into
``$out/nix-support/depends-NAME``, so Nix records them as references. Dependency cycles are
broken (the edge that closes a cycle in a depth-first walk is dropped). The image's contents
are the packages nothing else depends on.

Each package also has a revision (``nix-support/revision-NAME``, 0 unless raised by the
``revisions`` argument) and grows by ``growth_percent`` of its files' bytes per revision
(``nix-support/revision-data-NAME``; file names of their own, as the image's customisation
layer links every content's files into ``/``): raising a package's revision gives it and every package that
depends on it new store paths, as an update does in Nix. The derivations are input-addressed,
so a rerun builds nothing. Used by ``bench_build.py`` and ``bench_layering.py``.
"""

from __future__ import annotations

import collections
import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

SKIPPED_DIRS = ("/etc/", "/var/", "/proc/", "/sys/", "/dev/", "/run/", "/tmp/")
NAME_OK = re.compile(r"^[A-Za-z0-9+._-]+$")


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
            raise SystemExit(f"debian_closure: package {root} is not installed")

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


def contents_of(dag: Mapping[str, list[str]]) -> list[str]:
    """The packages nothing in ``dag`` depends on: the image's contents."""
    referenced = {dep for deps in dag.values() for dep in deps}
    return sorted(set(dag) - referenced)


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


def write_closure_nix(work: Path, dag: Mapping[str, list[str]], growth_percent: int = 0) -> Path:
    """Write closure.nix (and one file list per package) into ``work``: a function of
    ``revisions`` (package -> revision number) whose ``contents`` are the contents'
    derivations and ``pkgs`` every package's."""
    lists = work / "lists"
    lists.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Generated by bench/debian_closure.py: Debian packages as Nix store paths, with revisions.",
        "{ revisions ? { } }:",
        "let",
        "  mk = name: deps: files: growth: derivation {",
        '    name = "deb-" + name;',
        "    system = builtins.currentSystem;",
        '    builder = "/bin/sh";',
        "    args = [ \"-c\" ''",
        "      PATH=/usr/bin:/bin",
        "      set -e",
        "      umask 022",
        "      mkdir -p $out/nix-support",
        "      tar -C / --no-recursion --verbatim-files-from -cf - -T ${files} | tar -C $out -xf - --no-same-owner --no-same-permissions",
        "      chmod -R u+w,go-w,ugo-s $out",
        "      printf '%s\\n' ${toString deps} > $out/nix-support/depends-${name}",
        "      printf '%s\\n' ${toString (revisions.${name} or 0)} > $out/nix-support/revision-${name}",
        "      head -c ${toString (growth * (revisions.${name} or 0))} /dev/zero > $out/nix-support/revision-data-${name}",
        "    '' ];",
        "  };",
        "  pkgs = {",
    ]
    for name in sorted(dag):
        if not NAME_OK.match(name):
            raise SystemExit(f"debian_closure: package name {name!r} is not a store path name")
        files = package_files(name)
        (lists / f"{name}.files").write_text("".join(f + "\n" for f in files))
        deps = " ".join(f"pkgs.{nix_string(d)}" for d in dag[name])
        growth = sum(os.lstat("/" + f).st_size for f in files) * growth_percent // 100
        lines.append(f"    {nix_string(name)} = mk {nix_string(name)} [ {deps} ] ./lists/{name}.files {growth};")
    lines += ["  };", "in {", "  inherit pkgs;",
              "  contents = [ " + " ".join(f"pkgs.{nix_string(c)}" for c in contents_of(dag)) + " ];", "}"]
    path = work / "closure.nix"
    path.write_text("\n".join(lines) + "\n")
    return path


def nix_build(nix_file: Path, attr: str, revisions: Mapping[str, int]) -> list[str]:
    """The store paths of ``attr`` of ``nix_file``, built with ``revisions``."""
    arg = "{ " + " ".join(f"{nix_string(name)} = {rev};" for name, rev in sorted(revisions.items())) + " }"
    out = subprocess.run(["nix-build", str(nix_file), "-A", attr, "--arg", "revisions", arg,
                          "--no-out-link", "--max-jobs", "2", "--quiet"], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"debian_closure: nix-build -A {attr} failed:\n{out.stderr[-3000:]}")
    return out.stdout.split()
