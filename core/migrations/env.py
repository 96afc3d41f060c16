"""Alembic environment. Tally runs migrations itself (core.migrate), handing over a connection."""

from __future__ import annotations

from alembic import context

import account_svc.identity.repository
import account_svc.repository  # noqa: F401
import core.audit
import core.idempotency  # noqa: F401
from core.db import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `tally migrate`, not the alembic command line")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
