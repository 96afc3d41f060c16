"""SQL for users, service accounts, sessions and refresh tokens: the adapter for
`account_svc.identity.ports.IdentityRepository`. Never commits."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, Index, String, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from account_svc.domain import MAX_DISPLAY_NAME, MAX_EMAIL, email_key
from account_svc.identity.domain import RefreshToken, ServiceAccount, Session, User
from core import ids
from core.db import Base, UtcDateTime
from core.errors import AlreadyExists
from core.pagination import keyset_after
from core.principal import Role


class UserRow(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH), primary_key=True)
    email: Mapped[str] = mapped_column(String(MAX_EMAIL))
    email_key: Mapped[str] = mapped_column(String(MAX_EMAIL), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    account_id: Mapped[str | None] = mapped_column(ForeignKey("accounts.id"))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
    update_time: Mapped[datetime] = mapped_column(UtcDateTime)


class ServiceAccountRow(Base):
    __tablename__ = "service_accounts"

    id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(MAX_DISPLAY_NAME))
    secret_hash: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list[str]] = mapped_column(JSON)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
    delete_time: Mapped[datetime | None] = mapped_column(UtcDateTime)

    __table_args__ = (Index("ix_service_accounts_create_time_id", "create_time", "id"),)


class SessionRow(Base):
    __tablename__ = "auth_sessions"

    id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
    expire_time: Mapped[datetime] = mapped_column(UtcDateTime)
    revoke_time: Mapped[datetime | None] = mapped_column(UtcDateTime)
    revoke_reason: Mapped[str] = mapped_column(String(40))


class RefreshTokenRow(Base):
    __tablename__ = "refresh_tokens"

    id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH), primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("auth_sessions.id"), index=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
    expire_time: Mapped[datetime] = mapped_column(UtcDateTime)
    used_time: Mapped[datetime | None] = mapped_column(UtcDateTime)


def _user(row: UserRow) -> User:
    return User(row.id, row.email, Role(row.role), row.account_id, row.create_time, row.update_time)


def _service_account(row: ServiceAccountRow) -> ServiceAccount:
    return ServiceAccount(row.id, row.display_name, tuple(row.scopes), row.create_time, row.delete_time)


class SqlIdentityRepository:
    def __init__(self, session: AsyncSession):
        self._session = session

    async def add_user(self, user: User, password_hash: str) -> None:
        self._session.add(
            UserRow(
                id=user.id,
                email=user.email,
                email_key=email_key(user.email),
                password_hash=password_hash,
                role=user.role.value,
                account_id=user.account_id,
                create_time=user.create_time,
                update_time=user.update_time,
            )
        )
        try:
            await self._session.flush()
        except IntegrityError as exc:
            raise AlreadyExists(
                "a user with this email already exists",
                reason="EMAIL_TAKEN",
                metadata={"field": "user.email"},
            ) from exc

    async def get_user(self, user_id: str) -> User | None:
        row = await self._session.get(UserRow, user_id)
        return _user(row) if row else None

    async def find_login(self, email: str) -> tuple[User, str] | None:
        row = (
            await self._session.execute(select(UserRow).where(UserRow.email_key == email_key(email)))
        ).scalar_one_or_none()
        return (_user(row), row.password_hash) if row else None

    async def add_service_account(self, account: ServiceAccount, secret_hash: str) -> None:
        self._session.add(
            ServiceAccountRow(
                id=account.id,
                display_name=account.display_name,
                secret_hash=secret_hash,
                scopes=list(account.scopes),
                create_time=account.create_time,
                delete_time=account.delete_time,
            )
        )
        await self._session.flush()

    async def get_service_account(
        self, account_id: str, *, for_update: bool = False
    ) -> tuple[ServiceAccount, str] | None:
        row = await self._session.get(ServiceAccountRow, account_id, with_for_update=for_update)
        return (_service_account(row), row.secret_hash) if row else None

    async def save_service_account(self, account: ServiceAccount) -> None:
        await self._session.execute(
            update(ServiceAccountRow)
            .where(ServiceAccountRow.id == account.id)
            .values(
                display_name=account.display_name,
                scopes=list(account.scopes),
                delete_time=account.delete_time,
            )
        )

    async def list_service_accounts(
        self, *, show_deleted: bool, after: tuple[datetime, str] | None, limit: int
    ) -> list[ServiceAccount]:
        statement = keyset_after(
            select(ServiceAccountRow), ServiceAccountRow.create_time, ServiceAccountRow.id, after
        ).limit(limit)
        if not show_deleted:
            statement = statement.where(ServiceAccountRow.delete_time.is_(None))
        return [_service_account(r) for r in (await self._session.execute(statement)).scalars()]

    async def add_session(self, session: Session, now: datetime) -> None:
        self._session.add(
            SessionRow(
                id=session.id,
                user_id=session.user_id,
                create_time=now,
                expire_time=session.expire_time,
                revoke_time=session.revoke_time,
                revoke_reason="",
            )
        )
        await self._session.flush()

    async def get_session(self, session_id: str) -> Session | None:
        row = await self._session.get(SessionRow, session_id)
        return Session(row.id, row.user_id, row.expire_time, row.revoke_time) if row else None

    async def revoke_session(self, session_id: str, now: datetime, reason: str) -> None:
        await self._session.execute(
            update(SessionRow)
            .where(SessionRow.id == session_id, SessionRow.revoke_time.is_(None))
            .values(revoke_time=now, revoke_reason=reason)
        )

    async def revoke_account_sessions(self, account_id: str, now: datetime, reason: str) -> list[str]:
        """One UPDATE ... RETURNING over the live sessions of every user of the account."""
        users = select(UserRow.id).where(UserRow.account_id == account_id)
        result = await self._session.execute(
            update(SessionRow)
            .where(
                SessionRow.user_id.in_(users),
                SessionRow.revoke_time.is_(None),
                SessionRow.expire_time > now,
            )
            .values(revoke_time=now, revoke_reason=reason)
            .returning(SessionRow.id)
        )
        return list(result.scalars())

    async def add_refresh_token(self, token: RefreshToken, now: datetime) -> None:
        self._session.add(
            RefreshTokenRow(
                id=token.id,
                session_id=token.session_id,
                secret_hash=token.secret_hash,
                create_time=now,
                expire_time=token.expire_time,
                used_time=token.used_time,
            )
        )
        await self._session.flush()

    async def get_refresh_token(self, token_id: str) -> RefreshToken | None:
        row = await self._session.get(RefreshTokenRow, token_id)
        if row is None:
            return None
        return RefreshToken(row.id, row.session_id, row.secret_hash, row.expire_time, row.used_time)

    async def mark_refresh_token_used(self, token_id: str, now: datetime) -> bool:
        """Atomically mark the token used; False if it already was (a replay, or a racing refresh)."""
        result = await self._session.execute(
            update(RefreshTokenRow)
            .where(RefreshTokenRow.id == token_id, RefreshTokenRow.used_time.is_(None))
            .values(used_time=now)
        )
        return int(getattr(result, "rowcount", 0)) == 1
