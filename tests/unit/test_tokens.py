"""Access tokens and the key ring: round trips, rotation, JWKS, and every way a token is refused.

The clock is frozen in 2021, so a verifier that read the wall clock would call every token
here expired: passing round trips show that verification uses the injected clock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import random
import stat
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from account_svc.identity.keys import JwtKey, KeyConfigError, KeyRing, asymmetric_key, hs256_key, load_keyring
from account_svc.identity.tokens import TokenIssuer, TokenVerifier
from core.clock import FrozenClock
from core.errors import Unauthenticated
from core.principal import Principal, Role
from core.settings import load_settings

START = datetime(2021, 3, 4, 5, 6, 7, tzinfo=UTC)
ISSUER, AUDIENCE, LEEWAY, TTL = "tally-test", "billing", 30, 900
SECRET = "an-hs256-secret-of-at-least-32-bytes!"
ALGS = ["HS256", "RS256", "ES256"]
SCOPES = frozenset({"invoices:read", "accounts:read"})
MakeKey = Callable[..., JwtKey]
RsaKeys = list[rsa.RSAPrivateKey]
CUSTOMER = Principal("usr_1", Role.CUSTOMER, SCOPES, account_id="acct_1", session_id="ses_1")


@pytest.fixture(scope="module")
def rsa_keys() -> RsaKeys:
    return [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2)]


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(START)


@pytest.fixture
def make_key(rsa_keys: RsaKeys) -> MakeKey:
    """A key of the given algorithm; `other=True` gives different material (for same-kid forgeries)."""

    def make(alg: str, kid: str | None = None, other: bool = False) -> JwtKey:
        if alg == "HS256":
            key = hs256_key(SECRET.encode() + (b"-other" if other else b""))
            return JwtKey(kid or key.kid, "HS256", key.sign_with, key.verify_with)
        private: object = rsa_keys[int(other)] if alg == "RS256" else new_ec()
        return asymmetric_key(kid or alg.lower(), private, "test")

    return make


def pair(ring: KeyRing, clock: FrozenClock, **kwargs: Any) -> tuple[TokenIssuer, TokenVerifier]:
    verifier = TokenVerifier(ring, ISSUER, AUDIENCE, LEEWAY, clock, **kwargs)
    return TokenIssuer(ring, ISSUER, AUDIENCE, clock), verifier


def new_ec() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def payload_of(token: str) -> dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: Any, sign: Callable[[bytes], bytes]) -> str:
    """A compact JWS built by hand, so tests can produce tokens PyJWT would refuse to make."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def claims(**overrides: Any) -> dict[str, Any]:
    """Valid admin claims at START; an override of None removes the claim."""
    now = int(START.timestamp())
    base = {"iss": ISSUER, "aud": AUDIENCE, "sub": "usr_9", "iat": now, "nbf": now, "exp": now + TTL}
    base.update(jti="j1", role="admin", scope="*")
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not None}


def signed(key: JwtKey, body: Any, **header: Any) -> str:
    """`body` signed properly by `key`; header entries set to None are dropped."""
    fields = {"kid": key.kid, "typ": "at+jwt", **header}
    headers = {name: value for name, value in fields.items() if value is not None}
    payload = json.dumps(body).encode()
    return jwt.PyJWS().encode(payload, key.sign_with, algorithm=key.alg, headers=headers)


def assert_rejected(verifier: TokenVerifier, token: str, reason: str) -> None:
    with pytest.raises(Unauthenticated) as caught:
        verifier.verify(token)
    assert caught.value.reason == reason, caught.value.message
    if len(token) > 8:
        assert token not in caught.value.message


def pem(key: Any, encryption: Any = None) -> bytes:
    encryption = encryption or serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def write_pem(directory: Path, name: str, key: Any, mtime: float | None = None) -> Path:
    path = directory / f"{name}.pem"
    path.write_bytes(pem(key))
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


# --- round trips and issuing ---------------------------------------------------------------------


@pytest.mark.parametrize("alg", ALGS)
def test_round_trip(alg: str, make_key: MakeKey, clock: FrozenClock) -> None:
    key = make_key(alg)
    issuer, verifier = pair(KeyRing([key], key.kid), clock)
    issued = issuer.issue(CUSTOMER, TTL)

    assert verifier.verify(issued.token) == replace(CUSTOMER, token_id=issued.token_id)
    assert issued.expires_at == START + timedelta(seconds=TTL)
    header = jwt.get_unverified_header(issued.token)
    assert header == {"alg": alg, "kid": key.kid, "typ": "at+jwt"}
    payload = payload_of(issued.token)
    assert payload["scope"] == "accounts:read invoices:read"
    assert payload["iat"] == payload["nbf"] == int(START.timestamp())


def test_optional_claims_are_omitted(make_key: MakeKey, clock: FrozenClock) -> None:
    key = make_key("ES256")
    issuer, verifier = pair(KeyRing([key], key.kid), clock)
    issued = issuer.issue(Principal("svc_1", Role.SERVICE), TTL)

    payload = payload_of(issued.token)
    assert not {"scope", "acct", "sid"} & payload.keys()
    assert verifier.verify(issued.token) == Principal("svc_1", Role.SERVICE, token_id=issued.token_id)
    assert issuer.issue(Principal("svc_1", Role.SERVICE), TTL).token_id != issued.token_id


@pytest.mark.parametrize(
    ("principal", "ttl"),
    [(Principal("usr_1", Role.CUSTOMER), TTL), (Principal("", Role.ADMIN), TTL), (CUSTOMER, 0)],
)
def test_issuer_refuses_bad_principals(
    principal: Principal, ttl: int, make_key: MakeKey, clock: FrozenClock
) -> None:
    key = make_key("HS256")
    with pytest.raises(ValueError, match=r"account_id|subject|ttl"):
        TokenIssuer(KeyRing([key], key.kid), ISSUER, AUDIENCE, clock).issue(principal, ttl)


# --- key ring: loading, JWKS, rotation, development keys ------------------------------------------


def test_jwks_publishes_public_keys_only(tmp_path: Path, rsa_keys: RsaKeys, clock: FrozenClock) -> None:
    write_pem(tmp_path, "rsa-1", rsa_keys[0], mtime=1000)
    write_pem(tmp_path, "ec-1", new_ec(), mtime=2000)
    ring = load_keyring(load_settings(jwt_keys_dir=tmp_path, jwt_hs256_secret=SECRET))

    jwks = ring.jwks()
    assert [k["kid"] for k in jwks["keys"]] == ["ec-1", "rsa-1"]  # signing key (newest) first
    ec_jwk, rsa_jwk = jwks["keys"]
    assert set(ec_jwk) == {"kty", "kid", "alg", "use", "crv", "x", "y"}
    assert (ec_jwk["kty"], ec_jwk["alg"], ec_jwk["use"], ec_jwk["crv"]) == ("EC", "ES256", "sig", "P-256")
    assert set(rsa_jwk) == {"kty", "kid", "alg", "use", "n", "e"}
    assert (rsa_jwk["kty"], rsa_jwk["alg"], rsa_jwk["e"]) == ("RSA", "RS256", "AQAB")
    assert not any("=" in value for jwk in jwks["keys"] for value in jwk.values())
    hs_kid = hs256_key(SECRET.encode()).kid
    assert hs_kid in ring.kids and hs_kid not in {k["kid"] for k in jwks["keys"]}
    assert hs_kid == hs256_key(SECRET.encode()).kid != hs256_key(SECRET.encode() + b"2").kid
    assert hs_kid.startswith("hs-") and len(hs_kid) == 11

    token = TokenIssuer(ring, ISSUER, AUDIENCE, clock).issue(CUSTOMER, TTL).token
    public = jwt.PyJWK(ec_jwk)
    decoded = jwt.decode(token, public, algorithms=["ES256"], audience=AUDIENCE, issuer=ISSUER,
                         options={"verify_exp": False, "verify_iat": False, "verify_nbf": False})  # fmt: skip
    assert decoded["sub"] == "usr_1"


def test_rotation(tmp_path: Path, rsa_keys: RsaKeys, clock: FrozenClock) -> None:
    write_pem(tmp_path, "2021-01", rsa_keys[0], mtime=1000)
    old_ring = load_keyring(load_settings(jwt_keys_dir=tmp_path))
    old_token = TokenIssuer(old_ring, ISSUER, AUDIENCE, clock).issue(CUSTOMER, TTL).token

    write_pem(tmp_path, "2021-02", new_ec(), mtime=2000)
    ring = load_keyring(load_settings(jwt_keys_dir=tmp_path))
    issuer, verifier = pair(ring, clock)
    assert ring.signing_key.kid == "2021-02"
    assert verifier.verify(old_token).subject == "usr_1"
    assert jwt.get_unverified_header(issuer.issue(CUSTOMER, TTL).token)["kid"] == "2021-02"

    pinned = load_keyring(load_settings(jwt_keys_dir=tmp_path, jwt_signing_kid="2021-01"))
    assert jwt.get_unverified_header(pair(pinned, clock)[0].issue(CUSTOMER, TTL).token)["kid"] == "2021-01"

    (tmp_path / "2021-01.pem").unlink()
    _, after_removal = pair(load_keyring(load_settings(jwt_keys_dir=tmp_path)), clock)
    assert_rejected(after_removal, old_token, "TOKEN_KID_UNKNOWN")


def test_same_mtime_is_broken_by_name(tmp_path: Path) -> None:
    for name in ("b", "c", "a"):
        write_pem(tmp_path, name, new_ec(), mtime=1000)
    assert load_keyring(load_settings(jwt_keys_dir=tmp_path)).signing_key.kid == "c"


def test_signing_kid_must_be_loaded(tmp_path: Path) -> None:
    write_pem(tmp_path, "k1", new_ec())
    with pytest.raises(KeyConfigError, match="TALLY_JWT_SIGNING_KID"):
        load_keyring(load_settings(jwt_keys_dir=tmp_path, jwt_signing_kid="k2"))


def test_both_configured_asymmetric_signs(tmp_path: Path, clock: FrozenClock) -> None:
    write_pem(tmp_path, "ec-1", new_ec())
    ring = load_keyring(load_settings(jwt_keys_dir=tmp_path, jwt_hs256_secret=SECRET))
    assert ring.signing_key.alg == "ES256"

    hs = hs256_key(SECRET.encode())
    hs_token = TokenIssuer(KeyRing([hs], hs.kid), ISSUER, AUDIENCE, clock).issue(CUSTOMER, TTL).token
    assert pair(ring, clock)[1].verify(hs_token).subject == "usr_1"


def test_dev_key_generated_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = load_settings(data_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="tally.keys"):
        first = load_keyring(settings)
    (path,) = (tmp_path / "keys").glob("*.pem")
    assert path.name.startswith("dev-") and path.stem == first.signing_key.kid
    assert first.signing_key.alg == "ES256"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    assert f"generated a development signing key at {path}" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tally.keys"):
        second = load_keyring(settings)
    assert second.signing_key.kid == first.signing_key.kid
    assert sorted(os.listdir(tmp_path / "keys")) == [path.name]
    assert caplog.text == ""


def test_production_without_keys_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(KeyConfigError) as caught:
        load_keyring(load_settings(data_dir=tmp_path, environment="production"))
    assert "TALLY_JWT_HS256_SECRET" in str(caught.value) and "TALLY_JWT_KEYS_DIR" in str(caught.value)
    assert not (tmp_path / "keys").exists()
    prod = load_settings(data_dir=tmp_path, environment="production", jwt_hs256_secret=SECRET)
    assert load_keyring(prod).signing_key.alg == "HS256"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        # A deliberately weak key: the loader must refuse it.
        (lambda: pem(rsa.generate_private_key(65537, 1024)), "at least 2048"),  # noqa: S505
        (lambda: pem(ec.generate_private_key(ec.SECP384R1())), "P-256"),
        (lambda: pem(ed25519.Ed25519PrivateKey.generate()), "unsupported key type"),
        (lambda: b"not a key", "not an unencrypted PEM"),
        (lambda: pem(new_ec(), serialization.BestAvailableEncryption(b"pw")), "not an unencrypted PEM"),
    ],
    ids=["rsa-1024", "p-384", "ed25519", "garbage", "encrypted"],
)
def test_unusable_key_files_are_named(tmp_path: Path, content: Callable[[], bytes], message: str) -> None:
    (tmp_path / "bad.pem").write_bytes(content())
    with pytest.raises(KeyConfigError, match=message) as caught:
        load_keyring(load_settings(jwt_keys_dir=tmp_path))
    assert str(tmp_path / "bad.pem") in str(caught.value)


def test_configured_keys_dir_must_hold_keys(tmp_path: Path) -> None:
    with pytest.raises(KeyConfigError, match=r"no \*\.pem"):
        load_keyring(load_settings(jwt_keys_dir=tmp_path))
    with pytest.raises(KeyConfigError, match="not a directory"):
        load_keyring(load_settings(jwt_keys_dir=tmp_path / "missing"))


# --- verification: every way a token is refused -------------------------------------------------


@pytest.fixture
def es_key(make_key: MakeKey) -> JwtKey:
    return make_key("ES256")


@pytest.fixture
def verifier(es_key: JwtKey, clock: FrozenClock) -> TokenVerifier:
    return pair(KeyRing([es_key], es_key.kid), clock)[1]


@pytest.mark.parametrize("alg", ["none", "None", "HS512", "PS256", None])
def test_algorithms_outside_the_allow_list(alg: str | None, es_key: JwtKey, verifier: TokenVerifier) -> None:
    header = {"alg": alg, "kid": es_key.kid, "typ": "at+jwt"}
    assert_rejected(verifier, forge(header, claims(), lambda _: b""), "TOKEN_ALGORITHM")


def test_hs256_with_rsa_public_key_as_secret(make_key: MakeKey, clock: FrozenClock) -> None:
    rsa_key = make_key("RS256")
    public_pem = rsa_key.sign_with.public_key().public_bytes(  # type: ignore[union-attr]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "kid": rsa_key.kid, "typ": "at+jwt"}
    token = forge(header, claims(), lambda data: hmac.new(public_pem, data, hashlib.sha256).digest())
    _, verifier = pair(KeyRing([rsa_key, make_key("HS256")], rsa_key.kid), clock)
    assert_rejected(verifier, token, "TOKEN_ALGORITHM")


@pytest.mark.parametrize(
    ("key_alg", "token_alg"), [("ES256", "RS256"), ("RS256", "ES256"), ("HS256", "ES256")]
)
def test_algorithm_must_be_the_kids(
    key_alg: str, token_alg: str, make_key: MakeKey, clock: FrozenClock
) -> None:
    """A validly signed token whose kid names a key of another algorithm."""
    key = make_key(key_alg)
    _, verifier = pair(KeyRing([key], key.kid), clock)
    assert_rejected(verifier, signed(make_key(token_alg, kid=key.kid), claims()), "TOKEN_ALGORITHM")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (claims(iss="someone-else"), "TOKEN_ISSUER"),
        (claims(iss=[ISSUER]), "TOKEN_ISSUER"),
        (claims(aud="other"), "TOKEN_AUDIENCE"),
        (claims(aud=["other", "more"]), "TOKEN_AUDIENCE"),
        (claims(exp=int(START.timestamp()) - LEEWAY), "TOKEN_EXPIRED"),
        (claims(nbf=int(START.timestamp()) + LEEWAY + 1), "TOKEN_NOT_YET_VALID"),
        (claims(iat=int(START.timestamp()) + LEEWAY + 1, nbf=None), "TOKEN_NOT_YET_VALID"),
        (claims(role="superuser"), "TOKEN_CLAIMS"),
        (claims(role="customer"), "TOKEN_CLAIMS"),
        (claims(exp="tomorrow"), "TOKEN_CLAIMS"),
        (claims(iat=True), "TOKEN_CLAIMS"),
        (claims(exp=10**400), "TOKEN_CLAIMS"),
        (claims(sub=""), "TOKEN_CLAIMS"),
        (claims(scope=["*"]), "TOKEN_CLAIMS"),
        ([1, 2, 3], "TOKEN_MALFORMED"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_bad_claims(body: Any, reason: str, es_key: JwtKey, verifier: TokenVerifier) -> None:
    assert_rejected(verifier, signed(es_key, body), reason)


@pytest.mark.parametrize("missing", ["exp", "iat", "sub", "iss", "aud", "role"])
def test_each_required_claim(missing: str, es_key: JwtKey, verifier: TokenVerifier) -> None:
    assert_rejected(verifier, signed(es_key, claims(**{missing: None})), "TOKEN_CLAIMS")


def test_accepted_claim_variants(es_key: JwtKey, verifier: TokenVerifier) -> None:
    principal = verifier.verify(signed(es_key, claims(aud=["other", AUDIENCE], nbf=None, jti=None)))
    assert principal == Principal("usr_9", Role.ADMIN, frozenset({"*"}))
    customer = verifier.verify(signed(es_key, claims(role="customer", acct="acct_7", scope="")))
    assert (customer.account_id, customer.scopes) == ("acct_7", frozenset())


@pytest.mark.parametrize(("step", "reason"), [(1, "TOKEN_EXPIRED"), (-1, "TOKEN_NOT_YET_VALID")])
def test_clock_and_leeway(step: int, reason: str, es_key: JwtKey, clock: FrozenClock) -> None:
    """Move the clock to the last second the leeway covers (accepted), then one second further."""
    issuer, verifier = pair(KeyRing([es_key], es_key.kid), clock)
    token = issuer.issue(CUSTOMER, TTL).token
    clock.advance(timedelta(seconds=TTL + LEEWAY - 1 if step > 0 else -LEEWAY))
    assert verifier.verify(token).subject == "usr_1"
    clock.advance(timedelta(seconds=step))
    assert_rejected(verifier, token, reason)


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ({"kid": "no-such-key"}, "TOKEN_KID_UNKNOWN"),
        ({"kid": None}, "TOKEN_KID_UNKNOWN"),
        ({"typ": None}, "TOKEN_TYPE"),
        ({"typ": "JWT"}, "TOKEN_TYPE"),
        ({"crit": ["exp"]}, "TOKEN_MALFORMED"),
    ],
)
def test_bad_headers(header: dict[str, Any], reason: str, es_key: JwtKey, verifier: TokenVerifier) -> None:
    assert_rejected(verifier, signed(es_key, claims(), **header), reason)


@pytest.mark.parametrize(
    "token",
    ["", "abc", "a.b.c", "a.b", "...", "e30.e30", random.Random(7).randbytes(64).decode("latin-1"), "ü.ü.ü"],
)
def test_garbage(token: str, verifier: TokenVerifier) -> None:
    assert_rejected(verifier, token, "TOKEN_MALFORMED")


def test_size_cap_is_checked_before_parsing(es_key: JwtKey, clock: FrozenClock) -> None:
    _, verifier = pair(KeyRing([es_key], es_key.kid), clock, max_token_bytes=1024)
    assert_rejected(verifier, "x" * 1025, "TOKEN_TOO_LARGE")
    assert_rejected(verifier, signed(es_key, claims(pad="p" * 1024)), "TOKEN_TOO_LARGE")
    assert verifier.verify(signed(es_key, claims(pad="p" * 100))).subject == "usr_9"


@pytest.mark.parametrize("alg", ALGS)
def test_tampered_payload(alg: str, make_key: MakeKey, clock: FrozenClock) -> None:
    key = make_key(alg)
    issuer, verifier = pair(KeyRing([key], key.kid), clock)
    header, payload, signature = issuer.issue(CUSTOMER, TTL).token.split(".")
    middle = len(payload) // 2
    flipped = payload[:middle] + ("A" if payload[middle] != "A" else "B") + payload[middle + 1 :]
    assert_rejected(verifier, f"{header}.{flipped}.{signature}", "TOKEN_SIGNATURE")


@pytest.mark.parametrize("alg", ALGS)
def test_other_key_with_the_same_kid(alg: str, make_key: MakeKey, clock: FrozenClock) -> None:
    key = make_key(alg)
    impostor = make_key(alg, kid=key.kid, other=True)
    forged = pair(KeyRing([impostor], key.kid), clock)[0].issue(CUSTOMER, TTL).token
    assert_rejected(pair(KeyRing([key], key.kid), clock)[1], forged, "TOKEN_SIGNATURE")


def test_a_remembered_token_still_expires(make_key: MakeKey, clock: FrozenClock) -> None:
    """The verified-token cache skips signature work, never the time checks."""
    key = make_key("ES256")
    issuer, verifier = pair(KeyRing([key], key.kid), clock)
    token = issuer.issue(CUSTOMER, 60).token
    assert verifier.verify(token) == verifier.verify(token)
    clock.advance(timedelta(seconds=60 + LEEWAY))
    with pytest.raises(Unauthenticated) as caught:
        verifier.verify(token)
    assert caught.value.reason == "TOKEN_EXPIRED"


def test_a_tampered_copy_of_a_remembered_token_is_rejected(make_key: MakeKey, clock: FrozenClock) -> None:
    key = make_key("HS256")
    issuer, verifier = pair(KeyRing([key], key.kid), clock)
    token = issuer.issue(CUSTOMER, 60).token
    verifier.verify(token)
    header, payload, signature = token.split(".")
    forged = json.loads(base64.urlsafe_b64decode(payload + "=="))
    forged["role"] = "admin"
    body = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
    with pytest.raises(Unauthenticated) as caught:
        verifier.verify(f"{header}.{body}.{signature}")
    assert caught.value.reason == "TOKEN_SIGNATURE"
