"""The catalog as the business sees it: meters and plan versions, their rules. No I/O.

Meters say what can be metered and how a period's usage becomes one quantity. A plan version
holds everything a subscription is billed by: its terms (interval, trial, fees, metered charges,
spend bounds) never change once a subscription uses it, so changing them then makes a new
version (see plan_use_cases). Plan terms are stored as JSON (`terms_to_json`), in which every
amount is a decimal string: no JSON number, and so no float, ever holds a price.
"""

from __future__ import annotations

import builtins
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from core.errors import InvalidArgument, Violations
from core.text import excerpt, invisible_problem, text_problem

# Column widths (billing_svc/catalog/tables.py declares its columns with these): checked before any
# query, so no database ever sees a longer value.
MAX_CODE = 64
MAX_DISPLAY_NAME = 200
MAX_UNIT_LABEL = 40
MAX_DESCRIPTION = 2000

METER_PREFIX = "mtr"
PLAN_PREFIX = "plan"
# Meter codes, meter properties, plan codes and feature codes: a lower-case letter, then
# lower-case letters, digits, `_`, `-` or `.`; 1 to 64 characters. ASCII only ([a-z], not \w).
CODE_REGEX = f"^[a-z][a-z0-9_.-]{{0,{MAX_CODE - 1}}}$"
_CODE = re.compile(CODE_REGEX)


def etag_of(*parts: object) -> str:
    return hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:20]


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


# --- text rules ----------------------------------------------------------------------------------


def check_text(
    violations: Violations, path: str, value: str, limit: int, *, required: bool = False, name: bool = False
) -> None:
    """Length, then the text policy; `name` adds the rule for text people compare by eye."""
    if required and not value.strip():
        violations.add(path, "is required")
    elif len(value) > limit:
        violations.add(path, f"must be at most {limit} characters, got {len(value)}")
    elif problem := text_problem(value) or (invisible_problem(value) if name else None):
        violations.add(path, problem)


def check_code(violations: Violations, path: str, value: str) -> None:
    if not value:
        violations.add(path, "is required")
    elif not _CODE.fullmatch(value):
        violations.add(
            path,
            f"{excerpt(value)!r} must be 1 to {MAX_CODE} characters: a lower-case letter, then"
            " lower-case letters, digits, '_', '-' or '.'",
        )


def check_mask(
    paths: Iterable[str],
    *,
    updatable: tuple[str, ...],
    immutable: tuple[str, ...],
    output_only: tuple[str, ...],
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """An update mask resolved to (updatable fields, immutable fields named); `*` means every
    updatable field. Immutable fields may be named (a client sending its resource back whole)
    as long as their value does not change, which the use case checks against the stored one."""
    violations = Violations()
    resolved: list[str] = []
    named_immutable: list[str] = []
    for path in paths:
        if path == "*":
            resolved.extend(updatable)
        elif path in updatable:
            resolved.append(path)
        elif path in immutable:
            named_immutable.append(path)
        elif path in output_only:
            violations.add("update_mask", f"{path!r} is output only and cannot be updated")
        elif path.split(".", 1)[0] in updatable:
            violations.add(
                "update_mask", f"{excerpt(path)!r}: {path.split('.', 1)[0]} is replaced as a whole"
            )
        else:
            violations.add(
                "update_mask", f"unknown field {excerpt(path)!r}; updatable: {', '.join(updatable)}"
            )
    violations.raise_if_any()
    return tuple(dict.fromkeys(resolved)), tuple(dict.fromkeys(named_immutable))


def immutable_changed(path: str) -> InvalidArgument:
    return InvalidArgument.field(path, "cannot change once created", reason="FIELD_IMMUTABLE")


# --- meters --------------------------------------------------------------------------------------


class Aggregation(StrEnum):
    COUNT = "count"
    SUM = "sum"
    MAX = "max"
    UNIQUE_COUNT = "unique_count"
    LATEST = "latest"
    WEIGHTED_SUM = "weighted_sum"


METER_UPDATABLE = ("display_name", "unit_label")
METER_IMMUTABLE = ("code", "aggregation", "property")
METER_OUTPUT_ONLY = ("id", "create_time", "update_time", "archive_time", "etag")


@dataclass(frozen=True)
class MeterFields:
    """What a caller sets on a meter (create, or the masked part of an update)."""

    code: str = ""
    display_name: str = ""
    unit_label: str = ""
    aggregation: Aggregation | None = None
    property: str = ""


@dataclass(frozen=True)
class Meter:
    id: str
    code: str
    display_name: str
    unit_label: str
    aggregation: Aggregation
    property: str  # the event property counted by UNIQUE_COUNT; "" otherwise
    create_time: datetime
    update_time: datetime
    archive_time: datetime | None
    revision: int

    # builtins.property: the field `property` shadows the builtin inside this class.
    @builtins.property
    def etag(self) -> str:
        return etag_of(self.id, self.revision)

    @builtins.property
    def is_archived(self) -> bool:
        return self.archive_time is not None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("create_time", "update_time", "archive_time"):
            data[name] = _time(data[name])
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Meter:
        return cls(
            id=data["id"],
            code=data["code"],
            display_name=data["display_name"],
            unit_label=data["unit_label"],
            aggregation=Aggregation(data["aggregation"]),
            property=data["property"],
            create_time=datetime.fromisoformat(data["create_time"]),
            update_time=datetime.fromisoformat(data["update_time"]),
            archive_time=_parse_time(data["archive_time"]),
            revision=int(data["revision"]),
        )


def check_new_meter(fields: MeterFields, *, prefix: str = "meter") -> None:
    """Every rule of a meter to create, raising one InvalidArgument naming every bad field."""
    violations = Violations()
    check_code(violations, f"{prefix}.code", fields.code)
    _check_meter_names(violations, fields, METER_UPDATABLE, prefix)
    if fields.aggregation is None:
        violations.add(f"{prefix}.aggregation", "is required")
    elif fields.aggregation is Aggregation.UNIQUE_COUNT:
        check_code(violations, f"{prefix}.property", fields.property)
    elif fields.property:
        violations.add(f"{prefix}.property", "is only for AGGREGATION_UNIQUE_COUNT; leave it empty")
    violations.raise_if_any()


def check_meter_update(fields: MeterFields, names: Iterable[str], *, prefix: str = "meter") -> None:
    violations = Violations()
    _check_meter_names(violations, fields, names, prefix)
    violations.raise_if_any()


def _check_meter_names(
    violations: Violations, fields: MeterFields, names: Iterable[str], prefix: str
) -> None:
    for name in names:
        if name == "display_name":
            check_text(
                violations,
                f"{prefix}.display_name",
                fields.display_name,
                MAX_DISPLAY_NAME,
                required=True,
                name=True,
            )
        elif name == "unit_label":
            check_text(violations, f"{prefix}.unit_label", fields.unit_label, MAX_UNIT_LABEL)
