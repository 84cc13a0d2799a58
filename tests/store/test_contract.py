"""The Store contract: one suite, every backend (STYLE §6, DESIGN §2-3, §5).

Backend-neutral: only the Store protocol and `open_store(url)` are used, so adding a backend is
one more `backend` param. Times are epoch seconds chosen by the test; nothing reads a clock.
"""

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import time as clock
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from dispatch_runner.errors import QueueBusy, StoreError
from dispatch_runner.events import Event
from dispatch_runner.model import AgentRef, Outcome, Priority
from dispatch_runner.policy import PoolLimit, PoolState, RateConfig, day_key, iso, to_dt
from dispatch_runner.store import (
    Claim,
    EnqueueResult,
    Limits,
    NewWorkspace,
    RunExit,
    RunRow,
    Store,
    WorkspaceRow,
)
from tests.store.conftest import Backend

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z
NEXT_RESET = T0 + 22 * 3600  # 2027-01-16T06:00:00Z, the next 06:00 UTC reset after T0
NO_LIMITS = Limits()


# ---- helpers ----------------------------------------------------------------------------------


def new_ws(
    wid: str,
    agent: str = "claude",
    *,
    priority: Priority = Priority.MEDIUM,
    key: str | None = None,
    max_attempts: int = 3,
    label: str | None = None,
    origin: str | None = None,
) -> NewWorkspace:
    ref = AgentRef.parse(agent)
    return NewWorkspace(
        id=wid,
        pool=ref.pool,
        model=ref.model,
        agent=agent,
        task=f"task {wid}",
        prompt=f"prompt {wid}",
        template="none",
        priority=int(priority),
        label=label,
        path=f"/ws/{wid}",
        run_dir=f"/ws/{wid}/run",
        cwd=None,
        repo=None,
        branch=None,
        idempotency_key=key,
        max_attempts=max_attempts,
        timeout_s=None,
        origin=origin,
        parent=None,
        spec={"argv": ["true"], "output": "text"},
    )


def enqueue(
    store: Store,
    wid: str,
    agent: str = "claude",
    *,
    now: float = T0,
    limits: Limits = NO_LIMITS,
    max_wait_s: float | None = None,
    **kw: Any,
) -> EnqueueResult:
    return store.enqueue(new_ws(wid, agent, **kw), now=now, max_wait_s=max_wait_s, limits=limits)


def claim(store: Store, now: float = T0, limits: Limits = NO_LIMITS, peer: str = "peer-a") -> Claim | None:
    return store.claim_next(now=now, limits=limits, peer=peer).claim


def must_claim(store: Store, now: float = T0, limits: Limits = NO_LIMITS) -> Claim:
    got = claim(store, now, limits)
    assert got is not None
    return got


def claim_ids(store: Store, now: float, limits: Limits = NO_LIMITS) -> list[str]:
    """Claim until nothing is claimable at `now`; the workspace ids in claim order."""
    ids = []
    while (got := claim(store, now, limits)) is not None:
        ids.append(got.workspace.id)
    return ids


def start(store: Store, run_id: int, now: float = T0) -> bool:
    return store.start_run(run_id, shim_pid=4242, shim_start=99, boot_id="boot-1", now=now)


def finish(
    store: Store,
    run_id: int,
    now: float,
    outcome: Outcome = Outcome.SUCCEEDED,
    *,
    exit_code: int | None = 0,
    rate: RateConfig | None = None,
    **kw: Any,
) -> WorkspaceRow | None:
    return store.record_exit(run_id, RunExit(outcome=outcome, exit_code=exit_code, **kw), now=now, rate=rate)


def ws(store: Store, wid: str) -> WorkspaceRow:
    row = store.get_workspace(wid)
    assert row is not None
    return row


def events_since(store: Store, cursor: int) -> list[Event]:
    return store.events_after(cursor)


def types(events: Sequence[Event]) -> list[str]:
    return [e.type for e in events]


def limited(**totals: int | PoolLimit) -> Limits:
    return Limits(
        concurrency={p: v if isinstance(v, PoolLimit) else PoolLimit(total=v) for p, v in totals.items()}
    )


# ---- the gate: order and capacity -------------------------------------------------------------


def test_claims_run_priority_first_then_oldest(store: Store) -> None:
    enqueue(store, "low", now=T0, priority=Priority.LOW)
    enqueue(store, "med-old", now=T0 + 1)
    enqueue(store, "crit-new", "codex", now=T0 + 3, priority=Priority.CRITICAL)
    enqueue(store, "crit-old", now=T0 + 2, priority=Priority.CRITICAL)
    enqueue(store, "high", "gemini", now=T0 + 4, priority=Priority.HIGH)
    enqueue(store, "med-new", now=T0 + 5)
    enqueue(store, "med-same-time", now=T0 + 5)
    assert claim_ids(store, T0 + 10) == [
        "crit-old",
        "crit-new",
        "high",
        "med-old",
        "med-new",
        "med-same-time",
        "low",
    ]


def test_a_claim_moves_the_workspace_to_running_with_a_reserved_run(store: Store) -> None:
    enqueue(store, "a", "codex:gpt-5.4", now=T0, label="lbl", origin="session-1")
    got = must_claim(store, T0 + 1)
    row = got.workspace
    assert (row.id, row.pool, row.model, row.agent, row.state) == (
        "a",
        "codex",
        "gpt-5.4",
        "codex:gpt-5.4",
        "running",
    )
    # started_at is the agent's start: none yet for a reservation
    assert (row.runs, row.attempts, row.current_run, row.started_at) == (1, 0, got.run_id, None)
    assert (row.label, row.origin, row.max_attempts, dict(row.spec)) == (
        "lbl",
        "session-1",
        3,
        {"argv": ["true"], "output": "text"},
    )
    assert store.active_runs() == [
        RunRow(
            id=got.run_id,
            workspace="a",
            pool="codex",
            attempt=1,
            phase="reserved",
            claimed_by="peer-a",
            claimed_at=T0 + 1,
            shim_pid=None,
            shim_start=None,
            agent_pid=None,
            agent_start=None,
            boot_id=None,
            started_at=None,
            ended_at=None,
            kill_requested=False,
            host="peer-a",  # the claiming peer's host: a peer id is host:pid:start
        )
    ]


def test_a_saturated_model_at_the_head_does_not_block_other_models_or_pools(store: Store) -> None:
    limits = limited(codex=PoolLimit(total=5, models={"gpt-5.4": 1}), claude=1)
    enqueue(store, "spark-1", "codex:gpt-5.4", now=T0)
    enqueue(store, "spark-2", "codex:gpt-5.4", now=T0 + 1)  # head of the queue once spark-1 runs
    enqueue(store, "claude-1", "claude", now=T0 + 2)
    enqueue(store, "claude-2", "claude", now=T0 + 3)  # behind a saturated pool
    enqueue(store, "o3", "codex:o3", now=T0 + 4)
    enqueue(store, "gemini", "gemini", now=T0 + 5)
    assert claim_ids(store, T0 + 10, limits) == ["spark-1", "claude-1", "o3", "gemini"]
    assert ws(store, "spark-2").state == "queued"
    assert ws(store, "claude-2").state == "queued"
    result = store.claim_next(now=T0 + 10, limits=limits, peer="peer-a")
    assert (result.claim, result.wake_at) == (None, None)  # a slot frees on an exit, not a time


def test_pool_total_limit_counts_reservations(store: Store) -> None:
    limits = limited(claude=2)
    for n in range(4):
        enqueue(store, f"w{n}", now=T0 + n)
    first, second = must_claim(store, T0 + 5, limits), must_claim(store, T0 + 5, limits)
    assert [r.phase for r in store.active_runs()] == ["reserved", "reserved"]
    assert claim(store, T0 + 5, limits) is None  # neither reservation has started: still counted
    assert start(store, first.run_id, T0 + 6)
    assert claim(store, T0 + 6, limits) is None
    store.return_reservation(second.run_id, now=T0 + 7)
    assert must_claim(store, T0 + 7, limits).workspace.id == "w1"
    assert claim(store, T0 + 7, limits) is None
    finish(store, first.run_id, T0 + 8)
    assert must_claim(store, T0 + 8, limits).workspace.id == "w2"


def test_limits_are_read_at_each_claim(store: Store) -> None:
    for n in range(3):
        enqueue(store, f"w{n}", now=T0 + n)
    assert claim_ids(store, T0 + 5, limited(claude=1)) == ["w0"]
    assert claim_ids(store, T0 + 5, limited(claude=2)) == ["w1"]
    assert claim_ids(store, T0 + 5, limited(claude=0)) == ["w2"]  # <= 0 is unlimited


def test_frozen_store_claims_nothing_but_enqueue_still_works(store: Store) -> None:
    enqueue(store, "before", now=T0)
    cursor = store.last_event_id()
    assert store.set_frozen(True, now=T0 + 1) is True
    assert store.set_frozen(True, now=T0 + 2) is True
    assert store.is_frozen()
    result = enqueue(store, "during", now=T0 + 3)
    assert (result.workspace.state, result.deduplicated) == ("queued", False)
    got = store.claim_next(now=T0 + 4, limits=NO_LIMITS, peer="peer-a")
    assert (got.claim, got.wake_at) == (None, None)
    assert store.snapshot(now=T0 + 4, limits=NO_LIMITS)["frozen"] is True
    assert store.set_frozen(False, now=T0 + 5) is False
    assert not store.is_frozen()
    assert claim_ids(store, T0 + 6) == ["before", "during"]
    assert types(events_since(store, cursor))[:3] == ["QueueFrozen", "AgentQueued", "QueueUnfrozen"]


# ---- the gate: time (pacing, daily limit, backoff, retries) -----------------------------------


@pytest.mark.parametrize(
    ("rate", "wake_after_s"),
    [
        (RateConfig(min_delay=10, sustained_delay=120), 120),
        (RateConfig(min_delay=30, sustained_delay=5), 30),
    ],
)
def test_pacing_returns_wake_at_and_no_claim_without_blocking_other_pools(
    store: Store, rate: RateConfig, wake_after_s: float
) -> None:
    limits = Limits(rates={"gemini": rate})
    enqueue(store, "g1", "gemini", now=T0)
    enqueue(store, "g2", "gemini", now=T0 + 1)
    enqueue(store, "c1", "claude", now=T0 + 2)
    assert must_claim(store, T0 + 10, limits).workspace.id == "g1"
    paced = store.claim_next(now=T0 + 11, limits=limits, peer="peer-a")
    assert paced.claim is not None and paced.claim.workspace.id == "c1"
    assert paced.wake_at == T0 + 10 + wake_after_s
    idle = store.claim_next(now=T0 + 12, limits=limits, peer="peer-a")
    assert (idle.claim, idle.wake_at) == (None, T0 + 10 + wake_after_s)
    assert claim(store, T0 + 10 + wake_after_s - 0.5, limits) is None
    assert must_claim(store, T0 + 10 + wake_after_s, limits).workspace.id == "g2"
    assert store.pool_state("gemini").last_spawn == T0 + 10 + wake_after_s


def test_daily_limit_closes_the_pool_until_the_next_reset(store: Store) -> None:
    rate = RateConfig(reset_utc=clock(6, 0), daily_limit=2)
    limits = Limits(rates={"claude": rate})
    for n in range(4):
        enqueue(store, f"w{n}", now=T0 + n)
    assert claim_ids(store, T0 + 10, limits) == ["w0", "w1"]
    result = store.claim_next(now=T0 + 11, limits=limits, peer="peer-a")
    assert (result.claim, result.wake_at) == (None, NEXT_RESET)
    assert claim(store, NEXT_RESET - 1, limits) is None
    assert must_claim(store, NEXT_RESET, limits).workspace.id == "w2"
    state = store.pool_state("claude")
    assert (state.daily_count, state.daily_day) == (1, day_key(rate, to_dt(NEXT_RESET)))


def test_rate_limited_exit_requeues_without_an_attempt_and_backs_off_the_pool(
    backend: Backend, store: Store
) -> None:
    enqueue(store, "a", now=T0)
    enqueue(store, "b", now=T0 + 1)
    first = must_claim(store, T0 + 2)
    assert start(store, first.run_id, T0 + 2)
    cursor = store.last_event_id()
    row = finish(store, first.run_id, T0 + 5, Outcome.RATE_LIMITED, exit_code=1, detail="usage limit")
    assert row is not None
    assert (row.state, row.attempts, row.runs, row.reason, row.not_before) == (
        "queued",
        0,
        1,
        "usage limit",
        T0 + 5,
    )
    fresh = events_since(store, cursor)
    assert sorted(types(fresh)) == ["AgentRetrying", "PoolBackoff"]
    (backoff,) = [e for e in fresh if e.type == "PoolBackoff"]
    assert backoff.workspace == "a"
    assert (backoff.data["pool"], backoff.data["until"], backoff.data["fail_count"]) == (
        "claude",
        T0 + 65,
        1,
    )  # no retry time, no rates: 60 s
    result = store.claim_next(now=T0 + 6, limits=NO_LIMITS, peer="peer-a")
    assert (result.claim, result.wake_at) == (None, T0 + 65)
    snap = store.snapshot(now=T0 + 6, limits=NO_LIMITS)["pools"]["claude"]
    assert snap["backoff_until"] == snap["next_spawn_at"] == iso(T0 + 65)

    backend.close(store)
    reopened = backend.open()
    state = reopened.pool_state("claude")
    assert (state.backoff_until, state.fail_count) == (T0 + 65, 1)
    assert claim(reopened, T0 + 64) is None
    again = must_claim(reopened, T0 + 65)
    assert (again.workspace.id, again.workspace.runs, again.workspace.attempts) == ("a", 2, 0)


def test_rate_limit_backoff_honours_a_provider_retry_time_and_the_daily_reset(store: Store) -> None:
    enqueue(store, "a", "claude", now=T0)
    enqueue(store, "g", "gemini", now=T0)
    run_a = must_claim(store, T0).run_id
    run_g = must_claim(store, T0).run_id
    finish(store, run_a, T0 + 1, Outcome.RATE_LIMITED, retry_at=T0 + 500)
    finish(store, run_g, T0 + 1, Outcome.RATE_LIMITED, rate=RateConfig(reset_utc=clock(6, 0)))
    assert store.pool_state("claude").backoff_until == T0 + 500
    assert store.pool_state("gemini").backoff_until == NEXT_RESET


def test_consecutive_rate_limits_double_the_backoff_and_a_success_resets_the_count(store: Store) -> None:
    enqueue(store, "a", now=T0)
    finish(store, must_claim(store, T0).run_id, T0 + 1, Outcome.RATE_LIMITED)
    assert store.pool_state("claude").backoff_until == T0 + 61
    finish(store, must_claim(store, T0 + 61).run_id, T0 + 62, Outcome.RATE_LIMITED)
    assert (store.pool_state("claude").backoff_until, store.pool_state("claude").fail_count) == (
        T0 + 62 + 120,
        2,
    )
    finish(store, must_claim(store, T0 + 182).run_id, T0 + 190)
    assert store.pool_state("claude").fail_count == 0
    assert ws(store, "a").state == "completed"


def test_failed_exits_retry_after_5_then_10_s_then_dead_letter(store: Store) -> None:
    enqueue(store, "a", now=T0, max_attempts=3)
    run1 = must_claim(store, T0).run_id
    row = finish(store, run1, T0 + 1, Outcome.FAILED, exit_code=1)
    assert row is not None
    assert (row.state, row.attempts, row.not_before, row.exit_code, row.ended_at) == (
        "queued",
        1,
        T0 + 6,
        1,
        None,
    )
    result = store.claim_next(now=T0 + 5.5, limits=NO_LIMITS, peer="peer-a")
    assert (result.claim, result.wake_at) == (None, T0 + 6)

    run2 = must_claim(store, T0 + 6)
    second = store.get_run(run2.run_id)
    assert second is not None and (run2.workspace.runs, second.attempt) == (2, 2)
    row = finish(store, run2.run_id, T0 + 7, Outcome.FAILED, exit_code=1)
    assert row is not None
    assert (row.state, row.attempts, row.not_before) == ("queued", 2, T0 + 17)
    assert claim(store, T0 + 16.9) is None

    run3 = must_claim(store, T0 + 17).run_id
    cursor = store.last_event_id()
    row = finish(store, run3, T0 + 18, Outcome.FAILED, exit_code=1)
    assert row is not None
    assert (row.state, row.reason, row.attempts, row.ended_at, row.exit_code) == (
        "failed",
        "max retries exceeded",
        3,
        T0 + 18,
        1,
    )
    fresh = events_since(store, cursor)
    assert sorted(types(fresh)) == ["AgentFailed", "TaskDeadLettered"]
    (dead,) = [e for e in fresh if e.type == "TaskDeadLettered"]
    assert (dead.workspace, dead.at, dead.data["reason"]) == ("a", T0 + 18, "max retries exceeded")
    assert claim(store, T0 + 100) is None
    assert not store.has_work()


@pytest.mark.parametrize(("outcome", "final"), [(Outcome.LOST, "lost"), (Outcome.TIMED_OUT, "failed")])
def test_lost_and_timed_out_runs_retry_like_failures(store: Store, outcome: Outcome, final: str) -> None:
    enqueue(store, "a", now=T0, max_attempts=2)
    row = finish(store, must_claim(store, T0).run_id, T0 + 1, outcome, exit_code=None)
    assert row is not None
    assert (row.state, row.attempts, row.not_before) == ("queued", 1, T0 + 6)
    cursor = store.last_event_id()
    row = finish(store, must_claim(store, T0 + 6).run_id, T0 + 7, outcome, exit_code=None)
    assert row is not None
    assert (row.state, row.reason, row.attempts) == (final, "max retries exceeded", 2)
    assert "TaskDeadLettered" in types(events_since(store, cursor))


# ---- runs: compare-and-set --------------------------------------------------------------------


def test_run_lifecycle_is_recorded(store: Store) -> None:
    enqueue(store, "a", now=T0)
    run = must_claim(store, T0).run_id
    assert start(store, run, T0 + 1)
    store.record_agent(run, agent_pid=5151, agent_start=77, now=T0 + 1)
    got = store.get_run(run)
    assert got is not None
    assert (
        got.phase,
        got.shim_pid,
        got.shim_start,
        got.boot_id,
        got.agent_pid,
        got.agent_start,
        got.started_at,
    ) == ("running", 4242, 99, "boot-1", 5151, 77, T0 + 1)
    row = finish(store, run, T0 + 12, summary="did it", session_id="sess-1")
    assert row is not None
    assert (row.state, row.exit_code, row.summary, row.session_id, row.ended_at, row.reason) == (
        "completed",
        0,
        "did it",
        "sess-1",
        T0 + 12,
        None,
    )
    ended = store.get_run(run)
    assert ended is not None and (ended.phase, ended.ended_at) == ("exited", T0 + 12)
    assert store.active_runs() == []
    assert store.recent_runtimes("claude") == [11.0]
    assert store.get_run(run + 1000) is None


def test_record_exit_is_compare_and_set(store: Store) -> None:
    enqueue(store, "a", now=T0)
    run = must_claim(store, T0).run_id
    assert start(store, run, T0)
    first = finish(store, run, T0 + 3)
    assert first is not None and first.state == "completed"
    cursor = store.last_event_id()
    for outcome in Outcome:
        assert finish(store, run, T0 + 4, outcome, exit_code=9) is None
    assert store.last_event_id() == cursor
    assert (ws(store, "a").state, ws(store, "a").exit_code, ws(store, "a").ended_at) == (
        "completed",
        0,
        T0 + 3,
    )


@pytest.mark.parametrize("outcome", list(Outcome))
def test_kill_requested_turns_any_outcome_into_killed(store: Store, outcome: Outcome) -> None:
    enqueue(store, "a", now=T0)
    run = must_claim(store, T0).run_id
    assert start(store, run, T0)
    plan = store.plan_kill(workspaces=["a"], now=T0 + 1)
    assert plan.cancelled == []
    assert [(r.id, r.kill_requested) for r in plan.to_signal] == [(run, True)]
    cursor = store.last_event_id()
    row = finish(store, run, T0 + 2, outcome, exit_code=-15)
    assert row is not None
    assert (row.state, row.reason, row.attempts) == ("killed", "killed on request", 0)
    assert "AgentKilled" in types(events_since(store, cursor))
    assert store.pool_state("claude").backoff_until is None


def test_start_run_fails_after_the_reservation_was_returned(store: Store) -> None:
    enqueue(store, "a", now=T0)
    run = must_claim(store, T0).run_id
    row = store.return_reservation(run, now=T0 + 30)
    assert row is not None
    assert (row.state, row.runs, row.current_run) == ("queued", 0, None)
    assert store.return_reservation(run, now=T0 + 31) is None
    assert not start(store, run, T0 + 32)  # the shim came late: it must not spawn
    assert finish(store, run, T0 + 33) is None
    again = must_claim(store, T0 + 34)
    assert again.run_id != run
    assert (again.workspace.runs, again.workspace.attempts) == (1, 0)
    assert start(store, again.run_id, T0 + 35)
    assert not start(store, again.run_id, T0 + 36)  # started once only
    assert store.return_reservation(again.run_id, now=T0 + 37) is None  # running: not a reservation


def test_a_reservation_killed_before_it_started_never_starts(store: Store) -> None:
    enqueue(store, "a", now=T0)
    run = must_claim(store, T0).run_id
    store.plan_kill(workspaces=["a"], now=T0 + 1)
    assert not start(store, run, T0 + 2)


def test_plan_kill_cancels_queued_workspaces_and_marks_running_ones(store: Store) -> None:
    enqueue(store, "run", "claude", now=T0)
    run = must_claim(store, T0).run_id
    enqueue(store, "q1", "claude", now=T0 + 1)
    enqueue(store, "q2", "codex:o3", now=T0 + 2)
    enqueue(store, "q3", "gemini", now=T0 + 3)
    plan = store.plan_kill(agent="codex", now=T0 + 4)
    assert ([r.id for r in plan.cancelled], plan.to_signal) == (["q2"], [])
    assert (ws(store, "q2").state, ws(store, "q2").reason, ws(store, "q2").ended_at) == (
        "cancelled",
        "cancelled on request",
        T0 + 4,
    )
    plan = store.plan_kill(everything=True, now=T0 + 5)
    assert sorted(r.id for r in plan.cancelled) == ["q1", "q3"]
    assert [r.id for r in plan.to_signal] == [run]
    assert store.plan_kill(workspaces=["q1", "nope"], now=T0 + 6).cancelled == []


# ---- enqueue: idempotency, positions, max_wait ------------------------------------------------


def test_idempotency_key_is_unique(store: Store) -> None:
    first = enqueue(store, "a", now=T0, key="k-1")
    cursor = store.last_event_id()
    second = enqueue(store, "b", now=T0 + 1, key="k-1")
    assert (first.deduplicated, second.deduplicated) == (False, True)
    assert second.workspace.id == "a"
    assert store.get_workspace("b") is None
    assert store.last_event_id() == cursor
    found = store.find_by_idempotency_key("k-1")
    assert found is not None and found.id == "a"
    assert store.find_by_idempotency_key("k-2") is None
    # still deduplicated once the first one finished
    finish(store, must_claim(store, T0 + 2).run_id, T0 + 3)
    third = enqueue(store, "c", now=T0 + 4, key="k-1")
    assert (third.deduplicated, third.workspace.id, third.workspace.state) == (True, "a", "completed")


def test_queue_position_counts_priority_then_age_within_the_pool(store: Store) -> None:
    enqueue(store, "a", now=T0)
    enqueue(store, "b", now=T0 + 1, priority=Priority.HIGH)
    enqueue(store, "c", now=T0 + 2)
    enqueue(store, "d", "codex", now=T0 + 3)
    assert [store.queue_position(w) for w in "abcd"] == [2, 1, 3, 1]
    assert must_claim(store, T0 + 4).workspace.id == "b"
    assert [store.queue_position(w) for w in "abcd"] == [1, 0, 2, 1]
    assert store.queue_position("nope") == 0


def test_max_wait_refusal_raises_queue_busy_with_eta_and_writes_nothing(store: Store) -> None:
    limits = limited(claude=1)
    first = enqueue(store, "a", now=T0, limits=limits)
    assert (first.position, first.eta_s) == (0, 0.0)  # a free slot: no wait
    must_claim(store, T0, limits)
    cursor = store.last_event_id()
    with pytest.raises(QueueBusy) as info:
        enqueue(store, "b", now=T0 + 1, limits=limits, max_wait_s=0.5, key="k-b")
    busy = info.value
    # no run of the pool has finished: the wait is unknown, so no bound can be promised
    assert (busy.pool, busy.eta_s, busy.max_wait_s, busy.position) == ("claude", None, 0.5, 1)
    assert "nothing was queued" in str(busy)
    assert store.last_event_id() == cursor
    assert store.get_workspace("b") is None
    assert store.find_by_idempotency_key("k-b") is None
    assert {k: v for k, v in store.snapshot(now=T0 + 1, limits=limits)["counts"].items() if v} == {
        "running": 1
    }
    accepted = enqueue(store, "b", now=T0 + 2, limits=limits, key="k-b")
    assert (accepted.deduplicated, accepted.position, accepted.eta_s) == (False, 1, None)


def test_eta_is_average_recent_runtime_times_rounds_ahead(store: Store) -> None:
    limits = limited(claude=1)
    enqueue(store, "a", now=T0, limits=limits)
    run = must_claim(store, T0, limits).run_id
    start(store, run, T0)
    finish(store, run, T0 + 30)
    enqueue(store, "b", now=T0 + 31, limits=limits)
    start(store, must_claim(store, T0 + 31, limits).run_id, T0 + 31)
    assert store.recent_runtimes("claude") == [30.0]
    with pytest.raises(QueueBusy) as info:
        enqueue(store, "c", now=T0 + 32, limits=limits, max_wait_s=10)
    assert (info.value.eta_s, info.value.position) == (30.0, 1)
    third = enqueue(store, "c", now=T0 + 32, limits=limits, max_wait_s=30)
    fourth = enqueue(store, "d", now=T0 + 33, limits=limits)
    assert [(r.position, r.eta_s) for r in (third, fourth)] == [(1, 30.0), (2, 60.0)]


def test_max_wait_counts_a_saturated_model_limit(store: Store) -> None:
    limits = limited(codex=PoolLimit(total=5, models={"gpt-5.4": 1}))
    enqueue(store, "a", "codex:gpt-5.4", now=T0, limits=limits)
    must_claim(store, T0, limits)
    with pytest.raises(QueueBusy) as info:
        enqueue(store, "b", "codex:gpt-5.4", now=T0 + 1, limits=limits, max_wait_s=0.5)
    assert (info.value.eta_s, info.value.position) == (None, 1)


# ---- reading: snapshot, events, runtimes, peers -----------------------------------------------


POOL_KEYS = {
    "running",
    "queued",
    "limit",
    "models",
    "backoff_until",
    "daily_used",
    "daily_limit",
    "next_spawn_at",
    "oldest_queued_at",
    "throughput_1m",
    "usage_today",
    "allowance",
    "effective_limit",  # an adaptive pool's current limit (else its configured one)
    "adaptive",
}


def test_snapshot_has_the_design_shape_and_values(store: Store) -> None:
    limits = Limits(
        concurrency={"claude": PoolLimit(total=2), "codex": PoolLimit(total=5, models={"gpt-5.4": 1})},
        rates={"gemini": RateConfig(daily_limit=10, sustained_delay=60)},
    )
    for n, (wid, agent) in enumerate(
        [
            ("w1", "claude:opus"),
            ("w2", "codex:gpt-5.4"),
            ("w3", "codex:gpt-5.4"),
            ("w4", "gemini"),
            ("w5", "gemini"),
            ("w6", "claude"),
        ]
    ):
        enqueue(store, wid, agent, now=T0 + n, limits=limits)
    claims = {}
    while (got := claim(store, T0 + 10, limits)) is not None:
        claims[got.workspace.id] = got.run_id
    assert list(claims) == ["w1", "w2", "w4", "w6"]
    start(store, claims["w6"], T0 + 10)
    finish(store, claims["w6"], T0 + 20, summary="done")

    snap = store.snapshot(now=T0 + 30, limits=limits)
    assert {"frozen", "pools", "counts", "workspaces"} <= set(snap)
    assert set(snap) - {"frozen", "pools", "counts", "workspaces"} <= {
        "bus_dropped",
        "allowance",
        "undelivered",
        "approvals",
    }
    assert snap["undelivered"] == 0 and snap["allowance"] == {}
    assert snap["frozen"] is False
    assert {k: v for k, v in snap["counts"].items() if v} == {"running": 3, "queued": 2, "completed": 1}
    pools = snap["pools"]
    assert set(pools) == {"claude", "codex", "gemini"}
    for entry in pools.values():
        assert set(entry) == POOL_KEYS
        assert entry.pop("allowance") is None  # none configured
    runs_today = {name: entry.pop("usage_today") for name, entry in pools.items()}
    assert runs_today == {
        "claude": {"runs": 2, "tokens": 0, "usd": 0.0},
        "codex": {"runs": 1, "tokens": 0, "usd": 0.0},
        "gemini": {"runs": 1, "tokens": 0, "usd": 0.0},
    }
    # without rates there is no daily limit; whether spawns are still counted is not specified
    assert pools["claude"].pop("daily_used") in (0, 2)
    assert pools["codex"].pop("daily_used") in (0, 1)
    assert pools["claude"] == {
        "running": 1,
        "queued": 0,
        "limit": 2,
        "models": {"opus": {"running": 1, "limit": None}},
        "backoff_until": None,
        "daily_limit": None,
        "next_spawn_at": None,
        "oldest_queued_at": None,
        "throughput_1m": 1,
        "effective_limit": 2,
        "adaptive": False,
    }
    assert pools["codex"] == {
        "running": 1,
        "queued": 1,
        "limit": 5,
        "models": {"gpt-5.4": {"running": 1, "limit": 1}},
        "backoff_until": None,
        "daily_limit": None,
        "next_spawn_at": None,
        "oldest_queued_at": "2027-01-15T08:00:02.000Z",
        "throughput_1m": 0,
        "effective_limit": 5,
        "adaptive": False,
    }
    assert pools["gemini"] == {
        "running": 1,
        "queued": 1,
        "limit": None,
        "models": {},
        "backoff_until": None,
        "daily_used": 1,
        "daily_limit": 10,
        "next_spawn_at": "2027-01-15T08:01:10.000Z",
        "oldest_queued_at": "2027-01-15T08:00:04.000Z",
        "throughput_1m": 0,
        "effective_limit": None,
        "adaptive": False,
    }

    rows = snap["workspaces"]
    assert [(r["workspace"], r["state"], r["agent"]) for r in rows] == [
        ("w4", "running", "gemini"),
        ("w2", "running", "codex:gpt-5.4"),
        ("w1", "running", "claude:opus"),
        ("w6", "completed", "claude"),
        ("w5", "queued", "gemini"),
        ("w3", "queued", "codex:gpt-5.4"),
    ]
    short = store.snapshot(now=T0 + 30, limits=limits, limit=4)["workspaces"]
    assert [r["workspace"] for r in short] == ["w4", "w2", "w1", "w6"]
    only_running = store.snapshot(now=T0 + 30, limits=limits, limit=2)["workspaces"]
    assert [r["workspace"] for r in only_running] == ["w4", "w2"]
    queued = store.snapshot(now=T0 + 30, limits=limits, state="queued")["workspaces"]
    assert [r["workspace"] for r in queued] == ["w5", "w3"]
    gemini = store.snapshot(now=T0 + 30, limits=limits, agent="gemini")["workspaces"]
    assert [r["workspace"] for r in gemini] == ["w4", "w5"]


def test_snapshot_of_an_empty_store_lists_the_configured_pools(store: Store) -> None:
    snap = store.snapshot(now=T0, limits=limited(claude=1))
    assert snap["frozen"] is False
    assert {k: v for k, v in snap["counts"].items() if v} == {}
    assert snap["workspaces"] == []
    assert snap["pools"]["claude"]["limit"] == 1
    assert (snap["pools"]["claude"]["running"], snap["pools"]["claude"]["queued"]) == (0, 0)


def test_events_after_reads_from_a_cursor(store: Store) -> None:
    assert (store.last_event_id(), store.events_after(0)) == (0, [])
    for n in range(3):
        enqueue(store, f"w{n}", now=T0 + n, origin="session-1")
    events = store.events_after(0)
    assert [(e.type, e.workspace, e.at, e.origin) for e in events] == [
        ("AgentQueued", f"w{n}", T0 + n, "session-1") for n in range(3)
    ]
    ids = [e.id for e in events]
    assert ids == sorted(ids) and len(set(ids)) == 3 and ids[0] > 0
    assert store.last_event_id() == ids[-1]
    assert [e.id for e in store.events_after(ids[0])] == ids[1:]
    assert store.events_after(ids[-1]) == []
    assert [e.id for e in store.events_after(0, limit=2)] == ids[:2]
    run = must_claim(store, T0 + 5).run_id
    assert store.events_after(ids[-1]) == []  # a reservation is not a start
    start(store, run, T0 + 6)
    assert [(e.type, e.workspace, e.at) for e in store.events_after(ids[-1])] == [
        ("AgentStarted", "w0", T0 + 6)
    ]


def test_a_completed_run_emits_started_then_completed(store: Store) -> None:
    enqueue(store, "a", now=T0)
    run = must_claim(store, T0 + 1).run_id
    start(store, run, T0 + 1)
    finish(store, run, T0 + 4)
    events = store.events_after(0)
    assert types(events) == ["AgentQueued", "AgentStarted", "AgentCompleted"]
    assert events[-1].data["exit_code"] == 0


def test_recent_runtimes_are_oldest_first_and_bounded(store: Store) -> None:
    for n in range(4):
        enqueue(store, f"w{n}", now=T0)
        run = must_claim(store, T0 + 100 * n).run_id
        start(store, run, T0 + 100 * n)
        finish(store, run, T0 + 100 * n + n + 1)
    assert store.recent_runtimes("claude") == [1.0, 2.0, 3.0, 4.0]
    assert store.recent_runtimes("claude", limit=2) == [3.0, 4.0]
    assert store.recent_runtimes("codex") == []


def test_the_database_clock_agrees_with_this_host(store: Store) -> None:
    before = time.time()
    server = store.server_time()
    assert before - 1 < server < time.time() + 1


def test_has_work_while_anything_is_queued_or_running(store: Store) -> None:
    assert not store.has_work()
    enqueue(store, "a", now=T0)
    assert store.has_work()
    run = must_claim(store, T0).run_id
    assert store.has_work()
    finish(store, run, T0 + 1)
    assert not store.has_work()


def test_peers_heartbeat_list_newest_first_and_remove(store: Store) -> None:
    store.heartbeat_peer("p1", pid=10, start=20, boot_id="boot", kind="stdio", now=T0)
    store.heartbeat_peer("p2", pid=11, start=21, boot_id="boot", kind="http", now=T0 + 1)
    store.heartbeat_peer("p1", pid=10, start=20, boot_id="boot", kind="stdio", now=T0 + 2)
    peers = store.peers()
    assert [(p["id"], p["pid"], p["start"], p["boot_id"], p["kind"], p["heartbeat_at"]) for p in peers] == [
        ("p1", 10, 20, "boot", "stdio", T0 + 2),
        ("p2", 11, 21, "boot", "http", T0 + 1),
    ]
    assert store.remove_peers(["p1"]) == 1
    assert store.remove_peers(["p1", "nobody"]) == 0
    assert store.remove_peers([]) == 0
    assert [p["id"] for p in store.peers()] == ["p2"]


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda s: s.get_workspace("a"), id="get_workspace"),
        pytest.param(lambda s: s.claim_next(now=T0, limits=NO_LIMITS, peer="p"), id="claim_next"),
        pytest.param(lambda s: s.set_frozen(True, now=T0), id="set_frozen"),
        pytest.param(lambda s: s.events_after(0), id="events_after"),
        pytest.param(lambda s: s.has_work(), id="has_work"),
        pytest.param(lambda s: s.is_frozen(), id="is_frozen"),
        pytest.param(lambda s: s.pool_state("claude"), id="pool_state"),
        pytest.param(lambda s: s.queue_position("a"), id="queue_position"),
        pytest.param(lambda s: s.recent_runtimes("claude"), id="recent_runtimes"),
        pytest.param(lambda s: s.snapshot(now=T0, limits=NO_LIMITS), id="snapshot"),
    ],
)
def test_driver_errors_stop_at_the_store_as_store_error(
    backend: Backend, call: Callable[[Store], object]
) -> None:
    closed = backend.open()
    backend.close(closed)
    with pytest.raises(StoreError):
        call(closed)


# ---- housekeeping and durability --------------------------------------------------------------


def test_gc_finds_and_forgets_only_finished_workspaces_older_than_the_cutoff(store: Store) -> None:
    for wid in ("old-done", "new-done", "running", "queued", "cancelled"):
        enqueue(store, wid, now=T0)
    run_old, run_new, _ = (must_claim(store, T0).run_id for _ in range(3))
    finish(store, run_old, T0 + 10)
    finish(store, run_new, T0 + 100)
    store.plan_kill(workspaces=["cancelled"], now=T0 + 5)
    assert [r.id for r in store.finished_before(T0 + 50)] == ["cancelled", "old-done"]
    assert [r.id for r in store.finished_before(T0 + 50, limit=1)] == ["cancelled"]
    assert [r.id for r in store.finished_before(T0 + 50, after=(T0 + 5, "cancelled"))] == ["old-done"]
    # forget() never deletes a live workspace, even when asked to
    assert store.forget(["old-done", "cancelled", "running", "queued"], events_before=T0 + 50) == 2
    assert store.get_workspace("old-done") is None
    assert store.get_workspace("cancelled") is None
    assert store.get_run(run_old) is None
    assert ws(store, "new-done").state == "completed"
    assert store.get_run(run_new) is not None
    assert (ws(store, "running").state, ws(store, "queued").state) == ("running", "queued")
    assert store.finished_before(T0 + 50) == []


def test_pool_state_survives_reopening_the_store(backend: Backend, store: Store) -> None:
    rate = RateConfig(reset_utc=clock(6, 0), daily_limit=5)
    limits = Limits(rates={"claude": rate})
    enqueue(store, "a", now=T0)
    enqueue(store, "b", now=T0)
    must_claim(store, T0, limits)
    run = must_claim(store, T0 + 1, limits).run_id
    start(store, run, T0 + 1)
    finish(store, run, T0 + 2, Outcome.RATE_LIMITED, rate=rate)
    before = store.pool_state("claude")
    assert before == PoolState(
        backoff_until=NEXT_RESET,
        fail_count=1,
        last_spawn=T0 + 1,
        daily_count=2,
        daily_day=day_key(rate, to_dt(T0)),
    )
    store.set_frozen(True, now=T0 + 3)
    backend.close(store)

    reopened = backend.open()
    assert reopened.pool_state("claude") == before
    assert reopened.is_frozen()
    reopened.set_frozen(False, now=T0 + 4)
    result = reopened.claim_next(now=T0 + 4, limits=limits, peer="peer-b")
    assert (result.claim, result.wake_at) == (None, NEXT_RESET)
    assert reopened.pool_state("nobody") == PoolState()


def test_two_stores_on_one_database_never_exceed_a_pool_limit_of_3(backend: Backend) -> None:
    total = 60
    limits = limited(claude=3)
    stores = [backend.open(), backend.open()]
    for n in range(total):
        enqueue(stores[n % 2], f"w{n:03}", now=T0 + n)
    lock = threading.Lock()
    live = [0]
    peak = [0]
    db_peak = [0]
    done = [0]
    claimed: list[str] = []
    deadline = time.monotonic() + 15

    def worker(store: Store, peer: str) -> None:
        held: list[int] = []
        while time.monotonic() < deadline:
            with lock:
                if done[0] >= total:
                    return
            got = store.claim_next(now=T0 + total, limits=limits, peer=peer).claim
            if got is not None:
                with lock:
                    live[0] += 1
                    peak[0] = max(peak[0], live[0])
                    claimed.append(got.workspace.id)
                active = len(store.active_runs())
                with lock:
                    db_peak[0] = max(db_peak[0], active)
                held.append(got.run_id)
            elif held:
                run = held.pop(0)
                with lock:
                    live[0] -= 1
                assert finish(store, run, T0 + total) is not None
                with lock:
                    done[0] += 1

    jobs = [partial(worker, s, f"peer-{i}-{j}") for i, s in enumerate(stores) for j in range(3)]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        for future in [pool.submit(job) for job in jobs]:
            future.result()
    assert done[0] == total
    assert peak[0] <= 3 and db_peak[0] <= 3
    assert max(peak[0], db_peak[0]) == 3
    assert sorted(claimed) == [f"w{n:03}" for n in range(total)]  # each claimed exactly once
    snap = stores[0].snapshot(now=T0 + total, limits=limits, limit=total)
    assert {k: v for k, v in snap["counts"].items() if v} == {"completed": total}
    assert all(ws(stores[1], f"w{n:03}").runs == 1 for n in range(total))


def test_a_store_made_by_each_earlier_schema_is_upgraded_in_place(tmp_path: Path) -> None:
    import sqlite3

    from dispatch_runner.store.sqlite import MIGRATIONS, SQLiteStore, statements

    for version in range(1, len(MIGRATIONS)):
        path = tmp_path / f"v{version}.db"
        db = sqlite3.connect(path, isolation_level=None)
        for number, script in enumerate(MIGRATIONS[:version], start=1):
            for statement in statements(script):
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {number}")
        db.close()
        store = SQLiteStore(path)
        try:
            enqueue(store, "a", now=T0)
            run = must_claim(store, T0).run_id
            start(store, run, T0)
            assert not store.record_agent(run, agent_pid=1, agent_start=1, now=T0 + 1)
            assert finish(store, run, T0 + 3) is not None
            assert store.events_after(0)[-1].data["duration_s"] == 2.0  # the agent's wall time
        finally:
            store.close()
