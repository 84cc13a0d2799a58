"""The read side of the actions: runner.status (overall or one workspace), runner.logs (a page
of a run's output) and runner.wait (until workspaces end, with progress)."""

import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from .. import validate, workspaces
from ..actions import LogsRequest, Progress, StatusRequest, WaitRequest
from ..config import Config
from ..errors import InvalidArgument, UnknownWorkspace
from ..launch import supervisor
from ..model import Event, WorkspaceState
from ..policy import MAX_WAIT_TIMEOUT_S, iso
from ..store import WorkspaceRow
from . import followups, groups, remote, scheduling
from .core import Core
from .views import tail_lines, wait_row, workspace_view

AVAILABLE_TTL_S = 5.0
MAX_LOG_LINES = 2000
PROGRESS_EVERY_S = 5.0  # wait's progress notifications while nothing changes
WAIT_POLL_S = 0.5  # under the bus: peers we cannot hear


class Queries:
    def __init__(self, core: Core, recover: Callable[[], Awaitable[None]]) -> None:
        self.core = core
        self.recover = recover  # a wait outside a serving peer keeps the queue honest itself
        self._available: tuple[Config | None, float, dict[str, bool]] = (None, 0.0, {})

    async def status(self, req: StatusRequest) -> dict[str, Any]:
        validate.text("workspace", req.workspace, max_chars=200)
        validate.text("agent", req.agent, max_chars=200)
        validate.text("state", req.state, max_chars=200)
        if req.workspace and groups.is_group_id(req.workspace):
            view: dict[str, Any] = await self.core.db(groups.status_of, self.core.store, req.workspace)
            return view
        if req.workspace:
            return await self._workspace_status(req.workspace, req.log_lines)
        states = [s.value for s in WorkspaceState]
        if req.state is not None and req.state not in states:
            raise InvalidArgument("state", f"unknown state {req.state!r}; use one of " + ", ".join(states))
        limit = req.limit
        if limit is not None and (not isinstance(limit, int) or limit < 1 or limit > 1000):
            raise InvalidArgument("limit", "limit must be an integer between 1 and 1000")
        core = self.core
        snap: dict[str, Any] = await core.db(
            core.store.snapshot,
            now=time.time(),
            limits=core.limits,
            agent=req.agent,
            state=req.state,
            limit=limit or 20,
        )
        if (inside := followups.parent_from_env()) is not None:  # a sub-agent sees (and may answer)
            below = set(await core.db(core.store.subtree, [inside]))  # only its own sub-agents'
            snap["approvals"] = [a for a in snap["approvals"] if a["workspace"] in below]
        snap["bus_dropped"] = core.statistics().bus.dropped
        snap["agents"] = self._agents()
        snap["config"] = {"source": core.config.source, "error": core.config_error}
        return snap

    def _agents(self) -> dict[str, dict[str, Any]]:
        """Every configured agent: its pool, the pool's limit and whether its executable is here
        (looked up at most every AVAILABLE_TTL_S: status is called often, PATH rarely changes;
        and again at once when the config was reloaded)."""
        config = self.core.config
        checked_for, checked_at, available = self._available
        now = time.monotonic()
        if checked_for is not config or now - checked_at > AVAILABLE_TTL_S:
            available = {
                name: supervisor.find_executable(a.command[0], a.env) is not None
                for name, a in config.agents.items()
            }
            self._available = (config, now, available)
        out = {}
        for name in sorted(config.agents):
            limit = config.concurrency.get(name)
            out[name] = {
                "pool": name,
                "limit": limit.total_limit if limit else None,
                "models": dict(limit.models) if limit else {},
                "available": available.get(name, False),
            }
        return out

    async def _workspace_status(self, workspace_id: str, log_lines: int) -> dict[str, Any]:
        store = self.core.store
        row = await self.core.db(store.get_workspace, workspace_id)
        if row is None:
            raise UnknownWorkspace(workspace_id)
        run = await self.core.db(store.get_run, row.current_run) if row.current_run else None
        out = workspaces.latest_logs(Path(row.path))[0] if log_lines > 0 else None
        tail = await anyio.to_thread.run_sync(tail_lines, out, log_lines) if out else ""
        children = await self.core.db(store.children, row.id)
        backoff = None
        if row.state == "queued":
            until = (await self.core.db(store.pool_state, row.pool)).backoff_until
            backoff = until if until is not None and until > time.time() else None
        view = workspace_view(
            row,
            pid=run.agent_pid if run and row.state == "running" else None,
            log_tail=tail,
            host=run.host if run and run.host else row.host,
            children=children,
            backoff_until=backoff,
        )
        waiting = await self.core.db(scheduling.waiting, store, row)
        return {**view, **scheduling.schedule_view(row, waiting)}

    async def logs(self, req: LogsRequest, *, here_only: bool = False) -> dict[str, Any]:
        """A page of one run's output: `lines` from line `offset`, `next_offset` to ask for the
        next page, `eof` once the run is over and nothing is left, `more` when the page was
        full. `runs` lists every run with a log (retries start new ones): pass `run` back to
        stay on one. `cursor` (one stream) is where the page ended, to seek there next time.
        A run of another host is read through that host's peer (`host` says which), unless
        `here_only` (that peer's own answer)."""
        _check_logs_request(req)
        row = await self.core.db(self.core.store.get_workspace, req.workspace)
        if row is None:
            raise UnknownWorkspace(req.workspace)
        if (found := await self._elsewhere(row, req, here_only)) is not None:
            return found
        path = Path(row.path)
        runs = await anyio.to_thread.run_sync(workspaces.log_runs, path)
        number = req.run if req.run is not None else (runs[-1] if runs else 1)
        if req.run is not None and req.run > max(row.runs, 1):
            raise InvalidArgument(
                "run",
                f"workspace {req.workspace} has had {row.runs} run(s); runs with "
                f"a log: {', '.join(map(str, runs)) or 'none yet'}",
            )
        settled = WorkspaceState(row.state).finished or number < max(runs, default=0)
        page = await anyio.to_thread.run_sync(
            partial(
                workspaces.log_page,
                path,
                number,
                req.stream,
                offset=req.offset,
                limit=req.limit,
                settled=settled,
                cursor=req.cursor,
                whole_lines=req.whole_lines,
            )
        )
        return {
            "workspace": req.workspace,
            "run": number,
            "runs": runs,
            "stream": req.stream,
            "lines": page.lines,
            "next_offset": page.next_offset,
            "eof": page.eof,
            "more": page.more,
            "cursor": page.cursor,
            "state": row.state,
        }

    async def _elsewhere(self, row: WorkspaceRow, req: LogsRequest, here_only: bool) -> dict[str, Any] | None:
        """The page of a run that ran on another host, read through that host's peer (asked for
        this host's own runs only, a peer refuses another host's)."""
        store = self.core.store
        host = await self.core.db(remote.host_of_run, store, row, req.run or row.runs)
        if host is None:
            return None
        if here_only:
            raise InvalidArgument(
                "run", f"run {req.run or row.runs} of {row.id} ran on host {host}, not here"
            )
        found: dict[str, Any] = await self.core.db(
            remote.logs_elsewhere, store, row, req, host, self.core.token
        )
        return found

    async def wait(self, req: WaitRequest, *, progress: Progress | None = None) -> dict[str, Any]:
        given = _check_wait_request(req)
        ids = await self.core.db(groups.expand_ids, self.core.store, given)  # a group: its members
        for ws_id in ids:
            if await self.core.db(self.core.store.get_workspace, ws_id) is None:
                raise UnknownWorkspace(ws_id)
        timeout = 50.0 if req.timeout_s is None else float(req.timeout_s)
        sub = self.core.bus.subscribe(1024)
        try:
            rows = await self._wait_loop(ids, timeout, req.mode, progress, sub.receive)
        finally:
            self.core.bus.unsubscribe(sub)
        done_count = sum(1 for r in rows if WorkspaceState(r.state).finished)
        done = done_count == len(rows) if req.mode == "all" else done_count > 0
        # completions of these workspaces no session has received (a session whose server died);
        # the MCP surface counts those owed to its caller as delivered by this answer
        given_groups = [g for g in given if groups.is_group_id(g)]
        owed = await self.core.db(self.core.store.undelivered_of, [r.id for r in rows] + given_groups)
        result = {
            "done": done,
            "workspaces": [wait_row(r) for r in rows],
            "undelivered": [_undelivered(o.event) for o in owed],
        }
        if given_groups:  # each group's state and counts; its members are among `workspaces`
            result["groups"] = await self.core.db(groups.summaries, self.core.store, given_groups)
        return result

    async def _wait_loop(
        self, ids: list[str], deadline_s: float, mode: str, progress: Progress | None, events: Any
    ) -> list[WorkspaceRow]:
        core = self.core
        started = time.monotonic()
        deadline = started + deadline_s
        last_reported, last_sent = -1, started
        while True:
            found = await core.db(core.store.workspaces, ids)
            rows = [r for r in found if r is not None]  # ids were checked; a pruned one drops out
            finished = sum(1 for r in rows if WorkspaceState(r.state).finished)
            now = time.monotonic()
            # on every change, and every few seconds anyway so the client sees the wait is alive
            if progress is not None and (finished != last_reported or now - last_sent >= PROGRESS_EVERY_S):
                last_reported, last_sent = finished, now
                message = f"{finished}/{len(ids)} workspaces finished after {now - started:.0f}s"
                await progress(float(finished), float(len(ids)), message)
            if finished == len(ids) or (mode == "any" and finished) or time.monotonic() >= deadline:
                return rows
            if not core.serving:
                await self.recover()
            # woken by any event on the bus; the poll underneath covers peers we cannot hear
            with anyio.move_on_after(min(WAIT_POLL_S, max(deadline - time.monotonic(), 0.0))):
                await events.receive()
            if not core.serving:
                await core.publish_new()


def _undelivered(event: Event) -> dict[str, Any]:
    data = event.data
    return {
        "workspace": event.workspace,
        "event": event.type,
        "event_id": event.id,
        "state": data.get("state"),
        "exit_code": data.get("exit_code"),
        "at": iso(event.at),
    }


def _check_logs_request(req: LogsRequest) -> None:
    validate.text("workspace", req.workspace, max_chars=200, required=True)
    if req.stream not in workspaces.LOG_STREAMS:
        raise InvalidArgument(
            "stream", f"stream must be one of {', '.join(workspaces.LOG_STREAMS)} (got {req.stream!r})"
        )
    validate.number("offset", req.offset, minimum=0, maximum=10**12, integer=True)
    validate.number("limit", req.limit, minimum=1, maximum=MAX_LOG_LINES, integer=True)
    validate.number("run", req.run, minimum=1, maximum=10**6, integer=True)
    validate.number("cursor", req.cursor, minimum=0, maximum=10**15, integer=True)


def _check_wait_request(req: WaitRequest) -> list[str]:
    """The distinct workspace ids to wait for, once the request is known to be valid."""
    ids = list(dict.fromkeys(req.workspaces or []))
    if not ids:
        raise InvalidArgument("workspaces", "list at least one workspace id to wait for")
    if req.mode not in ("all", "any"):
        raise InvalidArgument("mode", "mode must be 'all' or 'any'")
    validate.number("timeout_s", req.timeout_s, minimum=0, maximum=MAX_WAIT_TIMEOUT_S, unit=" s")
    if len(ids) > 1000:
        raise InvalidArgument("workspaces", f"{len(ids)} workspaces given; wait for at most 1000 at a time")
    for ws_id in ids:
        validate.text("workspaces", ws_id, max_chars=200)
    return ids
