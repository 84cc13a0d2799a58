"""The service: one `Runner` per peer. It implements the actions (`dispatch_runner.actions`) by
handing each to the part that owns it, and runs the background loop that keeps the queue
moving: wake-ups from the store, recovery, heartbeats, config reloads, the drain, cron
schedules and the collection of old workspaces.

    Runner ── Dispatcher (validation) ── Drainer ── launch (shims)
       │   ── Queries (status, logs, wait)   ── Killer   ── Collector (gc)
       │   ── Recovery      ── Scheduler (cron schedules)
       └── Core: config, store, bus, launcher, counters, wake-ups, event publishing
"""

import fcntl
import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread

from ..actions import (
    ApproveRequest,
    DispatchRequest,
    GcRequest,
    KillRequest,
    LogsRequest,
    MessageRequest,
    PermissionRequest,
    Progress,
    StatusRequest,
    WaitRequest,
)
from ..config import Config
from ..events import TERMINAL_EVENTS, Bus, Event
from ..launch.launcher import ShimLauncher
from ..store import Limits, Store, open_store
from .approvals import Approvals
from .board import Board, BoardActions
from .collector import Collector
from .control import Killer
from .core import Core, RunnerStatistics, peer_id
from .dispatching import Dispatcher
from .draining import Drainer
from .queries import Queries
from .recovery import Recovery
from .schedules import ScheduleActions, Scheduler

log = logging.getLogger("dispatch_runner")
WATCH_POLL_S = 0.5  # the poll under the wake-up hints
SETTLE_DELAYS_S = (0.002, 0.005, 0.01, 0.02, 0)
WAKING_EVENTS = TERMINAL_EVENTS | {"AgentRetrying", "AgentCancelled", "QueueUnfrozen"}
TICK_S = 1.0  # recovery, reaping, heartbeat, pacing wake-ups
HEARTBEAT_S = 2.0
GC_EVERY_S = 3600.0
GC_FIRST_S = 60.0  # a serving peer's first collection, then every GC_EVERY_S
DRAINER_LOCK_WAIT_S = 5.0

__all__ = ["Runner", "RunnerStatistics", "peer_id", "run_drainer"]


class Runner(ScheduleActions, BoardActions):
    """The actions and the background loop of one peer. Surfaces use only this class's public
    methods and properties."""

    def __init__(
        self, config: Config, store: Store | None = None, *, bus: Bus | None = None, kind: str = "cli"
    ) -> None:
        # a one-shot command touches the store a few times: no connection pool to start and stop
        store = store or open_store(config.store_url, light=kind == "cli")
        self.core = Core(config, store, bus or Bus(), kind=kind)
        self.recovery = Recovery(self.core)
        self.drainer = Drainer(self.core)
        self.dispatcher = Dispatcher(self.core, self.drainer)
        self.queries = Queries(self.core, self.recover)
        self.boards = Board(self.core, self.queries.status)
        self.killer = Killer(self.core)
        self.core.stop_run = self.killer.stop_run
        self.collector = Collector(self.core, self.recovery.forget_dead_peers)
        self.approvals = Approvals(self.core)
        self.scheduler = Scheduler(self.core, self.dispatch, self.dispatcher.check)

    # ---- the public face ----------------------------------------------------------------------

    @property
    def config(self) -> Config:
        """The config in force (replaced when agents.yaml changes and still parses)."""
        return self.core.config

    @property
    def store(self) -> Store:
        return self.core.store

    @property
    def store_url(self) -> str:
        """The store's URL without a password (for people)."""
        return self.core.store.display_url

    @property
    def bus(self) -> Bus:
        return self.core.bus

    @property
    def peer(self) -> str:
        return self.core.peer

    @property
    def launcher(self) -> ShimLauncher:
        return self.core.launcher

    @property
    def limits(self) -> Limits:
        return self.core.limits

    def statistics(self) -> RunnerStatistics:
        return self.core.statistics()

    def close(self) -> None:
        self.core.launcher.close()
        self.core.bus.close()
        self.core.store.close()

    async def dispatch(
        self,
        req: DispatchRequest,
        *,
        origin: str | None = None,
        parent: str | None = None,
        client: str | None = None,
    ) -> dict[str, Any]:
        """`origin`: the connection to push the completion to; `client`: who is owed it when
        that one is gone (mcp/push.py); `parent`: default DISPATCH_RUNNER_PARENT."""
        return await self.dispatcher.dispatch(req, origin=origin, parent=parent, client=client)

    async def status(self, req: StatusRequest) -> dict[str, Any]:
        return await self.queries.status(req)

    async def logs(self, req: LogsRequest, *, here_only: bool = False) -> dict[str, Any]:
        return await self.queries.logs(req, here_only=here_only)

    def observe_with(self, observe: Callable[[str, str, float], None]) -> None:
        """Where this peer reports its timings: observe(name, pool, seconds), name "claim" or
        "dispatch_to_running" (GET /metrics feeds its histograms with them)."""
        self.core.observe = observe

    def advertise(self, url: str | None, token: str) -> None:
        """The URL other hosts reach this peer's HTTP endpoint at (registered with its heartbeat:
        they read logs of runs on this host through it), and the fleet's token it serves with
        (and reads other hosts' logs with)."""
        self.core.url, self.core.token = url, token

    async def wait(self, req: WaitRequest, *, progress: Progress | None = None) -> dict[str, Any]:
        return await self.queries.wait(req, progress=progress)

    async def kill(self, req: KillRequest) -> dict[str, Any]:
        return await self.killer.kill(req)

    async def approve(self, req: ApproveRequest, *, by: str = "cli") -> dict[str, Any]:
        """Answer a sub-agent's pending permission request (`by`: who answers)."""
        return await self.approvals.approve(req, by=by)

    async def ask_permission(self, req: PermissionRequest) -> dict[str, Any]:
        """Park a sub-agent's permission request; the answer as Claude Code's prompt tool reads it."""
        return await self.approvals.park(req)

    async def message(self, req: MessageRequest) -> dict[str, Any]:
        return await self.dispatcher.message(req)

    async def gc(self, req: GcRequest | None = None) -> dict[str, Any]:
        return await self.collector.gc(req)

    async def stop(self) -> dict[str, Any]:
        frozen = await self.core.db(self.core.store.set_frozen, True, now=time.time())
        await self.core.publish_new()
        return {"frozen": frozen}

    async def start(self) -> dict[str, Any]:
        frozen = await self.core.db(self.core.store.set_frozen, False, now=time.time())
        await self.core.publish_new()
        await self.drain()
        return {"frozen": frozen}

    async def poke(self) -> dict[str, Any]:
        await self.recover()
        spawned = await self.drain()
        return {"spawned": spawned, "frozen": await self.core.db(self.core.store.is_frozen)}

    async def drain(self) -> list[str]:
        """Claim and spawn until the gate says no; schedule a wake-up for time-gated pools."""
        spawned = await anyio.to_thread.run_sync(self.drainer.drain_sync)
        if spawned:
            await self.core.publish_new()
        return spawned

    async def recover(self) -> None:
        await self.recovery.recover()

    def nudge(self) -> None:
        self.core.nudge()

    def ensure_progress(self) -> None:
        """After a one-shot command: the queue must keep moving without it."""
        self.drainer.ensure_progress()

    def has_work(self) -> bool:
        return self.core.store.has_work()

    # ---- the background loop ------------------------------------------------------------------

    async def serve(
        self, *, drain_only: bool = False, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until cancelled (or, with drain_only, until nothing is queued or running)."""
        self.core.serving = True
        try:
            await self._heartbeat()
            await self.recover()
            await self.drain()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch)
                tg.start_soon(self._collect_garbage)
                tg.start_soon(self.scheduler.run)
                task_status.started()
                await self._tick(drain_only)
                tg.cancel_scope.cancel()
        finally:
            self.core.serving = False
            with anyio.CancelScope(shield=True):
                await self.core.db(self.core.store.remove_peers, [self.core.peer])

    async def _collect_garbage(self) -> None:
        """Finished workspaces past retention_days go, a minute after start and then hourly, in
        a task of their own: git and rmtree never hold up recovery, heartbeats or the drain."""
        await anyio.sleep(GC_FIRST_S)  # a schedule, not a wait for a condition
        while True:
            try:
                report = await self.gc()
                if report["removed"] or report["orphans"]:
                    log.info(
                        "gc: removed %d workspaces and %d orphaned directories",
                        len(report["removed"]),
                        len(report["orphans"]),
                    )
            except Exception:  # a task edge: log, try again at the next round
                log.exception("garbage collection failed; retrying in an hour")
            await anyio.sleep(GC_EVERY_S)

    async def _watch(self) -> None:
        """Completions reach this peer: a wake-up hint from the store (inotify on SQLite), then
        `data_version` says whether anyone committed; the poll underneath is the guarantee.
        A terminal event frees a slot, so drain."""
        watcher = self.core.store.watcher()
        version, hinted = -1, True
        try:
            while True:
                try:
                    version = await self._settle(version, SETTLE_DELAYS_S if hinted else (0,))
                except Exception:  # a task edge: log and keep watching
                    log.exception("watching the store failed; retrying")
                hinted = await watcher.changed(WATCH_POLL_S)
        finally:
            watcher.close()

    async def _settle(self, version: int, delays: tuple[float, ...]) -> int:
        """After a wake-up hint: a commit's inotify event on the WAL can precede its visibility in
        data_version by a moment, so look again briefly before going back to sleep."""
        for delay in delays:
            current = self.core.store.data_version()
            if current != version:
                fresh = await self.core.publish_new()
                if any(e.type in WAKING_EVENTS or _for_another_host(e) for e in fresh):
                    self.core.nudge()
                return current
            await anyio.sleep(delay)
        return version

    async def _tick(self, drain_only: bool) -> None:
        core = self.core
        last = {"recover": 0.0, "beat": 0.0}
        while True:
            timeout = TICK_S
            if core.wake_at is not None:
                timeout = min(timeout, max(core.wake_at - time.time(), 0.0))
            with anyio.move_on_after(timeout):
                await core.wake.wait()
            core.wake = anyio.Event()
            try:
                await self._housekeeping(last)
                await self.drain()
                if drain_only and not await core.db(core.store.has_work):
                    return
            except Exception:  # a task edge: log, keep the queue moving on the next tick
                log.exception("background tick failed; retrying on the next tick")

    async def _housekeeping(self, last: dict[str, float]) -> None:
        now = time.monotonic()
        if now - last["recover"] >= TICK_S:
            last["recover"] = now
            await self.recover()
        if now - last["beat"] >= HEARTBEAT_S:
            last["beat"] = now
            await self._heartbeat()
        if self.core.wake_at is not None and self.core.wake_at <= time.time():
            self.core.wake_at = None

    async def _heartbeat(self) -> None:
        await self.core.heartbeat()
        await self.core.db(self.recovery.forget_dead_peers)


def _for_another_host(event: Event) -> bool:
    """Work queued on a host that cannot run it: the others claim it now, not at their next tick."""
    return event.type == "AgentQueued" and bool(event.data.get("remote"))


def run_drainer(config: Config) -> None:
    """The on-demand drainer (`serve --drain`): at most one per home (flock); it exits once
    nothing is queued or running."""
    config.home.mkdir(parents=True, exist_ok=True)
    with open(config.home / "drainer.lock", "w") as lock:
        # a drainer that is just finishing still holds the lock: wait a little for it
        deadline = time.monotonic() + DRAINER_LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return  # another drainer is at work
                time.sleep(0.05)  # flock has no timeout; poll the lock with a deadline
        runner = Runner(config, kind="drainer")
        try:
            # serve() exits when nothing is left and has withdrawn this peer by then; work that
            # arrived meanwhile (its dispatcher saw this peer alive and started no drainer) is
            # picked up by going round again
            while True:
                anyio.run(lambda: runner.serve(drain_only=True))
                if not runner.has_work():
                    break
        finally:
            runner.close()
