"""The read side of a SQL store: events, workspaces, the status snapshot."""

import json
from collections.abc import Sequence
from typing import Any

from ...model import Event
from ..base import Limits, WorkspaceRow
from .board import board, workspace_events
from .conn import Conn
from .core import SQLCore
from .rows import read_frozen, workspace_row
from .snapshot import snapshot


class ReadSide(SQLCore):
    def events_after(self, cursor: int, limit: int = 500) -> list[Event]:
        return [
            Event(
                type=r["type"],
                workspace=r["workspace"],
                at=r["at"],
                origin=r["origin"],
                data=json.loads(r["data"]),
                id=r["id"],
            )
            for r in self._read(self.q.events_after, (cursor, limit))
        ]

    def last_event_id(self) -> int:
        return int(self._read(self.q.last_event_id)[0][0])

    def find_by_idempotency_key(self, key: str) -> WorkspaceRow | None:
        rows = self._read(self.q.workspace_by_idempotency_key, (key,))
        return workspace_row(rows[0]) if rows else None

    def get_workspace(self, workspace_id: str) -> WorkspaceRow | None:
        rows = self._read(self.q.workspace, (workspace_id,))
        return workspace_row(rows[0]) if rows else None

    def workspaces(self, ids: Sequence[str]) -> list[WorkspaceRow | None]:
        """These workspaces, in this order (None for an unknown id), in one read that never waits
        behind a write (what `wait` polls)."""
        if not ids:
            return []
        sql = self.q.expand("workspaces_by_ids", ids=self.q.marks(len(ids)))
        rows = self._reading(lambda db: db.execute(sql, list(ids)).fetchall(), separate=True)
        found = {r["id"]: workspace_row(r) for r in rows}
        return [found.get(i) for i in ids]

    def server_time(self) -> float:
        """The database's clock (epoch seconds): leases across hosts depend on clocks agreeing."""
        return float(self._read(self.q.server_time)[0][0])

    def has_work(self) -> bool:
        return bool(self._read(self.q.has_work)[0][0])

    def is_frozen(self) -> bool:
        return self._reading(read_frozen)

    def metric_counts(self) -> dict[str, list[dict[str, Any]]]:
        """What GET /metrics counts from the store (fleet-wide): workspaces per pool and state, and
        ended runs per pool and outcome with their tokens and dollars."""

        def read(db: Conn) -> dict[str, list[dict[str, Any]]]:
            return {
                "workspaces": [dict(r) for r in db.execute(db.q.metric_workspaces)],
                "runs": [dict(r) for r in db.execute(db.q.metric_runs)],
            }

        return self._reading(read)

    def snapshot(
        self,
        *,
        now: float,
        limits: Limits,
        agent: str | None = None,
        state: str | None = None,
        limit: int = 20,
    ) -> dict[str, Any]:
        return self._reading(
            separate=True,
            fn=lambda db: snapshot(
                db, now=now, limits=limits, agent=agent, state=state, limit=limit, frozen=read_frozen(db)
            ),
        )

    def board(self, *, now: float, since: float, limits: Limits, recent: int = 30) -> dict[str, Any]:
        """The dashboard's view (store/sql/board.py): queue with places and ETAs, later work,
        active runs, the latest ended workspaces and the runs since `since`."""
        return self._reading(
            separate=True, fn=lambda db: board(db, now=now, since=since, limits=limits, recent=recent)
        )

    def workspace_events(self, workspace_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """One workspace's latest events, newest first."""
        return self._reading(lambda db: workspace_events(db, workspace_id, limit))
