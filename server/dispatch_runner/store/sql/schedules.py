"""The schedules side of a SQL store: cron schedules, and the race for each of their ticks.

Every serving peer, on every host, looks for due schedules. A tick goes to whoever moves
`next_run_at` on from the value it read (a compare-and-set: one winner, the others see a row
that changed under them); only the winner submits the dispatch. A submit that fails puts the tick
back with the same compare-and-set, so a peer tries it again.
"""

import json
from collections.abc import Mapping
from typing import Any

from ..schedules import ScheduleRow
from .conn import Conn, Row
from .core import SQLCore

LIST_LIMIT = 1000


class ScheduleSide(SQLCore):
    def add_schedule(self, row: ScheduleRow, *, limit: int) -> bool:
        """Store a new schedule; False (nothing stored) when `limit` schedules exist already."""
        args = (
            row.id,
            row.cron,
            row.timezone,
            json.dumps(dict(row.dispatch), separators=(",", ":")),
            row.next_run_at,
            row.last_run_at,
            row.last_workspace,
            row.last_error,
            row.client,
            row.origin,
            row.host,
            row.created_at,
        )

        def tx(db: Conn) -> bool:
            if int(db.execute(db.q.schedules_count).fetchone()[0]) >= limit:
                return False
            db.execute(db.q.insert_schedule, args)
            return True

        return bool(self._write(tx))

    def schedules(self, limit: int = LIST_LIMIT) -> list[ScheduleRow]:
        """Every schedule, oldest first."""
        return [_schedule(r) for r in self._read(self.q.schedules_all, (limit,))]

    def get_schedule(self, schedule_id: str) -> ScheduleRow | None:
        rows = self._read(self.q.schedule_by_id, (schedule_id,))
        return _schedule(rows[0]) if rows else None

    def delete_schedule(self, schedule_id: str) -> bool:
        return bool(self._write(lambda db: db.execute(db.q.delete_schedule, (schedule_id,)).rowcount == 1))

    def due_schedules(self, now: float, *, host: str, limit: int = 100) -> list[ScheduleRow]:
        """The schedules `host`'s peers may fire whose next tick is at or before `now`, the most
        overdue first."""
        return [_schedule(r) for r in self._read(self.q.schedules_due, (now, host, limit))]

    def next_schedule_at(self, *, host: str) -> float | None:
        """The earliest next tick of the schedules `host`'s peers may fire (None: none)."""
        value = self._read(self.q.schedule_next_at, (host,))[0][0]
        return None if value is None else float(value)

    def take_tick(self, schedule_id: str, *, tick: float, next_run_at: float, now: float) -> bool:
        """Compare-and-set: the tick at `tick` is this caller's to fire (True) when the schedule's
        next_run_at was still `tick`; it moves on to `next_run_at`, and last_run_at to `now`."""
        args = (next_run_at, now, schedule_id, tick)
        return bool(self._write(lambda db: db.execute(db.q.schedule_take_tick, args).rowcount == 1))

    def put_back_tick(
        self, schedule_id: str, *, tick: float, taken: float, last_run_at: float | None, error: str
    ) -> bool:
        """A taken tick whose submit failed is due again (compare-and-set on the `taken` next
        time: False when the schedule changed meanwhile), with the reason kept in last_error."""
        args = (tick, last_run_at, error[:2000], schedule_id, taken)
        return bool(self._write(lambda db: db.execute(db.q.schedule_put_back, args).rowcount == 1))

    def record_fired(
        self, schedule_id: str, *, tick: float, dispatched: str, origin: str | None, now: float, **data: Any
    ) -> None:
        """The tick's dispatch was submitted: the schedule names what it dispatched (a workspace,
        or a fan-out's group), and a ScheduleFired event says so (with `data`)."""
        workspace = dispatched if data.get("group") is None else None

        def tx(db: Conn) -> None:
            db.execute(db.q.schedule_fired, (dispatched, schedule_id))
            self._event(db, "ScheduleFired", now, workspace, origin, schedule=schedule_id, tick=tick, **data)

        self._write(tx)


def _schedule(r: Row) -> ScheduleRow:
    dispatch: Mapping[str, Any] = json.loads(r["dispatch"])
    return ScheduleRow(
        id=r["id"],
        cron=r["cron"],
        timezone=r["timezone"],
        dispatch=dispatch,
        next_run_at=float(r["next_run_at"]),
        last_run_at=None if r["last_run_at"] is None else float(r["last_run_at"]),
        last_workspace=r["last_workspace"],
        last_error=r["last_error"],
        client=r["client"],
        origin=r["origin"],
        host=r["host"],
        created_at=float(r["created_at"]),
    )
