"""JSON Schemas (OpenAPI 3.1 dialect) for protobuf messages, following the proto3 JSON mapping.

`SchemaBuilder` turns message and enum descriptors into entries of
`components/schemas`, named by their full proto name (`tally.account.v1.Account`),
and hands back `$ref`s to them, so recursive messages are safe. Well-known types
are inlined as the JSON they map to (Timestamp is an RFC 3339 string, and so on),
except `google.protobuf.Any`, which is shared with the error schema.
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
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


# Unicode category Cc (C0, DEL, C1), which core.text.text_problem refuses.
CONTROL = "\\x00-\\x1f\\x7f-\\x9f"
NO_CONTROL = f"^[^{CONTROL}]*$"


def scalar_schema(field: FieldDescriptor) -> JSON:
    """The schema of one value of a scalar (non-message, non-enum) field."""
    kind = field.type
    if kind in _INT64_TYPES:
        return dict(_INT64)
    if kind in _UINT64_TYPES:
        return dict(_UINT64)
    if kind in _INT32_TYPES:
        return {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1}
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
    # The server refuses control characters in every string of a request
    # (interceptors/validation.py); a field's own pattern, where it has one, says at least as much.
    return {"type": "string", "pattern": NO_CONTROL}


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


def ref(name: str) -> JSON:
    return {"$ref": REF_PREFIX + name}


def behaviors(field: FieldDescriptor) -> set[int]:
    """The google.api.field_behavior values of a field."""
    return set(field.GetOptions().Extensions[field_behavior_pb2.field_behavior])


def is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def is_required(field: FieldDescriptor) -> bool:
    return field_behavior_pb2.REQUIRED in behaviors(field)


class Flavor(enum.Enum):
    """Which side of the wire a schema describes; they differ in what they require."""

    OUTPUT = "output"  # as the server answers, and the base of every input
    CREATE = "create"  # sent whole (POST, PUT, a nested message): REQUIRED fields must be there
    UPDATE = "update"  # a PATCH body: only the fields present change, at least one of them


MessageRule = Callable[[Callable[[str], str]], JSON]
_FLAVORED = ("output", "create", "update")


@dataclass(frozen=True)
class Rules:
    """What the server checks beyond the proto types, as JSON Schema keywords.

    `fields`: by full field name (`tally.account.v1.Account.email`); `names`: for every
    field of that name (`request_id`). A rule's keywords apply to the field's value (`items`
    to each element of a repeated field); its `create`, `update` or `output` entry applies
    only to that flavor, and `replace` there stands for the whole value schema.
    `messages`: by full message name, flavor (or `all`) -> keywords, given a function from
    proto field names to the names the document uses.
    """

    fields: Mapping[str, JSON] = dataclass_field(default_factory=dict)
    names: Mapping[str, JSON] = dataclass_field(default_factory=dict)
    messages: Mapping[str, Mapping[str, MessageRule]] = dataclass_field(default_factory=dict)

    def field_rule(self, full_name: str, flavor: Flavor) -> JSON:
        rule = self.fields.get(full_name) or self.names.get(full_name.rsplit(".", 1)[-1]) or {}
        merged = {key: value for key, value in rule.items() if key not in _FLAVORED}
        merged.update(rule.get(flavor.value, {}))
        return copy.deepcopy(merged)

    def flavored(self, full_name: str, flavor: Flavor) -> bool:
        """Whether a field or message has a rule of its own for `flavor`."""
        rule = self.fields.get(full_name) or self.names.get(full_name.rsplit(".", 1)[-1]) or {}
        return flavor.value in rule or flavor.value in self.messages.get(full_name, {})

    def message_rule(self, full_name: str, flavor: Flavor, name: Callable[[str], str]) -> JSON:
        found = self.messages.get(full_name, {})
        keywords: JSON = {}
        for key in ("all", flavor.value):
            if key in found:
                keywords.update(found[key](name))
        return keywords


class SchemaBuilder:
    """Collects the component schemas of every message and enum it is asked about.

    `strict` (the gateway's TALLY_GATEWAY_STRICT) closes every object with
    `additionalProperties: false`, as the gateway refuses unknown fields. `rules`
    adds what the server checks beyond the proto types (gateway/constraints/).
    `outputs` names the messages that appear in responses: one of them sent whole
    gets a `<name>.Create` component listing its required fields; a message only
    ever sent lists them in its own component.
    """

    def __init__(
        self,
        comments: Mapping[str, str],
        *,
        use_proto_names: bool = False,
        strict: bool = True,
        rules: Rules | None = None,
        outputs: Iterable[str] = (),
    ) -> None:
        self.comments = comments
        self.use_proto_names = use_proto_names
        self.strict = strict
        self.rules = rules if rules is not None else Rules()
        self.outputs = frozenset(outputs)
        self.schemas: dict[str, JSON] = {ANY: copy.deepcopy(ANY_SCHEMA), STATUS: copy.deepcopy(STATUS_SCHEMA)}

    def json_name(self, field: FieldDescriptor) -> str:
        return field.name if self.use_proto_names else field.json_name

    def component_name(self, message: Descriptor, flavor: Flavor) -> str:
        if flavor is Flavor.OUTPUT or message.full_name not in self.outputs:
            return message.full_name
        return f"{message.full_name}.{flavor.name.title()}"

    def message(self, message: Descriptor, flavor: Flavor = Flavor.OUTPUT) -> JSON:
        """A schema for a message: the inline JSON form of a well-known type, else a `$ref`."""
        if message.full_name in WELL_KNOWN:
            return copy.deepcopy(WELL_KNOWN[message.full_name])
        if flavor is not Flavor.OUTPUT and not self._differs(message, flavor, set()):
            flavor = Flavor.OUTPUT
        if flavor is Flavor.OUTPUT and message.full_name not in self.outputs:
            flavor = Flavor.CREATE  # only ever sent: its component is the create form
        name = self.component_name(message, flavor)
        if name not in self.schemas:
            self.schemas[name] = {}  # claimed first, so recursion ends in a $ref
            self.schemas[name] = self.object_schema(message, flavor)
        return ref(name)

    def _differs(self, message: Descriptor, flavor: Flavor, seen: set[str]) -> bool:
        """Whether the `flavor` form of a message says more than its output form."""
        if flavor is Flavor.UPDATE or message.full_name in seen:
            return flavor is Flavor.UPDATE
        seen.add(message.full_name)
        if self.rules.flavored(message.full_name, flavor):
            return True
        for field in message.fields:
            if is_required(field) or self.rules.flavored(field.full_name, flavor):
                return True
            nested = field.message_type
            if (
                nested is not None
                and nested.full_name not in WELL_KNOWN
                and self._differs(nested, Flavor.CREATE, seen)
            ):
                return True
        return False

    def object_schema(
        self, message: Descriptor, flavor: Flavor = Flavor.CREATE, *, exclude: Iterable[str] = ()
    ) -> JSON:
        """The object schema of a message's fields, leaving out the (proto-named) fields in `exclude`."""
        skipped = set(exclude)
        properties: JSON = {}
        required_names: list[str] = []
        for field in message.fields:
            if field.name in skipped:
                continue
            name = self.json_name(field)
            properties[name] = self.field(field, flavor)
            if flavor is Flavor.CREATE and is_required(field):
                required_names.append(name)
        schema: JSON = {"type": "object"}
        if description := self.comments.get(message.full_name):
            schema["description"] = description
        schema["properties"] = properties
        if self.strict:
            schema["additionalProperties"] = False
        if flavor is Flavor.UPDATE:
            # The gateway makes the update mask of the fields present (gateway/transcoder.py
            # fill_update_mask); with none of them there is nothing to update.
            changeable = [
                self.json_name(f)
                for f in message.fields
                if f.name not in skipped
                and f.name != "etag"
                and field_behavior_pb2.OUTPUT_ONLY not in behaviors(f)
            ]
            schema["anyOf"] = [{"required": [name]} for name in changeable]
        schema.update(self.rules.message_rule(message.full_name, flavor, self.json_name_of(message)))
        if required_names:
            schema["required"] = sorted(
                {*required_names, *schema.get("required", [])}, key=list(properties).index
            )
        oneofs = [o for o in message.oneofs if not _is_synthetic(o.fields)]
        for oneof in oneofs:
            names = ", ".join(f"`{self.json_name(f)}`" for f in oneof.fields if f.name not in skipped)
            schema.setdefault("x-oneofs", {})[oneof.name] = f"At most one of {names}."
        return schema

    def json_name_of(self, message: Descriptor) -> Callable[[str], str]:
        """Proto field name -> the name this document uses for it."""
        return lambda name: self.json_name(message.fields_by_name[name])

    def field(
        self, field: FieldDescriptor, flavor: Flavor = Flavor.OUTPUT, *, in_message: bool = True
    ) -> JSON:
        """The schema of a field's JSON value, with its comment, field behaviour and server rules.

        A field of a message that is not REQUIRED may be `null`, as the proto3 JSON mapping
        reads it as unset (`in_message=False`: the value stands alone, as a `response_body`).
        """
        inner = Flavor.OUTPUT if flavor is Flavor.OUTPUT else Flavor.CREATE
        rule = dict(self.rules.field_rule(field.full_name, flavor))
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            value = entry.fields_by_name["value"]
            schema: JSON = {"type": "object", "additionalProperties": self.value(value, inner)}
        elif field.is_repeated:
            schema = {"type": "array", "items": {**self.value(field, inner), **rule.pop("items", {})}}
        else:
            schema = self.value(field, inner)
        replacement = rule.pop("replace", None)
        allows_null = rule.pop("nullable", True) and in_message
        schema = replacement if replacement is not None else _merged(schema, rule)
        found = behaviors(field)
        if allows_null and field_behavior_pb2.REQUIRED not in found and replacement is None:
            schema = nullable(schema)
        if description := self.comments.get(field.full_name):
            schema["description"] = description
        if field_behavior_pb2.OUTPUT_ONLY in found:
            schema["readOnly"] = True
        if field_behavior_pb2.INPUT_ONLY in found:
            schema["writeOnly"] = True
        return schema

    def parameter(self, field: FieldDescriptor) -> JSON:
        """The schema of a path or query parameter: a value as the URL carries it, never null."""
        rule = self.rules.field_rule(field.full_name, Flavor.OUTPUT)
        rule.pop("replace", None)
        rule.pop("nullable", None)
        items = rule.pop("items", {})
        if field.is_repeated:
            return {"type": "array", "items": {**self.value(field), **items}, **rule}
        return _merged(self.value(field), rule)

    def value(self, field: FieldDescriptor, flavor: Flavor = Flavor.OUTPUT) -> JSON:
        """The schema of one value of a field (an element, when the field is repeated)."""
        if field.message_type is not None:
            return self.message(field.message_type, flavor)
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
            lines.append("")
            lines.append(
                "Sent by name; requests may also give the number, as a JSON number or a string of digits."
            )
            schema: JSON = {"type": ["string", "integer"], "enum": enum_forms(enum)}
            schema["description"] = (lines[0] + "\n\n" + "\n".join(lines[1:])).strip()
            self.schemas[enum.full_name] = schema
        return ref(enum.full_name)


def enum_forms(enum: EnumDescriptor, names: Iterable[str] | None = None) -> list[Any]:
    """The JSON values json_format reads as these values of an enum: name, number, digits."""
    values = [enum.values_by_name[name] for name in names] if names is not None else list(enum.values)
    return [
        *(value.name for value in values),
        *(value.number for value in values),
        *(str(value.number) for value in values),
    ]


def nullable(schema: JSON) -> JSON:
    """`schema` or null."""
    kind = schema.get("type")
    if isinstance(kind, str) and "$ref" not in schema and "enum" not in schema:
        return {**schema, "type": [kind, "null"]}
    if isinstance(kind, list):
        return schema if "null" in kind else {**schema, "type": [*kind, "null"]}
    if kind is None and not schema:
        return schema  # `{}` (google.protobuf.Value) allows null already
    return {"anyOf": [schema, {"type": "null"}]}


def _merged(schema: JSON, rule: Mapping[str, Any]) -> JSON:
    """A value schema with a rule's keywords; a `$ref` is kept whole next to them."""
    if not rule:
        return schema
    if "$ref" in schema:
        return {"allOf": [schema], **rule}
    return {**schema, **rule}


def _is_synthetic(fields: Iterable[FieldDescriptor]) -> bool:
    """Whether a oneof is the synthetic one of a proto3 `optional` field."""
    members = list(fields)
    return (
        len(members) == 1
        and members[0].has_presence
        and members[0].containing_oneof is not None
        and (members[0].containing_oneof.name == "_" + members[0].name)
    )
