"""Lock 2 holds by construction or rowscope refuses to serve (issue 13, rowscope/db/guard.py):
the tool connections log in as a role row-level security binds, every policy table has RLS, and a
statement never runs on a server connection that is not the one that prepared it."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import sqlalchemy as sa

from rowscope.db import guard
from rowscope.db.engine import TOOL_ROLE, Database, DatabaseUrl
from rowscope.db.guard import LockRefused
from rowscope.db.policy import load_policy
from rowscope.server import demo
from tests.conftest import USERS
from tests.servers import ROWSCOPE, child_env

pytestmark = pytest.mark.anyio

TABLES = sorted(load_policy(None).table_names())


def as_login(database_url: str, role: str, password: str | None = None) -> DatabaseUrl:
    parts = urlsplit(DatabaseUrl.parse(database_url).sqlalchemy)
    host = parts.netloc.rpartition("@")[2]
    login = role if password is None else f"{role}:{password}"
    return DatabaseUrl.parse(urlunsplit((parts.scheme, f"{login}@{host}", parts.path, parts.query, "")))


@contextmanager
def login_role(admin: sa.Engine, attributes: str, *grants: str) -> Iterator[str]:
    """A throw-away LOGIN role with ``attributes`` and the ``grants`` (role names) given to it."""
    name = f"rowscope_test_{secrets.token_hex(4)}"
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE ROLE {name} LOGIN {attributes}"))
        for granted in grants:
            conn.execute(sa.text(f"GRANT {granted} TO {name}"))
    try:
        yield name
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP OWNED BY {name}"))
            conn.execute(sa.text(f"DROP ROLE {name}"))


async def verify(database_url: str, tool_url: DatabaseUrl, tables: list[str] = TABLES) -> None:
    database = Database(DatabaseUrl.parse(database_url), tool_url=tool_url, pool_size=1)
    try:
        await database.verify(tables)
    finally:
        await database.dispose()


async def test_the_default_tool_login_is_the_tool_role_and_passes_the_check(database_url: str) -> None:
    """Issue 13: superuser-free tool role by default; the migrated database passes its own check."""
    database = Database(DatabaseUrl.parse(database_url), pool_size=1)
    try:
        assert database.tool_url.user == TOOL_ROLE
        await database.verify(TABLES)
        async with database.tool_engine.connect() as conn:
            login, superuser, bypass = (
                await conn.execute(
                    sa.text(
                        "SELECT rolname, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = session_user"
                    )
                )
            ).one()
        assert (login, superuser, bypass) == (TOOL_ROLE, False, False)
    finally:
        await database.dispose()


async def test_the_tool_login_without_the_switch_sees_no_row_of_any_user(
    database_url: str, admin: sa.Engine
) -> None:
    """Issue 13 (lock 2 when lock 1's set-up fails): with the role switch and the user id never set,
    the tool role reads nothing of any table, and a user id set without the switch reads only that
    user's rows (so a misrouted or missing switch yields no rows, not all rows)."""
    with psycopg.connect(as_login(database_url, TOOL_ROLE).libpq, autocommit=True) as conn:
        for table in TABLES:
            (seen,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone() or (None,)
            assert seen == 0, table
        with conn.transaction():
            conn.execute("SELECT set_config('rowscope.user_id', %s, true)", [str(demo.BOB)])
            profiles = {row[0] for row in conn.execute("SELECT id FROM user_profiles")}
            items = {row[0] for row in conn.execute("SELECT user_id FROM portfolio_items")}
        assert profiles == {demo.BOB}
        assert items == {demo.BOB}
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM api_keys")
    with admin.connect() as conn:
        everyone = set(conn.execute(sa.text("SELECT user_id FROM portfolio_items")).scalars())
    assert everyone >= set(USERS.values()), "the rows hidden from the tool role are there"


@pytest.mark.parametrize(
    ("attributes", "grants", "reason"),
    [
        pytest.param("SUPERUSER", (), "superuser", id="superuser"),
        pytest.param("BYPASSRLS", (TOOL_ROLE,), "BYPASSRLS", id="bypassrls"),
        pytest.param("CREATEROLE", (TOOL_ROLE,), "CREATEROLE", id="createrole"),
        pytest.param("", (TOOL_ROLE, "postgres"), "member of postgres", id="member of a superuser"),
        pytest.param("", (), "cannot act as", id="not the tool role"),
    ],
)
async def test_a_tool_login_that_rls_would_not_bind_is_refused(
    database_url: str, admin: sa.Engine, attributes: str, grants: tuple[str, ...], reason: str
) -> None:
    """Issue 13 (fail closed): a role with too much power, or one that is not the tool role, ends in
    a refusal that names the role and why, at start and on every new tool connection."""
    with login_role(admin, attributes, *grants) as role:
        with pytest.raises(LockRefused, match=reason) as refused:
            await verify(database_url, as_login(database_url, role))
        assert role in str(refused.value)
        database = Database(DatabaseUrl.parse(database_url), tool_url=as_login(database_url, role))
        try:
            with pytest.raises(LockRefused, match=reason):
                await database.read_as(demo.BOB, sa.select(sa.literal(1)))
            with pytest.raises(LockRefused, match=reason):
                async with database.user_transaction(demo.BOB):
                    pass
        finally:
            await database.dispose()


async def test_a_policy_table_without_row_level_security_is_refused(
    database_url: str, admin: sa.Engine
) -> None:
    """Issue 13 (fail closed: a policy without RLS): a table the tools would read without lock 2."""
    table = f"unguarded_{secrets.token_hex(3)}"
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE {table} (id uuid PRIMARY KEY, user_id uuid)"))
        conn.execute(sa.text(f"GRANT SELECT ON {table} TO {TOOL_ROLE}"))
    try:
        with pytest.raises(LockRefused, match=f"{table}.*no row-level security"):
            await verify(database_url, as_login(database_url, TOOL_ROLE), [*TABLES, table])
        with admin.begin() as conn:
            conn.execute(sa.text(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY"))
            conn.execute(sa.text(f"ALTER TABLE {table} OWNER TO {TOOL_ROLE}"))
        with pytest.raises(LockRefused, match=f"owns table '{table}'"):
            await verify(database_url, as_login(database_url, TOOL_ROLE), [*TABLES, table])
        with admin.begin() as conn:
            conn.execute(sa.text(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY"))
        await verify(database_url, as_login(database_url, TOOL_ROLE), [*TABLES, table])
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE {table}"))


async def test_a_read_whose_switch_reports_another_backend_is_never_answered(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 13 (statement identity): a read whose switch reports another backend pid than the one
    its connection prepared its statements on is not answered from that connection; the connection
    is closed, preparing ends for the process, and the read is answered afresh, unprepared. (The
    mismatch is made by telling the connection a wrong pid: a pooler that passes a server's key
    through cannot be run here.)"""
    database = Database(DatabaseUrl.parse(database_url), pool_size=1)
    profiles = sa.table("user_profiles", sa.column("id"))
    try:
        assert [r["id"] for r in await database.read_as(demo.BOB, sa.select(profiles.c.id))] == [demo.BOB]
        raw = await database._reads.getconn()
        first_pid = raw.info.backend_pid
        assert raw.rowscope_pid == first_pid, "a direct connection prepares, checked against its own pid"
        raw.rowscope_pid = first_pid + 1
        await database._reads.putconn(raw)
        rows = await database.read_as(demo.ALICE, sa.select(profiles.c.id))
        assert [r["id"] for r in rows] == [demo.ALICE]
        assert database.pooled, "no connection of this process prepares any more"
        raw = await database._reads.getconn()
        try:
            assert raw.info.backend_pid != first_pid, "the connection that failed the check is gone"
            assert raw.prepared() is None
            prepared = await (await raw.execute("SELECT count(*) FROM pg_prepared_statements")).fetchone()
            assert prepared == (0,)
        finally:
            await database._reads.putconn(raw)
    finally:
        await database.dispose()
    assert any("pooler" in r.getMessage() for r in caplog.records), "the switch to no prepares is logged"


async def test_a_write_transaction_whose_switch_reports_another_backend_is_never_begun(
    database_url: str,
) -> None:
    """Issue 13: the same for a tool transaction (writes, search): refused, replaced, unprepared."""
    database = Database(DatabaseUrl.parse(database_url), pool_size=1)
    try:
        async with database.user_transaction(demo.BOB) as conn:
            first_pid = (await conn.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one()
            conn.info["rowscope_pid"] = first_pid + 1
        async with database.user_transaction(demo.CAROL) as conn:
            pid, user = (
                await conn.execute(sa.text("SELECT pg_backend_pid(), current_setting('rowscope.user_id')"))
            ).one()
        assert user == str(demo.CAROL)
        assert pid != first_pid
        assert database.pooled
    finally:
        await database.dispose()


@pytest.mark.slow
def test_serve_refuses_a_superuser_tool_login_in_one_line(database_url: str, admin: sa.Engine) -> None:
    """Issue 13 (fail closed, one clear line): ROWSCOPE_TOOL_DATABASE_URL naming the superuser."""
    import subprocess

    superuser = DatabaseUrl.parse(database_url).sqlalchemy
    for command in (["serve", "--port", "0"], ["stdio", "--user", "alice@example.com"]):
        done = subprocess.run(
            [ROWSCOPE, *command],
            env=child_env(DATABASE_URL=database_url, ROWSCOPE_TOOL_DATABASE_URL=superuser),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("rowscope: refusing to serve:") and "superuser" in last, done.stderr


@pytest.mark.slow
def test_migrate_gives_the_tool_role_the_password_of_its_url_as_a_verifier(
    database_url: str, admin: sa.Engine
) -> None:
    """Issue 13 / security: the password in ROWSCOPE_TOOL_DATABASE_URL reaches the role as a SCRAM
    verifier, never in plain text (the embedded server trusts its socket, so the login itself is
    not what this proves)."""
    import subprocess

    password = secrets.token_urlsafe(12)
    tool = as_login(database_url, TOOL_ROLE, password).sqlalchemy
    done = subprocess.run(
        [ROWSCOPE, "migrate"],
        env=child_env(DATABASE_URL=database_url, ROWSCOPE_TOOL_DATABASE_URL=tool),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    try:
        with admin.connect() as conn:
            stored = conn.execute(
                sa.text("SELECT rolpassword FROM pg_authid WHERE rolname = :r"), {"r": TOOL_ROLE}
            ).scalar_one()
        assert stored.startswith("SCRAM-SHA-256$") and password not in stored
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"ALTER ROLE {TOOL_ROLE} PASSWORD NULL"))


@pytest.mark.parametrize(
    ("user", "pid", "expected_pid", "answered"),
    [
        pytest.param(str(demo.BOB), 41, 41, True, id="this user, this backend"),
        pytest.param(str(demo.BOB), 41, None, True, id="this user, a connection that prepares nothing"),
        pytest.param(str(demo.ALICE), 41, 41, False, id="another user's switch"),
        pytest.param(str(demo.ALICE), 41, None, False, id="another user's switch, unprepared"),
        pytest.param(str(demo.BOB), 42, 41, False, id="another backend"),
        pytest.param(None, None, 41, False, id="not a switch at all"),
    ],
)
def test_a_switch_answer_is_accepted_only_for_this_user_on_this_backend(
    user: str | None, pid: int | None, expected_pid: int | None, answered: bool
) -> None:
    """Issue 13 ("each read proves, in the same round trip, that the user id is the one this request
    set"): the check every tool transaction's first answer goes through."""
    if answered:
        guard.check_switch(user, pid, str(demo.BOB), expected_pid)
    else:
        with pytest.raises(guard.PoolerDetected):
            guard.check_switch(user, pid, str(demo.BOB), expected_pid)
