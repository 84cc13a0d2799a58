"""The backend-neutral lifecycle (store/lifecycle.py), property-tested: whatever the run's end and
the pool's state, a plan moves the workspace along the transition table, counts attempts and
dead-letters as policy says, emits exactly the events of its transition, and backs a pool off
only for a rate limit or a machine-wide fault. Every backend applies these plans."""

from hypothesis import given
from hypothesis import strategies as st

from dispatch_runner.model import NEXT, Outcome, WorkspaceState
from dispatch_runner.policy import MAX_RATE_LIMIT_REQUEUES, PoolState
from dispatch_runner.store.base import RunExit, WorkspaceRow
from dispatch_runner.store.lifecycle import SpawnMark, plan_exit, plan_give_back

NOW = 1_800_000_000.0
TERMINAL = {"AgentCompleted", "AgentFailed", "AgentKilled", "AgentLost"}


def workspace(attempts: int, max_attempts: int) -> WorkspaceRow:
    return WorkspaceRow(
        id="w",
        seq=1,
        pool="p",
        model=None,
        agent="p",
        task="t",
        template="none",
        priority=2,
        label=None,
        state="running",
        reason=None,
        path="/w",
        run_dir="/w/work",
        cwd=None,
        repo=None,
        branch=None,
        idempotency_key=None,
        base_commit=None,
        runs=attempts + 1,
        attempts=attempts,
        ended_reason=None,
        rev=1,
        max_attempts=max_attempts,
        timeout_s=None,
        not_before=0.0,
        created_at=NOW - 100,
        updated_at=NOW - 10,
        started_at=NOW - 10,
        ended_at=None,
        exit_code=None,
        summary=None,
        session_id=None,
        origin=None,
        parent=None,
        current_run=1,
        pid=None,
        spec={},
    )


pools = st.builds(
    PoolState,
    backoff_until=st.none() | st.floats(NOW - 100, NOW + 100),
    fail_count=st.integers(0, 50),
    last_spawn=st.none() | st.just(NOW - 5),
    daily_count=st.integers(0, 5),
    daily_day=st.sampled_from([None, "d1"]),
)
marks = st.builds(
    SpawnMark,
    reserved=st.booleans(),
    spawn_mark=st.none() | st.just(NOW - 5),
    prev_last_spawn=st.none() | st.just(NOW - 60),
    counted_day=st.sampled_from([None, "d1"]),
    started_at=st.none() | st.just(NOW - 3),
    claimed_at=st.just(NOW - 10),
)
results = st.builds(
    RunExit,
    outcome=st.sampled_from(list(Outcome)),
    exit_code=st.none() | st.integers(0, 255),
    detail=st.none() | st.just("boom"),
    pool_fault=st.booleans(),
    ended_reason=st.sampled_from([None, "spawn_failed", "no_space"]),
)


@given(
    attempts=st.integers(0, 10),
    max_attempts=st.integers(1, 12),
    requeues=st.integers(0, 12),
    kill=st.booleans(),
    run=marks,
    result=results,
    pool=pools,
)
def test_an_exit_plan_follows_the_table_and_emits_its_transitions_events(
    attempts: int,
    max_attempts: int,
    requeues: int,
    kill: bool,
    run: SpawnMark,
    result: RunExit,
    pool: PoolState,
) -> None:
    ws = workspace(attempts, max_attempts)
    plan = plan_exit(
        ws, run, result, pool, kill_requested=kill, requeues_before=requeues, now=NOW, rate=None, run_id=1
    )
    assert plan.state in NEXT[WorkspaceState.RUNNING]
    assert plan.outcome is (Outcome.KILLED if kill else result.outcome)
    types = [e.type for e in plan.events]
    finished = plan.state is not WorkspaceState.QUEUED
    assert plan.finished is finished
    assert (sum(t in TERMINAL for t in types) == 1) is (finished or plan.outcome is Outcome.LOST)
    assert ("AgentRetrying" in types) is not finished
    assert ("TaskDeadLettered" in types) is (
        plan.reason is not None and "max retries exceeded" in plan.reason
    )
    counted = plan.outcome not in (Outcome.SUCCEEDED, Outcome.KILLED) and not (
        plan.outcome is Outcome.RATE_LIMITED and requeues < MAX_RATE_LIMIT_REQUEUES
    )
    assert plan.attempts == attempts + (1 if counted else 0)
    backs_off = plan.outcome is Outcome.RATE_LIMITED or result.pool_fault
    assert ("PoolBackoff" in types) is backs_off
    if backs_off:
        assert plan.pool is not None and plan.pool.backoff_until is not None and plan.pool.backoff_until > NOW
        assert plan.pool.fail_count == pool.fail_count + 1 and types[0] == "PoolBackoff"
    if plan.state is WorkspaceState.COMPLETED:
        assert plan.reason is None and plan.ended_reason is None
    for event in plan.events:
        assert event.data.get("run", 1) == 1


@given(run=marks, pool=pools)
def test_a_claim_given_back_returns_its_daily_slot_and_never_goes_below_zero(
    run: SpawnMark, pool: PoolState
) -> None:
    after = plan_give_back(run, pool)
    if run.counted_day is not None and pool.daily_day == run.counted_day and pool.daily_count:
        assert after.daily_count == pool.daily_count - 1
    else:
        assert after.daily_count == pool.daily_count
    assert after.daily_count >= 0 and after.backoff_until == pool.backoff_until
