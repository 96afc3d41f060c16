"""The text policy over a whole message: every string in it checked, by its field's rule.

`text_violations(message)` walks a message by its descriptor (nested messages, repeated
fields, map keys and values) and applies `core.text.text_problem` to each string, with the
field's `(tally.options.v1.text)` rule when it has one, naming every bad field by its path
(`account.display_name`, `account.metadata['k']`). interceptors/validation.py runs it on every
unary request at the gRPC boundary; a stream's handler runs it on each event it reads
(billing_svc/usage/stream.py), so a streamed event meets the same policy.

Nearly every message is clean, and naming paths is what makes the walk cost (an f-string per
field, nested generators), so `text_violations` first asks `_clean`: the same fields by the same
rules, answering only yes or no. Only a message it cannot pass is walked, and the walk alone
decides the violations, their paths and their order.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from itertools import islice
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from core.errors import FieldViolation, InvalidArgument
from core.text import excerpt, text_problem
from tally.options.v1 import text_pb2

# Enough to fix a request by; more would only swell the error (10,000 bad entries of a
# repeated field must not make a 10,000-line trailer).
MAX_VIOLATIONS = 10


@cache
def _rule(field: FieldDescriptor) -> tuple[bool, int]:
    """(allow_control, max_length) of a string field, from its option; (False, 0) without one."""
    options = field.GetOptions()
    if not options.HasExtension(text_pb2.text):
        return False, 0
    rule = options.Extensions[text_pb2.text]
    return rule.allow_control, rule.max_length


def _string_problem(field: FieldDescriptor, value: str) -> str | None:
    allow_control, max_length = _rule(field)
    if max_length and len(value) > max_length:
        return f"must be at most {max_length} characters, got {len(value)}"
    return text_problem(value, allow_control=allow_control)


def _walk(message: Message, prefix: str) -> Iterator[FieldViolation]:
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        if field.type == FieldDescriptor.TYPE_STRING:
            items = enumerate(value) if field.is_repeated else [(None, value)]
            for index, item in items:
                problem = _string_problem(field, item)
                if problem:
                    yield FieldViolation(path if index is None else f"{path}[{index}]", problem)
        elif field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                yield from _walk_map(field, value, path)
            elif field.is_repeated:
                for index, item in enumerate(value):
                    yield from _walk(item, f"{path}[{index}].")
            else:
                yield from _walk(value, f"{path}.")


def _walk_map(field: FieldDescriptor, entries: Any, path: str) -> Iterator[FieldViolation]:
    entry_type = field.message_type
    assert entry_type is not None  # a map field's entry message
    key_field = entry_type.fields_by_name["key"]
    value_field = entry_type.fields_by_name["value"]
    for key, value in entries.items():
        if isinstance(key, str):
            problem = _string_problem(key_field, key)
            if problem:
                yield FieldViolation(path, f"keys {problem}")
                continue
        entry = f"{path}[{excerpt(key)!r}]" if isinstance(key, str) else f"{path}[{key}]"
        if value_field.type == FieldDescriptor.TYPE_STRING:
            problem = _string_problem(value_field, value)
            if problem:
                yield FieldViolation(entry, problem)
        elif value_field.type == FieldDescriptor.TYPE_MESSAGE:
            yield from _walk(value, f"{entry}.")


_STRING, _MESSAGE, _REPEATED_STRING, _REPEATED_MESSAGE, _MAP, _OTHER = range(6)


@cache
def _kind(field: FieldDescriptor) -> tuple[int, bool, int]:
    """How `_clean` reads a field: its kind, and for a string field its rule."""
    if field.type == FieldDescriptor.TYPE_STRING:
        return (_REPEATED_STRING if field.is_repeated else _STRING, *_rule(field))
    if field.message_type is None:
        return _OTHER, False, 0
    if field.message_type.GetOptions().map_entry:
        return _MAP, False, 0
    return (_REPEATED_MESSAGE if field.is_repeated else _MESSAGE), False, 0


def _passes(value: str, allow_control: bool, max_length: int) -> bool:
    if max_length and len(value) > max_length:
        return False
    # isprintable() refuses more than the policy (a no-break space, say): then ask the policy.
    return value.isprintable() or text_problem(value, allow_control=allow_control) is None


def _clean(message: Message) -> bool:
    """Whether the walk would find nothing in `message`: every field `_walk` visits, by its rule."""
    for field, value in message.ListFields():
        kind, allow_control, max_length = _kind(field)
        if kind == _STRING:
            if not _passes(value, allow_control, max_length):
                return False
        elif kind == _MESSAGE:
            if not _clean(value):
                return False
        elif kind == _REPEATED_STRING:
            if not all(_passes(item, allow_control, max_length) for item in value):
                return False
        elif kind == _REPEATED_MESSAGE:
            if not all(map(_clean, value)):
                return False
        elif kind == _MAP and not _clean_map(field, value):
            return False
    return True


def _clean_map(field: FieldDescriptor, entries: Any) -> bool:
    entry_type = field.message_type
    assert entry_type is not None  # a map field's entry message
    key_field = entry_type.fields_by_name["key"]
    value_field = entry_type.fields_by_name["value"]
    for key, value in entries.items():
        if isinstance(key, str) and not _passes(key, *_rule(key_field)):
            return False
        if value_field.type == FieldDescriptor.TYPE_STRING:
            if not _passes(value, *_rule(value_field)):
                return False
        elif value_field.type == FieldDescriptor.TYPE_MESSAGE and not _clean(value):
            return False
    return True


def text_violations(request: Message) -> list[FieldViolation]:
    """The request's strings that break the text policy, at most MAX_VIOLATIONS of them."""
    return [] if _clean(request) else list(islice(_walk(request, ""), MAX_VIOLATIONS))


def check_text(request: Message) -> None:
    """Raise INVALID_ARGUMENT (reason INVALID_TEXT) naming every field that breaks the policy."""
    violations = text_violations(request)
    if violations:
        raise InvalidArgument(violations, reason="INVALID_TEXT")
