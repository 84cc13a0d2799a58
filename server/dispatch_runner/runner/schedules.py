"""runner.schedule: cron schedules (create, list, delete) and the loop that fires them.

Each tick fires as an ordinary dispatch through the runner's Dispatcher (validation, limits, argv
safety and the gate all apply), owed to the client that created the schedule. Peers on any host
race for a tick with a compare-and-set on `next_run_at` (store/sql/schedules.py); the winner
submits with the idempotency key `schedule:<id>:<tick>`, so a tick that is tried again after a
failed or interrupted submit never dispatches twice. Ticks missed while no peer ran fire once.
"""

import json
import logging
import secrets
import time
import types
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, get_args, get_origin, get_type_hints

import anyio
import anyio.to_thread

from .. import cron as cronlib
from .. import validate
from ..actions import DISPATCH_FIELDS, DispatchRequest, ScheduleRequest
from ..errors import DispatchError, InvalidArgument, LimitRefused
from ..launch import supervisor
from ..policy import iso
from ..store import ScheduleRow
from . import followups
from .core import Core
from .followups import TOP_LEVEL

log = logging.getLogger("dispatch_runner")
MAX_SCHEDULES: Final = 1000
MAX_SLEEP_S: Final = 30.0  # the loop looks again at least this often (a schedule made elsewhere)
RETRY_S: Final = 30.0  # a tick whose submit failed is tried again after this long
DUE_PAGE: Final = 100
# dispatch arguments a schedule sets itself, or that mean nothing for recurring work
NOT_SCHEDULED: Final = {
    "idempotency_key": "a schedule gives each tick's dispatch its own key (schedule:<id>:<tick>)",
    "resume": "a schedule starts new work at every tick; resume continues one session once",
}

Dispatch = Callable[..., Awaitable[dict[str, Any]]]
_HINTS: Final = get_type_hints(DispatchRequest)


class Scheduler:
    def __init__(self, core: Core, dispatch: Dispatch, check: Callable[[DispatchRequest], None]) -> None:
        """`dispatch`: the runner's dispatch action (what a tick submits); `check`: what it
        refuses, refused without storing anything (a schedule's dispatch, checked at create)."""
        self.core = core
        self._dispatch = dispatch
        self._check = check
        self._wake = anyio.Event()
        self._retry_at: dict[str, float] = {}  # ticks this peer put back: not again before then

    # ---- the action ---------------------------------------------------------------------------

    async def schedule(
        self, req: ScheduleRequest, *, origin: str | None = None, client: str | None = None
    ) -> dict[str, Any]:
        now = time.time()
        if req.action == "list":
            rows = await self.core.db(self.core.store.schedules)
            return {"schedules": [view(r) for r in rows]}
        if req.action == "create":
            row = await anyio.to_thread.run_sync(lambda: self._create(req, origin, client, now))
            self._wake.set()
            return {"schedules": [view(row)]}
        if req.action == "delete":
            return {"schedules": [view(await self._delete(req.id))], "deleted": True}
        raise InvalidArgument("action", f"unknown action {req.action!r}; use create, list or delete")

    def _create(
        self, req: ScheduleRequest, origin: str | None, client: str | None, now: float
    ) -> ScheduleRow:
        if followups.parent_from_env():
            raise InvalidArgument(
                "schedule",
                "a sub-agent cannot create schedules (its fired dispatches would outlive the limits "
                "of its run); ask the client that dispatched it to create the schedule",
            )
        if req.cron is None:
            raise InvalidArgument("cron", "create needs cron: 5 fields, e.g. '0 3 * * *' (03:00 every day)")
        cron = cronlib.parse(req.cron, req.timezone)
        args = dispatch_args(req.dispatch)
        try:
            self._check(DispatchRequest(**args))
        except DispatchError as exc:
            field = getattr(exc, "field", None)
            where = f"dispatch.{field}" if field else "dispatch"
            why = str(exc).removesuffix("; nothing was queued")
            raise InvalidArgument(
                "dispatch",
                f"the schedule's dispatch would be refused ({where}): {why}; no schedule was stored",
            ) from exc
        row = ScheduleRow(
            id=f"sch-{secrets.token_hex(4)}",
            cron=cron.expr,
            timezone=cron.timezone,
            dispatch=args,
            next_run_at=cronlib.next_fire(cron, now),
            client=client,
            origin=origin,
            # a dispatch into a directory of this host is made here: this host's peers fire it
            host=supervisor.host_id() if args.get("cwd") or args.get("repo") else None,
            created_at=now,
        )
        if not self.core.store.add_schedule(row, limit=MAX_SCHEDULES):
            raise LimitRefused(
                "schedules",
                f"there are {MAX_SCHEDULES} schedules already; delete some (schedule list shows them)",
            )
        log.info("schedule %s created: %s %s", row.id, row.cron, row.timezone)
        return row

    async def _delete(self, given: str | None) -> ScheduleRow:
        schedule_id = validate.text("id", given, max_chars=200)
        if not schedule_id:
            raise InvalidArgument("id", "delete needs id: the schedule's id (schedule list shows them)")
        row: ScheduleRow | None = await self.core.db(self.core.store.get_schedule, schedule_id)
        if row is None or not await self.core.db(self.core.store.delete_schedule, schedule_id):
            raise InvalidArgument("id", f"no schedule {schedule_id!r}; schedule list shows them")
        self._retry_at.pop(schedule_id, None)
        return row

    # ---- firing ---------------------------------------------------------------------------------

    async def fire_due(self, now: float) -> list[dict[str, Any]]:
        """Fire every schedule due at `now` whose tick this peer wins; what each fired (a tick
        another peer took, or one put back after a failed submit, is not listed)."""
        self._retry_at = {k: at for k, at in self._retry_at.items() if at > now}
        fired = []
        due = self.core.store.due_schedules
        for row in await self.core.db(due, now, host=supervisor.host_id(), limit=DUE_PAGE):
            if self._retry_at.get(row.id, 0.0) > now:
                continue  # its submit failed a moment ago: not again before RETRY_S
            result = await self._fire(row, now)
            if result is not None:
                fired.append(result)
        return fired

    async def _fire(self, row: ScheduleRow, now: float) -> dict[str, Any] | None:
        store = self.core.store
        try:
            taken = cronlib.fire_after_missed(
                cronlib.parse(row.cron, row.timezone), due=row.next_run_at, now=now
            )
        except InvalidArgument as exc:  # e.g. the timezone left this host's tz database
            self._failed(row, now, str(exc))
            return None
        if not await self.core.db(store.take_tick, row.id, tick=row.next_run_at, next_run_at=taken, now=now):
            return None  # another peer took this tick
        key = f"schedule:{row.id}:{row.next_run_at!r}"
        try:
            req = DispatchRequest(**dispatch_args(row.dispatch), idempotency_key=key)
            # a tick is nobody's sub-agent, even when the peer firing it runs inside a run
            result = await self._dispatch(req, origin=row.origin, client=row.client, parent=TOP_LEVEL)
        except BaseException as exc:
            reason = str(exc) if isinstance(exc, DispatchError) else f"{type(exc).__name__}: {exc}"
            with anyio.CancelScope(shield=True):  # cancelled mid-submit: the tick is tried again
                back = {"tick": row.next_run_at, "taken": taken, "last_run_at": row.last_run_at}
                await self.core.db(store.put_back_tick, row.id, **back, error=reason)
            if not isinstance(exc, Exception):
                raise
            self._failed(row, now, reason, unexpected=not isinstance(exc, DispatchError))
            return None
        self._retry_at.pop(row.id, None)
        fired = {
            "schedule": row.id,
            "tick": iso(row.next_run_at),
            "workspace": result.get("workspace"),  # or, for a fan-out, its group
            "group": result.get("group"),
            "deduplicated": bool(result.get("deduplicated")),
        }
        what = str(fired["workspace"] or fired["group"])
        data = {k: fired[k] for k in ("group", "deduplicated") if fired[k] is not None}
        args = {"tick": row.next_run_at, "dispatched": what, "origin": row.origin, "now": now}
        await self.core.db(store.record_fired, row.id, **args, next_run_at=taken, **data)
        await self.core.publish_new()
        log.info("schedule %s fired its %s tick: %s", row.id, fired["tick"], what)
        return fired

    def _failed(self, row: ScheduleRow, now: float, reason: str, *, unexpected: bool = False) -> None:
        self._retry_at[row.id] = now + RETRY_S
        level = logging.ERROR if unexpected else logging.WARNING
        tick = iso(row.next_run_at)
        log.log(level, "schedule %s: its %s tick failed (again in %.0f s): %s", row.id, tick, RETRY_S, reason)

    # ---- the loop -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Fire due schedules until cancelled, asleep until the earliest next tick (at most
        MAX_SLEEP_S; a schedule created here wakes it)."""
        while True:
            delay = MAX_SLEEP_S
            try:
                await self.fire_due(time.time())
                delay = sleep_s(
                    await self.core.db(self.core.store.next_schedule_at, host=supervisor.host_id()),
                    self._retry_at,
                    time.time(),
                )
            except Exception:  # a task edge: log, look again after the longest sleep
                log.exception("firing schedules failed; retrying in %.0f s", MAX_SLEEP_S)
            with anyio.move_on_after(delay):
                await self._wake.wait()
            self._wake = anyio.Event()


class ScheduleActions:
    """The Runner's schedule actions (mixed into it: runner/service.py)."""

    scheduler: Scheduler

    async def schedule(
        self, req: ScheduleRequest, *, origin: str | None = None, client: str | None = None
    ) -> dict[str, Any]:
        """Cron schedules: create (its dispatches owed to `client`, like a dispatch), list, delete."""
        return await self.scheduler.schedule(req, origin=origin, client=client)

    async def fire_due(self, now: float) -> list[dict[str, Any]]:
        """Fire the schedules due at `now` whose ticks this peer wins (serve does it by itself)."""
        return await self.scheduler.fire_due(now)


def sleep_s(next_at: float | None, retry_at: Mapping[str, float], now: float) -> float:
    """How long the loop may sleep: until the earliest tick, or (when that one is due but put back
    after a failed submit) its retry; never under a second while a tick is due, never over
    MAX_SLEEP_S."""
    if next_at is None:
        return MAX_SLEEP_S
    if next_at <= now:
        next_at = max(min(retry_at.values(), default=now + RETRY_S), now + 1.0)
    return min(max(next_at - now, 0.0), MAX_SLEEP_S)


def dispatch_args(value: Any) -> dict[str, Any]:
    """A schedule's dispatch arguments checked as JSON against DispatchRequest's fields: known
    names, JSON types that fit, nothing a schedule sets itself."""
    if value is None:
        raise InvalidArgument(
            "dispatch",
            'create needs dispatch: the dispatch arguments each tick submits, e.g. {"task": "..."}',
        )
    if not isinstance(value, Mapping):
        raise InvalidArgument(
            "dispatch", f"dispatch must be an object of dispatch arguments (got {_shown(value)})"
        )
    unknown = sorted(set(value) - set(DISPATCH_FIELDS))
    if unknown:
        raise InvalidArgument(
            "dispatch",
            f"dispatch has no argument {unknown[0]!r}; its arguments are: {', '.join(DISPATCH_FIELDS)}",
        )
    given = {k: v for k, v in value.items() if v is not None}  # null: left out, as in the tool
    for name, v in given.items():
        if name in NOT_SCHEDULED:
            raise InvalidArgument("dispatch", f"dispatch.{name}: leave it out; {NOT_SCHEDULED[name]}")
        if not _fits(v, _HINTS[name]):
            raise InvalidArgument(
                "dispatch", f"dispatch.{name} must be {_describe(_HINTS[name])} (got {_shown(v)})"
            )
    return given


def view(row: ScheduleRow) -> dict[str, Any]:
    """A schedule as results show it."""
    return {
        "id": row.id,
        "cron": row.cron,
        "timezone": row.timezone,
        "next_run_at": iso(row.next_run_at),
        "last_run_at": iso(row.last_run_at),
        "last_workspace": row.last_workspace,
        "last_error": row.last_error,
        "dispatch": dict(row.dispatch),
        "created_at": iso(row.created_at),
        "host": row.host,
    }


def _options(hint: Any) -> tuple[Any, ...]:
    return get_args(hint) if isinstance(hint, types.UnionType) else (hint,)


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a DispatchRequest annotation (str, int, float, bool, a list of
    strings, or a union of them)."""
    for option in _options(hint):
        if option is bool and isinstance(value, bool):
            return True
        if option in (int, float) and isinstance(value, int | float) and not isinstance(value, bool):
            return option is float or isinstance(value, int)
        if option is str and isinstance(value, str):
            return True
        if get_origin(option) is Sequence and isinstance(value, list):
            return all(isinstance(v, str) for v in value)
    return False


def _describe(hint: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    options = [o for o in _options(hint) if o is not type(None)]
    return " or ".join(names.get(o, "a list of strings") for o in options)


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."
