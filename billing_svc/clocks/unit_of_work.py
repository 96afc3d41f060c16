"""The test clock use cases' unit of work, as a protocol: one transaction with the repositories it needs.

Only ports here; the SQL unit of work that fills them is in sql_unit_of_work.py. It is the
subscriptions' unit of work with the clocks on top: an advance hands it to the subscriptions
module's `run_due_work`, so the work and the move of the clock are one transaction.
"""

from __future__ import annotations

from typing import Protocol

from billing_svc.clocks.ports import TestClockRepository
from billing_svc.subscriptions.unit_of_work import SubscriptionsUnitOfWork


class TestClocksUnitOfWork(SubscriptionsUnitOfWork, Protocol):
    """Clocks, and all the subscriptions' work needs (their account directory, request ids and the
    audit log included). Members are read-only properties so that fakes may use their own classes."""

    @property
    def test_clocks(self) -> TestClockRepository: ...
