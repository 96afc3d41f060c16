"""Invoices: what an account owes for a period, line by line, with exact totals and a lifecycle."""
