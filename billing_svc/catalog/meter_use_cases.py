"""One function per business action on meters. Each owns its transaction through the unit of work."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from billing_svc.catalog import domain, rules
from billing_svc.catalog.domain import Meter, MeterFields
from billing_svc.catalog.unit_of_work import CatalogUnitOfWork
from core import ids
from core.audit import changes_between
from core.clock import Clock
from core.errors import Aborted, InvalidArgument, NotFound
from core.idempotency import Codec, IdempotentRunner
from core.pagination import PageTokens
from core.principal import Caller
from core.text import excerpt

METER_CODEC = Codec(Meter.to_dict, Meter.from_dict)
_AUDITED = ("code", "display_name", "unit_label", "aggregation", "property", "archive_time")


@dataclass(frozen=True)
class MeterDeps:
    new_uow: Callable[[], CatalogUnitOfWork]
    new_reader: Callable[[], CatalogUnitOfWork]  # read-only unit of work, for lookups and listings
    clock: Clock  # the wall clock: the catalog keeps infrastructure time, not an account's
    page_tokens: PageTokens
    runner: IdempotentRunner[CatalogUnitOfWork, Meter] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "runner", IdempotentRunner(self.new_uow, self.clock, codec=METER_CODEC))


# The commands: each is a request's content, and so its fingerprint under a request_id (AIP-155).
# The class name is the operation, which scopes request ids: renaming one orphans its stored keys.


@dataclass(frozen=True)
class CreateMeter:
    fields: MeterFields


@dataclass(frozen=True)
class UpdateMeter:
    id: str
    fields: MeterFields
    mask: tuple[str, ...]
    immutable: tuple[str, ...]  # immutable fields the mask names: they must keep their value
    etag: str


@dataclass(frozen=True)
class ArchiveMeter:
    id: str


@dataclass(frozen=True)
class MeterPage:
    meters: list[Meter]
    next_page_token: str


def meter_not_found(meter_id: str) -> NotFound:
    return NotFound(
        f"meter {excerpt(meter_id)!r} not found", reason="METER_NOT_FOUND", metadata={"id": excerpt(meter_id)}
    )


def _require_id(meter_id: str, path: str = "id") -> None:
    if not meter_id:
        raise InvalidArgument.field(path, "is required")


async def _load(uow: CatalogUnitOfWork, meter_id: str) -> Meter:
    meter = await uow.meters.get(meter_id, for_update=True)
    if meter is None:
        raise meter_not_found(meter_id)
    return meter


async def _audit(
    uow: CatalogUnitOfWork, caller: Caller, action: str, before: Meter | None, after: Meter
) -> None:
    def view(meter: Meter | None) -> dict[str, object] | None:
        if meter is None:
            return None
        data = meter.to_dict()
        return {name: data[name] for name in _AUDITED}

    await uow.audit.record(
        caller,
        time=after.update_time,
        resource_type="meter",
        resource_id=after.id,
        action=action,
        changes=changes_between(view(before), view(after)),
    )


def _event(meter: Meter, **extra: object) -> dict[str, object]:
    return {"id": meter.id, "code": meter.code, **extra}


async def create_meter(deps: MeterDeps, caller: Caller, fields: MeterFields) -> Meter:
    rules.check_new_meter(fields)
    command = CreateMeter(fields)

    async def action(uow: CatalogUnitOfWork) -> Meter:
        # No look-up first: the unique constraint on the code refuses a duplicate (METER_CODE_TAKEN),
        # also when two creates race.
        now = deps.clock.now()
        new = command.fields
        assert new.aggregation is not None  # check_new_meter refused a missing one
        meter = Meter(
            id=ids.new_id(domain.METER_PREFIX),
            code=new.code,
            display_name=new.display_name,
            unit_label=new.unit_label,
            aggregation=new.aggregation,
            property=new.property,
            create_time=now,
            update_time=now,
            archive_time=None,
            revision=1,
        )
        await uow.meters.add(meter)
        await _audit(uow, caller, "create", None, meter)
        uow.emit("meter.created", ("meter", meter.id), _event(meter, aggregation=meter.aggregation.value))
        return meter

    return (await deps.runner.run(caller, command, action)).value


async def get_meter(deps: MeterDeps, caller: Caller, meter_id: str) -> Meter:
    _require_id(meter_id)
    async with deps.new_reader() as uow:
        meter = await uow.meters.get(meter_id)
    if meter is None:
        raise meter_not_found(meter_id)
    return meter


async def list_meters(
    deps: MeterDeps, caller: Caller, *, size: int = 0, page_token: str = "", show_archived: bool = False
) -> MeterPage:
    page = deps.page_tokens.keyset_page(size, page_token, {"show_archived": show_archived})
    async with deps.new_reader() as uow:
        rows = await uow.meters.list(show_archived=show_archived, after=page.after, limit=page.fetch_limit)
    meters, next_token = page.slice(rows, key=lambda meter: (meter.create_time, meter.id))
    return MeterPage(meters, next_token)


def _check_etag(meter: Meter, etag: str) -> None:
    if etag and etag != meter.etag:
        raise Aborted(
            "the meter changed since this etag was read; read it again and retry",
            reason="ETAG_MISMATCH",
            metadata={"id": meter.id},
        )


def _check_unchanged(current: Meter, fields: MeterFields, names: Sequence[str]) -> None:
    for name in names:
        value = getattr(fields, name)
        if name == "aggregation" and value is None:
            continue  # unset in the request: nothing asked to change
        if value != getattr(current, name):
            raise rules.immutable_changed(f"meter.{name}")


async def update_meter(
    deps: MeterDeps,
    caller: Caller,
    meter_id: str,
    fields: MeterFields,
    mask: Sequence[str],
    *,
    etag: str = "",
) -> Meter:
    _require_id(meter_id, "meter.id")
    names, immutable = rules.check_mask(
        mask,
        updatable=domain.METER_UPDATABLE,
        immutable=domain.METER_IMMUTABLE,
        output_only=domain.METER_OUTPUT_ONLY,
    )
    if not names and not immutable:
        raise InvalidArgument.field("update_mask", "names no field to update")
    rules.check_meter_update(fields, names)
    command = UpdateMeter(meter_id, fields, names, immutable, etag)

    async def action(uow: CatalogUnitOfWork) -> Meter:
        current = await _load(uow, command.id)
        _check_etag(current, command.etag)
        _check_unchanged(current, command.fields, command.immutable)
        updated = replace(current, **{name: getattr(command.fields, name) for name in command.mask})
        if updated == current:
            return current
        updated = replace(updated, update_time=deps.clock.now(), revision=current.revision + 1)
        await uow.meters.save(updated)
        await _audit(uow, caller, "update", current, updated)
        changed = [name for name in command.mask if getattr(current, name) != getattr(updated, name)]
        uow.emit("meter.updated", ("meter", updated.id), _event(updated, fields=changed))
        return updated

    return (await deps.runner.run(caller, command, action)).value


async def archive_meter(deps: MeterDeps, caller: Caller, meter_id: str) -> Meter:
    """Plans made or changed afterwards cannot charge for the meter; those that do keep it."""
    _require_id(meter_id)
    command = ArchiveMeter(meter_id)

    async def action(uow: CatalogUnitOfWork) -> Meter:
        current = await _load(uow, command.id)
        if current.is_archived:
            return current
        now = deps.clock.now()
        archived = replace(current, archive_time=now, update_time=now, revision=current.revision + 1)
        await uow.meters.save(archived)
        await _audit(uow, caller, "archive", current, archived)
        uow.emit("meter.archived", ("meter", archived.id), _event(archived))
        return archived

    return (await deps.runner.run(caller, command, action)).value
