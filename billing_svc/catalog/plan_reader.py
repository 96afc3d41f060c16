"""Plans as other billing modules read them, on their own transaction's session.

The subscription module reads the version a subscription is billed by, and marks a version in
use when a subscription first takes it, in the same transaction as the subscription: from then
on UpdatePlan makes a new version instead of changing that one's terms.

A version read once in a transaction is remembered for the rest of it (in the session's `info`,
which lives as long as the unit of work's one transaction): a renewal reads the version of the
period it closes for its steps and again for the usage lines of its invoice.
"""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from billing_svc.catalog.domain import PlanVersion
from billing_svc.catalog.plan_repository import load_version
from billing_svc.catalog.tables import PlanVersionRow

_READ = "plan_reader.versions"  # this transaction's versions read, by (plan id, version)


class SqlPlanReader:
    def __init__(self, session: AsyncSession):
        self._session = session

    async def version(
        self, plan_id: str, version: int | None = None, *, lock: bool = False
    ) -> PlanVersion | None:
        """The plan at `version` (the latest when None); None if there is no such plan or version.

        `lock=True` locks the version's row (FOR UPDATE on PostgreSQL) until the caller's
        transaction ends: an UpdatePlan that would change its terms in place waits, and then sees
        it in use. Take it when the transaction may call `mark_in_use`.
        """
        read: dict[tuple[str, int], PlanVersion] = self._session.info.setdefault(_READ, {})
        if version is not None and not lock and (plan_id, version) in read:
            return read[plan_id, version]
        found = await load_version(self._session, plan_id, version, lock_plan=False, lock_version=lock)
        if found is not None:
            read[plan_id, found.version] = found
        return found

    async def mark_in_use(self, plan_id: str, version: int) -> None:
        """From now on (once the caller commits) the version's terms never change. Idempotent:
        a version already in use is left as it is, without writing its row again."""
        self._session.info.get(_READ, {}).pop((plan_id, version), None)
        await self._session.execute(
            update(PlanVersionRow)
            .where(
                PlanVersionRow.plan_id == plan_id,
                PlanVersionRow.version == version,
                PlanVersionRow.in_use.is_(False),
            )
            .values(in_use=True)
            .execution_options(synchronize_session=False)
        )
