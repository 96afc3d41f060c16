"""The foundation of Tally: settings, database and unit of work, errors, money, clocks, ids,
pagination, idempotency, audit and the request principal. It imports no other Tally package."""
