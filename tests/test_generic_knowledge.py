"""The knowledge store and its tools over applications that are not Spark (issue 11): a Tzurot-like
``memories`` table (text ids the client makes, a NOT NULL ``channelId`` exposed as a filter, an
``updatedAt`` without default set by ``{ now = true }``, no bookkeeping columns), a ``double
precision[]`` store of 768 dimensions (seed 004's FLOAT[]) and a ``halfvec`` one with integer ids,
all driven through real MCP tool calls. Each test database is fresh and migrated like production;
the application's tables and their row-level security (lock 2) are written here by hand, as the
application's developer would (``rowscope rls plan`` will write them)."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
import sqlalchemy as sa
from mcp.client import Client

from rowscope.db import migrate
from rowscope.db.policy import PolicyError
from rowscope.embeddings import OfflineEmbedder
from rowscope.server.app import build_mcp, build_runtime
from rowscope.server.settings import Settings
from tests.conftest import error_text, structured

pytestmark = pytest.mark.anyio

ALICE, BOB = uuid.UUID(int=0xA11CE), uuid.UUID(int=0xB0B)
OFFLINE = "offline:all-MiniLM-L6-v2-int8"
TOOL = "rowscope_tool"

SCHEMA = f"""
CREATE TABLE users (id text PRIMARY KEY, email text NOT NULL UNIQUE);
CREATE TABLE personalities (
  id text PRIMARY KEY, "ownerId" text NOT NULL REFERENCES users(id), name text NOT NULL, description text
);
CREATE TABLE memories (
  id text PRIMARY KEY,
  "personalityId" text NOT NULL REFERENCES personalities(id) ON DELETE CASCADE,
  "channelId" text NOT NULL,
  content text NOT NULL,
  embedding vector(1536),
  metadata jsonb,
  "createdAt" timestamptz NOT NULL DEFAULT now(),
  "updatedAt" timestamptz NOT NULL
);
CREATE INDEX ON memories ("personalityId", "channelId");
CREATE TABLE projects (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(), owner text NOT NULL, name text NOT NULL
);
CREATE TABLE records (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  "projectId" uuid NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
  "createdBy" text NOT NULL,
  kind text NOT NULL DEFAULT 'note',
  body text NOT NULL,
  embedding double precision[] NOT NULL DEFAULT '{{}}'
);
CREATE TABLE snippets (
  id bigserial PRIMARY KEY,
  "personalityId" text NOT NULL REFERENCES personalities(id) ON DELETE CASCADE,
  origin text NOT NULL,
  content text NOT NULL,
  embedding halfvec(1536)
);
GRANT SELECT ON users, personalities, projects TO {TOOL};
GRANT SELECT, INSERT, DELETE ON memories, records, snippets TO {TOOL};
GRANT USAGE ON SEQUENCE snippets_id_seq TO {TOOL};
"""

# Lock 2, by hand: each table's rows for the subject (rowscope_subject(), migration 0014), and the
# side table's rows of each store by its parent's read rule.
OWN_PERSONALITIES = """(SELECT id FROM personalities WHERE "ownerId" = rowscope_subject())"""
OWN_PROJECTS = "(SELECT id FROM projects WHERE owner = rowscope_subject())"
RLS = f"""
ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE personalities ENABLE ROW LEVEL SECURITY;
ALTER TABLE memories ENABLE ROW LEVEL SECURITY;
ALTER TABLE projects ENABLE ROW LEVEL SECURITY;
ALTER TABLE records ENABLE ROW LEVEL SECURITY;
ALTER TABLE snippets ENABLE ROW LEVEL SECURITY;
CREATE POLICY own ON users TO {TOOL} USING (id = rowscope_subject());
CREATE POLICY own ON personalities TO {TOOL} USING ("ownerId" = rowscope_subject());
CREATE POLICY own ON projects TO {TOOL} USING (owner = rowscope_subject());
CREATE POLICY own ON memories TO {TOOL}
  USING ("personalityId" IN {OWN_PERSONALITIES}) WITH CHECK ("personalityId" IN {OWN_PERSONALITIES});
CREATE POLICY own ON snippets TO {TOOL}
  USING ("personalityId" IN {OWN_PERSONALITIES}) WITH CHECK ("personalityId" IN {OWN_PERSONALITIES});
CREATE POLICY own ON records TO {TOOL}
  USING ("projectId" IN {OWN_PROJECTS}) WITH CHECK ("projectId" IN {OWN_PROJECTS});
"""
SIDE_RLS = "".join(
    f"CREATE POLICY {store} ON knowledge_chunks TO {TOOL} USING ({rule}) WITH CHECK ({rule});\n"
    for store, parents in (
        ("memories", OWN_PERSONALITIES),
        ("snippets", OWN_PERSONALITIES),
        ("records", OWN_PROJECTS),
    )
    for rule in [f"store = '{store}' AND parent_id IN (SELECT p.id::text FROM {parents} AS p)"]
)

PROJECT_A, PROJECT_B = uuid.UUID(int=0xA), uuid.UUID(int=0xB)
DATA = f"""
INSERT INTO user_profiles (id, email, subject) VALUES
  ('{ALICE}', 'alice@app.example', 'u_alice'), ('{BOB}', 'bob@app.example', 'u_bob');
INSERT INTO users VALUES ('u_alice', 'alice@app.example'), ('u_bob', 'bob@app.example');
INSERT INTO personalities VALUES
  ('p_lilith', 'u_alice', 'Lilith', 'A gardener'), ('p_bob', 'u_bob', 'Bobbot', 'Private');
INSERT INTO projects VALUES ('{PROJECT_A}', 'u_alice', 'Alpha'), ('{PROJECT_B}', 'u_bob', 'Beta');
"""

POLICY_HEAD = """
version = 1
[users]
table = "users"

[access.personality]
table = "personalities"
read = { owner = "ownerId" }
write = { owner = "ownerId" }

[access.project]
table = "projects"
read = { owner = "owner" }
write = { owner = "owner" }

[models.Personality]
table = "personalities"
columns = ["id", "name", "description"]
scope = { access = "personality" }
"""

MEMORIES = """
[knowledge]
table = "memories"
access = "personality"
parent_column = "personalityId"
dimensions = 1536
collection = "personality"
collections = "personalities"
collections_description = "The characters you created."
filters = { channel = "channelId" }
on_insert = { updatedAt = { now = true } }
"""

RECORDS = """
[knowledge]
table = "records"
access = "project"
parent_column = "projectId"
text_column = "body"
dimensions = 768
collection = "project"
collections = "projects"
parent_label_columns = ["name"]
filters = { kind = "kind" }
on_insert = { createdBy = { user = true } }
"""

SNIPPETS = """
[knowledge]
table = "snippets"
access = "personality"
parent_column = "personalityId"
dimensions = 1536
collection = "personality"
collections = "personalities"
on_insert = { origin = { value = "rowscope" } }
"""


@pytest.fixture(scope="module")
def app_url(pg_admin: Callable[[str], str]) -> Iterator[str]:
    """A fresh database migrated like production, with the application's tables, their row-level
    security written by hand, and two users (alice, bob) who each own a personality and a project."""
    url = pg_admin(f"rowscope_generic_{secrets.token_hex(4)}")
    migrate.upgrade(url)
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(SCHEMA)
        conn.execute(RLS)
        conn.execute(SIDE_RLS)
        conn.execute(DATA)
    yield url


@pytest.fixture(scope="module")
def admin(app_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(app_url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def policy_for(tmp_path: Path) -> Callable[[str], Path]:
    def write(knowledge: str) -> Path:
        path = tmp_path / f"policy_{secrets.token_hex(3)}.toml"
        path.write_text(POLICY_HEAD + knowledge)
        return path

    return write


@pytest.fixture
def connect(
    app_url: str, tmp_path: Path, policy_for: Callable[[str], Path]
) -> Callable[[str, uuid.UUID], Any]:
    """An in-process MCP SDK client of a server with the given [knowledge], as the given account."""

    @asynccontextmanager
    async def open_client(knowledge: str, account: uuid.UUID) -> AsyncIterator[Client]:
        settings = Settings(
            database_url=app_url,
            data_dir=tmp_path,
            openai_api_key=None,
            policy=policy_for(knowledge),
            rls_check=False,
        )
        async with Client(build_mcp(build_runtime(settings, app_url, stdio_user=account))) as client:
            yield client

    return open_client


def rows(admin: sa.Engine, statement: str, **params: Any) -> list[Any]:
    with admin.begin() as conn:
        result = conn.execute(sa.text(statement), params)
        return list(result.all()) if result.returns_rows else []


@pytest.fixture
def clean(admin: sa.Engine) -> Iterator[None]:
    yield
    with admin.begin() as conn:
        for table in ("memories", "records", "snippets", "knowledge_chunks", "training_additions"):
            conn.execute(sa.text(f"DELETE FROM {table}"))


async def test_the_tools_carry_the_policy_s_nouns_in_their_names_and_schemas(connect: Any) -> None:
    """Issue 11: list_<collections>, a <collection>_id argument, filters only where the policy has them."""
    async with connect(MEMORIES, ALICE) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == {
        "query_records",
        "count_records",
        "list_personalities",
        "search_knowledge",
        "add_training_content",
        "remove_training_content",
    }
    search = tools["search_knowledge"].input_schema["properties"]
    assert {"personality_id", "filters"} <= set(search) and "spark_id" not in search
    assert "channel" in search["filters"]["description"]
    add = tools["add_training_content"].input_schema
    assert "personality_id" in add["required"] and "filters" in add["properties"]
    assert tools["remove_training_content"].input_schema["required"] == ["personality_id", "item_id"]
    hit = tools["search_knowledge"].output_schema
    assert hit is not None and "personality_id" in str(hit)
    assert "characters you created" in (tools["list_personalities"].description or "")
    async with connect(SNIPPETS, ALICE) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert "filters" not in tools["search_knowledge"].input_schema["properties"]


async def test_list_shows_only_the_user_s_own_collections(connect: Any) -> None:
    """Issue 11: the parents the access rule lets the user read, with whether they may write."""
    async with connect(MEMORIES, ALICE) as client:
        listed = structured(await client.call_tool("list_personalities", {}))
    assert listed == {
        "personalities": [
            {"id": "p_lilith", "name": "Lilith", "description": "A gardener", "can_write": True}
        ]
    }


async def test_adding_writes_app_rows_and_side_rows_once_and_search_filters_them(
    connect: Any, admin: sa.Engine, clean: None
) -> None:
    """Issue 11: ids made for a table without a default, on_insert and filter values written, the
    bookkeeping in the side table, the same text twice adds nothing, filters narrow the search."""
    text = "Lilith planted tomatoes by the south wall in early May."
    args = {"personality_id": "p_lilith", "content": text, "title": "garden", "filters": {"channel": "c1"}}
    async with connect(MEMORIES, ALICE) as client:
        first = structured(await client.call_tool("add_training_content", args))
        again = structured(await client.call_tool("add_training_content", args))
        other = structured(
            await client.call_tool(
                "add_training_content",
                {
                    "personality_id": "p_lilith",
                    "content": "Lilith hates cold mornings.",
                    "filters": {"channel": "c2"},
                },
            )
        )
        found = structured(
            await client.call_tool("search_knowledge", {"query": "when were tomatoes planted"})
        )
        in_c2 = structured(
            await client.call_tool(
                "search_knowledge", {"query": "when were tomatoes planted", "filters": {"channel": ["c2"]}}
            )
        )
    assert (first["chunks_added"], again["chunks_added"], other["chunks_added"]) == (1, 0, 1)
    assert first["item_id"] == again["item_id"] and first["personality_id"] == "p_lilith"
    (row,) = rows(admin, """SELECT id, "channelId", "updatedAt" FROM memories WHERE content = :t""", t=text)
    assert uuid.UUID(row.id) and row[1] == "c1" and row[2] is not None
    (side,) = rows(admin, "SELECT * FROM knowledge_chunks WHERE chunk_id = :id", id=row.id)
    assert (side.store, side.parent_id, side.source_id, side.embedding_model) == (
        "memories",
        "p_lilith",
        first["item_id"],
        OFFLINE,
    )
    assert found["hits"][0]["content"] == text and found["hits"][0]["personality_id"] == "p_lilith"
    assert found["hits"][0]["title"] == "garden" and found["hits"][0]["source_type"] == "manual_entry"
    assert [h["content"] for h in in_c2["hits"]] == ["Lilith hates cold mornings."]


async def test_a_missing_required_filter_or_an_unknown_one_is_refused_and_nothing_is_written(
    connect: Any, admin: sa.Engine, clean: None
) -> None:
    """Our choice: "channelId" is NOT NULL without a default, so an add must name the channel."""
    async with connect(MEMORIES, ALICE) as client:
        missing = await client.call_tool(
            "add_training_content", {"personality_id": "p_lilith", "content": "x"}
        )
        unknown = await client.call_tool("search_knowledge", {"query": "x", "filters": {"room": "c1"}})
    assert "filters.channel" in error_text(missing)
    assert "channel" in error_text(unknown) and "room" in error_text(unknown)
    assert rows(admin, "SELECT count(*) FROM memories")[0][0] == 0
    assert rows(admin, "SELECT count(*) FROM training_additions")[0][0] == 0


async def test_another_user_s_collections_and_chunks_are_out_of_reach(
    connect: Any, admin: sa.Engine, clean: None
) -> None:
    """Issue 11: both locks; bob's personality is neither searchable nor writable by alice."""
    async with connect(MEMORIES, BOB) as client:
        structured(
            await client.call_tool(
                "add_training_content",
                {
                    "personality_id": "p_bob",
                    "content": "Bob's secret tomato recipe.",
                    "filters": {"channel": "c1"},
                },
            )
        )
    async with connect(MEMORIES, ALICE) as client:
        hits = structured(await client.call_tool("search_knowledge", {"query": "tomato recipe"}))["hits"]
        named = await client.call_tool("search_knowledge", {"query": "tomato", "personality_id": "p_bob"})
        write = await client.call_tool(
            "add_training_content", {"personality_id": "p_bob", "content": "x", "filters": {"channel": "c1"}}
        )
    assert hits == []
    assert "no personality p_bob" in error_text(named) and "list_personalities" in error_text(named)
    assert "no personality p_bob" in error_text(write)
    assert rows(admin, """SELECT count(*) FROM memories WHERE "personalityId" = 'p_bob'""")[0][0] == 1


async def test_removing_an_item_deletes_its_rows_and_side_rows(
    connect: Any, admin: sa.Engine, clean: None
) -> None:
    """Issue 11: remove_training_content undoes an add, in the app's table and the side table."""
    async with connect(MEMORIES, ALICE) as client:
        added = structured(
            await client.call_tool(
                "add_training_content",
                {"personality_id": "p_lilith", "content": "y" * 1500, "filters": {"channel": "c1"}},
            )
        )
        removed = structured(
            await client.call_tool(
                "remove_training_content", {"personality_id": "p_lilith", "item_id": added["item_id"]}
            )
        )
        again = await client.call_tool(
            "remove_training_content", {"personality_id": "p_lilith", "item_id": added["item_id"]}
        )
    assert added["chunks_added"] == removed["chunks_removed"] == 2
    assert "no training item" in error_text(again)
    assert rows(admin, "SELECT count(*) FROM memories")[0][0] == 0
    assert rows(admin, "SELECT count(*) FROM knowledge_chunks")[0][0] == 0


async def test_two_concurrent_adds_of_one_text_store_it_once(
    connect: Any, admin: sa.Engine, clean: None
) -> None:
    """Our choice: the side table's unique (store, parent, hash) is the arbiter between adds."""
    args = {"personality_id": "p_lilith", "content": "Concurrent memory.", "filters": {"channel": "c1"}}
    results: list[dict[str, Any]] = []
    async with connect(MEMORIES, ALICE) as one, connect(MEMORIES, ALICE) as two:

        async def add(client: Client) -> None:
            results.append(structured(await client.call_tool("add_training_content", args)))

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(add, one)
                tasks.start_soon(add, two)
    assert sorted(r["chunks_added"] for r in results) == [0, 1]
    assert rows(admin, "SELECT count(*) FROM memories")[0][0] == 1
    assert rows(admin, "SELECT count(*) FROM knowledge_chunks")[0][0] == 1


@pytest.mark.parametrize(
    ("compatible", "found"),
    [
        pytest.param(f'embedded_with = "{OFFLINE}"', True, id="embedded-with-this-model"),
        pytest.param('embedded_with = "openai:text-embedding-3-small"', False, id="another-model"),
        pytest.param(
            f'embedded_with = "openai:text-embedding-3-small"\ncompatible_models = ["{OFFLINE}"]',
            True,
            id="listed-compatible",
        ),
        pytest.param("", False, id="model-unknown"),
    ],
)
async def test_rows_the_application_embedded_are_searched_only_when_their_model_compares(
    connect: Any, admin: sa.Engine, clean: None, compatible: str, found: bool
) -> None:
    """Issue 11: the app's own rows (no side row) count when the policy says their model is ours
    or compatible; otherwise they are left out, and that is no error."""
    text = "The app stored this memory about the lighthouse itself."
    (vector,) = await OfflineEmbedder(dimensions=1536).embed([text])
    rows(
        admin,
        """INSERT INTO memories (id, "personalityId", "channelId", content, embedding, "updatedAt")
           VALUES ('app-1', 'p_lilith', 'c1', :t, CAST(:v AS vector), now())""",
        t=text,
        v=str(vector),
    )
    async with connect(MEMORIES + compatible + "\n", ALICE) as client:
        result = await client.call_tool("search_knowledge", {"query": "the lighthouse memory"})
    hits = structured(result)["hits"]
    assert [h["id"] for h in hits] == (["app-1"] if found else [])
    if found:
        assert hits[0]["source_type"] is None and hits[0]["similarity"] > 0.5


@pytest.mark.parametrize(
    "bad",
    [pytest.param("not-a-uuid", id="malformed"), pytest.param("12", id="number")],
)
async def test_a_malformed_collection_id_is_a_clear_error_naming_the_argument(connect: Any, bad: str) -> None:
    """Our choice: ids arrive as strings and are checked against the column's type (uuid here)."""
    async with connect(RECORDS, ALICE) as client:
        search = await client.call_tool("search_knowledge", {"query": "x", "project_id": bad})
        add = await client.call_tool("add_training_content", {"project_id": bad, "content": "x"})
    assert "project_id" in error_text(search) and "uuid" in error_text(search)
    assert "project_id" in error_text(add)


async def test_a_float_array_store_of_768_dimensions_adds_searches_and_skips_empty_vectors(
    connect: Any, admin: sa.Engine, clean: None
) -> None:
    """Issue 11 (seed 004's FLOAT[]): vectors cast in SQL; the app's empty '{}' rows are skipped."""
    rows(
        admin,
        """INSERT INTO records ("projectId", "createdBy", body) VALUES (:p, 'u_alice', 'no vector yet')""",
        p=PROJECT_A,
    )
    async with connect(RECORDS, ALICE) as client:
        added = structured(
            await client.call_tool(
                "add_training_content",
                {
                    "project_id": str(PROJECT_A),
                    "content": "Quarterly survey: morale is high.",
                    "filters": {"kind": "survey"},
                },
            )
        )
        hits = structured(await client.call_tool("search_knowledge", {"query": "how is morale"}))["hits"]
        filtered = structured(
            await client.call_tool(
                "search_knowledge", {"query": "how is morale", "filters": {"kind": "note"}}
            )
        )["hits"]
    assert added["chunks_added"] == 1 and added["project_id"] == str(PROJECT_A)
    assert [h["content"] for h in hits] == ["Quarterly survey: morale is high."]
    assert filtered == []
    (row,) = rows(
        admin, """SELECT "createdBy", kind, cardinality(embedding) FROM records WHERE kind = 'survey'"""
    )
    assert tuple(row) == ("u_alice", "survey", 768)


async def test_a_halfvec_store_with_integer_ids_adds_searches_and_removes(
    connect: Any, admin: sa.Engine, clean: None
) -> None:
    """Issue 11: halfvec compared as halfvec; ids from the column's sequence; a fixed on_insert value."""
    async with connect(SNIPPETS, ALICE) as client:
        added = structured(
            await client.call_tool(
                "add_training_content",
                {"personality_id": "p_lilith", "content": "Snippet about sailing boats."},
            )
        )
        hits = structured(await client.call_tool("search_knowledge", {"query": "sailing"}))["hits"]
        removed = structured(
            await client.call_tool(
                "remove_training_content", {"personality_id": "p_lilith", "item_id": added["item_id"]}
            )
        )
    assert added["chunks_added"] == removed["chunks_removed"] == 1
    assert hits[0]["content"] == "Snippet about sailing boats." and int(hits[0]["id"]) > 0
    assert rows(admin, "SELECT count(*) FROM snippets")[0][0] == 0


@pytest.mark.parametrize(
    ("knowledge", "expected"),
    [
        pytest.param(
            MEMORIES.replace("dimensions = 1536", "dimensions = 768"),
            ["memories.embedding", "1536", "768"],
            id="wrong-dimension",
        ),
        pytest.param(
            MEMORIES.replace("on_insert = { updatedAt = { now = true } }", ""),
            ["updatedAt", "on_insert"],
            id="required-column-unset",
        ),
        pytest.param(
            MEMORIES.replace('filters = { channel = "channelId" }', ""),
            ["channelId", "filters"],
            id="required-filter-column-unset",
        ),
    ],
)
async def test_a_store_that_does_not_fit_the_policy_is_refused_at_start_in_one_line(
    app_url: str, tmp_path: Path, policy_for: Callable[[str], Path], knowledge: str, expected: list[str]
) -> None:
    """Issue 11: a policy/database mismatch fails before serving, with one line saying what to change."""
    settings = Settings(
        database_url=app_url,
        data_dir=tmp_path,
        openai_api_key=None,
        policy=policy_for(knowledge),
        rls_check=False,
    )
    runtime = build_runtime(settings, app_url)
    try:
        with pytest.raises(PolicyError) as refused:
            await runtime.start()
    finally:
        await runtime.close()
    message = str(refused.value)
    assert "\n" not in message and all(part in message for part in expected), message
