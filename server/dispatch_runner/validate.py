"""Checks of what a client sends, each refusing with a sentence that says what to send instead.

Pure: strings and numbers in, the checked value out or InvalidArgument raised. The bounds are the
documented ones (README, tool schemas): policy.MAX_* and config.max_task_bytes.
"""

import math
from datetime import datetime
from typing import Any, Final

from .errors import InvalidArgument

# Bounds of a dispatch's scheduling arguments (README, tool schemas).
MAX_NOT_BEFORE_S: Final = 7 * 86400.0  # not_before at most 7 days ahead
MAX_GROUP_SIZE: Final = 100  # tasks (or items) of one fan-out
MAX_AFTER: Final = 100  # workspaces (or groups) one dispatch may wait for


def text(field: str, value: Any, *, max_chars: int | None = None, required: bool = False) -> str | None:
    """A string an OS argument, a file name and the store can all hold: no NUL, no lone surrogate.
    None passes unless `required`; `required` also refuses blank text."""
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise InvalidArgument(field, f"{field} must be a string (got {type(value).__name__})")
    if required and not value.strip():
        raise InvalidArgument(field, f"{field} is empty")
    if "\x00" in value:
        raise InvalidArgument(
            field,
            f"{field} contains a NUL character (\\x00, at offset "
            f"{value.index(chr(0))}), which no command-line argument, file name "
            "or environment variable can hold; remove it",
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgument(
            field,
            f"{field} contains a character that is not valid Unicode text "
            f"(a lone surrogate at offset {exc.start}); send it as UTF-8 text",
        ) from None
    if max_chars is not None and len(value) > max_chars:
        raise InvalidArgument(field, f"{field} is {len(value)} characters long; the limit is {max_chars}")
    return value


def number(
    field: str,
    value: Any,
    *,
    minimum: float,
    maximum: float,
    integer: bool = False,
    above: bool = False,
    unit: str = "",
) -> float | None:
    """A finite number (an integer if asked) within [minimum, maximum] ((minimum, maximum] with
    `above`). Text such as "5" and true/false are refused, never converted."""
    if value is None:
        return None
    kind = "an integer" if integer else "a number"
    bound = f"{'above' if above else 'at least'} {minimum:g}{unit} and at most {maximum:g}{unit}"
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type:
        raise InvalidArgument(field, f"{field} must be {kind} {bound} (got {_shown(value)})")
    # compared before any float conversion: an int such as 10**400 has no float
    if (
        (isinstance(value, float) and not math.isfinite(value))
        or value > maximum
        or value < minimum
        or (above and value == minimum)
    ):
        raise InvalidArgument(field, f"{field} must be {kind} {bound} (got {_shown(value)})")
    return float(value)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def human_size(n: int) -> str:
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.1f} MiB"
    if n >= 1024:
        return f"{n / 1024:.0f} KiB"
    return f"{n} bytes"


def when(field: str, value: Any, *, now: float, max_ahead_s: float = MAX_NOT_BEFORE_S) -> float | None:
    """A time given as ISO-8601 with an offset or Z ("2026-05-01T09:00:00+02:00") or as seconds
    from `now` (a number): its epoch seconds, or None when it is not after `now` (the past means
    now). Refused past `max_ahead_s` from now, and without an offset (whose local time?)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise InvalidArgument(
                field,
                f"{field} {_shown(value)} is not an ISO-8601 time; give e.g. 2026-05-01T09:00:00Z "
                "(with Z or an offset such as +02:00), or a number of seconds from now",
            ) from None
        if moment.tzinfo is None:
            raise InvalidArgument(
                field,
                f"{field} {_shown(value)} has no UTC offset; add Z (UTC) or an offset such as +02:00",
            )
        at = moment.timestamp()
    else:
        seconds = number(field, value, minimum=0, maximum=max_ahead_s, unit=" s")
        at = now + (seconds or 0.0)
    if at > now + max_ahead_s:
        raise InvalidArgument(
            field,
            f"{field} is {(at - now) / 86400:.1f} days ahead; it may be at most {max_ahead_s / 86400:g} days "
            "ahead (schedule recurring or later work with the schedule tool)",
        )
    return at if at > now else None
