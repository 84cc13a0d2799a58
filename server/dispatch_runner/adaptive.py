"""Adaptive limits (AIMD), pure: a pool's effective concurrency halves when its runs hit rate
limits and grows back by one after a streak of clean runs, between a floor and its configured
limit. The store keeps the number (pool_state), so every peer and host obeys the same one."""

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TypeAlias

from .policy import PoolLimit, PoolState

# what a run's end needs to move adaptive limits: by key (its pool, or `pool:model` for a model's
# own limit), the AIMD and the configured limit it moves under
Adaptive: TypeAlias = Mapping[str, tuple["Aimd", int]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Aimd:
    """`pools.X.adaptive`: the pool's effective limit halves on a rate limit (never under
    `floor`) and grows back by one after `clean_streak` clean runs (never over its limit)."""

    floor: int = 1
    clean_streak: int = 5


def effective_limit(aimd: Aimd | None, limit: PoolLimit | None, state: PoolState) -> PoolLimit | None:
    """The limit a claim obeys: an adaptive pool's current one, within [floor, configured]."""
    if aimd is None or limit is None or limit.total_limit is None or state.effective_limit is None:
        return limit
    total = min(max(state.effective_limit, aimd.floor), limit.total_limit)
    return replace(limit, total=total)


def adapt(aimd: Aimd, configured: int, state: PoolState, *, rate_limited: bool, clean: bool) -> PoolState:
    """The pool's adaptive limit after a run: multiplicative decrease on a rate limit, additive
    increase by one after a streak of clean runs; other runs (failures, kills) change nothing."""
    current = min(max(state.effective_limit or configured, aimd.floor), configured)
    if rate_limited:
        return replace(state, effective_limit=max(aimd.floor, current // 2), clean_streak=0)
    if not clean:
        return state
    streak = state.clean_streak + 1
    if streak >= aimd.clean_streak and current < configured:
        return replace(state, effective_limit=current + 1, clean_streak=0)
    return replace(state, effective_limit=current, clean_streak=min(streak, aimd.clean_streak))
