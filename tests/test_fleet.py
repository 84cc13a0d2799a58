"""A fleet on one store, with real processes: where a dispatch may run (refused only when no live
host can take it), a run's lease (renewed by its shim, expired = lost exactly once, a shim whose
lease was lost stops its agent), and a second host as a real `serve --transport http` peer with
its own home: it takes the work this host cannot run, in a directory of its own, serves that
run's log to this host, and carries out a kill asked for here."""

import os
import signal
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import anyio.to_thread
import psutil
import pytest

from dispatch_runner.actions import DispatchRequest, GcRequest, KillRequest, LogsRequest, StatusRequest
from dispatch_runner.config import load_config
from dispatch_runner.errors import AgentUnavailable, InvalidArgument
from dispatch_runner.launch import runfiles
from dispatch_runner.model import Outcome
from dispatch_runner.runner import Runner
from dispatch_runner.store import HostCaps, RunExit, Store, WorkspaceRow
from tests.conftest import BASE_CONFIG, PY, Home, kill_leftovers, until, wait_for
from tests.fakes import FAKE_AGENT, FAKE_CLAUDE, FAKE_CODEX
from tests.mcp_helpers import SERVE, free_port, listening
from tests.test_hosts import _enqueue, _running_elsewhere

pytestmark = pytest.mark.anyio
TOKEN = "fleet-token"
# on this host the `special` agent is not installed; host-b has it
SPECIAL_MISSING = "  special:\n    command: [/nonexistent/special-cli, '{prompt}']\n"
SPECIAL_HERE = f"  special:\n    command: [{PY}, {FAKE_AGENT}, '{{prompt}}']\n"


@pytest.fixture
def here(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("DISPATCH_RUNNER_HOST_ID", "host-a")
    monkeypatch.setenv("DISPATCH_RUNNER_TOKEN", TOKEN)
    return "host-a"


def _advertise(store: Store, peer: str, pools: set[str], labels: set[str] = set()) -> None:  # noqa: B006
    _, pid, start = peer.rsplit(":", 2)
    store.heartbeat_peer(
        peer,
        pid=int(pid),
        start=int(start),
        boot_id="elsewhere",
        kind="http",
        now=time.time(),
        can=HostCaps(pools=frozenset(pools), labels=frozenset(labels)),
    )


# ---- placement ---------------------------------------------------------------------------------


async def test_an_agent_missing_here_is_refused_only_when_no_live_host_has_it(home: Home, here: str) -> None:
    home.config.write_text(home.config.read_text() + SPECIAL_MISSING)
    runner = Runner(load_config(), kind="test")
    try:
        with pytest.raises(AgentUnavailable, match="'/nonexistent/special-cli' is not on PATH"):
            await runner.dispatch(DispatchRequest(task="x", agent="special"))
        _advertise(runner.store, "host-b:11:1", {"special"}, {"gpu"})
        ws = await runner.dispatch(DispatchRequest(task="x", agent="special"))
        row = runner.store.get_workspace(ws["workspace"])
        assert row is not None and row.host is None and row.state == "queued"  # host-b will take it
        assert ws["host"] is None  # not taken yet: any host with the agent may
        queued = [e for e in runner.store.events_after(0) if e.type == "AgentQueued"]
        assert queued[-1].data["remote"] is True  # host-b's peers are woken to claim it now
        with pytest.raises(
            InvalidArgument,
            match=r"no live host of the fleet can run agent 'special' with labels tpu; live hosts: host-a, this host \(agents: .*\); host-b \(agents: special; labels: gpu\)",
        ):
            await runner.dispatch(DispatchRequest(task="x", agent="special", requires=["tpu"]))
        with pytest.raises(InvalidArgument, match="cwd and repo name a path on this host"):
            await runner.dispatch(DispatchRequest(task="x", agent="agent", cwd=str(home.path), host="host-b"))
        with pytest.raises(InvalidArgument, match="host 'host-c' is not live or cannot run agent 'agent'"):
            await runner.dispatch(DispatchRequest(task="x", agent="agent", host="host-c"))
        pinned = await runner.dispatch(
            DispatchRequest(task="x", agent="special", requires=["gpu"], host="host-b")
        )
        assert pinned["host"] == "host-b"
        row = runner.store.get_workspace(pinned["workspace"])
        assert row is not None and (row.host, row.requires) == ("host-b", ("gpu",))
        with pytest.raises(InvalidArgument, match="not a host label"):
            await runner.dispatch(DispatchRequest(task="x", requires=["no spaces"]))
    finally:
        runner.close()


async def test_a_silent_host_no_longer_counts_as_live(home: Home, here: str) -> None:
    home.config.write_text(home.config.read_text() + SPECIAL_MISSING)
    runner = Runner(load_config(), kind="test")
    try:
        stale = time.time() - 3600  # it advertised the agent, an hour ago
        can = HostCaps(pools=frozenset({"special"}))
        runner.store.heartbeat_peer(
            "host-b:11:1", pid=11, start=1, boot_id="x", kind="http", now=stale, can=can
        )
        with pytest.raises(AgentUnavailable):
            await runner.dispatch(DispatchRequest(task="x", agent="special"))
    finally:
        runner.close()


# ---- leases ------------------------------------------------------------------------------------


async def test_an_expired_lease_makes_the_run_lost_exactly_once(home: Home, here: str, backend: str) -> None:
    """Two serving peers judge the same silent run of another host: once each has reached the
    store for a whole lease, one records it lost, and the run is retried (a new attempt); a run
    whose lease holds, or that has none (a shim from before leases), is left alone."""
    home.config.write_text(
        home.config.read_text().replace("kill_grace_s: 1\n", "kill_grace_s: 1\n  lease_s: 1\n")
    )
    peers = [Runner(load_config(), kind="test") for _ in range(2)]
    store = peers[0].store
    try:
        expired = _running_elsewhere(store, "ws-1130-000000-aaaaaa", home)
        holding = _running_elsewhere(store, "ws-1130-000000-bbbbbb", home)
        unleased = _running_elsewhere(store, "ws-1130-000000-cccccc", home)
        store.renew_lease(expired, until=time.time() - 60)
        store.renew_lease(holding, until=time.time() + 600)
        async with anyio.create_task_group() as tg:
            for peer in peers:
                await tg.start(peer.serve)
            await until(lambda: _phase(store, expired) == "exited", message="a peer to judge the lease")
            tg.cancel_scope.cancel()
        phases = [_phase(store, r) for r in (expired, holding, unleased)]
        assert phases == ["exited", "running", "running"]
        lost = [e for e in store.events_after(0) if e.type == "AgentLost"]
        assert [e.workspace for e in lost] == ["ws-1130-000000-aaaaaa"]
        assert "its lease on host host-z expired" in str(lost[0].data)
        assert sum(p.statistics().lost for p in peers) == 1
        ws = store.get_workspace("ws-1130-000000-aaaaaa")
        assert ws is not None and ws.attempts == 1 and ws.state in ("queued", "running")  # retried
    finally:
        for peer in peers:
            peer.close()


async def test_a_shim_renews_its_lease_and_stops_its_agent_once_the_run_was_lost_elsewhere(
    home: Home, here: str
) -> None:
    home.config.write_text(
        home.config.read_text().replace(
            "reservation_timeout_s: 5", "reservation_timeout_s: 5\n  lease_s: 1.5"
        )
    )
    runner = Runner(load_config(), kind="test")
    try:
        ws = await runner.dispatch(DispatchRequest(task="@sleep=60", agent="agent", max_attempts=1))
        row = await until(lambda: _started(runner.store, ws["workspace"]), message="the agent to start")
        assert row is not None and row.current_run is not None
        run = runner.store.get_run(row.current_run)
        assert run is not None and run.lease_until is not None
        first = run.lease_until
        await until(
            lambda: (runner.store.get_run(run.id).lease_until or 0) > first,  # type: ignore[union-attr]
            message="the shim to renew the lease",
        )
        agent = psutil.Process(run.agent_pid or _agent_pid(runner.store, run.id))
        # another host's peer judged the run lost (its lease looked expired from there)
        lost = RunExit(outcome=Outcome.LOST, exit_code=None, detail="lease expired, seen from host-z")
        assert runner.store.record_exit(run.id, lost, now=time.time(), rate=None) is not None
        await until(lambda: not _alive(agent), timeout=10, message="the shim to stop its agent")
        final = runner.store.get_workspace(ws["workspace"])
        assert final is not None and final.state == "lost"  # recorded once, by the judge
    finally:
        runner.close()


def _started(store: Store, ws_id: str) -> WorkspaceRow | None:
    row = store.get_workspace(ws_id)
    if row is None or row.current_run is None:
        return None
    run = store.get_run(row.current_run)
    return row if run is not None and run.agent_pid else None


def _phase(store: Store, run_id: int) -> str | None:
    run = store.get_run(run_id)
    return run.phase if run else None


def _agent_pid(store: Store, run_id: int) -> int:
    run = store.get_run(run_id)
    assert run is not None and run.agent_pid
    return run.agent_pid


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# ---- a second host -----------------------------------------------------------------------------


class OtherHost:
    """`serve --transport http` as host-b: its own home (workspace root, agents.yaml with the
    `special` agent this host lacks), this test's store, the fleet's token."""

    def __init__(self, root: Path, store_url: str, agent_log: Path) -> None:
        self.home = root / "home-b"
        self.home.mkdir()
        config = BASE_CONFIG.format(root=root, py=PY, claude=FAKE_CLAUDE, codex=FAKE_CODEX, agent=FAKE_AGENT)
        (self.home / "agents.yaml").write_text(config + SPECIAL_HERE)
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_RUNNER_")}
        env.update(
            DISPATCH_RUNNER_HOME=str(self.home),
            DISPATCH_RUNNER_HOST_ID="host-b",
            DISPATCH_RUNNER_STORE=store_url,
            DISPATCH_RUNNER_TOKEN=TOKEN,
            # bound to loopback: a peer advertises such an address only when told to
            DISPATCH_RUNNER_URL=f"http://127.0.0.1:{self.port}",
            FAKE_AGENT_LOG=str(agent_log),
        )
        self.log = open(root / "host-b.log", "w")  # closed in stop()
        self.proc = subprocess.Popen(
            [*SERVE, "--transport", "http", "--port", str(self.port)],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        wait_for(lambda: listening(self.port) or self.proc.poll() is not None, timeout=20, message="host-b")
        assert self.proc.poll() is None, (root / "host-b.log").read_text()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.log.close()
        kill_leftovers(self.home)


@pytest.fixture
def host_b(home: Home, here: str, backend: str) -> Iterator[OtherHost]:
    other = OtherHost(home.root, load_config().store_url, home.agent_log)
    yield other
    other.stop()


@pytest.fixture
async def runner_a(home: Home, host_b: OtherHost) -> AsyncIterator[Runner]:
    """This host's runner, without the `special` agent, once host-b advertised that it has it."""
    home.config.write_text(home.config.read_text() + SPECIAL_MISSING)
    runner = Runner(load_config(), kind="test")
    try:
        await until(lambda: _advertised(runner.store, "host-b", "special"), message="host-b to advertise")
        yield runner
    finally:
        runner.close()


async def test_work_this_host_cannot_run_runs_on_a_host_that_can(runner_a: Runner, host_b: OtherHost) -> None:
    runner = runner_a
    ws = await runner.dispatch(DispatchRequest(task="hello from a @sleep=0.2", agent="special"))
    done = await until(lambda: _finished(runner.store, ws["workspace"]), message="host-b to run it")
    assert done is not None
    assert done.state == "completed", done
    assert Path(done.path).parent == host_b.home / "workspaces"  # a directory of host-b's
    [run] = runner.store.runs_of(done.id)
    assert run.host == "host-b"
    # its log is on host-b; this host reads it through host-b's peer
    page = await runner.logs(LogsRequest(workspace=done.id))
    assert page["host"] == "host-b" and page["eof"] and any("hello from a" in line for line in page["lines"])
    url = f"http://127.0.0.1:{host_b.port}/runner/logs?workspace={done.id}"
    assert await anyio.to_thread.run_sync(_status_of, url) == 401  # the fleet's token is required
    status = await runner.status(StatusRequest(workspace=done.id))
    assert status["state"] == "completed"
    # named for host-b: made here, moved there and run with host-b's agent at its claim
    named = await runner.dispatch(DispatchRequest(task="@sleep=0.1", agent="special", host="host-b"))
    done = await until(lambda: _finished(runner.store, named["workspace"]), message="host-b to run it")
    assert done is not None and done.state == "completed" and done.dir_host == "host-b"
    assert Path(done.path).parent == host_b.home / "workspaces"


async def test_a_kill_of_a_run_on_another_host_lands_there(runner_a: Runner) -> None:
    runner = runner_a
    ws = await runner.dispatch(DispatchRequest(task="@sleep=60", agent="special"))
    await until(lambda: _started(runner.store, ws["workspace"]), message="host-b to start it")
    result = await runner.kill(KillRequest(workspace=ws["workspace"]))
    assert result["elsewhere"] == {ws["workspace"]: "host-b"}
    done = await until(lambda: _finished(runner.store, ws["workspace"]), message="host-b to kill it")
    assert done is not None
    assert done.state == "killed"


async def test_logs_of_a_host_without_a_reachable_peer_say_where_they_are(home: Home, here: str) -> None:
    runner = Runner(load_config(), kind="test")
    try:
        _running_elsewhere(runner.store, "ws-1130-000000-dddddd", home)
        page = await runner.logs(LogsRequest(workspace="ws-1130-000000-dddddd"))
        assert page["host"] == "host-z" and page["lines"] == []
        assert page["elsewhere"].startswith("this run's log is on host host-z, in ")
        assert "no live peer of host-z serves HTTP" in page["elsewhere"]
    finally:
        runner.close()


def _status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code


def _advertised(store: Store, host: str, pool: str) -> bool:
    return any(p["host"] == host and pool in (p["agents"] or ()) for p in store.peers())


def _finished(store: Store, ws_id: str) -> WorkspaceRow | None:
    row = store.get_workspace(ws_id)
    return row if row is not None and row.state not in ("queued", "running") else None


async def test_gc_leaves_another_hosts_workspaces_to_that_host(home: Home, here: str) -> None:
    runner = Runner(load_config(), kind="test")
    try:
        _enqueue(runner.store, "ws-1130-000000-eeeeee", time.time() - 60, home, host="host-z")
        _enqueue(runner.store, "ws-1130-000000-ffffff", time.time() - 60, home)  # any host, never ran
        runner.store.plan_kill(
            workspaces=["ws-1130-000000-eeeeee", "ws-1130-000000-ffffff"], now=time.time() - 1
        )
        report = await runner.gc(GcRequest(older_than_s=0))
        assert report["removed"] == ["ws-1130-000000-ffffff"] and report["elsewhere"] == 1
        assert runner.store.get_workspace("ws-1130-000000-eeeeee") is not None  # host-z collects it
    finally:
        runner.close()


async def test_a_peer_records_an_exit_its_live_shim_could_not(home: Home, here: str) -> None:
    """The agent ended and its shim wrote the exit file but cannot reach the store (stopped
    here): a peer of its host records the end from the file at its next tick, once."""
    runner = Runner(load_config(), kind="test")
    try:
        ws = await runner.dispatch(DispatchRequest(task="@sleep=60", agent="agent"))
        row = await until(lambda: _started(runner.store, ws["workspace"]), message="the agent to start")
        assert row is not None and row.current_run is not None
        run = runner.store.get_run(row.current_run)
        assert run is not None and run.shim_pid and run.agent_pid
        os.kill(run.shim_pid, signal.SIGSTOP)
        try:
            agent = psutil.Process(run.agent_pid)
            os.kill(run.agent_pid, signal.SIGKILL)
            await until(lambda: not _alive(agent), message="the agent to die")
            done = RunExit(outcome=Outcome.SUCCEEDED, exit_code=0, summary="done, says the exit file")
            runfiles.write_exit_file(Path(row.path), run.id, done, ended_at=time.time())
            await runner.recover()
            final = runner.store.get_workspace(ws["workspace"])
            assert final is not None and (final.state, final.summary) == (
                "completed",
                "done, says the exit file",
            )
        finally:
            os.kill(run.shim_pid, signal.SIGCONT)
        await until(lambda: not _alive(psutil.Process(run.shim_pid)), message="the shim to finish")
        completed = [e for e in runner.store.events_after(0) if e.type == "AgentCompleted"]
        assert len(completed) == 1
    finally:
        runner.close()


async def test_gc_removes_a_directory_left_behind_when_another_host_took_the_workspace(
    home: Home, here: str
) -> None:
    runner = Runner(load_config(), kind="test")
    try:
        await runner.stop()  # keep it queued here
        ws = await runner.dispatch(DispatchRequest(task="x", agent="agent"))
        left = Path(ws["path"])
        runner.store.relocate(
            ws["workspace"], path="/srv/host-b/ws", run_dir="/srv/host-b/ws/work", host="host-b"
        )  # taken
        report = await runner.gc(GcRequest())
        assert report["orphans"] == []  # young: a claim may be moving it right now
        old = time.time() - 2 * 3600
        os.utime(left, (old, old))
        report = await runner.gc(GcRequest())
        assert report["orphans"] == [str(left)] and not left.exists()
        assert runner.store.get_workspace(ws["workspace"]) is not None  # the workspace lives on
    finally:
        runner.close()


async def test_a_shim_cut_off_from_the_store_stops_its_agent_before_its_lease_ends(
    home: Home, here: str
) -> None:
    """The store stays out of reach (here: locked) past the shim's fence time: it stops its
    agent while its lease still holds, so no other host can start the task while it runs; once
    the store answers, the run ends lost (and is retried)."""
    home.config.write_text(
        home.config.read_text().replace("kill_grace_s: 1\n", "kill_grace_s: 1\n  lease_s: 3\n")
    )
    runner = Runner(load_config(), kind="test")
    try:
        ws = await runner.dispatch(DispatchRequest(task="@sleep=60", agent="agent", max_attempts=1))
        row = await until(lambda: _started(runner.store, ws["workspace"]), message="the agent to start")
        assert row is not None and row.current_run is not None
        run = runner.store.get_run(row.current_run)
        assert run is not None and run.agent_pid
        agent = psutil.Process(run.agent_pid)
        lock = sqlite3.connect(load_config().store_url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            lock.execute("BEGIN EXCLUSIVE")  # every renewal now waits, then fails
            await until(lambda: not _alive(agent), timeout=20, message="the shim to stop its agent")
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        final = await until(
            lambda: _finished(runner.store, ws["workspace"]), message="the end to be recorded"
        )
        assert final is not None and final.state == "lost"
        assert "lease could not be renewed" in (final.reason or "")
    finally:
        runner.close()
