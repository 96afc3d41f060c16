"""Where a webhook may go: refuse loopback, private, link-local (and other non-public) addresses,
after DNS resolution, unless TALLY_WEBHOOK_ALLOW_PRIVATE_TARGETS is on (tests, closed networks)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

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
