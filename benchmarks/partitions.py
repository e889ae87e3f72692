"""Dagster on PostgreSQL at 10k and 50k `spine_run` partitions: sensor tick and asset page.

`python -m benchmarks.partitions [--sizes 10000,50000]` (not in `make bench`: it builds a
PostgreSQL event log of tens of thousands of materialisations, minutes of set-up). It starts a
throwaway PostgreSQL (the test launcher), an instance configured by `deploy/dagster.yaml`, adds
partitions and one materialisation each (as archive runs do), then measures, medians of 5:
- a poll-sensor tick with nothing in flight (the sensor's own cost at that size),
- reading the partition set (what every archive run does before adding its runs),
- the GraphQL query the asset page makes for partition counts and statuses, against a real
  `dagster-webserver` process.
Results go to docs/benchmarks.md by hand (docs/operations.md's sizing table cites them).
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import httpx

from benchmarks.common import median, say
from spine_pipeline.simulator import SimulatorConfig, SimulatorServer

ROOT = Path(__file__).resolve().parent.parent
QUERY = """
query AssetPage($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    __typename
    ... on AssetNode {
      partitionStats { numMaterialized numPartitions numFailed numMaterializing }
      assetPartitionStatuses {
        __typename
        ... on DefaultPartitionStatuses { materializedPartitions failedPartitions }
      }
    }
  }
}
"""


def _timed(fn: Callable[[], object], reps: int = 5) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return median(times)


def run(sizes: list[int]) -> list[dict[str, float]]:
    from spine_pipeline.defs.archive import spine_runs
    from spine_pipeline.driver import evaluate_poll_sensor
    from spine_pipeline_tests.fixtures.postgres import start_server

    server = start_server()
    work = Path(tempfile.mkdtemp(prefix="spine-partitions-"))
    home = work / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    db = server.create_database()
    results = []
    partitions_name = str(spine_runs.name)
    with SimulatorServer(SimulatorConfig(run_seconds=(1.0, 2.0)), port=0) as sim:
        os.environ.update(
            {
                **server.env(db),
                "DAGSTER_HOME": str(home),
                "SPINE_API_KEY": sim.api_key,
                "SPINE_BASE_URL": sim.base_url,
                "SPINE_ARCHIVE_URI": str(work / "archive"),
                "SPINE_AUDIT_DB": str(work / "audit.duckdb"),
            }
        )
        from spine_pipeline.definitions import build_definitions

        defs = build_definitions()
        instance = dg.DagsterInstance.get()
        have = 0
        for size in sizes:
            t0 = time.perf_counter()
            keys = [f"run-{i:08d}" for i in range(have, size)]
            for i in range(0, len(keys), 1000):
                instance.add_dynamic_partitions(partitions_name, keys[i : i + 1000])
            for key in keys:
                instance.report_runless_asset_event(
                    dg.AssetMaterialization("spine_run", partition=key, metadata={"credits": 1})
                )
            have = size
            say(f"partitions: {size} partitions set up in {time.perf_counter() - t0:.0f} s")
            tick = _timed(lambda: evaluate_poll_sensor(defs, instance, None))
            listing = _timed(lambda: instance.get_dynamic_partitions(partitions_name))
            port = _free_port()
            web = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "dagster-webserver"),
                    "-m",
                    "spine_pipeline.definitions",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=os.environ.copy(),
            )
            try:
                url = f"http://127.0.0.1:{port}/graphql"
                body = {"query": QUERY, "variables": {"key": {"path": ["spine_run"]}}}
                deadline = time.monotonic() + 180
                while True:
                    try:
                        reply = httpx.post(url, json=body, timeout=120).json()
                        break
                    except httpx.HTTPError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(1)
                if "errors" in reply:
                    raise RuntimeError(f"GraphQL errors: {reply['errors']}")
                stats = reply["data"]["assetNodeOrError"]["partitionStats"]
                assert stats["numMaterialized"] == size, stats
                page = _timed(functools.partial(httpx.post, url, json=body, timeout=120))
            finally:
                web.terminate()
                web.wait(30)
            row = {"partitions": size, "tick_s": tick, "list_s": listing, "graphql_s": page}
            say(f"partitions: {row}")
            results.append(row)
        instance.dispose()
    server.stop()
    shutil.rmtree(work, ignore_errors=True)
    return results


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.partitions")
    parser.add_argument("--sizes", default="10000,50000")
    args = parser.parse_args()
    for row in run([int(s) for s in args.sizes.split(",")]):
        print(
            f"| {row['partitions']:,} | {row['tick_s']:.3f} s | {row['list_s']:.3f} s "
            f"| {row['graphql_s']:.3f} s |"
        )


if __name__ == "__main__":
    main()
