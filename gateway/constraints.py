"""What the servers check beyond the proto types, stated for the OpenAPI document.

Each rule mirrors one check in the service code (cited next to it) and says exactly
as much: a schema that asks for less lets a client send what the server refuses, one
that asks for more promises a refusal that never comes. The suite holds both sides
to it: stock schemathesis (tests/e2e/test_rest.py) sends what the document allows
and expects it accepted, and what it forbids and expects it refused.

Patterns are ECMA-262 as JSON Schema reads them, written with explicit character
classes only (no `\\s`, `\\w`, `\\b`), which mean the same in Python's `re`, so the
document and the server's own regular expressions agree character for character.
"""

from __future__ import annotations

import dataclasses
import sys
import unicodedata
from collections.abc import Callable, Iterable

from account_svc import domain as accounts
from account_svc.identity import domain as identity
from billing_svc.catalog import domain as catalog
from billing_svc.catalog import pricing
from core import currencies, idempotency, ids
from core.money import MAX_UNIT_PRICE_PLACES
from gateway.schemas import CONTROL, JSON, NO_CONTROL, Rules, enum_forms
from tally.billing.v1 import meter_pb2
from tally.subscription.v1 import plan_pb2

# What str.strip() removes and Python's `\s` matches (the server strips and matches with them).
_WHITESPACE = "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace())
_CONTROL = CONTROL  # refused in every string of a request (interceptors/validation.py)


def _escaped(chars: str) -> str:
    """A character-class body for `chars`, runs of consecutive code points as ranges."""
    codes = sorted(map(ord, chars))
    runs: list[list[int]] = []
    for code in codes:
        if runs and code == runs[-1][1] + 1:
            runs[-1][1] = code
        else:
            runs.append([code, code])
    return "".join(_code(low) if low == high else f"{_code(low)}-{_code(high)}" for low, high in runs)


def _code(point: int) -> str:
    """One code point in a character class. `\\uXXXX` takes exactly four hex digits (in Python's
    `re` and in ECMA-262 alike), so a code point above U+FFFF is written as itself: `\\u110bd`
    would be U+110B followed by the letter `d`."""
    return f"\\u{point:04x}" if point <= 0xFFFF else chr(point)


_WS = _escaped(_WHITESPACE)
# Whitespace the text policy lets through (spaces, not tabs or newlines: those are control characters).
_SPACE = _escaped("".join(c for c in _WHITESPACE if not (ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F)))
_NO_CONTROL = NO_CONTROL
# Some character that is neither whitespace nor a control character: text that strip() leaves.
_NOT_BLANK = f"^[^{_CONTROL}]*[^{_CONTROL}{_WS}][^{_CONTROL}]*$"
# accounts.check_email after the servicer's strip(): `[^@\s]{1,64}@[^@\s.]+(\.[^@\s.]+)+`.
# Invisible and direction-changing characters, refused in emails and names (core.text.invisible_problem).
_INVISIBLE = _escaped(
    "".join(chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) in ("Cf", "Zl", "Zp"))
    + "\u034f\u115f\u1160\u180e\u2800\u3164\uffa0"
)
_BAD = f"{_CONTROL}{_INVISIBLE}"
# A name people compare by eye: no control or invisible characters, something strip() leaves.
_NAME = f"^[^{_BAD}]*[^{_BAD}{_WS}][^{_BAD}]*$"
_LOCAL = f"[^@{_WS}{_BAD}]"
_DOMAIN = f"[^@{_WS}{_BAD}.]"
EMAIL_PATTERN = f"^[{_SPACE}]*{_LOCAL}{{1,64}}@{_DOMAIN}+(\\.{_DOMAIN}+)+[{_SPACE}]*$"
_ID_BODY = f"[{ids.ALPHABET}]{{{ids.BODY_LENGTH}}}"


def id_pattern(prefix: str) -> str:
    """The ids core.ids.new_id makes with `prefix`."""
    return f"^{prefix}_{_ID_BODY}$"


_TEXT: JSON = {"maxLength": accounts.MAX_ADDRESS_FIELD, "pattern": _NO_CONTROL}
_EMAIL: JSON = {"maxLength": accounts.MAX_EMAIL, "pattern": EMAIL_PATTERN}
_NON_EMPTY: JSON = {"minLength": 1}
_PAGE_SIZE: JSON = {"minimum": 0}  # core.pagination.page_size: negatives refused, above 1000 lowered
_STATUSES = ("STATUS_ACTIVE", "STATUS_SUSPENDED")

# Filters ListAccounts understands (account_svc.domain.parse_filter), spelled one way: each
# condition once, single spaces optional around `=` and `AND` (the parser takes any whitespace).
_EMAIL_TERM = f'email ?= ?"[^"{_CONTROL}]*"'
_STATUS_TERM = "status ?= ?(STATUS_)?(ACTIVE|SUSPENDED)"
FILTER_PATTERN = (
    f"^ *(({_EMAIL_TERM})|({_STATUS_TERM})|({_EMAIL_TERM}) AND ({_STATUS_TERM})"
    f"|({_STATUS_TERM}) AND ({_EMAIL_TERM}))? *$"
)

_ACCOUNT = "tally.account.v1.Account"
_USER = "tally.account.v1.User"
_SERVICE_ACCOUNT = "tally.account.v1.ServiceAccount"
_ADDRESS = "google.type.PostalAddress"


def _enum(names: tuple[str, ...], numbers: tuple[int, ...]) -> list[object]:
    return [*names, *numbers, *(str(n) for n in numbers)]


def _user_roles(name: Callable[[str], str]) -> JSON:
    """account_svc.identity.use_cases.create_user: a customer names an account, an admin none."""
    return {
        "oneOf": [
            {
                "properties": {
                    name("role"): {"enum": _enum(("ROLE_ADMIN",), (1,))},
                    name("account_id"): {"enum": ["", None]},
                }
            },
            {
                "properties": {
                    name("role"): {"enum": _enum(("ROLE_CUSTOMER",), (2,))},
                    name("account_id"): {"type": "string", "minLength": 1},
                },
                "required": [name("account_id")],
            },
        ]
    }


def _address(name: Callable[[str], str]) -> JSON:
    return {"required": [name("region_code")]}  # accounts._check_address


# --- the billing catalog (billing_svc/catalog/rules.py, plan_proto.py) ------------------------------

_METER = "tally.billing.v1.Meter"
_PLAN = "tally.subscription.v1.Plan"
_SUB = "tally.subscription.v1"
_CODE: JSON = {"pattern": catalog.CODE_REGEX}  # rules.check_code (the pattern bounds the length)
# Immutable fields in a PATCH body: the server accepts them only unchanged (an echo of the
# resource), which no schema can state, so the document asks for them to be left out.
_NOT_IN_UPDATE: JSON = {"update": {"replace": {"not": {}}}}
_DESCRIPTION: JSON = {"maxLength": catalog.MAX_DISPLAY_NAME, "pattern": _NO_CONTROL}
# core.money.parse_unit_price: ASCII digits, an optional point and 1 to 12 digits, an optional
# "+", below 10^18 (at most 18 digits once leading zeros are gone), no sign, exponent or space.
_DECIMAL_TEXT = f"\\+?0*[0-9]{{1,18}}(\\.[0-9]{{1,{MAX_UNIT_PRICE_PLACES}}})?"
_ZERO_TEXT = "^\\+?0+(\\.0+)?$"
# pricing.validate: a percentage rate from 0 to 100.
_RATE_TEXT = (
    f"^\\+?0*(100(\\.0{{1,{MAX_UNIT_PRICE_PLACES}}})?|[0-9]{{1,2}}(\\.[0-9]{{1,{MAX_UNIT_PRICE_PLACES}}})?)$"
)


def _decimal(*, required: bool, pattern: str = f"^{_DECIMAL_TEXT}$") -> JSON:
    """A google.type.Decimal field: required ones need a value (plan_proto._Decoder.decimal);
    an optional one may be left out, null, or have an empty value, all of which mean unset."""
    if required:
        return {"required": ["value"], "properties": {"value": {"type": "string", "pattern": pattern}}}
    return {"properties": {"value": {"pattern": f"^({pattern.strip('^$')})?$"}}}


def _both(name: str, schema: JSON) -> JSON:
    """`properties` for a field under its JSON and proto names (field rules cannot ask which)."""
    parts = name.split("_")
    return {name: schema, parts[0] + "".join(part.title() for part in parts[1:]): schema}


def _digits_up_to(limit: int) -> str:
    """A pattern for the decimal strings of 0 to `limit` (leading zeros allowed), as json_format
    reads an int64: for 2^63 - 1, no more digits than it has, and at its length no larger."""
    digits = str(limit)
    shorter = f"[0-9]{{1,{len(digits) - 1}}}" if len(digits) > 1 else ""
    branches = [shorter] if shorter else []
    for position, digit in enumerate(digits):
        if digit != "0":
            rest = len(digits) - position - 1
            below = "0" if digit == "1" else f"[0-{int(digit) - 1}]"
            branches.append(digits[:position] + below + (f"[0-9]{{{rest}}}" if rest else ""))
    branches.append(digits)
    return f"^0*({'|'.join(branches)})$"


# Minor units, limits and counts that must not be negative: 0 to the largest int64.
_UNSIGNED_INT64: JSON = {"type": "string", "pattern": _digits_up_to(2**63 - 1)}
_PLAN_MONEY: JSON = {  # rules._check_amount, and money_from_proto's currency
    "required": ["currencyCode"],
    "properties": {
        **_both("currency_code", {"type": "string", "enum": sorted(currencies.EXPONENTS)}),
        **_both("amount_minor", _UNSIGNED_INT64),
    },
}


def _meter_properties(name: Callable[[str], str]) -> JSON:
    """rules.check_new_meter: a property for unique counts (required), for nothing else."""
    unique = ("AGGREGATION_UNIQUE_COUNT",)
    others = tuple(v.name for v in meter_pb2.Meter.Aggregation.DESCRIPTOR.values if v.number not in (0, 4))
    aggregation = meter_pb2.Meter.Aggregation.DESCRIPTOR
    return {
        "oneOf": [
            {
                "properties": {
                    name("aggregation"): {"enum": enum_forms(aggregation, unique)},
                    name("property"): {"type": "string", **_CODE},
                },
                "required": [name("property")],
            },
            {
                "properties": {
                    name("aggregation"): {"enum": enum_forms(aggregation, others)},
                    name("property"): {"enum": ["", None]},
                }
            },
        ]
    }


def _interval_counts(name: Callable[[str], str]) -> JSON:
    """rules._check_interval: at most three years in the unit (0 means 1)."""
    units = plan_pb2.BillingInterval.Unit.DESCRIPTOR
    return {
        "oneOf": [
            {
                "properties": {
                    name("unit"): {"enum": enum_forms(units, (f"UNIT_{unit.name}",))},
                    name("count"): {"maximum": most},
                }
            }
            for unit, most in catalog.MAX_INTERVAL_COUNT.items()
        ]
    }


def _one_price(name: Callable[[str], str]) -> JSON:
    """plan_proto._Decoder.price: exactly one model (null is unset)."""
    kinds = ("per_unit", "graduated", "volume", "package", "percentage")
    return {"oneOf": [{"required": [name(k)], "properties": {name(k): {"type": "object"}}} for k in kinds]}


def _one_value(name: Callable[[str], str]) -> JSON:
    """rules._check_features: a feature is a flag or a limit (0 or more), exactly one."""
    return {
        "oneOf": [
            {"required": [name("enabled")], "properties": {name("enabled"): {"type": "boolean"}}},
            {"required": [name("limit")], "properties": {name("limit"): _UNSIGNED_INT64}},
        ]
    }


_TIERS: JSON = {"minItems": 1, "maxItems": pricing.MAX_TIERS}
CATALOG_FIELDS: dict[str, JSON] = {
    f"{_METER}.id": {"pattern": id_pattern(catalog.METER_PREFIX)},
    **{
        f"tally.billing.v1.{request}Request.id": {"pattern": id_pattern(catalog.METER_PREFIX)}
        for request in ("GetMeter", "ArchiveMeter")
    },
    f"{_METER}.code": {**_CODE, **_NOT_IN_UPDATE},
    f"{_METER}.display_name": {"maxLength": catalog.MAX_DISPLAY_NAME, "pattern": _NAME},
    f"{_METER}.unit_label": {"maxLength": catalog.MAX_UNIT_LABEL, "pattern": _NO_CONTROL},
    f"{_METER}.aggregation": _NOT_IN_UPDATE,
    f"{_METER}.property": _NOT_IN_UPDATE,
    f"{_PLAN}.id": {"pattern": id_pattern(catalog.PLAN_PREFIX)},
    **{
        f"{_SUB}.{request}Request.id": {"pattern": id_pattern(catalog.PLAN_PREFIX)}
        for request in ("GetPlan", "ArchivePlan")
    },
    f"{_SUB}.GetPlanRequest.version": {"minimum": 0},
    f"{_PLAN}.code": {**_CODE, **_NOT_IN_UPDATE},
    f"{_PLAN}.currency_code": {"enum": sorted(currencies.EXPONENTS), **_NOT_IN_UPDATE},
    f"{_PLAN}.display_name": {"maxLength": catalog.MAX_DISPLAY_NAME, "pattern": _NAME},
    f"{_PLAN}.description": {"maxLength": catalog.MAX_DESCRIPTION, "pattern": _NO_CONTROL},
    f"{_PLAN}.trial_days": {"minimum": 0, "maximum": catalog.MAX_TRIAL_DAYS},
    f"{_PLAN}.base_fee": _PLAN_MONEY,
    f"{_PLAN}.minimum_spend": _PLAN_MONEY,
    f"{_PLAN}.maximum_spend": _PLAN_MONEY,
    f"{_PLAN}.metered_charges": {"maxItems": catalog.MAX_METERED_CHARGES},
    f"{_PLAN}.features": {"maxItems": catalog.MAX_FEATURES},
    f"{_SUB}.BillingInterval.count": {"minimum": 0},
    f"{_SUB}.SeatPrice.description": _DESCRIPTION,
    f"{_SUB}.SeatPrice.price": {"properties": _both("percentage", {"type": "null"})},  # metered only
    f"{_SUB}.MeteredCharge.meter_id": {"pattern": id_pattern(catalog.METER_PREFIX)},
    f"{_SUB}.MeteredCharge.description": _DESCRIPTION,
    f"{_SUB}.Feature.code": _CODE,
    f"{_SUB}.Feature.display_name": _DESCRIPTION,
    f"{_SUB}.Feature.enabled": {"nullable": False},
    f"{_SUB}.Feature.limit": {"nullable": False},
    f"{_SUB}.TieredPrice.tiers": _TIERS,
    f"{_SUB}.Tier.up_to": _decimal(required=False),
    f"{_SUB}.Tier.unit_price": _decimal(required=True),
    f"{_SUB}.Tier.flat_fee": _decimal(required=False),
    f"{_SUB}.PerUnitPrice.unit_price": _decimal(required=True),
    f"{_SUB}.PackagePrice.size": {
        **_decimal(required=True),
        "not": _decimal(required=True, pattern=_ZERO_TEXT),
    },
    f"{_SUB}.PackagePrice.price": _decimal(required=True),
    f"{_SUB}.PackagePrice.free_units": _decimal(required=False),
    f"{_SUB}.PercentagePrice.rate": _decimal(required=True, pattern=_RATE_TEXT),
    f"{_SUB}.PercentagePrice.fixed_fee": _decimal(required=False),
    f"{_SUB}.PercentagePrice.free_events": {"pattern": _UNSIGNED_INT64["pattern"]},
    f"{_SUB}.PercentagePrice.free_amount": _decimal(required=False),
    f"{_SUB}.PercentagePrice.min_per_event": _decimal(required=False),
    f"{_SUB}.PercentagePrice.max_per_event": _decimal(required=False),
}
CATALOG_MESSAGES = {
    _METER: {"create": _meter_properties},
    f"{_SUB}.BillingInterval": {"all": _interval_counts},
    f"{_SUB}.Price": {"all": _one_price},
    f"{_SUB}.Feature": {"all": _one_value},
}


RULES = Rules(
    fields={
        # account_svc/domain.py check_fields
        f"{_ACCOUNT}.id": {"pattern": id_pattern(accounts.ID_PREFIX)},
        # Path ids: another id is simply not found (404), never malformed.
        **{
            f"tally.account.v1.{request}Request.id": {"pattern": id_pattern(prefix)}
            for request, prefix in (
                ("GetAccount", accounts.ID_PREFIX),
                ("DeleteAccount", accounts.ID_PREFIX),
                ("UndeleteAccount", accounts.ID_PREFIX),
                ("GetUser", identity.USER_PREFIX),
                ("DeleteServiceAccount", identity.SERVICE_ACCOUNT_PREFIX),
            )
        },
        f"{_ACCOUNT}.display_name": {"maxLength": accounts.MAX_DISPLAY_NAME, "pattern": _NAME},
        f"{_ACCOUNT}.email": _EMAIL,
        f"{_ACCOUNT}.phone": {"pattern": "^(\\+[1-9][0-9]{6,14})?$"},
        f"{_ACCOUNT}.currency_code": {"enum": sorted(currencies.EXPONENTS)},
        # On update the status is set, so it must name one (check_fields: None is refused).
        f"{_ACCOUNT}.status": {"update": {"replace": {"enum": _enum(_STATUSES, (1, 2))}}},
        f"{_ACCOUNT}.metadata": {
            "maxProperties": accounts.MAX_METADATA_ENTRIES,
            "propertyNames": {"minLength": 1, "maxLength": accounts.MAX_METADATA_KEY, "pattern": _NO_CONTROL},
            "additionalProperties": {
                "type": "string",
                "maxLength": accounts.MAX_METADATA_VALUE,
                "pattern": _NO_CONTROL,
            },
        },
        f"{_ADDRESS}.region_code": {"pattern": "^[A-Z]{2}$", "nullable": False},
        **{f"{_ADDRESS}.{name}": _TEXT for name in accounts.ADDRESS_TEXT_FIELDS},
        **{
            f"{_ADDRESS}.{name}": {"maxItems": accounts.MAX_ADDRESS_LINES, "items": _TEXT}
            for name in ("address_lines", "recipients")
        },
        f"{_ADDRESS}.revision": {"minimum": -(2**31), "maximum": 2**31 - 1},
        "tally.account.v1.ListAccountsRequest.filter": {"maxLength": 1000, "pattern": FILTER_PATTERN},
        # account_svc/identity/use_cases.py
        f"{_USER}.id": {"pattern": id_pattern(identity.USER_PREFIX)},
        f"{_USER}.email": _EMAIL,
        f"{_USER}.account_id": {"create": {"pattern": f"^({id_pattern(accounts.ID_PREFIX)[1:-1]})?$"}},
        "tally.account.v1.CreateUserRequest.password": {
            "minLength": identity.MIN_PASSWORD,
            "maxLength": identity.MAX_PASSWORD,
        },
        f"{_SERVICE_ACCOUNT}.id": {"pattern": id_pattern(identity.SERVICE_ACCOUNT_PREFIX)},
        f"{_SERVICE_ACCOUNT}.display_name": {
            "maxLength": accounts.MAX_DISPLAY_NAME,
            "pattern": _NAME,  # create_service_account: visible text that strip() leaves
        },
        # create_service_account: only scopes some served method requires (see with_known_scopes).
        f"{_SERVICE_ACCOUNT}.scopes": {
            "minItems": 1,
            "maxItems": identity.MAX_SCOPES,
            "items": {"pattern": "^[a-z0-9_:.*-]{1,64}$"},  # identity.invalid_scopes
        },
        # Checked only for being there (`_require`): anything else is a wrong credential, 401.
        "tally.account.v1.LoginRequest.email": _NON_EMPTY,
        "tally.account.v1.LoginRequest.password": _NON_EMPTY,
        "tally.account.v1.RefreshTokenRequest.refresh_token": _NON_EMPTY,
        "tally.account.v1.LogoutRequest.refresh_token": _NON_EMPTY,
        "tally.account.v1.IssueServiceTokenRequest.client_id": _NON_EMPTY,
        "tally.account.v1.IssueServiceTokenRequest.client_secret": _NON_EMPTY,
        **CATALOG_FIELDS,
    },
    names={
        # core/idempotency.py check_request_id
        "request_id": {
            "maxLength": idempotency.MAX_REQUEST_ID_LENGTH,
            "pattern": idempotency.REQUEST_ID_PATTERN,
        },
        "page_size": _PAGE_SIZE,
    },
    messages={
        _USER: {"create": _user_roles},
        _ADDRESS: {"all": _address},
        **CATALOG_MESSAGES,
    },
)


def with_known_scopes(rules: Rules, scopes: Iterable[str]) -> Rules:
    """`rules`, with a service account's scopes limited to `scopes` (what the server accepts:
    every scope an access policy of a served method requires)."""
    field = f"{_SERVICE_ACCOUNT}.scopes"
    rule = dict(rules.fields.get(field, {}))
    rule["items"] = {"enum": sorted(set(scopes))}
    return dataclasses.replace(rules, fields={**rules.fields, field: rule})
