"""The runner core end to end: real fake-agent processes, a real SQLite file, the typed actions."""

import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from dispatch_runner.actions import DispatchRequest, KillRequest, StatusRequest, WaitRequest
from dispatch_runner.config import load_config
from dispatch_runner.errors import (
    InvalidArgument,
    PathNotAllowed,
    QueueBusy,
    UnknownAgent,
    UnknownWorkspace,
)
from dispatch_runner.runner import Runner
from tests.conftest import Home, processes_with_env, until
from tests.fakes.overlap import intervals, max_overlap

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def serving(home: Home, extra: str = "") -> AsyncIterator[Runner]:
    """A runner peer with its background loop (watch, drain, recovery) running."""
    if extra:
        home.write_config(extra)
    runner = Runner(load_config(), kind="test")
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(runner.serve)
            yield runner
            tg.cancel_scope.cancel()
    finally:
        runner.close()


async def dispatch(runner: Runner, task: str, **kw: Any) -> dict[str, Any]:
    origin, parent = kw.pop("origin", None), kw.pop("parent", None)  # the call's, not the request's
    return await runner.dispatch(DispatchRequest(task=task, **kw), origin=origin, parent=parent)


async def wait_all(runner: Runner, ids: list[str], timeout: float = 30) -> list[dict[str, Any]]:
    result = await runner.wait(WaitRequest(workspaces=ids, timeout_s=timeout))
    assert result["done"], result
    rows: list[dict[str, Any]] = result["workspaces"]
    return rows


async def test_claude_run_records_result_text_and_session_id(home: Home) -> None:
    async with serving(home) as runner:
        ws = await dispatch(runner, "say hello")
        assert ws["status"] == "running" and ws["deduplicated"] is False
        [row] = await wait_all(runner, [ws["workspace"]])
        status = await runner.status(StatusRequest(workspace=ws["workspace"]))
        db_row = runner.store.get_workspace(ws["workspace"])
    assert row["state"] == "completed" and row["exit_code"] == 0
    assert row["summary"] == "Hello! The answer is 42."
    assert status["runs"] == 1 and status["pid"] is None
    assert db_row is not None and db_row.session_id == "8723ada8-da2a-4f6e-ac20-8ae08afb34e3"
    doc = json.loads((Path(ws["path"]) / "status.json").read_text())
    assert doc["state"] == "completed" and doc["summary"] == "Hello! The answer is 42."
    assert (Path(ws["path"]) / "result.md").read_text().strip() == "Hello! The answer is 42."


async def test_codex_run_records_final_agent_message(home: Home) -> None:
    async with serving(home) as runner:
        ws = await dispatch(runner, "say hello", agent="codex:gpt-5.5")
        [row] = await wait_all(runner, [ws["workspace"]])
    assert ws["agent"] == "codex:gpt-5.5"
    assert row["state"] == "completed" and row["summary"] == "Hello! The answer is 42."


async def test_plain_agent_summary_is_last_lines_of_stdout(home: Home) -> None:
    async with serving(home) as runner:
        ws = await dispatch(runner, "plain", agent="agent")
        [row] = await wait_all(runner, [ws["workspace"]])
    assert row["state"] == "completed" and row["summary"].splitlines()[-1] == "fake-agent: done"


async def test_pool_limit_caps_overlap_of_running_agents(home: Home) -> None:
    async with serving(home, "concurrency:\n  agent: 2\n") as runner:
        ids = [(await dispatch(runner, f"job {i} @sleep=0.3", agent="agent"))["workspace"] for i in range(7)]
        rows = await wait_all(runner, ids, timeout=60)
    assert {r["state"] for r in rows} == {"completed"}
    assert max_overlap(home.agent_log) == 2


async def test_model_limit_holds_while_pool_has_room(home: Home) -> None:
    extra = "concurrency:\n  codex: {total: 3, gpt-5.4: 1}\n"
    async with serving(home, extra) as runner:
        first = await dispatch(runner, "a @sleep=0.5", agent="codex:gpt-5.4")
        second = await dispatch(runner, "b @sleep=0.5", agent="codex:gpt-5.4")
        other = await dispatch(runner, "c @sleep=0.5", agent="codex:gpt-5.5")
        assert (first["status"], second["status"], other["status"]) == ("running", "queued", "running")
        assert second["position"] == 1
        await wait_all(runner, [first["workspace"], second["workspace"], other["workspace"]])
    spans = {s["ws"]: s for s in _starts(home)}
    assert spans[second["workspace"]]["t"] >= _end_of(home, first["workspace"])


async def test_four_way_mix_respects_pool_and_model_limits(home: Home) -> None:
    extra = "concurrency:\n  codex: {total: 3, gpt-5.4: 1, gpt-5.5: 2}\n  agent: 2\n"
    async with serving(home, extra) as runner:
        by_agent: dict[str, list[str]] = {}
        for i in range(4):
            for agent in ("codex:gpt-5.4", "codex:gpt-5.5", "codex:o3", "agent"):
                ws = (await dispatch(runner, f"{agent} {i} @sleep=0.2", agent=agent))["workspace"]
                by_agent.setdefault(agent, []).append(ws)
        await wait_all(runner, [w for ws in by_agent.values() for w in ws], timeout=90)
    assert _overlap_of(home, set(by_agent["codex:gpt-5.4"])) == 1
    assert _overlap_of(home, set(by_agent["codex:gpt-5.5"])) <= 2
    codex = set(by_agent["codex:gpt-5.4"] + by_agent["codex:gpt-5.5"] + by_agent["codex:o3"])
    assert _overlap_of(home, codex) == 3
    assert _overlap_of(home, set(by_agent["agent"])) == 2


async def test_queued_work_starts_by_priority_then_age(home: Home) -> None:
    async with serving(home, "concurrency:\n  agent: 1\n") as runner:
        await runner.stop()
        order = [
            ("low", "l1"),
            ("medium", "m1"),
            ("critical", "c1"),
            ("high", "h1"),
            ("critical", "c2"),
            ("low", "l2"),
        ]
        ids = {}
        for prio, name in order:
            ids[name] = (await dispatch(runner, f"{name} @sleep=0.05", agent="agent", priority=prio))[
                "workspace"
            ]
        assert (await runner.status(StatusRequest()))["frozen"] is True
        assert await runner.start() == {"frozen": False}
        assert (await runner.status(StatusRequest(workspace=ids["c1"])))["state"] == "running"
        await wait_all(runner, list(ids.values()))
    started = [s["ws"] for s in _starts(home)]
    assert started == [ids[n] for n in ("c1", "c2", "h1", "m1", "l1", "l2")]


async def test_frozen_queue_still_accepts_dispatches_and_runs_nothing(home: Home) -> None:
    async with serving(home) as runner:
        assert await runner.stop() == {"frozen": True}
        ws = await dispatch(runner, "later", agent="agent")
        assert ws["status"] == "queued"
        assert await runner.poke() == {"spawned": [], "frozen": True}
        await runner.start()
        [row] = await wait_all(runner, [ws["workspace"]])
    assert row["state"] == "completed"


async def test_failed_run_retries_with_backoff_then_completes(home: Home) -> None:
    counter = home.root / "count"
    async with serving(home) as runner:
        ws = await dispatch(runner, f"@fail-until=2 @counter={counter}", agent="agent", max_attempts=3)
        [row] = await wait_all(runner, [ws["workspace"]], timeout=30)
        status = await runner.status(StatusRequest(workspace=ws["workspace"]))
    assert row["state"] == "completed" and status["runs"] == 2
    first, second = _starts(home)
    assert second["t"] - first["t"] >= 5.0  # 5 s * 2^(1-1) before the first retry


async def test_dead_letter_after_max_attempts(home: Home) -> None:
    async with serving(home) as runner:
        events = runner.bus.subscribe()
        ws = await dispatch(runner, "@exit=3", agent="agent", max_attempts=1)
        [row] = await wait_all(runner, [ws["workspace"]])
        status = await runner.status(StatusRequest(workspace=ws["workspace"]))
        seen = _drain_types(events)
    assert row["state"] == "failed" and row["exit_code"] == 3
    assert status["reason"].startswith("max retries exceeded")
    assert "AgentFailed" in seen


async def test_dead_letter_event_after_retries_are_exhausted(home: Home) -> None:
    async with serving(home) as runner:
        events = runner.bus.subscribe()
        ws = await dispatch(runner, "@exit=4", agent="agent", max_attempts=2)
        [row] = await wait_all(runner, [ws["workspace"]], timeout=30)
        seen = _drain_types(events)
    assert row["state"] == "failed"
    assert seen.count("AgentRetrying") == 1 and "TaskDeadLettered" in seen


async def test_rate_limited_run_requeues_and_backs_off_the_pool(home: Home) -> None:
    async with serving(home) as runner:
        ws = await dispatch(runner, "@fixture=claude-err-429-stream-json")
        await until(lambda: runner.store.pool_state("claude").backoff_until, message="pool backoff")
        row = runner.store.get_workspace(ws["workspace"])
        status = await runner.status(StatusRequest())
    assert row is not None and row.state == "queued" and row.attempts == 0 and row.runs == 1
    pool = status["pools"]["claude"]
    assert pool["backoff_until"] is not None and pool["queued"] == 1 and pool["running"] == 0


async def test_usage_limit_backs_off_until_the_reset_named_by_the_provider(home: Home) -> None:
    async with serving(home) as runner:
        await dispatch(runner, "@fixture=claude-err-usage-limit-oauth-stream-json")
        state = await until(
            lambda: (
                runner.store.pool_state("claude") if runner.store.pool_state("claude").backoff_until else None
            ),
            message="backoff",
        )
    # the transcript's rate_limit_event names resetsAt 1795459087 (in the past here): then the
    # pool falls back to exponential backoff, never to "now"
    assert state is not None and state.backoff_until is not None and state.last_spawn is not None
    assert state.backoff_until > state.last_spawn and state.fail_count == 1


async def test_timeout_kills_the_run_and_counts_as_a_failure(home: Home) -> None:
    async with serving(home) as runner:
        ws = await dispatch(runner, "@sleep=30", agent="agent", timeout_s=0.5, max_attempts=1)
        [row] = await wait_all(runner, [ws["workspace"]])
        status = await runner.status(StatusRequest(workspace=ws["workspace"]))
    assert row["state"] == "failed" and "timed out after 0.5s" in status["reason"]
    assert processes_with_env("DISPATCH_RUNNER_WORKSPACE", ws["workspace"]) == []


async def test_kill_terminates_the_agent_group_and_leaves_no_process(home: Home) -> None:
    async with serving(home) as runner:
        ws = await dispatch(runner, "@child @sleep=60", agent="agent")
        await until(lambda: _logged(home, "child", ws["workspace"]), message="agent child started")
        result = await runner.kill(KillRequest(workspace=ws["workspace"]))
        [row] = await wait_all(runner, [ws["workspace"]])
    assert result == {"killed": [ws["workspace"]], "cancelled": []}
    assert row["state"] == "killed"
    await until(
        lambda: not processes_with_env("DISPATCH_RUNNER_WORKSPACE", ws["workspace"]),
        message="no agent process left",
    )


async def test_kill_escalates_to_sigkill_after_grace(home: Home) -> None:
    async with serving(home) as runner:
        ws = await dispatch(runner, "@ignore-term @sleep=60", agent="agent")
        await until(lambda: _logged(home, "sleep", ws["workspace"]), message="agent sleeping")
        await runner.kill(KillRequest(workspace=ws["workspace"]))
        [row] = await wait_all(runner, [ws["workspace"]])
    assert row["state"] == "killed"
    assert processes_with_env("DISPATCH_RUNNER_WORKSPACE", ws["workspace"]) == []


async def test_kill_cancels_queued_and_kills_running_by_agent_and_all(home: Home) -> None:
    async with serving(home, "concurrency:\n  agent: 1\n") as runner:
        a = await dispatch(runner, "@sleep=60", agent="agent")
        b = await dispatch(runner, "@sleep=60", agent="agent")
        c = await dispatch(runner, "@sleep=60", agent="codex")
        by_agent = await runner.kill(KillRequest(agent="agent"))
        assert by_agent == {"killed": [a["workspace"]], "cancelled": [b["workspace"]]}
        everything = await runner.kill(KillRequest(all=True))
        assert everything["killed"] == [c["workspace"]]
        rows = await wait_all(runner, [a["workspace"], b["workspace"], c["workspace"]])
    assert [r["state"] for r in rows] == ["killed", "cancelled", "killed"]


async def test_idempotency_key_returns_the_existing_workspace(home: Home) -> None:
    async with serving(home) as runner:
        one = await dispatch(runner, "once", agent="agent", idempotency_key="k-1")
        two = await dispatch(runner, "once again", agent="agent", idempotency_key="k-1")
    assert two["workspace"] == one["workspace"] and two["deduplicated"] is True
    assert len(list((home.path / "workspaces").iterdir())) == 1


async def test_max_wait_refuses_with_eta_and_queues_nothing(home: Home) -> None:
    async with serving(home, "concurrency:\n  agent: 1\n") as runner:
        await dispatch(runner, "@sleep=30", agent="agent")
        await dispatch(runner, "@sleep=30", agent="agent")
        before = (await runner.status(StatusRequest()))["counts"]
        with pytest.raises(QueueBusy) as err:
            await dispatch(runner, "x", agent="agent", max_wait_s=0.5)
        after = (await runner.status(StatusRequest()))["counts"]
        await runner.kill(KillRequest(all=True))
    assert "cannot be estimated yet" in str(err.value) and err.value.eta_s is None
    assert err.value.position == 2
    assert before == after


async def test_cwd_dispatch_runs_in_that_directory(home: Home) -> None:
    target = home.root / "project"
    target.mkdir()
    async with serving(home) as runner:
        ws = await dispatch(runner, "@write=made.txt", agent="agent", cwd=str(target))
        await wait_all(runner, [ws["workspace"]])
    assert (target / "made.txt").exists()


async def test_repo_dispatch_gets_a_fresh_worktree_on_its_branch(home: Home) -> None:
    repo = home.root / "repo"
    repo.mkdir()
    for args in (
        ["init", "-q"],
        ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "init"],
    ):
        subprocess.run(["git", "-C", str(repo), *args], check=True)
    async with serving(home) as runner:
        ws = await dispatch(runner, "@write=made.txt", agent="agent", repo=str(repo))
        await wait_all(runner, [ws["workspace"]])
        status = await runner.status(StatusRequest(workspace=ws["workspace"]))
    assert status["branch"] == f"runner/{ws['workspace']}"
    assert (Path(ws["path"]) / "worktree" / "made.txt").exists()
    assert not (repo / "made.txt").exists()
    branches = subprocess.run(
        ["git", "-C", str(repo), "branch", "--list", "runner/*"], capture_output=True, text=True, check=True
    ).stdout
    assert f"runner/{ws['workspace']}" in branches


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"task": "x", "agent": "nope"}, UnknownAgent, "known: agent, claude, codex"),
        ({"task": "x", "priority": "urgent"}, InvalidArgument, "critical, high, medium, low"),
        ({"task": "   "}, InvalidArgument, "task is empty"),
        ({"task": "x", "cwd": "/etc"}, PathNotAllowed, "outside the allowed roots"),
        ({"task": "x", "cwd": "/nonexistent/dir"}, PathNotAllowed, "does not exist"),
        ({"task": "x", "cwd": "{root}/a/../.."}, PathNotAllowed, "contains '..'"),
        ({"task": "x", "repo": "{root}"}, PathNotAllowed, "not a git repository"),
        ({"task": "x", "template": "fancy"}, InvalidArgument, "no template 'fancy'"),
        ({"task": "x", "max_attempts": 0}, InvalidArgument, "max_attempts"),
    ],
)
async def test_bad_dispatch_is_refused_and_writes_nothing(
    home: Home, kwargs: dict[str, Any], error: type[Exception], words: str
) -> None:
    kwargs = {k: v.format(root=home.root) if isinstance(v, str) else v for k, v in kwargs.items()}
    runner = Runner(load_config())
    try:
        with pytest.raises(error) as err:
            await runner.dispatch(DispatchRequest(**kwargs))
        assert words in str(err.value)
        assert runner.store.last_event_id() == 0
        assert not (home.path / "workspaces").exists() or not any((home.path / "workspaces").iterdir())
    finally:
        runner.close()


async def test_unknown_workspace_is_a_clear_error_for_status_kill_and_wait(home: Home) -> None:
    runner = Runner(load_config())
    try:
        calls: tuple[Callable[[], Awaitable[dict[str, Any]]], ...] = (
            lambda: runner.status(StatusRequest(workspace="ws-nope")),
            lambda: runner.kill(KillRequest(workspace="ws-nope")),
            lambda: runner.wait(WaitRequest(workspaces=["ws-nope"])),
        )
        for call in calls:
            with pytest.raises(UnknownWorkspace, match="no workspace 'ws-nope'; run status"):
                await call()
    finally:
        runner.close()


async def test_pacing_spaces_spawns_without_blocking_other_pools(home: Home) -> None:
    extra = "rates:\n  agent: {sustained_delay: 1.5}\n"
    async with serving(home, extra) as runner:
        a = await dispatch(runner, "a", agent="agent")
        b = await dispatch(runner, "b", agent="agent")
        c = await dispatch(runner, "c", agent="codex")
        assert (a["status"], b["status"], c["status"]) == ("running", "queued", "running")
        assert b["eta_s"] >= 1.0
        status = await runner.status(StatusRequest())
        assert status["pools"]["agent"]["next_spawn_at"] is not None
        await wait_all(runner, [a["workspace"], b["workspace"], c["workspace"]])
        claims = [
            runner.store.get_run(runner.store.get_workspace(w["workspace"]).current_run)  # type: ignore[union-attr, arg-type]
            for w in (a, b)
        ]
    # the pool's spawn times are its claims (the agent's own start adds interpreter start-up)
    assert claims[0] is not None and claims[1] is not None
    assert claims[1].claimed_at - claims[0].claimed_at >= 1.5


async def test_daily_limit_stops_spawns_until_the_reset(home: Home) -> None:
    async with serving(home, "rates:\n  agent: {daily_limit: 2}\n") as runner:
        ids = [(await dispatch(runner, f"{i}", agent="agent"))["workspace"] for i in range(3)]
        await wait_all(runner, ids[:2])
        status = await runner.status(StatusRequest())
    pool = status["pools"]["agent"]
    assert (pool["daily_used"], pool["daily_limit"], pool["queued"]) == (2, 2, 1)
    assert pool["next_spawn_at"] is not None


async def test_pool_state_survives_a_restart(home: Home) -> None:
    extra = "rates:\n  agent: {daily_limit: 5, sustained_delay: 600}\n"
    async with serving(home, extra) as runner:
        await dispatch(runner, "@fixture=claude-err-429-stream-json")
        await until(lambda: runner.store.pool_state("claude").backoff_until, message="backoff")
        first = await dispatch(runner, "one", agent="agent")
        await wait_all(runner, [first["workspace"]])
        before = (await runner.status(StatusRequest()))["pools"]
    async with serving(home, extra) as again:
        after = (await again.status(StatusRequest()))["pools"]
        second = await dispatch(again, "two", agent="agent")
        fail_count = again.store.pool_state("claude").fail_count
    assert after["claude"]["backoff_until"] == before["claude"]["backoff_until"] is not None
    assert fail_count == 1
    assert after["agent"]["daily_used"] == before["agent"]["daily_used"] == 1
    assert after["agent"]["next_spawn_at"] == before["agent"]["next_spawn_at"] is not None
    assert second["status"] == "queued"  # pacing remembered the last spawn


async def test_exit_is_recorded_after_the_dispatching_peer_is_sigkilled(home: Home) -> None:
    env = {**os.environ}
    peer = subprocess.Popen(
        [*_cli(), "serve", "--drain"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        runner = Runner(load_config())
        ws = await dispatch(runner, "@sleep=1", agent="agent")
        await until(lambda: _logged(home, "sleep", ws["workspace"]), message="agent running")
        peer.kill()
        peer.wait(5)
        await until(
            lambda: runner.store.get_workspace(ws["workspace"]).state == "completed",  # type: ignore[union-attr]
            message="exit recorded by the shim",
        )
        runner.close()
    finally:
        peer.kill()
        peer.wait(5)


async def test_shim_killed_mid_run_is_lost_and_its_agent_is_stopped(home: Home) -> None:
    async with serving(home) as runner:
        ws = await dispatch(runner, "@sleep=60", agent="agent", max_attempts=1)
        await until(lambda: _logged(home, "sleep", ws["workspace"]), message="agent running")
        run = runner.store.active_runs()[0]
        assert run.shim_pid is not None
        os.kill(run.shim_pid, signal.SIGKILL)
        [row] = await wait_all(runner, [ws["workspace"]])
    assert row["state"] == "lost"
    assert json.loads((Path(ws["path"]) / "status.json").read_text())["state"] == "lost"
    await until(
        lambda: not processes_with_env("DISPATCH_RUNNER_WORKSPACE", ws["workspace"]),
        message="orphaned agent stopped",
    )


async def test_exit_written_but_not_recorded_is_recovered_from_the_exit_file(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISPATCH_RUNNER_TEST_CRASH_AT", "shim-before-record")
    async with serving(home) as runner:
        ws = await dispatch(runner, "hello")
        [row] = await wait_all(runner, [ws["workspace"]])
    assert row["state"] == "completed" and row["summary"] == "Hello! The answer is 42."


async def test_cli_dispatch_alone_drains_the_queue_by_itself(home: Home) -> None:
    home.write_config("concurrency:\n  agent: 1\n")
    ids = []
    for i in range(3):
        out = subprocess.run(
            [*_cli(), "dispatch", f"job {i} @sleep=0.2", "--agent", "agent", "--json"],
            capture_output=True,
            text=True,
            check=True,
        )
        ids.append(json.loads(out.stdout)["workspace"])
    runner = Runner(load_config())
    try:
        await until(
            lambda: all(runner.store.get_workspace(i).state == "completed" for i in ids),  # type: ignore[union-attr]
            timeout=30,
            message="queue drained by the on-demand drainer",
        )
    finally:
        runner.close()
    assert max_overlap(home.agent_log) == 1


# ---- helpers ------------------------------------------------------------------------------------


def _cli() -> list[str]:
    import sys

    return [sys.executable, "-m", "dispatch_runner.cli"]


def _log(home: Home) -> list[dict[str, Any]]:
    if not home.agent_log.exists():
        return []
    return [json.loads(line) for line in home.agent_log.read_text().splitlines() if line.strip()]


def _starts(home: Home) -> list[dict[str, Any]]:
    return sorted((e for e in _log(home) if e["event"] == "start"), key=lambda e: e["t"])


def _end_of(home: Home, ws: str) -> float:
    ends: list[float] = [e["t"] for e in _log(home) if e["event"] == "end" and e["ws"] == ws]
    return max(ends)


def _logged(home: Home, event: str, ws: str) -> bool:
    return any(e["event"] == event and e.get("ws") == ws for e in _log(home))


def _overlap_of(home: Home, wss: set[str]) -> int:
    pids = {e["pid"] for e in _log(home) if e.get("ws") in wss}
    spans = [(s, e) for pid, s, e in intervals(home.agent_log) if pid in pids]
    points = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    best = cur = 0
    for _, delta in points:
        cur += delta
        best = max(best, cur)
    return best


def _drain_types(sub: Any) -> list[str]:
    seen = []
    while True:
        try:
            seen.append(sub.receive.receive_nowait().type)
        except anyio.WouldBlock:
            return seen


async def test_wait_reports_progress_periodically_while_nothing_changes(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dispatch_runner.runner.queries as queries_module

    monkeypatch.setattr(queries_module, "PROGRESS_EVERY_S", 0.2)
    seen: list[tuple[float, float | None, str | None]] = []

    async def progress(value: float, total: float | None, message: str | None) -> None:
        seen.append((value, total, message))

    async with serving(home) as runner:
        ws = await dispatch(runner, "@sleep=30", agent="agent")
        result = await runner.wait(
            WaitRequest(workspaces=[ws["workspace"]], timeout_s=1.2), progress=progress
        )
        await runner.kill(KillRequest(all=True))
    assert result["done"] is False
    assert len(seen) >= 3 and all(v == 0.0 and t == 1.0 for v, t, _ in seen)


async def test_durations_agree_everywhere_and_are_the_agents_wall_time(home: Home) -> None:
    async with serving(home) as runner:
        events = runner.bus.subscribe()
        ws = (await dispatch(runner, "@sleep=0.3", agent="agent"))["workspace"]
        [waited] = await wait_all(runner, [ws])
        overview = await runner.status(StatusRequest())
        pushed = None
        with anyio.fail_after(10):
            while pushed is None:
                event = await events.receive.receive()
                if event.type == "AgentCompleted" and event.workspace == ws:
                    pushed = event
    [row] = [w for w in overview["workspaces"] if w["workspace"] == ws]
    assert waited["duration_s"] == row["duration_s"] == pushed.data["duration_s"]
    start, end = [e["t"] for e in _log(home) if e.get("ws") == ws and e["event"] in ("start", "end")]
    assert 0.3 <= waited["duration_s"] and abs(waited["duration_s"] - (end - start)) < 0.25
