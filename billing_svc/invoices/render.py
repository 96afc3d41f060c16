"""An invoice for people: one self-contained HTML page, or a PDF. No I/O.

Amounts are formatted per currency and locale with Babel's CLDR data: minor units become major
units exactly (Decimal scaled by the currency's exponent), unit prices keep their places. Times
are shown as dates in the invoice's billing time zone. The PDF uses fpdf2's core Helvetica in the
Windows-1252 encoding (Latin-1 plus the euro sign and typographic quotes): a character outside it,
such as Japanese text, is written as "?" in the PDF (the HTML keeps it).
"""

from __future__ import annotations

import functools
import html
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from babel import localedata
from babel.dates import format_date
from babel.numbers import format_currency, format_decimal
from fpdf import FPDF

from billing_svc.invoices.domain import Invoice, InvoiceLine, InvoiceStatus
from core import currencies
from core.errors import InvalidArgument

DEFAULT_LOCALE = "en_US"
_UNIT_PRICE_FORMAT = "¤#,##0.############"  # every place a unit price has, up to 12
_PDF_EPOCH = datetime(2000, 1, 1, tzinfo=ZoneInfo("UTC"))  # a fixed creation date: same input, same bytes


@functools.cache
def known_locales() -> frozenset[str]:
    """The CLDR locale identifiers Babel holds data for (`en_US`, `de_DE`, `ja`, ...)."""
    return frozenset(localedata.locale_identifiers())


def parse_locale(text: str, field: str = "locale") -> str:
    """One of known_locales(), `en_US` when empty; INVALID_ARGUMENT naming `field` otherwise."""
    if not text:
        return DEFAULT_LOCALE
    if text not in known_locales():
        raise InvalidArgument.field(field, "must be a CLDR locale identifier such as en_US or de_DE")
    return text


@dataclass(frozen=True)
class Formatter:
    currency_code: str
    locale: str
    time_zone: ZoneInfo

    def amount(self, minor: int) -> str:
        major = Decimal(minor).scaleb(-currencies.exponent(self.currency_code))
        return format_currency(major, self.currency_code, locale=self.locale)

    def unit_price(self, value: Decimal | None) -> str:
        if value is None:
            return ""
        return format_currency(
            value, self.currency_code, format=_UNIT_PRICE_FORMAT, locale=self.locale, currency_digits=False
        )

    def exact(self, value: Decimal) -> str:
        """An unrounded amount in major units: the currency's places at least, up to 12 (a tier's
        part of a line, before the line's one rounding)."""
        places = currencies.exponent(self.currency_code)
        pattern = "¤#,##0" + ("." + "0" * places + "#" * (12 - places) if places < 12 else "")
        return format_currency(
            value, self.currency_code, format=pattern, locale=self.locale, currency_digits=False
        )

    def quantity(self, value: Decimal) -> str:
        return format_decimal(value, format="#,##0.############", locale=self.locale)

    def date(self, value: datetime | None) -> str:
        return (
            ""
            if value is None
            else format_date(value.astimezone(self.time_zone), "medium", locale=self.locale)
        )

    def period(self, start: datetime | None, end: datetime | None) -> str:
        return "" if start is None or end is None else f"{self.date(start)} - {self.date(end)}"


def _title(invoice: Invoice) -> str:
    return f"Invoice {invoice.number}" if invoice.number else "Draft invoice"


def _summary(invoice: Invoice, fmt: Formatter) -> Iterator[tuple[str, str]]:
    yield "Subtotal", fmt.amount(invoice.subtotal_minor)
    yield "Total", fmt.amount(invoice.total_minor)
    if invoice.credits_applied_minor:
        yield "Credit applied", fmt.amount(-invoice.credits_applied_minor)
    yield "Amount due", fmt.amount(invoice.amount_due_minor)
    yield "Amount paid", fmt.amount(invoice.amount_paid_minor)
    yield "Amount remaining", fmt.amount(invoice.amount_remaining_minor)


@dataclass(frozen=True)
class BillTo:
    """Whom the invoice is addressed to: the account's display name and email, as they are now."""

    name: str
    email: str


def _facts(invoice: Invoice, fmt: Formatter, bill_to: BillTo | None) -> Iterator[tuple[str, str]]:
    if bill_to is not None and bill_to.name:
        yield "Bill to", bill_to.name
    if bill_to is not None and bill_to.email:
        yield "Email", bill_to.email
    yield "Account", invoice.account_id
    yield "Status", invoice.status.value
    if invoice.finalize_time is not None:
        yield "Issued", fmt.date(invoice.finalize_time)
    if invoice.due_time is not None:
        yield "Due", fmt.date(invoice.due_time)
    if invoice.period_start is not None:
        yield "Period", fmt.period(invoice.period_start, invoice.period_end)


def _line_cells(line: InvoiceLine, fmt: Formatter) -> tuple[str, str, str, str, str]:
    return (
        line.description,
        fmt.period(line.period_start, line.period_end),
        fmt.quantity(line.quantity),
        fmt.unit_price(line.unit_price),
        fmt.amount(line.amount_minor),
    )


def _rows(invoice: Invoice, fmt: Formatter) -> Iterator[tuple[str, str, str, str, str]]:
    """Each line's cells, and under a usage line of several tiers one row per tier: its units,
    unit price (plus its flat fee) and exact amount, before the line's one rounding."""
    for line in invoice.lines:
        yield _line_cells(line, fmt)
        if len(line.tiers) < 2:
            continue
        for tier in line.tiers:
            flat = f" + {fmt.exact(tier.flat_fee)} flat" if tier.flat_fee else ""
            yield (
                f"    tier {tier.tier_index + 1}{flat}",
                "",
                fmt.quantity(tier.units),
                fmt.unit_price(tier.unit_price),
                fmt.exact(tier.amount),
            )


_HEADINGS = ("Description", "Service period", "Quantity", "Unit price", "Amount")
_CSS = (
    "body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;width:100%}"
    "th,td{padding:.3em .5em;border-bottom:1px solid #ddd;text-align:left}td.n,th.n{text-align:right}"
    ".draft{color:#b00;font-weight:bold}.summary td{border:none}"
)


def render_html(invoice: Invoice, fmt: Formatter, bill_to: BillTo | None = None) -> str:
    e = html.escape
    facts = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in _facts(invoice, fmt, bill_to))
    heads = "".join(
        f'<th class="n">{e(h)}</th>' if i >= 2 else f"<th>{e(h)}</th>" for i, h in enumerate(_HEADINGS)
    )
    rows = "".join(
        "<tr>"
        + "".join(f'<td class="n">{e(c)}</td>' if i >= 2 else f"<td>{e(c)}</td>" for i, c in enumerate(cells))
        + "</tr>"
        for cells in _rows(invoice, fmt)
    )
    summary = "".join(f'<tr><td>{e(k)}</td><td class="n">{e(v)}</td></tr>' for k, v in _summary(invoice, fmt))
    draft = (
        '<p class="draft">DRAFT: not final, subject to change</p>'
        if invoice.status is InvoiceStatus.DRAFT
        else ""
    )
    note = f"<p>{e(invoice.description)}</p>" if invoice.description else ""
    return (
        f'<!DOCTYPE html><html lang="{e(fmt.locale.replace("_", "-"))}"><head><meta charset="utf-8">'
        f"<title>{e(_title(invoice))}</title><style>{_CSS}</style></head><body>"
        f"<h1>{e(_title(invoice))}</h1>{draft}<table>{facts}</table>{note}"
        f"<table><thead><tr>{heads}</tr></thead><tbody>{rows}</tbody></table>"
        f'<table class="summary">{summary}</table></body></html>'
    )


_PDF_ENCODING = "windows-1252"


def _latin1(text: str) -> str:
    return text.encode(_PDF_ENCODING, "replace").decode(_PDF_ENCODING)


_WIDTHS = (70, 45, 20, 25, 30)  # millimetres, 190 in all on A4 with 10 mm margins


def render_pdf(invoice: Invoice, fmt: Formatter, bill_to: BillTo | None = None) -> bytes:
    pdf = FPDF(format="A4")
    pdf.core_fonts_encoding = _PDF_ENCODING
    pdf.set_creation_date(_PDF_EPOCH)
    pdf.set_title(_latin1(_title(invoice)))
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 16)
    pdf.cell(0, 10, _latin1(_title(invoice)), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=10)
    if invoice.status is InvoiceStatus.DRAFT:
        pdf.cell(0, 6, "DRAFT: not final, subject to change", new_x="LMARGIN", new_y="NEXT")
    for key, value in _facts(invoice, fmt, bill_to):
        pdf.cell(0, 6, _latin1(f"{key}: {value}"), new_x="LMARGIN", new_y="NEXT")
    if invoice.description:
        pdf.multi_cell(0, 6, _latin1(invoice.description), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)
    pdf.set_font("Helvetica", "B", 9)
    for width, heading in zip(_WIDTHS, _HEADINGS, strict=True):
        pdf.cell(width, 7, heading, border="B")
    pdf.ln()
    pdf.set_font("Helvetica", size=9)
    for cells in _rows(invoice, fmt):
        for index, (width, cell) in enumerate(zip(_WIDTHS, cells, strict=True)):
            text = _latin1(cell)
            while pdf.get_string_width(text) > width - 2 and len(text) > 1:  # one row per line: clip
                text = text[:-1]
            pdf.cell(width, 6, text, align="R" if index >= 2 else "L")
        pdf.ln()
    pdf.ln(4)
    for key, value in _summary(invoice, fmt):
        pdf.cell(sum(_WIDTHS[:4]), 6, key, align="R")
        pdf.cell(_WIDTHS[4], 6, _latin1(value), align="R", new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())
