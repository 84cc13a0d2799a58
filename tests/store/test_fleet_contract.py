"""The fleet's part of the store contract, on both backends: a claim takes only what the claiming
host can run (its agents, its labels, workspaces pinned to it), a run's lease is renewed while
it runs and lost once it was ended elsewhere, and peers advertise what their host offers."""

from dataclasses import replace

from dispatch_runner.model import Outcome
from dispatch_runner.store import HostCaps, Limits, RunExit, Store
from tests.store.test_contract import new_ws

T0 = 1_750_000_000.0
CLAUDE_HERE = HostCaps(pools=frozenset({"claude"}), labels=frozenset())


def claim(store: Store, peer: str, can: HostCaps | None, now: float = T0 + 10) -> str | None:
    got = store.claim_next(now=now, limits=Limits(), peer=peer, can=can).claim
    return got.workspace.id if got else None


def test_a_claim_steps_over_work_that_needs_labels_the_host_lacks(store: Store) -> None:
    store.enqueue(replace(new_ws("needs-gpu"), requires=("gpu",)), now=T0, max_wait_s=None, limits=Limits())
    store.enqueue(new_ws("plain"), now=T0 + 1, max_wait_s=None, limits=Limits())
    assert claim(store, "laptop:1:1", CLAUDE_HERE) == "plain"  # the older one needs a gpu
    assert claim(store, "laptop:1:1", CLAUDE_HERE) is None
    assert claim(store, "legacy:1:1", None) is None  # a peer that advertises nothing has no labels
    gpu = HostCaps(pools=frozenset({"claude"}), labels=frozenset({"gpu", "repo:shop"}))
    assert claim(store, "gpu-box:1:1", gpu) == "needs-gpu"
    row = store.get_workspace("needs-gpu")
    assert row is not None and row.requires == ("gpu",)


def test_a_host_without_the_agent_takes_only_work_pinned_to_it(store: Store) -> None:
    store.enqueue(new_ws("anywhere", "codex"), now=T0, max_wait_s=None, limits=Limits())
    store.enqueue(
        replace(new_ws("pinned", "codex"), host="laptop"), now=T0 + 1, max_wait_s=None, limits=Limits()
    )
    # laptop has no codex: it leaves the free one to a host that has, but takes its own (which
    # then fails there with the reason, rather than wait for a host that can never come)
    assert claim(store, "laptop:1:1", CLAUDE_HERE) == "pinned"
    assert claim(store, "laptop:1:1", CLAUDE_HERE) is None
    assert claim(store, "ci:1:1", HostCaps(pools=frozenset({"codex"}))) == "anywhere"


def test_a_lane_whose_first_page_does_not_fit_is_read_on(store: Store) -> None:
    for i in range(40):  # more than a page of the lane's head needs another host
        ws = replace(new_ws(f"elsewhere-{i:02}"), host="other")
        store.enqueue(ws, now=T0 + i / 100, max_wait_s=None, limits=Limits())
    store.enqueue(new_ws("mine"), now=T0 + 1, max_wait_s=None, limits=Limits())
    store.enqueue(
        replace(new_ws("needs-gpu"), requires=("gpu",)), now=T0 + 2, max_wait_s=None, limits=Limits()
    )
    assert claim(store, "laptop:1:1", CLAUDE_HERE) == "mine"


def test_a_lease_is_renewed_while_the_run_runs_and_lost_once_it_ended_elsewhere(store: Store) -> None:
    store.enqueue(new_ws("w"), now=T0, max_wait_s=None, limits=Limits())
    got = store.claim_next(now=T0, limits=Limits(), peer="box:1:1", can=CLAUDE_HERE).claim
    assert got is not None
    assert store.start_run(got.run_id, shim_pid=1, shim_start=1, boot_id="b", now=T0, lease_until=T0 + 30)
    assert store.get_run(got.run_id).lease_until == T0 + 30  # type: ignore[union-attr]
    lease = store.renew_lease(got.run_id, until=T0 + 40)
    assert (lease.held, lease.kill_requested) == (True, False)
    assert store.get_run(got.run_id).lease_until == T0 + 40  # type: ignore[union-attr]
    store.plan_kill(workspaces=["w"], now=T0 + 1)  # a kill asked from another host
    assert store.renew_lease(got.run_id, until=T0 + 50).kill_requested
    lost = RunExit(outcome=Outcome.LOST, exit_code=None, detail="lease expired")
    assert store.record_exit(got.run_id, lost, now=T0 + 90, rate=None) is not None
    assert not store.renew_lease(got.run_id, until=T0 + 120).held  # its shim must stop the agent
    assert store.record_exit(got.run_id, lost, now=T0 + 91, rate=None) is None  # once


def test_peers_advertise_their_host_agents_labels_and_endpoint(store: Store) -> None:
    can = HostCaps(pools=frozenset({"codex", "claude"}), labels=frozenset({"gpu"}))
    store.heartbeat_peer(
        "gpu-box:7:9", pid=7, start=9, boot_id="b", kind="serve", now=T0, can=can, url="http://gpu-box:8765"
    )
    store.heartbeat_peer("cli-peer:8:9", pid=8, start=9, boot_id="b", kind="cli", now=T0)
    peers = {p["id"]: p for p in store.peers()}
    box = peers["gpu-box:7:9"]
    assert (box["host"], box["agents"], box["labels"], box["url"]) == (
        "gpu-box",
        ["claude", "codex"],
        ["gpu"],
        "http://gpu-box:8765",
    )
    assert (peers["cli-peer:8:9"]["agents"], peers["cli-peer:8:9"]["labels"]) == (None, [])


def test_a_workspace_moves_to_the_directory_its_claiming_host_made(store: Store) -> None:
    store.enqueue(new_ws("w"), now=T0, max_wait_s=None, limits=Limits())
    before = store.get_workspace("w")
    store.relocate("w", path="/b/ws/w", run_dir="/b/ws/w/work", host="b")
    after = store.get_workspace("w")
    assert before is not None and after is not None
    assert (after.path, after.run_dir, after.dir_host, after.rev) == (
        "/b/ws/w",
        "/b/ws/w/work",
        "b",
        before.rev + 1,
    )


def test_a_judges_exit_loses_to_a_renewal_that_came_after_it_read_the_lease(store: Store) -> None:
    store.enqueue(new_ws("w"), now=T0, max_wait_s=None, limits=Limits())
    got = store.claim_next(now=T0, limits=Limits(), peer="box:1:1", can=CLAUDE_HERE).claim
    assert got is not None
    store.start_run(got.run_id, shim_pid=1, shim_start=1, boot_id="b", now=T0, lease_until=T0 + 30)
    lost = RunExit(outcome=Outcome.LOST, exit_code=None, detail="lease expired")
    store.renew_lease(got.run_id, until=T0 + 100)  # the shim renewed after the judge looked
    assert store.record_exit(got.run_id, lost, now=T0 + 40, rate=None, lease_ended_by=T0 + 35) is None
    assert store.get_run(got.run_id).phase == "running"  # type: ignore[union-attr]
    assert store.record_exit(got.run_id, lost, now=T0 + 110, rate=None, lease_ended_by=T0 + 105) is not None
