"""The verdict: after the last run, every invariant checked and the figures collected.

The archive is garbage-collected (crashed batches leave uncommitted files) and verified,
then compared with the simulator's ground truth (`soak/check.py`); the submissions, the
sensor ticks' budget and the per-phase timings complete the report.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import TYPE_CHECKING

import dagster as dg

from soak.check import Check, check_against_ground_truth
from soak.submissions import LOST
from soak.workers import QUIET_LEVEL
from spine_pipeline.driver import quiet

if TYPE_CHECKING:
    from soak.setup import Rig


def credit_report(rig: Rig) -> None:
    """Materialise the daily credit report once, as its schedule would."""
    job = rig.defs.resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(
        instance=rig.instance,
        asset_selection=[dg.AssetKey("credit_report")],
        run_config=quiet(QUIET_LEVEL),
        raise_on_error=False,
    )
    rig.report.figures["credit_report"] = "ok" if result.success else "failed"


def judge(
    rig: Rig,
    *,
    expected: set[str],
    tick_windows: list[tuple[float, float]],
    outages: list[tuple[float, float]],
) -> None:
    """Fill `rig.report` with the checks and the figures (the workers have stopped)."""
    from spine_pipeline.archive.archiver import Archiver
    from spine_pipeline.archive.gc import collect_garbage
    from spine_pipeline.archive.signing import VerifyKeys
    from spine_pipeline.archive.tlog import Witness
    from spine_pipeline.archive.verify import verify_archive
    from spine_pipeline.spine import AsyncSpineClient

    report, observer, cfg = rig.report, rig.observer, rig.cfg
    gc = collect_garbage(observer, grace=timedelta(0), include_artifacts=True)
    # A worker killed between its commit and its checkpoint leaves the tail uncheckpointed
    # until the next batch; the next batch is this empty one (it only repairs the log).
    Archiver(observer, AsyncSpineClient).archive([])
    keys = VerifyKeys.load(os.environ["SPINE_VERIFY_KEY"])
    witness = Witness.open(os.environ["SPINE_WITNESS_URI"], must_exist=True)
    verified = verify_archive(observer, keys=keys, witnesses=[witness])
    checks = check_against_ground_truth(rig.sim.world, observer, rig.audit_db, expected)
    _job_timings(rig)
    world = rig.sim.world
    figures = report.figures
    dups = figures.get("accepted_duplicates", 0) + figures.get("prompts_created_twice", 0)
    accepted = figures.get("ledger_accepted", 0)
    unaccounted = figures.get("created_without_accepted_record", 0)
    checks.append(
        Check(
            "no duplicate submission",
            dups == 0 and world.created_count == accepted + unaccounted,
            f"{world.created_count} runs created = {accepted} accepted + {unaccounted} "
            f"created by submits whose outcome was unknown; prompts created twice: "
            f"{figures.get('prompts_created_twice', 0)}",
        )
    )
    lost = report.reconciled.get(LOST, 0)
    checks.append(
        Check(
            "every created run recorded (ledger, or named by its failed submit)",
            lost == 0,
            f"{lost} created runs recorded nowhere",
        )
    )
    checks.append(
        Check(
            "verify clean, every manifest signed, log consistent with its witness "
            "(after gc of crashed batches)",
            verified.ok
            and verified.signed == verified.manifests
            and [size for _, size in verified.witnessed] == [verified.manifests],
            f"{verified.manifests} manifests ({verified.signed} signed, witnessed up to "
            f"{[size for _, size in verified.witnessed]}), {verified.files} files, "
            f"{verified.artifacts} artifacts; gc removed {len(gc.deleted)} uncommitted objects"
            + ("" if verified.ok else f"; {[str(p) for p in verified.problems[:3]]}"),
        )
    )
    # Invariant 4: the budget bounds the whole tick, polling and the archive-store reads
    # before it (a store that does not answer in time fails the tick at its deadline).
    # Ticks that overlapped an S3 outage are also reported apart.
    stormy = [
        seconds
        for (start, end), seconds in zip(tick_windows, report.tick_seconds, strict=True)
        if any(start < o_end and end > o_start for o_start, o_end in outages)
    ]
    failed = list(figures.get("failed_tick_seconds", []))
    every = [*report.tick_seconds, *failed]
    over = [s for s in every if s > cfg.tick_budget]
    checks.append(
        Check(
            "every sensor tick inside its budget (Spine API and storage faults)",
            not over,
            f"{len(report.tick_seconds)} ok and {len(failed)} failed ticks, max "
            f"{max(every, default=0):.2f}s, budget {cfg.tick_budget:g}s"
            + (f"; over: {sorted(over)[-3:]}" if over else ""),
        )
    )
    figures["ticks_during_s3_outages"] = {
        "count": len(stormy),
        "max_seconds": max(stormy, default=0.0),
    }
    report.checks = checks
    report.api_faults = dict(world.fault_counts)
    report.storage_faults = dict(rig.proxy.counts) if rig.proxy else {}
    figures |= {
        "runs_created": world.created_count,
        "runs_archived": len(expected),
        "manifests": verified.manifests,
        "gc_deleted": len(gc.deleted),
        "sensor_ticks": len(report.tick_seconds) + len(report.failed_ticks),
        "requests_served": world.requests_served,
    }


def _job_timings(rig: Rig) -> None:
    """Per-phase seconds of the archive runs, from their materialisation metadata."""
    found: dict[str, list[float]] = {}
    for key, fields in (
        ("archive_batch", ("fetch_seconds", "write_seconds")),
        ("audit_database", ("seconds",)),
    ):
        records = rig.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(key)), limit=10_000
        ).records
        for record in records:
            meta = record.asset_materialization.metadata if record.asset_materialization else {}
            for name in fields:
                if name in meta and isinstance(value := meta[name].value, int | float):
                    label = f"{key}.{name}"
                    found.setdefault(label, []).append(float(value))
    rig.report.figures["phase_seconds"] = found
