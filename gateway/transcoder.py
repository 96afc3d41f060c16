"""JSON and URL to protobuf and back, by the rules of one route (no HTTP framework in here).

The request message is built in three layers, each only for the fields the
layer binds:

1. the body: `*` is the whole request, a field name is that field;
2. the path variables (dotted field paths). A body that also sets a path-bound
   field to a different value is refused (400 naming the field): the path names
   the resource, and a body that disagrees is more likely a mistake than intent.
   The same value in both is fine;
3. the query string, for fields neither the path nor the body binds: repeated
   fields (`?a=1&a=2`), nested fields (`a.b=c`), map entries (`labels[team]=core`,
   `a.labels[team]=core`, grpc-gateway's form; keys and values converted to the map's
   types), enums by name or number, bools, integers, and the well-known types in their
   JSON string forms (Timestamp RFC 3339, Duration `1.5s`, FieldMask `a,b` in camelCase
   or snake_case, wrappers).

A value of the wrong kind is a 400 naming the field and what it takes, in the API's
terms (`page_size: must be an integer from -2147483648 to 2147483647`), never the
parser's own text.

Unknown query parameters and unknown JSON fields are 400 errors naming them
unless `strict` is off, in which case they are ignored. Field names may be
given as lowerCamelCase JSON names or as the proto names.

A route whose request is a google.api.HttpBody bound whole (`body: "*"`) takes the HTTP body as
it came, unparsed, as the message's `data`, and the Content-Type as its `content_type`
(grpc-gateway's rule); the URL sets none of its fields.

A client-streaming route's body is newline-delimited JSON (`build_stream_requests`):
each non-blank line is one body, parsed by the same rules, and the path variables
and query parameters apply to every message; errors name the line (1-based).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import unquote_plus

import grpc
from google.api import field_behavior_pb2, httpbody_pb2
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from core.idempotency import MAX_REQUEST_ID_LENGTH, REQUEST_ID_PATTERN
from gateway.errors import FIELD_NAME_LIMIT, GatewayError, cut, echo
from gateway.fields import (
    INT_RANGES,
    WRAPPERS,
    descriptor_of,
    is_map,
    is_repeated,
    named_fields,
    parse_into,
    plain_type,
    resolve_path,
    unknown_fields,
    value_kind,
)
from gateway.routes import Route

_STRING_WKTS = frozenset(f"google.protobuf.{name}" for name in ("Timestamp", "Duration", "FieldMask"))
_TRUE = frozenset({"true", "1", "t", "yes"})
_FALSE = frozenset({"false", "0", "f", "no"})
_MAP_ENTRY_KEY = re.compile(r"([^\[\]]+)\[(.*)\]")  # `labels[team]`: field path, map key
# Deep enough for any request message (Struct values included), shallow enough that neither
# json.loads nor json_format recurses near Python's limit: RecursionError was a 500.
MAX_JSON_DEPTH = 64
# A JSON string, escapes included, found without backtracking; the brackets in it are not nesting.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET = re.compile(rb"[\[\]{}]")
_UNKNOWN_SHOWN = 10
REQUEST_ID_FIELD = "request_id"
UPDATE_MASK_FIELD = "update_mask"


HTTP_BODY = "google.api.HttpBody"


def is_http_body(descriptor: Descriptor) -> bool:
    """A google.api.HttpBody: taken and answered as its own bytes and content type, not as JSON."""
    return descriptor.full_name == HTTP_BODY


def takes_raw_body(route: Route) -> bool:
    """Whether the route's request is a google.api.HttpBody bound whole (`body: "*"`): the HTTP
    body is its `data`, unparsed, and the Content-Type its `content_type` (grpc-gateway's rule)."""
    return route.body == "*" and is_http_body(route.method.input_type)


def parse_query(raw: str) -> list[tuple[str, str]]:
    """The (name, value) pairs of a raw query string, `+` as a space; 400 naming the parameter when
    its percent-escapes are not UTF-8 (a URL library would put U+FFFD in their place, changing the
    value without a word)."""
    pairs: list[tuple[str, str]] = []
    for part in raw.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        key = _unquote(name, "query")
        pairs.append((key, _unquote(value, key)))
    return pairs


def _unquote(text: str, field: str) -> str:
    try:
        return unquote_plus(text, errors="strict")
    except UnicodeDecodeError:
        raise GatewayError.invalid(field, "its percent-escapes are not valid UTF-8") from None


def json_depth_exceeds(text: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether arrays and objects in `text` nest deeper than `limit`, found before parsing it.

    Counting brackets is enough while there are few; else strings are cut out first, and the
    count stops at the first bracket past the limit."""
    if text.count(b"[") + text.count(b"{") <= limit:
        return False
    depth = 0
    for bracket in _BRACKET.finditer(_JSON_STRING.sub(b'""', text)):
        if bracket.group() in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _too_deep(field: str) -> GatewayError:
    return GatewayError.invalid(
        field, f"JSON nested deeper than {MAX_JSON_DEPTH} arrays and objects", reason="JSON_TOO_DEEP"
    )


def decode_json(body: bytes) -> Any:
    """The parsed JSON body, None when empty; 400 when malformed or nested too deep."""
    if not body.strip():
        return None
    if json_depth_exceeds(body):
        raise _too_deep("body")
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise GatewayError.invalid("body", "the body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        description = f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        raise GatewayError.invalid("body", description) from None


def _apply_body(route: Route, message: Message, body: Any, *, strict: bool) -> None:
    descriptor = descriptor_of(message)
    if not route.body:
        if body is not None and strict:
            raise GatewayError.invalid("body", f"{route.http_method} {route.path} takes no request body")
        return
    if body is None:
        return
    if route.body == "*":
        if not isinstance(body, dict):
            raise GatewayError.invalid("body", "expected a JSON object")
        wrapped, prefix = body, ""
    else:
        wrapped, prefix = {route.body: body}, ""
    if strict:
        unknown = [cut(name, FIELD_NAME_LIMIT) for name in unknown_fields(descriptor, wrapped, prefix)]
        if unknown:
            raise GatewayError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"unknown fields in the body: {', '.join(unknown[:_UNKNOWN_SHOWN])}",
                reason="UNKNOWN_FIELD",
                violations=[(name, "unknown field") for name in unknown[:_UNKNOWN_SHOWN]],
            )
    parse_into(wrapped, message, strict=strict)


def _scalar_json(field: FieldDescriptor, text: str, name: str) -> Any:
    """A query or path string as the JSON value json_format expects for `field`."""
    if field.message_type is not None:
        full_name = field.message_type.full_name
        if full_name in WRAPPERS:
            return _scalar_json(field.message_type.fields_by_name["value"], text, name)
        if full_name == "google.protobuf.FieldMask":
            return ",".join(_camel(path.strip()) for path in text.split(",") if path.strip())
        if full_name in _STRING_WKTS:
            return text
        raise GatewayError.invalid(name, f"a {full_name} cannot be given in the URL")
    if field.type == FieldDescriptor.TYPE_BOOL:
        lowered = text.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise GatewayError.invalid(name, "must be true or false")
    return text


def _camel(path: str) -> str:
    """A field-mask path in camelCase (json_format's form), from snake_case or camelCase."""
    return ".".join(re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), part) for part in path.split("."))


def _set_nested(tree: dict[str, Any], fields: Sequence[FieldDescriptor], value: Any) -> None:
    for field in fields[:-1]:
        tree = tree.setdefault(field.name, {})
    tree[fields[-1].name] = value


def _path_message(route: Route, variables: Mapping[str, str]) -> Message:
    tree: dict[str, Any] = {}
    descriptor = route.method.input_type
    message = route.request_class()
    for path, text in variables.items():
        fields = resolve_path(descriptor, path)
        if fields is None:  # routes_of checked every variable; a template returning others is a bug
            raise GatewayError.invalid(path, "unknown path variable")
        leaf = fields[-1]
        if leaf.type == FieldDescriptor.TYPE_STRING and not is_repeated(leaf):
            # The common case (ids): set it directly, skipping the JSON round trip.
            target = message
            for field in fields[:-1]:
                target = getattr(target, field.name)
            setattr(target, leaf.name, text)
        else:
            _set_nested(tree, fields, _scalar_json(leaf, text, path))
    if tree:
        parsed = route.request_class()
        parse_into(tree, parsed, strict=True)
        message.MergeFrom(parsed)
    return message


def _shown(value: Any) -> str:
    return echo(value) if isinstance(value, str) else cut(repr(value))


def _leaf(message: Message, path: str) -> tuple[Any, bool]:
    """The value at a dotted path and whether it is set (non-default, or present)."""
    *parents, name = path.split(".")
    for parent in parents:
        if not message.HasField(parent):
            return None, False
        message = getattr(message, parent)
    field = descriptor_of(message).fields_by_name[name]
    value = getattr(message, name)
    if field.has_presence:
        return value, message.HasField(name)
    return value, value != field.default_value


def _apply_path(route: Route, message: Message, variables: Mapping[str, str]) -> None:
    if variables:
        _merge_path(message, variables, _path_message(route, variables))


def _merge_path(message: Message, variables: Mapping[str, str], from_path: Message) -> None:
    """`from_path` (the path variables as a message) merged in; 400 PATH_CONFLICT when the body disagrees."""
    for path in variables:
        body_value, body_set = _leaf(message, path)
        path_value, _ = _leaf(from_path, path)
        if body_set and body_value != path_value:
            raise GatewayError.invalid(
                path,
                f"the body has {_shown(body_value)} but the URL path {_shown(path_value)}",
                reason="PATH_CONFLICT",
            )
    message.MergeFrom(from_path)


def _query_fields(
    route: Route, descriptor: Descriptor, field_key: str, key: str, *, strict: bool
) -> tuple[FieldDescriptor, ...] | None:
    """The fields a query key names; None to skip it (non-strict); 400 naming `key` otherwise."""
    fields = resolve_path(descriptor, field_key)
    if fields is None:
        if strict:
            raise GatewayError.invalid(key, "unknown query parameter", reason="UNKNOWN_QUERY_PARAMETER")
        return None
    if route.is_bound(".".join(field.name for field in fields)):
        if strict:
            raise GatewayError.invalid(
                key, "is bound by the URL path or the body; not a query parameter", reason="BOUND_FIELD"
            )
        return None
    return fields


def _map_key_json(field: FieldDescriptor, text: str, key: str) -> str:
    """A map key from the URL in its JSON form (JSON object keys are strings); 400 naming `key`."""
    if field.type in INT_RANGES:
        low, high = INT_RANGES[field.type]
        try:
            number = int(text)
        except ValueError:
            number = None
        if number is None or not low <= number <= high:
            raise GatewayError.invalid(key, f"the map key must be {value_kind(field)}")
        return str(number)
    if field.type == FieldDescriptor.TYPE_BOOL:
        if text not in ("true", "false"):
            raise GatewayError.invalid(key, "the map key must be true or false")
        return text
    return text


def _map_entry(
    route: Route, fields: Sequence[FieldDescriptor], map_key: str, values: Sequence[str], key: str
) -> Message:
    """One `field[map_key]=value` as a request message holding just that entry; 400 naming `key`."""
    leaf = fields[-1]
    if not is_map(leaf) or leaf.message_type is None:
        raise GatewayError.invalid(key, "only a map field takes [KEY]")
    if len(values) > 1:
        raise GatewayError.invalid(key, "given more than once but takes one value")
    key_field = leaf.message_type.fields_by_name["key"]
    value_field = leaf.message_type.fields_by_name["value"]
    if plain_type(value_field) is not None:
        raise GatewayError.invalid(key, "a map of messages cannot be set from the URL")
    tree: dict[str, Any] = {}
    entry = {_map_key_json(key_field, map_key, key): _scalar_json(value_field, values[0], key)}
    _set_nested(tree, fields, entry)
    message = route.request_class()
    try:
        parse_into(tree, message, strict=True)
    except GatewayError:
        raise GatewayError.invalid(key, f"must be {value_kind(value_field)}") from None
    return message


def _apply_query(route: Route, message: Message, query: Sequence[tuple[str, str]], *, strict: bool) -> None:
    grouped: dict[str, list[str]] = {}
    for key, value in query:
        grouped.setdefault(key, []).append(value)
    descriptor = descriptor_of(message)
    tree: dict[str, Any] = {}
    entries: list[Message] = []
    for key, values in grouped.items():
        map_entry = _MAP_ENTRY_KEY.fullmatch(key)
        field_key = map_entry.group(1) if map_entry else key
        fields = _query_fields(route, descriptor, field_key, key, strict=strict)
        if fields is None:
            continue
        if map_entry is not None:
            entries.append(_map_entry(route, fields, map_entry.group(2), values, key))
            continue
        leaf = fields[-1]
        if is_map(leaf):
            raise GatewayError.invalid(key, f"set map entries one by one, as {key}[KEY]=VALUE")
        if plain_type(leaf) is not None:
            raise GatewayError.invalid(key, "give the fields of this message as separate parameters")
        if is_repeated(leaf):
            _set_nested(tree, fields, [_scalar_json(leaf, value, key) for value in values])
        elif len(values) > 1:
            raise GatewayError.invalid(key, "given more than once but takes one value")
        else:
            _set_nested(tree, fields, _scalar_json(leaf, values[0], key))
    if tree:
        from_query = route.request_class()
        parse_into(tree, from_query, strict=True)
        message.MergeFrom(from_query)
    for entry in entries:
        message.MergeFrom(entry)


def _output_only(field: FieldDescriptor) -> bool:
    behaviors = field.GetOptions().Extensions[field_behavior_pb2.field_behavior]
    return field_behavior_pb2.OUTPUT_ONLY in behaviors


def fill_update_mask(route: Route, message: Message, body: Any) -> None:
    """PATCH without `update_mask`: the mask is the resource fields present in the JSON body.

    Left out: fields the URL path binds (the resource's id), OUTPUT_ONLY fields and `etag`
    (AIP-154: a precondition, never updated), which a client echoing a resource back sends.
    """
    update_mask = descriptor_of(message).fields_by_name.get(UPDATE_MASK_FIELD)
    if (
        route.http_method != "PATCH"
        or route.body in ("", "*")
        or update_mask is None
        or update_mask.message_type is None
        or update_mask.message_type.full_name != "google.protobuf.FieldMask"
        or message.HasField(UPDATE_MASK_FIELD)
        or not isinstance(body, dict)
    ):
        return
    resource = descriptor_of(message).fields_by_name[route.body].message_type
    if resource is None:
        return
    paths: list[str] = []
    for key in body:
        field = named_fields(resource).get(key)
        if field is None or _output_only(field) or field.name == "etag":
            continue
        if f"{route.body}.{field.name}" in route.path_fields or field.name in paths:
            continue
        paths.append(field.name)
    if paths:
        getattr(message, UPDATE_MASK_FIELD).paths.extend(paths)


def fill_request_id(message: Message, key: str | None) -> None:
    """An `Idempotency-Key` becomes the request's `request_id` when it has one and it is empty.

    The key is checked whether or not it is used, so the header means the same on every request.
    """
    field = descriptor_of(message).fields_by_name.get(REQUEST_ID_FIELD)
    if not key or field is None or field.type != FieldDescriptor.TYPE_STRING or is_repeated(field):
        return
    if len(key) > MAX_REQUEST_ID_LENGTH or not re.fullmatch(REQUEST_ID_PATTERN, key):
        raise GatewayError.invalid(
            "Idempotency-Key", f"must be at most {MAX_REQUEST_ID_LENGTH} printable ASCII characters"
        )
    if not getattr(message, REQUEST_ID_FIELD):
        setattr(message, REQUEST_ID_FIELD, key)


def _raw_request(query: Sequence[tuple[str, str]], body: bytes, content_type: str) -> Message:
    """An HttpBody request: the bytes as sent, never parsed (a signature may be over them). Its
    fields are not the caller's to set from the URL, so a query parameter is unknown (strict)."""
    if query:
        raise GatewayError.invalid(
            cut(query[0][0]), "unknown query parameter", reason="UNKNOWN_QUERY_PARAMETER"
        )
    message: Message = httpbody_pb2.HttpBody(content_type=content_type, data=body)
    return message


def build_request(
    route: Route,
    variables: Mapping[str, str],
    query: Sequence[tuple[str, str]],
    body: bytes,
    *,
    strict: bool = True,
    idempotency_key: str | None = None,
    content_type: str = "",
) -> Message:
    """The request message for one HTTP request; GatewayError (400) naming the field when it is wrong.

    `content_type` (the request's Content-Type) is used only by a route that takes the raw body."""
    if takes_raw_body(route):
        return _raw_request(query if strict else (), body, content_type)
    parsed = decode_json(body)
    message = route.request_class()
    _apply_body(route, message, parsed, strict=strict)
    _apply_path(route, message, variables)
    _apply_query(route, message, query, strict=strict)
    fill_update_mask(route, message, parsed)
    fill_request_id(message, idempotency_key)
    return message


def _on_line(error: GatewayError, line: int) -> GatewayError:
    """The same error, its message and field violations prefixed with `line N: `."""
    return GatewayError(
        error.code,
        f"line {line}: {error.message}",
        reason=error.reason,
        http=error.http,
        violations=[(field, f"line {line}: {description}") for field, description in error.violations],
        headers=error.headers,
    )


def _json_lines(body: bytes) -> list[tuple[int, Any]]:
    """(1-based line number, parsed JSON) for every non-blank line of an NDJSON body; 400 naming the line."""
    parsed: list[tuple[int, Any]] = []
    for number, raw in enumerate(body.split(b"\n"), start=1):
        if not raw.strip():
            continue
        if json_depth_exceeds(raw):
            raise _too_deep(f"line {number}")
        try:
            parsed.append((number, json.loads(raw)))
        except UnicodeDecodeError:
            raise GatewayError.invalid(f"line {number}", "not UTF-8 text") from None
        except json.JSONDecodeError as exc:
            raise GatewayError.invalid(
                f"line {number}", f"malformed JSON: {exc.msg} at column {exc.colno}"
            ) from None
    return parsed


def build_stream_requests(
    route: Route,
    variables: Mapping[str, str],
    query: Sequence[tuple[str, str]],
    body: bytes,
    *,
    strict: bool = True,
    idempotency_key: str | None = None,
) -> list[Message]:
    """The request messages of a client-streaming call: one per non-blank line of an NDJSON body.

    Each line is parsed like the body of `build_request`; the path variables, query
    parameters and idempotency key apply to every message. An empty (or blank) body is a
    stream of no messages, which gRPC allows: the call decides (auth first, so a caller without
    a token hears 401, not 400). 400 for a bad line, with `line N: ` in the message.
    """
    lines = _json_lines(body)
    # The path and the query once: their errors are not a line's.
    from_path = _path_message(route, variables) if variables else None
    from_query = route.request_class()
    _apply_query(route, from_query, query, strict=strict)
    messages: list[Message] = []
    for number, parsed in lines:
        message = route.request_class()
        try:
            _apply_body(route, message, parsed, strict=strict)
            if from_path is not None:
                _merge_path(message, variables, from_path)
        except GatewayError as error:
            raise _on_line(error, number) from None
        message.MergeFrom(from_query)
        fill_update_mask(route, message, parsed)
        fill_request_id(message, idempotency_key)
        messages.append(message)
    return messages


def response_json(route: Route, response: Message, *, use_proto_names: bool = False) -> Any:
    """The response (or its `response_body` field) as JSON data; default values left out."""
    if not route.response_body:
        return json_format.MessageToDict(response, preserving_proto_field_name=use_proto_names)
    field = descriptor_of(response).fields_by_name[route.response_body]
    if plain_type(field) is not None and not is_repeated(field):
        return json_format.MessageToDict(
            getattr(response, field.name), preserving_proto_field_name=use_proto_names
        )
    whole = json_format.MessageToDict(
        response, preserving_proto_field_name=use_proto_names, always_print_fields_with_no_presence=True
    )
    return whole.get(field.name if use_proto_names else field.json_name)
