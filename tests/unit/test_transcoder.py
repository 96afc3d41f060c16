"""The transcoder without a network: routes, request building, the words of its errors.

Status to HTTP and error bodies: tests/unit/test_gateway_errors.py."""

from __future__ import annotations

from typing import Any, cast

import pytest
from google.api import annotations_pb2, http_pb2
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    duration_pb2,
    field_mask_pb2,
    timestamp_pb2,
    wrappers_pb2,
)
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

from app.modules import SERVICES
from gateway.errors import GatewayError
from gateway.routes import Route, RouteTable
from gateway.transcoder import build_request, response_json

_FIELD = descriptor_pb2.FieldDescriptorProto
_KINDS = {
    "string": _FIELD.TYPE_STRING,
    "int32": _FIELD.TYPE_INT32,
    "int64": _FIELD.TYPE_INT64,
    "bool": _FIELD.TYPE_BOOL,
    "double": _FIELD.TYPE_DOUBLE,
}


def _add_map(
    message: descriptor_pb2.DescriptorProto,
    name: str,
    number: int,
    key_type: int,
    value_type: int,
    value_type_name: str = "",
) -> None:
    """A `map<key, value> name = number` field: a repeated nested *Entry message, as protoc writes it."""
    entry_name = "".join(part.title() for part in name.split("_")) + "Entry"
    entry = message.nested_type.add(name=entry_name)
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=key_type, json_name="key")
    value = entry.field.add(name="value", number=2, type=value_type, json_name="value")
    if value_type_name:
        value.type_name = value_type_name
    json_name = name.split("_")[0] + "".join(p.title() for p in name.split("_")[1:])
    field = message.field.add(name=name, number=number, label=_FIELD.LABEL_REPEATED, json_name=json_name)
    field.type = _FIELD.TYPE_MESSAGE
    field.type_name = f".tally.gatewaytest.v1.{message.name}.{entry_name}"


def _test_service() -> ServiceDescriptor:
    """A service whose request uses every kind of field the URL can carry (added to the default pool once)."""
    pool = descriptor_pool.Default()
    name = "tally/gatewaytest/v1/test.proto"
    try:
        return pool.FindServiceByName("tally.gatewaytest.v1.ThingService")
    except KeyError:
        pass
    for module in (timestamp_pb2, duration_pb2, field_mask_pb2, wrappers_pb2, annotations_pb2):
        assert module.DESCRIPTOR.name
    file = descriptor_pb2.FileDescriptorProto(name=name, package="tally.gatewaytest.v1", syntax="proto3")
    file.dependency.extend(
        [
            "google/protobuf/timestamp.proto",
            "google/protobuf/duration.proto",
            "google/protobuf/field_mask.proto",
            "google/protobuf/wrappers.proto",
            "google/api/annotations.proto",
        ]
    )
    color = file.enum_type.add(name="Color")
    for number, value in enumerate(("COLOR_UNSPECIFIED", "COLOR_RED", "COLOR_BLUE")):
        color.value.add(name=value, number=number)
    inner = file.message_type.add(name="Inner")
    inner.field.add(name="label", number=1, type=_FIELD.TYPE_STRING, json_name="label")
    inner.field.add(name="size", number=2, type=_FIELD.TYPE_INT32, json_name="size")
    _add_map(inner, "attrs", 3, _FIELD.TYPE_STRING, _FIELD.TYPE_STRING)
    thing = file.message_type.add(name="Thing")
    thing.field.add(name="id", number=1, type=_FIELD.TYPE_STRING, json_name="id")
    thing.field.add(name="display_name", number=2, type=_FIELD.TYPE_STRING, json_name="displayName")
    thing.field.add(name="etag", number=3, type=_FIELD.TYPE_STRING, json_name="etag")
    request = file.message_type.add(name="ThingRequest")

    def add(field: str, number: int, kind: str, *, repeated: bool = False) -> None:
        json_name = field.split("_")[0] + "".join(p.title() for p in field.split("_")[1:])
        label = _FIELD.LABEL_REPEATED if repeated else _FIELD.LABEL_OPTIONAL
        spec = request.field.add(name=field, number=number, label=label, json_name=json_name)
        if kind in _KINDS:
            spec.type = _KINDS[kind]
        elif kind == "Color":
            spec.type, spec.type_name = _FIELD.TYPE_ENUM, ".tally.gatewaytest.v1.Color"
        else:
            spec.type, spec.type_name = _FIELD.TYPE_MESSAGE, f".{kind}"

    add("name", 1, "string")
    add("count", 2, "int32")
    add("big", 3, "int64")
    add("flag", 4, "bool")
    add("ratio", 5, "double")
    add("tags", 6, "string", repeated=True)
    add("color", 7, "Color")
    add("colors", 8, "Color", repeated=True)
    add("inner", 9, "tally.gatewaytest.v1.Inner")
    add("when", 10, "google.protobuf.Timestamp")
    add("wait", 11, "google.protobuf.Duration")
    add("update_mask", 12, "google.protobuf.FieldMask")
    add("limit", 13, "google.protobuf.Int64Value")
    add("enabled", 14, "google.protobuf.BoolValue")
    add("thing", 15, "tally.gatewaytest.v1.Thing")
    add("request_id", 16, "string")
    _add_map(request, "labels", 17, _FIELD.TYPE_STRING, _FIELD.TYPE_STRING)
    _add_map(request, "limits", 18, _FIELD.TYPE_STRING, _FIELD.TYPE_INT64)
    _add_map(request, "flags", 19, _FIELD.TYPE_INT32, _FIELD.TYPE_BOOL)
    _add_map(request, "shades", 20, _FIELD.TYPE_STRING, _FIELD.TYPE_ENUM, ".tally.gatewaytest.v1.Color")
    _add_map(request, "by_name", 21, _FIELD.TYPE_STRING, _FIELD.TYPE_MESSAGE, ".tally.gatewaytest.v1.Inner")
    _add_map(request, "stamps", 22, _FIELD.TYPE_STRING, _FIELD.TYPE_MESSAGE, ".google.protobuf.Timestamp")
    service = file.service.add(name="ThingService")
    for method_name, rule in (
        ("GetThing", http_pb2.HttpRule(get="/v1/things/{name}")),
        ("CreateThing", http_pb2.HttpRule(post="/v1/things", body="*")),
        ("UpdateThing", http_pb2.HttpRule(patch="/v1/things/{thing.id}", body="thing")),
        (
            "MoveThing",
            http_pb2.HttpRule(
                post="/v1/things/{name}:move",
                body="inner",
                additional_bindings=[http_pb2.HttpRule(put="/v1/places/{inner.label}/things/{name}")],
            ),
        ),
        ("BatchThings", http_pb2.HttpRule(post="/v1:batchThings", body="*")),
    ):
        method = service.method.add(
            name=method_name,
            input_type=".tally.gatewaytest.v1.ThingRequest",
            output_type=".tally.gatewaytest.v1.ThingRequest",
        )
        method.options.Extensions[annotations_pb2.http].CopyFrom(rule)
    pool.Add(file)
    return pool.FindServiceByName("tally.gatewaytest.v1.ThingService")


@pytest.fixture(scope="module")
def table() -> RouteTable:
    return RouteTable.from_services([_test_service()])


def build(
    table: RouteTable, method: str, path: str, query: list[tuple[str, str]] | None = None, body: bytes = b""
) -> Any:
    route, variables = table.lookup(method, path)
    return build_request(route, variables, query or [], body, idempotency_key=None)


def refused(table: RouteTable, method: str, path: str, query: Any = None, body: bytes = b"") -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        build(table, method, path, query, body)
    return caught.value


def test_routes_cover_every_binding_of_the_real_services() -> None:
    table = RouteTable.from_services(SERVICES)
    methods = {route.grpc_method for route in table.routes}
    assert len(methods) == sum(len(service.methods) for service in SERVICES)
    route, variables = table.lookup("PATCH", "/v1/accounts/acct_1")
    assert route.grpc_method == "/tally.account.v1.AccountService/UpdateAccount"
    assert variables == {"account.id": "acct_1"}
    assert route.body == "account" and route.path_fields == {"account.id"}


def test_lookup_prefers_verbs_and_answers_404_and_405(table: RouteTable) -> None:
    route, variables = table.lookup("POST", "/v1/things/a:move")
    assert route.method.name == "MoveThing" and variables == {"name": "a"}
    # `/v1/things/{name}:move` is a path of its own (OpenAPI's reading too): under another method it
    # is 405, not GetThing of a thing named `a:move`.
    with pytest.raises(GatewayError) as caught:
        table.lookup("GET", "/v1/things/a:move")
    assert caught.value.http == 405 and caught.value.headers == {"Allow": "POST"}
    route, variables = table.lookup("GET", "/v1/things/a:b")  # no route has verb `b`: the id keeps its ':'
    assert route.method.name == "GetThing" and variables == {"name": "a:b"}
    route, variables = table.lookup("PUT", "/v1/places/p%2F1/things/t")
    assert route.method.name == "MoveThing" and variables == {"inner.label": "p/1", "name": "t"}
    with pytest.raises(GatewayError) as caught:
        table.lookup("DELETE", "/v1/things/a")
    assert caught.value.http == 405 and caught.value.headers == {"Allow": "GET, PATCH"}
    with pytest.raises(GatewayError) as caught:
        table.lookup("GET", "/v1/nothing")
    assert caught.value.http == 404
    with pytest.raises(GatewayError) as caught:
        table.lookup("GET", "/v1/things/%zz")
    assert caught.value.http == 400


def test_query_parameters_of_every_kind(table: RouteTable) -> None:
    query = [
        ("count", "7"),
        ("big", "9007199254740993"),
        ("flag", "true"),
        ("ratio", "1.5"),
        ("tags", "a"),
        ("tags", "b"),
        ("color", "COLOR_RED"),
        ("colors", "COLOR_BLUE"),
        ("colors", "1"),
        ("inner.label", "x"),
        ("inner.size", "3"),
        ("when", "2026-01-02T03:04:05.5Z"),
        ("wait", "1.5s"),
        ("updateMask", "inner.label,displayName,request_id"),
        ("limit", "12"),
        ("enabled", "false"),
        ("requestId", "r1"),
    ]
    message = build(table, "GET", "/v1/things/n1", query)
    assert message.name == "n1"
    assert (message.count, message.big, message.flag, message.ratio) == (7, 9007199254740993, True, 1.5)
    assert list(message.tags) == ["a", "b"]
    assert message.color == 1 and list(message.colors) == [2, 1]
    assert (message.inner.label, message.inner.size) == ("x", 3)
    assert message.when.ToJsonString() == "2026-01-02T03:04:05.500Z"
    assert message.wait.ToTimedelta().total_seconds() == 1.5
    assert list(message.update_mask.paths) == ["inner.label", "display_name", "request_id"]
    assert message.limit.value == 12 and message.HasField("enabled") and not message.enabled.value
    assert message.request_id == "r1"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ([("nope", "1")], "nope"),
        ([("inner.nope", "1")], "inner.nope"),
        ([("count", "x")], "count"),
        ([("count", "1"), ("count", "2")], "count"),
        ([("flag", "maybe")], "flag"),
        ([("color", "COLOR_GREEN")], "color"),
        ([("when", "yesterday")], "when"),
        ([("inner", "x")], "inner"),
        ([("name", "other")], "name"),  # bound by the path
    ],
)
def test_bad_query_parameters_are_400_naming_the_field(
    table: RouteTable, query: list[tuple[str, str]], field: str
) -> None:
    error = refused(table, "GET", "/v1/things/n1", query)
    assert error.http == 400
    assert error.violations[0][0] == field


def test_non_strict_ignores_unknown_parameters_and_fields(table: RouteTable) -> None:
    route, variables = table.lookup("POST", "/v1/things")
    message: Any = build_request(route, variables, [("nope", "1")], b'{"count": 2, "nope": 1}', strict=False)
    assert message.count == 2


def test_body_star_and_body_field(table: RouteTable) -> None:
    body = (
        b'{"name": "n", "tags": ["a"], "inner": {"label": "l"}, "when": "2026-01-01T00:00:00Z", "big": "5"}'
    )
    message = build(table, "POST", "/v1/things", body=body)
    assert (message.name, list(message.tags), message.inner.label, message.big) == ("n", ["a"], "l", 5)
    assert build(table, "POST", "/v1/things", body=b'{"request_id": "snake"}').request_id == "snake"
    moved = build(table, "POST", "/v1/things/n:move", [("count", "4")], b'{"label": "dest"}')
    assert (moved.name, moved.inner.label, moved.count) == ("n", "dest", 4)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"count": "many"}', "count"),
        (b'{"inner": {"size": true}}', "inner.size"),
        (b'{"nope": 1}', "nope"),
        (b'{"inner": {"nope": 1}}', "inner.nope"),
        (b'{"color": "COLOR_GREEN"}', "color"),
        (b"[1, 2]", "body"),
        (b'{"name": ', "body"),
    ],
)
def test_bad_bodies_are_400_naming_the_field(table: RouteTable, body: bytes, field: str) -> None:
    error = refused(table, "POST", "/v1/things", body=body)
    assert error.http == 400
    assert error.violations[0][0] == field


def test_query_on_a_body_star_route_is_refused(table: RouteTable) -> None:
    assert refused(table, "POST", "/v1/things", [("count", "1")]).violations[0][0] == "count"


def test_path_and_body_must_agree(table: RouteTable) -> None:
    same = build(table, "PATCH", "/v1/things/t1", body=b'{"id": "t1", "displayName": "x"}')
    assert same.thing.id == "t1"
    error = refused(table, "PATCH", "/v1/things/t1", body=b'{"id": "t2"}')
    assert error.violations[0][0] == "thing.id"


def test_patch_fills_update_mask_from_the_body(table: RouteTable) -> None:
    message = build(table, "PATCH", "/v1/things/t1", body=b'{"displayName": "", "etag": "e1", "id": "t1"}')
    assert list(message.update_mask.paths) == ["display_name"]  # not the path-bound id, not the etag
    assert message.thing.etag == "e1"
    explicit = build(table, "PATCH", "/v1/things/t1", [("updateMask", "etag")], b'{"displayName": "x"}')
    assert list(explicit.update_mask.paths) == ["etag"]


def test_idempotency_key_fills_an_empty_request_id(table: RouteTable) -> None:
    route, variables = table.lookup("POST", "/v1/things")
    filled: Any = build_request(route, variables, [], b"{}", idempotency_key="k1")
    assert filled.request_id == "k1"
    kept: Any = build_request(route, variables, [], b'{"requestId": "mine"}', idempotency_key="k1")
    assert kept.request_id == "mine"


def test_response_json_names(table: RouteTable) -> None:
    route: Route
    route, _ = table.lookup("POST", "/v1/things")
    # response_class is typed as type[Message], whose stubs take no field names: call it untyped.
    message: Message = cast(Any, route.response_class)(request_id="r", big=5)
    assert response_json(route, message) == {"big": "5", "requestId": "r"}
    assert response_json(route, message, use_proto_names=True) == {"big": "5", "request_id": "r"}


def test_the_client_address_is_forwarded_and_cannot_be_spoofed() -> None:
    from multidict import CIMultiDict

    from gateway.app import request_metadata
    from gateway.errors import GatewayError

    metadata = request_metadata(CIMultiDict(), "req-1", "203.0.113.9")
    assert ("x-forwarded-for", "203.0.113.9") in metadata
    with pytest.raises(GatewayError):
        request_metadata(CIMultiDict({"Grpc-Metadata-X-Forwarded-For": "1.2.3.4"}), "req-1", "203.0.113.9")


def test_a_verb_on_the_first_segment_is_routed(table: RouteTable) -> None:
    route, variables = table.lookup("POST", "/v1:batchThings")
    assert route.method.name == "BatchThings" and variables == {}
    assert "v1" in table.prefixes()


def test_map_entries_from_the_query(table: RouteTable) -> None:
    query = [
        ("labels[team]", "core"),
        ("labels[env]", "prod"),
        ("labels[a.b]", "dotted keys stay whole"),
        ("limits[calls]", "9007199254740993"),
        ("flags[7]", "true"),
        ("flags[-1]", "0"),
        ("shades[sky]", "COLOR_BLUE"),
        ("shades[sea]", "1"),
        ("stamps[start]", "2026-01-02T03:04:05Z"),
        ("inner.attrs[k]", "v"),  # a map inside a message: grpc-gateway's a.b[key]=value
        ("inner.label", "x"),
    ]
    message = build(table, "GET", "/v1/things/n1", query)
    assert dict(message.labels) == {"team": "core", "env": "prod", "a.b": "dotted keys stay whole"}
    assert dict(message.limits) == {"calls": 9007199254740993}
    assert dict(message.flags) == {7: True, -1: False}
    assert dict(message.shades) == {"sky": 2, "sea": 1}
    assert message.stamps["start"].ToJsonString() == "2026-01-02T03:04:05Z"
    assert dict(message.inner.attrs) == {"k": "v"} and message.inner.label == "x"


@pytest.mark.parametrize(
    ("query", "field", "description"),
    [
        ([("limits[calls]", "many")], "limits[calls]", "must be an integer from -9223372036854775808"),
        ([("flags[seven]", "true")], "flags[seven]", "the map key must be an integer from -2147483648"),
        ([("flags[1]", "maybe")], "flags[1]", "must be true or false"),
        ([("shades[sky]", "COLOR_PURPLE")], "shades[sky]", "must be one of COLOR_UNSPECIFIED, COLOR_RED"),
        ([("stamps[start]", "yesterday")], "stamps[start]", "must be an RFC 3339 timestamp"),
        ([("by_name[a]", "x")], "by_name[a]", "a map of messages cannot be set from the URL"),
        ([("count[a]", "1")], "count[a]", "only a map field takes [KEY]"),
        ([("nope[a]", "1")], "nope[a]", "unknown query parameter"),
        ([("labels", "core")], "labels", "set map entries one by one, as labels[KEY]=VALUE"),
        ([("labels[team]", "a"), ("labels[team]", "b")], "labels[team]", "given more than once"),
    ],
)
def test_bad_map_entries_are_400_naming_the_entry(
    table: RouteTable, query: list[tuple[str, str]], field: str, description: str
) -> None:
    error = refused(table, "GET", "/v1/things/n1", query)
    assert error.http == 400
    assert error.violations[0][0] == field
    assert error.violations[0][1].startswith(description), error.violations


def test_a_map_the_body_binds_is_not_a_query_parameter(table: RouteTable) -> None:
    error = refused(table, "POST", "/v1/things", [("labels[team]", "core")], b"{}")
    assert error.reason == "BOUND_FIELD" and error.violations[0][0] == "labels[team]"


PYTHON_WORDS = (
    "invalid literal",
    "int()",
    "object is not",
    "NoneType",
    "Traceback",
    "expected string or bytes",
)


def assert_said_in_api_terms(error: GatewayError, field: str, description: str) -> None:
    assert error.violations[0][0] == field
    assert error.violations[0][1].startswith(description), error.violations
    assert error.message == f"{field}: {error.violations[0][1]}"
    assert not any(words in error.message for words in PYTHON_WORDS), error.message


INT32 = "must be an integer from -2147483648 to 2147483647"
INT64 = "must be an integer from -9223372036854775808 to 9223372036854775807"


@pytest.mark.parametrize(
    ("query", "field", "description"),
    [
        (("count", "x"), "count", INT32),
        (("count", "1.5"), "count", INT32),
        (("count", "99999999999"), "count", INT32),
        (("ratio", "half"), "ratio", "must be a number"),
        (("wait", "soon"), "wait", "must be a duration in seconds"),
        (("limit", "lots"), "limit", INT64),
    ],
)
def test_a_query_value_of_the_wrong_kind_is_said_in_the_api_terms(
    table: RouteTable, query: tuple[str, str], field: str, description: str
) -> None:
    assert_said_in_api_terms(refused(table, "GET", "/v1/things/n1", [query]), field, description)


@pytest.mark.parametrize(
    ("body", "field", "description"),
    [
        (b'{"count": "many"}', "count", INT32),
        (b'{"count": [1]}', "count", INT32),
        (b'{"name": 5}', "name", "must be a string"),
        (b'{"inner": 5}', "inner", "must be a JSON object"),
        (b'{"inner": {"size": "big"}}', "inner.size", INT32),
        (b'{"tags": 5}', "tags", "must be a list, each item a string"),
        (b'{"when": 5}', "when", "must be an RFC 3339 timestamp"),
        (b'{"labels": {"a": 1}}', "labels", "must be a JSON object, each value a string"),
        (b'{"limits": 5}', "limits", "must be a JSON object, each value an integer"),
        (b'{"flag": "maybe"}', "flag", "must be true or false"),
    ],
)
def test_a_body_value_of_the_wrong_kind_is_said_in_the_api_terms(
    table: RouteTable, body: bytes, field: str, description: str
) -> None:
    assert_said_in_api_terms(refused(table, "POST", "/v1/things", body=body), field, description)


def test_an_http_body_request_takes_the_body_unparsed() -> None:
    """grpc-gateway's rule for a google.api.HttpBody request bound whole: the bytes as sent are its
    `data` and the Content-Type its `content_type` (a Stripe signature is over those very bytes)."""
    route, variables = RouteTable.from_services(SERVICES).lookup("POST", "/v1/gatewayEvents/stripe")
    assert route.grpc_method == "/tally.billing.v1.GatewayEventService/ReceiveStripeEvent"
    raw = b'{ "id" : "evt_1",\n  "b": 1 }\x00\xff'  # neither canonical JSON nor UTF-8: never parsed
    message = build_request(route, variables, [], raw, content_type="application/json; charset=utf-8")
    assert cast(Any, message).data == raw
    assert cast(Any, message).content_type == "application/json; charset=utf-8"
    with pytest.raises(GatewayError) as caught:
        build_request(route, variables, [("contentType", "text/plain")], raw)
    assert caught.value.violations == [("contentType", "unknown query parameter")]
    lenient = build_request(route, variables, [("contentType", "text/plain")], raw, strict=False)
    assert cast(Any, lenient).content_type == "" and cast(Any, lenient).data == raw
