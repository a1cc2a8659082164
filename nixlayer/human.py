"""Numbers as people read them in nixlayer's output: sizes, durations and counts."""

from __future__ import annotations


def size(n: float) -> str:
    """``n`` bytes for a person: ``512 B``, ``1.9 MB``, ``2.1 GB`` (powers of 1000, as tqdm)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 999.95 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


def seconds(s: float) -> str:
    """A duration for a person: ``0.8 s``, ``42 s``, ``3 min 5 s``."""
    if s < 10:
        return f"{s:.1f} s"
    if s < 60:
        return f"{s:.0f} s"
    return f"{int(s // 60)} min {int(s % 60)} s"


def count(n: int, noun: str) -> str:
    """``n`` and ``noun`` (singular), plural unless ``n`` is 1: ``1 blob``, ``3 blobs``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
