"""What an operator reads when ``rowscope`` cannot start: one line, ``rowscope: ...``, exit code 2,
saying what to fix (issue 12). Every case runs the real ``rowscope`` command: policy files with
typos, databases that cannot be reached (a wrong password from a small server speaking PostgreSQL's
wire protocol, the rest from the real test server), and settings that contradict each other."""

from __future__ import annotations

import contextlib
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import pytest

from rowscope.db.engine import DatabaseUrl
from tests.servers import ROWSCOPE, child_env, free_port, rowscope
from tests.test_cli import fresh_url

pytestmark = pytest.mark.slow
__all__ = ["fresh_url"]  # a fixture

SPARK = (Path(__file__).resolve().parents[1] / "rowscope/policies/spark.toml").read_text()
SECRET = "s3cret-Pa55word"  # a password that must never be printed


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The refusal: exit code 2, and on stderr exactly one line, ``rowscope: ...`` (no log lines
    after INFO, no traceback); nothing on stdout, which is the protocol stream of ``stdio``."""
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = [line for line in done.stderr.splitlines() if not line.startswith("INFO ")]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("rowscope: "), done.stderr
    return lines[0]


# -- policy files ---------------------------------------------------------------------------------

POLICIES = [
    pytest.param(
        SPARK.replace('scope = { owner = "user_id" }', 'scope = { ownr = "user_id" }', 1),
        [
            "models.PortfolioItem.scope",
            "'ownr'",
            "owner, flag, unset, member, parent, access, role, public, any, all",
        ],
        id="a mistyped rule",
    ),
    pytest.param(
        SPARK.replace('key = "spark_id" }', 'kye = "spark_id" }', 1),
        ["access.spark.read.any[1].member", "'kye'", "table, key, on, user, where"],
        id="a mistyped key of a member rule",
    ),
    pytest.param(
        SPARK.replace("[knowledge]\n", '[knowledge]\ntext_colum = "content"\n'),
        ["knowledge", "'text_colum'", "text_column", "vector_column"],
        id="a mistyped key in [knowledge]",
    ),
    pytest.param(
        SPARK.replace("[knowledge]\n", '[knowledge]\ntext_column = "contnet"\n'),
        ["does not match the database", "knowledge", "contnet", "content, content_hash"],
        id="a [knowledge] column the database does not have",
    ),
    pytest.param(
        SPARK.replace("version = 1", "version = 3"),
        ["version", "1", "3"],
        id="an unknown version",
    ),
]


SERVE = ["serve", "--port", "0"]
STDIO = ["stdio", "--user", "alice@example.com"]


@pytest.mark.parametrize(
    ("command", "policy", "says"),
    [
        *(pytest.param(SERVE, *p.values, id=f"serve: {p.id}") for p in POLICIES),
        *(pytest.param(STDIO, *p.values, id=f"stdio: {p.id}") for p in POLICIES[:4]),
    ],
)
def test_a_policy_error_at_start_is_one_line_naming_the_file_the_key_and_what_is_allowed(
    database_url: str, tmp_path: Path, command: list[str], policy: str, says: list[str]
) -> None:
    """Issue 12: these were 38- to 158-line tracebacks (serve) and an ExceptionGroup (stdio)."""
    path = tmp_path / "policy.toml"
    path.write_text(policy)
    line = one_line(rowscope(*command, DATABASE_URL=database_url, ROWSCOPE_POLICY=str(path)))
    assert str(path) in line
    for part in says:
        assert part in line


# -- databases ------------------------------------------------------------------------------------


def with_parts(url: str, *, user: str | None = None, database: str | None = None) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{user}@{host}" if user is not None else parts.netloc
    path = f"/{database}" if database is not None else parts.path
    return urlunsplit((parts.scheme, netloc, path, parts.query, ""))


@pytest.fixture(scope="module")
def wrong_password_server() -> Iterator[int]:
    """A server on a loopback port that speaks PostgreSQL's wire protocol (v3) just far enough to
    ask for a password and refuse it, as PostgreSQL does (SQLSTATE 28P01, its message). It answers
    SSL and GSS encryption requests with "N", as a server without them does."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def exactly(conn: socket.socket, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = conn.recv(size - len(data))
            if not chunk:
                raise ConnectionError
            data += chunk
        return data

    def answer(conn: socket.socket) -> None:
        with conn:
            while True:  # SSLRequest / GSSENCRequest, then the startup message
                (length,) = struct.unpack("!i", exactly(conn, 4))
                body = exactly(conn, length - 4)
                if struct.unpack("!i", body[:4])[0] in (80877103, 80877104):
                    conn.sendall(b"N")
                    continue
                fields = body[4:].split(b"\0")
                user = dict(zip(fields[::2], fields[1::2], strict=False)).get(b"user", b"").decode()
                break
            conn.sendall(b"R" + struct.pack("!ii", 8, 3))  # AuthenticationCleartextPassword
            exactly(conn, 1)
            (length,) = struct.unpack("!i", exactly(conn, 4))
            exactly(conn, length - 4)  # the password: read, never echoed
            fields = [
                b"SFATAL",
                b"VFATAL",
                b"C28P01",
                f'Mpassword authentication failed for user "{user}"'.encode(),
            ]
            payload = b"".join(f + b"\0" for f in fields) + b"\0"
            conn.sendall(b"E" + struct.pack("!i", len(payload) + 4) + payload)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with contextlib.suppress(ConnectionError, OSError, struct.error):
                answer(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        listener.close()


def failures(database_url: str, wrong_password_port: int) -> dict[str, tuple[str, str]]:
    """A DATABASE_URL per failure, and what the line must say: where, and why."""
    refused = free_port()
    real = DatabaseUrl.parse(database_url)
    socket_dir = unquote(urlsplit(real.sqlalchemy).query.removeprefix("host="))
    return {
        "wrong password": (
            f"postgresql://owner:{SECRET}@127.0.0.1:{wrong_password_port}/app",
            f"cannot connect to database 'app' on 127.0.0.1:{wrong_password_port} as role 'owner': "
            "wrong password",
        ),
        "refused": (
            f"postgresql://owner:{SECRET}@127.0.0.1:{refused}/app",
            f"cannot connect to database 'app' on 127.0.0.1:{refused} as role 'owner': connection refused",
        ),
        "no such database": (
            with_parts(database_url, database="no_such_db"),
            f"cannot connect to database 'no_such_db' on the socket in {socket_dir} as role 'postgres': "
            "there is no database 'no_such_db'",
        ),
        "no such role": (
            with_parts(database_url, user="no_such_role"),
            "as role 'no_such_role': there is no role 'no_such_role'",
        ),
    }


KINDS = ["wrong password", "refused", "no such database", "no such role"]
COMMANDS = {
    "serve": SERVE,
    "stdio": STDIO,
    "migrate": ["migrate"],
    "users add": ["users", "add", "x@example.com"],
}


@pytest.mark.parametrize(
    ("command", "kind"),
    [
        *(pytest.param(SERVE, kind, id=f"serve: {kind}") for kind in KINDS),
        # Every start path has the same translation: each other command with one kind or another.
        *(
            pytest.param(COMMANDS[name], kind, id=f"{name}: {kind}")
            for name, kind in [
                ("stdio", "wrong password"),
                ("migrate", "no such role"),
                ("users add", "refused"),
            ]
        ),
        pytest.param(STDIO, "no such database", id="stdio: no such database"),
    ],
)
def test_a_database_that_cannot_be_reached_is_one_line_naming_where_and_why(
    database_url: str, wrong_password_server: int, command: list[str], kind: str
) -> None:
    """Issue 12: "cannot reach the database: OperationalError" became one line naming the server,
    the database, the role and the reason in plain words; never the password."""
    url, says = failures(database_url, wrong_password_server)[kind]
    done = rowscope(*command, DATABASE_URL=url)
    line = one_line(done)
    assert says in line, line
    assert SECRET not in done.stderr + done.stdout


def test_a_tool_role_that_cannot_connect_is_named_with_how_it_logs_in(
    database_url: str, wrong_password_server: int
) -> None:
    """Issue 12: the same translation for the tool role's login, with what sets its password."""
    tool = f"postgresql://rowscope_tool:{SECRET}@127.0.0.1:{wrong_password_server}/app"
    done = rowscope("serve", "--port", "0", DATABASE_URL=database_url, ROWSCOPE_TOOL_DATABASE_URL=tool)
    line = one_line(done)
    assert f"on 127.0.0.1:{wrong_password_server} as role 'rowscope_tool': wrong password" in line
    assert "ROWSCOPE_TOOL_DATABASE_URL" in line and "rowscope migrate" in line
    assert SECRET not in done.stderr


# -- settings and embeddings ----------------------------------------------------------------------


def test_openai_base_url_without_a_key_is_refused_rather_than_ignored(database_url: str) -> None:
    """Issue 12, our choice: an endpoint named but unusable is a mistake to say, not a silent fallback
    to the offline model (whose vectors the endpoint's would never meet)."""
    line = one_line(
        rowscope("serve", "--port", "0", DATABASE_URL=database_url, OPENAI_BASE_URL="http://127.0.0.1:9/v1")
    )
    assert "OPENAI_BASE_URL" in line and "OPENAI_API_KEY" in line


@pytest.mark.parametrize(
    ("env", "says"),
    [
        pytest.param({}, "embeddings: the offline model offline:all-MiniLM-L6-v2-int8", id="offline"),
        pytest.param(
            {"OPENAI_API_KEY": SECRET, "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"},
            "embeddings: OpenAI-compatible API at 127.0.0.1:9, model text-embedding-3-large",
            id="openai",
        ),
    ],
)
def test_the_active_embedder_is_said_at_start(database_url: str, env: dict[str, str], says: str) -> None:
    """Issue 12: one INFO line at start names the embedder (never the key)."""
    done = subprocess.run(
        [ROWSCOPE, "stdio", "--user", "alice@example.com"],
        env=child_env(DATABASE_URL=database_url, **env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    (line,) = (line for line in done.stderr.splitlines() if "embeddings:" in line)
    assert line.startswith(f"INFO rowscope.embeddings: {says}"), line
    assert SECRET not in done.stderr


@pytest.mark.parametrize(
    ("env", "says"),
    [
        pytest.param(
            {"ROWSCOPE_PORT": "70000"},
            "ROWSCOPE_PORT: Input should be less than or equal to 65535",
            id="port",
        ),
        pytest.param(
            {"ROWSCOPE_SECRET_KEY": "short"},
            "ROWSCOPE_SECRET_KEY must be at least 32 characters",
            id="secret",
        ),
    ],
)
def test_a_bad_setting_is_one_line_naming_its_variable(env: dict[str, str], says: str) -> None:
    """Issue 12: pydantic's multi-line report became the first error, named by its variable."""
    assert says in one_line(rowscope("serve", **env))


def test_alembic_says_nothing_unless_debugging(fresh_url: str) -> None:
    """Issue 12: migrating (on every start of the embedded database, and `rowscope migrate`) logged
    Alembic's choice of migration context at INFO; it is for --log-level DEBUG only."""
    quiet = rowscope("migrate", DATABASE_URL=fresh_url)
    assert quiet.returncode == 0, quiet.stderr
    assert "alembic" not in quiet.stderr
    loud = subprocess.run(
        [ROWSCOPE, "--log-level", "DEBUG", "migrate"],
        env=child_env(DATABASE_URL=fresh_url),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert loud.returncode == 0, loud.stderr
    assert "alembic.runtime.migration" in loud.stderr
