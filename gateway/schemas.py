"""JSON Schemas (OpenAPI 3.1 dialect) for protobuf messages, following the proto3 JSON mapping.

`SchemaBuilder` turns message and enum descriptors into entries of
`components/schemas`, named by their full proto name (`tally.account.v1.Account`),
and hands back `$ref`s to them, so recursive messages are safe. Well-known types
are inlined as the JSON they map to (Timestamp is an RFC 3339 string, and so on),
except `google.protobuf.Any`, which is shared with the error schema.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from google.api import field_behavior_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

JSON = dict[str, Any]

REF_PREFIX = "#/components/schemas/"
ANY = "google.protobuf.Any"
STATUS = "google.rpc.Status"

_T = FieldDescriptor
_INT64_TYPES = {_T.TYPE_INT64, _T.TYPE_SINT64, _T.TYPE_SFIXED64}
_UINT64_TYPES = {_T.TYPE_UINT64, _T.TYPE_FIXED64}
_INT32_TYPES = {_T.TYPE_INT32, _T.TYPE_SINT32, _T.TYPE_SFIXED32}
_UINT32_TYPES = {_T.TYPE_UINT32, _T.TYPE_FIXED32}

_INT64: JSON = {"type": "string", "format": "int64", "pattern": r"^-?[0-9]+$"}
_UINT64: JSON = {"type": "string", "format": "int64", "pattern": r"^[0-9]+$"}
_BYTES: JSON = {"type": "string", "format": "byte", "contentEncoding": "base64"}


def scalar_schema(field: FieldDescriptor) -> JSON:
    """The schema of one value of a scalar (non-message, non-enum) field."""
    kind = field.type
    if kind in _INT64_TYPES:
        return dict(_INT64)
    if kind in _UINT64_TYPES:
        return dict(_UINT64)
    if kind in _INT32_TYPES:
        return {"type": "integer", "format": "int32"}
    if kind in _UINT32_TYPES:
        return {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**32 - 1}
    if kind == _T.TYPE_DOUBLE:
        return {"type": "number", "format": "double"}
    if kind == _T.TYPE_FLOAT:
        return {"type": "number", "format": "float"}
    if kind == _T.TYPE_BOOL:
        return {"type": "boolean"}
    if kind == _T.TYPE_BYTES:
        return dict(_BYTES)
    return {"type": "string"}


def _nullable(schema: JSON) -> JSON:
    return {**schema, "type": [schema["type"], "null"]}


# Well-known types whose JSON form is not an object of their fields.
WELL_KNOWN: dict[str, JSON] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {
        "type": "string",
        "pattern": r"^-?\d+(\.\d+)?s$",
        "description": "Seconds with up to 9 fractional digits, ending in `s`, for example `1.5s`.",
    },
    "google.protobuf.FieldMask": {
        "type": "string",
        "description": "Comma-separated field paths in lowerCamelCase, for example `displayName,email`.",
    },
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.DoubleValue": _nullable({"type": "number", "format": "double"}),
    "google.protobuf.FloatValue": _nullable({"type": "number", "format": "float"}),
    "google.protobuf.Int64Value": _nullable(_INT64),
    "google.protobuf.UInt64Value": _nullable(_UINT64),
    "google.protobuf.Int32Value": _nullable({"type": "integer", "format": "int32"}),
    "google.protobuf.UInt32Value": _nullable({"type": "integer", "format": "int64", "minimum": 0}),
    "google.protobuf.BoolValue": _nullable({"type": "boolean"}),
    "google.protobuf.StringValue": _nullable({"type": "string"}),
    "google.protobuf.BytesValue": _nullable(_BYTES),
}
# Well-known types that make sense as one query parameter.
QUERY_WELL_KNOWN = frozenset(
    name for name in WELL_KNOWN if name.endswith(("Value", "Timestamp", "Duration", "FieldMask"))
) - {"google.protobuf.Value", "google.protobuf.ListValue"}

ANY_SCHEMA: JSON = {
    "type": "object",
    "description": "A message of any type: its JSON fields next to `@type`, the URL naming the type.",
    "properties": {
        "@type": {"type": "string", "description": "For example `type.googleapis.com/google.rpc.ErrorInfo`."}
    },
    "required": ["@type"],
    "additionalProperties": True,
}
STATUS_SCHEMA: JSON = {
    "type": "object",
    "description": (
        "The error body (a `google.rpc.Status` in JSON). `details` holds typed detail messages such as "
        "`google.rpc.ErrorInfo` (always), `google.rpc.BadRequest` (field violations), "
        "`google.rpc.RetryInfo` and `google.rpc.QuotaFailure` (rate limits)."
    ),
    "properties": {
        "code": {"type": "integer", "format": "int32", "description": "The gRPC status code."},
        "message": {"type": "string", "description": "A developer-facing error message, in English."},
        "details": {"type": "array", "items": {"$ref": REF_PREFIX + ANY}},
    },
}


# Error statuses: their `components/responses` name and the gRPC codes behind them.
ERROR_RESPONSES: dict[str, tuple[str, str]] = {
    "400": (
        "BadRequest",
        "INVALID_ARGUMENT, FAILED_PRECONDITION or OUT_OF_RANGE: the request is wrong as sent.",
    ),
    "401": ("Unauthorized", "UNAUTHENTICATED: no bearer token, or one that is invalid or expired."),
    "403": ("Forbidden", "PERMISSION_DENIED: the token lacks a scope the method requires."),
    "404": ("NotFound", "NOT_FOUND: the resource does not exist (or belongs to another customer)."),
    "409": (
        "Conflict",
        "ALREADY_EXISTS or ABORTED: a conflicting resource exists, or an etag did not match.",
    ),
    "429": (
        "TooManyRequests",
        "RESOURCE_EXHAUSTED: a rate limit was hit; retry after `Retry-After` seconds.",
    ),
    "default": ("Error", "Any other error. Every error body is a `google.rpc.Status` in JSON."),
}


def ref(name: str) -> JSON:
    return {"$ref": REF_PREFIX + name}


def behaviors(field: FieldDescriptor) -> set[int]:
    """The google.api.field_behavior values of a field."""
    return set(field.GetOptions().Extensions[field_behavior_pb2.field_behavior])


def is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def is_required(field: FieldDescriptor) -> bool:
    return field_behavior_pb2.REQUIRED in behaviors(field)


class SchemaBuilder:
    """Collects the component schemas of every message and enum it is asked about."""

    def __init__(self, comments: Mapping[str, str], *, use_proto_names: bool = False) -> None:
        self.comments = comments
        self.use_proto_names = use_proto_names
        self.schemas: dict[str, JSON] = {ANY: copy.deepcopy(ANY_SCHEMA), STATUS: copy.deepcopy(STATUS_SCHEMA)}
        # Messages whose component schema lists their REQUIRED fields in `required`.
        self.with_required: set[str] = set()

    def json_name(self, field: FieldDescriptor) -> str:
        return field.name if self.use_proto_names else field.json_name

    def message(self, message: Descriptor) -> JSON:
        """A schema for a message: the inline JSON form of a well-known type, else a `$ref`."""
        if message.full_name in WELL_KNOWN:
            return copy.deepcopy(WELL_KNOWN[message.full_name])
        if message.full_name not in self.schemas:
            self.schemas[message.full_name] = {}  # claimed first, so recursion ends in a $ref
            self.schemas[message.full_name] = self.object_schema(
                message, required=message.full_name in self.with_required
            )
        return ref(message.full_name)

    def object_schema(
        self, message: Descriptor, *, required: bool = False, exclude: Iterable[str] = ()
    ) -> JSON:
        """The object schema of a message's fields, leaving out the (proto-named) fields in `exclude`."""
        skipped = set(exclude)
        properties: JSON = {}
        required_names: list[str] = []
        for field in message.fields:
            if field.name in skipped:
                continue
            name = self.json_name(field)
            properties[name] = self.field(field)
            if required and is_required(field):
                required_names.append(name)
        schema: JSON = {"type": "object"}
        if description := self.comments.get(message.full_name):
            schema["description"] = description
        schema["properties"] = properties
        if required_names:
            schema["required"] = required_names
        oneofs = [o for o in message.oneofs if not _is_synthetic(o.fields)]
        for oneof in oneofs:
            names = ", ".join(f"`{self.json_name(f)}`" for f in oneof.fields if f.name not in skipped)
            schema.setdefault("x-oneofs", {})[oneof.name] = f"At most one of {names}."
        return schema

    def field(self, field: FieldDescriptor) -> JSON:
        """The schema of a field's JSON value, with its comment and field behaviour."""
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            value = entry.fields_by_name["value"]
            schema: JSON = {"type": "object", "additionalProperties": self.value(value)}
        elif field.is_repeated:
            schema = {"type": "array", "items": self.value(field)}
        else:
            schema = self.value(field)
        if description := self.comments.get(field.full_name):
            schema["description"] = description
        found = behaviors(field)
        if field_behavior_pb2.OUTPUT_ONLY in found:
            schema["readOnly"] = True
        if field_behavior_pb2.INPUT_ONLY in found:
            schema["writeOnly"] = True
        return schema

    def value(self, field: FieldDescriptor) -> JSON:
        """The schema of one value of a field (an element, when the field is repeated)."""
        if field.message_type is not None:
            return self.message(field.message_type)
        if field.enum_type is not None:
            return self.enum(field.enum_type)
        return scalar_schema(field)

    def enum(self, enum: EnumDescriptor) -> JSON:
        if enum.full_name == "google.protobuf.NullValue":
            return {"type": "null"}
        if enum.full_name not in self.schemas:
            lines = [self.comments.get(enum.full_name, "")]
            for value in enum.values:
                text = self.comments.get(f"{enum.full_name}.{value.name}", "").replace("\n", " ")
                lines.append(f"- `{value.name}`" + (f": {text}" if text else ""))
            schema: JSON = {"type": "string", "enum": [value.name for value in enum.values]}
            schema["description"] = (lines[0] + "\n\n" + "\n".join(lines[1:])).strip()
            self.schemas[enum.full_name] = schema
        return ref(enum.full_name)


def _is_synthetic(fields: Iterable[FieldDescriptor]) -> bool:
    """Whether a oneof is the synthetic one of a proto3 `optional` field."""
    members = list(fields)
    return (
        len(members) == 1
        and members[0].has_presence
        and members[0].containing_oneof is not None
        and (members[0].containing_oneof.name == "_" + members[0].name)
    )


def error_responses() -> JSON:
    """`components/responses`: one entry per error status, each a google.rpc.Status body."""
    responses: JSON = {}
    for name, description in ERROR_RESPONSES.values():
        responses[name] = {
            "description": description,
            "content": {"application/json": {"schema": ref(STATUS)}},
        }
    responses["TooManyRequests"]["headers"] = {
        "Retry-After": {
            "description": "Seconds to wait before retrying (also in the RetryInfo detail).",
            "schema": {"type": "integer", "minimum": 0},
        }
    }
    return responses
