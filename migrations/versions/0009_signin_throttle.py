"""Failed password sign-ins, counted per account and per client address, so that every worker
process refuses a sign-in over the limit (rowscope/auth/throttle.py). One row per failure and key:
the account key is the SHA-256 of the normalised email, so the table never holds an email. As with
the other authorization-server tables (migration 0003), the tool role gets no grant and row-level
security is enabled with no policy.

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "signin_failures",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("failed_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_signin_failures")),
    )
    op.create_index(
        "ix_signin_failures_kind_key_failed_at", "signin_failures", ["kind", "key", "failed_at"], unique=False
    )
    op.create_index(op.f("ix_signin_failures_failed_at"), "signin_failures", ["failed_at"], unique=False)
    op.execute("ALTER TABLE signin_failures ENABLE ROW LEVEL SECURITY")


def downgrade() -> None:
    op.drop_index(op.f("ix_signin_failures_failed_at"), table_name="signin_failures")
    op.drop_index("ix_signin_failures_kind_key_failed_at", table_name="signin_failures")
    op.drop_table("signin_failures")
