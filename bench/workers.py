"""Serve an app factory from N uvicorn processes sharing one port through ``SO_REUSEPORT``.

Why not ``uvicorn --workers N``: its worker processes are spawned and receive the listening socket
re-created from a file descriptor, whose ``proto`` reads 0, so asyncio does not set ``TCP_NODELAY``
on accepted connections; h11 writes the head and the body of a response separately, and on a
keep-alive connection Nagle + delayed ACK then stall every response ~40 ms (measured here: 44 ms
per call on one connection, 1 ms on a fresh one). Each process here binds its own socket (the one
``rowscope serve --workers`` uses, ``rowscope.server.workers.listening_socket``), so the kernel
spreads connections and every connection gets ``TCP_NODELAY``. This module exists for the apps
that are not rowscope (the floor).

    python -m bench.workers bench.apps:floor 8000 2
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import FrameType


def serve_one(factory: str, port: int) -> None:
    import uvicorn

    from rowscope.server.workers import listening_socket

    sock = listening_socket("127.0.0.1", port, reuse_port=True)
    config = uvicorn.Config(factory, factory=True, log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


def main(argv: list[str]) -> int:
    from rowscope.server.workers import stop_all

    factory, port, count = argv[0], int(argv[1]), int(argv[2])
    if count == 1:
        serve_one(factory, port)
        return 0
    children = [
        subprocess.Popen([sys.executable, "-m", "bench.workers", factory, str(port), "1"])  # noqa: S603
        for _ in range(count)
    ]

    def stop(signum: int, _frame: FrameType | None) -> None:
        stop_all(children)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while all(child.poll() is None for child in children):
        time.sleep(0.2)
    stop(signal.SIGTERM, None)  # one worker died: take the others down too
    return 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
