"""The in-process Dagster driver: what the daemon and a run worker do, one call at a time.

`dagster dev` evaluates `spine_poll_sensor` and `spine_webhook_sensor` on their intervals,
records the dynamic partitions they ask for, and launches the runs they request (skipping a
request whose run key a run of the same sensor already has). The demo, the tests, the soak and the
benchmarks need exactly that path without a daemon, so it lives here once: every caller
evaluates the sensor the way the daemon does and launches what it asked for the same way,
and a change to the sensor's contract (names, tags, run config) is made in one place.

Public Dagster API only; every job and sensor name comes from `defs/names.py`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import dagster as dg

from spine_pipeline.defs.names import (
    ARCHIVE_JOB,
    POLL_SENSOR,
    SUBMIT_ALL_JOB,
    WEBHOOK_SENSOR,
    archive_run_ids,
    submit_asset_name,
    submit_run_config,
)
from spine_pipeline.settings import Settings

DEFAULT_DAGSTER_HOME = Path("data/dagster_home")
#: One audit-database writer at a time: the only pool is spine_audit_db.
_INSTANCE_YAML = "telemetry:\n  enabled: false\nconcurrency:\n  pools:\n    default_limit: 1\n"
#: The tags the daemon puts on every run a sensor launched: the sensor, and the request's
#: run key when it has one.
SENSOR_NAME_TAG = "dagster/sensor_name"
RUN_KEY_TAG = "dagster/run_key"
SUBMIT_PREFIX = submit_asset_name("")


def quiet(log_level: str = "WARNING") -> dict[str, Any]:
    """Run config that turns Dagster's console logger down to `log_level`.

    The callers print their own progress lines; events still reach the instance event log.
    WARNING (the demo's default) keeps Dagster's warnings; the soak's workers use CRITICAL.
    """
    return {"loggers": {"console": {"config": {"log_level": log_level}}}}


def prepare_dagster_home() -> Path:
    """Use $DAGSTER_HOME, or a persistent `data/dagster_home` created on first use.

    A directory created here is private (0700): Dagster's SQLite files inside take the
    process umask, and run storage holds run configs (Spine run ids, request names).
    """
    home = Path(Settings.from_env().dagster_home or DEFAULT_DAGSTER_HOME).resolve()
    if not home.exists():
        home.mkdir(parents=True, mode=0o700)
        home.chmod(0o700)  # mkdir's mode is masked by the umask
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(_INSTANCE_YAML)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


# -- the sensor ---------------------------------------------------------------------------


class SensorTick(Protocol):
    """What one evaluation returns, as the daemon reads it.

    `evaluate_tick` returns Dagster's `SensorExecutionData`, which public `dagster` does not
    export (it lives in `dagster._core`); this names the fields the callers read.
    """

    @property
    def run_requests(self) -> Sequence[dg.RunRequest] | None: ...
    @property
    def skip_message(self) -> str | None: ...
    @property
    def cursor(self) -> str | None: ...
    @property
    def dynamic_partitions_requests(
        self,
    ) -> Sequence[dg.AddDynamicPartitionsRequest | dg.DeleteDynamicPartitionsRequest] | None: ...


def evaluate_poll_sensor(
    defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None
) -> SensorTick:
    """One evaluation of the poll sensor, exactly as the daemon performs it."""
    return evaluate_sensor(defs, instance, cursor, POLL_SENSOR)


def evaluate_webhook_sensor(
    defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None
) -> SensorTick:
    """One evaluation of the fast webhook (inbox) sensor, exactly as the daemon performs it."""
    return evaluate_sensor(defs, instance, cursor, WEBHOOK_SENSOR)


def evaluate_sensor(
    defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None, name: str
) -> SensorTick:
    """One evaluation of the sensor `name` (from `defs/names.py`), as the daemon performs it."""
    sensor = defs.resolve_sensor_def(name)
    with dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        definitions=defs,
        sensor_name=sensor.name,
        resources=defs.resources,
    ) as context:
        return sensor.evaluate_tick(context)


def apply_partition_requests(
    instance: dg.DagsterInstance,
    requests: Sequence[dg.AddDynamicPartitionsRequest | dg.DeleteDynamicPartitionsRequest] | None,
) -> None:
    """Record the dynamic partitions a tick asked for, as the daemon does before launching."""
    for request in requests or []:
        if isinstance(request, dg.DeleteDynamicPartitionsRequest):
            for key in request.partition_keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)
        else:
            instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)


def requested_job(request: dg.RunRequest) -> str:
    """The job a run request targets (the sensor's default job when it names none)."""
    return request.job_name or ARCHIVE_JOB


def sensor_tags(
    tags: Mapping[str, str], sensor: str = POLL_SENSOR, run_key: str | None = None
) -> dict[str, str]:
    """A requested run's tags plus those the daemon adds to every sensor-launched run."""
    added = {SENSOR_NAME_TAG: sensor, **({RUN_KEY_TAG: run_key} if run_key else {})}
    return {**tags, **added}


def already_launched(instance: dg.DagsterInstance, request: dg.RunRequest, sensor: str) -> bool:
    """Whether the daemon would skip this request: a run of `sensor` has its run key."""
    if not request.run_key:
        return False
    runs = instance.get_runs(dg.RunsFilter(tags={RUN_KEY_TAG: request.run_key}))
    return any(run.tags.get(SENSOR_NAME_TAG) == sensor for run in runs)


def tick(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    cursor: str | None,
    launch: Callable[[dg.RunRequest], None],
    sensor: str = POLL_SENSOR,
) -> SensorTick:
    """One daemon tick: evaluate the sensor, then `launch_requested` what it asked for."""
    result = evaluate_sensor(defs, instance, cursor, sensor)
    launch_requested(instance, result, launch, sensor)
    return result


def launch_requested(
    instance: dg.DagsterInstance,
    result: SensorTick,
    launch: Callable[[dg.RunRequest], None],
    sensor: str = POLL_SENSOR,
) -> None:
    """Apply a tick's partition requests, then hand each run request to `launch` in order,
    skipping those whose run key a run of `sensor` already has, as the daemon does.

    `launch` executes the run in process (the demo, the tests) or queues it for a run worker
    (the soak, the benchmarks), as the daemon hands runs to its run coordinator.
    """
    apply_partition_requests(instance, result.dynamic_partitions_requests)
    for request in result.run_requests or []:
        if not already_launched(instance, request, sensor):
            launch(request)


# -- runs ---------------------------------------------------------------------------------


def execute_run(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    job_name: str,
    run_config: Mapping[str, Any],
    tags: Mapping[str, str],
    *,
    run_id: str | None = None,
    log_level: str = "WARNING",
) -> dg.ExecuteInProcessResult:
    """Execute one run in this process, as a run worker would; a failed run is returned.

    `run_id` lets a caller that tracks the run from outside (the soak fails it when it
    kills the worker) name the Dagster run before it exists.
    """
    return defs.resolve_job_def(job_name).execute_in_process(
        run_config={**run_config, **quiet(log_level)},
        instance=instance,
        tags=dict(tags),
        run_id=run_id,
        raise_on_error=False,
    )


def execute_request(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    request: dg.RunRequest,
    *,
    run_id: str | None = None,
    log_level: str = "WARNING",
    sensor: str = POLL_SENSOR,
) -> dg.ExecuteInProcessResult:
    """Execute a run a sensor (the poll sensor by default) requested, tagged as the daemon
    tags it."""
    return execute_run(
        defs,
        instance,
        requested_job(request),
        request.run_config,
        sensor_tags(request.tags, sensor, request.run_key),
        run_id=run_id,
        log_level=log_level,
    )


def execute_submit_catalog(
    defs: dg.Definitions, instance: dg.DagsterInstance, *, log_level: str = "WARNING"
) -> dg.ExecuteInProcessResult:
    """Materialise every submit asset of the catalog in one run (`submit_catalog`), each
    confirmed (the caller chose to spend the credits)."""
    job = defs.resolve_job_def(SUBMIT_ALL_JOB)
    names = [node.name.removeprefix(SUBMIT_PREFIX) for node in job.nodes]
    return job.execute_in_process(
        instance=instance,
        run_config={**submit_run_config(names), **quiet(log_level)},
        raise_on_error=False,
    )


def submitted_runs(result: dg.ExecuteInProcessResult) -> list[tuple[str, str]]:
    """(submit asset, Spine run id) of each submit asset a run materialised."""
    materializations = [e.materialization for e in result.get_asset_materialization_events()]
    return [
        (m.asset_key.to_user_string(), str(m.metadata["run_id"].value)) for m in materializations
    ]


@dataclass(frozen=True)
class StepFailure:
    """A failed step: its key and its message as the Dagster UI shows it."""

    step_key: str
    message: str


def step_failures(result: dg.ExecuteInProcessResult) -> list[StepFailure]:
    """Each failed step of a run: a `dg.Failure`'s description, else the error's message."""
    failures = []
    for event in result.all_events:
        if event.is_step_failure:
            data = event.step_failure_data
            described = data.user_failure_data.description if data.user_failure_data else None
            message = described or (data.error.message if data.error else event.message)
            failures.append(StepFailure(event.step_key or "?", str(message or "")))
    return failures


# -- one tick, runs executed in process -----------------------------------------------------


@dataclass
class Tick:
    """One sensor evaluation and the runs it led to."""

    requested: list[list[str]]  # the Spine run ids of each archive batch
    cursor: str | None
    skip_reason: str | None
    refreshes: int = 0  # audit refresh runs
    failed: int = 0  # requested runs that did not succeed

    @property
    def idle(self) -> bool:
        return not self.requested and not self.refreshes


def tick_and_launch(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    cursor: str | None,
    say: Callable[[str], None] = print,
    sensor: str = POLL_SENSOR,
) -> Tick:
    """Evaluate a sensor (the poll sensor by default) as the daemon would, then execute each
    run it requests."""
    out = Tick(requested=[], cursor=None, skip_reason=None)

    def launch(request: dg.RunRequest) -> None:
        name = requested_job(request)
        if name == ARCHIVE_JOB:
            ids = archive_run_ids(dict(request.run_config))
            out.requested.append(ids)
            say(f"  archiving a batch of {len(ids)} terminal run(s)")
        else:
            out.refreshes += 1
            say(f"  refreshing the audit database ({name})")
        out.failed += not execute_request(defs, instance, request, sensor=sensor).success

    result = tick(defs, instance, cursor, launch, sensor)
    out.cursor, out.skip_reason = result.cursor, result.skip_message
    return out
