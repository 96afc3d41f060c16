"""The OpenAPI 3.1 document built from the services' google.api.http rules."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    duration_pb2,
    empty_pb2,
    text_format,
    wrappers_pb2,
)
from google.protobuf.descriptor import ServiceDescriptor
from hypothesis import given, settings
from hypothesis import strategies as st
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from account_svc.domain import check_email
from app.modules import SERVICES
from core.errors import InvalidArgument, Violations
from core.idempotency import REQUEST_ID_PATTERN, check_request_id
from gateway.constraints import EMAIL_PATTERN, id_pattern
from gateway.errors import GatewayError
from gateway.openapi import build_openapi, http_bindings, load_comments, parse_template, segments_regex
from gateway.routes import RouteTable
from gateway.schemas import NO_CONTROL
from gateway.templates import PathTemplate, parameter_names

JSON = dict[str, Any]
SCHEMAS = "#/components/schemas/"


@pytest.fixture(scope="module")
def doc() -> JSON:
    return build_openapi(SERVICES)


def resolve(doc: JSON, pointer: str) -> Any:
    assert pointer.startswith("#/"), pointer
    node: Any = doc
    for part in pointer[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def deref(doc: JSON, node: JSON) -> JSON:
    while "$ref" in node:
        node = resolve(doc, node["$ref"])
    return node


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def params(operation: JSON) -> dict[tuple[str, str], JSON]:
    return {(p["in"], p["name"]): p for p in operation.get("parameters", [])}


def schema(doc: JSON, name: str) -> JSON:
    return doc["components"]["schemas"][name]


def null_allowed(node: JSON) -> bool:
    kind = node.get("type")
    return (isinstance(kind, list) and "null" in kind) or {"type": "null"} in node.get("anyOf", [])


ERRORS = ("400", "401", "403", "404", "405", "409", "413", "429", "500", "501", "503", "504", "default")


def test_document_is_valid_openapi_31(doc: JSON) -> None:
    assert doc["openapi"] == "3.1.0"
    validate(doc, cls=OpenAPIV31SpecValidator)
    assert json.loads(json.dumps(doc)) == doc
    validate(build_openapi(SERVICES, use_proto_names=True, comments={}), cls=OpenAPIV31SpecValidator)


def test_every_ref_resolves(doc: JSON) -> None:
    found = list(refs(doc))
    assert found
    for pointer in found:
        assert isinstance(resolve(doc, pointer), dict), pointer


def test_get_account_has_required_path_id(doc: JSON) -> None:
    operation = doc["paths"]["/v1/accounts/{id}"]["get"]
    assert operation["operationId"] == "AccountService_GetAccount"
    assert operation["tags"] == ["AccountService"]
    assert operation["summary"] == "Returns one account."
    id_param = params(operation)[("path", "id")]
    assert id_param["required"] is True
    assert id_param["schema"] == {"type": "string", "pattern": id_pattern("acct")}
    assert ("query", "showDeleted") in params(operation)
    assert "requestBody" not in operation


def test_list_accounts_query_parameters(doc: JSON) -> None:
    operation = doc["paths"]["/v1/accounts"]["get"]
    names = [name for where, name in params(operation) if where == "query"]
    assert names == ["pageSize", "pageToken", "filter", "showDeleted"]
    assert params(operation)[("query", "pageSize")]["schema"] == {
        "type": "integer",
        "format": "int32",
        "minimum": 0,  # core.pagination.page_size refuses negatives and lowers anything above 1000
        "maximum": 2**31 - 1,
    }

    proto_named = build_openapi(SERVICES, use_proto_names=True)["paths"]["/v1/accounts"]["get"]
    query = [name for where, name in params(proto_named) if where == "query"]
    assert query == ["page_size", "page_token", "filter", "show_deleted"]


def test_create_account_body_is_account(doc: JSON) -> None:
    operation = doc["paths"]["/v1/accounts"]["post"]
    body = operation["requestBody"]
    create = {"$ref": SCHEMAS + "tally.account.v1.Account.Create"}
    assert body["content"]["application/json"]["schema"] == create
    assert "id`, timestamps and `etag` are ignored" in body["description"]
    # Fields outside the body go in the query string; then the headers the gateway reads.
    assert list(params(operation)) == [
        ("query", "requestId"),
        ("header", "Idempotency-Key"),
        ("header", "X-Request-Id"),
        ("header", "Grpc-Timeout"),
    ]
    account = schema(doc, "tally.account.v1.Account")
    assert account["properties"]["id"]["readOnly"] is True
    assert account["properties"]["createTime"]["readOnly"] is True
    assert account["properties"]["createTime"]["format"] == "date-time"
    assert "readOnly" not in account["properties"]["displayName"]
    # A resource is also a response: its REQUIRED fields are required only in the create form.
    assert "required" not in account
    required = schema(doc, "tally.account.v1.Account.Create")["required"]
    assert required == ["displayName", "email", "currencyCode"]


def test_update_account_binds_nested_path_field_under_the_shared_name(doc: JSON) -> None:
    operation = doc["paths"]["/v1/accounts/{id}"]["patch"]
    path_id = params(operation)[("path", "id")]
    assert path_id["required"] is True
    assert "Sets the request field `account.id`." in path_id["description"]
    # The gateway makes the update mask of the fields in the body, so the URL takes none.
    assert [name for where, name in params(operation) if where == "query"] == ["requestId"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": SCHEMAS + "tally.account.v1.Account.Update"}
    update = schema(doc, "tally.account.v1.Account.Update")
    assert "required" not in update
    changeable = [one["required"][0] for one in update["anyOf"]]
    assert "displayName" in changeable
    assert "id" not in changeable  # output only
    assert "etag" not in changeable  # a precondition, not a change
    assert null_allowed(update["properties"]["phone"])  # null clears it
    assert not null_allowed(update["properties"]["status"])  # an update names a status


def test_undelete_custom_verb_with_star_body(doc: JSON) -> None:
    operation = doc["paths"]["/v1/accounts/{id}:undelete"]["post"]
    assert params(operation)[("path", "id")]["required"] is True
    assert [where for where, _ in params(operation) if where != "header"] == ["path"]
    # Nothing in the body is required, and the gateway reads no body (or `null`) as an empty one.
    assert operation["requestBody"]["required"] is False
    body_or_null = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body_or_null["anyOf"][1] == {"type": "null"}
    body = deref(doc, body_or_null["anyOf"][0])
    assert list(body["properties"]) == ["requestId"]  # `id` travels in the path


def test_a_body_is_required_where_an_empty_one_is_refused(doc: JSON) -> None:
    paths = doc["paths"]
    assert paths["/v1/plans/{id}:archive"]["post"]["requestBody"]["required"] is False
    assert paths["/v1/meters/{id}:archive"]["post"]["requestBody"]["required"] is False
    assert paths["/v1/plans"]["post"]["requestBody"]["required"] is True  # body: "plan"
    assert paths["/v1/auth:login"]["post"]["requestBody"]["required"] is True  # `*` with required fields
    assert paths["/v1/plans/{id}"]["patch"]["requestBody"]["required"] is True  # at least one field


def test_login_is_public_and_others_need_a_bearer_token(doc: JSON) -> None:
    assert doc["security"] == [{"bearer": []}]
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "An access token from `/v1/auth:login` or `/v1/auth:token`.",
    }
    login = doc["paths"]["/v1/auth:login"]["post"]
    assert login["security"] == []
    assert "security" not in doc["paths"]["/v1/accounts/{id}"]["get"]
    body = deref(doc, login["requestBody"]["content"]["application/json"]["schema"])
    assert body["required"] == ["email", "password"]


def test_stripe_webhooks_are_public_with_their_signature_header_and_a_raw_body(doc: JSON) -> None:
    receive = doc["paths"]["/v1/gatewayEvents/stripe"]["post"]
    assert receive["operationId"] == "GatewayEventService_ReceiveStripeEvent"
    assert receive["security"] == []
    signature = params(receive)[("header", "Stripe-Signature")]
    assert signature["required"] is True and signature["schema"]["type"] == "string"
    # The event as Stripe sent it, not the HttpBody message's JSON mapping (contentType, data).
    assert receive["requestBody"]["required"] is True
    assert receive["requestBody"]["content"] == {"application/json": {"schema": {"type": "object"}}}
    ok = receive["responses"]["200"]["content"]["application/json"]["schema"]
    assert "string" in deref(doc, ok)["properties"]["outcome"]["type"]
    # No other operation documents the header, though the gateway passes it on for any route.
    others = [
        op["operationId"]
        for item in doc["paths"].values()
        for op in item.values()
        if isinstance(op, dict) and ("header", "Stripe-Signature") in params(op)
    ]
    assert others == ["GatewayEventService_ReceiveStripeEvent"]


def test_enums_maps_and_int64(doc: JSON) -> None:
    account = schema(doc, "tally.account.v1.Account")
    assert null_allowed(account["properties"]["status"])  # unset: json_format reads null as the default
    status = deref(doc, account["properties"]["status"]["anyOf"][0])
    assert status["type"] == ["string", "integer"]
    # json_format reads an enum by name, number or a string of digits.
    assert status["enum"][:3] == ["STATUS_UNSPECIFIED", "STATUS_ACTIVE", "STATUS_SUSPENDED"]
    assert status["enum"][3:] == [0, 1, 2, "0", "1", "2"]
    assert "`STATUS_SUSPENDED`: Billing is on hold" in status["description"]
    assert account["properties"]["metadata"]["type"] == ["object", "null"]
    values = account["properties"]["metadata"]["additionalProperties"]
    assert values == {"type": "string", "maxLength": 500, "pattern": NO_CONTROL}
    expires_in = schema(doc, "tally.account.v1.TokenResponse")["properties"]["expiresIn"]
    assert expires_in["type"] == ["string", "null"]
    assert expires_in["format"] == "int64"
    changes = schema(doc, "tally.audit.v1.AuditEvent")["properties"]["changes"]
    assert changes["type"] == ["object", "null"]


def test_descriptions_come_from_proto_comments(doc: JSON) -> None:
    account = schema(doc, "tally.account.v1.Account")
    assert account["description"] == "A customer account."
    assert account["properties"]["displayName"]["description"] == (
        "Name shown on invoices and in listings. Required; at most 200 characters."
    )
    tags = {tag["name"]: tag for tag in doc["tags"]}
    assert tags["AccountService"]["description"].startswith("Manages customer accounts")
    # Comments of imported googleapis messages come along too.
    assert (
        "CLDR region code"
        in schema(doc, "google.type.PostalAddress")["properties"]["regionCode"]["description"]
    )


def test_errors_are_google_rpc_status(doc: JSON) -> None:
    status = schema(doc, "google.rpc.Status")
    assert status["properties"]["code"]["type"] == "integer"
    assert status["properties"]["message"]["type"] == "string"
    details = deref(doc, status["properties"]["details"]["items"])
    assert "@type" in details["properties"]
    error_ref = {"$ref": SCHEMAS + "google.rpc.Status"}
    for path_item in doc["paths"].values():
        for operation in path_item.values():
            responses = operation["responses"]
            assert set(responses) == {"200", *ERRORS}
            assert deref(doc, responses["default"])["content"]["application/json"]["schema"] == error_ref
            for code in ERRORS:
                assert deref(doc, responses[code])["content"]["application/json"]["schema"] == error_ref
            assert "Retry-After" in deref(doc, responses["429"])["headers"]


def test_load_comments_covers_every_kind_of_element() -> None:
    comments = load_comments()
    assert comments["tally.account.v1.AccountService"].startswith("Manages customer accounts")
    assert comments["tally.account.v1.AccountService.GetAccount"].startswith("Returns one account.")
    assert comments["tally.account.v1.Account"] == "A customer account."
    assert comments["tally.account.v1.Account.Status"] == "Whether the account may be billed."
    assert comments["tally.account.v1.Account.Status.STATUS_ACTIVE"].startswith("The account is in good")
    assert comments["tally.options.v1.access"].startswith("The access policy of an RPC.")
    # Leading `//` spaces are removed, further indentation (a code example) is kept.
    assert "\n    rpc GetAccount(GetAccountRequest)" in comments["tally.options.v1.AccessPolicy"]


def test_rpcs_without_an_http_rule_are_left_out(doc: JSON) -> None:
    operation_ids = {op["operationId"] for item in doc["paths"].values() for op in item.values()}
    # One operation per binding; an additional binding's id gets its position (CancelSubscription2).
    bound = {
        f"{s.name}_{m.name}{'' if i == 0 else i + 1}"
        for s in SERVICES
        for m in s.methods
        for i, _ in enumerate(http_bindings(m))
    }
    assert operation_ids == bound
    methods = {op.removesuffix("2") for op in operation_ids}
    assert len(methods) == sum(len(s.methods) for s in SERVICES)  # every Tally RPC has a rule today


def test_parse_template() -> None:
    path, variables = parse_template("/v1/accounts/{account.id}")
    assert path == "/v1/accounts/{account.id}"
    assert [(v.field_path, v.segments) for v in variables] == [("account.id", None)]
    path, variables = parse_template("/v1/{name=accounts/*/invoices/**}:send")
    assert path == "/v1/{name}:send"
    assert variables[0].segments == "accounts/*/invoices/**"
    assert segments_regex("accounts/*/invoices/**") == "^accounts/[^/]+/invoices/.+$"
    for bad in ("v1/accounts", "/v1/{id", "/v1/{a-b}", "/v1/id}"):
        with pytest.raises(ValueError, match="path template"):
            parse_template(bad)


# A service with the rule shapes Tally does not use yet, added to the default pool once.
_FIXTURE = """
name: "tally/testing/v1/openapi_fixture.proto"
package: "tally.testing.v1"
dependency: "google/api/annotations.proto"
dependency: "google/api/field_behavior.proto"
dependency: "google/protobuf/duration.proto"
dependency: "google/protobuf/empty.proto"
dependency: "google/protobuf/wrappers.proto"
syntax: "proto3"
message_type {
  name: "Widget"
  field { name: "name" number: 1 type: TYPE_STRING }
  field { name: "parent" number: 2 type: TYPE_MESSAGE type_name: ".tally.testing.v1.Widget" }
  field { name: "ttl" number: 3 type: TYPE_MESSAGE type_name: ".google.protobuf.Duration" }
  field { name: "limit" number: 4 type: TYPE_MESSAGE
          type_name: ".google.protobuf.Int64Value" }
  field { name: "size_bytes" number: 5 type: TYPE_UINT64 }
  field { name: "blob" number: 6 type: TYPE_BYTES }
  field { name: "ratio" number: 7 label: LABEL_REPEATED type: TYPE_DOUBLE }
}
message_type {
  name: "GetWidgetRequest"
  field { name: "name" number: 1 type: TYPE_STRING
          options { [google.api.field_behavior]: REQUIRED } }
  field { name: "filter" number: 2 type: TYPE_MESSAGE type_name: ".tally.testing.v1.Widget" }
}
service {
  name: "WidgetService"
  method {
    name: "GetWidget" input_type: ".tally.testing.v1.GetWidgetRequest" output_type: ".tally.testing.v1.Widget"
    options { [google.api.http] {
      get: "/v1/{name=widgets/*}"
      additional_bindings { get: "/v1/things/{name}" }
      additional_bindings { custom { kind: "HEAD" path: "/v1/{name=widgets/*}" } }
    } }
  }
  method {
    name: "GetParent" input_type: ".tally.testing.v1.GetWidgetRequest" output_type: ".tally.testing.v1.Widget"
    options { [google.api.http] { get: "/v1/{name=widgets/*}/parent" response_body: "parent" } }
  }
  method {
    name: "WatchWidgets" input_type: ".google.protobuf.Empty" output_type: ".tally.testing.v1.Widget"
    server_streaming: true
    options { [google.api.http] { post: "/v1/widgets:watch" body: "*" } }
  }
  method {
    name: "UploadWidgets" input_type: ".tally.testing.v1.Widget" output_type: ".google.protobuf.Empty"
    client_streaming: true
    options { [google.api.http] {
      post: "/v1/widgets:upload" body: "*"
      additional_bindings { get: "/v1/widgets:upload" }
    } }
  }
  method { name: "Internal" input_type: ".google.protobuf.Empty" output_type: ".google.protobuf.Empty" }
}
"""


# Imported for their side effect: the fixture's dependencies must be in the default pool.
_FIXTURE_DEPENDENCIES = (duration_pb2, empty_pb2, wrappers_pb2)


@pytest.fixture(scope="module")
def widgets() -> ServiceDescriptor:
    pool = descriptor_pool.Default()
    try:
        return pool.FindServiceByName("tally.testing.v1.WidgetService")
    except KeyError:
        proto = text_format.Parse(_FIXTURE, descriptor_pb2.FileDescriptorProto())
        pool.AddSerializedFile(proto.SerializeToString())
        return pool.FindServiceByName("tally.testing.v1.WidgetService")


def test_rule_shapes(widgets: ServiceDescriptor) -> None:
    doc = build_openapi([widgets], comments={"tally.testing.v1.Widget.name": "The widget's name."})
    validate(doc, cls=OpenAPIV31SpecValidator)
    for pointer in refs(doc):
        resolve(doc, pointer)
    paths = doc["paths"]
    assert set(paths) == {
        "/v1/{name}",
        "/v1/things/{name}",
        "/v1/{name}/parent",
        "/v1/widgets:watch",
        "/v1/widgets:upload",
    }

    get = paths["/v1/{name}"]["get"]
    name = params(get)[("path", "name")]
    assert name["schema"]["pattern"] == "^widgets/[^/]+$"
    assert "Matches `widgets/*`." in name["description"]
    # Query parameters recurse into `filter`, but not into its recursive `parent`.
    assert [n for where, n in params(get) if where == "query"] == [
        "filter.name",
        "filter.ttl",
        "filter.limit",
        "filter.sizeBytes",
        "filter.blob",
        "filter.ratio",
    ]
    assert params(get)[("query", "filter.ratio")]["schema"]["type"] == "array"
    assert paths["/v1/things/{name}"]["get"]["operationId"] == "WidgetService_GetWidget2"
    assert paths["/v1/{name}"]["head"]["operationId"] == "WidgetService_GetWidget3"

    parent = paths["/v1/{name}/parent"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert parent == {"$ref": SCHEMAS + "tally.testing.v1.Widget"}

    watch = paths["/v1/widgets:watch"]["post"]
    assert watch["requestBody"]["content"]["application/json"]["schema"] == {"type": ["object", "null"]}
    assert watch["requestBody"]["required"] is False
    assert set(watch["responses"]["200"]["content"]) == {"application/x-ndjson", "text/event-stream"}
    assert "WidgetService_Internal" not in json.dumps(doc)

    # Client streaming: one request message per line of an NDJSON body; a binding without a body
    # cannot carry the stream, so it is neither served (gateway/routes.py) nor documented.
    assert set(paths["/v1/widgets:upload"]) == {"post"}
    upload = paths["/v1/widgets:upload"]["post"]["requestBody"]
    # Widget is also a response message, so the body schema is its own component (as for unary).
    body_schema = {"$ref": SCHEMAS + "tally.testing.v1.WidgetService.UploadWidgetsBody"}
    # Also as application/json (read the same way; one object is a stream of one message), and
    # not required: an empty body is a stream of no messages.
    assert upload["content"] == {
        "application/x-ndjson": {"schema": body_schema},
        "application/json": {"schema": body_schema},
    }
    assert upload["required"] is False
    assert upload["description"].startswith("One JSON object per line")
    assert set(paths["/v1/widgets:upload"]["post"]["responses"]["200"]["content"]) == {"application/json"}

    widget = schema(doc, "tally.testing.v1.Widget")["properties"]
    assert widget["name"]["description"] == "The widget's name."
    assert widget["parent"] == {"anyOf": [{"$ref": SCHEMAS + "tally.testing.v1.Widget"}, {"type": "null"}]}
    assert widget["ttl"]["type"] == ["string", "null"]
    assert widget["ttl"]["pattern"] == r"^-?\d+(\.\d+)?s$"
    assert widget["limit"]["type"] == ["string", "null"]
    assert widget["sizeBytes"]["type"] == ["string", "null"]
    assert widget["blob"]["contentEncoding"] == "base64"
    assert widget["ratio"] == {"type": ["array", "null"], "items": {"type": "number", "format": "double"}}


# --- what stock tools need: unique paths, the server's rules, headers, statuses, links ----------------


def test_paths_are_unique_as_openapi_31_defines_them(doc: JSON) -> None:
    shapes = [re.sub(r"\{[^}]*\}", "{}", path) for path in doc["paths"]]
    assert len(shapes) == len(set(shapes)), doc["paths"].keys()
    assert "/v1/accounts/{account.id}" not in doc["paths"]
    assert set(doc["paths"]["/v1/accounts/{id}"]) == {"get", "patch", "delete"}


def test_parameter_names_agree_per_shape() -> None:
    texts = ("/v1/a/{id}", "/v1/a/{a.id}", "/v1/{x.id}/b/{y.id}", "/v1/{p}/b/{q}")
    templates = [PathTemplate.parse(text) for text in texts]
    assert parameter_names(templates) == [
        {"id": "id"},
        {"a.id": "id"},
        {"x.id": "x_id", "y.id": "y_id"},  # both would be `id`
        {"p": "x_id", "q": "y_id"},  # the first template of the shape names it
    ]


def test_every_documented_url_reaches_its_method_with_the_proto_fields(doc: JSON) -> None:
    """The gateway routes by the proto templates: `{id}` in the document fills `account.id`."""
    table = RouteTable.from_services(SERVICES)
    for path, item in doc["paths"].items():
        for verb, operation in item.items():
            values = {p["name"]: f"v{i}" for i, p in enumerate(operation["parameters"]) if p["in"] == "path"}
            route, variables = table.lookup(verb.upper(), path.format(**values))
            assert operation["operationId"].startswith(route.method.containing_service.name + "_")
            assert operation["operationId"].split("_")[1].rstrip("0123456789") == route.method.name
            sets = r"`([\w.]+)`\.$"  # "Sets the request field `account.id`."
            fields = {p["name"]: re.search(sets, p.get("description", "")) for p in operation["parameters"]}
            for name, value in values.items():
                renamed = fields[name]
                field = renamed.group(1) if renamed is not None else name
                assert variables[field] == value, (path, verb, variables)


def test_a_custom_method_path_under_another_http_method_is_405() -> None:
    table = RouteTable.from_services(SERVICES)
    with pytest.raises(GatewayError) as caught:
        table.lookup("PATCH", "/v1/accounts/acct_1:undelete")
    assert caught.value.http == 405
    assert caught.value.headers == {"Allow": "POST"}


def test_required_comes_from_field_behavior(doc: JSON) -> None:
    user = schema(doc, "tally.account.v1.User.Create")
    assert user["required"] == ["email", "role"]
    create_user = schema(doc, "tally.account.v1.CreateUserRequest")
    assert create_user["required"] == ["user", "password"]
    assert create_user["properties"]["user"] == {
        "$ref": SCHEMAS + "tally.account.v1.User.Create",
        "description": create_user["properties"]["user"]["description"],
    }
    assert schema(doc, "tally.account.v1.ServiceAccount.Create")["required"] == ["displayName", "scopes"]
    assert not null_allowed(schema(doc, "tally.account.v1.Account")["properties"]["email"])  # REQUIRED


def test_objects_are_closed_where_the_gateway_is_strict(doc: JSON) -> None:
    assert schema(doc, "tally.account.v1.Account")["additionalProperties"] is False
    lenient = build_openapi(SERVICES, strict=False)
    assert "additionalProperties" not in lenient["components"]["schemas"]["tally.account.v1.Account"]


def test_server_checks_are_stated(doc: JSON) -> None:
    account = schema(doc, "tally.account.v1.Account.Create")["properties"]
    assert account["phone"]["pattern"] == "^(\\+[1-9][0-9]{6,14})?$"
    assert "USD" in account["currencyCode"]["enum"]
    assert "XTS" not in account["currencyCode"]["enum"]
    assert account["displayName"]["maxLength"] == 200
    assert account["metadata"]["maxProperties"] == 50
    address = schema(doc, "google.type.PostalAddress")
    assert address["required"] == ["regionCode"]
    assert schema(doc, "tally.account.v1.CreateUserRequest")["properties"]["password"]["minLength"] == 12
    filter_param = params(doc["paths"]["/v1/accounts"]["get"])[("query", "filter")]
    assert ecma_search(filter_param["schema"]["pattern"], 'status = ACTIVE AND email = "a@example.com"')


def ecma_search(pattern: str, text: str) -> bool:
    """`pattern` as JSON Schema reads it: in ECMA-262 a final `$` does not match before a final newline."""
    return re.search(pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern, text) is not None


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(max_size=40))
def test_email_pattern_is_the_servers_check(text: str) -> None:
    """Patterns are written so that Python reads them as JSON Schema (ECMA-262) does."""
    violations = Violations()
    check_email(violations, "email", text.strip())
    server_accepts = not violations.items
    assert ecma_search(EMAIL_PATTERN, text) == server_accepts


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(max_size=12))
def test_request_id_pattern_is_the_servers_check(text: str) -> None:
    try:
        check_request_id(text)
        server_accepts = True
    except InvalidArgument:
        server_accepts = False
    assert ecma_search(REQUEST_ID_PATTERN, text) == server_accepts


def test_headers_the_gateway_reads(doc: JSON) -> None:
    with_request_id = {
        f"{s.name}_{m.name}"
        for s in SERVICES
        for m in s.methods
        if "request_id" in m.input_type.fields_by_name
    }
    for item in doc["paths"].values():
        for operation in item.values():
            headers = {name for where, name in params(operation) if where == "header"}
            takes_key = operation["operationId"].removesuffix("2") in with_request_id
            assert headers >= {"X-Request-Id", "Grpc-Timeout"}, operation["operationId"]
            assert ("Idempotency-Key" in headers) == takes_key, operation["operationId"]
    key = params(doc["paths"]["/v1/accounts"]["post"])[("header", "Idempotency-Key")]
    assert key["schema"]["maxLength"] == 128


def test_every_status_the_gateway_answers(doc: JSON) -> None:
    responses = doc["components"]["responses"]
    assert "Allow" in responses["MethodNotAllowed"]["headers"]
    assert "WWW-Authenticate" in responses["Unauthorized"]["headers"]
    for name in ("ContentTooLarge", "Unavailable", "GatewayTimeout"):
        assert responses[name]["headers"]["X-Request-Id"]["required"] is True
    assert "FAILED_PRECONDITION" in responses["Conflict"]["description"]
    assert "FAILED_PRECONDITION" not in responses["BadRequest"]["description"]


def test_servers_and_descriptions(doc: JSON) -> None:
    assert doc["servers"] == [{"url": "/", "description": "The host that serves this document."}]
    for item in doc["paths"].values():
        for operation in item.values():
            assert operation["description"].strip(), operation["operationId"]
            assert operation["summary"], operation["operationId"]


def test_links_from_creates_to_the_created_resource(doc: JSON) -> None:
    links = doc["paths"]["/v1/accounts"]["post"]["responses"]["200"]["links"]
    assert set(links) == {
        "AccountService_GetAccount",
        "AccountService_UpdateAccount",
        "AccountService_DeleteAccount",
        "AccountService_UndeleteAccount",
    }
    for name, link in links.items():
        assert link["operationId"] == name
        assert link["parameters"] == {"path.id": "$response.body#/id"}
    service_accounts = doc["paths"]["/v1/serviceAccounts"]["post"]["responses"]["200"]["links"]
    assert service_accounts["AuthService_DeleteServiceAccount"]["parameters"] == {
        "path.id": "$response.body#/serviceAccount/id"
    }
    users = doc["paths"]["/v1/users"]["post"]["responses"]["200"]["links"]
    assert list(users) == ["AuthService_GetUser"]
    # Every link names a documented operation.
    operation_ids = {op["operationId"] for item in doc["paths"].values() for op in item.values()}
    for item in doc["paths"].values():
        for operation in item.values():
            assert set(operation["responses"]["200"].get("links", {})) <= operation_ids


def test_service_account_scopes_are_the_scopes_policies_require() -> None:
    """The server refuses any other scope, so the document offers exactly these."""
    from gateway.openapi import required_scopes

    document = build_openapi(SERVICES)
    known = required_scopes(SERVICES)
    assert "accounts:read" in known
    found = [
        schema["properties"]["scopes"]["items"]
        for name, schema in document["components"]["schemas"].items()
        if name.startswith("tally.account.v1.ServiceAccount") and "scopes" in schema.get("properties", {})
    ]
    assert found
    assert all(items["enum"] == sorted(known) for items in found)
