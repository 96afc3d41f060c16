"""Payment gateways: the port (port.py), the adapters (sandbox, Stripe) and the circuit breaker.

Nothing here touches the database: the caller commits a payment attempt first, calls a gateway with
the attempt's id as the idempotency key, and records the result in a new transaction.
"""
