"""Search and cited domains, checked against the simulator's ground truth."""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import date, timedelta
from urllib.parse import urlsplit

from click.testing import CliRunner

from spine_pipeline.audit import cited, search
from spine_pipeline.cli import main
from spine_pipeline_tests.audit.conftest import World


def _nodes(world: World):
    for r in world.runs:
        for node in (r.truth.dag or {}).get("nodes") or []:
            yield r, node


def test_search_finds_an_exact_phrase_from_ground_truth(world: World) -> None:
    run, node = next(
        (r, n)
        for r, n in _nodes(world)
        if isinstance(n.get("content"), str) and len(n["content"].split()) > 30
    )
    words = re.findall(r"[A-Za-z]{4,}", node["content"])[5:10]
    phrase = " ".join(words)
    # The same five words in that order can only come from blocks containing them verbatim.
    hits = search(world.db, phrase, limit=100)
    expected = {
        (r.run_id, n["id"])
        for r, n in _nodes(world)
        if isinstance(n.get("content"), str)
        and all(w.lower() in n["content"].lower() for w in words)
    }
    assert (run.run_id, node["id"]) in {(h.run_id, h.block_id) for h in hits}
    block_hits = {(h.run_id, h.block_id) for h in hits if h.kind == "block"}
    assert block_hits <= expected or len(hits) == 100
    hit = next(h for h in hits if (h.run_id, h.block_id) == (run.run_id, node["id"]))
    assert hit.canvas_url == f"https://app.getspine.ai/canvas/{run.truth.canvas_id}"
    assert hit.block_type == node["type"] and hit.block_name == node["name"]
    assert any(w.lower() in hit.snippet.lower() for w in words)
    quoted = search(world.db, f'"{" ".join(node["content"].split()[3:9])}"', limit=100)
    assert (run.run_id, node["id"]) in {(h.run_id, h.block_id) for h in quoted}


def _texts(run):
    yield _final(run)
    for node in (run.truth.dag or {}).get("nodes") or []:
        if isinstance(node.get("content"), str):
            yield node["content"]
        sources = node.get("sources")
        for src in sources if isinstance(sources, list) else []:
            if isinstance(src, dict) and isinstance(src.get("title"), str):
                yield src["title"]


def _both(text: str, *words: str) -> bool:
    return all(w in text.lower() for w in words)


def _final(run) -> str:
    return (run.truth.final_run.get("result") or {}).get("final_output") or ""


def test_search_filters_by_type_and_since(world: World) -> None:
    hits = search(world.db, "coffee futures", limit=200)
    assert hits
    # Every word must match in one document: block content, final output or source title.
    coffee_runs = {
        r.run_id for r in world.runs if any(_both(t, "coffee", "future") for t in _texts(r))
    }
    assert {h.run_id for h in hits} <= coffee_runs
    finals = search(world.db, "coffee futures", block_type="final_output", limit=200)
    assert finals and all(h.kind == "final_output" for h in finals)
    assert {h.run_id for h in finals} == {
        r.run_id
        for r in world.runs
        if r.run_id in coffee_runs
        and "coffee" in _final(r).lower()
        and "future" in _final(r).lower()
    }
    typed = search(world.db, "coffee", block_type="web-block", limit=200)
    assert all(h.block_type == "web-block" for h in typed)
    latest = max(r.day for r in world.runs)
    recent = search(world.db, "coffee futures", since=latest, limit=200)
    assert {h.run_id for h in recent} <= {r.run_id for r in world.runs if r.day >= latest}
    assert search(world.db, "coffee futures", since=latest + timedelta(days=1)) == []


def test_search_covers_source_titles(world: World) -> None:
    title = next(
        s["title"]
        for _, n in _nodes(world)
        for s in (n.get("sources") if isinstance(n.get("sources"), list) else [])
        if isinstance(s, dict) and isinstance(s.get("title"), str) and len(s["title"]) > 10
    )
    hits = search(world.db, title, block_type="source_title", limit=500)
    assert hits and all(h.kind == "source_title" for h in hits)


def _domain(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def test_cited_matches_ground_truth(world: World) -> None:
    by_domain: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for r, n in _nodes(world):
        sources = n.get("sources")
        for s in sources if isinstance(sources, list) else []:
            if isinstance(s, dict) and isinstance(s.get("url"), str):
                by_domain[_domain(s["url"])].add((r.run_id, n["id"]))
    domain = max(by_domain, key=lambda d: (len(by_domain[d]), d))
    got = {(c.run_id, c.block_id) for c in cited(world.db, domain)}
    assert got == by_domain[domain]
    bare = domain.removeprefix("www.")
    expected = set().union(
        *(v for d, v in by_domain.items() if d == bare or d.endswith("." + bare))
    )
    assert {(c.run_id, c.block_id) for c in cited(world.db, f"https://{bare}/x")} == expected
    assert cited(world.db, domain, since=date(2100, 1, 1)) == []


def test_search_and_cited_cli(world: World) -> None:
    env = {"SPINE_AUDIT_DB": str(world.db)}
    result = CliRunner().invoke(main, ["search", "solar panel"], env=env)
    assert result.exit_code == 0, result.output
    assert "https://app.getspine.ai/canvas/" in result.output
    first = result.output.splitlines()[0].split()
    assert first[0] in {r.run_id for r in world.runs}
    none = CliRunner().invoke(main, ["search", "the and of"], env=env)
    assert none.exit_code == 1 and none.output.startswith("error: nothing to search for")
    dated = CliRunner().invoke(main, ["search", "solar", "--since", "2100-01-01"], env=env)
    assert dated.exit_code == 0 and dated.output.strip() == "no matches"
    bad = CliRunner().invoke(main, ["search", "solar", "--since", "yesterday"], env=env)
    assert bad.exit_code == 2
    domain = next(
        _domain(s["url"])
        for _, n in _nodes(world)
        for s in (n.get("sources") if isinstance(n.get("sources"), list) else [])
        if isinstance(s, dict) and isinstance(s.get("url"), str)
    )
    out = CliRunner().invoke(main, ["cited", domain], env=env)
    assert out.exit_code == 0, out.output
    assert "citation(s)" in out.output
