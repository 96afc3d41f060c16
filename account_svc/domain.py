"""Accounts as the business sees them: values, validation rules and the list filter. No I/O."""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zoneinfo
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from functools import cache
from typing import Any

from core import currencies
from core.errors import AlreadyExists, InvalidArgument, Violations
from core.text import excerpt, invisible_problem, text_problem

ID_PREFIX = "acct"
# Column widths (account_svc/repository.py and identity/repository.py declare their columns
# with these): checked before any query, so no database ever sees a longer value.
MAX_DISPLAY_NAME = 200
MAX_TIME_ZONE = 64  # IANA names are at most 30-odd characters; room to spare
DEFAULT_TIME_ZONE = "UTC"  # what an empty billing_time_zone means
MAX_EMAIL = 254  # the email and its email_key (the normalised form, which may be longer)
MAX_FILTER = 1000
MAX_METADATA_ENTRIES = 50
MAX_METADATA_KEY = 40
MAX_METADATA_VALUE = 500
MAX_ADDRESS_LINES = 5
MAX_ADDRESS_FIELD = 200
# The single-line text fields of a postal address: optional, each at most MAX_ADDRESS_FIELD.
ADDRESS_TEXT_FIELDS = (
    "language_code",
    "postal_code",
    "sorting_code",
    "administrative_area",
    "locality",
    "sublocality",
    "organization",
)

_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s.]+(\.[^@\s.]+)+")
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
_REGION = re.compile(r"[A-Z]{2}")


class AccountStatus(StrEnum):
    ACTIVE = "ACTIVE"
    SUSPENDED = "SUSPENDED"


UPDATABLE_FIELDS = (
    "display_name",
    "email",
    "phone",
    "billing_address",
    "currency_code",
    "status",
    "metadata",
    "billing_time_zone",
)
OUTPUT_ONLY_FIELDS = ("id", "create_time", "update_time", "delete_time", "etag")


@dataclass(frozen=True)
class PostalAddress:
    region_code: str = ""
    language_code: str = ""
    postal_code: str = ""
    sorting_code: str = ""
    administrative_area: str = ""
    locality: str = ""
    sublocality: str = ""
    address_lines: tuple[str, ...] = ()
    recipients: tuple[str, ...] = ()
    organization: str = ""


@dataclass(frozen=True)
class AccountFields:
    """What a caller may set on an account (create, or the masked part of an update)."""

    display_name: str = ""
    email: str = ""
    phone: str = ""
    billing_address: PostalAddress | None = None
    currency_code: str = ""
    status: AccountStatus | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    billing_time_zone: str = ""  # empty means DEFAULT_TIME_ZONE


@dataclass(frozen=True)
class Account:
    id: str
    display_name: str
    email: str
    phone: str
    billing_address: PostalAddress | None
    currency_code: str
    billing_time_zone: str  # IANA name
    status: AccountStatus
    metadata: Mapping[str, str]
    create_time: datetime
    update_time: datetime
    delete_time: datetime | None
    revision: int

    @property
    def etag(self) -> str:
        return hashlib.sha256(f"{self.id}:{self.revision}".encode()).hexdigest()[:20]

    @property
    def email_key(self) -> str:
        return email_key(self.email)

    @property
    def is_deleted(self) -> bool:
        return self.delete_time is not None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("create_time", "update_time", "delete_time"):
            value = data[name]
            data[name] = value.isoformat() if value is not None else None
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Account:
        address = data.get("billing_address")
        return cls(
            id=data["id"],
            display_name=data["display_name"],
            email=data["email"],
            phone=data["phone"],
            billing_address=address_from_dict(address) if address else None,
            currency_code=data["currency_code"],
            # Responses stored under a request id before the field existed lack it.
            billing_time_zone=data.get("billing_time_zone", DEFAULT_TIME_ZONE),
            status=AccountStatus(data["status"]),
            metadata=dict(data["metadata"]),
            create_time=datetime.fromisoformat(data["create_time"]),
            update_time=datetime.fromisoformat(data["update_time"]),
            delete_time=datetime.fromisoformat(data["delete_time"]) if data["delete_time"] else None,
            revision=int(data["revision"]),
        )


def address_from_dict(data: Mapping[str, Any]) -> PostalAddress:
    return PostalAddress(
        **{
            **data,
            "address_lines": tuple(data.get("address_lines", ())),
            "recipients": tuple(data.get("recipients", ())),
        }
    )


def address_to_dict(address: PostalAddress) -> dict[str, Any]:
    data = asdict(address)
    data["address_lines"] = list(address.address_lines)
    data["recipients"] = list(address.recipients)
    return data


def email_key(email: str) -> str:
    """The form in which emails are compared: case-insensitive, Unicode-normalised."""
    return unicodedata.normalize("NFKC", email).casefold()


def email_taken() -> AlreadyExists:
    """Another live account has this email (compared by `email_key`)."""
    return AlreadyExists(
        "another live account already uses this email address",
        reason="EMAIL_TAKEN",
        metadata={"field": "account.email"},
    )


def _check_text(
    violations: Violations, path: str, value: str, limit: int, *, required: bool, name: bool = False
) -> None:
    """Length, then the text policy; `name` adds the rule for text people compare by eye."""
    if required and not value.strip():
        violations.add(path, "is required")
    elif len(value) > limit:
        violations.add(path, f"must be at most {limit} characters, got {len(value)}")
    elif problem := text_problem(value) or (invisible_problem(value) if name else None):
        violations.add(path, problem)


def _check_address(violations: Violations, path: str, address: PostalAddress) -> None:
    if not _REGION.fullmatch(address.region_code):
        violations.add(f"{path}.region_code", "must be a two-letter CLDR region code such as US or DE")
    for name in ADDRESS_TEXT_FIELDS:
        _check_text(violations, f"{path}.{name}", getattr(address, name), MAX_ADDRESS_FIELD, required=False)
    for name in ("address_lines", "recipients"):
        lines = getattr(address, name)
        if len(lines) > MAX_ADDRESS_LINES:
            violations.add(f"{path}.{name}", f"must have at most {MAX_ADDRESS_LINES} entries")
        for index, line in enumerate(lines):
            _check_text(violations, f"{path}.{name}[{index}]", line, MAX_ADDRESS_FIELD, required=False)


def _check_metadata(violations: Violations, path: str, metadata: Mapping[str, str]) -> None:
    if len(metadata) > MAX_METADATA_ENTRIES:
        violations.add(path, f"must have at most {MAX_METADATA_ENTRIES} entries, got {len(metadata)}")
        return
    for key, value in metadata.items():
        entry = f"{path}[{excerpt(key)!r}]"
        if not 1 <= len(key) <= MAX_METADATA_KEY or text_problem(key):
            violations.add(entry, f"keys must be 1 to {MAX_METADATA_KEY} printable characters")
        elif len(value) > MAX_METADATA_VALUE:
            violations.add(entry, f"values must be at most {MAX_METADATA_VALUE} characters")
        elif problem := text_problem(value):
            violations.add(entry, problem)


def check_email(violations: Violations, path: str, value: str) -> None:
    """An address we can store and compare: both it and its `email_key` fit their columns, and
    nothing in it is invisible (a zero-width space would make a look-alike second account)."""
    if not value:
        violations.add(path, "is required")
    elif len(value) > MAX_EMAIL:
        violations.add(path, f"must be at most {MAX_EMAIL} characters, got {len(value)}")
    elif problem := text_problem(value) or invisible_problem(value):
        violations.add(path, problem)
    elif len(email_key(value)) > MAX_EMAIL:
        violations.add(path, f"must be at most {MAX_EMAIL} characters once normalised (NFKC, case-folded)")
    elif not _EMAIL.fullmatch(value):
        violations.add(path, f"{excerpt(value)!r} is not a valid email address")


@cache
def known_time_zones() -> frozenset[str]:
    """Every name check_time_zone accepts besides "" (the OpenAPI document lists them as they are).

    `localtime` is the server's own zone and `Factory` a placeholder, not places; both are files
    in some zoneinfo directories. Membership, not ZoneInfo() alone, decides: ZoneInfo follows the
    file system, which is case-insensitive on macOS, and loads `posix/` and `right/` copies."""
    names = zoneinfo.available_timezones() - {"localtime", "Factory", "posixrules"}
    return frozenset(name for name in names if len(name) <= MAX_TIME_ZONE and _loads(name))


def _loads(name: str) -> bool:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def check_time_zone(violations: Violations, path: str, value: str) -> None:
    """An IANA name as the tz database spells it (case included), or empty for the default."""
    if not value:
        return
    if len(value) > MAX_TIME_ZONE:
        violations.add(path, f"must be at most {MAX_TIME_ZONE} characters, got {len(value)}")
    elif problem := text_problem(value):
        violations.add(path, problem)
    elif value not in known_time_zones():
        hint = next((name for name in known_time_zones() if name.casefold() == value.casefold()), None)
        suffix = f"; did you mean {hint!r}?" if hint else " such as America/New_York or UTC"
        violations.add(path, f"{excerpt(value)!r} is not an IANA time zone name{suffix}")


def check_fields(fields: AccountFields, names: Iterable[str], *, prefix: str = "account") -> None:
    """Validate the named fields, raising one InvalidArgument that lists every bad one."""
    violations = Violations()
    for name in names:
        path = f"{prefix}.{name}"
        value = getattr(fields, name)
        if name == "display_name":
            _check_text(violations, path, value, MAX_DISPLAY_NAME, required=True, name=True)
        elif name == "email":
            check_email(violations, path, value)
        elif name == "phone":
            if value and not _E164.fullmatch(value):
                violations.add(path, "must be an E.164 number such as +14155550123")
        elif name == "currency_code":
            if not value:
                violations.add(path, "is required")
            elif not currencies.is_known(value):
                violations.add(
                    path, f"{excerpt(value)!r} is not an ISO 4217 currency code Tally bills in (e.g. USD)"
                )
        elif name == "status":
            if value is None:
                violations.add(path, "must be STATUS_ACTIVE or STATUS_SUSPENDED")
        elif name == "metadata":
            _check_metadata(violations, path, value)
        elif name == "billing_time_zone":
            check_time_zone(violations, path, value)
        elif name == "billing_address" and value is not None:
            _check_address(violations, path, value)
    violations.raise_if_any()


def check_update_mask(paths: Iterable[str]) -> tuple[str, ...]:
    """Resolve an update mask to the field names it changes; `*` means every updatable field."""
    violations = Violations()
    resolved: list[str] = []
    for path in paths:
        if path == "*":
            resolved.extend(UPDATABLE_FIELDS)
        elif path in UPDATABLE_FIELDS:
            resolved.append(path)
        elif path in OUTPUT_ONLY_FIELDS:
            violations.add("update_mask", f"{path!r} is output only and cannot be updated")
        elif path.split(".", 1)[0] in ("billing_address", "metadata"):
            violations.add(
                "update_mask", f"{excerpt(path)!r}: {path.split('.', 1)[0]} is replaced as a whole"
            )
        else:
            violations.add(
                "update_mask", f"unknown field {excerpt(path)!r}; updatable: {', '.join(UPDATABLE_FIELDS)}"
            )
    violations.raise_if_any()
    return tuple(dict.fromkeys(resolved))


def apply_update(account: Account, fields: AccountFields, names: Iterable[str]) -> Account:
    changes: dict[str, Any] = {}
    for name in names:
        value = getattr(fields, name)
        if name == "metadata":
            value = dict(value)
        elif name == "billing_time_zone":
            value = value or DEFAULT_TIME_ZONE
        changes[name] = value
    return replace(account, **changes)


@dataclass(frozen=True)
class AccountFilter:
    email: str | None = None
    status: AccountStatus | None = None
    only_id: str | None = None  # set for customers: they list their own account only

    def canonical(self) -> dict[str, str | None]:
        return {
            "email": email_key(self.email) if self.email else None,
            "status": self.status,
            "only_id": self.only_id,
        }


_FILTER_TOKEN = re.compile(
    r'\s*(?:(?P<and>AND)\b|(?P<name>[a-z_]+)\s*=\s*(?:"(?P<quoted>[^"]*)"|(?P<bare>[^\s"]+)))'
)


def parse_filter(text: str) -> AccountFilter:
    """Parse `email = "x@y.z" AND status = ACTIVE` (a small subset of AIP-160)."""
    if len(text) > MAX_FILTER:
        raise InvalidArgument.field("filter", f"must be at most {MAX_FILTER} characters")
    if problem := text_problem(text):
        raise InvalidArgument.field("filter", problem)
    values: dict[str, str] = {}
    position, expect_term = 0, True
    text = text.strip()
    while position < len(text):
        match = _FILTER_TOKEN.match(text, position)
        if match is None or (match.group("and") is not None) == expect_term:
            raise InvalidArgument.field(
                "filter", f"cannot parse at character {position + 1}: expected {_expected(expect_term)}"
            )
        if match.group("name") is not None:
            name = match.group("name")
            if name not in ("email", "status"):
                raise InvalidArgument.field(
                    "filter", f"unknown field {excerpt(name)!r}; filterable: email, status"
                )
            if name in values:
                raise InvalidArgument.field("filter", f"{name!r} appears more than once")
            quoted = match.group("quoted")
            values[name] = quoted if quoted is not None else match.group("bare")
        position, expect_term = match.end(), not expect_term
        while position < len(text) and text[position].isspace():
            position += 1
    if text and expect_term:
        raise InvalidArgument.field("filter", "ends with AND; expected a condition after it")
    status = None
    if "status" in values:
        name = values["status"].removeprefix("STATUS_")
        if name not in AccountStatus.__members__:
            raise InvalidArgument.field("filter", f"unknown status {excerpt(values['status'])!r}")
        status = AccountStatus(name)
    return AccountFilter(email=values.get("email"), status=status)


def _expected(expect_term: bool) -> str:
    return 'a condition such as status = ACTIVE or email = "a@example.com"' if expect_term else "AND"
