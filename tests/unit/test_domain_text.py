"""The account domain's text rules: emails and display names people compare by eye, lengths that
follow the columns (normalised forms included), and errors that quote only an excerpt."""

from __future__ import annotations

from typing import Any

import pytest

from account_svc.domain import (
    MAX_DISPLAY_NAME,
    MAX_EMAIL,
    AccountFields,
    AccountStatus,
    check_fields,
    email_key,
    parse_filter,
)
from account_svc.identity.domain import parse_refresh_token
from account_svc.identity.repository import ServiceAccountRow, UserRow
from account_svc.repository import AccountRow
from core import ids
from core.errors import InvalidArgument, Unauthenticated

VALID = AccountFields(
    display_name="Acme", email="billing@acme.test", currency_code="USD", status=AccountStatus.ACTIVE
)


def problems(**change: object) -> dict[str, str]:
    try:
        check_fields(AccountFields(**{**VALID.__dict__, **change}), ("display_name", "email", "metadata"))
    except InvalidArgument as exc:
        return {v.field: v.description for v in exc.violations}
    return {}


def width(table: Any, column: str) -> int:
    return int(table.c[column].type.length)


def test_the_limits_are_the_column_widths() -> None:
    accounts, users, services = AccountRow.__table__, UserRow.__table__, ServiceAccountRow.__table__
    assert width(accounts, "email") == width(accounts, "email_key") == MAX_EMAIL
    assert width(users, "email") == width(users, "email_key") == MAX_EMAIL
    assert width(accounts, "display_name") == width(services, "display_name") == MAX_DISPLAY_NAME
    for table in (accounts, users, services):
        assert width(table, "id") == ids.MAX_LENGTH
    assert len(ids.new_id("acct")) <= ids.MAX_LENGTH


def test_an_email_whose_normalised_key_outgrows_its_column_is_refused() -> None:
    email = "a@" + "ß" * 200 + ".de"  # 205 characters; casefolded, each ß becomes "ss"
    assert len(email) <= MAX_EMAIL < len(email_key(email))
    assert "once normalised" in problems(email=email)["account.email"]


def test_nfkc_expansion_is_measured_too() -> None:
    email = "a@" + "\ufdfa" * 20 + ".com"  # one character, eighteen once NFKC-normalised
    assert "once normalised" in problems(email=email)["account.email"]


@pytest.mark.parametrize("char", ["\u200b", "\u200d", "\u2060", "\ufeff", "\u202e", "\u2067"])
def test_invisible_characters_are_refused_in_emails_and_display_names(char: str) -> None:
    found = problems(email=f"ann{char}@example.com", display_name=f"Acme{char}")
    assert "invisible" in found["account.email"]
    assert "invisible" in found["account.display_name"]


def test_control_characters_are_refused_in_metadata_values() -> None:
    assert "control characters" in problems(metadata={"k": "v\0"})["account.metadata['k']"]


def test_a_bad_email_is_quoted_as_an_excerpt() -> None:
    found = problems(email="x" * 240)
    assert len(found["account.email"]) < 120


def test_a_filter_with_control_characters_is_refused() -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_filter('email = "a\0@example.com"')
    assert caught.value.violations[0].field == "filter"


def test_a_long_unknown_filter_field_is_quoted_as_an_excerpt() -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_filter("x" * 900 + " = 1")
    assert len(caught.value.message) < 200


@pytest.mark.parametrize("token", ["rt_" + "a" * 100 + ".secret", "rt_\u00e9t\u00e9.secret"])
def test_refresh_tokens_with_ids_that_cannot_exist_are_refused_before_a_lookup(token: str) -> None:
    with pytest.raises(Unauthenticated):
        parse_refresh_token(token)
