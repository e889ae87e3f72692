"""What a soak run does: how many runs, which backend, which faults at which rate."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

BACKENDS = ("local", "s3")
TEMPLATES = ("report", "slides", "excel", "memo", "deep_research", "app", "landing_page", "auto")
TOPICS = (
    "EU battery recycling rules",
    "vector database pricing",
    "GPU spot market trends",
    "carbon accounting software",
    "open-source LLM licences",
    "cold-chain logistics startups",
    "Japanese robotics exports",
    "SaaS churn benchmarks",
    "grid-scale storage projects",
    "data clean rooms",
)
#: Payload oddities mixed into the soak at a low rate (the full hostile corpus is a test).
SOAK_SCENARIOS = ("unknown-status", "unknown-fields", "duplicate-blocks")


def api_fault_spec(rate: float) -> str:
    """Every API and download fault kind at `rate` (seeded by the simulator's world seed),
    and each at least once.

    `create` is faulted too: 503 and malformed JSON never create the run, `drop` and
    `500-after` do, so the client must record all four as `unknown` and never retry them.
    The `x1` rules come last, so they take the first request no other rule faulted: a short
    soak would otherwise miss the rarest kind now and then (`500-after` on the ~60 creates
    of a 50-run soak at 5 %: about 1 soak in 14).
    """
    p = f"{rate:g}"
    rules = [
        "*:429=0",
        "*:503",
        "create:500-after",
        "*:latency=200",
        "*:drop",
        "*:malformed",
        "download:expired",
        "download:truncated",
    ]
    return ",".join([f"{r}@{p}" for r in rules] + [f"{r}x1" for r in rules])


@dataclass
class SoakConfig:
    """One soak: `runs` Spine runs through the real Dagster path on one backend."""

    runs: int = 100
    backend: str = "local"
    seed: int = 7
    fault_rate: float = 0.05
    run_seconds: tuple[float, float] = (0.5, 3.0)
    #: Spine runs per archive batch (SPINE_ARCHIVE_BATCH_SIZE).
    batch_size: int = 20
    #: Submit assets per `submit_catalog` run; waves are spread over the soak.
    wave_size: int = 25
    #: Seconds between waves (runs keep finishing and being archived in between).
    wave_every: float = 2.0
    #: Archive worker processes (each runs `archive_spine_runs` for one request at a time).
    workers: int = 2
    api_key: str = "sk_spine_simulator"
    scenario_rate: float = 0.06
    artifact_size_scale: float = 0.3
    #: The daemon's sensor interval, shortened (production: 15 s).
    tick_every: float = 5.0
    poll_min_interval: float = 0.5
    poll_max_interval: float = 2.0
    rerequest_after: float = 40.0
    tick_budget: float = 10.0
    #: SPINE_AUDIT_RETRY_SECONDS: how soon a failed audit refresh is requested again.
    audit_retry: float = 10.0
    #: At least this many of each process/storage fault, whatever the 5 % draws give.
    min_worker_kills: int = 2
    min_sensor_restarts: int = 3
    min_s3_restarts: int = 1
    s3_outage_seconds: tuple[float, float] = (1.0, 3.0)
    timeout: float = 900.0
    workdir: Path | None = None
    keep_workdir: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}")
        if self.runs < 1:
            raise ValueError("runs must be at least 1")
        if not 0 <= self.fault_rate < 1:
            raise ValueError("fault_rate must be in [0, 1)")

    @property
    def fault_spec(self) -> str:
        return api_fault_spec(self.fault_rate) if self.fault_rate else ""


def prompt_for(seed: int, index: int, scenario_rate: float) -> tuple[str, str]:
    """The (prompt, template) of submission `index`: unique, so outcomes can be reconciled."""
    rng = random.Random(f"{seed}:prompt:{index}")
    topic = rng.choice(TOPICS)
    template = rng.choice(TEMPLATES)
    each = scenario_rate / len(SOAK_SCENARIOS)
    markers = "".join(f"[scenario:{s}] " for s in SOAK_SCENARIOS if rng.random() < each)
    return f"{markers}Soak #{index:05d}: research {topic} for the {template} audience.", template
