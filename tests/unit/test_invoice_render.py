"""Invoices rendered for people: the PDF's text (read back with pypdf) and the HTML carry the number,
every line and the totals, formatted per currency and locale; text from callers cannot inject markup."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pypdf
import pytest

from billing_svc.invoices.domain import Invoice, InvoiceLine, InvoiceReason, InvoiceStatus, LineKind, LineTier
from billing_svc.invoices.render import Formatter, parse_locale, render_html, render_pdf
from core.errors import InvalidArgument

T0 = datetime(2027, 3, 1, 5, tzinfo=UTC)
T1 = datetime(2027, 4, 1, 4, tzinfo=UTC)
NEW_YORK = ZoneInfo("America/New_York")


def invoice(
    currency: str = "USD", *, lines: tuple[InvoiceLine, ...] | None = None, number: str = "INV-000042"
) -> Invoice:
    lines = lines or (
        InvoiceLine(
            "inl_1", LineKind.SUBSCRIPTION_FEE, "Team plan", Decimal(1), Decimal("49.00"), 4900, T0, T1
        ),
        InvoiceLine(
            "inl_2", LineKind.USAGE, "API calls", Decimal("120500"), Decimal("0.000125"), 1506, T0, T1
        ),
        InvoiceLine("inl_3", LineKind.CREDIT, "Goodwill", Decimal(1), Decimal("5.00"), -500),
    )
    return Invoice(
        id="inv_1",
        account_id="acct_1",
        subscription_id="",
        number=number,
        status=InvoiceStatus.OPEN if number else InvoiceStatus.DRAFT,
        reason=InvoiceReason.PERIOD,
        currency_code=currency,
        period_start=T0,
        period_end=T1,
        lines=lines,
        description="",
        create_time=T0,
        update_time=T1,
        credits_applied_minor=100,
        finalize_time=T1 if number else None,
    )


def pdf_text(data: bytes) -> str:
    reader = pypdf.PdfReader(io.BytesIO(data))
    return "\n".join(page.extract_text() for page in reader.pages)


def test_the_pdf_shows_the_number_each_line_and_the_totals() -> None:
    text = pdf_text(render_pdf(invoice(), Formatter("USD", "en_US", NEW_YORK)))
    assert "Invoice INV-000042" in text
    for expected in ("Team plan", "$49.00", "API calls", "$0.000125", "$15.06", "Goodwill", "-$5.00"):
        assert expected in text, expected
    # 4900 + 1506 - 500 = 5906; 100 of credit applied leaves 5806 due.
    for label, amount in (("Subtotal", "$59.06"), ("Total", "$59.06"), ("Amount due", "$58.06")):
        assert f"{label}\n{amount}" in text or f"{label} {amount}" in text, (label, text)
    assert "Mar 1, 2027 - Apr 1, 2027" in text  # local dates of the New York period


@pytest.mark.parametrize(
    ("currency", "locale", "due"),
    [
        ("USD", "en_US", "$58.06"),
        ("JPY", "ja_JP", "￥5,806"),
        ("KWD", "en_US", "KWD5.806"),
        ("EUR", "de_DE", "58,06\xa0€"),
    ],
)
def test_amounts_follow_the_currency_and_the_locale(currency: str, locale: str, due: str) -> None:
    fmt = Formatter(currency, locale, ZoneInfo("UTC"))
    page = render_html(invoice(currency), fmt)
    assert due in page
    if currency in ("USD", "EUR"):  # Windows-1252 holds both signs: the PDF shows them too
        assert due in pdf_text(render_pdf(invoice(currency), fmt))


def test_a_draft_is_marked_and_has_no_number() -> None:
    fmt = Formatter("USD", "en_US", ZoneInfo("UTC"))
    draft = invoice(number="")
    assert "DRAFT" in render_html(draft, fmt) and "Draft invoice" in render_html(draft, fmt)
    assert "DRAFT" in pdf_text(render_pdf(draft, fmt))
    assert "DRAFT" not in render_html(invoice(), fmt)


def test_caller_text_is_escaped_in_html_and_survives_in_pdf() -> None:
    hostile = InvoiceLine(
        "inl_9", LineKind.ONE_OFF, '<script>alert("x")</script> & 日本', Decimal(1), Decimal(1), 100
    )
    fmt = Formatter("USD", "en_US", ZoneInfo("UTC"))
    page = render_html(invoice(lines=(hostile,)), fmt)
    assert "<script>" not in page and "&lt;script&gt;" in page and "日本" in page
    assert '<script>alert("x")</script> & ??' in pdf_text(render_pdf(invoice(lines=(hostile,)), fmt))


def test_a_long_invoice_spans_pages_with_the_totals_on_the_last() -> None:
    lines = tuple(
        InvoiceLine(f"inl_{n}", LineKind.ONE_OFF, f"Item {n}", Decimal(1), Decimal(1), 100)
        for n in range(200)
    )
    data = render_pdf(invoice(lines=lines), Formatter("USD", "en_US", ZoneInfo("UTC")))
    reader = pypdf.PdfReader(io.BytesIO(data))
    assert len(reader.pages) > 1
    last = reader.pages[-1].extract_text()
    assert "Amount due" in last and "$199.00" in last and "Item 199" in pdf_text(data)
    assert (
        render_pdf(invoice(lines=lines), Formatter("USD", "en_US", ZoneInfo("UTC"))) == data
    )  # deterministic


def test_a_bad_locale_names_the_field() -> None:
    assert parse_locale("") == "en_US" and parse_locale("de_DE") == "de_DE"
    for bad in ("xx_NOPE!", "de-DE", "DE_de"):
        with pytest.raises(InvalidArgument) as raised:
            parse_locale(bad)
        assert raised.value.violations[0].field == "locale"


def test_a_graduated_usage_line_shows_each_tier_under_it() -> None:
    """Lago's graduated example: 250 units are 100 x $1 + 100 x $0.50 + 50 x $0.10 = $155.00."""
    tiers = (
        LineTier(0, Decimal(100), Decimal(1), Decimal(0), Decimal(100)),
        LineTier(1, Decimal(100), Decimal("0.50"), Decimal(0), Decimal(50)),
        LineTier(2, Decimal(50), Decimal("0.10"), Decimal("2.5"), Decimal("7.5")),
    )
    usage = InvoiceLine("inl_u", LineKind.USAGE, "API calls", Decimal(250), None, 15750, T0, T1, tiers=tiers)
    fmt = Formatter("USD", "en_US", NEW_YORK)
    page = render_html(invoice(lines=(usage,)), fmt)
    assert page.count("tier ") == 3 and "tier 3 + $2.50 flat" in page
    text = pdf_text(render_pdf(invoice(lines=(usage,)), fmt))
    assert "tier 1" in text and "tier 2" in text and "$157.50" in text
    single = InvoiceLine("inl_s", LineKind.USAGE, "Calls", Decimal(3), Decimal(1), 300, tiers=tiers[:1])
    assert "tier " not in render_html(invoice(lines=(single,)), fmt)  # one tier repeats the line
