"""Benchmark: layer-writing throughput against the ``tar -c | sha256sum`` floor, and memory.

Builds a set of store paths from real files: the biggest subdirectories of /usr/lib and
/usr/share of at most a quarter of ``--megabytes`` each, up to ``--megabytes``, laid out as ROOT/nix/store/<32 base32 chars>-<name> (files
hard-linked when /usr and the temp dir share a file system, copied otherwise). Then, in the
same run and on the same warm page cache, the best of ``--repeat`` runs of:

- ``nixlayer.layer.write_store_layer`` of all the paths into a discarding sink, with
  compression none, gzip (level 6) and zstd (level 3, single-threaded);
- the floor: ``tar -c --hard-dereference <paths> | sha256sum`` (GNU tar; it hashes the
  uncompressed tar as nixlayer does for the diff_id);
- command-line references for compression: ``tar -c | gzip -6 | sha256sum`` and
  ``tar -c | zstd -3 | sha256sum``.

MB/s is file-content megabytes (10^6 bytes) per second, the same numerator for every line.
Then peak memory (ru_maxrss of a fresh child process) of writing one layer that holds a 2 GiB
sparse file, against one that holds a 1 KiB file: memory must not grow with file size.

    python bench/bench_layers.py [--megabytes 300] [--repeat 3] [--big-gib 2]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nixlayer.compression import Compression  # noqa: E402
from nixlayer.layer import write_store_layer  # noqa: E402
from nixlayer.storepath import NIX_BASE32  # noqa: E402

SOURCES = ("/usr/lib", "/usr/share")


class Sink:
    """A file object that discards what it is given (counts it)."""

    def __init__(self) -> None:
        self.bytes = 0

    def write(self, data: bytes) -> int:
        self.bytes += len(data)
        return len(data)


def fake_hash(name: str) -> str:
    digest = hashlib.sha256(name.encode()).digest()
    return "".join(NIX_BASE32[b % 32] for b in digest[:32])


def tree_size(path: str) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def choose_sources(megabytes: int) -> list[tuple[str, int]]:
    """Subdirectories of SOURCES, biggest first, whose sizes add up to about ``megabytes``;
    none bigger than a quarter of it, so the layer holds several store paths of many files."""
    target = megabytes * 10**6
    candidates = []
    for source in SOURCES:
        for name in sorted(os.listdir(source)):
            path = os.path.join(source, name)
            if os.path.isdir(path) and not os.path.islink(path):
                candidates.append((path, tree_size(path)))
    chosen, total = [], 0
    for path, size in sorted(candidates, key=lambda c: -c[1]):
        if size and size <= target / 4 and total + size <= target * 1.1:
            chosen.append((path, size))
            total += size
        if total >= target:
            break
    return chosen


def replicate(source: str, dest: str) -> None:
    """Copy the tree ``source`` to ``dest``: directories, symlinks, and regular files
    (hard-linked when possible); FIFOs, sockets, devices and unreadable files are left out."""
    os.mkdir(dest)
    for entry in sorted(os.scandir(source), key=lambda e: e.name):
        target = os.path.join(dest, entry.name)
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), target)
        elif entry.is_dir(follow_symlinks=False):
            replicate(entry.path, target)
        elif entry.is_file(follow_symlinks=False) and os.access(entry.path, os.R_OK):
            try:
                os.link(entry.path, target)
            except OSError:
                shutil.copy2(entry.path, target)


def make_store(root: str, megabytes: int) -> tuple[list[str], int]:
    store = os.path.join(root, "nix", "store")
    os.makedirs(store)
    paths, total = [], 0
    for source, size in choose_sources(megabytes):
        name = source.strip("/").replace("/", "-")
        base = f"{fake_hash(source)}-{name}"
        replicate(source, os.path.join(store, base))
        paths.append(f"/nix/store/{base}")
        total += size
    return paths, tree_size(store)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def shell(command: str) -> str:
    out = subprocess.run(["bash", "-o", "pipefail", "-c", command], check=True, capture_output=True, text=True)
    return out.stdout


def child_rss(root: str, path: str, compression: str) -> tuple[int, int]:
    """Peak memory in KiB of a fresh Python process writing the layer of ``path``:
    (ru_maxrss, VmHWM).

    Linux carries a parent's resident size into its child's ru_maxrss across fork and exec,
    so the child is started from a small bash (which forks it) rather than from this process.
    """
    code = (
        "import resource, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})\n"
        "from nixlayer.compression import Compression\n"
        "from nixlayer.layer import write_store_layer\n"
        "class Sink:\n"
        "    def write(self, b): return len(b)\n"
        f"blob = write_store_layer([{path!r}], Sink(), compression=Compression({compression!r}),"
        f" store_root={root!r})\n"
        "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, hwm, blob.size)\n"
    )
    out = subprocess.run(
        ["bash", "-c", '"$0" -c "$1"; exit $?', sys.executable, code], check=True, capture_output=True, text=True
    )
    rss, hwm, _ = out.stdout.split()
    return int(rss), int(hwm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=300, help="data set size (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, best kept (default: %(default)s)")
    parser.add_argument("--big-gib", type=int, default=2, help="sparse file size for the memory run")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-layers-") as root:
        t0 = time.perf_counter()
        paths, content = make_store(root, args.megabytes)
        files = sum(len(fs) for p in paths for _, _, fs in os.walk(os.path.join(root, p.lstrip("/"))))
        print(f"data set: {len(paths)} store paths, {files} files, {content / 1e6:.0f} MB of file contents"
              f" (built in {time.perf_counter() - t0:.1f} s)")
        for p in paths:
            print(f"  {p}")
        rel = " ".join(p.lstrip("/") for p in paths)
        tar = f"tar -C {root} -c --hard-dereference -f - {rel}"
        commands = {
            "floor: tar -c | sha256sum": f"{tar} | sha256sum",
            "tar -c | gzip -6 | sha256sum": f"{tar} | gzip -6 | sha256sum",
            "tar -c | zstd -3 | sha256sum": f"{tar} | zstd -3 -q -c | sha256sum",
        }
        shell(f"{tar} | cat > /dev/null")  # warm the page cache

        def ours(name: str):
            return lambda: write_store_layer(paths, Sink(), compression=Compression(name), store_root=root)

        runs = {f"nixlayer {name}": ours(name) for name in ("none", "gzip", "zstd")}
        runs.update({label: (lambda c=c: shell(c)) for label, c in commands.items()})
        times: dict[str, list[float]] = {label: [] for label in runs}
        for _ in range(args.repeat):  # interleaved, so drifts hit every line alike
            for label, fn in runs.items():
                times[label].append(timed(fn))
        best = {label: min(ts) for label, ts in times.items()}
        floor = best["floor: tar -c | sha256sum"]
        print(f"\n{'':32} {'seconds':>8} {'MB/s':>8} {'floor/this':>10}")
        for label, seconds in best.items():
            print(f"{label:32} {seconds:8.2f} {content / 1e6 / seconds:8.0f} {floor / seconds:10.2f}")

        big_dir = os.path.join(root, "nix", "store", "b" * 32 + "-big")
        small_dir = os.path.join(root, "nix", "store", "s" * 32 + "-small")
        os.makedirs(big_dir)
        os.makedirs(small_dir)
        with open(os.path.join(big_dir, "big"), "wb") as f:
            f.truncate(args.big_gib * 2**30)
        with open(os.path.join(small_dir, "small"), "wb") as f:
            f.write(b"x" * 1024)
        print("\npeak memory (ru_maxrss of a fresh process writing one layer):")
        for compression in ("none", "zstd"):
            for label, d in ((f"{args.big_gib} GiB sparse file", big_dir), ("1 KiB file", small_dir)):
                start = time.perf_counter()
                rss, hwm = child_rss(root, "/nix/store/" + os.path.basename(d), compression)
                print(f"  {compression:5} {label:20} ru_maxrss {rss / 1024:6.1f} MiB  VmHWM {hwm / 1024:6.1f} MiB"
                      f"  ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
