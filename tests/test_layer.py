"""Layer tarballs: byte-identical to nixpkgs streamLayeredImage, one pass, compressed."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard

from nixlayer.compression import Compression
from nixlayer.customisation import check_contents, content_entries, customisation_entries, write_customisation_layer
from nixlayer.errors import NixlayerError
from nixlayer.layer import Entry, LayerSettings, write_entries, write_store_layer
from nixlayer.layerstore import LayerStore


def layer(paths, settings=LayerSettings(), compression=Compression(), **kw):
    out = io.BytesIO()
    blob = write_store_layer(paths, out, settings, compression, **kw)
    return blob, out.getvalue()


@pytest.mark.parametrize(
    "key, settings",
    [
        ("single_path_layers", LayerSettings()),
        ("single_path_layers_uid1000", LayerSettings(uid=1000, gid=100, uname="user", gname="users")),
        ("single_path_layers_mtime_1700000000", LayerSettings(mtime=1700000000)),
    ],
)
def test_single_path_layers_match_nixpkgs(vectors, vectors_app, key, settings):
    for name, expected in vectors[key].items():
        blob, data = layer([vectors["store_paths"][name]], settings)
        assert (blob.diff_id, blob.size) == (expected["diff_id"], expected["size"]), name
        assert blob.digest == blob.diff_id and blob.blob_size == len(data) == blob.size


def test_multi_path_layers_match_nixpkgs_in_the_order_given(vectors, vectors_app):
    for expected in vectors["multi_path_layers"]:
        blob, _ = layer(expected["paths"])
        assert (blob.diff_id, blob.size) == (expected["diff_id"], expected["size"])


def test_layer_members(vectors, vectors_app):
    longnames = vectors["store_paths"]["longnames"]
    _, data = layer([longnames])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    names = list(members)
    assert names[:3] == ["/nix", "/nix/store", longnames]
    assert members[f"{longnames}/share/hard-b"].isfile()  # hard link stored as a regular file
    assert members[f"{longnames}/share/hard-b"].size == len(b"linked\n")
    assert members[f"{longnames}/share/café"].isfile()
    link = members[f"{longnames}/share/long-target-link"]
    assert link.issym() and len(link.linkname) > 100
    assert all(m.mtime == 1 and m.uid == 0 and m.uname == "root" for m in members.values())


def test_single_file_store_path_and_symlinks(vectors, vectors_app):
    script, zlib = vectors["store_paths"]["script"], vectors["store_paths"]["zlib"]
    _, data = layer([script, zlib])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members[script].isfile() and members[script].mode == 0o555
    assert members[f"{zlib}/lib/dangling"].linkname == "does-not-exist"
    assert members[f"{zlib}/lib64"].issym() and members[f"{zlib}/lib64"].linkname == "lib"


@pytest.mark.parametrize("name", ["gzip", "zstd"])
def test_compressed_blob_is_deterministic_and_decompresses_to_the_layer(vectors, vectors_app, name):
    libc = vectors["store_paths"]["libc"]
    plain, tar_bytes = layer([libc])
    blob, data = layer([libc], compression=Compression(name))
    again, data_again = layer([libc], compression=Compression(name))
    assert data == data_again and blob == again
    assert blob.diff_id == plain.diff_id and blob.size == plain.size
    assert blob.media_type == f"application/vnd.oci.image.layer.v1.tar+{name}"
    assert blob.blob_size == len(data) and blob.digest != blob.diff_id
    unpacked = gzip.decompress(data) if name == "gzip" else zstandard.ZstdDecompressor().decompressobj().decompress(data)
    assert unpacked == tar_bytes
    if name == "gzip":
        assert data[4:8] == b"\0\0\0\0" and data[3] == 0  # MTIME 0, no file name


def test_gzip_blob_is_readable_by_the_gzip_tool(vectors, vectors_app):
    blob, data = layer([vectors["store_paths"]["zlib"]], compression=Compression("gzip"))
    out = subprocess.run(["gzip", "-dc"], input=data, capture_output=True, check=True).stdout
    assert len(out) == blob.size


def test_store_root_reads_a_copy_of_the_store(tmp_path, vectors, vectors_app):
    store = tmp_path / "nix" / "store"
    store.mkdir(parents=True)
    for path in vectors["store_paths"].values():
        subprocess.run(["cp", "-a", path, str(store)], check=True)
    for name, expected in vectors["single_path_layers"].items():
        blob, _ = layer([vectors["store_paths"][name]], store_root=str(tmp_path))
        assert blob.diff_id == expected["diff_id"]


def test_special_files_are_an_error_naming_the_file_and_nothing_is_written(tmp_path):
    path = tmp_path / "nix" / "store" / ("a" * 32 + "-fifo")
    path.mkdir(parents=True)
    os.mkfifo(path / "pipe")
    out = io.BytesIO()
    with pytest.raises(NixlayerError, match="pipe.*FIFO"):
        write_store_layer([f"/nix/store/{path.name}"], out, store_root=str(tmp_path))
    assert out.getvalue() == b""


def test_missing_store_path_and_path_outside_the_store(tmp_path):
    missing = "/nix/store/" + "a" * 32 + "-missing"
    with pytest.raises(NixlayerError, match="does not exist"):
        layer([missing])
    # Every path is checked before anything is listed or written, the last one too: listed
    # first, the missing path would be the error.
    out = io.BytesIO()
    with pytest.raises(NixlayerError, match="^/usr/bin is not a store path directly in the store directory"):
        write_store_layer([missing, "/usr/bin"], out)
    with pytest.raises(NixlayerError, match="^/nix/store/bad is not a valid store path name"):
        write_store_layer([missing, "/nix/store/bad"], out)
    assert out.getvalue() == b""


def test_store_paths_are_checked_against_the_nar_size_nix_registered(vectors, vectors_app):
    """Each vector store path (long and non-ASCII names, symlinks, an executable) makes, as
    its layer lists it and as the customisation layer walks it, a NAR of the size Nix
    registered for it; a size Nix did not register is refused."""
    for path in vectors["store_paths"].values():
        size = int(subprocess.run(["nix-store", "--query", "--size", path], capture_output=True, text=True,
                                  check=True).stdout)
        write_store_layer([path], io.BytesIO(), nar_sizes={path: size})
        if os.path.isdir(path):
            content_entries(path, "/", size)
            with pytest.raises(NixlayerError, match="the closure gives 1 "):
                content_entries(path, "/", 1)
        with pytest.raises(NixlayerError, match="^" + re.escape(f"{path} is not the store path the closure names: its"
                                                              f" files make a NAR of {size} bytes, the closure gives"
                                                              f" {size + 8} (narSize);")):
            write_store_layer([path], io.BytesIO(), nar_sizes={path: size + 8})


def test_entries_are_written_as_they_are_listed(tmp_path):
    """The tar is handed on to be hashed and compressed while its entries are still being
    listed (listing all first left a core idle): here, the first file's two pieces are handed
    over before the next entry is asked for."""
    big = tmp_path / "big"
    big.write_bytes(b"x" * (2 * 2**20))
    handed = []

    def entries():
        yield Entry("/big", "file", 0o644, big.stat().st_size, os.fsencode(big))
        assert handed == [2**20, 2 * 2**20]  # both went before this entry was listed
        yield Entry("/small", "dir", 0o755)

    write_entries(entries(), io.BytesIO(), LayerSettings(), progress=handed.append)
    assert handed == [2**20, 2 * 2**20, 2 * 2**20]  # the last at the end


def test_progress_reports_content_bytes(vectors, vectors_app):
    seen = []
    path = vectors["store_paths"]["longnames"]
    write_store_layer([path], io.BytesIO(), progress=seen.append)
    files = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file() and not f.is_symlink())
    assert seen and seen[-1] == files > 0


def test_progress_within_a_large_file(tmp_path):
    """A 3 MiB file reports progress per 1 MiB piece, not only once it is whole."""
    path = tmp_path / "nix" / "store" / ("c" * 32 + "-one-big-file")
    path.mkdir(parents=True)
    (path / "data").write_bytes(b"x" * (3 * 2**20 + 1))
    seen = []
    write_store_layer([f"/nix/store/{path.name}"], io.BytesIO(), store_root=str(tmp_path),
                      progress=seen.append)
    assert seen == [2**20, 2 * 2**20, 3 * 2**20, 3 * 2**20 + 1]


def test_files_of_8_gib_and_more_get_their_true_size(tmp_path):
    """A sparse 8 GiB + 1 byte file: the pax header carries its size (ustar cannot)."""
    path = tmp_path / "nix" / "store" / ("b" * 32 + "-big")
    path.mkdir(parents=True)
    with open(path / "big", "wb") as f:
        f.truncate(8 * 2**30 + 1)

    class Stop(Exception):
        pass

    class Head(io.BytesIO):
        def write(self, data):
            super().write(data)
            if self.tell() > 64 * 1024:
                raise Stop

    head = Head()
    with pytest.raises(Stop):
        write_store_layer([f"/nix/store/{path.name}"], head, store_root=str(tmp_path))
    assert b"size=8589934593\n" in head.getvalue()


def test_customisation_layer_links_contents_into_root(tmp_path, vectors, vectors_app):
    app, zlib = vectors["store_paths"]["app"], vectors["store_paths"]["zlib"]
    out = io.BytesIO()
    write_customisation_layer([app, zlib], out)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["/bin"].isdir()
    assert members["/bin/vec-app"].linkname == f"{app}/bin/vec-app"
    assert members["/lib/libz.so.1"].linkname == f"{zlib}/lib/libz.so.1"
    assert members["/lib64"].issym()
    assert list(members) == sorted(members, key=lambda n: n.split("/"))


def _fragment_with_index(data: bytes, change) -> bytes:
    """A fragment file's bytes with its JSON index line ``[content, entries]`` replaced by
    ``change(index)`` (bytes); its sha256 line is left as it was."""
    start, end = int(data[-21:]), len(data) - 21 - 65
    return data[:start] + change(json.loads(data[start:end])) + b"\n" + data[end:]


def _rename_first_entry(index: list) -> bytes:
    content, entries = index
    return json.dumps([content, [[entries[0][0] + "x", *entries[0][1:]], *entries[1:]]]).encode()


FRAGMENT_DAMAGE = {  # fragment file -> its damage (done in place)
    "garbage": lambda f, other: f.write_bytes(b"garbage"),
    "empty": lambda f, other: f.write_bytes(b""),
    "a flipped header byte": lambda f, other: f.write_bytes((lambda d: d[:100] + bytes([d[100] ^ 1]) + d[101:])(f.read_bytes())),
    "a changed sha256": lambda f, other: f.write_bytes((lambda d: d[:-30] + (b"0" if d[-30:-29] != b"0" else b"1") + d[-29:])(f.read_bytes())),
    "an entry renamed in the index": lambda f, other: f.write_bytes(_fragment_with_index(f.read_bytes(), _rename_first_entry)),
    "a name that is a number": lambda f, other: f.write_bytes(_fragment_with_index(
        f.read_bytes(), lambda i: json.dumps([i[0], [[1, *i[1][0][1:]], *i[1][1:]]]).encode())),
    "a deeply nested index": lambda f, other: f.write_bytes(_fragment_with_index(f.read_bytes(), lambda i: b"[" * 100_000)),
    "another content's fragment": lambda f, other: f.write_bytes(other.read_bytes()),
    "a directory": lambda f, other: (f.unlink(), f.mkdir()),
    "a FIFO": lambda f, other: (f.unlink(), os.mkfifo(f)),
    "a link to /dev/zero": lambda f, other: (f.unlink(), f.symlink_to("/dev/zero")),
}


def test_customisation_layer_from_fragments_has_the_bytes_write_entries_gives(tmp_path, vectors):
    """The layer merged from per-content fragments equals the same entries written whole (write_entries),
    whether the fragments are made in this call, reused, or one of them is damaged."""
    s = vectors["store_paths"]
    contents = [s["app"], s["zlib"], s["longnames"], s["libc"]]  # their directories overlap (/bin, /lib, ...)
    expected = io.BytesIO()
    expected_blob = write_entries(customisation_entries(contents), expected, LayerSettings())
    assert {e.name for e in customisation_entries(contents)} >= {"/bin", "/bin/vec-app", "/lib/libz.so.1"}
    fragments = tmp_path / "fragments"
    zlib_fragment, app_fragment = (fragments / os.path.basename(s[name]) for name in ("zlib", "app"))
    for damage in [None, None, *FRAGMENT_DAMAGE]:
        if damage is not None:
            FRAGMENT_DAMAGE[damage](zlib_fragment, app_fragment)
        out = io.BytesIO()
        assert write_customisation_layer(contents, out, fragments_dir=str(fragments)) == expected_blob, damage
        assert out.getvalue() == expected.getvalue(), damage
        assert customisation_entries(contents, fragments_dir=str(fragments)) == customisation_entries(contents)
    assert sorted(os.listdir(fragments)) == sorted(os.path.basename(c) for c in contents)
    # Entries only (the check before a build) read fragments but never write them.
    assert customisation_entries(contents, fragments_dir=str(tmp_path / "none")) == customisation_entries(contents)
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("second", ["share/doc/x", "share/doc"])  # a file in both; a file and a directory
def test_two_contents_with_one_path_fail_before_a_byte_is_written(tmp_path, second):
    root = tmp_path / "root"
    contents = []
    for name, file in (("a" * 32 + "-one", "share/doc/x"), ("b" * 32 + "-two", second)):
        (root / "nix" / "store" / name / "bin").mkdir(parents=True)  # a directory both have: merged
        (root / "nix" / "store" / name / file).parent.mkdir(parents=True, exist_ok=True)
        (root / "nix" / "store" / name / file).write_text(name)
        contents.append(f"/nix/store/{name}")
    message = f"contents {contents[0]} and {contents[1]} both provide /{second}; remove one"
    for _ in range(2):  # fragments made, then kept
        with pytest.raises(NixlayerError, match=message):
            check_contents(contents, str(root), fragments_dir=str(tmp_path / "f"))
        out = io.BytesIO()
        with pytest.raises(NixlayerError, match=message):
            write_customisation_layer(contents, out, store_root=str(root), fragments_dir=str(tmp_path / "f"))
        assert out.getvalue() == b""
    for content in contents:  # each alone is fine
        check_contents([content], str(root), fragments_dir=str(tmp_path / "f"))


def test_a_contents_path_gone_is_an_error_even_with_its_fragment_kept(tmp_path):
    root = tmp_path / "root"
    app = root / "nix" / "store" / ("a" * 32 + "-app")
    (app / "bin").mkdir(parents=True)
    (app / "bin" / "app").write_text("x")
    content, fragments = f"/nix/store/{app.name}", str(tmp_path / "fragments")
    write_customisation_layer([content], io.BytesIO(), store_root=str(root), fragments_dir=fragments)
    (app / "bin" / "app").unlink()
    (app / "bin").rmdir()
    app.rmdir()
    for check in (lambda: customisation_entries([content], str(root), fragments_dir=fragments),
                  lambda: write_customisation_layer([content], io.BytesIO(), store_root=str(root), fragments_dir=fragments)):
        with pytest.raises(NixlayerError, match=f"contents path {content} does not exist"):
            check()


def test_thousands_of_contents_need_no_file_descriptor_each(tmp_path):
    import resource

    root = tmp_path / "root"
    contents = []
    for i in range(300):
        path = root / "nix" / "store" / (f"{i:032d}"[-32:].replace("0", "a") + f"-c{i}")
        (path / "share" / f"c{i}").mkdir(parents=True)
        contents.append(f"/nix/store/{path.name}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))
    try:
        for _ in range(2):  # fragments made, then read
            out = io.BytesIO()
            write_customisation_layer(contents, out, store_root=str(root), fragments_dir=str(tmp_path / "f"))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        assert len([m for m in tar.getmembers() if m.name.startswith("/share/c")]) == 300


def test_customisation_fragments_depend_on_the_settings(tmp_path, vectors):
    contents = [vectors["store_paths"]["app"]]
    store = LayerStore(str(tmp_path / "store"))
    write_customisation_layer(contents, io.BytesIO(), fragments_dir=store.fragments_dir(LayerSettings(), "/nix/store"))
    user = LayerSettings(uid=1000, gid=100, uname="user", gname="users")
    assert store.fragments_dir(user, "/nix/store") != store.fragments_dir(LayerSettings(), "/nix/store")
    assert store.fragments_dir(user, "/nix/store") != store.fragments_dir(user, "/gnu/store")
    user_owned = io.BytesIO()
    write_customisation_layer(contents, user_owned, user, fragments_dir=store.fragments_dir(user, "/nix/store"))
    with tarfile.open(fileobj=io.BytesIO(user_owned.getvalue())) as tar:
        assert {(m.uid, m.uname) for m in tar.getmembers()} == {(1000, "user")}


def test_customisation_layer_refuses_two_contents_with_the_same_file(tmp_path):
    root = tmp_path / "nix" / "store"
    a, b = root / ("a" * 32 + "-one"), root / ("b" * 32 + "-two")
    for p in (a, b):
        (p / "bin").mkdir(parents=True)
        (p / "bin" / "tool").write_text("x")
    with pytest.raises(NixlayerError, match=f"{a.name}.*{b.name}.*bin/tool"):
        write_customisation_layer([f"/nix/store/{a.name}", f"/nix/store/{b.name}"], io.BytesIO(), store_root=str(tmp_path))


def test_a_full_disk_is_blamed_on_the_blob_not_the_store_path(vectors, vectors_app):
    class Full(io.BytesIO):
        def write(self, data):
            raise OSError(28, "No space left on device")

    with pytest.raises(NixlayerError, match="cannot write layer blob: No space left on device"):
        write_store_layer([vectors["store_paths"]["libc"]], Full())


def test_an_unwritable_layer_store_is_one_error_naming_it(tmp_path, vectors, vectors_app):
    (tmp_path / "file").write_text("not a directory")
    store = LayerStore(str(tmp_path / "file" / "store"))
    with pytest.raises(NixlayerError, match=f"cannot write to layer store {tmp_path / 'file' / 'store'}"):
        store.write(store.record_path("k", "x"), [], "", lambda out: write_store_layer([vectors["store_paths"]["libc"]], out))
