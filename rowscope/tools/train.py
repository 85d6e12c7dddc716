"""``add_training_content`` and ``remove_training_content``, with the policy's ``{collection}_id``
argument (Spark: ``spark_id``; tools/collections.py).

Adding: the text is cut into 1000-character chunks with 200 overlap, each hashed with SHA-256;
chunks the collection already has are skipped before anything is embedded; the rest are embedded in
batches (with progress notifications) and inserted in one transaction with ``ON CONFLICT DO
NOTHING``. Embedding happens before the transaction opens, so a failing embedder adds nothing and
holds no locks. The item id (a uuid5) is derived from the collection and the text, so adding the
same text again returns the same item with zero chunks added. New chunks are searchable as soon as
they commit; the background indexer, woken right after, adds them to the HNSW graph (db/indexer.py).
The new chunks count against the user's limits (tools/quota.py), checked and recorded before they
are embedded.
Where the policy exposes retrieval ``filters``, an add takes the same argument and writes its values
into those columns (one each; a NOT NULL one without a default must be given), and the policy's
``on_insert`` columns are set on every row (db/knowledge.py).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from mcp.server.mcpserver import Context
from pydantic import BaseModel, Field, create_model

from rowscope.embeddings.chunking import chunk_text
from rowscope.tools import quota
from rowscope.tools.collections import Nouns, knowledge_store, require_parent, tool
from rowscope.tools.context import current_caller, runtime
from rowscope.tools.errors import ToolFailure, translated
from rowscope.tools.retrieve import FilterValue, SourceType

ITEM_NAMESPACE = uuid.UUID("5b0f8d0e-3f5c-4c52-9a8e-6c1d7f2e9a41")


def item_id_for(parent_id: Any, content: str) -> uuid.UUID:
    digest = hashlib.sha256(content.encode("utf-8")).hexdigest()
    return uuid.uuid5(ITEM_NAMESPACE, f"{parent_id}:{digest}")


def add_tool(nouns: Nouns) -> Callable[..., Awaitable[Any]]:
    """``add_training_content`` with the policy's ``{collection}_id`` (and ``filters``)."""
    added_model: type[BaseModel] = create_model(
        "TrainingAdded",
        item_id=(uuid.UUID, ...),
        **{nouns.id_param: (str, ...)},  # type: ignore[call-overload]
        chunks_total=(int, ...),
        chunks_added=(int, ...),
        chunks_skipped_duplicate=(int, ...),
        embedding_model=(str, ...),
    )

    @translated
    async def add_training_content(
        ctx: Context[Any],
        parent: str,
        content: Annotated[str, Field(min_length=1, description="The text to add.")],
        title: Annotated[str | None, Field(max_length=300, description="A title for the item.")] = None,
        source_type: Annotated[
            SourceType, Field(description="What kind of source the text is.")
        ] = "manual_entry",
        filters: dict[str, FilterValue] | None = None,
    ) -> BaseModel:
        rt = runtime(ctx)
        caller = await current_caller(ctx)
        store = knowledge_store(ctx)
        limit = rt.settings.max_content_chars
        parent_id = store.parent_id(nouns.id_param, parent)
        if not content.strip():
            raise ToolFailure("content is empty")
        if len(content) > limit:
            raise ToolFailure(f"content has {len(content)} characters; the limit is {limit}")
        if "\x00" in content:
            raise ToolFailure("content contains NUL characters")
        assigned = store.assigned(filters)

        item_id = item_id_for(parent_id, content)
        unique: dict[str, Any] = {}
        for chunk in chunk_text(content):
            unique.setdefault(chunk.sha256, chunk)
        chunks = list(unique.values())

        record: uuid.UUID | None = None
        async with rt.database.user_transaction(caller) as conn:
            await require_parent(store, conn, caller.subject, parent_id, "write")
            known = await store.existing_hashes(conn, parent_id, list(unique))
            fresh = [c for c in chunks if c.sha256 not in known]
            if fresh:  # within the user's limits, or refused here, before anything is embedded
                record = await quota.reserve(conn, rt.settings, store, caller, parent_id, item_id, len(fresh))

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
                        parent_id,
                        c.text,
                        c.sha256,
                        source_type,
                        str(item_id),
                        v,
                        rt.embedder.model,
                        metadata | {"chunk_index": c.index},
                        index=c.index,
                    )
                    for c, v in zip(fresh, vectors, strict=True)
                ]
                async with rt.database.user_transaction(caller) as conn:
                    await require_parent(store, conn, caller.subject, parent_id, "write")
                    added = await store.insert(conn, rows, subject=caller.subject, assigned=assigned)
                    await quota.settle(conn, record, added)
            if added and rt.indexer is not None:
                rt.indexer.wake()  # committed: the background indexer puts the new chunks in the graph
        return added_model(
            item_id=item_id,
            **{nouns.id_param: str(parent_id)},
            chunks_total=len(chunks),
            chunks_added=added,
            chunks_skipped_duplicate=len(chunks) - added,
            embedding_model=rt.embedder.model,
        )

    c = nouns.collection
    parameters: dict[str, tuple[str, Any] | None] = {
        "parent": (
            nouns.id_param,
            Annotated[str, Field(description=f"The {c} to train; you must own it or be an editor.")],
        ),
        "filters": None,
    }
    if nouns.filters:
        names = ", ".join(nouns.filters)
        parameters["filters"] = (
            "filters",
            Annotated[
                dict[str, FilterValue] | None,
                Field(description=f"Values stored with each chunk, for search's filters: {names}."),
            ],
        )
    return tool(
        add_training_content,
        name="add_training_content",
        doc=f"Add text to a {c}'s knowledge: chunked, deduplicated by SHA-256, embedded and stored at once.",
        parameters=parameters,
        returns=added_model,
    )


def remove_tool(nouns: Nouns) -> Callable[..., Awaitable[Any]]:
    """``remove_training_content`` with the policy's ``{collection}_id``."""
    removed_model: type[BaseModel] = create_model(
        "TrainingRemoved",
        item_id=(uuid.UUID, ...),
        **{nouns.id_param: (str, ...)},  # type: ignore[call-overload]
        chunks_removed=(int, ...),
    )

    @translated
    async def remove_training_content(
        ctx: Context[Any],
        parent: str,
        item_id: Annotated[uuid.UUID, Field(description="The item_id add_training_content returned.")],
    ) -> BaseModel:
        rt = runtime(ctx)
        caller = await current_caller(ctx)
        store = knowledge_store(ctx)
        parent_id = store.parent_id(nouns.id_param, parent)
        async with rt.database.user_transaction(caller) as conn:
            await require_parent(store, conn, caller.subject, parent_id, "write")
            removed = await store.remove(conn, parent_id, str(item_id))
        if removed == 0:
            raise ToolFailure(f"{nouns.collection} {parent_id} has no training item {item_id}")
        return removed_model(item_id=item_id, **{nouns.id_param: str(parent_id)}, chunks_removed=removed)

    c = nouns.collection
    return tool(
        remove_training_content,
        name="remove_training_content",
        doc=f"Remove a training item (all of its chunks) from a {c} you own or edit.",
        parameters={
            "parent": (nouns.id_param, Annotated[str, Field(description=f"The {c} the item belongs to.")])
        },
        returns=removed_model,
    )
