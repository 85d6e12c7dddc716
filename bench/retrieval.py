"""Question 2: filtered vector search — recall@10 against exact search, and latency, per class of
readable-set size.

A synthetic but clustered corpus (fixed seed): 100,000 chunks of 1536-d vectors over 1,000 sparks
and 200 users with owner, member and team-shared access. Each spark draws its chunks from three of
256 cluster centres. Users fall in three classes by how much they may read:

* tiny   — members of exactly one spark (~0.1% of the chunks);
* medium — a few sparks of their own and ~25 memberships (~3%);
* large  — members of the team whose shared sparks hold a third of all chunks (~33%).

Queries are noisy copies of a cluster centre: 80% from a cluster the user's sparks use, 20% from
any cluster. The search measured is rowscope's own (``KnowledgeStore.search`` in a user
transaction, under row-level security, exactly as ``search_knowledge`` runs it); exact top-10 is
brute force in numpy over the user's readable chunks (the access rules re-evaluated in Python and
checked against the database). Recall@10 counts a returned chunk as correct when its true distance
is within the true 10th-nearest distance (ties do not penalise). Latency: wall time of the search
call (all its statements, round trips included), and the database's own execution time of those
statements (``EXPLAIN (ANALYZE, TIMING OFF)`` replayed in the same transaction).

Loading uses binary COPY into a dedicated database of a scratch cluster; the HNSW index (the
migration's, as declared in rowscope/db/models.py) is built after the load. With ``--compare`` the
previous migrations' index (full-precision HNSW, m=16, ef_construction=64, cosine) is built too, so
the compared knowledge.py searches with the index it was written for.

With ``--backlog N`` (default 2,000; 0 skips it) the search is measured a second time with N chunks
of the large class's sparks not yet indexed (migration 0007: out of the partial HNSW index, scored
exactly by search until the background indexer reaches them), and the indexer's drain of that
backlog into the 100k graph is timed. The backlog is made by clearing the flag on loaded rows, then
``VACUUM`` removes their old entries from the graph, which leaves it as if they had never been in it.

    .venv/bin/python -m bench.retrieval [--smoke | --million] [--backlog N]
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import struct
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from bench.common import (
    Report,
    database_exists,
    finish,
    migrated_database,
    parser,
    percentile,
    pg_version,
    scratch_cluster,
)

DIM = 1536
CLUSTERS = 256
NOISE = 0.8
SEED = 20261125
MODEL = "bench-synthetic-1536"
TOP_K = 10


@dataclass
class World:
    users: list[uuid.UUID]
    teams: list[uuid.UUID]
    team_of: dict[int, int]  # user index -> team index
    spark_owner: list[int]
    spark_team: list[int | None]
    spark_shared: list[bool]
    spark_sizes: list[int]
    spark_clusters: np.ndarray
    members: dict[int, set[int]]  # user index -> spark indices
    classes: dict[str, list[int]]
    centres: np.ndarray
    seed: int
    spark_ids: list[uuid.UUID] = field(default_factory=list)

    def readable(self, u: int) -> list[int]:
        team = self.team_of.get(u)
        return [
            s
            for s in range(len(self.spark_owner))
            if self.spark_owner[s] == u
            or s in self.members.get(u, ())
            or (self.spark_shared[s] and team is not None and self.spark_team[s] == team)
        ]

    def vectors(self, s: int) -> np.ndarray:
        """Spark ``s``'s chunk vectors, regenerated deterministically (so nothing big is kept)."""
        rng = np.random.default_rng([self.seed, 1, s])
        n = self.spark_sizes[s]
        which = self.spark_clusters[s][rng.integers(0, 3, n)]
        noise = rng.standard_normal((n, DIM), dtype=np.float32) * np.float32(NOISE / np.sqrt(DIM))
        v = self.centres[which] + noise
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        out: np.ndarray = v.astype(np.float32)
        return out


def chunk_id(s: int, j: int) -> uuid.UUID:
    return uuid.UUID(int=(0xB0 << 120) | (s << 32) | j)


def build_world(n_chunks: int, n_sparks: int, n_users: int, seed: int = SEED) -> World:
    rng = np.random.default_rng([seed, 0])
    centres = rng.standard_normal((CLUSTERS, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    n_teams = max(3, n_users // 20)
    big_team = list(range(n_users // 5))
    tiny = list(range(n_users - n_users // 10, n_users))
    medium = list(range(n_users * 8 // 10, n_users - n_users // 10))
    teamed = list(range(n_users // 5, n_users * 8 // 10))
    team_of = {u: 0 for u in big_team}
    for i, u in enumerate(teamed):
        team_of[u] = 1 + i % (n_teams - 1)
    owners_pool = [*teamed, *medium]
    shared_count = n_sparks // 3
    spark_owner: list[int] = []
    spark_team: list[int | None] = []
    spark_shared: list[bool] = []
    for s in range(n_sparks):
        if s < shared_count:
            spark_owner.append(int(rng.choice(big_team)))
            spark_team.append(0)
            spark_shared.append(True)
        else:
            owner = int(rng.choice(owners_pool))
            spark_owner.append(owner)
            spark_team.append(team_of.get(owner))
            spark_shared.append(owner in team_of and bool(rng.random() < 0.3))
    sizes = rng.multinomial(n_chunks, [1 / n_sparks] * n_sparks).tolist()
    rest = list(range(shared_count, n_sparks))
    members: dict[int, set[int]] = {}
    for u in range(n_users):
        if u in tiny:
            members[u] = {int(rng.choice(rest))}
            continue
        k = int(rng.integers(0, 4)) + (max(1, n_sparks // 40) if u in medium else 0)
        members[u] = {int(x) for x in rng.choice(rest, size=min(k, len(rest)), replace=False)}
    return World(
        users=[uuid.UUID(int=(0xB1 << 120) | u) for u in range(n_users)],
        teams=[uuid.UUID(int=(0xB2 << 120) | t) for t in range(n_teams)],
        team_of=team_of,
        spark_owner=spark_owner,
        spark_team=spark_team,
        spark_shared=spark_shared,
        spark_sizes=sizes,
        spark_clusters=rng.integers(0, CLUSTERS, (n_sparks, 3)),
        members=members,
        classes={"tiny": tiny, "medium": medium, "large": big_team},
        centres=centres,
        seed=seed,
        spark_ids=[uuid.UUID(int=(0xB3 << 120) | s) for s in range(n_sparks)],
    )


def _copy_rows(world: World, s: int) -> Iterator[bytes]:
    spark = world.spark_ids[s].bytes
    vectors = world.vectors(s).astype(">f4")
    head = struct.pack(">hh", DIM, 0)
    model = MODEL.encode()
    for j in range(world.spark_sizes[s]):
        content = f"synthetic chunk {s}-{j}".encode()
        digest = hashlib.sha256(content).hexdigest().encode()
        vec = head + vectors[j].tobytes()
        yield b"".join(
            (
                struct.pack(">hi", 8, 16),
                chunk_id(s, j).bytes,
                struct.pack(">i", 16),
                spark,
                struct.pack(">i", len(content)),
                content,
                struct.pack(">i", len(digest)),
                digest,
                struct.pack(">i", 6),
                b"manual",
                struct.pack(">i", 5),
                b"bench",
                struct.pack(">i", len(vec)),
                vec,
                struct.pack(">i", len(model)),
                model,
            )
        )


class PeakRss:
    """Samples the summed resident memory of the cluster's processes until stopped."""

    def __init__(self, postmaster_pid: int) -> None:
        import psutil  # type: ignore[import-untyped]

        self.root = psutil.Process(postmaster_pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        total = 0
        for p in [self.root, *self.root.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except Exception:  # noqa: S112  (a backend that just exited)
                continue
        return total

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, self._sample())

    def __enter__(self) -> PeakRss:
        self.peak = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def _migration_index() -> tuple[str, str]:
    from sqlalchemy.dialects import postgresql
    from sqlalchemy.schema import CreateIndex

    from rowscope.db.models import SparkEmbedding

    (index,) = [i for i in SparkEmbedding.__table__.indexes if i.dialect_options["postgresql"]["using"]]
    return str(CreateIndex(index).compile(dialect=postgresql.dialect())), str(index.name)


# The approximate-search index as the models (and so the newest migration) declare it.
MIGRATION_INDEX, MIGRATION_INDEX_NAME = _migration_index()
# The index of migrations 0001-0005, for the knowledge.py of that time (``--compare``).
PREVIOUS_INDEX_NAME = "ix_spark_embeddings_embedding_hnsw"
PREVIOUS_INDEX = (
    f"CREATE INDEX IF NOT EXISTS {PREVIOUS_INDEX_NAME} ON spark_embeddings "
    "USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64)"
)


def hnsw_indexes(conn: psycopg.Connection[Any]) -> list[str]:
    rows = conn.execute(
        "SELECT indexname FROM pg_indexes "
        "WHERE tablename = 'spark_embeddings' AND indexdef LIKE '%USING hnsw%'"
    ).fetchall()
    return [r[0] for r in rows]


def load(dsn: str, world: World, report: Report, pgdata: Path, *, million: bool) -> None:
    n = sum(world.spark_sizes)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name in hnsw_indexes(conn):
            conn.execute(f'DROP INDEX "{name}"')
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO user_profiles (id, email) VALUES (%s, %s)",
                [(u, f"bench{i}@example.com") for i, u in enumerate(world.users)],
            )
            cur.executemany(
                "INSERT INTO teams (id, name) VALUES (%s, %s)",
                [(t, f"team {i}") for i, t in enumerate(world.teams)],
            )
            cur.executemany(
                "INSERT INTO team_members (team_id, user_id) VALUES (%s, %s)",
                [(world.teams[t], world.users[u]) for u, t in world.team_of.items()],
            )
            cur.executemany(
                "INSERT INTO sparks (id, user_id, team_id, is_shared_with_team, name) "
                "VALUES (%s, %s, %s, %s, %s)",
                [
                    (
                        world.spark_ids[s],
                        world.users[world.spark_owner[s]],
                        None if world.spark_team[s] is None else world.teams[world.spark_team[s]],  # type: ignore[index]
                        world.spark_shared[s],
                        f"spark {s}",
                    )
                    for s in range(len(world.spark_ids))
                ],
            )
            cur.executemany(
                "INSERT INTO spark_members (spark_id, user_id, role) VALUES (%s, %s, 'viewer')",
                [(world.spark_ids[s], world.users[u]) for u, ss in world.members.items() for s in ss],
            )
        started = time.perf_counter()
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY spark_embeddings (id, spark_id, content, content_hash, source_type, source_id, "
                "embedding, embedding_model) FROM STDIN (FORMAT BINARY)"
            ) as copy,
        ):
            copy.write(b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0))
            buffer: list[bytes] = []
            for s in range(len(world.spark_ids)):
                buffer.extend(_copy_rows(world, s))
                if len(buffer) >= 2000:
                    copy.write(b"".join(buffer))
                    buffer.clear()
            copy.write(b"".join(buffer) + struct.pack(">h", -1))
        loaded = time.perf_counter() - started
        report.add("load (binary COPY)", n / loaded, "chunks/s", note=f"{n:,} chunks in {loaded:.1f} s")
        conn.execute(f"SET maintenance_work_mem = '{'12GB' if million else '2GB'}'")
        conn.execute("SET max_parallel_maintenance_workers = 2")
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
        with PeakRss(pid) as rss:
            started = time.perf_counter()
            conn.execute(MIGRATION_INDEX)
            built = time.perf_counter() - started
        conn.execute("VACUUM ANALYZE spark_embeddings")
        sizes = conn.execute(
            "SELECT pg_relation_size(%s::regclass), pg_total_relation_size('spark_embeddings')",
            (MIGRATION_INDEX_NAME,),
        ).fetchone()
        assert sizes is not None
    report.add("HNSW index build", built, "s", note=f"{n:,} chunks")
    report.add("HNSW index size", sizes[0] / 2**20, "MiB")
    report.add("table + indexes size", sizes[1] / 2**20, "MiB")
    report.add("PostgreSQL RSS peak during build", rss.peak / 2**20, "MiB", note="sum over backends")


@dataclass
class Measured:
    recall: list[float] = field(default_factory=list)
    off_topic: list[bool] = field(default_factory=list)
    wall_ms: list[float] = field(default_factory=list)
    db_ms: list[float] = field(default_factory=list)
    readable_chunks: list[int] = field(default_factory=list)


def store_classes(compare: Path | None) -> dict[str, Any]:
    """rowscope's KnowledgeStore, and optionally another implementation (a file) to compare with."""
    from rowscope.db.knowledge import KnowledgeStore

    classes: dict[str, Any] = {"rowscope": KnowledgeStore}
    if compare is not None:
        spec = importlib.util.spec_from_file_location("knowledge_compared", compare)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
        classes[compare.stem] = module.KnowledgeStore
    return classes


async def measure(
    url: str, world: World, queries_per_user: int, users_per_class: int, variants: dict[str, Any]
) -> dict[tuple[str, str], Measured]:
    from sqlalchemy import event

    from rowscope.server.app import build_runtime
    from rowscope.server.settings import Settings

    runtime = build_runtime(Settings(database_url=url, openai_api_key=None, pool_size=2), url)
    await runtime.start()
    stores = {name: cls(runtime.policy) for name, cls in variants.items()}
    captured: list[tuple[str, Any]] = []

    def capture(_c: Any, _cur: Any, statement: str, parameters: Any, _ctx: Any, _many: bool) -> None:
        captured.append((statement, parameters))

    event.listen(runtime.database.tool_engine.sync_engine, "before_cursor_execute", capture)
    rng = np.random.default_rng([world.seed, 2])
    out: dict[tuple[str, str], Measured] = {}
    try:
        for name, users in world.classes.items():
            for variant in stores:
                out[variant, name] = Measured()
            for u in users[:users_per_class]:
                sparks = world.readable(u)
                matrix = np.concatenate([world.vectors(s) for s in sparks])
                ids = [chunk_id(s, j) for s in sparks for j in range(world.spark_sizes[s])]
                index = {cid: i for i, cid in enumerate(ids)}
                for variant in stores:
                    out[variant, name].readable_chunks.append(len(ids))
                own_clusters = np.unique(world.spark_clusters[sparks].ravel())
                async with runtime.database.user_transaction(world.users[u]) as conn:
                    visible = await conn.exec_driver_sql(
                        "SELECT count(*) FROM spark_embeddings"
                    )  # RLS: what the database lets this user read
                    assert visible.scalar_one() == len(ids), f"access rules disagree for user {u}"
                for q in range(queries_per_user + 2):
                    off_topic = rng.random() >= 0.8
                    pool = np.arange(CLUSTERS) if off_topic else own_clusters
                    chosen = int(rng.choice(pool))
                    off_topic = chosen not in own_clusters  # no readable chunk is near this query
                    centre = world.centres[chosen]
                    query = centre + rng.standard_normal(DIM).astype(np.float32) * np.float32(
                        NOISE / np.sqrt(DIM)
                    )
                    query /= np.linalg.norm(query)
                    distances = 1 - matrix @ query
                    kth = np.partition(distances, min(TOP_K, len(ids)) - 1)[min(TOP_K, len(ids)) - 1]
                    for variant, store in stores.items():
                        m = out[variant, name]
                        async with runtime.database.user_transaction(world.users[u]) as conn:
                            captured.clear()
                            started = time.perf_counter()
                            hits = await store.search(
                                conn,
                                world.users[u],
                                query.tolist(),
                                model=MODEL,
                                top_k=TOP_K,
                                parent_id=None,
                                source_types=None,
                            )
                            wall = (time.perf_counter() - started) * 1000
                            db = 0.0
                            for statement, params in list(captured):
                                plan = (
                                    await conn.exec_driver_sql(
                                        "EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) " + statement, params
                                    )
                                ).scalar_one()
                                plan = json.loads(plan) if isinstance(plan, str) else plan
                                db += float(plan[0]["Execution Time"])
                        if q < 2:
                            continue  # warm-up
                        good = sum(1 for h in hits if h.id in index and distances[index[h.id]] <= kth + 1e-6)
                        m.recall.append(good / min(TOP_K, len(ids)))
                        m.off_topic.append(off_topic)
                        m.wall_ms.append(wall)
                        m.db_ms.append(db)
    finally:
        await runtime.close()
    return out


def make_backlog(dsn: str, world: World, count: int) -> int:
    """Clear the flag of ``count`` chunks of the sparks shared with the large class's team (so
    their searches meet the whole backlog); VACUUM drops their entries from the HNSW graph."""
    shared = [world.spark_ids[s] for s in range(len(world.spark_ids)) if world.spark_shared[s]]
    with psycopg.connect(dsn, autocommit=True) as conn:
        flipped = conn.execute(
            "UPDATE spark_embeddings SET indexed = false WHERE id IN (SELECT id FROM spark_embeddings "
            "WHERE indexed AND spark_id = ANY(%s) ORDER BY md5(id::text) LIMIT %s)",
            (shared, count),
        ).rowcount
        conn.execute("VACUUM ANALYZE spark_embeddings")
    return int(flipped)


async def drain_backlog(url: str) -> tuple[float, int]:
    """Seconds for one background indexer to index the whole backlog, and how many chunks."""
    from rowscope.db.engine import Database, DatabaseUrl
    from rowscope.db.indexer import Indexer
    from rowscope.db.policy import load_policy
    from rowscope.server.settings import Settings

    spec = load_policy(None).knowledge
    assert spec is not None
    database = Database(DatabaseUrl.parse(url), pool_size=1)
    try:
        started = time.perf_counter()
        indexed = await Indexer(database, spec, batch_size=Settings().index_batch_size).drain()
        return time.perf_counter() - started, indexed
    finally:
        await database.dispose()


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--million", action="store_true", help="1,000,000 chunks (long: minutes to hours)")
    p.add_argument("--queries", type=int, default=40, help="queries per user")
    p.add_argument("--users", type=int, default=5, help="users per class")
    p.add_argument(
        "--compare",
        type=Path,
        help="also measure the KnowledgeStore in this file (e.g. the previous knowledge.py), same data",
    )
    p.add_argument(
        "--backlog",
        type=int,
        default=None,
        help="chunks left unindexed for a second measurement (default 2,000; smoke 100; 0: skip)",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        help="keep the cluster here and reuse its loaded database next time (default: a temporary one)",
    )
    args = p.parse_args(argv)
    if args.smoke:
        n_chunks, n_sparks, n_users, queries, users = 3_000, 60, 30, 3, 2
    elif args.million:
        n_chunks, n_sparks, n_users, queries, users = 1_000_000, 1_000, 200, args.queries, args.users
    else:
        n_chunks, n_sparks, n_users, queries, users = 100_000, 1_000, 200, args.queries, args.users
    name = "retrieval-1m" if args.million else "retrieval"
    report = Report(name, args.smoke)
    world = build_world(n_chunks, n_sparks, n_users)
    report.notes.append(
        f"{n_chunks:,} chunks of {DIM}-d vectors, {n_sparks:,} sparks, {n_users} users, "
        f"{CLUSTERS} clusters; {users} users x {queries} queries per class"
    )
    with scratch_cluster("retrieval", keep=args.data_dir) as server:
        database = f"bench_retrieval_{n_chunks}"
        fresh = not database_exists(server.libpq_dsn("postgres"), database)
        url = migrated_database(server, database)
        dsn = server.libpq_dsn(database)
        report.notes.append(pg_version(dsn))
        if fresh:
            load(dsn, world, report, server.pgdata, million=args.million)
        else:
            report.notes.append(f"reused the loaded database in {args.data_dir}")
        with psycopg.connect(dsn, autocommit=True) as conn:
            if args.compare is not None and PREVIOUS_INDEX_NAME not in hnsw_indexes(conn):
                conn.execute(f"SET maintenance_work_mem = '{'12GB' if args.million else '2GB'}'")
                conn.execute("SET max_parallel_maintenance_workers = 2")
                started = time.perf_counter()
                conn.execute(PREVIOUS_INDEX)
                report.add(
                    "previous HNSW index build (vector m=16 ef=64, for --compare)",
                    time.perf_counter() - started,
                    "s",
                )
                conn.execute("ANALYZE spark_embeddings")
            report.notes.append("HNSW indexes: " + ", ".join(hnsw_indexes(conn)))
        results = asyncio.run(measure(url, world, queries, users, store_classes(args.compare)))
        add_figures(report, results, n_chunks, "")
        backlog = args.backlog if args.backlog is not None else (100 if args.smoke else 2_000)
        if backlog:
            flipped = make_backlog(dsn, world, backlog)
            with_backlog = asyncio.run(measure(url, world, queries, users, store_classes(None)))
            add_figures(report, with_backlog, n_chunks, f" [{flipped:,}-chunk backlog]")
            seconds, indexed = asyncio.run(drain_backlog(url))
            report.add(
                f"background indexing of the backlog into the {n_chunks:,}-chunk graph",
                indexed / seconds,
                "chunks/s",
                note=f"{indexed:,} chunks in {seconds:.1f} s, one indexer",
            )
    return finish(report, args.out)


def add_figures(report: Report, results: dict[tuple[str, str], Measured], n_chunks: int, suffix: str) -> None:
    for (variant, cls), m in results.items():
        share = np.mean(m.readable_chunks) / n_chunks
        who = ("" if variant == "rowscope" else f" [{variant}]") + suffix
        recall = float(np.mean(m.recall))
        report.add(
            f"recall@10, {cls} ({share:.1%} readable){who}",
            recall,
            "",
            baseline="exact (numpy)",
            baseline_value=1.0,
            target=">= 0.98",
            met=recall >= 0.98,
        )
        report.add(f"min recall@10, {cls}{who}", float(np.min(m.recall)), "")
        on = [r for r, off in zip(m.recall, m.off_topic, strict=True) if not off]
        off = [r for r, off in zip(m.recall, m.off_topic, strict=True) if off]
        report.add(f"recall@10 on-topic queries, {cls}{who}", float(np.mean(on)) if on else None, "")
        report.add(f"recall@10 off-topic queries, {cls}{who}", float(np.mean(off)) if off else None, "")
        report.add(f"p50 DB time, {cls}{who}", percentile(m.db_ms, 50), "ms")
        p99 = percentile(m.db_ms, 99)
        report.add(f"p99 DB time, {cls}{who}", p99, "ms", target="<= 30 ms", met=p99 <= 30)
        report.add(f"p50 search call, {cls}{who}", percentile(m.wall_ms, 50), "ms")
        report.add(f"p99 search call, {cls}{who}", percentile(m.wall_ms, 99), "ms")


if __name__ == "__main__":
    raise SystemExit(main())
