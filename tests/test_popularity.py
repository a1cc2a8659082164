"""The popularity order: exact against nixpkgs' tree expansion, for closures and images."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from nixlayer.closure import ClosureGraph
from nixlayer.popularity import image_popularity, order_by_popularity, popularity, popularity_order
from random_graphs import dag_references, naive_order, naive_popularity, store_paths


@settings(max_examples=300, deadline=None)
@given(dag_references())
def test_order_equals_tree_expansion(references):
    graph = ClosureGraph(references)
    assert popularity(graph) == dict(naive_popularity(references))
    assert popularity_order(graph) == naive_order(references)


@settings(max_examples=150, deadline=None)
@given(dag_references(), st.randoms(use_true_random=False))
def test_order_independent_of_input_order_duplicates_and_self_references(references, rng):
    order = popularity_order(ClosureGraph(references))
    assert sorted(order) == sorted(references)
    shuffled_paths = list(references)
    rng.shuffle(shuffled_paths)
    noisy = {}
    for path in shuffled_paths:
        refs = references[path] * 2 + [path]  # every edge twice, plus a self-reference
        rng.shuffle(refs)
        noisy[path] = refs
    assert popularity_order(ClosureGraph(noisy)) == order


@settings(max_examples=150, deadline=None)
@given(dag_references(), st.data())
def test_image_popularity_order_equals_tree_expansion_with_the_nixpkgs_nodes(references, data):
    paths = list(references)
    contents = data.draw(st.lists(st.sampled_from(paths), min_size=1, max_size=3, unique=True))
    config_paths = data.draw(st.lists(st.sampled_from(paths), max_size=2, unique=True))
    # nixpkgs: closure -> baseJson, customisationLayer; baseJson -> config paths;
    # customisationLayer -> contents. Those three are real store paths there, dropped after.
    closure, base_json, customisation = data.draw(store_paths(3).filter(lambda s: not set(s) & set(paths)))
    image_paths = set(ClosureGraph(references).closure(contents + config_paths).paths)
    with_image_nodes = {path: references[path] for path in image_paths}
    with_image_nodes[closure] = [base_json, customisation]
    with_image_nodes[base_json] = config_paths
    with_image_nodes[customisation] = contents
    expected = [p for p in naive_order(with_image_nodes) if p in image_paths]
    assert order_by_popularity(image_popularity(ClosureGraph(references), contents, config_paths)) == expected


def ladder(levels: int) -> dict[str, list[str]]:
    """Two paths per level, each referencing both paths of the next level: 2**i routes lead
    to a path of level i, so popularity there is 2**i + 2 * (2**i - 1) = 3 * 2**i - 2."""
    rng = random.Random(levels)
    names = [[f"/nix/store/{''.join(rng.choices('0123456789abcdfghijklmnpqrsvwxyz', k=32))}-l{i}{side}"
              for side in "ab"] for i in range(levels)]
    return {path: (names[i + 1] if i + 1 < levels else []) for i, pair in enumerate(names) for path in pair}


def test_popularity_beyond_64_bits_is_exact():
    references = ladder(100)
    counts = popularity(ClosureGraph(references))
    for path, count in counts.items():
        level = int(path.rsplit("-l", 1)[1][:-1])
        assert count == 3 * 2**level - 2
    assert max(counts.values()) > 2**64


def test_vectors_image_order_is_the_nixpkgs_order(vectors):
    s = vectors["store_paths"]
    graph = ClosureGraph({
        s["app"]: [s["zlib"], s["longnames"], s["script"]],
        s["longnames"]: [s["zlib"], s["longnames"]],
        s["zlib"]: [s["libc"]],
        s["script"]: [s["libc"]],
        s["libc"]: [],
    })
    assert popularity_order(graph) == vectors["popularity_order"]
    assert order_by_popularity(image_popularity(graph, [s["app"]])) == vectors["popularity_order"]
    assert set(image_popularity(graph, [s["zlib"]], [s["script"]])) == {s["zlib"], s["script"], s["libc"]}
