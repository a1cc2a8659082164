"""Store paths that change while a layer is written (issue 18, class 2): a file or directory
swapped for a symlink, a FIFO or another file between the walk that lists it and the read that
takes its bytes. The swap happens in a callback of the writer at a known point (the progress
report after the first file is read, or between the entries the walk yields), never by timing.
The layer is refused with one error naming the path, and nothing reaches the layer store."""

from __future__ import annotations

import io
import json
import os
import subprocess
import threading
from pathlib import Path

import pytest

from conftest import SLOW, run_pipelines
from nixlayer.closure import graph_from_store_dir
from nixlayer.errors import NixlayerError
from nixlayer.layer import LayerSettings, read_directory, store_path_entries, write_entries, write_store_layer
from nixlayer.layerstore import LayerStore

SECRET = b"the host's secret\n"


def store_path(root: Path, name: str = "changing") -> tuple[str, Path]:
    """A store path under the store root ``root``: files ``a`` (1 MiB: the writer hands a
    piece over and reports progress once it is read, before ``b`` is opened) and ``b`` (as big
    as SECRET) and a directory ``d`` holding ``f``. Returns its name in the image and its
    directory."""
    disk = root / "nix" / "store" / ("a" * 32 + "-" + name)
    (disk / "d").mkdir(parents=True)
    (disk / "a").write_bytes(b"f" * 2**20)
    (disk / "b").write_bytes(b"x" * len(SECRET))
    (disk / "d" / "f").write_bytes(b"in d\n")
    return f"/nix/store/{disk.name}", disk


def swap_for_symlink(path: Path, target: Path) -> None:
    os.rename(path, path.with_name(path.name + ".old"))
    path.symlink_to(target)


@pytest.fixture
def secret(tmp_path) -> Path:
    """A file of the host the store path must never bring into a layer."""
    path = tmp_path / "secret"
    path.write_bytes(SECRET)
    return path


def swaps(secret: Path) -> dict:
    def other_file(path: Path) -> None:  # same size, another inode
        os.rename(path, path.with_name(path.name + ".old"))
        path.write_bytes(b"y" * len(SECRET))

    def fifo(path: Path) -> None:
        path.unlink()
        os.mkfifo(path)

    return {
        "a symlink to a file of the host": (lambda path: swap_for_symlink(path, secret), "it is a symlink now"),
        "another file of the same size": (other_file, "it is another file now"),
        "a FIFO": (fifo, "it is not a regular file now"),
        "a longer file": (lambda path: path.write_bytes(b"x" * 100), "100 bytes now, 18 when listed"),
    }


@pytest.mark.parametrize("kind", ["a symlink to a file of the host", "another file of the same size", "a FIFO",
                                  "a longer file"])
def test_a_file_swapped_after_it_was_listed_is_refused_and_nothing_is_written(tmp_path, secret, kind):
    swap, how = swaps(secret)[kind]
    name, disk = store_path(tmp_path / "root")
    store = LayerStore(str(tmp_path / "layer-store"))
    swapped = []

    def progress(done: int) -> None:  # after "a" is read, before "b" is opened
        if not swapped:
            swap(disk / "b")
            swapped.append(True)

    def write_blob(out):
        return write_store_layer([name], out, store_root=str(tmp_path / "root"), progress=progress)

    record = str(tmp_path / "layer-store" / "layers" / "k" / "layer.json")
    with pytest.raises(NixlayerError) as error:
        store.write(record, [name], "", write_blob)
    assert str(error.value) == (
        f"{disk}/b changed while the layer was written ({how}): nothing was written; build again when nothing"
        " writes to the store path (store paths are never changed by Nix)")
    assert swapped and not os.path.exists(record)
    assert [p for p in (tmp_path / "layer-store").rglob("*") if p.is_file()] == []
    # The writer's thread (hashing, compressing) stopped with the layer.
    assert [thread for thread in threading.enumerate() if thread.name == "layer-writer"] == []


def test_a_directory_swapped_for_a_symlink_after_it_was_listed_is_never_walked_into(tmp_path, secret):
    name, disk = store_path(tmp_path / "root")
    (tmp_path / "host-dir").mkdir()
    (tmp_path / "host-dir" / "shadow").write_bytes(SECRET)
    entries = store_path_entries(name, str(tmp_path / "root"))
    listed = []
    with pytest.raises(NixlayerError) as error:
        for entry in entries:
            listed.append(entry.name)
            if entry.name == f"{name}/d":  # yielded when listed, before its own children are read
                swap_for_symlink(disk / "d", tmp_path / "host-dir")
    assert str(error.value).startswith(f"{disk}/d changed while the layer was written (it is no longer that"
                                       " directory): nothing was written")
    assert not any("shadow" in entry for entry in listed)


def test_a_directory_replaced_by_another_is_refused(tmp_path):
    """read_directory, which the customisation layer's walk shares, checks the directory it
    opens is the one listed: a directory moved away and another put in its place is refused."""
    _, disk = store_path(tmp_path / "root")
    listed = os.lstat(disk / "d")
    os.rename(disk / "d", disk / "d.old")
    (disk / "d").mkdir()
    with pytest.raises(NixlayerError, match=r"/d changed while the layer was written \(it is another directory now\)"):
        read_directory(os.fsencode(disk / "d"), listed)


def test_a_file_written_to_while_it_is_read_is_refused(tmp_path):
    """A file that grows while its bytes are read (after its first 1 MiB piece) is refused,
    not written at its listed size."""
    name, disk = store_path(tmp_path / "root")
    (disk / "a").write_bytes(b"z" * (2 * 2**20))
    entries = list(store_path_entries(name, str(tmp_path / "root")))
    grown = []

    def progress(done: int) -> None:
        if not grown:
            with open(disk / "a", "ab") as f:
                f.write(b"more")
            grown.append(True)

    with pytest.raises(NixlayerError, match=r"/a changed while the layer was written \(2097156 bytes now, 2097152"):
        write_entries(entries, io.BytesIO(), LayerSettings(), progress=progress)


@SLOW
def test_a_tree_deeper_than_the_recursion_limit_is_walked(tmp_path):
    name, disk = store_path(tmp_path / "root")
    deep = disk / "d"
    try:
        for _ in range(1100):  # sys.getrecursionlimit() is 1000 (os.makedirs recurses too)
            deep = deep / "x"
            deep.mkdir()
        entries = list(store_path_entries(name, str(tmp_path / "root")))
        assert len([e for e in entries if e.kind == "dir"]) == 1100 + 2
    finally:  # pytest removes old temporary directories with shutil.rmtree, which recurses
        subprocess.run(["rm", "-rf", str(disk)], check=True)


def test_an_error_found_while_listing_after_pieces_were_written_leaves_nothing(tmp_path):
    """The tar is written as it is listed: a FIFO found in the second store path, after the
    first one's pieces were hashed and written to the blob, still leaves nothing in the layer
    store, and the writer's thread stops."""
    first, _ = store_path(tmp_path / "root", "first")
    (tmp_path / "root" / "nix" / "store" / ("a" * 32 + "-first") / "big").write_bytes(b"z" * (3 * 2**20))
    second = tmp_path / "root" / "nix" / "store" / ("b" * 32 + "-second")
    second.mkdir()
    os.mkfifo(second / "pipe")
    store = LayerStore(str(tmp_path / "layer-store"))
    written = threading.Event()  # the writer's thread wrote a piece to the blob

    class Recording(io.RawIOBase):
        def __init__(self, out):
            self.out = out

        def write(self, data):
            written.set()
            return self.out.write(data)

    def progress(done: int) -> None:  # a piece was handed over: wait until one reached the blob
        written.wait(30)

    def write_blob(out):
        return write_store_layer([first, f"/nix/store/{second.name}"], Recording(out),
                                 store_root=str(tmp_path / "root"), progress=progress)

    record = str(tmp_path / "layer-store" / "layers" / "k" / "layer.json")
    with pytest.raises(NixlayerError, match=r"/pipe is a FIFO, socket or device file"):
        store.write(record, [first], "", write_blob)
    assert written.is_set()  # the error came after some of the layer was in the blob
    assert not os.path.exists(record)
    assert [p for p in (tmp_path / "layer-store").rglob("*") if p.is_file()] == []
    assert [thread for thread in threading.enumerate() if thread.name == "layer-writer"] == []


@pytest.mark.parametrize("change", ["added", "removed"])
@pytest.mark.parametrize("which", ["-lib0-0", "-app0"])
def test_a_file_added_or_removed_after_planning_is_refused(tmp_path, change, which):
    """A store path whose files no longer make the NAR the closure names (a file added to or
    removed from a writable --store-root after the closure was read) is refused at its layer,
    and, for a contents path, at the customisation layer's walk of it, naming it and both
    sizes; nothing is kept, the customisation layer's fragment of it neither: put back, the
    image is the one it was."""
    from test_batch import synthetic_store

    root = tmp_path / "root"
    roots = synthetic_store(root, images=1, base=2, unique=1)
    graph = graph_from_store_dir(roots, str(root), "/nix/store")
    (tmp_path / "graph.json").write_text(json.dumps(
        [{"path": p, "narSize": graph.nar_size(p), "references": sorted(graph.references(p))} for p in graph]))
    lib = next(p for p in graph if p.endswith(which))
    disk = root / lib.lstrip("/")
    victim = sorted(f for f in disk.rglob("*") if f.is_file())[0]
    kept = victim.read_bytes()
    if change == "added":
        (victim.parent / "new").write_bytes(b"x" * 5)
    else:
        victim.unlink()
    args = ["BuildImage", "--name", "n", "--contents", json.dumps(roots), "--store-root", str(root),
            "--closure-graph", str(tmp_path / "graph.json"), "--format", "oci", "--output", str(tmp_path / "out")]
    run = run_pipelines(args, tmp_path / "store")
    assert run.returncode == 30, run.stderr
    nar = graph.nar_size(lib)
    grown = 88 + 8 + 88 + 8 if change == "added" else -(88 + (len(victim.name) + 7 & -8) + 88 + (len(kept) + 7 & -8))
    assert run.stderr.splitlines()[-1] == (
        f"nixlayer: error: {lib} is not the store path the closure names: its files make a NAR of {nar + grown}"
        f" bytes, the closure gives {nar} (narSize); a file was added or removed since, or the closure graph is wrong"
        " (store paths are never changed by Nix):"
        " build again when nothing writes to the store path"), run.stderr
    assert not (tmp_path / "out").exists()
    assert not [p for p in (tmp_path / "store").rglob("*.json") if lib.split("/")[-1][:32] in p.read_text()]
    if change == "added":
        (victim.parent / "new").unlink()
    else:
        victim.write_bytes(kept)
    assert run_pipelines(args, tmp_path / "store").returncode == 0
    assert run_pipelines([*args[:-1], str(tmp_path / "again")], tmp_path / "fresh").returncode == 0
    assert (tmp_path / "out" / "index.json").read_bytes() == (tmp_path / "again" / "index.json").read_bytes()
