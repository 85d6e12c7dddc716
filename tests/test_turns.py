"""The fair turns of rowscope/embeddings/turns.py, driven without a model: each turn is held until
the test lets it go, so the order the worker is handed on in is exact."""

from __future__ import annotations

from collections.abc import Callable, Hashable

import anyio
import pytest

from rowscope.embeddings.turns import FairTurns

pytestmark = pytest.mark.anyio


class Worker:
    """Turns that run until released, recording the order they started in."""

    def __init__(self) -> None:
        self.turns = FairTurns()
        self.started: list[str] = []
        self.release: dict[str, anyio.Event] = {}

    async def hold(
        self, name: str, user: Hashable, cost: int, last: Callable[[], None] | None = None
    ) -> None:
        self.release[name] = anyio.Event()
        async with self.turns.turn(user, cost):
            self.started.append(name)
            await self.release[name].wait()
            if last is not None:
                last()  # the turn's last act: the worker is handed on without a checkpoint between

    async def finish(self, name: str) -> None:
        self.release[name].set()
        await anyio.wait_all_tasks_blocked()


async def test_a_turn_cancelled_while_waiting_leaves_the_queue() -> None:
    """Our choice (the bound on one embed call covers its wait): a turn whose caller ran out of time
    while queued is not run, and the one behind it is."""
    worker = Worker()
    impatient = anyio.CancelScope()

    async def bob() -> None:
        with impatient:
            await worker.hold("b", "bob", 8)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(worker.hold, "a", "alice", 8)
            await anyio.wait_all_tasks_blocked()
            tasks.start_soon(bob)
            tasks.start_soon(worker.hold, "c", "carol", 8)
            await anyio.wait_all_tasks_blocked()
            impatient.cancel()
            await anyio.wait_all_tasks_blocked()
            assert worker.turns.waiting == 1
            await worker.finish("a")
            await worker.finish("c")
    assert worker.started == ["a", "c"]


async def test_a_turn_cancelled_as_it_is_handed_the_worker_hands_it_on() -> None:
    """Our choice: a caller that runs out of time just as its turn comes does not keep the worker."""
    worker = Worker()
    impatient = anyio.CancelScope()

    async def bob() -> None:
        with impatient:
            await worker.hold("b", "bob", 1)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            # bob's caller gives up as alice's turn ends: the cancellation and the hand-over reach
            # bob's waiting turn in the same step
            tasks.start_soon(worker.hold, "a", "alice", 1, impatient.cancel)
            await anyio.wait_all_tasks_blocked()
            tasks.start_soon(bob)
            tasks.start_soon(worker.hold, "c", "carol", 1)
            await anyio.wait_all_tasks_blocked()
            await worker.finish("a")
            await worker.finish("c")
    assert worker.started == ["a", "c"]


async def test_an_idle_user_banks_no_credit() -> None:
    """Our choice (start-time fair queuing): a user who arrives after others have run long starts
    level with them, and takes turns with them rather than all of the worker until even."""
    worker = Worker()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            for n in range(6):  # alice has run six turns of eight while bob was away
                tasks.start_soon(worker.hold, f"a{n}", "alice", 8)
                await anyio.wait_all_tasks_blocked()
                if n < 5:
                    await worker.finish(f"a{n}")
            tasks.start_soon(worker.hold, "a6", "alice", 8)
            tasks.start_soon(worker.hold, "b0", "bob", 8)
            tasks.start_soon(worker.hold, "b1", "bob", 8)
            tasks.start_soon(worker.hold, "a7", "alice", 8)
            await anyio.wait_all_tasks_blocked()
            for name in ["a5", "b0", "a6", "b1", "a7"]:
                await worker.finish(name)
    assert worker.started[5:] == ["a5", "b0", "a6", "b1", "a7"]
