"""`dispatch-runner top`, driven by textual's test pilot: it shows a running fake agent, kills it
with `k`, shows its log with `l` and freezes the queue with `f` — through the runner's actions."""

import pytest
from textual.widgets import DataTable

from dispatch_runner.actions import DispatchRequest, KillRequest
from dispatch_runner.cli.top import Top
from tests.conftest import Home, processes_with_env, until
from tests.test_runner import serving

pytestmark = pytest.mark.anyio


async def test_top_shows_a_run_reads_its_log_kills_it_and_freezes_the_queue(home: Home, backend: str) -> None:
    async with serving(home, "concurrency:\n  agent: 2\n") as runner:
        ws = (await runner.dispatch(DispatchRequest(task="@sleep=60 working hard", agent="agent")))[
            "workspace"
        ]
        await until(
            lambda: getattr(runner.store.get_workspace(ws), "state", None) == "running", message="running"
        )
        app = Top(runner, interval=0.1)
        async with app.run_test(size=(140, 40)) as pilot:
            await until(lambda: ws in app.shown, message="top to show the run")
            app.select(ws)
            await pilot.press("l")
            await until(
                lambda: f"{ws} (running)" in str(app.query_one("#log").render()), message="its log panel"
            )
            await pilot.press("k")
            await until(
                lambda: getattr(runner.store.get_workspace(ws), "state", None) == "killed", message="killed"
            )
            await pilot.press("f")
            await until(lambda: runner.store.is_frozen(), message="frozen from top")
            await until(lambda: "FROZEN" in str(app.query_one("#summary").render()), message="shown frozen")
            await pilot.press("f")
            await until(lambda: not runner.store.is_frozen(), message="unfrozen")
            await pilot.press("q")
    assert processes_with_env("DISPATCH_RUNNER_WORKSPACE", ws) == []


async def test_top_shows_the_boards_view_output_so_far_the_queues_place_and_an_end(home: Home) -> None:
    async with serving(home, "concurrency:\n  agent: 1\n") as runner:
        first = (await runner.dispatch(DispatchRequest(task="@turns=2 @sleep=0.2 quick", agent="claude")))[
            "workspace"
        ]
        await until(
            lambda: getattr(runner.store.get_workspace(first), "state", None) == "completed", message="ended"
        )
        busy = (await runner.dispatch(DispatchRequest(task="@sleep=60 busy", agent="agent")))["workspace"]
        waiting = (await runner.dispatch(DispatchRequest(task="behind it", agent="agent", label="next")))[
            "workspace"
        ]
        app = Top(runner, interval=0.1)
        async with app.run_test(size=(200, 40)) as pilot:
            table = app.query_one("#workspaces", DataTable)

            def row(ws: str) -> list[str]:
                return [str(c) for c in table.get_row(ws)] if ws in app.shown else []

            await until(
                lambda: "fake-agent: prompt: @sleep=60 busy" in (row(busy) or [""])[-1],
                message="its last output line",
            )
            assert row(busy)[1] == "running"
            assert row(waiting)[1:3] == ["queued #1", "agent"] and row(waiting)[-1] == "next"
            assert (row(first)[1] == "completed" and row(first)[5] == "$0.0000") or row(first)[
                1
            ] == "completed"
            assert app.shown.index(busy) < app.shown.index(waiting) < app.shown.index(first)
            pools = app.query_one("#pools", DataTable)
            assert [str(c) for c in pools.get_row("agent")][:3] == ["agent", "1/1", "1"]
            await pilot.press("q")
        await runner.kill(KillRequest(workspace=[busy, waiting]))
