"""The one parser of `context.peer()`, which spans, access logs and rate limits share."""

from __future__ import annotations

import ipaddress

import pytest

from interceptors.peer import Peer, parse_peer
from interceptors.rate_limit import peer_key


@pytest.mark.parametrize(
    ("peer", "expected", "text"),
    [
        ("ipv4:10.1.2.3:5000", Peer("ipv4", "10.1.2.3", 5000), "10.1.2.3:5000"),
        ("ipv4:10.1.2.3", Peer("ipv4", "10.1.2.3"), "10.1.2.3"),
        ("ipv6:[::1]:443", Peer("ipv6", "::1", 443), "[::1]:443"),
        ("ipv6:%5B::1%5D:443", Peer("ipv6", "::1", 443), "[::1]:443"),  # what grpc 1.85 reports
        ("ipv6:%5B2001:db8::7%5D:9", Peer("ipv6", "2001:db8::7", 9), "[2001:db8::7]:9"),
        ("ipv6:%5Bfe80::1%25eth0%5D:80", Peer("ipv6", "fe80::1%eth0", 80), "[fe80::1%eth0]:80"),
        ("ipv6:::1", Peer("ipv6", "::1"), "::1"),
        ("unix:/run/tally.sock", Peer("unix", "/run/tally.sock"), "/run/tally.sock"),
        ("unix-abstract:tally", Peer("unix", "tally"), "tally"),
    ],
)
def test_addresses_are_decoded_and_split(peer: str, expected: Peer, text: str) -> None:
    parsed = parse_peer(peer)
    assert parsed == expected
    assert str(parsed) == text


@pytest.mark.parametrize(
    "peer",
    [
        "garbage",
        "dns:example.com:443",
        "ipv4:999.1.2.3:5000",
        "ipv4:10.1.2.3:port",
        "ipv6:[::1",
        "ipv6:[::1]443",
        "ipv6:[not-an-address]:1",
    ],
)
def test_garbage_keeps_its_text_and_has_no_address(peer: str) -> None:
    parsed = parse_peer(peer)
    assert parsed == Peer("", peer)
    assert parsed.ip() is None


@pytest.mark.parametrize("peer", ["", None])
def test_no_peer(peer: str | None) -> None:
    assert parse_peer(peer) == Peer("", "")
    assert str(parse_peer(peer)) == ""


def test_ip_drops_the_zone_and_is_none_for_sockets() -> None:
    assert parse_peer("ipv6:%5Bfe80::1%25eth0%5D:80").ip() == ipaddress.ip_address("fe80::1")
    assert parse_peer("ipv4:10.1.2.3:1").ip() == ipaddress.ip_address("10.1.2.3")
    assert parse_peer("unix:/run/tally.sock").ip() is None


@pytest.mark.parametrize(
    ("peer", "key"),
    [
        ("ipv6:%5B2001:db8::7%5D:9", "2001:db8::/64"),
        ("ipv6:[2001:db8::7]:9", "2001:db8::/64"),
        ("ipv6:%5B::ffff:10.1.2.3%5D:9", "10.1.2.3"),
        ("unix:/run/tally.sock", "unix"),
        ("garbage", "unknown"),
    ],
)
def test_the_rate_limiter_keys_on_the_same_parse(peer: str, key: str) -> None:
    assert peer_key(peer) == key
