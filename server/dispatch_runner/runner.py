"""The service: owns the background tasks, wires config, store, supervisor and bus together, and
handles the `runner.*` actions. Surfaces (CLI, MCP) only invoke actions and read events.
"""

import fcntl
import json
import logging
import os
import shutil
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from . import argv as argvlib
from . import supervisor, validate, workspaces
from .actions import (
    DispatchRequest,
    GcRequest,
    KillRequest,
    LogsRequest,
    Progress,
    StatusRequest,
    WaitRequest,
)
from .config import AgentDef, Config, load_config
from .errors import (
    AgentUnavailable,
    DispatchError,
    InvalidArgument,
    TaskTooLarge,
    UnknownWorkspace,
    WorkspaceUnavailable,
)
from .events import TERMINAL_EVENTS, Bus, BusStatistics, Event
from .model import AgentRef, Outcome, Priority, WorkspaceState
from .policy import (
    MAX_ATTEMPTS_LIMIT,
    MAX_QUEUE_WAIT_S,
    MAX_TIMEOUT_S,
    MAX_WAIT_TIMEOUT_S,
    iso,
)
from .shim import ensure_drainer, exit_file, result_from_exit_file
from .store import Claim, Limits, NewWorkspace, RunExit, RunRow, Store, WorkspaceRow, open_store
from .store.base import POOL_FAULTS, spawn_reason
from .validate import human_size

log = logging.getLogger("dispatch_runner")
WATCH_POLL_S = 0.5  # the poll under the wake-up hints
SETTLE_DELAYS_S = (0.002, 0.005, 0.01, 0.02, 0)
EVENT_BATCH = 500
KILL_THREADS = 8  # kills wait out a grace period: never let them take every worker thread
PROGRESS_EVERY_S = 5.0  # wait's progress notifications while nothing changes
WAKING_EVENTS = TERMINAL_EVENTS | {"AgentRetrying", "AgentCancelled", "QueueUnfrozen"}
TICK_S = 1.0  # recovery, reaping, heartbeat, pacing wake-ups
HEARTBEAT_S = 2.0
DEAD_CLAIMER_GRACE_S = 2.0  # a shim may still be starting after its peer died
PEER_EXPIRY_S = 60.0  # a peer silent this long is gone (its heartbeat is every 2 s)
GC_EVERY_S = 3600.0
GC_BATCH = 500
GC_FIRST_S = 60.0  # a serving peer's first collection, then every GC_EVERY_S
ID_TRIES = 5
AVAILABLE_TTL_S = 5.0
MAX_LOG_LINES = 2000
ORPHAN_AGE_S = 3600.0  # a workspace directory without a row this old was never stored


def peer_id() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{supervisor.proc_start(pid) or 0}"


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


class _IdTaken(Exception):
    """The drawn workspace id names an existing directory."""


class Runner:
    def __init__(
        self, config: Config, store: Store | None = None, *, bus: Bus | None = None, kind: str = "cli"
    ) -> None:
        self.config = config
        self.store = store or open_store(config.store_url)
        self.bus = bus or Bus()
        self.kind = kind
        self.peer = peer_id()
        self.launcher = supervisor.ShimLauncher(forkserver=kind != "cli", log_dir=config.home)
        self._cursor = self.store.last_event_id()
        self._publish_lock = anyio.Lock()
        self._wake = anyio.Event()
        self._wake_at: float | None = None
        self._serving = False
        self._config_mtime = _mtime(config.source)
        self._available: tuple[float, dict[str, bool]] = (-AVAILABLE_TTL_S, {})
        self._counts: Counter[str] = Counter()

    def statistics(self) -> RunnerStatistics:
        c = self._counts
        return RunnerStatistics(
            dispatched=c["dispatched"],
            spawned=c["spawned"],
            spawn_failures=c["spawn_failures"],
            lost=c["lost"],
            reservations_returned=c["reservations_returned"],
            gc_removed=c["gc_removed"],
            bus=self.bus.statistics(),
        )

    def close(self) -> None:
        self.launcher.close()
        self.bus.close()
        self.store.close()

    async def _db(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))

    @property
    def limits(self) -> Limits:
        return Limits(concurrency=self.config.concurrency, rates=self.config.rates)

    # ---- runner.dispatch ----------------------------------------------------------------------

    async def dispatch(
        self, req: DispatchRequest, *, origin: str | None = None, parent: str | None = None
    ) -> dict[str, Any]:
        # validation resolves paths and may run git: off the event loop, with the rest
        checked = partial(self._validate, req, origin=origin, parent=parent)

        def attempt() -> dict[str, Any]:
            for _ in range(ID_TRIES):
                try:
                    return self._dispatch_sync(checked(), req.max_wait_s)
                except _IdTaken:
                    continue  # another dispatch drew the same id this second: draw again
            raise WorkspaceUnavailable(str(self.config.workspace_root), "no free workspace id")

        result = await anyio.to_thread.run_sync(attempt)
        await self._publish_new()
        return result

    def _dispatch_sync(self, new: NewWorkspace, max_wait_s: float | None) -> dict[str, Any]:
        """Files, the enqueue transaction and the first drain in one worker-thread hop."""
        if new.idempotency_key:
            existing = self.store.find_by_idempotency_key(new.idempotency_key)
            if existing is not None:
                return self._dispatch_result(existing, deduplicated=True, eta_s=None)
        try:
            Path(new.path).mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            raise _IdTaken from None  # not ours: never discard it
        except OSError as exc:
            raise WorkspaceUnavailable(new.path, exc.strerror or str(exc)) from exc
        try:
            new = self._prepare_files(new)
            result = self.store.enqueue(new, now=time.time(), max_wait_s=max_wait_s, limits=self.limits)
        except BaseException:
            self._discard_files(new)
            raise
        if result.deduplicated:
            self._discard_files(new)
            return self._dispatch_result(result.workspace, deduplicated=True, eta_s=None)
        self._counts["dispatched"] += 1
        self._drain_sync()
        row = self.store.get_workspace(new.id)
        assert row is not None
        if row.state == "queued":  # a claimed one got its status.json from _spawn
            workspaces.write_status(row, now=time.time())
        return self._dispatch_result(row, deduplicated=False, eta_s=result.eta_s)

    def _validate(self, req: DispatchRequest, *, origin: str | None, parent: str | None) -> NewWorkspace:
        cfg = self.config
        _check_dispatch_values(req)
        task, agent, cwd, repo, template = req.task, req.agent, req.cwd, req.repo, req.template
        priority, label, idempotency_key = req.priority, req.label, req.idempotency_key
        timeout_s, max_attempts = req.timeout_s, req.max_attempts
        size = len(task.encode())
        if size > cfg.max_task_bytes:
            raise TaskTooLarge(
                f"the task is {human_size(size)} ({size:,} bytes), more than the "
                f"{human_size(cfg.max_task_bytes)} dispatch.max_task_bytes allows; "
                "shorten it (put long material in a file inside the workspace and "
                "refer to it) or raise the limit in agents.yaml; nothing was queued"
            )
        ref = AgentRef.parse(agent or cfg.default_agent)
        agent_def = cfg.agent_def(ref)
        model = ref.model or agent_def.model
        prio = Priority.parse(priority)
        template_name = template or cfg.default_template
        if template_name not in cfg.templates:
            raise InvalidArgument(
                "template",
                f"no template {template_name!r} (known: "
                f"{', '.join(sorted(cfg.templates))}); add it under templates: "
                "in agents.yaml",
            )
        if cwd and repo:
            raise InvalidArgument(
                "cwd",
                "give either cwd (a directory) or repo (a git repository for a fresh worktree), not both",
            )
        cwd_path = workspaces.resolve_inside(cwd, "cwd", cfg.allowed_roots) if cwd else None
        repo_path = workspaces.resolve_inside(repo, "repo", cfg.allowed_roots) if repo else None
        if repo_path is not None:
            workspaces.check_git_repo(repo_path)
        if supervisor.find_executable(agent_def.command[0], agent_def.env) is None:
            raise AgentUnavailable(str(ref), agent_def.command[0])
        ws_id = workspaces.new_id()
        env = {**agent_def.env, **supervisor.run_marker(ws_id, 2**63)}
        path = cfg.workspace_root / ws_id
        branch = f"runner/{ws_id}" if repo_path else None
        run_dir = cwd_path or (path / "worktree" if repo_path else path / "work")
        prompt = argvlib.expand(cfg.templates[template_name], {"task": task, "workspace": str(run_dir)})
        spec = agent_spec(
            agent_def,
            model=model,
            path=path,
            run_dir=run_dir,
            branch=branch,
            template_text=cfg.templates[template_name],
        )
        _check_argv_fits(ref, spec["argv"], {"prompt": prompt, "task": task}, env)
        return NewWorkspace(
            id=ws_id,
            pool=ref.pool,
            model=model,
            agent=f"{ref.pool}:{model}" if model else ref.pool,
            task=task,
            prompt=prompt,
            template=template_name,
            priority=int(prio),
            label=label,
            path=str(path),
            run_dir=str(run_dir),
            cwd=str(cwd_path) if cwd_path else None,
            repo=str(repo_path) if repo_path else None,
            branch=branch,
            idempotency_key=idempotency_key,
            max_attempts=max_attempts or cfg.max_attempts_for(ref.pool),
            timeout_s=timeout_s or agent_def.timeout_s or cfg.timeout_s,
            origin=origin,
            parent=parent,
            spec=spec,
        )

    def _prepare_files(self, new: NewWorkspace) -> NewWorkspace:
        """prompt.md and the worktree in the workspace's fresh directory; nothing is left behind on
        failure (the caller discards), and a failure is a sentence, not an OSError."""
        path = Path(new.path)
        try:
            (path / workspaces.PROMPT_FILE).write_text(new.prompt + "\n", encoding="utf-8")
            if new.repo and new.branch:
                base = workspaces.add_worktree(Path(new.repo), Path(new.run_dir), new.branch)
                return replace(new, base_commit=base)
            if not new.cwd:
                Path(new.run_dir).mkdir()
        except OSError as exc:
            raise WorkspaceUnavailable(new.path, exc.strerror or str(exc)) from exc
        return new

    def _discard_files(self, new: NewWorkspace) -> None:
        if new.repo and new.branch:
            workspaces.remove_worktree(Path(new.repo), Path(new.run_dir), new.branch, base=None)
        shutil.rmtree(new.path, ignore_errors=True)

    def _dispatch_result(
        self, row: WorkspaceRow, *, deduplicated: bool, eta_s: float | None
    ) -> dict[str, Any]:
        """`eta_s` is null when it cannot be known (a full pool that has finished no run yet);
        `frozen` says why nothing starts while the queue is stopped."""
        position = self.store.queue_position(row.id)
        queued = row.state == "queued"
        return {
            "workspace": row.id,
            "status": row.state,
            "agent": row.agent,
            "position": position,
            "eta_s": (round(eta_s, 1) if eta_s is not None else None) if queued else 0.0,
            "path": row.path,
            "deduplicated": deduplicated,
            "frozen": queued and self.store.is_frozen(),
        }

    # ---- the drain ----------------------------------------------------------------------------

    async def drain(self) -> list[str]:
        """Claim and spawn until the gate says no; schedule a wake-up for time-gated pools."""
        spawned = await anyio.to_thread.run_sync(self._drain_sync)
        if spawned:
            await self._publish_new()
        return spawned

    def _drain_sync(self) -> list[str]:
        spawned: list[str] = []
        while True:
            result = self.store.claim_next(now=None, limits=self.limits, peer=self.peer)
            self._schedule(result.wake_at)
            if result.claim is None:
                break
            if self._spawn(result.claim):
                spawned.append(result.claim.workspace.id)
        return spawned

    def _spawn(self, claim: Claim) -> bool:
        ws = claim.workspace
        path = Path(ws.path)
        rate = self.config.rates.get(ws.pool)
        spec = {
            **self._current_spec(ws),
            "store": self.store.url,
            "run_id": claim.run_id,
            "workspace": ws.id,
            "attempt": ws.runs,
            "path": ws.path,
            "cwd": ws.run_dir,
            "timeout_s": ws.timeout_s,
            "kill_grace_s": self.config.kill_grace_s,
            "rate": None
            if rate is None
            else {
                "reset_utc": rate.reset_utc.strftime("%H:%M"),
                "daily_limit": rate.daily_limit,
                "min_delay": rate.min_delay,
                "sustained_delay": rate.sustained_delay,
                "burst_window": rate.burst_window,
                "burst_delay": rate.burst_delay,
            },
            "drainer": self.drainer_spec(),
        }
        spec["env"] = {**spec.get("env", {}), **supervisor.run_marker(ws.id, claim.run_id)}
        spec_path = path / f"run-{ws.runs}.spec.json"
        supervisor.crash_point("peer-after-claim")
        try:
            workspaces.atomic_write(spec_path, json.dumps(spec))
            self.launcher.spawn(
                supervisor.shim_args(spec_path),
                env=os.environ,
                log_path=path / "shim.log",
                spec_path=spec_path,
            )
        except OSError as exc:
            # Counted as a failed attempt, with backoff: given back instead, the same head would
            # be claimed again at once, in a loop that stalls the pool and grows the store.
            log.error("cannot start the run of %s: %s", ws.id, exc)
            self._counts["spawn_failures"] += 1
            self._record(claim.run_id, spawn_failure(exc, where=str(path)))
            return False
        self._counts["spawned"] += 1
        workspaces.write_status(ws, now=time.time())
        return True

    def _current_spec(self, ws: WorkspaceRow) -> Mapping[str, Any]:
        """The stored spec; one queued before argv was compiled (a rendered argv, the prompt in
        it, no `--`) is compiled again from the current agents.yaml."""
        agent_def = self.config.agents.get(ws.pool)
        if "stdin" in ws.spec or agent_def is None:
            return ws.spec
        return agent_spec(
            agent_def,
            model=ws.model,
            path=Path(ws.path),
            run_dir=Path(ws.run_dir),
            branch=ws.branch,
            template_text=None,
        )

    def _record(self, run_id: int, result: RunExit, *, now: float | None = None) -> WorkspaceRow | None:
        """Record a run's end found by this peer (not by its shim); refresh status.json."""
        rate = None
        if result.outcome is Outcome.RATE_LIMITED:
            run = self.store.get_run(run_id)
            rate = self.config.rates.get(run.pool) if run else None
        row = self.store.record_exit(run_id, result, now=time.time() if now is None else now, rate=rate)
        if row is not None:
            workspaces.write_status(row, now=time.time())
        return row

    def drainer_spec(self) -> dict[str, Any]:
        argv = [sys.executable, "-m", "dispatch_runner.cli"]
        if self.config.source != "built-in defaults":
            argv += ["--config", self.config.source]
        argv += ["serve", "--drain"]
        return {
            "argv": argv,
            "env": {"DISPATCH_RUNNER_STORE": self.store.url, "DISPATCH_RUNNER_HOME": str(self.config.home)},
            "log": str(self.config.home / "drainer.log"),
        }

    def _schedule(self, wake_at: float | None) -> None:
        if wake_at is not None and (
            self._wake_at is None or wake_at < self._wake_at or self._wake_at <= time.time()
        ):
            self._wake_at = wake_at

    def nudge(self) -> None:
        self._wake.set()

    # ---- recovery -----------------------------------------------------------------------------

    async def recover(self) -> None:
        """Return stale reservations; record exits whose shim died; mark vanished runs lost."""
        self.launcher.reap()
        runs = await self._db(self.store.active_runs)
        now = time.time()
        for run in runs:
            if run.phase == "reserved":
                await self._recover_reservation(run, now)
            elif not supervisor.is_alive(run.shim_pid, run.shim_start, run.boot_id):
                if await anyio.to_thread.run_sync(self._recover_dead_shim, run.id):
                    self.nudge()
            elif run.kill_requested and run.agent_pid and now - run.claimed_at > self.config.kill_grace_s:
                # the killer went away before the agent ended (e.g. a CLI interrupted): finish it
                await anyio.to_thread.run_sync(self._stop_agent, run)

    async def _recover_reservation(self, run: RunRow, now: float) -> None:
        """A claim whose shim never started: killed if asked; given back (not an attempt, no
        pacing or daily slot used) when its peer died; a failed spawn when its peer lives on but
        no shim came within reservation_timeout_s."""
        age = now - run.claimed_at
        if run.kill_requested:
            row = await self._db(
                self._record, run.id, RunExit(outcome=Outcome.KILLED, exit_code=None), now=now
            )
        elif age > DEAD_CLAIMER_GRACE_S and not await self._db(self._claimer_can_start, run):
            row = await self._db(self._give_back, run.id, now)
        elif age > self.config.reservation_timeout_s:
            row = await self._db(
                self._record,
                run.id,
                RunExit(
                    outcome=Outcome.FAILED,
                    exit_code=None,
                    ended_reason="spawn_failed",
                    detail=f"the run did not start within {self.config.reservation_timeout_s:g}s of its "
                    "claim (see shim.log in the workspace and forkserver.log in the home)",
                ),
                now=now,
            )
        else:
            return
        if row is not None:
            self.nudge()

    def _claimer_can_start(self, run: RunRow) -> bool:
        """The claiming peer is alive and knows this store's schema. A peer of an older
        dispatch-runner, still running after an upgrade, claims work its shims cannot start:
        that is not the run's failure."""
        if not _peer_alive(run.claimed_by):
            return False
        row = next((p for p in self.store.peers() if p["id"] == run.claimed_by), None)
        if row is not None and row.get("schema") is None:
            log.warning(
                "peer %s runs an older dispatch-runner and claimed %s, which it cannot "
                "start; restart that peer (its client session) to upgrade it",
                run.claimed_by,
                run.workspace,
            )
            return False
        return True

    def _give_back(self, run_id: int, now: float) -> WorkspaceRow | None:
        row = self.store.return_reservation(run_id, now=now)
        if row is not None:
            self._counts["reservations_returned"] += 1
            workspaces.write_status(row, now=time.time())
        return row

    def _stop_agent(self, run: RunRow) -> None:
        if supervisor.is_alive(run.agent_pid, run.agent_start, run.boot_id):
            supervisor.terminate_group(run.agent_pid or 0, grace_s=self.config.kill_grace_s)

    def _recover_dead_shim(self, run_id: int) -> bool:
        """Record the exit of a run whose shim is gone: from its exit file, else as lost (its agent,
        found by pid or by the run id in its environment, is stopped first). True if recorded."""
        run = self.store.get_run(run_id)  # fresh: the shim may have recorded it meanwhile
        ws = self.store.get_workspace(run.workspace) if run and run.phase == "running" else None
        if run is None or ws is None:
            return False
        marker = exit_file(Path(ws.path), run.id)
        result: RunExit
        if marker.exists():
            try:
                data = json.loads(marker.read_text())
                result = result_from_exit_file(data)
                ended = float(data.get("ended_at") or time.time())
            except (OSError, ValueError, KeyError):
                result, ended = _lost(), time.time()
        else:
            self._stop_agent(run)
            # the agent's pid may never have been recorded, and descendants may have left its group
            supervisor.terminate_marked(
                supervisor.run_marker(ws.id, run.id), grace_s=self.config.kill_grace_s
            )
            result, ended = _lost(), time.time()
            self._counts["lost"] += 1
        return self._record(run.id, result, now=ended) is not None

    # ---- runner.status ------------------------------------------------------------------------

    async def status(self, req: StatusRequest) -> dict[str, Any]:
        workspace, agent, state, limit = req.workspace, req.agent, req.state, req.limit
        validate.text("workspace", workspace, max_chars=200)
        validate.text("agent", agent, max_chars=200)
        validate.text("state", state, max_chars=200)
        if workspace:
            return await self._workspace_status(workspace, req.log_lines)
        if state is not None and state not in {s.value for s in WorkspaceState}:
            raise InvalidArgument(
                "state", f"unknown state {state!r}; use one of " + ", ".join(s.value for s in WorkspaceState)
            )
        if limit is not None and (not isinstance(limit, int) or limit < 1 or limit > 1000):
            raise InvalidArgument("limit", "limit must be an integer between 1 and 1000")
        snap: dict[str, Any] = await self._db(
            self.store.snapshot,
            now=time.time(),
            limits=self.limits,
            agent=agent,
            state=state,
            limit=limit or 20,
        )
        snap["bus_dropped"] = self.bus.statistics().dropped
        snap["agents"] = self._agents()
        return snap

    def _agents(self) -> dict[str, dict[str, Any]]:
        """Every configured agent: its pool, the pool's limit and whether its executable is here
        (looked up at most every AVAILABLE_TTL_S: status is called often, PATH rarely changes)."""
        now = time.monotonic()
        if now - self._available[0] > AVAILABLE_TTL_S:
            self._available = (
                now,
                {
                    name: supervisor.find_executable(a.command[0], a.env) is not None
                    for name, a in self.config.agents.items()
                },
            )
        out = {}
        for name in sorted(self.config.agents):
            limit = self.config.concurrency.get(name)
            out[name] = {
                "pool": name,
                "limit": limit.total_limit if limit else None,
                "models": dict(limit.models) if limit else {},
                "available": self._available[1].get(name, False),
            }
        return out

    async def _workspace_status(self, workspace_id: str, log_lines: int) -> dict[str, Any]:
        row = await self._db(self.store.get_workspace, workspace_id)
        if row is None:
            raise UnknownWorkspace(workspace_id)
        run = await self._db(self.store.get_run, row.current_run) if row.current_run else None
        out = workspaces.latest_logs(Path(row.path))[0] if log_lines > 0 else None
        tail = await anyio.to_thread.run_sync(_tail_lines, out, log_lines) if out else ""
        return workspace_view(
            row, pid=run.agent_pid if run and row.state == "running" else None, log_tail=tail
        )

    # ---- runner.logs ---------------------------------------------------------------------------

    async def logs(self, req: LogsRequest) -> dict[str, Any]:
        """A page of one run's output: `lines` from line `offset`, `next_offset` to ask for the
        next page, `eof` once the run is over and nothing is left, `more` when the page was
        full. `runs` lists every run with a log (retries start new ones): pass `run` back to
        stay on one. `cursor` (one stream) is where the page ended, to seek there next time."""
        workspace, run, stream, offset, limit = req.workspace, req.run, req.stream, req.offset, req.limit
        cursor, whole_lines = req.cursor, req.whole_lines
        validate.text("workspace", workspace, max_chars=200, required=True)
        if stream not in workspaces.LOG_STREAMS:
            raise InvalidArgument(
                "stream", f"stream must be one of {', '.join(workspaces.LOG_STREAMS)} (got {stream!r})"
            )
        validate.number("offset", offset, minimum=0, maximum=10**12, integer=True)
        validate.number("limit", limit, minimum=1, maximum=MAX_LOG_LINES, integer=True)
        validate.number("run", run, minimum=1, maximum=10**6, integer=True)
        validate.number("cursor", cursor, minimum=0, maximum=10**15, integer=True)
        row = await self._db(self.store.get_workspace, workspace)
        if row is None:
            raise UnknownWorkspace(workspace)
        path = Path(row.path)
        runs = await anyio.to_thread.run_sync(workspaces.log_runs, path)
        number = run if run is not None else (runs[-1] if runs else 1)
        if run is not None and run > max(row.runs, 1):
            raise InvalidArgument(
                "run",
                f"workspace {workspace} has had {row.runs} run(s); runs with "
                f"a log: {', '.join(map(str, runs)) or 'none yet'}",
            )
        settled = WorkspaceState(row.state).finished or number < max(runs, default=0)
        page = await anyio.to_thread.run_sync(
            partial(
                workspaces.log_page,
                path,
                number,
                stream,
                offset=offset,
                limit=limit,
                settled=settled,
                cursor=cursor,
                whole_lines=whole_lines,
            )
        )
        return {
            "workspace": workspace,
            "run": number,
            "runs": runs,
            "stream": stream,
            "lines": page.lines,
            "next_offset": page.next_offset,
            "eof": page.eof,
            "more": page.more,
            "cursor": page.cursor,
            "state": row.state,
        }

    # ---- runner.kill / stop / start / poke ----------------------------------------------------

    async def kill(self, req: KillRequest) -> dict[str, Any]:
        workspace, agent, everything = req.workspace, req.agent, req.all
        targets = [workspace] if isinstance(workspace, str) else list(workspace or [])
        for ws_id in targets:
            validate.text("workspace", ws_id, max_chars=200)
        validate.text("agent", agent, max_chars=200)
        if not targets and agent is None and not everything:
            raise InvalidArgument("workspace", "say what to kill: a workspace id, an agent, or all")
        for ws_id in targets:
            if await self._db(self.store.get_workspace, ws_id) is None:
                raise UnknownWorkspace(ws_id)
        plan = await self._db(
            self.store.plan_kill, workspaces=targets, agent=agent, everything=everything, now=time.time()
        )
        await anyio.to_thread.run_sync(_write_statuses, plan.cancelled)
        limiter = anyio.CapacityLimiter(KILL_THREADS)
        async with anyio.create_task_group() as tg:
            for run in plan.to_signal:
                tg.start_soon(partial(anyio.to_thread.run_sync, self._kill_run, run, limiter=limiter))
        await self._publish_new()
        return {
            "killed": sorted({r.workspace for r in plan.to_signal}),
            "cancelled": [r.id for r in plan.cancelled],
        }

    def _kill_run(self, run: RunRow) -> None:
        """SIGTERM the agent's group, SIGKILL after the grace; wait until the exit is recorded."""
        deadline = time.monotonic() + self.config.kill_grace_s + 5.0
        while time.monotonic() < deadline:
            current = self.store.get_run(run.id)
            if current is None or current.phase in ("exited", "abandoned"):
                return
            if current.agent_pid and supervisor.is_alive(current.agent_pid, current.agent_start):
                supervisor.terminate_group(current.agent_pid, grace_s=self.config.kill_grace_s)
            elif current.phase == "reserved" or not supervisor.is_alive(current.shim_pid, current.shim_start):
                ws = self.store.get_workspace(current.workspace)
                if ws is not None and current.phase == "running":  # the shim cannot sweep: we do
                    supervisor.terminate_marked(
                        supervisor.run_marker(ws.id, current.id), grace_s=self.config.kill_grace_s
                    )
                self._record(run.id, RunExit(outcome=Outcome.KILLED, exit_code=None))
                return
            time.sleep(0.01)  # the shim records the exit within milliseconds of the agent's end

    async def stop(self) -> dict[str, Any]:
        frozen = await self._db(self.store.set_frozen, True, now=time.time())
        await self._publish_new()
        return {"frozen": frozen}

    async def start(self) -> dict[str, Any]:
        frozen = await self._db(self.store.set_frozen, False, now=time.time())
        await self._publish_new()
        await self.drain()
        return {"frozen": frozen}

    async def poke(self) -> dict[str, Any]:
        await self.recover()
        spawned = await self.drain()
        return {"spawned": spawned, "frozen": await self._db(self.store.is_frozen)}

    # ---- runner.wait --------------------------------------------------------------------------

    async def wait(self, req: WaitRequest, *, progress: Progress | None = None) -> dict[str, Any]:
        workspaces, timeout_s, mode = req.workspaces, req.timeout_s, req.mode
        ids = list(dict.fromkeys(workspaces or []))
        if not ids:
            raise InvalidArgument("workspaces", "list at least one workspace id to wait for")
        if mode not in ("all", "any"):
            raise InvalidArgument("mode", "mode must be 'all' or 'any'")
        validate.number("timeout_s", timeout_s, minimum=0, maximum=MAX_WAIT_TIMEOUT_S, unit=" s")
        if len(ids) > 1000:
            raise InvalidArgument(
                "workspaces", f"{len(ids)} workspaces given; wait for at most 1000 at a time"
            )
        for ws_id in ids:
            validate.text("workspaces", ws_id, max_chars=200)
        timeout = 50.0 if timeout_s is None else float(timeout_s)
        for ws_id in ids:
            if await self._db(self.store.get_workspace, ws_id) is None:
                raise UnknownWorkspace(ws_id)
        sub = self.bus.subscribe(1024)
        try:
            rows = await self._wait_loop(ids, timeout, mode, progress, sub.receive)
        finally:
            self.bus.unsubscribe(sub)
        done_count = sum(1 for r in rows if WorkspaceState(r.state).finished)
        done = done_count == len(rows) if mode == "all" else done_count > 0
        return {"done": done, "workspaces": [_wait_row(r) for r in rows]}

    async def _wait_loop(
        self, ids: list[str], deadline_s: float, mode: str, progress: Progress | None, events: Any
    ) -> list[WorkspaceRow]:
        started = time.monotonic()
        deadline = started + deadline_s
        last_reported, last_sent = -1, started
        while True:
            found = await self._db(self.store.workspaces, ids)
            rows = [r for r in found if r is not None]  # ids were checked; a pruned one drops out
            finished = sum(1 for r in rows if WorkspaceState(r.state).finished)
            now = time.monotonic()
            # on every change, and every few seconds anyway so the client sees the wait is alive
            if progress is not None and (finished != last_reported or now - last_sent >= PROGRESS_EVERY_S):
                last_reported, last_sent = finished, now
                await progress(
                    float(finished),
                    float(len(ids)),
                    f"{finished}/{len(ids)} workspaces finished after {now - started:.0f}s",
                )
            if finished == len(ids) or (mode == "any" and finished) or time.monotonic() >= deadline:
                return rows
            if not self._serving:
                await self.recover()
            # woken by any event on the bus; the poll underneath covers peers we cannot hear
            with anyio.move_on_after(min(0.5, max(deadline - time.monotonic(), 0.0))):
                await events.receive()
            if not self._serving:
                await self._publish_new()

    # ---- events and the background loop -------------------------------------------------------

    async def _publish_new(self) -> list[Event]:
        """Read events committed since the cursor (any peer's) and publish them on the bus, once
        each and in order. The read runs in a worker thread; publishing stays on the event loop
        (the bus's memory streams are not thread-safe)."""
        async with self._publish_lock:
            fresh: list[Event] = []
            while True:
                batch: list[Event] = await self._db(self.store.events_after, self._cursor, EVENT_BATCH)
                for event in batch:
                    self._cursor = event.id
                    self.bus.publish(event)
                fresh += batch
                if len(batch) < EVENT_BATCH:
                    break
            return fresh

    async def serve(
        self, *, drain_only: bool = False, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until cancelled (or, with drain_only, until nothing is queued or running)."""
        self._serving = True
        try:
            await self._heartbeat()
            await self.recover()
            await self.drain()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch)
                tg.start_soon(self._collect_garbage)
                task_status.started()
                await self._tick(drain_only)
                tg.cancel_scope.cancel()
        finally:
            self._serving = False
            with anyio.CancelScope(shield=True):
                await self._db(self.store.remove_peers, [self.peer])

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
        watcher = self.store.watcher()
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
            current = self.store.data_version()
            if current != version:
                fresh = await self._publish_new()
                if any(e.type in WAKING_EVENTS for e in fresh):
                    self._wake.set()
                return current
            await anyio.sleep(delay)
        return version

    async def _tick(self, drain_only: bool) -> None:
        last = {"recover": 0.0, "beat": 0.0}
        while True:
            timeout = TICK_S
            if self._wake_at is not None:
                timeout = min(timeout, max(self._wake_at - time.time(), 0.0))
            with anyio.move_on_after(timeout):
                await self._wake.wait()
            self._wake = anyio.Event()
            try:
                await self._housekeeping(last)
                await self.drain()
                if drain_only and not await self._db(self.store.has_work):
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
        self._maybe_reload()
        if self._wake_at is not None and self._wake_at <= time.time():
            self._wake_at = None

    def _maybe_reload(self) -> None:
        """A changed agents.yaml applies at the next claim; a reload that fails keeps the old one."""
        source = Path(self.config.source)
        try:
            mtime = source.stat().st_mtime_ns
        except OSError:
            return
        if mtime == self._config_mtime:
            return
        self._config_mtime = mtime
        try:
            fresh = load_config(str(source))
        except DispatchError as exc:
            log.error("agents.yaml changed but is invalid, keeping the previous config: %s", exc)
            return
        self.config = fresh
        self._available = (-AVAILABLE_TTL_S, {})  # agents may have changed
        log.info("reloaded %s", source)
        self.nudge()

    async def _heartbeat(self) -> None:
        pid = os.getpid()
        await self._db(
            self.store.heartbeat_peer,
            self.peer,
            pid=pid,
            start=supervisor.proc_start(pid) or 0,
            boot_id=supervisor.boot_id(),
            kind=self.kind,
            now=time.time(),
        )
        await self._db(self._forget_dead_peers)

    def _forget_dead_peers(self) -> int:
        """Rows of peers that died without withdrawing (SIGKILL, a crash): the table stays as
        small as the set of live peers."""
        now = time.time()
        dead = [
            p["id"]
            for p in self.store.peers()
            if p["id"] != self.peer and (p["heartbeat_at"] < now - PEER_EXPIRY_S or not _peer_alive(p["id"]))
        ]
        return self.store.remove_peers(dead)

    # ---- garbage collection -------------------------------------------------------------------

    async def gc(self, req: GcRequest | None = None) -> dict[str, Any]:
        """Remove finished workspaces that ended more than `older_than_s` ago (default
        retention_days): their rows, directories, worktrees and empty runner/<id> branches;
        directories the store does not know; rows of dead peers."""
        req = req or GcRequest()
        older_than_s, dry_run, force = req.older_than_s, req.dry_run, req.force
        validate.number("older_than_s", older_than_s, minimum=0, maximum=100 * 365 * 86400.0, unit=" s")
        age = self.config.retention_days * 86400 if older_than_s is None else float(older_than_s)
        return await anyio.to_thread.run_sync(
            partial(self._gc_sync, before=time.time() - age, dry_run=dry_run, force=force)
        )

    def _gc_sync(self, *, before: float, dry_run: bool, force: bool) -> dict[str, Any]:
        report: dict[str, Any] = {
            "removed": [],
            "kept": [],
            "notes": [],
            "orphans": [],
            "dead_peers": 0,
            "dry_run": dry_run,
        }
        self.config.home.mkdir(parents=True, exist_ok=True)
        with open(self.config.home / "gc.lock", "w") as lock:
            try:  # one collector per home at a time; the others have nothing to add
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                report["busy"] = True
                return report
            self._collect(report, before=before, dry_run=dry_run, force=force)
        return report

    def _collect(self, report: dict[str, Any], *, before: float, dry_run: bool, force: bool) -> None:
        cursor: tuple[float, str] | None = None
        while rows := self.store.finished_before(before, after=cursor, limit=GC_BATCH):
            cursor = (rows[-1].ended_at or 0.0, rows[-1].id)
            removed = []
            for row in rows:
                outcome = workspaces.remove_workspace(row, force=force, dry_run=dry_run)
                if outcome.removed:
                    removed.append(row.id)
                    if outcome.note:
                        report["notes"].append({"workspace": row.id, "note": outcome.note})
                else:
                    report["kept"].append({"workspace": row.id, "note": outcome.note or "kept"})
            if not dry_run and removed:
                self.store.forget(removed, events_before=before)
                self._counts["gc_removed"] += len(removed)
            report["removed"] += removed
        for path in self._orphans():
            risk = None if force else workspaces.orphan_risk(path)
            if risk:
                report["kept"].append({"workspace": path.name, "note": risk})
                continue
            report["orphans"].append(str(path))
            if not dry_run:
                workspaces.remove_orphan(path)
        if not dry_run:
            report["dead_peers"] = self._forget_dead_peers()

    def _orphans(self) -> list[Path]:
        """Workspace directories without a row, left by dispatches that died before they were
        stored; young ones may belong to a dispatch in progress."""
        root = self.config.workspace_root
        try:
            entries = [p for p in root.iterdir() if workspaces.ID_RE.match(p.name) and p.is_dir()]
        except OSError:
            return []
        cutoff = time.time() - ORPHAN_AGE_S
        out = []
        for path in entries:
            try:
                young = path.stat().st_mtime > cutoff
            except OSError:
                continue
            if not young and self.store.get_workspace(path.name) is None:
                out.append(path)
        return out

    def ensure_progress(self) -> None:
        """After a one-shot command: the queue must keep moving without it."""
        ensure_drainer(self.store, self.drainer_spec())


# ---- helpers ----------------------------------------------------------------------------------


def _write_statuses(rows: Sequence[WorkspaceRow]) -> None:
    for row in rows:
        workspaces.write_status(row, now=time.time())


def _mtime(path: str) -> int | None:
    try:
        return Path(path).stat().st_mtime_ns
    except OSError:
        return None


def agent_spec(
    agent_def: AgentDef,
    *,
    model: str | None,
    path: Path,
    run_dir: Path,
    branch: str | None,
    template_text: str | None,
) -> dict[str, Any]:
    """How a workspace's runs start: the compiled argv (client text kept as references), how
    the prompt is delivered, and the template it is rebuilt from (None: from prompt.md)."""
    argv = argvlib.compile_argv(
        agent_def.command,
        {
            "model": model,
            "workspace": str(run_dir),
            "branch": branch,
            "prompt_file": str(path / workspaces.PROMPT_FILE),
        },
        end_of_options=agent_def.end_of_options,
    )
    return {
        "argv": argv,
        "stdin": agent_def.stdin,
        "template_text": template_text,
        "env": dict(agent_def.env),
        "output": agent_def.output,
        "patterns": list(agent_def.rate_limit_patterns),
    }


def spawn_failure(exc: OSError, *, where: str) -> RunExit:
    """A run that could not start: a failed attempt, with the reason (disk full, directory gone)."""
    return RunExit(
        outcome=Outcome.FAILED,
        exit_code=None,
        detail=f"the run could not start: {exc.strerror or exc} ({where})",
        ended_reason=spawn_reason(exc),
        pool_fault=exc.errno in POOL_FAULTS,
    )


def _lost() -> RunExit:
    return RunExit(
        outcome=Outcome.LOST, exit_code=None, detail="the run's shim vanished without recording an exit"
    )


def _peer_alive(peer: str | None) -> bool:
    if not peer:
        return False
    host, _, rest = peer.partition(":")
    pid_text, _, start_text = rest.partition(":")
    if host != socket.gethostname():
        return True  # another host: judged by its lease, not by our process table
    try:
        return supervisor.is_alive(int(pid_text), int(start_text) or None)
    except ValueError:
        return False


def _check_dispatch_values(req: DispatchRequest) -> None:
    """Types, characters and bounds of a dispatch's arguments, before anything else reads them."""
    validate.text("task", req.task, required=True)
    for field in ("agent", "cwd", "repo", "template", "priority"):
        validate.text(field, getattr(req, field), max_chars=4096)
    validate.text("label", req.label, max_chars=200)
    validate.text("idempotency_key", req.idempotency_key, max_chars=200)
    if req.idempotency_key is not None and not req.idempotency_key:
        raise InvalidArgument("idempotency_key", "idempotency_key is empty; give 1-200 characters")
    validate.number("max_wait_s", req.max_wait_s, minimum=0, maximum=MAX_QUEUE_WAIT_S, unit=" s")
    validate.number("timeout_s", req.timeout_s, minimum=0, maximum=MAX_TIMEOUT_S, above=True, unit=" s")
    validate.number("max_attempts", req.max_attempts, minimum=1, maximum=MAX_ATTEMPTS_LIMIT, integer=True)


def _check_argv_fits(
    ref: AgentRef, argv: list[argvlib.Element], client: dict[str, str], agent_env: dict[str, str]
) -> None:
    """Refuse, at dispatch, a prompt the kernel would refuse to pass (E2BIG) when the run starts."""
    needed = argvlib.refs(argv)
    if not needed:
        return
    rendered = argvlib.render(argv, client.__getitem__)
    problem = argvlib.argv_problem(rendered, {**os.environ, **agent_env}, arg_max=_arg_max())
    if problem:
        raise TaskTooLarge(
            f"this task cannot be passed to agent {str(ref)!r}: {problem}, because its "
            "command in agents.yaml puts the "
            f"{' and '.join('{' + n + '}' for n in sorted(needed))} on the command "
            "line. Shorten the task, or let the agent read the prompt from stdin "
            "(stdin: prompt) or from a file ({prompt_file}); nothing was queued"
        )


def _arg_max() -> int:
    try:
        return int(os.sysconf("SC_ARG_MAX"))
    except (ValueError, OSError):
        return 2 * 1024 * 1024


def _tail_lines(path: Path, n: int) -> str:
    from .outputs import last_lines, read_tail

    return last_lines(read_tail(path, 64 * 1024), n)


def _duration(row: WorkspaceRow) -> float | None:
    if row.started_at is None:
        return None
    end = row.ended_at if row.ended_at is not None else time.time()
    return round(end - row.started_at, 3)


def _wait_row(row: WorkspaceRow) -> dict[str, Any]:
    return {
        "workspace": row.id,
        "state": row.state,
        "exit_code": row.exit_code,
        "summary": row.summary,
        "duration_s": _duration(row),
    }


def workspace_view(row: WorkspaceRow, *, pid: int | None, log_tail: str) -> dict[str, Any]:
    return {
        "workspace": row.id,
        "state": row.state,
        "agent": row.agent,
        "pid": pid,
        "runs": row.runs,
        "priority": Priority(row.priority).label,
        "label": row.label,
        "created_at": iso(row.created_at),
        "started_at": iso(row.started_at),
        "ended_at": iso(row.ended_at),
        "exit_code": row.exit_code,
        "reason": row.reason,
        "ended_reason": row.ended_reason,
        "summary": row.summary,
        "log_tail": log_tail,
        "path": row.path,
        "branch": row.branch,
        "parent": row.parent,
    }
