"""`dispatch-runner top`: the fleet in a terminal (textual) — each pool's runs against its limit,
queue and backoff; the workspaces, running ones first; keys to kill, freeze or unfreeze the queue,
poke it and read a run's log. It reads the store every `--interval` seconds, through the same
runner actions as the tools, so it works from any host of the fleet and over SSH.
"""

from datetime import UTC, datetime
from typing import Any, ClassVar

from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Footer, Header, Static

from ..actions import KillRequest, StatusRequest
from ..errors import DispatchError
from ..runner import Runner
from .view import ago

POOL_COLUMNS = ("pool", "running", "queued", "backoff", "today")
WORKSPACE_COLUMNS = ("workspace", "state", "agent", "priority", "age", "label / summary")
ORDER = {"running": 0, "queued": 1}  # then the ended ones, newest first
LOG_LINES = 20  # the last lines of the selected run's output, on `l`


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
        """Read the fleet again and redraw, keeping the selected workspace selected."""
        snap = await self.runner.status(StatusRequest(limit=100, log_lines=0))
        self.frozen = bool(snap["frozen"])
        now = datetime.now(UTC)
        counts = "  ".join(f"{k} {v}" for k, v in sorted(snap["counts"].items()))
        queue = "FROZEN (f unfreezes)" if self.frozen else "running"
        self.query_one("#summary", Static).update(f"queue {queue}   {counts}")
        pools = self.query_one("#pools", DataTable)
        pools.clear()
        for name, p in snap["pools"].items():
            limit = p.get("effective_limit") or p["limit"] or "∞"
            backoff = "until " + p["backoff_until"] if p["backoff_until"] else "-"
            pools.add_row(name, f"{p['running']}/{limit}", str(p["queued"]), backoff, str(p["daily_used"]))
        self._workspaces(snap["workspaces"], now)

    def _workspaces(self, rows: list[dict[str, Any]], now: datetime) -> None:
        table = self.query_one("#workspaces", DataTable)
        selected = self.selected()
        ordered = sorted(rows, key=lambda r: ORDER.get(r["state"], 2))
        table.clear()
        self.shown = [r["workspace"] for r in ordered]
        for r in ordered:
            text = r.get("label") or ((r.get("summary") or "").splitlines() or [""])[0]
            table.add_row(
                r["workspace"],
                r["state"],
                r["agent"],
                r.get("priority") or "",
                ago(r.get("created_at"), now),
                text,
                key=r["workspace"],
            )
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
