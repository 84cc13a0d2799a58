"""Store values and intentions for cron schedules. The Store protocol includes ScheduleStore;
store/sql/schedules.py implements it once for every backend.

Each tick is taken by one peer with a compare-and-set on `next_run_at` (take_tick); a submit
that fails puts the tick back with the same compare-and-set (put_back_tick).
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleRow:
    """A cron schedule: its dispatch fires at each tick."""

    id: str
    cron: str  # 5 fields, in `timezone`
    timezone: str  # IANA name
    dispatch: Mapping[str, Any]  # the dispatch arguments, as the client gave them
    next_run_at: float
    last_run_at: float | None = None  # when a peer last took a tick
    last_workspace: str | None = None  # what the last fired tick dispatched
    last_error: str | None = None  # why the last submit failed (its tick was put back)
    client: str | None = None  # who fired dispatches' completions are owed to
    origin: str | None = None  # the connection that created it
    host: str | None = None  # the host whose peers fire it (its cwd or repo is there); None: any
    created_at: float


class ScheduleStore(Protocol):
    def add_schedule(self, row: ScheduleRow, *, limit: int) -> bool: ...
    def schedules(self, limit: int = 1000) -> list[ScheduleRow]: ...
    def get_schedule(self, schedule_id: str) -> ScheduleRow | None: ...
    def delete_schedule(self, schedule_id: str) -> bool: ...
    def due_schedules(self, now: float, *, host: str, limit: int = 100) -> list[ScheduleRow]: ...
    def next_schedule_at(self, *, host: str) -> float | None: ...
    def take_tick(self, schedule_id: str, *, tick: float, next_run_at: float, now: float) -> bool: ...
    def put_back_tick(
        self, schedule_id: str, *, tick: float, taken: float, last_run_at: float | None, error: str
    ) -> bool: ...
    def record_fired(
        self, schedule_id: str, *, tick: float, dispatched: str, origin: str | None, now: float, **data: Any
    ) -> None: ...
