"""The policy grammar of issue 11 on an application schema that is not Spark's: user ids of other
types (text, varchar, uuid) bound as one text subject and cast per column, schema-qualified and
mixed-case tables, the ``role``, ``public`` and ``unset`` rules. Each rule's rows are compared with
plain SQL written by hand for the same question, on a real database."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest
import sqlalchemy as sa

from rowscope.db import migrate
from rowscope.db.engine import Database, DatabaseUrl
from rowscope.db.policy import USER_PARAM, CompiledPolicy, PolicyError, load_policy
from rowscope.server.database import offline_fits
from rowscope.server.runtime import compile_policy
from rowscope.server.settings import Settings

ALICE = "11111111-1111-1111-1111-111111111111"
BOB = "22222222-2222-2222-2222-222222222222"
ADMIN = "33333333-3333-3333-3333-333333333333"

SCHEMA = f"""
CREATE SCHEMA auth;
CREATE TABLE auth.users (id uuid PRIMARY KEY, email text NOT NULL UNIQUE);
CREATE TYPE "UserRole" AS ENUM ('PENDING', 'USER', 'ADMIN');
CREATE TABLE profiles (
  id uuid PRIMARY KEY REFERENCES auth.users (id), email text NOT NULL, role "UserRole" NOT NULL
);
CREATE TABLE projects (id text PRIMARY KEY, name text NOT NULL, "ownerId" uuid REFERENCES profiles (id));
CREATE TABLE "DataRecord" (
  id text PRIMARY KEY, "projectId" text NOT NULL REFERENCES projects (id), content text NOT NULL,
  "parentId" text
);
CREATE TABLE likert_scores (id text PRIMARY KEY, "userId" varchar(64) NOT NULL, score int NOT NULL);
CREATE TABLE settings (key text PRIMARY KEY, value text NOT NULL);
CREATE INDEX ON projects ("ownerId");

INSERT INTO auth.users VALUES ('{ALICE}', 'alice@example.com'), ('{BOB}', 'bob@example.com'),
  ('{ADMIN}', 'carol@example.com');
INSERT INTO profiles VALUES ('{ALICE}', 'alice@example.com', 'USER'), ('{BOB}', 'bob@example.com', 'USER'),
  ('{ADMIN}', 'carol@example.com', 'ADMIN');
INSERT INTO projects VALUES ('p-alice', 'Alice''s', '{ALICE}'), ('p-bob', 'Bob''s', '{BOB}'),
  ('p-none', 'Nobody''s', NULL);
INSERT INTO "DataRecord" VALUES ('r-alice-1', 'p-alice', 'a1', NULL),
  ('r-alice-2', 'p-alice', 'a2', 'r-alice-1'), ('r-bob-1', 'p-bob', 'b1', NULL),
  ('r-none-1', 'p-none', 'n1', NULL);
INSERT INTO likert_scores VALUES ('l-alice', '{ALICE}', 5), ('l-bob', '{BOB}', 3),
  ('l-llm', '00000000-0000-0000-0000-000000000000', 7);
INSERT INTO settings VALUES ('ai_provider', 'lmstudio');
"""

POLICY = """
    version = 1

    [users]
    table = "profiles"

    [access.project]
    table = "projects"
    read = { any = [{ owner = "ownerId" }, { role = { column = "role", values = ["ADMIN"] } }] }
    write = { owner = "ownerId" }

    [models.AuthUser]
    table = "auth.users"
    columns = ["id", "email"]
    scope = { owner = "id" }

    [models.Project]
    table = "projects"
    columns = ["id", "name"]
    scope = { access = "project" }

    [models.OwnProject]
    table = "projects"
    columns = ["id", "name"]
    scope = { owner = "ownerId" }

    [models.Record]
    table = "DataRecord"
    columns = ["id", "content"]
    scope = { parent = { column = "projectId", access = "project" } }

    [models.RootRecord]
    table = "DataRecord"
    columns = ["id", "content"]
    scope = { all = [{ parent = { column = "projectId", access = "project" } }, { unset = "parentId" }] }

    [models.Score]
    table = "likert_scores"
    columns = ["id", "score"]
    scope = { any = [
      { owner = "userId" },
      { role = { table = "auth.users", key = "id", column = "email", values = ["carol@example.com"] } },
    ] }

    [models.Setting]
    table = "settings"
    primary_key = "key"
    columns = ["key", "value"]
    scope = { public = true }
"""

# The same questions in plain SQL, for :uid given as text.
EXPECTED = {
    "AuthUser": "SELECT id::text FROM auth.users WHERE id = CAST(:uid AS uuid)",
    "Project": (
        'SELECT id FROM projects WHERE "ownerId" = CAST(:uid AS uuid) '
        "OR EXISTS (SELECT 1 FROM profiles WHERE id = CAST(:uid AS uuid) AND role = 'ADMIN')"
    ),
    "OwnProject": 'SELECT id FROM projects WHERE "ownerId" = CAST(:uid AS uuid)',
    "Record": (
        'SELECT r.id FROM "DataRecord" r JOIN projects p ON p.id = r."projectId" '
        'WHERE p."ownerId" = CAST(:uid AS uuid) '
        "OR EXISTS (SELECT 1 FROM profiles WHERE id = CAST(:uid AS uuid) AND role = 'ADMIN')"
    ),
    "RootRecord": (
        'SELECT r.id FROM "DataRecord" r JOIN projects p ON p.id = r."projectId" '
        'WHERE r."parentId" IS NULL AND (p."ownerId" = CAST(:uid AS uuid) '
        "OR EXISTS (SELECT 1 FROM profiles WHERE id = CAST(:uid AS uuid) AND role = 'ADMIN'))"
    ),
    "Score": (
        'SELECT id FROM likert_scores WHERE "userId" = :uid '
        "OR EXISTS (SELECT 1 FROM auth.users WHERE id = CAST(:uid AS uuid) AND email = 'carol@example.com')"
    ),
    "Setting": "SELECT key FROM settings",
}


@pytest.fixture(scope="module")
def app_url(pg_admin: Callable[[str], str]) -> Iterator[str]:
    url = pg_admin("rowscope_grammar")
    migrate.upgrade(url)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(SCHEMA)
    engine.dispose()
    yield url


def compile_at(url: str, path: Path) -> CompiledPolicy:
    """The policy compiled against the database as the runtime compiles it (reflection included)."""

    async def run() -> CompiledPolicy:
        database = Database(DatabaseUrl.parse(url))
        try:
            return await compile_policy(database, load_policy(path))
        finally:
            await database.dispose()

    return anyio.run(run)


@pytest.fixture(scope="module")
def compiled(app_url: str, tmp_path_factory: pytest.TempPathFactory) -> CompiledPolicy:
    path = tmp_path_factory.mktemp("grammar") / "policy.toml"
    path.write_text(textwrap.dedent(POLICY), "utf-8")
    return compile_at(app_url, path)


@pytest.mark.parametrize("subject", [ALICE, BOB, ADMIN], ids=["alice", "bob", "admin"])
@pytest.mark.parametrize("model", list(EXPECTED))
def test_each_rule_selects_what_plain_sql_selects_for_each_subject(
    compiled: CompiledPolicy, app_url: str, model: str, subject: str
) -> None:
    """Issue 11, 1: uuid, text and varchar user columns, a schema-qualified and a mixed-case table,
    role, public and unset rules; the subject is one text value cast per column."""
    exposed = compiled.models[model]
    key = exposed.table.c[exposed.primary_key]
    engine = sa.create_engine(app_url)
    try:
        with engine.connect() as conn:
            got = {
                str(v)
                for v in conn.execute(sa.select(key).where(compiled.model_scope(model, subject))).scalars()
            }
            want = {str(v) for v in conn.execute(sa.text(EXPECTED[model]), {"uid": subject}).scalars()}
    finally:
        engine.dispose()
    assert got == want
    if model == "Project":
        assert got == (
            {"p-alice", "p-bob", "p-none"}
            if subject == ADMIN
            else {f"p-{'alice' if subject == ALICE else 'bob'}"}
        )
    if model == "Setting":
        assert got == {"ai_provider"}


def test_the_subject_is_one_text_parameter_cast_to_each_columns_type(compiled: CompiledPolicy) -> None:
    """Issue 11, 1 ("bound with the column's type"): never SQL text, one parameter, a cast where the
    column is not text, none where it is."""
    dialect = sa.create_engine("postgresql+psycopg://").dialect
    project = str(compiled.model_scope("Project", ALICE).compile(dialect=dialect))
    score = compiled.model_scope("Score", ALICE).compile(dialect=dialect)
    assert ALICE not in project and ALICE not in str(score)
    assert f"CAST(%({USER_PARAM})s::VARCHAR AS UUID)" in project
    assert f'"userId" = %({USER_PARAM})s::VARCHAR' in str(score)
    assert (
        score.params == {USER_PARAM: ALICE, "role_values_1": ["carol@example.com"]}
        or ALICE in score.params.values()
    )


def test_the_uuid_comparison_keeps_the_owner_index(compiled: CompiledPolicy, app_url: str) -> None:
    """The cast is of the parameter, not of the column: the planner can use ``projects("ownerId")``."""
    table = compiled.models["OwnProject"].table
    statement = sa.select(table.c.id).where(compiled.model_scope("OwnProject", ALICE))
    engine = sa.create_engine(app_url)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SET enable_seqscan = off")
            query = statement.compile(dialect=engine.dialect)
            plan = "\n".join(row[0] for row in conn.exec_driver_sql(f"EXPLAIN {query}", query.params))
    finally:
        engine.dispose()
    assert "projects_ownerId_idx" in plan, plan


def test_a_role_rule_on_a_column_the_users_table_lacks_fails_on_start(app_url: str, tmp_path: Path) -> None:
    """Policy errors name the key and the table's columns."""
    body = textwrap.dedent(POLICY).replace('column = "role", values', 'column = "rank", values')
    path = tmp_path / "policy.toml"
    path.write_text(body, "utf-8")
    with pytest.raises(PolicyError, match="role profiles: table profiles has no column"):
        compile_at(app_url, path)


@pytest.mark.parametrize(
    ("rule", "says"),
    [
        ("{ public = false }", "models.Setting.scope.public"),
        ('{ role = { column = "role" } }', "missing key 'values'"),
        ("{ unset = 3 }", "models.Setting.scope.unset"),
    ],
)
def test_malformed_new_rules_are_one_line_naming_the_key(tmp_path: Path, rule: str, says: str) -> None:
    body = textwrap.dedent(POLICY).replace("scope = { public = true }", f"scope = {rule}")
    path = tmp_path / "policy.toml"
    path.write_text(body, "utf-8")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert says in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ('"rowscope"', "'rowscope' is not an on_insert value; one of { user = true }, { value = ... }"),
        ("{ usr = true }", "'usr' is not an on_insert value"),
        ("{ value = 1, now = true }", "is not an on_insert value"),
    ],
)
def test_a_malformed_on_insert_value_is_one_line_naming_the_values(
    tmp_path: Path, value: str, says: str
) -> None:
    """Issue 11, 4: one line naming the key and the four kinds of value (pydantic said
    "knowledge.on_insert.source.UserValue: Input should be a valid dictionary")."""
    body = textwrap.dedent(POLICY) + textwrap.dedent(f"""
        [knowledge]
        table = "DataRecord"
        access = "project"
        parent_column = "projectId"
        dimensions = 384
        on_insert = {{ source = {value} }}
    """)
    path = tmp_path / "policy.toml"
    path.write_text(body, "utf-8")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert f"knowledge.on_insert.source: {says}" in str(caught.value) or says in str(caught.value)
    assert str(caught.value).count("knowledge.on_insert.source") == 1
    assert "\n" not in str(caught.value)


def test_the_offline_model_refuses_a_dimension_below_its_own(tmp_path: Path) -> None:
    """Issue 11, 2: the offline model's 384 values are padded to a larger dimension, never cut, so
    a smaller one is refused in one line at start; with an OpenAI key (``dimensions`` parameter) it
    is served."""
    without = Settings(database_url="postgresql://x/y", data_dir=tmp_path, openai_api_key=None)
    with pytest.raises(PolicyError, match=r"knowledge\.dimensions is 256, but without OPENAI_API_KEY"):
        offline_fits(without, 256)
    offline_fits(without, 384)
    offline_fits(without.model_copy(update={"openai_api_key": "sk-test"}), 256)
