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

Any application's store (issue 11)
----------------------------------
The policy's ``[knowledge]`` names the table, its id, parent, text and vector columns and the
dimension; ids may be of any type (uuid, text/cuid, integer), and the tools pass them as strings
that are converted to the column's type here (:func:`id_value`, a clear ``FilterError`` naming the
argument otherwise). The vector column is pgvector ``vector`` or ``halfvec`` (compared as itself) or
``real[]`` / ``double precision[]`` (cast in SQL, ``embedding::vector(n) <=> :q``); its declared
dimension must be the policy's (checked when the store is built, at start). Rows whose vector is
NULL, empty (``'{}'``) or of another length are never ranked.

*Bookkeeping.* Spark's table keeps each chunk's content hash, embedding model, item (source id),
source type and metadata in its own columns, and inserts go through the binary ``COPY`` above.
A table that lacks any of them keeps all of them in rowscope's side table ``knowledge_chunks``
(migration 0014: ``store`` = the policy's table name as written, ``chunk_id`` = the row's id as
text, ``parent_id`` as text), and is never altered. Such an add inserts the application's rows
(ids generated here, uuid4, when the id column has no default: Prisma makes cuids and uuids in the
client) and their side rows in one transaction; the side table's unique (store, parent, hash) is
the arbiter, so of two concurrent adds of one text only one keeps its rows (the other's are
deleted again before it commits). Removing an item deletes its rows and their side rows.
Columns the application requires are set from ``on_insert`` (the user's subject, a value, now())
and from the ``filters`` the add names; a NOT NULL column without a default that nothing sets is
refused at start.

*Which rows are searched.* Rows rowscope wrote with the embedder's current model (its model column,
or the side row's). Rows the application embedded itself — with a side table, rows without a side
row (and, with a model column, whose model is ``embedded_with``); with a model column and no side
table, rows whose model is ``embedded_with`` — only when the embedder's model is ``embedded_with``
or is listed in ``compatible_models``: vectors of another model are not comparable with the query's,
so those rows are left out, silently (a search that finds none of them is not an error).

*Plans.* The three plans above need rowscope's own indexes (Spark: migrations 0006-0008, named by
``indexed_column`` / ``bits_column``). Any other store is searched exactly: the readable parents'
ids are listed first (as the exact plan does), then their rows are scored and sorted,
``ORDER BY 1 - (distance) DESC LIMIT top_k`` — an ordering no approximate index serves, so the
application's own ivfflat/HNSW indexes are not used (yet): each search reads every readable
chunk's vector, linear in what the user may read (about 20 ms per 3,400 1536-d rows, see
EXACT_SEARCH_ROWS).
"""

from __future__ import annotations

import json
import struct
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pgvector.sqlalchemy import BIT, HALFVEC, VECTOR, Vector
from psycopg import sql
from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Integer,
    Select,
    String,
    Table,
    Text,
    and_,
    any_,
    bindparam,
    cast,
    delete,
    exists,
    func,
    literal,
    not_,
    or_,
    select,
    tuple_,
    union_all,
)
from sqlalchemy import types as sqltypes
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from rowscope.db.filters import FilterError, column_kind, convert
from rowscope.db.models import KnowledgeChunk
from rowscope.db.policy import (
    ChunkIndexValue,
    CompiledPolicy,
    FixedValue,
    KnowledgeSpec,
    NowValue,
    PolicyError,
    UserValue,
    as_subject,
)

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


# Rows per INSERT of a store without Spark's columns (each row is a handful of bound parameters).
INSERT_BATCH = 500
SIDE: Table = KnowledgeChunk.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class Hit:
    id: Any
    parent_id: Any
    content: str
    source_type: str | None
    source_id: str | None
    metadata: dict[str, Any] | None
    similarity: float


def vector_type(column: Column[Any]) -> tuple[str, int | None] | None:
    """What a vector column is: ``("vector" | "halfvec" | "array", declared dimension)``; None for
    a column that holds no vectors. An array's dimension is never declared (PostgreSQL ignores it)."""
    t = column.type
    if isinstance(t, VECTOR | Vector):
        return "vector", t.dim
    if isinstance(t, HALFVEC):
        return "halfvec", t.dim
    if (
        isinstance(t, sqltypes.ARRAY)
        and isinstance(t.item_type, sqltypes.Float)
        and t.dimensions in (None, 1)
    ):
        return "array", None
    return None


def has_default(column: Column[Any]) -> bool:
    """Whether the database fills the column when an insert leaves it out."""
    return column.server_default is not None or column.identity is not None or column.computed is not None


def id_value(column: Column[Any], name: str, raw: Any) -> Any:
    """An id the assistant sent (a string, or a JSON number) as a value of ``column``'s type, or a
    FilterError naming the argument: a malformed id never reaches the database."""
    if column_kind(column) == "integer":
        text = str(raw).strip() if isinstance(raw, str | int) and not isinstance(raw, bool) else ""
        try:
            number = int(text)
        except ValueError:
            raise FilterError(f"{name} is an integer id; got {raw!r}") from None
        bits = 16 if isinstance(column.type, sqltypes.SmallInteger) else 64
        bits = 32 if bits == 64 and not isinstance(column.type, sqltypes.BigInteger) else bits
        if abs(number) >= 2 ** (bits - 1):
            raise FilterError(f"{name} is an integer id; {number} is out of its range")
        return number
    return convert(column, name, raw)


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
        s = self.spec
        # Any bookkeeping column missing: all of it is kept in the side table (module docstring).
        self.side = None in s.bookkeeping().values()
        # rowscope's own approximate indexes (Spark's migrations 0006-0008); otherwise exact search.
        self.approximate = not self.side and (s.indexed_column is not None or s.bits_column is not None)
        self.id_column: Column[Any] = self.table.c[s.id_column]
        self.parent_column: Column[Any] = self.table.c[s.parent_column]
        # Ids rowscope makes for a table whose id column has no default (Prisma's client-side ids).
        self.generates_ids = not has_default(self.id_column)
        # The columns ``on_insert`` sets to each chunk's position in its text (``chunk_index``).
        self.positions = [name for name, how in s.on_insert.items() if isinstance(how, ChunkIndexValue)]
        self.vector_kind, self.declared_dimensions = self._check()

    def _check(self) -> tuple[str, int | None]:
        """The store's columns as the policy needs them, or PolicyError (one line; at start, when
        the runtime builds the store)."""
        s, t = self.spec, self.table
        where = f"knowledge: {t.fullname}.{s.vector_column}"
        found = vector_type(t.c[s.vector_column])
        if found is None:
            raise PolicyError(
                f"{where} is {t.c[s.vector_column].type}, not a vector: use pgvector vector(n) or "
                "halfvec(n), or real[] / double precision[]"
            )
        kind, declared = found
        if declared is not None and declared != s.dimensions:
            raise PolicyError(
                f"{where} is {kind}({declared}) but the policy's knowledge.dimensions is {s.dimensions}: "
                f"set dimensions = {declared}"
            )
        if not self.side and kind != "vector":
            raise PolicyError(
                f"{where} is {kind}: a table that keeps every bookkeeping column itself needs pgvector "
                "vector(n); leave hash_column unset to keep them in rowscope's side table"
            )
        if self.generates_ids and column_kind(self.id_column) not in ("uuid", "text"):
            raise PolicyError(
                f"knowledge.id_column: {t.fullname}.{s.id_column} has no default and is not uuid or "
                "text, so rowscope cannot make ids for the rows it adds: give it a default"
            )
        set_here = {s.id_column, s.parent_column, s.text_column, s.vector_column, *s.on_insert}
        set_here |= set(s.filters.values())
        set_here |= {c for c in (*s.bookkeeping().values(), s.indexed_column) if c is not None}
        for column in t.c:
            if column.name not in set_here and not column.nullable and not has_default(column):
                raise PolicyError(
                    f"knowledge: {t.fullname}.{column.name} is NOT NULL without a default and nothing "
                    f"sets it: add it to [knowledge] on_insert ({{ user = true }}, {{ value = ... }}, "
                    f"{{ now = true }} or {{ chunk_index = true }}) or to filters "
                    f'(e.g. {column.name} = "{column.name}") so adds give it'
                )
        return kind, declared

    def app_rows(self, model: str) -> bool:
        """Whether rows the application embedded itself are searched for an embedder of ``model``:
        it is the policy's ``embedded_with``, or listed in ``compatible_models``."""
        s = self.spec
        return model == s.embedded_with or model in s.compatible_models

    def _c(self, name: str | None) -> Any:
        assert name is not None  # a column the store's mode has (module docstring)
        return self.table.c[name]

    def parent_value(self, text_id: Any) -> Any:
        """A parent id kept as text (rowscope's own tables) as a value the store's parent ids are
        compared with: the parent column's type, or text where the side table keeps them."""
        if self.side:
            return text_id
        return cast(text_id, self._c(self.spec.parent_column).type)

    def parent_id(self, name: str, raw: Any) -> Any:
        """A parent id the assistant sent, as a value of the parent column's type (``name``: the
        argument, e.g. ``spark_id``, which a malformed id's error names)."""
        return id_value(self.parent_column, name, raw)

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
        parent_id: Any,
        source_types: Sequence[str] | None,
        filters: Mapping[str, Any] | None = None,
    ) -> list[Hit]:
        """The ``top_k`` chunks most similar to ``vector`` among those the user may read (of one
        parent, of some source types, matching the policy's ``filters``): the plans of the module
        docstring."""
        if not self.approximate:
            return await self._search_exact(
                conn, user, vector, model=model, top_k=top_k, parent_id=parent_id,
                source_types=source_types, filters=filters,
            )  # fmt: skip
        s = self.spec
        filters_ = [self._model_matches(self._c(s.model_column), model), *self.filter_conditions(filters)]
        return await self._search_approximate(
            conn, user, vector, top_k=top_k, parent_id=parent_id, source_types=source_types, filters=filters_
        )

    async def _search_approximate(
        self,
        conn: AsyncConnection,
        user: str,
        vector: Sequence[float],
        *,
        top_k: int,
        parent_id: Any,
        source_types: Sequence[str] | None,
        filters: list[Any],
    ) -> list[Hit]:
        """Spark's three plans (module docstring), over a table with every bookkeeping column."""
        s = self.spec
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
        listed = self._listed(parents)
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
            self.id_column.label("id"),
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
                select(self.id_column)
                .where(*by_id)
                .order_by(distance_bits)
                .limit(max(HAMMING_CANDIDATES, 4 * top_k))
            )
            # The nearest few hundred, fetched by primary key and re-ranked by exact cosine.
            ranked = (
                select(*columns).where(self.id_column.in_(closest)).order_by(similarity.desc()).limit(top_k)
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

    def _listed(self, parents: Sequence[Any]) -> Any:
        """The readable parents' ids, listed as one array parameter of the parent column's type."""
        item = UUID(as_uuid=True) if column_kind(self.parent_column) == "uuid" else self.parent_column.type
        return bindparam("readable_parents", list(parents), type_=ARRAY(item))

    def _model_matches(self, column: Any, model: str) -> Any:
        """Rows of ``model``, and the application's own (``embedded_with``) when they compare."""
        s = self.spec
        if s.embedded_with is not None and s.embedded_with != model and self.app_rows(model):
            return column.in_([model, s.embedded_with])
        return column == model

    def filter_conditions(self, filters: Mapping[str, Any] | None) -> list[Any]:
        """The policy's retrieval filters the search names, as equality / IN conditions, each value
        converted to its column's type (FilterError for an unknown name or a bad value)."""
        out = []
        for name, column, value in self._named(filters):
            values = value if isinstance(value, list) else [value]
            if not values:
                raise FilterError(f"filters.{name}: give a value or a non-empty list of values")
            converted = [convert(column, f"filters.{name}", v) for v in values]
            out.append(column == converted[0] if len(converted) == 1 else column.in_(converted))
        return out

    def _named(self, filters: Mapping[str, Any] | None) -> list[tuple[str, Column[Any], Any]]:
        s = self.spec
        unknown = sorted(set(filters or {}) - set(s.filters))
        if unknown:
            allowed = ", ".join(sorted(s.filters)) or "none: this store has no filters"
            raise FilterError(f"unknown filter {unknown[0]!r}; filters: {allowed}")
        return [(name, self._c(s.filters[name]), value) for name, value in (filters or {}).items()]

    def assigned(self, filters: Mapping[str, Any] | None) -> dict[str, Any]:
        """The values an add writes into the filter columns (column -> value of its type): one
        value each, and every NOT NULL filter column without a default given (FilterError)."""
        out: dict[str, Any] = {}
        for name, column, value in self._named(filters):
            if isinstance(value, list):
                raise FilterError(f"filters.{name}: an add writes one value, not a list")
            out[column.name] = convert(column, f"filters.{name}", value)
        for name, column_name in sorted(self.spec.filters.items()):
            column = self._c(column_name)
            if out.get(column_name) is None and not column.nullable and not has_default(column):
                raise FilterError(f"filters.{name} is required to add content here; nothing was changed")
        return out

    def _distance(self, query: Any) -> Any:
        """The cosine distance of each row's vector to the query, for the column's type."""
        s = self.spec
        column = self._c(s.vector_column)
        if self.vector_kind == "halfvec":
            return column.op("<=>", return_type=Float)(cast(query, HALFVEC(s.dimensions)))
        if self.vector_kind == "array":
            return cast(column, Vector(s.dimensions)).op("<=>", return_type=Float)(query)
        return column.op("<=>", return_type=Float)(query)

    def _vector_present(self) -> Any:
        """Rows with a vector of the policy's length: NULL, empty and other lengths are skipped."""
        s = self.spec
        column = self._c(s.vector_column)
        if self.vector_kind == "array":
            return func.cardinality(column) == s.dimensions
        if self.declared_dimensions is None:
            return func.vector_dims(column) == s.dimensions
        return column.is_not(None)

    def _side_join(self) -> Any:
        """The side rows of this store's rows: ``store`` and ``chunk_id`` (the row's id as text)
        are the side table's primary key, so each row's is one index probe."""
        return and_(SIDE.c.store == self.spec.table, SIDE.c.chunk_id == cast(self.id_column, Text))

    async def _search_exact(
        self,
        conn: AsyncConnection,
        user: str,
        vector: Sequence[float],
        *,
        model: str,
        top_k: int,
        parent_id: Any,
        source_types: Sequence[str] | None,
        filters: Mapping[str, Any] | None,
    ) -> list[Hit]:
        """Every readable chunk scored exactly (module docstring, "Plans")."""
        s = self.spec
        conditions = self.filter_conditions(filters)
        readable = self.policy.access_ids(s.access, "read", user).subquery()
        parents = (await conn.execute(select(func.array_agg(readable.c[0])))).scalar()
        if not parents:
            return []
        conditions += [self.parent_column == any_(self._listed(parents)), self._vector_present()]
        if parent_id is not None:
            conditions.append(self.parent_column == parent_id)
        query = bindparam("query_vector", list(vector), type_=Vector(s.dimensions))
        similarity = (1 - self._distance(query)).label("similarity")
        source: Any = self.table
        if self.side:
            source = self.table.outerjoin(SIDE, self._side_join())
            mine = SIDE.c.embedding_model == model
            if self.app_rows(model):
                theirs: Any = SIDE.c.chunk_id.is_(None)
                if s.model_column is not None and s.embedded_with is not None:
                    theirs = and_(theirs, self._c(s.model_column) == s.embedded_with)
                mine = or_(mine, theirs)
            conditions.append(mine)
            if source_types:
                conditions.append(SIDE.c.source_type.in_(list(source_types)))
            described = (SIDE.c.source_type, SIDE.c.source_id, SIDE.c.metadata)
        else:
            conditions.append(self._model_matches(self._c(s.model_column), model))
            if source_types:
                conditions.append(self._c(s.source_type_column).in_(list(source_types)))
            described = tuple(
                self._c(c) for c in (s.source_type_column, s.source_id_column, s.metadata_column)
            )
        statement = (
            select(
                self.id_column.label("id"),
                self.parent_column.label("parent_id"),
                self._c(s.text_column).label("content"),
                described[0].label("source_type"),
                described[1].label("source_id"),
                described[2].label("metadata"),
                similarity,
            )
            .select_from(source)
            .where(*conditions)
            # The selected similarity, descending: no approximate index of the application serves
            # this ordering, so the result is exact.
            .order_by(similarity.desc())
            .limit(top_k)
        )
        return [Hit(**row) for row in (await conn.execute(statement)).mappings()]

    async def existing_hashes(self, conn: AsyncConnection, parent_id: Any, hashes: list[str]) -> set[str]:
        s = self.spec
        if self.side:
            statement = (
                select(SIDE.c.content_hash)
                .select_from(SIDE.join(self.table, self._side_join()))
                .where(SIDE.c.parent_id == str(parent_id), SIDE.c.content_hash.in_(hashes))
            )
            return set((await conn.execute(statement)).scalars())
        statement = select(self._c(s.hash_column)).where(
            self._c(s.parent_column) == parent_id, self._c(s.hash_column).in_(hashes)
        )
        return set((await conn.execute(statement)).scalars())

    def _set_on_insert(self, subject: str | None) -> dict[str, Any]:
        """The ``on_insert`` columns' values that are the same on every row, as SQL: the subject cast
        to the column's type, a fixed value cast to it, or now() (a chunk's position is per row:
        :meth:`positions`)."""
        out: dict[str, Any] = {}
        for name, how in self.spec.on_insert.items():
            column = self._c(name)
            if isinstance(how, NowValue):
                out[name] = func.now()
            elif isinstance(how, FixedValue):
                out[name] = cast(literal(how.value), column.type)
            elif isinstance(how, UserValue):
                if subject is None:
                    raise ValueError("this store sets the user on insert: insert() needs the subject")
                out[name] = as_subject(literal(subject, String()), column)
        return out

    async def insert(
        self,
        conn: AsyncConnection,
        rows: list[dict[str, Any]],
        *,
        subject: str | None = None,
        assigned: Mapping[str, Any] | None = None,
    ) -> int:
        """Insert chunk rows (from :meth:`row`), skipping any (parent, hash) already present;
        returns how many were new. ``subject``: the user, for ``on_insert = { user = true }``;
        ``assigned``: the filter columns' values (:meth:`assigned`).
        With the policy's ``indexed_column`` the rows go in unindexed: the insert does no graph work,
        and the background indexer (db/indexer.py) adds them to the HNSW graph after the commit."""
        if not rows:
            return 0
        if self.side:
            return await self._insert_with_side_rows(conn, rows, subject, dict(assigned or {}))
        s = self.spec
        columns = list(rows[0])
        table = sql.SQL(".").join(sql.Identifier(p) for p in s.table.split("."))
        names = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
        targets, values = names, names
        if s.indexed_column is not None:
            targets = sql.SQL("{}, {}").format(names, sql.Identifier(s.indexed_column))
            values = sql.SQL("{}, false").format(names)
        extra = self._extra_sql(subject, dict(assigned or {}))
        if extra:
            targets = sql.SQL(", ").join([targets, *(sql.Identifier(c) for c in extra)])
            values = sql.SQL(", ").join([values, *extra.values()])
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
                    hash=sql.Identifier(str(s.hash_column)),
                )
            )
            added = cur.rowcount
            await cur.execute(sql.SQL("DROP TABLE pg_temp.{staging}").format(staging=staging))
        return int(added)

    def _extra_sql(self, subject: str | None, assigned: dict[str, Any]) -> dict[str, sql.Composable]:
        """The on_insert and filter columns of the COPY path's ``INSERT … SELECT``, as literals cast
        to each column's type (none for Spark)."""
        out: dict[str, sql.Composable] = {}
        dialect: Any = postgresql.dialect()  # type: ignore[no-untyped-call]
        for name, how in self.spec.on_insert.items():
            type_sql = sql.SQL(self._c(name).type.compile(dialect=dialect))
            if isinstance(how, NowValue):
                out[name] = sql.SQL("now()")
            elif isinstance(how, FixedValue | UserValue):
                value = how.value if isinstance(how, FixedValue) else subject
                out[name] = sql.SQL("CAST({} AS {})").format(sql.Literal(value), type_sql)
        for name, value in assigned.items():
            type_sql = sql.SQL(self._c(name).type.compile(dialect=dialect))
            out[name] = sql.SQL("CAST({} AS {})").format(sql.Literal(value), type_sql)
        return out

    async def _insert_with_side_rows(
        self, conn: AsyncConnection, rows: list[dict[str, Any]], subject: str | None, assigned: dict[str, Any]
    ) -> int:
        """The application's rows and their side rows, in the caller's transaction: the rows are
        inserted (their ids made here or by the column's default), then their side rows with ``ON
        CONFLICT DO NOTHING`` on (store, parent, hash); rows whose side row lost to one already there
        (a concurrent add of the same text, committed) are deleted again."""
        s = self.spec
        parent = str(rows[0]["parent"])
        hashes = [r["hash"] for r in rows]
        # Side rows whose application row is gone (the application deleted it) no longer hold a hash.
        orphaned = (
            delete(SIDE)
            .where(SIDE.c.store == s.table, SIDE.c.parent_id == parent, SIDE.c.content_hash.in_(hashes))
            .where(~exists(select(self.id_column).where(self._side_join())))
        )
        await conn.execute(orphaned)
        fixed = self._set_on_insert(subject) | {c: literal(v, self._c(c).type) for c, v in assigned.items()}
        added = 0
        for start in range(0, len(rows), INSERT_BATCH):
            batch = rows[start : start + INSERT_BATCH]
            values = []
            for r in batch:
                row: dict[str, Any] = dict(fixed)
                row |= {column: r["index"] for column in self.positions}
                if self.generates_ids:
                    made = uuid.uuid4()
                    row[s.id_column] = made if column_kind(self.id_column) == "uuid" else str(made)
                row[s.parent_column] = r["parent"]
                row[s.text_column] = r["content"]
                row[s.vector_column] = self._vector_value(r["vector"])
                for role, column in self.spec.bookkeeping().items():
                    if column is not None:
                        row[column] = r[role] if role != "metadata" else literal(r[role], postgresql.JSONB)
                values.append(row)
            inserted = await conn.execute(
                self.table.insert().values(values).returning(self.id_column, self._c(s.text_column))
            )
            ids = {content: str(chunk_id) for chunk_id, content in inserted.all()}
            side_rows = [
                {
                    "store": s.table,
                    "chunk_id": ids[r["content"]],
                    "parent_id": str(r["parent"]),
                    "content_hash": r["hash"],
                    "embedding_model": r["model"],
                    "source_type": r["source_type"],
                    "source_id": r["source_id"],
                    "metadata": r["metadata"],
                }
                for r in batch
            ]
            claimed = set(
                (
                    await conn.execute(
                        pg_insert(SIDE)
                        .values(side_rows)
                        .on_conflict_do_nothing(index_elements=["store", "parent_id", "content_hash"])
                        .returning(SIDE.c.chunk_id)
                    )
                ).scalars()
            )
            lost = [self._id_of(chunk_id) for chunk_id in ids.values() if chunk_id not in claimed]
            if lost:
                await conn.execute(delete(self.table).where(self.id_column.in_(lost)))
            added += len(claimed)
        return added

    def _vector_value(self, vector: Sequence[float]) -> Any:
        """A vector to insert, as the column's type: a pgvector literal (a ``halfvec`` column casts
        it), or a float array."""
        if self.vector_kind == "array":
            return literal(list(vector), self._c(self.spec.vector_column).type)
        value = literal(list(vector), Vector(self.spec.dimensions))
        return cast(value, HALFVEC(self.spec.dimensions)) if self.vector_kind == "halfvec" else value

    def _id_of(self, text_id: str) -> Any:
        """A chunk id kept as text, as a value of the id column's type."""
        return id_value(self.id_column, "chunk id", text_id)

    def _kind(self, column: str) -> str:
        s = self.spec
        if column == s.vector_column:
            return "vector"
        if column == s.metadata_column:
            return "jsonb"
        if column in self.positions:
            return "int8" if isinstance(self._c(column).type, BigInteger) else "int4"
        if column_kind(self._c(column)) == "uuid":
            return "uuid"
        return "text"

    def row(
        self,
        parent_id: Any,
        content: str,
        sha256: str,
        source_type: str,
        source_id: str,
        vector: Sequence[float],
        model: str,
        metadata: dict[str, Any],
        index: int = 0,
    ) -> dict[str, Any]:
        """One chunk to :meth:`insert`: keyed by the table's columns (Spark's COPY), or by role
        where the side table keeps the bookkeeping."""
        if self.side:
            return {
                "parent": parent_id,
                "content": content,
                "hash": sha256,
                "source_type": source_type,
                "source_id": source_id,
                "vector": vector,
                "model": model,
                "metadata": metadata,
                "index": index,
            }
        s = self.spec
        assert s.hash_column and s.source_type_column and s.source_id_column and s.model_column
        assert s.metadata_column
        return {
            s.parent_column: parent_id,
            s.text_column: content,
            s.hash_column: sha256,
            s.source_type_column: source_type,
            s.source_id_column: source_id,
            s.vector_column: list(vector),
            s.model_column: model,
            s.metadata_column: metadata,
            **dict.fromkeys(self.positions, index),
        }

    async def remove(self, conn: AsyncConnection, parent_id: Any, source_id: str) -> int:
        """Delete an item's chunks (and, with a side table, their side rows); how many there were."""
        s = self.spec
        if self.side:
            gone = (
                (
                    await conn.execute(
                        delete(SIDE)
                        .where(
                            SIDE.c.store == s.table,
                            SIDE.c.parent_id == str(parent_id),
                            SIDE.c.source_id == source_id,
                        )
                        .returning(SIDE.c.chunk_id)
                    )
                )
                .scalars()
                .all()
            )
            if gone:
                ids = [self._id_of(chunk_id) for chunk_id in gone]
                await conn.execute(
                    delete(self.table).where(self.parent_column == parent_id, self.id_column.in_(ids))
                )
            return len(gone)
        statement = (
            delete(self.table)
            .where(self._c(s.parent_column) == parent_id, self._c(s.source_id_column) == source_id)
            .returning(self.id_column)
        )
        return len((await conn.execute(statement)).all())

    def item_chunks(self, parent_id: Any, source_id: Any) -> Select[Any]:
        """The chunks of one item (a parent's chunks of one source id); the two may be columns of
        an enclosing statement (the parent as :meth:`parent_value` gives it)."""
        s = self.spec
        if self.side:
            return (
                select(SIDE.c.chunk_id)
                .select_from(SIDE.join(self.table, self._side_join()))
                .where(SIDE.c.store == s.table, SIDE.c.parent_id == parent_id, SIDE.c.source_id == source_id)
            )
        return select(self.id_column).where(
            self._c(s.parent_column) == parent_id, self._c(s.source_id_column) == source_id
        )

    async def count_items(self, conn: AsyncConnection, items: Select[Any]) -> int:
        """How many chunks are stored under the (parent id, source id) pairs ``items`` selects."""
        s = self.spec
        if self.side:
            pair = tuple_(SIDE.c.parent_id, SIDE.c.source_id)
            statement = (
                select(func.count())
                .select_from(SIDE.join(self.table, self._side_join()))
                .where(SIDE.c.store == s.table, pair.in_(items))
            )
            return int((await conn.execute(statement)).scalar_one())
        pair = tuple_(self._c(s.parent_column), self._c(s.source_id_column))
        statement = select(func.count()).select_from(self.table).where(pair.in_(items))
        return int((await conn.execute(statement)).scalar_one())


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
            elif kind in ("int4", "int8"):
                data = struct.pack(">i" if kind == "int4" else ">q", value)
            else:
                data = str(value).encode()
            out.append(struct.pack(">i", len(data)))
            out.append(data)
    out.append(struct.pack(">h", -1))
    return b"".join(out)
