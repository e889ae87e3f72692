"""Resources, chosen from the environment (never by editing code).

`SPINE_API_KEY` / `SPINE_BASE_URL` pick real Spine or the simulator, `SPINE_ARCHIVE_URI`
local disk or S3 (`AWS_*` through `S3Resource` and boto3's chain), `SPINE_AUDIT_DB` the
DuckDB file; all parsed by `spine_pipeline.settings`. Secrets are `EnvVar`s: Dagster
resolves them at run time and never stores the values in run config or the event log (the
key is still validated here, so a malformed one fails the code location at load).
"""

from collections.abc import Iterator
from typing import Any

import dagster as dg
from dagster_aws.s3 import S3Resource
from dagster_duckdb import DuckDBResource

from spine_pipeline.archive.ledger import Ledger
from spine_pipeline.archive.manifest import ManifestLog
from spine_pipeline.archive.stores import ObjectStore, open_store
from spine_pipeline.poll_plan import InFlightSource
from spine_pipeline.settings import DEFAULT_ARCHIVE_BATCH_SIZE, DEFAULT_ARCHIVE_URI, Settings
from spine_pipeline.spine import AsyncSpineClient, RetryPolicy, SpineClient

POLL_RETRY = RetryPolicy(max_retries=1, base_delay=0.5, max_delay=2.0)


class SpineResource(dg.ConfigurableResource):
    """The Spine API. The key comes from `SPINE_API_KEY` and is never logged."""

    api_key: str
    base_url: str | None = None
    max_connections: int = 64

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # pydantic builds repr() and str() from this: once Dagster resolves the EnvVar, the
        # field holds the key itself, and a resource repr in a log or error would print it.
        for name, value in super().__repr_args__():
            masked = name == "api_key" and value and not isinstance(value, dg.EnvVar)
            yield name, "***" if masked else value

    def client(self) -> SpineClient:
        return SpineClient(api_key=self.api_key, base_url=self.base_url or None)

    def async_client(self, retry: RetryPolicy | None = None) -> AsyncSpineClient:
        return AsyncSpineClient(
            api_key=self.api_key,
            base_url=self.base_url or None,
            max_connections=self.max_connections,
            retry=retry,
        )

    def polling_client(self) -> AsyncSpineClient:
        """For sensor ticks: one quick retry at most; the next tick is the real retry."""
        return self.async_client(retry=POLL_RETRY)


class LazyS3Resource(S3Resource):
    """dagster-aws's `S3Resource`, without building a boto3 client when it is initialised.

    Dagster initialises a sensor's resources on every tick, and `S3Resource` builds its
    client then (botocore loads its endpoint and service JSON), even for a local-disk
    archive that never uses it: a large share of a tick (figures in docs/decisions.md). Here the
    resource itself is what `context.resources.s3` gives; `get_client()` builds a client
    when one is needed.
    """

    def get_object_to_set_on_execution_context(self) -> Any:
        return self


class ArchiveResource(dg.ConfigurableResource):
    """The archive root (a path or `s3://bucket/prefix`), plus S3 settings for S3 roots."""

    uri: str = DEFAULT_ARCHIVE_URI
    s3: dg.ResourceDependency[LazyS3Resource]
    batch_size: int = DEFAULT_ARCHIVE_BATCH_SIZE

    def store(self) -> ObjectStore:
        if self.uri.startswith("s3://"):
            return open_store(self.uri, s3_client=self.s3.get_client())
        return open_store(self.uri)

    def ledger(self) -> Ledger:
        return Ledger(self.store())

    def in_flight_source(self) -> InFlightSource:
        """A cached reader of in-flight runs (ledger and manifest records are immutable)."""
        if self.uri not in _SOURCES:
            _SOURCES[self.uri] = _new_source(self.store())
        return _SOURCES[self.uri]


_SOURCES: dict[str, InFlightSource] = {}


def _new_source(store: ObjectStore) -> InFlightSource:
    return InFlightSource(Ledger(store), ManifestLog(store))


def build_resources(settings: Settings | None = None) -> dict[str, object]:
    """The resource set for this process, from `settings` (default: the environment)."""
    settings = settings or Settings.from_env()
    s3 = LazyS3Resource(endpoint_url=settings.s3_endpoint_url, region_name=settings.aws_region)
    return {
        "spine": SpineResource(api_key=dg.EnvVar("SPINE_API_KEY"), base_url=settings.base_url),
        "archive": ArchiveResource(
            uri=settings.archive_uri, s3=s3, batch_size=settings.archive_batch_size
        ),
        "audit_db": DuckDBResource(database=settings.audit_db),
        "s3": s3,
    }
