"""Card numbers refused wherever a request carries free text: only gateway tokens are stored.

`card_violations(message)` walks a message by its descriptor (nested messages, repeated fields,
map keys and values) and runs `core.card_numbers.contains_card_number` on the strings of the
fields that carry `(tally.options.v1.text) = {refuse_card_numbers: true}`: text a person writes
(names, descriptions, memos, reasons, metadata) and the fields that take a gateway token. The
fields of messages we import and cannot annotate are listed in `FOREIGN_FIELDS`. Identifiers,
keys, page tokens, cursors, codes, emails, URLs and decimals are left alone on purpose: a numeric
event id of 16 digits passes the Luhn check one time in ten. tests/unit/test_card_policy.py
holds every string field a request can reach to one of the two sides, so a new field is decided,
not forgotten.

The violation names the field by its path (`lines[0].description`, `metadata['note']`; a key
holding a number is named by its map alone) and never quotes the value, so the number reaches
neither the error nor a log line. interceptors/validation.py runs `check_card_numbers` on every
unary request after the text policy; a stream's handler runs `card_violations` on each event.

Which fields of a message type need looking at is decided once per type (`_plan`): a message
with no such field anywhere below it costs one cached lookup.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from itertools import islice
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from core.card_numbers import contains_card_number
from core.errors import FieldViolation, InvalidArgument
from core.text import excerpt
from core.text_policy import MAX_VIOLATIONS
from tally.options.v1 import text_pb2

# The descriptions of the payment use cases that used to check their own fields, kept as they were.
CARD_NUMBER = "must not contain a card number: pass a payment gateway token"
CARD_NUMBER_KEY = "keys must not contain a card number"

# Free text in messages of other packages, which cannot carry our option (full name -> fields).
FOREIGN_FIELDS: dict[str, frozenset[str]] = {
    "google.type.PostalAddress": frozenset(
        {"recipients", "organization", "address_lines", "locality", "sublocality", "administrative_area"}
    ),
}

_STRING, _MAP, _MESSAGE = range(3)


def refuses_card_numbers(field: FieldDescriptor) -> bool:
    """Whether the field's strings (a map's keys and values) are checked for card numbers."""
    options = field.GetOptions()
    if options.HasExtension(text_pb2.text) and options.Extensions[text_pb2.text].refuse_card_numbers:
        return True
    owner = field.containing_type
    return owner is not None and field.name in FOREIGN_FIELDS.get(owner.full_name, frozenset())


def _message_types(field: FieldDescriptor) -> Iterator[Descriptor]:
    """The message type a field holds: its own, a map's value type, or none."""
    held = field.message_type
    if held is not None and held.GetOptions().map_entry:
        held = held.fields_by_name["value"].message_type
    if held is not None:
        yield held


def _own_checked(descriptor: Descriptor) -> bool:
    return any(refuses_card_numbers(field) for field in descriptor.fields)


@cache
def _reaches_checked(descriptor: Descriptor) -> bool:
    """Whether a checked field is in this message type or anywhere below it (cycles allowed)."""
    seen = {descriptor.full_name}
    pending = [descriptor]
    while pending:
        current = pending.pop()
        if _own_checked(current):
            return True
        for child in (held for field in current.fields for held in _message_types(field)):
            if child.full_name not in seen:
                seen.add(child.full_name)
                pending.append(child)
    return False


@cache
def _plan(descriptor: Descriptor) -> tuple[tuple[FieldDescriptor, int], ...]:
    """The fields of a message type the walk looks at: checked strings and maps, and the message
    fields (and maps of messages) whose type reaches a checked field."""
    plan: list[tuple[FieldDescriptor, int]] = []
    for field in descriptor.fields:
        map_entry = field.message_type is not None and field.message_type.GetOptions().map_entry
        if refuses_card_numbers(field) and (field.type == FieldDescriptor.TYPE_STRING or map_entry):
            plan.append((field, _MAP if map_entry else _STRING))
        elif any(map(_reaches_checked, _message_types(field))):
            plan.append((field, _MAP if map_entry else _MESSAGE))
    return tuple(plan)


def _walk(message: Message, prefix: str) -> Iterator[FieldViolation]:
    for field, kind in _plan(message.DESCRIPTOR):
        path = f"{prefix}{field.name}"
        value = getattr(message, field.name)
        if kind == _STRING:
            items = enumerate(value) if field.is_repeated else [(None, value)]
            for index, item in items:
                if item and contains_card_number(item):
                    yield FieldViolation(path if index is None else f"{path}[{index}]", CARD_NUMBER)
        elif kind == _MAP:
            yield from _walk_map(field, value, path)
        elif field.is_repeated:
            for index, item in enumerate(value):
                yield from _walk(item, f"{path}[{index}].")
        elif message.HasField(field.name):
            yield from _walk(value, f"{path}.")


def _walk_map(field: FieldDescriptor, entries: Any, path: str) -> Iterator[FieldViolation]:
    checked = refuses_card_numbers(field)
    for key, value in entries.items():
        if isinstance(key, str) and checked and contains_card_number(key):
            yield FieldViolation(path, CARD_NUMBER_KEY)
            continue
        entry = f"{path}[{excerpt(key)!r}]" if isinstance(key, str) else f"{path}[{key}]"
        if isinstance(value, str):
            if checked and value and contains_card_number(value):
                yield FieldViolation(entry, CARD_NUMBER)
        elif isinstance(value, Message):
            yield from _walk(value, f"{entry}.")


def card_violations(request: Message) -> list[FieldViolation]:
    """The request's checked fields that hold a card number, at most MAX_VIOLATIONS of them."""
    return list(islice(_walk(request, ""), MAX_VIOLATIONS)) if _plan(request.DESCRIPTOR) else []


def check_card_numbers(request: Message) -> None:
    """Raise INVALID_ARGUMENT naming every checked field that holds a card number."""
    violations = card_violations(request)
    if violations:
        raise InvalidArgument(violations)
