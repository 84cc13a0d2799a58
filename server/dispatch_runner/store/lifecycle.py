"""The lifecycle, backend-neutral: a store's rows in, a plan out. Pure: no I/O, no clock.

A backend loads the rows a decision needs, calls a planner and writes the plan inside its own
transaction; it never decides. So every backend retries, dead-letters, requeues on a rate limit,
backs a pool off, gives a never-started claim's pacing mark back and emits exactly the same
events (the same property tests cover the plans for all of them).
"""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from .. import policy
from ..model import Outcome, WorkspaceState, check_transition
from ..policy import PoolState, RateConfig
from .base import RunExit, WorkspaceRow

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


def _dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def plan_exit(
    ws: WorkspaceRow,
    run: SpawnMark,
    result: RunExit,
    pool: PoolState,
    *,
    kill_requested: bool,
    requeues_before: int,
    now: float,
    rate: RateConfig | None,
    run_id: int,
) -> ExitPlan:
    """What a run's end does: the workspace's next state (retry, dead letter, rate-limit requeue,
    lost), its pool's state (backoff, fail count, a never-started claim's slot given back) and
    the events the transition emits."""
    outcome = Outcome.KILLED if kill_requested else result.outcome
    detail = result.detail if outcome is result.outcome else "killed on request"
    # a run's own reason (spawn_failed, no_space) names how it failed: a success has none
    own = result.ended_reason if outcome is result.outcome and outcome is not Outcome.SUCCEEDED else None
    ended_reason = own or policy.ENDED_REASON[outcome]
    decision = policy.decide_exit(
        outcome,
        attempts_before=ws.attempts,
        max_attempts=ws.max_attempts,
        detail=detail,
        requeues_before=requeues_before,
    )
    check_transition(WorkspaceState(ws.state), decision.state)
    counts = decision.counts_attempt and outcome not in (Outcome.SUCCEEDED, Outcome.KILLED)
    new_pool = pool
    if run.reserved:  # it never started: nothing reached the provider
        new_pool = policy.undo_spawn(
            new_pool, marked=run.spawn_mark, previous=run.prev_last_spawn, day=run.counted_day
        )
    new_pool, backoff = _pool_after_exit(new_pool, outcome, result, now=now, rate=rate)
    common = {
        "agent": ws.agent,
        "exit_code": result.exit_code,
        "run": run_id,
        "duration_s": round(now - (run.started_at or run.claimed_at), 3),
        "reason": decision.reason,
        "dead_letter": decision.dead_letter,
        "ended_reason": ended_reason,
    }
    events = _exit_events(outcome, decision, now, common)
    if backoff is not None:  # first: the pool's state changed before the workspace's events
        events = (
            PlannedEvent(type="PoolBackoff", data={"pool": ws.pool, **backoff, "reason": result.detail}),
            *events,
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
        events=events,
    )


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
                now=_dt(now),
                retry_at=_dt(result.retry_at) if result.retry_at else None,
                rate=rate,
                fail_count=fails,
            ).timestamp()
        until = max(until, state.backoff_until or 0.0)
        return (
            PoolState(
                backoff_until=until,
                fail_count=fails,
                last_spawn=state.last_spawn,
                daily_count=state.daily_count,
                daily_day=state.daily_day,
            ),
            {"until": until, "fail_count": fails},
        )
    if outcome is Outcome.SUCCEEDED and state.fail_count:
        return (
            PoolState(
                backoff_until=state.backoff_until,
                fail_count=0,
                last_spawn=state.last_spawn,
                daily_count=state.daily_count,
                daily_day=state.daily_day,
            ),
            None,
        )
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
