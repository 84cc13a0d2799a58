"""Fan-out (reference 004): one dispatch of many tasks — `tasks`, or `task` holding `{item}` once
per `items` (plain text substitution, before the template) — becomes a group of workspaces
queued in one transaction, all or none: a refusal of any item queues nothing. With
`group_concurrency: N` at most N members are queued or running at once; the others wait their
turn, released one by one as members end (store/sql/deps.py). The group's end is one
GroupCompleted event with every member's outcome: one channel notice for the client.
"""

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio.to_thread

from .. import validate, workspaces
from ..actions import DispatchRequest
from ..errors import InvalidArgument, LimitRefused, WorkspaceUnavailable
from ..launch import supervisor
from ..store import NewWorkspace, WorkspaceRow
from ..store.grouping import GroupEnqueued, NewGroup
from . import followups, groups, scheduling
from .core import Core
from .draining import Drainer
from .placement import Fleet
from .validation import Lineage, check_dispatch_values, new_workspace

ID_TRIES = 5
LABEL_CHARS = 200
Shape = Callable[..., dict[str, Any]]  # Dispatcher._result: a workspace row as dispatch returns it


def fans_out(req: DispatchRequest) -> bool:
    return req.tasks is not None or req.items is not None


def check_task_given(req: DispatchRequest) -> None:
    """A dispatch that is no fan-out needs its task."""
    if req.task == "" and not fans_out(req):
        raise InvalidArgument(
            "task",
            "task is empty; dispatch needs the argument task: what the sub-agent should do, a complete, "
            "self-contained instruction (or tasks, or task with {item} and items, for a fan-out)",
        )


def expand_tasks(req: DispatchRequest) -> list[tuple[str, str | None]]:
    """(task, item) of each member, in order; refuses a malformed fan-out with the sentence that
    says what to send."""
    if req.tasks is not None and req.items is not None:
        raise InvalidArgument("tasks", "give tasks (a list of tasks) or task with items, not both")
    given = req.tasks if req.tasks is not None else req.items
    field = "tasks" if req.tasks is not None else "items"
    if isinstance(given, str) or not isinstance(given, Sequence):
        raise InvalidArgument(field, f"{field} must be a list of strings")
    if not 1 <= len(given) <= validate.MAX_GROUP_SIZE:
        raise InvalidArgument(
            field, f"{field} has {len(given)} entries; a fan-out has 1 to {validate.MAX_GROUP_SIZE}"
        )
    validate.number(
        "group_concurrency", req.group_concurrency, minimum=1, maximum=validate.MAX_GROUP_SIZE, integer=True
    )
    for i, text in enumerate(given):
        validate.text(f"{field}[{i}]", text, required=True)
    if req.tasks is not None:
        if req.task:
            raise InvalidArgument("task", "with tasks, leave task out (or give task with {item} and items)")
        return [(str(t), None) for t in req.tasks]
    if "{item}" not in req.task:
        raise InvalidArgument("task", "with items, task must contain {item}: where each item goes")
    return [(req.task.replace("{item}", str(item)), str(item)) for item in given]


class FanOut:
    def __init__(
        self,
        core: Core,
        drainer: Drainer,
        *,
        prepare: Callable[[NewWorkspace], NewWorkspace],
        discard: Callable[[NewWorkspace], None],
        shape: Shape,
    ) -> None:
        self.core = core
        self.drainer = drainer
        self.prepare, self.discard, self.shape = prepare, discard, shape

    @staticmethod
    def requests(req: DispatchRequest) -> list[DispatchRequest]:
        """Each member's own dispatch."""
        return [_member_request(req, task, item, i) for i, (task, item) in enumerate(expand_tasks(req))]

    async def dispatch(
        self, req: DispatchRequest, *, origin: str | None, parent: str | None, client: str | None
    ) -> dict[str, Any]:
        items = expand_tasks(req)
        parent = followups.parent_of(parent)

        def attempt() -> dict[str, Any]:
            store, now = self.core.store, time.time()
            schedule = scheduling.plan(store, req, now=now)
            tree = followups.lineage(store, self.core.config, parent)
            self._check_budget(tree, len(items))
            gid = groups.new_group_id(now)
            cap = req.group_concurrency
            fleet = Fleet(self.core.caps(fresh=True), store.peers)

            def member(i: int) -> NewWorkspace:
                task, item = items[i]
                new = new_workspace(
                    self.core.config,
                    _member_request(req, task, item, i),
                    origin=origin,
                    client=client,
                    fleet=fleet,
                    lineage=tree,
                )
                return schedule.apply(new, group=gid, wait_turn=cap is not None and i >= cap)

            for i, (task, item) in enumerate(items):  # every member checked before any is made
                check_dispatch_values(_member_request(req, task, item, i))
            members = self._made([member(i) for i in range(len(items))], member)
            group = NewGroup(id=gid, concurrency=cap, client=client, origin=origin)
            return self._enqueue_sync(group, members, schedule.max_wait(req.max_wait_s))

        result = await anyio.to_thread.run_sync(attempt)
        await self.core.publish_new()
        return result

    def _check_budget(self, tree: Lineage, size: int) -> None:
        """A fan-out from inside a run spends its tree's descendant budget by its size."""
        if tree.root is None:
            return
        under, limit = self.core.store.descendants(tree.root), self.core.config.max_descendants
        if under + size > limit:
            raise LimitRefused(
                "max_descendants",
                f"refused: this fan-out of {size} would give the tree of top-level workspace "
                f"{tree.root} {under + size} sub-agent workspaces, past dispatch.max_descendants = "
                f"{limit}. Fan out fewer, or raise dispatch.max_descendants in "
                f"{self.core.config.source}; nothing was queued",
            )

    def _made(self, members: list[NewWorkspace], redraw: Callable[[int], NewWorkspace]) -> list[NewWorkspace]:
        """Each member's directory and files; all of them or none (a failure removes the ones
        made). An id that names an existing directory is drawn again."""
        made: list[NewWorkspace] = []
        try:
            for i, new in enumerate(members):
                for _ in range(ID_TRIES):
                    try:
                        Path(new.path).mkdir(parents=True, exist_ok=False)
                        break
                    except FileExistsError:
                        new = redraw(i)  # not ours (another dispatch, or a twin of this one)
                    except OSError as exc:
                        raise WorkspaceUnavailable(new.path, exc.strerror or str(exc)) from exc
                else:
                    raise WorkspaceUnavailable(str(self.core.config.workspace_root), "no free workspace id")
                try:
                    made.append(self.prepare(new))
                except BaseException:
                    self.discard(new)
                    raise
        except BaseException:
            for new in made:
                self.discard(new)
            raise
        return made

    def _enqueue_sync(
        self, group: NewGroup, members: list[NewWorkspace], max_wait_s: float | None
    ) -> dict[str, Any]:
        store = self.core.store
        try:
            done = store.enqueue_group(
                group, members, now=time.time(), max_wait_s=max_wait_s, limits=self.core.limits
            )
        except BaseException:
            for new in members:
                self.discard(new)
            raise
        if done.deduplicated:
            for new in members:
                self.discard(new)
            return self._result(done, [m.workspace for m in done.members], set())
        self.core.counts["dispatched"] += len(members)
        started = set(self.drainer.drain_sync())
        rows = [r for r in store.workspaces([m.id for m in members]) if r is not None]
        for row in rows:
            if row.state != "running":  # a claimed one got its status.json from the spawn
                workspaces.write_status(row, now=time.time())
        return self._result(done, rows, started, {m.workspace.id: m.eta_s for m in done.members})

    def _result(
        self,
        done: GroupEnqueued,
        rows: Sequence[WorkspaceRow],
        started: set[str],
        etas: dict[str, float | None] | None = None,
    ) -> dict[str, Any]:
        here = supervisor.host_id()
        return {
            "group": done.group.id,
            "size": done.group.size,
            "group_concurrency": done.group.concurrency,
            "deduplicated": done.deduplicated,
            "workspaces": [
                self.shape(
                    r,
                    deduplicated=done.deduplicated,
                    eta_s=(etas or {}).get(r.id),
                    host=here if r.id in started else None,
                )
                for r in rows
            ],
        }


def _member_request(req: DispatchRequest, task: str, item: str | None, i: int) -> DispatchRequest:
    """One member's own dispatch: its task, its label (the item, after the dispatch's label),
    and its idempotency key (the dispatch's, numbered)."""
    label = req.label
    if item is not None:
        flat = " ".join(item.split())
        label = (f"{req.label}: {flat}" if req.label else flat)[:LABEL_CHARS]
    key = f"{req.idempotency_key}#{i + 1}" if req.idempotency_key else None
    return replace(
        req, task=task, tasks=None, items=None, group_concurrency=None, label=label, idempotency_key=key
    )
