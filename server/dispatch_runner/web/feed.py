"""One board for every browser: the dashboard's live updates.

The feed reads the board (runner.board) when the store says something happened — an event on the
runner's bus, which hears every peer's commits — at most every MIN_GAP_S, and every REFRESH_S
while runs are active (their output grows without events), and hands the latest to each open
stream. A browser never polls: however many are open, the store is read once per change. With no
browser open the feed reads nothing and holds no bus subscription.
"""

import logging
from collections.abc import AsyncIterator
from typing import Any, Final

import anyio
import anyio.abc

from ..runner import Runner

MIN_GAP_S: Final = 0.25  # a burst of events makes one read
REFRESH_S: Final = 2.0  # while runs are active: their last lines, tokens and dollars
IDLE_REFRESH_S: Final = 15.0  # nothing running: pacing and backoff countdowns are the browser's
log = logging.getLogger("dispatch_runner.web")


class Feed:
    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.latest: dict[str, Any] | None = None
        self.version = 0
        self.closing = anyio.Event()
        self._readers = 0
        self._joined = anyio.Event()  # the first reader came
        self._left = anyio.Event()  # the last reader left
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

    async def _serve(self, events: Any) -> None:
        """Read and publish while anyone reads; return when the last reader left."""
        while self._readers:
            await self._publish()
            active = bool(self.latest and self.latest.get("running"))
            self._left = anyio.Event()
            with anyio.move_on_after(REFRESH_S if active else IDLE_REFRESH_S):
                async with anyio.create_task_group() as tg:

                    async def left() -> None:
                        await self._left.wait()
                        tg.cancel_scope.cancel()

                    tg.start_soon(left)
                    await events.receive()
                    tg.cancel_scope.cancel()
            if not self._readers:
                return
            await anyio.sleep(MIN_GAP_S)  # a debounce: a scheduled gap, not a wait for a condition
            while True:  # what arrived meanwhile is in this read
                try:
                    events.receive_nowait()
                except anyio.WouldBlock:
                    break

    async def _publish(self) -> None:
        try:
            board = await self.runner.board()
        except Exception as exc:  # a task edge: the browsers see the error, the feed goes on
            log.exception("reading the dashboard's board failed")
            board = {**(self.latest or {}), "error": f"reading the store failed: {exc}"}
        self.latest, self.version = board, self.version + 1
        self._published.set()
        self._published = anyio.Event()

    async def boards(self) -> AsyncIterator[dict[str, Any]]:
        """Each new board, from the latest one, until the server closes."""
        self._readers += 1
        self._joined.set()
        seen = 0
        try:
            while not self.closing.is_set():
                if self.latest is not None and self.version > seen:
                    seen = self.version
                    yield self.latest
                    continue
                published = self._published
                with anyio.move_on_after(IDLE_REFRESH_S):
                    await published.wait()
        finally:
            self._readers -= 1
            if not self._readers:
                self._left.set()  # the feed stops reading

    def close(self) -> None:
        self.closing.set()
        self._published.set()
