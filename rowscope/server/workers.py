"""``rowscope serve --workers N``: one process per core, sharing the port through SO_REUSEPORT.

Each worker binds its own listening socket (``SO_REUSEPORT``; the kernel spreads connections) and
runs its own uvicorn, pool and token cache; all state is in PostgreSQL, so any worker can answer
any request. The parent only starts the database (the embedded one, migrated, if no
``DATABASE_URL``), starts the workers with that URL, and keeps them running:

* A worker that dies (a crash, the OOM killer, ``kill -9``) is replaced at once; the others keep
  answering meanwhile, since they listen on the same port. Only the requests that were on the dead
  worker's connections are lost.
* A worker that keeps dying right after its start (:data:`CRASH_LOOP` of one slot in a row, each
  within :data:`EARLY_DEATH` seconds of its start: a broken deployment, not bad luck) ends the
  whole server with one log line and exit code 1; restarting it forever would only hide that.
* SIGTERM or SIGINT to the parent is a requested stop: it is passed on to every worker as SIGTERM
  (uvicorn's graceful shutdown: requests in flight finish, for at most :data:`GRACEFUL_SHUTDOWN`
  seconds), and the parent exits 0 once they all have. SIGINT is not passed on as such: from a
  terminal the workers got their own already, and a second one is uvicorn's force quit. A second
  request to the parent is that force quit (SIGINT to every worker).
* A parent that dies without stopping them (``kill -9``) takes its workers with it: each asks the
  kernel at its start for SIGTERM when its parent dies (:func:`die_with_parent`).
* ``SO_REUSEPORT`` would just as gladly let a second ``serve --workers N`` share the port, so the
  parent claims it first (:func:`claim_port`) and refuses a busy one in one line.

Why not ``uvicorn --workers``: its workers get the listening socket rebuilt from a file descriptor
whose ``proto`` reads 0, so asyncio never sets ``TCP_NODELAY`` on their connections, and with
h11 writing a response's head and body separately, every response on a keep-alive connection
stalls ~40 ms (Nagle and delayed ACK; measured in bench/workers.py).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from types import FrameType

log = logging.getLogger(__name__)

# Seconds a server (one worker, or each of the workers) lets requests in flight finish after it is
# told to stop (uvicorn's timeout_graceful_shutdown, which is unbounded unless set); then they are
# cancelled, and a write cancelled so is rolled back whole (every tool writes in one transaction).
# Long enough for any ordinary tool call (one embedding call is bounded by ROWSCOPE_EMBEDDING_TIMEOUT,
# 20 s by default), short enough that the process exits by itself within the 30 s an orchestrator
# usually waits before it kills (Kubernetes' terminationGracePeriodSeconds).
GRACEFUL_SHUTDOWN = 20
# What the parent waits for a worker told to stop before it kills it: the graceful shutdown, and the
# application's own shutdown after it (closing pools, the background indexer's last batch).
STOP_TIMEOUT = GRACEFUL_SHUTDOWN + 10
# A worker that dies sooner than this after its start died "right after its start"...
EARLY_DEATH = 10.0
# ... and this many such deaths of one worker slot in a row are a crash loop: the server stops.
CRASH_LOOP = 3
POLL = 0.1  # seconds between the parent's looks at its workers
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class ListenError(RuntimeError):
    """``host:port`` cannot be served (in use, not an address of this machine, not allowed); the
    message says so in one line."""


def _cannot_bind(host: str, port: int, exc: OSError) -> ListenError:
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        why = "is already in use (another rowscope serve, or another program, listens there)"
        return ListenError(f"{where} {why}: stop it, or choose another --port")
    if exc.errno == errno.EADDRNOTAVAIL:
        return ListenError(f"cannot listen on {where}: {host} is not an address of this machine")
    if exc.errno == errno.EACCES:
        return ListenError(f"cannot listen on {where}: permission denied (ports below 1024 need privileges)")
    return ListenError(f"cannot listen on {where}: {exc.strerror or exc}")


def _tcp_socket(host: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a previous run's TIME_WAIT is no obstacle
    return sock


def listening_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    sock = _tcp_socket(host)
    try:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise _cannot_bind(host, port, exc) from None
    return sock


def claim_port(host: str, port: int) -> socket.socket | None:
    """Before a server starts (one worker, or the parent of ``--workers N``): refuse a ``host:port``
    that anything listens on, in one line (:class:`ListenError`).

    Two checks. A probe binds ``host:port`` *without* ``SO_REUSEPORT``, which the kernel refuses while
    any socket listens there, shared or not (a listener on the wildcard address included). Alone it
    leaves a race: the workers bind with ``SO_REUSEPORT`` a second or two after the probe, so two
    ``serve --workers N`` started within that window would both pass it and then share the port. So
    on Linux the server also holds a lock for its whole life: an abstract unix socket named after
    ``host:port``, which only one process can bind at a time and which the kernel releases when the
    process ends however it ends (no lock file to go stale). The returned socket is that lock (None
    elsewhere): keep it open while serving. What is left: a program other than rowscope that joins
    the port with ``SO_REUSEPORT`` between the probe and the workers' binds, under the same user (the
    kernel lets only the same user share a port so)."""
    lock: socket.socket | None = None
    if sys.platform == "linux":
        lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            lock.bind(f"\0rowscope serve {host}:{port}")
        except OSError as exc:
            lock.close()
            raise _cannot_bind(host, port, exc) from None
    probe = _tcp_socket(host)
    try:
        probe.bind((host, port))
    except OSError as exc:
        if lock is not None:
            lock.close()
        raise _cannot_bind(host, port, exc) from None
    finally:
        probe.close()
    return lock


def die_with_parent(parent: int) -> None:
    """In a worker, at its start: end (SIGTERM: a graceful stop) when the parent of ``--workers N``
    dies, even by SIGKILL, which leaves it no chance to stop its workers itself. On Linux the kernel
    sends the signal (``prctl(PR_SET_PDEATHSIG)``); a parent that died before that call is caught by
    comparing the parent's pid, which changed when this process was handed to init. Elsewhere a
    thread watches the parent's pid once a second."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="rowscope parent watch", daemon=True).start()


@dataclass
class _Slot:
    """One of the N workers: its current process, when that started, and how many of this slot's
    processes in a row died right after their start."""

    process: subprocess.Popen[bytes]
    started: float
    early_deaths: int = 0


def _how(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def run_workers(count: int, *, database_url: str, host: str, port: int, log_level: str) -> int:
    """Start ``count`` worker processes and keep that many running until told to stop (exit code 0,
    every worker having stopped by itself) or until one keeps dying right after its start (1)."""
    command = [sys.executable, "-m", "rowscope.server.cli", "--log-level", log_level, "serve"]
    command += ["--worker", str(os.getpid())]  # the worker ends when this process does (die_with_parent)
    command += ["--host", host, "--port", str(port)]
    env = os.environ | {"DATABASE_URL": database_url}
    requests: list[int] = []  # the stop signals received, in order
    slots: list[_Slot] = []

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        requests.append(signum)
        if len(requests) > 1:  # asked again while stopping: uvicorn's force quit, in every worker
            for slot in slots:
                if slot.process.poll() is None:
                    slot.process.send_signal(signal.SIGINT)

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(command, env=env)  # noqa: S603

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for _ in range(count):
            if requests:
                break
            slots.append(_Slot(start(), time.monotonic()))
        while not requests:
            for slot in slots:
                code = slot.process.poll()
                if code is None or requests:
                    continue
                lived = time.monotonic() - slot.started
                slot.early_deaths = slot.early_deaths + 1 if lived < EARLY_DEATH else 0
                if slot.early_deaths >= CRASH_LOOP:
                    log.error(
                        "stopping the server: a worker keeps dying right after it starts (%d in a row "
                        "within %.0f s of their start; the last, pid %d, %s)",
                        slot.early_deaths,
                        EARLY_DEATH,
                        slot.process.pid,
                        _how(code),
                    )
                    return 1
                log.warning(
                    "worker %d %s after %.1f s; starting a new one", slot.process.pid, _how(code), lived
                )
                slot.process, slot.started = start(), time.monotonic()
            time.sleep(POLL)
        log.info("stopping the workers (%s)", signal.Signals(requests[0]).name)
        return 0 if stop_all([slot.process for slot in slots]) else 1
    finally:
        stop_all([slot.process for slot in slots])  # those still running, after a crash loop or an error
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stop_all(children: list[subprocess.Popen[bytes]], timeout: float = STOP_TIMEOUT) -> bool:
    """Ask every worker still running to stop (SIGTERM), wait for each (``timeout`` in all), and kill
    the ones that do not. True when every one of them stopped by itself with exit code 0."""
    for child in children:
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + timeout
    clean = True
    for child in children:
        try:
            code = child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("worker %d did not stop within %.0f s; killing it", child.pid, timeout)
            child.kill()
            child.wait()
            clean = False
            continue
        if code != 0:
            clean = False
    return clean
