"""Request fields as the gateway sees them: by JSON or proto name, what kind of value each
takes, and json_format's errors said in those terms (`count: must be an integer from
-2147483648 to 2147483647`) rather than in Python's (`invalid literal for int()`).

No HTTP in here; gateway/transcoder.py builds requests with these.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Any, cast

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from gateway.errors import GatewayError

WRAPPERS = frozenset(
    f"google.protobuf.{name}Value"
    for name in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
)
_FAILED_FIELD = re.compile(r"Failed to parse (\S+) field: ")
_ONEOF_CLASH = re.compile(r'multiple "(\w+)" oneof fields')
INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_WKT_KINDS = {
    "google.protobuf.Timestamp": "an RFC 3339 timestamp such as 2024-01-31T09:30:00Z",
    "google.protobuf.Duration": "a duration in seconds with an s suffix, such as 1.5s",
    "google.protobuf.FieldMask": "a comma-separated list of field paths",
    "google.protobuf.Struct": "a JSON object",
    "google.protobuf.ListValue": "a JSON list",
    "google.protobuf.Any": "a JSON object with an @type this service knows",
}
_ENUM_NAMES_SHOWN = 12
# json_format's words for a string holding half of a UTF-16 pair (JSON "\\ud800"), which UTF-8 cannot carry.
_SURROGATE = "Unpaired surrogate"


@functools.cache
def named_fields(descriptor: Descriptor) -> dict[str, FieldDescriptor]:
    """Fields by proto name and by JSON name."""
    found: dict[str, FieldDescriptor] = {}
    for field in descriptor.fields:
        found[field.name] = field
        found[field.json_name] = field
    return found


def descriptor_of(message: Message) -> Descriptor:
    return cast(Descriptor, message.DESCRIPTOR)


def is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and bool(field.message_type.GetOptions().map_entry)


def is_repeated(field: FieldDescriptor) -> bool:
    return field.is_repeated


def plain_type(field: FieldDescriptor) -> Descriptor | None:
    """The message type of a field with fields of its own in JSON (not a well-known type), else None."""
    kind = field.message_type
    return kind if kind is not None and not kind.full_name.startswith("google.protobuf.") else None


def unknown_fields(descriptor: Descriptor, value: Any, prefix: str = "") -> list[str]:
    """Dotted paths (proto names) of the JSON object keys that name no field, at any depth."""
    if not isinstance(value, dict):
        return []
    unknown: list[str] = []
    for key, item in value.items():
        field = named_fields(descriptor).get(key)
        if field is None:
            unknown.append(prefix + key)
            continue
        path = prefix + field.name
        if is_map(field) and field.message_type is not None:
            value_type = plain_type(field.message_type.fields_by_name["value"])
            if value_type is not None and isinstance(item, dict):
                for map_key, entry in item.items():
                    unknown += unknown_fields(value_type, entry, f"{path}[{map_key}].")
        elif (kind := plain_type(field)) is not None:
            items = item if is_repeated(field) and isinstance(item, list) else [item]
            for entry in items:
                unknown += unknown_fields(kind, entry, path + ".")
    return unknown


def _proto_path(descriptor: Descriptor | None, names: Iterable[str]) -> tuple[str, FieldDescriptor | None]:
    """JSON names along a path turned into proto names, as far as the descriptors go, and the
    field the path ends at (None when some name is not a field)."""
    out: list[str] = []
    field: FieldDescriptor | None = None
    for name in names:
        field = named_fields(descriptor).get(name) if descriptor is not None else None
        out.append(field.name if field is not None else name)
        descriptor = plain_type(field) if field is not None else None
    return ".".join(out), field


def value_kind(field: FieldDescriptor) -> str:
    """What one value of `field` must be, in the API's terms: 'an integer from 0 to 4294967295'."""
    if field.type in INT_RANGES:
        low, high = INT_RANGES[field.type]
        return f"an integer from {low} to {high}"
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return "a number"
    if field.type == FieldDescriptor.TYPE_BOOL:
        return "true or false"
    if field.type == FieldDescriptor.TYPE_STRING:
        return "a string"
    if field.type == FieldDescriptor.TYPE_BYTES:
        return "base64-encoded bytes"
    if field.enum_type is not None:
        names = [value.name for value in field.enum_type.values]
        if len(names) > _ENUM_NAMES_SHOWN:
            return f"a value of {field.enum_type.full_name} (by name or number)"
        return "one of " + ", ".join(names)
    kind = field.message_type
    if kind is None:
        return "a valid value"
    if kind.full_name in WRAPPERS:
        return value_kind(kind.fields_by_name["value"])
    return _WKT_KINDS.get(kind.full_name, "a JSON object")


def expected(field: FieldDescriptor) -> str:
    """'must be ...' for `field` as a whole: a list or a map says what each item must be."""
    if is_map(field) and field.message_type is not None:
        return f"must be a JSON object, each value {value_kind(field.message_type.fields_by_name['value'])}"
    if is_repeated(field):
        return f"must be a list, each item {value_kind(field)}"
    return f"must be {value_kind(field)}"


def readable_parse_error(error: Exception, descriptor: Descriptor, prefix: str = "") -> GatewayError:
    """json_format's 'Failed to parse x field: Failed to parse y field: <Python's words>' as
    `x.y: must be ...`, said from y's type (json_format's own text is written for programmers)."""
    text = str(error).split("\n", 1)[0]
    names = _FAILED_FIELD.findall(text)
    if not names:
        return GatewayError.invalid(prefix.rstrip(".") or "body", "must be a JSON object")
    path, field = _proto_path(descriptor, names)
    clash = _ONEOF_CLASH.search(text)
    if clash is not None:
        description = f"sets more than one field of the oneof {clash.group(1)}"
    elif field is None:
        description = "is not a field here"
    elif _SURROGATE in text:
        description = "must be Unicode text; a lone surrogate (such as \\ud800) is not"
    else:
        description = expected(field)
    return GatewayError.invalid(prefix + path, description)


def parse_into(obj: Any, message: Message, *, strict: bool, prefix: str = "") -> None:
    try:
        json_format.ParseDict(obj, message, ignore_unknown_fields=not strict)
    except (json_format.ParseError, ValueError, TypeError, AttributeError) as exc:
        raise readable_parse_error(exc, descriptor_of(message), prefix) from None


@functools.lru_cache(maxsize=4096)
def resolve_path(descriptor: Descriptor, key: str) -> tuple[FieldDescriptor, ...] | None:
    """The fields along a dotted query key, or None if some segment names no usable field.
    Cached: path variables and query keys repeat, so the descriptor walk happens once per key."""
    fields: list[FieldDescriptor] = []
    current: Descriptor | None = descriptor
    for segment in key.split("."):
        if current is None:
            return None
        field = named_fields(current).get(segment)
        if field is None:
            return None
        fields.append(field)
        current = None if is_repeated(field) else plain_type(field)
    return tuple(fields)
