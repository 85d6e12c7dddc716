"""Isolation: every principal sees exactly their own rows, through lock 1 (the compiled scope, via
the real MCP tools) and through lock 2 (row-level security, with the compiled scope left out).

Expected rows never come from the policy compiler: they are written out from the demo data and
checked against a superuser SQL query that states each rule in plain SQL below.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from mcp.client import Client
from sqlalchemy.exc import DBAPIError

from rowscope.db import reads
from rowscope.db.engine import TOOL_ROLE, Database, DatabaseUrl
from rowscope.server import demo
from rowscope.server.app import build_mcp, build_runtime
from rowscope.server.runtime import Runtime
from rowscope.server.settings import Settings
from tests.conftest import USERS, structured

pytestmark = pytest.mark.anyio

TEAM = demo.TEAM
NIL = "00000000-0000-0000-0000-000000000000"


def spark_id(name: str) -> uuid.UUID:
    return next(s["id"] for s in demo.SPARKS if s["name"] == name)


# The rule of each exposed model, in plain SQL (the seed's rules, not the policy compiler's output).
VISIBLE_SQL = {
    "UserProfile": "SELECT id FROM user_profiles WHERE id = :uid",
    "PortfolioItem": "SELECT id FROM portfolio_items WHERE user_id = :uid",
    "ChatSession": "SELECT id FROM chat_sessions WHERE user_id = :uid",
    "ChatMessage": (
        "SELECT m.id FROM chat_messages m JOIN chat_sessions s ON s.id = m.session_id WHERE s.user_id = :uid"
    ),
    # Spark Access (seed 000): owner OR member OR shared with a team the user belongs to.
    "Spark": (
        "SELECT s.id FROM sparks s WHERE s.user_id = :uid"
        " OR EXISTS (SELECT 1 FROM spark_members sm WHERE sm.spark_id = s.id AND sm.user_id = :uid)"
        " OR (s.is_shared_with_team AND EXISTS ("
        "   SELECT 1 FROM team_members tm WHERE tm.team_id = s.team_id AND tm.user_id = :uid))"
    ),
}
LABEL = {
    "UserProfile": "email",
    "PortfolioItem": "title",
    "ChatSession": "title",
    "ChatMessage": "content",
    "Spark": "name",
}


def _messages(user: uuid.UUID) -> set[str]:
    return {content for owner, _, _, msgs in demo.CHATS if owner == user for _, content in msgs}


@pytest.fixture(scope="module")
async def clients(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, Client]]:
    """One in-process MCP client per principal for the whole module (building one costs ~0.3 s)."""
    settings = Settings(
        database_url=database_url, data_dir=tmp_path_factory.mktemp("iso"), openai_api_key=None
    )
    async with AsyncExitStack() as stack:
        connected: dict[str, Client] = {}
        for name, user in USERS.items():
            server = build_mcp(build_runtime(settings, database_url, stdio_user=user))
            connected[name] = await stack.enter_async_context(Client(server))
        yield connected


@pytest.fixture(scope="module")
async def rt(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Runtime]:
    """A started runtime shared by the module's lock-2 tests."""
    settings = Settings(
        database_url=database_url, data_dir=tmp_path_factory.mktemp("rt"), openai_api_key=None
    )
    runtime = build_runtime(settings, database_url)
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.close()


def visible_ids(admin: sa.Engine, model: str, user: uuid.UUID) -> set[uuid.UUID]:
    with admin.connect() as conn:
        return set(conn.execute(sa.text(VISIBLE_SQL[model]), {"uid": user}).scalars())


def all_ids(admin: sa.Engine, table: str) -> set[uuid.UUID]:
    with admin.connect() as conn:
        return set(conn.execute(sa.text(f"SELECT id FROM {table}")).scalars())


async def query_all(
    client: Client, model: str, where: dict[str, Any] | None = None, **extra: Any
) -> list[Any]:
    args: dict[str, Any] = {"model": model, "take": 100, **extra}
    if where is not None:
        args["where"] = where
    result = structured(await client.call_tool("query_records", args))
    assert result["next_cursor"] is None, "the demo data fits in one page"
    return list(result["rows"])


async def count(client: Client, model: str, where: dict[str, Any] | None = None) -> int:
    args: dict[str, Any] = {"model": model}
    if where is not None:
        args["where"] = where
    return int(structured(await client.call_tool("count_records", args))["count"])


# -- lock 1 through the tools: principal x model x expected rows ------------------------------------

ISOLATION = [
    pytest.param("alice", "UserProfile", {"alice@example.com"}, id="alice-UserProfile"),
    pytest.param("bob", "UserProfile", {"bob@example.com"}, id="bob-UserProfile"),
    pytest.param("carol", "UserProfile", {"carol@example.com"}, id="carol-UserProfile"),
    pytest.param("alice", "PortfolioItem", {"Brand book 2026", "Essay drafts"}, id="alice-PortfolioItem"),
    pytest.param("bob", "PortfolioItem", {"Interview notes", "Research method"}, id="bob-PortfolioItem"),
    pytest.param("carol", "PortfolioItem", {"Seed inventory", "Soil test results"}, id="carol-PortfolioItem"),
    pytest.param("alice", "ChatSession", {"Tightening the intro"}, id="alice-ChatSession"),
    pytest.param("bob", "ChatSession", {"Export button findings"}, id="bob-ChatSession"),
    pytest.param("carol", "ChatSession", {"When to plant tomatoes"}, id="carol-ChatSession"),
    pytest.param("alice", "ChatMessage", _messages(demo.ALICE), id="alice-ChatMessage"),
    pytest.param("bob", "ChatMessage", _messages(demo.BOB), id="bob-ChatMessage"),
    pytest.param("carol", "ChatMessage", _messages(demo.CAROL), id="carol-ChatMessage"),
    pytest.param(
        "alice",
        "Spark",
        {"Alice's Writing Coach", "Studio Brand Voice", "Bob's Research Assistant"},
        id="alice-Spark",
    ),
    pytest.param(
        "bob",
        "Spark",
        {"Bob's Research Assistant", "Bob's Private Journal", "Studio Brand Voice", "Carol's Garden Planner"},
        id="bob-Spark",
    ),
    pytest.param("carol", "Spark", {"Carol's Garden Planner"}, id="carol-Spark"),
]


@pytest.mark.parametrize(("principal", "model", "expected"), ISOLATION)
async def test_each_principal_reads_and_counts_exactly_their_own_rows_of_each_model(
    clients: dict[str, Client], admin: sa.Engine, principal: str, model: str, expected: set[str]
) -> None:
    """Spec-required (ARCHITECTURE "two locks", seed 000 Spark Access): the scope is exact."""
    user = USERS[principal]
    rows = await query_all(clients[principal], model, select=["id", LABEL[model]])
    counted = await count(clients[principal], model)
    assert {r[LABEL[model]] for r in rows} == expected
    assert {uuid.UUID(r["id"]) for r in rows} == visible_ids(admin, model, user)
    assert len(rows) == len(expected) == counted


# principal x spark x route: every way a spark becomes readable, and every way it does not.
SPARK_ROUTES = [
    pytest.param("alice", "Alice's Writing Coach", True, id="alice-owner-private"),
    pytest.param("alice", "Studio Brand Voice", True, id="alice-owner-team-shared"),
    pytest.param("alice", "Bob's Research Assistant", True, id="alice-editor-member"),
    pytest.param("alice", "Bob's Private Journal", False, id="alice-stranger-to-bobs-private"),
    pytest.param("alice", "Carol's Garden Planner", False, id="alice-stranger-outside-team"),
    pytest.param("bob", "Alice's Writing Coach", False, id="bob-teammate-but-private"),
    pytest.param("bob", "Studio Brand Voice", True, id="bob-team-shared"),
    pytest.param("bob", "Bob's Research Assistant", True, id="bob-owner-team-not-shared"),
    pytest.param("bob", "Bob's Private Journal", True, id="bob-owner-private"),
    pytest.param("bob", "Carol's Garden Planner", True, id="bob-viewer-member"),
    pytest.param("carol", "Alice's Writing Coach", False, id="carol-stranger"),
    pytest.param("carol", "Studio Brand Voice", False, id="carol-not-in-team"),
    pytest.param("carol", "Bob's Research Assistant", False, id="carol-not-in-team-not-member"),
    pytest.param("carol", "Bob's Private Journal", False, id="carol-stranger-private"),
    pytest.param("carol", "Carol's Garden Planner", True, id="carol-owner"),
]


@pytest.mark.parametrize(("principal", "name", "visible"), SPARK_ROUTES)
async def test_a_spark_is_readable_only_through_ownership_membership_or_team_share(
    clients: dict[str, Client], principal: str, name: str, visible: bool
) -> None:
    """Spec-required (seed 000 Spark Access): owner OR member OR shared with the user's team."""
    where = {"id": str(spark_id(name))}
    client = clients[principal]
    rows = await query_all(client, "Spark", where, select=["name"])
    counted = await count(client, "Spark", where)
    assert [r["name"] for r in rows] == ([name] if visible else [])
    assert counted == int(visible)


async def test_a_team_id_without_the_shared_flag_grants_nothing_to_the_team(
    clients: dict[str, Client],
) -> None:
    """Spec-required (seed 000): team_id alone does not share a spark; Alice reaches Bob's
    Research Assistant only as a member, so a team filter shows her only what she may read anyway."""
    client = clients["alice"]
    by_team = await query_all(client, "Spark", {"team_id": str(TEAM)}, select=["name"])
    shared = await query_all(client, "Spark", {"is_shared_with_team": True}, select=["name"])
    assert {r["name"] for r in by_team} == {"Studio Brand Voice", "Bob's Research Assistant"}
    assert {r["name"] for r in shared} == {"Studio Brand Voice"}


# -- adversarial filters: nothing foreign, whatever the filter says ----------------------------------

ALL_USER_IDS = [str(u) for u in USERS.values()]
ALL_EMAILS = ["alice@example.com", "bob@example.com", "carol@example.com"]
BOB_SESSION = str(demo._id("chat-Export button findings"))
CAROL_SESSION = str(demo._id("chat-When to plant tomatoes"))


def forged_cursor(order: list[list[str]], values: list[Any]) -> str:
    raw = json.dumps({"o": order, "v": values}).encode()
    return base64.urlsafe_b64encode(raw).decode()


ADVERSARIAL = [
    pytest.param(
        "UserProfile",
        {"OR": [{"id": str(demo.CAROL)}, {"email": "carol@example.com"}]},
        {},
        0,
        id="or-with-another-users-id-and-email",
    ),
    pytest.param(
        "UserProfile",
        {"OR": [{"id": str(demo.ALICE)}, {"id": str(demo.BOB)}, {"id": str(demo.CAROL)}]},
        {},
        1,
        id="or-with-every-users-id",
    ),
    pytest.param("UserProfile", {"NOT": {"id": str(demo.ALICE)}}, {}, 0, id="not-own-id"),
    pytest.param(
        "UserProfile", {"NOT": {"NOT": {"id": str(demo.CAROL)}}}, {}, 0, id="not-not-another-users-id"
    ),
    pytest.param("UserProfile", {"NOT": [{"email": "alice@example.com"}]}, {}, 0, id="not-list-own-email"),
    pytest.param(
        "UserProfile", {"id": {"not": {"equals": str(demo.ALICE)}}}, {}, 0, id="field-not-equals-own-id"
    ),
    pytest.param("UserProfile", {"id": {"not": str(demo.ALICE)}}, {}, 0, id="field-not-own-id"),
    pytest.param(
        "UserProfile", {"id": {"not": {"not": str(demo.CAROL)}}}, {}, 0, id="field-not-not-another-id"
    ),
    pytest.param("UserProfile", {"id": {"in": ALL_USER_IDS}}, {}, 1, id="in-every-users-id"),
    pytest.param("UserProfile", {"email": {"in": ALL_EMAILS}}, {}, 1, id="in-every-users-email"),
    pytest.param("UserProfile", {"id": {"notIn": [str(demo.ALICE)]}}, {}, 0, id="not-in-own-id"),
    pytest.param(
        "UserProfile", {"OR": [{"email": {"not": "x"}}, {"NOT": {"email": "x"}}]}, {}, 1, id="or-tautology"
    ),
    pytest.param("UserProfile", {"email": "' OR 1=1 --"}, {}, 0, id="sql-in-equals"),
    pytest.param("UserProfile", {"email": {"contains": "' OR 1=1 --"}}, {}, 0, id="sql-in-contains"),
    pytest.param("UserProfile", {"email": {"contains": "%"}}, {}, 0, id="percent-is-literal"),
    pytest.param("UserProfile", {"email": {"startsWith": "_"}}, {}, 0, id="underscore-is-literal"),
    pytest.param("UserProfile", {"email": {"startsWith": "alic_"}}, {}, 0, id="underscore-mid-is-literal"),
    pytest.param("UserProfile", {"email": {"endsWith": "%"}}, {}, 0, id="percent-suffix-is-literal"),
    pytest.param("UserProfile", {"email": {"contains": "\\"}}, {}, 0, id="backslash-is-literal"),
    pytest.param("UserProfile", {"email": {"contains": "\\%"}}, {}, 0, id="escaped-percent-is-literal"),
    pytest.param(
        "UserProfile",
        {"email": {"startsWith": "%", "mode": "insensitive"}},
        {},
        0,
        id="percent-insensitive-is-literal",
    ),
    pytest.param("UserProfile", {"email": {"contains": "@"}}, {}, 1, id="control-contains-matches-own"),
    pytest.param(
        "UserProfile",
        None,
        {"cursor": forged_cursor([["id", "asc"]], [NIL])},
        1,
        id="cursor-forged-before-every-row",
    ),
    pytest.param(
        "UserProfile",
        None,
        {
            "order_by": [{"email": "desc"}],
            "cursor": forged_cursor([["email", "desc"], ["id", "asc"]], [None, NIL]),
        },
        1,
        id="cursor-forged-at-null-start-desc",
    ),
    pytest.param(
        "UserProfile", None, {"order_by": [{"email": "desc"}, {"id": "desc"}]}, 1, id="order-by-tricks"
    ),
    pytest.param(
        "PortfolioItem",
        {"OR": [{"kind": "link"}, {"kind": {"not": "link"}}, {"url": None}]},
        {},
        2,
        id="portfolio-or-everything",
    ),
    pytest.param(
        "PortfolioItem",
        {"title": {"in": [t for _, _, t, _, _ in demo.PORTFOLIO]}},
        {},
        2,
        id="portfolio-in-every-title",
    ),
    pytest.param(
        "PortfolioItem",
        None,
        {"order_by": [{"url": "asc"}], "cursor": forged_cursor([["url", "asc"], ["id", "asc"]], ["", NIL])},
        2,
        id="portfolio-cursor-forged-before-everything",
    ),
    pytest.param(
        "PortfolioItem",
        None,
        {
            "order_by": [{"id": "asc"}, {"id": "desc"}],
            "cursor": forged_cursor([["id", "asc"], ["id", "desc"]], [NIL, NIL]),
        },
        2,
        id="portfolio-duplicate-order-keys",
    ),
    pytest.param("ChatSession", {"id": {"in": [BOB_SESSION, CAROL_SESSION]}}, {}, 0, id="sessions-of-others"),
    pytest.param("ChatMessage", {"session_id": BOB_SESSION}, {}, 0, id="messages-of-bobs-session"),
    pytest.param(
        "ChatMessage",
        {
            "OR": [
                {"session_id": {"in": [BOB_SESSION, CAROL_SESSION]}},
                {"role": {"in": ["user", "assistant"]}},
            ]
        },
        {},
        2,
        id="messages-or-foreign-sessions",
    ),
    pytest.param("Spark", {"name": "Bob's Private Journal"}, {}, 0, id="spark-by-foreign-name"),
    pytest.param("Spark", {"user_id": str(demo.BOB)}, {}, 1, id="spark-by-owner-only-membership-shows"),
    pytest.param(
        "Spark",
        {"OR": [{"team_id": str(TEAM)}, {"team_id": None}, {"is_shared_with_team": False}]},
        {},
        3,
        id="spark-or-every-team-state",
    ),
    pytest.param(
        "Spark",
        {"id": {"in": [str(s["id"]) for s in demo.SPARKS]}},
        {},
        3,
        id="spark-in-every-spark-id",
    ),
]


@pytest.mark.parametrize(("model", "where", "extra", "expected_count"), ADVERSARIAL)
async def test_adversarial_filters_never_return_another_users_rows(
    clients: dict[str, Client],
    admin: sa.Engine,
    model: str,
    where: dict[str, Any] | None,
    extra: dict[str, Any],
    expected_count: int,
) -> None:
    """Spec-required (ARCHITECTURE lock 1): filters are ANDed on top of the scope, never inside it."""
    client = clients["alice"]
    rows = await query_all(client, model, where, **extra)
    counted = await count(client, model, where) if "cursor" not in extra else None
    own = visible_ids(admin, model, demo.ALICE)
    returned = {uuid.UUID(r["id"]) for r in rows}
    assert returned <= own
    assert len(rows) == len(returned) == expected_count
    if counted is not None:
        assert counted == expected_count


async def test_carol_outside_the_team_sees_no_northwind_spark_whatever_she_asks(
    clients: dict[str, Client],
) -> None:
    """Spec-required (seed 000): a user outside the team reaches no team spark."""
    northwind = [str(s["id"]) for s in demo.SPARKS if s["user_id"] != demo.CAROL]
    filters: list[dict[str, Any]] = [
        {"team_id": str(TEAM)},
        {"is_shared_with_team": True},
        {"id": {"in": northwind}},
        {"OR": [{"user_id": str(demo.ALICE)}, {"user_id": str(demo.BOB)}]},
        {"NOT": {"user_id": str(demo.CAROL)}},
    ]
    client = clients["carol"]
    for where in filters:
        assert await query_all(client, "Spark", where) == [], where
        assert await count(client, "Spark", where) == 0, where


# -- lock 2: row-level security with the compiled scope left out -------------------------------------

READABLE_SPARKS = VISIBLE_SQL["Spark"]
RLS_EXPECTED = [
    pytest.param("user_profiles", "SELECT id FROM user_profiles WHERE id = :uid", id="user_profiles"),
    pytest.param(
        "teams",
        "SELECT id FROM teams WHERE id IN (SELECT team_id FROM team_members WHERE user_id = :uid)",
        id="teams",
    ),
    pytest.param("team_members", "SELECT id FROM team_members WHERE user_id = :uid", id="team_members"),
    pytest.param("spark_members", "SELECT id FROM spark_members WHERE user_id = :uid", id="spark_members"),
    pytest.param("sparks", READABLE_SPARKS, id="sparks"),
    pytest.param("portfolio_items", VISIBLE_SQL["PortfolioItem"], id="portfolio_items"),
    pytest.param("chat_sessions", VISIBLE_SQL["ChatSession"], id="chat_sessions"),
    pytest.param("chat_messages", VISIBLE_SQL["ChatMessage"], id="chat_messages"),
    pytest.param(
        "spark_embeddings",
        f"SELECT id FROM spark_embeddings WHERE spark_id IN ({READABLE_SPARKS})",
        id="spark_embeddings",
    ),
]


@pytest.mark.parametrize(("table", "expected_sql"), RLS_EXPECTED)
async def test_row_level_security_alone_limits_an_unscoped_select_to_the_users_rows(
    rt: Runtime, admin: sa.Engine, table: str, expected_sql: str
) -> None:
    """Spec-required (ARCHITECTURE lock 2): a bug in lock 1 must still not leak a row."""
    everything = all_ids(admin, table)
    hidden_from_someone = False
    for user in USERS.values():
        with admin.connect() as conn:
            expected = set(conn.execute(sa.text(expected_sql), {"uid": user}).scalars())
        async with rt.database.user_transaction(user) as conn:
            seen = set((await conn.execute(sa.text(f"SELECT id FROM {table}"))).scalars())
        assert seen == expected, (table, user)
        hidden_from_someone |= expected < everything
    assert hidden_from_someone, "some user must be denied some row for this test to mean anything"


async def test_api_keys_are_not_readable_by_the_tool_role(rt: Runtime) -> None:
    """Our choice (migration 0002): tools get no grant on api_keys at all."""
    with pytest.raises(DBAPIError) as caught:
        async with rt.database.user_transaction(demo.ALICE) as conn:
            await conn.execute(sa.text("SELECT key_hash FROM api_keys"))
    assert getattr(caught.value.orig, "sqlstate", None) == "42501"  # insufficient_privilege


def _embedding_insert(spark: uuid.UUID) -> tuple[Any, dict[str, Any]]:
    statement = sa.text(
        "INSERT INTO spark_embeddings (spark_id, content, content_hash, source_type, embedding,"
        " embedding_model) VALUES (:spark, 'forged', :hash, 'knowledge', CAST(:vec AS vector), 'test')"
    )
    vec = "[" + ",".join(["0.1"] * 1536) + "]"
    return statement, {"spark": spark, "hash": uuid.uuid4().hex, "vec": vec}


@pytest.mark.parametrize(
    ("principal", "spark"),
    [
        pytest.param("alice", "Bob's Private Journal", id="alice-into-strangers-spark"),
        pytest.param("bob", "Carol's Garden Planner", id="bob-viewer-member"),
        pytest.param("bob", "Alice's Writing Coach", id="bob-into-teammates-private-spark"),
        pytest.param("bob", "Studio Brand Voice", id="bob-team-shared-read-only"),
        pytest.param("carol", "Studio Brand Voice", id="carol-into-team-spark"),
    ],
)
async def test_row_level_security_refuses_knowledge_inserts_into_sparks_the_user_cannot_write(
    rt: Runtime, admin: sa.Engine, principal: str, spark: str
) -> None:
    """Spec-required (seed 000 / ARCHITECTURE lock 2): only owners and editors may train a spark."""
    before = all_ids(admin, "spark_embeddings")
    statement, params = _embedding_insert(spark_id(spark))
    with pytest.raises(DBAPIError) as caught:
        async with rt.database.user_transaction(USERS[principal]) as conn:
            await conn.execute(statement, params)
    assert getattr(caught.value.orig, "sqlstate", None) == "42501"  # RLS WITH CHECK violation
    assert all_ids(admin, "spark_embeddings") == before


class _Rollback(Exception):
    pass


async def test_row_level_security_accepts_knowledge_inserts_by_an_editor_member(
    rt: Runtime, admin: sa.Engine
) -> None:
    """Spec-required (seed 000): an editor may train; the control for the refusals above."""
    before = all_ids(admin, "spark_embeddings")
    statement, params = _embedding_insert(spark_id("Bob's Research Assistant"))
    with pytest.raises(_Rollback):
        async with rt.database.user_transaction(demo.ALICE) as conn:
            assert (await conn.execute(statement, params)).rowcount == 1
            raise _Rollback
    assert all_ids(admin, "spark_embeddings") == before


async def test_the_tool_role_and_user_id_are_transaction_local(database_url: str) -> None:
    """Spec-required (ARCHITECTURE lock 2, pgbouncer transaction mode): nothing outlives the
    transaction, and the tool connection it leaves behind sees no row (issue 13: it logs in as the
    tool role, so without a switch row-level security still applies, with no user)."""
    database = Database(DatabaseUrl.parse(database_url), pool_size=1)
    probe = sa.text(
        "SELECT current_user, session_user, pg_backend_pid(), current_setting('rowscope.user_id', true)"
    )
    try:
        async with database.user_transaction(demo.BOB) as conn:
            role, login, pid, setting = (await conn.execute(probe)).one()
        assert (role, login, setting) == (TOOL_ROLE, TOOL_ROLE, str(demo.BOB))
        async with database.tool_engine.connect() as conn:
            after = (await conn.execute(probe)).one()
            await conn.rollback()
        assert after[2] == pid, "the same pooled connection must be reused for this test to mean anything"
        assert after[3] in (None, "")
        # and after a transaction that failed half-way
        with pytest.raises(DBAPIError):
            async with database.user_transaction(demo.BOB) as conn:
                await conn.execute(sa.text("SELECT * FROM api_keys"))
        async with database.tool_engine.begin() as conn:
            after = (await conn.execute(probe)).one()
            rows = (await conn.execute(sa.text("SELECT count(*) FROM user_profiles"))).scalar_one()
        assert after[2] == pid
        assert after[0] == TOOL_ROLE
        assert after[3] in (None, "")
        assert rows == 0, "the tool login without a user sees nothing"
        async with database.service_transaction() as conn:
            owner, owner_rows = (
                await conn.execute(sa.text("SELECT current_user, (SELECT count(*) FROM user_profiles)"))
            ).one()
        assert owner != TOOL_ROLE and owner_rows >= 3, "rowscope's own transactions run as the owner"
    finally:
        await database.dispose()


async def test_the_one_round_trip_read_is_as_transaction_local_as_a_user_transaction(
    database_url: str,
) -> None:
    """``Database.read_as`` (the read tools' pipelined path, its own pool) runs as the tool role and
    the user, under row-level security, and leaves its pooled connection as it found it — also after
    a statement that fails half-way through the pipeline."""
    database = Database(DatabaseUrl.parse(database_url), pool_size=1)
    probe = sa.select(
        sa.func.current_user().label("role"),
        sa.func.pg_backend_pid().label("pid"),
        sa.func.current_setting("rowscope.user_id", True).label("setting"),
    )
    profiles = sa.table("user_profiles", sa.column("id"))
    try:
        (inside,) = await database.read_as(demo.BOB, probe)
        assert (inside["role"], inside["setting"]) == (TOOL_ROLE, str(demo.BOB))
        visible = await database.read_as(demo.BOB, sa.select(profiles.c.id))
        assert [row["id"] for row in visible] == [demo.BOB], "row-level security applies to read_as"
        with pytest.raises(psycopg.errors.DivisionByZero):
            await database.read_as(demo.BOB, sa.select((sa.literal(1) / sa.literal(0)).label("boom")))
        async with database._reads.connection() as raw:  # the pool's one connection, as it was left
            left = "SELECT current_user, pg_backend_pid(), current_setting('rowscope.user_id', true)"
            role, pid, setting = await (await raw.execute(left)).fetchone()
            assert raw.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert pid == inside["pid"], (
            "the same pooled connection must be reused for this test to mean anything"
        )
        assert role == TOOL_ROLE, "the read pool logs in as the tool role"
        assert setting in (None, "")
    finally:
        await database.dispose()


async def test_a_read_connection_is_an_ordinary_idle_connection_between_reads(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A read drives its connection's libpq handle in pipeline mode (rowscope/db/reads.py), and
    leaves it between reads as psycopg's pool expects it: idle, out of pipeline mode, usable by
    psycopg itself; each read is still switched to its own user and nothing more, the pool's check()
    still probes it with a round trip (and keeps it), and a failing read in between changes none of
    that. The statements a read prepared stay prepared on the connection for the next one."""
    database = Database(DatabaseUrl.parse(database_url), pool_size=1)
    probe = sa.select(
        sa.func.current_user().label("role"),
        sa.func.pg_backend_pid().label("pid"),
        sa.func.current_setting("rowscope.user_id", True).label("setting"),
        sa.func.now().label("now"),
    )

    async def left_idle() -> tuple[psycopg.pq.PipelineStatus, int]:
        """The pool's one connection as it was left: its pipeline mode, and its prepared statements."""
        raw = await database._reads.getconn()
        try:
            assert raw.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE
            prepared = await (await raw.execute("SELECT count(*) FROM pg_prepared_statements")).fetchone()
            assert prepared is not None
            return psycopg.pq.PipelineStatus(raw.pgconn.pipeline_status), prepared[0]
        finally:
            await database._reads.putconn(raw)

    try:
        (first,) = await database.read_as(demo.BOB, probe)
        assert await left_idle() == (psycopg.pq.PipelineStatus.OFF, 2), "the switch and the probe"
        (second,) = await database.read_as(demo.ALICE, probe)
        assert (second["role"], second["setting"]) == (TOOL_ROLE, str(demo.ALICE))
        assert second["pid"] == first["pid"], "the same pooled connection must be reused"
        assert second["now"] > first["now"], "each read is a transaction of its own"
        assert await left_idle() == (psycopg.pq.PipelineStatus.OFF, 2), "prepared once, executed twice"
        await database._reads.check()
        (checked,) = await database.read_as(demo.BOB, probe)
        assert checked["pid"] == first["pid"], "check() keeps a live connection"
        with pytest.raises(psycopg.errors.DivisionByZero):
            await database.read_as(demo.BOB, sa.select((sa.literal(1) / sa.literal(0)).label("boom")))
        (after,) = await database.read_as(demo.CAROL, probe)
        assert (after["role"], after["setting"], after["pid"]) == (TOOL_ROLE, str(demo.CAROL), first["pid"])
        assert (await left_idle())[0] == psycopg.pq.PipelineStatus.OFF
    finally:
        await database.dispose()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], "closed without a warning"


@pytest.mark.parametrize("close_message", [True, False], ids=["close message", "deallocate"])
async def test_a_read_keeps_at_most_its_share_of_prepared_statements_or_none_behind_pgbouncer(
    database_url: str, monkeypatch: pytest.MonkeyPatch, close_message: bool
) -> None:
    """Each read connection keeps the statements its reads prepared, the oldest closed past
    ``PREPARED_PER_CONNECTION`` (every read still right after its statement was closed and prepared
    again) by a Close message, or by ``DEALLOCATE`` where libpq is older than 17, and with
    ``?pgbouncer=true`` prepares nothing at all: each read sends its statements whole, which a
    pooler in transaction mode can route to any server connection."""
    monkeypatch.setattr(reads, "PREPARED_PER_CONNECTION", 4)
    monkeypatch.setattr(reads, "CLOSE_MESSAGE", close_message)  # False: what a libpq before 17 does

    def numbered(n: int) -> Any:
        # The number written into the SQL: six statements of their own.
        return sa.select(
            sa.literal_column(str(n)).label("n"), sa.func.current_setting("rowscope.user_id").label("u")
        )

    async def prepared_on(database: Database) -> set[str]:
        raw = await database._reads.getconn()
        try:
            listed = await (await raw.execute("SELECT statement FROM pg_prepared_statements")).fetchall()
            return {statement for (statement,) in listed}
        finally:
            await database._reads.putconn(raw)

    pgbouncer = database_url + ("&" if "?" in database_url else "?") + "pgbouncer=true"
    for url, most in ((database_url, 4), (pgbouncer, 0)):
        database = Database(DatabaseUrl.parse(url), pool_size=1)
        try:
            for round_ in range(2):
                for n in range(6):
                    assert await database.read_as(demo.BOB, numbered(n)) == [{"n": n, "u": str(demo.BOB)}]
                kept = await prepared_on(database)
                assert len(kept) == most, (url, round_, kept)
        finally:
            await database.dispose()


async def test_a_read_interrupted_half_way_never_hands_its_connection_out_again(database_url: str) -> None:
    """A read cancelled while PostgreSQL is still working on it (its results still due on the
    connection) closes that connection: the pool replaces it, and the next read runs on a fresh
    one, switched to its own user, as if nothing had happened."""
    database = Database(DatabaseUrl.parse(database_url), pool_size=1)
    probe = sa.select(
        sa.func.pg_backend_pid().label("pid"), sa.func.current_setting("rowscope.user_id").label("u")
    )
    try:
        (before,) = await database.read_as(demo.BOB, probe)
        slow = asyncio.create_task(database.read_as(demo.BOB, sa.select(sa.func.pg_sleep(5).label("z"))))
        await asyncio.sleep(0.3)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        (after,) = await database.read_as(demo.ALICE, probe)
        assert after["u"] == str(demo.ALICE)
        assert after["pid"] != before["pid"], "the interrupted connection was handed out again"
    finally:
        await database.dispose()


async def test_the_read_pool_hands_out_the_connection_returned_last(database_url: str) -> None:
    """The read pool is LIFO (``_ReadPool`` overrides how psycopg's pool picks an idle connection):
    the connection returned last is the next one out, so a single client's reads stay on one warm
    backend; the one idle longest is left at the end the pool shrinks from."""
    database = Database(DatabaseUrl.parse(database_url), pool_size=3)
    pool = database._reads
    try:
        await pool.open(wait=True)
        held = [await pool.getconn() for _ in range(3)]
        for raw in held:
            await pool.putconn(raw)
        assert await pool.getconn() is held[-1]
        assert await pool.getconn() is held[-2]
        assert await pool.getconn() is held[0]
        for raw in held:
            await pool.putconn(raw)
        # A read takes and returns the one on top: the same backend, read after read.
        pids = {
            row["pid"]
            for _ in range(5)
            for row in await database.read_as(demo.BOB, sa.select(sa.func.pg_backend_pid().label("pid")))
        }
        assert pids == {held[-1].info.backend_pid}
    finally:
        await database.dispose()


async def test_a_kept_read_shape_is_rebound_to_each_user_and_built_once(
    rt: Runtime, admin: sa.Engine
) -> None:
    """``Database.read_shaped`` keeps a request shape's SQL and reuses it for every user, rebinding
    only the user: each still reads exactly their own rows (a statement still naming the first user
    would read nothing for the others — lock 1 would ask for the first user's rows and lock 2 would
    allow only the caller's), and the statement is built once."""
    exposed = rt.policy.models["PortfolioItem"]
    built: list[uuid.UUID] = []

    def builder(user: uuid.UUID) -> Any:
        def build() -> Any:
            built.append(user)
            scope = rt.policy.model_scope("PortfolioItem", str(user), exposed.table)
            return sa.select(exposed.columns["id"]).where(scope)

        return build

    shape = ("test", "PortfolioItem", uuid.uuid4())
    for user in (demo.ALICE, demo.BOB, demo.CAROL, demo.ALICE):
        rows = await rt.database.read_shaped(user, shape, builder(user))
        expected = visible_ids(admin, "PortfolioItem", user)
        assert expected, "every demo user owns portfolio items"
        assert {row_id for (row_id,) in rows} == expected
    assert built == [demo.ALICE]

    with pytest.raises(RuntimeError, match="another user"):
        # A statement naming someone other than the user it runs as is refused before it is kept.
        await rt.database.read_shaped(demo.BOB, ("test", uuid.uuid4()), builder(demo.ALICE))


USER_TABLES = [p.values[0] for p in RLS_EXPECTED]


@pytest.mark.parametrize("user_id", [pytest.param(None, id="unset"), pytest.param("", id="empty")])
async def test_a_tool_transaction_without_a_user_sees_no_rows(rt: Runtime, user_id: str | None) -> None:
    """Spec-required (ARCHITECTURE "no tool path runs without a user"): RLS denies by default."""
    async with rt.database.engine.begin() as conn:
        await conn.execute(sa.text("SELECT set_config('role', :role, true)"), {"role": TOOL_ROLE})
        if user_id is not None:
            await conn.execute(sa.text("SELECT set_config('rowscope.user_id', :uid, true)"), {"uid": user_id})
        assert (await conn.execute(sa.text("SELECT current_user"))).scalar_one() == TOOL_ROLE
        for table in USER_TABLES:
            seen = (await conn.execute(sa.text(f"SELECT count(*) FROM {table}"))).scalar_one()
            assert seen == 0, table


@pytest.mark.parametrize("model", list(VISIBLE_SQL))
async def test_the_compiled_scope_alone_selects_exactly_the_users_rows(
    rt: Runtime, admin: sa.Engine, model: str
) -> None:
    """Spec-required (ARCHITECTURE lock 1): run as the superuser, so RLS cannot mask a scope bug."""
    exposed = rt.policy.models[model]
    for user in USERS.values():
        scope = rt.policy.model_scope(model, str(user), exposed.table)
        statement = sa.select(exposed.table.c.id).where(scope)
        with admin.connect() as conn:
            got = set(conn.execute(statement).scalars())
        assert got == visible_ids(admin, model, user), (model, user)
