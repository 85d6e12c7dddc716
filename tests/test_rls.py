"""Lock 2 for any policy (issue 11, item 3): ``rowscope rls plan`` writes row-level security from a
policy and the catalog, independently of lock 1's compiler, and ``rowscope rls check`` (also run
when ``serve`` and ``stdio`` start) proves on the live database that both locks give sampled users
the same rows. An application schema of the test's own (text ids, a uuid owner, a member table, an
admin role, a public table, ``auth.users``, a mixed-case ``"User"``), planned, applied and checked
on a fresh migrated database; and Spark, whose lock 2 is migration 0002."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
import sqlalchemy as sa

from rowscope.db import migrate, rls
from rowscope.db.engine import Database, DatabaseUrl
from rowscope.db.guard import LockRefused
from rowscope.db.policy import load_policy, policy_origin
from rowscope.db.subjects import Caller
from rowscope.server import demo
from rowscope.server.app import build_runtime
from rowscope.server.database import prove_servable
from rowscope.server.runtime import compile_policy
from rowscope.server.settings import Settings
from tests.servers import rowscope

ALICE, BOB, CAROL = (uuid.UUID(int=n) for n in (0xA11CE, 0xB0B, 0xCA201))

SCHEMA = f"""
CREATE SCHEMA auth;
CREATE TABLE auth.users (id uuid PRIMARY KEY, email text UNIQUE NOT NULL, role text NOT NULL);
CREATE TABLE "User" (id text PRIMARY KEY, "authId" uuid NOT NULL, "displayName" text);
CREATE TABLE projects (id text PRIMARY KEY, "ownerId" uuid NOT NULL, name text, description text);
CREATE TABLE project_members (project_id text, user_id uuid, role text, PRIMARY KEY (project_id, user_id));
CREATE TABLE notes (id text PRIMARY KEY, project_id text, "authorId" text, body text);
CREATE TABLE tasks (id text PRIMARY KEY, project_id text, title text, deleted_at timestamptz);
CREATE TABLE announcements (id serial PRIMARY KEY, title text);
CREATE TABLE audit_log (id bigserial PRIMARY KEY, "actorId" uuid, action text);
CREATE TABLE note_chunks (
  id bigserial PRIMARY KEY, project_id text NOT NULL, content text NOT NULL, embedding vector(3),
  "addedBy" uuid
);
INSERT INTO auth.users VALUES ('{ALICE}', 'alice@example.com', 'member'),
  ('{BOB}', 'bob@example.com', 'member'), ('{CAROL}', 'carol@example.com', 'admin');
INSERT INTO "User" VALUES ('u-a', '{ALICE}', 'Alice'), ('u-b', '{BOB}', 'Bob'), ('u-c', '{CAROL}', 'Carol');
INSERT INTO projects VALUES ('p-a', '{ALICE}', 'Alice''s', ''), ('p-b', '{BOB}', 'Bob''s', ''),
  ('p-c', '{CAROL}', 'Carol''s', '');
INSERT INTO project_members VALUES ('p-b', '{ALICE}', 'viewer'), ('p-c', '{BOB}', 'editor');
INSERT INTO notes VALUES ('n-a', 'p-a', '{ALICE}', 'mine'), ('n-b', 'p-b', '{BOB}', 'shared with alice'),
  ('n-c', 'p-c', '{CAROL}', 'carol''s'), ('n-ac', 'p-c', '{ALICE}', 'alice wrote it in carol''s');
INSERT INTO tasks VALUES ('t-a', 'p-a', 'live', NULL), ('t-a2', 'p-a', 'gone', now()),
  ('t-b', 'p-b', 'bob''s', NULL), ('t-c', 'p-c', 'carol''s', NULL);
INSERT INTO announcements (title) VALUES ('hello'), ('world');
INSERT INTO audit_log ("actorId", action) VALUES ('{ALICE}', 'a'), ('{BOB}', 'b'), ('{CAROL}', 'c');
INSERT INTO note_chunks (project_id, content, embedding) VALUES ('p-a', 'a', '[1,0,0]'),
  ('p-b', 'b', '[0,1,0]'), ('p-c', 'c', '[0,0,1]');
"""

POLICY = """
version = 1

[users]
table = "auth.users"

[access.project]
table = "projects"
read = { any = [
  { owner = "ownerId" },
  { member = { table = "project_members", key = "project_id" } },
  { role = { column = "role", values = ["admin"] } },
] }
write = { any = [
  { owner = "ownerId" },
  { member = { table = "project_members", key = "project_id", where = { role = ["editor"] } } },
] }

[models.Project]
table = "projects"
columns = ["id", "ownerId", "name", "description"]
scope = { access = "project" }

[models.Note]
table = "notes"
columns = ["id", "project_id", "authorId", "body"]
scope = { any = [{ owner = "authorId" }, { parent = { column = "project_id", access = "project" } }] }

[models.Task]
table = "tasks"
columns = ["id", "project_id", "title"]
scope = { all = [{ parent = { column = "project_id", model = "Project" } }, { unset = "deleted_at" }] }

[models.Profile]
table = "User"
columns = ["id", "authId", "displayName"]
scope = { owner = "authId" }

[models.Announcement]
table = "announcements"
columns = ["id", "title"]
scope = { public = true }

[models.Audit]
table = "audit_log"
columns = ["id", "actorId", "action"]
scope = { any = [{ owner = "actorId" }, { role = { column = "role", values = ["admin"] } }] }
"""

KNOWLEDGE = """
[knowledge]
table = "note_chunks"
access = "project"
parent_column = "project_id"
dimensions = 3
collection = "project"
collections = "projects"
on_insert = { addedBy = { user = true } }
"""

# What alice may read, written out by hand: both locks are compared with this too, so they cannot
# agree on a wrong answer.
ALICE_ROWS = {
    "Project": {"p-a", "p-b"},
    "Note": {"n-a", "n-b", "n-ac"},
    "Task": {"t-a", "t-b"},
    "Profile": {"u-a"},
    "Announcement": {1, 2},
    "Audit": {1},
}


def run(work: Callable[..., Any], *args: Any) -> Any:
    return anyio.run(work, *args)


@pytest.fixture(scope="module")
def app(
    pg_admin: Callable[[str], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """A fresh migrated database with the application's schema and rows, its policy file, and the
    SQL ``rls plan`` wrote for it applied as the owner."""
    url = pg_admin(f"rowscope_rls_{secrets.token_hex(4)}")
    migrate.upgrade(url)
    libpq = DatabaseUrl.parse(url).libpq
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute(SCHEMA)
    path = tmp_path_factory.mktemp("rls") / "policy.toml"
    path.write_text(POLICY + KNOWLEDGE)
    plan = run(rls.plan, libpq, load_policy(path), policy_origin(path))
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute(plan)
    yield url, path


def owner(url: str, sql: str) -> None:
    with psycopg.connect(DatabaseUrl.parse(url).libpq, autocommit=True) as conn:
        conn.execute(sql)


def check(url: str, policy: Path | None) -> rls.Compared:
    # An OpenAI key (never used: the check embeds nothing), because the test store's vectors have 3
    # values, which the offline model cannot serve (server/database.py, offline_fits).
    settings = Settings(database_url=url, policy=policy, openai_api_key="sk-unused")
    compared = prove_servable(settings, url, rls=True)
    assert compared is not None
    return compared


def test_the_plan_is_deterministic_and_reapplies_cleanly(app: tuple[str, Path]) -> None:
    """Our choice: the same policy and schema give the same text, and applying it again (after a
    change to the policy, say) replaces what it made instead of failing or piling up."""
    url, path = app
    libpq = DatabaseUrl.parse(url).libpq
    first = run(rls.plan, libpq, load_policy(path), policy_origin(path))
    assert run(rls.plan, libpq, load_policy(path), policy_origin(path)) == first
    assert first.splitlines()[-1] == "COMMIT;" and "BEGIN;" in first.splitlines()
    assert '"auth"."users"' in first and '"public"."User"' in first
    assert '"addedBy" = "public"."rowscope_subject"()::uuid' in first  # on_insert user
    assert "knowledge_chunks" in first  # the spec leaves its bookkeeping to the side table
    owner(url, first)
    with psycopg.connect(libpq) as conn:
        count = conn.execute(
            "SELECT count(*) FROM pg_policies WHERE tablename = 'notes' AND 'rowscope_tool' = ANY (roles)"
        ).fetchone()
    assert count == (1,)


def test_the_check_passes_on_the_planned_database_and_counts_what_it_compared(app: tuple[str, Path]) -> None:
    """Issue 11: rls check proves both locks agree for sampled subjects (the users table's ids)."""
    url, path = app
    compared = check(url, path)
    assert compared.subjects == sorted(map(str, (ALICE, BOB, CAROL)))
    assert {"notes", "projects", "tasks", "User", "auth.users", "note_chunks", "knowledge_chunks"} <= set(
        compared.tables
    )
    assert compared.tables["projects"][0] == 3  # one row set per subject


@pytest.mark.anyio
async def test_an_unscoped_select_as_the_tool_role_gives_exactly_lock_one_s_rows(
    app: tuple[str, Path],
) -> None:
    """Issue 11: the tool role switched to alice, with no predicate, reads exactly what lock 1 (the
    compiled policy, run as the owner) gives her, which is the hand-written expectation."""
    url, path = app
    database = Database(DatabaseUrl.parse(url), pool_size=1)
    try:
        compiled = await compile_policy(database, load_policy(path))
        for model, expected in ALICE_ROWS.items():
            exposed = compiled.models[model]
            pk = exposed.table.c[exposed.primary_key]
            async with database.service_transaction() as conn:
                lock1 = set(
                    (
                        await conn.execute(sa.select(pk).where(compiled.model_scope(model, str(ALICE))))
                    ).scalars()
                )
            async with database.user_transaction(Caller(ALICE, str(ALICE))) as conn:
                lock2 = set((await conn.execute(sa.select(pk))).scalars())
            assert lock1 == lock2 == expected, model
        async with database.user_transaction(Caller(ALICE, str(ALICE))) as conn:
            chunks = (
                (await conn.execute(sa.text("SELECT project_id FROM note_chunks ORDER BY 1"))).scalars().all()
            )
            members = (await conn.execute(sa.text("SELECT project_id FROM project_members"))).scalars().all()
        assert chunks == ["p-a", "p-b"]
        assert members == ["p-b"]  # her own membership rows, which lock 1's EXISTS reads
    finally:
        await database.dispose()


@pytest.mark.anyio
async def test_the_tool_role_writes_chunks_only_under_a_writable_parent_as_itself(
    app: tuple[str, Path],
) -> None:
    """Issue 11: INSERT WITH CHECK the parent is writable (and on_insert's user column is the
    subject); bob edits carol's project, alice only views bob's."""
    url, _ = app
    database = Database(DatabaseUrl.parse(url), pool_size=1)
    insert = sa.text("INSERT INTO note_chunks (project_id, content, \"addedBy\") VALUES (:p, 'x', :by)")
    try:
        async with database.user_transaction(Caller(BOB, str(BOB))) as conn:
            await conn.execute(insert, {"p": "p-c", "by": BOB})
            await conn.rollback()
        for project, by in (("p-b", ALICE), ("p-a", BOB)):
            with pytest.raises(sa.exc.DBAPIError, match="row-level security"):
                async with database.user_transaction(Caller(ALICE, str(ALICE))) as conn:
                    await conn.execute(insert, {"p": project, "by": by})
    finally:
        await database.dispose()


def test_the_check_refuses_a_table_without_row_level_security(app: tuple[str, Path]) -> None:
    """Issue 11 (a), through guard.require_lock_two: no RLS on a policy table is a refusal."""
    url, path = app
    owner(url, "ALTER TABLE notes DISABLE ROW LEVEL SECURITY")
    try:
        with pytest.raises(LockRefused, match=r"'notes'.*no row-level security"):
            check(url, path)
    finally:
        owner(url, "ALTER TABLE notes ENABLE ROW LEVEL SECURITY")


def test_the_check_refuses_a_drifted_lock_two_naming_the_model(app: tuple[str, Path]) -> None:
    """Issue 11: a permissive policy added by hand makes lock 2 wider than the policy."""
    url, path = app
    owner(url, "CREATE POLICY leak ON notes FOR SELECT TO rowscope_tool USING (true)")
    try:
        with pytest.raises(
            rls.RlsMismatch, match=r"'notes' \(model Note\).*gives 1 row\(s\) the policy does not"
        ):
            check(url, path)
    finally:
        owner(url, "DROP POLICY leak ON notes")


def test_the_check_refuses_a_policy_changed_after_the_plan_naming_the_model(
    app: tuple[str, Path], tmp_path: Path
) -> None:
    """Issue 11: the TOML and the applied SQL drifted apart (here lock 1 is narrower)."""
    url, _ = app
    changed = tmp_path / "policy.toml"
    note = '{ any = [{ owner = "authorId" }, { parent = { column = "project_id", access = "project" } }] }'
    assert note in POLICY
    changed.write_text(
        POLICY.replace(note, '{ parent = { column = "project_id", access = "project" } }') + KNOWLEDGE
    )
    with pytest.raises(rls.RlsMismatch, match=r"\(model Note\).*\(first: n-ac\)"):
        check(url, changed)


def test_the_check_refuses_a_table_with_no_policy_for_the_tool_role(app: tuple[str, Path]) -> None:
    """Issue 11 (a): RLS enabled but no SELECT policy for the tool role is a refusal, not an empty tool."""
    url, path = app
    owner(url, 'ALTER POLICY "rowscope_tasks_select" ON tasks TO postgres')
    try:
        with pytest.raises(rls.RlsMismatch, match="'tasks' has row-level security but no SELECT policy"):
            check(url, path)
    finally:
        owner(url, 'ALTER POLICY "rowscope_tasks_select" ON tasks TO rowscope_tool')


@pytest.mark.slow
def test_stdio_refuses_in_one_line_when_the_check_fails_and_starts_with_the_opt_out(
    app: tuple[str, Path], tmp_path: Path
) -> None:
    """Issue 11: start refuses (exit 2, one line naming the model) unless explicitly opted out,
    by flag or by setting; `rls check` itself says the same and exits 1."""
    url, _ = app
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)  # no [knowledge]: the stdio tools need no store here
    owner(
        url,
        f"INSERT INTO user_profiles (id, email) VALUES ('{ALICE}', 'alice@example.com') "
        "ON CONFLICT DO NOTHING",
    )
    owner(url, "CREATE POLICY leak ON notes FOR SELECT TO rowscope_tool USING (true)")
    env = {"DATABASE_URL": url, "ROWSCOPE_POLICY": str(path)}
    try:
        refused = rowscope("stdio", "--user", "alice@example.com", **env)
        assert refused.returncode == 2, refused.stderr
        lines = [line for line in refused.stderr.splitlines() if not line.startswith("INFO ")]
        assert len(lines) == 1 and lines[0].startswith("rowscope: refusing to serve: "), refused.stderr
        assert "(model Note)" in lines[0] and "--no-rls-check" in lines[0]
        checked = rowscope("rls", "check", **env)
        assert checked.returncode == 1 and "(model Note)" in checked.stderr, checked.stderr
        started = rowscope("stdio", "--user", "alice@example.com", "--no-rls-check", **env)
        assert started.returncode == 0, started.stderr
        started = rowscope("stdio", "--user", "alice@example.com", **env, ROWSCOPE_RLS_CHECK="off")
        assert started.returncode == 0, started.stderr
    finally:
        owner(url, "DROP POLICY leak ON notes")
    passed = rowscope("rls", "check", **env)
    assert passed.returncode == 0, passed.stderr
    assert "lock 1 and lock 2 agree on" in passed.stdout


def test_the_check_passes_on_spark_s_hand_written_lock_two(database_url: str) -> None:
    """Issue 11: Spark keeps migration 0002 as its lock 2, and it agrees with spark.toml."""
    compared = check(database_url, None)
    assert {str(demo.ALICE), str(demo.BOB), str(demo.CAROL)} <= set(compared.subjects)
    assert {"sparks", "spark_embeddings", "chat_messages", "team_members"} <= set(compared.tables)


@pytest.mark.slow
def test_the_plan_of_the_spark_policy_applies_to_a_fresh_database_and_still_checks(
    pg_admin: Callable[[str], str], tmp_path: Path
) -> None:
    """Issue 11: the planner's translation of spark.toml replaces migration 0002's policies (same
    names) and agrees with lock 1 on the demo's users."""
    url = pg_admin(f"rowscope_rls_spark_{secrets.token_hex(4)}")
    migrate.upgrade(url)
    anyio.run(demo.load_demo, build_runtime(Settings(database_url=url, data_dir=tmp_path), url))
    plan = run(rls.plan, DatabaseUrl.parse(url).libpq, load_policy(None), policy_origin(None))
    owner(url, plan)
    with psycopg.connect(DatabaseUrl.parse(url).libpq) as conn:
        using = conn.execute(
            "SELECT qual FROM pg_policies "
            "WHERE tablename = 'sparks' AND policyname = 'rowscope_sparks_select'"
        ).fetchone()
    assert using is not None and "rowscope_subject()" in using[0]
    compared = check(url, None)
    assert {str(demo.ALICE), str(demo.BOB), str(demo.CAROL)} <= set(compared.subjects)
    assert compared.tables["spark_embeddings"][1] > 0
