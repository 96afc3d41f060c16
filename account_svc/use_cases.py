"""One function per business action on accounts. Each owns its transaction through the unit of work."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from account_svc import domain
from account_svc.domain import Account, AccountFields, AccountStatus
from account_svc.repository import email_taken
from account_svc.unit_of_work import AccountsUnitOfWork
from core import ids
from core.clock import Clock
from core.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound
from core.idempotency import run_once
from core.pagination import PageTokens, page_size

_MAX_ID_LENGTH = 64


@dataclass(frozen=True)
class AccountDeps:
    new_uow: Callable[[], AccountsUnitOfWork]
    new_reader: Callable[[], AccountsUnitOfWork]  # read-only unit of work, for lookups and listings
    clock: Clock
    page_tokens: PageTokens


@dataclass(frozen=True)
class AccountPage:
    accounts: list[Account]
    next_page_token: str


def _not_found(account_id: str) -> NotFound:
    return NotFound(
        f"account {account_id!r} not found", reason="ACCOUNT_NOT_FOUND", metadata={"id": account_id}
    )


def _require_id(account_id: str, field: str = "id") -> None:
    if not account_id:
        raise InvalidArgument.field(field, "is required")


async def _load(uow: AccountsUnitOfWork, account_id: str, *, deleted: bool | None = False) -> Account:
    """The account, for update; NOT_FOUND if missing or, with deleted=False/True, in the wrong state."""
    account = None
    if len(account_id) <= _MAX_ID_LENGTH:
        account = await uow.accounts.get(account_id, for_update=True)
    if account is None or (deleted is not None and account.is_deleted != deleted):
        raise _not_found(account_id)
    return account


def _check_etag(account: Account, etag: str) -> None:
    if etag and etag != account.etag:
        raise Aborted(
            "the account changed since this etag was read; read it again and retry",
            reason="ETAG_MISMATCH",
            metadata={"id": account.id},
        )


async def create_account(deps: AccountDeps, fields: AccountFields, *, request_id: str = "") -> Account:
    fields = replace(fields, status=fields.status or AccountStatus.ACTIVE)
    domain.check_fields(fields, domain.UPDATABLE_FIELDS)

    async def action(uow: AccountsUnitOfWork) -> Account:
        # No look-up first: the live-email unique index rejects a duplicate (EMAIL_TAKEN), also
        # when two creates race, and skipping the look-up saves a round trip.
        now = deps.clock.now()
        account = Account(
            id=ids.new_id(domain.ID_PREFIX),
            display_name=fields.display_name,
            email=fields.email,
            phone=fields.phone,
            billing_address=fields.billing_address,
            currency_code=fields.currency_code,
            status=fields.status or AccountStatus.ACTIVE,
            metadata=dict(fields.metadata),
            create_time=now,
            update_time=now,
            delete_time=None,
            revision=1,
        )
        await uow.accounts.add(account)
        return account

    return await run_once(
        deps.new_uow,
        deps.clock,
        scope="CreateAccount",
        request_id=request_id,
        request=fields.as_request(),
        action=action,
        dump=Account.to_dict,
        load=Account.from_dict,
    )


async def get_account(deps: AccountDeps, account_id: str, *, show_deleted: bool = False) -> Account:
    _require_id(account_id)
    async with deps.new_reader() as uow:
        account = await uow.accounts.get(account_id) if len(account_id) <= _MAX_ID_LENGTH else None
    if account is None or (account.is_deleted and not show_deleted):
        raise _not_found(account_id)
    return account


async def list_accounts(
    deps: AccountDeps,
    *,
    size: int = 0,
    page_token: str = "",
    filter_text: str = "",
    show_deleted: bool = False,
) -> AccountPage:
    limit = page_size(size)
    query = domain.parse_filter(filter_text)
    token_scope = {"filter": query.canonical(), "show_deleted": show_deleted}
    after: tuple[datetime, str] | None = None
    if page_token:
        position = deps.page_tokens.decode(page_token, token_scope)
        try:
            after = (datetime.fromisoformat(position["t"]), str(position["i"]))
        except (KeyError, TypeError, ValueError):
            raise InvalidArgument.field("page_token", "is not a page token from this API") from None
    async with deps.new_reader() as uow:
        rows = await uow.accounts.list(query, show_deleted=show_deleted, after=after, limit=limit + 1)
    next_token = ""
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        next_token = deps.page_tokens.encode({"t": last.create_time.isoformat(), "i": last.id}, token_scope)
    return AccountPage(rows, next_token)


async def update_account(
    deps: AccountDeps,
    account_id: str,
    fields: AccountFields,
    mask: Sequence[str],
    *,
    etag: str = "",
    request_id: str = "",
) -> Account:
    _require_id(account_id, "account.id")
    names = domain.check_update_mask(mask)
    if not names:
        raise InvalidArgument.field("update_mask", "names no field to update")
    domain.check_fields(fields, names)

    async def action(uow: AccountsUnitOfWork) -> Account:
        current = await _load(uow, account_id)
        _check_etag(current, etag)
        updated = domain.apply_update(current, fields, names)
        if updated.email_key != current.email_key and await uow.accounts.email_in_use(
            updated.email, excluding=account_id
        ):
            raise email_taken()
        if updated == current:
            return current
        updated = replace(updated, update_time=deps.clock.now(), revision=current.revision + 1)
        await uow.accounts.save(updated)
        return updated

    request = {"id": account_id, "fields": fields.as_request(), "mask": list(names), "etag": etag}
    return await run_once(
        deps.new_uow,
        deps.clock,
        scope="UpdateAccount",
        request_id=request_id,
        request=request,
        action=action,
        dump=Account.to_dict,
        load=Account.from_dict,
    )


async def delete_account(
    deps: AccountDeps, account_id: str, *, etag: str = "", request_id: str = ""
) -> Account:
    _require_id(account_id)

    async def action(uow: AccountsUnitOfWork) -> Account:
        current = await _load(uow, account_id)
        _check_etag(current, etag)
        now = deps.clock.now()
        deleted = replace(current, delete_time=now, update_time=now, revision=current.revision + 1)
        await uow.accounts.save(deleted)
        return deleted

    return await run_once(
        deps.new_uow,
        deps.clock,
        scope="DeleteAccount",
        request_id=request_id,
        request={"id": account_id, "etag": etag},
        action=action,
        dump=Account.to_dict,
        load=Account.from_dict,
    )


async def undelete_account(deps: AccountDeps, account_id: str, *, request_id: str = "") -> Account:
    _require_id(account_id)

    async def action(uow: AccountsUnitOfWork) -> Account:
        current = await _load(uow, account_id, deleted=None)
        if not current.is_deleted:
            raise FailedPrecondition(
                f"account {account_id!r} is not deleted",
                reason="ACCOUNT_NOT_DELETED",
                metadata={"id": account_id},
            )
        if await uow.accounts.email_in_use(current.email, excluding=account_id):
            raise email_taken()
        now = deps.clock.now()
        restored = replace(current, delete_time=None, update_time=now, revision=current.revision + 1)
        await uow.accounts.save(restored)
        return restored

    return await run_once(
        deps.new_uow,
        deps.clock,
        scope="UndeleteAccount",
        request_id=request_id,
        request={"id": account_id},
        action=action,
        dump=Account.to_dict,
        load=Account.from_dict,
    )
