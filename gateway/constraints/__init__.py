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
from collections.abc import Iterable

from core import idempotency
from gateway.constraints.accounts import ACCOUNT_FIELDS, ACCOUNT_MESSAGES, SERVICE_ACCOUNT
from gateway.constraints.billing import BILLING_FIELDS, BILLING_MESSAGES
from gateway.constraints.catalog import CATALOG_FIELDS, CATALOG_MESSAGES
from gateway.constraints.common import EMAIL_PATTERN, digits_up_to, id_pattern
from gateway.constraints.events import EVENT_FIELDS
from gateway.constraints.invoices import INVOICE_FIELDS
from gateway.constraints.payments import PAYMENT_FIELDS
from gateway.constraints.usage import USAGE_FIELDS
from gateway.constraints.webhooks import WEBHOOK_FIELDS
from gateway.schemas import JSON, Rules

__all__ = ["EMAIL_PATTERN", "RULES", "digits_up_to", "id_pattern", "with_known_scopes"]

# Every field name that appears in more than one service.
_SHARED_NAMES: dict[str, JSON] = {
    # core/idempotency.py check_request_id
    "request_id": {
        "maxLength": idempotency.MAX_REQUEST_ID_LENGTH,
        "pattern": idempotency.REQUEST_ID_PATTERN,
    },
    "page_size": {"minimum": 0},  # core.pagination.page_size: negatives refused, above 1000 lowered
}

RULES = Rules(
    fields={
        **ACCOUNT_FIELDS,
        **CATALOG_FIELDS,
        **BILLING_FIELDS,
        **USAGE_FIELDS,
        **INVOICE_FIELDS,
        **PAYMENT_FIELDS,
        **WEBHOOK_FIELDS,
        **EVENT_FIELDS,
    },
    names=_SHARED_NAMES,
    messages={**ACCOUNT_MESSAGES, **CATALOG_MESSAGES, **BILLING_MESSAGES},
)


def with_known_scopes(rules: Rules, scopes: Iterable[str]) -> Rules:
    """`rules`, with a service account's scopes limited to `scopes` (what the server accepts:
    every scope an access policy of a served method requires)."""
    field = f"{SERVICE_ACCOUNT}.scopes"
    rule = dict(rules.fields.get(field, {}))
    rule["items"] = {"enum": sorted(set(scopes))}
    return dataclasses.replace(rules, fields={**rules.fields, field: rule})
