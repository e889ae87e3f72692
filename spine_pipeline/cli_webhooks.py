"""`spine-pipeline webhooks serve`: the webhook receiver in the foreground.

Registered on the main group by `spine_pipeline/cli.py`. The receiver verifies deliveries
with `SPINE_WEBHOOK_SECRET` and stores them in `SPINE_ARCHIVE_URI`'s ledger
(`spine_pipeline/webhooks/`); without a secret it refuses to start (exit 2), since it
could verify nothing.
"""

from __future__ import annotations

import click

from spine_pipeline.cli_errors import BAD_USAGE, enable_info_log, expected_errors, fail
from spine_pipeline.settings import Settings


@click.group()
def webhooks() -> None:
    """Receive Spine webhook deliveries (signed, stored before they are acknowledged)."""


@webhooks.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", type=click.IntRange(0, 65535), default=8787, show_default=True)
@expected_errors
def serve(host: str, port: int) -> None:
    """Serve POST /webhooks/spine and GET /healthz until Ctrl+C.

    Put TLS in front of it (a reverse proxy; docs/operations.md). Deliveries are stored in
    the archive's ledger before the 2xx; refusals are 4xx with a short reason.
    """
    from spine_pipeline.archive.stores import open_store
    from spine_pipeline.spine.redact import register_secret
    from spine_pipeline.webhooks.server import serve as serve_receiver

    settings = Settings.from_env()
    if not settings.webhook_secrets:
        fail("SPINE_WEBHOOK_SECRET is not set; the receiver cannot verify deliveries", BAD_USAGE)
    for secret in settings.webhook_secrets:
        register_secret(secret)
    enable_info_log("spine_pipeline.webhooks")
    store = open_store(settings.archive_uri)
    try:
        serve_receiver(store, settings.webhook_secrets, host=host, port=port, say=click.echo)
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or type(exc).__name__}")
