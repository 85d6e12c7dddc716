"""An application with its own users table (the policy's ``[users]``: ``auth.users``, a Prisma
``"User"``): ``rowscope users add``, ``stdio --user`` and password sign-in take each account's
subject (the application's id for the user) from that table by email, and refuse an email it does
not have; with rowscope's own users table, ``users add --subject`` records one by hand.

Against a database of its own, migrated as production is, holding the application's tables with
row-level security for the tool role (``rowscope_subject()`` compared with the owner column), as
``rowscope rls plan`` writes it. Every command runs as the operator runs it: the console script."""

from __future__ import annotations

import re
import secrets
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TextIO

import httpx2
import psycopg
import pytest
import sqlalchemy as sa
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

from rowscope.db import migrate
from rowscope.db.engine import DatabaseUrl
from tests.conftest import error_text, structured
from tests.oauth import hidden_fields
from tests.servers import ROWSCOPE, child_env, serve
from tests.test_oidc import (  # the test's OpenID provider, and its fixtures
    CLIENT_ID,
    CLIENT_SECRET,
    SECRET_KEY,
    Provider,
    Visit,
    running_provider,
)

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ADA, BEN, EVE, FAY = (uuid.uuid4() for _ in range(4))

APPLICATION = f"""
CREATE SCHEMA auth;
CREATE TABLE auth.users (id uuid PRIMARY KEY, email text NOT NULL);
CREATE TABLE notes (id serial PRIMARY KEY, user_id uuid NOT NULL, body text NOT NULL);
CREATE TABLE "User" (id text PRIMARY KEY, email text NOT NULL);
CREATE TABLE "Task" (id serial PRIMARY KEY, "userId" text NOT NULL, title text NOT NULL);
CREATE TABLE history (id serial PRIMARY KEY, "userId" text NOT NULL, content text NOT NULL);
GRANT USAGE ON SCHEMA auth TO rowscope_tool;
GRANT SELECT ON auth.users, notes, "User", "Task", history TO rowscope_tool;
ALTER TABLE auth.users ENABLE ROW LEVEL SECURITY;
ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
ALTER TABLE "User" ENABLE ROW LEVEL SECURITY;
ALTER TABLE "Task" ENABLE ROW LEVEL SECURITY;
ALTER TABLE history ENABLE ROW LEVEL SECURITY;
CREATE POLICY own ON auth.users FOR SELECT TO rowscope_tool USING (id::text = rowscope_subject());
CREATE POLICY own ON notes FOR SELECT TO rowscope_tool USING (user_id::text = rowscope_subject());
CREATE POLICY own ON "User" FOR SELECT TO rowscope_tool USING (id = rowscope_subject());
CREATE POLICY own ON "Task" FOR SELECT TO rowscope_tool USING ("userId" = rowscope_subject());
CREATE POLICY own ON history FOR SELECT TO rowscope_tool USING ("userId" = rowscope_subject());
INSERT INTO auth.users VALUES ('{ADA}', 'Ada@Example.com'), ('{BEN}', 'ben@example.com'),
    ('{EVE}', 'eve@example.com'), ('{FAY}', 'fay@example.com');
INSERT INTO notes (user_id, body) VALUES ('{ADA}', 'ada one'), ('{ADA}', 'ada two'), ('{BEN}', 'ben one');
INSERT INTO "User" VALUES ('cuid-cy', 'Cy@Example.com'), ('cuid-dee', 'dee@example.com');
INSERT INTO "Task" ("userId", title) VALUES ('cuid-cy', 'cy task'), ('cuid-dee', 'dee task');
INSERT INTO history ("userId", content) VALUES ('278409120000000001', 'gil said hi'),
    ('278409120000000002', 'hank said hi');
"""

POLICIES = {
    # Supabase's shape: the users are auth.users, uuid ids.
    "auth": """
version = 1
[users]
table = "auth.users"
[models.Note]
table = "notes"
columns = ["id", "user_id", "body"]
scope = { owner = "user_id" }
""",
    # Prisma's shape (seed 003): "User", text (cuid) ids, camelCase owner columns.
    "prisma": """
version = 1
[users]
table = "User"
[models.Task]
table = "Task"
columns = ["id", "userId", "title"]
scope = { owner = "userId" }
""",
    # No users table of the application's (seed 001: Discord ids as text): rowscope's own.
    "own": """
version = 1
[models.History]
table = "history"
columns = ["id", "userId", "content"]
scope = { owner = "userId" }
""",
}


@pytest.fixture(scope="module")
def app_url(pg_admin: Callable[[str], str]) -> Iterator[str]:
    """A database of its own, migrated, with the application's tables (dropped afterwards)."""
    name = f"rowscope_app_users_{secrets.token_hex(4)}"
    url = pg_admin(name)
    migrate.upgrade(url)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(APPLICATION)
    finally:
        engine.dispose()
    yield url
    admin = DatabaseUrl.parse(url).sqlalchemy.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(re.sub(rf"/{name}\b", "/postgres", admin), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def policies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("policies")
    for name, body in POLICIES.items():
        (folder / f"{name}.toml").write_text(body)
    return {name: folder / f"{name}.toml" for name in POLICIES}


@pytest.fixture(scope="module")
def db(app_url: str) -> Iterator[sa.Engine]:
    """A superuser engine: states what is expected, and sets up what a test needs."""
    engine = sa.create_engine(app_url)
    yield engine
    engine.dispose()


def run(
    url: str, policy: Path | None, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = child_env(DATABASE_URL=url, **({"ROWSCOPE_POLICY": str(policy)} if policy else {}))
    return subprocess.run(
        [ROWSCOPE, *args],
        env=env,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def refusal(done: subprocess.CompletedProcess[str]) -> str:
    """A command's one-line refusal: exit code 2, nothing on stdout, no traceback."""
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == "" and "Traceback" not in done.stderr
    return done.stderr.splitlines()[-1]


def scalar(db: sa.Engine, statement: str, **params: Any) -> Any:
    with db.connect() as conn:
        return conn.execute(sa.text(statement), params).scalar()


def execute(db: sa.Engine, statement: str, **params: Any) -> None:
    with db.begin() as conn:
        conn.execute(sa.text(statement), params)


def subject_of(db: sa.Engine, email: str) -> str | None:
    return scalar(db, "SELECT subject FROM user_profiles WHERE email = :e", e=email)  # type: ignore[no-any-return]


# -- users add, list -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "email", "subject"),
    [
        pytest.param("auth", "ada@example.com", str(ADA), id="auth.users-uuid"),
        pytest.param("prisma", "CY@example.com", "cuid-cy", id="User-text"),
    ],
)
def test_users_add_records_the_id_the_application_s_users_table_has_for_the_email(
    app_url: str, policies: dict[str, Path], db: sa.Engine, policy: str, email: str, subject: str
) -> None:
    """Issue 11 (the app's own users table for `users add`); the email is compared in lower case,
    as applications store it as typed (our choice). `users list` shows the subject."""
    done = run(app_url, policies[policy], "users", "add", email)
    assert done.returncode == 0, done.stderr
    account = email.lower()
    assert done.stdout.split()[0] == account
    assert subject_of(db, account) == subject
    assert done.stderr.splitlines()[-1] == f"subject {subject}"
    listing = run(app_url, policies[policy], "users", "list")
    (line,) = [line for line in listing.stdout.splitlines() if line.startswith(account + " ")]
    assert re.fullmatch(rf"{re.escape(account)}  [0-9a-f-]{{36}}  subject {subject}  sign-in none  .*", line)


def test_users_add_refuses_an_email_the_application_does_not_have_and_writes_nothing(
    app_url: str, policies: dict[str, Path], db: sa.Engine
) -> None:
    """Issue 11: nobody is served as a subject the application does not know; the refusal names
    the table (our choice: one line, exit 2, as every operator mistake)."""
    line = refusal(run(app_url, policies["auth"], "users", "add", "nobody@example.com"))
    assert line.startswith("rowscope: auth.users has no user with the email nobody@example.com")
    assert scalar(db, "SELECT count(*) FROM user_profiles WHERE email = 'nobody@example.com'") == 0


def test_users_add_again_follows_the_application_when_its_id_for_the_email_changed(
    app_url: str, policies: dict[str, Path], db: sa.Engine
) -> None:
    """Our choice: `users add` for a known email updates its subject to what the table says now."""
    assert run(app_url, policies["prisma"], "users", "add", "dee@example.com").returncode == 0
    assert subject_of(db, "dee@example.com") == "cuid-dee"
    execute(db, """UPDATE "User" SET id = 'cuid-dee-2' WHERE id = 'cuid-dee'""")
    try:
        again = run(app_url, policies["prisma"], "users", "add", "dee@example.com")
        assert again.returncode == 0, again.stderr
        assert subject_of(db, "dee@example.com") == "cuid-dee-2"
        assert scalar(db, "SELECT count(*) FROM user_profiles WHERE email = 'dee@example.com'") == 1
    finally:
        execute(db, """UPDATE "User" SET id = 'cuid-dee' WHERE id = 'cuid-dee-2'""")


def test_subject_is_refused_where_the_application_s_users_table_decides_it(
    app_url: str, policies: dict[str, Path], db: sa.Engine
) -> None:
    """Our choice: with the app's own users table, its id is the subject; a hand-given one could
    only disagree with it."""
    line = refusal(run(app_url, policies["auth"], "users", "add", "ben@example.com", "--subject", "x"))
    assert "--subject" in line and "auth.users" in line
    assert scalar(db, "SELECT count(*) FROM user_profiles WHERE email = 'ben@example.com'") == 0


def test_subject_with_rowscope_s_own_users_table_is_recorded_and_listed(
    app_url: str, policies: dict[str, Path], db: sa.Engine
) -> None:
    """Issue 11 (seed 001: user ids are Discord ids): `users add --subject` records the app's id."""
    done = run(app_url, policies["own"], "users", "add", "gil@example.com", "--subject", "278409120000000001")
    assert done.returncode == 0, done.stderr
    assert subject_of(db, "gil@example.com") == "278409120000000001"
    plain = run(app_url, policies["own"], "users", "add", "ivo@example.com")
    assert plain.returncode == 0, plain.stderr
    assert subject_of(db, "ivo@example.com") is None  # its own id is its subject
    lines = run(app_url, policies["own"], "users", "list").stdout.splitlines()
    gil = next(line for line in lines if line.startswith("gil@example.com "))
    ivo = next(line for line in lines if line.startswith("ivo@example.com "))
    assert "  subject 278409120000000001  sign-in none" in gil
    assert re.fullmatch(r"ivo@example\.com  [0-9a-f-]{36}  sign-in none  .*", ivo)
    # The default (Spark) policy's users table is rowscope's too.
    spark = run(app_url, None, "users", "add", "gil@example.com", "--subject", "278409120000000003")
    assert spark.returncode == 0, spark.stderr
    assert subject_of(db, "gil@example.com") == "278409120000000003"


@pytest.mark.parametrize("holder", ["subject", "own id"])
def test_a_subject_another_account_holds_is_refused(
    app_url: str, policies: dict[str, Path], db: sa.Engine, holder: str
) -> None:
    """Our choice: two accounts acting as one user of the application would share every row; an
    account without a subject holds its own id."""
    first = run(app_url, policies["own"], "users", "add", f"jo-{holder[:3]}@example.com", "--subject", "4242")
    assert first.returncode == 0, first.stderr
    account = first.stdout.split()[-1]
    taken = "4242" if holder == "subject" else account
    if holder == "own id":
        execute(db, "UPDATE user_profiles SET subject = NULL WHERE id = :a", a=account)
    email = f"kim-{holder[:3]}@example.com"
    line = refusal(run(app_url, policies["own"], "users", "add", email, "--subject", taken))
    assert line.startswith(f"rowscope: the subject {taken} is jo-{holder[:3]}@example.com's already")
    assert scalar(db, "SELECT count(*) FROM user_profiles WHERE email = :e", e=email) == 0
    execute(db, "DELETE FROM user_profiles WHERE id = :a", a=account)


# -- stdio --user ---------------------------------------------------------------------------------


@pytest.fixture
def server_log(tmp_path: Path) -> Iterator[TextIO]:
    with (tmp_path / "stdio-stderr.log").open("w+") as log:
        yield log


@asynccontextmanager
async def stdio_as(url: str, policy: Path, email: str, log: TextIO) -> AsyncIterator[Client]:
    params = StdioServerParameters(
        command=ROWSCOPE,
        args=["stdio", "--user", email],
        env=child_env(DATABASE_URL=url, ROWSCOPE_POLICY=str(policy)),
    )
    async with Client(stdio_client(params, errlog=log)) as client:
        yield client


async def test_stdio_serves_the_subject_the_application_s_users_table_has_for_the_user(
    app_url: str, policies: dict[str, Path], db: sa.Engine, server_log: TextIO
) -> None:
    """Issue 11 (`--user` with the app's own users table): the subject is looked up again at start,
    so an account recorded before (or never) serves the app's current id, and only its rows."""
    added = run(app_url, policies["auth"], "users", "add", "ada@example.com")
    assert added.returncode == 0, added.stderr
    execute(db, "UPDATE user_profiles SET subject = NULL WHERE email = 'ada@example.com'")
    async with stdio_as(app_url, policies["auth"], "ada@example.com", server_log) as client:
        notes = structured(await client.call_tool("query_records", {"model": "Note"}))
    assert sorted(row["body"] for row in notes["rows"]) == ["ada one", "ada two"]
    assert {row["user_id"] for row in notes["rows"]} == {str(ADA)}
    assert subject_of(db, "ada@example.com") == str(ADA)


async def test_stdio_serves_a_subject_given_by_hand_with_rowscope_s_own_users_table(
    app_url: str, policies: dict[str, Path], server_log: TextIO
) -> None:
    """Issue 11 (seed 001: text ids that are not rowscope's): the recorded subject is served."""
    done = run(
        app_url, policies["own"], "users", "add", "hank@example.com", "--subject", "278409120000000002"
    )
    assert done.returncode == 0, done.stderr
    async with stdio_as(app_url, policies["own"], "hank@example.com", server_log) as client:
        history = structured(await client.call_tool("query_records", {"model": "History"}))
    assert [row["content"] for row in history["rows"]] == ["hank said hi"]


def test_stdio_refuses_a_user_the_application_s_users_table_does_not_have(
    app_url: str, policies: dict[str, Path], db: sa.Engine
) -> None:
    """Issue 11: nobody is served as a subject the application does not know (an account that was
    added while the app had them, or under another policy)."""
    assert run(app_url, None, "users", "add", "gone@example.com").returncode == 0
    line = refusal(run(app_url, policies["auth"], "stdio", "--user", "gone@example.com"))
    assert line.startswith("rowscope: auth.users has no user with the email gone@example.com")


# -- password sign-in -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(
    app_url: str, policies: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`rowscope serve` with the auth.users policy."""
    with serve(app_url, tmp_path_factory.mktemp("serve"), ROWSCOPE_POLICY=str(policies["auth"])) as url:
        yield url


def sign_in(url: str, email: str, password: str) -> httpx2.Response:
    """The real sign-in form, posted from a fresh browser; its answer."""
    with httpx2.Client(timeout=15) as http:
        form = hidden_fields(http.get(f"{url}/signin").text)
        form.pop("__action__")
        return http.post(f"{url}/signin", data=form | {"email": email, "password": password})


def with_password(url: str, policy: Path, email: str) -> str:
    password = secrets.token_urlsafe(12)
    added = run(url, policy, "users", "add", email, "--password-stdin", stdin=password + "\n")
    assert added.returncode == 0, added.stderr
    return password


def test_password_sign_in_records_the_subject_the_application_s_users_table_has(
    app_url: str, policies: dict[str, Path], db: sa.Engine, served: str
) -> None:
    """Issue 11 (sign-in with the app's own users table): the subject is set at sign-in."""
    password = with_password(app_url, policies["auth"], "eve@example.com")
    execute(db, "UPDATE user_profiles SET subject = NULL WHERE email = 'eve@example.com'")
    answer = sign_in(served, "eve@example.com", password)
    assert answer.status_code == 303, answer.text
    assert subject_of(db, "eve@example.com") == str(EVE)


def test_password_sign_in_is_refused_for_an_email_the_application_s_users_table_lacks(
    app_url: str, policies: dict[str, Path], db: sa.Engine, served: str
) -> None:
    """Issue 11: a right password is not enough; the application must know the user. The page says
    so (403, our choice), and no session is opened."""
    password = with_password(app_url, policies["auth"], "fay@example.com")
    execute(db, "UPDATE auth.users SET email = 'fay-left@example.com' WHERE id = :i", i=FAY)
    try:
        answer = sign_in(served, "fay@example.com", password)
    finally:
        execute(db, "UPDATE auth.users SET email = 'fay@example.com' WHERE id = :i", i=FAY)
    assert answer.status_code == 403, answer.text
    assert "role=alert" in answer.text and "not one of the application" in answer.text
    sessions = (
        "SELECT count(*) FROM auth_sessions s JOIN user_profiles u ON u.id = s.user_id WHERE u.email = :e"
    )
    assert scalar(db, sessions, e="fay@example.com") == 0
    assert sign_in(served, "fay@example.com", password).status_code == 303  # back in the table


# -- OpenID Connect sign-in -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def idp() -> Iterator[Provider]:
    """tests/test_oidc.py's OpenID provider, on a loopback port of its own."""
    with running_provider() as provider:
        yield provider


@pytest.fixture(scope="module")
def oidc_url(
    app_url: str, policies: dict[str, Path], idp: Provider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`rowscope serve` with the auth.users policy, trusting the test's OpenID provider."""
    env = {
        "ROWSCOPE_POLICY": str(policies["auth"]),
        "ROWSCOPE_OIDC_ISSUER": idp.issuer,
        "ROWSCOPE_OIDC_CLIENT_ID": CLIENT_ID,
        "ROWSCOPE_OIDC_CLIENT_SECRET": CLIENT_SECRET,
        "ROWSCOPE_OIDC_NAME": "Test IdP",
        "ROWSCOPE_SECRET_KEY": SECRET_KEY,
    }
    with serve(app_url, tmp_path_factory.mktemp("oidc"), **env) as url:
        yield url


async def test_oidc_sign_in_serves_the_application_s_subject_and_refuses_an_email_it_lacks(
    idp: Provider, oidc_url: str, db: sa.Engine
) -> None:
    """Issue 11 (sign-in with the app's own users table): the first upstream sign-in creates the
    account with the app's id as its subject, and tools over HTTP serve that subject's rows only;
    an email the table lacks is refused, and no account is kept for it (our choice)."""
    idp.claims = {"sub": "idp|ben", "email": "ben@example.com", "email_verified": True}
    visit = Visit(oidc_url)
    try:
        notes = await visit.connect(await visit.callback(await visit.upstream_url()), "Note", "body")
    finally:
        await visit.http.aclose()
    assert notes == ["ben one"]
    assert subject_of(db, "ben@example.com") == str(BEN)

    idp.claims = {"sub": "idp|zed", "email": "zed@example.com", "email_verified": True}
    stranger = Visit(oidc_url)
    try:
        refused = await stranger.callback(await stranger.upstream_url())
        assert refused.status_code == 403
        assert "not one of the application" in refused.text and not stranger.signed_in()
    finally:
        await stranger.http.aclose()
    assert scalar(db, "SELECT count(*) FROM user_profiles WHERE email = 'zed@example.com'") == 0


# -- fail closed ------------------------------------------------------------------------------------


async def test_an_account_without_the_application_s_id_or_gone_is_refused_not_served(
    app_url: str, policies: dict[str, Path], db: sa.Engine, tmp_path: Path
) -> None:
    """With an application users table every account served must carry the id that table gave it:
    an account without one (made before the policy named the table, or its subject cleared) and an
    account that no longer exists get a tool error, never rows under a stand-in id (our choice:
    fail closed; db/subjects.py)."""
    from rowscope.server.app import build_mcp, build_runtime
    from rowscope.server.settings import Settings

    unlinked = uuid.uuid4()
    execute(db, "INSERT INTO user_profiles (id, email) VALUES (:id, 'unlinked@example.com')", id=unlinked)
    settings = Settings(database_url=app_url, policy=policies["auth"], data_dir=tmp_path, openai_api_key=None)
    try:
        for account, says in (
            (unlinked, "not linked to a user of the application"),
            (uuid.uuid4(), "no longer exists"),
        ):
            server = build_mcp(build_runtime(settings, app_url, stdio_user=account))
            async with Client(server) as client:
                result = await client.call_tool("query_records", {"model": "Note"})
            assert says in error_text(result)
    finally:
        execute(db, "DELETE FROM user_profiles WHERE id = :id", id=unlinked)
