"""``rowscope stdio`` stops on SIGINT (Ctrl-C in a terminal) and SIGTERM (what a host or a process
manager sends) while its stdin is still open, promptly and cleanly (issue 12: it went on waiting for
the next line of stdin)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.servers import ROWSCOPE, child_env

pytestmark = pytest.mark.slow

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "test_stdio_signals", "version": "1"},
    },
}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_ends_stdio_promptly_with_exit_0_while_stdin_stays_open(
    database_url: str, tmp_path: Path, signum: signal.Signals
) -> None:
    """Our choice: either signal is a requested stop, as for ``serve``: exit 0 within seconds, the
    pools closed, no traceback; the host never closed stdin."""
    errlog = tmp_path / "stderr.log"
    with errlog.open("w") as err:
        proc = subprocess.Popen(
            [ROWSCOPE, "stdio", "--user", "alice@example.com"],
            env=child_env(DATABASE_URL=database_url),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
        )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(json.dumps(INITIALIZE).encode() + b"\n")
        proc.stdin.flush()
        answer = json.loads(proc.stdout.readline())  # the server is up and serving
        assert answer["id"] == 1 and "result" in answer, answer
        sent = time.monotonic()
        proc.send_signal(signum)
        try:
            code = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail(f"rowscope stdio ignored {signum.name} for 15 s:\n{errlog.read_text()}")
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
        proc.stdout.close()
    print(f"\nstdio stopped {took:.2f} s after {signum.name}")
    assert code == 0, errlog.read_text()
    assert "Traceback" not in errlog.read_text()
    assert f"stopping ({signum.name})" in errlog.read_text()


def test_stdio_ends_with_exit_0_when_the_host_closes_stdin(database_url: str, tmp_path: Path) -> None:
    """Our choice (as before): the end of stdin is the end of the session."""
    done = subprocess.run(
        [ROWSCOPE, "stdio", "--user", "alice@example.com"],
        env=child_env(DATABASE_URL=database_url),
        input=json.dumps(INITIALIZE) + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[0])["id"] == 1
    assert "Traceback" not in done.stderr
