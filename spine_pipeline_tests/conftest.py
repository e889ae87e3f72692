"""Shared fixtures: a real simulator on loopback, a real S3 server (SeaweedFS), a umask."""

import os
from collections.abc import Iterator

import pytest

pytest_plugins = [
    "spine_pipeline_tests.fixtures.simulator",
    "spine_pipeline_tests.fixtures.s3",
]


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, so a test sees the modes a user's shell would give new files."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)
