"""catalog revision: maaskit_catalog_state and the triggers that count catalog writes

Every INSERT, UPDATE and DELETE of ``maaskit_catalog_models`` increases the ``models`` row's
``revision`` in the same transaction (SQLite: a trigger per row; PostgreSQL: a trigger per
statement, and on TRUNCATE), whoever writes it. The catalog compares the revision it last saw
to know, in one single-row read, that no one changed the catalog since.

Revision ID: 0010_catalog_revision
Revises: 0009_credentials
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_catalog_revision"
down_revision = "0009_credentials"
branch_labels = None
depends_on = None

_BUMP = "UPDATE maaskit_catalog_state SET revision = revision + 1 WHERE name = 'models'"
_SQLITE_EVENTS = ("insert", "update", "delete")


def upgrade() -> None:
    state = op.create_table(
        "maaskit_catalog_state",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_maaskit_catalog_state")),
    )
    op.bulk_insert(state, [{"name": "models", "revision": 0}])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION maaskit_catalog_models_bump() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN {_BUMP}; RETURN NULL; END $$"
        )
        op.execute(
            "CREATE TRIGGER maaskit_catalog_models_revision AFTER INSERT OR UPDATE OR DELETE "
            "ON maaskit_catalog_models FOR EACH STATEMENT EXECUTE FUNCTION maaskit_catalog_models_bump()"
        )
        op.execute(
            "CREATE TRIGGER maaskit_catalog_models_revision_truncate AFTER TRUNCATE "
            "ON maaskit_catalog_models FOR EACH STATEMENT EXECUTE FUNCTION maaskit_catalog_models_bump()"
        )
    else:
        for event in _SQLITE_EVENTS:
            op.execute(
                f"CREATE TRIGGER maaskit_catalog_models_revision_{event} AFTER {event.upper()} "
                f"ON maaskit_catalog_models FOR EACH ROW BEGIN {_BUMP}; END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "DROP TRIGGER IF EXISTS maaskit_catalog_models_revision_truncate ON maaskit_catalog_models"
        )
        op.execute("DROP TRIGGER IF EXISTS maaskit_catalog_models_revision ON maaskit_catalog_models")
        op.execute("DROP FUNCTION IF EXISTS maaskit_catalog_models_bump()")
    else:
        for event in _SQLITE_EVENTS:
            op.execute(f"DROP TRIGGER IF EXISTS maaskit_catalog_models_revision_{event}")
    op.drop_table("maaskit_catalog_state")
