"""What the CLI shows of dispatched work: a dispatch's result (one workspace, or a fan-out group
with a line per member), why queued work does not start yet, and a group's status (counts,
then a row per member with its outcome)."""

from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from .view import duration, one_line, span, state_text


def dispatch_view(r: dict[str, Any]) -> Text:
    line = Text(f"{r['workspace']}  ")
    line.append_text(state_text(r["status"]))
    line.append(f"  {r['agent']}")
    if r["status"] == "queued" and not r.get("frozen"):
        eta = (
            f"~{span(r['eta_s'])}"
            if r["eta_s"] is not None
            else "unknown"
            if r.get("deduplicated")
            else "unknown (no run of this pool has finished yet)"
        )
        line.append(f"  position {r['position']}, eta {eta}")
    line.append_text(waiting_text(r))
    if r.get("frozen"):
        line.append("  (queue frozen: `dispatch-runner start` resumes it)", style="yellow")
    if r.get("deduplicated"):
        line.append("  (the existing workspace for this idempotency key)")
    if r.get("resumed"):
        line.append(
            "  (follow-up delivered live)"
            if r.get("delivered") == "live"
            else "  (follow-up queued: a run resumes its agent's session)"
        )
    line.append(f"\n{r['path']}")
    return line


def waiting_text(w: dict[str, Any]) -> Text:
    """Why a queued workspace does not start yet: held for others or its group's turn, or a time."""
    out = Text()
    if w.get("held") == "after":
        out.append(f"  waits for {', '.join(w.get('after') or [])}", style="yellow")
    elif w.get("held") == "group":
        out.append("  waits its turn in its group", style="yellow")
    if w.get("not_before"):
        out.append(f"  not before {w['not_before']}", style="yellow")
    if w.get("status") == "cancelled" and w.get("reason"):
        out.append(f"  ({w['reason']})", style="yellow")
    return out


def group_dispatch_view(r: dict[str, Any]) -> RenderableType:
    cap = r.get("group_concurrency")
    head = Text(f"{r['group']}  fan-out of {r['size']}")
    head.append(f", at most {cap} at once" if cap else "")
    if r.get("deduplicated"):
        head.append("  (the existing group for this idempotency key)")
    rows = [head]
    for w in r["workspaces"]:
        line = Text(f"  {w['workspace']}  ")
        line.append_text(state_text(w["status"]))
        line.append(f"  {w['agent']}")
        line.append_text(waiting_text(w))
        rows.append(line)
    rows.append(Text(f"status {r['group']} shows each one; wait {r['group']} waits for them all"))
    return Group(*rows)


def group_view(r: dict[str, Any]) -> RenderableType:
    head = Text(f"{r['group']}  ")
    head.append_text(state_text(r["state"]))
    counts = ", ".join(f"{n} {s}" for s, n in sorted(r["counts"].items()))
    cap = r.get("group_concurrency")
    head.append(f"  {r['size']} members ({counts})" + (f", at most {cap} at once" if cap else ""))
    t = Table(box=None, padding=(0, 2), show_edge=False)
    for col in ("workspace", "state", "label", "exit", "took", "outcome"):
        t.add_column(col)
    for m in r["members"]:
        outcome = m["summary"] if m["state"] == "completed" else m.get("reason") or m.get("summary")
        state = state_text(m["state"])
        if m.get("held"):
            state.append(f" ({m['held']})")
        t.add_row(
            m["workspace"],
            state,
            one_line(m.get("label"), 30),
            "-" if m["exit_code"] is None else str(m["exit_code"]),
            duration(m["duration_s"]),
            one_line(outcome, 80),
        )
    return Group(head, t)
