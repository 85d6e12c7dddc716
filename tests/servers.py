"""Running rowscope as a real process in tests: free ports, a clean environment, and
``rowscope serve`` up until the test is done."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest

ROWSCOPE = str(Path(sys.executable).with_name("rowscope"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    """The test's environment without any rowscope setting, so the child reads only ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ROWSCOPE_") and k not in {"DATABASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL"}
    }
    return env | extra


@contextmanager
def serve(database_url: str, log_dir: Path, *, args: Sequence[str] = (), **env: str) -> Iterator[str]:
    """``rowscope serve`` on a free loopback port, yielding its base URL once GET /health answers;
    ``args``: more of serve's options (``--workers 2``)."""
    with serving(database_url, log_dir, *args, **env) as served:
        yield served.url


@dataclass(frozen=True)
class Served:
    """A running ``rowscope serve``: its base URL and port, the process, and its log file."""

    url: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text()


@contextmanager
def serving(database_url: str, log_dir: Path, *args: str, **env: str) -> Iterator[Served]:
    """:func:`serve`, for tests that signal or kill the server (or its workers) themselves: yields
    the process too, and at the end stops it only if it is still running."""
    port = free_port()
    log_path = log_dir / f"serve-{port}.log"
    url = f"http://127.0.0.1:{port}"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [ROWSCOPE, "serve", "--port", str(port), *args],
            env=child_env(DATABASE_URL=database_url, **env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    served = Served(url, port, proc, log_path)
    try:
        deadline = time.monotonic() + 30
        with httpx2.Client(timeout=2) as http:
            while True:
                try:
                    if http.get(f"{url}/health").status_code == 200:
                        break
                except httpx2.TransportError:
                    pass
                assert time.monotonic() < deadline, f"rowscope serve did not come up:\n{served.log()}"
                try:  # paces the poll, and notices a server that died
                    code = proc.wait(timeout=0.1)
                except subprocess.TimeoutExpired:
                    continue
                pytest.fail(f"rowscope serve exited with {code}:\n{served.log()}")
        yield served
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rowscope(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The real ``rowscope`` command run to its end, its output captured (start refusals, ``rls``)."""
    return subprocess.run(
        [ROWSCOPE, *args],
        env=child_env(**env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
