"""One board for every browser: the dashboard's live updates.

The feed reads the board (runner.board) when the store says something happened — an event on the
runner's bus, which hears every peer's commits — or a dashboard action was taken here, at most
every MIN_GAP_S, and every REFRESH_S while runs are active (their output grows without events).
Each board is serialised once and handed to every open stream: however many browsers are open,
the store is read once per change and no browser polls. With none open the feed reads nothing and
holds no bus subscription.
"""

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Final

import anyio
import anyio.abc

from ..runner import Runner

MIN_GAP_S: Final = 0.25  # reads at most this often: a burst of events makes one or two
REFRESH_S: Final = 2.0  # while runs are active: their last lines, tokens and dollars
IDLE_REFRESH_S: Final = 15.0  # nothing running: pacing and backoff countdowns are the browser's
log = logging.getLogger("dispatch_runner.web")


class Feed:
    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.latest: str | None = None  # the latest board, as JSON
        self.version = 0
        self.closing = anyio.Event()
        self._readers = 0
        self._active = False  # runs were active at the latest read
        self._joined = anyio.Event()  # the first reader came
        self._wake = anyio.Event()  # read again now: the last reader left, or an action was taken
        self._published = anyio.Event()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            if not self._readers:
                self.latest = None  # a stale board is never shown to the next browser
                self._joined = anyio.Event()
                await self._joined.wait()
            emitter = self.runner.bus.subscribe(max_buffer=1024)
            try:
                await self._serve(emitter.receive)
            finally:
                self.runner.bus.unsubscribe(emitter)

    def changed(self) -> None:
        """Something changed that the bus may not carry (a dashboard action): read again now."""
        self._wake.set()

    async def _serve(self, events: Any) -> None:
        """Read and publish while anyone reads; return when the last reader left. A change is read
        at once, unless the last read was under MIN_GAP_S ago: then a burst makes one read."""
        while self._readers:
            self._wake = anyio.Event()
            await self._publish()
            read_at = time.monotonic()
            await self._until_something_happens(events, REFRESH_S if self._active else IDLE_REFRESH_S)
            if not self._readers:
                return
            gap = MIN_GAP_S - (time.monotonic() - read_at)
            if gap > 0:
                await anyio.sleep(gap)  # a rate limit: a scheduled gap, not a wait for a condition
            while True:  # what arrived meanwhile is in the next read
                try:
                    events.receive_nowait()
                except anyio.WouldBlock:
                    break

    async def _until_something_happens(self, events: Any, within_s: float) -> None:
        with anyio.move_on_after(within_s):
            async with anyio.create_task_group() as tg:

                async def woken() -> None:
                    await self._wake.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(woken)
                await events.receive()
                tg.cancel_scope.cancel()

    async def _publish(self) -> None:
        try:
            board = await self.runner.board()
            self._active = bool(board.get("running"))
        except Exception as exc:  # a task edge: the browsers see the error, the feed goes on
            log.exception("reading the dashboard's board failed")
            board = {"error": f"reading the store failed: {exc}"}
        self.version += 1
        board["read"] = self.version  # which read of this server it is (pages of one read show one)
        self.latest = json.dumps(board, default=str)
        self._published.set()
        self._published = anyio.Event()

    async def boards(self) -> AsyncIterator[str]:
        """Each new board (JSON), from the latest one, until the server closes."""
        self._readers += 1
        self._joined.set()
        seen = 0
        try:
            while not self.closing.is_set():
                if self.latest is not None and self.version > seen:
                    seen = self.version
                    yield self.latest
                    continue
                await self._published.wait()  # set by the next read, and by close()
        finally:
            self._readers -= 1
            if not self._readers:
                self._wake.set()  # the feed stops reading

    def close(self) -> None:
        self.closing.set()
        self._published.set()
