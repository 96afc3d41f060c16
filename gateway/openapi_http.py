"""The HTTP side of the OpenAPI document: the headers the gateway reads and writes, its error answers,
and the links from a created resource to the operations on it.

The headers are gateway/app.py's; the statuses are core/status.py's table plus the gateway's own
405 and 413.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor

from core.idempotency import MAX_REQUEST_ID_LENGTH, REQUEST_ID_PATTERN
from gateway.schemas import JSON, STATUS, ref

if TYPE_CHECKING:
    from gateway.openapi import Binding, PathParam

# Error statuses: their `components/responses` name and when they are answered.
ERROR_RESPONSES: dict[str, tuple[str, str]] = {
    "400": (
        "BadRequest",
        "INVALID_ARGUMENT or OUT_OF_RANGE: the request is wrong as sent; a BadRequest detail names "
        "the fields.",
    ),
    "401": ("Unauthorized", "UNAUTHENTICATED: no bearer token, or one that is invalid or expired."),
    "403": ("Forbidden", "PERMISSION_DENIED: the token lacks a scope the method requires."),
    "404": ("NotFound", "NOT_FOUND: the resource does not exist (or belongs to another customer)."),
    "405": ("MethodNotAllowed", "The path exists, but not with this method; `Allow` lists the ones it has."),
    "409": (
        "Conflict",
        "ALREADY_EXISTS, ABORTED or FAILED_PRECONDITION: the request is well formed but conflicts with the "
        "current state: a taken email, an etag that no longer matches, a request_id used for another "
        "request, a resource not in the state the method needs.",
    ),
    "413": ("ContentTooLarge", "The body is larger than the gateway takes (TALLY_GATEWAY_MAX_BODY_BYTES)."),
    "429": (
        "TooManyRequests",
        "RESOURCE_EXHAUSTED: a rate limit was hit; retry after `Retry-After` seconds.",
    ),
    "500": (
        "InternalError",
        "INTERNAL, UNKNOWN or DATA_LOSS: a fault of the server, logged with its trace id.",
    ),
    "501": ("NotImplemented", "UNIMPLEMENTED: the server does not implement this method."),
    "503": (
        "Unavailable",
        "UNAVAILABLE: the server cannot take the call now (its database is down, it is shutting down); "
        "retry with backoff.",
    ),
    "504": ("GatewayTimeout", "DEADLINE_EXCEEDED: the deadline (`Grpc-Timeout`) passed first."),
    "default": ("Error", "Any other error. Every error body is a `google.rpc.Status` in JSON."),
}

# What the gateway answers with every response (gateway/app.py), and the checks core.request_context makes.
X_REQUEST_ID: JSON = {
    "description": (
        "The caller's `X-Request-Id` when it is 1 to 128 letters, digits or `._:-`, else one the server "
        "made up; the access log line and audit events of the call carry it."
    ),
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
}
_KEY: JSON = {"type": "string", "maxLength": MAX_REQUEST_ID_LENGTH, "pattern": REQUEST_ID_PATTERN}
# Request-Timeout (seconds) is read too when Grpc-Timeout is absent; it is left out of the
# document because a header parameter of type number is one that tools send as text and then
# read back as a string, so they cannot tell a valid value from an invalid one.
_TIMEOUT: JSON = {
    "name": "Grpc-Timeout",
    "in": "header",
    "description": "The call's deadline, as gRPC writes it: up to 8 digits and a unit (`H`ours, `M`inutes, "
    "`S`econds, `m`illi-, `u`micro-, `n`anoseconds), for example `5S`. When it is absent, "
    "`Request-Timeout` gives the deadline in seconds (more than 0, at most 86400).",
    "schema": {"type": "string", "pattern": "^[0-9]{1,8}[HMSmun]$"},
}


# Headers one method reads itself, which the gateway passes on as metadata (gateway/app.py).
_STRIPE_SIGNATURE: JSON = {
    "name": "Stripe-Signature",
    "in": "header",
    "description": "Stripe's signature over the raw body: `t=<unix time>,v1=<hex HMAC-SHA256>`, with "
    "the webhook endpoint's signing secret (TALLY_STRIPE_WEBHOOK_SECRET). One that does not verify, "
    "or is older than five minutes, is 400.",
    "required": True,
    "schema": {"type": "string", "minLength": 1},
}
METHOD_HEADERS: dict[str, tuple[JSON, ...]] = {
    "tally.billing.v1.GatewayEventService.ReceiveStripeEvent": (_STRIPE_SIGNATURE,),
}
# The media types a raw (google.api.HttpBody) request body is documented with, by method; others `*/*`.
_RAW_BODY_TYPES: dict[str, tuple[str, str]] = {
    "tally.billing.v1.GatewayEventService.ReceiveStripeEvent": (
        "application/json",
        "A Stripe event, exactly as Stripe sent it: the signature is over these bytes.",
    ),
}


def raw_request_body(method: MethodDescriptor) -> JSON:
    """The request body of a method taking a google.api.HttpBody whole: bytes the method reads itself."""
    kind, description = _RAW_BODY_TYPES.get(
        method.full_name, ("*/*", "The body as sent; Content-Type says what it is.")
    )
    schema: JSON = (
        {"type": "object"} if kind == "application/json" else {"type": "string", "format": "binary"}
    )
    return {"required": True, "description": description, "content": {kind: {"schema": schema}}}


def takes_request_id(method: MethodDescriptor) -> bool:
    """Whether the gateway fills the method's `request_id` from a header (gateway/transcoder.py)."""
    field = method.input_type.fields_by_name.get("request_id")
    return field is not None and field.type == FieldDescriptor.TYPE_STRING and not field.is_repeated


def header_parameters(method: MethodDescriptor) -> list[JSON]:
    """The request headers the gateway reads for one method."""
    headers: list[JSON] = []
    if takes_request_id(method):
        headers.append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "description": "Sets an empty `request_id`: the same key with the same request replays "
                "the first response; with a different request it is 409. Kept at least 24 hours.",
                "schema": _KEY,
            }
        )
    headers.append(
        {
            "name": "X-Request-Id",
            "in": "header",
            "description": "Correlates the call in logs, traces and audit events; answered back. Any value "
            "is taken; one that is not 1 to 128 letters, digits or `._:-` is replaced by one the server "
            "makes."
            + (
                " The client's own (valid) id also serves as `Idempotency-Key` when none is sent."
                if headers
                else ""
            ),
            "schema": {"type": "string"},
        }
    )
    headers += [dict(header) for header in METHOD_HEADERS.get(method.full_name, ())]
    return [*headers, dict(_TIMEOUT)]


def response_headers() -> JSON:
    return {"X-Request-Id": dict(X_REQUEST_ID)}


def error_responses() -> JSON:
    """`components/responses`: one entry per error status, each a google.rpc.Status body."""
    responses: JSON = {}
    for name, description in ERROR_RESPONSES.values():
        responses[name] = {
            "description": description,
            "headers": response_headers(),
            "content": {"application/json": {"schema": ref(STATUS)}},
        }
    responses["TooManyRequests"]["headers"]["Retry-After"] = {
        "description": "Seconds to wait before retrying (also in the RetryInfo detail).",
        "schema": {"type": "integer", "minimum": 0},
    }
    responses["MethodNotAllowed"]["headers"]["Allow"] = {
        "description": "The methods the path has.",
        "required": True,
        "schema": {"type": "string"},
    }
    responses["Unauthorized"]["headers"]["WWW-Authenticate"] = {
        "description": '`Bearer`, with `error="invalid_token"` when a token was sent.',
        "required": True,
        "schema": {"type": "string", "pattern": "^Bearer"},
    }
    return responses


# ---------------------------------------------------------------------------------------------------------
# Links


@dataclass(frozen=True)
class Operation:
    """One documented operation, for the links between them."""

    method: MethodDescriptor
    binding: Binding
    path: str
    path_params: list[PathParam]
    document: JSON


def _id_pointer(message: Descriptor, json_name: Callable[[FieldDescriptor], str]) -> str | None:
    """The JSON pointer of the created resource's `id` in a response: `/id`, or `/serviceAccount/id`."""
    own = message.fields_by_name.get("id")
    if own is not None and own.type == FieldDescriptor.TYPE_STRING:
        return f"/{json_name(own)}"
    for field in message.fields:
        nested = field.message_type
        if nested is not None and not field.is_repeated and "id" in nested.fields_by_name:
            return f"/{json_name(field)}/{json_name(nested.fields_by_name['id'])}"
    return None


def add_links(operations: Sequence[Operation], json_name: Callable[[FieldDescriptor], str]) -> None:
    """Links from each create (POST to a collection) to the operations on the created item.

    An item operation is one whose path is the collection's plus `/{param}` (and maybe a
    `:verb`), where `param` sets an `id` field: the link fills it from the created `id`.
    """
    for create in operations:
        if create.binding.verb != "post" or create.path_params or create.binding.response_body:
            continue
        pointer = _id_pointer(create.method.output_type, json_name)
        if pointer is None:
            continue
        links: JSON = {}
        for item in operations:
            if len(item.path_params) != 1 or item is create:
                continue
            param = item.path_params[0]
            rest = item.path.removeprefix(create.path)
            if rest == item.path or param.field_path.rsplit(".", 1)[-1] != "id":
                continue
            if rest.split(":", 1)[0] != "/{" + param.parameter + "}":
                continue
            operation_id = item.document["operationId"]
            links[operation_id] = {
                "operationId": operation_id,
                "parameters": {f"path.{param.parameter}": f"$response.body#{pointer}"},
                "description": f"`{param.parameter}` is the created resource's id.",
            }
        if links:
            create.document["responses"]["200"]["links"] = links
