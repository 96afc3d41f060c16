"""The account service as the composition root sees it: services, tables, dependencies, servicers.

Serves tally.account.v1 (AccountService, AuthService) and tally.audit.v1 (AuditService). Reads the
override "passwords" (a PasswordHasher) from the platform, which tests use for cheap hashing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import cast

import grpc

from account_svc.audit.servicer import AuditServicer
from account_svc.audit.unit_of_work import SqlAuditReader
from account_svc.audit.use_cases import AuditDeps
from account_svc.identity.domain import Argon2Hasher, PasswordHasher
from account_svc.identity.keys import KeyRing, load_keyring
from account_svc.identity.replays import SEALING_PURPOSE
from account_svc.identity.repository import RefreshTokenRow, ServiceAccountRow, SessionRow, UserRow
from account_svc.identity.servicer import AuthServicer
from account_svc.identity.sessions import SessionCache
from account_svc.identity.tokens import TokenIssuer, TokenVerifier
from account_svc.identity.use_cases import IdentityDeps
from account_svc.repository import AccountRow
from account_svc.servicer import AccountServicer
from account_svc.sql_unit_of_work import SqlAccountsUnitOfWork
from account_svc.use_cases import AccountDeps
from core.modules import Platform, ServiceModule
from tally.account.v1 import account_pb2, account_pb2_grpc, auth_pb2, auth_pb2_grpc
from tally.audit.v1 import audit_pb2, audit_pb2_grpc

log = logging.getLogger("tally.accounts")


@dataclass(frozen=True)
class AccountServices:
    """What the account module built: its use-case dependencies and the identity parts that the
    composition root hands to the auth interceptor, the JWKS endpoint and the CLI."""

    accounts: AccountDeps
    identity: IdentityDeps
    audit: AuditDeps
    sessions: SessionCache
    keyring: KeyRing
    issuer: TokenIssuer
    verifier: TokenVerifier


def build(platform: Platform) -> AccountServices:
    settings, clock = platform.settings, platform.wall_clock
    keyring = load_keyring(settings, log=log)
    passwords = cast(PasswordHasher, platform.overrides.get("passwords") or Argon2Hasher())

    def new_uow() -> SqlAccountsUnitOfWork:
        return SqlAccountsUnitOfWork(platform.writers, clock=clock, cache=platform.cache)

    def new_reader() -> SqlAccountsUnitOfWork:
        return SqlAccountsUnitOfWork(platform.readers, clock=clock)

    def new_audit_reader() -> SqlAuditReader:
        return SqlAuditReader(platform.readers)

    issuer = TokenIssuer.from_settings(keyring, settings, clock)
    sessions = SessionCache(new_reader, clock)
    identity = IdentityDeps(
        new_uow=new_uow,
        new_reader=new_reader,
        clock=clock,
        passwords=passwords,
        issuer=issuer,
        page_tokens=platform.page_tokens,
        replay_sealer=platform.server_key.sealer(SEALING_PURPOSE),
        known_scopes=platform.known_scopes,
        access_ttl_seconds=settings.access_token_ttl_seconds,
        refresh_ttl_seconds=settings.refresh_token_ttl_seconds,
        on_session_revoked=sessions.forget,
    )
    accounts = AccountDeps(
        new_uow=new_uow,
        new_reader=new_reader,
        clock=clock,
        page_tokens=platform.page_tokens,
        on_session_revoked=sessions.forget,
        cache=platform.cache,
    )
    return AccountServices(
        accounts=accounts,
        identity=identity,
        audit=AuditDeps(new_reader=new_audit_reader, page_tokens=platform.page_tokens),
        sessions=sessions,
        keyring=keyring,
        issuer=issuer,
        verifier=TokenVerifier.from_settings(keyring, settings, clock),
    )


def register(server: grpc.aio.Server, services: AccountServices) -> None:
    account_pb2_grpc.add_AccountServiceServicer_to_server(AccountServicer(services.accounts), server)
    auth_pb2_grpc.add_AuthServiceServicer_to_server(AuthServicer(services.identity), server)
    audit_pb2_grpc.add_AuditServiceServicer_to_server(AuditServicer(services.audit), server)


MODULE: ServiceModule[AccountServices] = ServiceModule(
    name="accounts",
    package="account_svc",
    services=(
        account_pb2.DESCRIPTOR.services_by_name["AccountService"],
        auth_pb2.DESCRIPTOR.services_by_name["AuthService"],
        audit_pb2.DESCRIPTOR.services_by_name["AuditService"],
    ),
    models=(AccountRow, UserRow, ServiceAccountRow, SessionRow, RefreshTokenRow),
    build=build,
    register=register,
)
