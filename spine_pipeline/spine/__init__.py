"""The Spine API client: the one place that talks to Spine. No Dagster here."""

from spine_pipeline.spine.client import AsyncSpineClient, DownloadResult, SpineClient, UploadFile
from spine_pipeline.spine.envelope import ApiResponse
from spine_pipeline.spine.errors import (
    AuthenticationError,
    BadRequestError,
    DownloadError,
    DownloadExpiredError,
    MalformedResponseError,
    NotFoundError,
    RateLimitError,
    ResponseTooLargeError,
    ServerError,
    SpineAPIError,
    SpineConnectionError,
    SpineError,
    SpineTimeoutError,
    SubmitOutcomeUnknownError,
)
from spine_pipeline.spine.models import (
    BLOCK_TYPES,
    TEMPLATES,
    TERMINAL_STATUSES,
    ArtifactRef,
    CanvasDAG,
    CreatedRun,
    Run,
    Task,
    TaskTree,
    canvas_url,
)
from spine_pipeline.spine.redact import Secret, redact, register_secret
from spine_pipeline.spine.retry import NO_RETRY, RetryPolicy
from spine_pipeline.spine.settings import ConfigurationError, SpineSettings

__all__ = [
    "BLOCK_TYPES",
    "NO_RETRY",
    "TEMPLATES",
    "TERMINAL_STATUSES",
    "ApiResponse",
    "ArtifactRef",
    "AsyncSpineClient",
    "AuthenticationError",
    "BadRequestError",
    "CanvasDAG",
    "ConfigurationError",
    "CreatedRun",
    "DownloadError",
    "DownloadExpiredError",
    "DownloadResult",
    "MalformedResponseError",
    "NotFoundError",
    "RateLimitError",
    "ResponseTooLargeError",
    "RetryPolicy",
    "Run",
    "Secret",
    "ServerError",
    "SpineAPIError",
    "SpineClient",
    "SpineConnectionError",
    "SpineError",
    "SpineSettings",
    "SpineTimeoutError",
    "SubmitOutcomeUnknownError",
    "Task",
    "TaskTree",
    "UploadFile",
    "canvas_url",
    "redact",
    "register_secret",
]
