"""Random closure graphs for property tests, and the nixpkgs popularity written from its
definition (tree expansion and counting, no closed form) to check the fast one against."""

from __future__ import annotations

import math
import random
from collections import Counter

from hypothesis import strategies as st

from nixlayer.storepath import NIX_BASE32, package_name

NAMES = ["glibc-2.40", "zlib-1.3", "bash-5.2", "app", "app"]  # repeated names: ties by hash


def random_packages(rng: random.Random, count: int) -> dict[str, tuple[str, int, list[str]]]:
    """A closure shaped like a real one, as package name -> (version, NAR size, dependencies):
    package i depends on 0 to 6 of the packages before it, the first ones (the deep libraries)
    most often; sizes log-normal around 0.7 MB, from a few KB to hundreds of MB."""
    packages = {}
    for i in range(count):
        deps = sorted({int(i * rng.random() ** 2) for _ in range(min(i, rng.choice([0, 1, 1, 2, 2, 3, 4, 6])))})
        packages[f"p{i}"] = ("0", int(math.exp(rng.gauss(13.5, 1.8))), [f"p{j}" for j in deps])
    return packages


@st.composite
def store_paths(draw, count: int) -> list[str]:
    """``count`` distinct fake but valid store paths."""
    hashes = draw(st.lists(st.text(NIX_BASE32, min_size=32, max_size=32), min_size=count, max_size=count, unique=True))
    return [f"/nix/store/{h}-{draw(st.sampled_from(NAMES))}" for h in hashes]


@st.composite
def dag_references(draw, max_paths: int = 9) -> dict[str, list[str]]:
    """A random acyclic closure graph: path i may reference paths j < i, with duplicate
    edges and self-references sprinkled in."""
    count = draw(st.integers(1, max_paths))
    paths = draw(store_paths(count))
    references: dict[str, list[str]] = {}
    for i, path in enumerate(paths):
        refs = draw(st.lists(st.sampled_from(paths[:i]), max_size=4)) if i else []
        if draw(st.booleans()):
            refs.append(path)
        references[path] = refs
    return references


def naive_popularity(references: dict[str, list[str]]) -> Counter:
    """nixpkgs' counting on the fully expanded tree: roots are the paths no other path
    references; each subtree's counts are merged into its parent's, each raised by one, and
    the parent itself counts one."""
    children = {p: [r for r in dict.fromkeys(refs) if r != p] for p, refs in references.items()}
    roots = [p for p in children if not any(p in refs for refs in children.values())]

    def expand(path: str) -> dict:
        return {child: expand(child) for child in children[path]}

    def contest(forest: dict) -> Counter:
        counts: Counter = Counter()
        for path, subtree in forest.items():
            counts[path] += 1
            for below, count in contest(subtree).items():
                counts[below] += count + 1
        return counts

    return contest({root: expand(root) for root in roots})


def naive_order(references: dict[str, list[str]]) -> list[str]:
    counts = naive_popularity(references)
    return sorted(counts, key=lambda p: (-counts[p], package_name(p)))
