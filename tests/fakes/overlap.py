"""Read the FAKE_AGENT_LOG written by the fake agent CLIs (JSON lines, see _fakecommon.py).

    from fakes.overlap import max_overlap, starts      # tests/ is on sys.path under pytest

``max_overlap(log)`` is the largest number of fake agents running at the same instant: each
``start`` is paired with the next ``end`` of the same pid; a start without an end (a run killed by
SIGKILL, or still running) counts as running until the end of the log. Intervals that only touch
(one ends at the very time another starts) do not overlap.
"""

import json
import math
import os
from typing import Any


def events(log_path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All events in file order ([] if the log does not exist yet)."""
    try:
        with open(log_path, encoding="utf-8") as f:
            lines = f.readlines()
    except FileNotFoundError:
        return []
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError as e:
            raise ValueError(f"{log_path}:{n}: not a JSON line ({e}): {line!r}") from None
    return out


def starts(log_path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The ``start`` events in file order."""
    return [e for e in events(log_path) if e.get("event") == "start"]


def intervals(log_path: str | os.PathLike[str]) -> list[tuple[int, float, float]]:
    """(pid, start t, end t) per run; ``math.inf`` as end for a run without an end line.

    A pid can only be reused once its earlier process is gone, so a second start of a pid whose
    first start has no end closes the first run at the second start's time.
    """
    running: dict[int, float] = {}
    out: list[tuple[int, float, float]] = []
    for e in events(log_path):
        kind, pid = e.get("event"), e.get("pid")
        if kind == "start":
            assert pid is not None, e  # every line the fakes log has a pid
            if pid in running:
                out.append((pid, running.pop(pid), e["t"]))
            running[pid] = e["t"]
        elif kind == "end" and pid in running:  # an end without a start is ignored
            out.append((pid, running.pop(pid), e["t"]))
    out.extend((pid, t, math.inf) for pid, t in running.items())
    return sorted(out, key=lambda iv: iv[1])


def max_overlap(log_path: str | os.PathLike[str]) -> int:
    """The maximum number of agents running at any instant."""
    points = []
    for _pid, t0, t1 in intervals(log_path):
        points.append((t0, 1))
        points.append((t1, -1))
    points.sort()  # at equal times -1 sorts before +1: an end at t frees the slot for a start at t
    best = current = 0
    for _t, delta in points:
        current += delta
        best = max(best, current)
    return best
