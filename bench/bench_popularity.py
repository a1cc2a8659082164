"""Benchmark: nixlayer's popularity order against the nixpkgs tree-expansion algorithm.

Generates a seeded, realistic closure graph (each store path references a few earlier paths,
half the time from a popular core of libraries), times ``popularity_order`` on it, and times a
straightforward implementation of the nixpkgs algorithm (tree expansion with memoised
sub-contests) as a baseline on the same graph, or on its first ``--baseline-paths`` paths when
the full graph would take too long. Prints both times and the ratio.

    python bench/bench_popularity.py [--paths 20000] [--baseline-paths 20000] [--seed 1]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nixlayer.closure import ClosureGraph  # noqa: E402
from nixlayer.popularity import popularity_order  # noqa: E402
from nixlayer.storepath import NIX_BASE32, package_name  # noqa: E402


def realistic_graph(paths: int, seed: int, core: int = 200) -> ClosureGraph:
    """A random closure graph of ``paths`` store paths: path i references 1-6 earlier paths,
    each drawn from the first ``core`` paths (the popular libraries) half the time."""
    rng = random.Random(seed)
    names = [f"/nix/store/{''.join(rng.choices(NIX_BASE32, k=32))}-pkg{i}-1.0" for i in range(paths)]
    references: dict[str, set[str]] = {}
    for i, path in enumerate(names):
        refs = {path} if rng.random() < 0.3 else set()  # some paths refer to themselves
        for _ in range(min(i, rng.randint(1, 6))):
            pool = min(i, core) if rng.random() < 0.5 else i
            refs.add(names[rng.randrange(pool)])
        references[path] = refs
    return ClosureGraph(references)


def nixpkgs_order(graph: ClosureGraph) -> list[str]:
    """The nixpkgs algorithm, written plainly: roots, tree expansion, memoised contests."""
    children = {p: [r for r in graph.references(p) if r != p] for p in graph.paths}
    roots = [p for p in graph.paths if not any(p in refs for q, refs in children.items() if q != p)]
    trees: dict[str, dict] = {}

    def tree(path: str) -> dict:
        if path not in trees:
            trees[path] = {ref: tree(ref) for ref in children[path]}
        return trees[path]

    contests: dict[str, dict[str, int]] = {}

    def contest(forest: dict) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for path, subtree in forest.items():
            counts[path] += 1
            if path not in contests:
                contests[path] = contest(subtree)
            for sub, count in contests[path].items():
                counts[sub] += count + 1
        return counts

    counts = contest({root: tree(root) for root in roots})
    return sorted(counts, key=lambda p: (-counts[p], package_name(p)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", type=int, default=20_000)
    parser.add_argument("--baseline-paths", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    sys.setrecursionlimit(100_000)

    graph = realistic_graph(args.paths, args.seed)
    start = time.perf_counter()
    order = popularity_order(graph)
    fast = time.perf_counter() - start
    print(f"nixlayer popularity_order, {len(order)} paths: {fast:.3f} s")

    small = realistic_graph(args.baseline_paths, args.seed)
    start = time.perf_counter()
    small_order = popularity_order(small)
    fast_small = time.perf_counter() - start
    start = time.perf_counter()
    expected = nixpkgs_order(small)
    baseline = time.perf_counter() - start
    assert small_order == expected, "orders differ"
    print(f"nixlayer popularity_order, {len(small)} paths: {fast_small:.3f} s")
    print(f"nixpkgs tree expansion,    {len(small)} paths: {baseline:.3f} s (same order)")
    print(f"speed-up on {len(small)} paths: {baseline / fast_small:.0f}x")


if __name__ == "__main__":
    main()
