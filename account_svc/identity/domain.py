"""Identity values and rules. No I/O; password hashing is CPU work behind a small interface."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from core import ids
from core.errors import Unauthenticated
from core.principal import Role

USER_PREFIX = "usr"
SERVICE_ACCOUNT_PREFIX = "svc"
SESSION_PREFIX = "ses"
REFRESH_PREFIX = "rt"
MIN_PASSWORD = 12
MAX_PASSWORD = 128
MAX_SCOPES = 50
SCOPE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_:.-*")


@dataclass(frozen=True)
class User:
    id: str
    email: str
    role: Role
    account_id: str | None
    create_time: datetime
    update_time: datetime


@dataclass(frozen=True)
class ServiceAccount:
    id: str
    display_name: str
    scopes: tuple[str, ...]
    create_time: datetime
    delete_time: datetime | None

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "display_name": self.display_name,
            "scopes": list(self.scopes),
            "create_time": self.create_time.isoformat(),
            "delete_time": self.delete_time.isoformat() if self.delete_time else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServiceAccount:
        delete_time = data["delete_time"]
        return cls(
            id=str(data["id"]),
            display_name=str(data["display_name"]),
            scopes=tuple(data["scopes"]),
            create_time=datetime.fromisoformat(str(data["create_time"])),
            delete_time=datetime.fromisoformat(str(delete_time)) if delete_time else None,
        )


@dataclass(frozen=True)
class RefreshToken:
    id: str
    session_id: str
    secret_hash: str
    expire_time: datetime
    used_time: datetime | None


@dataclass(frozen=True)
class Session:
    id: str
    user_id: str
    expire_time: datetime
    revoke_time: datetime | None


class PasswordHasher(Protocol):
    def hash(self, password: str) -> str: ...

    def verify(self, hashed: str, password: str) -> bool: ...


class Argon2Hasher:
    """argon2id; parameters are argon2-cffi's defaults unless a test asks for cheaper ones."""

    def __init__(self, *, time_cost: int | None = None, memory_cost: int | None = None):
        from argon2 import DEFAULT_MEMORY_COST, DEFAULT_TIME_COST
        from argon2 import PasswordHasher as _Hasher

        self._hasher = _Hasher(
            time_cost=time_cost or DEFAULT_TIME_COST, memory_cost=memory_cost or DEFAULT_MEMORY_COST
        )

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, hashed: str, password: str) -> bool:
        from argon2.exceptions import InvalidHashError, VerificationError

        try:
            return self._hasher.verify(hashed, password)
        except (VerificationError, InvalidHashError):
            return False


def new_secret() -> str:
    """A high-entropy secret; hashed with SHA-256 for storage (no need for a slow hash)."""
    return secrets.token_urlsafe(32)


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(secret_hash(secret), stored_hash)


def format_refresh_token(token_id: str, secret: str) -> str:
    return f"{token_id}.{secret}"


def parse_refresh_token(token: str) -> tuple[str, str]:
    """(token id, secret); UNAUTHENTICATED for anything that is not shaped like ours."""
    token_id, dot, secret = token.partition(".")
    if (
        not dot
        or not token_id.startswith(f"{REFRESH_PREFIX}_")
        or len(token_id) > ids.MAX_LENGTH
        or not token_id.isascii()
        or not secret
        or len(token) > 200
    ):
        raise Unauthenticated("the refresh token is not valid", reason="REFRESH_TOKEN_INVALID")
    return token_id, secret


def invalid_scopes(scopes: list[str] | tuple[str, ...]) -> list[str]:
    return [s for s in scopes if not s or len(s) > 64 or not set(s) <= SCOPE_CHARS]
