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
from core import currencies, idempotency, ids
from gateway.schemas import CONTROL, JSON, NO_CONTROL, Rules

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
    return "".join(f"\\u{low:04x}" if low == high else f"\\u{low:04x}-\\u{high:04x}" for low, high in runs)


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
    },
)


def with_known_scopes(rules: Rules, scopes: Iterable[str]) -> Rules:
    """`rules`, with a service account's scopes limited to `scopes` (what the server accepts:
    every scope an access policy of a served method requires)."""
    field = f"{_SERVICE_ACCOUNT}.scopes"
    rule = dict(rules.fields.get(field, {}))
    rule["items"] = {"enum": sorted(set(scopes))}
    return dataclasses.replace(rules, fields={**rules.fields, field: rule})
