"""Which gate lanes a claim may take from now, and the limits it obeys there — a pool's and a
model's, adaptive ones at their current value. Pure, like the lifecycle it serves."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from .. import allowance, policy
from ..adaptive import effective_limit
from ..policy import PoolState
from .base import Limits
from .lifecycle import Lane


@dataclass(frozen=True, slots=True)
class Opened:
    taken: list[Lane]  # the lanes a claim may take from now
    wake: list[float]  # when a time-gated one opens
    why: dict[Lane, str]  # why each other lane is closed: "full", "backoff until …", …


def open_lanes(
    lanes: Sequence[Lane],
    *,
    pools: Mapping[str, PoolState],
    running_pool: Mapping[str, int],
    running_model: Mapping[tuple[str, str | None], int],
    limits: Limits,
    now: float,
    spent: Mapping[str, allowance.Spent] | None = None,
) -> Opened:
    """Capacity-first: the lanes a claim may take from now — the pool's time gate (backoff, daily
    limit, pacing) is open, neither the pool's nor the agent's allowance is used up (`spent`:
    today's spend of every key with an allowance) and the pool and the model have room (an
    adaptive pool's effective limit) — and the times at which a time-gated pool opens (a full
    lane opens on a completion, not at a time)."""
    out = Opened([], [], {})
    gates: dict[str, policy.PoolGate] = {}
    for lane in lanes:
        state = pools.get(lane.pool, PoolState())
        if spent is not None and (used := allowance.used_up(lane.pool, lane.model, limits, spent, now)):
            out.wake.append(used[1])
            out.why[lane] = f"allowance used up until {policy.iso(used[1])}"
            continue
        if lane.pool not in gates:
            gates[lane.pool] = policy.pool_gate(limits.rates.get(lane.pool), state, policy.to_dt(now))
        gate = gates[lane.pool]
        if not gate.open:
            if gate.wake_at is not None:
                out.wake.append(gate.wake_at.timestamp())
            until = f" until {policy.iso(gate.wake_at.timestamp())}" if gate.wake_at else ""
            out.why[lane] = f"{gate.reason}{until}"
            continue
        model_state = pools.get(f"{lane.pool}:{lane.model}") if lane.model else None
        if policy.has_capacity(
            limit_of(lane.pool, limits, state, model=lane.model, model_state=model_state),
            pool_running=running_pool.get(lane.pool, 0),
            model=lane.model,
            model_running=running_model.get((lane.pool, lane.model), 0),
        ):
            out.taken.append(lane)
        else:
            out.why[lane] = "full"
    return out


def limit_of(
    pool: str,
    limits: Limits,
    state: PoolState,
    *,
    model: str | None = None,
    model_state: PoolState | None = None,
) -> policy.PoolLimit | None:
    """The limit a claim obeys in `pool`: its configured one, or an adaptive pool's current one;
    with `model_state`, the model's own adaptive limit (`pool:model`) too."""
    limit = effective_limit(limits.adaptive.get(pool), limits.concurrency.get(pool), state)
    aimd = limits.adaptive.get(f"{pool}:{model}") if model else None
    cap = limit.model_limit(model) if limit is not None else None
    if limit is None or model is None or aimd is None or model_state is None or cap is None:
        return limit
    shrunk = effective_limit(aimd, policy.PoolLimit(total=cap), model_state)
    current = shrunk.total_limit if shrunk is not None else None
    return replace(limit, models={**limit.models, model: current or cap})


def pool_binds(
    lane: Lane,
    limits: Limits,
    state: PoolState,
    *,
    running: tuple[Mapping[str, int], Mapping[tuple[str, str | None], int]],
) -> bool:
    """Whether a full lane is full by its pool's total alone (a run of any model of the pool frees
    its slot), not by its model's own limit (only a run of that model does)."""
    limit = limit_of(lane.pool, limits, state)
    if limit is None:
        return False
    total, cap = limit.total_limit, limit.model_limit(lane.model)
    model_full = cap is not None and running[1].get((lane.pool, lane.model), 0) >= cap
    return total is not None and running[0].get(lane.pool, 0) >= total and not model_full
