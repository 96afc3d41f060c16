"""contains_card_number: Luhn-valid 13-19 digit numbers are found wherever they sit; ids never match."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from core.card_numbers import contains_card_number, luhn_valid
from core.ids import new_id, new_ordered_id


def check_digit(body: str) -> str:
    return next(d for d in "0123456789" if luhn_valid(body + d))


@st.composite
def card_numbers(draw: st.DrawFn) -> str:
    length = draw(st.integers(13, 19))
    body = draw(st.text("0123456789", min_size=length - 1, max_size=length - 1))
    return body + check_digit(body)


@st.composite
def written_out(draw: st.DrawFn, number: str) -> str:
    """The number as people type it: in one piece, or in groups of 4 with spaces or dashes."""
    separator = draw(st.sampled_from(["", " ", "-"]))
    return separator.join(number[i : i + 4] for i in range(0, len(number), 4))


@given(card_numbers().flatmap(written_out), st.text(), st.text())
def test_a_valid_number_is_found_inside_any_text(number: str, before: str, after: str) -> None:
    assert contains_card_number(f"{before} {number} {after}")


@given(card_numbers())
def test_a_wrong_check_digit_is_not_a_card_number(number: str) -> None:
    wrong = number[:-1] + str((int(number[-1]) + 1) % 10)
    assert not contains_card_number(f"card {wrong} please")


@given(st.integers(1, 12).flatmap(lambda n: st.text("0123456789", min_size=n, max_size=n)))
def test_too_few_digits_never_match(digits: str) -> None:
    assert not contains_card_number(f"ref {digits}")


@given(st.sampled_from(["acct", "sub", "inv", "pay", "pm"]), st.integers(0, 2**40))
def test_our_ids_never_match(prefix: str, seconds: int) -> None:
    from datetime import UTC, datetime

    assert not contains_card_number(f"charge {new_id(prefix)} for {prefix}")
    assert not contains_card_number(new_ordered_id(prefix, datetime.fromtimestamp(seconds % 2**33, UTC)))


def test_digits_glued_to_a_word_are_not_a_number() -> None:
    assert contains_card_number("card 4242 4242 4242 4242, exp 12/27")
    assert not contains_card_number("acct_4242424242424242")
    assert not contains_card_number("x4242424242424242")


def test_a_card_inside_a_longer_run_of_groups_is_found() -> None:
    assert contains_card_number("order 12 4242-4242-4242-4242 77")


def test_only_ascii_digits_count() -> None:
    assert not contains_card_number("\u0664\u0662" * 8)  # Arabic-Indic digits
