"""Plans, subscriptions, meters, usage, invoices and payments (not built yet; see the issues)."""
