"""runner.dispatch: a valid dispatch becomes a workspace directory, its prompt and worktree, a
row in the store (or the existing one, for a repeated idempotency key), and a first drain."""

import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio.to_thread

from .. import workspaces
from ..actions import DispatchRequest, MessageRequest
from ..errors import WorkspaceUnavailable
from ..launch import supervisor
from ..store import NewWorkspace, WorkspaceRow
from . import fanout, followups, scheduling
from .core import Core
from .draining import Drainer
from .placement import Fleet
from .validation import check_dispatch_values, new_workspace

ID_TRIES = 5


class _IdTaken(Exception):
    """The drawn workspace id names an existing directory."""


class Dispatcher:
    def __init__(self, core: Core, drainer: Drainer) -> None:
        self.core = core
        self.drainer = drainer
        self.fanout = fanout.FanOut(
            core, drainer, prepare=_prepare_files, discard=_discard_files, shape=self._result
        )

    async def dispatch(
        self,
        req: DispatchRequest,
        *,
        origin: str | None = None,
        parent: str | None = None,
        client: str | None = None,
    ) -> dict[str, Any]:
        if req.resume is not None:
            return await self._resume(req)
        if fanout.fans_out(req):
            return await self.fanout.dispatch(req, origin=origin, parent=parent, client=client)
        fanout.check_task_given(req)
        parent = followups.parent_of(parent)

        def attempt() -> dict[str, Any]:
            # validation resolves paths and may run git: off the event loop, with the rest
            check_dispatch_values(req)
            schedule = scheduling.plan(self.core.store, req, now=time.time())
            tree = followups.lineage(self.core.store, self.core.config, parent)
            for _ in range(ID_TRIES):
                new = new_workspace(
                    self.core.config,
                    req,
                    origin=origin,
                    client=client,
                    fleet=Fleet(self.core.caps(fresh=True), self.core.store.peers),
                    lineage=tree,
                )
                new = self._traced(new)
                try:
                    result = self._dispatch_sync(schedule.apply(new), schedule.max_wait(req.max_wait_s))
                except _IdTaken:
                    self.core.traces.discard(new.id)
                    continue  # another dispatch drew the same id this second: draw again
                except BaseException:
                    self.core.traces.discard(new.id)
                    raise
                if result.get("deduplicated"):
                    self.core.traces.discard(new.id)
                return result
            raise WorkspaceUnavailable(str(self.core.config.workspace_root), "no free workspace id")

        result = await anyio.to_thread.run_sync(attempt)
        await self.core.publish_new()
        return result

    def check(self, req: DispatchRequest) -> None:
        """What dispatch would refuse, refused without storing or writing anything (a schedule's
        dispatch, checked when the schedule is made). May run git: call it off the event loop.
        A check that dispatch adds belongs here too."""
        scheduling.check_schedule_values(req)
        if fanout.fans_out(req):  # each item as its own dispatch
            requests = self.fanout.requests(req)
        else:
            requests = [req]
        fleet = Fleet(self.core.caps(fresh=True), self.core.store.peers)
        for each in requests:
            check_dispatch_values(each)
            new_workspace(self.core.config, each, origin=None, fleet=fleet)

    def _traced(self, new: NewWorkspace) -> NewWorkspace:
        """Its trace span started (when tracing is on), its context in every spec it may run
        with: the agent gets it as TRACEPARENT."""
        parent = self.core.traces.dispatched(new.id, agent=new.agent, model=new.model, pool=new.pool)
        if parent is None:
            return new
        route = tuple(replace(e, spec={**e.spec, "traceparent": parent}) for e in new.route)
        return replace(new, spec={**new.spec, "traceparent": parent}, route=route)

    async def _resume(self, req: DispatchRequest) -> dict[str, Any]:
        """A follow-up task for an existing workspace: a new run of it that resumes its agent's
        session (queued now when it has ended, else when its current run ends; taken live by a
        running agent that reads input)."""
        check_dispatch_values(req)
        workspace = followups.check_resume(self.core.config, req)
        row, delivered = await self._follow_up(workspace, req.task)
        fresh = await self.core.db(self.core.store.get_workspace, workspace)
        result = self._result(fresh or row, deduplicated=False, eta_s=None)
        return {**result, "resumed": True, "delivered": delivered}

    async def message(self, req: MessageRequest) -> dict[str, Any]:
        """A message to a workspace: live to its running agent when it reads input, else queued
        as the input of a run that resumes its session."""
        followups.check_message(self.core.config, req)
        row, delivered = await self._follow_up(req.workspace, req.text)
        return followups.message_result(row, delivered)

    async def _follow_up(self, workspace: str, text: str) -> tuple[WorkspaceRow, str]:
        row, delivered = await followups.send(self.core.store, workspace, text)
        await self.core.publish_new()
        if row.state != "running":  # a resume run was queued: start it if a slot is free
            await anyio.to_thread.run_sync(self.drainer.drain_sync)
        return row, delivered

    def _dispatch_sync(self, new: NewWorkspace, max_wait_s: float | None) -> dict[str, Any]:
        """Files, the enqueue transaction and the first drain in one worker-thread hop."""
        store = self.core.store
        if new.idempotency_key:
            existing = store.find_by_idempotency_key(new.idempotency_key)
            if existing is not None:
                return self._result(existing, deduplicated=True, eta_s=None)
        try:
            Path(new.path).mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            raise _IdTaken from None  # not ours: never discard it
        except OSError as exc:
            raise WorkspaceUnavailable(new.path, exc.strerror or str(exc)) from exc
        try:
            new = _prepare_files(new)
            result = store.enqueue(new, now=time.time(), max_wait_s=max_wait_s, limits=self.core.limits)
        except BaseException:
            _discard_files(new)
            raise
        if result.deduplicated:
            _discard_files(new)
            return self._result(result.workspace, deduplicated=True, eta_s=None)
        self.core.counts["dispatched"] += 1
        started_here = new.id in self.drainer.drain_sync()
        row = store.get_workspace(new.id)
        assert row is not None
        if row.state != "running":  # a claimed one got its status.json from the spawn
            workspaces.write_status(row, now=time.time())
        host = supervisor.host_id() if started_here else row.host
        return self._result(row, deduplicated=False, eta_s=result.eta_s, host=host)

    def _result(
        self, row: WorkspaceRow, *, deduplicated: bool, eta_s: float | None, host: str | None = None
    ) -> dict[str, Any]:
        """`eta_s` is null when it cannot be known (a full pool that has finished no run yet);
        `frozen` says why nothing starts while the queue is stopped; `host` is where it runs, or
        must run (null: any host of the fleet that has its agent, once one takes it). Its schedule
        too (scheduling.schedule_view), and why it was cancelled at once (a need that failed)."""
        store = self.core.store
        queued = row.state == "queued"
        cancelled = {"reason": row.reason} if row.state == "cancelled" else {}
        return {
            "workspace": row.id,
            "status": row.state,
            "agent": row.agent,
            "position": store.queue_position(row.id),
            # a held one (waiting for others, or its group's turn) starts at no time we know
            "eta_s": (round(eta_s, 1) if eta_s is not None and not row.held else None) if queued else 0.0,
            "path": row.path,
            "deduplicated": deduplicated,
            "frozen": queued and store.is_frozen(),
            "host": host or row.host,
            **scheduling.schedule_view(row, scheduling.waiting(store, row)),
            **cancelled,
        }


def _prepare_files(new: NewWorkspace) -> NewWorkspace:
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


def _discard_files(new: NewWorkspace) -> None:
    if new.repo and new.branch:
        workspaces.remove_worktree(Path(new.repo), Path(new.run_dir), new.branch, base=None)
    shutil.rmtree(new.path, ignore_errors=True)
