"""The dashboard's board on every backend: the queue in claim order with places and the ETA a
dispatch is told, later and held work apart, active runs, the latest ends with what they cost and
changed, and the runs of the timeline's window. Times are chosen by the test."""

import json
from dataclasses import replace

from dispatch_runner.model import Outcome, Priority
from dispatch_runner.policy import PoolLimit
from dispatch_runner.store import Limits, Store
from dispatch_runner.store.base import Usage
from tests.store.test_contract import T0, finish, must_claim, new_ws, start

LIMITS = Limits(concurrency={"claude": PoolLimit(total=1), "codex": PoolLimit(total=2)})


def put(store: Store, wid: str, agent: str = "claude", now: float = T0, **kw: object) -> None:
    store.enqueue(new_ws(wid, agent, **kw), now=now, max_wait_s=None, limits=LIMITS)  # type: ignore[arg-type]


def test_the_queue_is_in_claim_order_with_places_and_the_etas_a_dispatch_is_told(store: Store) -> None:
    put(store, "done", now=T0 - 100)  # one finished run of 40 s: what ETAs are estimated from
    first = must_claim(store, T0 - 100, LIMITS)
    assert start(store, first.run_id, T0 - 100)
    finish(store, first.run_id, T0 - 60)
    put(store, "busy", now=T0)
    busy = must_claim(store, T0, LIMITS)
    assert start(store, busy.run_id, T0)
    put(store, "low", now=T0 + 1, priority=Priority.LOW)
    put(store, "m1", now=T0 + 2)
    put(store, "m2", now=T0 + 3)
    put(store, "high", now=T0 + 4, priority=Priority.HIGH)
    put(store, "x1", "codex", now=T0 + 5)
    board = store.board(now=T0 + 10, since=T0 - 3600, limits=LIMITS)
    claude = [
        (q["workspace"], q["position"], q["priority"], q["eta_s"])
        for q in board["queue"]
        if q["pool"] == "claude"
    ]
    assert claude == [
        ("high", 1, "high", 40.0),
        ("m1", 2, "medium", 80.0),
        ("m2", 3, "medium", 120.0),
        ("low", 4, "low", 160.0),
    ]
    for wid, place, *_ in claude:  # the place the status and dispatch results tell
        assert store.queue_position(wid) == place
    [codex] = [q for q in board["queue"] if q["pool"] == "codex"]
    assert (codex["workspace"], codex["position"], codex["eta_s"]) == ("x1", 1, 0.0)  # a free slot
    [running] = board["running"]
    assert (running["workspace"], running["pool"], running["phase"], running["started_at"]) == (
        "busy",
        "claude",
        "running",
        T0,
    )


def test_later_and_held_work_is_apart_from_the_queue(store: Store) -> None:
    store.enqueue(replace(new_ws("later"), not_before=T0 + 600), now=T0, max_wait_s=None, limits=LIMITS)
    store.enqueue(replace(new_ws("held"), held="after"), now=T0, max_wait_s=None, limits=LIMITS)
    put(store, "now", now=T0)
    board = store.board(now=T0 + 1, since=T0 - 3600, limits=LIMITS)
    assert [q["workspace"] for q in board["queue"]] == ["now"]
    assert [(q["workspace"], q["held"], q["not_before"]) for q in board["later"]] == [
        ("later", False, T0 + 600),
        ("held", True, None),
    ]


def test_ends_and_the_timeline_carry_outcome_cost_and_the_window(store: Store) -> None:
    limits = Limits()
    for i, (outcome, at) in enumerate([(Outcome.SUCCEEDED, T0 - 4000), (Outcome.FAILED, T0 - 100)]):
        put(store, f"w{i}", now=at - 30, max_attempts=1)
        got = must_claim(store, at - 30, limits)
        assert start(store, got.run_id, at - 30)
        assert not store.record_agent(got.run_id, agent_pid=4242, agent_start=1, now=at - 30)  # no kill asked
        finish(
            store,
            got.run_id,
            at,
            outcome,
            exit_code=0 if outcome == Outcome.SUCCEEDED else 1,
            usage=Usage(input_tokens=100, output_tokens=20, cost_usd=0.5),
        )
    put(store, "live", now=T0 - 10)
    live = must_claim(store, T0 - 10, limits)
    assert start(store, live.run_id, T0 - 10)
    board = store.board(now=T0, since=T0 - 3600, limits=limits)
    # the run that ended before the window is not on the timeline; the active one is
    assert [(r["workspace"], r["outcome"], r["ended_at"]) for r in board["timeline"]] == [
        ("w1", "failed", T0 - 100),
        ("live", None, None),
    ]
    ended = {r["workspace"]: r for r in board["recent"]}
    assert ended["w1"]["state"] == "failed" and ended["w0"]["state"] == "completed"
    assert (ended["w1"]["duration_s"], ended["w1"]["cost_usd"], ended["w1"]["tokens"]) == (30.0, 0.5, 120)
    assert [r["workspace"] for r in board["recent"]] == ["w1", "w0"]  # newest first


def test_a_workspaces_events_newest_first(store: Store) -> None:
    put(store, "w", now=T0)
    got = must_claim(store, T0, Limits())
    assert start(store, got.run_id, T0 + 1)
    finish(store, got.run_id, T0 + 2)
    assert [e["type"] for e in store.workspace_events("w")] == [
        "AgentCompleted",
        "AgentStarted",
        "AgentQueued",
    ]
    assert store.workspace_events("nobody") == []


def test_a_lease_renewal_carries_the_runs_progress_to_the_board(store: Store) -> None:
    put(store, "w", now=T0)
    got = must_claim(store, T0, Limits())
    assert start(
        store,
        got.run_id,
        T0,
    )
    [row] = store.board(now=T0, since=T0 - 3600, limits=Limits())["running"]
    assert row["live"] is None  # nothing sent yet
    sent = {"last_line": "turn 3", "tokens": 45, "cost_usd": None, "at": T0 + 20}
    assert store.renew_lease(got.run_id, until=T0 + 80, live=sent).held
    assert store.renew_lease(got.run_id, until=T0 + 100).held  # a renewal with nothing new keeps it
    [row] = store.board(now=T0 + 21, since=T0 - 3600, limits=Limits())["running"]
    assert json.loads(row["live"]) == sent
