"""Validation rules, the list filter and page tokens: pure functions, table-driven."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from account_svc.domain import (
    Account,
    AccountFields,
    AccountStatus,
    PostalAddress,
    apply_update,
    check_fields,
    check_update_mask,
    parse_filter,
)
from core import currencies
from core.errors import InvalidArgument
from core.pagination import MAX_PAGE_SIZE, PageTokens, page_size

ALL = (
    "display_name",
    "email",
    "phone",
    "billing_address",
    "currency_code",
    "status",
    "metadata",
    "billing_time_zone",
)
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
        ({"billing_time_zone": "Mars/Olympus_Mons"}, "account.billing_time_zone", "IANA"),
        # zoneinfo is case-sensitive on Linux and not on macOS: wrong case is refused everywhere.
        ({"billing_time_zone": "america/new_york"}, "account.billing_time_zone", "'America/New_York'"),
        ({"billing_time_zone": "/etc/passwd"}, "account.billing_time_zone", "IANA"),
        ({"billing_time_zone": "../../etc/passwd"}, "account.billing_time_zone", "IANA"),
        ({"billing_time_zone": "right/UTC"}, "account.billing_time_zone", "IANA"),
        ({"billing_time_zone": "localtime"}, "account.billing_time_zone", "IANA"),
        ({"billing_time_zone": "Europe/\x00Berlin"}, "account.billing_time_zone", "control characters"),
        ({"billing_time_zone": "Europe/" + "x" * 60}, "account.billing_time_zone", "at most 64"),
    ],
)
def test_each_bad_field_is_named(change: dict[str, object], field: str, fragment: str) -> None:
    found = violations(AccountFields(**{**VALID.__dict__, **change}))
    assert field in found, found
    assert fragment in found[field]


@pytest.mark.parametrize("zone", ["", "UTC", "America/New_York", "Asia/Kolkata", "US/Eastern", "Etc/GMT+5"])
def test_time_zones_that_pass(zone: str) -> None:
    assert violations(AccountFields(**{**VALID.__dict__, "billing_time_zone": zone})) == {}


def test_an_emptied_time_zone_is_utc() -> None:
    account = Account(
        id="acct_1",
        display_name="Acme",
        email="billing@acme.test",
        phone="",
        billing_address=None,
        currency_code="USD",
        billing_time_zone="Europe/Berlin",
        status=AccountStatus.ACTIVE,
        metadata={},
        create_time=datetime(2026, 1, 1, tzinfo=UTC),
        update_time=datetime(2026, 1, 1, tzinfo=UTC),
        delete_time=None,
        revision=1,
    )
    assert apply_update(account, AccountFields(), ["billing_time_zone"]).billing_time_zone == "UTC"
    assert Account.from_dict(account.to_dict()) == account
    stored_before_the_field = {k: v for k, v in account.to_dict().items() if k != "billing_time_zone"}
    assert Account.from_dict(stored_before_the_field).billing_time_zone == "UTC"


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
