"""The caller's address from `context.peer()`, parsed once for spans, access logs and rate limits.

gRPC names peers `ipv4:10.0.0.1:5000`, `ipv6:[::1]:5000` or `unix:/run/x.sock`; recent
gRPC cores percent-encode them (`ipv6:%5B::1%5D:5000`, a zone as `%25eth0`), so the text is
decoded before it is split. Anything else keeps its text, with kind "".
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import unquote

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Peer:
    """`kind` is "ipv4", "ipv6", "unix" or "" (not understood); `address` is the bare host
    (no brackets, zone kept), the socket path, or the decoded text of what was not understood."""

    kind: str
    address: str
    port: int | None = None

    def ip(self) -> IpAddress | None:
        """The IP address without its zone, for network checks; None for Unix sockets and the rest."""
        if self.kind not in ("ipv4", "ipv6"):
            return None
        return ipaddress.ip_address(self.address.partition("%")[0])

    def __str__(self) -> str:
        """`10.0.0.1:5000`, `[::1]:5000`, or the address alone when there is no port."""
        if self.port is None:
            return self.address
        return f"[{self.address}]:{self.port}" if self.kind == "ipv6" else f"{self.address}:{self.port}"


_UNKNOWN = Peer("", "")


def parse_peer(peer: str | None) -> Peer:
    """'ipv4:10.0.0.1:5000' -> Peer('ipv4', '10.0.0.1', 5000); 'ipv6:%5B::1%5D:5000' and
    'ipv6:[::1]:5000' -> Peer('ipv6', '::1', 5000); 'unix:/x' -> Peer('unix', '/x')."""
    if not peer:
        return _UNKNOWN
    text = unquote(peer)
    scheme, sep, rest = text.partition(":")
    if not sep:
        return Peer("", text)
    if scheme in ("unix", "unix-abstract"):
        return Peer("unix", rest)
    if scheme not in ("ipv4", "ipv6"):
        return Peer("", text)
    host, port = _split_host_port(scheme, rest)
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return Peer("", text)
    if port and not port.isdigit():
        return Peer("", text)
    kind = "ipv4" if address.version == 4 else "ipv6"
    return Peer(kind, host, int(port) if port else None)


def _split_host_port(scheme: str, rest: str) -> tuple[str, str]:
    """'[::1]:5000' -> ('::1', '5000'); '10.0.0.1:5000' -> ('10.0.0.1', '5000'); a bare host: ''."""
    if rest.startswith("["):
        host, bracket, tail = rest[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            return "", ""
        return host, tail[1:]
    if scheme == "ipv4" and ":" in rest:
        host, _, port = rest.rpartition(":")
        return host, port
    return rest, ""
