"""The replayable reply of CreateServiceAccount: the new account and its secret, the secret sealed.

A client that lost the first reply gets the secret by replaying the same request_id within the
idempotency window (24 h). The service account table keeps only the secret's hash; the
idempotency record keeps the secret sealed under the server's key (core.sealing), bound to the
record's scope, request id and the account id, so it opens only as the reply to that request.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from account_svc.identity.domain import ServiceAccount
from core.errors import FailedPrecondition
from core.idempotency import StoredUnder
from core.sealing import KeyChanged, Sealer, SealError

SEALING_PURPOSE = "idempotency-replay"


@dataclass(frozen=True)
class NewServiceAccount:
    account: ServiceAccount
    secret: str


def _associated_data(where: StoredUnder, account_id: str) -> bytes:
    return json.dumps([where.scope, where.key, account_id]).encode()


class NewServiceAccountCodec:
    """Stores the account as it is and the secret sealed; opens the secret again on replay."""

    def __init__(self, sealer: Sealer):
        self._sealer = sealer

    def encode(self, value: NewServiceAccount, where: StoredUnder) -> Mapping[str, Any]:
        sealed = self._sealer.seal(value.secret.encode(), _associated_data(where, value.account.id))
        return {"service_account": value.account.to_dict(), "client_secret_sealed": sealed}

    def decode(self, data: Mapping[str, Any], where: StoredUnder) -> NewServiceAccount:
        account = ServiceAccount.from_dict(data["service_account"])
        sealed = data.get("client_secret_sealed")
        try:
            if not isinstance(sealed, str):
                raise SealError("no sealed secret")
            secret = self._sealer.open(sealed, _associated_data(where, account.id)).decode()
        except KeyChanged:
            raise _unrecoverable(
                account.id,
                "REPLAY_KEY_CHANGED",
                "the server's key (TALLY_SECRET_KEY) changed since the first reply",
            ) from None
        except (SealError, UnicodeDecodeError):
            raise _unrecoverable(
                account.id, "REPLAY_UNREADABLE", "the stored reply does not authenticate"
            ) from None
        return NewServiceAccount(account, secret)


def _unrecoverable(account_id: str, reason: str, why: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"this request_id created service account {account_id!r}, but its client secret cannot be "
        f"shown again: {why}. Delete that service account and create a new one with a new request_id",
        reason=reason,
        metadata={"service_account_id": account_id},
    )
