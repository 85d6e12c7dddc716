"""A load generator light enough not to be the bottleneck: pre-encoded HTTP/1.1 POSTs over
keep-alive asyncio streams (one connection per simulated client), and the same for an MCP server
on stdio (newline-delimited JSON-RPC, requests pipelined). It reports its own CPU time per request,
so its overhead is part of the results."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bench.common import percentile


@dataclass
class Run:
    clients: int
    requests: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    client_cpu_s: float = 0.0
    errors: int = 0

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def p50(self) -> float:
        return percentile(self.latencies_ms, 50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies_ms, 99)

    @property
    def client_cpu_us(self) -> float:
        return self.client_cpu_s / self.requests * 1e6 if self.requests else 0.0


def http_request(port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class HttpConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> HttpConnection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def call(self, request: bytes) -> tuple[int, bytes]:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = -1
        chunked = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                data = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                parts.append(data[:-2])
            return status, b"".join(parts)
        return status, await self.reader.readexactly(length)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


Call = Callable[[], Awaitable[bool]]


async def drive(
    make_caller: Callable[[], Awaitable[tuple[Call, Callable[[], Awaitable[None]]]]],
    clients: int,
    requests: int,
    warmup: int,
    max_seconds: float,
) -> Run:
    """``clients`` concurrent callers share ``requests`` calls (after ``warmup`` each); bounded
    by ``max_seconds`` as well."""
    callers = [await make_caller() for _ in range(clients)]
    for call, _ in callers:
        for _ in range(warmup):
            await call()
    latencies: list[float] = []
    errors = 0
    remaining = requests
    deadline = time.monotonic() + max_seconds

    async def worker(call: Call) -> None:
        nonlocal remaining, errors
        while remaining > 0 and time.monotonic() < deadline:
            remaining -= 1
            started = time.perf_counter()
            ok = await call()
            latencies.append((time.perf_counter() - started) * 1000)
            errors += not ok

    cpu = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(worker(call) for call, _ in callers))
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    for _, close in callers:
        await close()
    return Run(clients, len(latencies), elapsed, latencies, cpu, errors)


def http_caller(
    port: int,
    body: bytes | Callable[[], bytes],
    headers: dict[str, str],
    check: Callable[[int, bytes], bool],
) -> Any:
    """Callers of one request, pre-encoded; or, with ``body`` a function, a new body every call."""
    fixed = http_request(port, "/mcp", body, headers) if isinstance(body, bytes) else None

    async def make() -> tuple[Call, Callable[[], Awaitable[None]]]:
        conn = await HttpConnection.open(port)

        async def call() -> bool:
            request = fixed
            if request is None:
                assert callable(body)
                request = http_request(port, "/mcp", body(), headers)
            status, payload = await conn.call(request)
            return check(status, payload)

        return call, conn.close

    return make


class StdioServer:
    """An MCP server on stdio; requests from many callers are pipelined and matched by id."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.next_id = 0
        self.reader_task: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, argv: list[str], env: dict[str, str]) -> StdioServer:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env=env,
            limit=2**24,
        )
        server = cls(proc)
        server.reader_task = asyncio.create_task(server._read())
        await server.request(
            "initialize",
            {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "rowscope-bench", "version": "0"},
            },
        )
        assert proc.stdin is not None
        proc.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
        return server

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                continue
            future = self.pending.pop(message.get("id"), None)
            if future is not None and not future.done():
                future.set_result(message)

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.next_id += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = future
        assert self.proc.stdin is not None
        self.proc.stdin.write(
            json.dumps({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params}).encode()
            + b"\n"
        )
        return await asyncio.wait_for(future, 30)

    async def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 5)
        except TimeoutError:
            self.proc.terminate()
            await self.proc.wait()
        if self.reader_task is not None:
            self.reader_task.cancel()
