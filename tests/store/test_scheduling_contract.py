"""Routing and scheduling in the claim, on every backend: preference lists, adaptive limits
(AIMD), fair share, age promotion and preemption. Times are chosen by the test (DESIGN §8)."""

from dataclasses import replace
from typing import Any

import pytest

from dispatch_runner.adaptive import Aimd
from dispatch_runner.errors import QueueBusy
from dispatch_runner.model import Outcome, Priority
from dispatch_runner.policy import PoolLimit
from dispatch_runner.store import Limits, NewWorkspace, RouteEntry, Store
from tests.store.conftest import Backend
from tests.store.test_contract import T0, claim, events_since, finish, must_claim, new_ws, start, types, ws


def routed(wid: str, *agents: str, **kw: Any) -> NewWorkspace:
    """A workspace with a preference list: its pool and agent are the first entry's."""
    route = tuple(RouteEntry(a, a.split(":")[0], None, {"argv": [a], "output": "text"}) for a in agents)
    return replace(new_ws(wid, agents[0], **kw), route=route)


def put(store: Store, ws_: NewWorkspace, limits: Limits, now: float = T0) -> None:
    store.enqueue(ws_, now=now, max_wait_s=None, limits=limits)


def occupy(store: Store, wid: str, agent: str, limits: Limits, now: float = T0, **kw: Any) -> int:
    """A running run of `agent` (started at `now`); its run id."""
    put(store, new_ws(wid, agent, **kw), limits, now)
    got = must_claim(store, now, limits)
    assert got.workspace.id == wid
    assert start(store, got.run_id, now)
    return got.run_id


# ---- preference lists ---------------------------------------------------------------------------


def test_a_routed_claim_takes_the_first_entry_with_room_and_says_why(store: Store) -> None:
    limits = Limits(concurrency={"claude": PoolLimit(total=1)})
    occupy(store, "busy", "claude", limits)
    cursor = store.last_event_id()
    put(store, routed("r1", "claude", "codex", "gemini"), limits)
    got = must_claim(store, T0 + 1, limits)
    assert got.workspace.id == "r1"
    row = ws(store, "r1")
    assert (row.pool, row.agent, row.spec["argv"]) == ("codex", "codex", ["codex"])
    assert row.routed == {"agent": "codex", "skipped": {"claude": "full"}}
    routed_event = [e for e in events_since(store, cursor) if e.type == "AgentRouted"]
    assert routed_event[0].data["from"] == "claude" and routed_event[0].data["agent"] == "codex"


def test_a_routed_claim_keeps_the_first_entry_while_it_has_room(store: Store) -> None:
    limits = Limits(concurrency={"claude": PoolLimit(total=2)})
    put(store, routed("r1", "claude", "codex"), limits)
    must_claim(store, T0, limits)
    row = ws(store, "r1")
    assert row.agent == "claude" and row.routed == {"agent": "claude", "skipped": {}}


def test_a_rate_limited_routed_run_moves_to_the_next_entry_past_the_backoff(store: Store) -> None:
    limits = Limits()
    put(store, routed("r1", "claude", "codex"), limits)
    first = must_claim(store, T0, limits)
    assert first.workspace.agent == "claude"
    start(store, first.run_id, T0)
    after = finish(store, first.run_id, T0 + 5, Outcome.RATE_LIMITED, exit_code=1, retry_at=T0 + 600)
    assert after is not None and after.state == "queued" and after.attempts == 0
    second = must_claim(store, T0 + 6, limits)
    row = ws(store, "r1")
    assert second.workspace.id == "r1" and row.agent == "codex"
    assert row.routed is not None and row.routed["skipped"]["claude"].startswith("backoff until")


def test_a_routed_workspace_waits_when_every_entry_is_closed_and_takes_the_first_to_open(
    store: Store,
) -> None:
    limits = Limits(concurrency={"claude": PoolLimit(total=1), "codex": PoolLimit(total=1)})
    occupy(store, "a", "claude", limits)
    codex_run = occupy(store, "b", "codex", limits)
    put(store, routed("r1", "claude", "codex"), limits)
    assert claim(store, T0 + 1, limits) is None
    finish(store, codex_run, T0 + 2)
    assert must_claim(store, T0 + 3, limits).workspace.id == "r1"
    assert ws(store, "r1").agent == "codex"


def test_a_routed_dispatch_is_told_the_eta_of_its_soonest_entry_and_refused_only_if_none_fits(
    store: Store,
) -> None:
    limits = Limits(concurrency={"claude": PoolLimit(total=1), "codex": PoolLimit(total=1)})
    occupy(store, "busy", "claude", limits)
    got = store.enqueue(routed("r1", "claude", "codex"), now=T0, max_wait_s=5, limits=limits)
    assert (got.position, got.eta_s) == (0, 0.0)  # codex has a free slot
    assert must_claim(store, T0, limits).workspace.agent == "codex"  # now both pools are full
    with pytest.raises(QueueBusy, match="claude"):  # the first entry's reason
        store.enqueue(routed("r2", "claude", "codex"), now=T0, max_wait_s=5, limits=limits)
    assert store.get_workspace("r2") is None


def test_a_preempted_routed_run_resumes_on_its_own_agent_not_the_next_entry(store: Store) -> None:
    limits = Limits(concurrency={"claude": PoolLimit(total=1)}, preempt_after_s={"claude": 0})
    resumable = routed("r1", "claude", "codex", priority=Priority.LOW)
    entry = replace(resumable.route[0], spec={"argv": ["claude"], "resume_argv": ["claude", "--resume"]})
    put(store, replace(resumable, route=(entry, resumable.route[1]), spec=entry.spec), limits)
    run = must_claim(store, T0, limits).run_id
    start(store, run, T0)
    put(store, new_ws("urgent", priority=Priority.CRITICAL), limits, T0 + 1)
    assert store.claim_next(now=T0 + 2, limits=limits, peer="p").preempt is not None
    back = finish(store, run, T0 + 3, Outcome.FAILED, exit_code=143, session_id="claude-session")
    assert back is not None and back.state == "queued" and back.next_input is not None
    assert must_claim(store, T0 + 4, limits).workspace.id == "urgent"
    assert claim(store, T0 + 5, limits) is None  # codex has room, but its CLI cannot resume that
    assert ws(store, "r1").agent == "claude"


def test_held_and_later_work_is_not_counted_ahead_of_a_new_dispatch(store: Store) -> None:
    limits = Limits(concurrency={"claude": PoolLimit(total=1)})
    for i in range(3):
        put(store, replace(new_ws(f"later{i}"), not_before=T0 + 86_400), limits)
    got = store.enqueue(new_ws("now"), now=T0, max_wait_s=5, limits=limits)
    assert (got.position, got.eta_s) == (0, 0.0)
    assert must_claim(store, T0, limits).workspace.id == "now"


# ---- adaptive limits ----------------------------------------------------------------------------


def adaptive_run(store: Store, wid: str, limits: Limits, now: float, outcome: Outcome) -> None:
    put(store, new_ws(wid, "claude"), limits, now)
    got = must_claim(store, now, limits)
    start(store, got.run_id, now)
    store.record_exit(
        got.run_id,
        _exit(outcome),
        now=now + 1,
        rate=None,
        adaptive={"claude": (limits.adaptive["claude"], 4)},
    )


def _exit(outcome: Outcome) -> Any:
    from dispatch_runner.store import RunExit

    code = 0 if outcome is Outcome.SUCCEEDED else 1
    return RunExit(outcome=outcome, exit_code=code, retry_at=T0 if outcome is Outcome.RATE_LIMITED else None)


def running_cap(store: Store, limits: Limits, now: float) -> int:
    """How many fresh claude workspaces one claim round starts now (then they are killed)."""
    for i in range(6):
        put(store, new_ws(f"cap-{now}-{i}", "claude"), limits, now)
    taken = 0
    while (got := claim(store, now, limits)) is not None:
        taken += 1
        start(store, got.run_id, now)
    plan = store.plan_kill(everything=True, now=now)
    for run in plan.to_signal:
        finish(store, run.id, now, Outcome.KILLED, exit_code=None)
    return taken


def test_an_adaptive_limit_halves_on_rate_limits_regrows_after_clean_runs_and_persists(
    backend: Backend,
) -> None:
    store = backend.open()
    limits = Limits(
        concurrency={"claude": PoolLimit(total=4)}, adaptive={"claude": Aimd(floor=1, clean_streak=2)}
    )
    cursor = store.last_event_id()
    adaptive_run(store, "rl1", limits, T0, Outcome.RATE_LIMITED)
    pool = store.snapshot(now=T0 + 2, limits=limits)["pools"]["claude"]
    assert pool["effective_limit"] == 2 and pool["adaptive"] is True
    adaptive_run(store, "rl2", limits, T0 + 10_000, Outcome.RATE_LIMITED)
    adaptive_run(store, "rl3", limits, T0 + 20_000, Outcome.RATE_LIMITED)  # never under the floor
    changes = [e.data["limit"] for e in events_since(store, cursor) if e.type == "PoolLimitChanged"]
    assert changes == [2, 1]
    reopened = backend.open()  # every peer, and a restart, reads the same limit
    assert running_cap(reopened, limits, T0 + 30_000) == 1
    adaptive_run(reopened, "ok1", limits, T0 + 30_001, Outcome.SUCCEEDED)
    adaptive_run(reopened, "ok2", limits, T0 + 30_002, Outcome.SUCCEEDED)
    assert running_cap(store, limits, T0 + 30_003) == 2
    failed = [e.data for e in events_since(store, cursor) if e.type == "PoolLimitChanged"][-1]
    assert failed == {"pool": "claude", "limit": 2, "was": 1, "configured": 4}


def test_a_burst_of_rate_limited_runs_halves_the_adaptive_limit_once(store: Store) -> None:
    aimd = Aimd(floor=1, clean_streak=2)
    limits = Limits(concurrency={"claude": PoolLimit(total=8)}, adaptive={"claude": aimd})
    runs = []
    for i in range(3):
        put(store, new_ws(f"b{i}"), limits)
        runs.append(must_claim(store, T0, limits).run_id)
        start(store, runs[-1], T0)
    for i, run in enumerate(runs):  # all three hit the provider's limit together
        store.record_exit(
            run, _exit(Outcome.RATE_LIMITED), now=T0 + 1 + i, rate=None, adaptive={"claude": (aimd, 8)}
        )
    assert store.snapshot(now=T0 + 5, limits=limits)["pools"]["claude"]["effective_limit"] == 4


def test_a_models_own_adaptive_limit_shrinks_only_that_model(store: Store) -> None:
    aimd = Aimd(floor=1, clean_streak=1)
    limits = Limits(
        concurrency={"codex": PoolLimit(total=6, models={"gpt-5.4": 4})}, adaptive={"codex:gpt-5.4": aimd}
    )
    put(store, new_ws("m1", "codex:gpt-5.4"), limits)
    run = must_claim(store, T0, limits).run_id
    start(store, run, T0)
    moves = {"codex:gpt-5.4": (aimd, 4)}
    store.record_exit(run, _exit(Outcome.RATE_LIMITED), now=T0 + 1, rate=None, adaptive=moves)
    pool = store.snapshot(now=T0 + 2, limits=limits)["pools"]["codex"]
    assert pool["models"]["gpt-5.4"]["effective_limit"] == 2 and pool["effective_limit"] == 6
    assert set(store.snapshot(now=T0 + 2, limits=limits)["pools"]) == {"codex"}  # no pool "codex:gpt-5.4"
    for i in range(4):
        put(store, new_ws(f"m{i + 2}", "codex:gpt-5.4"), limits, T0 + 100)
        put(store, new_ws(f"d{i}", "codex"), limits, T0 + 100)
    taken = [c.workspace.id for _ in range(8) if (c := claim(store, T0 + 100, limits)) is not None]
    assert sum(t.startswith("m") for t in taken) == 2  # the model's 2 (of 4 configured)
    assert len(taken) == 6  # the pool's other lane still fills the pool's 6


# ---- fair share and promotion -------------------------------------------------------------------


def order(store: Store, limits: Limits, now: float) -> list[str]:
    out = []
    while (got := claim(store, now, limits)) is not None:
        out.append(got.workspace.id)
    return out


def test_fair_share_interleaves_two_senders_within_a_priority(store: Store) -> None:
    limits = Limits()
    for i in range(4):
        put(store, replace(new_ws(f"a{i}"), share_key="A"), limits, T0 + i)
    put(store, replace(new_ws("b0"), share_key="B"), limits, T0 + 10)
    put(store, replace(new_ws("b1"), share_key="B"), limits, T0 + 11)
    put(store, replace(new_ws("hot", priority=Priority.HIGH), share_key="A"), limits, T0 + 12)
    assert order(store, limits, T0 + 20) == ["hot", "a0", "b0", "a1", "b1", "a2", "a3"]


def test_a_running_task_counts_as_its_senders_turn(store: Store) -> None:
    limits = Limits(concurrency={"claude": PoolLimit(total=1)})
    put(store, replace(new_ws("a0"), share_key="A"), limits, T0)
    start(store, must_claim(store, T0, limits).run_id, T0)
    for i in (1, 2):
        put(store, replace(new_ws(f"a{i}"), share_key="A"), limits, T0 + i)
    put(store, replace(new_ws("b0"), share_key="B"), limits, T0 + 5)
    assert order(store, Limits(), T0 + 10) == ["b0", "a1", "a2"]


def test_without_fair_share_the_queue_is_oldest_first(store: Store) -> None:
    limits = Limits(fair_share=False)
    for i in range(3):
        put(store, replace(new_ws(f"a{i}"), share_key="A"), limits, T0 + i)
    put(store, replace(new_ws("b0"), share_key="B"), limits, T0 + 10)
    assert order(store, limits, T0 + 20) == ["a0", "a1", "a2", "b0"]


def test_work_queued_past_promote_after_moves_up_one_level_but_never_to_critical(store: Store) -> None:
    limits = Limits(concurrency={"claude": PoolLimit(total=1)}, promote_after_s=100)
    occupy(store, "busy", "claude", limits)
    put(store, new_ws("old-low", priority=Priority.LOW), limits, T0)
    put(store, new_ws("high", priority=Priority.HIGH), limits, T0 + 1)
    put(store, new_ws("new-medium"), limits, T0 + 150)
    cursor = store.last_event_id()
    assert claim(store, T0 + 160, limits) is None  # full: the promotion happens all the same
    assert ws(store, "old-low").priority == Priority.MEDIUM and ws(store, "high").priority == Priority.HIGH
    assert types(events_since(store, cursor)) == ["AgentPromoted"]
    claim(store, T0 + 300, limits)  # promoted again: to high, still not critical
    assert ws(store, "old-low").priority == Priority.HIGH
    claim(store, T0 + 1000, limits)
    assert ws(store, "old-low").priority == Priority.HIGH


# ---- preemption ---------------------------------------------------------------------------------


def test_a_critical_dispatch_preempts_the_lowest_priority_run_that_ran_long_enough(store: Store) -> None:
    limits = Limits(concurrency={"claude": PoolLimit(total=2)}, preempt_after_s={"claude": 30})
    occupy(store, "medium", "claude", limits, T0)
    low_run = occupy(store, "low", "claude", limits, T0 + 5, priority=Priority.LOW)
    put(store, new_ws("urgent", priority=Priority.CRITICAL), limits, T0 + 10)
    early = store.claim_next(now=T0 + 20, limits=limits, peer="p")
    assert early.claim is None and early.preempt is None  # min_runtime_s not reached yet
    due = store.claim_next(now=T0 + 40, limits=limits, peer="p")
    assert due.claim is None and due.preempt is not None and due.preempt.id == low_run
    again = store.claim_next(now=T0 + 41, limits=limits, peer="p")
    assert again.preempt is None  # one victim at a time: the first has not stopped yet
    cursor = store.last_event_id()
    after = finish(store, low_run, T0 + 42, Outcome.FAILED, exit_code=143)
    assert after is not None and after.state == "queued" and after.attempts == 0
    assert after.ended_reason == "preempted"
    assert "AgentPreempted" in types(events_since(store, cursor))
    assert must_claim(store, T0 + 43, limits).workspace.id == "urgent"
    assert claim(store, T0 + 44, limits) is None  # never more than the limit


def test_a_preempted_run_that_ends_well_anyway_is_completed(store: Store) -> None:
    limits = Limits(concurrency={"claude": PoolLimit(total=1)}, preempt_after_s={"claude": 0})
    low_run = occupy(store, "low", "claude", limits, T0, priority=Priority.LOW)
    put(store, new_ws("urgent", priority=Priority.CRITICAL), limits, T0 + 1)
    assert store.claim_next(now=T0 + 2, limits=limits, peer="p").preempt is not None
    done = finish(store, low_run, T0 + 3)  # it finished before the signal took effect
    assert done is not None and (done.state, done.ended_reason) == ("completed", None)


def test_a_critical_dispatch_routed_to_a_free_entry_preempts_nothing(store: Store) -> None:
    limits = Limits(concurrency={"claude": PoolLimit(total=1)}, preempt_after_s={"claude": 0})
    occupy(store, "low", "claude", limits, T0, priority=Priority.LOW)
    put(store, routed("urgent", "claude", "codex", priority=Priority.CRITICAL), limits, T0 + 1)
    result = store.claim_next(now=T0 + 2, limits=limits, peer="p")
    assert result.claim is not None and result.claim.workspace.agent == "codex"
    assert result.preempt is None


def test_when_a_model_limit_binds_only_a_run_of_that_model_is_preempted(store: Store) -> None:
    limits = Limits(
        concurrency={"codex": PoolLimit(total=2, models={"gpt-5.4": 1})}, preempt_after_s={"codex": 0}
    )
    occupy(store, "other-model", "codex", limits, T0, priority=Priority.LOW)
    same = occupy(store, "same-model", "codex:gpt-5.4", limits, T0, priority=Priority.MEDIUM)
    put(store, new_ws("urgent", "codex:gpt-5.4", priority=Priority.CRITICAL), limits, T0 + 1)
    victim = store.claim_next(now=T0 + 2, limits=limits, peer="p").preempt
    assert victim is not None and victim.id == same  # not the lower one: it frees no gpt-5.4 slot


def test_no_preemption_without_the_pool_allowing_it_or_of_a_non_preemptible_run(store: Store) -> None:
    limits = Limits(concurrency={"claude": PoolLimit(total=1)})
    put(store, replace(new_ws("pinned", priority=Priority.LOW), preemptible=False), limits, T0)
    start(store, must_claim(store, T0, limits).run_id, T0)
    put(store, new_ws("urgent", priority=Priority.CRITICAL), limits, T0 + 1)
    assert store.claim_next(now=T0 + 100, limits=limits, peer="p").preempt is None
    allowing = replace(limits, preempt_after_s={"claude": 0.0})
    assert store.claim_next(now=T0 + 200, limits=allowing, peer="p").preempt is None
