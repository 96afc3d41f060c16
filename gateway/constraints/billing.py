"""Subscriptions' and test clocks' rules (billing_svc/subscriptions/use_cases.py, servicer.py,
billing_svc/clocks/domain.py)."""

from __future__ import annotations

from collections.abc import Callable

from account_svc import domain as accounts
from billing_svc.catalog import domain as catalog
from billing_svc.clocks import domain as clocks
from billing_svc.subscriptions import domain as subscriptions
from billing_svc.subscriptions import use_cases as subscription_rules
from gateway.constraints.common import BAD, NO_CONTROL, digits_up_to, id_pattern
from gateway.schemas import JSON

_SUB = "tally.subscription.v1"
_SUBSCRIPTION = f"{_SUB}.Subscription"
_ITEM = f"{_SUB}.PendingInvoiceItem"
_CLOCKS = "tally.billing.v1"


def _or_empty(pattern: str) -> str:
    return f"^({pattern[1:-1]})?$"


_ACCOUNT_ID: JSON = {"pattern": id_pattern(accounts.ID_PREFIX)}
_PLAN_ID: JSON = {"pattern": id_pattern(catalog.PLAN_PREFIX)}
_SUBSCRIPTION_ID: JSON = {"pattern": id_pattern(subscriptions.ID_PREFIX)}
_CLOCK_ID: JSON = {"pattern": id_pattern(clocks.ID_PREFIX)}
# use_cases.check_quantity: 0 to MAX_QUANTITY (0 means 1 on a plan with seats; a plan without
# seats takes only 0, which depends on the stored plan).
_QUANTITY: JSON = {"pattern": digits_up_to(subscriptions.MAX_QUANTITY)}
# What an update may carry in the fields that change by other methods: nothing (empty, zero or
# null, which the server ignores). Their current values are accepted too (an echo of the
# resource), which no schema can state.
_LEFT_ALONE: JSON = {"update": {"replace": {"enum": ["", None]}}}
_ZERO: JSON = {
    "update": {
        "replace": {"type": ["string", "integer", "null"], "pattern": "^0+$", "minimum": 0, "maximum": 0}
    }
}
_METADATA: JSON = {  # use_cases.check_metadata; control characters are refused everywhere
    "maxProperties": subscription_rules.MAX_METADATA_ENTRIES,
    "propertyNames": {
        "minLength": 1,
        "maxLength": subscription_rules.MAX_METADATA_KEY,
        "pattern": NO_CONTROL,
    },
    "additionalProperties": {
        "type": "string",
        "maxLength": subscription_rules.MAX_METADATA_VALUE,
        "pattern": NO_CONTROL,
    },
}


def _update_description(name: Callable[[str], str]) -> JSON:
    """UpdateSubscription (use_cases.update_subscription): what a PATCH body may carry."""
    return {
        "description": (
            f"A PATCH changes `{name('metadata')}` only. `{name('account_id')}`, `{name('plan_id')}`"
            f" and `{name('quantity')}` may be sent back unchanged or left empty; another value is"
            " refused (400): the plan and the quantity change with `:change`, the account never."
            " Output-only fields are ignored."
        )
    }


# --- RFC 3339 times of a test clock (clocks.domain._check_time) -----------------------------------
# The server takes instants in [MIN_TIME, MAX_TIME) (1970 up to 9000, UTC) and reads the text as
# json_format does: upper-case `T` and `Z`, at most nine fractional digits, no leap second. The
# year is checked as written; an offset moves an instant across a year boundary only on the
# first day of 1970 (ahead of UTC) and the last of 8999 (behind it), so those two days are stated
# only in UTC or with an offset that cannot cross. The document asks slightly more there than
# the server (1970-01-01T12:00:00+01:00 is accepted, not described), never less.
assert (clocks.MIN_TIME.year, clocks.MAX_TIME.year) == (1970, 9000)  # what the years below spell
_MONTH = "(0[1-9]|1[0-2])"
_DAY = "(0[1-9]|[12][0-9]|3[01])"
_CLOCK_TIME = "T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,9})?"
_OFFSET_HOURS = "([01][0-9]|2[0-3]):[0-5][0-9]"
_ANY_OFFSET = f"(Z|[+-]{_OFFSET_HOURS})"
_INNER_YEARS = "(197[1-9]|19[89][0-9]|[2-7][0-9]{3}|8[0-8][0-9]{2}|89[0-8][0-9]|899[0-8])"
_FIRST_YEAR_LATER = f"1970-(01-(0[2-9]|[12][0-9]|3[01])|(0[2-9]|1[0-2])-{_DAY})"
_LAST_YEAR_EARLIER = f"8999-((0[1-9]|1[01])-{_DAY}|12-(0[1-9]|[12][0-9]|30))"
FROZEN_TIME_PATTERN = (
    f"^({_INNER_YEARS}-{_MONTH}-{_DAY}{_CLOCK_TIME}{_ANY_OFFSET}"
    f"|({_FIRST_YEAR_LATER}|{_LAST_YEAR_EARLIER}){_CLOCK_TIME}{_ANY_OFFSET}"
    f"|1970-{_MONTH}-{_DAY}{_CLOCK_TIME}(Z|[+]00:00|-{_OFFSET_HOURS})"
    f"|8999-{_MONTH}-{_DAY}{_CLOCK_TIME}(Z|-00:00|[+]{_OFFSET_HOURS}))$"
)
_FROZEN_TIME: JSON = {"pattern": FROZEN_TIME_PATTERN}

_SUBSCRIPTION_REQUESTS = (
    "GetSubscription",
    "CancelSubscription",
    "UncancelSubscription",
    "ChangeSubscription",
    "PreviewChange",
    "CancelScheduledChange",
    "PauseSubscription",
    "ResumeSubscription",
)
BILLING_FIELDS: dict[str, JSON] = {
    f"{_SUBSCRIPTION}.id": _SUBSCRIPTION_ID,
    f"{_SUBSCRIPTION}.account_id": {**_ACCOUNT_ID, **_LEFT_ALONE},
    f"{_SUBSCRIPTION}.plan_id": {**_PLAN_ID, **_LEFT_ALONE},
    f"{_SUBSCRIPTION}.quantity": {**_QUANTITY, **_ZERO},
    f"{_SUBSCRIPTION}.metadata": _METADATA,
    # Path ids: another id is simply not found (404), never malformed.
    **{f"{_SUB}.{request}Request.id": _SUBSCRIPTION_ID for request in _SUBSCRIPTION_REQUESTS},
    # An empty plan keeps the current one (change_use_cases._target).
    **{
        f"{_SUB}.{request}Request.plan_id": {"pattern": _or_empty(_PLAN_ID["pattern"])}
        for request in ("ChangeSubscription", "PreviewChange")
    },
    **{f"{_SUB}.{request}Request.quantity": _QUANTITY for request in ("ChangeSubscription", "PreviewChange")},
    # use_cases._require_account: an account that does not exist is NOT_FOUND.
    f"{_SUB}.ListPendingInvoiceItemsRequest.account_id": _ACCOUNT_ID,
    f"{_SUB}.GetEntitlementsRequest.account_id": _ACCOUNT_ID,
    f"{_SUB}.ScheduledChange.plan_id": _PLAN_ID,
    f"{_SUB}.ScheduledChange.quantity": _QUANTITY,
    # A preview's items have no id yet.
    f"{_ITEM}.id": {"pattern": _or_empty(id_pattern(subscriptions.ITEM_ID_PREFIX))},
    f"{_ITEM}.account_id": _ACCOUNT_ID,
    f"{_ITEM}.subscription_id": _SUBSCRIPTION_ID,
    f"{_ITEM}.plan_id": _PLAN_ID,
    # Test clocks (billing_svc/clocks/domain.py check_new_clock, use_cases.attach_account).
    f"{_CLOCKS}.TestClock.id": _CLOCK_ID,
    f"{_CLOCKS}.TestClock.display_name": {"maxLength": clocks.MAX_DISPLAY_NAME, "pattern": f"^[^{BAD}]*$"},
    f"{_CLOCKS}.TestClock.frozen_time": _FROZEN_TIME,
    f"{_CLOCKS}.TestClock.account_ids": {"items": _ACCOUNT_ID},
    **{
        f"{_CLOCKS}.{request}Request.id": _CLOCK_ID
        for request in ("GetTestClock", "DeleteTestClock", "AttachAccount", "AdvanceTestClock")
    },
    f"{_CLOCKS}.AttachAccountRequest.account_id": _ACCOUNT_ID,
    f"{_CLOCKS}.AdvanceTestClockRequest.frozen_time": _FROZEN_TIME,
    f"{_CLOCKS}.DeleteTestClockResponse.account_ids": {"items": _ACCOUNT_ID},
    f"{_CLOCKS}.BillingWork.account_id": _ACCOUNT_ID,
    f"{_CLOCKS}.BillingWork.subscription_id": _SUBSCRIPTION_ID,
    f"{_CLOCKS}.BillingWork.pending_invoice_item_ids": {
        "items": {"pattern": id_pattern(subscriptions.ITEM_ID_PREFIX)}
    },
}
BILLING_MESSAGES = {_SUBSCRIPTION: {"update": _update_description}}
