"""Who the client of a REST call is (X-Forwarded-For from the right, past trusted proxies only),
and the gateway's proof of it."""

from __future__ import annotations

import ipaddress

import pytest
from multidict import CIMultiDict

from core.forwarding import FORWARDED_FOR, GATEWAY_PROOF, ClientForwarding, GatewayProof, client_address

PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))


@pytest.mark.parametrize(
    ("remote", "chain", "expected"),
    [
        # the peer is no trusted proxy: whatever it claims, it is the client
        ("203.0.113.9", ["198.51.100.1"], "203.0.113.9"),
        ("203.0.113.9", [], "203.0.113.9"),
        # one trusted proxy: the entry it appended, not what the client wrote before it
        ("10.0.0.5", ["203.0.113.9"], "203.0.113.9"),
        ("10.0.0.5", ["6.6.6.6, 203.0.113.9"], "203.0.113.9"),
        ("10.0.0.5", ["6.6.6.6", "203.0.113.9"], "203.0.113.9"),  # split over two headers
        # two trusted proxies in a row are skipped, right to left
        ("10.0.0.5", ["6.6.6.6, 203.0.113.9, 10.1.2.3"], "203.0.113.9"),
        # a client that writes a trusted address to the left gains nothing
        ("10.0.0.5", ["10.9.9.9, 203.0.113.9"], "203.0.113.9"),
        # every hop is a trusted proxy: the leftmost is the client
        ("10.0.0.5", ["10.1.1.1, 10.2.2.2"], "10.1.1.1"),
        # a trusted proxy with no header: the proxy itself
        ("10.0.0.5", [], "10.0.0.5"),
        # an entry that is no address ends the walk at the proxy that wrote it
        ("10.0.0.5", ["203.0.113.9, garbage"], "10.0.0.5"),
        ("10.0.0.5", ["203.0.113.9, garbage, 10.1.1.1"], "10.1.1.1"),
        # ports and brackets, as some proxies write them; blanks ignored
        ("10.0.0.5", ["203.0.113.9:4711"], "203.0.113.9"),
        ("10.0.0.5", ["[2001:db8::1]:443"], "2001:db8::1"),
        ("10.0.0.5", [" 2001:db8::1 ,  "], "2001:db8::1"),
        # IPv6 proxies, and an IPv4-mapped proxy address
        ("fd00::1", ["203.0.113.9, fd00::2"], "203.0.113.9"),
        ("::ffff:10.0.0.5", ["203.0.113.9"], "203.0.113.9"),
        (None, ["203.0.113.9"], None),
    ],
)
def test_the_client_is_read_from_the_right_past_trusted_proxies(
    remote: str | None, chain: list[str], expected: str | None
) -> None:
    assert client_address(remote, chain, PROXIES) == expected


def test_with_no_trusted_proxies_the_chain_is_never_read() -> None:
    assert client_address("127.0.0.1", ["203.0.113.9"], ()) == "127.0.0.1"


def test_a_proof_verifies_only_its_client_under_a_known_key() -> None:
    shared = b"s" * 32
    proof = GatewayProof(b"p" * 32, [shared])
    assert proof.verifies("203.0.113.9", proof.sign("203.0.113.9"))
    assert proof.verifies("203.0.113.9", GatewayProof(shared).sign("203.0.113.9"))
    assert not proof.verifies("203.0.113.8", proof.sign("203.0.113.9"))
    assert not proof.verifies("203.0.113.9", GatewayProof(b"q" * 32).sign("203.0.113.9"))
    assert b"p" * 32 not in proof.sign("203.0.113.9").encode()
    with pytest.raises(ValueError, match="16 bytes"):
        GatewayProof(b"short")


def test_the_gateway_sends_the_client_with_its_proof() -> None:
    from gateway.app import request_metadata

    proof = GatewayProof(b"p" * 32)
    forwarding = ClientForwarding(PROXIES, proof)
    headers = CIMultiDict({"X-Forwarded-For": "6.6.6.6, 203.0.113.9"})
    metadata = dict(request_metadata(headers, "req-1", "10.0.0.5", forwarding))
    assert metadata[FORWARDED_FOR] == "203.0.113.9"
    assert metadata[GATEWAY_PROOF] == proof.sign("203.0.113.9")


@pytest.mark.parametrize("name", ["Grpc-Metadata-X-Tally-Gateway-Proof", "grpc-metadata-x-forwarded-for"])
def test_a_caller_cannot_send_the_forwarding_metadata(name: str) -> None:
    from gateway.app import request_metadata
    from gateway.errors import GatewayError

    with pytest.raises(GatewayError):
        request_metadata(CIMultiDict({name: "x"}), "req-1", "203.0.113.9", ClientForwarding((), None))
