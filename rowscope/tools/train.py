"""``add_training_content`` and ``remove_training_content``.

Adding: the text is cut into 1000-character chunks with 200 overlap, each hashed with SHA-256;
chunks the spark already has are skipped before anything is embedded; the rest are embedded in
batches (with progress notifications) and inserted in one transaction with ``ON CONFLICT DO
NOTHING``. Embedding happens before the transaction opens, so a failing embedder adds nothing and
holds no locks. The item id is derived from the spark and the text, so adding the same text again
returns the same item with zero chunks added. New chunks are searchable as soon as they commit; the
background indexer, woken right after, adds them to the HNSW graph (db/indexer.py). The new chunks
count against the user's limits (tools/quota.py), checked and recorded before they are embedded.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Annotated, Any

from mcp.server.mcpserver import Context
from pydantic import BaseModel, Field

from rowscope.embeddings.chunking import chunk_text
from rowscope.tools import quota
from rowscope.tools.context import current_caller, runtime
from rowscope.tools.errors import ToolFailure, translated
from rowscope.tools.retrieve import SourceType
from rowscope.tools.sparks import knowledge_store, require_spark

ITEM_NAMESPACE = uuid.UUID("5b0f8d0e-3f5c-4c52-9a8e-6c1d7f2e9a41")


class TrainingAdded(BaseModel):
    item_id: uuid.UUID
    spark_id: uuid.UUID
    chunks_total: int
    chunks_added: int
    chunks_skipped_duplicate: int
    embedding_model: str


class TrainingRemoved(BaseModel):
    item_id: uuid.UUID
    spark_id: uuid.UUID
    chunks_removed: int


def item_id_for(spark_id: uuid.UUID, content: str) -> uuid.UUID:
    digest = hashlib.sha256(content.encode("utf-8")).hexdigest()
    return uuid.uuid5(ITEM_NAMESPACE, f"{spark_id}:{digest}")


@translated
async def add_training_content(
    ctx: Context[Any],
    spark_id: Annotated[uuid.UUID, Field(description="The spark to train; you must own it or be an editor.")],
    content: Annotated[str, Field(min_length=1, description="The text to add.")],
    title: Annotated[str | None, Field(max_length=300, description="A title for the item.")] = None,
    source_type: Annotated[
        SourceType, Field(description="What kind of source the text is.")
    ] = "manual_entry",
) -> TrainingAdded:
    """Add text to a spark's knowledge: chunked, deduplicated by SHA-256, embedded and stored at once."""
    rt = runtime(ctx)
    caller = await current_caller(ctx)
    store = knowledge_store(ctx)
    limit = rt.settings.max_content_chars
    if not content.strip():
        raise ToolFailure("content is empty")
    if len(content) > limit:
        raise ToolFailure(f"content has {len(content)} characters; the limit is {limit}")
    if "\x00" in content:
        raise ToolFailure("content contains NUL characters")

    item_id = item_id_for(spark_id, content)
    unique: dict[str, Any] = {}
    for chunk in chunk_text(content):
        unique.setdefault(chunk.sha256, chunk)
    chunks = list(unique.values())

    record: uuid.UUID | None = None
    async with rt.database.user_transaction(caller) as conn:
        await require_spark(ctx, store, conn, spark_id, "write")
        known = await store.existing_hashes(conn, spark_id, list(unique))
        fresh = [c for c in chunks if c.sha256 not in known]
        if fresh:  # within the user's limits, or refused here, before anything is embedded
            record = await quota.reserve(conn, rt.settings, store, caller, spark_id, item_id, len(fresh))

    added = 0
    if record is not None:
        async with quota.released_unless_done(rt.database, caller, record):
            vectors: list[list[float]] = []
            batch = rt.settings.embedding_batch_size
            for start in range(0, len(fresh), batch):
                texts = [c.text for c in fresh[start : start + batch]]
                vectors += await rt.embedder.embed(texts, user=caller.account)
                if len(fresh) > batch:
                    await ctx.report_progress(
                        len(vectors), len(fresh), f"embedded {len(vectors)} of {len(fresh)} chunks"
                    )
            metadata = {"item_id": str(item_id), "title": title, "chunk_count": len(chunks)}
            rows = [
                store.row(
                    spark_id,
                    c.text,
                    c.sha256,
                    source_type,
                    str(item_id),
                    v,
                    rt.embedder.model,
                    metadata | {"chunk_index": c.index},
                )
                for c, v in zip(fresh, vectors, strict=True)
            ]
            async with rt.database.user_transaction(caller) as conn:
                await require_spark(ctx, store, conn, spark_id, "write")
                added = await store.insert(conn, rows)
                await quota.settle(conn, record, added)
        if added and rt.indexer is not None:
            rt.indexer.wake()  # committed: the background indexer puts the new chunks in the graph
    return TrainingAdded(
        item_id=item_id,
        spark_id=spark_id,
        chunks_total=len(chunks),
        chunks_added=added,
        chunks_skipped_duplicate=len(chunks) - added,
        embedding_model=rt.embedder.model,
    )


@translated
async def remove_training_content(
    ctx: Context[Any],
    spark_id: Annotated[uuid.UUID, Field(description="The spark the item belongs to.")],
    item_id: Annotated[uuid.UUID, Field(description="The item_id add_training_content returned.")],
) -> TrainingRemoved:
    """Remove a training item (all of its chunks) from a spark you own or edit."""
    rt = runtime(ctx)
    caller = await current_caller(ctx)
    store = knowledge_store(ctx)
    async with rt.database.user_transaction(caller) as conn:
        await require_spark(ctx, store, conn, spark_id, "write")
        removed = await store.remove(conn, spark_id, str(item_id))
    if removed == 0:
        raise ToolFailure(f"spark {spark_id} has no training item {item_id}")
    return TrainingRemoved(item_id=item_id, spark_id=spark_id, chunks_removed=removed)
