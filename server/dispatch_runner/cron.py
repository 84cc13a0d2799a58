"""Cron schedules' times: a 5-field cron expression in an IANA timezone, checked, and the next
time it fires after a given instant. Pure: no I/O, no clock (instants are epoch seconds passed in).

Daylight saving follows Vixie cron. A time the clock skips (02:30 when 02:00 jumps to 03:00)
fires as late as the jump (03:30) for a job at a fixed time, and not at all for a job with `*` in
its minute or hour (it fires at its next time anyway). A time the clock repeats (01:30 twice when
02:00 falls back to 01:00) fires once for a fixed-time job, and at both for a `*` job, so an
hourly job stays hourly in real time.
"""

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import TYPE_CHECKING, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import InvalidArgument

if TYPE_CHECKING:
    from croniter import croniter

MARGIN: Final = timedelta(hours=4)  # more than twice any zone's DST jump (Antarctica/Troll: 2 h)
MAX_STEPS: Final = 5000  # candidate times looked at for one answer (a minutely job near a jump: ~500)
# croniter extensions that are not deterministic across peers: random (R) and hashed (H) values
_RANDOM: Final = re.compile(r"(?i)(?:^|[,/-])[RH](?=$|[,/(-])")
FIELDS: Final = ("minute", "hour", "day of month", "month", "day of week")


@dataclass(frozen=True, slots=True)
class Cron:
    """A checked schedule: its expression, its timezone and whether minute or hour is `*` (a
    job that runs through the repeated hour of a DST fall-back, like Vixie cron's)."""

    expr: str
    zone: ZoneInfo
    wildcard: bool

    @property
    def timezone(self) -> str:
        return self.zone.key


def parse(expr: str, timezone: str | None = None) -> Cron:
    """The schedule of `expr` (minute hour day-of-month month day-of-week) in `timezone`
    (IANA name, default UTC); InvalidArgument names what is wrong and what to write instead."""
    zone = parse_zone(timezone)
    if not isinstance(expr, str):
        raise InvalidArgument("cron", f"cron must be a string such as '0 3 * * *' (got {expr!r})")
    fields = expr.split()
    if len(fields) != len(FIELDS):
        raise InvalidArgument(
            "cron",
            f"cron {expr!r} has {len(fields)} fields; give 5: {' '.join(FIELDS)} "
            "(e.g. '0 3 * * *' for 03:00 every day, '*/15 * * * mon-fri' every 15 minutes on weekdays)",
        )
    if any(_RANDOM.search(f) for f in fields):
        raise InvalidArgument(
            "cron", f"cron {expr!r} uses R or H (random or hashed values); write the values out"
        )
    text = " ".join(fields)
    lib = _lib()
    try:
        lib.croniter(text, datetime(2000, 1, 1))
    except (lib.CroniterError, ValueError) as exc:
        raise InvalidArgument("cron", f"cron {expr!r} is not valid: {exc}") from None
    cron = Cron(text, zone, fields[0].startswith("*") or fields[1].startswith("*"))
    try:
        next_fire(cron, datetime(2000, 1, 1, tzinfo=UTC).timestamp())
    except (lib.CroniterBadDateError, LookupError):
        raise InvalidArgument(
            "cron", f"cron {expr!r} never fires (no such date, e.g. the 30th of February)"
        ) from None
    return cron


def parse_zone(timezone: str | None) -> ZoneInfo:
    name = "UTC" if timezone is None or timezone == "" else timezone
    if not isinstance(name, str):
        raise InvalidArgument(
            "timezone", f"timezone must be an IANA name such as 'Europe/Paris' (got {name!r})"
        )
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidArgument(
            "timezone",
            f"unknown timezone {name!r}; give an IANA name such as 'UTC', 'Europe/Berlin' or "
            "'America/New_York'",
        ) from None


def next_fire(cron: Cron, after: float) -> float:
    """The first instant (epoch seconds) strictly after `after` at which `cron` fires."""
    # near a jump, a time before `after` on the wall clock may still be ahead (the repeated hour)
    start = _wall(cron.zone, after) - (MARGIN if _near_jump(cron.zone, after) else timedelta(0))
    steps: croniter = _lib().croniter(cron.expr, start)
    best: tuple[float, datetime] | None = None
    for _ in range(MAX_STEPS):
        wall = steps.get_next(datetime)
        if best is not None and (wall > best[1] + MARGIN or not _near_jump(cron.zone, best[0])):
            return best[0]
        for instant in _instants(cron, wall):
            if instant > after and (best is None or instant < best[0]):
                best = (instant, wall)
    if best is not None:
        return best[0]
    raise LookupError(f"cron {cron.expr!r} has no time after {after}")


def fire_after_missed(cron: Cron, *, due: float, now: float) -> float:
    """The next time of a schedule that was due at `due`: after `now` when ticks were missed
    while nobody ran (they fire once, now, not once each)."""
    return next_fire(cron, max(due, now))


def _lib() -> ModuleType:
    """croniter, imported when a schedule is first read: with dateutil it costs ~40 ms, which
    no CLI command but `schedule` should pay."""
    import croniter

    return croniter


def _wall(zone: ZoneInfo, instant: float) -> datetime:
    """The naive local wall-clock time at `instant`."""
    return datetime.fromtimestamp(instant, zone).replace(tzinfo=None, fold=0)


def _instants(cron: Cron, wall: datetime) -> list[float]:
    """When the naive local time `wall` happens: once; twice in a fall-back's repeated hour (a
    fixed-time job takes the first only); in a spring-forward's gap, as late as the jump for a
    fixed-time job and never for a `*` job."""
    first = wall.replace(tzinfo=cron.zone, fold=0)
    second = wall.replace(tzinfo=cron.zone, fold=1)
    a, b = first.timestamp(), second.timestamp()
    if a == b:
        return [a]
    exists = datetime.fromtimestamp(a, cron.zone).replace(tzinfo=None) == wall
    if exists:  # repeated: fold 0 is the earlier
        return [a, b] if cron.wildcard else [a]
    return [] if cron.wildcard else [a]  # skipped: fold 0 reads it with the offset before the jump


def _jumps(zone: ZoneInfo, start: float, end: float) -> bool:
    return datetime.fromtimestamp(start, zone).utcoffset() != datetime.fromtimestamp(end, zone).utcoffset()


def _near_jump(zone: ZoneInfo, instant: float) -> bool:
    margin = MARGIN.total_seconds()
    return _jumps(zone, instant - margin, instant + margin)
