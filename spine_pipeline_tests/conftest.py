"""Shared fixtures: a real simulator on loopback, a real S3 server (SeaweedFS), a umask,
headless Chromium."""

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest_plugins = [
    "spine_pipeline_tests.fixtures.simulator",
    "spine_pipeline_tests.fixtures.s3",
    "spine_pipeline_tests.fixtures.postgres",
]


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, so a test sees the modes a user's shell would give new files."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def chromium(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """`chromium(page_path, "--dump-dom")` -> CompletedProcess.

    Without the browser: a skip with its reason for a developer who cannot install it (not
    root, no apt: `make test-deps` says so), but a failure in CI, whose `.ci/run` installs it,
    so CI always runs the browser checks.
    """
    if not (shutil.which(CHROMIUM) or Path(CHROMIUM).exists()):
        missing = f"{CHROMIUM} is missing (Debian's chromium package)"
        if os.environ.get("CI"):
            pytest.fail(f"{missing}: .ci/run installs it, so CI must have it")
        pytest.skip(
            f"{missing} and `make test-deps` could not install it (needs root and apt): "
            "the headless-browser checks were not run"
        )

    def run(page: Path, *args: str, window: str = "1000,1400") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={tmp_path / 'chromium-profile'}",
                f"--window-size={window}",
                *args,
                page.absolute().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )

    return run


#: Test files whose tests each take minutes (real Dagster processes, the soak, the hostile
#: corpus). Run first, so the two xdist workers (`make test` runs `-n 2`) are not left waiting
#: on one of them at the end of the run.
_LONG_FIRST = ("deploy/", "reliability/test_soak.py", "reliability/test_hostile_corpus.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: not any(part in item.nodeid for part in _LONG_FIRST))
