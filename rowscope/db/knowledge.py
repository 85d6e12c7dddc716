"""SQL over the knowledge store (the policy's ``[knowledge]`` table, ``spark_embeddings`` for
Spark): vector search, dedup look-ups, idempotent inserts and removal. Every statement here runs
inside a user transaction and is ANDed with the policy's read or write predicate on the parent.

Search chooses between three plans, because filtered HNSW loses recall when the filter keeps few
rows (the graph walk runs out of ``hnsw.max_scan_tuples`` before it meets ten readable chunks).
All start from the list of readable parent ids: row-level security's own predicate is a
subquery the planner can only apply as a filter, row by row, over the whole table.

* the user may read at most ``exact_search_rows`` chunks (counted first, with a bounded count):
  an exact scan — the ordering expression is written so the HNSW index cannot serve it, and the
  planner reads the readable sparks' chunks through the parent-column index and sorts them;
* estimated at most ``hamming_search_rows`` (when the policy names a ``bits_column``; Spark:
  migration 0008): every readable chunk ranked by the exact Hamming distance of its stored sign
  bits to the query's, an index-only scan of a covering index that reads ~26 chunks per page and
  no full vector; the ``HAMMING_CANDIDATES`` nearest are fetched by primary key and re-ranked by
  exact cosine. No graph, so no filter can starve it, and unindexed chunks are ranked like the
  others; its cost is linear in the readable set, which is what bounds it. The size is estimated
  from the bounded count (chunks per parent it met, times the parents listed), because counting a
  large set exactly would cost every one of its searches a read of that many index entries;
* more than that: the HNSW index with pgvector 0.8's iterative scan (``relaxed_order``), which
  keeps walking the graph until enough rows pass the filter; ``CANDIDATES`` of them are re-ranked
  by their exact distance. The index (migration 0006) is built over the embeddings' sign bits
  (``binary_quantize(embedding)::bit(n)``, Hamming distance), which makes inserting chunks several
  times cheaper than a full-precision graph; the walk orders by that same expression, and the
  exact re-rank of the full vectors restores the recall the quantization loses.

``bench/retrieval.py`` measures them against brute force (recall@10 ≥ 0.98, p99 ≤ 30 ms).

When the policy names an ``indexed_column`` (Spark: migration 0007), the HNSW index is partial on
it and new chunks are inserted unindexed, so the insert never touches the graph; the walk carries
the index's predicate, and the readable chunks not indexed yet are scored exactly and merged into
the candidates before the re-rank, so results do not depend on how far the background indexer
(``db/indexer.py``) has got. The exact scan and the Hamming scan cover every row either way.

Inserts go through a binary ``COPY`` into a transaction-local temporary table and one
``INSERT … SELECT … ON CONFLICT DO NOTHING``: the same idempotence as a multi-row ``INSERT``, without
rendering 1536 floats per row as text.
"""

from __future__ import annotations

import json
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pgvector.sqlalchemy import BIT, Vector
from psycopg import sql
from sqlalchemy import (
    Float,
    Integer,
    Select,
    Table,
    and_,
    any_,
    bindparam,
    cast,
    delete,
    func,
    not_,
    select,
    tuple_,
    union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.ext.asyncio import AsyncConnection

from rowscope.db.policy import CompiledPolicy, KnowledgeSpec

# At most this many readable chunks: exact search. An exact scan reads every readable vector
# (6 KB each, stored out of line), so its cost grows with this number (~20 ms at 3,400 rows on the
# benchmark machine); the filtered HNSW scan above it is faster but its recall falls as the
# readable share shrinks (0.96 at 3% of 100k chunks). Set as high as the exact scan's latency allows.
EXACT_SEARCH_ROWS = 4_000
# hnsw.ef_search for filtered searches: the candidate list each round of the iterative scan keeps.
EF_SEARCH = 400
# Rows the filtered HNSW scan hands back (relaxed order, by Hamming distance of the sign bits) to be
# re-ranked exactly for the top k.
CANDIDATES = 200
# Readable sets above exact_search_rows and estimated at most this many, when the policy names a
# bits_column: rank all of them by exact Hamming distance over the stored sign bits (an index-only
# scan, ~26 chunks per page), then re-rank the best HAMMING_CANDIDATES exactly. Its cost is linear
# in the set (~13 ms p50 at 33,000 chunks on the benchmark machine), so set it above the mid-size
# sets and no higher.
HAMMING_SEARCH_ROWS = 40_000
# How many of the Hamming-nearest chunks are re-ranked by exact cosine distance.
HAMMING_CANDIDATES = 400


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
    def __init__(
        self,
        policy: CompiledPolicy,
        *,
        exact_search_rows: int = EXACT_SEARCH_ROWS,
        hamming_search_rows: int = HAMMING_SEARCH_ROWS,
    ) -> None:
        if policy.policy.knowledge is None:
            raise ValueError("the policy defines no knowledge store")
        self.policy = policy
        self.exact_search_rows = exact_search_rows
        # Without a bits column there is nothing to scan: every set above the exact bound walks HNSW.
        self.hamming_search_rows = (
            max(hamming_search_rows, exact_search_rows)
            if policy.policy.knowledge.bits_column is not None
            else exact_search_rows
        )
        self.spec: KnowledgeSpec = policy.policy.knowledge
        self.table: Table = policy.table(self.spec.table)
        self.parent: Table = policy.table(policy.policy.access[self.spec.access].table)

    def _c(self, name: str) -> Any:
        return self.table.c[name]

    def parent_value(self, text_id: Any) -> Any:
        """A parent id kept as text (rowscope's own tables) as a value of the parent column's type."""
        return cast(text_id, self._c(self.spec.parent_column).type)

    async def parents(self, conn: AsyncConnection, user: str) -> list[dict[str, Any]]:
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

    async def may(self, conn: AsyncConnection, user: str, parent_id: uuid.UUID, mode: str) -> bool:
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
        user: str,
        vector: Sequence[float],
        *,
        model: str,
        top_k: int,
        parent_id: uuid.UUID | None,
        source_types: Sequence[str] | None,
    ) -> list[Hit]:
        s = self.spec
        filters = [self._c(s.model_column) == model]
        if parent_id is not None:
            filters.append(self._c(s.parent_column) == parent_id)
        if source_types:
            filters.append(self._c(s.source_type_column).in_(list(source_types)))
        # The iterative-scan settings for this transaction, and the parents the user may read.
        readable = self.policy.access_ids(s.access, "read", user).subquery()
        settings = select(
            func.set_config("hnsw.iterative_scan", "relaxed_order", True),
            func.set_config("hnsw.ef_search", str(max(EF_SEARCH, 2 * top_k)), True),
            select(func.array_agg(readable.c[0])).scalar_subquery(),
        )
        *_, parents = (await conn.execute(settings)).one()
        if not parents:
            return []
        # How many chunks those parents hold, counted only up to exact_search_rows + 1 through the
        # parent-column index: the ids are listed, so the planner knows how few there are (behind
        # row-level security's subquery it would scan the whole table).
        listed = bindparam("readable_parents", list(parents), type_=ARRAY(UUID(as_uuid=True)))
        by_id = [self._c(s.parent_column) == any_(listed), *filters]
        counted = (
            select(self._c(s.parent_column).label("parent"))
            .where(*by_id)
            .limit(self.exact_search_rows + 1)
            .subquery()
        )
        kept, seen = (await conn.execute(select(func.count(), func.count(counted.c.parent.distinct())))).one()
        exact = kept <= self.exact_search_rows
        # Above that, the size of the whole set estimated from the parents the count met (chunks
        # per parent seen, times the parents listed): counting a set exactly costs a read of every
        # one of its entries, which a large set would pay on every search only to be walked.
        estimate = kept * (1 if parent_id is not None else len(parents)) / max(seen, 1)
        query = bindparam("query_vector", list(vector), type_=Vector(s.dimensions))
        # The query's sign bits, what both Hamming orderings below compare against.
        query_bits = func.binary_quantize(cast(query, Vector(s.dimensions)))
        distance = self._c(s.vector_column).op("<=>", return_type=Float)(query)
        similarity = (1 - distance).label("similarity")
        columns = (
            self._c("id"),
            self._c(s.parent_column).label("parent_id"),
            self._c(s.text_column).label("content"),
            self._c(s.source_type_column).label("source_type"),
            self._c(s.source_id_column).label("source_id"),
            self._c(s.metadata_column).label("metadata"),
            similarity,
        )
        if not exact and s.bits_column is not None and estimate <= self.hamming_search_rows:
            # Every readable chunk ranked by the Hamming distance of its stored sign bits: the
            # filter and the distance name only columns of the covering index (migration 0008), so
            # the scan is index-only and never reads a full vector; the column is not the HNSW
            # index's expression, so the graph cannot serve it, and unindexed chunks are ranked
            # like the others. The set is not counted again (that would read it twice): one the
            # estimate put too low is ranked whole all the same, correctly and more slowly.
            distance_bits = self._c(s.bits_column).op("<~>", return_type=Integer)(query_bits)
            closest = (
                select(self._c("id"))
                .where(*by_id)
                .order_by(distance_bits)
                .limit(max(HAMMING_CANDIDATES, 4 * top_k))
            )
            # The nearest few hundred, fetched by primary key and re-ranked by exact cosine.
            ranked = (
                select(*columns).where(self._c("id").in_(closest)).order_by(similarity.desc()).limit(top_k)
            )
            return [Hit(**row) for row in (await conn.execute(ranked)).mappings()]
        if exact:
            conditions = by_id
        else:
            conditions = [
                self._c(s.parent_column).in_(self.policy.access_ids(s.access, "read", user)),
                *filters,
            ]
        statement = select(*columns).where(and_(*conditions))
        if exact:
            # ORDER BY the selected similarity: no index matches it, so the planner reads the
            # readable chunks through the parent-column index and sorts them (each vector is
            # detoasted once).
            statement = statement.order_by(similarity.desc()).limit(top_k)
        else:
            # ORDER BY the Hamming distance of the sign bits, written exactly as the HNSW index's
            # expression (migration 0006) so the index serves it; in relaxed order the iterative
            # scan hands back CANDIDATES rows nearly in order, and they are re-ranked exactly.
            bits = BIT(s.dimensions)
            hamming = cast(func.binary_quantize(self._c(s.vector_column)), bits).op(
                "<~>", return_type=Integer
            )(query_bits)
            walk = statement
            if s.indexed_column is not None:
                # The index is partial on the flag (migration 0007); the bare column repeats its
                # predicate, which is what lets the planner prove the index covers these rows.
                walk = walk.where(self._c(s.indexed_column))
            nearest = walk.order_by(hamming).limit(max(CANDIDATES, 4 * top_k)).subquery()
            candidates: Any = nearest
            if s.indexed_column is not None:
                # Chunks not in the graph yet (the background indexer's backlog): the readable ones
                # are found through the backlog's partial index and scored exactly, so a chunk is
                # searchable from the moment its insert commits. Both halves read one snapshot, so a
                # chunk the indexer flips meanwhile is counted once.
                backlog = (
                    select(*columns)
                    .where(*by_id, not_(self._c(s.indexed_column)))
                    .order_by(similarity.desc())
                    .limit(top_k)
                    .subquery()
                )
                candidates = union_all(select(*nearest.c), select(*backlog.c)).subquery()
            statement = select(*candidates.c).order_by(candidates.c.similarity.desc()).limit(top_k)
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
        """Insert chunk rows, skipping any (parent, hash) already present; returns how many were new.
        With the policy's ``indexed_column`` the rows go in unindexed: the insert does no graph work,
        and the background indexer (db/indexer.py) adds them to the HNSW graph after the commit."""
        if not rows:
            return 0
        s = self.spec
        columns = list(rows[0])
        table = sql.Identifier(self.table.name)
        names = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
        targets, values = names, names
        if s.indexed_column is not None:
            targets = sql.SQL("{}, {}").format(names, sql.Identifier(s.indexed_column))
            values = sql.SQL("{}, false").format(names)
        staging = sql.Identifier("rowscope_knowledge_load")
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection  # psycopg.AsyncConnection, inside this transaction
        async with driver.cursor() as cur:
            await cur.execute(
                sql.SQL(
                    "DROP TABLE IF EXISTS pg_temp.{staging}; "
                    "CREATE TEMP TABLE {staging} ON COMMIT DROP AS SELECT {names} FROM {table} WITH NO DATA"
                ).format(staging=staging, names=names, table=table)
            )
            kinds = [self._kind(c) for c in columns]
            async with cur.copy(
                sql.SQL("COPY {staging} ({names}) FROM STDIN (FORMAT BINARY)").format(
                    staging=staging, names=names
                )
            ) as copy:
                await copy.write(_binary_copy(rows, columns, kinds))
            await cur.execute(
                sql.SQL(
                    "INSERT INTO {table} ({targets}) SELECT {values} FROM {staging} "
                    "ON CONFLICT ({parent}, {hash}) DO NOTHING"
                ).format(
                    table=table,
                    targets=targets,
                    values=values,
                    staging=staging,
                    parent=sql.Identifier(s.parent_column),
                    hash=sql.Identifier(s.hash_column),
                )
            )
            added = cur.rowcount
            await cur.execute(sql.SQL("DROP TABLE pg_temp.{staging}").format(staging=staging))
        return int(added)

    def _kind(self, column: str) -> str:
        s = self.spec
        if column == s.vector_column:
            return "vector"
        if column == s.metadata_column:
            return "jsonb"
        if column == s.parent_column:
            return "uuid"
        return "text"

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

    def item_chunks(self, parent_id: Any, source_id: Any) -> Select[Any]:
        """The chunks of one item (a parent's chunks of one source id); the two may be columns of
        an enclosing statement."""
        s = self.spec
        return select(self._c("id")).where(
            self._c(s.parent_column) == parent_id, self._c(s.source_id_column) == source_id
        )

    async def count_items(self, conn: AsyncConnection, items: Select[Any, Any]) -> int:
        """How many chunks are stored under the (parent id, source id) pairs ``items`` selects."""
        s = self.spec
        pair = tuple_(self._c(s.parent_column), self._c(s.source_id_column))
        statement = select(func.count()).select_from(self.table).where(pair.in_(items))
        return int((await conn.execute(statement)).scalar_one())

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


_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)


def _binary_copy(rows: list[dict[str, Any]], columns: list[str], kinds: list[str]) -> bytes:
    """Rows in PostgreSQL's binary COPY format (uuid, text, jsonb and pgvector ``vector`` fields)."""
    out = [_COPY_HEADER]
    count = struct.pack(">h", len(columns))
    for row in rows:
        out.append(count)
        for column, kind in zip(columns, kinds, strict=True):
            value = row[column]
            if value is None:
                out.append(b"\xff\xff\xff\xff")
                continue
            if kind == "vector":
                # struct packs a list of floats as big-endian float32 in a third of the time numpy
                # takes to convert it (a tenth of the whole insert at 1,250 chunks).
                data = struct.pack(f">HH{len(value)}f", len(value), 0, *value)
            elif kind == "jsonb":
                data = b"\x01" + json.dumps(value).encode()
            elif kind == "uuid":
                data = (value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))).bytes
            else:
                data = str(value).encode()
            out.append(struct.pack(">i", len(data)))
            out.append(data)
    out.append(struct.pack(">h", -1))
    return b"".join(out)
