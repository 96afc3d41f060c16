"""Login, token refresh and logout; users and service accounts. One function per action."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from account_svc.domain import MAX_DISPLAY_NAME, MAX_EMAIL, check_email
from account_svc.identity import domain
from account_svc.identity.domain import PasswordHasher, RefreshToken, ServiceAccount, Session, User
from account_svc.identity.replays import NewServiceAccount, NewServiceAccountCodec
from account_svc.unit_of_work import IdentityUnitOfWork
from core import ids
from core.audit import changes_between
from core.clock import Clock
from core.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Violations,
)
from core.idempotency import Codec, IdempotentRunner
from core.pagination import PageTokens
from core.principal import Caller, Principal, Role, scopes_for
from core.sealing import Sealer
from core.text import excerpt, invisible_problem, text_problem

# Verified against when the email is unknown, so both failures cost the same time.
_DUMMY_PASSWORD = "tally-dummy-password-for-timing"  # noqa: S105 (not a credential)


class IssuedToken(Protocol):
    @property
    def token(self) -> str: ...


class Issuer(Protocol):
    def issue(self, principal: Principal, ttl_seconds: int) -> IssuedToken: ...


@dataclass
class IdentityDeps:
    new_uow: Callable[[], IdentityUnitOfWork]
    new_reader: Callable[[], IdentityUnitOfWork]
    clock: Clock
    passwords: PasswordHasher
    issuer: Issuer
    page_tokens: PageTokens
    # Seals the secret inside CreateServiceAccount's replayable reply (identity/replays.py).
    replay_sealer: Sealer
    # The scopes a service account may be granted: those the served RPCs' policies name.
    known_scopes: frozenset[str]
    access_ttl_seconds: int = 900
    refresh_ttl_seconds: int = 30 * 86_400
    on_session_revoked: Callable[[str], None] = lambda session_id: None
    _dummy_hash: str | None = None
    # One runner per resource, each storing and replaying its own kind.
    users: IdempotentRunner[IdentityUnitOfWork, User] = field(init=False, repr=False)
    service_accounts: IdempotentRunner[IdentityUnitOfWork, ServiceAccount] = field(init=False, repr=False)
    new_service_accounts: IdempotentRunner[IdentityUnitOfWork, NewServiceAccount] = field(
        init=False, repr=False
    )

    def __post_init__(self) -> None:
        self.users = IdempotentRunner(self.new_uow, self.clock, codec=USER_CODEC)
        self.service_accounts = IdempotentRunner(self.new_uow, self.clock, codec=SERVICE_ACCOUNT_CODEC)
        self.new_service_accounts = IdempotentRunner(
            self.new_uow, self.clock, codec=NewServiceAccountCodec(self.replay_sealer)
        )

    def dummy_hash(self) -> str:
        if self._dummy_hash is None:
            self._dummy_hash = self.passwords.hash(_DUMMY_PASSWORD)
        return self._dummy_hash


@dataclass(frozen=True)
class Tokens:
    access_token: str
    expires_in: int
    scope: str
    refresh_token: str = ""
    refresh_expires_in: int = 0


@dataclass(frozen=True)
class ServiceAccountPage:
    service_accounts: list[ServiceAccount]
    next_page_token: str


# The commands: each is a request's content, and so its fingerprint under a request_id (AIP-155).


@dataclass(frozen=True)
class CreateUser:
    email: str
    role: Role
    account_id: str
    # The password is part of what makes a request "the same", but only as a digest.
    password: str


@dataclass(frozen=True)
class CreateServiceAccount:
    display_name: str
    scopes: tuple[str, ...]  # sorted, without repeats


@dataclass(frozen=True)
class DeleteServiceAccount:
    id: str


def _require(violations: Violations, field: str, value: str) -> None:
    if not value:
        violations.add(field, "is required")


def _access_token(deps: IdentityDeps, principal: Principal) -> tuple[str, int]:
    issued = deps.issuer.issue(principal, deps.access_ttl_seconds)
    return issued.token, deps.access_ttl_seconds


def _user_principal(user: User, session_id: str) -> Principal:
    return Principal(
        subject=user.id,
        role=user.role,
        scopes=scopes_for(user.role),
        account_id=user.account_id,
        session_id=session_id,
    )


async def _start_session(deps: IdentityDeps, uow: IdentityUnitOfWork, user: User, now: datetime) -> Tokens:
    session = Session(
        id=ids.new_id(domain.SESSION_PREFIX),
        user_id=user.id,
        expire_time=now + timedelta(seconds=deps.refresh_ttl_seconds),
        revoke_time=None,
    )
    await uow.identity.add_session(session, now)
    refresh = await _new_refresh_token(deps, uow, session, now)
    principal = _user_principal(user, session.id)
    access, expires_in = _access_token(deps, principal)
    return Tokens(access, expires_in, " ".join(sorted(principal.scopes)), refresh, deps.refresh_ttl_seconds)


async def _new_refresh_token(
    deps: IdentityDeps, uow: IdentityUnitOfWork, session: Session, now: datetime
) -> str:
    secret = domain.new_secret()
    token = RefreshToken(
        id=ids.new_id(domain.REFRESH_PREFIX),
        session_id=session.id,
        secret_hash=domain.secret_hash(secret),
        expire_time=min(session.expire_time, now + timedelta(seconds=deps.refresh_ttl_seconds)),
        used_time=None,
    )
    await uow.identity.add_refresh_token(token, now)
    return domain.format_refresh_token(token.id, secret)


async def _audit_session(
    uow: IdentityUnitOfWork, caller: Caller, session_id: str, action: str, now: datetime
) -> None:
    await uow.audit.record(
        caller, time=now, resource_type="session", resource_id=session_id, action=action, changes={}
    )


def _login_failed() -> Unauthenticated:
    return Unauthenticated("the email or the password is wrong", reason="LOGIN_FAILED")


def _session_ended() -> Unauthenticated:
    return Unauthenticated("the session of this refresh token has ended", reason="SESSION_REVOKED")


async def _account_is_live(uow: IdentityUnitOfWork, user: User, *, lock: bool = False) -> bool:
    """True for users of no account (admins) and users of a live one."""
    if user.account_id is None:
        return True
    account = await uow.accounts.get(user.account_id, for_update=lock)
    return account is not None and not account.is_deleted


async def login(deps: IdentityDeps, caller: Caller, email: str, password: str) -> Tokens:
    violations = Violations()
    _require(violations, "email", email)
    _require(violations, "password", password)
    violations.raise_if_any()
    async with deps.new_reader() as reader:
        found = await reader.identity.find_login(email.strip()) if len(email) <= MAX_EMAIL else None
    stored_hash = found[1] if found else deps.dummy_hash()
    ok = await asyncio.to_thread(deps.passwords.verify, stored_hash, password[: domain.MAX_PASSWORD * 4])
    if found is None or not ok:
        raise _login_failed()
    user = found[0]
    async with deps.new_uow() as uow:
        # The user of a deleted account fails as a wrong password does, so nobody learns of the
        # deletion. The account row is locked: a delete (which locks it too, then ends every
        # session) cannot commit between this check and the new session.
        if not await _account_is_live(uow, user, lock=True):
            raise _login_failed()
        now = deps.clock.now()
        tokens = await _start_session(deps, uow, user, now)
        login_caller = Caller(_user_principal(user, ""), caller.method, caller.request_id)
        await _audit_session(uow, login_caller, "login", "login", now)
        await uow.commit()
    return tokens


async def _check_refresh_token(
    uow: IdentityUnitOfWork, raw: str, now: datetime
) -> tuple[RefreshToken, Session]:
    token_id, secret = domain.parse_refresh_token(raw)
    token = await uow.identity.get_refresh_token(token_id)
    if token is None or not domain.secret_matches(secret, token.secret_hash):
        raise Unauthenticated("the refresh token is not valid", reason="REFRESH_TOKEN_INVALID")
    session = await uow.identity.get_session(token.session_id)
    if session is None or session.revoke_time is not None:
        raise _session_ended()
    if token.expire_time <= now or session.expire_time <= now:
        raise Unauthenticated("the refresh token has expired; log in again", reason="REFRESH_TOKEN_EXPIRED")
    return token, session


async def refresh(deps: IdentityDeps, caller: Caller, raw_token: str) -> Tokens:
    if not raw_token:
        raise InvalidArgument.field("refresh_token", "is required")
    reused, user = False, None
    async with deps.new_uow() as uow:
        now = deps.clock.now()
        token, session = await _check_refresh_token(uow, raw_token, now)
        if not await uow.identity.mark_refresh_token_used(token.id, now):
            # A used refresh token came back: it was stolen, or a copy was. End the whole session.
            await uow.identity.revoke_session(session.id, now, "refresh_token_reuse")
            await _audit_session(uow, caller, session.id, "revoke_reused_refresh_token", now)
            uow.after_commit(functools.partial(deps.on_session_revoked, session.id))
            await uow.commit()
            reused = True
        else:
            user = await uow.identity.get_user(session.user_id)
            if user is None:
                raise Unauthenticated("the user of this session no longer exists", reason="SESSION_REVOKED")
            # Deleting an account ends its sessions; this also refuses one that was live before that
            # rule (or raced it), until the account is undeleted.
            if not await _account_is_live(uow, user):
                raise _session_ended()
            new_refresh = await _new_refresh_token(deps, uow, session, now)
            await uow.commit()
    if reused or user is None:
        raise Unauthenticated(
            "this refresh token was already used; the session is ended, log in again",
            reason="REFRESH_TOKEN_REUSED",
        )
    principal = _user_principal(user, session.id)
    access, expires_in = _access_token(deps, principal)
    remaining = int((session.expire_time - now).total_seconds())
    return Tokens(access, expires_in, " ".join(sorted(principal.scopes)), new_refresh, remaining)


async def logout(deps: IdentityDeps, caller: Caller, raw_token: str) -> None:
    if not raw_token:
        raise InvalidArgument.field("refresh_token", "is required")
    async with deps.new_uow() as uow:
        now = deps.clock.now()
        token_id, secret = domain.parse_refresh_token(raw_token)
        token = await uow.identity.get_refresh_token(token_id)
        if token is None or not domain.secret_matches(secret, token.secret_hash):
            raise Unauthenticated("the refresh token is not valid", reason="REFRESH_TOKEN_INVALID")
        await uow.identity.revoke_session(token.session_id, now, "logout")
        await _audit_session(uow, caller, token.session_id, "logout", now)
        uow.after_commit(functools.partial(deps.on_session_revoked, token.session_id))
        await uow.commit()


async def issue_service_token(
    deps: IdentityDeps, caller: Caller, client_id: str, client_secret: str, scopes: list[str]
) -> Tokens:
    violations = Violations()
    _require(violations, "client_id", client_id)
    _require(violations, "client_secret", client_secret)
    violations.raise_if_any()
    async with deps.new_reader() as reader:
        found = (
            await reader.identity.get_service_account(client_id) if len(client_id) <= ids.MAX_LENGTH else None
        )
    if (
        found is None
        or found[0].delete_time is not None
        or not domain.secret_matches(client_secret, found[1])
    ):
        raise Unauthenticated(
            "the client id or the client secret is wrong", reason="CLIENT_CREDENTIALS_INVALID"
        )
    account = found[0]
    not_granted = sorted(set(scopes) - set(account.scopes))
    if not_granted:
        raise PermissionDenied(
            f"scopes not granted to this service account: {excerpt(', '.join(not_granted))}",
            reason="SCOPE_NOT_GRANTED",
            metadata={"scopes": excerpt(" ".join(not_granted))},
        )
    granted = frozenset(scopes or account.scopes)
    principal = Principal(subject=account.id, role=Role.SERVICE, scopes=granted)
    access, expires_in = _access_token(deps, principal)
    return Tokens(access, expires_in, " ".join(sorted(granted)))


def _check_password(violations: Violations, password: str) -> None:
    if not domain.MIN_PASSWORD <= len(password) <= domain.MAX_PASSWORD:
        violations.add("password", f"must be {domain.MIN_PASSWORD} to {domain.MAX_PASSWORD} characters")


async def create_user(
    deps: IdentityDeps, caller: Caller, *, email: str, role: Role | None, account_id: str, password: str
) -> User:
    violations = Violations()
    email = email.strip()
    check_email(violations, "user.email", email)
    if role not in (Role.ADMIN, Role.CUSTOMER):
        violations.add("user.role", "must be ROLE_ADMIN or ROLE_CUSTOMER")
    elif role is Role.CUSTOMER and not account_id:
        violations.add("user.account_id", "is required for customers")
    elif role is Role.ADMIN and account_id:
        violations.add("user.account_id", "must be empty for admins")
    _check_password(violations, password)
    violations.raise_if_any()
    assert role is not None
    command = CreateUser(email, role, account_id, domain.secret_hash(password))
    password_hash = await asyncio.to_thread(deps.passwords.hash, password)

    async def action(uow: IdentityUnitOfWork) -> User:
        if command.account_id:
            account = await uow.accounts.get(command.account_id)
            if account is None or account.is_deleted:
                # The request is well formed; the state it names is not there (409 over REST).
                raise FailedPrecondition(
                    f"user.account_id: no live account {excerpt(command.account_id)!r}",
                    reason="ACCOUNT_NOT_LIVE",
                    metadata={"field": "user.account_id", "account_id": excerpt(command.account_id)},
                )
        now = deps.clock.now()
        user = User(
            ids.new_id(domain.USER_PREFIX), command.email, command.role, command.account_id or None, now, now
        )
        await uow.identity.add_user(user, password_hash)
        view = {"email": user.email, "role": user.role.value, "account_id": user.account_id}
        await uow.audit.record(
            caller,
            time=now,
            resource_type="user",
            resource_id=user.id,
            action="create",
            changes=changes_between(None, view),
        )
        return user

    return (await deps.users.run(caller, command, action)).value


def _user_to_dict(user: User) -> dict[str, object]:
    return {
        "id": user.id,
        "email": user.email,
        "role": user.role.value,
        "account_id": user.account_id,
        "create_time": user.create_time.isoformat(),
        "update_time": user.update_time.isoformat(),
    }


def _user_from_dict(data: Mapping[str, Any]) -> User:
    return User(
        id=str(data["id"]),
        email=str(data["email"]),
        role=Role(str(data["role"])),
        account_id=str(data["account_id"]) if data["account_id"] else None,
        create_time=datetime.fromisoformat(str(data["create_time"])),
        update_time=datetime.fromisoformat(str(data["update_time"])),
    )


USER_CODEC = Codec(_user_to_dict, _user_from_dict)
SERVICE_ACCOUNT_CODEC = Codec(ServiceAccount.to_dict, ServiceAccount.from_dict)


async def get_user(deps: IdentityDeps, user_id: str) -> User:
    if not user_id:
        raise InvalidArgument.field("id", "is required")
    async with deps.new_reader() as reader:
        user = await reader.identity.get_user(user_id) if len(user_id) <= ids.MAX_LENGTH else None
    if user is None:
        raise NotFound(
            f"user {excerpt(user_id)!r} not found", reason="USER_NOT_FOUND", metadata={"id": excerpt(user_id)}
        )
    return user


def _check_scopes(violations: Violations, scopes: list[str], known: frozenset[str]) -> None:
    if not scopes:
        violations.add("service_account.scopes", "must name at least one scope")
    elif len(scopes) > domain.MAX_SCOPES:
        violations.add("service_account.scopes", f"must have at most {domain.MAX_SCOPES} entries")
    scopes = scopes[: domain.MAX_SCOPES]  # name at most that many bad ones
    malformed = domain.invalid_scopes(scopes)
    for bad in malformed:
        violations.add(
            "service_account.scopes",
            f"{excerpt(bad)!r} is not a scope (lower-case words such as accounts:read)",
        )
    for unknown in sorted(set(scopes) - known - set(malformed)):
        violations.add(
            "service_account.scopes", f"{excerpt(unknown)!r} is not a scope any Tally method requires"
        )


async def create_service_account(
    deps: IdentityDeps, caller: Caller, *, display_name: str, scopes: list[str]
) -> tuple[ServiceAccount, str]:
    """The new service account and its secret. A replay (same request_id, within the idempotency
    window) returns the same account and the same secret, which the idempotency record keeps
    sealed under the server's key; the account itself keeps only the secret's hash."""
    violations = Violations()
    if not display_name.strip():
        violations.add("service_account.display_name", "is required")
    elif len(display_name) > MAX_DISPLAY_NAME:
        violations.add("service_account.display_name", f"must be at most {MAX_DISPLAY_NAME} characters")
    elif problem := text_problem(display_name) or invisible_problem(display_name):
        violations.add("service_account.display_name", problem)
    _check_scopes(violations, scopes, deps.known_scopes)
    violations.raise_if_any()
    command = CreateServiceAccount(display_name, tuple(sorted(set(scopes))))
    secret = domain.new_secret()

    async def action(uow: IdentityUnitOfWork) -> NewServiceAccount:
        now = deps.clock.now()
        account = ServiceAccount(
            ids.new_id(domain.SERVICE_ACCOUNT_PREFIX), command.display_name, command.scopes, now, None
        )
        await uow.identity.add_service_account(account, domain.secret_hash(secret))
        await uow.audit.record(
            caller,
            time=now,
            resource_type="service_account",
            resource_id=account.id,
            action="create",
            changes=changes_between(
                None, {"display_name": account.display_name, "scopes": list(account.scopes)}
            ),
        )
        return NewServiceAccount(account, secret)

    created = (await deps.new_service_accounts.run(caller, command, action)).value
    return created.account, created.secret


async def list_service_accounts(
    deps: IdentityDeps, *, size: int = 0, page_token: str = "", show_deleted: bool = False
) -> ServiceAccountPage:
    page = deps.page_tokens.keyset_page(size, page_token, {"show_deleted": show_deleted})
    async with deps.new_reader() as reader:
        rows = await reader.identity.list_service_accounts(
            show_deleted=show_deleted, after=page.after, limit=page.fetch_limit
        )
    accounts, token = page.slice(rows, key=lambda account: (account.create_time, account.id))
    return ServiceAccountPage(accounts, token)


async def delete_service_account(deps: IdentityDeps, caller: Caller, account_id: str) -> ServiceAccount:
    if not account_id:
        raise InvalidArgument.field("id", "is required")
    command = DeleteServiceAccount(account_id)

    async def action(uow: IdentityUnitOfWork) -> ServiceAccount:
        found = (
            await uow.identity.get_service_account(command.id, for_update=True)
            if len(command.id) <= ids.MAX_LENGTH
            else None
        )
        if found is None:
            raise NotFound(
                f"service account {excerpt(command.id)!r} not found", reason="SERVICE_ACCOUNT_NOT_FOUND"
            )
        account = found[0]
        if account.delete_time is not None:
            raise FailedPrecondition(
                f"service account {command.id!r} is already disabled", reason="ALREADY_DISABLED"
            )
        now = deps.clock.now()
        disabled = ServiceAccount(account.id, account.display_name, account.scopes, account.create_time, now)
        await uow.identity.save_service_account(disabled)
        await uow.audit.record(
            caller,
            time=now,
            resource_type="service_account",
            resource_id=account.id,
            action="delete",
            changes=changes_between({"delete_time": None}, {"delete_time": now}),
        )
        return disabled

    return (await deps.service_accounts.run(caller, command, action)).value
