"""The lifecycle, backend-neutral: a store's rows in, a plan out. Pure: no I/O, no clock.

A backend loads the rows a decision needs, calls a planner and writes the plan inside its own
transaction; it never decides. So every backend retries, dead-letters, requeues on a rate limit,
backs a pool off, gives a never-started claim's pacing mark back and emits exactly the same
events (the same property tests cover the plans for all of them).
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, Protocol, TypeVar

from .. import policy
from ..adaptive import Aimd, adapt
from ..model import Outcome, WorkspaceState, check_transition
from ..policy import PoolState, RateConfig
from .base import HostCaps, RunExit, WorkspaceRow

_EVENT_FOR_STATE: Final = {
    WorkspaceState.COMPLETED: "AgentCompleted",
    WorkspaceState.FAILED: "AgentFailed",
    WorkspaceState.KILLED: "AgentKilled",
    WorkspaceState.LOST: "AgentLost",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class PlannedEvent:
    type: str
    data: Mapping[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class SpawnMark:
    """What a claim changed in its pool (kept on the run), to give back if it never starts."""

    reserved: bool  # the run never started (its shim never took it)
    spawn_mark: float | None  # the last_spawn the claim wrote
    prev_last_spawn: float | None  # the one before it
    counted_day: str | None  # the day its daily slot was counted on
    started_at: float | None  # when the shim started it, or the agent itself (better)
    claimed_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ExitPlan:
    outcome: Outcome  # what the run's end counts as (a requested kill wins)
    state: WorkspaceState
    reason: str | None
    ended_reason: str | None
    attempts: int
    not_before: float
    finished: bool
    pool: PoolState | None  # the pool's new state, or None when unchanged
    events: tuple[PlannedEvent, ...]


def plan_exit(
    ws: WorkspaceRow,
    run: SpawnMark,
    result: RunExit,
    pool: PoolState,
    *,
    kill_requested: int,
    requeues_before: int,
    now: float,
    rate: RateConfig | None,
    run_id: int,
    adaptive: tuple[Aimd, int] | None = None,
) -> ExitPlan:
    """What a run's end does: the workspace's next state (retry, dead letter, rate-limit requeue,
    lost, back to the queue when preempted), its pool's state (backoff, fail count, a
    never-started claim's slot given back, an adaptive limit) and the events it emits.
    `kill_requested`: 0 none, KILL (on request) or PREEMPT (for a critical dispatch)."""
    preempted = kill_requested == PREEMPT and result.outcome is not Outcome.SUCCEEDED
    outcome, detail, ended_reason = _how_it_ended(result, kill_requested=kill_requested == KILL)
    decision = _decide(ws, result, outcome, detail, preempted=preempted, requeues_before=requeues_before)
    ended_reason = "preempted" if preempted else ended_reason
    check_transition(WorkspaceState(ws.state), decision.state)
    counts = decision.counts_attempt and outcome not in (Outcome.SUCCEEDED, Outcome.KILLED)
    new_pool, pool_events = _pool_plan(
        ws.pool, run, pool, outcome, result, now=now, rate=rate, adaptive=adaptive
    )
    common = _common_data(ws, run, result, decision, ended_reason=ended_reason, run_id=run_id, now=now)
    events: tuple[PlannedEvent, ...] = (
        (PlannedEvent(type="AgentPreempted", data={"state": "queued", **common}),)
        if preempted
        else _exit_events(outcome, decision, now, common)
    )
    return ExitPlan(
        outcome=outcome,
        state=decision.state,
        reason=decision.reason,
        ended_reason=ended_reason,
        attempts=ws.attempts + (1 if counts else 0),
        not_before=now + decision.not_before_delay_s,
        finished=decision.state is not WorkspaceState.QUEUED,
        pool=new_pool if new_pool != pool else None,
        events=(*pool_events, *events),  # first: the pool's state changed before the workspace's
    )


def _decide(
    ws: WorkspaceRow,
    result: RunExit,
    outcome: Outcome,
    detail: str | None,
    *,
    preempted: bool,
    requeues_before: int,
) -> policy.ExitDecision:
    if preempted:  # not an attempt: it goes back to the queue, to resume where it can
        return policy.ExitDecision(WorkspaceState.QUEUED, "preempted", counts_attempt=False)
    return policy.decide_exit(
        outcome,
        attempts_before=ws.attempts,
        max_attempts=ws.max_attempts,
        detail=detail,
        requeues_before=requeues_before,
        final=result.final and outcome is result.outcome,
    )


def _pool_plan(
    name: str,
    run: SpawnMark,
    pool: PoolState,
    outcome: Outcome,
    result: RunExit,
    *,
    now: float,
    rate: RateConfig | None,
    adaptive: tuple[Aimd, int] | None,
) -> tuple[PoolState, tuple[PlannedEvent, ...]]:
    """The pool after a run's end — a never-started claim's pacing mark and daily slot given back
    (it reached no provider), a backoff, an adaptive limit moved — and its events."""
    new_pool = plan_give_back(run, pool) if run.reserved else pool
    new_pool, backoff = _pool_after_exit(new_pool, outcome, result, now=now, rate=rate)
    events: tuple[PlannedEvent, ...] = ()
    if backoff is not None:
        events = (PlannedEvent(type="PoolBackoff", data={"pool": name, **backoff, "reason": result.detail}),)
    if adaptive is not None and not run.reserved:
        new_pool, changed = adapt_limit(name, new_pool, outcome, adaptive, pool, now)
        events = (*events, *changed)
    return new_pool, events


KILL: Final = 1  # runs.kill_requested: a kill on request
PREEMPT: Final = 2  # … a stop to free the slot for a critical dispatch (back to the queue)


def adapt_limit(
    key: str, state: PoolState, outcome: Outcome, aimd_limit: tuple[Aimd, int], pool: PoolState, now: float
) -> tuple[PoolState, tuple[PlannedEvent, ...]]:
    """AIMD on an adaptive limit (a pool's, or a model's: `key` pool:model), after a run of it
    ended; PoolLimitChanged when it moved. One decrease per rate-limit episode: a run that hits
    the limit while its pool (`pool`, as it was) already backs off from it does not halve it
    again."""
    if outcome is Outcome.RATE_LIMITED and pool.backoff_until is not None and pool.backoff_until > now:
        return state, ()
    aimd, configured = aimd_limit
    before = min(state.effective_limit or configured, configured)
    after = adapt(
        aimd,
        configured,
        state,
        rate_limited=outcome is Outcome.RATE_LIMITED,
        clean=outcome is Outcome.SUCCEEDED,
    )
    if after.effective_limit is None or after.effective_limit == before:
        return after, ()
    data = {"pool": key, "limit": after.effective_limit, "was": before, "configured": configured}
    return after, (PlannedEvent(type="PoolLimitChanged", data=data),)


def _common_data(
    ws: WorkspaceRow,
    run: SpawnMark,
    result: RunExit,
    decision: policy.ExitDecision,
    *,
    ended_reason: str | None,
    run_id: int,
    now: float,
) -> dict[str, Any]:
    """What every event of a run's end carries."""
    return {
        "agent": ws.agent,
        "exit_code": result.exit_code,
        "run": run_id,
        "duration_s": round(now - (run.started_at or run.claimed_at), 3),
        "reason": decision.reason,
        "dead_letter": decision.dead_letter,
        "ended_reason": ended_reason,
    }


def _how_it_ended(result: RunExit, *, kill_requested: bool) -> tuple[Outcome, str | None, str | None]:
    """The outcome a run's end counts as (a requested kill wins), its detail and ended_reason."""
    outcome = Outcome.KILLED if kill_requested else result.outcome
    detail = result.detail if outcome is result.outcome else "killed on request"
    # a run's own reason (spawn_failed, no_space) names how it failed: a success has none
    own = result.ended_reason if outcome is result.outcome and outcome is not Outcome.SUCCEEDED else None
    return outcome, detail, own or policy.ENDED_REASON[outcome]


def _pool_after_exit(
    state: PoolState, outcome: Outcome, result: RunExit, *, now: float, rate: RateConfig | None
) -> tuple[PoolState, dict[str, Any] | None]:
    """A rate limit or a machine-wide spawn fault backs the pool off (longer each time); a
    success clears the fail count. Returns the state and the backoff's event data, if any."""
    if outcome is Outcome.RATE_LIMITED or result.pool_fault:
        fails = state.fail_count + 1
        if result.pool_fault:
            until = now + policy.fault_backoff_s(fails)
        else:
            until = policy.rate_limit_backoff_until(
                now=policy.to_dt(now),
                retry_at=policy.to_dt(result.retry_at) if result.retry_at else None,
                rate=rate,
                fail_count=fails,
            ).timestamp()
        until = max(until, state.backoff_until or 0.0)
        return replace(state, backoff_until=until, fail_count=fails), {"until": until, "fail_count": fails}
    if outcome is Outcome.SUCCEEDED and state.fail_count:
        return replace(state, fail_count=0), None
    return state, None


def _exit_events(
    outcome: Outcome, decision: policy.ExitDecision, now: float, common: dict[str, Any]
) -> tuple[PlannedEvent, ...]:
    out = []
    state = decision.state.value
    if outcome is Outcome.LOST:
        out.append(PlannedEvent(type="AgentLost", data={"state": state, **common}))
    elif decision.state in _EVENT_FOR_STATE:
        out.append(PlannedEvent(type=_EVENT_FOR_STATE[decision.state], data={"state": state, **common}))
    if decision.state is WorkspaceState.QUEUED:
        out.append(
            PlannedEvent(
                type="AgentRetrying",
                data={
                    "state": "queued",
                    "outcome": outcome.value,
                    "not_before": now + decision.not_before_delay_s,
                    **common,
                },
            )
        )
    if decision.dead_letter:
        out.append(PlannedEvent(type="TaskDeadLettered", data={"state": state, **common}))
    return tuple(out)


def plan_give_back(run: SpawnMark, pool: PoolState) -> PoolState:
    """A claim that never started (its peer died first) returns its pacing mark and daily slot."""
    return policy.undo_spawn(pool, marked=run.spawn_mark, previous=run.prev_last_spawn, day=run.counted_day)


# ---- claims -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lane:
    """One gate lane: a pool and a model variant (None: the pool's default)."""

    pool: str
    model: str | None


class Ordered(Protocol):
    @property
    def priority(self) -> int: ...
    @property
    def share_rank(self) -> int: ...
    @property
    def created_at(self) -> float: ...
    @property
    def seq(self) -> int: ...


H = TypeVar("H", bound=Ordered)


def runs_pool(can: HostCaps | None, pool: str) -> bool:
    """The claiming host has the pool's agent (and the pool's labels). Of another pool it takes
    only workspaces pinned to it, which fail there with the reason rather than wait forever."""
    return can is None or can.pools is None or pool in can.pools


def fits_labels(requires: Sequence[str], can: HostCaps | None) -> bool:
    """The claiming host has every label a workspace requires (its host, if it names one, is
    checked by the claim's query)."""
    return not requires or (can is not None and set(requires) <= can.labels)


def best_head(heads: Iterable[H]) -> H | None:
    """The head a claim takes: priority first (critical = 0), then the oldest."""
    return min(
        heads, key=lambda h: policy.order_key(h.priority, h.created_at, h.seq, h.share_rank), default=None
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class TakePlan:
    pool: PoolState  # the pool after this spawn (pacing mark, daily count)
    spawn_mark: float | None  # kept on the run, to give back if it never starts
    prev_last_spawn: float | None
    counted_day: str | None


def plan_take(ws: WorkspaceRow, pool: PoolState, *, rate: RateConfig | None, now: float) -> TakePlan:
    """Reserve the workspace's next run: the pool spends a pacing mark and a daily slot now (so
    no other peer spawns in the same window); the run remembers them, to give them back if it
    never starts. It counts as running, but is AgentStarted only when its shim starts it."""
    check_transition(WorkspaceState(ws.state), WorkspaceState.RUNNING)
    after = policy.after_spawn(rate, pool, policy.to_dt(now))
    return TakePlan(
        pool=after, spawn_mark=after.last_spawn, prev_last_spawn=pool.last_spawn, counted_day=after.daily_day
    )
