"""The group side of a SQL store: a fan-out's members queued in one transaction (all or none),
and reading groups and what a workspace still waits for. What their ends do is deps.py's."""

from collections.abc import Sequence

from ..base import EnqueueResult, Limits, NewWorkspace, WorkspaceRow
from ..grouping import GroupEnqueued, GroupRow, NewGroup
from .conn import Conn
from .deps import group_row
from .queue import QueueSide
from .rows import workspace_row


class GroupSide(QueueSide):
    def enqueue_group(
        self,
        group: NewGroup,
        members: Sequence[NewWorkspace],
        *,
        now: float,
        max_wait_s: float | None,
        limits: Limits,
    ) -> GroupEnqueued:
        """The group and every member, or nothing (a refusal of any member undoes them all).
        `max_wait_s` is judged on the first member (the others start after it). A first member
        whose idempotency key is known returns that dispatch's group (deduplicated)."""

        def tx(db: Conn) -> GroupEnqueued:
            key = members[0].idempotency_key
            if key:
                found = db.execute(db.q.workspace_by_idempotency_key, (key,)).fetchone()
                if found is not None and found["group_id"]:
                    return _existing(db, found["group_id"])
            db.execute(
                db.q.insert_group,
                (group.id, len(members), group.concurrency, group.client, group.origin, now),
            )
            results: list[EnqueueResult] = []
            for i, ws in enumerate(members):
                wait = max_wait_s if i == 0 and not ws.held else None
                results.append(self._enqueue_in(db, ws, now=now, max_wait_s=wait, limits=limits))
            row = db.execute(db.q.group, (group.id,)).fetchone()
            return GroupEnqueued(group_row(row), results, False)

        return self._write(tx)

    def get_group(self, group_id: str) -> GroupRow | None:
        rows = self._read(self.q.group, (group_id,))
        return group_row(rows[0]) if rows else None

    def group_members(self, group_id: str) -> list[WorkspaceRow]:
        """Its members in dispatch order."""
        return [workspace_row(r) for r in self._read(self.q.group_members, (group_id,))]

    def waiting_for(self, workspace_id: str) -> list[str]:
        """The workspaces it still waits for (`after`), that have not ended yet."""
        return [str(r[0]) for r in self._read(self.q.waiting_for, (workspace_id,))]


def _existing(db: Conn, group_id: str) -> GroupEnqueued:
    group = group_row(db.execute(db.q.group, (group_id,)).fetchone())
    members = [workspace_row(r) for r in db.execute(db.q.group_members, (group_id,)).fetchall()]
    return GroupEnqueued(group, [EnqueueResult(m, True, 0, None) for m in members], True)
