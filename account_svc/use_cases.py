"""One function per business action on accounts. Each owns its transaction through the unit of work."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from account_svc import domain
from account_svc.domain import Account, AccountFields, AccountStatus, email_taken
from account_svc.unit_of_work import AccountsUnitOfWork
from core import ids
from core.audit import changes_between
from core.cache import Entry, EntryCodec, NoCache, ReadCache
from core.clock import Clock
from core.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from core.idempotency import Codec, IdempotentRunner
from core.pagination import PageTokens
from core.principal import Caller
from core.text import excerpt

# What a customer may change on its own account; billing terms (currency, status) are the biller's.
# `email` may be named (a client sending its account back whole) but not changed: see
# _refuse_customer_email_change.
CUSTOMER_WRITABLE = frozenset({"display_name", "email", "phone", "billing_address"})
_AUDITED = (*domain.UPDATABLE_FIELDS, "delete_time")
ACCOUNT_CODEC = Codec(Account.to_dict, Account.from_dict)
_CACHED_ACCOUNT = EntryCodec(Account.to_dict, Account.from_dict)


def account_generation(account_id: str) -> str:
    """The read cache's generation of one account: every write to the account bumps it."""
    return f"account:{account_id}"


def account_entry(account_id: str) -> Entry[Account]:
    return Entry("accounts", f"account:{account_id}", (account_generation(account_id),), _CACHED_ACCOUNT)


@dataclass(frozen=True)
class AccountDeps:
    new_uow: Callable[[], AccountsUnitOfWork]
    new_reader: Callable[[], AccountsUnitOfWork]  # read-only unit of work, for lookups and listings
    clock: Clock
    page_tokens: PageTokens
    # Told, after commit, of each login session that deleting an account ended (the session cache).
    on_session_revoked: Callable[[str], None] = lambda session_id: None
    # GetAccount reads through it, after the caller's access is checked; writes invalidate.
    cache: ReadCache = field(default_factory=NoCache)
    # Every account write runs through this one runner: it stores and replays an Account.
    runner: IdempotentRunner[AccountsUnitOfWork, Account] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "runner", IdempotentRunner(self.new_uow, self.clock, codec=ACCOUNT_CODEC))


# The commands: each is a request's content, and so its fingerprint under a request_id (AIP-155).
# The class name is the operation, which scopes request ids: renaming one orphans its stored keys.


@dataclass(frozen=True)
class CreateAccount:
    fields: AccountFields


@dataclass(frozen=True)
class UpdateAccount:
    id: str
    fields: AccountFields
    mask: tuple[str, ...]
    etag: str


@dataclass(frozen=True)
class DeleteAccount:
    id: str
    etag: str


@dataclass(frozen=True)
class UndeleteAccount:
    id: str


@dataclass(frozen=True)
class AccountPage:
    accounts: list[Account]
    next_page_token: str


def _not_found(account_id: str) -> NotFound:
    return NotFound(
        f"account {excerpt(account_id)!r} not found",
        reason="ACCOUNT_NOT_FOUND",
        metadata={"id": excerpt(account_id)},
    )


def _require_id(account_id: str, field: str = "id") -> None:
    if not account_id:
        raise InvalidArgument.field(field, "is required")


async def _load(uow: AccountsUnitOfWork, account_id: str, *, deleted: bool | None = False) -> Account:
    """The account, for update; NOT_FOUND if missing or, with deleted=False/True, in the wrong state."""
    account = None
    if len(account_id) <= ids.MAX_LENGTH:
        account = await uow.accounts.get(account_id, for_update=True)
    if account is None or (deleted is not None and account.is_deleted != deleted):
        raise _not_found(account_id)
    return account


def _visible(caller: Caller, account_id: str) -> bool:
    """Customers see only their own account; anything else is NOT_FOUND, never PERMISSION_DENIED."""
    own = caller.customer_account
    return own is None or own == account_id


async def _audit(
    uow: AccountsUnitOfWork, caller: Caller, action: str, before: Account | None, after: Account
) -> None:
    def view(account: Account | None) -> dict[str, object] | None:
        if account is None:
            return None
        data = account.to_dict()
        return {name: data[name] for name in _AUDITED}

    await uow.audit.record(
        caller,
        time=after.update_time,
        resource_type="account",
        resource_id=after.id,
        action=action,
        changes=changes_between(view(before), view(after)),
    )


def _field_not_writable(fields: str) -> PermissionDenied:
    return PermissionDenied(
        f"customers cannot change {fields}", reason="FIELD_NOT_WRITABLE", metadata={"fields": fields}
    )


def _refuse_customer_email_change(caller: Caller, current: Account, updated: Account) -> None:
    """A customer's own email change is refused, whatever the address, before anyone looks it up.

    Answering EMAIL_TAKEN would tell a customer which addresses other live accounts use, and
    accepting unverified addresses would let one customer hold another's address (it is
    unique among live accounts). Until a change can be confirmed by mail, billing staff make it.
    """
    if caller.customer_account is not None and updated.email_key != current.email_key:
        raise _field_not_writable("email")


def _check_etag(account: Account, etag: str) -> None:
    if etag and etag != account.etag:
        raise Aborted(
            "the account changed since this etag was read; read it again and retry",
            reason="ETAG_MISMATCH",
            metadata={"id": account.id},
        )


async def create_account(deps: AccountDeps, caller: Caller, fields: AccountFields) -> Account:
    command = CreateAccount(
        replace(
            fields,
            status=fields.status or AccountStatus.ACTIVE,
            billing_time_zone=fields.billing_time_zone or domain.DEFAULT_TIME_ZONE,
        )
    )
    domain.check_fields(command.fields, domain.UPDATABLE_FIELDS)

    async def action(uow: AccountsUnitOfWork) -> Account:
        # No look-up first: the live-email unique index rejects a duplicate (EMAIL_TAKEN), also
        # when two creates race, and skipping the look-up saves a round trip.
        now = deps.clock.now()
        new = command.fields
        account = Account(
            id=ids.new_id(domain.ID_PREFIX),
            display_name=new.display_name,
            email=new.email,
            phone=new.phone,
            billing_address=new.billing_address,
            currency_code=new.currency_code,
            billing_time_zone=new.billing_time_zone,
            status=new.status or AccountStatus.ACTIVE,
            metadata=dict(new.metadata),
            create_time=now,
            update_time=now,
            delete_time=None,
            revision=1,
        )
        await uow.accounts.add(account)
        await _audit(uow, caller, "create", None, account)
        return account

    return (await deps.runner.run(caller, command, action)).value


async def get_account(
    deps: AccountDeps, caller: Caller, account_id: str, *, show_deleted: bool = False
) -> Account:
    _require_id(account_id)
    if not _visible(caller, account_id):
        raise _not_found(account_id)
    account = None
    if len(account_id) <= ids.MAX_LENGTH:

        async def load() -> Account | None:
            async with deps.new_reader() as uow:
                return await uow.accounts.get(account_id)

        # After the visibility check: a customer never reaches another account's entry.
        account = await deps.cache.read(account_entry(account_id), load)
    if account is None or (account.is_deleted and not show_deleted):
        raise _not_found(account_id)
    return account


async def list_accounts(
    deps: AccountDeps,
    caller: Caller,
    *,
    size: int = 0,
    page_token: str = "",
    filter_text: str = "",
    show_deleted: bool = False,
) -> AccountPage:
    query = replace(domain.parse_filter(filter_text), only_id=caller.customer_account)
    token_scope = {"filter": query.canonical(), "show_deleted": show_deleted}
    page = deps.page_tokens.keyset_page(size, page_token, token_scope)
    async with deps.new_reader() as uow:
        rows = await uow.accounts.list(
            query, show_deleted=show_deleted, after=page.after, limit=page.fetch_limit
        )
    accounts, next_token = page.slice(rows, key=lambda account: (account.create_time, account.id))
    return AccountPage(accounts, next_token)


async def update_account(
    deps: AccountDeps,
    caller: Caller,
    account_id: str,
    fields: AccountFields,
    mask: Sequence[str],
    *,
    etag: str = "",
) -> Account:
    _require_id(account_id, "account.id")
    if not _visible(caller, account_id):
        raise _not_found(account_id)
    names = domain.check_update_mask(mask)
    if not names:
        raise InvalidArgument.field("update_mask", "names no field to update")
    if caller.customer_account is not None and not set(names) <= CUSTOMER_WRITABLE:
        raise _field_not_writable(", ".join(sorted(set(names) - CUSTOMER_WRITABLE)))
    domain.check_fields(fields, names)
    command = UpdateAccount(account_id, fields, names, etag)

    async def action(uow: AccountsUnitOfWork) -> Account:
        current = await _load(uow, command.id)
        _check_etag(current, command.etag)
        updated = domain.apply_update(current, command.fields, command.mask)
        _refuse_customer_email_change(caller, current, updated)
        if updated.email_key != current.email_key and await uow.accounts.email_in_use(
            updated.email, excluding=command.id
        ):
            raise email_taken()
        if updated == current:
            return current
        updated = replace(updated, update_time=deps.clock.now(), revision=current.revision + 1)
        await uow.accounts.save(updated)
        uow.invalidate_after_commit(account_generation(updated.id))
        await _audit(uow, caller, "update", current, updated)
        return updated

    return (await deps.runner.run(caller, command, action)).value


async def delete_account(deps: AccountDeps, caller: Caller, account_id: str, *, etag: str = "") -> Account:
    """Soft-deletes the account and ends its users' sessions in the same transaction: their refresh
    and access tokens stop working, and login is refused until the account is undeleted (which
    brings back logins, not the ended sessions)."""
    _require_id(account_id)
    if not _visible(caller, account_id):
        raise _not_found(account_id)

    command = DeleteAccount(account_id, etag)

    async def action(uow: AccountsUnitOfWork) -> Account:
        current = await _load(uow, command.id)
        _check_etag(current, command.etag)
        now = deps.clock.now()
        deleted = replace(current, delete_time=now, update_time=now, revision=current.revision + 1)
        await uow.accounts.save(deleted)
        uow.invalidate_after_commit(account_generation(deleted.id))
        for session_id in await uow.sessions.revoke_account_sessions(current.id, now, "account_deleted"):
            uow.after_commit(functools.partial(deps.on_session_revoked, session_id))
        await _audit(uow, caller, "delete", current, deleted)
        return deleted

    return (await deps.runner.run(caller, command, action)).value


async def undelete_account(deps: AccountDeps, caller: Caller, account_id: str) -> Account:
    _require_id(account_id)
    if not _visible(caller, account_id):
        raise _not_found(account_id)

    command = UndeleteAccount(account_id)

    async def action(uow: AccountsUnitOfWork) -> Account:
        current = await _load(uow, command.id, deleted=None)
        if not current.is_deleted:
            raise FailedPrecondition(
                f"account {command.id!r} is not deleted",
                reason="ACCOUNT_NOT_DELETED",
                metadata={"id": command.id},
            )
        if await uow.accounts.email_in_use(current.email, excluding=command.id):
            raise email_taken()
        now = deps.clock.now()
        restored = replace(current, delete_time=None, update_time=now, revision=current.revision + 1)
        await uow.accounts.save(restored)
        uow.invalidate_after_commit(account_generation(restored.id))
        await _audit(uow, caller, "undelete", current, restored)
        return restored

    return (await deps.runner.run(caller, command, action)).value
