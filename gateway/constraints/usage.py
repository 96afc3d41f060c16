"""Usage's rules (billing_svc/usage/rules.py, use_cases.py, stream.py) that JSON Schema can state.

What it cannot state is left to the server and named in tests/e2e/schemathesis.toml: an event's
time must fall in a window around its account's billing time, its service must be a meter that
exists, an account must exist; a range's end must come after its start."""

from __future__ import annotations

from account_svc import domain as accounts
from billing_svc.catalog import domain as catalog
from billing_svc.usage import stream, use_cases
from billing_svc.usage.tables import MAX_EVENT_ID
from gateway.constraints.common import id_pattern
from gateway.schemas import JSON

_USAGE = "tally.billing.v1"
_ACCOUNT_ID: JSON = {"pattern": id_pattern(accounts.ID_PREFIX)}

USAGE_FIELDS: dict[str, JSON] = {
    f"{_USAGE}.CreateUsageRecordRequest.account_id": _ACCOUNT_ID,
    f"{_USAGE}.ListUsageRecordsRequest.account_id": _ACCOUNT_ID,
    f"{_USAGE}.GetUsageSummaryRequest.account_id": _ACCOUNT_ID,
    # rules.check_event: a meter's code; its existence is the server's to say.
    f"{_USAGE}.UsageRecord.service": {"pattern": catalog.CODE_REGEX},
    # rules._event_id: printable ASCII, at most 128 characters.
    f"{_USAGE}.UsageRecord.event_id": {"maxLength": MAX_EVENT_ID, "pattern": "^[ -~]*$"},
    # rules.batch_size: 1 to 1000 events.
    f"{_USAGE}.BatchCreateUsageRecordsRequest.requests": {"minItems": 1, "maxItems": use_cases.MAX_BATCH},
    # stream.UsageStream._take: 1 to 1000 events a message; sequence numbers start at 1;
    # producer ids are printable ASCII.
    f"{_USAGE}.StreamUsageRecordsRequest.records": {"minItems": 1, "maxItems": stream.MAX_MESSAGE},
    f"{_USAGE}.SequencedUsageRecord.sequence": {"minimum": 1},
    f"{_USAGE}.StreamUsageRecordsRequest.producer_id": {
        "maxLength": stream.MAX_PRODUCER_ID,
        "pattern": "^[ -~]*$",
    },
}
