"""The position and ETA a dispatch is told at enqueue, backend-neutral and pure: a store's counts
in, a plan out (lifecycle.py decides the rest of a workspace's life the same way)."""

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from .. import policy
from ..errors import QueueBusy
from ..policy import PoolState
from .base import Limits
from .lanes import limit_of


class QueueCounts(Protocol):
    """What an ETA may need to know. A backend may read each lazily: `plan_eta` asks only for the
    counts of the gate that binds, and for runtimes only when the dispatch has to wait."""

    @property
    def running_pool(self) -> int: ...  # running (and reserved) in the pool
    @property
    def running_lane(self) -> int: ...  # … of the dispatch's model
    @property
    def ahead_pool(self) -> int: ...  # queued in the pool at the dispatch's priority or more urgent
    @property
    def ahead_lane(self) -> int: ...  # … of the dispatch's model
    @property
    def runtimes(self) -> Sequence[float]: ...  # the pool's recent runtimes, oldest first


@dataclass(frozen=True, slots=True, kw_only=True)
class EtaPlan:
    position: int  # 1-based place behind the binding gate's free slots; 0: a slot is free
    eta_s: float | None  # None: unknown (a full gate and no finished run to estimate from)
    gate_wait_s: float  # the pool's time gate alone (pacing, daily limit, backoff)


def plan_eta(
    pool: str, model: str | None, state: PoolState, counts: QueueCounts, *, limits: Limits, now: float
) -> EtaPlan:
    """Where a new dispatch would wait and for how long. The binding gate is the model's own
    limit when it is tighter than the pool's (then only its lane counts), else the pool's; with
    no limit at all only the time gate can delay it."""
    gate = policy.pool_gate(limits.rates.get(pool), state, policy.to_dt(now))
    gate_wait = max((gate.wake_at.timestamp() - now) if gate.wake_at else 0.0, 0.0)
    limit = limit_of(pool, limits, state)
    total = limit.total_limit if limit else None
    model_cap = limit.model_limit(model) if limit else None
    lane = model_cap is not None and (total is None or model_cap < total)
    cap = model_cap if lane else total
    if cap is None:
        return EtaPlan(position=0, eta_s=gate_wait, gate_wait_s=gate_wait)
    running = counts.running_lane if lane else counts.running_pool
    ahead = counts.ahead_lane if lane else counts.ahead_pool
    if running + ahead < cap:
        return EtaPlan(position=0, eta_s=gate_wait, gate_wait_s=gate_wait)
    position = ahead + 1 - max(cap - running, 0)
    eta = policy.estimate_wait_s(
        position=position, limit=cap, runtimes_s=counts.runtimes, gate_wait_s=gate_wait
    )
    return EtaPlan(position=position, eta_s=eta, gate_wait_s=gate_wait)


def waiting(eta: EtaPlan, wait_s: float) -> EtaPlan:
    """The ETA when the dispatch must also wait `wait_s` (an allowance renewing) before it starts."""
    if not wait_s:
        return eta
    return replace(eta, eta_s=max(eta.eta_s or 0.0, wait_s), gate_wait_s=max(eta.gate_wait_s, wait_s))


def check_max_wait(eta: EtaPlan, *, pool: str, max_wait_s: float | None) -> None:
    """Refuse (QueueBusy) a dispatch that would wait past its max_wait_s."""
    if policy.exceeds_max_wait(
        eta_s=eta.eta_s, position=eta.position, gate_wait_s=eta.gate_wait_s, max_wait_s=max_wait_s
    ):
        raise QueueBusy(pool, eta.eta_s, max_wait_s or 0.0, eta.position)
