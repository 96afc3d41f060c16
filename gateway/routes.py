"""The routing table: every `google.api.http` rule of the served services, built once at start.

A route is one HTTP binding (the main rule or one of its `additional_bindings`)
of one gRPC method, with everything the transcoder needs precomputed: the full
method name, the request and response classes, and which request fields the
path and the body bind. `RouteTable.lookup` answers (route, path variables), or
raises a GatewayError for 404 (no route) and 405 (a route under another method,
with `Allow`).

Client-streaming methods are routed too: the body is newline-delimited JSON, one
request message per line (see gateway/transcoder.py `build_stream_requests`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from google.api import annotations_pb2
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from gateway.errors import GatewayError
from gateway.templates import PathTemplate

log = logging.getLogger("tally.gateway")

_PATTERNS = ("get", "put", "post", "delete", "patch")


@dataclass(frozen=True, eq=False)
class Route:
    http_method: str
    path: str  # the template text, as written in the proto
    template: PathTemplate
    grpc_method: str  # /package.Service/Method
    method: MethodDescriptor
    request_class: type[Message]
    response_class: type[Message]
    body: str  # "" (no body), "*" (the whole request) or a top-level field name
    response_body: str  # "" (the whole response) or a top-level field name
    path_fields: frozenset[str]
    server_streaming: bool
    client_streaming: bool = False

    def is_bound(self, field_path: str) -> bool:
        """Whether the path or the body binds `field_path` (or a field around or inside it)."""
        if self.body == "*":
            return True
        bound = [*self.path_fields, self.body] if self.body else list(self.path_fields)
        return any(
            field_path == b or field_path.startswith(b + ".") or b.startswith(field_path + ".") for b in bound
        )


def _field_at(descriptor: Any, path: str) -> FieldDescriptor:
    """The field a dotted path names; ValueError when it does not name a singular field."""
    fields = path.split(".")
    for position, name in enumerate(fields):
        found = descriptor.fields_by_name.get(name)
        if found is None:
            raise ValueError(f"{descriptor.full_name} has no field {name!r} (in {path!r})")
        if position < len(fields) - 1:
            if found.message_type is None or found.is_repeated:
                raise ValueError(f"{path!r}: {name!r} is not a singular message field")
            descriptor = found.message_type
    return found  # type: ignore[no-any-return]


def _bindings(rule: Any) -> Iterable[Any]:
    yield rule
    yield from rule.additional_bindings


def _pattern(rule: Any) -> tuple[str, str] | None:
    kind = rule.WhichOneof("pattern")
    if kind is None:
        return None
    if kind == "custom":
        return rule.custom.kind.upper(), rule.custom.path
    if kind not in _PATTERNS:
        return None
    return kind.upper(), str(getattr(rule, kind))


def _route(service: ServiceDescriptor, method: MethodDescriptor, rule: Any) -> Route:
    http_method, path = _pattern(rule) or ("", "")
    where = f"{service.full_name}.{method.name} {http_method} {path}"
    template = PathTemplate.parse(path)
    request_type = method.input_type
    for variable in template.variables:
        found = _field_at(request_type, variable)
        if found.is_repeated or found.message_type is not None:
            raise ValueError(f"{where}: path variable {variable!r} must name a singular scalar field")
    body = str(rule.body)
    if body not in ("", "*") and ("." in body or body not in request_type.fields_by_name):
        raise ValueError(f"{where}: body {body!r} is not a top-level request field")
    response_body = str(rule.response_body)
    if response_body and response_body not in method.output_type.fields_by_name:
        raise ValueError(f"{where}: response_body {response_body!r} is not a response field")
    return Route(
        http_method=http_method,
        path=path,
        template=template,
        grpc_method=f"/{service.full_name}/{method.name}",
        method=method,
        request_class=GetMessageClass(request_type),
        response_class=GetMessageClass(method.output_type),
        body=body,
        response_body=response_body,
        path_fields=frozenset(template.variables),
        server_streaming=method.server_streaming,
        client_streaming=method.client_streaming,
    )


def routes_of(services: Sequence[ServiceDescriptor]) -> list[Route]:
    """One Route per HTTP binding of every method.

    A client-streaming binding without a body is left out (with a warning): its
    messages come one per line of the body, so it could never receive one.
    """
    routes: list[Route] = []
    for service in services:
        for method in service.methods:
            options = method.GetOptions()
            if not options.HasExtension(annotations_pb2.http):
                continue
            for binding in _bindings(options.Extensions[annotations_pb2.http]):
                if _pattern(binding) is None:
                    continue
                if method.client_streaming and not binding.body:
                    log.warning(
                        "%s/%s: a client-streaming binding needs a body; %s left out",
                        service.full_name,
                        method.name,
                        " ".join(_pattern(binding) or ()),
                    )
                    continue
                routes.append(_route(service, method, binding))
    return routes


class RouteTable:
    """Lookup by (HTTP method, raw path); verb templates are tried first for a path ending in `:verb`."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = list(routes)
        seen: dict[tuple[str, str], Route] = {}
        for route in self.routes:
            key = (route.http_method, route.path)
            if key in seen:
                raise ValueError(
                    f"{route.http_method} {route.path} is bound twice: "
                    f"{seen[key].grpc_method} and {route.grpc_method}"
                )
            seen[key] = route
        ordered = sorted(self.routes, key=lambda r: r.template.specificity, reverse=True)
        self._verb_routes = [r for r in ordered if r.template.verb]
        self._plain_routes = [r for r in ordered if not r.template.verb]

    @classmethod
    def from_services(cls, services: Sequence[ServiceDescriptor]) -> RouteTable:
        return cls(routes_of(services))

    def prefixes(self) -> list[str]:
        """The literal first path segments of all routes (such as 'v1'), for mounting."""
        heads = {route.path.lstrip("/").split("/", 1)[0].split(":", 1)[0] for route in self.routes}
        return sorted(heads)

    def _groups(self, raw_path: str) -> list[list[Route]]:
        last = raw_path.rsplit("/", 1)[-1]
        if ":" in last:
            return [self._verb_routes, self._plain_routes]
        return [self._plain_routes]

    def methods_for(self, raw_path: str) -> list[str]:
        """The HTTP methods some route serves at `raw_path` (for 405 `Allow` and CORS preflight)."""
        methods: set[str] = set()
        for group in self._groups(raw_path):
            for route in group:
                if route.http_method not in methods and route.template.match(raw_path) is not None:
                    methods.add(route.http_method)
        return sorted(methods)

    def lookup(self, http_method: str, raw_path: str) -> tuple[Route, dict[str, str]]:
        """The route and path variables; GatewayError 404/405 (or 400 for a bad percent-escape)."""
        other_methods: set[str] = set()
        try:
            for group in self._groups(raw_path):
                if other_methods:
                    # The path names a custom method (`/v1/accounts/a:undelete`) served under another
                    # HTTP method: that is 405, not a plain route's resource whose id ends in `:undelete`.
                    break
                for route in group:
                    if route.http_method != http_method and route.http_method in other_methods:
                        continue
                    variables = route.template.match(raw_path)
                    if variables is None:
                        continue
                    if route.http_method == http_method:
                        return route, variables
                    other_methods.add(route.http_method)
        except ValueError as exc:
            raise GatewayError.invalid("path", f"malformed path: {exc}") from None
        if other_methods:
            raise GatewayError.method_not_allowed(http_method, sorted(other_methods))
        raise GatewayError.route_not_found(http_method, raw_path)
