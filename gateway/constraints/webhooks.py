"""Webhook deliveries' rules (billing_svc/webhooks/use_cases.py, servicer.py)."""

from __future__ import annotations

from billing_svc.webhooks import domain as webhooks
from gateway.constraints.common import enum_values, id_pattern
from gateway.schemas import JSON

_PKG = "tally.billing.v1"
_ENDPOINT_ID: JSON = {"pattern": id_pattern(webhooks.ENDPOINT_PREFIX)}
_DELIVERY_ID: JSON = {"pattern": id_pattern(webhooks.DELIVERY_PREFIX)}
# servicer._view_of: unset lists every status; another number is refused.
_STATUSES = ("STATUS_UNSPECIFIED", "STATUS_PENDING", "STATUS_SUCCEEDED", "STATUS_FAILED", "STATUS_RETRYING")

WEBHOOK_FIELDS: dict[str, JSON] = {
    f"{_PKG}.ListWebhookDeliveriesRequest.status": {"enum": enum_values(_STATUSES, (0, 1, 2, 3, 4))},
    # Path ids: another id is simply not found (404), never malformed.
    f"{_PKG}.ListWebhookDeliveriesRequest.endpoint_id": _ENDPOINT_ID,
    f"{_PKG}.GetWebhookDeliveryRequest.id": _DELIVERY_ID,
    f"{_PKG}.RedeliverWebhookRequest.delivery_id": _DELIVERY_ID,
    f"{_PKG}.ListWebhookDeliveryAttemptsRequest.delivery_id": _DELIVERY_ID,
}
