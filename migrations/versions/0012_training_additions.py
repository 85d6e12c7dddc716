"""What each user added through ``add_training_content``, so that a user's additions can be limited
per window and in total (rowscope/tools/quota.py): one row per add, with its user, the spark and item
it went to, its number of new chunks and when.

Unlike the authorization-server tables, the tool role reads and writes this one, inside the user's
own tool transaction (so the check, the count and the record are under lock 2 like the chunks
themselves): row-level security lets a transaction see and write only its user's rows.

Revision ID: 0012
Revises: 0011
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLE = "rowscope_tool"
OWN = "user_id = rowscope_user_id()"  # the function of migration 0002


def upgrade() -> None:
    op.create_table(
        "training_additions",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("parent_id", sa.UUID(), nullable=False),
        sa.Column("item_id", sa.UUID(), nullable=False),
        sa.Column("chunks", sa.Integer(), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["user_profiles.id"],
            name=op.f("fk_training_additions_user_id_user_profiles"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_additions")),
    )
    op.create_index(
        "ix_training_additions_user_id_added_at", "training_additions", ["user_id", "added_at"], unique=False
    )
    op.execute("ALTER TABLE training_additions ENABLE ROW LEVEL SECURITY")
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON training_additions TO {ROLE}")
    op.execute(
        f"CREATE POLICY rowscope_training_additions_own ON training_additions TO {ROLE} "
        f"USING ({OWN}) WITH CHECK ({OWN})"
    )


def downgrade() -> None:
    op.drop_table("training_additions")
