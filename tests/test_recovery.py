"""Crash points between claim, spawn, start and exit: nothing double-spawned, nothing lost."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from dispatch_runner.actions import KillRequest, StatusRequest
from dispatch_runner.config import load_config
from dispatch_runner.runner import Runner
from tests.conftest import Home, processes_with_env, until
from tests.fakes.overlap import max_overlap
from tests.test_runner import _log, _logged, dispatch, serving, wait_all

pytestmark = pytest.mark.anyio


def _cli_dispatch(task: str, *extra: str, crash_at: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if crash_at:
        env["DISPATCH_RUNNER_TEST_CRASH_AT"] = crash_at
    return subprocess.run(
        [sys.executable, "-m", "dispatch_runner.cli", "dispatch", task, "--json", *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def _only_workspace(home: Home) -> str:
    [path] = list((home.path / "workspaces").iterdir())
    return path.name


async def test_claim_never_spawned_returns_to_the_queue_and_runs_once(home: Home) -> None:
    out = _cli_dispatch("@sleep=0.1", "--agent", "agent", crash_at="peer-after-claim")
    assert out.returncode == 137  # the peer died between its claim and the spawn
    ws = _only_workspace(home)
    runner = Runner(load_config())
    try:
        row = runner.store.get_workspace(ws)
        assert (
            row is not None and row.state == "running" and runner.store.active_runs()[0].phase == "reserved"
        )
    finally:
        runner.close()
    async with serving(home) as runner:
        [done] = await wait_all(runner, [ws])
        status = await runner.status(StatusRequest(workspace=ws))
    assert done["state"] == "completed" and status["runs"] == 1
    assert [e["ws"] for e in _log(home) if e["event"] == "start"] == [ws]


async def test_shim_dying_after_its_start_record_is_lost_then_retried_once(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISPATCH_RUNNER_TEST_CRASH_AT", "shim-after-start")
    async with serving(home) as runner:
        ws = await dispatch(runner, "hi", agent="agent", max_attempts=2)
        events = runner.bus.subscribe()
        await until(
            lambda: runner.store.get_workspace(ws["workspace"]).attempts == 1,  # type: ignore[union-attr]
            message="lost run counted as an attempt",
        )
        monkeypatch.delenv("DISPATCH_RUNNER_TEST_CRASH_AT")
        [row] = await wait_all(runner, [ws["workspace"]], timeout=30)
        seen = []
        while True:
            try:
                seen.append(events.receive.receive_nowait())
            except anyio.WouldBlock:
                break
    assert row["state"] == "completed"
    assert any(e.type == "AgentLost" and e.data["state"] == "queued" for e in seen)
    assert [e["ws"] for e in _log(home) if e["event"] == "start"] == [ws["workspace"]]


async def test_lost_run_with_no_attempts_left_ends_lost_with_status_json(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISPATCH_RUNNER_TEST_CRASH_AT", "shim-after-start")
    async with serving(home) as runner:
        ws = await dispatch(runner, "hi", agent="agent", max_attempts=1)
        [row] = await wait_all(runner, [ws["workspace"]])
    assert row["state"] == "lost"
    doc = json.loads((Path(ws["path"]) / "status.json").read_text())
    assert doc["state"] == "lost" and "vanished" in doc["reason"]


async def test_changed_config_applies_at_the_next_claim_and_bad_reload_keeps_the_old(home: Home) -> None:
    async with serving(home, "concurrency:\n  agent: 1\n") as runner:
        a = await dispatch(runner, "@sleep=60", agent="agent")
        b = await dispatch(runner, "@sleep=60", agent="agent")
        assert b["status"] == "queued"
        home.config.write_text(home.config.read_text() + "bogus: 1\n")
        os.utime(home.config, ns=(1, 1))
        home.write_config("concurrency:\n  agent: 1\n")  # same limit, fresh mtime
        home.config.write_text(home.config.read_text().replace("agent: 1", "agent: [oops]"))
        await until(lambda: runner.core.config_error is not None, message="the bad edit seen")
        assert runner.config.concurrency["agent"].total == 1  # invalid file: old config kept
        home.write_config("concurrency:\n  agent: 2\n")
        await until(
            lambda: runner.store.get_workspace(b["workspace"]).state == "running",  # type: ignore[union-attr]
            message="second slot used after the limit was raised",
        )
        await runner.kill(KillRequest(all=True))
    assert processes_with_env("DISPATCH_RUNNER_WORKSPACE", a["workspace"]) == []


async def test_shim_dying_before_it_records_its_agent_leaves_no_second_agent(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent's pid was never recorded: recovery finds it by its environment and stops it
    before the retry starts, so one workspace never has two agents."""
    monkeypatch.setenv("DISPATCH_RUNNER_TEST_CRASH_AT", "shim-after-spawn")
    async with serving(home, "concurrency:\n  agent: 1\n") as runner:
        ws = await dispatch(runner, "@sleep=3", agent="agent", max_attempts=2)
        await until(
            lambda: runner.store.get_workspace(ws["workspace"]).attempts == 1,  # type: ignore[union-attr]
            message="the lost run counted",
        )
        monkeypatch.delenv("DISPATCH_RUNNER_TEST_CRASH_AT")
        [row] = await wait_all(runner, [ws["workspace"]], timeout=30)
    assert row["state"] == "completed"
    assert max_overlap(home.agent_log) == 1
    assert len([e for e in _log(home) if e["event"] == "start"]) == 2


async def test_a_kill_whose_killer_went_away_is_finished_by_recovery(home: Home) -> None:
    async with serving(home) as runner:
        ws = await dispatch(runner, "@sleep=60", agent="agent")
        await until(lambda: _logged(home, "sleep", ws["workspace"]), message="agent running")
        # the killer marks the run and dies before signalling it
        runner.store.plan_kill(workspaces=[ws["workspace"]], now=time.time())
        [row] = await wait_all(runner, [ws["workspace"]], timeout=20)
    assert row["state"] == "killed"
    assert processes_with_env("DISPATCH_RUNNER_WORKSPACE", ws["workspace"]) == []


async def test_test_output_mentioning_429_is_a_failure_not_a_rate_limit(home: Home) -> None:
    async with serving(home) as runner:
        ws = await dispatch(
            runner, "Ran 1429 tests in test_rate_limit.py: FAILED @exit=1", agent="agent", max_attempts=1
        )
        [row] = await wait_all(runner, [ws["workspace"]])
        backoff = runner.store.pool_state("agent").backoff_until
    assert row["state"] == "failed" and backoff is None
