"""Debian's pgbouncer in front of the test PostgreSQL, for the tests of rowscope behind a pooler.

:func:`pgbouncer` starts ``/usr/sbin/pgbouncer`` on a free loopback port with the given
``pool_mode``, its ini, auth_file and log in a directory of its own, and stops it at the end. It
forwards every database name to the server the test database lives on: the embedded one (a unix
socket) or the one in ``DATABASE_URL`` (host and port from the URL). Clients log in with
``auth_type = trust`` (loopback only); the auth_file lists the users rowscope connects as, the
owner of the test database (``postgres`` on the embedded server) and ``rowscope_tool``. The pool is
small (``default_pool_size = 5`` per database and user), so server connections really pass from
one client connection to another.

pgbouncer refuses to run as root. As root it is started with ``-u`` as the owner of the server's
unix socket directory (the embedded server's ``embedded_postgres``, the only user besides root who
may enter its pgdata), or ``nobody`` for a server reached over TCP; its directory is then a fresh
one under the system's temporary directory, owned by that user, since pytest's own are readable by
root alone. The log is copied into ``log_dir`` when pgbouncer stops.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from tests.servers import free_port

PGBOUNCER = Path("/usr/sbin/pgbouncer")
TOOL_USER = "rowscope_tool"  # the login of rowscope's tool transactions (migration 0011)
PoolMode = Literal["session", "transaction", "statement"]


def require_pgbouncer() -> Path:
    """Debian's pgbouncer. Missing here: skipped; missing in CI: a failure (.ci/run installs it)."""
    if not os.access(PGBOUNCER, os.X_OK):
        if os.environ.get("CI"):
            pytest.fail(f"CI must provide Debian's pgbouncer ({PGBOUNCER}); .ci/run installs it")
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer)")
    return PGBOUNCER


@dataclass(frozen=True)
class Bouncer:
    """A running pgbouncer: where it listens and which database of the test server it serves."""

    port: int
    user: str  # the owner's user name, as in the test database's URL
    database: str
    directory: Path  # its ini, auth_file and log
    pool_mode: PoolMode

    def url(self, *, pgbouncer_flag: bool = False, user: str | None = None) -> str:
        """The DATABASE_URL to give rowscope: the test database through pgbouncer, as ``user`` (by
        default the owner), with ``?pgbouncer=true`` when ``pgbouncer_flag``."""
        login = quote(user or self.user, safe="")
        url = f"postgresql://{login}@127.0.0.1:{self.port}/{quote(self.database, safe='')}"
        return url + ("?pgbouncer=true" if pgbouncer_flag else "")

    def pools(self) -> dict[str, dict[str, Any]]:
        """pgbouncer's SHOW POOLS for the test database, by user: ``cl_active`` client connections
        logged in, ``sv_active``/``sv_idle``/``sv_used``... its server connections (the admin
        console speaks only the simple query protocol, hence the client-side cursor)."""
        admin = f"postgresql://{quote(self.user, safe='')}@127.0.0.1:{self.port}/pgbouncer"
        with psycopg.connect(admin, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
            cursor = conn.execute("SHOW POOLS")
            names = [column.name for column in cursor.description or []]
            rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        return {row["user"]: row for row in rows if row["database"] == self.database}

    @staticmethod
    def servers(pool: dict[str, Any]) -> int:
        """A pool's server connections, in any state."""
        return sum(int(pool[k]) for k in ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login"))

    @property
    def log(self) -> Path:
        return self.directory / "pgbouncer.log"

    def log_text(self) -> str:
        """Its log, after whatever it wrote to stdout and stderr."""
        texts = []
        for path in (self.directory / "pgbouncer.out", self.log):
            try:
                texts.append(path.read_text(errors="replace"))
            except OSError as exc:
                texts.append(f"(no {path.name}: {exc})")
        return "\n".join(texts)


def server_of(database_url: str) -> dict[str, str]:
    """The test database's server, database and owner, from its URL (SQLAlchemy's or libpq's form):
    ``host`` (a socket directory or a host name), ``port``, ``dbname``, ``user``, ``password``."""
    scheme, sep, rest = database_url.partition("://")
    assert sep and scheme.startswith(("postgres", "postgresql")), database_url
    params = conninfo_to_dict("postgresql://" + rest)
    query_free = {k: str(v) for k, v in params.items() if v is not None}
    return {
        "host": query_free.get("host") or "localhost",
        "port": query_free.get("port") or "5432",
        "dbname": query_free["dbname"],
        "user": query_free.get("user") or pwd.getpwuid(os.getuid()).pw_name,
        "password": query_free.get("password", ""),
    }


def _run_as(host: str) -> str | None:
    """Who pgbouncer runs as: None (ourselves) unless we are root, which pgbouncer refuses."""
    if os.geteuid() != 0:
        return None
    if host.startswith("/"):
        owner = pwd.getpwuid(os.stat(host).st_uid).pw_name
        if owner != "root":
            return owner
    return "nobody"


def _quote_auth(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


@contextmanager
def pgbouncer(
    database_url: str,
    log_dir: Path,
    pool_mode: PoolMode = "transaction",
    *,
    pool_size: int = 5,
    users: tuple[str, ...] = (TOOL_USER,),
) -> Iterator[Bouncer]:
    """pgbouncer in ``pool_mode`` in front of the server of ``database_url`` (the test database's
    URL), up once it answers a query on its loopback port; stopped, and its log copied into
    ``log_dir``, at the end. ``users``: who may log in besides the URL's user (without a password:
    the server must trust them, as the embedded one does)."""
    binary = require_pgbouncer()
    server = server_of(database_url)
    run_as = _run_as(server["host"])
    directory = Path(tempfile.mkdtemp(prefix=f"rowscope-pgbouncer-{pool_mode}-"))
    bouncer = Bouncer(free_port(), server["user"], server["dbname"], directory, pool_mode)
    proc: subprocess.Popen[bytes] | None = None
    try:
        _configure(bouncer, server, pool_size, users)
        if run_as is not None:
            entry = pwd.getpwnam(run_as)
            for path in (directory, *directory.iterdir()):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        command = [str(binary), *(["-u", run_as] if run_as else []), str(directory / "pgbouncer.ini")]
        with (directory / "pgbouncer.out").open("wb") as out:  # what it says before its log opens
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        _wait_ready(proc, bouncer)
        yield bouncer
    finally:
        if proc is not None:
            proc.terminate()  # SIGTERM: pgbouncer's immediate shutdown
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if bouncer.log.exists():
            log_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(bouncer.log, log_dir / f"pgbouncer-{pool_mode}-{bouncer.port}.log")
        shutil.rmtree(directory, ignore_errors=True)


def _configure(bouncer: Bouncer, server: dict[str, str], pool_size: int, users: tuple[str, ...]) -> None:
    """Write pgbouncer's auth_file and ini into its directory."""
    directory = bouncer.directory
    auth_lines = [f"{_quote_auth(server['user'])} {_quote_auth(server['password'])}"]
    auth_lines += [f"{_quote_auth(u)} {_quote_auth('')}" for u in users if u != server["user"]]
    (directory / "userlist.txt").write_text("\n".join(auth_lines) + "\n")
    settings = [
        "[databases]",
        # Every database name, on the test server, as the client's own user.
        f"* = host='{server['host']}' port={server['port']}",
        "",
        "[pgbouncer]",
        "listen_addr = 127.0.0.1",
        f"listen_port = {bouncer.port}",
        "unix_socket_dir =",
        "auth_type = trust",
        f"auth_file = {directory / 'userlist.txt'}",
        # The owner may also read SHOW POOLS on the admin console (Bouncer.pools).
        f"admin_users = {server['user']}",
        f"logfile = {directory / 'pgbouncer.log'}",
        f"pidfile = {directory / 'pgbouncer.pid'}",
        f"pool_mode = {bouncer.pool_mode}",
        f"default_pool_size = {pool_size}",
        "min_pool_size = 0",
        "reserve_pool_size = 0",
        "max_client_conn = 1000",
        "query_wait_timeout = 30",
        "server_login_retry = 1",
        "log_connections = 0",
        "log_disconnections = 0",
    ]
    (directory / "pgbouncer.ini").write_text("\n".join(settings) + "\n")


def _wait_ready(proc: subprocess.Popen[bytes], bouncer: Bouncer) -> None:
    """Poll until pgbouncer answers a query for the test database (it connects to the server on
    the first client), failing at once if it exits and after 15 s if it never answers."""
    deadline = time.monotonic() + 15
    while True:
        try:
            with psycopg.connect(bouncer.url(), connect_timeout=2, autocommit=True) as conn:
                conn.execute("SELECT 1", prepare=False)
            return
        except psycopg.OperationalError as exc:
            error = exc
        assert time.monotonic() < deadline, f"pgbouncer did not answer: {error}\n{bouncer.log_text()}"
        try:  # paces the poll, and notices a pgbouncer that died
            code = proc.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            continue
        pytest.fail(f"pgbouncer exited with {code}:\n{bouncer.log_text()}")
