"""Index the embeddings for approximate search by their sign bits (binary quantization, Hamming
distance) instead of the full vectors; same graph parameters (m = 16, ef_construction = 64).

Maintaining the full-precision HNSW graph was almost all the cost of inserting a document's chunks
(~340 chunks/s with it against ~7,000 without, on the benchmark machine): each insert computes
hundreds of 1536-dimension distances. The graph over 192-byte bit strings costs a few times less
to maintain. Search walks it with the same expression and re-ranks its candidates by the exact
cosine distance of the full vectors (rowscope/db/knowledge.py), which keeps recall@10 at the
targets (figures in docs/decisions.md). The ORDER BY must be this expression for the index to
serve it: ``binary_quantize(embedding)::bit(1536) <~> binary_quantize(query)``.

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_spark_embeddings_embedding_hnsw")
    op.execute(
        "CREATE INDEX ix_spark_embeddings_embedding_bq_hnsw ON spark_embeddings "
        "USING hnsw ((binary_quantize(embedding)::bit(1536)) bit_hamming_ops) "
        "WITH (m = 16, ef_construction = 64)"
    )


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_spark_embeddings_embedding_bq_hnsw")
    op.execute(
        "CREATE INDEX ix_spark_embeddings_embedding_hnsw ON spark_embeddings "
        "USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64)"
    )
