"""What every part of one peer's runner shares: the config in force, the store, the bus, the
launcher, this peer's identity and counters, the wake-up of the background loop, and the
publishing of committed events onto the bus."""

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from .. import workspaces
from ..config import Config, load_config
from ..errors import DispatchError
from ..events import Bus, BusStatistics, Event
from ..launch import launcher, runfiles, supervisor
from ..store import HostCaps, Limits, RunExit, RunRow, Store, WorkspaceRow
from . import tracing

log = logging.getLogger("dispatch_runner")
EVENT_BATCH = 500
CAPS_TTL_S = 60.0  # an agent installed on (or removed from) this host counts within a minute


def peer_id() -> str:
    pid = os.getpid()
    return f"{supervisor.host_id()}:{pid}:{supervisor.proc_start(pid) or 0}"


def host_caps(config: Config) -> HostCaps:
    """What this host can run: the pools whose agent executable it has and whose labels it has
    (agents.yaml `pools.X.labels` against `host.labels`)."""
    pools = frozenset(
        name
        for name, agent in config.agents.items()
        if config.pool_labels.get(name, frozenset()) <= config.host_labels
        and supervisor.find_executable(agent.command[0], agent.env) is not None
    )
    return HostCaps(pools=pools, labels=config.host_labels)


def peer_alive(peer: str | None) -> bool:
    """A peer id names a live process of this host (another host's peers are judged by their
    heartbeat, not by our process table: True here)."""
    if not peer:
        return False
    host, pid_text, start_text = [*peer.rsplit(":", 2), "", ""][:3]
    if host != supervisor.host_id():
        return True
    try:
        return supervisor.is_alive(int(pid_text), int(start_text) or None)
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class RunnerStatistics:
    """What this peer did since it started (anyio's `statistics()` style), and its bus."""

    dispatched: int  # workspaces this peer stored
    spawned: int  # runs it started
    spawn_failures: int  # runs that could not start (counted as failed attempts)
    lost: int  # runs it found with their shim gone and no exit
    reservations_returned: int  # claims of dead peers it gave back
    gc_removed: int  # finished workspaces it removed
    bus: BusStatistics


class Core:
    def __init__(self, config: Config, store: Store, bus: Bus, *, kind: str) -> None:
        self.config = config  # replaced as a whole when agents.yaml changes
        self.store = store
        self.bus = bus
        self.kind = kind
        self.peer = peer_id()
        self.launcher = launcher.ShimLauncher(
            forkserver=kind != "cli",
            log_dir=config.home,
            preload=("postgres",) if store.url.startswith(("postgresql:", "postgres:")) else (),
        )
        self.counts: Counter[str] = Counter()
        self.serving = False  # the background loop runs (else waits recover and publish themselves)
        self.url: str | None = None  # this peer's HTTP endpoint, advertised to the fleet
        self.token: str | None = None  # the bearer token it serves with (the fleet's)
        self.store_ok_since: float | None = None  # heartbeats have reached the store since then
        self._caps: tuple[Config, float, HostCaps] | None = None
        self.wake = anyio.Event()
        self.wake_at: float | None = None
        self._cursor = store.last_event_id()
        self._publish_lock = anyio.Lock()
        # stops a run a claim marked for preemption (the Killer's, set by the service); a peer
        # without one leaves it to the run's shim, which sees the mark at its next lease renewal
        self.stop_run: Callable[[RunRow], None] | None = None
        self.config_error: str | None = None  # the last edit of agents.yaml was invalid: why
        # timings for a metrics surface (GET /metrics sets it): observe(name, pool, seconds)
        self.observe: Callable[[str, str, float], None] = lambda name, pool, seconds: None
        tracing.setup_from_env()
        self.traces = tracing.Traces()  # spans of this peer's dispatches, ended at their completion
        self._config_mtime = _mtime(config.source)

    def statistics(self) -> RunnerStatistics:
        c = self.counts
        return RunnerStatistics(
            dispatched=c["dispatched"],
            spawned=c["spawned"],
            spawn_failures=c["spawn_failures"],
            lost=c["lost"],
            reservations_returned=c["reservations_returned"],
            gc_removed=c["gc_removed"],
            bus=self.bus.statistics(),
        )

    @property
    def limits(self) -> Limits:
        cfg = self.config
        return Limits(
            concurrency=cfg.concurrency,
            rates=cfg.rates,
            allowance=cfg.allowance,
            adaptive={pool: p.adaptive for pool, p in cfg.pools.items() if p.adaptive},
            preempt_after_s={
                pool: p.preempt_after_s for pool, p in cfg.pools.items() if p.preempt_after_s is not None
            },
            fair_share=cfg.fair_share,
            promote_after_s=cfg.promote_after_s,
        )

    async def db(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A store call in a worker thread (every store call blocks)."""
        return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))

    def record(
        self, run_id: int, result: RunExit, *, now: float | None = None, lease_ended_by: float | None = None
    ) -> WorkspaceRow | None:
        """Record a run's end found by this peer (not by its shim); refresh status.json."""
        run = self.store.get_run(run_id)
        rate = self.config.rates.get(run.pool) if run else None
        # a model's own adaptive limit needs the run's model: read only where one is configured
        per_model = run is not None and any(k.startswith(f"{run.pool}:") for k in self.config.pools)
        ws = self.store.get_workspace(run.workspace) if run and per_model else None
        adaptive = self.config.adaptive_for(run.pool, ws.model if ws else None) if run else None
        now = time.time() if now is None else now
        row = self.store.record_exit(
            run_id, result, now=now, rate=rate, lease_ended_by=lease_ended_by, adaptive=adaptive
        )
        if row is not None:
            self.record_status(row)
        return row

    def caps(self, *, fresh: bool = False) -> HostCaps:
        """What this host can run (host_caps), looked up again when the config changes, every
        CAPS_TTL_S, and when asked (a dispatch: an agent installed a moment ago counts)."""
        config, now = self.config, time.monotonic()
        if fresh or self._caps is None or self._caps[0] is not config or now - self._caps[1] > CAPS_TTL_S:
            self._caps = (config, now, host_caps(config))
        return self._caps[2]

    async def heartbeat(self) -> None:
        """This peer lives (and what its host can run); `store_ok_since` says since when every
        heartbeat reached the store: only a peer that saw the store all along judges leases."""
        pid = os.getpid()
        try:
            await self.db(
                self.store.heartbeat_peer,
                self.peer,
                pid=pid,
                start=supervisor.proc_start(pid) or 0,
                boot_id=supervisor.boot_id(),
                kind=self.kind,
                now=time.time(),
                can=self.caps(),
                url=self.url,
            )
        except Exception:
            self.store_ok_since = None
            raise
        if self.store_ok_since is None:
            self.store_ok_since = time.time()

    @staticmethod
    def record_status(row: WorkspaceRow) -> None:
        """status.json in the workspace, for people and agents that read files."""
        workspaces.write_status(row, now=time.time())

    def drainer_spec(self) -> dict[str, Any]:
        return runfiles.drainer_spec(config_source=self.config.source, home=self.config.home)

    def reload_if_changed(self) -> None:
        """A changed agents.yaml applies from the next claim on; an invalid edit keeps the config
        in force, logged and shown in status (`config.error`) until the file is fixed. Called by
        every drain (any thread), before it claims."""
        source = Path(self.config.source)
        mtime = _mtime(str(source))
        if mtime is None or mtime == self._config_mtime:
            return
        self._config_mtime = mtime
        try:
            fresh = load_config(str(source))
        except DispatchError as exc:
            log.error("agents.yaml changed but is invalid, keeping the previous config: %s", exc)
            self.config_error = f"{source} changed but is invalid; the previous config is in force: {exc}"
            return
        self.config, self.config_error = fresh, None
        log.info("reloaded %s", source)

    def preempt(self, run: RunRow) -> None:
        """Stop a run a claim chose to preempt (SIGTERM, SIGKILL after the grace), off this thread."""
        self.counts["preempted"] += 1
        if self.stop_run is not None:
            threading.Thread(target=self.stop_run, args=(run,), name="preempt", daemon=True).start()

    def nudge(self) -> None:
        """Wake the background loop now (a slot may have freed, a config changed)."""
        self.wake.set()

    def schedule(self, wake_at: float | None) -> None:
        """Wake the background loop by `wake_at` too (a pacing gate opens then)."""
        if wake_at is not None and (
            self.wake_at is None or wake_at < self.wake_at or self.wake_at <= time.time()
        ):
            self.wake_at = wake_at

    async def publish_new(self) -> list[Event]:
        """Read events committed since the cursor (any peer's) and publish them on the bus, once
        each and in order. The read runs in a worker thread; publishing stays on the event loop
        (the bus's memory streams are not thread-safe)."""
        async with self._publish_lock:
            fresh: list[Event] = []
            while True:
                batch: list[Event] = await self.db(self.store.events_after, self._cursor, EVENT_BATCH)
                for event in batch:
                    self._cursor = event.id
                    self.bus.publish(event)
                fresh += batch
                if len(batch) < EVENT_BATCH:
                    break
            for ended in self.traces.ends(fresh):  # under the lock: a publish after it sees them ended
                row = await self.db(self.store.get_workspace, ended)
                if row is not None:
                    self.traces.completed(row, await self.db(self.store.runs_of, ended))
            return fresh


def _mtime(path: str) -> int | None:
    try:
        return Path(path).stat().st_mtime_ns
    except OSError:
        return None
