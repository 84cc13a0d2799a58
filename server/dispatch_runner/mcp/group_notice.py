"""The channel notice of a fan-out group's end: one message with every item's outcome (the
GroupCompleted event's data, store/sql/deps.py), instead of one notice per member."""

from collections.abc import Mapping
from typing import Any, Final

from ..policy import duration_text

GROUP_COMPLETED: Final = "GroupCompleted"
CONTENT_CHARS: Final = 20_000  # a hundred items stay readable; the rest is one status call away
ITEM_CHARS: Final = 160


def group_message(event: Any) -> tuple[str, dict[str, str]]:
    """(content, meta): the outcome first ("completed: group …, 20 of 20 completed"), then one
    line per item in dispatch order; meta under identifier keys only."""
    data: Mapping[str, Any] = event.data
    group = str(data.get("group") or event.workspace or "?")
    state = str(data.get("state") or "completed")
    counts: Mapping[str, int] = data.get("counts") or {}
    members = list(data.get("members") or [])
    size = int(data.get("size") or len(members))
    tally = ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    head = f"{state}: fan-out group {group} of {size} sub-agents ended ({tally})"
    if data.get("duration_s") is not None:
        head += f" after {duration_text(float(data['duration_s']))}"
    lines = [head + ".", *(_item_line(i, m) for i, m in enumerate(members, 1))]
    lines.append(f"Details: status with workspace={group}; one item's output: logs with its workspace.")
    content = "\n".join(lines)
    if len(content) > CONTENT_CHARS:
        content = content[: CONTENT_CHARS - 1] + "…"
    meta = {
        "event": GROUP_COMPLETED,
        "group": group,
        "workspace": group,
        "state": state,
        "size": str(size),
        **{s: str(n) for s, n in counts.items() if s.isidentifier()},
    }
    if data.get("duration_s") is not None:
        meta["duration_s"] = f"{float(data['duration_s']):.3f}"
    return content, meta


def _item_line(n: int, m: Mapping[str, Any]) -> str:
    """`3. completed ws-… (label): first line of its result` — or its reason when it did not."""
    name = m.get("label") or m.get("task") or ""
    what = f" ({_flat(str(name))})" if name else ""
    outcome = m.get("summary") if m.get("state") == "completed" else m.get("reason") or m.get("summary")
    text = _flat(str(outcome or ""))
    code = f", exit code {m['exit_code']}" if m.get("exit_code") not in (None, 0) else ""
    line = f"{n}. {m.get('state')} {m.get('workspace')}{what}{code}" + (f": {text}" if text else "")
    return line if len(line) <= ITEM_CHARS else line[: ITEM_CHARS - 1] + "…"


def _flat(text: str) -> str:
    return " ".join(text.split())
