"""The `spine-pipeline` command. Thin: every command calls the same libraries Dagster uses."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from spine_pipeline.catalog import CatalogError
from spine_pipeline.spine import SpineClient, SpineError, UploadFile
from spine_pipeline.spine.redact import redact
from spine_pipeline.spine.settings import ConfigurationError

F = TypeVar("F", bound=Callable[..., Any])

# Expected failures: one line on stderr, exit 1, never a traceback.
EXPECTED_ERRORS: tuple[type[Exception], ...] = (
    SpineError,
    CatalogError,
    ConfigurationError,
    FileNotFoundError,
    ValueError,
)


def fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {redact(message)}", err=True)
    sys.exit(code)


def expected_errors(func: F) -> F:
    """Turn the library's expected exceptions into a one-line error and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except EXPECTED_ERRORS as exc:
            fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="spine-pipeline")
def main() -> None:
    """Submit, poll, archive and audit Spine runs."""


@main.command()
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="world seed")
@click.option("--run-seconds", default="3:8", show_default=True, help="MIN:MAX run duration")
@click.option("--faults", default="", help="fault spec, e.g. 'get:429@0.05,download:expired@0.1'")
@click.option("--api-key", default="sk_spine_simulator", show_default=True)
@click.option(
    "--url-ttl",
    type=click.FloatRange(min=1),
    default=600.0,
    show_default=True,
    help="seconds before pre-signed artifact URLs expire",
)
def simulator(
    port: int, seed: int, run_seconds: str, faults: str, api_key: str, url_ttl: float
) -> None:
    """Serve the embedded Spine API on 127.0.0.1."""
    from spine_pipeline.simulator import (
        SimulatorConfig,
        parse_faults,
        parse_run_seconds,
        serve_forever,
    )

    try:
        config = SimulatorConfig(
            seed=seed,
            run_seconds=parse_run_seconds(run_seconds),
            api_key=api_key,
            faults=faults,
            url_ttl_seconds=url_ttl,
        )
        parse_faults(faults)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    serve_forever(config, port)


@main.command()
@click.option("--prompt", required=True, help="what the agents should do")
@click.option("--template", default=None, help="auto, deep_research, report, slides, ...")
@click.option("--blocks", default=None, help="JSON array of block types, e.g. '[\"web-block\"]'")
@click.option("--instructions", default=None, help="agent_instructions for every agent layer")
@click.option(
    "--file",
    "files",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="attach a file (repeatable)",
)
@expected_errors
def submit(
    prompt: str,
    template: str | None,
    blocks: str | None,
    instructions: str | None,
    files: tuple[Path, ...],
) -> None:
    """Submit one run and print its run_id."""
    block_list = None
    if blocks is not None:
        try:
            block_list = json.loads(blocks)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"not valid JSON: {exc.msg}", param_hint="--blocks") from None
        if not isinstance(block_list, list) or not all(isinstance(b, str) for b in block_list):
            raise click.BadParameter("must be a JSON array of strings", param_hint="--blocks")
    uploads = [UploadFile.from_path(f) for f in files]
    with SpineClient() as client:
        created = client.create_run(
            prompt,
            template=template,
            blocks=block_list,
            agent_instructions=instructions,
            files=uploads,
        )
    click.echo(created.run_id)


if __name__ == "__main__":
    main()
