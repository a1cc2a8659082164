"""Benchmark: layer-writing throughput against the ``tar -c | sha256sum`` floor, and memory.

Builds a set of store paths from real files: the biggest subdirectories of /usr/lib and
/usr/share of at most a quarter of ``--megabytes`` each, up to ``--megabytes``, laid out as ROOT/nix/store/<32 base32 chars>-<name> (files
hard-linked when /usr and the temp dir share a file system, copied otherwise). Then, in the
same run and on the same warm page cache, interleaved, ``--repeat`` runs of:

- ``nixlayer.layer.write_store_layer`` of all the paths into a discarding sink (each checked
  against its NAR size, as a build does), with
  compression none, gzip (level 6) and zstd (level 3), gzip and zstd on 1 thread and on N, the
  cores this process may run on (or ``--threads``);
- the floor: ``tar -c --hard-dereference <paths> | sha256sum`` (GNU tar; it hashes the
  uncompressed tar as nixlayer does for the diff_id);
- command-line references for compression: ``tar -c | gzip -6 | sha256sum``,
  ``tar -c | pigz -6 -p N | sha256sum``, ``tar -c | zstd -3 | sha256sum`` and
  ``tar -c | zstd -3 -T0 | sha256sum``.

MB/s is file-content megabytes (10^6 bytes) per second, the same numerator for every line, from
the fastest run; "slowest" is the slowest run's MB/s, the spread; "CPU s" the CPU time of the
cheapest run, all threads and processes of the line. Then the targets of issue 17
(nixlayer on N threads against pigz -6 -p N and zstd -3 -T0: 0.8 or more) from the fastest
runs, and the blob sizes.

``--libraries``: single-threaded deflate (level 6, and ISA-L's levels, as installed) of the
layer's tar in memory, by the standard library's zlib, zlib-ng and ISA-L (python-isal, if
installed): MB/s of tar and compressed size, what chose zlib-ng.

Then peak memory (ru_maxrss of a fresh child process) of writing one layer that holds a 2 GiB
sparse file, against one that holds a 1 KiB file: memory must not grow with file size.

    python bench/bench_layers.py [--megabytes 300] [--repeat 3] [--big-gib 2] [--threads N] [--libraries]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nixlayer.closure import graph_from_store_dir  # noqa: E402
from nixlayer.compression import Compression, machine_threads  # noqa: E402
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


def cpu_seconds() -> float:
    """User and system time of this process and its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(fn) -> tuple[float, float]:
    """Wall-clock and CPU seconds (every thread and process) of ``fn()``."""
    start, cpu = time.perf_counter(), cpu_seconds()
    fn()
    return time.perf_counter() - start, cpu_seconds() - cpu


def shell(command: str) -> str:
    out = subprocess.run(["bash", "-o", "pipefail", "-c", command], check=True, capture_output=True, text=True)
    return out.stdout


def child_rss(root: str, path: str, compression: str, threads: int) -> tuple[int, int]:
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
        f"blob = write_store_layer([{path!r}], Sink(), compression=Compression({compression!r}, threads={threads}),"
        f" store_root={root!r})\n"
        "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, hwm, blob.size)\n"
    )
    out = subprocess.run(
        ["bash", "-c", '"$0" -c "$1"; exit $?', sys.executable, code], check=True, capture_output=True, text=True
    )
    rss, hwm, _ = out.stdout.split()
    return int(rss), int(hwm)


def libraries(tar: bytes) -> None:
    """Single-threaded raw deflate of ``tar`` by each library at hand, the standard one first."""
    import zlib

    from zlib_ng import zlib_ng

    candidates = [("zlib (stdlib) -6", zlib, 6), ("zlib-ng -6", zlib_ng, 6)]
    try:
        from isal import isal_zlib
    except ImportError:
        print("  (isal not installed: pip install isal to compare ISA-L, levels 0-3)")
    else:
        candidates += [(f"isal -{level}", isal_zlib, level) for level in (1, 2, 3)]
    for label, module, level in candidates:
        start = time.perf_counter()
        deflate = module.compressobj(level, module.DEFLATED, -15)
        size = len(deflate.compress(tar)) + len(deflate.flush())
        seconds = time.perf_counter() - start
        print(f"  {label:20} {len(tar) / 1e6 / seconds:7.1f} MB/s of tar  {size / len(tar):6.3f} of the tar")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=300, help="data set size (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, best kept (default: %(default)s)")
    parser.add_argument("--big-gib", type=int, default=2, help="sparse file size for the memory run")
    parser.add_argument("--threads", type=int, default=machine_threads(),
                        help="N, the threads of the multi-threaded lines (default: this machine's cores, %(default)s)")
    parser.add_argument("--libraries", action="store_true", help="also compare deflate libraries, one thread")
    args = parser.parse_args()
    n = args.threads

    with tempfile.TemporaryDirectory(prefix="bench-layers-") as root:
        t0 = time.perf_counter()
        paths, content = make_store(root, args.megabytes)
        files = sum(len(fs) for p in paths for _, _, fs in os.walk(os.path.join(root, p.lstrip("/"))))
        print(f"data set: {len(paths)} store paths, {files} files, {content / 1e6:.0f} MB of file contents"
              f" (built in {time.perf_counter() - t0:.1f} s); N = {n} threads")
        for p in paths:
            print(f"  {p}")
        rel = " ".join(p.lstrip("/") for p in paths)
        tar = f"tar -C {root} -c --hard-dereference -f - {rel}"
        commands = {
            "floor: tar -c | sha256sum": f"{tar} | sha256sum",
            "tar -c | gzip -6 | sha256sum": f"{tar} | gzip -6 | sha256sum",
            f"tar -c | pigz -6 -p {n} | sha256sum": f"{tar} | pigz -6 -p {n} | sha256sum",
            "tar -c | zstd -3 | sha256sum": f"{tar} | zstd -3 -q -c | sha256sum",
            "tar -c | zstd -3 -T0 | sha256sum": f"{tar} | zstd -3 -T0 -q -c | sha256sum",
        }
        shell(f"{tar} | cat > /dev/null")  # warm the page cache
        sizes: dict[str, int] = {}

        # Each store path is checked against its NAR size as a build checks it (tasks.layers).
        scanned = graph_from_store_dir(paths, root, "/nix/store")
        nar_sizes = {path: scanned.nar_size(path) for path in paths}

        def ours(label: str, compression: Compression):
            def run() -> None:
                sizes[label] = write_store_layer(paths, Sink(), compression=compression, store_root=root,
                                                 nar_sizes=nar_sizes).blob_size
            return run

        runs = {"nixlayer none": ours("nixlayer none", Compression("none"))}
        for name in ("gzip", "zstd"):
            for threads in dict.fromkeys((1, n)):
                label = f"nixlayer {name}, {threads} thread{'s' * (threads > 1)}"
                runs[label] = ours(label, Compression(name, threads=threads))
        runs.update({label: (lambda c=c: shell(c)) for label, c in commands.items()})
        times: dict[str, list[float]] = {label: [] for label in runs}
        cpus: dict[str, list[float]] = {label: [] for label in runs}
        for _ in range(args.repeat):  # interleaved, so drifts hit every line alike
            for label, fn in runs.items():
                wall, cpu = timed(fn)
                times[label].append(wall)
                cpus[label].append(cpu)
        best = {label: min(ts) for label, ts in times.items()}
        cpu = {label: min(cs) for label, cs in cpus.items()}
        floor = best["floor: tar -c | sha256sum"]
        mb = content / 1e6
        print(f"\n{'':36} {'seconds':>8} {'MB/s':>8} {'slowest':>8} {'floor/this':>10} {'CPU s':>7}")
        for label, seconds in best.items():
            print(f"{label:36} {seconds:8.2f} {mb / seconds:8.0f} {mb / max(times[label]):8.0f} {floor / seconds:10.2f}"
                  f" {cpu[label]:7.2f}")
        many = "s" * (n > 1)
        print("\ntargets (issue 17: 0.8 or more), the reference's time over nixlayer's: wall clock (fastest"
              " runs), and CPU time (cheapest runs; the work all cores do, which a busy machine's wall"
              " clock hides)")
        for ours_label, reference in ((f"nixlayer gzip, {n} thread{many}", f"tar -c | pigz -6 -p {n} | sha256sum"),
                                      (f"nixlayer zstd, {n} thread{many}", "tar -c | zstd -3 -T0 | sha256sum")):
            print(f"  {ours_label} / {reference.split(' | ')[1]}: wall {best[reference] / best[ours_label]:.2f},"
                  f" CPU {cpu[reference] / cpu[ours_label]:.2f}")
        print("\nblob sizes (of the uncompressed layer):")
        for label, size in sizes.items():
            print(f"  {label:36} {size / 1e6:8.1f} MB  {size / sizes['nixlayer none']:.3f}")

        if args.libraries:
            print("\ndeflate libraries, one thread, on the layer's tar in memory:")
            buffer = Sink()
            buffer.chunks = []
            buffer.write = lambda data: buffer.chunks.append(data) or len(data)
            write_store_layer(paths, buffer, store_root=root)
            libraries(b"".join(buffer.chunks))

        big_dir = os.path.join(root, "nix", "store", "b" * 32 + "-big")
        small_dir = os.path.join(root, "nix", "store", "s" * 32 + "-small")
        os.makedirs(big_dir)
        os.makedirs(small_dir)
        with open(os.path.join(big_dir, "big"), "wb") as f:
            f.truncate(args.big_gib * 2**30)
        with open(os.path.join(small_dir, "small"), "wb") as f:
            f.write(b"x" * 1024)
        print(f"\npeak memory (ru_maxrss of a fresh process writing one layer, {n} threads):")
        for compression in ("none", "gzip", "zstd"):
            for label, d in ((f"{args.big_gib} GiB sparse file", big_dir), ("1 KiB file", small_dir)):
                start = time.perf_counter()
                rss, hwm = child_rss(root, "/nix/store/" + os.path.basename(d), compression, n)
                print(f"  {compression:5} {label:20} ru_maxrss {rss / 1024:6.1f} MiB  VmHWM {hwm / 1024:6.1f} MiB"
                      f"  ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
