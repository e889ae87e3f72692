"""Benchmark 5: `verify` of 1,000 signed manifests with a witness.

The archive: 1,000 manifests of one synthetic run each (10 blocks, `benchmarks/synth.py`),
written through the real writer with a signing key and a local witness, so every commit
signed its manifest, checkpointed the log and handed the checkpoint to the witness, as a
signing deployment does (1,000 checkpoints in the archive, 1,000 at the witness). One run
per manifest keeps the files small, so the figure is dominated by what verify does per
manifest rather than by hashing Parquet bytes. Generated once and cached under
`.bench/verify/` with its key pair and witness (keyed by size, seed and generator version).

Measured: `verify_archive(store, keys=..., witnesses=(witness,))`: every manifest's
signature and archive id, the chain, the Merkle tree over the manifests against every
checkpoint in the archive and the witness's, and (as always) every file's size and sha256.
Baseline: `verify_archive(store)` of the same archive (chain and file hashes, no keys, no
witness), interleaved. Their difference divided by the manifest count is what verifiable
history adds to `verify` per manifest.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks import synth
from benchmarks.common import BENCH_DIR, Result, Row, interleave, median, say
from spine_pipeline.archive.archiver import Archiver
from spine_pipeline.archive.identity import read_identity
from spine_pipeline.archive.manifest import ManifestLog
from spine_pipeline.archive.signing import (
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    SigningKey,
    VerifyKeys,
    write_keypair,
)
from spine_pipeline.archive.stores import ObjectStore, open_store
from spine_pipeline.archive.tlog import LogPublisher, Witness, archive_checkpoints
from spine_pipeline.archive.verify import VerifyReport, verify_archive

MANIFESTS = 1_000
BLOCKS_PER_RUN = 10
SEED = 11
GENERATOR_VERSION = "1"


def _archive(manifests: int, result: Result) -> Path:
    """The cached signed archive (`archive/`, `witness/`, `keys/` under the returned path)."""
    name = f"signed-{manifests}x1x{BLOCKS_PER_RUN}-s{SEED}-v{GENERATOR_VERSION}"
    base = BENCH_DIR / "verify" / name
    stamp = base / "COMPLETE"
    if stamp.exists():
        result.facts["archive_generation"] = "cached (.bench/verify)"
        result.facts["archive_generation_s"] = float(stamp.read_text() or "nan")
        return base
    if base.exists():
        shutil.rmtree(base)
    base.mkdir(parents=True)
    write_keypair(base / "keys")
    say(f"verify: writing {manifests:,} signed one-run manifests through the archive writer")
    start = time.perf_counter()
    store = open_store(str(base / "archive"))
    key = SigningKey.load(str(base / "keys" / PRIVATE_KEY_FILE))
    publisher = LogPublisher(store, key, (Witness.open(str(base / "witness")),))
    # No client: the runs are synthetic. Both keyword arguments given: no settings read,
    # so a SPINE_SIGNING_KEY in the caller's environment cannot change what is written.
    archiver = Archiver(
        store,
        lambda: None,  # type: ignore[arg-type, return-value]
        publisher=publisher,
        fetch_deadline=600.0,
    )
    for group in synth.batches(manifests, BLOCKS_PER_RUN, SEED, batch=1):
        if archiver._write_and_commit(group, {}) is None:
            raise RuntimeError("verify: a synthetic batch did not commit")
    seconds = time.perf_counter() - start
    stamp.write_text(f"{seconds:.1f}")
    result.facts["archive_generation"] = "generated in this run"
    result.facts["archive_generation_s"] = round(seconds, 1)
    say(f"verify: archive written in {seconds:.0f} s")
    return base


def _timed_verify(label: str, call: Callable[[], VerifyReport]) -> tuple[float, VerifyReport]:
    """Seconds of one verify; a problem means the figure would time a failing path: stop."""
    start = time.perf_counter()
    report = call()
    seconds = time.perf_counter() - start
    if not report.ok:
        raise RuntimeError(f"verify ({label}) of the benchmark archive: {report.problems[0]}")
    return seconds, report


def run(reps: int = 5, quick: bool = False) -> Result:
    result = Result("verify")
    n = 100 if quick else MANIFESTS
    base = _archive(n, result)
    store: ObjectStore = open_store(str(base / "archive"))
    keys = VerifyKeys.load(str(base / "keys" / PUBLIC_KEY_FILE))
    witness = Witness.open(str(base / "witness"))
    log = ManifestLog(store)
    log.refresh()
    identity = read_identity(store)
    if log.tree.size != n or identity is None:
        raise RuntimeError(f"verify: the cached archive has {log.tree.size} manifests, not {n}")
    reports: list[VerifyReport] = []
    plain_reports: list[VerifyReport] = []

    def signed() -> float:
        seconds, report = _timed_verify(
            "keys + witness", lambda: verify_archive(store, keys=keys, witnesses=(witness,))
        )
        reports.append(report)
        say(f"verify: keys + witness {seconds:.2f} s")
        return seconds

    def plain() -> float:
        seconds, report = _timed_verify("no keys", lambda: verify_archive(store))
        plain_reports.append(report)
        say(f"verify: no keys {seconds:.2f} s")
        return seconds

    with_keys, without = interleave(signed, plain, reps)
    report = reports[-1]
    result.facts.update(
        {
            "manifests": report.manifests,
            "files": report.files,
            "bytes_hashed": report.bytes_hashed,
            "archive_checkpoints": len(archive_checkpoints(store)),
            "witness_checkpoints": len(witness.checkpoints(identity.origin)),
            "warnings": len(report.warnings),
            "warnings_no_keys": len(plain_reports[-1].warnings),
            "ms_per_manifest": round(median(with_keys) / n * 1000, 3),
            "ms_per_manifest_no_keys": round(median(without) / n * 1000, 3),
            "added_ms_per_manifest": round((median(with_keys) - median(without)) / n * 1000, 3),
        }
    )
    result.rows.append(
        Row(
            "verify",
            f"verify, {n:,} signed manifests, verify key + a witness "
            f"({result.facts['ms_per_manifest']:.2f} ms per manifest)",
            median(with_keys),
            baseline=median(without),
            baseline_name="the same archive verified without keys or witness",
            ratio_kind="overhead",
            target="reported (no target)",
            runs=reps,
            samples=with_keys,
            baseline_samples=without,
        )
    )
    return result
