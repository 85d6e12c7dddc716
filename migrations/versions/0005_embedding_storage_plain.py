"""Keep each embedding inside its row (``STORAGE PLAIN``) instead of out of line in TOAST.

A 1536-dimension vector is 6 KB, above TOAST's 2 KB threshold, so by default every vector read
by an exact scan costs a second lookup in the TOAST table — about 70% of an exact scan over a few
thousand chunks (bench/README.md, retrieval). A 6 KB vector still fits an 8 KB page; the row's
text and metadata move out of line instead when they must. Rows written before this migration
keep their old layout until they are rewritten (``VACUUM FULL spark_embeddings``).

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE spark_embeddings ALTER COLUMN embedding SET STORAGE PLAIN")


def downgrade() -> None:
    op.execute("ALTER TABLE spark_embeddings ALTER COLUMN embedding SET STORAGE EXTERNAL")
