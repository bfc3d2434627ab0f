"""A generation number for the registry's tags: bumped by every change to tags or to who
wears them, so ingest keeps the tags it has met in memory and reads one number a
request.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("tags", "tag_assignments")


def upgrade() -> None:
    op.create_table(
        "tag_generation",
        sa.Column("id", sa.Boolean(), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tag_generation")),
    )
    op.execute("insert into tag_generation (id, value) values (true, 0)")
    # In the changing transaction, so the number moves exactly when the change commits.
    op.execute(
        """
        create function bump_tag_generation() returns trigger language plpgsql as $$
        begin
            update tag_generation set value = value + 1;
            return null;
        end
        $$
        """
    )
    for table in TABLES:
        op.execute(
            f"create trigger {table}_generation after insert or update or delete or truncate"
            f" on {table} for each statement execute function bump_tag_generation()"
        )


def downgrade() -> None:
    for table in TABLES:
        op.execute(f"drop trigger {table}_generation on {table}")
    op.execute("drop function bump_tag_generation()")
    op.drop_table("tag_generation")
