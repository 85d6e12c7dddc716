"""rowscope behind pgbouncer (issue 13): a loaded ``rowscope serve`` gives exactly the answers it gives
on a direct connection, in pgbouncer's transaction mode with or without ``?pgbouncer=true`` and in
session mode, and refuses statement mode at start.

The load: three users (the demo's alice, bob and carol), each with an API key, call all six tools
over HTTP from concurrent clients in a seeded random order, bounded in calls and in time. Every
answer is checked against what the superuser ``admin`` engine, connected directly to PostgreSQL,
says it must be: the exact rows and fields of each query, the exact count of each count, the exact
list of sparks; every search hit from a spark the user may read; every added item removed again.
Three things are counted apart and must all be zero: errors, wrong answers, and foreign rows (a
row or hit only another user may see)."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import httpx2
import pytest
import sqlalchemy as sa

from rowscope.server import demo
from rowscope.tools.train import item_id_for
from tests.conftest import USERS
from tests.pgbouncer import TOOL_USER, Bouncer, PoolMode, pgbouncer
from tests.servers import ROWSCOPE, child_env, serve

SEED = 13  # the number: the same call sequence every run
CLIENTS = 15  # concurrent clients, five per user
MAX_CALLS = 2000  # calls per load, shared by the clients
MAX_SECONDS = 15.0  # and at most this long
MARKER = "pooler load marker"  # every text the load adds starts with it

EMAILS = {"alice": "alice@example.com", "bob": "bob@example.com", "carol": "carol@example.com"}
SPARK_IDS = {s["name"]: s["id"] for s in demo.SPARKS}
# The spark each user trains (one each may write): only its owner, and for Carol's garden Bob as
# a viewer, may read what is added there.
WRITES = {
    "alice": SPARK_IDS["Alice's Writing Coach"],
    "bob": SPARK_IDS["Bob's Private Journal"],
    "carol": SPARK_IDS["Carol's Garden Planner"],
}

# Each model's scope as the policy means it (rowscope/policies/spark.toml), written here as plain
# SQL for the admin engine: ``:u`` is the user.
SCOPES = {
    "user_profiles": "id = :u",
    "portfolio_items": "user_id = :u",
    "chat_sessions": "user_id = :u",
    "chat_messages": "session_id IN (SELECT id FROM chat_sessions WHERE user_id = :u)",
    "sparks": (
        "(user_id = :u OR id IN (SELECT spark_id FROM spark_members WHERE user_id = :u)"
        " OR (is_shared_with_team AND team_id IN (SELECT team_id FROM team_members WHERE user_id = :u)))"
    ),
}
TABLES = {
    "UserProfile": "user_profiles",
    "PortfolioItem": "portfolio_items",
    "ChatSession": "chat_sessions",
    "ChatMessage": "chat_messages",
    "Spark": "sparks",
}
COLUMNS = {
    "UserProfile": ["id", "email", "display_name", "avatar_url", "bio", "created_at", "updated_at"],
}
TIMESTAMPS = {"created_at", "updated_at"}


@dataclass(frozen=True)
class Query:
    """One ``query_records`` request and the SQL that gives its expected rows."""

    model: str
    select: list[str] | None = None
    where: dict[str, Any] | None = None
    where_sql: str = "true"  # the same filter in SQL, its value as ``:v``
    value: Any = None
    order_by: list[dict[str, str]] | None = None
    take: int | None = None

    def arguments(self) -> dict[str, Any]:
        args: dict[str, Any] = {"model": self.model}
        for name in ("select", "where", "order_by", "take"):
            if getattr(self, name) is not None:
                args[name] = getattr(self, name)
        return args

    def sql(self) -> str:
        table = TABLES[self.model]
        columns = self.select or COLUMNS[self.model]
        order = [
            f"{f} {'ASC NULLS LAST' if d == 'asc' else 'DESC NULLS FIRST'}"
            for item in self.order_by or []
            for f, d in item.items()
        ]
        return (
            f"SELECT {', '.join(columns)} FROM {table} WHERE {SCOPES[table]} AND {self.where_sql} "
            f"ORDER BY {', '.join([*order, 'id ASC'])}"
        )


# Different selects, filters and orders: different statements, as a pooler mixing them up would show.
QUERIES = [
    Query("UserProfile", ["id", "email", "display_name"]),
    Query("UserProfile"),
    Query("PortfolioItem", ["id", "kind", "title", "url"], order_by=[{"title": "asc"}]),
    Query("PortfolioItem", ["id", "title", "description"], {"kind": "link"}, "kind = :v", "link"),
    Query("PortfolioItem", ["id", "title"], take=1),
    Query("ChatSession", ["id", "spark_id", "title"]),
    Query("ChatMessage", ["id", "session_id", "role", "content"], order_by=[{"role": "desc"}]),
    Query("ChatMessage", ["id", "content"], {"role": "assistant"}, "role = :v", "assistant"),
    Query("Spark", ["id", "name", "user_id", "is_shared_with_team"], order_by=[{"name": "asc"}]),
    Query(
        "Spark", ["id", "name", "team_id"], {"is_shared_with_team": True}, "is_shared_with_team = :v", True
    ),
    Query(
        "Spark", ["id", "name", "description"], {"name": {"startsWith": "Bob"}}, "name LIKE :v || '%'", "Bob"
    ),
]
COUNTS = [
    Query("UserProfile"),
    Query("PortfolioItem"),
    Query("PortfolioItem", where={"kind": "link"}, where_sql="kind = :v", value="link"),
    Query("ChatSession"),
    Query(
        "ChatSession",
        where={"title": {"contains": "T", "mode": "insensitive"}},
        where_sql="title ILIKE '%' || :v || '%'",
        value="T",
    ),
    Query("ChatMessage"),
    Query("ChatMessage", where={"role": "user"}, where_sql="role = :v", value="user"),
    Query("Spark"),
    Query("Spark", where={"is_shared_with_team": True}, where_sql="is_shared_with_team = :v", value=True),
]
SEARCHES = [
    "tagline colours",
    "when do tomatoes go out",
    "export button on mobile",
    "editing checklist",
    "cycling trip",
    "clay soil compost",
]


def jsonish(value: Any) -> Any:
    """A value as it comes back in a tool's JSON (timestamps compared as instants)."""
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


@dataclass
class Expected:
    """What each user must get, from the admin engine, before the load starts."""

    rows: dict[tuple[str, int], list[dict[str, Any]]]  # (user, query index) -> rows, all of them
    counts: dict[tuple[str, int], int]
    sparks: dict[str, list[dict[str, Any]]]  # list_sparks, in its order
    readable: dict[str, set[str]]  # spark ids each user may read
    visible: dict[str, set[str]]  # every id (of any model, and chunk) each user may see
    everyone: set[str]  # every id any user may see
    chunks: dict[str, tuple[str, str]]  # the demo's chunk id -> (spark id, content)
    chunk_counts: dict[str, int]  # the demo's chunks each user may search


def expected(admin: sa.Engine) -> Expected:
    rows: dict[tuple[str, int], list[dict[str, Any]]] = {}
    counts: dict[tuple[str, int], int] = {}
    sparks: dict[str, list[dict[str, Any]]] = {}
    readable: dict[str, set[str]] = {}
    visible: dict[str, set[str]] = {}
    with admin.connect() as conn:
        demo_chunks = conn.execute(
            sa.text("SELECT id, spark_id, content FROM spark_embeddings WHERE content NOT LIKE :m || '%'"),
            {"m": MARKER},
        ).all()
        chunks = {str(i): (str(s), c) for i, s, c in demo_chunks}
        for user, uid in USERS.items():
            params = {"u": uid}
            for n, query in enumerate(QUERIES):
                found = conn.execute(sa.text(query.sql()), params | {"v": query.value}).mappings()
                rows[user, n] = [{k: jsonish(v) for k, v in row.items()} for row in found]
            for n, query in enumerate(COUNTS):
                table = TABLES[query.model]
                counts[user, n] = conn.execute(
                    sa.text(f"SELECT count(*) FROM {table} WHERE {SCOPES[table]} AND {query.where_sql}"),
                    params | {"v": query.value},
                ).scalar_one()
            listed = conn.execute(
                sa.text(
                    "SELECT id, name, description, (user_id = :u OR id IN (SELECT spark_id FROM "
                    "spark_members WHERE user_id = :u AND role = 'editor')) AS can_write "
                    f"FROM sparks WHERE {SCOPES['sparks']} ORDER BY name, id"
                ),
                params,
            ).mappings()
            sparks[user] = [{k: jsonish(v) for k, v in row.items()} for row in listed]
            readable[user] = {s["id"] for s in sparks[user]}
            ids = {
                str(i)
                for table, scope in SCOPES.items()
                for (i,) in conn.execute(sa.text(f"SELECT id FROM {table} WHERE {scope}"), params)
            }
            visible[user] = ids | {i for i, (s, _) in chunks.items() if s in readable[user]}
    return Expected(
        rows=rows,
        counts=counts,
        sparks=sparks,
        readable=readable,
        visible=visible,
        everyone=set().union(*visible.values()),
        chunks=chunks,
        chunk_counts={u: sum(s in readable[u] for s, _ in chunks.values()) for u in USERS},
    )


class Wrong(Exception):
    """An answer that is not exactly the expected one."""


class Foreign(Exception):
    """An answer with a row or hit of another user's."""


def check_ids(user: str, ids: list[str], truth: Expected) -> None:
    foreign = [i for i in ids if i in truth.everyone and i not in truth.visible[user]]
    if foreign:
        raise Foreign(f"{user} got {len(foreign)} row(s) of another user: {foreign[:3]}")


def check_query(user: str, n: int, result: dict[str, Any], truth: Expected) -> None:
    query = QUERIES[n]
    got = result["rows"]
    check_ids(user, [str(r.get("id")) for r in got], truth)
    rows = truth.rows[user, n]
    take = query.take or 20
    want = rows[:take]
    for row in got:
        for name in TIMESTAMPS & row.keys():
            row[name] = dt.datetime.fromisoformat(row[name])
    if result["model"] != query.model or got != want:
        raise Wrong(f"{user} {query.arguments()}: {got} instead of {want}")
    if (result["next_cursor"] is not None) != (len(rows) > take):
        raise Wrong(f"{user} {query.arguments()}: next_cursor {result['next_cursor']!r}")


def check_count(user: str, n: int, result: dict[str, Any], truth: Expected) -> None:
    query = COUNTS[n]
    want = truth.counts[user, n]
    if result != {"model": query.model, "count": want}:
        raise Wrong(f"{user} count {query.arguments()}: {result} instead of {want}")


def check_sparks(user: str, result: dict[str, Any], truth: Expected) -> None:
    check_ids(user, [str(s.get("id")) for s in result["sparks"]], truth)
    if result["sparks"] != truth.sparks[user]:
        raise Wrong(f"{user} list_sparks: {result['sparks']} instead of {truth.sparks[user]}")


def check_search(user: str, spark: str | None, top_k: int, result: dict[str, Any], truth: Expected) -> None:
    hits = result["hits"]
    check_ids(user, [str(h.get("id")) for h in hits], truth)
    outside = [h["spark_id"] for h in hits if h["spark_id"] not in truth.readable[user]]
    if outside:
        raise Foreign(f"{user} search found chunks of sparks they may not read: {outside[:3]}")
    demo_chunks = sum(s == spark for s, _ in truth.chunks.values()) if spark else truth.chunk_counts[user]
    # The load's own chunks may be found too (never fewer hits than the demo's chunks give).
    if not min(top_k, demo_chunks) <= len(hits) <= top_k:
        raise Wrong(f"{user} search top_k={top_k} spark={spark}: {len(hits)} hits")
    for hit in hits:
        if spark is not None and hit["spark_id"] != spark:
            raise Wrong(f"{user} search of spark {spark} found a chunk of {hit['spark_id']}")
        known = truth.chunks.get(hit["id"])
        if known is not None and known != (hit["spark_id"], hit["content"]):
            raise Wrong(f"{user} search: chunk {hit['id']} is {known}, answered as {hit}")
        if known is None and not hit["content"].startswith(MARKER):
            raise Wrong(f"{user} search: an unknown chunk {hit}")


@dataclass
class Tally:
    """What the load saw: every call's outcome, and the first few of each kind of failure."""

    outcomes: Counter[str] = field(default_factory=Counter)
    tools: Counter[str] = field(default_factory=Counter)  # calls of each kind
    samples: dict[str, list[str]] = field(default_factory=dict)
    calls: int = 0
    seconds: float = 0.0

    def record(self, kind: str, outcome: str, detail: str = "") -> None:
        self.tools[kind] += 1
        self.outcomes[outcome] += 1
        if outcome != "right" and len(self.samples.setdefault(outcome, [])) < 3:
            self.samples[outcome].append(detail[:400])

    def report(self, label: str) -> str:
        rate = self.calls / self.seconds if self.seconds else 0.0
        counts = ", ".join(f"{k} {self.outcomes[k]}" for k in ("right", "wrong", "error", "foreign"))
        lines = [f"{label}: {self.calls} calls in {self.seconds:.1f} s ({rate:.0f}/s): {counts}"]
        lines.append("  calls: " + ", ".join(f"{kind} {n}" for kind, n in sorted(self.tools.items())))
        lines += [f"  {kind}: {sample}" for kind, found in self.samples.items() for sample in found]
        return "\n".join(lines)


class ToolClient:
    """Raw JSON-RPC ``tools/call`` POSTs to /mcp on one keep-alive connection, as one user."""

    def __init__(self, base_url: str, key: str) -> None:
        self.http = httpx2.AsyncClient(
            base_url=base_url,
            timeout=15,
            headers={
                "Authorization": f"Bearer {key}",
                "Accept": "application/json, text/event-stream",
                "MCP-Protocol-Version": "2025-11-25",
            },
        )
        self.next_id = 0

    async def call(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """The tool's structured result; raises :class:`CallFailed` for anything but a success."""
        self.next_id += 1
        body = {
            "jsonrpc": "2.0",
            "id": self.next_id,
            "method": "tools/call",
            "params": {"name": name, "arguments": arguments},
        }
        response = await self.http.post("/mcp", json=body)
        if response.status_code != 200:
            raise CallFailed(f"{name}: HTTP {response.status_code} {response.text[:200]}")
        message = response.json()
        if "error" in message:
            raise CallFailed(f"{name}: JSON-RPC error {message['error']}")
        result = message["result"]
        if result.get("isError"):
            raise CallFailed(f"{name}: tool error {result['content'][0]['text']}")
        return dict(result["structuredContent"])

    async def close(self) -> None:
        await self.http.aclose()


class CallFailed(Exception):
    """A call answered with an error (HTTP, JSON-RPC, or the tool's)."""


async def run_load(
    base_url: str, keys: dict[str, str], truth: Expected, label: str, *, max_calls: int = MAX_CALLS
) -> Tally:
    """CLIENTS concurrent clients, five per user, each calling the six tools in its own seeded
    random order until ``max_calls`` calls are made between them or MAX_SECONDS have passed; each
    adds only to its user's spark and removes what it added before it stops."""
    tally = Tally()
    remaining = max_calls
    deadline = time.monotonic() + MAX_SECONDS

    async def client(index: int) -> None:
        nonlocal remaining
        user = list(USERS)[index % len(USERS)]
        rng = random.Random(f"{SEED}-{label}-{index}")
        tool = ToolClient(base_url, keys[user])
        spark = str(WRITES[user])
        added: list[str] = []

        async def one(kind: str) -> None:
            try:
                if kind == "query":
                    n = rng.randrange(len(QUERIES))
                    check_query(user, n, await tool.call("query_records", QUERIES[n].arguments()), truth)
                elif kind == "count":
                    n = rng.randrange(len(COUNTS))
                    check_count(user, n, await tool.call("count_records", COUNTS[n].arguments()), truth)
                elif kind == "sparks":
                    check_sparks(user, await tool.call("list_sparks", {}), truth)
                elif kind == "search":
                    within = rng.choice([None, *sorted(truth.readable[user])])
                    top_k = rng.randint(1, 4)
                    args: dict[str, Any] = {"query": rng.choice(SEARCHES), "top_k": top_k}
                    if within is not None:
                        args["spark_id"] = within
                    check_search(user, within, top_k, await tool.call("search_knowledge", args), truth)
                elif kind == "add":
                    content = (
                        f"{MARKER} {label} {user} {index}-{rng.getrandbits(64):016x}: {rng.choice(SEARCHES)}"
                    )
                    result = await tool.call("add_training_content", {"spark_id": spark, "content": content})
                    item = str(item_id_for(uuid.UUID(spark), content))
                    want: dict[str, Any] = {"item_id": item, "spark_id": spark, "chunks_total": 1}
                    want |= {"chunks_added": 1, "chunks_skipped_duplicate": 0}
                    if {k: result.get(k) for k in want} != want:
                        raise Wrong(f"{user} add: {result} instead of {want}")
                    added.append(item)
                else:  # remove the oldest item this client added
                    item = added.pop(0)
                    result = await tool.call("remove_training_content", {"spark_id": spark, "item_id": item})
                    if result != {"item_id": item, "spark_id": spark, "chunks_removed": 1}:
                        raise Wrong(f"{user} remove {item}: {result}")
            except CallFailed as exc:
                tally.record(kind, "error", str(exc))
            except Foreign as exc:
                tally.record(kind, "foreign", str(exc))
            except (Wrong, KeyError, TypeError, ValueError, AttributeError) as exc:
                tally.record(kind, "wrong", f"{type(exc).__name__}: {exc}")
            except httpx2.HTTPError as exc:
                tally.record(kind, "error", f"{type(exc).__name__}: {exc}")
            else:
                tally.record(kind, "right")

        kinds = ["query"] * 9 + ["count"] * 5 + ["sparks"] * 2 + ["search"] * 2 + ["add"]
        try:
            while remaining > 0 and time.monotonic() < deadline:
                remaining -= 1
                kind = rng.choice(kinds)
                if len(added) > 2 or (added and kind == "add" and rng.random() < 0.5):
                    kind = "remove"
                await one(kind)
            while added:  # leave the data as it was found
                await one("remove")
        finally:
            await tool.close()

    started = time.monotonic()
    await asyncio.gather(*(client(i) for i in range(CLIENTS)))
    tally.seconds = time.monotonic() - started
    tally.calls = sum(tally.outcomes.values())
    return tally


@pytest.fixture(scope="module")
def keys(make_api_key: Callable[..., str]) -> dict[str, str]:
    """An API key for each of the demo's users; deleted at the end of the session."""
    return {user: make_api_key(email, f"test_pooler {user}") for user, email in EMAILS.items()}


@pytest.fixture
def truth(admin: sa.Engine) -> Iterator[Expected]:
    """What every answer must be, from the admin engine on a direct connection; at the end, any
    chunk the load added and could not remove is deleted."""
    yield expected(admin)
    with admin.begin() as conn:
        conn.execute(sa.text("DELETE FROM spark_embeddings WHERE content LIKE :m || '%'"), {"m": MARKER})


def assert_exact(tally: Tally, label: str, admin: sa.Engine) -> None:
    """No error, no wrong answer, no foreign row, and nothing the load added left behind."""
    with admin.connect() as conn:
        left = conn.execute(
            sa.text("SELECT count(*) FROM spark_embeddings WHERE content LIKE :m || '%'"), {"m": MARKER}
        ).scalar_one()
    report = tally.report(label) + f"\n  chunks the load added and left: {left}"
    print(report)
    assert tally.calls >= 200, report
    failures = [tally.outcomes[kind] for kind in ("error", "wrong", "foreign")]
    assert [*failures, left] == [0, 0, 0, 0], report


# pgbouncer's server connections per database and user. In transaction mode a small pool, so that
# the server connections really pass between rowscope's client connections. In session mode a
# server connection stays with one client connection until it closes, so the pool must hold every
# connection rowscope keeps open as one role (its SQLAlchemy pool with overflow and its read pool:
# up to 3 x ROWSCOPE_POOL_SIZE as rowscope_tool); with 5, calls waited out query_wait_timeout.
POOL_SIZES: dict[PoolMode, int] = {"transaction": 5, "session": 40, "statement": 5}

LOADS = [
    pytest.param("transaction", False, id="transaction-without-flag"),
    pytest.param("transaction", True, id="transaction-with-pgbouncer-true"),
    pytest.param("session", False, id="session"),
]


@pytest.mark.slow
@pytest.mark.anyio
@pytest.mark.parametrize(("pool_mode", "flag"), LOADS)
async def test_a_loaded_server_behind_pgbouncer_answers_exactly_as_the_database_says(
    database_url: str,
    admin: sa.Engine,
    keys: dict[str, str],
    truth: Expected,
    tmp_path: Path,
    pool_mode: PoolMode,
    flag: bool,
) -> None:
    """Issue 13's requirement: behind pgbouncer (transaction mode, with or without ?pgbouncer=true,
    or session mode), three users' concurrent calls of all six tools get no error, no wrong answer
    and no row of another user, the tool transactions logged in as rowscope_tool."""
    label = f"{pool_mode}{' ?pgbouncer=true' if flag else ''}"
    with (
        pgbouncer(database_url, tmp_path, pool_mode, pool_size=POOL_SIZES[pool_mode]) as bouncer,
        serve(bouncer.url(pgbouncer_flag=flag), tmp_path) as base_url,
    ):
        tally = await run_load(base_url, keys, truth, label)
        pools = bouncer.pools()
    assert_exact(tally, label, admin)
    # The tool transactions logged in through pgbouncer as rowscope_tool, within its pool; in
    # transaction mode more of rowscope's connections than there were server connections for them.
    assert TOOL_USER in pools, pools
    tool = pools[TOOL_USER]
    print(f"  pgbouncer's {TOOL_USER} pool: {tool['cl_active']} clients, {Bouncer.servers(tool)} servers")
    assert Bouncer.servers(tool) <= POOL_SIZES[pool_mode], tool
    if pool_mode == "transaction":
        assert tool["cl_active"] > Bouncer.servers(tool), tool


@pytest.mark.slow
@pytest.mark.anyio
async def test_the_same_load_on_a_direct_connection_with_two_workers_answers_exactly(
    database_url: str, admin: sa.Engine, keys: dict[str, str], truth: Expected, tmp_path: Path
) -> None:
    """Issue 13's requirement: the same load, straight to PostgreSQL (statements prepared) with
    ``rowscope serve --workers 2``, gets no error, no wrong answer and no row of another user."""
    with serve(database_url, tmp_path, args=["--workers", "2"]) as base_url:
        tally = await run_load(base_url, keys, truth, "direct --workers 2")
    assert_exact(tally, "direct --workers 2", admin)


@pytest.fixture
def supabase_logins(admin: sa.Engine) -> Iterator[tuple[str, str]]:
    """Login roles named as Supabase's pooler (Supavisor) wants its user names, ``<role>.<project
    ref>``, for :func:`test_supabase_pooler_url_form`. Supavisor takes the ref off before it logs in
    to PostgreSQL; pgbouncer cannot, so here the server has roles of those names that stand for
    the real ones: the owner's a superuser like the test's owner, the tool's a plain member of
    rowscope_tool (so what binds rowscope_tool binds it). Dropped at the end, and rowscope_tool's
    password, which the test's ``rowscope migrate`` sets, taken away again."""
    ref = f"ref{uuid.uuid4().hex[:12]}"
    owner, tool = f"postgres.{ref}", f"{TOOL_USER}.{ref}"
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE ROLE "{owner}" LOGIN SUPERUSER'))
        conn.execute(sa.text(f'CREATE ROLE "{tool}" LOGIN IN ROLE {TOOL_USER}'))
    try:
        yield owner, tool
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"ALTER ROLE {TOOL_USER} PASSWORD NULL"))
            for role in (tool, owner):
                conn.execute(sa.text(f'DROP ROLE "{role}"'))


@pytest.mark.slow
@pytest.mark.anyio
async def test_supabase_pooler_url_form(
    database_url: str,
    admin: sa.Engine,
    keys: dict[str, str],
    truth: Expected,
    tmp_path: Path,
    supabase_logins: tuple[str, str],
) -> None:
    """The README's Supabase example, its URL form through pgbouncer in transaction mode: user
    names ``postgres.<ref>`` and ``rowscope_tool.<ref>``, passwords that need quoting, port and no
    ``?pgbouncer=true``. ``rowscope migrate`` gives rowscope_tool the tool URL's password as a SCRAM
    verifier, and a loaded ``rowscope serve`` answers exactly, its tool transactions logged in under
    the tool URL's user name."""
    owner, tool = supabase_logins
    tool_password = "t00l p@ss/wörd:%"  # everything a URL must quote
    with pgbouncer(database_url, tmp_path, "transaction", users=(owner, tool)) as bouncer:
        owner_url = bouncer.url(user=owner).replace("@", ":owner%20secret@", 1)
        tool_url = bouncer.url(user=tool).replace("@", f":{quote(tool_password, safe='')}@", 1)
        env = {"ROWSCOPE_TOOL_DATABASE_URL": tool_url}
        with anyio.fail_after(120):
            migrated = await anyio.run_process(
                [ROWSCOPE, "migrate"], env=child_env(DATABASE_URL=owner_url, **env), check=False
            )
        assert migrated.returncode == 0, migrated.stderr.decode()
        assert f"{TOOL_USER} has the password" in migrated.stdout.decode(), migrated.stdout
        with serve(owner_url, tmp_path, **env) as base_url:
            tally = await run_load(base_url, keys, truth, "supabase url form", max_calls=300)
            pools = bouncer.pools()
    with admin.connect() as conn:
        verifier = conn.execute(
            sa.text("SELECT rolpassword FROM pg_authid WHERE rolname = :r"), {"r": TOOL_USER}
        ).scalar_one()
    assert verifier.startswith("SCRAM-SHA-256$4096:"), verifier[:20]
    assert tool_password not in verifier
    assert_exact(tally, "supabase url form", admin)
    assert tool in pools and owner in pools, pools
    assert TOOL_USER not in pools, pools  # every tool transaction came as the tool URL's user


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["serve", "--port", "0"], id="serve"),
        pytest.param(["stdio", "--user", "alice@example.com"], id="stdio"),
    ],
)
def test_statement_mode_is_refused_at_start_in_one_line(
    database_url: str, tmp_path: Path, command: list[str]
) -> None:
    """Issue 13's requirement: behind pgbouncer in statement mode, ``rowscope serve`` and ``rowscope
    stdio`` exit non-zero at start with one line naming statement mode, and no traceback."""
    with pgbouncer(database_url, tmp_path, "statement") as bouncer:
        done = subprocess.run(
            [ROWSCOPE, *command],
            env=child_env(DATABASE_URL=bouncer.url()),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert lines and "statement" in lines[-1], done.stderr
    assert "pooler" in lines[-1] or "pgbouncer" in lines[-1], done.stderr
