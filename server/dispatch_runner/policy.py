"""Gate decisions as pure functions of (state, now): pacing, daily limits, backoff, retries, ETA.

Policy never awaits, sleeps, logs or reads a clock: `now` is passed in, so tests choose it and
Hypothesis can explore it. Times are aware UTC datetimes or epoch seconds (floats) as named.
"""

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, time, timedelta
from typing import Final

from .model import Outcome, WorkspaceState

RETRY_BASE_S: Final = 5.0
DEFAULT_MAX_ATTEMPTS: Final = 3
# Rate limit without a parsed retry time and without a configured reset: back off
# 60 s, doubling per consecutive rate-limited run of the pool, capped at an hour.
RATE_LIMIT_BASE_S: Final = 60.0
RATE_LIMIT_CAP_S: Final = 3600.0
ETA_WINDOW: Final = 16
MAX_RATE_LIMIT_REQUEUES: Final = 10
# Retries wait 5 s * 2^(n-1), never longer than this (no overflow after many attempts).
MAX_RETRY_DELAY_S: Final = 3600.0

# Bounds of the numbers a dispatch may carry (documented in the README and the tool schemas).
MAX_ATTEMPTS_LIMIT: Final = 100
MAX_TIMEOUT_S: Final = 7 * 86400.0
MAX_QUEUE_WAIT_S: Final = 7 * 86400.0
MAX_WAIT_TIMEOUT_S: Final = 3600.0
# The not_before of a held workspace (waiting for others, or for its group's cap): 9999-12-31.
# No claim reaches it and no peer wakes for it; the event that releases it sets its real time.
HELD_UNTIL: Final = 253402300799.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolLimit:
    """Concurrency of one pool: `total` and per-model limits; None or <= 0 is unlimited."""

    total: int | None = None
    models: Mapping[str, int] = field(default_factory=dict)

    def model_limit(self, model: str | None) -> int | None:
        if model is None:
            return None
        return _limit(self.models.get(model))

    @property
    def total_limit(self) -> int | None:
        return _limit(self.total)


def _limit(value: int | None) -> int | None:
    return value if value is not None and value > 0 else None


@dataclass(frozen=True, slots=True, kw_only=True)
class RateConfig:
    reset_utc: time = time(6, 0)
    daily_limit: int | None = None
    min_delay: float = 0.0
    sustained_delay: float = 0.0
    burst_window: float = 0.0  # hours before the reset in which burst_delay applies
    burst_delay: float = 0.0


DEFAULT_RATE: Final = RateConfig()


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolState:
    """Durable per-pool state (survives restarts)."""

    backoff_until: float | None = None
    fail_count: int = 0
    last_spawn: float | None = None
    daily_count: int = 0
    daily_day: str | None = None
    effective_limit: int | None = None  # an adaptive pool's current limit (None: its configured one)
    clean_streak: int = 0  # clean runs since the adaptive limit last changed


# ---- time helpers -------------------------------------------------------------------------


def to_dt(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


def iso(epoch_s: float | None) -> str | None:
    """ISO-8601 UTC with millisecond precision, or None."""
    if epoch_s is None:
        return None
    return to_dt(epoch_s).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str | None) -> float | None:
    """Epoch seconds of an ISO-8601 time as `iso` writes it (None for None or "")."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() if text else None


def duration_text(seconds: float) -> str:
    """84s, 2.41s, 12m05s, 1h03m: the agent's wall time, the same everywhere it is shown."""
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 600:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def day_bounds(reset_utc: time, now: datetime) -> tuple[datetime, datetime]:
    """The reset-to-reset day containing `now`: (last reset <= now, next reset > now)."""
    start = datetime.combine(now.date(), reset_utc, tzinfo=UTC)
    if now < start:
        start -= timedelta(days=1)
    return start, start + timedelta(days=1)


def day_key(rate: RateConfig, now: datetime) -> str:
    """Identifies the reset-to-reset day, for counting daily spawns."""
    return day_bounds(rate.reset_utc, now)[0].isoformat()


# ---- pacing and daily limit ---------------------------------------------------------------


def pacing_delay_s(rate: RateConfig, now: datetime) -> float:
    """Seconds between two spawns: burst_delay near the reset, else sustained; >= min_delay."""
    _, next_reset = day_bounds(rate.reset_utc, now)
    hours_left = (next_reset - now).total_seconds() / 3600.0
    in_burst = rate.burst_window > 0 and hours_left <= rate.burst_window
    delay = rate.burst_delay if in_burst else rate.sustained_delay
    return max(delay, rate.min_delay, 0.0)


def next_spawn_at(rate: RateConfig, *, last_spawn: datetime | None, now: datetime) -> datetime:
    """Earliest time the pool may spawn again: sustained or burst delay, never under min_delay."""
    if last_spawn is None:
        return now
    return max(now, last_spawn + timedelta(seconds=pacing_delay_s(rate, now)))


def daily_used(rate: RateConfig, state: PoolState, now: datetime) -> int:
    """Spawns counted today; a count recorded on an earlier day is zero today."""
    return state.daily_count if state.daily_day == day_key(rate, now) else 0


@dataclass(frozen=True, slots=True)
class PoolGate:
    """Whether a pool may spawn now, and if not, when to look again (None: on an event)."""

    open: bool
    wake_at: datetime | None = None
    reason: str | None = None


def pool_gate(rate: RateConfig | None, state: PoolState, now: datetime) -> PoolGate:
    """Time-based gates of a pool: backoff, daily limit, pacing. Capacity is checked apart."""
    if state.backoff_until is not None and state.backoff_until > now.timestamp():
        return PoolGate(False, to_dt(state.backoff_until), "backoff")
    if rate is None:
        return PoolGate(True)
    if rate.daily_limit and rate.daily_limit > 0 and daily_used(rate, state, now) >= rate.daily_limit:
        return PoolGate(False, day_bounds(rate.reset_utc, now)[1], "daily limit")
    last = to_dt(state.last_spawn) if state.last_spawn is not None else None
    at = next_spawn_at(rate, last_spawn=last, now=now)
    if at > now:
        return PoolGate(False, at, "pacing")
    return PoolGate(True)


def after_spawn(rate: RateConfig | None, state: PoolState, now: datetime) -> PoolState:
    """Pool state once a spawn was claimed at `now`. Daily use is counted for every pool (by the
    default 06:00 UTC reset when the pool has no rates), so status can always show it."""
    rate = rate or DEFAULT_RATE
    today = day_key(rate, now)
    return replace(
        state, last_spawn=now.timestamp(), daily_count=daily_used(rate, state, now) + 1, daily_day=today
    )


def undo_spawn(
    state: PoolState, *, marked: float | None, previous: float | None, day: str | None
) -> PoolState:
    """Pool state once a claim that never started is given back: its pacing mark and its daily
    slot are returned. `marked` is the last_spawn the claim wrote, `previous` the one before it,
    `day` the day it was counted on; a later claim's mark or an earlier day's count stay."""
    last = previous if marked is not None and state.last_spawn == marked else state.last_spawn
    count = state.daily_count
    if day is not None and state.daily_day == day and count > 0:
        count -= 1
    return replace(state, last_spawn=last, daily_count=count)


def has_capacity(
    limit: PoolLimit | None, *, pool_running: int, model: str | None, model_running: int
) -> bool:
    """Pool total and per-model limit, both counted with reservations."""
    if limit is None:
        return True
    total = limit.total_limit
    if total is not None and pool_running >= total:
        return False
    model_cap = limit.model_limit(model)
    return model_cap is None or model_running < model_cap


# ---- retries, dead letters, rate-limit backoff ---------------------------------------------


def _doubling(base_s: float, n: int, cap_s: float) -> float:
    """base_s * 2^n, capped; the exponent is clamped first, so any n is fine."""
    return min(base_s * 2.0 ** min(max(n, 0), 62), cap_s)


def retry_delay_s(attempt: int) -> float:
    """Delay before retry after failed attempt n (1-based): 5 s, 10 s, 20 s ... at most an hour."""
    return _doubling(RETRY_BASE_S, attempt - 1, MAX_RETRY_DELAY_S)


@dataclass(frozen=True, slots=True)
class ExitDecision:
    state: WorkspaceState
    reason: str | None
    not_before_delay_s: float = 0.0
    counts_attempt: bool = True
    dead_letter: bool = False


def decide_exit(
    outcome: Outcome,
    *,
    attempts_before: int,
    max_attempts: int,
    detail: str | None = None,
    requeues_before: int = 0,
    final: bool = False,
) -> ExitDecision:
    """Turn a run's outcome into the workspace's next state.

    `attempts_before` counts failed attempts before this run. Rate limits requeue without counting
    an attempt — up to MAX_RATE_LIMIT_REQUEUES times per workspace, after which a rate-limited run
    counts as a failure, so a run misread as rate-limited cannot loop forever. Failures and lost
    runs retry until `max_attempts`, then dead-letter. A `final` failure (a timeout its pool does
    not retry, a budget stop) fails at once.
    """
    if outcome is Outcome.SUCCEEDED:
        return ExitDecision(WorkspaceState.COMPLETED, None)
    if outcome is Outcome.KILLED:
        return ExitDecision(WorkspaceState.KILLED, detail or "killed on request")
    if outcome is Outcome.RATE_LIMITED:
        if requeues_before < MAX_RATE_LIMIT_REQUEUES:
            return ExitDecision(WorkspaceState.QUEUED, detail or "rate limited", counts_attempt=False)
        detail = f"rate limited {requeues_before + 1} times in a row" + (f": {detail}" if detail else "")
    if final and outcome is not Outcome.LOST:
        return ExitDecision(WorkspaceState.FAILED, detail or "failed")
    attempt = attempts_before + 1
    final_state = WorkspaceState.LOST if outcome is Outcome.LOST else WorkspaceState.FAILED
    if attempt >= max(max_attempts, 1):
        reason = "max retries exceeded" + (f": {detail}" if detail else "")
        return ExitDecision(final_state, reason, dead_letter=True)
    return ExitDecision(WorkspaceState.QUEUED, detail, not_before_delay_s=retry_delay_s(attempt))


FAULT_BACKOFF_BASE_S: Final = 30.0


def fault_backoff_s(fail_count: int) -> float:
    """How long a pool waits after a spawn failed for a machine-wide cause (a full disk, no
    processes left): 30 s, doubling per consecutive failure, at most an hour."""
    return _doubling(FAULT_BACKOFF_BASE_S, fail_count - 1, RATE_LIMIT_CAP_S)


# What ended a run, for status and events (`ended_reason`); a RunExit may name a more precise
# one (spawn_failed, no_space).
ENDED_REASON: Final[Mapping[Outcome, str | None]] = {
    Outcome.SUCCEEDED: None,
    Outcome.FAILED: "failed",
    Outcome.RATE_LIMITED: "rate_limited",
    Outcome.KILLED: "killed",
    Outcome.TIMED_OUT: "timeout",
    Outcome.LOST: "lost",
}


def rate_limit_backoff_until(
    *, now: datetime, retry_at: datetime | None, rate: RateConfig | None, fail_count: int
) -> datetime:
    """When a rate-limited pool may spawn again: the parsed retry time, else the configured
    daily reset, else an exponential backoff on consecutive rate limits."""
    if retry_at is not None and retry_at > now:
        return retry_at
    if rate is not None:
        return day_bounds(rate.reset_utc, now)[1]
    return now + timedelta(seconds=_doubling(RATE_LIMIT_BASE_S, fail_count - 1, RATE_LIMIT_CAP_S))


# ---- output classification -----------------------------------------------------------------

_RETRY_IN = re.compile(
    r"(?:try again|retry) in (\d+(?:\.\d+)?)\s*(s|sec|seconds?|m|min|minutes?)\b", re.IGNORECASE
)
_RETRY_AT_CLOCK = re.compile(r"(?:try again at|resets)\s+(\d{1,2})(?::(\d{2}))?\s*([ap]m)", re.IGNORECASE)


def matches_rate_limit(text: str, patterns: Iterable[str]) -> bool:
    """A pattern matches as a whole phrase: "429" in "status 429" but not in "Ran 1429 tests",
    "rate_limit" in "rate_limit_error" is no match either (test names are not rate limits)."""
    return any(re.search(rf"(?<![\w]){re.escape(p)}(?![\w])", text, re.IGNORECASE) for p in patterns if p)


def parse_retry_at(text: str, now: datetime, *, resets_at_epoch: float | None = None) -> datetime | None:
    """A retry time named by the provider: an epoch (claude's rate_limit_event), "try again in
    2.6s", or a clock time "try again at 6:38 PM" / "resets 6:38pm (UTC)" (taken as UTC, the next
    such time after now)."""
    if resets_at_epoch is not None and resets_at_epoch > now.timestamp():
        return to_dt(resets_at_epoch)
    m = _RETRY_IN.search(text)
    if m:
        value = float(m.group(1))
        unit_s = 60.0 if m.group(2).lower().startswith("m") else 1.0
        return now + timedelta(seconds=value * unit_s)
    m = _RETRY_AT_CLOCK.search(text)
    if m:
        hour = int(m.group(1)) % 12 + (12 if m.group(3).lower() == "pm" else 0)
        minute = int(m.group(2) or 0)
        if hour > 23 or minute > 59:
            return None
        at = datetime.combine(now.date(), time(hour, minute), tzinfo=UTC)
        return at if at > now else at + timedelta(days=1)
    return None


# ---- queue estimates -----------------------------------------------------------------------


def estimate_wait_s(
    *, position: int, limit: int | None, runtimes_s: Sequence[float], gate_wait_s: float = 0.0
) -> float | None:
    """Estimated seconds before the job at 1-based `position` in the pool queue starts, or None
    when nothing can be said: slots are full and no run of the pool has finished yet.

    Reference 004: with `limit` slots and an average recent runtime, position p waits
    ceil(p / limit) rounds. Pacing/backoff add their wait.
    """
    if position <= 0:
        return max(gate_wait_s, 0.0)
    slots = limit if limit and limit > 0 else 1
    recent = [r for r in runtimes_s[-ETA_WINDOW:] if r > 0]
    if not recent:
        return None
    return max((sum(recent) / len(recent)) * math.ceil(position / slots), gate_wait_s)


def exceeds_max_wait(
    *, eta_s: float | None, position: int, gate_wait_s: float, max_wait_s: float | None
) -> bool:
    """Whether a dispatch must be refused rather than wait past max_wait_s. A full pool with an
    unknown ETA cannot promise any bound, so it is refused: the caller asked for one."""
    if max_wait_s is None:
        return False
    if eta_s is not None:
        return eta_s > max_wait_s
    return position > 0 or gate_wait_s > max_wait_s


def order_key(priority: int, created_at: float, seq: int, share_rank: int = 0) -> tuple[int, int, float, int]:
    """Priority first (critical=0), then the fair-share round (0 without fair share), then oldest."""
    return (priority, share_rank, created_at, seq)
