"""``list_sparks``: the sparks the user may read (owner, member, or shared with their team)."""

from __future__ import annotations

import uuid
from typing import Any

from mcp.server.mcpserver import Context
from pydantic import BaseModel

from rowscope.db.knowledge import KnowledgeStore
from rowscope.tools.context import current_caller, runtime
from rowscope.tools.errors import ToolFailure, translated


class SparkSummary(BaseModel):
    id: uuid.UUID
    name: str
    description: str | None
    can_write: bool


class SparkList(BaseModel):
    sparks: list[SparkSummary]


def knowledge_store(ctx: Context[Any]) -> KnowledgeStore:
    policy = runtime(ctx).policy
    if policy.policy.knowledge is None:
        raise ToolFailure("this deployment has no knowledge store")
    return KnowledgeStore(policy)


async def require_spark(
    ctx: Context[Any], store: KnowledgeStore, conn: Any, spark_id: uuid.UUID, mode: str
) -> None:
    """Fail unless the user may read (or write) the spark; existence is not revealed to strangers."""
    caller = await current_caller(ctx)
    if await store.may(conn, caller.subject, spark_id, mode):
        return
    if mode == "write" and await store.may(conn, caller.subject, spark_id, "read"):
        raise ToolFailure(f"spark {spark_id} is read-only for you: only its owner and editors may change it")
    raise ToolFailure(f"no spark {spark_id} that you may read; list_sparks shows the ones you can use")


@translated
async def list_sparks(ctx: Context[Any]) -> SparkList:
    """List the sparks (AI personas) you may read, and whether you may add training content to each."""
    rt = runtime(ctx)
    caller = await current_caller(ctx)
    store = knowledge_store(ctx)
    async with rt.database.user_transaction(caller) as conn:
        rows = await store.parents(conn, caller.subject)
    return SparkList(
        sparks=[
            SparkSummary(
                id=r["id"],
                name=r.get("name") or "",
                description=r.get("description"),
                can_write=bool(r["can_write"]),
            )
            for r in rows
        ]
    )
