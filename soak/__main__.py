"""`python -m soak run ...` (what `make soak` calls) and the `worker` process."""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soak")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the soak and print its report")
    run.add_argument("--runs", type=int, default=1000)
    run.add_argument("--backend", choices=("local", "s3", "both"), default="both")
    run.add_argument("--seed", type=int, default=7)
    run.add_argument("--fault-rate", type=float, default=0.05)
    run.add_argument("--workers", type=int, default=2)
    run.add_argument("--batch-size", type=int, default=25)
    run.add_argument("--wave-size", type=int, default=50)
    run.add_argument(
        "--tick-every",
        type=float,
        default=15.0,
        help="seconds between sensor ticks (the daemon's interval in production)",
    )
    run.add_argument(
        "--rerequest-after",
        type=float,
        default=600.0,
        help="SPINE_POLL_REREQUEST_SECONDS (production default 600): shorter than the time a "
        "batch waits and runs, it re-requests batches still queued (docs/reliability.md §8)",
    )
    run.add_argument("--timeout", type=float, default=10800.0, help="seconds per backend")
    run.add_argument("--workdir", type=Path, default=None, help="keep everything here")
    run.add_argument("--output", type=Path, default=None, help="also write the report here")
    sub.add_parser("worker", help="internal: an archive/tick worker process")
    args = parser.parse_args(argv)
    if args.command == "worker":
        from soak.workers import worker_main

        return worker_main()

    from soak.config import SoakConfig
    from soak.harness import run_soak
    from soak.report import render

    backends = ("local", "s3") if args.backend == "both" else (args.backend,)
    texts, ok = [], True
    for backend in backends:
        workdir = args.workdir / backend if args.workdir else None
        config = SoakConfig(
            runs=args.runs,
            backend=backend,
            seed=args.seed,
            fault_rate=args.fault_rate,
            workers=args.workers,
            batch_size=args.batch_size,
            wave_size=args.wave_size,
            tick_every=args.tick_every,
            rerequest_after=args.rerequest_after,
            timeout=args.timeout,
            workdir=workdir,
            keep_workdir=workdir is not None,
        )
        report = run_soak(config, say=partial(_say, backend))
        text = render(report)
        print(text, flush=True)
        texts.append(text)
        ok = ok and report.ok
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text("\n".join(texts))
    return 0 if ok else 1


def _say(backend: str, line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} [{backend}] {line}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
