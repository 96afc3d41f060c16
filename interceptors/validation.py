"""The text policy at the gRPC boundary: every string in a request is checked before its use case.

`check_request` runs `core.text_policy.check_text` on each unary request (the text stage of
interceptors.pipeline), then `core.card_policy.check_card_numbers`: a bad request is refused with
INVALID_ARGUMENT naming every bad field by its path (a card number is never quoted), so no RPC,
present or future, has to remember to do it. REST calls come through the gateway's gRPC channel
and meet the same checks.

Client-streaming requests are not walked here: a stream's handler checks each event it reads
with the same walk (billing_svc/usage/stream.py), so one bad event is refused alone instead of
ending the stream. Reflection's requests never reach the database.
"""

from __future__ import annotations

from google.protobuf.message import Message

from core.card_policy import check_card_numbers
from core.text_policy import MAX_VIOLATIONS, check_text, text_violations
from interceptors.pipeline import Pipeline

__all__ = ["MAX_VIOLATIONS", "TextPolicyInterceptor", "check_request", "check_text", "text_violations"]


def check_request(request: object) -> None:
    """`check_text`, then `check_card_numbers`, for whatever a unary handler receives (only
    messages are walked): the text stage of interceptors.pipeline."""
    if isinstance(request, Message):
        check_text(request)
        check_card_numbers(request)


class TextPolicyInterceptor(Pipeline):
    """Runs `check_request` on every unary request before the handler (the innermost stage)."""

    def __init__(self) -> None:
        super().__init__(text_policy=check_request)
