"""Closure graphs read three ways from a real Nix closure, and their validation."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from nixlayer.closure import ClosureGraph, graph_from_json, graph_from_nix, graph_from_store_dir, nar_hash_digest, nix_error_line
from nixlayer.errors import NixlayerError
from nixlayer.plan import plan_image
from nixlayer.popularity import popularity_order

A = "/nix/store/" + "a" * 32 + "-a"
B = "/nix/store/" + "b" * 32 + "-b"
C = "/nix/store/" + "c" * 32 + "-c"


@pytest.fixture(scope="module")
def path_info(vectors_app) -> list[dict]:
    """``nix path-info --json --recursive`` of the vectors closure, Nix 2.8 list form."""
    out = subprocess.run(
        ["nix", "path-info", "--json", "--recursive", "--extra-experimental-features", "nix-command", vectors_app],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def nix_graph(vectors_app) -> ClosureGraph:
    return graph_from_nix([vectors_app])


def check_vectors(graph: ClosureGraph, vectors: dict) -> None:
    """The graph orders and groups the vectors closure exactly as nixpkgs does."""
    app = vectors["store_paths"]["app"]
    assert popularity_order(graph) == vectors["popularity_order"]
    for max_layers, layers in vectors["image_store_layers_by_max_layers"].items():
        plan = plan_image(graph, [app], max_layers=int(max_layers), layering="popularity")
        assert [list(layer.store_paths) for layer in plan.layers] == [layer["paths"] for layer in layers]


def test_path_info_json(path_info, vectors, nix_graph):
    graph = graph_from_json(json.dumps(path_info))
    check_vectors(graph, vectors)
    assert graph == nix_graph
    assert graph.nar_size(vectors["store_paths"]["libc"]) == 1248


def test_live_nix(nix_graph, vectors):
    check_vectors(nix_graph, vectors)
    longnames = vectors["store_paths"]["longnames"]
    assert longnames in nix_graph.references(longnames)  # self-reference kept as data


def test_store_dir_scan(vectors_app, vectors, nix_graph):
    graph = graph_from_store_dir([vectors_app], store_root="/")
    check_vectors(graph, vectors)
    assert graph == nix_graph  # same references, exactly the NAR sizes and hashes Nix registered


def test_nar_hashes_in_every_encoding_nix_prints(path_info, nix_graph):
    """SRI (nix path-info), Nix base-32 (older Nix, exportReferencesGraph) and base-16
    (nix-store --dump-db, the nix-store-only reader) give the same sha256:<hex>, the hash
    nix-hash converts to."""
    for entry in path_info:
        hex_digest = subprocess.run(["nix-hash", "--type", "sha256", "--to-base16", entry["narHash"]],
                                    check=True, capture_output=True, text=True).stdout.strip()
        base32 = subprocess.run(["nix-hash", "--type", "sha256", "--to-base32", entry["narHash"]],
                                check=True, capture_output=True, text=True).stdout.strip()
        for form in (entry["narHash"], f"sha256:{base32}", hex_digest, f"sha256:{hex_digest}"):
            assert nar_hash_digest(form) == f"sha256:{hex_digest}"
        assert nix_graph.nar_hash(entry["path"]) == f"sha256:{hex_digest}"
    for bad in ("sha256:xyz", "md5:" + "0" * 32, "sha256-AAAA", "sha256:" + "z" * 52):
        with pytest.raises(NixlayerError, match="not a SHA-256 hash"):
            nar_hash_digest(bad, "/nix/store/x")


def test_graph_json_round_trip(nix_graph):
    assert graph_from_json(nix_graph.to_json()) == nix_graph


def test_newer_nix_object_form(path_info, nix_graph):
    as_object = {entry["path"]: {k: v for k, v in entry.items() if k != "path"} for entry in path_info}
    assert graph_from_json(as_object) == nix_graph


def test_export_references_graph_forms(path_info, nix_graph):
    exported = [
        {"path": e["path"], "narSize": e["narSize"], "narHash": e["narHash"], "closureSize": 0,
         "references": e["references"]}
        for e in path_info
    ]
    assert graph_from_json(exported) == nix_graph
    assert graph_from_json(json.dumps({"graph": exported})) == nix_graph


def test_chroot_store_copy(tmp_path, vectors_app, vectors, nix_graph):
    store = tmp_path / "nix" / "store"
    store.mkdir(parents=True)
    subprocess.run(["cp", "-a", *nix_graph.paths, str(store)], check=True)
    graph = graph_from_store_dir([vectors_app], store_root=str(tmp_path))
    check_vectors(graph, vectors)
    assert graph == nix_graph


def test_nix_store_fallback(tmp_path, monkeypatch, vectors_app, nix_graph):
    (tmp_path / "nix-store").symlink_to(shutil.which("nix-store"))
    monkeypatch.setenv("PATH", str(tmp_path))
    assert graph_from_nix([vectors_app]) == nix_graph


def test_no_nix_on_path(tmp_path, monkeypatch, vectors_app):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(NixlayerError, match="neither nix nor nix-store"):
        graph_from_nix([vectors_app])


@pytest.mark.parametrize("only_nix_store", [False, True])
def test_invalid_root_in_live_nix(tmp_path, monkeypatch, only_nix_store):
    if only_nix_store:
        (tmp_path / "nix-store").symlink_to(shutil.which("nix-store"))
        monkeypatch.setenv("PATH", str(tmp_path))
    missing = "/nix/store/" + "0" * 32 + "-missing"
    with pytest.raises(NixlayerError) as error:
        graph_from_nix([missing])
    assert str(error.value) == (f"{missing} is not in the Nix store (not built, or garbage-collected): build it"
                                f" (`nix-build FILE.nix -A ATTR` prints its path) or fetch it (`nix-store --realise {missing}`)")


@pytest.mark.parametrize(("stderr", "line"), [
    # Nix 2.8 nix-build of a missing attribute: a hint follows the error.
    ("error: attribute 'helo' in selection path 'helo' not found\n       Did you mean hello?\n",
     "error: attribute 'helo' in selection path 'helo' not found"),
    # A failed build: substituter warnings, then the builder's log, then Nix's error.
    ("warning: error: unable to download 'https://cache.nixos.org/nix-cache-info'\nbuilding '/nix/store/x.drv'...\n"
     "error: in the build log\nerror: builder for '/nix/store/x.drv' failed with exit code 1\n",
     "error: builder for '/nix/store/x.drv' failed with exit code 1"),
    # An evaluation error with the source excerpt after it (the excerpt mentions "error").
    ("error: attribute 'b' missing\n\n       at /tmp/bad.nix:1:9:\n\n            1| { x = \"some error\"; }\n",
     "error: attribute 'b' missing"),
    # Newer Nix: a bare "error:", then the trace, then the error itself, indented.
    ("error:\n       … while evaluating the attribute 'x'\n\n       error: attribute 'b' missing\n",
     "error: attribute 'b' missing"),
    ("error:\n       undefined variable 'foo'\n", "error: undefined variable 'foo'"),
    ("something went wrong\n  details\n", "details"),
    ("\n", "no message"),
])
def test_nix_error_line(stderr, line):
    assert nix_error_line(stderr) == line


def make_store(root, contents: dict[str, bytes]) -> None:
    """A fake store under ``root``: store path -> the bytes of its single file ``f``."""
    for path, data in contents.items():
        directory = root / path.lstrip("/")
        directory.mkdir(parents=True)
        (directory / "f").write_bytes(data)


def test_scan_finds_hashes_across_chunks_links_and_names(tmp_path):
    # B's hash part straddles the 1 MiB chunk boundary of A's file.
    make_store(tmp_path, {A: b"x" * ((1 << 20) - 10) + ("b" * 32).encode() + b"\n", B: b"", C: b""})
    (tmp_path / A.lstrip("/") / "link").symlink_to(C + "/f")
    (tmp_path / B.lstrip("/") / ("c" * 32 + "-in-a-name")).write_bytes(b"")
    graph = graph_from_store_dir([A], store_root=str(tmp_path))
    assert dict(graph.references_map()) == {A: {B, C}, B: {C}, C: set()}


def test_scan_self_reference_and_closure_only(tmp_path):
    make_store(tmp_path, {A: A.encode(), B: b"unrelated"})
    graph = graph_from_store_dir([A], store_root=str(tmp_path))
    assert graph.paths == (A,) and graph.references(A) == {A}


def test_scan_root_missing(tmp_path):
    make_store(tmp_path, {A: b""})
    with pytest.raises(NixlayerError, match=f"root {B} is not in the store directory"):
        graph_from_store_dir([B], store_root=str(tmp_path))


def test_scan_cycle(tmp_path):
    make_store(tmp_path, {A: B.encode(), B: A.encode()})
    with pytest.raises(NixlayerError, match="reference cycle"):
        graph_from_store_dir([A], store_root=str(tmp_path))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("[{", "malformed closure graph JSON: Expecting"),
        ("42", "expected a list or an object, got int"),
        ([{"narSize": 1}], "has no \"path\" string"),
        ([{"path": A, "references": A}], f"references of {A} are not a list of strings"),
        ({A: 3}, f"entry for {A} is int"),
        ([{"path": A, "valid": False}], f"{A} is not valid in the Nix store"),
        ({A: None}, f"{A} is not valid in the Nix store"),
        ([{"path": A, "references": [B]}], f"{A} references {B}, which is not in the closure graph"),
        ([{"path": A, "references": [B]}, {"path": B, "references": [A]}], "reference cycle"),
        ([{"path": "/tmp/x", "references": []}], "/tmp/x is not a store path"),
        ([{"path": A, "references": ["/usr/lib/x"]}], "/usr/lib/x is not a store path"),
        ([{"path": A, "narSize": -1}], f"NAR size of {A} is -1"),
        ([{"path": A}, {"path": A}], f"{A} appears twice"),
    ],
)
def test_bad_json(data, message):
    with pytest.raises(NixlayerError, match=message.replace("(", r"\(")) as error:
        graph_from_json(data)
    assert "\n" not in str(error.value)


def test_json_bytes_utf8_and_not_utf8():
    text = json.dumps([{"path": A, "references": [B], "narSize": 7}, {"path": B}])
    assert graph_from_json(text.encode()) == graph_from_json(text)
    for data in (b"\xff\xfe[" + text.encode(), bytearray(b"[{\"path\": \"\xe9\"}]")):
        with pytest.raises(NixlayerError, match=r"^malformed closure graph JSON: not UTF-8 \(byte 0x(ff|e9) at offset (0|11)\)$"):
            graph_from_json(data)


def test_graph_queries():
    graph = ClosureGraph({A: [B, A], B: [C], C: []}, {A: 1, B: None})
    assert graph.paths == (A, B, C) and len(graph) == 3 and list(graph) == [A, B, C]
    assert graph.roots() == (A,)
    assert graph.nar_size(A) == 1 and graph.nar_size(B) is None and graph.nar_size(C) is None
    assert graph.closure([B]) == ClosureGraph({B: [C], C: []}, {B: None})
    with pytest.raises(NixlayerError, match=f"root {'/nix/store/' + 'd' * 32}-d is not in the closure graph"):
        graph.closure(["/nix/store/" + "d" * 32 + "-d"])
    with pytest.raises(NixlayerError, match="/etc/passwd is not a store path"):
        graph.closure(["/etc/passwd"])
    with pytest.raises(AttributeError):
        graph.store_dir = "/other"  # type: ignore[misc]


def test_other_store_dir():
    path = "/gnu/store/" + "a" * 32 + "-a"
    graph = graph_from_json([{"path": path, "references": [path]}], store_dir="/gnu/store/")
    assert graph.store_dir == "/gnu/store" and graph.paths == (path,)
    with pytest.raises(NixlayerError, match=f"{A} is not a store path directly in the store directory /gnu/store"):
        graph_from_json([{"path": A}], store_dir="/gnu/store")


def test_scan_unreadable_store_dir(tmp_path):
    with pytest.raises(NixlayerError, match="cannot read store directory"):
        graph_from_store_dir([A], store_root=os.fspath(tmp_path / "nowhere"))
