"""The accounts' and identities' rules (account_svc/domain.py, account_svc/identity/use_cases.py)."""

from __future__ import annotations

from collections.abc import Callable

from account_svc import domain as accounts
from account_svc.identity import domain as identity
from core import currencies
from gateway.constraints.common import (
    CONTROL_CHARS,
    EMAIL_PATTERN,
    NAME,
    NO_CONTROL,
    enum_values,
    id_pattern,
)
from gateway.schemas import JSON

_TEXT: JSON = {"maxLength": accounts.MAX_ADDRESS_FIELD, "pattern": NO_CONTROL}
_EMAIL: JSON = {"maxLength": accounts.MAX_EMAIL, "pattern": EMAIL_PATTERN}
_NON_EMPTY: JSON = {"minLength": 1}
_STATUSES = ("STATUS_ACTIVE", "STATUS_SUSPENDED")

# Filters ListAccounts understands (account_svc.domain.parse_filter), spelled one way: each
# condition once, single spaces optional around `=` and `AND` (the parser takes any whitespace).
_EMAIL_TERM = f'email ?= ?"[^"{CONTROL_CHARS}]*"'
_STATUS_TERM = "status ?= ?(STATUS_)?(ACTIVE|SUSPENDED)"
FILTER_PATTERN = (
    f"^ *(({_EMAIL_TERM})|({_STATUS_TERM})|({_EMAIL_TERM}) AND ({_STATUS_TERM})"
    f"|({_STATUS_TERM}) AND ({_EMAIL_TERM}))? *$"
)

_ACCOUNT = "tally.account.v1.Account"
_USER = "tally.account.v1.User"
_SERVICE_ACCOUNT = "tally.account.v1.ServiceAccount"
_ADDRESS = "google.type.PostalAddress"


def _user_roles(name: Callable[[str], str]) -> JSON:
    """account_svc.identity.use_cases.create_user: a customer names an account, an admin none."""
    return {
        "oneOf": [
            {
                "properties": {
                    name("role"): {"enum": enum_values(("ROLE_ADMIN",), (1,))},
                    name("account_id"): {"enum": ["", None]},
                }
            },
            {
                "properties": {
                    name("role"): {"enum": enum_values(("ROLE_CUSTOMER",), (2,))},
                    name("account_id"): {"type": "string", "minLength": 1},
                },
                "required": [name("account_id")],
            },
        ]
    }


def _address(name: Callable[[str], str]) -> JSON:
    return {"required": [name("region_code")]}  # accounts._check_address


ACCOUNT_FIELDS: dict[str, JSON] = {
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
    f"{_ACCOUNT}.display_name": {"maxLength": accounts.MAX_DISPLAY_NAME, "pattern": NAME},
    f"{_ACCOUNT}.email": _EMAIL,
    f"{_ACCOUNT}.phone": {"pattern": "^(\\+[1-9][0-9]{6,14})?$"},
    f"{_ACCOUNT}.currency_code": {"enum": sorted(currencies.EXPONENTS)},
    # accounts.check_time_zone: empty (the default, UTC) or a name of the tz database.
    f"{_ACCOUNT}.billing_time_zone": {"enum": ["", *sorted(accounts.known_time_zones())]},
    # On update the status is set, so it must name one (check_fields: None is refused).
    f"{_ACCOUNT}.status": {"update": {"replace": {"enum": enum_values(_STATUSES, (1, 2))}}},
    f"{_ACCOUNT}.metadata": {
        "maxProperties": accounts.MAX_METADATA_ENTRIES,
        "propertyNames": {"minLength": 1, "maxLength": accounts.MAX_METADATA_KEY, "pattern": NO_CONTROL},
        "additionalProperties": {
            "type": "string",
            "maxLength": accounts.MAX_METADATA_VALUE,
            "pattern": NO_CONTROL,
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
        "pattern": NAME,  # create_service_account: visible text that strip() leaves
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
}
ACCOUNT_MESSAGES = {
    _USER: {"create": _user_roles},
    _ADDRESS: {"all": _address},
}
SERVICE_ACCOUNT = _SERVICE_ACCOUNT
