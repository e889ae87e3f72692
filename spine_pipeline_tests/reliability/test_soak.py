"""The short soak inside `make test`: 100 runs per backend, every fault at 5 %, then the scan.

The full soak is `make soak` (1,000 runs per backend, same harness: `soak/`).
Both runs use recognisable credentials (a canary Spine key, a canary AWS secret), log at
DEBUG in every process, and then everything they wrote is searched for those secrets.
"""

import pytest

from soak import SoakConfig, run_soak
from soak.report import render
from spine_pipeline.archive.signing import generate_keypair
from spine_pipeline.archive.stores import open_store
from spine_pipeline_tests.reliability.conftest import CANARY_API_KEY, CANARY_AWS_SECRET
from spine_pipeline_tests.reliability.logs import capture_logs
from spine_pipeline_tests.reliability.secret_scan import SecretScanner

SHORT = {"wave_size": 50, "batch_size": 25, "workers": 2, "timeout": 600.0}
#: Runs per backend. On S3 each run costs ~120 requests through the 5 % SlowDown proxy (~0.5 s
#: of boto3 backoff per SlowDown) plus SeaweedFS restarts: 50 runs there take as long as 100
#: locally (docs/reliability.md, "Soak figures"); `make soak` runs 1,000 on both.
RUNS = {"local": 100, "s3": 50}
API_FAULTS = ("429", "503", "500-after", "latency", "drop", "malformed", "expired", "truncated")


@pytest.mark.timeout(900)
@pytest.mark.parametrize("backend", ["local", pytest.param("s3", marks=pytest.mark.s3)])
def test_short_soak_keeps_every_invariant_and_leaks_no_secret(backend, tmp_path, capfd, request):
    server = request.getfixturevalue("canary_s3_server") if backend == "s3" else None
    lines: list[str] = []
    signing_pem, verify_pem = (pem.decode("ascii") for pem in generate_keypair())
    config = SoakConfig(
        runs=RUNS[backend],
        backend=backend,
        api_key=CANARY_API_KEY,
        workdir=tmp_path / "soak",
        extra_env={
            "SPINE_SOAK_LOG_LEVEL": "DEBUG",
            # The soak signs with a key of its own; this one is known here, so it is scanned.
            "SPINE_SIGNING_KEY": signing_pem,
            "SPINE_VERIFY_KEY": verify_pem,
        },
        **SHORT,
    )
    with capture_logs() as logs:
        report = run_soak(config, s3_server=server, say=lines.append)
    text = render(report)
    print(text)  # shown with -s, and on failure
    assert report.ok, text

    # Every fault kind was really injected (and survived, since the checks pass).
    kinds = {key.split(":", 1)[1] for key in report.api_faults if ":" in key}
    assert set(API_FAULTS) <= kinds, text
    assert report.kills and len(report.sensor_restarts) >= 3, text
    assert {r["mode"] for r in report.sensor_restarts} == {"kept", "none", "garbage"}
    if backend == "s3":
        assert report.s3_restarts and report.storage_faults.get("slowdown", 0) > 0, text

    # Invariant 5: no byte of either secret anywhere the soak wrote or logged.
    scanner = SecretScanner(
        {
            "spine api key": CANARY_API_KEY,
            "aws secret": CANARY_AWS_SECRET,
            # The private key's base64 body (its PEM armour is public text).
            "signing key": "".join(signing_pem.strip().splitlines()[1:-1]),
        }
    )
    scanner.tree(tmp_path / "soak")  # DAGSTER_HOME, audit db, worker logs, local archive
    if server is not None:
        archive = open_store(f"s3://{report.figures['bucket']}/soak", s3_client=server.client())
        scanner.store(archive)
    out, err = capfd.readouterr()
    scanner.text("test process logs (DEBUG)", logs.getvalue())
    scanner.text("test process stdout/stderr", out + err)
    scanner.text("soak progress lines", "\n".join(lines))
    scanner.text("soak report", text)
    print(f"secret scan: {scanner.summary()}")
    assert scanner.scanned["files"] > 20 and scanner.scanned["values"] > 10_000
    assert scanner.hits == [], scanner.hits[:20]
