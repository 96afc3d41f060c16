"""Payments: collecting invoices through pluggable payment gateways (gateways/)."""
