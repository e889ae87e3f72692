"""Layering of the canvas DAG: longest path, stable order, hostile graphs, determinism."""

from __future__ import annotations

import re
import time

from spine_pipeline.evidence.dag_svg import MAX_PER_ROW, DagNode, layer_dag, render_dag_svg


def _nodes(n: int) -> list[DagNode]:
    return [
        DagNode(f"n{i}", "text-block", f"Node {i}", "completed", f"#block-{i}") for i in range(n)
    ]


def test_longest_path_layers_and_stable_order() -> None:
    # n0 -> n1 -> n3, n0 -> n3 (shortcut), n2 alone, n4 <- n2: n3 must sit below n1.
    lay = layer_dag(
        ["n0", "n1", "n2", "n3", "n4"],
        [("n0", "n1"), ("n1", "n3"), ("n0", "n3"), ("n2", "n4")],
    )
    assert lay.layer_of == (0, 1, 0, 2, 1)
    assert lay.layers == ((0, 2), (1, 4), (3,))  # node order within a layer
    assert lay.back == frozenset()
    assert lay.ends == ((0, 1), (1, 3), (0, 3), (2, 4))


def test_every_forward_edge_points_down() -> None:
    ids = [f"n{i}" for i in range(40)]
    edges = [
        (f"n{i}", f"n{j}") for i in range(40) for j in range(i + 1, 40) if (i * 7 + j) % 5 == 0
    ]
    lay = layer_dag(ids, edges)
    for s, t in (e for e in lay.ends if e is not None):
        assert lay.layer_of[s] < lay.layer_of[t]
    # Longest path: each node is exactly one below its lowest predecessor.
    for t in range(40):
        preds = [lay.layer_of[s] for s, tt in lay.ends if tt == t]  # type: ignore[misc]
        assert lay.layer_of[t] == (max(preds) + 1 if preds else 0)


def test_cycles_self_loops_dangling_and_duplicate_ids_are_tolerated() -> None:
    ids = ["a", "b", "c", "a", None, "d"]  # "a" twice, one node without id
    edges = [
        ("a", "b"),
        ("b", "c"),
        ("c", "a"),  # closes a cycle
        ("d", "d"),  # self-loop
        ("a", "missing"),  # dangling
        (None, "b"),  # dangling
        ("b", "a"),  # another back edge
    ]
    lay = layer_dag(ids, edges)
    assert lay.ends[4] is None and lay.ends[5] is None
    assert lay.ends[0] == (0, 1)  # duplicate id: the first block with it
    assert lay.back == {2, 3, 6}
    assert sorted(i for layer in lay.layers for i in layer) == list(range(6))  # all placed
    nodes = [DagNode(i, "t", "n", "completed", f"#block-{k}") for k, i in enumerate(ids)]
    svg = render_dag_svg(nodes, edges)
    assert svg.dangling == (4, 5)
    assert svg.svg.count('class="node"') == 6
    assert svg.svg.count('class="edge back"') == 3
    assert svg.svg.count("<line") + svg.svg.count("<path") == len(edges) - 2


def test_only_cycles_still_places_everything_deterministically() -> None:
    ids = [f"n{i}" for i in range(5)]
    edges = [(f"n{i}", f"n{(i + 1) % 5}") for i in range(5)]
    lay = layer_dag(ids, edges)
    assert lay.layer_of == (0, 1, 2, 3, 4)  # n0 forced first, the rest follow
    assert lay.back == {4}
    assert layer_dag(ids, edges) == lay


def test_wide_layers_wrap_and_long_chains_need_no_recursion() -> None:
    n = 20_000
    started = time.monotonic()
    wide = render_dag_svg(_nodes(n), [])
    chain = render_dag_svg(_nodes(n), [(f"n{i}", f"n{i + 1}") for i in range(n - 1)])
    assert time.monotonic() - started < 20
    assert wide.svg.count('class="node"') == n and chain.svg.count('class="node"') == n
    assert len(wide.layering.layers) == 1 and len(chain.layering.layers) == n
    assert wide.width == chain.width + (MAX_PER_ROW - 1) * (180 + 16)  # wrapped at MAX_PER_ROW
    assert len(wide.svg) < 400 * n and len(chain.svg) < 500 * n


def test_rendering_is_deterministic_and_escaped() -> None:
    nodes = [
        DagNode("x", '<script>alert("t")</script>', 'a"b<c>\u202eevil', None, "#block-0"),
        DagNode("y", None, None, "weird status; fill:red", "#block-1"),
    ]
    one = render_dag_svg(nodes, [("x", "y")]).svg
    assert one == render_dag_svg(list(nodes), [("x", "y")]).svg
    assert "<script" not in one and "&lt;script&gt;" in one
    assert "\u202e" not in one and "\\u202e" in one
    assert 'class="s-other"' in one  # free-text status never becomes a class
    assert re.findall(r'href="([^"]*)"', one) == ["#block-0", "#block-1"]
