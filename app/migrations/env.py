"""Alembic environment. Tally runs migrations itself (app.migrate), handing over a connection."""

from __future__ import annotations

from alembic import context

from app.modules import table_names
from core.db import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `tally migrate`, not the alembic command line")

# Importing app.modules imported every module's models; nothing else may be in the metadata.
_stray = set(Base.metadata.tables) - set(table_names())
if _stray:
    raise RuntimeError(f"tables not declared by any service module: {', '.join(sorted(_stray))}")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
