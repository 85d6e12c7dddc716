"""``rowscope serve --workers N``: one process per core, sharing the port through SO_REUSEPORT.

Each worker binds its own listening socket (``SO_REUSEPORT``; the kernel spreads connections) and
runs its own uvicorn, pool and token cache; all state is in PostgreSQL, so any worker can answer
any request. The parent only starts the database (the embedded one, migrated, if no
``DATABASE_URL``), starts the workers with that URL, and takes them down with it.

Why not ``uvicorn --workers``: its workers get the listening socket rebuilt from a file descriptor
whose ``proto`` reads 0, so asyncio never sets ``TCP_NODELAY`` on their connections, and with
h11 writing a response's head and body separately, every response on a keep-alive connection
stalls ~40 ms (Nagle and delayed ACK; measured in bench/workers.py).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time


def listening_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def run_workers(count: int, *, database_url: str, host: str, port: int, log_level: str) -> int:
    """Start ``count`` worker processes and wait; when one dies or this process is told to stop,
    stop them all. Returns the exit code."""
    command = [sys.executable, "-m", "rowscope.server.cli", "--log-level", log_level, "serve", "--worker"]
    command += ["--host", host, "--port", str(port)]
    env = os.environ | {"DATABASE_URL": database_url}
    children = [subprocess.Popen(command, env=env) for _ in range(count)]  # noqa: S603
    try:
        while all(child.poll() is None for child in children):
            time.sleep(0.2)
        return 1  # a worker died on its own
    finally:
        stop_all(children)


def stop_all(children: list[subprocess.Popen[bytes]]) -> None:
    """Ask every worker to stop, then wait for each (15 s) and kill the ones that do not."""
    for child in children:
        child.terminate()
    for child in children:
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            child.kill()
