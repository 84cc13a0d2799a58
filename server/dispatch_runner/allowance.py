"""Daily allowances of pools and agents (agents.yaml `allowance:`, reference 001): what a day
may spend in runs, tokens and dollars, and what a claim or a dispatch does when it is spent.
Days run reset to reset (the pool's `rates.reset_utc`). Pure: no I/O, no clock."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from . import policy
from .errors import LimitRefused
from .policy import RateConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class Allowance:
    """A daily budget of a pool or an agent; None: no limit on that measure."""

    runs: int | None = None
    tokens: int | None = None
    usd: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Spent:
    """What a pool or an agent spent in one day."""

    runs: int = 0
    tokens: int = 0
    usd: float = 0.0


def exhausted(allowance: Allowance | None, spent: Spent) -> str | None:
    """The measure of `allowance` that `spent` has used up (runs, tokens, usd), or None."""
    if allowance is None:
        return None
    for measure in ("runs", "tokens", "usd"):
        limit = getattr(allowance, measure)
        if limit is not None and getattr(spent, measure) >= limit:
            return measure
    return None


def allowance_keys(pool: str, model: str | None) -> tuple[str, ...]:
    """The keys an allowance may be set on for a lane: its pool and its agent (`pool:model`)."""
    return (pool, f"{pool}:{model}") if model else (pool,)


def spend_day(rate: RateConfig | None, now: float) -> tuple[str, float]:
    """The reset-to-reset day a pool's spend counts on, and when the next one starts."""
    start, end = policy.day_bounds((rate or policy.DEFAULT_RATE).reset_utc, policy.to_dt(now))
    return start.isoformat(), end.timestamp()


class Budgets(Protocol):
    """What the allowance checks read of the gate's limits (store.base.Limits)."""

    @property
    def allowance(self) -> Mapping[str, Allowance]: ...
    @property
    def rates(self) -> Mapping[str, RateConfig]: ...


def used_up(
    pool: str, model: str | None, limits: Budgets, spent: Mapping[str, Spent], now: float
) -> tuple[str, float] | None:
    """The key (pool or agent) whose allowance a lane has used up today, and when it renews."""
    for key in allowance_keys(pool, model):
        if exhausted(limits.allowance.get(key), spent.get(key, Spent())):
            return key, spend_day(limits.rates.get(pool), now)[1]
    return None


def check_wait(
    pool: str,
    model: str | None,
    limits: Budgets,
    spent: Mapping[str, Spent],
    *,
    now: float,
    max_wait_s: float | None,
) -> float:
    """How long a dispatch waits for its pool's or agent's allowance to renew (0: it has some
    left); refused (LimitRefused) when that is longer than its max_wait_s."""
    used = used_up(pool, model, limits, spent, now)
    if used is None:
        return 0.0
    key, reset = used
    wait = reset - now
    if max_wait_s is not None and wait > max_wait_s:
        budget = limits.allowance[key]
        measure = exhausted(budget, spent.get(key, Spent())) or "runs"
        raise LimitRefused(
            "allowance",
            f"refused: {key!r} has used its daily allowance of {measure} "
            f"({getattr(budget, measure):g}); it renews at {policy.iso(reset)}, in {wait:.0f}s, "
            f"more than max_wait_s={max_wait_s:g}. Pick another agent, wait, or raise allowance "
            "in agents.yaml; nothing was queued",
        )
    return wait
