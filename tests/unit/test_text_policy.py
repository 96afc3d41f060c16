"""The text policy: core.text's rules, and the descriptor walk that applies them to every request."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import pytest

from core.text import excerpt, invisible_problem, text_problem
from interceptors.validation import MAX_VIOLATIONS, text_violations
from tally.account.v1 import account_pb2
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
