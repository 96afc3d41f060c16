"""The OpenAPI 3.1 document built from the services' google.api.http rules."""

from __future__ import annotations

import json
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
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from app.modules import SERVICES
from gateway.openapi import build_openapi, http_bindings, load_comments, parse_template, segments_regex

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
    assert id_param["schema"] == {"type": "string"}
    assert ("query", "showDeleted") in params(operation)
    assert "requestBody" not in operation


def test_list_accounts_query_parameters(doc: JSON) -> None:
    operation = doc["paths"]["/v1/accounts"]["get"]
    names = [name for where, name in params(operation) if where == "query"]
    assert names == ["pageSize", "pageToken", "filter", "showDeleted"]
    assert params(operation)[("query", "pageSize")]["schema"] == {"type": "integer", "format": "int32"}

    proto_named = build_openapi(SERVICES, use_proto_names=True)["paths"]["/v1/accounts"]["get"]
    assert [name for _, name in params(proto_named)] == ["page_size", "page_token", "filter", "show_deleted"]


def test_create_account_body_is_account(doc: JSON) -> None:
    operation = doc["paths"]["/v1/accounts"]["post"]
    body = operation["requestBody"]
    assert body["content"]["application/json"]["schema"] == {"$ref": SCHEMAS + "tally.account.v1.Account"}
    assert "id`, timestamps and `etag` are ignored" in body["description"]
    # Fields outside the body go in the query string.
    assert list(params(operation)) == [("query", "requestId")]
    account = schema(doc, "tally.account.v1.Account")
    assert account["properties"]["id"]["readOnly"] is True
    assert account["properties"]["createTime"]["readOnly"] is True
    assert account["properties"]["createTime"]["format"] == "date-time"
    assert "readOnly" not in account["properties"]["displayName"]
    # A resource is also a response: its REQUIRED fields are not listed as required.
    assert "required" not in account


def test_update_account_binds_nested_path_field(doc: JSON) -> None:
    operation = doc["paths"]["/v1/accounts/{account.id}"]["patch"]
    assert params(operation)[("path", "account.id")]["required"] is True
    assert [name for where, name in params(operation) if where == "query"] == ["updateMask", "requestId"]
    assert params(operation)[("query", "updateMask")]["schema"]["type"] == "string"
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": SCHEMAS + "tally.account.v1.Account"}


def test_undelete_custom_verb_with_star_body(doc: JSON) -> None:
    operation = doc["paths"]["/v1/accounts/{id}:undelete"]["post"]
    assert params(operation)[("path", "id")]["required"] is True
    assert [where for where, _ in params(operation)] == ["path"]
    body = deref(doc, operation["requestBody"]["content"]["application/json"]["schema"])
    assert list(body["properties"]) == ["requestId"]  # `id` travels in the path


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


def test_enums_maps_and_int64(doc: JSON) -> None:
    account = schema(doc, "tally.account.v1.Account")
    status = deref(doc, account["properties"]["status"])
    assert status["type"] == "string"
    assert status["enum"] == ["STATUS_UNSPECIFIED", "STATUS_ACTIVE", "STATUS_SUSPENDED"]
    assert "`STATUS_SUSPENDED`: Billing is on hold" in status["description"]
    assert account["properties"]["metadata"]["type"] == "object"
    assert account["properties"]["metadata"]["additionalProperties"] == {"type": "string"}
    expires_in = schema(doc, "tally.account.v1.TokenResponse")["properties"]["expiresIn"]
    assert expires_in["type"] == "string"
    assert expires_in["format"] == "int64"
    changes = schema(doc, "tally.audit.v1.AuditEvent")["properties"]["changes"]
    assert changes["type"] == "object"


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
            assert set(responses) == {"200", "400", "401", "403", "404", "409", "429", "default"}
            assert deref(doc, responses["default"])["content"]["application/json"]["schema"] == error_ref
            for code in ("400", "401", "403", "404", "409", "429"):
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
    bound = {f"{s.name}_{m.name}" for s in SERVICES for m in s.methods if http_bindings(m)}
    assert operation_ids == bound
    assert len(operation_ids) == sum(len(s.methods) for s in SERVICES)  # every Tally RPC has a rule today


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
    assert watch["requestBody"]["content"]["application/json"]["schema"] == {"type": "object"}
    assert set(watch["responses"]["200"]["content"]) == {"application/x-ndjson", "text/event-stream"}
    assert "Internal" not in json.dumps(doc)

    # Client streaming: one request message per line of an NDJSON body; a binding without a body
    # cannot carry the stream, so it is neither served (gateway/routes.py) nor documented.
    assert set(paths["/v1/widgets:upload"]) == {"post"}
    upload = paths["/v1/widgets:upload"]["post"]["requestBody"]
    # Widget is also a response message, so the body schema is its own component (as for unary).
    body_schema = {"$ref": SCHEMAS + "tally.testing.v1.WidgetService.UploadWidgetsBody"}
    assert upload["content"] == {"application/x-ndjson": {"schema": body_schema}}
    assert upload["description"].startswith("One JSON object per line")
    assert set(paths["/v1/widgets:upload"]["post"]["responses"]["200"]["content"]) == {"application/json"}

    widget = schema(doc, "tally.testing.v1.Widget")["properties"]
    assert widget["name"]["description"] == "The widget's name."
    assert widget["parent"] == {"$ref": SCHEMAS + "tally.testing.v1.Widget"}
    assert widget["ttl"]["type"] == "string"
    assert widget["ttl"]["pattern"] == r"^-?\d+(\.\d+)?s$"
    assert widget["limit"]["type"] == ["string", "null"]
    assert widget["sizeBytes"]["type"] == "string"
    assert widget["blob"]["contentEncoding"] == "base64"
    assert widget["ratio"] == {"type": "array", "items": {"type": "number", "format": "double"}}
