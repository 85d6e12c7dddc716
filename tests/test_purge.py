"""Purging what the authorization server no longer needs (rowscope/auth/purge.py): expired codes,
tokens and sessions, old throttle rows and registered clients that were never used go; everything
still live stays. Driven through ``rowscope purge`` and through a running ``rowscope serve``."""

from __future__ import annotations

import secrets
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import sqlalchemy as sa

from rowscope.server import demo
from tests.servers import ROWSCOPE, child_env, serve

pytestmark = pytest.mark.slow

ALICE = demo.ALICE
# The column a test's rows are known by: clients by their client_id (what the other rows refer to).
KEY = {"oauth_clients": "client_id"}


@dataclass(frozen=True)
class Rows:
    """The ids of the rows a test made: those that must go, and those that must stay."""

    gone: dict[str, list[str]]
    kept: dict[str, list[str]]


def _hex() -> str:
    return secrets.token_hex(32)


def _client(conn: sa.Connection, *, created: str, used: str | None) -> str:
    client_id = str(uuid.uuid4())
    conn.execute(
        sa.text(
            "INSERT INTO oauth_clients (client_id, client_name, redirect_uris, grant_types, "
            "token_endpoint_auth_method, kind, created_at, updated_at, last_used_at) VALUES (:c, "
            """'purge test', '["http://127.0.0.1/cb"]', '["authorization_code"]', 'none', 'registered', """
            f"now() - interval '{created}', now(), {f'now() - interval {used!r}' if used else 'NULL'})"
        ),
        {"c": client_id},
    )
    return client_id


def _code(conn: sa.Connection, client_id: str, expires: str) -> str:
    return str(
        conn.execute(
            sa.text(
                "INSERT INTO oauth_codes (code_hash, client_id, user_id, redirect_uri, scope, resource, "
                "code_challenge, expires_at) VALUES (:h, :c, :u, 'http://127.0.0.1/cb', 'rowscope:read', "
                f"'http://x/mcp', 'c', now() + interval '{expires}') RETURNING id"
            ),
            {"h": _hex(), "c": client_id, "u": ALICE},
        ).scalar_one()
    )


def _token(conn: sa.Connection, client_id: str, access: str, refresh: str | None) -> str:
    refresh_at = f"now() + interval '{refresh}'" if refresh else "NULL"
    return str(
        conn.execute(
            sa.text(
                "INSERT INTO oauth_tokens (family_id, client_id, user_id, scope, resource, access_hash, "
                "access_expires_at, refresh_hash, refresh_expires_at) VALUES (gen_random_uuid(), :c, :u, "
                f"'rowscope:read', 'http://x/mcp', :a, now() + interval '{access}', :r, {refresh_at}) "
                "RETURNING id"
            ),
            {"c": client_id, "u": ALICE, "a": _hex(), "r": _hex() if refresh else None},
        ).scalar_one()
    )


def _session(conn: sa.Connection, expires: str) -> str:
    return str(
        conn.execute(
            sa.text(
                "INSERT INTO auth_sessions (token_hash, user_id, expires_at) "
                f"VALUES (:h, :u, now() + interval '{expires}') RETURNING id"
            ),
            {"h": _hex(), "u": ALICE},
        ).scalar_one()
    )


def _throttle(conn: sa.Connection, age: str) -> str:
    return str(
        conn.execute(
            sa.text(
                "INSERT INTO signin_failures (kind, key, failed_at) "
                f"VALUES ('register', '198.51.100.1', now() - interval '{age}') RETURNING id"
            )
        ).scalar_one()
    )


@pytest.fixture
def rows(admin: sa.Engine) -> Iterator[Rows]:
    """Expired rows of every kind purged, next to live ones of each (defaults: codes an hour after
    expiry, tokens when both halves expired, unused clients after a day, stale after 30 days)."""
    with admin.begin() as conn:
        live = _client(conn, created="40 days", used="1 minute")
        never_used_old = _client(conn, created="2 days", used=None)
        never_used_new = _client(conn, created="1 minute", used=None)
        stale = _client(conn, created="90 days", used="60 days")
        stale_but_holding_a_token = _client(conn, created="90 days", used="60 days")
        gone = {
            "oauth_clients": [never_used_old, stale],
            "oauth_codes": [_code(conn, live, "-2 hours")],
            "oauth_tokens": [
                _token(conn, live, "-2 days", "-1 day"),
                _token(conn, live, "-1 hour", None),
            ],
            "auth_sessions": [_session(conn, "-1 second")],
            "signin_failures": [_throttle(conn, "2 days")],
        }
        kept = {
            "oauth_clients": [live, never_used_new, stale_but_holding_a_token],
            "oauth_codes": [_code(conn, live, "-10 minutes"), _code(conn, live, "5 minutes")],
            "oauth_tokens": [
                _token(conn, live, "-1 hour", "20 days"),  # the refresh token is still live
                _token(conn, live, "1 hour", "20 days"),
                _token(conn, stale_but_holding_a_token, "-1 hour", "1 day"),
            ],
            "auth_sessions": [_session(conn, "1 hour")],
            "signin_failures": [_throttle(conn, "1 minute")],
        }
        # Through the foreign keys' cascade: the unused client's code goes with it.
        gone["oauth_codes"].append(_code(conn, never_used_old, "5 minutes"))
    made = Rows(gone, kept)
    yield made
    with admin.begin() as conn:
        for table, ids in (made.gone | made.kept).items():
            key = KEY.get(table, "id::text")
            conn.execute(sa.text(f"DELETE FROM {table} WHERE {key} = ANY(:ids)"), {"ids": ids})
        conn.execute(sa.text("DELETE FROM oauth_clients WHERE client_name = 'purge test'"))


def present(admin: sa.Engine, rows: Rows) -> dict[str, set[str]]:
    """Which of the test's rows (gone and kept alike) exist now, by table."""
    found: dict[str, set[str]] = {}
    with admin.connect() as conn:
        for table in rows.gone:
            ids, key = rows.gone[table] + rows.kept[table], KEY.get(table, "id::text")
            found[table] = set(
                conn.execute(
                    sa.text(f"SELECT {key} FROM {table} WHERE {key} = ANY(:ids)"), {"ids": ids}
                ).scalars()
            )
    return found


def expected(rows: Rows) -> dict[str, set[str]]:
    return {table: set(ids) for table, ids in rows.kept.items()}


def test_rowscope_purge_deletes_expired_rows_and_keeps_live_ones(
    database_url: str, admin: sa.Engine, rows: Rows
) -> None:
    """Our choice (issue 12: nothing expired was ever deleted); a replayed code is still recognised
    for an hour after its expiry (RFC 6749 §4.1.2), a rotated refresh token until it expires."""
    assert present(admin, rows) == {t: set(rows.gone[t]) | set(rows.kept[t]) for t in rows.gone}
    done = subprocess.run(
        [ROWSCOPE, "purge"],
        env=child_env(DATABASE_URL=database_url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("deleted "), done.stdout
    assert present(admin, rows) == expected(rows)


def test_a_running_server_purges_at_start_and_then_every_interval(
    database_url: str, admin: sa.Engine, rows: Rows, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Our choice: every ``rowscope serve`` purges before it answers, and again every
    ROWSCOPE_PURGE_INTERVAL seconds, so a long-running server keeps the tables bounded."""
    with serve(database_url, tmp_path_factory.mktemp("purge"), ROWSCOPE_PURGE_INTERVAL="0.5"):
        assert present(admin, rows) == expected(rows)  # the start's purge is done before /health
        with admin.begin() as conn:
            later = _session(conn, "-1 second")
        rows.gone["auth_sessions"].append(later)
        deadline = time.monotonic() + 15
        while later in present(admin, rows)["auth_sessions"]:
            assert time.monotonic() < deadline, "the periodic purge did not run"
            time.sleep(0.1)
    assert present(admin, rows) == expected(rows)
