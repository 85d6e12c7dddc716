"""The demo's users sign in with a published password, so ``rowscope demo`` (and the quickstart,
``scripts/serve``) loads it only into the embedded database unless told otherwise (issue 12: with a
DATABASE_URL, ``scripts/serve`` loaded it into that database)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import httpx2
import psycopg
import pytest

from tests.servers import ROWSCOPE, child_env, free_port
from tests.test_cli import REPO, fresh_url, libpq, migrated_url

pytestmark = pytest.mark.slow
__all__ = ["fresh_url", "migrated_url"]  # fixtures


def users(url: str) -> list[str]:
    with psycopg.connect(libpq(url)) as conn:
        return [row[0] for row in conn.execute("SELECT email FROM user_profiles ORDER BY email")]


def test_demo_refuses_a_database_url_without_the_flag_and_loads_with_it(migrated_url: str) -> None:
    """Our choice: the refusal is one line naming the flag, and changes nothing."""
    env = child_env(DATABASE_URL=migrated_url)
    refused = subprocess.run(
        [ROWSCOPE, "demo"], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 2
    (line,) = refused.stderr.splitlines()
    assert line.startswith("rowscope: refusing to load the demo") and "--into-database-url" in line
    assert users(migrated_url) == []
    loaded = subprocess.run(
        [ROWSCOPE, "demo", "--into-database-url"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert loaded.returncode == 0, loaded.stderr
    assert users(migrated_url) == ["alice@example.com", "bob@example.com", "carol@example.com"]


def test_the_quickstart_with_a_database_url_serves_it_without_the_demo(
    migrated_url: str, tmp_path: Path
) -> None:
    """Issue 12: ``DATABASE_URL=... scripts/serve`` serves that database and loads no demo users."""
    port = free_port()
    err = tmp_path / "serve.err"
    with err.open("w") as stderr:
        proc = subprocess.Popen(
            [str(REPO / "scripts" / "serve"), "--port", str(port)],
            cwd=REPO,
            env=child_env(DATABASE_URL=migrated_url, ROWSCOPE_DATA_DIR=str(tmp_path / "data")),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        with httpx2.Client(timeout=2) as http:
            while True:
                try:
                    if http.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                        break
                except httpx2.TransportError:
                    pass
                assert time.monotonic() < deadline, err.read_text()
                try:  # paces the poll, and notices a script that died
                    code = proc.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    continue
                pytest.fail(f"scripts/serve exited with {code}:\n{err.read_text()}")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert users(migrated_url) == []
    assert b"rsk_" not in out  # no demo key either
    assert "without loading the demo" in err.read_text()
    assert not (tmp_path / "data").exists()  # nor an embedded cluster
