"""An OpenAPI 3.1 document for the REST/JSON side, built from the services' google.api.http rules.

    document = build_openapi(app.modules.SERVICES)

Every RPC with a `google.api.http` rule (and each of its `additional_bindings`)
becomes an operation; RPCs without one are left out. Bodies and responses use
the proto3 JSON mapping (see gateway/schemas.py). Descriptions come from the
proto comments, which the generated `_pb2` modules drop: tools/gen_protos.py
keeps them in `generated/tally/descriptors.binpb`, read by `load_comments()`.
"""

from __future__ import annotations

import functools
import re
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from itertools import chain

from google.api import annotations_pb2, field_behavior_pb2, http_pb2
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor, ServiceDescriptor

from gateway.constraints import RULES, with_known_scopes
from gateway.openapi_http import (
    ERROR_RESPONSES,
    Operation,
    add_links,
    error_responses,
    header_parameters,
    raw_request_body,
    response_headers,
)
from gateway.schemas import (
    JSON,
    QUERY_WELL_KNOWN,
    REF_PREFIX,
    STATUS,
    WELL_KNOWN,
    Flavor,
    Rules,
    SchemaBuilder,
    behaviors,
    is_map,
    is_required,
    nullable,
    ref,
)
from gateway.templates import PathTemplate, parameter_names
from gateway.transcoder import is_http_body
from tally.options.v1 import access_pb2

OPENAPI_VERSION = "3.1.0"
DESCRIPTOR_SET = "descriptors.binpb"
_VERBS = ("get", "put", "post", "delete", "patch")
_OPENAPI_METHODS = frozenset({*_VERBS, "head", "options", "trace"})
# Well-known types with no query-parameter form.
_NOT_QUERY = tuple(f"google.protobuf.{name}" for name in ("Struct", "Value", "ListValue", "Any", "Empty"))

# ---------------------------------------------------------------------------------------------------------
# Comments


def load_comments() -> dict[str, str]:
    """Leading comments of every proto element, by full name, from the generated descriptor set.

    Keys are full proto names without the leading dot: services
    (`tally.account.v1.AccountService`), methods (`...AccountService.GetAccount`),
    messages, fields (`tally.account.v1.Account.display_name`), enums, and enum
    values, which are keyed under their enum (`tally.account.v1.Account.Status.STATUS_ACTIVE`).
    """
    return dict(_cached_comments())


@functools.cache
def _cached_comments() -> dict[str, str]:
    data = resources.files("tally").joinpath(DESCRIPTOR_SET).read_bytes()
    return comments_from(descriptor_pb2.FileDescriptorSet.FromString(data))


def comments_from(files: descriptor_pb2.FileDescriptorSet) -> dict[str, str]:
    """The leading comments in a FileDescriptorSet built with source info, by full element name."""
    comments: dict[str, str] = {}
    for file in files.file:
        names = dict(_element_paths(file))
        for location in file.source_code_info.location:
            name = names.get(tuple(location.path))
            if name is not None and location.leading_comments.strip():
                comments[name] = textwrap.dedent(location.leading_comments).strip()
    return comments


def _element_paths(file: descriptor_pb2.FileDescriptorProto) -> Iterator[tuple[tuple[int, ...], str]]:
    """(SourceCodeInfo path, full name) of every named element of a file; numbers from descriptor.proto."""
    scope = f"{file.package}." if file.package else ""

    def enum(
        proto: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...], scope: str
    ) -> Iterator[tuple[tuple[int, ...], str]]:
        yield path, scope + proto.name
        for i, value in enumerate(proto.value):
            yield (*path, 2, i), f"{scope}{proto.name}.{value.name}"

    def message(
        proto: descriptor_pb2.DescriptorProto, path: tuple[int, ...], scope: str
    ) -> Iterator[tuple[tuple[int, ...], str]]:
        name = scope + proto.name
        yield path, name
        for i, field in enumerate(proto.field):
            yield (*path, 2, i), f"{name}.{field.name}"
        for i, extension in enumerate(proto.extension):
            yield (*path, 6, i), f"{name}.{extension.name}"
        for i, nested in enumerate(proto.nested_type):
            yield from message(nested, (*path, 3, i), f"{name}.")
        for i, nested_enum in enumerate(proto.enum_type):
            yield from enum(nested_enum, (*path, 4, i), f"{name}.")

    for i, message_type in enumerate(file.message_type):
        yield from message(message_type, (4, i), scope)
    for i, enum_type in enumerate(file.enum_type):
        yield from enum(enum_type, (5, i), scope)
    for i, service in enumerate(file.service):
        yield (6, i), scope + service.name
        for j, method in enumerate(service.method):
            yield (6, i, 2, j), f"{scope}{service.name}.{method.name}"
    for i, extension in enumerate(file.extension):
        yield (7, i), scope + extension.name


# ---------------------------------------------------------------------------------------------------------
# HTTP rules and path templates


@dataclass(frozen=True)
class Binding:
    """One HTTP binding of an RPC: its rule or one of the rule's additional_bindings."""

    verb: str  # lower case, as OpenAPI spells it
    template: str
    body: str
    response_body: str


def http_bindings(method: MethodDescriptor) -> list[Binding]:
    """The HTTP bindings of a method, the main rule first; empty when it has no google.api.http."""
    options = method.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        return []
    rule: http_pb2.HttpRule = options.Extensions[annotations_pb2.http]
    return [_binding(method, r) for r in (rule, *rule.additional_bindings)]


def _binding(method: MethodDescriptor, rule: http_pb2.HttpRule) -> Binding:
    pattern = rule.WhichOneof("pattern")
    if pattern in _VERBS:
        verb, template = str(pattern), str(getattr(rule, pattern))
    elif pattern == "custom":
        verb, template = str(rule.custom.kind).lower(), str(rule.custom.path)
    else:
        raise ValueError(f"{method.full_name}: google.api.http rule without a pattern")
    if verb not in _OPENAPI_METHODS:
        raise ValueError(f"{method.full_name}: HTTP method {verb.upper()} cannot be expressed in OpenAPI 3.1")
    return Binding(verb, template, str(rule.body), str(rule.response_body))


@dataclass(frozen=True)
class PathParam:
    field_path: str  # dotted proto field path, as written in the template
    segments: str | None  # the `=...` part of `{name=accounts/*}`, if any
    name: str = ""  # the OpenAPI parameter name; the field path unless renamed

    @property
    def parameter(self) -> str:
        return self.name or self.field_path


def parse_template(template: str, names: Mapping[str, str] | None = None) -> tuple[str, list[PathParam]]:
    """An OpenAPI path for a google.api.http path template, and its variables.

    `{account.id}` stays as it is unless `names` renames it (`{"account.id": "id"}`),
    `{name=accounts/*}` becomes `{name}`, and a custom verb
    (`/v1/accounts/{id}:undelete`) is kept literally.
    """
    names = names or {}
    if not template.startswith("/"):
        raise ValueError(f"path template {template!r} does not start with '/'")
    path: list[str] = []
    params: list[PathParam] = []
    for piece in re.split(r"(\{[^{}]*\})", template):
        if piece.startswith("{"):
            name, equals, segments = piece[1:-1].partition("=")
            if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", name):
                raise ValueError(f"path template {template!r} has a bad variable {piece!r}")
            param = PathParam(name, segments if equals else None, names.get(name, ""))
            params.append(param)
            path.append("{" + param.parameter + "}")
        elif "{" in piece or "}" in piece:
            raise ValueError(f"path template {template!r} has unbalanced braces")
        else:
            path.append(piece)
    return "".join(path), params


def segments_regex(segments: str) -> str:
    """A regular expression for a variable's segments: `*` is one segment, `**` any number."""
    parts = [
        "[^/]+" if s == "*" else ".+" if s == "**" else re.escape(s) for s in re.split(r"(\*\*|\*)", segments)
    ]
    return "^" + "".join(part for part in parts if part) + "$"


def resolve(message: Descriptor, field_path: str) -> list[FieldDescriptor]:
    """The fields along a dotted field path of a message; ValueError when there is no such path."""
    fields: list[FieldDescriptor] = []
    current: Descriptor | None = message
    for name in field_path.split("."):
        field = current.fields_by_name.get(name) if current is not None else None
        if field is None or (fields and fields[-1].is_repeated):
            raise ValueError(f"{message.full_name} has no field path {field_path!r}")
        fields.append(field)
        current = field.message_type
    return fields


# ---------------------------------------------------------------------------------------------------------
# The document


def build_openapi(
    services: Sequence[ServiceDescriptor],
    *,
    title: str = "Tally API",
    version: str = "v1",
    comments: Mapping[str, str] | None = None,
    use_proto_names: bool = False,
    strict: bool = True,
    rules: Rules | None = None,
) -> JSON:
    """An OpenAPI 3.1 document (a JSON-serialisable dict) for the HTTP bindings of `services`.

    `comments` maps full proto names to descriptions; None loads them with
    `load_comments()`. Property and query-parameter names are the proto3 JSON
    names (lowerCamelCase) unless `use_proto_names`. `strict` is the gateway's:
    unknown fields are refused, so objects say `additionalProperties: false`.
    `rules` states what the servers check beyond the proto types; None is
    Tally's own (gateway/constraints/).
    """
    outputs: set[str] = set()
    for service in services:
        for method in service.methods:
            _reachable(method.output_type, outputs)
    schemas = SchemaBuilder(
        load_comments() if comments is None else comments,
        use_proto_names=use_proto_names,
        strict=strict,
        rules=with_known_scopes(RULES, required_scopes(services)) if rules is None else rules,
        outputs=outputs,
    )
    builder = _DocumentBuilder(schemas)
    bound = [_served(service) for service in services]
    names = iter(parameter_names([PathTemplate.parse(b.template) for _, _, b, _ in chain(*bound)]))
    for service, operations in zip(services, bound, strict=True):
        builder.add_tag(service, bool(operations))
        for _, method, binding, index in operations:
            builder.add_operation(service, method, binding, index, next(names))
    add_links(builder.operations, schemas.json_name)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": version},
        "servers": [{"url": "/", "description": "The host that serves this document."}],
        "tags": builder.tags,
        "security": [{"bearer": []}],
        "paths": builder.paths,
        "components": {
            "schemas": dict(sorted(schemas.schemas.items())),
            "responses": error_responses(),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "An access token from `/v1/auth:login` or `/v1/auth:token`.",
                }
            },
        },
    }


def required_scopes(services: Sequence[ServiceDescriptor]) -> frozenset[str]:
    """Every scope an access policy of these services requires: the scopes a service account can hold."""
    return frozenset(
        scope
        for service in services
        for method in service.methods
        for scope in method.GetOptions().Extensions[access_pb2.access].scopes
    )


def _served(service: ServiceDescriptor) -> list[tuple[ServiceDescriptor, MethodDescriptor, Binding, int]]:
    """(service, method, binding, index among the method's bindings) for every binding the gateway serves.

    A client-streaming binding without a body is not served (gateway/routes.py), nor documented.
    """
    served = []
    for method in service.methods:
        bindings = [b for b in http_bindings(method) if b.body or not method.client_streaming]
        served += [(service, method, binding, index) for index, binding in enumerate(bindings)]
    return served


def _summary(description: str) -> str:
    first = description.split("\n\n", 1)[0].replace("\n", " ")
    match = re.match(r"(.+?\.)(\s|$)", first)
    return match.group(1) if match else first


def _reachable(message: Descriptor, seen: set[str]) -> set[str]:
    """Full names of `message` and every message its fields reach, added to `seen`."""
    if message.full_name not in seen:
        seen.add(message.full_name)
        for field in message.fields:
            if field.message_type is not None:
                _reachable(field.message_type, seen)
    return seen


def _fills_update_mask(method: MethodDescriptor, binding: Binding) -> bool:
    """Whether the gateway makes the update mask from the body (gateway/transcoder.py fill_update_mask)."""
    mask = method.input_type.fields_by_name.get("update_mask")
    return (
        binding.verb == "patch"
        and binding.body not in ("", "*")
        and mask is not None
        and mask.message_type is not None
        and mask.message_type.full_name == "google.protobuf.FieldMask"
    )


class _DocumentBuilder:
    def __init__(self, schemas: SchemaBuilder) -> None:
        self.comments = schemas.comments
        self.schemas = schemas
        self.paths: dict[str, JSON] = {}
        self.tags: list[JSON] = []
        self.operations: list[Operation] = []

    def add_tag(self, service: ServiceDescriptor, has_operations: bool) -> None:
        if not has_operations:
            return
        tag: JSON = {"name": service.name}
        if description := self.comments.get(service.full_name):
            tag["description"] = description
        self.tags.append(tag)

    def add_operation(
        self,
        service: ServiceDescriptor,
        method: MethodDescriptor,
        binding: Binding,
        index: int,
        names: Mapping[str, str],
    ) -> None:
        path, path_params = parse_template(binding.template, names)
        item = self.paths.setdefault(path, {})
        if binding.verb in item:
            raise ValueError(f"{method.full_name}: {binding.verb.upper()} {path} is bound twice")
        operation: JSON = {
            "tags": [service.name],
            "operationId": f"{service.name}_{method.name}" + (str(index + 1) if index else ""),
        }
        description = self.comments.get(method.full_name) or f"Calls `{method.full_name}`."
        operation["summary"] = _summary(description)
        fills_mask = _fills_update_mask(method, binding)
        if fills_mask:
            description += (
                "\n\nThe fields present in the body are the ones changed (`null` clears one that may be "
                "empty); the URL takes no update mask."
            )
        operation["description"] = description
        parameters = [self.path_parameter(method.input_type, param) for param in path_params]
        bound_paths = {param.field_path for param in path_params}
        if fills_mask:
            bound_paths.add("update_mask")
        if binding.body != "*":
            if binding.body:
                bound_paths.add(binding.body)
            parameters += self.query_parameters(method.input_type, bound_paths, "", "", (), True)
        parameters += header_parameters(method)
        operation["parameters"] = parameters
        if binding.body:
            operation["requestBody"] = self.request_body(service, method, binding, path_params)
        operation["responses"] = self.responses(method, binding.response_body)
        if method.GetOptions().Extensions[access_pb2.access].public:
            operation["security"] = []
        if method.GetOptions().deprecated:
            operation["deprecated"] = True
        item[binding.verb] = operation
        self.operations.append(Operation(method, binding, path, path_params, operation))

    def path_parameter(self, request: Descriptor, param: PathParam) -> JSON:
        field = resolve(request, param.field_path)[-1]
        if field.is_repeated or (
            field.message_type is not None and field.message_type.full_name not in QUERY_WELL_KNOWN
        ):
            raise ValueError(f"{request.full_name}.{param.field_path} cannot be a path variable")
        schema = self.schemas.parameter(field)
        description = self.comments.get(field.full_name, "")
        if param.segments is not None:
            schema = {**schema, "pattern": segments_regex(param.segments)}
            description = f"{description}\n\nMatches `{param.segments}`.".strip()
        if param.parameter != param.field_path:
            description = f"{description}\n\nSets the request field `{param.field_path}`.".strip()
        return _parameter(param.parameter, "path", schema, description, required=True)

    def query_parameters(
        self,
        message: Descriptor,
        bound: set[str],
        prefix: str,
        json_prefix: str,
        enclosing: tuple[str, ...],
        required: bool,
    ) -> list[JSON]:
        """Query parameters for the fields of `message` not bound by the path or body, recursively.

        Nested messages give dotted names (`billingAddress.regionCode`); maps,
        repeated messages, output-only fields and recursion are left out.
        """
        parameters: list[JSON] = []
        chain = (*enclosing, message.full_name)
        for field in message.fields:
            path = prefix + field.name
            if path in bound or is_map(field) or field_behavior_pb2.OUTPUT_ONLY in behaviors(field):
                continue
            name = json_prefix + self.schemas.json_name(field)
            field_required = required and is_required(field)
            nested = field.message_type
            if nested is not None and nested.full_name not in QUERY_WELL_KNOWN:
                if not field.is_repeated and nested.full_name not in chain + _NOT_QUERY:
                    parameters += self.query_parameters(
                        nested, bound, f"{path}.", f"{name}.", chain, field_required
                    )
                continue
            schema = self.schemas.parameter(field)
            description = self.comments.get(field.full_name, "")
            parameters.append(_parameter(name, "query", schema, description, required=field_required))
        return parameters

    def request_body(
        self,
        service: ServiceDescriptor,
        method: MethodDescriptor,
        binding: Binding,
        path_params: list[PathParam],
    ) -> JSON:
        request = method.input_type
        if binding.body == "*" and is_http_body(request) and not method.client_streaming:
            return raw_request_body(method)
        description = ""
        flavor = Flavor.UPDATE if binding.verb == "patch" else Flavor.CREATE
        if binding.body == "*":
            top_level = {p.field_path for p in path_params if "." not in p.field_path}
            if request.full_name in WELL_KNOWN:
                schema = self.schemas.message(request)
            elif not top_level and request.full_name not in self.schemas.outputs:
                schema = self.schemas.message(request, flavor)
            else:
                # The request minus the fields the path carries, as its own component.
                name = f"{service.full_name}.{method.name}Body"
                self.schemas.schemas[name] = self.schemas.object_schema(request, flavor, exclude=top_level)
                schema = ref(name)
        else:
            field = resolve(request, binding.body)[-1]
            if field.message_type is not None and not field.is_repeated and not is_map(field):
                # The body is the message itself, sent whole or (PATCH) in part.
                schema = self.schemas.message(field.message_type, flavor)
                description = self.comments.get(field.full_name, "")
            else:
                schema = self.schemas.field(field, flavor)
                description = schema.pop("description", "")
        if method.client_streaming:
            # The gateway takes one message per line (gateway/transcoder.py build_stream_requests).
            # `application/json` too: the gateway reads it the same way, and a body of one object is
            # a stream of one message, which JSON-only tools can send.
            line = "One JSON object per line (newline-delimited JSON), each one message of the stream."
            description = f"{line}\n\n{description}" if description else line
            content = {kind: {"schema": schema} for kind in ("application/x-ndjson", "application/json")}
        else:
            content = {"application/json": {"schema": schema}}
        # The gateway reads an absent body as an empty message (gateway/transcoder.py decode_json),
        # so a `*` body that asks for no field (a custom method's optional request_id) may be left out.
        # and `null` as no body at all.
        # A client-streaming body may be empty: a stream of no messages (build_stream_requests).
        required = not method.client_streaming and (binding.body != "*" or self._asks_for_something(schema))
        if not required and not method.client_streaming:
            content = {kind: {"schema": nullable(entry["schema"])} for kind, entry in content.items()}
        request_body: JSON = {"required": required, "content": content}
        if description:
            request_body["description"] = description
        return request_body

    def _asks_for_something(self, schema: JSON) -> bool:
        """Whether an empty JSON object fails `schema` by its own keywords (required fields, or
        the at-least-one-field rule of a PATCH body)."""
        target = schema.get("$ref", "")
        if target.startswith(REF_PREFIX):
            schema = self.schemas.schemas.get(target.removeprefix(REF_PREFIX), {})
        return bool(schema.get("required")) or any(key in schema for key in ("anyOf", "oneOf", "allOf"))

    def responses(self, method: MethodDescriptor, response_body: str) -> JSON:
        description = "OK"
        if is_http_body(method.output_type) and not method.server_streaming:
            # The method chooses the media type per call (google.api.HttpBody.content_type).
            body = {"schema": {"type": "string", "format": "binary"}}
            return self._with_errors(
                {
                    "description": "The body as the method made it; Content-Type says what it is.",
                    "headers": response_headers(),
                    "content": {"*/*": body},
                }
            )
        if response_body:
            schema = self.schemas.field(resolve(method.output_type, response_body)[-1], in_message=False)
            description = schema.pop("description", description)
        else:
            schema = self.schemas.message(method.output_type)
        if method.server_streaming:
            # One JSON object per message, as grpc-gateway streams them.
            line: JSON = {
                "type": "object",
                "properties": {"result": schema, "error": ref(STATUS)},
                "description": "One message of the stream, or the error that ended it.",
            }
            content = {kind: {"schema": line} for kind in ("application/x-ndjson", "text/event-stream")}
            description = f"{description} (a stream of messages)"
        else:
            content = {"application/json": {"schema": schema}}
        return self._with_errors(
            {"description": description, "headers": response_headers(), "content": content}
        )

    @staticmethod
    def _with_errors(ok: JSON) -> JSON:
        responses: JSON = {"200": ok}
        for status, (name, _) in ERROR_RESPONSES.items():
            responses[status] = {"$ref": f"#/components/responses/{name}"}
        return responses


def _parameter(name: str, where: str, schema: JSON, description: str, *, required: bool) -> JSON:
    parameter: JSON = {"name": name, "in": where}
    if description:
        parameter["description"] = description
    if required:
        parameter["required"] = True
    parameter["schema"] = schema
    return parameter
