"""SQL over the knowledge store (the policy's ``[knowledge]`` table, ``spark_embeddings`` for
Spark): vector search, dedup look-ups, idempotent inserts and removal. Every statement here runs
inside a user transaction and is ANDed with the policy's read or write predicate on the parent."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import Float, Table, and_, bindparam, delete, func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from rowscope.db.policy import CompiledPolicy, KnowledgeSpec

INSERT_BATCH = 500


@dataclass(frozen=True)
class Hit:
    id: uuid.UUID
    parent_id: uuid.UUID
    content: str
    source_type: str
    source_id: str | None
    metadata: dict[str, Any]
    similarity: float


class KnowledgeStore:
    def __init__(self, policy: CompiledPolicy) -> None:
        if policy.policy.knowledge is None:
            raise ValueError("the policy defines no knowledge store")
        self.policy = policy
        self.spec: KnowledgeSpec = policy.policy.knowledge
        self.table: Table = policy.table(self.spec.table)
        self.parent: Table = policy.table(policy.policy.access[self.spec.access].table)

    def _c(self, name: str) -> Any:
        return self.table.c[name]

    async def parents(self, conn: AsyncConnection, user: uuid.UUID) -> list[dict[str, Any]]:
        """The parents (sparks) the user may read, with whether they may write."""
        access = self.policy.policy.access[self.spec.access]
        p = self.parent
        can_write = self.policy.access_predicate(self.spec.access, "write", user, p)
        statement = (
            select(
                p.c[access.key].label("id"),
                *(p.c[c] for c in self.spec.parent_label_columns),
                can_write.label("can_write"),
            )
            .where(self.policy.access_predicate(self.spec.access, "read", user, p))
            .order_by(p.c[self.spec.parent_label_columns[0]], p.c[access.key])
        )
        return [dict(row) for row in (await conn.execute(statement)).mappings()]

    async def may(self, conn: AsyncConnection, user: uuid.UUID, parent_id: uuid.UUID, mode: str) -> bool:
        access = self.policy.policy.access[self.spec.access]
        p = self.parent
        statement = select(p.c[access.key]).where(
            p.c[access.key] == parent_id,
            self.policy.access_predicate(self.spec.access, "read" if mode == "read" else "write", user, p),
        )
        return (await conn.execute(statement)).first() is not None

    async def search(
        self,
        conn: AsyncConnection,
        user: uuid.UUID,
        vector: Sequence[float],
        *,
        model: str,
        top_k: int,
        parent_id: uuid.UUID | None,
        source_types: Sequence[str] | None,
    ) -> list[Hit]:
        s = self.spec
        # pgvector 0.8: keep scanning the HNSW graph until top_k rows survive the user's filter.
        await conn.execute(
            text(
                "SELECT set_config('hnsw.iterative_scan', 'strict_order', true), "
                "set_config('hnsw.ef_search', :ef, true)"
            ),
            {"ef": str(max(40, 2 * top_k))},
        )
        query = bindparam("query_vector", list(vector), type_=Vector(s.dimensions))
        distance = self._c(s.vector_column).op("<=>", return_type=Float)(query)
        conditions = [
            self._c(s.parent_column).in_(self.policy.access_ids(s.access, "read", user)),
            self._c(s.model_column) == model,
        ]
        if parent_id is not None:
            conditions.append(self._c(s.parent_column) == parent_id)
        if source_types:
            conditions.append(self._c(s.source_type_column).in_(list(source_types)))
        statement = (
            select(
                self._c("id"),
                self._c(s.parent_column).label("parent_id"),
                self._c(s.text_column).label("content"),
                self._c(s.source_type_column).label("source_type"),
                self._c(s.source_id_column).label("source_id"),
                self._c(s.metadata_column).label("metadata"),
                (1 - distance).label("similarity"),
            )
            .where(and_(*conditions))
            .order_by(distance)
            .limit(top_k)
        )
        rows = (await conn.execute(statement)).mappings().all()
        return [Hit(**row) for row in rows]

    async def existing_hashes(
        self, conn: AsyncConnection, parent_id: uuid.UUID, hashes: list[str]
    ) -> set[str]:
        s = self.spec
        statement = select(self._c(s.hash_column)).where(
            self._c(s.parent_column) == parent_id, self._c(s.hash_column).in_(hashes)
        )
        return set((await conn.execute(statement)).scalars())

    async def insert(self, conn: AsyncConnection, rows: list[dict[str, Any]]) -> int:
        """Insert chunk rows, skipping any (parent, hash) already present; returns how many were new."""
        s = self.spec
        added = 0
        for start in range(0, len(rows), INSERT_BATCH):
            statement = (
                insert(self.table)
                .values(rows[start : start + INSERT_BATCH])
                .on_conflict_do_nothing(index_elements=[s.parent_column, s.hash_column])
                .returning(self._c("id"))
            )
            added += len((await conn.execute(statement)).all())
        return added

    def row(
        self,
        parent_id: uuid.UUID,
        content: str,
        sha256: str,
        source_type: str,
        source_id: str,
        vector: Sequence[float],
        model: str,
        metadata: dict[str, Any],
    ) -> dict[str, Any]:
        s = self.spec
        return {
            s.parent_column: parent_id,
            s.text_column: content,
            s.hash_column: sha256,
            s.source_type_column: source_type,
            s.source_id_column: source_id,
            s.vector_column: list(vector),
            s.model_column: model,
            s.metadata_column: metadata,
        }

    async def remove(self, conn: AsyncConnection, parent_id: uuid.UUID, source_id: str) -> int:
        s = self.spec
        statement = (
            delete(self.table)
            .where(self._c(s.parent_column) == parent_id, self._c(s.source_id_column) == source_id)
            .returning(self._c("id"))
        )
        return len((await conn.execute(statement)).all())

    async def items(self, conn: AsyncConnection, parent_id: uuid.UUID) -> list[dict[str, Any]]:
        """Training items of a parent: one row per source id, with its chunk count."""
        s = self.spec
        statement = (
            select(
                self._c(s.source_id_column).label("item_id"),
                func.min(self._c(s.source_type_column)).label("source_type"),
                func.min(self._c(s.metadata_column)["title"].astext).label("title"),
                func.count().label("chunks"),
                func.min(self._c("created_at")).label("added_at"),
            )
            .where(self._c(s.parent_column) == parent_id)
            .group_by(self._c(s.source_id_column))
            .order_by(func.min(self._c("created_at")).desc())
        )
        return [dict(r) for r in (await conn.execute(statement)).mappings()]
