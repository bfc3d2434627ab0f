"""trail_unboxed rows the box keeper could not do on their own, for a reason a retry
does not cure, are set aside (failed_at, error) instead of holding up every row after
them. A separate revision: 0006 was already applied to databases before these columns.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("trail_unboxed", sa.Column("failed_at", sa.DateTime(timezone=True)))
    op.add_column("trail_unboxed", sa.Column("error", sa.Text()))


def downgrade() -> None:
    op.drop_column("trail_unboxed", "error")
    op.drop_column("trail_unboxed", "failed_at")
