"""Alembic environment for maaskit's own tables (run by ``Database.migrate``)."""

from __future__ import annotations

from alembic import context

import maaskit.storage.sql.tables  # noqa: F401  (registers every table on the metadata)
from maaskit.storage.sql.base import metadata
from maaskit.storage.sql.database import VERSION_TABLE

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # pragma: no cover - maaskit always passes a connection
    raise RuntimeError("maaskit migrations run through Database.migrate() or `maaskit migrate`")

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
