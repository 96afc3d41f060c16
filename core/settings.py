"""One typed settings object, read from TALLY_* environment variables and CLI flags.

Validated when the process starts: a bad value stops `tally` with a message
naming the setting, before anything is opened or bound.
"""

from __future__ import annotations

import difflib
import errno
import ipaddress
import itertools
import json
import os
import socket
from pathlib import Path
from typing import Literal, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}


def parse_host_port(value: str) -> tuple[str, int]:
    """Split `host:port` (or `[v6]:port`); raise ValueError with a readable reason."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        # No bare `:PORT`: to some tools it means every interface, to others loopback; say which.
        raise ValueError(
            f"expected HOST:PORT such as 127.0.0.1:50051 (port 0 picks a free one; 0.0.0.0 listens "
            f"on every interface), got {value!r}"
        )
    if host.startswith("[") and host.endswith("]"):
        ipaddress.IPv6Address(host[1:-1])
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port must be a number from 0 to 65535, got {port_text!r}")
    return host, int(port_text)


PAYMENT_GATEWAYS = ("sandbox", "stripe")


def parse_gateway_by_currency(value: str) -> dict[str, str]:
    """`EUR=stripe,USD=sandbox` as {currency: gateway}; ValueError naming the bad pair."""
    chosen: dict[str, str] = {}
    for pair in filter(None, (part.strip() for part in value.split(","))):
        currency, sep, gateway = (piece.strip() for piece in pair.partition("="))
        if not sep or len(currency) != 3 or not currency.isalpha() or not currency.isupper():
            raise ValueError(f"expected CUR=gateway pairs such as EUR=stripe,USD=sandbox, got {pair!r}")
        if gateway not in PAYMENT_GATEWAYS:
            raise ValueError(f"{pair!r}: unknown gateway {gateway!r}; one of {', '.join(PAYMENT_GATEWAYS)}")
        chosen[currency] = gateway
    return chosen


class RateLimit(BaseModel):
    """A token bucket: `rate` tokens a second refill it, up to `burst`; a call takes `cost` tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rate: float = Field(gt=0, le=1_000_000)
    burst: int = Field(ge=1, le=1_000_000)


DEFAULT_RATE_LIMITS = {
    "default": RateLimit(rate=50, burst=100),
    "auth": RateLimit(rate=1, burst=10),
}


class SettingsError(Exception):
    """Settings failed validation; the message lists every bad setting by its variable name."""


class ListenError(Exception):
    """A listen address of a setting could not be bound (in use, or not an address of this host).

    Raised where the bind happens, so the message names the setting to change.
    """

    def __init__(self, setting: str, address: str, reason: str) -> None:
        super().__init__(f"cannot listen on {address} ({setting}): {reason}")
        self.setting = setting
        self.address = address

    @classmethod
    def of(cls, setting: str, address: str, exc: OSError) -> ListenError:
        """The bind of `address` failed for real (after `check_can_listen`, the port taken meanwhile)."""
        code = exc.errno
        reason = _BIND_HINTS.get(code) if code is not None else None
        return cls(setting, address, reason or exc.strerror or str(exc))


# What to do about the usual reasons a listen address cannot be bound.
_BIND_HINTS = {
    errno.EADDRINUSE: "address already in use; stop the process that listens there or choose another port",
    errno.EADDRNOTAVAIL: "not an address of this host; use 127.0.0.1, 0.0.0.0 or one of its own addresses",
    errno.EACCES: "permission denied; ports below 1024 need privileges, choose a higher one",
}


def check_can_listen(setting: str, address: str) -> None:
    """Bind `address` for a moment and let it go, so a busy or foreign address is refused with the
    setting's name and the exact reason before anything is migrated, generated or bound for real.
    (gRPC's own bind failure says neither, and C-core prints a line of its own.)"""
    host, port = parse_host_port(address)
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(setting, address, f"cannot resolve {host!r} ({exc.strerror})") from None
    failures = [code for code in map(_try_bind, infos) if code is not None]
    # A name resolving to an address family this host lacks (::1 without IPv6) is no failure as
    # long as another address binds, as for the servers; a taken port is one on any address.
    taken = [code for code in failures if code in (errno.EADDRINUSE, errno.EACCES)]
    if taken or (failures and len(failures) == len(infos)):
        code = (taken or failures)[0]
        raise ListenError(setting, address, _BIND_HINTS.get(code, os.strerror(code)))


def _try_bind(
    info: tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[object, ...]],
) -> int | None:
    """The errno of binding one resolved address, or None if it binds."""
    family, kind, proto, _, sockaddr = info
    with socket.socket(family, kind, proto) as probe:
        # As the servers do: a port left in TIME_WAIT by a previous run is free to take.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(sockaddr)
        except OSError as exc:
            return exc.errno or errno.EINVAL
    return None


class Settings(BaseSettings):
    """Every field is a TALLY_<NAME> variable and, for the commands that take it, a --<name> flag
    (app/cli.py derives the flags from these fields and their descriptions)."""

    # JSON values are decoded by `_from_text` below, so a malformed one is a field error naming
    # its variable rather than pydantic-settings' own exception.
    model_config = SettingsConfigDict(env_prefix="TALLY_", extra="forbid", frozen=True, enable_decoding=False)

    grpc_addr: str = Field("127.0.0.1:50051", description="Address the gRPC server listens on (HOST:PORT).")
    data_dir: Path = Field(Path(".tally"), description="Directory for the embedded database and local keys.")
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL; unset means SQLite in the data directory. "
        "postgresql+asyncpg://USER@HOST:PORT/DB for PostgreSQL.",
    )
    migrate_on_start: bool | None = Field(
        None, description="Apply migrations when serving; default: yes for SQLite, no for PostgreSQL."
    )
    secret_key: SecretStr | None = Field(
        None,
        description="Key that signs page tokens; must be the same on every replica. "
        "Unset: generated once into the data directory.",
    )
    db_pool_size: int = Field(10, ge=1, le=200, description="PostgreSQL connections per process.")
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Server processes of `tally serve`, sharing the gRPC and HTTP ports (SO_REUSEPORT), "
        "each with its own event loop, pool and limiter client; 1 serves in the one process.",
    )
    shutdown_grace_seconds: float = Field(
        15.0, ge=0, le=300, description="How long in-flight calls may run on once the drain has ended."
    )
    shutdown_drain_seconds: float = Field(
        5.0,
        ge=0,
        le=300,
        description="After SIGTERM/SIGINT, how long health reports NOT_SERVING while new calls are still "
        "served, so load balancers stop routing here first; 0 stops accepting at once.",
    )
    readiness_probe_interval_seconds: float = Field(
        1.0,
        ge=0,
        le=60,
        description="How often `tally serve` checks the database (SELECT 1) for readiness; 0 disables "
        "the check.",
    )
    max_message_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024, description="Largest gRPC message accepted or sent."
    )
    max_concurrent_streams: int = Field(256, ge=1, le=10_000, description="HTTP/2 streams per connection.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Least severe log level written: DEBUG, INFO, WARNING or ERROR (any case)."
    )
    log_format: Literal["auto", "json", "text"] = Field(
        "auto", description="json, text, or auto: text on a terminal, JSON otherwise."
    )
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        "auto", description="Event loop: uvloop when installed (auto), or force one."
    )
    environment: Literal["development", "production"] = Field(
        "development",
        description="production refuses to start without configured JWT keys; development generates "
        "a key into the data directory.",
    )
    http_addr: str = Field(
        "127.0.0.1:8080", description="HTTP listen address (HOST:PORT) for /metrics, JWKS and REST."
    )
    redis_url: str | None = Field(
        None, description="redis://HOST:PORT/DB for shared rate limits; unset: in-process buckets."
    )
    cache: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Read-through cache of accounts, plans and entitlements in Redis: auto (on when "
        "redis_url is set), on (redis_url required) or off.",
    )
    cache_ttl_seconds: float = Field(
        300, gt=0, le=86_400, description="Longest a cache entry lives (a safety net: writes invalidate)."
    )
    cache_timeout_ms: int = Field(
        50, ge=1, le=5_000, description="Longest a cache call to Redis may take before the database answers."
    )
    jwt_issuer: str = Field("tally", min_length=1, description="`iss` of issued tokens, required on verify.")
    jwt_audience: str = Field(
        "tally", min_length=1, description="`aud` of issued tokens, required on verify."
    )
    jwt_hs256_secret: SecretStr | None = Field(
        None, description="Shared secret (32+ bytes) to sign and verify HS256 tokens."
    )
    jwt_keys_dir: Path | None = Field(
        None,
        description="Directory of PEM private keys (RSA for RS256, P-256 for ES256), one per file; "
        "the file name without .pem is the key id (kid). All are published as JWKS and accepted.",
    )
    jwt_signing_kid: str | None = Field(
        None, description="Key id that signs new tokens; default: the newest file in jwt_keys_dir."
    )
    jwt_leeway_seconds: int = Field(30, ge=0, le=300, description="Clock skew allowed on exp/nbf/iat.")
    access_token_ttl_seconds: int = Field(900, ge=30, le=86_400, description="Access token lifetime.")
    refresh_token_ttl_seconds: int = Field(
        30 * 86_400, ge=300, le=365 * 86_400, description="Login session (refresh token) lifetime."
    )
    rate_limits: dict[str, RateLimit] = Field(
        default_factory=lambda: dict(DEFAULT_RATE_LIMITS),
        description='JSON: method group -> {"rate": per second, "burst": size}; "default" covers '
        "groups not listed.",
        examples=['{"default": {"rate": 50, "burst": 100}}'],
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description='JSON list of origins allowed to call the REST face from a browser, or ["*"].',
        examples=['["https://portal.example.com"]'],
    )
    gateway_strict: bool = Field(
        True, description="REST: unknown query parameters and JSON fields are 400 errors (false: ignored)."
    )
    gateway_proto_names: bool = Field(
        False, description="REST: answer with the proto field names (display_name) instead of lowerCamelCase."
    )
    gateway_max_body_bytes: int = Field(
        1024 * 1024, ge=1024, le=64 * 1024 * 1024, description="REST: largest request body (413 above)."
    )
    gateway_max_timeout_seconds: float = Field(
        300,
        gt=0,
        le=86_400,
        description="REST: longest call deadline a caller may ask for with Grpc-Timeout or "
        "Request-Timeout; a longer one is cut to it.",
    )
    idempotency_purge_interval_seconds: float = Field(
        3600,
        ge=0,
        le=86_400,
        description="How often `tally serve` deletes expired request ids (kept 24 h); 0 disables it.",
    )
    usage_late_window_hours: float = Field(
        72,
        gt=0,
        le=24 * 34,
        description="Usage events older than this (hours before their receipt) are refused, naming the "
        "window; kept below the 35 days event ids are remembered, so a late retry is still a replay.",
    )
    usage_future_skew_seconds: float = Field(
        300,
        ge=0,
        le=86_400,
        description="Usage events timed more than this many seconds after their receipt are refused "
        "(the producers' clock skew allowed).",
    )
    usage_upkeep_interval_seconds: float = Field(
        86_400,
        ge=0,
        le=7 * 86_400,
        description="How often `tally serve` makes the monthly usage partitions ahead (PostgreSQL) and "
        "deletes usage event ids past their 35-day retention; also once at start. 0 disables it.",
    )
    billing_worker: bool = Field(
        True,
        description="`tally serve` runs the billing worker: it renews due subscriptions and issues, "
        "numbers and finalizes their invoices (`tally worker` runs it alone).",
    )
    billing_worker_interval_seconds: float = Field(
        10.0, gt=0, le=3600, description="Seconds between the billing worker's passes."
    )
    worker_metrics_addr: str = Field(
        "127.0.0.1:9464",
        description="Where `tally worker` serves /metrics (HOST:PORT; port 0 picks a free one); empty: "
        "no metrics server. Not 8080, which a `tally serve` on the same host takes (`tally serve` "
        "itself serves its metrics on TALLY_HTTP_ADDR).",
    )
    collection_worker: bool = Field(
        True,
        description="`tally serve` runs the collection worker: it charges finalized subscription "
        "invoices and retries declined ones on the dunning schedule (`tally worker` runs it too).",
    )
    collection_worker_interval_seconds: float = Field(
        10.0, gt=0, le=3600, description="Seconds between the collection worker's passes."
    )
    collection_retry_delay_seconds: float = Field(
        3600.0,
        gt=0,
        le=7 * 86_400,
        description="When a charge is pending at the gateway or the gateway is unavailable, the "
        "invoice is tried again this many seconds later (not a dunning step).",
    )
    dunning_retry_days: str = Field(
        "3,5,7",
        pattern=r"^(\d{1,3}(,\d{1,3}){0,19})?$",
        description="Comma-separated days after finalization on which a declined subscription invoice "
        "is charged again, increasing (empty: no retry); after the last one fails the subscription "
        "goes to TALLY_DUNNING_END_STATE.",
        examples=["3,5,7", "1,3,5,7,14"],
    )
    dunning_end_state: Literal["canceled", "unpaid"] = Field(
        "canceled",
        description="What a subscription becomes when the last retry of its invoice fails: canceled, "
        "or unpaid (no features, no new fees, active again once the invoice is paid). The invoice "
        "stays open either way.",
    )
    webhook_delivery: bool = Field(
        True,
        description="`tally serve` and `tally worker` fan outbox events out to webhook endpoints and send "
        "them (signed, retried for over three days).",
    )
    webhook_delivery_interval_seconds: float = Field(
        1.0, gt=0, le=3600, description="Seconds between webhook delivery passes."
    )
    webhook_allow_private_targets: bool = Field(
        False,
        description="Let webhooks go to loopback, private and link-local addresses (tests, closed "
        "networks); off, such targets are refused at create and at send, after DNS resolution.",
    )
    events_watch_poll_seconds: float = Field(
        0.5,
        gt=0,
        le=60,
        description="WatchEvents: seconds between looks at the outbox for new events while a watch is "
        "caught up, for events other processes (replicas, `tally worker`) commit; this process's "
        "commits wake its watches at once.",
    )
    events_watch_heartbeat_seconds: float = Field(
        15.0,
        gt=0,
        le=3600,
        description="WatchEvents: a heartbeat (a cursor, no event) after this many seconds without a "
        "message, so idle proxies keep the stream and a filtered watch's cursor moves on.",
    )
    usage_coalesce: bool = Field(
        True,
        description="Concurrent CreateUsageRecord calls share one transaction and commit (group "
        "commit, up to 1000 events); each is answered once its event is committed.",
    )
    invoice_number_prefix: str = Field(
        "INV",
        pattern=r"^[A-Z0-9][A-Z0-9-]{0,19}$",
        description="Finalized invoices are numbered <prefix>-000001, -000002, ... with no gaps; each "
        "prefix is its own sequence.",
    )
    invoice_days_until_due: int = Field(
        0,
        ge=0,
        le=365,
        description="Days from finalization to an invoice's due time.",
    )
    invoice_grace_period_seconds: int = Field(
        3600,
        ge=0,
        le=30 * 86400,
        description="How long a renewal invoice that bills usage stays a draft before the billing "
        "worker finalizes it, so that usage recorded late for the closed period lands on it (0: "
        "finalized at once).",
    )
    payment_gateway_default: Literal["sandbox", "stripe"] = Field(
        "sandbox",
        description="The payment gateway of payments whose account names none and whose currency has "
        "none in payment_gateway_by_currency.",
    )
    payment_gateway_by_currency: str = Field(
        "",
        description="The payment gateway of each currency, as CUR=gateway pairs separated by commas, "
        "for accounts whose payment settings name none.",
        examples=["EUR=stripe,USD=sandbox"],
    )
    sandbox_gateway_url: str = Field(
        "http://127.0.0.1:8790",
        pattern=r"^https?://",
        description="Where the sandbox payment gateway (`tally sandbox-gateway`) listens.",
    )
    stripe_api_key: SecretStr | None = Field(
        None,
        description="Stripe secret key; unset, the stripe gateway is not configured and payments "
        "routed to it fail with FAILED_PRECONDITION.",
    )
    stripe_webhook_secret: SecretStr | None = Field(
        None,
        description="Signing secret (whsec_...) of the Stripe webhook endpoint POST /v1/gatewayEvents/stripe "
        "(GatewayEventService.ReceiveStripeEvent); unset, it answers 503 and acts on nothing.",
    )
    stripe_api_base: str | None = Field(
        None,
        description="Base URL of the Stripe API (tests point it at a local stand-in); unset, Stripe's.",
    )
    payment_gateway_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=120,
        description="How long a call to a payment gateway may take; a charge unanswered by then is "
        "unknown and retried with the same idempotency key.",
    )
    payment_retry_attempts: int = Field(
        3,
        ge=1,
        le=10,
        description="Calls made inline for one payment while the gateway fails transiently or does not "
        "answer (a failure gets a new attempt, no answer the same one); then it is left to the reconciler.",
    )
    payment_retry_delay_seconds: float = Field(
        0.2,
        ge=0,
        le=10,
        description="The wait before the first inline retry of a payment; doubled before each further one.",
    )
    payment_reconciler: bool = Field(
        True,
        description="`tally serve` settles payment attempts left in flight, unknown or pending by "
        "looking them up at their gateway (`tally worker` runs it too).",
    )
    payment_reconciler_interval_seconds: float = Field(
        10.0, gt=0, le=3600, description="Seconds between the payment reconciler's passes."
    )
    payment_reconcile_after_seconds: float = Field(
        60.0,
        gt=0,
        le=86_400,
        description="An unsettled payment attempt is the reconciler's once it is this old (longer than "
        "the inline retries take), and again this long after each lookup that settled nothing.",
    )
    trusted_proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(
        default_factory=list,
        description="JSON list of networks (CIDR) whose proxies in front of the REST face are believed "
        "about the client: its X-Forwarded-For is read from the right, skipping them.",
        examples=['["10.0.0.0/8", "fd00::/8"]'],
    )
    gateway_secret: SecretStr | None = Field(
        None,
        description="Secret (32+ bytes) shared by a stand-alone `tally gateway` and its `tally serve`, "
        "so the server believes the client address the gateway forwards. Unset: REST callers of a "
        "stand-alone gateway are rate-limited as the gateway's address.",
    )
    rate_limit_fail_closed: list[str] = Field(
        default_factory=list,
        description="JSON list of method groups refused (UNAVAILABLE) instead of served on local "
        "buckets while Redis is unreachable.",
        examples=['["auth"]'],
    )
    rate_limit_batch: int = Field(
        64,
        ge=0,
        le=100_000,
        description="Most tokens a process reserves from a Redis bucket at once and spends without a "
        "round trip (also capped by rate_limit_batch_fraction of the burst); 0: one Redis call per "
        "check.",
    )
    rate_limit_batch_fraction: float = Field(
        0.1, gt=0, le=0.5, description="A reservation holds at most this fraction of its bucket's burst."
    )
    rate_limit_lease_seconds: float = Field(
        0.5, gt=0, le=60, description="A reservation is spent for at most this long, then settled with Redis."
    )

    @field_validator("dunning_retry_days")
    @classmethod
    def _check_retry_days(cls, value: str) -> str:
        days = [int(part) for part in value.split(",") if part]
        if any(later <= earlier for earlier, later in itertools.pairwise(days)):
            raise ValueError("the retry days must increase, for example 3,5,7")
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _check_networks(cls, value: object) -> object:
        if not isinstance(value, list):
            return value
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for item in value:
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except (TypeError, ValueError):
                raise ValueError(f"{item!r} is not a network; expected CIDR such as 10.0.0.0/8") from None
        return networks

    @field_validator("*", mode="before")
    @classmethod
    def _from_text(cls, value: object, info: ValidationInfo) -> object:
        """Text from a variable or flag: enumerated values in any case, JSON for lists and maps."""
        if not isinstance(value, str) or info.field_name is None:
            return value
        field = cls.model_fields[info.field_name]
        kind = get_origin(field.annotation)
        if kind is Literal:
            wanted = value.strip().casefold()
            return next(
                (choice for choice in get_args(field.annotation) if choice.casefold() == wanted), value
            )
        if kind in (dict, list):
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                example = f" such as {field.examples[0]}" if field.examples else ""
                raise ValueError(
                    f"not valid JSON ({exc.msg} at character {exc.pos}); expected JSON{example}"
                ) from None
        return value

    @field_validator("payment_gateway_by_currency")
    @classmethod
    def _check_gateway_by_currency(cls, value: str) -> str:
        parse_gateway_by_currency(value)
        return value

    @property
    def gateway_by_currency(self) -> dict[str, str]:
        return parse_gateway_by_currency(self.payment_gateway_by_currency)

    @field_validator("grpc_addr", "http_addr")
    @classmethod
    def _check_addr(cls, value: str) -> str:
        parse_host_port(value)
        return value

    @field_validator("worker_metrics_addr")
    @classmethod
    def _check_optional_addr(cls, value: str) -> str:
        if value:  # empty turns the server off
            parse_host_port(value)
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        try:
            url = make_url(value)
        except ArgumentError as exc:
            raise ValueError(f"not a database URL: {exc}") from None
        driver = _DRIVERS.get(url.drivername)
        if driver is None:
            raise ValueError(
                f"unsupported database {url.drivername!r}; use postgresql+asyncpg://... or sqlite+aiosqlite:///..."
            )
        return url.set(drivername=driver).render_as_string(hide_password=False)

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("jwt_hs256_secret", "gateway_secret")
    @classmethod
    def _check_secret_length(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < 32:
            raise ValueError("must be at least 32 bytes")
        return value

    @field_validator("rate_limits")
    @classmethod
    def _check_rate_limits(cls, value: dict[str, RateLimit]) -> dict[str, RateLimit]:
        return {**DEFAULT_RATE_LIMITS, **value}

    @field_validator("payment_reconcile_after_seconds")
    @classmethod
    def _check_reconcile_after(cls, value: float, info: ValidationInfo) -> float:
        """Longer than the inline calls of one payment can take: an attempt that a call not answered
        in time leaves in flight is sent again inline under the same key, and the reconciler, which
        may settle an attempt the gateway has no record of as not charged, must not look it up
        while a call of it may still be on its way."""
        attempts = info.data.get("payment_retry_attempts")
        timeout = info.data.get("payment_gateway_timeout_seconds")
        delay = info.data.get("payment_retry_delay_seconds")
        if attempts is None or timeout is None or delay is None:
            return value  # one of them failed its own check, which names it
        inline = attempts * timeout + delay * (2 ** (attempts - 1) - 1)
        if value <= inline:
            raise ValueError(
                f"must be longer than the inline calls of one payment can take, {inline:g} s "
                f"(TALLY_PAYMENT_RETRY_ATTEMPTS {attempts} calls of up to "
                f"TALLY_PAYMENT_GATEWAY_TIMEOUT_SECONDS {timeout:g} s, with the waits between them "
                f"from TALLY_PAYMENT_RETRY_DELAY_SECONDS {delay:g} s, doubled each time)"
            )
        return value

    @field_validator("cache")
    @classmethod
    def _check_cache(cls, value: str, info: ValidationInfo) -> str:
        if value == "on" and not info.data.get("redis_url"):
            raise ValueError("on needs TALLY_REDIS_URL (the cache lives in Redis)")
        return value

    @property
    def cache_enabled(self) -> bool:
        return self.cache != "off" and self.redis_url is not None

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'tally.db').resolve()}"

    @property
    def is_sqlite(self) -> bool:
        return self.effective_database_url.startswith("sqlite")

    @property
    def should_migrate_on_start(self) -> bool:
        return self.is_sqlite if self.migrate_on_start is None else self.migrate_on_start

    def describe_database(self) -> str:
        """The database for log lines, with any password masked."""
        url = make_url(self.effective_database_url)
        if self.is_sqlite:
            return f"SQLite at {url.database}"
        return f"PostgreSQL at {url.render_as_string(hide_password=True)}"


# Variables with these prefixes belong to the test suite and benchmarks, not to the server.
_FOREIGN_PREFIXES = ("TALLY_TEST_", "TALLY_BENCH_")


def _unknown_variables() -> list[str]:
    known = {f"TALLY_{name.upper()}" for name in Settings.model_fields}
    lines = []
    for name in sorted(os.environ):
        if name.startswith("TALLY_") and not name.startswith(_FOREIGN_PREFIXES) and name not in known:
            guess = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {guess[0]}?)" if guess else ""
            lines.append(f"{name}: not a Tally setting{hint}")
    return lines


def flag(name: str) -> str:
    """The command-line flag of a setting: `--grpc-addr` for grpc_addr (TALLY_GRPC_ADDR)."""
    return "--" + name.replace("_", "-")


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment plus explicit overrides (CLI flags win).

    A SettingsError has one line per bad setting, `TALLY_NAME: what is wrong`, with the flag
    after the name when the value came from one."""
    clean = {key: value for key, value in overrides.items() if value is not None}
    lines = _unknown_variables()
    try:
        settings = Settings(**clean)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines += [_describe(error["loc"], str(error["msg"]), clean) for error in exc.errors()]
    if lines:
        raise SettingsError("\n".join(lines))
    return settings


def _describe(loc: tuple[int | str, ...], message: str, overrides: dict[str, object]) -> str:
    name, *inner = map(str, loc) if loc else ("?",)
    where = f"TALLY_{name.upper()}" + (f" ({flag(name)})" if name in overrides else "")
    path = ".".join(inner) + ": " if inner else ""
    return f"{where}: {path}{message.removeprefix('Value error, ')}"
