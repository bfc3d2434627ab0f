"""The audit log is append-only: no role, not even its owner, updates or deletes rows.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        create function audit_log_is_append_only() returns trigger language plpgsql as $$
        begin
            raise exception 'the audit log is append-only: % is not allowed', tg_op
                using errcode = 'insufficient_privilege';
        end
        $$
        """
    )
    op.execute(
        "create trigger audit_log_no_change before update or delete on audit_log "
        "for each row execute function audit_log_is_append_only()"
    )
    op.execute(
        "create trigger audit_log_no_truncate before truncate on audit_log "
        "for each statement execute function audit_log_is_append_only()"
    )


def downgrade() -> None:
    op.execute("drop trigger audit_log_no_truncate on audit_log")
    op.execute("drop trigger audit_log_no_change on audit_log")
    op.execute("drop function audit_log_is_append_only()")
