"""Who the client of a REST call is, and how the gateway proves it says so to the gRPC server.

Anonymous callers are rate-limited by address. A REST call reaches the gRPC server from the
gateway, so the gateway names the client in `x-forwarded-for`; the server may believe that
only from the gateway itself, and an address cannot prove it (every process on the machine
shares loopback). So the gateway adds `x-tally-gateway-proof`: an HMAC of the forwarded value
under a secret the caller never sees (`tally serve` draws one per process at start; a
stand-alone `tally gateway` and its server share TALLY_GATEWAY_SECRET). The secret itself is
never sent. The gateway refuses both names from a caller's `Grpc-Metadata-*` headers.

The gateway's own view of the client: its HTTP peer, unless that peer is a trusted proxy
(TALLY_TRUSTED_PROXIES); then `X-Forwarded-For` is read from the right, since each proxy
appends the address it saw and only the entries our trusted proxies wrote are true, and the
first address that is not a trusted proxy is the client. Anything left of it was written by
the client and is ignored.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

FORWARDED_FOR = "x-forwarded-for"
GATEWAY_PROOF = "x-tally-gateway-proof"
# Bound into every MAC, so a proof cannot be confused with any other use of the same secret.
_PURPOSE = b"tally gateway forwarded-for v1\x00"


class GatewayProof:
    """Signs a forwarded client address with `signing`; accepts proofs made with it or `accepted`."""

    def __init__(self, signing: bytes, accepted: Iterable[bytes] = ()) -> None:
        if len(signing) < 16:
            raise ValueError("a gateway proof secret needs at least 16 bytes")
        self._signing = signing
        self._keys = (signing, *accepted)

    @staticmethod
    def _mac(key: bytes, client: str) -> str:
        return hmac.new(key, _PURPOSE + client.encode(), hashlib.sha256).hexdigest()

    def sign(self, client: str) -> str:
        return self._mac(self._signing, client)

    def verifies(self, client: str, proof: str) -> bool:
        """Constant time per key, and every key is tried, so timing tells nothing of which matched."""
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(self._mac(key, client), proof)
        return matched


def parse_address(text: str) -> IpAddress | None:
    """'203.0.113.9', '203.0.113.9:5555', '[2001:db8::1]:443' or '2001:db8::1' -> the address."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _trusted(address: IpAddress, networks: Sequence[IpNetwork]) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def client_address(remote: str | None, chain: Iterable[str], trusted: Sequence[IpNetwork]) -> str | None:
    """The client of an HTTP request whose peer is `remote` and whose X-Forwarded-For headers
    are `chain` (in order), believing the chain only as far as trusted proxies wrote it.

    From the right: while the hop at hand is a trusted proxy, the entry to its left is the address
    it saw. The first hop that is not trusted is the client. An entry that is no address ends the
    walk at the proxy that wrote it, and when every entry is a trusted proxy the leftmost is the
    client.
    """
    if remote is None:
        return None
    hop = parse_address(remote)
    if hop is None or not _trusted(hop, trusted):
        return remote
    entries = [entry for header in chain for entry in header.split(",") if entry.strip()]
    for entry in reversed(entries):
        address = parse_address(entry)
        if address is None:
            break
        hop = address
        if not _trusted(hop, trusted):
            break
    return str(hop)


@dataclass(frozen=True, slots=True)
class ClientForwarding:
    """How the gateway names the client to the gRPC server: whom it trusts, and how it proves it."""

    trusted_proxies: tuple[IpNetwork, ...] = ()
    proof: GatewayProof | None = None

    def metadata(self, remote: str | None, chain: Iterable[str]) -> list[tuple[str, str]]:
        client = client_address(remote, chain, self.trusted_proxies)
        if not client:
            return []
        entries = [(FORWARDED_FOR, client)]
        if self.proof is not None:
            entries.append((GATEWAY_PROOF, self.proof.sign(client)))
        return entries
