"""Tally's Python client: accounts and usage over gRPC, blocking (`Client`) and asyncio (`AsyncClient`).

Both share one core: which failures are retried (only those a retry cannot double), the
backoff, the idempotency keys made once per logical call, and the decoding of errors into
typed exceptions. See Config for the settings and RetryPolicy for the retry rules.
"""

from tally_client._aio import AsyncClient
from tally_client._channels import shared_channel_count
from tally_client._client import Client
from tally_client._config import Config
from tally_client._core import BatchItem, BatchResult, UsageEvent, UsageResult
from tally_client._errors import (
    Aborted,
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    TallyError,
    Unauthenticated,
    Unavailable,
    error_from_rpc,
    error_from_status,
)
from tally_client._retry import NO_RETRY, RetryPolicy, is_retryable
from tally_client._stream import AsyncUsageStream, UsageStream

__all__ = [
    "NO_RETRY",
    "Aborted",
    "AlreadyExists",
    "AsyncClient",
    "AsyncUsageStream",
    "BatchItem",
    "BatchResult",
    "Client",
    "Config",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "RetryPolicy",
    "TallyError",
    "Unauthenticated",
    "Unavailable",
    "UsageEvent",
    "UsageResult",
    "UsageStream",
    "error_from_rpc",
    "error_from_status",
    "is_retryable",
    "shared_channel_count",
]
