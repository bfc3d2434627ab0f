"""A generation number for zones: bumped by every change to zones or who they apply to,
so a zone checker keeps the whole map in memory and reads one number a batch.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "zone_generation",
        sa.Column("id", sa.Boolean(), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_zone_generation")),
    )
    op.execute("insert into zone_generation (id, value) values (true, 0)")
    # In the changing transaction, so the number moves exactly when the change commits.
    op.execute(
        """
        create function bump_zone_generation() returns trigger language plpgsql as $$
        begin
            update zone_generation set value = value + 1;
            return null;
        end
        $$
        """
    )
    for table in ("zones", "zone_subjects"):
        op.execute(
            f"create trigger {table}_generation after insert or update or delete or truncate"
            f" on {table} for each statement execute function bump_zone_generation()"
        )


def downgrade() -> None:
    for table in ("zones", "zone_subjects"):
        op.execute(f"drop trigger {table}_generation on {table}")
    op.execute("drop function bump_zone_generation()")
    op.drop_table("zone_generation")
