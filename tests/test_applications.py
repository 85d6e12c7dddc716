"""The isolation table over all five applications (issue 11, item 4): Spark (seed 000: the bundled
policy and ``rowscope demo``'s data) and the examples 001-004 (``examples/<seed>/``: the schema, the
demo rows, the policy and the reviewed ``rls.sql`` that ``rowscope rls plan`` wrote).

Each application gets a fresh database, migrated as production is, loaded as its developer would
load it (the owner runs schema.sql, demo.sql and rls.sql), and accounts made the way ``rowscope users
add`` makes them. Every check compares what rowscope gives with an oracle written by hand from the
demo data and the application's rules, never with what rowscope computed: ``examples/<seed>/
expected.toml``, and for Spark :data:`SPARK_ORACLE` below.

1. every model x user: all rows through ``query_records`` (every page) and ``count_records`` equal
   the oracle;
2. a primary key only another user may see: a direct filter gives nothing, an OR with one's own id
   gives only one's own, a NOT never gives a foreign row, and ``count_records`` agrees;
3. lock 2 alone: an unscoped SELECT in a tool transaction has no foreign row and every own one;
4. knowledge: ``list_<collections>``, add (deduplicated), search, remove, each refused across users;
5. 004's admin sees every project and rating;
6. ``rowscope rls plan`` reproduces each example's checked-in ``rls.sql`` (drift fails here);
7. the real CLI: ``rowscope stdio --user`` and ``rowscope serve`` per example.

002 (Arrakis) is single-tenant: no row or collection is only one user's, so instead of the isolation
checks it gets one that both users see the same rows and knowledge (its oracle says so).
"""

from __future__ import annotations

import re
import secrets
import tomllib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import psycopg
import pytest
import sqlalchemy as sa
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from rowscope.db import accounts, migrate, rls
from rowscope.db.engine import Database, DatabaseUrl
from rowscope.db.guard import quoted
from rowscope.db.policy import PolicyFile, load_policy, policy_origin
from rowscope.db.subjects import Caller
from rowscope.server import demo
from rowscope.server.app import build_mcp, build_runtime
from rowscope.server.database import prove_servable
from rowscope.server.settings import Settings
from tests.conftest import structured
from tests.servers import ROWSCOPE, serve

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
SPARK = "000-spark"
EXAMPLES = ["001-tzurot", "002-arrakis", "003-agent-os", "004-ops-tools"]
APPS = [SPARK, *EXAMPLES]
SIDE_TABLE = "knowledge_chunks"

# -- Spark's oracle, by hand from rowscope/server/demo.py ------------------------------------------
# Portfolio items and chat messages get random ids, so Spark's rows are named by a column that tells
# them apart in the demo; the fixture resolves them to primary keys (and fails on a name it lacks).
SPARK_LABELS = {
    "UserProfile": "email",
    "PortfolioItem": "title",
    "ChatSession": "title",
    "ChatMessage": "content",
    "Spark": "name",
}
SPARK_ORACLE: dict[str, Any] = {
    "users": {
        "alice": {
            # Her two sparks, and Bob's Research Assistant, of which she is an editor.
            "read": ["Alice's Writing Coach", "Studio Brand Voice", "Bob's Research Assistant"],
            "write": ["Alice's Writing Coach", "Studio Brand Voice", "Bob's Research Assistant"],
            "models": {
                "UserProfile": ["alice@example.com"],
                "PortfolioItem": ["Brand book 2026", "Essay drafts"],
                "ChatSession": ["Tightening the intro"],
                "ChatMessage": [
                    "Can you make my opening paragraph shorter?",
                    "Start with the scene in the workshop and drop the first two sentences.",
                ],
                "Spark": ["Alice's Writing Coach", "Studio Brand Voice", "Bob's Research Assistant"],
            },
        },
        "bob": {
            # His two; Studio Brand Voice, shared with his team (read only: he is not its editor);
            # Carol's Garden Planner, of which he is a viewer (read only).
            "read": [
                "Bob's Research Assistant",
                "Bob's Private Journal",
                "Studio Brand Voice",
                "Carol's Garden Planner",
            ],
            "write": ["Bob's Research Assistant", "Bob's Private Journal"],
            "models": {
                "UserProfile": ["bob@example.com"],
                "PortfolioItem": ["Interview notes", "Research method"],
                "ChatSession": ["Export button findings"],
                "ChatMessage": [
                    "Summarise what users said about exporting.",
                    "Most could not find export on mobile; three gave up entirely.",
                ],
                "Spark": [
                    "Bob's Research Assistant",
                    "Bob's Private Journal",
                    "Studio Brand Voice",
                    "Carol's Garden Planner",
                ],
            },
        },
    }
}
SPARK_IDS = {s["name"]: str(s["id"]) for s in demo.SPARKS}
# Tables lock 2 guards that no model reads: the membership rows, each user's own (migration 0002).
SPARK_MEMBERSHIPS: dict[str, tuple[tuple[str, ...], dict[str, set[tuple[str, ...]]]]] = {
    "team_members": (
        ("team_id", "user_id"),
        {"alice": {(str(demo.TEAM), str(demo.ALICE))}, "bob": {(str(demo.TEAM), str(demo.BOB))}},
    ),
    "spark_members": (
        ("spark_id", "user_id"),
        {
            "alice": {(SPARK_IDS["Bob's Research Assistant"], str(demo.ALICE))},
            "bob": {(SPARK_IDS["Carol's Garden Planner"], str(demo.BOB))},
        },
    ),
}

# What an add names for the policy's retrieval filters (the columns are NOT NULL): each user's own
# channel (001), a record type (004).
ADD_FILTERS: dict[str, dict[str, dict[str, str]]] = {
    "001-tzurot": {"alice": {"channel": "900000000000000001"}, "bob": {"channel": "900000000000000002"}},
    "004-ops-tools": {"alice": {"type": "TASK"}, "bob": {"type": "FEEDBACK"}},
}
# The model the stdio smoke reads per example: one where alice sees rows the other user does not.
SMOKE_MODEL = {
    "001-tzurot": "ConversationHistory",
    "002-arrakis": "Conversation",
    "003-agent-os": "Document",
    "004-ops-tools": "Project",
}


def policy_path(name: str) -> Path | None:
    return None if name == SPARK else ROOT / "examples" / name / "policy.toml"


def raw_oracle(name: str) -> dict[str, Any]:
    if name == SPARK:
        return SPARK_ORACLE
    return tomllib.loads((ROOT / "examples" / name / "expected.toml").read_text("utf-8"))


# -- the cases, from the policies and the oracles (read at collection) ------------------------------

POLICIES = {name: load_policy(policy_path(name)) for name in APPS}
ORACLES = {name: raw_oracle(name) for name in APPS}


def _users(name: str) -> list[str]:
    return list(ORACLES[name]["users"])


def _foreign_labels(name: str, model: str, user: str) -> set[str]:
    users = ORACLES[name]["users"]
    others = set().union(*(set(users[o]["models"][model]) for o in users if o != user))
    return others - set(users[user]["models"][model])


def _single_tenant(name: str) -> bool:
    return bool(ORACLES[name].get("single_tenant", False))


READS = [
    pytest.param(name, model, user, id=f"{name}-{model}-{user}")
    for name in APPS
    for model in POLICIES[name].models
    for user in _users(name)
]
# Only where another user sees a row this one does not (a shared model has none: part 1 covers it).
FOREIGN = [
    pytest.param(name, model, user, id=f"{name}-{model}-{user}")
    for name in APPS
    for model in POLICIES[name].models
    for user in _users(name)
    if _foreign_labels(name, model, user)
]


def _lock_two_tables(name: str) -> list[str]:
    policy = POLICIES[name]
    tables = policy.table_names()
    if rls.own_accounts_only(policy):
        tables.discard(policy.users.table)  # only the [users] table: migration 0002 guards it, by account
    return sorted(tables)


TABLES = [
    pytest.param(name, table, user, id=f"{name}-{table}-{user}")
    for name in APPS
    for table in _lock_two_tables(name)
    for user in _users(name)
]
APP_USERS = [pytest.param(name, user, id=f"{name}-{user}") for name in APPS for user in _users(name)]
ISOLATED = [pytest.param(name, id=name) for name in APPS if not _single_tenant(name)]
SHARED = [pytest.param(name, id=name) for name in APPS if _single_tenant(name)]
ALL = [pytest.param(name, id=name) for name in APPS]
EXAMPLE_PARAMS = [pytest.param(name, id=name) for name in EXAMPLES]


# -- the applications -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sees:
    """What one user may see, by the oracle, as primary keys (text)."""

    models: dict[str, frozenset[str]]
    read: frozenset[str]  # collections
    write: frozenset[str]


@dataclass
class App:
    name: str
    url: str
    policy_path: Path | None
    policy: PolicyFile
    oracle: dict[str, Sees]
    accounts: dict[str, uuid.UUID]
    subjects: dict[str, str]
    data_dir: Path
    admin: sa.Engine
    # Tables no model reads: their key columns and each user's keys (Spark's memberships).
    extra: dict[str, tuple[tuple[str, ...], dict[str, set[tuple[str, ...]]]]] = field(default_factory=dict)

    @property
    def settings(self) -> Settings:
        return Settings(
            database_url=self.url, policy=self.policy_path, data_dir=self.data_dir, openai_api_key=None
        )

    @property
    def single_tenant(self) -> bool:
        return _single_tenant(self.name)

    def others(self, user: str) -> list[str]:
        return [u for u in self.oracle if u != user]

    def foreign(self, model: str, user: str) -> frozenset[str]:
        """Rows of ``model`` another user may see and ``user`` may not."""
        theirs = frozenset().union(*(self.oracle[o].models[model] for o in self.others(user)))
        return theirs - self.oracle[user].models[model]

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.admin.connect() as conn:
            return conn.execute(sa.text(sql), params).scalar_one()

    def column(self, sql: str, **params: Any) -> list[str]:
        with self.admin.connect() as conn:
            return [str(v) for v in conn.execute(sa.text(sql), params).scalars()]


def _resolve_spark(admin: sa.Engine, policy: PolicyFile) -> dict[str, Sees]:
    """Spark's oracle with each row's label replaced by its primary key."""
    ids: dict[str, dict[str, str]] = {}
    with admin.connect() as conn:
        for model, label in SPARK_LABELS.items():
            spec = policy.models[model]
            rows = conn.execute(
                sa.text(f"SELECT {label}, {spec.primary_key}::text FROM {quoted(spec.table)}")
            ).all()
            ids[model] = {str(k): str(v) for k, v in rows}
    resolved = {}
    for user, sees in SPARK_ORACLE["users"].items():
        resolved[user] = Sees(
            models={m: frozenset(ids[m][label] for label in labels) for m, labels in sees["models"].items()},
            read=frozenset(SPARK_IDS[n] for n in sees["read"]),
            write=frozenset(SPARK_IDS[n] for n in sees["write"]),
        )
    return resolved


def _load(name: str, url: str) -> None:
    """The application's tables and rows, as its developer loads them (the owner runs the files)."""
    if name == SPARK:
        anyio.run(demo.load_demo, build_runtime(Settings(database_url=url, openai_api_key=None), url))
        return
    directory = ROOT / "examples" / name
    with psycopg.connect(DatabaseUrl.parse(url).libpq, autocommit=True) as conn:
        for file in ("schema.sql", "demo.sql", "rls.sql"):
            conn.execute((directory / file).read_text("utf-8"))


def _add_accounts(url: str, policy: PolicyFile, oracle: dict[str, Any]) -> dict[str, uuid.UUID]:
    """``rowscope users add`` for each oracle user: ``--subject`` only where the policy's users are
    rowscope's own accounts and the oracle names a subject (001's Discord ids)."""

    async def add() -> dict[str, uuid.UUID]:
        database = Database(DatabaseUrl.parse(url), pool_size=1)
        try:
            async with database.service_transaction() as conn:
                made = {}
                for user, sees in oracle["users"].items():
                    subject = None if not policy.users.own else sees.get("subject")
                    made[user] = await accounts.add_user(
                        conn, f"{user}@example.com", users=policy.users, subject=subject
                    )
                return made
        finally:
            await database.dispose()

    return anyio.run(add)


def _build(name: str, pg_admin: Callable[[str], str], data_dir: Path) -> tuple[App, str]:
    database = f"rowscope_apps_{name[:3]}_{secrets.token_hex(4)}"
    url = pg_admin(database)
    migrate.upgrade(url)
    _load(name, url)
    policy = POLICIES[name]
    made = _add_accounts(url, policy, ORACLES[name])
    admin = sa.create_engine(url)
    if name == SPARK:
        oracle = _resolve_spark(admin, policy)
    else:
        oracle = {
            user: Sees(
                models={m: frozenset(ids) for m, ids in sees["models"].items()},
                read=frozenset(sees["read"]),
                write=frozenset(sees["write"]),
            )
            for user, sees in ORACLES[name]["users"].items()
        }
    # The subject each account acts as: the oracle's (the application's id), else the account's own.
    subjects = {
        user: ORACLES[name]["users"][user].get("subject", str(account)) for user, account in made.items()
    }
    app = App(
        name=name,
        url=url,
        policy_path=policy_path(name),
        policy=policy,
        oracle=oracle,
        accounts=made,
        subjects=subjects,
        data_dir=data_dir,
        admin=admin,
        extra=SPARK_MEMBERSHIPS if name == SPARK else {},
    )
    return app, database


@pytest.fixture(scope="module")
def applications(
    pg_admin: Callable[[str], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str], App]]:
    """The five applications, each built on first use in a database of its own and kept for the
    module (then dropped). A registry rather than a fixture parametrized over the applications:
    the tests are parametrized over each application's own models and tables, and a parametrized
    module fixture would be rebuilt every time pytest's order moves from one application to another."""
    built: dict[str, tuple[App, str]] = {}

    def get(name: str) -> App:
        if name not in built:
            built[name] = _build(name, pg_admin, tmp_path_factory.mktemp(f"apps-{name[:3]}"))
        return built[name][0]

    yield get
    for app, database in built.values():
        app.admin.dispose()
        owner = DatabaseUrl.parse(app.url).libpq
        with psycopg.connect(re.sub(rf"/{database}\b", "/postgres", owner), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{database}" WITH (FORCE)')


@pytest.fixture
def app(name: str, applications: Callable[[str], App]) -> App:
    return applications(name)


@asynccontextmanager
async def connect(app: App, user: str) -> AsyncIterator[Client]:
    """An in-process MCP client whose every call runs as ``user`` (as tests/conftest.py client_as)."""
    server = build_mcp(build_runtime(app.settings, app.url, stdio_user=app.accounts[user]))
    async with Client(server) as client:
        yield client


async def all_ids(client: Client, model: str, pk: str, where: dict[str, Any] | None = None) -> list[str]:
    """Every row's primary key through ``query_records``, two rows a page, following next_cursor."""
    ids: list[str] = []
    arguments: dict[str, Any] = {"model": model, "select": [pk], "take": 2}
    if where is not None:
        arguments["where"] = where
    for _ in range(200):
        page = structured(await client.call_tool("query_records", arguments))
        ids += [str(row[pk]) for row in page["rows"]]
        if page["next_cursor"] is None:
            return ids
        arguments["cursor"] = page["next_cursor"]
    raise AssertionError(f"{model}: next_cursor never ended")


async def count(client: Client, model: str, where: dict[str, Any] | None = None) -> int:
    arguments: dict[str, Any] = {"model": model} | ({"where": where} if where is not None else {})
    return int(structured(await client.call_tool("count_records", arguments))["count"])


# -- starting ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_an_application_starts_only_with_lock_two_guarded_and_proven(app: App) -> None:
    """Issue 11 (item 3): serve and stdio start only when every policy table has row-level security
    for the tool role and `rls check` finds lock 1 and lock 2 give the sampled users the same rows;
    each application, loaded as its developer would, passes both, and its accounts act as the
    subjects its oracle names."""
    compared = prove_servable(app.settings, app.url, rls=True)
    assert compared is not None
    assert set(app.subjects.values()) <= set(compared.subjects)
    recorded = {
        user: app.scalar("SELECT coalesce(subject, id::text) FROM user_profiles WHERE id = :i", i=account)
        for user, account in app.accounts.items()
    }
    assert recorded == app.subjects

    async def start() -> None:
        runtime = build_runtime(app.settings, app.url)
        try:
            await runtime.start()  # the lock-2 guard (db/guard.py) and the knowledge store's columns
        finally:
            await runtime.close()

    anyio.run(start)


# -- 1. every model x user: exactly the oracle's rows ------------------------------------------------


@pytest.mark.parametrize(("name", "model", "user"), READS)
async def test_a_user_reads_and_counts_exactly_the_rows_the_oracle_gives(
    app: App, model: str, user: str
) -> None:
    """Issue 11 (item 4): every model's rows through query_records (every page) and count_records
    are the user's, as the application's rules give them."""
    pk = app.policy.models[model].primary_key
    async with connect(app, user) as client:
        ids = await all_ids(client, model, pk)
        counted = await count(client, model)
    assert len(ids) == len(set(ids)), f"a page repeated a row: {ids}"
    assert set(ids) == app.oracle[user].models[model]
    assert counted == len(app.oracle[user].models[model])


# -- 2. another user's primary key: direct, OR, NOT ------------------------------------------------


@pytest.mark.parametrize(("name", "model", "user"), FOREIGN)
async def test_another_user_s_primary_key_reaches_nothing_by_filter_or_or_or_not(
    app: App, model: str, user: str
) -> None:
    """Issue 11 (item 4): the scope is ANDed outside the filter, so naming another user's row, OR-ing
    it with one's own, or negating one's own never returns a foreign row; counts agree."""
    pk = app.policy.models[model].primary_key
    own = sorted(app.oracle[user].models[model])
    foreign = sorted(app.foreign(model, user))
    async with connect(app, user) as client:
        for stranger in foreign:
            direct = {pk: stranger}
            assert await all_ids(client, model, pk, direct) == []
            assert await count(client, model, direct) == 0
        if own:
            either = {"OR": [{pk: own[0]}, {pk: foreign[0]}]}
            assert await all_ids(client, model, pk, either) == [own[0]]
            assert await count(client, model, either) == 1
            negated = {"NOT": {pk: own[0]}}
            rest = await all_ids(client, model, pk, negated)
            assert set(rest) == set(own) - {own[0]}
            assert await count(client, model, negated) == len(own) - 1


# -- 3. lock 2 alone -------------------------------------------------------------------------------


def _expected_on(app: App, table: str) -> tuple[tuple[str, ...], dict[str, set[tuple[str, ...]]]]:
    """A table's key columns and, per user, the keys the oracle gives them on it: the rows of their
    models on it and, on the knowledge table, the chunks of the collections they may read."""
    if table in app.extra:
        return app.extra[table]
    policy = app.policy
    models = [m for m, spec in policy.models.items() if spec.table == table]
    knowledge = policy.knowledge if policy.knowledge is not None and policy.knowledge.table == table else None
    keys = {policy.models[m].primary_key for m in models} | ({knowledge.id_column} if knowledge else set())
    assert len(keys) == 1, f"{table}: the oracle has no rows for it (or several keys: {keys})"
    (key,) = keys
    expected: dict[str, set[tuple[str, ...]]] = {}
    for user, sees in app.oracle.items():
        rows: set[tuple[str, ...]] = {(k,) for m in models for k in sees.models[m]}
        if knowledge is not None and sees.read:
            chunks = app.column(
                f"SELECT {quoted(key)}::text FROM {quoted(table)} "
                f"WHERE {quoted(knowledge.parent_column)}::text = ANY(:parents)",
                parents=sorted(sees.read),
            )
            rows |= {(c,) for c in chunks}
        expected[user] = rows
    return (key,), expected


@pytest.mark.parametrize(("name", "table", "user"), TABLES)
async def test_lock_two_alone_gives_a_user_no_other_user_s_row_and_all_of_their_own(
    app: App, table: str, user: str
) -> None:
    """Issue 11 (item 3, and ARCHITECTURE's "a bug in lock 1 must still not leak a row"): a SELECT
    with no predicate at all, in the user's tool transaction, reaches only what the oracle gives."""
    columns, expected = _expected_on(app, table)
    schema, _, name = table.rpartition(".")
    target = sa.table(name, *(sa.column(c) for c in columns), schema=schema or None)
    runtime = build_runtime(app.settings, app.url)
    try:
        async with runtime.database.user_transaction(Caller(app.accounts[user], app.subjects[user])) as conn:
            rows = (await conn.execute(sa.select(*(sa.cast(target.c[c], sa.Text) for c in columns)))).all()
    finally:
        await runtime.close()
    seen = {tuple(map(str, row)) for row in rows}
    theirs = set().union(*(expected[o] for o in app.others(user))) - expected[user]
    assert not seen & theirs, f"lock 2 lets {user} see: {sorted(seen & theirs)[:5]}"
    assert expected[user] <= seen, f"lock 2 hides from {user}: {sorted(expected[user] - seen)[:5]}"


# -- 4. knowledge -----------------------------------------------------------------------------------


def _nouns(app: App) -> tuple[str, str, str]:
    """The knowledge tools' nouns: the list tool, its result key, and the collection id argument."""
    k = app.policy.knowledge
    assert k is not None, f"{app.name}: the policy has no [knowledge]"
    return f"list_{k.collections}", k.collections, f"{k.collection}_id"


def _own_collection(app: App, user: str) -> str:
    """A collection ``user`` may write and, where there is one, no other user may read."""
    writable = app.oracle[user].write
    assert writable, f"{app.name}: {user} may write no collection"
    read_by_others = frozenset().union(*(app.oracle[o].read for o in app.others(user)))
    return sorted(writable - read_by_others or writable)[0]


def _others_only(app: App, user: str) -> list[str]:
    """Collections another user may write and ``user`` may not even read."""
    theirs = frozenset().union(*(app.oracle[o].write for o in app.others(user)))
    return sorted(theirs - app.oracle[user].read)


def _add(app: App, user: str, parent: str, content: str) -> dict[str, Any]:
    _, _, id_param = _nouns(app)
    arguments: dict[str, Any] = {id_param: parent, "content": content, "title": "isolation suite"}
    assert app.policy.knowledge is not None
    if app.policy.knowledge.filters:
        arguments["filters"] = ADD_FILTERS[app.name][user]
    return arguments


def _side_table(app: App) -> bool:
    k = app.policy.knowledge
    return k is not None and None in k.bookkeeping().values()


def _counts(app: App) -> tuple[int, int]:
    """Rows of the knowledge table and of rowscope's side table, as the superuser sees them."""
    assert app.policy.knowledge is not None
    table = quoted(app.policy.knowledge.table)
    return app.scalar(f"SELECT count(*) FROM {table}"), app.scalar(f"SELECT count(*) FROM {SIDE_TABLE}")


def _text(app: App, user: str) -> str:
    """A distinctive text, new on every run."""
    return f"{user.capitalize()}'s note {uuid.uuid4().hex} for {app.name}: the heron nests by the mill."


@pytest.mark.parametrize(("name", "user"), APP_USERS)
async def test_the_collections_listed_are_exactly_those_the_user_may_read_and_write(
    app: App, user: str
) -> None:
    """Issue 11 (item 2): list_<collections>, named after the policy's noun, lists the user's
    readable collections and says which they may add to."""
    tool, key, _ = _nouns(app)
    async with connect(app, user) as client:
        listed = structured(await client.call_tool(tool, {}))[key]
    assert {c["id"] for c in listed} == app.oracle[user].read
    assert {c["id"] for c in listed if c["can_write"]} == app.oracle[user].write


@pytest.mark.parametrize("name", ALL)
async def test_added_content_is_stored_once_found_by_search_and_removed_with_its_bookkeeping(
    app: App,
) -> None:
    """Issue 11 (item 4): add_training_content chunks and stores the text (with the policy's filters
    and on_insert values), a second identical add adds nothing, search_knowledge finds it, and
    remove_training_content deletes its chunks and their side-table rows."""
    _, _, id_param = _nouns(app)
    parent = _own_collection(app, "alice")
    text = _text(app, "alice")
    before = _counts(app)
    async with connect(app, "alice") as alice:
        added = structured(await alice.call_tool("add_training_content", _add(app, "alice", parent, text)))
        item = added["item_id"]
        try:
            assert added["chunks_added"] == added["chunks_total"] >= 1
            again = structured(
                await alice.call_tool("add_training_content", _add(app, "alice", parent, text))
            )
            assert (again["item_id"], again["chunks_added"]) == (item, 0)
            stored = _counts(app)
            side = added["chunks_added"] if _side_table(app) else 0
            assert stored == (before[0] + added["chunks_added"], before[1] + side)
            if _side_table(app):
                rows = app.scalar(f"SELECT count(*) FROM {SIDE_TABLE} WHERE source_id = :i", i=item)
                assert rows == added["chunks_added"]
            hits = structured(await alice.call_tool("search_knowledge", {"query": text, "top_k": 3}))["hits"]
            assert hits and (hits[0]["content"], hits[0][id_param]) == (text, parent)
        finally:
            removed = structured(
                await alice.call_tool("remove_training_content", {id_param: parent, "item_id": item})
            )
    assert removed["chunks_removed"] == added["chunks_added"]
    assert _counts(app) == before
    if _side_table(app):
        assert app.scalar(f"SELECT count(*) FROM {SIDE_TABLE} WHERE source_id = :i", i=item) == 0


@pytest.mark.parametrize("name", ISOLATED)
async def test_adding_to_a_collection_only_another_user_may_use_is_refused_and_writes_nothing(
    app: App,
) -> None:
    """Issue 11 (item 4): a collection alice may not write is refused as a tool error, and nothing
    reaches the knowledge table or rowscope's side table."""
    foreign = _others_only(app, "alice")
    assert foreign, f"{app.name}: no collection is only another user's, yet the oracle is not single-tenant"
    before = _counts(app)
    async with connect(app, "alice") as alice:
        for parent in foreign:
            refused = await alice.call_tool(
                "add_training_content", _add(app, "alice", parent, _text(app, "alice"))
            )
            assert refused.is_error, refused.structured_content
    assert _counts(app) == before


@pytest.mark.parametrize("name", ISOLATED)
async def test_search_never_returns_a_chunk_of_a_collection_only_another_user_may_read(app: App) -> None:
    """Issue 11 (item 4): bob's new text, searched for word for word by alice, is not among her hits,
    nor any chunk of a collection only others may read; naming bob's collection is a tool error."""
    _, _, id_param = _nouns(app)
    theirs = _own_collection(app, "bob")
    assert theirs not in app.oracle["alice"].read, f"{app.name}: bob has no collection alice cannot read"
    hidden = frozenset().union(*(app.oracle[o].read for o in app.others("alice"))) - app.oracle["alice"].read
    text = _text(app, "bob")
    async with connect(app, "bob") as bob:
        added = structured(await bob.call_tool("add_training_content", _add(app, "bob", theirs, text)))
        try:
            assert added["chunks_added"] >= 1
            mine = structured(await bob.call_tool("search_knowledge", {"query": text, "top_k": 1}))["hits"]
            assert mine and mine[0]["content"] == text  # the text is there to be found
            async with connect(app, "alice") as alice:
                hits = structured(await alice.call_tool("search_knowledge", {"query": text, "top_k": 50}))[
                    "hits"
                ]
                named = await alice.call_tool("search_knowledge", {"query": text, id_param: theirs})
        finally:
            await bob.call_tool("remove_training_content", {id_param: theirs, "item_id": added["item_id"]})
    assert text not in {h["content"] for h in hits}
    assert not {h[id_param] for h in hits} & hidden
    assert {h[id_param] for h in hits} <= app.oracle["alice"].read
    assert named.is_error, named.structured_content


@pytest.mark.parametrize("name", ISOLATED)
async def test_another_user_cannot_remove_a_user_s_training_content(app: App) -> None:
    """Issue 11 (item 4): bob's remove of alice's item (in a collection he may not write) is a tool
    error and deletes nothing; alice's own remove then does."""
    _, _, id_param = _nouns(app)
    parent = _own_collection(app, "alice")
    assert parent not in app.oracle["bob"].write
    text = _text(app, "alice")
    async with connect(app, "alice") as alice:
        added = structured(await alice.call_tool("add_training_content", _add(app, "alice", parent, text)))
        try:
            stored = _counts(app)
            async with connect(app, "bob") as bob:
                refused = await bob.call_tool(
                    "remove_training_content", {id_param: parent, "item_id": added["item_id"]}
                )
            assert refused.is_error, refused.structured_content
            assert _counts(app) == stored
        finally:
            removed = structured(
                await alice.call_tool(
                    "remove_training_content", {id_param: parent, "item_id": added["item_id"]}
                )
            )
    assert removed["chunks_removed"] == added["chunks_added"]


@pytest.mark.parametrize("name", SHARED)
async def test_a_single_tenant_application_gives_both_users_the_same_rows_and_knowledge(app: App) -> None:
    """Issue 11 (002's README): with every rule public there is nothing to isolate; instead both
    accounts see every row, list every collection, and find what the other added."""
    assert app.oracle["alice"] == app.oracle["bob"]  # the oracle says so, by hand
    tool, key, id_param = _nouns(app)
    parent = _own_collection(app, "alice")
    text = _text(app, "alice")
    async with connect(app, "alice") as alice, connect(app, "bob") as bob:
        for model, spec in app.policy.models.items():
            rows = [set(await all_ids(c, model, spec.primary_key)) for c in (alice, bob)]
            assert rows[0] == rows[1] == app.oracle["alice"].models[model]
        listed = [{c["id"] for c in structured(await c.call_tool(tool, {}))[key]} for c in (alice, bob)]
        assert listed[0] == listed[1] == app.oracle["alice"].read
        added = structured(await alice.call_tool("add_training_content", _add(app, "alice", parent, text)))
        try:
            hits = structured(await bob.call_tool("search_knowledge", {"query": text, "top_k": 1}))["hits"]
            assert hits and hits[0]["content"] == text
        finally:
            await alice.call_tool("remove_training_content", {id_param: parent, "item_id": added["item_id"]})


# -- 5. 004's admin ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [pytest.param("004-ops-tools", id="004-ops-tools")])
async def test_an_admin_sees_every_project_and_rating_and_a_user_does_not(app: App) -> None:
    """Issue 11 (004's README): carol (ADMIN) reads every project and every Likert score, the LLMs'
    included, as in the application; alice (USER) only her own."""
    for model, table in (("Project", "projects"), ("LikertScore", "likert_scores")):
        everything = set(app.column(f"SELECT id FROM {table}"))
        async with connect(app, "carol") as carol, connect(app, "alice") as alice:
            assert set(await all_ids(carol, model, "id")) == everything == app.oracle["carol"].models[model]
            assert await count(carol, model) == len(everything)
            assert set(await all_ids(alice, model, "id")) < everything


# -- 6. the checked-in rls.sql is what the planner writes -------------------------------------------


@pytest.mark.parametrize("name", EXAMPLE_PARAMS)
async def test_rls_plan_reproduces_the_example_s_reviewed_migration(app: App, name: str) -> None:
    """Issue 11 (item 3): `rowscope rls plan --policy examples/<seed>/policy.toml` on the example's
    database writes exactly its checked-in rls.sql, so a policy that drifts from its reviewed
    migration fails here: plan again, review, commit."""
    relative = Path("examples") / name / "policy.toml"
    planned = await rls.plan(DatabaseUrl.parse(app.url).libpq, app.policy, policy_origin(relative))
    assert planned == (ROOT / "examples" / name / "rls.sql").read_text("utf-8")


# -- 7. the real CLI --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", EXAMPLE_PARAMS)
async def test_rowscope_stdio_serves_an_example_as_its_user(app: App, name: str, tmp_path: Path) -> None:
    """Issue 11 ("done when"): `rowscope stdio --user alice@example.com` with the example's policy
    starts (both locks proven) and answers query_records with alice's rows only."""
    model = SMOKE_MODEL[name]
    pk = app.policy.models[model].primary_key
    params = StdioServerParameters(
        command=ROWSCOPE,
        args=["stdio", "--user", "alice@example.com"],
        env={"DATABASE_URL": app.url, "ROWSCOPE_POLICY": str(app.policy_path)},
    )
    with (tmp_path / "stdio-stderr.log").open("w+") as log:
        async with Client(stdio_client(params, errlog=log)) as client:
            ids = await all_ids(client, model, pk)
    assert set(ids) == app.oracle["alice"].models[model]


@pytest.mark.slow
@pytest.mark.parametrize("name", EXAMPLE_PARAMS)
async def test_rowscope_serve_serves_an_example_over_http_with_an_api_key(
    app: App, name: str, tmp_path: Path
) -> None:
    """Issue 11 ("done when"): `rowscope serve` with the example's policy answers an MCP client over
    HTTP, with alice's API key: her rows only, and her collections through the policy's own list
    tool (the direct path's read set follows the policy's tool names)."""

    async def make_key() -> str:
        database = Database(DatabaseUrl.parse(app.url), pool_size=1)
        try:
            async with database.service_transaction() as conn:
                return (await accounts.create_key(conn, "alice@example.com", "isolation suite"))[1]
        finally:
            await database.dispose()

    model = SMOKE_MODEL[name]
    pk = app.policy.models[model].primary_key
    tool, listed_key, _ = _nouns(app)
    key = await make_key()
    with serve(app.url, tmp_path, ROWSCOPE_POLICY=str(app.policy_path)) as base_url:
        async with (
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30) as http,
            Client(streamable_http_client(f"{base_url}/mcp", http_client=http)) as client,
        ):
            ids = await all_ids(client, model, pk)
            listed = structured(await client.call_tool(tool, {}))[listed_key]
    assert set(ids) == app.oracle["alice"].models[model]
    assert {c["id"] for c in listed} == app.oracle["alice"].read
