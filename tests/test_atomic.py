"""Atomic writes, and the removal of temporaries that killed writers left behind."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from nixlayer.atomic import STALE_TEMP_SECONDS, atomic_file, remove_stale_temporaries
from nixlayer.layer import LayerBlob
from nixlayer.layerstore import LayerStore

OLD = STALE_TEMP_SECONDS + 60   # seconds ago: abandoned
RECENT = STALE_TEMP_SECONDS - 60  # seconds ago: maybe a live writer on another machine


def aged(path: Path, seconds_ago: float, data: bytes = b"partial") -> Path:
    """``path`` (a file, or a directory if it exists) last modified ``seconds_ago``."""
    if not path.is_dir():
        path.write_bytes(data)
    when = time.time() - seconds_ago
    os.utime(path, (when, when))
    return path


def test_atomic_file_removes_its_abandoned_temporaries_only(tmp_path):
    stale = aged(tmp_path / ".a.tar.tmp-dead", OLD)
    live = aged(tmp_path / ".a.tar.tmp-live", RECENT)
    other = aged(tmp_path / ".b.tar.tmp-dead", OLD)  # another destination's: not ours to judge
    unrelated = aged(tmp_path / "a.tar.tmp-x", OLD)
    with atomic_file(str(tmp_path / "a.tar")) as f:
        f.write(b"image")
    assert (tmp_path / "a.tar").read_bytes() == b"image"
    assert not stale.exists() and live.exists() and other.exists() and unrelated.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".a.tar.tmp-live", ".b.tar.tmp-dead", "a.tar", "a.tar.tmp-x"]


def test_atomic_file_sweep_false_keeps_them(tmp_path):
    stale = aged(tmp_path / ".r.json.tmp-dead", OLD)
    with atomic_file(str(tmp_path / "r.json"), sweep=False) as f:
        f.write(b"{}")
    assert stale.exists()


def test_stale_directories_are_judged_by_their_newest_file(tmp_path):
    """An abandoned oci-archive scratch layout is removed; one whose blob is still being
    written is kept, however old its directories are."""
    dead = tmp_path / ".oci-archive-dead"
    (dead / "blobs" / "sha256").mkdir(parents=True)
    aged(dead / "blobs" / "sha256" / "x", OLD)
    for d in (dead / "blobs" / "sha256", dead / "blobs", dead):
        aged(d, OLD)
    busy = tmp_path / ".oci-archive-busy"
    (busy / "blobs").mkdir(parents=True)
    aged(busy / "blobs" / "big", 0)
    for d in (busy / "blobs", busy):
        aged(d, OLD)
    reference = tmp_path / ".oci-archive-mine"
    reference.mkdir()
    assert remove_stale_temporaries(str(tmp_path), ".oci-archive-", str(reference)) == [str(dead)]
    assert busy.exists() and reference.exists()


def test_layer_store_write_makes_temporaries_in_tmp_and_removes_abandoned_ones(tmp_path):
    store = LayerStore(str(tmp_path / "store"))
    temps = tmp_path / "store" / "tmp"
    temps.mkdir(parents=True)
    stale = aged(temps / ".blob.tmp-killed", OLD, b"x" * 4096)
    stale_record = aged(temps / ".key.json.tmp-killed", OLD)
    live = aged(temps / ".blob.tmp-writing", RECENT)
    data = b"layer bytes"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()

    def write_blob(f):
        # this writer's temporary is in tmp/ beside the live one; the abandoned ones are gone
        assert len([p for p in temps.iterdir() if p.name.startswith(".blob.tmp-")]) == 2
        f.write(data)
        return LayerBlob(digest, len(data), digest, len(data), "application/vnd.oci.image.layer.v1.tar")

    record = store.write(store.record_path("settings", "key"), ["/nix/store/x"], "", write_blob)
    assert store.find(store.record_path("settings", "key")) == record
    assert not stale.exists() and not stale_record.exists() and live.exists()
    assert [p.name for p in temps.iterdir()] == [".blob.tmp-writing"]
    assert [p.name for p in (tmp_path / "store" / "blobs" / "sha256").iterdir()] == [digest.removeprefix("sha256:")]
    assert [p.name for p in (tmp_path / "store" / "layers" / "settings").iterdir()] == ["key.json"]
