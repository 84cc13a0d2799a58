"""Many sessions, many hosts, one truth: 4 peers on one store (3 stdio servers and an HTTP daemon,
plus short-lived CLI dispatches) split over 3 host ids with a workspace root each, and a fourth
host that lacks the agent's executable; random peers and shims SIGKILLed (peers restarted) while
300 short agents (150 on PostgreSQL, whose peers and CLI commands start slower) run through a
pool limited to 3 (DESIGN §2, §7). On SQLite and on PostgreSQL.

Asserted from the fake agents' own start/end log and the store: never more than 3 running at
any instant across hosts, every workspace completed exactly once, an agent started again only
after its run was lost (its shim killed: recorded lost once, by its host's peer or, when its
lease expired first, by another host's), work spread over the hosts, none claimed by the host
without the agent, nothing left."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client.streamable_http import streamable_http_client

from dispatch_runner.config import load_config
from dispatch_runner.store import Limits, RunRow, open_store
from tests.conftest import PY, Home, processes_with_env, until
from tests.fakes import FAKE_AGENT
from tests.fakes.overlap import max_overlap, starts
from tests.mcp_helpers import SERVE, connect, free_port, listening, ok, session

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning"),
]

PEERS = 4
JOBS = {"sqlite": 300, "postgres": 150}
LIMIT = 3
HOSTS = ("host-0", "host-1", "host-2")  # peer k runs on HOSTS[k % 3]; host-0's home is the test's
LACKING = "host-x"  # serves, but its agents.yaml points the agent at a missing executable


def shim_pids(agent_log: Path) -> list[int]:
    """Live shims: started directly (`launch.shim`) or forked by a peer's fork server (whose argv
    they keep); the fork server itself is the child of a `serve` process, a shim is not."""
    pids = []
    for pid in processes_with_env("FAKE_AGENT_LOG", str(agent_log)):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            parent = Path(f"/proc/{ppid}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if b"launch.shim" in cmdline or (b"launch.forkserver" in cmdline and b"serve" not in parent):
            pids.append(pid)
    return pids


def host_home(home: Home, host: str) -> Path:
    """A host's own home: agents.yaml and workspace root (host-0 is the test's home)."""
    return home.path if host == HOSTS[0] else home.root / host


def make_hosts(home: Home) -> None:
    config = home.config.read_text()
    for host in HOSTS[1:]:
        host_home(home, host).mkdir()
        (host_home(home, host) / "agents.yaml").write_text(config)
    lacking = home.root / LACKING
    lacking.mkdir()
    (lacking / "agents.yaml").write_text(
        config.replace(f"command: [{PY}, {FAKE_AGENT},", "command: [/nonexistent/agent,")
    )


def host_env(home: Home, host: str, **extra: str) -> dict[str, str]:
    return {
        "DISPATCH_RUNNER_HOST_ID": host,
        "DISPATCH_RUNNER_HOME": str(host_home(home, host)) if host != LACKING else str(home.root / LACKING),
        "DISPATCH_RUNNER_STORE": load_config().store_url,
        **extra,
    }


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
    """Peers 0-2 are stdio servers, peer 3 an HTTP daemon; a CLI dispatcher takes jobs too."""

    def __init__(self, home: Home, seed: int, jobs: int) -> None:
        self.home = home
        self.rng = random.Random(seed)
        self.jobs = jobs
        # each kind of peer has its share, so every kind is exercised whatever the kill schedule
        self.pending: dict[str, list[int]] = {"cli": [], "http": [], "stdio": []}
        for job in range(jobs):
            # a CLI dispatch starts a Python and opens the store each time: one in twenty
            kind = "cli" if job % 20 == 0 else "http" if job % 10 < 4 else "stdio"
            self.pending[kind].append(job)
        self.dispatched: dict[int, str] = {}
        # labels name this test's peers among every process of the machine (another test may be
        # running its own chaos at the same time, under pytest-xdist)
        self.tag = home.root.name
        self.labels = [f"{self.tag}-p{k}-0" for k in range(PEERS)]
        self.kills = 0
        self.shim_kills = 0
        self.by_kind = {"stdio": 0, "http": 0, "cli": 0}
        self.errors: list[str] = []
        self.done = anyio.Event()

    async def peer(self, k: int) -> None:
        generation = 0
        while not self.done.is_set():
            label = f"{self.tag}-p{k}-{generation}"
            self.labels[k] = label
            env = host_env(self.home, HOSTS[k % len(HOSTS)], CHAOS_PEER=label)
            try:
                if k == PEERS - 1:
                    await self._http_peer(label, env)
                else:
                    async with connect(Path(env["DISPATCH_RUNNER_HOME"]), **env) as (client, _):
                        await self._dispatch_loop(client, "stdio")
                        await self._hold(client)
            except Exception as exc:  # the peer was SIGKILLed: start a new one
                self.errors.append(repr(exc)[:300])
            generation += 1

    async def _http_peer(self, label: str, host_env: dict[str, str]) -> None:
        port = free_port()
        env = {**os.environ, **host_env}
        with open(self.home.path / f"http-{label}.log", "w") as log:
            proc = await anyio.open_process(
                [*SERVE, "--transport", "http", "--port", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
            )
            try:
                await until(
                    lambda: listening(port) or proc.returncode is not None,
                    timeout=20,
                    message="the HTTP peer to listen",
                )
                async with session(streamable_http_client(f"http://127.0.0.1:{port}/mcp")) as (client, _):
                    await self._dispatch_loop(client, "http")
                    await self._hold(client)
            finally:
                if proc.returncode is None:
                    proc.terminate()
                await proc.wait()

    async def cli_peer(self) -> None:
        """Short-lived CLI peers dispatching now and then."""
        pending = self.pending["cli"]
        while pending and not self.done.is_set():
            job = pending.pop(0)
            out = await anyio.run_process(
                [
                    sys.executable,
                    "-m",
                    "dispatch_runner.cli",
                    "dispatch",
                    f"@sleep=0.05 job-{job}",
                    "--agent",
                    "agent",
                    "--idempotency-key",
                    f"job-{job}",
                    "--json",
                ],
                check=False,
            )
            if out.returncode != 0:
                pending.append(job)
                continue
            self.dispatched[job] = json.loads(out.stdout)["workspace"]
            self.by_kind["cli"] += 1
            await anyio.sleep(self.rng.uniform(0.05, 0.2))  # pacing of a person at a terminal

    async def _dispatch_loop(self, client: Any, kind: str) -> None:
        pending = self.pending[kind]
        while pending:
            job = pending.pop(0)
            try:
                result = ok(
                    await client.call_tool(
                        "dispatch",
                        {"task": f"@sleep=0.05 job-{job}", "agent": "agent", "idempotency_key": f"job-{job}"},
                    )
                )
            except BaseException:
                pending.append(job)  # unknown whether it landed: the key makes a retry safe
                raise
            self.dispatched[job] = result["workspace"]
            self.by_kind[kind] += 1

    async def _hold(self, client: Any) -> None:
        """Keep the session until the end. A session does not notice that its server died until
        its next request: ping, so a peer killed after its share of dispatches is restarted too."""
        while not self.done.is_set():
            await client.send_ping()
            with anyio.move_on_after(0.2):
                await self.done.wait()

    async def killer(self) -> None:
        deadline = time.monotonic() + 25
        rounds = 0
        while not self.done.is_set() and time.monotonic() < deadline:
            await anyio.sleep(self.rng.uniform(0.3, 0.9))  # the chaos schedule, not a wait on state
            rounds += 1
            # a shim now and then (every third round until one was hit): its run is given back or
            # lost (once) and retried
            if self.rng.random() < 0.25 or (self.shim_kills == 0 and rounds % 3 == 0):
                try:  # runs are short: catch one while it runs
                    shims = await until(lambda: shim_pids(self.home.agent_log), timeout=3, interval=0.01)
                except AssertionError:
                    shims = []
                if shims:
                    os.kill(self.rng.choice(shims), signal.SIGKILL)
                    self.shim_kills += 1
                    continue
            for pid in server_pids(self.labels[self.rng.randrange(PEERS)]):
                os.kill(pid, signal.SIGKILL)
                self.kills += 1

    async def lacking_host(self) -> None:
        """A peer of a host without the agent: it serves and advertises, and never claims."""
        env = {**os.environ, **host_env(self.home, LACKING, CHAOS_PEER=f"{self.tag}-lacking")}
        with open(self.home.path / "lacking.log", "w") as log:
            proc = await anyio.open_process(
                [*SERVE, "--transport", "http", "--port", str(free_port())],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
            )
            try:
                await self.done.wait()
            finally:
                proc.terminate()
                await proc.wait()


def _http_errors(home: Home) -> str:
    logs = sorted(home.path.glob("http-*.log"))
    return " | ".join(f"{p.name}: {p.read_text()[-300:]}" for p in logs[-2:])


def store_rows(jobs: int) -> tuple[dict[str, str], dict[str, int]]:
    """Each workspace's state, and how many times each completed (from the events)."""
    store = open_store(load_config().store_url)
    try:
        snap = store.snapshot(now=time.time(), limits=Limits(), limit=jobs + 10)
        states = {w["workspace"]: w["state"] for w in snap["workspaces"]}
        completed: dict[str, int] = {}
        cursor = 0
        while batch := store.events_after(cursor, 1000):
            cursor = batch[-1].id
            for e in batch:
                if e.type == "AgentCompleted" and e.workspace:
                    completed[e.workspace] = completed.get(e.workspace, 0) + 1
        return states, completed
    finally:
        store.close()


def store_runs(workspaces: list[str]) -> dict[str, list[RunRow]]:
    store = open_store(load_config().store_url)
    try:
        return {ws: store.runs_of(ws) for ws in workspaces}
    finally:
        store.close()


def diagnose(home: Home) -> str:
    """The store's state, plus the stacks of the live serving peers (SIGUSR1 -> faulthandler)."""
    servers = [
        pid
        for pid in processes_with_env("DISPATCH_RUNNER_HOME", str(home.path))
        if b"serve" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    for pid in servers:
        os.kill(pid, signal.SIGUSR1)
    time.sleep(1)  # let them write their stacks (diagnostics after a failure, not a wait on state)
    stacks = "\n".join(
        f"--- {p.name}\n{p.read_text()[-6000:]}"
        for p in sorted(home.path.glob("*.log"))
        if "Thread" in p.read_text()
    )
    store = open_store(load_config().store_url)
    try:
        now = time.time()
        counts = store.snapshot(now=now, limits=Limits(), limit=1)["counts"]
        active = [
            (r.id, r.workspace, r.phase, r.claimed_by, round(now - r.claimed_at, 1))
            for r in store.active_runs()
        ]
        peers = [(p["id"], p["kind"], round(now - p["heartbeat_at"], 1)) for p in store.peers()]
        return f"states={counts} active={active} peers={peers}\n{stacks}"
    finally:
        store.close()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, home: Home, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "postgres":
        monkeypatch.setenv("DISPATCH_RUNNER_STORE", request.getfixturevalue("pg_url"))
    return str(request.param)


async def test_four_killed_and_restarted_peers_keep_limits_and_lose_nothing(home: Home, backend: str) -> None:
    # short leases: a run whose shim was killed while no peer of its host ran is judged by another
    # host within seconds
    home.write_config(f"concurrency:\n  agent: {LIMIT}\n")
    home.config.write_text(
        home.config.read_text().replace("  kill_grace_s: 1\n", "  kill_grace_s: 1\n  lease_s: 2\n")
    )
    make_hosts(home)
    seed = int(os.environ.get("CHAOS_SEED", "0")) or random.randrange(1 << 30)
    jobs = JOBS[backend]
    chaos = Chaos(home, seed, jobs)
    with anyio.fail_after(180):
        async with anyio.create_task_group() as tg:
            for k in range(PEERS):
                tg.start_soon(chaos.peer, k)
            tg.start_soon(chaos.cli_peer)
            tg.start_soon(chaos.killer)
            tg.start_soon(chaos.lacking_host)
            await until(
                lambda: len(chaos.dispatched) == jobs,
                timeout=90,
                interval=0.05,
                message=lambda: (
                    f"all dispatches accepted (seed {seed}), left: "
                    f"{ {k: len(v) for k, v in chaos.pending.items()} }, done: {chaos.by_kind}, "
                    f"http logs: {_http_errors(home)}, errors: {chaos.errors[:3]}"
                ),
            )

            def all_completed() -> bool:
                states, _ = store_rows(jobs)
                return len(states) == jobs and all(s == "completed" for s in states.values())

            try:
                await until(all_completed, timeout=90, interval=0.1, message="every workspace completed")
            except AssertionError as exc:
                raise AssertionError(f"{exc} (seed {seed}); store: {diagnose(home)}") from None
            chaos.done.set()
    states, completed = store_rows(jobs)
    assert chaos.kills >= 3, f"the chaos schedule killed only {chaos.kills} peers (seed {seed})"
    assert chaos.shim_kills >= 1, f"the chaos schedule killed no shim (seed {seed})"
    assert all(chaos.by_kind.values()), f"every kind of peer dispatched: {chaos.by_kind}"
    assert sorted(states) == sorted(chaos.dispatched.values())
    assert set(states.values()) == {"completed"}
    assert completed == dict.fromkeys(states, 1), f"a workspace completed twice (seed {seed})"
    runs = store_runs(sorted(states))
    started = Counter(s["ws"] for s in starts(home.agent_log))
    assert set(started) == set(states), f"an agent never started (seed {seed})"
    for ws, n in started.items():  # again only after a run of it was lost (its shim killed)
        lost = sum(r.outcome == "lost" for r in runs[ws])
        assert n <= 1 + lost, f"{ws} started {n} times with {lost} lost runs (seed {seed})"
    assert max_overlap(home.agent_log) <= LIMIT, f"limit exceeded (seed {seed})"
    hosts = Counter(r.host for rs in runs.values() for r in rs)
    assert LACKING not in hosts, f"the host without the agent claimed work: {hosts}"
    assert len(hosts) >= 2, f"the work stayed on one host: {hosts} (seed {seed})"
    await until(
        lambda: not any(processes_with_env("DISPATCH_RUNNER_WORKSPACE", ws) for ws in states),
        message="no agent process left",
    )
