"""What the CLI shows people: tables (rich: colour on a terminal, plain when piped); the
commands that keep going are in follow.py. `--json` prints the action's object and nothing else.
"""

import argparse
import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from ..policy import duration_text, parse_iso, to_dt
from . import schedules

FINISHED = ("completed", "failed", "killed", "lost", "cancelled")
STATE_STYLE = {
    "completed": "green",
    "failed": "red",
    "lost": "red",
    "killed": "yellow",
    "cancelled": "yellow",
    "running": "cyan",
    "queued": "blue",
}


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """`| head` left: the same quiet exit as everywhere else (141), not rich's exit 1."""
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(141)


def console() -> Console:
    """Colour and the terminal's width on a terminal; piped, plain text at natural width (a
    table is never cut to 80 columns for a file or `grep`)."""
    terminal = sys.stdout.isatty()
    return _Console(highlight=False, soft_wrap=not terminal, width=None if terminal else 1000)


def run_action(call: Any) -> Any:
    """Await one runner action from synchronous code."""
    import anyio

    async def run() -> Any:
        return await call

    return anyio.run(run)


# ---- times, as people read them -------------------------------------------------------------


def _parse(iso: str | None) -> datetime | None:
    at = parse_iso(iso)
    return to_dt(at) if at is not None else None


def span(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m"
    if seconds < 86400:
        return f"{seconds // 3600:.0f}h{(seconds % 3600) // 60:02.0f}m"
    return f"{seconds // 86400:.0f}d"


def ago(iso: str | None, now: datetime) -> str:
    at = _parse(iso)
    return "-" if at is None else f"{span((now - at).total_seconds())} ago"


def until(iso: str | None, now: datetime) -> str:
    at = _parse(iso)
    if at is None:
        return "-"
    left = (at - now).total_seconds()
    return f"in {span(left)}" if left > 0 else "now"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return duration_text(seconds)  # the same text as the channel's


def one_line(text: str | None, width: int) -> str:
    flat = (text or "").strip().replace("\r", "\\r").replace("\n", "\\n")
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def state_text(state: str) -> Text:
    return Text(state, style=STATE_STYLE.get(state, ""))


# ---- one entry point per command -------------------------------------------------------------


def show(args: argparse.Namespace, result: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(result, indent=2))
        return
    out = console()
    from .dispatched import dispatch_view, group_dispatch_view, group_view  # builds on this module

    if args.command == "status":
        views = {"pools": status_view, "members": group_view}
        out.print(next((v for k, v in views.items() if k in result), workspace_view)(result))
    elif args.command == "dispatch":
        out.print(group_dispatch_view(result) if "size" in result else dispatch_view(result))
    else:
        out.print(Text(_PLAIN.get(args.command, _fields)(result)))


def status_view(r: dict[str, Any]) -> RenderableType:
    now = datetime.now(UTC)
    parts: list[RenderableType] = []
    if r.get("config_error"):
        parts.append(Text(f"config error (built-in defaults shown): {r['config_error']}", style="bold red"))
    if (r.get("config") or {}).get("error"):
        parts.append(Text(f"config: {r['config']['error']}", style="bold red"))
    head = Text("queue: ")
    head.append(
        "FROZEN (dispatch-runner start resumes it)" if r["frozen"] else "running",
        style="bold yellow" if r["frozen"] else "green",
    )
    if r["counts"]:
        head.append("   " + "  ".join(f"{k} {v}" for k, v in sorted(r["counts"].items())))
    parts.append(head)
    parts.append(_pools(r["pools"], now))
    if r.get("agents"):
        parts.append(_agents(r["agents"]))
    if r["workspaces"]:
        parts.append(_workspaces(r["workspaces"], now))
    if r.get("bus_dropped"):
        parts.append(Text(f"bus: {r['bus_dropped']} events dropped by slow subscribers"))
    if r.get("undelivered"):
        parts.append(Text(f"{r['undelivered']} completions not yet delivered to the session that asked"))
    parts += [_approval_line(a) for a in r.get("approvals") or ()]
    return Group(*parts)


def _approval_line(a: dict[str, Any]) -> Text:
    """A pending approval request, with the command that answers it."""
    line = Text("approval ", style="bold yellow")
    line.append(f"{a['request']}  {a['agent']} in {a['workspace']} asks to use {a['tool']}: {a['input']}")
    line.append(f"\n  dispatch-runner approve {a['request']} allow|deny  (denied at {a['deadline']})")
    return line


def _spent(pool: dict[str, Any]) -> Text:
    """Today's tokens and dollars, against the pool's allowance when it has one (red: used up)."""
    used = pool.get("usage_today") or {}
    allowance = pool.get("allowance") or {}
    parts = []
    for measure in ("usd", "tokens"):
        value = used.get(measure) or 0
        limit = (allowance.get(measure) or {}).get("limit")
        if value or limit is not None:
            parts.append(
                _amount(measure, value) + (f"/{_amount(measure, limit)}" if limit is not None else "")
            )
    return Text(" ".join(parts) or "-", style="red" if allowance.get("exhausted") else "")


def _amount(measure: str, value: float) -> str:
    return f"${value:.2f}" if measure == "usd" else f"{value:,.0f} tok"


def _table(*columns: str) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for c in columns:
        table.add_column(c, no_wrap=True)
    return table


def _pools(pools: dict[str, Any], now: datetime) -> Table:
    t = _table(
        "POOL",
        "RUNNING",
        "QUEUED",
        "MODELS",
        "DAILY",
        "SPENT TODAY",
        "BACKOFF",
        "NEXT SPAWN",
        "OLDEST QUEUED",
        "DONE/1M",
    )
    for name, p in pools.items():
        models = ", ".join(f"{m} {v['running']}/{v['limit'] or '∞'}" for m, v in p["models"].items())
        daily = f"{p['daily_used']}/{p['daily_limit']}" if p["daily_limit"] else str(p["daily_used"])
        running = f"{p['running']}/{p['limit'] or '∞'}"
        if p.get("adaptive") and p.get("effective_limit") != p["limit"]:  # AIMD has it lower now
            running = f"{p['running']}/{p['effective_limit']} (of {p['limit']}, adaptive)"
        t.add_row(
            name,
            running,
            str(p["queued"]),
            models or "-",
            daily,
            _spent(p),
            until(p["backoff_until"], now),
            until(p["next_spawn_at"], now),
            ago(p["oldest_queued_at"], now),
            str(p["throughput_1m"]),
        )
    return t


def _agents(agents: dict[str, Any]) -> Table:
    t = _table("AGENT", "POOL", "LIMIT", "INSTALLED")
    for name, a in agents.items():
        t.add_row(
            name,
            a["pool"],
            str(a["limit"] or "∞"),
            Text("yes", style="green") if a["available"] else Text("no (not on PATH)", style="red"),
        )
    return t


def _workspaces(rows: list[dict[str, Any]], now: datetime) -> Table:
    t = _table("WORKSPACE", "STATE", "AGENT", "PRIORITY", "AGE", "DURATION", "LABEL", "SUMMARY")
    for w in rows:
        t.add_row(
            w["workspace"],
            state_text(w["state"]),
            w["agent"],
            w["priority"],
            ago(w["created_at"], now),
            duration(w["duration_s"]),
            one_line(w["label"], 24),
            one_line(w.get("summary"), 60),
        )
    return t


def workspace_view(r: dict[str, Any]) -> RenderableType:
    keys = (
        "workspace",
        "state",
        "agent",
        "pid",
        "runs",
        "priority",
        "label",
        "created_at",
        "started_at",
        "ended_at",
        "exit_code",
        "reason",
        "ended_reason",
        "path",
        "branch",
        "parent",
        "group",
        "held",
        "not_before",
    )
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold", justify="right")
    t.add_column()
    for k in keys:
        if r.get(k) is not None:
            t.add_row(k, state_text(r[k]) if k == "state" else Text(one_line(str(r[k]), 200)))
    if r.get("after"):
        t.add_row("after", Text(", ".join(r["after"])))
    for k, text in _reported(r):
        t.add_row(k, Text(text, style="yellow" if k == "stalled" else ""))
    parts: list[RenderableType] = [t]
    if r.get("summary"):
        parts += [Text("\nsummary:", style="bold"), Text(r["summary"])]
    if r.get("log_tail"):
        parts += [Text("\nlog tail:", style="bold"), Text(r["log_tail"])]
    return Group(*parts)


def _reported(r: dict[str, Any]) -> list[tuple[str, str]]:
    """What its runs reported, as rows for people: session, spend, changes, stalls, children."""
    rows = []
    if r.get("session_id"):
        rows.append(("session", str(r["session_id"])))
    usage = r.get("usage") or {}
    tokens = [f"{usage[k]:,} {k.split('_')[0]}" for k in ("input_tokens", "output_tokens") if usage.get(k)]
    spend = [f"${r['cost_usd']:.4f}"] if r.get("cost_usd") is not None else []
    turns = [f"{r['turns']} turns"] if r.get("turns") else []
    if tokens or spend or turns:
        rows.append(("spent", ", ".join(spend + turns + tokens)))
    if r.get("diff"):
        d = r["diff"]
        names = ", ".join(d.get("names") or [])
        rows.append(
            ("changed", f"{d['files']} files +{d['insertions']} -{d['deletions']}  {one_line(names, 120)}")
        )
    if r.get("commits"):
        rows.append(("commits", "; ".join(one_line(c["subject"], 60) for c in r["commits"][:5])))
    if r.get("stalled"):
        rows.append(("stalled", f"no output since {r.get('stalled_since')}"))
    if r.get("backoff_until"):
        rows.append(("waits until", str(r["backoff_until"])))
    if r.get("children"):
        rows.append(("children", ", ".join(f"{c['workspace']} ({c['state']})" for c in r["children"])))
    return rows


def _fields(r: dict[str, Any]) -> str:
    return "\n".join(f"{k}: {v}" for k, v in r.items())


def _kill(r: dict[str, Any]) -> str:
    return f"killed: {', '.join(r['killed']) or 'none'}\ncancelled: {', '.join(r['cancelled']) or 'none'}"


def _wait(r: dict[str, Any]) -> str:
    lines = ["done" if r["done"] else "not done yet (timed out): wait again"]
    lines += [
        f"{w['workspace']}  {w['state']}  exit {w['exit_code']}  {duration(w['duration_s'])}  "
        f"{one_line(w['summary'], 100)}"
        for w in r["workspaces"]
    ]
    return "\n".join(lines)


def _poke(r: dict[str, Any]) -> str:
    text = f"spawned: {', '.join(r['spawned']) or 'nothing'}"
    return text + ("  (the queue is frozen: `dispatch-runner start` resumes it)" if r.get("frozen") else "")


def _gc(r: dict[str, Any]) -> str:
    if r.get("busy"):
        return "another gc is running in this home (a serving peer); try again in a moment"
    verb = "would remove" if r["dry_run"] else "removed"
    lines = [
        f"{verb} {len(r['removed'])} workspace(s)" + (f": {', '.join(r['removed'])}" if r["removed"] else "")
    ]
    lines += [f"  {n['workspace']}: {n['note']}" for n in r["notes"]]
    lines += [f"kept {k['workspace']}: {k['note']}" for k in r["kept"]]
    if r["orphans"]:
        lines.append(f"{verb} {len(r['orphans'])} orphaned directory(ies): {', '.join(r['orphans'])}")
    if r.get("dead_peers"):
        lines.append(f"forgot {r['dead_peers']} dead peer(s)")
    if r.get("elsewhere"):
        lines.append(f"left {r['elsewhere']} to the hosts their directories are on")
    return "\n".join(lines)


_PLAIN: dict[str, Callable[[dict[str, Any]], str]] = {
    "kill": _kill,
    "wait": _wait,
    "poke": _poke,
    "gc": _gc,
    "schedule": schedules.text,
    "stop": lambda r: "queue frozen: running agents go on, dispatch still queues",
    "start": lambda r: "queue running: queued work starts as slots allow",
    "approve": lambda r: f"{r['request']}: {r['decision']} ({r['tool']}, workspace {r['workspace']})",
    "message": lambda r: (
        f"{r['workspace']}: delivered live to its running agent"
        if r["delivered"] == "live"
        else f"{r['workspace']}: queued; a run resumes its agent's session with it"
        + (" when the current run ends" if r["state"] == "running" else "")
    ),
}
