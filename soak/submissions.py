"""Submissions: catalog waves through the `submit_catalog` job, then the reconciliation.

Waves of catalog entries with unique prompts go to the submitter worker (one
`submit_catalog` run each). Once Spine holds `runs` runs, unknown submit outcomes are
reconciled against the simulator (Spine has no list endpoint; an operator would use the
portal): the runs they created are tracked, so at the end every run Spine created must be
archived once, and none may have been created twice.
"""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from soak.config import prompt_for
from soak.workers import Job, Worker

if TYPE_CHECKING:
    from soak.setup import Rig

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
LOST = "LOST: created, in neither the ledger nor a Dagster failure"


def write_catalog(workdir: Path, index: int, requests: list[dict[str, str]]) -> Path:
    """The catalog file of the wave starting at submission `index`."""
    path = workdir / "catalogs" / f"wave-{index:05d}.yaml"
    path.write_text(yaml.safe_dump({"requests": requests}, sort_keys=False))
    return path


class Submissions:
    """Submits the waves and, once all are in, reconciles what Spine created."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.next_index = 0
        self.waves = 0
        self.next_wave = 0.0
        self.done = False  # Spine holds `runs` runs: no more waves
        self.reconciled = False
        #: Every run Spine created (known once reconciled): each must be archived once.
        self.expected: set[str] = set()
        self.named_in_failures: set[str] = set()  # run ids named by failed submit steps

    def due(self, submitter: Worker | None, now: float) -> bool:
        """Whether the next wave should go at `now` (the submitter is idle, the wave is due)."""
        idle = submitter is not None and submitter.ready and not submitter.job
        return not self.done and idle and now >= self.next_wave

    def submit_wave(self, submitter: Worker) -> None:
        """Hand the next catalog wave to the submitter process (one `submit_catalog` run)."""
        cfg, report = self.rig.cfg, self.rig.report
        missing = cfg.runs - self.rig.sim.world.created_count
        if missing <= 0:
            self.done = True
            return
        count = min(cfg.wave_size, missing)
        requests = []
        for index in range(self.next_index, self.next_index + count):
            prompt, template = prompt_for(cfg.seed, index, cfg.scenario_rate)
            requests.append({"name": f"soak_{index:05d}", "prompt": prompt, "template": template})
        catalog = write_catalog(self.rig.workdir, self.next_index, requests)
        self.next_index += count
        report.submissions["attempts"] += count
        submitter.job = Job(str(uuid.uuid4()), [], {}, {}, started=time.monotonic())
        submitter.send(op="submit", catalog=str(catalog))

    def submitted(self, message: dict[str, Any]) -> None:
        """Count a wave's outcomes from the submitter's reply; schedule the next wave."""
        report = self.rig.report
        self.next_wave = time.monotonic() + self.rig.cfg.wave_every
        subs = report.submissions
        subs["accepted"] += len(message["accepted"])
        for text in message["failures"]:
            if "archive ledger" in text:  # SubmissionNotRecorded: counted with the others
                subs["failed_other"] += 1
                self.named_in_failures.update(_UUID.findall(text))
                report.figures.setdefault("submit_other_errors", []).append(text[:300])
            elif "outcome unknown" in text:
                subs["unknown"] += 1
            elif "rejected the submit" in text:
                subs["rejected"] += 1
            else:
                subs["failed_other"] += 1
                self.named_in_failures.update(_UUID.findall(text))
                report.figures.setdefault("submit_other_errors", []).append(text[:300])
        report.figures.setdefault("wave_seconds", []).append(message["seconds"])
        self.waves += 1
        self.rig.say(
            f"wave {self.waves}: {len(message['accepted'])} accepted, "
            f"{len(message['failures'])} failed, "
            f"{self.rig.sim.world.created_count}/{self.rig.cfg.runs} runs created"
        )

    def reconcile(self) -> None:
        """Unknown outcomes: which created a run? Track those; prove none was created twice."""
        from spine_pipeline.archive.ledger import Ledger
        from spine_pipeline.archive.stores import StoreError

        world = self.rig.sim.world
        rec: Counter[str] = Counter()
        try:
            ledger = Ledger(self.rig.observer)
            records = [doc for _, doc in ledger.submissions()]
            tracked = {t.run_id for t in ledger.tracked()}
            accepted = Counter(d["run_id"] for d in records if d.get("outcome") == "accepted")
            by_prompt: dict[str, list[dict[str, Any]]] = {}
            for doc in records:
                by_prompt.setdefault(doc.get("prompt") or "", []).append(doc)
            created_prompts = Counter(world.get_run(r).form.prompt for r in world.run_ids())
            for run_id in world.run_ids():
                if run_id in tracked:
                    continue  # the ledger knows it and the sensor polls it
                named = run_id in self.named_in_failures
                if run_id in accepted:
                    rec["accepted, tracking record not written"] += 1
                else:
                    docs = by_prompt.get(world.get_run(run_id).form.prompt, [])
                    outcomes = sorted({str(d.get("outcome")) for d in docs})
                    rec[f"created, outcome {'/'.join(outcomes) or 'not recorded'}"] += 1
                if not docs_or_accepted(run_id, accepted, by_prompt, world) and not named:
                    rec[LOST] += 1
                ledger.track(run_id, source="reconcile")
            unknown = {d.get("prompt") for d in records if d.get("outcome") == "unknown"}
            rec["unknown, not created"] = sum(1 for p in unknown if p not in created_prompts)
        except StoreError:
            return  # S3 is being restarted: try again next loop
        report = self.rig.report
        report.reconciled = rec
        self.expected = set(world.run_ids())
        report.figures["ledger_accepted"] = len(accepted)
        report.figures["accepted_duplicates"] = sum(n - 1 for n in accepted.values() if n > 1)
        report.figures["prompts_created_twice"] = sum(1 for n in created_prompts.values() if n > 1)
        report.figures["created_without_accepted_record"] = sum(
            1 for r in world.run_ids() if r not in accepted
        )
        self.reconciled = True
        self.rig.say(f"reconciled: {dict(rec)}")


def docs_or_accepted(
    run_id: str,
    accepted: Counter[str],
    by_prompt: dict[str, list[dict[str, Any]]],
    world: Any,
) -> bool:
    """Whether the ledger holds any record (accepted, or an outcome for its prompt) of a run."""
    return run_id in accepted or bool(by_prompt.get(world.get_run(run_id).form.prompt))
