"""gRPC face of the payment service: decode the proto, call one use case, encode the reply."""

from __future__ import annotations

import grpc

from billing_svc.invoices.servicer import money_in, optional_timestamp, statuses_from
from billing_svc.payments import use_cases
from billing_svc.payments.collect import PaymentDeps
from billing_svc.payments.domain import AttemptStatus, Payment, PaymentSettings, PaymentStatus, RefundStatus
from core.errors import InvalidArgument
from core.money import Money
from core.money_proto import money_from_proto
from core.principal import Caller, caller_for
from tally.billing.v1 import payment_pb2, payment_pb2_grpc

_SERVICE = payment_pb2.DESCRIPTOR.services_by_name["PaymentService"].full_name
_STATUS = {status: payment_pb2.Payment.Status.Value(f"STATUS_{status.name}") for status in PaymentStatus}
_STATUS_FROM = {number: status for status, number in _STATUS.items()}
_ATTEMPT = {
    status: payment_pb2.PaymentAttempt.Status.Value(f"STATUS_{status.name}") for status in AttemptStatus
}
_REFUND = {status: payment_pb2.PaymentRefund.Status.Value(f"STATUS_{status.name}") for status in RefundStatus}


def payment_to_proto(payment: Payment) -> payment_pb2.Payment:
    money = money_in(payment.currency_code)
    return payment_pb2.Payment(
        id=payment.id,
        account_id=payment.account_id,
        invoice_id=payment.invoice_id,
        amount=money(payment.amount_minor),
        amount_refunded=money(payment.amount_refunded_minor),
        status=_STATUS[payment.status],
        gateway=payment.gateway,
        payment_method=payment.payment_method,
        failure_code=payment.failure_code,
        failure_message=payment.failure_message,
        attempts=[
            payment_pb2.PaymentAttempt(
                id=attempt.id,
                status=_ATTEMPT[attempt.status],
                decline_code=attempt.decline_code,
                message=attempt.message,
                create_time=optional_timestamp(attempt.create_time),
                finish_time=optional_timestamp(attempt.finish_time),
            )
            for attempt in payment.attempts
        ],
        refunds=[
            payment_pb2.PaymentRefund(
                id=refund.id,
                amount=money(refund.amount_minor),
                status=_REFUND[refund.status],
                reason=refund.reason,
                create_time=optional_timestamp(refund.create_time),
                credit_note_id=refund.credit_note_id,
            )
            for refund in payment.refunds
        ],
        description=payment.description,
        create_time=optional_timestamp(payment.create_time),
        update_time=optional_timestamp(payment.update_time),
    )


def settings_to_proto(settings: PaymentSettings) -> payment_pb2.PaymentSettings:
    return payment_pb2.PaymentSettings(
        account_id=settings.account_id,
        gateway=settings.gateway,
        default_payment_method=settings.default_payment_method,
        update_time=optional_timestamp(settings.update_time),
    )


def _caller(method: str, request_id: str = "") -> Caller:
    return caller_for(f"/{_SERVICE}/{method}", request_id)


def _optional_money(
    message: payment_pb2.CreatePaymentRequest | payment_pb2.RefundPaymentRequest,
) -> Money | None:
    if not message.HasField("amount"):
        return None
    return money_from_proto(message.amount, field="amount")


def _settings_fields(request: payment_pb2.UpdatePaymentSettingsRequest) -> tuple[str, ...]:
    paths = list(request.update_mask.paths)
    if not paths:
        named = tuple(name for name in use_cases.SETTINGS_FIELDS if getattr(request.settings, name))
        if not named:
            raise InvalidArgument.field(
                "update_mask", "nothing to change: set gateway or default_payment_method, or name it here"
            )
        return named
    if paths == ["*"]:
        return use_cases.SETTINGS_FIELDS
    for index, path in enumerate(paths):
        if path not in use_cases.SETTINGS_FIELDS:
            raise InvalidArgument.field(
                f"update_mask.paths[{index}]", f"must be one of {', '.join(use_cases.SETTINGS_FIELDS)} or *"
            )
    return tuple(dict.fromkeys(paths))


class PaymentServicer(payment_pb2_grpc.PaymentServiceServicer):
    def __init__(self, deps: PaymentDeps):
        self._deps = deps

    async def CreatePayment(
        self, request: payment_pb2.CreatePaymentRequest, context: grpc.aio.ServicerContext
    ) -> payment_pb2.Payment:
        command = use_cases.CreatePayment(
            account_id=request.account_id,
            invoice_id=request.invoice_id,
            amount=_optional_money(request),
            payment_method=request.payment_method,
            description=request.description,
            metadata=tuple(sorted(request.metadata.items())),
        )
        caller = _caller("CreatePayment", request.request_id)
        return payment_to_proto(await use_cases.create_payment(self._deps, caller, command))

    async def GetPayment(
        self, request: payment_pb2.GetPaymentRequest, context: grpc.aio.ServicerContext
    ) -> payment_pb2.Payment:
        return payment_to_proto(await use_cases.get_payment(self._deps, _caller("GetPayment"), request.id))

    async def ListPayments(
        self, request: payment_pb2.ListPaymentsRequest, context: grpc.aio.ServicerContext
    ) -> payment_pb2.ListPaymentsResponse:
        statuses = statuses_from(request.statuses, _STATUS_FROM)
        page = await use_cases.list_payments(
            self._deps,
            _caller("ListPayments"),
            account_id=request.account_id,
            invoice_id=request.invoice_id,
            statuses=statuses,
            size=request.page_size,
            page_token=request.page_token,
        )
        return payment_pb2.ListPaymentsResponse(
            payments=[payment_to_proto(payment) for payment in page.payments],
            next_page_token=page.next_page_token,
        )

    async def RefundPayment(
        self, request: payment_pb2.RefundPaymentRequest, context: grpc.aio.ServicerContext
    ) -> payment_pb2.Payment:
        command = use_cases.RefundPayment(request.id, _optional_money(request), request.reason)
        caller = _caller("RefundPayment", request.request_id)
        return payment_to_proto(await use_cases.refund_payment(self._deps, caller, command))

    async def GetPaymentSettings(
        self, request: payment_pb2.GetPaymentSettingsRequest, context: grpc.aio.ServicerContext
    ) -> payment_pb2.PaymentSettings:
        caller = _caller("GetPaymentSettings")
        return settings_to_proto(await use_cases.get_payment_settings(self._deps, caller, request.account_id))

    async def UpdatePaymentSettings(
        self, request: payment_pb2.UpdatePaymentSettingsRequest, context: grpc.aio.ServicerContext
    ) -> payment_pb2.PaymentSettings:
        if not request.HasField("settings"):
            raise InvalidArgument.field("settings", "is required")
        command = use_cases.UpdatePaymentSettings(
            account_id=request.settings.account_id,
            gateway=request.settings.gateway,
            default_payment_method=request.settings.default_payment_method,
            fields=_settings_fields(request),
        )
        caller = _caller("UpdatePaymentSettings", request.request_id)
        return settings_to_proto(await use_cases.update_payment_settings(self._deps, caller, command))
