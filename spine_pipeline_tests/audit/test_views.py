"""Every report view against totals computed independently from the simulator's ground truth."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from datetime import date, timedelta

import pytest

from spine_pipeline.audit import connect_readonly, credit_report
from spine_pipeline_tests.audit.conftest import World, rows


@pytest.fixture
def con(world: World):
    c = connect_readonly(world.db)
    yield c
    c.close()


def test_tables_hold_every_run_exactly_once(world: World, con) -> None:
    assert rows(con, "SELECT count(*), count(DISTINCT run_id) FROM runs") == [
        (len(world.runs), len(world.runs))
    ]
    for run in world.runs:
        nodes = (run.truth.dag or {}).get("nodes") or []
        edges = (run.truth.dag or {}).get("edges") or []
        got = rows(
            con,
            "SELECT (SELECT count(*) FROM blocks WHERE run_id = $1),"
            " (SELECT count(*) FROM edges WHERE run_id = $1),"
            " (SELECT count(*) FROM artifacts WHERE run_id = $1),"
            " (SELECT count(*) FROM run_errors WHERE run_id = $1),"
            " (SELECT credits_consumed FROM runs WHERE run_id = $1),"
            " (SELECT status FROM runs WHERE run_id = $1)",
            run.run_id,
        )[0]
        errors = run.truth.final_run.get("errors") or []
        assert got == (
            len(nodes),
            len(edges),
            len(run.truth.artifacts),
            len(errors),
            run.truth.final_run.get("metadata", {}).get("credits_consumed"),
            run.truth.status,
        ), run.run_id
    assert rows(con, "SELECT seq, run_count FROM manifests ORDER BY seq") == [(1, 8), (2, 8)]


def test_block_content_is_byte_exact(world: World, con) -> None:
    run = next(r for r in world.runs if r.truth.dag)
    expected = {n["id"]: n.get("content") for n in run.truth.dag["nodes"]}
    got = dict(rows(con, "SELECT block_id, content FROM blocks WHERE run_id = ?", run.run_id))
    assert got == expected


def test_credit_usage_daily(world: World, con) -> None:
    by_day: dict[date, list[int]] = defaultdict(list)
    statuses: dict[date, Counter[str]] = defaultdict(Counter)
    for r in world.runs:
        by_day[r.day].append(r.credits)
        statuses[r.day][r.truth.status] += 1
    got = rows(
        con,
        "SELECT day, runs, credits, completed_runs, partial_runs, failed_runs, "
        "trailing_7d_median, anomaly FROM credit_usage_daily ORDER BY day",
    )
    expected = []
    for day in sorted(by_day):
        window = [sum(by_day[d]) for d in by_day if day - timedelta(days=7) <= d < day]
        median = statistics.median(window) if window else None
        total = sum(by_day[day])
        expected.append(
            (
                day,
                len(by_day[day]),
                total,
                statuses[day]["completed"],
                statuses[day]["partial"],
                statuses[day]["failed"],
                median,
                bool(median and total > 3 * median),
            )
        )
    assert got == expected
    # The session world has a spike day: six runs on the day before today.
    assert any(row[-1] for row in got), "expected the spike day to be flagged"


def test_credit_usage_by_template_and_request(world: World, con) -> None:
    templates: Counter[str] = Counter()
    requests: Counter[str] = Counter()
    for r in world.runs:
        templates[r.template] += r.credits
        requests[r.request_name or "(ad hoc)"] += r.credits
    got_t = dict(
        rows(con, "SELECT template, sum(credits) FROM credit_usage_by_template GROUP BY 1")
    )
    got_r = dict(
        rows(con, "SELECT request_name, sum(credits) FROM credit_usage_by_request GROUP BY 1")
    )
    assert got_t == dict(templates)
    assert got_r == dict(requests)
    report = credit_report(world.db, "request")
    assert {r[0]: r[2] for r in report.rows} == dict(requests)


def test_credit_usage_by_model_is_honest(world: World, con) -> None:
    runs: Counter[str] = Counter()
    credits: Counter[str] = Counter()
    for r in world.runs:
        for m in set(r.models) or {"(unknown)"}:
            runs[m] += 1
            credits[m] += r.credits
    got = {
        m: (n, c)
        for m, n, c in rows(
            con,
            "SELECT model, sum(runs), sum(credits_of_runs) FROM credit_usage_by_model GROUP BY 1",
        )
    }
    assert got == {m: (runs[m], credits[m]) for m in runs}
    # No invented split: each model carries whole run totals, so they over-count the total.
    total = sum(r.credits for r in world.runs)
    assert sum(c for _, c in got.values()) >= total


def test_credit_report_since_filters_days(world: World) -> None:
    since = max(r.day for r in world.runs)
    report = credit_report(world.db, "template", since)
    expected: Counter[str] = Counter()
    for r in world.runs:
        if r.day >= since:
            expected[r.template] += r.credits
    assert {row[0]: row[2] for row in report.rows} == dict(expected)


def test_run_outcomes(world: World, con) -> None:
    counts: Counter[str] = Counter()
    credits: Counter[str] = Counter()
    messages: dict[str, set[str]] = defaultdict(set)
    for r in world.runs:
        counts[r.truth.status] += 1
        credits[r.truth.status] += r.credits
        for e in r.truth.final_run.get("errors") or []:
            messages[r.truth.status].add(e["error"])
    got = rows(con, "SELECT status, runs, credits, top_errors FROM run_outcomes")
    assert {s: (n, c) for s, n, c, _ in got} == {s: (counts[s], credits[s]) for s in counts}
    for status, _, _, top in got:
        assert set(top or []) <= messages[status]
        assert bool(top) == bool(messages[status])
    assert {"failed", "partial"} <= set(counts)
    failures = {r[0] for r in rows(con, "SELECT run_id FROM run_failures")}
    assert failures == {
        r.run_id
        for r in world.runs
        if r.truth.status != "completed" or r.truth.final_run.get("errors")
    }


def test_overdue_runs(world: World, con) -> None:
    slow_archived = {
        r.run_id for r in world.runs if r.truth.final_run["duration_ms"] > 3 * 3600 * 1000
    }
    got = rows(con, "SELECT run_id, state, request_name FROM overdue_runs")
    assert {g[0] for g in got} == slow_archived | {world.inflight_overdue}
    assert (world.inflight_overdue, "in_flight", "slow-job") in got
    inflight = {r[0] for r in rows(con, "SELECT run_id FROM inflight_runs")}
    assert inflight == {world.inflight_overdue, world.inflight_recent}


def test_submissions_table(world: World, con) -> None:
    got = rows(con, "SELECT outcome, count(*) FROM submissions GROUP BY 1")
    named = sum(1 for r in world.runs if r.request_name)
    assert dict(got) == {"accepted": named, "rejected": world.rejected}
    assert rows(con, "SELECT error FROM submissions WHERE outcome = 'rejected'") == [
        ("HTTP 400: prompt too long",)
    ]


def test_credit_anomalies_lists_runs_of_flagged_days(world: World, con) -> None:
    flagged = {r[0] for r in rows(con, "SELECT day FROM credit_usage_daily WHERE anomaly")}
    got = {r[0] for r in rows(con, "SELECT run_id FROM credit_anomalies")}
    assert got == {r.run_id for r in world.runs if r.day in flagged}
