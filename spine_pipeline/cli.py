"""The `spine-pipeline` command. Thin: every command calls the same libraries Dagster uses."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import click

from spine_pipeline.archive.ledger import Ledger
from spine_pipeline.archive.stores import open_store, printable
from spine_pipeline.cli_errors import (
    BAD_USAGE,
    enable_debug_log,
    enable_notices,
    expected_errors,
    fail,
    one_line,
)
from spine_pipeline.progress import progress_display
from spine_pipeline.settings import Settings
from spine_pipeline.spine import SpineClient, UploadFile
from spine_pipeline.submission import SubmitSpec, submit_and_record

if TYPE_CHECKING:
    from spine_pipeline.archive.signing import VerifyKeys


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="spine-pipeline")
@click.option(
    "--debug",
    is_flag=True,
    help="print the debug log on stderr, with the traceback behind any error (redacted)",
)
def main(debug: bool) -> None:
    """Submit, poll, archive and audit Spine runs."""
    if debug:
        enable_debug_log()
    enable_notices()


@main.command()
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option("--seed", type=int, default=None, help="world seed (default: a random one, printed)")
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
@click.option("--webhook-url", default="", help="POST signed webhook deliveries to this URL")
@click.option("--webhook-secret", default="", help="whsec_... secret signing the deliveries")
def simulator(
    port: int,
    seed: int | None,
    run_seconds: str,
    faults: str,
    api_key: str,
    url_ttl: float,
    webhook_url: str,
    webhook_secret: str,
) -> None:
    """Serve the embedded Spine API on 127.0.0.1 (and send webhooks with --webhook-url)."""
    from spine_pipeline.simulator import (
        SimulatorConfig,
        parse_faults,
        parse_run_seconds,
        serve_forever,
    )
    from spine_pipeline.simulator.config import random_seed

    try:
        config = SimulatorConfig(
            seed=random_seed() if seed is None else seed,
            run_seconds=parse_run_seconds(run_seconds),
            api_key=api_key,
            faults=faults,
            url_ttl_seconds=url_ttl,
            webhook_url=webhook_url,
            webhook_secret=webhook_secret,
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
    spec = SubmitSpec(
        prompt=prompt,
        template=template,
        blocks=block_list,
        agent_instructions=instructions,
        files=[UploadFile.from_path(f) for f in files],
    )
    with SpineClient() as client:
        result = submit_and_record(client, _ledger(), spec, source="cli")
    click.echo(result.created.run_id)


@main.command()
@click.argument("run_ids", nargs=-1, required=True)
@expected_errors
def track(run_ids: tuple[str, ...]) -> None:
    """Register runs submitted elsewhere, so they are polled and archived."""
    ledger = _ledger()
    for run_id in run_ids:
        added = ledger.track(run_id, source="cli")
        click.echo(f"{'tracking' if added else 'already tracked'} {run_id}")


@main.command()
@click.argument("run_ids", nargs=-1, required=True)
@click.option("--wait", is_flag=True, help="wait for the runs to be terminal first")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=8100.0,
    show_default=True,
    help="seconds to wait with --wait (default 2 h 15 min)",
)
@expected_errors
def archive(run_ids: tuple[str, ...], wait: bool, timeout: float) -> None:
    """Archive runs now (no daemon needed). Exit 1 if any run could not be archived."""
    from spine_pipeline.archive.service import archive_now

    settings = Settings.from_env()
    with progress_display() as progress:
        outcomes = archive_now(
            settings.archive_uri,
            list(dict.fromkeys(run_ids)),
            wait=wait,
            timeout=timeout,
            progress=progress,
        )
    failed = 0
    for o in outcomes:
        if o.outcome in ("archived", "already_archived"):
            click.echo(
                f"{o.outcome} {o.run_id} status={o.status or '-'} manifest={o.seq} "
                f"blocks={o.block_count} artifacts={o.artifact_count}"
                + (f" artifact_errors={o.artifact_errors}" if o.artifact_errors else "")
            )
        else:
            failed += 1
            click.echo(
                f"error: run {o.run_id}: {o.outcome.replace('_', ' ')}: {o.message}", err=True
            )
    if failed:
        sys.exit(1)


@main.command()
@click.option(
    "--verify-key",
    "verify_keys",
    multiple=True,
    metavar="PEM_OR_PATH",
    help="Ed25519 public key(s) that signed the log (repeatable; overrides SPINE_VERIFY_KEY)",
)
@click.option(
    "--witness",
    "witness_uris",
    multiple=True,
    metavar="URI",
    help="a witness of the log's checkpoints (repeatable; overrides SPINE_WITNESS_URI)",
)
@expected_errors
def verify(verify_keys: tuple[str, ...], witness_uris: tuple[str, ...]) -> None:
    """Re-check the manifest hash chain, file and artifact hashes, signatures and checkpoints.

    Exit 1 on any problem (a changed, missing, out-of-chain or badly signed committed object,
    a checkpoint or a witness the log contradicts); uncommitted objects alone (a losing
    writer's files, a refused planted object) and unchecked signatures are one WARN line
    each and exit 0 (docs/contracts.md section 7).
    """
    from spine_pipeline.archive.tlog import Witness
    from spine_pipeline.archive.verify import verify_archive
    from spine_pipeline.settings import parse_archive_uri

    settings = Settings.from_env()
    keys = _verify_keys(verify_keys)
    uris = tuple(parse_archive_uri("--witness", u) for u in witness_uris) or settings.witness_uris
    with progress_display() as progress:
        report = verify_archive(
            open_store(settings.archive_uri),
            keys=keys,
            witnesses=[Witness.open(uri, must_exist=True) for uri in uris],
            progress=progress,
        )
    for problem in report.problems:
        click.echo(f"FAIL {problem}", err=True)
    for warning in report.warnings:
        click.echo(f"WARN {warning}", err=True)
    for note in report.notes:
        click.echo(printable(note))
    warned = f"{len(report.warnings)} warning(s)" if report.warnings else ""
    if report.ok:
        verdict = f"OK with {warned}" if warned else "OK"
    else:
        verdict = f"{len(report.problems)} problem(s)" + (f", {warned}" if warned else "")
    click.echo(
        f"verified {report.manifests} manifests, {report.files} files, {report.artifacts} "
        f"artifacts, {report.bytes_hashed} bytes hashed: {verdict}"
    )
    if not report.ok:
        sys.exit(1)


@main.command()
@click.argument("run_id", required=False)
@click.option(
    "--check",
    "proof_file",
    type=click.File("rb"),
    default=None,
    help="check a proof file ('-': stdin) offline instead of making one; needs a verify key",
)
@click.option(
    "--verify-key",
    default=None,
    metavar="PEM_OR_PATH",
    help="public key(s) to check with (default: SPINE_VERIFY_KEY)",
)
@expected_errors
def prove(run_id: str | None, proof_file: BinaryIO | None, verify_key: str | None) -> None:
    """Print the proof (JSON) that a run is in the archive's signed log, or check one.

    With a verify key the proof is checked before it is printed. Exit 1 when the run is not
    archived, the archive is not signed, or a proof does not check; 2 for bad usage.
    """
    from spine_pipeline.archive.proofs import (
        MAX_PROOF_FILE_BYTES,
        check_run_proof,
        load_proof,
        prove_run,
    )

    if (run_id is None) == (proof_file is None):
        raise click.UsageError("give either RUN_ID or --check FILE")
    keys = _verify_keys(verify_key)
    if proof_file is not None:
        if keys is None:
            fail("--check needs --verify-key or SPINE_VERIFY_KEY", BAD_USAGE)
        proof = load_proof(proof_file.read(MAX_PROOF_FILE_BYTES + 1))
        check = check_run_proof(proof, keys)
        if not check.ok or check.checkpoint is None:
            fail(f"the proof of run {proof.run_id!r:.80} does not check: {check.reason}")
        click.echo(
            f"OK run {proof.run_id} is in {proof.manifest_key}, leaf {proof.leaf_index} of "
            f"{check.checkpoint.checkpoint.origin} at size {proof.tree_size} "
            f"(root {check.checkpoint.root.hex()}), signed by key id(s) "
            f"{', '.join(check.checkpoint.key_ids)}"
        )
        return
    assert run_id is not None
    made = prove_run(open_store(Settings.from_env().archive_uri), run_id, keys=keys)
    click.echo(json.dumps(made.to_json(), indent=2, sort_keys=True))
    if keys is None:
        click.echo("not checked: no verify key (--verify-key or SPINE_VERIFY_KEY)", err=True)
    else:
        click.echo(f"checked with key id(s) {', '.join(made.checkpoint.key_ids)}", err=True)


def _verify_keys(options: str | tuple[str, ...] | None) -> VerifyKeys | None:
    """The keys from `--verify-key` (one value or several), else `SPINE_VERIFY_KEY`, else
    None; a bad one is bad usage (exit 2), like any other bad setting."""
    from spine_pipeline.archive.signing import SigningError, VerifyKeys

    given = (options,) if isinstance(options, str) else options or ()
    value = given or Settings.from_env().verify_key
    if not value:
        return None
    try:
        return VerifyKeys.load(value, what="--verify-key" if given else "SPINE_VERIFY_KEY")
    except SigningError as exc:
        fail(one_line(exc), BAD_USAGE)


@main.command()
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="directory for spine-signing.pem and spine-verify.pem (created 0700 if missing)",
)
@expected_errors
def keygen(out_dir: Path) -> None:
    """Generate an Ed25519 key pair for signed manifests; never overwrites a key."""
    from spine_pipeline.archive.signing import write_keypair

    files = write_keypair(out_dir)
    private, public = files.private_path.absolute(), files.public_path.absolute()
    click.echo(f"key id {files.key_id}")
    click.echo(f"private key {private} (0600: keep it secret, only where manifests are written)")
    click.echo(f"public key {public}")
    click.echo(f"set SPINE_SIGNING_KEY={private} and SPINE_VERIFY_KEY={public}")


@main.command()
@click.option(
    "--grace-hours",
    type=click.FloatRange(min=0),
    default=6.0,
    show_default=True,
    help="only remove uncommitted files older than this",
)
@click.option("--dry-run", is_flag=True)
@click.option(
    "--include-artifacts",
    is_flag=True,
    help="also remove unreferenced artifacts (stop archivers first)",
)
@expected_errors
def gc(grace_hours: float, dry_run: bool, include_artifacts: bool) -> None:
    """Remove files of batches that never committed."""
    from datetime import timedelta

    from spine_pipeline.archive.gc import collect_garbage

    with progress_display() as progress:
        report = collect_garbage(
            open_store(Settings.from_env().archive_uri),
            grace=timedelta(hours=grace_hours),
            dry_run=dry_run,
            include_artifacts=include_artifacts,
            progress=progress,
        )
    verb = "would remove" if dry_run else "removed"
    for key in report.deleted:
        click.echo(f"{verb} {key}")
    for entry in report.refused:
        click.echo(f"WARN refused, neither followed nor removed: {entry}", err=True)
    click.echo(
        f"{verb} {len(report.deleted)} object(s), {report.bytes_freed} bytes; "
        f"{len(report.kept_young)} uncommitted object(s) younger than the grace period kept"
    )


@main.command()
@click.argument("run_ids", nargs=-1)
@expected_errors
def status(run_ids: tuple[str, ...]) -> None:
    """In-flight and archived runs with their state. Exit 1 if a RUN_ID given is unknown."""
    from spine_pipeline.archive.service import run_states

    rows = run_states(open_store(Settings.from_env().archive_uri), list(run_ids))
    unknown = [r.run_id for r in rows if r.state == "unknown"]
    rows = [r for r in rows if r.state != "unknown"]
    if not rows and not unknown:
        click.echo("no tracked or archived runs")
        return
    if rows:
        click.echo(f"{'run_id':36}  {'state':10}  {'status':10}  {'request':28}  since")
    for r in rows:
        click.echo(
            f"{r.run_id:36}  {r.state:10}  {r.status or '-':10}  {(r.request_name or '-')[:28]:28}"
            f"  {r.since or '-'}"
        )
    if unknown:
        shown = ", ".join(printable(run_id) for run_id in unknown)
        fail(
            f"unknown run id(s) {shown}: neither tracked nor archived in this archive "
            "(`spine-pipeline track RUN_ID` registers a run submitted elsewhere)"
        )


@main.command()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="one screen of text, or one JSON object",
)
@expected_errors
def info(fmt: str) -> None:
    """Where this installation stands: archive, audit lag, runs in flight, budgets, webhooks.

    Read-only (creates neither the archive nor the audit database). A missing, empty or
    unreadable part is one line in its section; exit 0 whatever is found, 2 for a bad setting.
    """
    from spine_pipeline.info import gather_info, render_info

    found = gather_info(Settings.from_env())
    if fmt == "json":
        click.echo(json.dumps(found.to_json(), indent=2, sort_keys=True))
    else:
        click.echo(render_info(found), nl=False)


@main.command()
@click.option(
    "--timeout",
    type=click.FloatRange(min=10),
    default=110.0,
    show_default=True,
    help="give up waiting for runs after this many seconds",
)
@click.option(
    "--run-seconds", default="2:6", show_default=True, help="simulated run duration MIN:MAX"
)
@click.option(
    "--seed", type=int, default=None, help="simulator world seed (default: a random one, printed)"
)
@expected_errors
def demo(timeout: float, run_seconds: str, seed: int | None) -> None:
    """The main job on the embedded simulator: submit, poll, archive, audit, report."""
    from spine_pipeline.demo import demo_on_simulator

    ok = demo_on_simulator(
        Settings.from_env(), timeout=timeout, run_seconds=run_seconds, seed=seed, say=click.echo
    )
    if not ok:
        fail("demo did not archive every run cleanly")


@main.command()
@click.argument("run_id")
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="file to write (default: ./spine-show/RUN_ID.html)",
)
@expected_errors
def show(run_id: str, out_path: Path | None) -> None:
    """Write one archived run as an offline HTML page (no script, no network) and print its path.

    The page shows the run's committed rows, each file checked against its manifest's sha256.
    Exit 1 if the run is not archived.
    """
    from spine_pipeline.evidence.show import valid_run_id, write_show_page

    if not valid_run_id(run_id):
        fail(f"not a valid run id: {run_id!r} (1-128 URL-safe characters)", BAD_USAGE)
    click.echo(write_show_page(Settings.from_env().archive_uri, run_id, out_path))


@main.command()
@click.argument("run_id")
@click.option(
    "--out",
    "out_path",
    required=True,
    type=click.Path(path_type=Path),
    help="bundle directory (new or empty), or with --zip the zip file to create",
)
@click.option("--zip", "as_zip", is_flag=True, help="write one deterministic zip file")
@click.option(
    "--verify-key",
    default=None,
    metavar="PEM_OR_PATH",
    help="check the bundle before it is written (default: SPINE_VERIFY_KEY)",
)
@expected_errors
def evidence(run_id: str, out_path: Path, as_zip: bool, verify_key: str | None) -> None:
    """Write one run's evidence bundle (page, Parquet, artifacts, manifest, proof, SHA256SUMS).

    Needs a signed archive (SPINE_SIGNING_KEY on the writers). With a verify key the bundle
    is checked as `verify-evidence` would before it appears. Prints the bundle's path.
    """
    from spine_pipeline.evidence.bundle import write_bundle
    from spine_pipeline.evidence.show import valid_run_id

    if not valid_run_id(run_id):
        fail(f"not a valid run id: {run_id!r} (1-128 URL-safe characters)", BAD_USAGE)
    keys = _verify_keys(verify_key)
    store = open_store(Settings.from_env().archive_uri)
    written = write_bundle(store, run_id, out_path, keys=keys, as_zip=as_zip)
    click.echo(written.path)
    if written.checked is None:
        click.echo("not checked: no verify key (--verify-key or SPINE_VERIFY_KEY)", err=True)
    else:
        click.echo(written.checked.line(), err=True)


@main.command("verify-evidence")
@click.argument("bundle", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--verify-key",
    default=None,
    metavar="PEM_OR_PATH",
    help="the archive's public key(s) (default: SPINE_VERIFY_KEY)",
)
@expected_errors
def verify_evidence(bundle: Path, verify_key: str | None) -> None:
    """Check an evidence bundle (directory or zip) offline with the archive's public key.

    Exit 0 only when every file, both signatures, the inclusion proof and the page check;
    otherwise one line naming what failed (exit 1). Bad usage: exit 2.
    """
    from spine_pipeline.evidence.verify_bundle import verify_bundle

    keys = _verify_keys(verify_key)
    if keys is None:
        fail("verify-evidence needs --verify-key or SPINE_VERIFY_KEY", BAD_USAGE)
    click.echo(verify_bundle(bundle, keys).line())


@main.command()
@click.option("--port", type=click.IntRange(1, 65535), default=3000, show_default=True)
@expected_errors
def dev(port: int) -> None:
    """Start the simulator (unless SPINE_API_KEY is set), the webhook receiver (when
    SPINE_WEBHOOK_SECRET is set) and `dg dev`."""
    from spine_pipeline.dev import run_dev

    sys.exit(run_dev(port, say=click.echo))


def _ledger() -> Ledger:
    return Ledger(open_store(Settings.from_env().archive_uri))


from spine_pipeline.cli_audit import audit, cited, report, search, sql  # noqa: E402
from spine_pipeline.cli_webhooks import webhooks  # noqa: E402

main.add_command(audit)
main.add_command(report)
main.add_command(sql)
main.add_command(search)
main.add_command(cited)
main.add_command(webhooks)

if __name__ == "__main__":
    main()
