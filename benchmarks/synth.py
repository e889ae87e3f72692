"""A synthetic archive generated through the real archive writer.

Synthetic `FetchedRun`s (JSON texts shaped like Spine's answers, parsed by `RawDoc`) go
through `Archiver._write_files` (flatten -> Arrow -> Parquet -> store, create-if-absent)
and `ManifestLog.commit` in 100-run batches, exactly as an archive batch writes them. No
Parquet is written by hand. Content is drawn from a fixed vocabulary with a seeded RNG; one
block in 500 carries the phrase the search benchmark looks for.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from spine_pipeline.archive.archiver import Archiver
from spine_pipeline.archive.manifest import ManifestLog
from spine_pipeline.archive.records import FetchedRun, RawDoc
from spine_pipeline.archive.stores import ObjectStore, open_store

PHRASE = "gross margin in Japan"
TEMPLATES = ("report", "slides", "memo", "excel", "deep_research", "app", "landing_page", "auto")
MODELS = ("openai/gpt-5", "anthropic/claude-opus-4", "google/gemini-2.5-pro", "xai/grok-4")
BLOCK_TYPES = (
    "web-block",
    "web-research-block",
    "prompt-block",
    "table-block",
    "text-block",
    "list-block",
    "document-block",
)
_WORDS = (  # noqa: SIM905 (a sentence reads better than 67 quoted words)
    "battery storage grid market supplier pricing capacity revenue forecast regulation "
    "lithium sodium cathode anode factory europe asia america demand policy subsidy tariff "
    "utility solar wind inverter margin cost risk growth share customer contract warranty "
    "analysis report region country quarter annual trend scenario baseline estimate source "
    "model energy power network transmission install project pipeline permit finance debt "
    "equity investor return yield chemistry density cycle safety recycle supply chain"
).split()


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words))


def _run(rng: random.Random, index: int, day: datetime, blocks: int) -> FetchedRun:
    run_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    canvas_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    template = TEMPLATES[index % len(TEMPLATES)]
    status = rng.choices(("completed", "partial", "failed"), (0.75, 0.15, 0.10))[0]
    nodes = []
    for b in range(blocks):
        content = _text(rng, rng.randint(30, 90))
        if rng.random() < 0.002:
            content = f"{content} the {PHRASE} fell {rng.randint(1, 9)} points"
        sources = [
            {"url": f"https://example{rng.randint(1, 300)}.com/a/{b}", "title": _text(rng, 5)}
            for _ in range(rng.randint(0, 2))
        ]
        nodes.append(
            {
                "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "name": f"Block {b}",
                "type": BLOCK_TYPES[b % len(BLOCK_TYPES)],
                "status": "completed",
                "content": content,
                "url": None,
                "sources": sources,
            }
        )
    edges = [
        {"source_id": nodes[i - 1]["id"], "target_id": nodes[i]["id"]} for i in range(1, blocks)
    ]
    root = {
        "task_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "name": "Plan",
        "task_type": "parent-task",
        "status": "completed",
        "children": [
            {
                "task_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "name": f"Write block {i}",
                "task_type": "tool-call-task",
                "status": "completed",
                "children": None,
            }
            for i in range(3)
        ],
    }
    run = {
        "run_id": run_id,
        "status": status,
        "canvas_id": canvas_id,
        "duration_ms": rng.randint(300_000, 1_200_000),
        "metadata": {
            "template_used": template,
            "models_used": rng.sample(MODELS, rng.randint(1, 2)),
            "credits_consumed": rng.randint(50, 600),
        },
        "prompt": f"Synthetic study {index}",
        "template": template,
    }
    if status != "failed":
        run["result"] = {"final_output": _text(rng, 60), "artifacts": []}
    if status != "completed":
        run["errors"] = [{"error": "Block execution failed: timeout", "recoverable": False}]
    dag = {"canvas_id": canvas_id, "canvas_name": run["prompt"], "nodes": nodes, "edges": edges}
    tasks = {"canvas_id": canvas_id, "completed": [root], "not_completed": []}
    terminal = day + timedelta(seconds=rng.randint(0, 86_000))
    return FetchedRun(
        run_id=run_id,
        run=RawDoc.parse(json.dumps(run)),
        dag=RawDoc.parse(json.dumps(dag)),
        tasks=RawDoc.parse(json.dumps(tasks)),
        artifacts=[],
        fetch_errors=[],
        request_name=f"request-{index % 40}",
        submitted_at=terminal - timedelta(minutes=15),
        terminal_at=terminal,
    )


def batches(
    runs: int, blocks_per_run: int, seed: int, batch: int = 100, start: int = 0
) -> Iterator[list[FetchedRun]]:
    """Runs in batches of `batch`; batch k spreads over the days of a 90-day window."""
    first_day = datetime(2026, 6, 1, tzinfo=UTC)
    for b in range(start, start + runs // batch):
        rng = random.Random(f"{seed}:{b}")
        day = first_day + timedelta(days=b % 90)
        yield [_run(rng, b * batch + i, day, blocks_per_run) for i in range(batch)]


def write_batches(store: ObjectStore, groups: Iterator[list[FetchedRun]]) -> int:
    """Write and commit each group as one archive batch; returns manifests committed."""
    archiver = Archiver(store, lambda: None)  # type: ignore[arg-type, return-value]
    log = ManifestLog(store)
    log.refresh()
    archiver.log = log
    committed = 0
    for group in groups:
        if archiver._write_and_commit(group, {}) is not None:
            committed += 1
    return committed


def generate(root: Path, runs: int, blocks_per_run: int, seed: int, workers: int = 2) -> None:
    """Build the archive with `workers` processes flattening and writing in parallel.

    Each worker writes its batches' files; manifests are committed in the workers too (the
    manifest log serialises them with create-if-absent, as with concurrent archivers).
    """
    from concurrent.futures import ProcessPoolExecutor

    total = runs // 100
    per = -(-total // workers)
    with ProcessPoolExecutor(workers) as pool:
        futures = [
            pool.submit(
                _worker, str(root), min(per, total - w * per) * 100, blocks_per_run, seed, w * per
            )
            for w in range(workers)
            if total - w * per > 0
        ]
        for f in futures:
            f.result()


def _worker(root: str, runs: int, blocks_per_run: int, seed: int, start: int) -> int:
    store = open_store(root)
    return write_batches(store, batches(runs, blocks_per_run, seed, start=start))
