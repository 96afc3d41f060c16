"""Hostile requests made from the descriptors: for every method of every served service, each
string, integer and id field of its request (nested messages included, a few levels deep) with
hostile values, as a gRPC payload and, where the method has an http rule, as a REST request that
puts the value where the rule puts the field (path, query or body).

Nothing here knows a method by name: a method that exists is covered. The values that make a
request otherwise valid (so the hostile one reaches past the first check) come from the
caller's `Baseline`, by field name and type.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

from google.api import field_behavior_pb2
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from gateway.fields import descriptor_of
from gateway.routes import Route, routes_of

# Stands for the hostile value while a request is built; replaced in its encoded form afterwards
# (so invalid UTF-8 can go over gRPC, which Python's protobuf would refuse to set).
PLACEHOLDER = "HOSTILEX"
_INVALID_UTF8 = b"\xff\xfe\xc3\x28\xed\xa0\x80\x80"  # as long as PLACEHOLDER: the length prefix holds
MAX_DEPTH = 3
HUGE = 1_000_000
URL_HUGE = 7_000  # a URL past aiohttp's 8,190-byte request line is refused before any route
_INT32 = (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32)
_INT64 = (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64)
_UINT = (
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_FIXED64,
)


@dataclass(frozen=True)
class Hostile:
    """One hostile value in each form it can be sent in; None where it cannot be."""

    kind: str
    grpc: Any = None  # the value to set in the message
    grpc_bytes: bytes | None = None  # bytes to put in place of PLACEHOLDER's in the encoded message
    json: str | bytes | None = None  # JSON text of the value, for a REST body
    url: str | None = None  # percent-encoded, for a REST path or query


def _text(kind: str, value: str, url_value: str | None = None) -> Hostile:
    url = quote((url_value if url_value is not None else value).encode(), safe="")
    return Hostile(kind, grpc=value, json=json.dumps(value), url=url)


def string_values(is_id: bool) -> list[Hostile]:
    values = [
        _text("nul", "a\x00b"),
        _text("control", "a\x01\x1b[31mb\x7f"),
        _text("bidi", "a\u202eb\u200bc\u2066"),
        Hostile(
            "invalid_utf8", grpc_bytes=_INVALID_UTF8, json=b'"' + _INVALID_UTF8 + b'"', url="%FF%FE%C3%28"
        ),
        Hostile("lone_surrogate", json='"a\\ud800b"', url="a%ED%A0%80b"),
        _text("huge", "x" * HUGE, "x" * URL_HUGE),
    ]
    if is_id:
        values.append(_text("huge_id", "acct_" + "9" * 7_000))
    return values


def integer_values(field: FieldDescriptor) -> list[Hostile]:
    if field.type in _UINT:
        bits = 32 if field.type in _UINT[:2] else 64
        inside, outside = [0, 2**bits - 1], [-1, 2**bits]
    else:
        bits = 32 if field.type in _INT32 else 64
        inside, outside = (
            [-(2 ** (bits - 1)), -1, 2 ** (bits - 1) - 1],
            [-(2 ** (bits - 1)) - 1, 2 ** (bits - 1)],
        )
    values = [Hostile(f"int_{n}", grpc=n, json=str(n), url=str(n)) for n in inside]
    values += [Hostile(f"int_over_{n}", json=str(n), url=str(n)) for n in outside]  # REST only
    return values


def enum_values() -> list[Hostile]:
    return [
        Hostile("enum_unknown", grpc=2**31 - 1, json=str(2**31 - 1), url=str(2**31 - 1)),
        Hostile("enum_negative", grpc=-1, json="-1", url="-1"),
        Hostile("enum_name", json='"NOT_A_VALUE\\u0000"', url="NOT_A_VALUE%00"),
    ]


def is_id(field: FieldDescriptor) -> bool:
    return field.name == "id" or field.name.endswith("_id") or field.name in ("name", "parent")


def behaviors(field: FieldDescriptor) -> list[int]:
    return list(field.GetOptions().Extensions[field_behavior_pb2.field_behavior])


def _own_message(field: FieldDescriptor) -> Descriptor | None:
    """The message type to walk into: ours, not a well-known type or a map entry."""
    kind = field.message_type
    if kind is None or kind.GetOptions().map_entry or kind.full_name.startswith("google.protobuf."):
        return None
    return kind


def _walks_one(field: FieldDescriptor) -> bool:
    """A required list of messages (the events of a batch): walked as a list of one."""
    return field.is_repeated and field_behavior_pb2.REQUIRED in behaviors(field)


@dataclass(frozen=True)
class Slot:
    """Where a hostile value goes: a field path (proto names), and for a map whether key or value."""

    path: tuple[str, ...]
    field: FieldDescriptor
    map_part: str = ""  # "key" or "value" for a map<string, ...> field

    @property
    def name(self) -> str:
        return ".".join(self.path) + (f"[{self.map_part}]" if self.map_part else "")


def slots(descriptor: Descriptor, path_bound: frozenset[str], prefix: tuple[str, ...] = ()) -> Iterator[Slot]:
    """Every string, integer, enum and id field, nested messages up to MAX_DEPTH; OUTPUT_ONLY
    fields only when the URL path binds them (the server ignores them otherwise)."""
    for field in descriptor.fields:
        path = (*prefix, field.name)
        if field_behavior_pb2.OUTPUT_ONLY in behaviors(field) and ".".join(path) not in path_bound:
            continue
        kind = field.message_type
        if kind is not None and kind.GetOptions().map_entry:
            if kind.fields_by_name["key"].type == FieldDescriptor.TYPE_STRING:
                yield Slot(path, field, "key")
            if kind.fields_by_name["value"].type == FieldDescriptor.TYPE_STRING:
                yield Slot(path, field, "value")
        elif (inner := _own_message(field)) is not None:
            if len(path) < MAX_DEPTH and (not field.is_repeated or _walks_one(field)):
                yield from slots(inner, path_bound, path)
        elif (
            kind is None
            and field.type != FieldDescriptor.TYPE_BOOL
            and field.type != FieldDescriptor.TYPE_BYTES
        ):
            yield Slot(path, field)


def values_for(slot: Slot) -> list[Hostile]:
    field = slot.field
    if slot.map_part:
        return string_values(is_id=False)
    if field.type == FieldDescriptor.TYPE_STRING:
        return string_values(is_id(field))
    if field.enum_type is not None:
        return enum_values()
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return [Hostile("float_huge", grpc=1e308, json="1e308", url="1e308")]
    return integer_values(field)


@dataclass(frozen=True)
class Case:
    method: MethodDescriptor
    slot: Slot | None  # None: a case about the whole message (corrupt, deep)
    hostile: Hostile

    @property
    def id(self) -> str:
        return f"{self.method.name}:{self.slot.name if self.slot else '*'}:{self.hostile.kind}"


# A payload that is no protobuf (a length running past the end), and one that nests groups of an
# unknown field far past the parser's depth limit.
CORRUPT = Hostile("corrupt_protobuf", grpc_bytes=b"\x0a\xff\xff\xff\x0f\x01")
DEEP_GROUPS = Hostile("deep_protobuf", grpc_bytes=b"\xa3\x3e" * 5_000 + b"\xa4\x3e" * 5_000)
DEEP_JSON = Hostile("deep_json", json=b"[" * 100_000 + b"]" * 100_000)
# The baseline alone, first: what a method answers when nothing is hostile (OK, unless the
# samples cannot make its request valid; then its other answers say less).
BASELINE = Hostile("baseline")


def cases_for(method: MethodDescriptor, routes: list[Route]) -> list[Case]:
    bound = frozenset(field for route in routes for field in route.path_fields)
    found = [Case(method, None, BASELINE)]
    for slot in slots(method.input_type, bound):
        found += [Case(method, slot, hostile) for hostile in values_for(slot)]
    found += [Case(method, None, CORRUPT), Case(method, None, DEEP_GROUPS), Case(method, None, DEEP_JSON)]
    return found


def methods_of(services: tuple[ServiceDescriptor, ...]) -> list[tuple[MethodDescriptor, list[Route]]]:
    """Every method with the routes its http rule binds (maybe none)."""
    routes = routes_of(services)
    return [
        (method, [route for route in routes if route.method is method])
        for service in services
        for method in service.methods
    ]


# --- building the request ----------------------------------------------------------------------


class Baseline(Protocol):
    """Valid values by field, so a request's only fault is the hostile value."""

    def __call__(self, field: FieldDescriptor, method: MethodDescriptor) -> Any: ...

    def knows(self, field: FieldDescriptor) -> bool:
        """Whether it has a value for this optional field (set in every message the request has)."""
        ...


def baseline_message(
    method: MethodDescriptor, sample: Baseline, path_bound: frozenset[str], slot: Slot | None = None
) -> Message:
    """A request with every REQUIRED field (and every path-bound one) set from `sample`, and the
    optional ones `sample` knows; optional messages only around `slot` (an address, with the
    region code `sample` knows, when the hostile value is its street)."""
    message = GetMessageClass(method.input_type)()
    around = {slot.path[:depth] for depth in range(len(slot.path))} if slot is not None else set()
    _fill(message, method, sample, path_bound, (), around)
    return message


def _fill(
    message: Message,
    method: MethodDescriptor,
    sample: Baseline,
    bound: frozenset[str],
    prefix: tuple[str, ...],
    around: set[tuple[str, ...]],
) -> None:
    for field in descriptor_of(message).fields:
        path = (*prefix, field.name)
        wanted = field_behavior_pb2.REQUIRED in behaviors(field) or ".".join(path) in bound
        if _own_message(field) is not None and _walks_one(field):
            _fill(getattr(message, field.name).add(), method, sample, bound, path, around)
        elif _own_message(field) is not None and not field.is_repeated:
            if wanted or path in around:
                _fill(getattr(message, field.name), method, sample, bound, path, around)
                getattr(message, field.name).SetInParent()
        elif field.message_type is None and (wanted or sample.knows(field)):
            value = sample(field, method)
            if field.is_repeated:
                getattr(message, field.name).extend(value if isinstance(value, list) else [value])
            else:
                setattr(message, field.name, value)


def _set(message: Message, slot: Slot, value: Any) -> None:
    target = message
    for name in slot.path[:-1]:
        repeated = descriptor_of(target).fields_by_name[name].is_repeated
        target = getattr(target, name)[0] if repeated else getattr(target, name)  # the one element
    name = slot.path[-1]
    if slot.map_part == "key":
        getattr(target, name)[value] = "v"
    elif slot.map_part == "value":
        getattr(target, name)["k"] = value
    elif slot.field.is_repeated:
        getattr(target, name).append(value)
    else:
        setattr(target, name, value)


def fill_update_mask(message: Message, slot: Slot | None) -> None:
    """An update_mask naming the hostile field, so an update reaches it."""
    mask = descriptor_of(message).fields_by_name.get("update_mask")
    if mask is None or slot is None or len(slot.path) < 2:
        return
    getattr(message, mask.name).paths[:] = [slot.path[1]]


def grpc_payload(case: Case, base: Message) -> bytes | None:
    """The encoded request, or None when this value cannot go over gRPC."""
    hostile, slot = case.hostile, case.slot
    if hostile is BASELINE:
        return base.SerializeToString()
    if slot is None:
        return hostile.grpc_bytes
    message = type(base)()
    message.CopyFrom(base)
    fill_update_mask(message, slot)
    if hostile.grpc_bytes is not None:
        _set(message, slot, PLACEHOLDER)
        encoded = message.SerializeToString()
        assert encoded.count(PLACEHOLDER.encode()) == 1, case.id
        return encoded.replace(PLACEHOLDER.encode(), hostile.grpc_bytes)
    if hostile.grpc is None:
        return None
    try:
        _set(message, slot, hostile.grpc)
    except (ValueError, TypeError):  # out of the field's range: only REST can say it
        return None
    return message.SerializeToString()


@dataclass(frozen=True)
class RestRequest:
    method: str
    path: str  # percent-encoded, with the query string
    body: bytes | None


_VARIABLE = re.compile(r"\{([^}=]+)(?:=[^}]*)?\}")


def rest_request(case: Case, route: Route, base: Message) -> RestRequest | None:
    """The HTTP request putting the hostile value where `route` puts its field; None when the
    value has no REST form or the field cannot be given over this route."""
    hostile, slot = case.hostile, case.slot
    message = type(base)()
    message.CopyFrom(base)
    fill_update_mask(message, slot)
    if slot is not None:
        _set(
            message,
            slot,
            PLACEHOLDER if slot.field.type == FieldDescriptor.TYPE_STRING or slot.map_part else 0,
        )
    data = json_format.MessageToDict(message, preserving_proto_field_name=True)
    if slot is not None and slot.field.type != FieldDescriptor.TYPE_STRING and not slot.map_part:
        _put(data, slot.path, PLACEHOLDER)  # the JSON form of a number is put in below, as text
    path_values = {name: _pop(data, name.split(".")) for name in route.path_fields}
    body: Any = None
    if route.body == "*":
        body, data = data, {}
    elif route.body:
        body = data.pop(route.body, None) or {}
    where = _where(slot, route)
    if slot is not None and where is None:
        return None
    if slot is None:
        if hostile.json is None or not route.body:
            return None
        encoded = hostile.json if isinstance(hostile.json, bytes) else hostile.json.encode()
        return RestRequest(route.http_method, _path(route, path_values) + _query(data), encoded)
    text = hostile.json if where == "body" else hostile.url
    if text is None:
        return None
    url = _path(route, path_values) + _query(data)
    encoded_body = json.dumps(body).encode() if body is not None else None
    if where == "body":
        assert encoded_body is not None
        raw = text if isinstance(text, bytes) else text.encode()
        encoded_body = encoded_body.replace(json.dumps(PLACEHOLDER).encode(), raw)
    else:
        url = url.replace(PLACEHOLDER, str(text))
    return RestRequest(route.http_method, url, encoded_body)


def _where(slot: Slot | None, route: Route) -> str | None:
    if slot is None:
        return None
    name = ".".join(slot.path)
    if name in route.path_fields:
        return "path"
    if route.body == "*" or (route.body and slot.path[0] == route.body):
        return "body"
    if slot.map_part or slot.field.message_type is not None:
        return None  # a map entry in the query takes its own syntax; left to the gateway's tests
    return "query"


def _put(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for name in path[:-1]:
        data = data.setdefault(name, {})
        if isinstance(data, list):
            data = data[0]
    if isinstance(data.get(path[-1]), list):
        data[path[-1]] = [value]
    else:
        data[path[-1]] = value


def _pop(data: dict[str, Any], path: list[str]) -> str:
    for name in path[:-1]:
        data = data.get(name, {})
    return str(data.pop(path[-1], ""))


def _path(route: Route, values: dict[str, str]) -> str:
    def fill(found: re.Match[str]) -> str:
        value = values.get(found.group(1), "")
        return value if value == PLACEHOLDER else quote(value, safe="")

    return _VARIABLE.sub(fill, route.path)


def _query(data: dict[str, Any], prefix: str = "") -> str:
    pairs: list[str] = []
    for key, value in data.items():
        name = prefix + key
        if isinstance(value, dict):
            nested = _query(value, name + ".")
            if nested:
                pairs.append(nested.removeprefix("?"))
        elif isinstance(value, list):
            pairs += [f"{name}={_query_value(item)}" for item in value]
        else:
            pairs.append(f"{name}={_query_value(value)}")
    return "?" + "&".join(pairs) if pairs else ""


def _query_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, bool) else str(value)
    return text if text == PLACEHOLDER else quote(text, safe="")
