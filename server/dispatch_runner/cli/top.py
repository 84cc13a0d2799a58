"""`dispatch-runner top`: the dashboard's view in a terminal (textual). Each pool against its limit
(an adaptive one's current limit), its queue, pacing, backoff and spend today, with the last
hour's runs as a strip of minutes; then the workspaces: running ones with elapsed time, host, what
they said last, tokens and dollars so far; the queue in claim order with place and ETA; later and
held work; the latest ends with outcome, duration, cost and diff. Keys kill, freeze or unfreeze
the queue, poke it and show a run's log, through the same runner actions as the tools.

It reads the board (runner.board) from the store every `--interval` seconds, so it works from
any host of the fleet and over SSH.
"""

from datetime import UTC, datetime
from typing import Any, ClassVar

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Footer, Header, Static

from ..actions import KillRequest, StatusRequest
from ..errors import DispatchError
from ..runner import Runner
from .view import STATE_STYLE, duration, one_line, span, until

POOL_COLUMNS = ("pool", "running", "queued", "next start", "today", "last hour (a column a minute)")
WORKSPACE_COLUMNS = (
    "workspace",
    "state",
    "agent",
    "host",
    "time",
    "eta / cost",
    "tokens",
    "last output / summary",
)
LOG_LINES = 20  # the last lines of the selected run's output, on `l`
STRIP_MINUTES = 60
BLOCKS = " ▁▂▃▄▅▆▇█"
OUTCOME_STYLE = {
    "succeeded": "green",
    "failed": "red",
    "timed_out": "red",
    "rate_limited": "yellow",
    "lost": "magenta",
}


class Top(App[None]):
    TITLE = "dispatch-runner top"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("k", "kill", "Kill"),
        Binding("f", "freeze", "Freeze/unfreeze"),
        Binding("p", "poke", "Poke"),
        Binding("l", "log", "Log"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, runner: Runner, *, interval: float = 1.0) -> None:
        super().__init__()
        self.runner = runner
        self.interval = interval
        self.frozen = False
        self.shown: list[str] = []  # the workspaces in the table, in its order

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="summary")
        yield DataTable(id="pools", cursor_type="none")
        yield DataTable(id="workspaces", cursor_type="row")
        yield Static(id="log")
        yield Footer()

    async def on_mount(self) -> None:
        self.query_one("#pools", DataTable).add_columns(*POOL_COLUMNS)
        self.query_one("#workspaces", DataTable).add_columns(*WORKSPACE_COLUMNS)
        await self.reload()
        self.set_interval(self.interval, self.reload)

    async def reload(self) -> None:
        """Read the board again and redraw, keeping the selected workspace selected."""
        try:
            board = await self.runner.board()
        except DispatchError as exc:
            self.query_one("#summary", Static).update(Text(f"cannot read the store: {exc}", style="bold red"))
            return
        self.frozen = bool(board["frozen"])
        counts = "  ".join(f"{k} {v}" for k, v in sorted(board["counts"].items()))
        queue = Text("FROZEN (f unfreezes)", style="bold yellow") if self.frozen else Text("running")
        error = (board.get("config") or {}).get("error")
        summary = Text.assemble("queue ", queue, f"   {counts}   hosts {', '.join(board['hosts']) or '-'}")
        if error:
            summary.append(f"\nagents.yaml: {error}", style="bold red")
        self.query_one("#summary", Static).update(summary)
        self._pools(board)
        self._workspaces(board)

    def _pools(self, board: dict[str, Any]) -> None:
        now = datetime.now(UTC)
        table = self.query_one("#pools", DataTable)
        table.clear()
        for name, p in board["pools"].items():
            limit = p.get("effective_limit") or p["limit"]
            shown = f"{p['running']}/{limit or '∞'}"
            if p.get("adaptive") and p["limit"] and limit != p["limit"]:
                shown += f" (of {p['limit']})"
            gate = (
                "backing off " + until(p["backoff_until"], now)
                if p["backoff_until"]
                else until(p["next_spawn_at"], now)
            )
            used = p.get("usage_today") or {}
            today = f"{used.get('runs', 0)} runs ${used.get('usd', 0):.2f}"
            if p.get("daily_limit"):
                today += f" ({p['daily_used']}/{p['daily_limit']} starts)"
            table.add_row(name, shown, str(p["queued"]), gate, today, strip(board, name, limit), key=name)

    def _workspaces(self, board: dict[str, Any]) -> None:
        table = self.query_one("#workspaces", DataTable)
        selected = self.selected()
        rows = workspace_rows(board)
        table.clear()
        self.shown = [ws for ws, _ in rows]
        for ws, (state, *rest) in rows:
            style = STATE_STYLE.get(state.split(" ")[0], "")
            table.add_row(ws, Text(state, style=style), *(one_line(str(c), 80) for c in rest), key=ws)
        if selected in self.shown:
            table.move_cursor(row=self.shown.index(selected))

    def selected(self) -> str | None:
        table = self.query_one("#workspaces", DataTable)
        row = table.cursor_row
        return self.shown[row] if self.shown and 0 <= row < len(self.shown) else None

    def select(self, workspace: str) -> None:
        """Put the cursor on a workspace (keys act on the selected one)."""
        self.query_one("#workspaces", DataTable).move_cursor(row=self.shown.index(workspace))

    async def _act(self, what: str, call: Any) -> None:
        try:
            await call
        except DispatchError as exc:
            self.notify(str(exc), title=what, severity="error")
            return
        self.runner.ensure_progress()  # as the CLI does after an action: some peer drains
        await self.reload()

    async def action_kill(self) -> None:
        if (ws := self.selected()) is not None:
            await self._act("kill", self.runner.kill(KillRequest(workspace=ws)))
            self.notify(f"killed {ws}")

    async def action_freeze(self) -> None:
        await self._act("freeze", self.runner.start() if self.frozen else self.runner.stop())

    async def action_poke(self) -> None:
        await self._act("poke", self.runner.poke())

    async def action_log(self) -> None:
        if (ws := self.selected()) is None:
            return
        try:
            view = await self.runner.status(StatusRequest(workspace=ws, log_lines=LOG_LINES))
        except DispatchError as exc:
            self.notify(str(exc), title="log", severity="error")
            return
        self.query_one("#log", Static).update(f"{ws} ({view['state']}):\n{view.get('log_tail') or ''}")


def workspace_rows(board: dict[str, Any]) -> list[tuple[str, tuple[Any, ...]]]:
    """The workspaces table's rows: running, then the queue in claim order, later work, the latest
    ends; each (workspace, (state, agent, host, time, eta or cost, tokens, text))."""
    now = board["now"]
    queue = sorted(board["queue"], key=lambda q: (_PRIORITY[q["priority"]], q["pool"], q["position"]))
    return [
        *((r["workspace"], _running(r, now)) for r in board["running"]),
        *((q["workspace"], _queued(q, now)) for q in queue),
        *((q["workspace"], _later(q, now)) for q in board["later"]),
        *((e["workspace"], _ended(e)) for e in board["recent"]),
    ]


def _running(r: dict[str, Any], now: float) -> tuple[Any, ...]:
    elapsed = "starting" if r["phase"] == "reserved" else span(now - r["started_at"])
    said = r.get("last_line") or r.get("label") or ""
    return (
        "running",
        r["agent"],
        r["host"] or "-",
        elapsed,
        _usd(r.get("cost_usd")),
        _tokens(r.get("tokens")),
        said,
    )


def _queued(q: dict[str, Any], now: float) -> tuple[Any, ...]:
    eta = "unknown" if q["eta_s"] is None else "now" if q["eta_s"] < 1 else f"~{span(q['eta_s'])}"
    waited = span(now - q["created_at"])
    return (f"queued #{q['position']}", q["agent"], "-", waited, eta, "", q.get("label") or "")


def _later(q: dict[str, Any], now: float) -> tuple[Any, ...]:
    when = "after others" if q["held"] else f"in {span(q['not_before'] - now)}"
    return ("later", q["agent"], "-", when, "", "", q.get("label") or "")


def _ended(e: dict[str, Any]) -> tuple[Any, ...]:
    diff = e.get("diff")
    changed = f"[{diff['files']} files +{diff['insertions']} -{diff['deletions']}] " if diff else ""
    text = changed + (e.get("summary") or e.get("ended_reason") or "")
    took = duration(e["duration_s"])
    return (
        e["state"],
        e["agent"],
        e["host"] or "-",
        took,
        _usd(e.get("cost_usd")),
        _tokens(e.get("tokens")),
        text,
    )


def _usd(x: float | None) -> str:
    return "" if x is None else f"${x:.4f}"


_PRIORITY = {"critical": 0, "high": 1, "medium": 2, "low": 3}


def strip(board: dict[str, Any], pool: str, limit: int | None) -> Text:
    """The pool's last hour, a character a minute: how many of its runs were active in that minute
    (against its limit), coloured by the worst outcome of the runs that ended in it."""
    now = board["now"]
    start = now - STRIP_MINUTES * 60
    busy = [0] * STRIP_MINUTES
    worst: list[str | None] = [None] * STRIP_MINUTES
    for r in board["timeline"]:
        if r["pool"] != pool:
            continue
        begin, end = r["started_at"], r["ended_at"] if r["ended_at"] is not None else now
        for m in range(max(int((begin - start) // 60), 0), min(int((end - start) // 60) + 1, STRIP_MINUTES)):
            busy[m] += 1
        if r["ended_at"] is not None and r["ended_at"] >= start and r["outcome"] != "succeeded":
            m = min(int((r["ended_at"] - start) // 60), STRIP_MINUTES - 1)
            worst[m] = r["outcome"] if worst[m] in (None, "killed") else worst[m]
    top = max(limit or 0, *busy, 1)
    out = Text()
    for n, bad in zip(busy, worst, strict=True):
        block = BLOCKS[min(len(BLOCKS) - 1, -(-n * (len(BLOCKS) - 1) // top))] if n else "·"
        out.append(block, style=OUTCOME_STYLE.get(bad or ("succeeded" if n else ""), "dim"))
    return out


def _tokens(n: int | None) -> str:
    return "" if n is None else f"{n / 1000:.1f}k" if n >= 1000 else str(n)
