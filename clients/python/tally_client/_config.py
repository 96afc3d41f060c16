"""The client's configuration: where the server is, how to authenticate, how long and how hard to try."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from tally_client._retry import RetryPolicy

# A lost server is found again within about two seconds (gRPC's default waits up to two minutes
# between reconnection attempts, longer than any retry budget).
DEFAULT_CHANNEL_OPTIONS: tuple[tuple[str, int | str], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
)


@dataclass(frozen=True)
class Config:
    """How a Client or an AsyncClient reaches Tally.

    Authentication, at most one of: `token` (a fixed access token), `token_provider` (called
    before every call, for tokens the caller refreshes), `service_account` (a client id and
    secret exchanged with AuthService.IssueServiceToken, the token renewed before it expires).
    `tls` is False for plaintext, True for TLS with the system's roots, or credentials of the
    caller's own. `default_timeout` is each attempt's deadline in seconds (None: the retry
    budget's). `generate_ids` gives every mutating call without an id one of its own,
    made once per logical call, so that its retries are safe.
    """

    target: str
    tls: bool | grpc.ChannelCredentials = False
    token: str | None = None
    token_provider: Callable[[], str] | None = None
    service_account: tuple[str, str] | None = None
    service_account_scopes: tuple[str, ...] = ()
    default_timeout: float | None = 10.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("tally_client"))
    generate_ids: bool = True
    share_channel: bool = True
    channel_options: tuple[tuple[str, int | str], ...] = DEFAULT_CHANNEL_OPTIONS

    def __post_init__(self) -> None:
        if not self.target:
            raise ValueError("target is required, such as 'localhost:50051'")
        given = [self.token is not None, self.token_provider is not None, self.service_account is not None]
        if sum(given) > 1:
            raise ValueError("give at most one of token, token_provider and service_account")
        if self.default_timeout is not None and self.default_timeout <= 0:
            raise ValueError(f"default_timeout must be positive, got {self.default_timeout}")

    def channel_key(self) -> tuple[object, ...]:
        """What makes two configurations need two channels: target, transport security, options."""
        tls: object = self.tls if isinstance(self.tls, bool) else id(self.tls)
        return (self.target, tls, self.channel_options)

    def credentials(self) -> grpc.ChannelCredentials | None:
        """The channel credentials, or None for plaintext."""
        if self.tls is True:
            return grpc.ssl_channel_credentials()
        if self.tls is False:
            return None
        return self.tls
