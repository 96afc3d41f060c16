"""Access tokens: JWTs issued to a Principal and verified back into one.

Decisions worth knowing:

* Header `typ` is `at+jwt` (RFC 9068), and verification requires it. If the same keys ever sign
  another kind of JWT (an ID token, a refresh token), it cannot be replayed as an access token.
* A token without `kid` is rejected, even when the ring holds a single key: the key is always
  chosen by id, and the header's `alg` must be the algorithm of that key. That one rule stops
  `alg: none` and HS256-signed-with-an-RSA-public-key confusion.
* PyJWT only checks signatures here. Every claim, including the time claims, is checked by this
  module against the injected clock, so tests and simulated clocks see the same rules as production.
"""

from __future__ import annotations

import json
import math
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

import jwt

from account_svc.identity.keys import ALGORITHMS, JwtKey, KeyRing
from core.clock import Clock
from core.errors import Unauthenticated
from core.principal import Principal, Role
from core.settings import Settings

ACCESS_TYP = "at+jwt"
_ACCEPTED_TYPES = frozenset({"at+jwt", "application/at+jwt"})
REQUIRED_CLAIMS = ("exp", "iat", "sub", "iss", "aud", "role")
DEFAULT_MAX_TOKEN_BYTES = 8192
_VERIFIED_CACHE_SIZE = 10_000

# A PyJWS that knows only our three algorithms: anything else cannot even be looked up.
_JWS = jwt.PyJWS(algorithms=sorted(ALGORITHMS))


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_at: datetime
    token_id: str


class TokenIssuer:
    """Signs access tokens with the key ring's signing key; time comes from the clock."""

    def __init__(self, keyring: KeyRing, issuer: str, audience: str, clock: Clock) -> None:
        self._keyring = keyring
        self._issuer = issuer
        self._audience = audience
        self._clock = clock

    @classmethod
    def from_settings(cls, keyring: KeyRing, settings: Settings, clock: Clock) -> TokenIssuer:
        return cls(keyring, settings.jwt_issuer, settings.jwt_audience, clock)

    def issue(self, principal: Principal, ttl_seconds: int) -> IssuedToken:
        """A signed token for `principal`, valid from now for `ttl_seconds`.

        Refuses principals the verifier would reject (a customer without an account), so a bug
        surfaces here rather than as a confusing 401 later.
        """
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        if not principal.subject:
            raise ValueError("principal has no subject")
        if principal.is_customer and not principal.account_id:
            raise ValueError("a customer token needs the principal's account_id")
        issued_at = math.floor(self._clock.now().timestamp())
        expires = issued_at + ttl_seconds
        token_id = secrets.token_urlsafe(16)
        claims = self._claims(principal, issued_at, expires, token_id)
        key = self._keyring.signing_key
        token = _JWS.encode(
            json.dumps(claims, separators=(",", ":")).encode(),
            key.sign_with,
            algorithm=key.alg,
            headers={"kid": key.kid, "typ": ACCESS_TYP},
        )
        return IssuedToken(token, datetime.fromtimestamp(expires, UTC), token_id)

    def _claims(self, principal: Principal, issued_at: int, expires: int, token_id: str) -> dict[str, Any]:
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": principal.subject,
            "iat": issued_at,
            "nbf": issued_at,
            "exp": expires,
            "jti": token_id,
            "role": principal.role.value,
        }
        if principal.scopes:
            claims["scope"] = " ".join(sorted(principal.scopes))
        if principal.account_id:
            claims["acct"] = principal.account_id
        if principal.session_id:
            claims["sid"] = principal.session_id
        return claims


def _reject(reason: str, message: str) -> NoReturn:
    raise Unauthenticated(message, reason=reason)


class TokenVerifier:
    """Turns a bearer token into a Principal, or raises Unauthenticated with an UPPER_SNAKE reason.

    Messages say what is wrong but never repeat the token or values taken from it, since they
    end up in responses and logs.
    """

    def __init__(
        self,
        keyring: KeyRing,
        issuer: str,
        audience: str,
        leeway_seconds: int,
        clock: Clock,
        max_token_bytes: int = DEFAULT_MAX_TOKEN_BYTES,
    ) -> None:
        if leeway_seconds < 0:
            raise ValueError("leeway_seconds must not be negative")
        self._keyring = keyring
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_seconds
        self._clock = clock
        self._max_bytes = max_token_bytes
        # Tokens whose signature and fixed claims already checked out. A client sends the same
        # token on every call until it expires; only the time claims change truth with time, so
        # a hit re-checks those and skips the base64, JSON and signature work.
        self._verified: OrderedDict[str, tuple[dict[str, Any], Principal]] = OrderedDict()

    @classmethod
    def from_settings(cls, keyring: KeyRing, settings: Settings, clock: Clock) -> TokenVerifier:
        return cls(keyring, settings.jwt_issuer, settings.jwt_audience, settings.jwt_leeway_seconds, clock)

    def verify(self, token: str) -> Principal:
        self._check_size(token)
        hit = self._verified.get(token)
        if hit is not None:
            self._verified.move_to_end(token)
            self._check_times(hit[0])
            return hit[1]
        key = self._select_key(token)
        claims = self._verified_claims(token, key)
        self._check_claims(claims)
        principal = _principal(claims)
        self._verified[token] = (claims, principal)
        if len(self._verified) > _VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)
        return principal

    def _check_size(self, token: str) -> None:
        """Before any parsing: a huge header or payload costs base64 and JSON work for nothing."""
        if not isinstance(token, str) or not token:
            _reject("TOKEN_MALFORMED", "the token is empty")
        if len(token) > self._max_bytes:  # a str is never shorter than its UTF-8 encoding
            _reject("TOKEN_TOO_LARGE", f"the token is larger than {self._max_bytes} bytes")
        if not token.isascii():
            _reject("TOKEN_MALFORMED", "the token is not a compact JWS")

    def _select_key(self, token: str) -> JwtKey:
        """The key named by `kid`, after checking `typ` and that `alg` is exactly that key's algorithm."""
        try:
            header = _JWS.get_unverified_header(token)
        except jwt.PyJWTError:
            _reject("TOKEN_MALFORMED", "the token is not a compact JWS")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ALGORITHMS:
            _reject("TOKEN_ALGORITHM", f"the token algorithm is not one of {', '.join(sorted(ALGORITHMS))}")
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in _ACCEPTED_TYPES:
            _reject("TOKEN_TYPE", f"the token is not an access token (typ must be {ACCESS_TYP})")
        kid = header.get("kid")
        if not isinstance(kid, str):
            _reject("TOKEN_KID_UNKNOWN", "the token has no key id (kid)")
        key = self._keyring.get(kid)
        if key is None:
            _reject("TOKEN_KID_UNKNOWN", "the token was signed with an unknown key id (kid)")
        if key.alg != alg:
            _reject("TOKEN_ALGORITHM", "the token algorithm does not match its key")
        return key

    def _verified_claims(self, token: str, key: JwtKey) -> dict[str, Any]:
        try:
            decoded = _JWS.decode_complete(token, key.verify_with, algorithms=[key.alg])
        except jwt.InvalidSignatureError:
            _reject("TOKEN_SIGNATURE", "the token signature is not valid")
        except jwt.PyJWTError:
            _reject("TOKEN_MALFORMED", "the token is not a compact JWS")
        try:
            claims = json.loads(decoded["payload"], parse_constant=_no_constants)
        except (ValueError, RecursionError):
            _reject("TOKEN_MALFORMED", "the token payload is not JSON")
        if not isinstance(claims, dict):
            _reject("TOKEN_MALFORMED", "the token payload is not a JSON object")
        return claims

    def _check_claims(self, claims: dict[str, Any]) -> None:
        missing = [name for name in REQUIRED_CLAIMS if name not in claims]
        if missing:
            _reject("TOKEN_CLAIMS", f"the token lacks required claims: {', '.join(missing)}")
        if claims["iss"] != self._issuer:
            _reject("TOKEN_ISSUER", "the token was not issued by this service")
        if not _audience_matches(claims["aud"], self._audience):
            _reject("TOKEN_AUDIENCE", "the token is not meant for this service")
        self._check_times(claims)

    def _check_times(self, claims: dict[str, Any]) -> None:
        """exp, nbf and iat against the injected clock, each with the configured leeway."""
        now = self._clock.now().timestamp()
        expires, issued_at = _numeric_date(claims, "exp"), _numeric_date(claims, "iat")
        not_before = _numeric_date(claims, "nbf") if "nbf" in claims else None
        if now - self._leeway >= expires:
            _reject("TOKEN_EXPIRED", "the token has expired")
        if not_before is not None and not_before > now + self._leeway:
            _reject("TOKEN_NOT_YET_VALID", "the token is not valid yet (nbf is in the future)")
        if issued_at > now + self._leeway:
            _reject("TOKEN_NOT_YET_VALID", "the token was issued in the future (iat)")


def _no_constants(name: str) -> NoReturn:
    """JSON has no NaN or Infinity; Python's parser accepts them unless told not to."""
    raise ValueError(f"{name} is not valid JSON")


def _audience_matches(aud: object, audience: str) -> bool:
    if isinstance(aud, str):
        return aud == audience
    return isinstance(aud, list) and all(isinstance(a, str) for a in aud) and audience in aud


def _numeric_date(claims: dict[str, Any], name: str) -> float:
    value = claims[name]
    try:
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    except OverflowError:  # an int too large for a float
        pass
    _reject("TOKEN_CLAIMS", f"the {name} claim is not a NumericDate")


def _optional_str(claims: dict[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        _reject("TOKEN_CLAIMS", f"the {name} claim is not a non-empty string")
    return value


def _principal(claims: dict[str, Any]) -> Principal:
    """The Principal a verified token stands for; the claims' shapes are checked here."""
    subject = _optional_str(claims, "sub")
    if subject is None:
        _reject("TOKEN_CLAIMS", "the sub claim is empty")
    try:
        role = Role(claims["role"])
    except ValueError:
        _reject("TOKEN_CLAIMS", "the role claim is not a known role")
    scope = claims.get("scope", "")
    if not isinstance(scope, str):
        _reject("TOKEN_CLAIMS", "the scope claim is not a space-separated string")
    account_id = _optional_str(claims, "acct")
    if role is Role.CUSTOMER and account_id is None:
        _reject("TOKEN_CLAIMS", "a customer token needs an acct claim")
    return Principal(
        subject=subject,
        role=role,
        scopes=frozenset(scope.split()),
        account_id=account_id,
        token_id=_optional_str(claims, "jti"),
        session_id=_optional_str(claims, "sid"),
    )
