"""``search_knowledge``: RAG retrieval over the chunks of the collections (Spark: sparks) the user
may read, optionally of one collection, of some source types, and matching the policy's retrieval
``filters`` (e.g. a channel). Which rows are searched — rowscope's of the current embedding model,
and the application's own when its model compares — and how, is ``db/knowledge.py``'s docstring;
a search that finds no row it may compare answers no hits, never an error."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context
from pydantic import BaseModel, Field, create_model

from rowscope.tools.collections import Nouns, knowledge_store, require_parent, tool
from rowscope.tools.context import current_caller, runtime
from rowscope.tools.errors import ToolFailure, translated

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
FilterValue = str | int | float | bool
Filters = dict[str, FilterValue | list[FilterValue]]


def search_tool(nouns: Nouns) -> Callable[..., Awaitable[Any]]:
    """``search_knowledge`` with the policy's ``{collection}_id`` argument and hit field."""
    hit: type[BaseModel] = create_model(
        "KnowledgeHit",
        id=(str, ...),
        **{nouns.id_param: (str, ...)},  # type: ignore[call-overload]
        content=(str, ...),
        similarity=(float, ...),
        source_type=(str | None, ...),
        source_id=(str | None, ...),
        title=(str | None, None),
    )
    result: type[BaseModel] = create_model("SearchResult", hits=(list[hit], ...), embedding_model=(str, ...))

    @translated
    async def search_knowledge(
        ctx: Context[Any],
        query: Annotated[
            str, Field(min_length=1, max_length=MAX_QUERY_CHARS, description="What to look for.")
        ],
        parent: str | None = None,
        source_types: Annotated[
            list[SourceType] | None, Field(description="Only chunks of these source types.")
        ] = None,
        top_k: Annotated[int, Field(ge=1, le=50, description="How many chunks to return.")] = 5,
        min_similarity: Annotated[
            float | None, Field(ge=-1.0, le=1.0, description="Drop chunks with a lower cosine similarity.")
        ] = None,
        filters: Filters | None = None,
    ) -> BaseModel:
        rt = runtime(ctx)
        caller = await current_caller(ctx)
        store = knowledge_store(ctx)
        if not query.strip():
            raise ToolFailure("query is empty")
        parent_id = None if parent is None else store.parent_id(nouns.id_param, parent)
        store.filter_conditions(filters)  # a bad filter fails before anything is embedded
        if parent_id is not None:
            async with rt.database.user_transaction(caller) as conn:
                await require_parent(store, conn, caller.subject, parent_id, "read")
        (vector,) = await rt.embedder.embed([query], user=caller.account)
        async with rt.database.user_transaction(caller) as conn:
            hits = await store.search(
                conn,
                caller.subject,
                vector,
                model=rt.embedder.model,
                top_k=top_k,
                parent_id=parent_id,
                source_types=source_types,
                filters=filters,
            )
        return result(
            embedding_model=rt.embedder.model,
            hits=[
                hit(
                    id=str(h.id),
                    **{nouns.id_param: str(h.parent_id)},
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

    parameters: dict[str, tuple[str, Any] | None] = {
        "parent": (
            nouns.id_param,
            Annotated[str | None, Field(description=f"Search only this {nouns.collection}.")],
        ),
        "filters": None,
    }
    filters_doc = ""
    if nouns.filters:
        names = ", ".join(nouns.filters)
        parameters["filters"] = (
            "filters",
            Annotated[
                Filters | None,
                Field(description=f"Only chunks whose fields equal the value, or one of a list: {names}."),
            ],
        )
        filters_doc = f" Filters: {names}."
    return tool(
        search_knowledge,
        name="search_knowledge",
        doc=f"Find the knowledge chunks most similar to a query, across the {nouns.collections} you may "
        f"read.{filters_doc}",
        parameters=parameters,
        returns=result,
    )
