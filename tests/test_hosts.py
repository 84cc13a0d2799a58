"""A fleet of hosts on one store: a run belongs to the host whose peer claimed it, and only that
host judges it by its processes. Another host's peer never takes its run for lost (a pid means
nothing there), gives back its reservations only when that host's peers fell silent, and kills
it by asking: the owning host's peer carries the kill out within a tick."""

import time

import pytest

from dispatch_runner.actions import DispatchRequest, KillRequest, StatusRequest
from dispatch_runner.config import load_config
from dispatch_runner.runner import Runner
from dispatch_runner.store import Limits, NewWorkspace, Store
from tests.conftest import Home

pytestmark = pytest.mark.anyio
REMOTE = "host-z:4242:1"  # a peer of another host (host ids come from DISPATCH_RUNNER_HOST_ID)
DEAD_PID = 2**22 + 12345  # above the default pid_max: no such process here


def _enqueue(store: Store, ws_id: str, now: float, home: Home, *, host: str | None = None) -> None:
    path = home.path / "workspaces" / ws_id
    store.enqueue(
        NewWorkspace(
            id=ws_id,
            pool="agent",
            model=None,
            agent="agent",
            task="t",
            prompt="t",
            template="none",
            priority=2,
            label=None,
            path=str(path),
            run_dir=str(path / "work"),
            cwd=None,
            repo=None,
            branch=None,
            idempotency_key=None,
            max_attempts=3,
            timeout_s=None,
            origin=None,
            parent=None,
            spec={"argv": [], "stdin": "none"},
            host=host,
        ),
        now=now,
        max_wait_s=None,
        limits=Limits(),
    )


def _running_elsewhere(store: Store, ws_id: str, home: Home, *, peer: str = REMOTE) -> int:
    """A run of `ws_id` claimed by `peer` and started there by a shim whose pid is not ours."""
    _enqueue(store, ws_id, time.time() - 60, home)
    claim = store.claim_next(now=time.time() - 30, limits=Limits(), peer=peer).claim
    assert claim is not None and claim.workspace.id == ws_id
    assert store.start_run(claim.run_id, shim_pid=DEAD_PID, shim_start=1, boot_id="other", now=time.time())
    return claim.run_id


@pytest.fixture
def here(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("DISPATCH_RUNNER_HOST_ID", "host-a")
    return "host-a"


async def test_another_hosts_run_is_never_taken_for_lost_here(home: Home, here: str) -> None:
    runner = Runner(load_config(), kind="test")
    try:
        theirs = _running_elsewhere(runner.store, "ws-1130-000000-aaaaaa", home)
        ours = _running_elsewhere(runner.store, "ws-1130-000000-bbbbbb", home, peer=f"{here}:4243:1")
        await runner.recover()
        assert runner.store.get_run(theirs).phase == "running"  # type: ignore[union-attr]
        assert runner.store.get_run(ours).phase == "exited"  # type: ignore[union-attr]
        assert runner.store.get_workspace("ws-1130-000000-bbbbbb").runs == 1  # type: ignore[union-attr]
        status = await runner.status(StatusRequest(workspace="ws-1130-000000-aaaaaa"))
        assert (status["host"], status["state"]) == ("host-z", "running")
    finally:
        runner.close()


async def test_a_reservation_of_a_host_whose_peers_fell_silent_goes_back(home: Home, here: str) -> None:
    runner = Runner(load_config(), kind="test")
    try:
        _enqueue(runner.store, "ws-1130-000000-cccccc", time.time() - 60, home)
        live = "host-y:77:1"
        runner.store.heartbeat_peer(live, pid=77, start=1, boot_id="b", kind="stdio", now=time.time())
        claim = runner.store.claim_next(now=time.time() - 3, limits=Limits(), peer=live).claim  # < 5 s
        assert claim is not None
        await runner.recover()  # its host's peer is alive: the claim stays
        assert runner.store.get_run(claim.run_id).phase == "reserved"  # type: ignore[union-attr]
        runner.store.heartbeat_peer(live, pid=77, start=1, boot_id="b", kind="stdio", now=time.time() - 600)
        await runner.recover()  # silent for ten minutes: given back, not an attempt
        assert runner.store.get_run(claim.run_id).phase == "abandoned"  # type: ignore[union-attr]
        row = runner.store.get_workspace("ws-1130-000000-cccccc")
        assert row is not None and (row.state, row.attempts) == ("queued", 0)
    finally:
        runner.close()


async def test_a_kill_of_another_hosts_run_is_asked_for_and_says_where(home: Home, here: str) -> None:
    runner = Runner(load_config(), kind="test")
    try:
        run_id = _running_elsewhere(runner.store, "ws-1130-000000-dddddd", home)
        started = time.monotonic()
        result = await runner.kill(KillRequest(workspace="ws-1130-000000-dddddd"))
        assert time.monotonic() - started < 2  # it asks; it does not wait out a grace period
        assert result == {
            "killed": ["ws-1130-000000-dddddd"],
            "cancelled": [],
            "elsewhere": {"ws-1130-000000-dddddd": "host-z"},
        }
        run = runner.store.get_run(run_id)
        assert run is not None and run.phase == "running" and run.kill_requested
    finally:
        runner.close()


async def test_a_workspace_runs_on_the_host_that_has_its_directory(home: Home, here: str) -> None:
    """A dispatch with a cwd (or repo) runs on its own host, where that path is: another host's
    peer steps over it, even when it is the only work queued, while the limits still count every
    host."""
    runner = Runner(load_config(), kind="test")
    try:
        ws = await runner.dispatch(DispatchRequest(task="x", agent="agent", cwd=str(home.path)))
        await runner.stop()  # keep it queued: this test claims by hand
        row = runner.store.get_workspace(ws["workspace"])
        assert row is not None and row.host == here
        _enqueue(runner.store, "ws-1130-000000-eeeeee", time.time() - 60, home, host="host-z")
        assert (await runner.status(StatusRequest(workspace="ws-1130-000000-eeeeee")))["host"] == "host-z"
        await runner.start()
        # host-a's own peer started its own workspace, never host-z's
        assert runner.store.get_workspace("ws-1130-000000-eeeeee").state == "queued"  # type: ignore[union-attr]
        stolen = runner.store.claim_next(now=None, limits=Limits(), peer="host-b:1:1").claim
        assert stolen is None  # host-b has neither directory
        claim = runner.store.claim_next(now=None, limits=Limits(), peer="host-z:1:1").claim
        assert claim is not None and claim.workspace.id == "ws-1130-000000-eeeeee"
    finally:
        runner.close()
