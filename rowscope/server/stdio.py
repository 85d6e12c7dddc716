"""``rowscope stdio``: MCP over standard input and output as one user, until the host closes stdin,
or until SIGINT (Ctrl-C) or SIGTERM, either of which is a clean stop (exit 0).

The SDK's stdio transport reads stdin in a worker thread, and a blocking read cannot be cancelled:
a signal cancelled the server, which then waited for that read, i.e. for the host to send another
line or close the pipe, so the process ignored Ctrl-C and SIGTERM for as long as stdin stayed open.
Here stdin's lines are read on the event loop instead (wait until readable, then one ``read``), which
a cancellation ends at once, and the SDK's transport is handed them as its input. The rest is the
SDK's ``run_stdio_async``: its transport (stdout still claimed by it) and its server loop.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any, cast

import anyio
import anyio.to_thread
from mcp.server.mcpserver import MCPServer
from mcp.server.stdio import stdio_server

from rowscope.server.runtime import Runtime

log = logging.getLogger(__name__)

READ_SIZE = 64 * 1024


class StdinLines:
    """The lines of a file descriptor, as the SDK's stdio transport iterates them (``str``, UTF-8
    with errors replaced, each with its newline), read without a thread where the descriptor can be
    polled (a pipe, a terminal, a socket). A regular file or ``/dev/null`` cannot be, and never
    blocks a read: those are read in a thread."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = bytearray()
        self._eof = False
        self._pollable = True

    def __aiter__(self) -> StdinLines:
        return self

    async def __anext__(self) -> str:
        while (end := self._buffer.find(b"\n")) < 0 and not self._eof:
            chunk = await self._read()
            if chunk is None:
                continue
            self._buffer += chunk
            self._eof = not chunk
        if not self._buffer:
            raise StopAsyncIteration
        cut = end + 1 if end >= 0 else len(self._buffer)
        line = bytes(self._buffer[:cut])
        del self._buffer[:cut]
        return line.decode("utf-8", errors="replace")

    async def _read(self) -> bytes | None:
        """The next bytes (``b""`` at the end), or None when there were none after all."""
        if self._pollable:
            try:
                await anyio.wait_readable(self._fd)
            except PermissionError:  # epoll refuses regular files and /dev/null
                self._pollable = False
            else:
                try:
                    return os.read(self._fd, READ_SIZE)
                except BlockingIOError:  # a descriptor someone made non-blocking, woken spuriously
                    return None
        return await anyio.to_thread.run_sync(os.read, self._fd, READ_SIZE)


async def serve_stdio(server: MCPServer[Runtime], runtime: Runtime) -> None:
    """Serve ``server`` on stdin and stdout until stdin ends or a SIGINT or SIGTERM arrives."""
    try:
        # Started before the server, so a failure is the exception itself (the CLI's one line), not
        # a task group's; the server's lifespan then finds it started.
        await runtime.start()
    except BaseException:
        await runtime.close()
        raise
    lowlevel = server._lowlevel_server  # what run_stdio_async runs, given our stdin
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tasks:

            async def stop_on_signal() -> None:
                async for signum in signals:
                    log.info("stopping (%s)", signal.Signals(signum).name)
                    tasks.cancel_scope.cancel()
                    return

            tasks.start_soon(stop_on_signal)
            stdin = cast(Any, StdinLines(0))
            async with stdio_server(stdin=stdin) as (read_stream, write_stream):
                await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())
            tasks.cancel_scope.cancel()  # stdin ended: the server is done
