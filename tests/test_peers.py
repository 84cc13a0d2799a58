"""Several peers on one store obey the same pacing, daily limits and queue (DESIGN §2)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dispatch_runner.actions import StatusRequest
from tests.conftest import Home, processes_with_env, until
from tests.test_runner import dispatch, serving, wait_all

pytestmark = pytest.mark.anyio


def cli(*args: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-m", "dispatch_runner.cli", *args, "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


async def test_daily_limit_counts_spawns_of_every_peer(home: Home) -> None:
    async with serving(home, "rates:\n  agent: {daily_limit: 2}\n") as runner:
        first = cli("dispatch", "from the cli", "--agent", "agent")
        assert first["status"] == "running"
        second = await dispatch(runner, "from the server", agent="agent")
        third = cli("dispatch", "one too many", "--agent", "agent")
        assert (second["status"], third["status"]) == ("running", "queued")
        await wait_all(runner, [str(first["workspace"]), second["workspace"]])
        status = await runner.status(StatusRequest())
    assert status["pools"]["agent"]["daily_used"] == 2 and status["pools"]["agent"]["queued"] == 1


async def test_pacing_counts_spawns_of_every_peer(home: Home) -> None:
    async with serving(home, "rates:\n  agent: {sustained_delay: 600}\n") as runner:
        first = cli("dispatch", "cli spawn", "--agent", "agent")
        second = await dispatch(runner, "server spawn", agent="agent")
        status = await runner.status(StatusRequest())
    assert first["status"] == "running" and second["status"] == "queued"
    assert second["eta_s"] > 500
    assert status["pools"]["agent"]["next_spawn_at"] is not None


async def test_a_completion_recorded_while_its_peer_is_dead_wakes_the_live_peer(home: Home) -> None:
    """Peer A (a CLI dispatch) is gone; its shim records the exit; live peer B drains the queue."""
    async with serving(home, "concurrency:\n  agent: 1\n") as runner:
        a = cli("dispatch", "@sleep=0.5 from a dead peer", "--agent", "agent")
        queued = await dispatch(runner, "next in line", agent="agent")
        assert queued["status"] == "queued"
        [row] = await wait_all(runner, [queued["workspace"]])
        assert row["state"] == "completed"
        assert isinstance(a["workspace"], str)
        first = await runner.status(StatusRequest(workspace=a["workspace"]))
    assert first["state"] == "completed"


async def test_serving_peer_leaves_no_zombie_or_orphan(home: Home) -> None:
    async with serving(home) as runner:
        ids = [(await dispatch(runner, f"@child {i}", agent="agent"))["workspace"] for i in range(5)]
        await wait_all(runner, ids)
        launched = set(runner.launcher.children)
        await until(lambda: runner.launcher.reap() <= 1, message="exited shims reaped")
        [forkserver] = runner.launcher.children  # the only child left: the fork server
        zombies = [z for pid in (*launched, forkserver) for z in _zombie_children(pid)]
        zombies += [(pid, "launched") for pid, _ in _zombie_children(os.getpid()) if pid in launched]
        assert zombies == []
    # agents' own children were killed with their process group when the agent exited
    await until(
        lambda: not any(processes_with_env("DISPATCH_RUNNER_WORKSPACE", ws) for ws in ids),
        message="no agent or agent child left",
    )


def _zombie_children(pid: int) -> list[tuple[int, str]]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_bytes()
            except OSError:
                continue
            fields = stat[stat.rfind(b")") + 2 :].split()
            if fields[0] == b"Z" and int(fields[1]) == pid:
                found.append((int(entry.name), stat[stat.find(b"(") + 1 : stat.rfind(b")")].decode()))
    return found
