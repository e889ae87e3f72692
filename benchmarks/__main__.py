"""`python -m benchmarks [NAME ...] [--reps N] [--quick] [--profile]`.

NAME is any of poll, burst, audit, memory, verify, time_to_audit, ducklake (the seven of
`make bench`, the default), or scale (`make bench-scale`, 1,000,000 runs) and burst_big (the
10,000-run burst), which run only when named. Prints the table, and rewrites the
generated block of docs/benchmarks.md from the latest result of every benchmark (results
are kept under .bench/results/, so running one benchmark keeps the others' figures).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from types import ModuleType

from benchmarks.common import BENCH_DIR, Result, say
from benchmarks.report import ORDER, load_all, table, write_doc

MODULES = {
    "poll": "poll",
    "burst": "burst",
    "burst_big": "burst_big",  # opt-in, not in ORDER (so not in `make bench`)
    "audit": "audit_scale",
    "memory": "memory",
    "verify": "verify_signed",
    "time_to_audit": "time_to_audit",
    "ducklake": "ducklake",
    # `make bench-scale` only (1,000,000 runs, most of an hour): not in ORDER, the default.
    "scale": "scale",
}


def _quiet() -> None:
    """Dagster's console logger and deprecation warnings would drown the progress lines."""
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
    warnings.filterwarnings("ignore")
    logging.getLogger("dagster").setLevel(logging.WARNING)
    for name in ("dagster", "spine_pipeline"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _profiled(name: str, fn: Callable[[], Result]) -> Result:
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.005)
    profiler.start()
    try:
        return fn()
    finally:
        profiler.stop()
        out = BENCH_DIR / "profiles" / f"{name}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(profiler.output_text(unicode=True, color=False))
        say(f"{name}: profile written to {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"any of {', '.join(MODULES)}")
    parser.add_argument("--reps", type=int, default=5, help="repetitions per figure (>= 5)")
    parser.add_argument("--quick", action="store_true", help="small sizes, for trying it out")
    parser.add_argument("--profile", action="store_true", help="pyinstrument, to .bench/")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite the doc")
    args = parser.parse_args(argv)
    names = args.names or list(ORDER)
    bad = [n for n in names if n not in MODULES]
    if bad:
        parser.error(f"unknown benchmark(s) {', '.join(bad)}; choose from {', '.join(MODULES)}")
    _quiet()
    started = time.perf_counter()
    for name in names:
        module = importlib.import_module(f"benchmarks.{MODULES[name]}")
        say(f"{name}: start")
        t0 = time.perf_counter()

        def go(module: ModuleType = module) -> Result:
            return module.run(reps=args.reps, quick=args.quick)

        result = _profiled(name, go) if args.profile else go()
        result.seconds = time.perf_counter() - t0
        result.finished_at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        if args.quick:
            result.facts["quick"] = True
        result.save()
        say(f"{name}: done in {result.seconds:.0f} s")
    total = time.perf_counter() - started
    results = load_all()
    print()
    print(table(results))
    print(f"\n(total {total / 60:.1f} min)")
    if not args.no_doc and not args.quick:
        write_doc(results, total if set(names) == set(ORDER) else None)
        say("docs/benchmarks.md updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
