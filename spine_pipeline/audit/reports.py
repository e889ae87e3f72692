"""Credit-usage reports: the rows behind `report credits`, budgets and the headline.

All numbers come from the report views, so the CLI, the HTML report, the Dagster metadata
and an analyst's SQL agree by construction.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import duckdb

from spine_pipeline.audit.duck import AuditError, reading
from spine_pipeline.settings import Settings

BY_CHOICES = ("day", "template", "model", "request")
WARN_FRACTION = 0.8


@dataclass(frozen=True)
class Table:
    """Column names and rows, ready for any output format."""

    columns: list[str]
    rows: list[tuple[Any, ...]]

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, r, strict=True)) for r in self.rows]


@dataclass(frozen=True)
class Budgets:
    """Optional credit budgets; `from_env` falls back to SPINE_CREDIT_BUDGET_DAILY/_MONTHLY."""

    daily: float | None = None
    monthly: float | None = None

    @classmethod
    def from_env(cls, daily: float | None = None, monthly: float | None = None) -> Budgets:
        settings = Settings.from_env()
        return cls(
            daily=daily if daily is not None else settings.credit_budget_daily,
            monthly=monthly if monthly is not None else settings.credit_budget_monthly,
        )


@dataclass(frozen=True)
class BudgetStatus:
    """Spend against one budget: `level` is ok, warn (>= 80 %) or alert (>= 100 %)."""

    period: str  # "day YYYY-MM-DD" or "month YYYY-MM"
    budget: float
    spent: int
    level: str

    @property
    def fraction(self) -> float:
        return self.spent / self.budget if self.budget else 0.0


def _level(spent: float, budget: float) -> str:
    if spent >= budget:
        return "alert"
    if spent >= WARN_FRACTION * budget:
        return "warn"
    return "ok"


_BY_SQL = {
    "day": """SELECT day, runs, credits, completed_runs, partial_runs, failed_runs,
  credits_per_run, trailing_7d_median, anomaly
FROM credit_usage_daily WHERE $since IS NULL OR day >= $since ORDER BY day""",
    "template": """SELECT template, sum(runs)::BIGINT AS runs, sum(credits)::BIGINT AS credits,
  round(100.0 * sum(credits) / nullif(sum(sum(credits)) OVER (), 0), 1) AS pct_credits
FROM credit_usage_by_template WHERE $since IS NULL OR day >= $since
GROUP BY template ORDER BY credits DESC, template""",
    "model": """SELECT model, sum(runs)::BIGINT AS runs,
  sum(credits_of_runs)::BIGINT AS credits_of_runs,
  sum(runs_shared_with_other_models)::BIGINT AS runs_shared_with_other_models
FROM credit_usage_by_model WHERE $since IS NULL OR day >= $since
GROUP BY model ORDER BY credits_of_runs DESC, model""",
    "request": """SELECT request_name, sum(runs)::BIGINT AS runs, sum(credits)::BIGINT AS credits,
  max(max_run_credits) AS max_run_credits,
  round(100.0 * sum(credits) / nullif(sum(sum(credits)) OVER (), 0), 1) AS pct_credits
FROM credit_usage_by_request WHERE $since IS NULL OR day >= $since
GROUP BY request_name ORDER BY credits DESC, request_name""",
}


def query_table(
    con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any] | None = None
) -> Table:
    cur = con.execute(sql, params or {})
    columns = [d[0] for d in cur.description or []]
    return Table(columns, cur.fetchall())


def credit_report_table(
    con: duckdb.DuckDBPyConnection, by: str = "day", since: date | None = None
) -> Table:
    if by not in BY_CHOICES:
        raise AuditError(f"--by must be one of {', '.join(BY_CHOICES)}, not {by!r}")
    return query_table(con, _BY_SQL[by], {"since": since})


def credit_report(
    db_path: str | os.PathLike[str], by: str = "day", since: date | None = None
) -> Table:
    """Credit usage grouped by day, template, model (honest: run totals) or request."""
    with reading(db_path, stemmer=False) as con:
        return credit_report_table(con, by, since)


@dataclass(frozen=True)
class RunDetail:
    """What the HTML report shows of a run besides its row: where its canvas is (the URL the
    archive recorded, `runs.canvas_url`) and what it was asked (`runs.prompt`, cut to
    `PROMPT_CHARS`)."""

    canvas_url: str | None
    prompt: str | None


PROMPT_CHARS = 300


@dataclass
class ReportData:
    """Everything the HTML report and the headline show, read in one snapshot."""

    generated_at: datetime
    since: date | None
    until: date | None
    total_runs: int
    total_credits: int
    daily: Table
    daily_by_template: Table
    templates: Table
    models: Table
    requests: Table
    top_runs: Table
    anomalies: Table
    outcomes: Table
    overdue: Table
    budgets: Budgets
    budget_status: list[BudgetStatus] = field(default_factory=list)
    run_details: dict[str, RunDetail] = field(default_factory=dict)


def budget_status(
    con: duckdb.DuckDBPyConnection, budgets: Budgets, today: date | None = None
) -> list[BudgetStatus]:
    """Today's spend against the daily budget, this month's against the monthly one."""
    today = today or datetime.now(UTC).date()
    out = []
    if budgets.daily:
        (spent,) = con.execute(
            "SELECT coalesce(sum(credits), 0) FROM run_facts WHERE day = ?", [today]
        ).fetchone() or (0,)
        level = _level(spent, budgets.daily)
        out.append(BudgetStatus(f"day {today}", budgets.daily, int(spent), level))
    if budgets.monthly:
        (spent,) = con.execute(
            "SELECT coalesce(sum(credits), 0) FROM run_facts WHERE date_trunc('month', day) = ?",
            [today.replace(day=1)],
        ).fetchone() or (0,)
        out.append(
            BudgetStatus(
                f"month {today:%Y-%m}", budgets.monthly, int(spent), _level(spent, budgets.monthly)
            )
        )
    return out


def run_details(con: duckdb.DuckDBPyConnection, run_ids: set[str]) -> dict[str, RunDetail]:
    """Canvas URL and prompt of each archived run among `run_ids`."""
    if not run_ids:
        return {}
    found = con.execute(
        f"SELECT run_id, canvas_url, left(prompt, {PROMPT_CHARS}) FROM runs "
        "WHERE run_id IN (SELECT unnest(?::VARCHAR[]))",
        [sorted(run_ids)],
    ).fetchall()
    return {r: RunDetail(url, prompt) for r, url, prompt in found}


def report_data(
    con: duckdb.DuckDBPyConnection,
    *,
    since: date | None = None,
    budgets: Budgets | None = None,
    top: int = 10,
    today: date | None = None,
) -> ReportData:
    budgets = budgets if budgets is not None else Budgets.from_env()
    p = {"since": since}
    where = "WHERE $since IS NULL OR day >= $since"
    runs, credits, first, last = con.execute(
        f"SELECT count(*), coalesce(sum(credits), 0), min(day), max(day) FROM run_facts {where}", p
    ).fetchone() or (0, 0, None, None)
    data = ReportData(
        generated_at=datetime.now(UTC),
        since=since or first,
        until=last,
        total_runs=int(runs),
        total_credits=int(credits),
        daily=credit_report_table(con, "day", since),
        daily_by_template=query_table(
            con,
            f"SELECT day, template, credits FROM credit_usage_by_template {where} "
            "ORDER BY day, template",
            p,
        ),
        templates=credit_report_table(con, "template", since),
        models=credit_report_table(con, "model", since),
        requests=query_table(con, _BY_SQL["request"] + f" LIMIT {int(top)}", p),
        top_runs=query_table(
            con,
            f"SELECT run_id, day, coalesce(request_name, '(ad hoc)') AS request_name, template, "
            f"status, credits FROM run_facts {where} ORDER BY credits DESC, run_id "
            f"LIMIT {int(top)}",
            p,
        ),
        anomalies=query_table(
            con,
            "SELECT day, run_id, coalesce(request_name, '(ad hoc)') AS request_name, credits, "
            f"day_credits, trailing_7d_median, day_ratio FROM credit_anomalies {where} "
            "ORDER BY day, credits DESC, run_id",
            p,
        ),
        outcomes=query_table(
            con,
            "SELECT status, runs, credits, errors, top_errors[1:3] AS top_errors "
            "FROM run_outcomes ORDER BY runs DESC, status",
        ),
        overdue=query_table(
            con,
            "SELECT run_id, state, request_name, hours FROM overdue_runs "
            "ORDER BY hours DESC, run_id LIMIT 20",
        ),
        budgets=budgets,
        budget_status=budget_status(con, budgets, today),
    )
    linked = {
        str(row[t.columns.index("run_id")])
        for t in (data.top_runs, data.anomalies, data.overdue)
        for row in t.rows
    }
    data.run_details = run_details(con, linked)
    return data


def load_report_data(
    db_path: str | os.PathLike[str],
    *,
    since: date | None = None,
    budgets: Budgets | None = None,
    today: date | None = None,
) -> ReportData:
    with reading(db_path, stemmer=False) as con:
        return report_data(con, since=since, budgets=budgets, today=today)


def _md_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(table: Table, limit: int | None = None) -> str:
    rows = table.rows if limit is None else table.rows[:limit]
    lines = [
        "| " + " | ".join(table.columns) + " |",
        "|" + "---|" * len(table.columns),
        *("| " + " | ".join(_md_cell(v) for v in r) + " |" for r in rows),
    ]
    return "\n".join(lines)


def headline_markdown(
    db_path: str | os.PathLike[str],
    *,
    since: date | None = None,
    budgets: Budgets | None = None,
    days: int = 7,
) -> str:
    """The report's headline as markdown (for Dagster `MetadataValue.md`): totals, budget
    status, the last `days` days, anomalies."""
    data = load_report_data(db_path, since=since, budgets=budgets)
    return headline_from_data(data, days=days)


def headline_from_data(data: ReportData, days: int = 7) -> str:
    period = f"{data.since} to {data.until}" if data.until else "no runs yet"
    out = [
        f"**Spine credit usage**: {data.total_credits:,} credits over {data.total_runs:,} "
        f"runs ({period})",
        "",
    ]
    for b in data.budget_status:
        out.append(
            f"- budget {b.period}: {b.spent:,} of {b.budget:,.0f} credits "
            f"({b.fraction:.0%}) **{b.level.upper()}**"
        )
    if data.budget_status:
        out.append("")
    recent = Table(
        [*data.daily.columns[:3], "anomaly"],
        [(*r[:3], "yes" if r[-1] else "") for r in data.daily.rows[-days:]],
    )
    out.append(markdown_table(recent))
    if data.anomalies.rows:
        out += [
            "",
            f"**{len(data.anomalies.rows)} run(s) on anomalous days** (daily credits "
            "above 3x the trailing 7-day median)",
        ]
    return "\n".join(out) + "\n"
