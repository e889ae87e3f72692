"""Set-up: what one soak runs on, and what every part of the soak shares.

The simulator (with the API faults), the archive root (a local directory, or a SeaweedFS
bucket behind the SlowDown proxy), the audit database path, a private DAGSTER_HOME, the
environment the definitions read, the real definitions and instance, and an empty worker
pool. Everything is entered on the caller's `ExitStack`, so a failed soak still stops
servers and restores the environment.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from soak.config import SoakConfig
from soak.report import SoakReport
from soak.s3 import S3ServerLike, start_seaweedfs
from soak.slowdown import SlowDownProxy
from soak.submissions import write_catalog
from soak.workers import WorkerPool
from spine_pipeline.archive.stores import ObjectStore


class SoakError(RuntimeError):
    """The soak could not finish (timeout, a worker that cannot start)."""


@dataclass
class Rig:
    """What the soak runs on (built once by `set_up`) and the state all its parts share.

    One `rng` for every random draw, so a seed gives the same faults at the same moments;
    `lock` guards worker state shared with the kill threads.
    """

    cfg: SoakConfig
    say: Callable[[str], None]
    report: SoakReport
    rng: random.Random
    lock: threading.RLock
    workdir: Path
    sim: Any  # SimulatorServer: `world` is the ground truth
    archive_uri: str
    audit_db: str
    #: The archive as the pipeline sees it (through the fault proxy on S3).
    store: ObjectStore
    #: The harness's own view of the archive (straight to S3): see `_observer_store`.
    observer: ObjectStore
    defs: dg.Definitions
    instance: dg.DagsterInstance
    pool: WorkerPool
    s3_server: S3ServerLike | None
    proxy: SlowDownProxy | None


@contextlib.contextmanager
def environment(values: dict[str, str], unset: tuple[str, ...] = ()) -> Iterator[None]:
    """Set (and unset) environment variables for the soak; restore the previous values after."""
    saved = {k: os.environ.get(k) for k in (*values, *unset)}
    for key in unset:
        os.environ.pop(key, None)
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def set_up(
    cfg: SoakConfig,
    workdir: Path,
    stack: contextlib.ExitStack,
    *,
    report: SoakReport,
    rng: random.Random,
    s3_server: S3ServerLike | None,
    say: Callable[[str], None],
) -> Rig:
    """Start the simulator (and SeaweedFS with its proxy), set the environment, open the
    instance and an empty worker pool; every teardown goes on `stack`."""
    from spine_pipeline.archive.signing import generate_keypair
    from spine_pipeline.archive.stores import open_store
    from spine_pipeline.simulator import SimulatorConfig, SimulatorServer

    signing_pem, verify_pem = generate_keypair()
    (workdir / "logs").mkdir(exist_ok=True)
    (workdir / "catalogs").mkdir(exist_ok=True)
    sim = stack.enter_context(
        SimulatorServer(
            SimulatorConfig(
                seed=cfg.seed,
                run_seconds=cfg.run_seconds,
                api_key=cfg.api_key,
                faults=cfg.fault_spec,
                artifact_size_scale=cfg.artifact_size_scale,
            ),
            port=0,
        )
    )
    env = {
        "DAGSTER_HOME": str(workdir / "dagster_home"),
        "SPINE_API_KEY": sim.api_key,
        "SPINE_BASE_URL": sim.base_url,
        "SPINE_AUDIT_DB": str(workdir / "audit.duckdb"),
        "SPINE_CATALOG": str(write_catalog(workdir, 0, [])),
        "SPINE_ARCHIVE_BATCH_SIZE": str(cfg.batch_size),
        "SPINE_POLL_MIN_INTERVAL_SECONDS": str(cfg.poll_min_interval),
        "SPINE_POLL_MAX_INTERVAL_SECONDS": str(cfg.poll_max_interval),
        "SPINE_POLL_REREQUEST_SECONDS": str(cfg.rerequest_after),
        "SPINE_POLL_BUDGET_SECONDS": str(cfg.tick_budget),
        "SPINE_AUDIT_RETRY_SECONDS": str(cfg.audit_retry),
        # Every writer signs and witnesses, as production should: the races, kills and storage
        # faults of the soak then also prove one consistent, witnessed log.
        "SPINE_SIGNING_KEY": signing_pem.decode("ascii"),
        "SPINE_VERIFY_KEY": verify_pem.decode("ascii"),
        "SPINE_WITNESS_URI": str(workdir / "witness"),
        **cfg.extra_env,
    }
    proxy: SlowDownProxy | None = None
    if cfg.backend == "s3":
        if s3_server is None:
            say("starting SeaweedFS")
            s3_server = start_seaweedfs(workdir / "seaweedfs")
            stack.callback(s3_server.stop)
        bucket = s3_server.make_bucket()
        report.figures["bucket"] = bucket
        proxy = stack.enter_context(
            SlowDownProxy(s3_server.endpoint_url, rate=cfg.fault_rate, seed=cfg.seed)
        )
        env |= {
            "SPINE_ARCHIVE_URI": f"s3://{bucket}/soak",
            "AWS_ENDPOINT_URL_S3": proxy.endpoint_url,
            "AWS_ACCESS_KEY_ID": s3_server.access_key,
            "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
            "AWS_REGION": s3_server.region,
        }
    else:
        env["SPINE_ARCHIVE_URI"] = str(workdir / "archive")
    archive_uri = env["SPINE_ARCHIVE_URI"]
    unset = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL") if proxy else ()
    stack.enter_context(environment(env, unset))
    from spine_pipeline.definitions import build_definitions
    from spine_pipeline.driver import prepare_dagster_home

    prepare_dagster_home()  # the instance config `dagster dev` would use (one audit writer)
    store = open_store(archive_uri)
    rig = Rig(
        cfg=cfg,
        say=say,
        report=report,
        rng=rng,
        lock=threading.RLock(),
        workdir=workdir,
        sim=sim,
        archive_uri=archive_uri,
        audit_db=env["SPINE_AUDIT_DB"],
        store=store,
        observer=_observer_store(archive_uri, store, s3_server),
        defs=build_definitions(),
        instance=stack.enter_context(dg.DagsterInstance.get()),
        pool=WorkerPool(dict(os.environ), workdir / "logs"),
        s3_server=s3_server,
        proxy=proxy,
    )
    stack.callback(rig.pool.shutdown)
    say(
        f"soak: {cfg.runs} runs on {cfg.backend} ({archive_uri}), faults at "
        f"{cfg.fault_rate:.0%}, {cfg.workers} archive workers, workdir {workdir}"
    )
    return rig


def _observer_store(
    archive_uri: str, store: ObjectStore, s3_server: S3ServerLike | None
) -> ObjectStore:
    """The harness's own view of the archive: straight to S3, not through the fault proxy.

    The harness lists and reads a lot (kill triggers, progress, the final checks); none of
    it is pipeline traffic, so it must neither be throttled nor counted as such.
    """
    from spine_pipeline.archive.stores import open_store

    if s3_server is None:
        return store
    from botocore.config import Config

    client = s3_server.client(
        config=Config(
            s3={"addressing_style": "path"},
            retries={"mode": "standard", "max_attempts": 10},
            connect_timeout=2,
            read_timeout=60,
        )
    )
    return open_store(archive_uri, s3_client=client)
