"""Validation rules, the list filter and page tokens: pure functions, table-driven."""

from __future__ import annotations

import pytest

from account_svc.domain import (
    AccountFields,
    AccountStatus,
    PostalAddress,
    check_fields,
    check_update_mask,
    parse_filter,
)
from core import currencies
from core.errors import InvalidArgument
from core.pagination import MAX_PAGE_SIZE, PageTokens, page_size

ALL = ("display_name", "email", "phone", "billing_address", "currency_code", "status", "metadata")
VALID = AccountFields(
    display_name="Acme", email="billing@acme.test", currency_code="USD", status=AccountStatus.ACTIVE
)


def violations(fields: AccountFields) -> dict[str, str]:
    try:
        check_fields(fields, ALL)
    except InvalidArgument as exc:
        return {v.field: v.description for v in exc.violations}
    return {}


def test_valid_account_passes() -> None:
    assert violations(VALID) == {}


@pytest.mark.parametrize(
    ("change", "field", "fragment"),
    [
        ({"display_name": "  "}, "account.display_name", "required"),
        ({"display_name": "n" * 201}, "account.display_name", "at most 200"),
        ({"display_name": "bad\x00name"}, "account.display_name", "control characters"),
        ({"email": ""}, "account.email", "required"),
        ({"email": "no-at-sign"}, "account.email", "not a valid email"),
        ({"email": "a@b"}, "account.email", "not a valid email"),
        ({"email": "a" * 250 + "@x.io"}, "account.email", "at most 254"),
        ({"phone": "4155550123"}, "account.phone", "E.164"),
        ({"currency_code": ""}, "account.currency_code", "required"),
        ({"currency_code": "usd"}, "account.currency_code", "ISO 4217"),
        ({"currency_code": "XAU"}, "account.currency_code", "ISO 4217"),
        ({"status": None}, "account.status", "STATUS_ACTIVE"),
        ({"metadata": {"": "v"}}, "account.metadata['']", "keys must be"),
        ({"metadata": {"k": "v" * 501}}, "account.metadata['k']", "at most 500"),
        ({"metadata": {str(n): "v" for n in range(51)}}, "account.metadata", "at most 50"),
        (
            {"billing_address": PostalAddress(region_code="usa")},
            "account.billing_address.region_code",
            "CLDR",
        ),
        (
            {"billing_address": PostalAddress(region_code="US", address_lines=("x",) * 6)},
            "account.billing_address.address_lines",
            "at most 5",
        ),
    ],
)
def test_each_bad_field_is_named(change: dict[str, object], field: str, fragment: str) -> None:
    found = violations(AccountFields(**{**VALID.__dict__, **change}))
    assert field in found, found
    assert fragment in found[field]


def test_currency_exponents() -> None:
    assert (currencies.exponent("JPY"), currencies.exponent("USD"), currencies.exponent("KWD")) == (0, 2, 3)
    assert not currencies.is_known("XTS")


def test_update_mask_resolution() -> None:
    assert check_update_mask(["email", "display_name", "email"]) == ("email", "display_name")
    assert check_update_mask(["*"]) == ALL


@pytest.mark.parametrize(
    ("text", "email", "status"),
    [
        ("", None, None),
        ("status = ACTIVE", None, AccountStatus.ACTIVE),
        ("status=STATUS_SUSPENDED", None, AccountStatus.SUSPENDED),
        ('email = "a@b.c" AND status = ACTIVE', "a@b.c", AccountStatus.ACTIVE),
        ("  email=a@b.c  ", "a@b.c", None),
    ],
)
def test_filter_parses(text: str, email: str | None, status: AccountStatus | None) -> None:
    parsed = parse_filter(text)
    assert (parsed.email, parsed.status) == (email, status)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("status", "cannot parse at character 1"),
        ("status = ACTIVE AND", "ends with AND"),
        ("AND status = ACTIVE", "cannot parse at character 1"),
        ("status = ACTIVE status = ACTIVE", "expected AND"),
        ("name = x", "unknown field 'name'"),
        ("status = GONE", "unknown status"),
        ('email = "a" AND email = "b"', "more than once"),
        ("x" * 1001, "at most 1000"),
    ],
)
def test_filter_errors_name_the_problem(text: str, fragment: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_filter(text)
    assert caught.value.violations[0].field == "filter"
    assert fragment in caught.value.message


def test_page_size_rules() -> None:
    assert page_size(0) == 50
    assert page_size(7) == 7
    assert page_size(10**6) == MAX_PAGE_SIZE
    with pytest.raises(InvalidArgument):
        page_size(-1)


@pytest.mark.parametrize("token", ["", "!!!", "bm90IGEgdG9rZW4", "A" * 64])
def test_garbage_page_tokens_are_rejected(token: str) -> None:
    tokens = PageTokens(b"k" * 32)
    with pytest.raises(InvalidArgument):
        tokens.decode(token, {})


def test_page_token_round_trip_and_key_separation() -> None:
    tokens = PageTokens(b"k" * 32)
    token = tokens.encode({"t": "2026-01-01T00:00:00+00:00", "i": "acct_x"}, {"filter": "a"})
    assert tokens.decode(token, {"filter": "a"}) == {"t": "2026-01-01T00:00:00+00:00", "i": "acct_x"}
    with pytest.raises(InvalidArgument):
        PageTokens(b"other-key-1234567890").decode(token, {"filter": "a"})
    with pytest.raises(InvalidArgument):
        tokens.decode(token, {"filter": "b"})
