"""The text policy: core.text's rules, and the descriptor walk that applies them to every request."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from google.protobuf.message import Message
from google.type import decimal_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import FieldViolation
from core.text import excerpt, invisible_problem, text_problem
from core.text_policy import _clean, _walk
from interceptors.validation import MAX_VIOLATIONS, text_violations
from tally.account.v1 import account_pb2
from tally.billing.v1 import usage_pb2
from tests.protoc import compiled


@pytest.fixture(scope="module")
def notes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    with compiled("tally_test/text/v1/text.proto", tmp_path_factory.mktemp("text_proto")) as modules:
        yield modules.pb2


@pytest.mark.parametrize(
    "value",
    ["a\0b", "tab\there", "line\nbreak", "\x1b[31mred", "del\x7f", "c1\x85", "\x9b"],
)
def test_control_characters_are_refused(value: str) -> None:
    problem = text_problem(value)
    assert problem is not None and "control characters" in problem


def test_the_problem_names_the_code_point_and_never_quotes_the_value() -> None:
    assert text_problem("secret\0tail") == "must not contain control characters (U+0000 at position 6)"


def test_nul_is_refused_even_where_control_characters_are_allowed() -> None:
    assert text_problem("a\tb\nc", allow_control=True) is None
    assert text_problem("a\0b", allow_control=True) is not None


def test_lone_surrogates_are_refused() -> None:
    problem = text_problem("a\ud800b")
    assert problem is not None and "surrogate" in problem


@pytest.mark.parametrize("value", ["", "plain", "Zoë Ünal", "日本語", "emoji 🎉", "a b"])
def test_ordinary_text_passes(value: str) -> None:
    assert text_problem(value) is None
    assert invisible_problem(value) is None


@pytest.mark.parametrize(
    "char",
    ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u202e", "\u202a", "\u2066", "\u2069", "\u3164"],
)
def test_invisible_and_direction_characters_are_refused_in_names(char: str) -> None:
    problem = invisible_problem(f"ann{char}@example.com")
    assert problem is not None and f"U+{ord(char):04X}" in problem
    assert text_problem(f"ann{char}") is None  # not control characters: only names refuse them


def test_an_excerpt_is_short_and_says_how_long_the_value_was() -> None:
    assert excerpt("short") == "short"
    long = "x" * 7000
    quoted = excerpt(long)
    assert quoted.startswith("x" * 64) and len(quoted) < 100
    assert "7000 characters" in quoted


def test_every_string_of_a_request_is_walked_and_named_by_its_path() -> None:
    request = account_pb2.CreateAccountRequest(
        request_id="r\0",
        account=account_pb2.Account(display_name="ok", email="a\0@example.com", metadata={"k": "v\x01"}),
    )
    request.account.billing_address.address_lines.extend(["fine", "bad\x1b"])
    violations = {v.field: v.description for v in text_violations(request)}
    assert set(violations) == {
        "request_id",
        "account.email",
        "account.metadata['k']",
        "account.billing_address.address_lines[1]",
    }
    assert "U+001B" in violations["account.billing_address.address_lines[1]"]


def test_a_bad_map_key_is_named_by_its_map() -> None:
    request = account_pb2.CreateAccountRequest(account=account_pb2.Account(metadata={"k\0": "v"}))
    [violation] = text_violations(request)
    assert violation.field == "account.metadata"
    assert violation.description.startswith("keys must not contain control characters")


def test_a_clean_request_has_no_violations() -> None:
    request = account_pb2.CreateAccountRequest(
        account=account_pb2.Account(display_name="Zoë", email="z@example.com", metadata={"tier": "gold"})
    )
    assert text_violations(request) == []


def test_the_field_option_allows_control_characters_and_sets_a_length(notes: ModuleType) -> None:
    note = notes.Note(title="t", body="line 1\nline 2\ttab", code="abcd", blob=b"\0\xff")
    assert text_violations(note) == []
    note = notes.Note(body="a\0b", code="abcde")
    violations = {v.field: v.description for v in text_violations(note)}
    assert set(violations) == {"body", "code"}
    assert violations["code"] == "must be at most 4 characters, got 5"


def test_nested_repeated_and_map_messages_are_walked(notes: ModuleType) -> None:
    note = notes.Note(tags=["a", "b\0"], labels={7: "x\n"})
    note.children.add(title="c\0")
    note.by_name["n"].children.add(title="deep\0")
    fields = {v.field for v in text_violations(note)}
    assert fields == {"tags[1]", "labels[7]", "children[0].title", "by_name['n'].children[0].title"}


def test_violations_are_capped_so_the_error_stays_small(notes: ModuleType) -> None:
    note = notes.Note(tags=["\0"] * 10_000)
    assert len(text_violations(note)) == MAX_VIOLATIONS


def test_a_long_map_key_is_quoted_as_an_excerpt() -> None:
    key = "k" * 5000
    request = account_pb2.CreateAccountRequest(account=account_pb2.Account(metadata={key: "\0"}))
    [violation] = text_violations(request)
    assert len(violation.field) < 120


# text_violations first asks core.text_policy._clean, a yes-or-no check over the same fields by
# the same rules; only when it cannot pass a message does the full walk run, and the full walk
# alone defines the answer. These pin the two together: on every message the
# check says "clean" exactly when the walk finds nothing, so the answer is the walk's.

# Characters on each side of every line: printable ones, ones isprintable() refuses but the
# policy allows (NBSP, a zero-width space, private use, an unassigned code point), controls
# the policy refuses (and allow_control fields accept, but NUL). Lone surrogates cannot be
# put in a message at all (protobuf refuses to encode them), so only text_problem meets them.
_CHARS = [
    "a",
    "Z",
    " ",
    "é",
    "日",
    "🎉",
    "\xa0",
    "\u200b",
    "\ue000",
    "\u0378",
    "\0",
    "\t",
    "\n",
    "\x1b",
    "\x7f",
    "\x85",
]
_texts = st.text(alphabet=st.sampled_from(_CHARS), max_size=5)


def _walked(message: Message) -> list[FieldViolation]:
    """The full walk's answer: what text_violations must return, whatever path it takes."""
    return list(itertools.islice(_walk(message, ""), MAX_VIOLATIONS))


def _assert_agree(message: Message) -> None:
    expected = _walked(message)
    assert text_violations(message) == expected
    assert _clean(message) is (expected == [])


def _note_strategy(pb2: ModuleType) -> st.SearchStrategy[Message]:
    def build(kind: Any, fields: dict[str, Any]) -> Message:
        return kind(**fields)

    inner = st.builds(build, st.just(pb2.Inner), st.fixed_dictionaries({}, optional={"value": _texts}))
    detail = st.builds(
        build,
        st.just(pb2.Detail),
        st.fixed_dictionaries(
            {},
            optional={
                "name": _texts,
                "note": _texts,
                "short": _texts,
                "inner": inner,
                "lines": st.lists(_texts, max_size=3),
                "attributes": st.dictionaries(_texts, _texts, max_size=2),
                "count": st.integers(0, 9),
            },
        ),
    )
    leaf_fields = {
        "title": _texts,
        "body": _texts,
        "code": _texts,
        "tags": st.lists(_texts, max_size=3),
        "labels": st.dictionaries(st.integers(-2, 2), _texts, max_size=2),
        "blob": st.binary(max_size=3),
        "detail": detail,
    }
    leaf = st.builds(build, st.just(pb2.Note), st.fixed_dictionaries({}, optional=leaf_fields))

    def extend(notes: st.SearchStrategy[Message]) -> st.SearchStrategy[Message]:
        nested_fields = {
            **leaf_fields,
            "children": st.lists(notes, max_size=3),
            "by_name": st.dictionaries(_texts, notes, max_size=2),
            "parent": notes,
        }
        return st.builds(build, st.just(pb2.Note), st.fixed_dictionaries({}, optional=nested_fields))

    return st.recursive(leaf, extend, max_leaves=12)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_cheap_check_agrees_with_the_full_walk_on_any_note(
    notes: ModuleType, data: st.DataObject
) -> None:
    _assert_agree(data.draw(_note_strategy(notes)))


def _usage_request(fields: dict[str, str], properties: dict[str, str]) -> usage_pb2.CreateUsageRecordRequest:
    record = usage_pb2.UsageRecord(
        service=fields["service"],
        event_id=fields["event_id"],
        units_consumed=decimal_pb2.Decimal(value=fields["units"]),
        properties=properties,
    )
    if fields["price"]:
        record.price_per_unit.value = fields["price"]
    return usage_pb2.CreateUsageRecordRequest(account_id=fields["account_id"], usage_record=record)


_usage_fields = st.fixed_dictionaries(
    {name: _texts for name in ("account_id", "service", "event_id", "units", "price")}
)


@settings(max_examples=300, deadline=None)
@given(_usage_fields, st.dictionaries(_texts, _texts, max_size=2))
def test_the_cheap_check_agrees_with_the_full_walk_on_usage_requests(
    fields: dict[str, str], properties: dict[str, str]
) -> None:
    _assert_agree(_usage_request(fields, properties))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(_usage_fields, st.dictionaries(_texts, _texts, max_size=1)), min_size=1, max_size=15)
)
def test_the_cheap_check_agrees_with_the_full_walk_on_batches(
    events: list[tuple[dict[str, str], dict[str, str]]],
) -> None:
    _assert_agree(
        usage_pb2.BatchCreateUsageRecordsRequest(requests=[_usage_request(*event) for event in events])
    )


def _note_cases(pb2: ModuleType) -> dict[str, tuple[Message, list[str]]]:
    """Each field kind with a bad string, by the paths the walk names (in its order)."""
    parent = pb2.Note(parent=pb2.Note(parent=pb2.Note(title="\x1b")))
    by_message = pb2.Note()
    by_message.by_name["k"].detail.inner.value = "\0"
    return {
        "string": (pb2.Note(title="a\0"), ["title"]),
        "repeated string": (pb2.Note(tags=["ok", "x\n", "\x7f"]), ["tags[1]", "tags[2]"]),
        "nested message": (pb2.Note(detail=pb2.Detail(name="\x85")), ["detail.name"]),
        "message nested twice": (
            pb2.Note(detail=pb2.Detail(inner=pb2.Inner(value="\t"))),
            ["detail.inner.value"],
        ),
        "a field of its own type": (parent, ["parent.parent.title"]),
        "repeated message": (pb2.Note(children=[pb2.Note(), pb2.Note(title="\0")]), ["children[1].title"]),
        "map with a bad key": (pb2.Note(detail=pb2.Detail(attributes={"k\n": "v"})), ["detail.attributes"]),
        "map with a bad value": (
            pb2.Note(detail=pb2.Detail(attributes={"k": "v\n"})),
            ["detail.attributes['k']"],
        ),
        "map of messages": (by_message, ["by_name['k'].detail.inner.value"]),
        "map with int keys": (pb2.Note(labels={3: "\x1b"}), ["labels[3]"]),
        "max_length": (pb2.Note(code="abcde"), ["code"]),
        "nested max_length": (pb2.Note(detail=pb2.Detail(short="abcd")), ["detail.short"]),
        "repeated max_length": (pb2.Note(detail=pb2.Detail(lines=["abc", "abcd"])), ["detail.lines[1]"]),
        "NUL where control characters are allowed": (
            pb2.Note(detail=pb2.Detail(note="a\tb\0")),
            ["detail.note"],
        ),
        "control characters allowed": (pb2.Note(body="a\nb", detail=pb2.Detail(note="\t")), []),
        "not printable but allowed": (
            pb2.Note(title="a\xa0b", tags=["\u200b"], detail=pb2.Detail(name="\ue000")),
            [],
        ),
        "within max_length": (pb2.Note(code="abcd", detail=pb2.Detail(short="abc", lines=["", "abc"])), []),
        "unset messages read as empty": (pb2.Note(detail=pb2.Detail(count=3)), []),
    }


_NOTE_CASES = [
    "string",
    "repeated string",
    "nested message",
    "message nested twice",
    "a field of its own type",
    "repeated message",
    "map with a bad key",
    "map with a bad value",
    "map of messages",
    "map with int keys",
    "max_length",
    "nested max_length",
    "repeated max_length",
    "NUL where control characters are allowed",
    "control characters allowed",
    "not printable but allowed",
    "within max_length",
    "unset messages read as empty",
]


@pytest.mark.parametrize("case", _NOTE_CASES)
def test_each_field_kind_is_checked_and_named_by_the_walk(notes: ModuleType, case: str) -> None:
    message, paths = _note_cases(notes)[case]
    _assert_agree(message)
    assert [violation.field for violation in text_violations(message)] == paths


def test_the_cap_holds_across_nested_fields_in_field_number_order(notes: ModuleType) -> None:
    note = notes.Note(title="\0", tags=["\0"] * 3, parent=notes.Note(title="\0"))
    note.children.extend(notes.Note(title="\0") for _ in range(4))
    note.detail.name = "\0"
    note.detail.short = "long"  # the 11th: cut
    _assert_agree(note)
    fields = [violation.field for violation in text_violations(note)]
    assert fields == [
        "title",
        *(f"tags[{i}]" for i in range(3)),
        *(f"children[{i}].title" for i in range(4)),
        "parent.title",
        "detail.name",
    ]
    note.children.add(title="\0")
    assert text_violations(note)[-1].field == "parent.title"


@pytest.mark.parametrize(
    ("field", "path"),
    [
        ("account_id", "account_id"),
        ("service", "usage_record.service"),
        ("event_id", "usage_record.event_id"),
        ("units", "usage_record.units_consumed.value"),
        ("price", "usage_record.price_per_unit.value"),
    ],
)
def test_a_bad_string_anywhere_in_a_usage_request_is_named(field: str, path: str) -> None:
    fields = {"account_id": "acc_1", "service": "api_calls", "event_id": "p:1", "units": "1", "price": ""}
    fields[field] = "1\0"
    request = _usage_request(fields, {})
    _assert_agree(request)
    [violation] = text_violations(request)
    assert violation.field == path
    assert text_violations(_usage_request({**fields, field: "1"}, {"k": "v"})) == []


@pytest.mark.parametrize(
    ("value", "violations"), [("a\xa0b", 0), ("\u200b", 0), ("\n", 1), ("\0", 1), ("abc", 0)]
)
def test_a_message_with_one_string_field(notes: ModuleType, value: str, violations: int) -> None:
    inner = notes.Inner(value=value)
    _assert_agree(inner)
    assert len(text_violations(inner)) == violations
