"""Shared fixtures: a real simulator on loopback and a real S3 server (SeaweedFS)."""

pytest_plugins = [
    "spine_pipeline_tests.fixtures.simulator",
    "spine_pipeline_tests.fixtures.s3",
]
