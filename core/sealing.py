"""Small secrets kept at rest under the server's key: AES-256-GCM with a key derived by HKDF.

The server's key is TALLY_SECRET_KEY (or the data directory's generated secret), the one
that signs page tokens. Each use derives its own key from it (HKDF-SHA256, `info` naming the
purpose), so a sealed value of one purpose never opens as another. The associated data binds a
sealed value to where it is stored: moved to another row, it does not open.

A sealed value names the key it was sealed under by a short id derived from that key (not the
key itself), so a value sealed before TALLY_SECRET_KEY changed is told apart from a damaged one.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_FORMAT = "v1"
_NONCE_BYTES = 12


class SealError(Exception):
    """A sealed value does not open: damaged, moved to other associated data, or not one of ours."""


class KeyChanged(SealError):
    """The value was sealed under another server key (TALLY_SECRET_KEY changed since)."""


def _derive(secret: bytes, info: str, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info.encode()).derive(secret)


class Sealer:
    """Seals and opens values for one purpose under one server key."""

    def __init__(self, secret: bytes, purpose: str):
        if len(secret) < 16:
            raise ValueError("the server key must be at least 16 bytes")
        self._aead = AESGCM(_derive(secret, f"tally/{purpose}/aes-256-gcm", 32))
        self.key_id = _derive(secret, f"tally/{purpose}/key-id", 6).hex()

    def __repr__(self) -> str:
        return f"Sealer(key_id={self.key_id!r})"

    def seal(self, plaintext: bytes, associated_data: bytes) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = nonce + self._aead.encrypt(nonce, plaintext, associated_data)
        return f"{_FORMAT}.{self.key_id}.{base64.urlsafe_b64encode(sealed).decode()}"

    def open(self, sealed: str, associated_data: bytes) -> bytes:
        version, _, rest = sealed.partition(".")
        key_id, _, body = rest.partition(".")
        if version != _FORMAT or not body:
            raise SealError("not a sealed value")
        if key_id != self.key_id:
            raise KeyChanged(f"sealed under key {key_id}, the server's key is {self.key_id}")
        try:
            raw = base64.urlsafe_b64decode(body.encode())
            return self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], associated_data)
        except (binascii.Error, ValueError, InvalidTag) as exc:
            raise SealError("the sealed value does not authenticate") from exc


class ServerKey:
    """The server's key, from which each purpose gets a Sealer; never printed."""

    def __init__(self, secret: bytes):
        self._secret = secret

    def __repr__(self) -> str:
        return "ServerKey(...)"

    def sealer(self, purpose: str) -> Sealer:
        return Sealer(self._secret, purpose)
