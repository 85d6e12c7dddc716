"""The ``rowscope`` console script as an operator runs it: against a fresh, empty database named
by DATABASE_URL, against the embedded default (no DATABASE_URL), and through the README's
quickstart (``scripts/serve``)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx2
import psycopg
import pytest
from alembic import command
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

from rowscope.auth.verifier import RowscopeVerifier
from rowscope.db import migrate
from rowscope.db.accounts import ACCOUNT_TABLES
from rowscope.db.engine import Database, DatabaseUrl
from rowscope.db.models import Base
from tests.conftest import structured
from tests.servers import ROWSCOPE, child_env, free_port

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]


def rowscope(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ROWSCOPE, *args], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120
    )


def libpq(url: str) -> str:
    """The SQLAlchemy URL as a libpq one for psycopg (``postgresql://``, the socket in ``?host=``)."""
    return DatabaseUrl.parse(url).sqlalchemy.replace("postgresql+psycopg://", "postgresql://", 1)


def on_database(url: str, name: str) -> str:
    """The same server, user and options as ``url``, but the database ``name``."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))


def postgres_pids(pgdata: Path) -> list[int]:
    """Live PostgreSQL processes serving ``pgdata`` (a zombie has no command line left)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"-D" in cmdline and os.fsencode(pgdata) in cmdline:
            pids.append(int(proc.name))
    return pids


def wait_until_stopped(pgdata: Path, seconds: float = 20) -> None:
    """The embedded server stops when the last rowscope process holding it exits: wait (bounded) on
    each of its processes' exit through a pidfd, then check it left no postmaster.pid behind."""
    deadline = time.monotonic() + seconds
    for pid in postgres_pids(pgdata):
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            exited, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        finally:
            os.close(fd)
        assert exited, f"the embedded PostgreSQL in {pgdata} is still running (pid {pid})"
    assert not (pgdata / "postmaster.pid").exists()


@pytest.fixture
def fresh_url(database_url: str) -> Iterator[str]:
    """A new, empty database on the test server (nothing migrated), dropped afterwards."""
    name = f"rowscope_cli_{secrets.token_hex(4)}"
    admin = libpq(on_database(database_url, "postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield on_database(database_url, name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def migrated_url(fresh_url: str) -> str:
    done = rowscope("migrate", env=child_env(DATABASE_URL=fresh_url))
    assert done.returncode == 0, done.stderr
    return fresh_url


def test_serve_on_an_unmigrated_database_exits_non_zero_and_says_to_run_migrate(fresh_url: str) -> None:
    """Our choice: refuse to serve on a schema that is behind, rather than fail on the first tool call."""
    done = rowscope("serve", "--port", str(free_port()), env=child_env(DATABASE_URL=fresh_url))
    assert done.returncode != 0
    assert "rowscope migrate" in done.stderr
    assert "Traceback" not in done.stderr


def test_migrate_brings_an_empty_database_to_head_and_is_idempotent(fresh_url: str) -> None:
    """Our choice: `rowscope migrate` is safe to run on every deploy."""
    env = child_env(DATABASE_URL=fresh_url)
    first, second = rowscope("migrate", env=env), rowscope("migrate", env=env)
    assert (first.returncode, second.returncode) == (0, 0), first.stderr + second.stderr
    assert first.stdout == second.stdout == "database is at the newest schema\n"
    assert migrate.pending(fresh_url) is False


def test_the_models_and_the_migrations_do_not_drift(migrated_url: str) -> None:
    """Our choice (STYLE.md 7): `alembic check` after `upgrade head` finds nothing to autogenerate."""
    command.check(migrate.alembic_config(DatabaseUrl.parse(migrated_url).sqlalchemy))


def test_index_puts_the_backlog_into_the_hnsw_index_and_says_how_many(migrated_url: str) -> None:
    """Issue 4: `rowscope index` drains the chunks inserted unindexed (migration 0007), then exits."""
    user, spark = uuid.uuid4(), uuid.uuid4()
    vector = "[" + ",".join(["0.5"] * 1536) + "]"
    with psycopg.connect(libpq(migrated_url), autocommit=True) as conn:
        conn.execute("INSERT INTO user_profiles (id, email) VALUES (%s, 'index@example.com')", (user,))
        conn.execute("INSERT INTO sparks (id, user_id, name) VALUES (%s, %s, 'indexed')", (spark, user))
        for i in range(3):
            conn.execute(
                "INSERT INTO spark_embeddings (spark_id, content, content_hash, source_type, embedding,"
                " embedding_model, indexed) VALUES (%s, %s, %s, 'manual_entry', %s, 'm', %s)",
                (spark, f"chunk {i}", f"{i:064d}", vector, i == 0),
            )
    env = child_env(DATABASE_URL=migrated_url)
    first, again = rowscope("index", env=env), rowscope("index", env=env)
    assert (first.returncode, again.returncode) == (0, 0), first.stderr + again.stderr
    assert (first.stdout, again.stdout) == ("indexed 2 chunk(s)\n", "indexed 0 chunk(s)\n")
    with psycopg.connect(libpq(migrated_url)) as conn:
        assert conn.execute("SELECT bool_and(indexed) FROM spark_embeddings").fetchone() == (True,)


def test_keys_create_prints_only_the_key_and_the_database_keeps_only_its_sha256(migrated_url: str) -> None:
    """Our choice: the key is shown once on stdout (scriptable); the database stores a hash, never the key."""
    env = child_env(DATABASE_URL=migrated_url)
    assert rowscope("users", "add", "dana@example.com", env=env).returncode == 0
    done = rowscope("keys", "create", "--user", "dana@example.com", env=env)
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    assert done.stdout == f"{key}\n"
    assert re.fullmatch(r"rsk_[A-Za-z0-9_-]{40,}", key)
    assert key not in done.stderr
    with psycopg.connect(libpq(migrated_url)) as conn:
        rows = conn.execute("SELECT * FROM api_keys").fetchall()
        names = [c.name for c in conn.execute("SELECT * FROM api_keys LIMIT 0").description or []]
    assert len(rows) == 1
    stored = dict(zip(names, rows[0], strict=True))
    assert stored["key_hash"] == hashlib.sha256(key.encode()).hexdigest()
    assert not any(key in str(value) for value in stored.values())
    assert key.startswith(stored["prefix"])


def test_keys_list_shows_the_prefix_and_never_the_key(migrated_url: str) -> None:
    """Our choice: a listing tells keys apart by their first characters only."""
    env = child_env(DATABASE_URL=migrated_url)
    rowscope("users", "add", "erin@example.com", env=env)
    key = rowscope("keys", "create", "--user", "erin@example.com", "--name", "laptop", env=env).stdout.strip()
    listing = rowscope("keys", "list", env=env)
    assert listing.returncode == 0, listing.stderr
    (line,) = listing.stdout.splitlines()
    assert key[:12] in line
    assert "erin@example.com" in line and "laptop" in line and "live" in line and "never used" in line
    assert key not in listing.stdout
    assert key[:13] not in listing.stdout


async def test_keys_revoke_makes_the_verifier_reject_the_key(migrated_url: str) -> None:
    """Our choice: revocation takes effect on the next request (keys are looked up on every call)."""
    env = child_env(DATABASE_URL=migrated_url)
    added = await anyio.run_process([ROWSCOPE, "users", "add", "fred@example.com"], env=env)
    user_id = added.stdout.decode().split()[-1]
    key = (
        await anyio.run_process([ROWSCOPE, "keys", "create", "--user", "fred@example.com"], env=env)
    ).stdout
    key_text = key.decode().strip()
    listing = (
        await anyio.run_process([ROWSCOPE, "keys", "list", "--user", "fred@example.com"], env=env)
    ).stdout
    key_id = listing.decode().split()[0]

    database = Database(DatabaseUrl.parse(migrated_url), pool_size=1)
    verifier = RowscopeVerifier(database, "http://127.0.0.1:8000/mcp")
    try:
        before = await verifier.verify_token(key_text)
        assert before is not None and before.subject == user_id
        revoked = await anyio.run_process([ROWSCOPE, "keys", "revoke", key_id], env=env)
        assert revoked.stdout.decode() == f"revoked {uuid.UUID(key_id)}\n"
        assert await verifier.verify_token(key_text) is None
    finally:
        await database.dispose()
    again = await anyio.run_process([ROWSCOPE, "keys", "revoke", key_id], env=env, check=False)
    assert again.returncode != 0  # revoking twice is an operator error, not a silent success


def test_users_list_says_how_each_user_signs_in_and_what_they_hold(migrated_url: str) -> None:
    """Our choice: `users list` shows every user with their sign-in, live keys, connections and
    sessions (never a password or key)."""
    env = child_env(DATABASE_URL=migrated_url)
    with_password = subprocess.run(
        [ROWSCOPE, "users", "add", "gina@example.com", "--password-stdin"],
        env=env,
        input="a long enough password\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert with_password.returncode == 0, with_password.stderr
    assert rowscope("users", "add", "hal@example.com", env=env).returncode == 0
    assert rowscope("keys", "create", "--user", "hal@example.com", env=env).returncode == 0
    listing = rowscope("users", "list", env=env)
    assert listing.returncode == 0, listing.stderr
    gina, hal = listing.stdout.splitlines()
    assert re.fullmatch(
        r"gina@example\.com  [0-9a-f-]{36}  sign-in password  keys 0  connections 0  sessions 0", gina
    )
    assert re.fullmatch(
        r"hal@example\.com  [0-9a-f-]{36}  sign-in none  keys 1  connections 0  sessions 0", hal
    )


def test_users_remove_deletes_rowscope_s_account_data_and_keeps_the_profile_and_the_app_s_rows(
    migrated_url: str,
) -> None:
    """Our choice: rowscope removes only its own account data (password, keys, tokens, sessions,
    consents), never the user's profile or the application's rows; removing twice is not an error."""
    env = child_env(DATABASE_URL=migrated_url)
    added = subprocess.run(
        [ROWSCOPE, "users", "add", "ivy@example.com", "--password-stdin"],
        env=env,
        input="a long enough password\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    user = added.stdout.split()[-1]
    assert rowscope("keys", "create", "--user", "ivy@example.com", env=env).returncode == 0
    with psycopg.connect(libpq(migrated_url), autocommit=True) as conn:
        conn.execute("INSERT INTO sparks (user_id, name) VALUES (%s, 'ivy''s spark')", (user,))
        conn.execute(
            "INSERT INTO portfolio_items (user_id, kind, title) VALUES (%s, 'link', 'kept')", (user,)
        )
    removed = rowscope("users", "remove", "IVY@example.com", env=env)
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout == "removed ivy@example.com's rowscope account data: password 1, API keys 1\n"
    again = rowscope("users", "remove", "ivy@example.com", env=env)
    assert (again.returncode, again.stdout) == (
        0,
        "removed ivy@example.com's rowscope account data: nothing\n",
    )
    with psycopg.connect(libpq(migrated_url)) as conn:
        kept = conn.execute(
            "SELECT (SELECT count(*) FROM user_profiles WHERE id = %(u)s), (SELECT count(*) FROM sparks"
            " WHERE user_id = %(u)s), (SELECT count(*) FROM portfolio_items WHERE user_id = %(u)s),"
            " (SELECT count(*) FROM user_credentials), (SELECT count(*) FROM api_keys)",
            {"u": user},
        ).fetchone()
    assert kept == (1, 1, 1, 0, 0)
    (line,) = rowscope("users", "list", env=env).stdout.splitlines()
    assert line.endswith("sign-in none  keys 0  connections 0  sessions 0")


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["users", "passwd", "nobody@example.com"], id="users-passwd"),
        pytest.param(["users", "remove", "nobody@example.com"], id="users-remove"),
        pytest.param(["tokens", "revoke", "--user", "nobody@example.com"], id="tokens-revoke"),
        pytest.param(["keys", "create", "--user", "nobody@example.com"], id="keys-create"),
        pytest.param(["users", "remove", "not an email"], id="not-an-email"),
    ],
)
def test_a_command_naming_an_unknown_user_says_so_in_one_line_and_exits_2(
    migrated_url: str, command: list[str]
) -> None:
    """Our choice: an operator's mistake is a line saying what is wrong and exit code 2, as for every
    other command, never a traceback."""
    done = subprocess.run(
        [ROWSCOPE, *command],
        env=child_env(DATABASE_URL=migrated_url),
        input="a long enough password\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    # The last line of stderr (the schema check logs alembic's INFO lines before it).
    assert re.fullmatch(
        r"rowscope: (no user nobody@example\.com.*|'not an email' is not an email address)",
        done.stderr.splitlines()[-1],
    )


def test_users_remove_covers_every_table_of_rowscope_s_that_refers_to_a_user() -> None:
    """Our choice: a new rowscope table holding a user's data must be added to what `users remove`
    deletes; every other table referring to a user is the application's, which it never touches."""
    refer = {
        table.name
        for table in Base.metadata.tables.values()
        if any(fk.column.table.name == "user_profiles" for fk in table.foreign_keys)
    }
    application = {"teams", "team_members", "sparks", "spark_members", "portfolio_items", "chat_sessions"}
    # rowscope's ledger of the chunks a user added (tools/quota.py): it stays with those chunks,
    # which are the application's rows and stay too, or a re-created account's total would be off.
    kept_with_app_rows = {"training_additions"}
    rowscope_own = {str(model.__tablename__) for model in ACCOUNT_TABLES.values()}
    assert refer - application - kept_with_app_rows == rowscope_own
    assert not rowscope_own & (application | kept_with_app_rows)


def test_with_no_database_url_the_cli_starts_and_migrates_the_embedded_postgres(tmp_path: Path) -> None:
    """Our choice: the embedded PostgreSQL is the zero-setup default, and stops when rowscope exits."""
    done = rowscope("users", "add", "x@example.com", env=child_env(ROWSCOPE_DATA_DIR=str(tmp_path)))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("x@example.com ")
    assert (tmp_path / "pgdata" / "PG_VERSION").exists()
    wait_until_stopped(tmp_path / "pgdata")


def test_the_embedded_start_benchmark_runs(tmp_path: Path) -> None:
    """Our choice: bench/ scripts are exercised so they cannot rot."""
    report = tmp_path / "embedded_start.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "embedded_start.py"), "--smoke", "--out", str(report)],
        env=child_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    figures = {f["name"]: f["value"] for f in json.loads(report.read_text())["figures"]}
    for start in ("cold", "warm"):
        assert figures[f"{start} start (initdb if cold) + migrate"] > 0
        assert figures[f"{start} start, whole process"] > figures[f"{start} start (initdb if cold) + migrate"]


def test_the_readme_quickstart_serves_the_demo_to_the_printed_key_and_stops_cleanly(tmp_path: Path) -> None:
    """Our choice (STYLE.md 11): the quickstart works as written, and SIGTERM leaves nothing running."""
    port = free_port()
    stdout, stderr = tmp_path / "serve.out", tmp_path / "serve.err"
    data_dir = tmp_path / "data"
    with stdout.open("w") as out, stderr.open("w") as err:
        proc = subprocess.Popen(
            [str(REPO / "scripts" / "serve"), "--port", str(port)],
            cwd=REPO,
            env=child_env(ROWSCOPE_DATA_DIR=str(data_dir)),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,  # its own process group, so the whole tree can be stopped
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        key = None
        deadline = time.monotonic() + 60
        with httpx2.Client(timeout=2) as http:
            while True:
                key = key or next((ln for ln in stdout.read_text().split() if ln.startswith("rsk_")), None)
                if key is not None:
                    try:
                        if http.get(f"{base_url}/health").status_code == 200:
                            break
                    except httpx2.TransportError:
                        pass
                assert time.monotonic() < deadline, f"quickstart did not come up:\n{stderr.read_text()}"
                try:  # paces the poll, and notices a script that died
                    code = proc.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    continue
                pytest.fail(f"scripts/serve exited with {code}:\n{stdout.read_text()}\n{stderr.read_text()}")

        async def call() -> dict[str, object]:
            headers = {"Authorization": f"Bearer {key}"}
            async with (
                httpx2.AsyncClient(headers=headers, timeout=30) as h,
                Client(streamable_http_client(f"{base_url}/mcp", http_client=h)) as client,
            ):
                return structured(await client.call_tool("list_sparks", {}))

        sparks = anyio.run(call)
        assert len(sparks["sparks"]) == 3  # type: ignore[arg-type]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0  # SIGTERM is a requested stop: a graceful shutdown, then exit 0 (issue 13)
    wait_until_stopped(data_dir / "pgdata")
    assert key not in stderr.read_text()  # the key goes to stdout only, never into the logs
