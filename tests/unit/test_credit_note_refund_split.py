"""How a credit note's refund is split over its invoice's payments (payments/credit_refunds.py)."""

from __future__ import annotations

from billing_svc.payments.credit_refunds import split


def test_the_first_payment_gives_all_it_can_before_the_next_is_reached() -> None:
    assert split([("new", 6000), ("old", 4000)], 8000) == [("new", 6000), ("old", 2000)]
    assert split([("new", 6000), ("old", 4000)], 6000) == [("new", 6000)]
    assert split([("new", 6000), ("old", 4000)], 1) == [("new", 1)]


def test_payments_with_nothing_left_are_passed_over() -> None:
    assert split([("spent", 0), ("old", 4000)], 3000) == [("old", 3000)]
    assert split([("new", 500), ("spent", 0), ("old", 4000)], 4500) == [("new", 500), ("old", 4000)]
