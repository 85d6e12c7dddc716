"""Serving any application's schema (issue 11): subjects, the subject setting, text parent ids and
the knowledge side table.

* ``user_profiles.subject``: the application's own id for an account (its users table's id as
  text, or the one ``rowscope users add --subject`` gave), what the policy compares; NULL means
  the account is its own subject (Spark). Unique: two accounts never act as one application user.
* ``rowscope_subject()``: the transaction's ``rowscope.subject`` (set by every tool transaction's
  switch, ``db/engine.py``), what the policies ``rowscope rls plan`` writes compare; NULL when unset,
  so those policies give no row to a connection that did not switch.
* ``training_additions.parent_id`` becomes text: an application's collections have ids of any type.
* ``knowledge_chunks``: rowscope's bookkeeping for chunks it added to a knowledge table that lacks
  the columns for it (content hash, embedding model, item, source type, metadata), keyed by the
  table and the chunk's id, one (table, parent, hash) once. The application's table is never
  altered. The tool role reads and writes it in the user's transaction; row-level security is on
  and gives nothing until the policies ``rowscope rls plan`` writes for a store (by the store's
  parent access rule) are applied.

Revision ID: 0014
Revises: 0013
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLE = "rowscope_tool"


def upgrade() -> None:
    op.add_column("user_profiles", sa.Column("subject", sa.Text(), nullable=True))
    op.create_unique_constraint(op.f("uq_user_profiles_subject"), "user_profiles", ["subject"])
    op.execute(
        "CREATE FUNCTION rowscope_subject() RETURNS text LANGUAGE sql STABLE PARALLEL SAFE "
        "AS $$ SELECT nullif(current_setting('rowscope.subject', true), '') $$"
    )
    op.execute(f"GRANT EXECUTE ON FUNCTION rowscope_subject() TO {ROLE}")
    op.alter_column("training_additions", "parent_id", type_=sa.Text(), postgresql_using="parent_id::text")
    op.create_table(
        "knowledge_chunks",
        sa.Column("store", sa.Text(), nullable=False),
        sa.Column("chunk_id", sa.Text(), nullable=False),
        sa.Column("parent_id", sa.Text(), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("embedding_model", sa.String(200), nullable=False),
        sa.Column("source_type", sa.String(32), nullable=False),
        sa.Column("source_id", sa.String(200), nullable=False),
        sa.Column("metadata", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("store", "chunk_id", name=op.f("pk_knowledge_chunks")),
        sa.UniqueConstraint("store", "parent_id", "content_hash", name=op.f("uq_knowledge_chunks_store")),
    )
    op.create_index(
        "ix_knowledge_chunks_store_parent_id_source_id",
        "knowledge_chunks",
        ["store", "parent_id", "source_id"],
    )
    op.execute("ALTER TABLE knowledge_chunks ENABLE ROW LEVEL SECURITY")
    op.execute(f"GRANT SELECT, INSERT, DELETE ON knowledge_chunks TO {ROLE}")


def downgrade() -> None:
    op.drop_table("knowledge_chunks")
    op.alter_column("training_additions", "parent_id", type_=sa.UUID(), postgresql_using="parent_id::uuid")
    op.execute("DROP FUNCTION rowscope_subject()")
    op.drop_constraint(op.f("uq_user_profiles_subject"), "user_profiles", type_="unique")
    op.drop_column("user_profiles", "subject")
