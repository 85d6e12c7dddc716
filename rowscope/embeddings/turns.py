"""Turns on one worker, shared fairly between users: the offline model's thread (offline.py).

A caller asks for a turn for a user and a cost (the offline model: the turn's characters). One turn
runs at a time; when it ends, the waiting turn with the smallest *finish tag* goes next, ties in order of
arrival. A turn's finish tag is its cost added to the later of two tags: its user's last finish tag
(the user's turns queue one behind another), and the start tag of the turn running now (a user who
has been idle starts level with now, and has banked no credit). This is start-time fair queuing
(Goyal et al., 1996) with the finish tag as the order, so that:

* a search (a turn of a few dozen characters) arriving while three users' adds take turns of a
  1,000-character chunk is tagged just past the running turn, so it goes next: it waits for one
  turn, not a round of them;
* users with work waiting share the worker by cost, whatever the number of their calls: one user's
  ten concurrent calls are tagged one after another and get one user's share, not ten.

A turn that is cancelled while it waits leaves the queue (and gives its user back its cost), or
hands the worker on if it had just been given it; one cancelled while it runs hands it on at once
(the caller decides whether its thread is waited for).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio


@dataclass(order=True)
class _Waiting:
    finish: float
    arrival: int
    start: float = field(compare=False)
    granted: anyio.Event = field(compare=False, default_factory=anyio.Event)


class FairTurns:
    """One turn at a time, in order of finish tag (see the module docstring)."""

    def __init__(self) -> None:
        self._busy = False
        self._now = 0.0  # the start tag of the running (or last run) turn: virtual time
        self._finish: dict[Hashable, float] = {}  # users whose last finish tag is past _now
        self._waiting: list[_Waiting] = []  # a heap
        self._arrivals = itertools.count()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @asynccontextmanager
    async def turn(self, user: Hashable, cost: int) -> AsyncIterator[None]:
        start = max(self._now, self._finish.get(user, self._now))
        self._finish[user] = start + cost
        if not self._busy:
            self._busy = True
            self._now = start
        else:
            entry = _Waiting(start + cost, next(self._arrivals), start)
            heapq.heappush(self._waiting, entry)
            try:
                await entry.granted.wait()
            except BaseException:
                if entry.granted.is_set():
                    self._next()
                else:
                    self._waiting.remove(entry)
                    heapq.heapify(self._waiting)
                    if self._finish.get(user) == entry.finish:  # its user's last: give it back
                        self._finish[user] = start
                raise
        try:
            yield
        finally:
            self._next()

    def _next(self) -> None:
        """The running turn has ended: start the next, or stand idle."""
        if not self._waiting:
            # Idle: every tag is in the past now, and whoever comes next starts level.
            self._busy = False
            self._now = max(self._finish.values(), default=self._now)
            self._finish.clear()
            return
        entry = heapq.heappop(self._waiting)
        self._now = entry.start
        # A user whose last finish tag is not past now would start at now anyway.
        self._finish = {user: tag for user, tag in self._finish.items() if tag > self._now}
        entry.granted.set()
