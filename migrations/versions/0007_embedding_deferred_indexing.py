"""Take the HNSW graph off the insert path: new chunks arrive unindexed and a background indexer
adds them to the graph in short batches (rowscope/db/indexer.py).

``indexed`` defaults to true, so a writer that knows nothing of this (the application itself) keeps
getting rows that are in the graph at once; rowscope's own inserts set it false. The sign-bit HNSW
index of migration 0006 becomes partial (``WHERE indexed``), so an unindexed row costs the insert no
graph work at all, and flipping the flag is what inserts it into the graph. A small partial btree
on the parent column (``WHERE NOT indexed``) finds the backlog for the indexer and for search, which
scores a readable parent's unindexed chunks exactly next to the graph's candidates.

The tool role gets no UPDATE on the table (migration 0002 grants SELECT, INSERT and DELETE only), so
only the connecting role can mark rows indexed. Rebuilding the HNSW index takes as long as building
it (about 13 s per 100,000 chunks on the benchmark machine); the new column costs no rewrite.

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HNSW = (
    "CREATE INDEX ix_spark_embeddings_embedding_bq_hnsw ON spark_embeddings "
    "USING hnsw ((binary_quantize(embedding)::bit(1536)) bit_hamming_ops) "
    "WITH (m = 16, ef_construction = 64)"
)


def upgrade() -> None:
    op.execute("ALTER TABLE spark_embeddings ADD COLUMN indexed boolean NOT NULL DEFAULT true")
    op.execute("DROP INDEX ix_spark_embeddings_embedding_bq_hnsw")
    # The predicate is the bare column: a query proves it only by repeating it (`AND indexed`).
    op.execute(f"{HNSW} WHERE indexed")
    op.execute("CREATE INDEX ix_spark_embeddings_unindexed ON spark_embeddings (spark_id) WHERE NOT indexed")


def downgrade() -> None:
    # The full index of 0006 covers every row, so the backlog needs no draining first.
    op.execute("DROP INDEX ix_spark_embeddings_unindexed")
    op.execute("DROP INDEX ix_spark_embeddings_embedding_bq_hnsw")
    op.execute("ALTER TABLE spark_embeddings DROP COLUMN indexed")
    op.execute(HNSW)
