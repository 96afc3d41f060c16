"""The transcoder without a network: routes, request building, status to HTTP, error bodies."""

from __future__ import annotations

from typing import Any

import grpc
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
from google.rpc import error_details_pb2, status_pb2

from app.modules import SERVICES
from gateway.errors import GatewayError, error_headers, http_status, status_json
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
    message: Message = route.response_class(request_id="r", big=5)
    assert response_json(route, message) == {"big": "5", "requestId": "r"}
    assert response_json(route, message, use_proto_names=True) == {"big": "5", "request_id": "r"}


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 400),
        (grpc.StatusCode.FAILED_PRECONDITION, 409),
        (grpc.StatusCode.OUT_OF_RANGE, 400),
        (grpc.StatusCode.UNAUTHENTICATED, 401),
        (grpc.StatusCode.PERMISSION_DENIED, 403),
        (grpc.StatusCode.NOT_FOUND, 404),
        (grpc.StatusCode.ALREADY_EXISTS, 409),
        (grpc.StatusCode.ABORTED, 409),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
        (grpc.StatusCode.CANCELLED, 499),
        (grpc.StatusCode.UNIMPLEMENTED, 501),
        (grpc.StatusCode.UNAVAILABLE, 503),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
        (grpc.StatusCode.INTERNAL, 500),
        (grpc.StatusCode.UNKNOWN, 500),
        (grpc.StatusCode.DATA_LOSS, 500),
    ],
)
def test_status_to_http(code: grpc.StatusCode, expected: int) -> None:
    assert http_status(code) == expected
    assert http_status(code.value[0]) == expected
    assert http_status(99) == 500


def test_error_body_shape_and_headers() -> None:
    status = GatewayError.invalid("page_size", "must be positive").status()
    assert status_json(status) == {
        "code": 3,
        "message": "page_size: must be positive",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "INVALID_ARGUMENT",
                "domain": "tally",
            },
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": "page_size", "description": "must be positive"}],
            },
        ],
    }
    retry = status_pb2.Status(code=8, message="slow down")
    info = error_details_pb2.RetryInfo()
    info.retry_delay.FromMilliseconds(1200)
    retry.details.add().Pack(info)
    assert error_headers(retry, had_credentials=True) == {"Retry-After": "2"}
    unauthenticated = status_pb2.Status(code=16, message="no token")
    assert error_headers(unauthenticated, had_credentials=False) == {"WWW-Authenticate": "Bearer"}
    assert status_json(status_pb2.Status(code=5)) == {"code": 5, "message": "", "details": []}


def test_the_client_address_is_forwarded_and_cannot_be_spoofed() -> None:
    from multidict import CIMultiDict

    from gateway.app import request_metadata
    from gateway.errors import GatewayError

    metadata = request_metadata(CIMultiDict(), "req-1", "203.0.113.9")
    assert ("x-forwarded-for", "203.0.113.9") in metadata
    with pytest.raises(GatewayError):
        request_metadata(CIMultiDict({"Grpc-Metadata-X-Forwarded-For": "1.2.3.4"}), "req-1", "203.0.113.9")
