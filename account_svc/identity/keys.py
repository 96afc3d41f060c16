"""The JWT key ring: which keys sign new access tokens, which are accepted, which are published.

Keys come from Settings:

* `TALLY_JWT_HS256_SECRET`: one shared HS256 secret. It is accepted for verification but never
  published, since anyone holding it can mint tokens.
* `TALLY_JWT_KEYS_DIR`: PEM private keys, one per `*.pem` file (RSA >= 2048 bits for RS256, P-256
  for ES256). The file name without `.pem` is the key id. Every key is accepted and published as
  JWKS, so keys rotate without downtime: add the new file, switch `TALLY_JWT_SIGNING_KID` (or let
  the newest file win), and delete the old file once the tokens it signed have expired.

With neither configured, production refuses to start and development generates an ES256 key under
`<data_dir>/keys` once and reuses it, so local runs keep their tokens valid across restarts.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from core.settings import Settings

Algorithm = Literal["HS256", "RS256", "ES256"]
ALGORITHMS: frozenset[str] = frozenset({"HS256", "RS256", "ES256"})
MIN_RSA_BITS = 2048

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

# Key ids go into token headers, JWKS and log lines: keep them short and boring.
_KID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_CONFIG_HINT = (
    "set TALLY_JWT_HS256_SECRET (32+ bytes) or TALLY_JWT_KEYS_DIR (a directory of PEM private keys)"
)

_log = logging.getLogger("tally.keys")


class KeyConfigError(Exception):
    """The JWT key configuration is unusable; the message names the setting or file to fix."""


@dataclass(frozen=True)
class JwtKey:
    """One key: its id, the one algorithm it may be used with, and the material to sign and verify.

    The material is left out of repr so a key never ends up in a log line or a traceback.
    """

    kid: str
    alg: Algorithm
    sign_with: bytes | PrivateKey = field(repr=False)
    verify_with: bytes | PublicKey = field(repr=False)

    @property
    def is_public(self) -> bool:
        """Asymmetric keys may be published; a shared secret never is."""
        return self.alg != "HS256"

    def public_jwk(self) -> dict[str, str]:
        """The RFC 7517 JWK of the public half, from PyJWT; ValueError for a shared secret."""
        key = self.verify_with
        if isinstance(key, rsa.RSAPublicKey):
            jwk = RSAAlgorithm.to_jwk(key, as_dict=True)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            jwk = ECAlgorithm.to_jwk(key, as_dict=True)
        else:
            raise ValueError(f"key {self.kid} is a shared secret and must not be published")
        jwk.pop("key_ops", None)  # RFC 7517 section 4.3: not together with "use"
        return {
            **{name: str(value) for name, value in jwk.items()},
            "kid": self.kid,
            "alg": self.alg,
            "use": "sig",
        }


def hs256_key(secret: bytes) -> JwtKey:
    """An HS256 key whose id is derived from the secret, so every replica agrees on it.

    The id is a truncated, domain-separated hash: stable across restarts, different when the
    secret rotates, and 32 bits reveal nothing useful about a 32+ byte secret.
    """
    digest = hashlib.sha256(b"tally-jwt-kid\x00" + secret).hexdigest()
    return JwtKey(kid=f"hs-{digest[:8]}", alg="HS256", sign_with=secret, verify_with=secret)


def asymmetric_key(kid: str, private_key: object, source: str) -> JwtKey:
    """Wrap a private key, choosing its algorithm from its type; KeyConfigError names `source`."""
    if not _KID_PATTERN.match(kid):
        raise KeyConfigError(f"{source}: key id {kid!r} must be 1-64 characters of A-Z a-z 0-9 . _ -")
    if isinstance(private_key, rsa.RSAPrivateKey):
        if private_key.key_size < MIN_RSA_BITS:
            raise KeyConfigError(
                f"{source}: RSA key has {private_key.key_size} bits; RS256 needs at least {MIN_RSA_BITS}"
            )
        return JwtKey(kid, "RS256", private_key, private_key.public_key())
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        if not isinstance(private_key.curve, ec.SECP256R1):
            raise KeyConfigError(f"{source}: EC key is on {private_key.curve.name}; ES256 needs P-256")
        return JwtKey(kid, "ES256", private_key, private_key.public_key())
    kind = type(private_key).__name__
    raise KeyConfigError(f"{source}: unsupported key type {kind}; use RSA (2048+ bits) or EC P-256")


class KeyRing:
    """All keys accepted for verification, by kid, and the one that signs new tokens."""

    def __init__(self, keys: Iterable[JwtKey], signing_kid: str) -> None:
        self._keys: dict[str, JwtKey] = {}
        for key in keys:
            if key.kid in self._keys:
                raise KeyConfigError(f"two JWT keys share the key id {key.kid!r}")
            self._keys[key.kid] = key
        if signing_kid not in self._keys:
            known = ", ".join(sorted(self._keys)) or "none"
            raise KeyConfigError(
                f"TALLY_JWT_SIGNING_KID={signing_kid!r} is not a loaded key (loaded: {known})"
            )
        self._signing = self._keys[signing_kid]
        # Signing key first, so clients that take the first key get the current one.
        ordered = sorted(self._keys.values(), key=lambda k: (k is not self._signing, k.kid))
        self._public_jwks = [key.public_jwk() for key in ordered if key.is_public]

    @property
    def signing_key(self) -> JwtKey:
        return self._signing

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(sorted(self._keys))

    def get(self, kid: str) -> JwtKey | None:
        return self._keys.get(kid)

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The public keys as a JWK Set (built once; a fresh copy per call); shared secrets are left out."""
        return {"keys": [dict(jwk) for jwk in self._public_jwks]}


def load_keyring(settings: Settings, *, log: logging.Logger | None = None) -> KeyRing:
    """Build the key ring from settings (see the module docstring for the rules).

    Never prints: a generated development key is reported as a warning on `log`
    (default: the `tally.keys` logger) so the caller's logging setup decides where it goes.
    """
    log = log or _log
    secret = settings.jwt_hs256_secret
    hs = hs256_key(secret.get_secret_value().encode()) if secret is not None else None
    keys_dir = settings.jwt_keys_dir
    if keys_dir is None and hs is None:
        if settings.environment == "production":
            raise KeyConfigError(f"no JWT signing key configured in production: {_CONFIG_HINT}")
        keys_dir = settings.data_dir / "keys"
        if not _pem_files(keys_dir):
            path = generate_dev_key(keys_dir)
            log.warning("generated a development signing key at %s; %s for production", path, _CONFIG_HINT)
    asymmetric = _load_dir(keys_dir) if keys_dir is not None else []
    keys = [key for key, _ in asymmetric] + ([hs] if hs else [])
    return KeyRing(keys, settings.jwt_signing_kid or _default_signing_kid(asymmetric, hs))


def _default_signing_kid(asymmetric: list[tuple[JwtKey, float]], hs: JwtKey | None) -> str:
    """The newest asymmetric key by mtime (ties: the greater name), else the shared secret."""
    if asymmetric:
        return max(asymmetric, key=lambda item: (item[1], item[0].kid))[0].kid
    assert hs is not None  # load_keyring guarantees at least one key source
    return hs.kid


def _pem_files(directory: Path) -> list[Path]:
    """`*.pem` regular files, skipping dotfiles (editor leftovers, our own temporary files)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("*.pem") if not p.name.startswith(".") and p.is_file())


def _load_dir(directory: Path) -> list[tuple[JwtKey, float]]:
    """Every key in the directory with its mtime; a configured but empty directory is an error."""
    if not directory.is_dir():
        raise KeyConfigError(f"TALLY_JWT_KEYS_DIR={directory} is not a directory")
    files = _pem_files(directory)
    if not files:
        raise KeyConfigError(f"TALLY_JWT_KEYS_DIR={directory} contains no *.pem files")
    return [(_load_pem(path), path.stat().st_mtime) for path in files]


def _load_pem(path: Path) -> JwtKey:
    try:
        private_key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, OSError) as exc:
        # TypeError: the key is encrypted. ValueError: not a PEM private key. Neither echoes key bytes.
        raise KeyConfigError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    return asymmetric_key(path.stem, private_key, str(path))


def generate_dev_key(directory: Path) -> Path:
    """Write a new ES256 key as `dev-<random>.pem` (0600) in `directory` (0700); return its path.

    The key is written to a dotfile first and renamed into place, so a crash never leaves a
    half-written `.pem` that would stop the next start.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    name = f"dev-{secrets.token_hex(4)}.pem"
    temporary, path = directory / f".{name}.tmp", directory / name
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path
