"""``rowscope serve`` and its port (issue 12): a busy port is refused at start in one line naming
``host:port``, for one worker and for ``--workers N`` (whose ``SO_REUSEPORT`` sockets would otherwise
have shared it with a second server silently); and the workers of a parent killed with SIGKILL do
not outlive it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from tests.servers import ROWSCOPE, child_env, free_port, serving
from tests.test_faults import gone, listens, live_children, poll, refuses
from tests.test_start_errors import one_line

pytestmark = pytest.mark.slow


def start(database_url: str, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    """``rowscope serve`` on ``port``; a server that starts anyway is stopped after 20 s (and fails
    the test, which expects a refusal)."""
    proc = subprocess.Popen(
        [ROWSCOPE, "serve", "--port", str(port), *args],
        env=child_env(DATABASE_URL=database_url),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.terminate()
        out, err = proc.communicate(timeout=40)
        pytest.fail(f"a second server started on the busy port {port}:\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def refusal(done: subprocess.CompletedProcess[str], port: int) -> None:
    assert one_line(done) == (
        f"rowscope: 127.0.0.1:{port} is already in use (another rowscope serve, or another program, "
        "listens there): stop it, or choose another --port"
    )


@contextmanager
def listener() -> Iterator[int]:
    """Another program listening on a loopback port, as most do: without SO_REUSEPORT."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock.getsockname()[1]


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one worker", "two workers"])
def test_a_port_another_program_listens_on_is_refused_in_one_line(
    database_url: str, workers: list[str]
) -> None:
    """Issue 12: one worker died with a traceback, --workers N went into a crash loop."""
    with listener() as port:
        refusal(start(database_url, port, *workers), port)


TWO = ("--workers", "2")


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param(TWO, TWO, id="two workers, then two workers"),
        pytest.param((), TWO, id="one worker, then two workers"),
        pytest.param(TWO, (), id="two workers, then one worker"),
    ],
)
def test_a_second_server_on_a_running_server_s_port_is_refused(
    database_url: str, tmp_path: Path, first: tuple[str, ...], second: tuple[str, ...]
) -> None:
    """Issue 12: two ``serve --workers N`` on one port shared it silently (SO_REUSEPORT); every
    combination is now refused, and the first server keeps serving."""
    with serving(database_url, tmp_path, *first) as served:
        refusal(start(database_url, served.port, *second), served.port)
        assert served.proc.poll() is None, served.log()


def test_workers_end_when_their_parent_is_killed_with_sigkill(database_url: str, tmp_path: Path) -> None:
    """Issue 12: a parent killed with SIGKILL cannot stop its workers, which stayed serving the port
    as orphans; each now gets SIGTERM from the kernel when its parent dies (PR_SET_PDEATHSIG) and
    stops gracefully, so the port is free for the next start."""
    with serving(database_url, tmp_path, "--workers", "2") as served:
        parent = psutil.Process(served.proc.pid)
        poll(
            "both workers listen",
            lambda: len(w := live_children(parent)) == 2 and all(listens(p, served.port) for p in w),
            within=30,
        )
        workers = live_children(parent)
        os.kill(served.proc.pid, signal.SIGKILL)
        served.proc.wait(timeout=5)
        took = poll("every worker has ended", lambda: all(gone(w) for w in workers), within=15)
        assert refuses(served.port)
    print(f"\nworkers gone {took:.2f} s after their parent's SIGKILL")
    assert "Traceback" not in served.log()


def test_a_worker_whose_parent_is_gone_before_it_starts_ends_at_once(database_url: str) -> None:
    """Issue 12: the race of PR_SET_PDEATHSIG (the parent died before the worker asked for the
    signal) is closed by comparing the parent's pid: a worker started for a parent that is no
    longer its parent stops before serving."""
    not_my_parent = os.getpid() + 10**6  # no process has it; this test's process is the parent
    done = subprocess.run(
        [ROWSCOPE, "serve", "--port", str(free_port()), "--worker", str(not_my_parent)],
        env=child_env(DATABASE_URL=database_url),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert "Traceback" not in done.stderr
