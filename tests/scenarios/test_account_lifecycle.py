"""An account over a month of simulated days: its times and its audit trail follow the clock exactly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp

from tally.account.v1 import account_pb2, account_pb2_grpc
from tally.audit.v1 import audit_pb2, audit_pb2_grpc
from tests.scenarios.conftest import DAY_0, Simulation
from tests.support import channel_as, mint

pytestmark = pytest.mark.scenario


def at(stamp: Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


async def test_create_update_delete_undelete_across_simulated_days(simulation: Simulation) -> None:
    accounts = account_pb2_grpc.AccountServiceStub(simulation.channel)
    audit = audit_pb2_grpc.AuditServiceStub(simulation.channel)

    # Day 0: the account opens.
    created = await accounts.CreateAccount(
        account_pb2.CreateAccountRequest(
            account=account_pb2.Account(display_name="Acme", email="ops@acme.test", currency_code="EUR")
        )
    )
    assert at(created.create_time) == at(created.update_time) == DAY_0

    # Day 3: renamed. A retry of the same request an hour later replays the first answer.
    renamed_at = simulation.advance(timedelta(days=3))
    rename = account_pb2.UpdateAccountRequest(
        account=account_pb2.Account(id=created.id, display_name="Acme Corp"),
        update_mask=FieldMask(paths=["display_name"]),
        request_id="rename-1",
    )
    renamed = await accounts.UpdateAccount(rename)
    simulation.advance(timedelta(hours=1))
    assert await accounts.UpdateAccount(rename) == renamed
    assert at(renamed.create_time) == DAY_0
    assert at(renamed.update_time) == renamed_at

    # Day 10: deleted; it keeps its name and its creation time.
    deleted_at = simulation.advance(timedelta(days=7) - timedelta(hours=1))
    deleted = await accounts.DeleteAccount(account_pb2.DeleteAccountRequest(id=created.id))
    assert at(deleted.delete_time) == at(deleted.update_time) == deleted_at
    assert (deleted.display_name, at(deleted.create_time)) == ("Acme Corp", DAY_0)

    # Day 40: undeleted, a month on.
    restored_at = simulation.advance(timedelta(days=30))
    restored = await accounts.UndeleteAccount(account_pb2.UndeleteAccountRequest(id=created.id))
    assert not restored.HasField("delete_time")
    assert at(restored.update_time) == restored_at
    assert at(restored.create_time) == DAY_0
    current = await accounts.GetAccount(account_pb2.GetAccountRequest(id=created.id))
    assert current == restored

    listed = await audit.ListAuditEvents(audit_pb2.ListAuditEventsRequest(resource_id=created.id))
    assert [(e.action, at(e.time)) for e in listed.audit_events] == [
        ("undelete", restored_at),
        ("delete", deleted_at),
        ("update", renamed_at),  # once: the retry was a replay
        ("create", DAY_0),
    ]
    assert dict(listed.audit_events[2].changes) == {"display_name": {"before": "Acme", "after": "Acme Corp"}}


async def test_a_token_minted_before_a_move_expires_with_it(simulation: Simulation) -> None:
    """Why the simulation mints per call: tokens live on the wall clock that the scenario moves."""
    token = mint(simulation.app)  # valid for 10 minutes of simulated time
    async with channel_as(simulation.app, token) as channel:
        accounts = account_pb2_grpc.AccountServiceStub(channel)
        await accounts.ListAccounts(account_pb2.ListAccountsRequest())
        simulation.advance(timedelta(days=1))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await accounts.ListAccounts(account_pb2.ListAccountsRequest())
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
