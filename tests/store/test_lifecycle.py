"""The backend-neutral lifecycle (store/lifecycle.py), property-tested: whatever the run's end and
the pool's state, a plan moves the workspace along the transition table, counts attempts and
dead-letters as policy says, emits exactly the events of its transition, and backs a pool off
only for a rate limit or a machine-wide fault. Every backend applies these plans."""

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatch_runner.errors import QueueBusy
from dispatch_runner.model import NEXT, Outcome, WorkspaceState
from dispatch_runner.policy import MAX_RATE_LIMIT_REQUEUES, PoolLimit, PoolState, RateConfig
from dispatch_runner.store.base import Limits, RunExit, WorkspaceRow
from dispatch_runner.store.eta import EtaPlan, check_max_wait, plan_eta
from dispatch_runner.store.lanes import open_lanes
from dispatch_runner.store.lifecycle import (
    Lane,
    SpawnMark,
    best_head,
    plan_exit,
    plan_give_back,
    plan_take,
)

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


# ---- claims ----------------------------------------------------------------------------------


@given(
    running=st.integers(0, 4),
    model_running=st.integers(0, 3),
    total=st.integers(1, 4),
    model_cap=st.integers(1, 3),
    backoff=st.booleans(),
)
def test_a_lane_opens_only_with_an_open_gate_and_room_in_pool_and_model(
    running: int, model_running: int, total: int, model_cap: int, backoff: bool
) -> None:
    limits = Limits(concurrency={"p": PoolLimit(total=total, models={"m": model_cap})})
    pool = PoolState(backoff_until=NOW + 30 if backoff else None)
    opened = open_lanes(
        [Lane("p", "m")],
        pools={"p": pool},
        running_pool={"p": running},
        running_model={("p", "m"): model_running},
        limits=limits,
        now=NOW,
    )
    room = running < total and model_running < model_cap
    assert (opened.taken == [Lane("p", "m")]) is (room and not backoff)
    assert opened.wake == ([NOW + 30] if backoff else [])
    if not opened.taken:  # it says why: its gate first, else it is full
        assert opened.why[Lane("p", "m")].startswith("backoff" if backoff else "full")


def test_pacing_closes_a_lane_until_its_time() -> None:
    limits = Limits(rates={"p": RateConfig(sustained_delay=60)})
    opened = open_lanes(
        [Lane("p", None)],
        pools={"p": PoolState(last_spawn=NOW - 10)},
        running_pool={},
        running_model={},
        limits=limits,
        now=NOW,
    )
    assert opened.taken == [] and opened.wake == [NOW + 50]
    assert opened.why[Lane("p", None)].startswith("pacing until")


@given(st.lists(st.tuples(st.integers(0, 3), st.floats(0, 100), st.integers(1, 1000)), max_size=8))
def test_the_best_head_is_the_highest_priority_then_the_oldest(rows: list[tuple[int, float, int]]) -> None:
    heads = [_head(p, c, q) for p, c, q in rows]
    best = best_head(heads)
    assert best == (min(heads, key=lambda h: (h.priority, h.created_at, h.seq)) if heads else None)


def _head(priority: int, created_at: float, seq: int) -> WorkspaceRow:
    return replace(workspace(0, 3), state="queued", priority=priority, created_at=created_at, seq=seq)


@given(pool=pools)
def test_taking_a_run_spends_a_pacing_mark_and_a_daily_slot_it_remembers(pool: PoolState) -> None:
    ws = _head(2, NOW, 1)
    plan = plan_take(ws, pool, rate=None, now=NOW)
    assert plan.pool.last_spawn == plan.spawn_mark == NOW and plan.prev_last_spawn == pool.last_spawn
    assert plan.counted_day == plan.pool.daily_day
    # given back at once, the pool is as it was (its mark and its count)
    back = plan_give_back(
        SpawnMark(
            reserved=True,
            spawn_mark=plan.spawn_mark,
            prev_last_spawn=plan.prev_last_spawn,
            counted_day=plan.counted_day,
            started_at=None,
            claimed_at=NOW,
        ),
        plan.pool,
    )
    assert back.last_spawn == pool.last_spawn
    assert back.daily_count == (pool.daily_count if pool.daily_day == plan.counted_day else 0)


# ---- enqueue: position and ETA ---------------------------------------------------------------


@dataclass
class Counts:
    """Plain numbers for plan_eta, remembering which ones it read (a backend counts lazily)."""

    numbers: dict[str, int]
    recent: list[float]
    read: set[str] = field(default_factory=set)

    def _get(self, name: str) -> int:
        self.read.add(name)
        return self.numbers[name]

    @property
    def running_pool(self) -> int:
        return self._get("running_pool")

    @property
    def running_lane(self) -> int:
        return self._get("running_lane")

    @property
    def ahead_pool(self) -> int:
        return self._get("ahead_pool")

    @property
    def ahead_lane(self) -> int:
        return self._get("ahead_lane")

    @property
    def runtimes(self) -> Sequence[float]:
        self.read.add("runtimes")
        return self.recent


@st.composite
def queue_counts(draw: st.DrawFn) -> Counts:
    """A lane's counts are part of its pool's."""
    running_lane, ahead_lane = draw(st.integers(0, 8)), draw(st.integers(0, 40))
    return Counts(
        numbers={
            "running_lane": running_lane,
            "running_pool": running_lane + draw(st.integers(0, 8)),
            "ahead_lane": ahead_lane,
            "ahead_pool": ahead_lane + draw(st.integers(0, 40)),
        },
        recent=draw(st.lists(st.floats(0, 3600), max_size=20)),
    )


eta_limits = st.builds(
    lambda total, cap, has_limit: Limits(
        concurrency={"p": PoolLimit(total=total, models={} if cap is None else {"m": cap})}
        if has_limit
        else {}
    ),
    total=st.none() | st.integers(-1, 6),  # <= 0 is unlimited, as in agents.yaml
    cap=st.none() | st.integers(-1, 6),
    has_limit=st.booleans(),
)
models = st.sampled_from([None, "m", "other"])


def binding(limits: Limits, model: str | None) -> tuple[int | None, str]:
    """The gate a dispatch waits on, worked out independently: (its cap or None, "lane"/"pool")."""
    limit = limits.concurrency.get("p")
    total = limit.total if limit and limit.total and limit.total > 0 else None
    cap = limit.models.get(model) if limit and model else None
    if cap is not None and cap > 0 and (total is None or cap < total):
        return cap, "lane"
    return total, "pool"


@given(limits=eta_limits, model=models, counts=queue_counts(), pool=pools)
def test_a_dispatch_waits_only_behind_its_binding_gate_and_counts_only_that_gate(
    limits: Limits, model: str | None, counts: Counts, pool: PoolState
) -> None:
    eta = plan_eta("p", model, pool, counts, limits=limits, now=NOW)
    cap, scope = binding(limits, model)
    if cap is None:
        assert eta.position == 0 and counts.read == set()
        return
    running, ahead = counts.numbers[f"running_{scope}"], counts.numbers[f"ahead_{scope}"]
    assert (eta.position == 0) is (running + ahead < cap)
    assert 0 <= eta.position <= ahead + 1
    assert counts.read - {"runtimes"} == {f"running_{scope}", f"ahead_{scope}"}
    assert ("runtimes" in counts.read) is (eta.position > 0)  # a free slot reads no runtimes


@given(limits=eta_limits, model=models, counts=queue_counts(), pool=pools)
def test_an_eta_is_unknown_only_for_a_full_gate_without_a_finished_run(
    limits: Limits, model: str | None, counts: Counts, pool: PoolState
) -> None:
    eta = plan_eta("p", model, pool, counts, limits=limits, now=NOW)
    assert eta.gate_wait_s >= 0
    assert (eta.eta_s is None) is (eta.position > 0 and not any(r > 0 for r in counts.recent))
    assert eta.eta_s is None or eta.eta_s >= eta.gate_wait_s
    if eta.position == 0:
        assert eta.eta_s == eta.gate_wait_s
    backoff = pool.backoff_until is not None and pool.backoff_until > NOW
    if backoff:  # the time gate alone: the pool's backoff
        assert pool.backoff_until is not None and eta.gate_wait_s >= pool.backoff_until - NOW - 1e-6


@given(limits=eta_limits, model=models, counts=queue_counts(), pool=pools)
def test_one_more_dispatch_ahead_never_moves_a_dispatch_forward(
    limits: Limits, model: str | None, counts: Counts, pool: PoolState
) -> None:
    behind = Counts({**counts.numbers, "ahead_lane": counts.numbers["ahead_lane"] + 1}, counts.recent)
    behind.numbers["ahead_pool"] += 1
    first = plan_eta("p", model, pool, counts, limits=limits, now=NOW)
    second = plan_eta("p", model, pool, behind, limits=limits, now=NOW)
    assert second.position >= first.position
    if first.eta_s is not None and second.eta_s is not None:
        assert second.eta_s >= first.eta_s


def test_the_model_limit_when_tighter_decides_the_position_and_the_eta() -> None:
    limits = Limits(concurrency={"p": PoolLimit(total=5, models={"m": 1})})
    counts = Counts({"running_pool": 1, "running_lane": 1, "ahead_pool": 3, "ahead_lane": 2}, [60.0])
    # the pool has room (1 + 3 < 5), the model's lane does not: 2 ahead of it, one slot
    assert plan_eta("p", "m", PoolState(), counts, limits=limits, now=NOW) == EtaPlan(
        position=3, eta_s=180.0, gate_wait_s=0.0
    )
    # another model of the pool only waits on the pool
    other = Counts(dict(counts.numbers), [60.0])
    assert plan_eta("p", "other", PoolState(), other, limits=limits, now=NOW).position == 0


@given(
    position=st.integers(0, 5),
    eta_s=st.none() | st.floats(0, 1000),
    gate=st.floats(0, 1000),
    max_wait=st.none() | st.floats(0, 1000),
)
def test_a_dispatch_is_refused_only_when_it_would_wait_past_its_max_wait(
    position: int, eta_s: float | None, gate: float, max_wait: float | None
) -> None:
    eta = EtaPlan(position=position, eta_s=eta_s, gate_wait_s=gate)
    refused = max_wait is not None and (
        eta_s > max_wait if eta_s is not None else (position > 0 or gate > max_wait)
    )
    if refused:
        with pytest.raises(QueueBusy):
            check_max_wait(eta, pool="p", max_wait_s=max_wait)
    else:
        check_max_wait(eta, pool="p", max_wait_s=max_wait)
