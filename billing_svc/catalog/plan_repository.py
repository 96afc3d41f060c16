"""SQL for plans: the adapter for `billing_svc.catalog.ports.PlanRepository`, and the loading that
SqlPlanReader shares. A plan is three tables (plans, plan_versions, plan_features); this module
is the only one that joins them. It never commits.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Row, Select, Table, and_, bindparam, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from billing_svc.catalog.domain import Feature, PlanVersion, terms_from_json, terms_to_json
from billing_svc.catalog.repository import code_taken, unique_code
from billing_svc.catalog.tables import PlanFeatureRow, PlanRow, PlanVersionRow
from core import ids
from core.db import add_all_rows
from core.errors import Aborted
from core.pagination import keyset_after


def _feature(row: PlanFeatureRow) -> Feature:
    return Feature(code=row.code, display_name=row.display_name, enabled=row.enabled, limit=row.limit)


def _to_domain(
    plan: PlanRow | Row[Any], version: PlanVersionRow | Row[Any], features: Sequence[Feature]
) -> PlanVersion:
    return PlanVersion(
        plan_id=plan.id,
        version=version.version,
        code=plan.code,
        display_name=plan.display_name,
        description=plan.description,
        currency_code=plan.currency_code,
        terms=terms_from_json(version.terms),
        features=tuple(sorted(features, key=lambda feature: feature.code)),
        in_use=version.in_use,
        create_time=plan.create_time,
        update_time=version.update_time,
        archive_time=plan.archive_time,
        revision=plan.revision,
    )


def _plan_columns(plan: PlanVersion) -> dict[str, Any]:
    """The plans row of `plan`, id and code aside (neither ever changes)."""
    return {
        "display_name": plan.display_name,
        "description": plan.description,
        "currency_code": plan.currency_code,
        "latest_version": plan.version,
        "create_time": plan.create_time,
        "update_time": plan.update_time,
        "archive_time": plan.archive_time,
        "revision": plan.revision,
    }


def _feature_rows(plan: PlanVersion) -> list[dict[str, Any]]:
    return [
        {
            "plan_id": plan.plan_id,
            "version": plan.version,
            "code": feature.code,
            "display_name": feature.display_name,
            "enabled": feature.enabled,
            "limit": feature.limit,
        }
        for feature in plan.features
    ]


@functools.cache
def _version_statement(latest: bool, lock_plan: bool, lock_version: bool) -> Select[Any]:
    """`load_version`'s statement (parameters plan_id and, unless `latest`, version), built once
    for each variant: Core columns of the three tables, so no ORM object is made for a read
    (the billing worker makes one a renewal)."""
    plans, versions, features = (
        cast(Table, row.__table__) for row in (PlanRow, PlanVersionRow, PlanFeatureRow)
    )
    wanted = plans.c.latest_version if latest else bindparam("version")
    statement = (
        select(
            plans.c.id,
            plans.c.code,
            plans.c.display_name,
            plans.c.description,
            plans.c.currency_code,
            plans.c.create_time,
            plans.c.archive_time,
            plans.c.revision,
            versions.c.version,
            versions.c.terms,
            versions.c.in_use,
            versions.c.update_time,
            features.c.code.label("feature_code"),
            features.c.display_name.label("feature_display_name"),
            features.c.enabled.label("feature_enabled"),
            features.c.limit.label("feature_limit"),
        )
        .select_from(plans)
        .join(versions, and_(versions.c.plan_id == plans.c.id, versions.c.version == wanted))
        .outerjoin(
            features,
            and_(features.c.plan_id == versions.c.plan_id, features.c.version == versions.c.version),
        )
        .where(plans.c.id == bindparam("plan_id"))
    )
    locked = [table for table, lock in ((plans, lock_plan), (versions, lock_version)) if lock]
    return statement.with_for_update(of=locked) if locked else statement


async def load_version(
    session: AsyncSession, plan_id: str, version: int | None, *, lock_plan: bool, lock_version: bool
) -> PlanVersion | None:
    """One version of a plan (the latest when `version` is None) with its features: one query, a
    row per feature (the features joined on the outer side, so a version without any is one row).

    `lock_plan` and `lock_version` take FOR UPDATE on the plans row and the plan_versions row
    (PostgreSQL; SQLite's single writer needs none): UpdatePlan takes both, a subscription that
    is about to use a version takes the version's, so that the two wait for each other. The
    features, on the nullable side of the join, are not locked (PostgreSQL refuses that); they
    change only with their version, under its lock.
    """
    if len(plan_id) > ids.MAX_LENGTH:
        return None  # no such id can exist; the database need not be asked
    statement = _version_statement(version is None, lock_plan, lock_version)
    parameters = {"plan_id": plan_id} if version is None else {"plan_id": plan_id, "version": version}
    found = (await session.execute(statement, parameters)).all()
    if not found:
        return None
    first = found[0]
    features = [
        Feature(
            code=row.feature_code,
            display_name=row.feature_display_name,
            enabled=row.feature_enabled,
            limit=row.feature_limit,
        )
        for row in found
        if row.feature_code is not None
    ]
    return _to_domain(first, first, features)  # the one row holds both tables' columns


async def plan_exists(session: AsyncSession, plan_id: str) -> bool:
    if len(plan_id) > ids.MAX_LENGTH:
        return False
    return (await session.execute(select(PlanRow.id).where(PlanRow.id == plan_id))).first() is not None


class SqlPlanRepository:
    def __init__(self, session: AsyncSession):
        self._session = session

    async def get(
        self, plan_id: str, version: int | None = None, *, for_update: bool = False
    ) -> PlanVersion | None:
        return await load_version(
            self._session, plan_id, version, lock_plan=for_update, lock_version=for_update
        )

    async def exists(self, plan_id: str) -> bool:
        return await plan_exists(self._session, plan_id)

    async def add(self, plan: PlanVersion) -> None:
        self._session.add(PlanRow(id=plan.plan_id, code=plan.code, **_plan_columns(plan)))
        with unique_code("plans", code_taken("plan", "PLAN_CODE_TAKEN", plan.code)):
            await self._session.flush()
        await self._insert_version(plan)

    async def add_version(self, plan: PlanVersion) -> None:
        await self._save_plan(plan)
        await self._insert_version(plan)

    async def save(self, plan: PlanVersion, *, terms: bool, features: bool) -> None:
        await self._save_plan(plan)
        values: dict[str, Any] = {"update_time": plan.update_time}
        statement = update(PlanVersionRow).where(
            PlanVersionRow.plan_id == plan.plan_id, PlanVersionRow.version == plan.version
        )
        if terms:
            # Terms change in place only while no subscription uses the version. The use case
            # read it locked and not in use; this is the guard should anything ever skip the lock.
            values["terms"] = terms_to_json(plan.terms)
            statement = statement.where(PlanVersionRow.in_use.is_(False))
        result = await self._session.execute(
            statement.values(**values).execution_options(synchronize_session=False)
        )
        if int(getattr(result, "rowcount", 0)) != 1:
            raise Aborted(
                "the plan version came into use while it was being changed; retry",
                reason="PLAN_VERSION_IN_USE",
                metadata={"id": plan.plan_id, "version": str(plan.version)},
            )
        if features:
            await self._session.execute(
                delete(PlanFeatureRow).where(
                    PlanFeatureRow.plan_id == plan.plan_id, PlanFeatureRow.version == plan.version
                )
            )
            await add_all_rows(self._session, PlanFeatureRow, _feature_rows(plan))

    async def list(
        self, *, show_archived: bool, after: tuple[datetime, str] | None, limit: int
    ) -> list[PlanVersion]:
        # keyset_after is typed for one-entity selects (Select[Any]); this one selects two.
        latest = cast(
            "Select[Any]",
            select(PlanRow, PlanVersionRow).join(
                PlanVersionRow,
                and_(PlanVersionRow.plan_id == PlanRow.id, PlanVersionRow.version == PlanRow.latest_version),
            ),
        )
        statement = keyset_after(latest, PlanRow.create_time, PlanRow.id, after).limit(limit)
        if not show_archived:
            statement = statement.where(PlanRow.archive_time.is_(None))
        found = [tuple(row) for row in await self._session.execute(statement)]
        if not found:
            return []
        features: defaultdict[tuple[str, int], list[Feature]] = defaultdict(list)
        rows = await self._session.execute(
            select(PlanFeatureRow)
            .join(
                PlanRow,
                and_(PlanRow.id == PlanFeatureRow.plan_id, PlanRow.latest_version == PlanFeatureRow.version),
            )
            .where(PlanRow.id.in_([plan.id for plan, _ in found]))
        )
        for row in rows.scalars():
            features[row.plan_id, row.version].append(_feature(row))
        return [_to_domain(plan, version, features[plan.id, version.version]) for plan, version in found]

    async def _save_plan(self, plan: PlanVersion) -> None:
        result = await self._session.execute(
            update(PlanRow)
            .where(PlanRow.id == plan.plan_id)
            .values(**_plan_columns(plan))
            .execution_options(synchronize_session=False)
        )
        if int(getattr(result, "rowcount", 0)) != 1:
            raise LookupError(plan.plan_id)

    async def _insert_version(self, plan: PlanVersion) -> None:
        await add_all_rows(
            self._session,
            PlanVersionRow,
            [
                {
                    "plan_id": plan.plan_id,
                    "version": plan.version,
                    "terms": terms_to_json(plan.terms),
                    "in_use": plan.in_use,
                    "create_time": plan.update_time,
                    "update_time": plan.update_time,
                }
            ],
        )
        await add_all_rows(self._session, PlanFeatureRow, _feature_rows(plan))
