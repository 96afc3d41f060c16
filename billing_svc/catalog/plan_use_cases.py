"""One function per business action on plans. Each owns its transaction through the unit of work.

Versioning: a plan's names (display_name, description) live on the plan and change in place;
its features change in place on its latest version; its terms (every other field) change in
place while no subscription uses the latest version, and otherwise become version n + 1 (with
the latest version's features copied), which new subscriptions get.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from billing_svc.catalog import domain, rules
from billing_svc.catalog.cache_keys import CATALOG_FEATURES, plan_generation
from billing_svc.catalog.domain import PlanFields, PlanTerms, PlanVersion
from billing_svc.catalog.pricing import Percentage
from billing_svc.catalog.unit_of_work import CatalogUnitOfWork
from core import ids
from core.audit import changes_between
from core.cache import Entry, EntryCodec, NoCache, ReadCache
from core.clock import Clock
from core.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound, Violations
from core.idempotency import Codec, IdempotentRunner
from core.pagination import PageTokens
from core.principal import Caller
from core.text import excerpt

PLAN_CODEC = Codec(PlanVersion.to_dict, PlanVersion.from_dict)
_CACHED_PLAN = EntryCodec(PlanVersion.to_dict, PlanVersion.from_dict)


def plan_entry(plan_id: str, version: int) -> Entry[PlanVersion]:
    """GetPlan's entry: one per version asked for (0: the latest), all on the plan's generation."""
    return Entry("plans", f"plan:{plan_id}:{version}", (plan_generation(plan_id),), _CACHED_PLAN)


@dataclass(frozen=True)
class PlanDeps:
    new_uow: Callable[[], CatalogUnitOfWork]
    # Reads that must agree (a plan version and its features): one snapshot per unit of work.
    new_reader: Callable[[], CatalogUnitOfWork]
    clock: Clock  # the wall clock: the catalog keeps infrastructure time, not an account's
    page_tokens: PageTokens
    cache: ReadCache = field(default_factory=NoCache)  # GetPlan reads through it
    runner: IdempotentRunner[CatalogUnitOfWork, PlanVersion] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "runner", IdempotentRunner(self.new_uow, self.clock, codec=PLAN_CODEC))


# The commands: each is a request's content, and so its fingerprint under a request_id (AIP-155).
# The class name is the operation, which scopes request ids: renaming one orphans its stored keys.
# `price_models` names each price's model, which the fields' asdict() form does not.


@dataclass(frozen=True)
class CreatePlan:
    fields: PlanFields
    price_models: tuple[str, ...]


@dataclass(frozen=True)
class UpdatePlan:
    id: str
    fields: PlanFields
    price_models: tuple[str, ...]
    mask: tuple[str, ...]
    immutable: tuple[str, ...]  # immutable fields the mask names: they must keep their value
    etag: str


@dataclass(frozen=True)
class ArchivePlan:
    id: str


@dataclass(frozen=True)
class PlanPage:
    plans: list[PlanVersion]
    next_page_token: str


def plan_not_found(plan_id: str) -> NotFound:
    return NotFound(
        f"plan {excerpt(plan_id)!r} not found", reason="PLAN_NOT_FOUND", metadata={"id": excerpt(plan_id)}
    )


def _require_id(plan_id: str, path: str = "id") -> None:
    if not plan_id:
        raise InvalidArgument.field(path, "is required")


async def _load(uow: CatalogUnitOfWork, plan_id: str) -> PlanVersion:
    plan = await uow.plans.get(plan_id, for_update=True)
    if plan is None:
        raise plan_not_found(plan_id)
    return plan


def _view(plan: PlanVersion | None) -> dict[str, object] | None:
    if plan is None:
        return None
    data = plan.to_dict()
    return {
        name: data[name] for name in data if name not in ("plan_id", "create_time", "update_time", "revision")
    }


async def _audit(
    uow: CatalogUnitOfWork, caller: Caller, action: str, before: PlanVersion | None, after: PlanVersion
) -> None:
    await uow.audit.record(
        caller,
        time=after.update_time,
        resource_type="plan",
        resource_id=after.plan_id,
        action=action,
        changes=changes_between(_view(before), _view(after)),
    )


def _emit(uow: CatalogUnitOfWork, event_type: str, plan: PlanVersion, **extra: object) -> None:
    payload = {"id": plan.plan_id, "code": plan.code, "version": plan.version, **extra}
    uow.emit(event_type, ("plan", plan.plan_id), payload)


async def _check_meters(uow: CatalogUnitOfWork, terms: PlanTerms, *, already_charged: frozenset[str]) -> None:
    """Each metered charge names a meter that exists; one added now (not in `already_charged`)
    must not be archived, and a percentage needs a summing meter."""
    charges = terms.metered_charges
    meters = await uow.meters.get_many([charge.meter_id for charge in charges])
    violations = Violations()
    archived: list[tuple[str, str]] = []
    for index, charge in enumerate(charges):
        path = f"plan.metered_charges[{index}]"
        meter = meters.get(charge.meter_id)
        if meter is None:
            violations.add(f"{path}.meter_id", f"no meter {excerpt(charge.meter_id)!r}")
            continue
        if isinstance(charge.price, Percentage) and (
            problem := rules.percentage_meter_problem(meter.aggregation)
        ):
            violations.add(f"{path}.price.percentage", problem)
        if meter.is_archived and charge.meter_id not in already_charged:
            archived.append((f"{path}.meter_id", meter.id))
    rules.raise_capped(violations)
    if archived:
        path, meter_id = archived[0]
        raise FailedPrecondition(
            f"meter {meter_id!r} is archived: plans cannot start charging for it",
            reason="METER_ARCHIVED",
            metadata={"field": path, "meter_id": meter_id},
        )


async def create_plan(deps: PlanDeps, caller: Caller, fields: PlanFields) -> PlanVersion:
    rules.check_new_plan(fields)
    command = CreatePlan(fields, fields.price_models())

    async def action(uow: CatalogUnitOfWork) -> PlanVersion:
        new = command.fields
        terms = domain.apply_terms(None, new, ())
        await _check_meters(uow, terms, already_charged=frozenset())
        now = deps.clock.now()
        plan = PlanVersion(
            plan_id=ids.new_id(domain.PLAN_PREFIX),
            version=1,
            code=new.code,
            display_name=new.display_name,
            description=new.description,
            currency_code=new.currency_code,
            terms=terms,
            features=tuple(sorted(new.features, key=lambda feature: feature.code)),
            in_use=False,
            create_time=now,
            update_time=now,
            archive_time=None,
            revision=1,
        )
        # No look-up first: the unique constraint on the code refuses a duplicate (PLAN_CODE_TAKEN).
        await uow.plans.add(plan)
        await _audit(uow, caller, "create", None, plan)
        _emit(uow, "plan.created", plan)
        return plan

    return (await deps.runner.run(caller, command, action)).value


async def get_plan(deps: PlanDeps, caller: Caller, plan_id: str, version: int = 0) -> PlanVersion:
    _require_id(plan_id)
    if version < 0:
        raise InvalidArgument.field("version", "must not be negative (0 is the latest version)")

    async def load() -> PlanVersion | None:
        async with deps.new_reader() as uow:
            found = await uow.plans.get(plan_id, version or None)
            if found is None and version and await uow.plans.exists(plan_id):
                raise NotFound(
                    f"plan {plan_id!r} has no version {version}",
                    reason="PLAN_VERSION_NOT_FOUND",
                    metadata={"id": plan_id, "version": str(version)},
                )
        return found

    plan = await deps.cache.read(plan_entry(plan_id, version), load)
    if plan is None:
        raise plan_not_found(plan_id)
    return plan


async def list_plans(
    deps: PlanDeps, caller: Caller, *, size: int = 0, page_token: str = "", show_archived: bool = False
) -> PlanPage:
    page = deps.page_tokens.keyset_page(size, page_token, {"show_archived": show_archived})
    async with deps.new_reader() as uow:
        rows = await uow.plans.list(show_archived=show_archived, after=page.after, limit=page.fetch_limit)
    plans, next_token = page.slice(rows, key=lambda plan: (plan.create_time, plan.plan_id))
    return PlanPage(plans, next_token)


def _check_etag(plan: PlanVersion, etag: str) -> None:
    if etag and etag != plan.etag:
        raise Aborted(
            "the plan changed since this etag was read; read it again and retry",
            reason="ETAG_MISMATCH",
            metadata={"id": plan.plan_id},
        )


async def update_plan(
    deps: PlanDeps,
    caller: Caller,
    plan_id: str,
    fields: PlanFields,
    mask: Sequence[str],
    *,
    etag: str = "",
) -> PlanVersion:
    _require_id(plan_id, "plan.id")
    if not mask:
        # An unset price cannot be told from one being removed, so nothing is implied.
        raise InvalidArgument.field("update_mask", "is required: name the fields to change, or `*`")
    names, immutable = rules.check_mask(
        mask,
        updatable=domain.PLAN_UPDATABLE,
        immutable=domain.PLAN_IMMUTABLE,
        output_only=domain.PLAN_OUTPUT_ONLY,
    )
    rules.check_plan_update(fields, names)
    command = UpdatePlan(plan_id, fields, fields.price_models(), names, immutable, etag)

    async def action(uow: CatalogUnitOfWork) -> PlanVersion:
        current = await _load(uow, command.id)
        _check_etag(current, command.etag)
        for name in command.immutable:
            if getattr(command.fields, name) != getattr(current, name):
                raise rules.immutable_changed(f"plan.{name}")
        return await _apply_update(deps, uow, caller, current, command)

    return (await deps.runner.run(caller, command, action)).value


async def _apply_update(
    deps: PlanDeps, uow: CatalogUnitOfWork, caller: Caller, current: PlanVersion, command: UpdatePlan
) -> PlanVersion:
    new, names = command.fields, command.mask
    terms = domain.apply_terms(current.terms, new, names)
    if terms != current.terms:
        rules.check_terms(terms, current.currency_code)
        charged = frozenset(charge.meter_id for charge in current.terms.metered_charges)
        await _check_meters(uow, terms, already_charged=charged)
    changes = {name: getattr(new, name) for name in domain.PLAN_NAMES if name in names}
    if "features" in names:
        changes["features"] = tuple(sorted(new.features, key=lambda feature: feature.code))
    edited = replace(current, **changes)
    if edited == current and terms == current.terms:
        return current
    now = deps.clock.now()
    revision = current.revision + 1
    features_changed = edited.features != current.features
    # Features change in place: every account's entitlements may depend on them.
    features_generation = (CATALOG_FEATURES,) if features_changed else ()
    uow.invalidate_after_commit(plan_generation(current.plan_id), *features_generation)
    if terms == current.terms or not current.in_use:
        updated = replace(edited, terms=terms, update_time=now, revision=revision)
        await uow.plans.save(updated, terms=terms != current.terms, features=features_changed)
        fields = [name for name in domain.PLAN_UPDATABLE if _differs(name, current, updated)]
        _emit(uow, "plan.updated", updated, fields=fields)
    else:
        # The latest version has subscribers: its terms stay, and the new ones are a new version.
        # Features named in the same request change in place first, like any features update.
        if edited != current:
            in_place = replace(edited, update_time=now, revision=revision)
            await uow.plans.save(in_place, terms=False, features=features_changed)
            fields = [name for name in domain.PLAN_UPDATABLE if _differs(name, current, in_place)]
            _emit(uow, "plan.updated", in_place, fields=fields)
        updated = replace(
            edited, version=current.version + 1, terms=terms, in_use=False, update_time=now, revision=revision
        )
        await uow.plans.add_version(updated)
        _emit(uow, "plan.version_created", updated, previous_version=current.version)
    await _audit(uow, caller, "update", current, updated)
    return updated


def _differs(name: str, before: PlanVersion, after: PlanVersion) -> bool:
    if name in domain.TERMS_FIELDS:
        attribute = "interval" if name == "billing_interval" else name
        return bool(getattr(before.terms, attribute) != getattr(after.terms, attribute))
    return bool(getattr(before, name) != getattr(after, name))


async def archive_plan(deps: PlanDeps, caller: Caller, plan_id: str) -> PlanVersion:
    """Nobody can subscribe to the plan afterwards; its subscriptions continue."""
    _require_id(plan_id)
    command = ArchivePlan(plan_id)

    async def action(uow: CatalogUnitOfWork) -> PlanVersion:
        current = await _load(uow, command.id)
        if current.is_archived:
            return current
        now = deps.clock.now()
        archived = replace(current, archive_time=now, update_time=now, revision=current.revision + 1)
        await uow.plans.save(archived, terms=False, features=False)
        uow.invalidate_after_commit(plan_generation(archived.plan_id))
        await _audit(uow, caller, "archive", current, archived)
        _emit(uow, "plan.archived", archived)
        return archived

    return (await deps.runner.run(caller, command, action)).value
