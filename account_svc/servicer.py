"""gRPC face of the account service: decode the proto, call one use case, encode the reply.

No SQL and no business rules here; errors propagate as core.errors exceptions
and are turned into gRPC statuses by interceptors.errors.
"""

from __future__ import annotations

import grpc
from google.type import postal_address_pb2

from account_svc import use_cases
from account_svc.domain import UPDATABLE_FIELDS, Account, AccountFields, AccountStatus, PostalAddress
from account_svc.use_cases import AccountDeps
from core.errors import InvalidArgument
from core.principal import Caller, caller_for
from tally.account.v1 import account_pb2, account_pb2_grpc

_STATUS_TO_PROTO = {
    AccountStatus.ACTIVE: account_pb2.Account.STATUS_ACTIVE,
    AccountStatus.SUSPENDED: account_pb2.Account.STATUS_SUSPENDED,
}
_STATUS_FROM_PROTO = {value: key for key, value in _STATUS_TO_PROTO.items()}


def address_from_proto(message: postal_address_pb2.PostalAddress) -> PostalAddress:
    return PostalAddress(
        region_code=message.region_code,
        language_code=message.language_code,
        postal_code=message.postal_code,
        sorting_code=message.sorting_code,
        administrative_area=message.administrative_area,
        locality=message.locality,
        sublocality=message.sublocality,
        address_lines=tuple(message.address_lines),
        recipients=tuple(message.recipients),
        organization=message.organization,
    )


def address_to_proto(address: PostalAddress) -> postal_address_pb2.PostalAddress:
    return postal_address_pb2.PostalAddress(
        region_code=address.region_code,
        language_code=address.language_code,
        postal_code=address.postal_code,
        sorting_code=address.sorting_code,
        administrative_area=address.administrative_area,
        locality=address.locality,
        sublocality=address.sublocality,
        address_lines=list(address.address_lines),
        recipients=list(address.recipients),
        organization=address.organization,
    )


def _status_from_proto(value: int) -> AccountStatus | None:
    if value == account_pb2.Account.STATUS_UNSPECIFIED:
        return None
    if value not in _STATUS_FROM_PROTO:
        raise InvalidArgument.field("account.status", f"unknown status value {value}")
    return _STATUS_FROM_PROTO[value]  # type: ignore[index]


def fields_from_proto(message: account_pb2.Account) -> AccountFields:
    return AccountFields(
        display_name=message.display_name,
        email=message.email.strip(),
        phone=message.phone,
        billing_address=address_from_proto(message.billing_address)
        if message.HasField("billing_address")
        else None,
        currency_code=message.currency_code,
        status=_status_from_proto(message.status),
        metadata=dict(message.metadata),
        billing_time_zone=message.billing_time_zone,
    )


def populated_fields(message: account_pb2.Account) -> list[str]:
    """The implied update mask when none is given: every field with a non-default value."""
    present = {descriptor.name for descriptor, _ in message.ListFields()}
    return [name for name in UPDATABLE_FIELDS if name in present]


def account_to_proto(account: Account) -> account_pb2.Account:
    message = account_pb2.Account(
        id=account.id,
        display_name=account.display_name,
        email=account.email,
        phone=account.phone,
        currency_code=account.currency_code,
        billing_time_zone=account.billing_time_zone,
        status=_STATUS_TO_PROTO[account.status],
        metadata=dict(account.metadata),
        etag=account.etag,
    )
    message.create_time.FromDatetime(account.create_time)
    message.update_time.FromDatetime(account.update_time)
    if account.delete_time is not None:
        message.delete_time.FromDatetime(account.delete_time)
    if account.billing_address is not None:
        message.billing_address.CopyFrom(address_to_proto(account.billing_address))
    return message


_SERVICE = account_pb2.DESCRIPTOR.services_by_name["AccountService"].full_name


def _caller(method: str, request_id: str = "") -> Caller:
    return caller_for(f"/{_SERVICE}/{method}", request_id)


class AccountServicer(account_pb2_grpc.AccountServiceServicer):
    def __init__(self, deps: AccountDeps):
        self._deps = deps

    async def CreateAccount(
        self, request: account_pb2.CreateAccountRequest, context: grpc.aio.ServicerContext
    ) -> account_pb2.Account:
        fields = fields_from_proto(request.account)
        account = await use_cases.create_account(
            self._deps, _caller("CreateAccount", request.request_id), fields
        )
        return account_to_proto(account)

    async def GetAccount(
        self, request: account_pb2.GetAccountRequest, context: grpc.aio.ServicerContext
    ) -> account_pb2.Account:
        account = await use_cases.get_account(
            self._deps, _caller("GetAccount"), request.id, show_deleted=request.show_deleted
        )
        return account_to_proto(account)

    async def ListAccounts(
        self, request: account_pb2.ListAccountsRequest, context: grpc.aio.ServicerContext
    ) -> account_pb2.ListAccountsResponse:
        page = await use_cases.list_accounts(
            self._deps,
            _caller("ListAccounts"),
            size=request.page_size,
            page_token=request.page_token,
            filter_text=request.filter,
            show_deleted=request.show_deleted,
        )
        return account_pb2.ListAccountsResponse(
            accounts=[account_to_proto(account) for account in page.accounts],
            next_page_token=page.next_page_token,
        )

    async def UpdateAccount(
        self, request: account_pb2.UpdateAccountRequest, context: grpc.aio.ServicerContext
    ) -> account_pb2.Account:
        mask = list(request.update_mask.paths) if request.HasField("update_mask") else []
        if not mask:
            mask = populated_fields(request.account)
        account = await use_cases.update_account(
            self._deps,
            _caller("UpdateAccount", request.request_id),
            request.account.id,
            fields_from_proto(request.account),
            mask,
            etag=request.account.etag,
        )
        return account_to_proto(account)

    async def DeleteAccount(
        self, request: account_pb2.DeleteAccountRequest, context: grpc.aio.ServicerContext
    ) -> account_pb2.Account:
        account = await use_cases.delete_account(
            self._deps, _caller("DeleteAccount", request.request_id), request.id, etag=request.etag
        )
        return account_to_proto(account)

    async def UndeleteAccount(
        self, request: account_pb2.UndeleteAccountRequest, context: grpc.aio.ServicerContext
    ) -> account_pb2.Account:
        account = await use_cases.undelete_account(
            self._deps, _caller("UndeleteAccount", request.request_id), request.id
        )
        return account_to_proto(account)
