"""Many sessions, one truth: 4 stdio peers on one store, random peers SIGKILLed and restarted
while 300 short agents run through a pool limited to 3 (DESIGN §2, §7; issue: several peers).

Asserted from the fake agents' own start/end log and the store: never more than 3 running at
any instant, every workspace completed exactly once, no agent started twice, nothing left."""

import os
import random
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.conftest import Home, processes_with_env, until
from tests.fakes.overlap import max_overlap, starts
from tests.mcp_helpers import connect, ok

pytestmark = [pytest.mark.anyio,
              pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")]

PEERS = 4
JOBS = 300
LIMIT = 3


def server_pids(label: str) -> list[int]:
    """The `serve` process of one peer generation (its shims carry the label too)."""
    pids = []
    for pid in processes_with_env("CHAOS_PEER", label):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in cmdline and b"dispatch_runner.cli" in cmdline:
            pids.append(pid)
    return pids


class Chaos:
    def __init__(self, home: Home, seed: int) -> None:
        self.home = home
        self.rng = random.Random(seed)
        self.pending = list(range(JOBS))
        self.dispatched: dict[int, str] = {}
        self.labels = [f"p{k}-0" for k in range(PEERS)]
        self.kills = 0
        self.done = anyio.Event()

    async def peer(self, k: int) -> None:
        generation = 0
        while not self.done.is_set():
            label = f"p{k}-{generation}"
            self.labels[k] = label
            try:
                async with connect(self.home.path, CHAOS_PEER=label) as (client, _):
                    await self._dispatch_loop(client)
                    await self.done.wait()
            except Exception:
                pass
            generation += 1

    async def _dispatch_loop(self, client: Any) -> None:
        while self.pending:
            job = self.pending.pop(0)
            try:
                result = ok(await client.call_tool("dispatch", {
                    "task": f"@sleep=0.05 job-{job}", "agent": "agent",
                    "idempotency_key": f"job-{job}"}))
            except BaseException:
                self.pending.append(job)  # unknown whether it landed: the key makes a retry safe
                raise
            self.dispatched[job] = result["workspace"]

    async def killer(self) -> None:
        deadline = time.monotonic() + 25
        while not self.done.is_set() and time.monotonic() < deadline:
            await anyio.sleep(self.rng.uniform(0.3, 0.9))  # the chaos schedule, not a wait on state
            for pid in server_pids(self.labels[self.rng.randrange(PEERS)]):
                os.kill(pid, signal.SIGKILL)
                self.kills += 1


def store_rows(home: Home) -> tuple[dict[str, str], dict[str, int]]:
    db = sqlite3.connect(home.path / "state.db")
    try:
        states = dict(db.execute("SELECT id, state FROM workspaces").fetchall())
        completed = dict(db.execute("SELECT workspace, count(*) FROM events WHERE type = "
                                    "'AgentCompleted' GROUP BY workspace").fetchall())
        return states, completed
    finally:
        db.close()


def diagnose(home: Home) -> str:
    db = sqlite3.connect(home.path / "state.db")
    try:
        states = db.execute("SELECT state, count(*) FROM workspaces GROUP BY state").fetchall()
        active = db.execute("SELECT r.id, r.workspace, r.phase, r.claimed_by, round(?-r.claimed_at, 1), "
                            "r.shim_pid, r.agent_pid, w.state FROM runs r JOIN workspaces w ON "
                            "w.id = r.workspace WHERE r.phase IN ('reserved', 'running')",
                            (time.time(),)).fetchall()
        queued = db.execute("SELECT id, round(not_before - ?, 1), runs FROM workspaces WHERE state = "
                            "'queued' LIMIT 5", (time.time(),)).fetchall()
        peers = db.execute("SELECT id, kind, round(? - heartbeat_at, 1) FROM peers", (time.time(),)).fetchall()
        return f"states={states} active={active} queued={queued} peers={peers}"
    finally:
        db.close()


async def test_four_killed_and_restarted_peers_keep_limits_and_lose_nothing(home: Home) -> None:
    home.write_config(f"concurrency:\n  agent: {LIMIT}\n")
    seed = int(os.environ.get("CHAOS_SEED", "0")) or random.randrange(1 << 30)
    chaos = Chaos(home, seed)
    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            for k in range(PEERS):
                tg.start_soon(chaos.peer, k)
            tg.start_soon(chaos.killer)
            await until(lambda: len(chaos.dispatched) == JOBS, timeout=60, interval=0.05,
                        message=f"all dispatches accepted (seed {seed})")

            def all_completed() -> bool:
                states, _ = store_rows(home)
                return len(states) == JOBS and all(s == "completed" for s in states.values())

            try:
                await until(all_completed, timeout=60, interval=0.1, message="every workspace completed")
            except AssertionError as exc:
                raise AssertionError(f"{exc} (seed {seed}); store: {diagnose(home)}") from None
            chaos.done.set()
    states, completed = store_rows(home)
    assert chaos.kills >= 3, f"the chaos schedule killed only {chaos.kills} peers (seed {seed})"
    assert sorted(states) == sorted(chaos.dispatched.values())
    assert set(states.values()) == {"completed"}
    assert completed == dict.fromkeys(states, 1), f"a workspace completed twice (seed {seed})"
    started = [s["ws"] for s in starts(home.agent_log)]
    assert sorted(started) == sorted(states), f"an agent started twice or never (seed {seed})"
    assert max_overlap(home.agent_log) <= LIMIT, f"limit exceeded (seed {seed})"
    await until(lambda: not any(processes_with_env("DISPATCH_RUNNER_WORKSPACE", ws) for ws in states),
                message="no agent process left")
