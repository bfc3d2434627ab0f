"""trail_unboxed: fixes stored whose trail boxes are not yet widened, one row a stored
batch (each subject's first and last fix in it). The store writes a row in the batch's
transaction; the box keeper widens the boxes in bulk, runs the crime trigger, and
deletes the row. Proximity search counts the subjects of rows still here.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "trail_unboxed",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("first_ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("subjects", postgresql.ARRAY(sa.UUID()), nullable=False),
        sa.Column("firsts", postgresql.ARRAY(sa.Float()), nullable=False),
        sa.Column("lasts", postgresql.ARRAY(sa.Float()), nullable=False),
        sa.Column("fixes", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trail_unboxed")),
    )


def downgrade() -> None:
    op.drop_table("trail_unboxed")
