"""Store each embedding's sign bits in the row, and cover them with an index on the parent column, so
search can rank a mid-size readable set by Hamming distance without reading a single full vector.

``embedding_bits`` is ``binary_quantize(embedding)::bit(1536)`` as a generated STORED column
(192 bytes, computed once on insert by the database, so no writer can get it wrong). Expressions
cannot be INCLUDE columns of an index, which is why it has to be a column at all. The btree
``(spark_id, embedding_model) INCLUDE (source_type, id, embedding_bits)`` holds everything search's
Hamming pass reads, so it is an index-only scan: about 26 readable chunks per 8 KB page instead of
one (the full vector is stored in line, migration 0005). rowscope/db/knowledge.py ranks the readable
chunks by ``embedding_bits <~> binary_quantize(query)`` through this index and re-ranks the best few
hundred by exact cosine distance; docs/decisions.md has the figures.

The HNSW index stays on the expression of migrations 0006/0007: on the column, the planner could serve
the Hamming pass from the graph (the filtered walk it replaces), and evaluating the expression again
when the indexer's flip puts a row into the graph costs nothing next to the graph insert itself.

Cost of the upgrade: adding a STORED generated column rewrites the table under an ACCESS EXCLUSIVE
lock and rebuilds every index on it, the HNSW graph included; measured on the benchmark machine
(2 shared cores, maintenance_work_mem 2 GB, 2 parallel maintenance workers): 14.8 s at 100,000
chunks and 246 s at 1,000,000 (load average ~3 from other runs). The covering index then builds in
2.3 s / 19.5 s and is 30 / 304 MiB; the table does not grow (each row already fills its page).
Plan a maintenance window for a large table.

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE spark_embeddings ADD COLUMN embedding_bits bit(1536) NOT NULL "
        "GENERATED ALWAYS AS (binary_quantize(embedding)::bit(1536)) STORED"
    )
    op.execute(
        "CREATE INDEX ix_spark_embeddings_sign_bits ON spark_embeddings (spark_id, embedding_model) "
        "INCLUDE (source_type, id, embedding_bits)"
    )


def downgrade() -> None:
    # Dropping the column drops the index with it; no rewrite (the space is reclaimed as rows change).
    op.execute("DROP INDEX ix_spark_embeddings_sign_bits")
    op.execute("ALTER TABLE spark_embeddings DROP COLUMN embedding_bits")
