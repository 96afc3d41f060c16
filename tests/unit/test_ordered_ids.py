"""core.ids.new_ordered_id: ids of the usual shape whose text sorts in the order they were made."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from core import ids

NOW = datetime(2027, 3, 14, 6, 59, 59, 999000, tzinfo=UTC)


def test_ids_made_at_one_instant_sort_in_the_order_they_were_made() -> None:
    made = [ids.new_ordered_id("pii", NOW) for _ in range(500)]
    assert made == sorted(made)
    assert len(set(made)) == len(made)


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
