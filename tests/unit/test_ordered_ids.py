"""core.ids.new_ordered_id: ids of the usual shape whose text sorts in the order they were made."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from core import ids

NOW = datetime(2027, 3, 14, 6, 59, 59, 999000, tzinfo=UTC)


def test_ids_made_at_one_instant_sort_in_the_order_they_were_made() -> None:
    made = [ids.new_ordered_id("pii", NOW) for _ in range(500)]
    assert made == sorted(made)
    assert len(set(made)) == len(made)


def test_a_batch_of_ids_sorts_in_order_and_its_random_characters_use_the_whole_alphabet() -> None:
    made = ids.new_ordered_ids("usg", NOW, 1000)
    assert made == sorted(made)
    assert len(set(made)) == len(made)
    pattern = f"usg_[{ids.ALPHABET}]{{{ids.BODY_LENGTH}}}"
    assert all(re.fullmatch(pattern, made_id) for made_id in made)
    # The time is the same in all of them; the last 12 characters are the random ones.
    assert len({made_id[: 4 + 9] for made_id in made}) == 1
    assert made[0][4:13] == ids.new_ordered_id("usg", NOW)[4:13]
    tails = "".join(made_id[-12:] for made_id in made)
    assert set(tails) == set(ids.ALPHABET)  # 12,000 characters: every one of the 32 appears


def test_a_later_instant_sorts_after_an_earlier_one_whatever_the_counter() -> None:
    later = ids.new_ordered_id("pii", NOW + timedelta(milliseconds=1))
    earlier = ids.new_ordered_id("pii", NOW)
    assert earlier < later


def test_they_have_the_shape_of_every_other_id() -> None:
    made = ids.new_ordered_id("pii", NOW)
    plain = ids.new_id("pii")
    pattern = f"pii_[{ids.ALPHABET}]{{{ids.BODY_LENGTH}}}"
    assert re.fullmatch(pattern, made)
    assert re.fullmatch(pattern, plain)
    assert len(made) == len(plain) <= ids.MAX_LENGTH


@given(st.integers(min_value=0, max_value=2**200), st.sampled_from([1, 2, 5, 9, 12, 26]))
def test_base32_writes_the_low_bits_five_at_a_time_most_significant_first(value: int, width: int) -> None:
    digits = [(value >> (5 * place)) & 31 for place in reversed(range(width))]
    assert ids._base32(value, width) == "".join(ids.ALPHABET[digit] for digit in digits)
