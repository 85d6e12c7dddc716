"""``list_<collections>``: the knowledge store's parents the user may read (Spark: ``list_sparks``,
the sparks the user owns, is a member of, or that are shared with their team), and what the other
knowledge tools share: the policy's nouns, the store, and the check that the user may use a parent.

The knowledge tools are named after the policy's ``[knowledge]`` nouns: ``list_{collections}``,
and a ``{collection}_id`` argument and result field (Spark: ``list_sparks``, ``spark_id``). The MCP
SDK reads a tool's input schema from its function's signature, so each tool is built per policy by
:func:`tool`: the implementation under the policy's names, as its ``__signature__`` and
``__annotations__``, which the SDK reads as it reads any function's.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from mcp.server.mcpserver import Context
from pydantic import BaseModel, create_model

from rowscope.db.knowledge import KnowledgeStore
from rowscope.db.policy import KnowledgeSpec
from rowscope.tools.context import current_caller, runtime
from rowscope.tools.errors import ToolFailure, translated


@dataclass(frozen=True)
class Nouns:
    """What the assistant calls the store's parents: ``spark`` / ``sparks`` for Spark."""

    collection: str
    collections: str
    description: str = ""
    # The policy's retrieval filters (argument names); none for Spark.
    filters: tuple[str, ...] = ()

    @classmethod
    def of(cls, spec: KnowledgeSpec) -> Nouns:
        return cls(spec.collection, spec.collections, spec.collections_description, tuple(spec.filters))

    @property
    def id_param(self) -> str:
        return f"{self.collection}_id"

    @property
    def list_tool(self) -> str:
        return f"list_{self.collections}"


# Spark's nouns (rowscope/policies/spark.toml, the default policy): how the tools are named where no
# policy is at hand (the README's tool table and the tests of the bundled policy; a server takes its
# policy's own names, server/app.py).
SPARK = Nouns("spark", "sparks", "AI personas you own, are a member of, or that are shared with your team.")


def tool(
    impl: Callable[..., Awaitable[Any]],
    *,
    name: str,
    doc: str,
    parameters: dict[str, tuple[str, Any] | None],
    returns: type[BaseModel],
) -> Callable[..., Awaitable[Any]]:
    """``impl`` as the tool ``name``: each parameter in ``parameters`` (``impl``'s name -> the
    tool's name and annotation, or None: left out, ``impl``'s default applies) renamed and retyped
    in the signature the MCP SDK reads, and the call's arguments passed back under ``impl``'s names."""
    signature = inspect.signature(impl, eval_str=True)
    back = {new[0]: old for old, new in parameters.items() if new is not None}
    params = []
    for p in signature.parameters.values():
        if p.name in parameters and parameters[p.name] is None:
            continue
        new, annotation = parameters.get(p.name) or (p.name, p.annotation)
        params.append(p.replace(name=new, annotation=annotation))

    @functools.wraps(impl)
    async def call(*args: Any, **kwargs: Any) -> Any:
        return await impl(*args, **{back.get(k, k): v for k, v in kwargs.items()})

    del call.__wrapped__  # the signature below is the tool's, not impl's
    call.__signature__ = signature.replace(parameters=params, return_annotation=returns)  # type: ignore[attr-defined]
    call.__annotations__ = {p.name: p.annotation for p in params} | {"return": returns}
    call.__name__ = call.__qualname__ = name
    call.__doc__ = doc
    return call


def knowledge_store(ctx: Context[Any]) -> KnowledgeStore:
    """The store the runtime built and checked at start."""
    store = runtime(ctx).knowledge
    if store is None:
        raise ToolFailure("this deployment has no knowledge store")
    return store


async def require_parent(store: KnowledgeStore, conn: Any, subject: str, parent_id: Any, mode: str) -> None:
    """Fail unless the user may read (or write) the parent; existence is not revealed to strangers."""
    nouns = Nouns.of(store.spec)
    if await store.may(conn, subject, parent_id, mode):
        return
    if mode == "write" and await store.may(conn, subject, parent_id, "read"):
        raise ToolFailure(
            f"{nouns.collection} {parent_id} is read-only for you: only its owner and editors may change it"
        )
    raise ToolFailure(
        f"no {nouns.collection} {parent_id} that you may read; {nouns.list_tool} shows the ones you can use"
    )


class CollectionSummary(BaseModel):
    id: str
    name: str
    description: str | None
    can_write: bool


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def list_tool(nouns: Nouns) -> Callable[..., Awaitable[Any]]:
    """``list_{collections}``: ``{"<collections>": [{id, name, description, can_write}]}``."""
    listed: type[BaseModel] = create_model(
        f"{nouns.collection.capitalize()}List",
        **{nouns.collections: (list[CollectionSummary], ...)},  # type: ignore[call-overload]
    )

    @translated
    async def list_collections(ctx: Context[Any]) -> BaseModel:
        rt = runtime(ctx)
        caller = await current_caller(ctx)
        store = knowledge_store(ctx)
        async with rt.database.user_transaction(caller) as conn:
            rows = await store.parents(conn, caller.subject)
        labels = store.spec.parent_label_columns
        return listed(
            **{
                nouns.collections: [
                    CollectionSummary(
                        id=str(r["id"]),
                        name=str(r.get(labels[0]) or ""),
                        description=None
                        if len(labels) < 2 or r.get(labels[1]) is None
                        else str(r[labels[1]]),
                        can_write=bool(r["can_write"]),
                    )
                    for r in rows
                ]
            }
        )

    about = f" {nouns.collections.capitalize()}: {nouns.description}" if nouns.description else ""
    return tool(
        list_collections,
        name=nouns.list_tool,
        doc=f"List the {nouns.collections} you may read, and whether you may add training content to "
        f"each.{about}",
        parameters={},
        returns=listed,
    )
