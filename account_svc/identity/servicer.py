"""gRPC face of AuthService: decode, call one use case, encode."""

from __future__ import annotations

import grpc

from account_svc.identity import use_cases
from account_svc.identity.domain import ServiceAccount, User
from account_svc.identity.use_cases import IdentityDeps, Tokens
from core.principal import Caller, Role, caller_for
from tally.account.v1 import auth_pb2, auth_pb2_grpc

_SERVICE = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
_ROLES = {auth_pb2.User.ROLE_ADMIN: Role.ADMIN, auth_pb2.User.ROLE_CUSTOMER: Role.CUSTOMER}
_ROLES_OUT = {value: key for key, value in _ROLES.items()}


def _caller(method: str, request_id: str = "") -> Caller:
    return caller_for(f"/{_SERVICE}/{method}", request_id)


def _tokens(tokens: Tokens) -> auth_pb2.TokenResponse:
    return auth_pb2.TokenResponse(
        access_token=tokens.access_token,
        token_type="Bearer",  # noqa: S106 (the OAuth2 token type, not a secret)
        expires_in=tokens.expires_in,
        refresh_token=tokens.refresh_token,
        refresh_expires_in=tokens.refresh_expires_in,
        scope=tokens.scope,
    )


def user_to_proto(user: User) -> auth_pb2.User:
    message = auth_pb2.User(
        id=user.id,
        email=user.email,
        role=_ROLES_OUT.get(user.role, auth_pb2.User.ROLE_UNSPECIFIED),
        account_id=user.account_id or "",
    )
    message.create_time.FromDatetime(user.create_time)
    message.update_time.FromDatetime(user.update_time)
    return message


def service_account_to_proto(account: ServiceAccount) -> auth_pb2.ServiceAccount:
    message = auth_pb2.ServiceAccount(
        id=account.id, display_name=account.display_name, scopes=list(account.scopes)
    )
    message.create_time.FromDatetime(account.create_time)
    if account.delete_time is not None:
        message.delete_time.FromDatetime(account.delete_time)
    return message


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, deps: IdentityDeps):
        self._deps = deps

    async def Login(
        self, request: auth_pb2.LoginRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.TokenResponse:
        return _tokens(await use_cases.login(self._deps, _caller("Login"), request.email, request.password))

    async def RefreshToken(
        self, request: auth_pb2.RefreshTokenRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.TokenResponse:
        return _tokens(await use_cases.refresh(self._deps, _caller("RefreshToken"), request.refresh_token))

    async def Logout(
        self, request: auth_pb2.LogoutRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.LogoutResponse:
        await use_cases.logout(self._deps, _caller("Logout"), request.refresh_token)
        return auth_pb2.LogoutResponse()

    async def IssueServiceToken(
        self, request: auth_pb2.IssueServiceTokenRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.TokenResponse:
        tokens = await use_cases.issue_service_token(
            self._deps,
            _caller("IssueServiceToken"),
            request.client_id,
            request.client_secret,
            list(request.scopes),
        )
        return _tokens(tokens)

    async def CreateUser(
        self, request: auth_pb2.CreateUserRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.User:
        user = await use_cases.create_user(
            self._deps,
            _caller("CreateUser", request.request_id),
            email=request.user.email,
            role=_ROLES.get(request.user.role),
            account_id=request.user.account_id,
            password=request.password,
        )
        return user_to_proto(user)

    async def GetUser(
        self, request: auth_pb2.GetUserRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.User:
        return user_to_proto(await use_cases.get_user(self._deps, request.id))

    async def CreateServiceAccount(
        self, request: auth_pb2.CreateServiceAccountRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.CreateServiceAccountResponse:
        account, secret = await use_cases.create_service_account(
            self._deps,
            _caller("CreateServiceAccount", request.request_id),
            display_name=request.service_account.display_name,
            scopes=list(request.service_account.scopes),
        )
        return auth_pb2.CreateServiceAccountResponse(
            service_account=service_account_to_proto(account), client_secret=secret
        )

    async def ListServiceAccounts(
        self, request: auth_pb2.ListServiceAccountsRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.ListServiceAccountsResponse:
        page = await use_cases.list_service_accounts(
            self._deps,
            size=request.page_size,
            page_token=request.page_token,
            show_deleted=request.show_deleted,
        )
        return auth_pb2.ListServiceAccountsResponse(
            service_accounts=[service_account_to_proto(a) for a in page.service_accounts],
            next_page_token=page.next_page_token,
        )

    async def DeleteServiceAccount(
        self, request: auth_pb2.DeleteServiceAccountRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.ServiceAccount:
        account = await use_cases.delete_service_account(
            self._deps, _caller("DeleteServiceAccount", request.request_id), request.id
        )
        return service_account_to_proto(account)
