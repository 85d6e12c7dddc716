"""``search_knowledge``: RAG retrieval over the chunks of the sparks the user may read."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context
from pydantic import BaseModel, Field

from rowscope.tools.context import current_caller, runtime
from rowscope.tools.errors import ToolFailure, translated
from rowscope.tools.sparks import knowledge_store, require_spark

SourceType = Literal[
    "chat",
    "knowledge",
    "knowledge_link",
    "knowledge_file",
    "portfolio",
    "training_chat",
    "manual_entry",
    "portfolio_insight",
]
MAX_QUERY_CHARS = 8000


class KnowledgeHit(BaseModel):
    id: uuid.UUID
    spark_id: uuid.UUID
    content: str
    similarity: float
    source_type: str
    source_id: str | None
    title: str | None = None


class SearchResult(BaseModel):
    hits: list[KnowledgeHit]
    embedding_model: str


@translated
async def search_knowledge(
    ctx: Context[Any],
    query: Annotated[str, Field(min_length=1, max_length=MAX_QUERY_CHARS, description="What to look for.")],
    spark_id: Annotated[uuid.UUID | None, Field(description="Search only this spark.")] = None,
    source_types: Annotated[
        list[SourceType] | None, Field(description="Only chunks of these source types.")
    ] = None,
    top_k: Annotated[int, Field(ge=1, le=50, description="How many chunks to return.")] = 5,
    min_similarity: Annotated[
        float | None, Field(ge=-1.0, le=1.0, description="Drop chunks with a lower cosine similarity.")
    ] = None,
) -> SearchResult:
    """Find the knowledge chunks most similar to a query, across the sparks you may read."""
    rt = runtime(ctx)
    caller = await current_caller(ctx)
    store = knowledge_store(ctx)
    if not query.strip():
        raise ToolFailure("query is empty")
    if spark_id is not None:
        async with rt.database.user_transaction(caller) as conn:
            await require_spark(ctx, store, conn, spark_id, "read")
    (vector,) = await rt.embedder.embed([query], user=caller.account)
    async with rt.database.user_transaction(caller) as conn:
        hits = await store.search(
            conn,
            caller.subject,
            vector,
            model=rt.embedder.model,
            top_k=top_k,
            parent_id=spark_id,
            source_types=source_types,
        )
    return SearchResult(
        embedding_model=rt.embedder.model,
        hits=[
            KnowledgeHit(
                id=h.id,
                spark_id=h.parent_id,
                content=h.content,
                similarity=round(h.similarity, 6),
                source_type=h.source_type,
                source_id=h.source_id,
                title=h.metadata.get("title") if isinstance(h.metadata, dict) else None,
            )
            for h in hits
            if min_similarity is None or h.similarity >= min_similarity
        ],
    )
