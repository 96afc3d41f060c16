"""Where a webhook may go: refuse loopback, private, link-local (and other non-public) addresses,
after DNS resolution, unless TALLY_WEBHOOK_ALLOW_PRIVATE_TARGETS is on (tests, closed networks).

Two checks, for two moments:
- `refuse_private` when an endpoint is created: a clear error for the caller.
- `PublicOnlyResolver` when a delivery connects. A name can resolve to a public address when it is
  checked and to 127.0.0.1 a second later (DNS rebinding), so a check before connecting proves
  nothing about the address the connection then uses. The deliverer's HTTP client resolves names
  through this resolver and connects to exactly the addresses it returns, after they were checked.
  aiohttp does not resolve a literal IP address, so `refuse_literal` checks those.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from core.errors import InvalidArgument


def check_url(url: str) -> str:
    """The URL's host; INVALID_ARGUMENT unless it is an http(s) URL with a host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgument.field("webhook_endpoint.url", "must be an http:// or https:// URL with a host")
    return parts.hostname


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    return ip.is_global and not ip.is_multicast


async def refuse_private(url: str, *, allow_private: bool) -> None:
    """Raise InvalidArgument when any address the URL's host resolves to is not public."""
    host = check_url(url)
    if allow_private:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise InvalidArgument.field("webhook_endpoint.url", f"host does not resolve: {exc}") from None
    if not infos or not all(_public(str(info[4][0])) for info in infos):
        raise InvalidArgument.field("webhook_endpoint.url", "resolves to a non-public address")


class NonPublicTarget(OSError):
    """A delivery's host resolved to an address that is not public."""


def refuse_literal(url: str) -> None:
    """NonPublicTarget when the URL's host is a literal IP address that is not public."""
    host = check_url(url)
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return  # a name: PublicOnlyResolver checks what it resolves to, when connecting
    if not _public(host):
        raise NonPublicTarget(f"{host} is not a public address")


class PublicOnlyResolver(AbstractResolver):
    """Resolves like aiohttp's default, and refuses a name if any of its addresses is not public."""

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner = inner if inner is not None else DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if not results or not all(_public(str(result["host"])) for result in results):
            raise NonPublicTarget(f"{host} resolves to a non-public address")
        return results

    async def close(self) -> None:
        await self._inner.close()
