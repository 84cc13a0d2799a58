"""The pure gate policy: pacing, daily limits, backoff, retries, ETA and queue order.

Policy reads no clock, so every test picks `now`; Hypothesis explores the time line.
"""

import json
import math
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatch_runner.model import Outcome, Priority, WorkspaceState
from dispatch_runner.policy import (
    ETA_WINDOW,
    MAX_RETRY_DELAY_S,
    ExitDecision,
    PoolGate,
    PoolLimit,
    PoolState,
    RateConfig,
    after_spawn,
    daily_used,
    day_bounds,
    day_key,
    decide_exit,
    estimate_wait_s,
    exceeds_max_wait,
    has_capacity,
    next_spawn_at,
    order_key,
    pacing_delay_s,
    parse_retry_at,
    pool_gate,
    rate_limit_backoff_until,
    retry_delay_s,
    to_dt,
    undo_spawn,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "agent-transcripts"
DAY = timedelta(days=1)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


# ---- strategies -----------------------------------------------------------------------------

# Whole milliseconds keep epoch round trips (datetime -> float -> datetime) exact.
instants = st.builds(
    lambda base, ms: base + timedelta(milliseconds=ms),
    st.just(utc(2000, 1, 1)),
    st.integers(min_value=0, max_value=100 * 365 * 86_400_000),
)
reset_times = st.builds(time, st.integers(0, 23), st.integers(0, 59))
delays = st.floats(min_value=0, max_value=7200, allow_nan=False)
rates = st.builds(
    RateConfig,
    reset_utc=reset_times,
    daily_limit=st.one_of(st.none(), st.integers(1, 500)),
    min_delay=delays,
    sustained_delay=delays,
    burst_window=st.floats(min_value=0, max_value=24, allow_nan=False),
    burst_delay=delays,
)


def seconds_until_reset(reset: time, now: datetime) -> float:
    """Independent oracle: seconds from `now` to the next reset strictly after it."""
    day_us = 86_400 * 10**6
    reset_us = (reset.hour * 3600 + reset.minute * 60) * 10**6
    now_us = (now.hour * 3600 + now.minute * 60 + now.second) * 10**6 + now.microsecond
    left_us = (reset_us - now_us) % day_us
    return (left_us or day_us) / 10**6


# ---- pacing ---------------------------------------------------------------------------------


@given(rate=rates, now=instants)
def test_pacing_delay_is_never_below_min_delay(rate: RateConfig, now: datetime) -> None:
    assert pacing_delay_s(rate, now) >= rate.min_delay


@given(rate=rates, now=instants)
def test_pacing_uses_burst_delay_exactly_when_the_next_reset_is_within_the_burst_window(
    rate: RateConfig, now: datetime
) -> None:
    hours_left = seconds_until_reset(rate.reset_utc, now) / 3600
    in_burst = rate.burst_window > 0 and hours_left <= rate.burst_window
    expected = max(rate.burst_delay if in_burst else rate.sustained_delay, rate.min_delay)
    assert pacing_delay_s(rate, now) == expected


BURSTY = RateConfig(reset_utc=time(6, 0), min_delay=10, sustained_delay=120, burst_window=3, burst_delay=30)


@pytest.mark.parametrize(
    ("now", "delay"),
    [
        (utc(2026, 5, 1, 2, 59, 59), 120.0),  # 3 h 0 min 1 s before the reset: sustained
        (utc(2026, 5, 1, 3, 0, 0), 30.0),  # exactly burst_window hours before: burst
        (utc(2026, 5, 1, 5, 59, 59), 30.0),
        (utc(2026, 5, 1, 6, 0, 0), 120.0),  # the reset itself starts a new day: sustained
        (utc(2026, 5, 1, 12, 0, 0), 120.0),
    ],
)
def test_burst_delay_applies_within_burst_window_before_reset(now: datetime, delay: float) -> None:
    assert pacing_delay_s(BURSTY, now) == delay


@pytest.mark.parametrize(
    ("now", "delay"),
    [
        (utc(2026, 5, 1, 21, 59), 120.0),
        (utc(2026, 5, 1, 22, 0), 30.0),  # window 22:00 -> 01:00 crosses midnight
        (utc(2026, 5, 1, 23, 30), 30.0),
        (utc(2026, 5, 2, 0, 30), 30.0),
        (utc(2026, 5, 2, 1, 0), 120.0),
        (utc(2026, 5, 2, 1, 1), 120.0),
    ],
)
def test_burst_window_crossing_midnight_counts_down_to_the_next_reset(now: datetime, delay: float) -> None:
    rate = RateConfig(reset_utc=time(1, 0), sustained_delay=120, burst_window=3, burst_delay=30)
    assert pacing_delay_s(rate, now) == delay


def test_min_delay_raises_a_shorter_burst_delay() -> None:
    rate = RateConfig(reset_utc=time(6, 0), min_delay=45, sustained_delay=120, burst_window=3, burst_delay=30)
    assert pacing_delay_s(rate, utc(2026, 5, 1, 5, 0)) == 45.0


@given(rate=rates, now=instants, ago_s=st.integers(min_value=0, max_value=10_000))
def test_next_spawn_at_is_never_before_now_and_waits_the_pacing_delay(
    rate: RateConfig, now: datetime, ago_s: int
) -> None:
    last = now - timedelta(seconds=ago_s)
    at = next_spawn_at(rate, last_spawn=last, now=now)
    assert at >= now
    assert at == max(now, last + timedelta(seconds=pacing_delay_s(rate, now)))


@given(rate=rates, now=instants)
def test_next_spawn_at_is_now_for_a_pool_that_never_spawned(rate: RateConfig, now: datetime) -> None:
    assert next_spawn_at(rate, last_spawn=None, now=now) == now


# ---- reset-to-reset days and the daily count ------------------------------------------------


@given(reset=reset_times, now=instants)
def test_day_bounds_contain_now_span_24_hours_and_start_at_the_reset(reset: time, now: datetime) -> None:
    start, end = day_bounds(reset, now)
    assert start <= now < end
    assert end - start == DAY
    assert (start.hour, start.minute, start.second, start.microsecond) == (reset.hour, reset.minute, 0, 0)
    assert start.tzinfo is UTC


def test_day_bounds_before_the_reset_belong_to_the_previous_day() -> None:
    assert day_bounds(time(6, 0), utc(2026, 5, 1, 5, 59)) == (utc(2026, 4, 30, 6), utc(2026, 5, 1, 6))
    assert day_bounds(time(6, 0), utc(2026, 5, 1, 6, 0)) == (utc(2026, 5, 1, 6), utc(2026, 5, 2, 6))


@given(rate=rates, now=instants, count=st.integers(1, 1000))
def test_daily_used_counts_today_and_resets_on_the_next_reset_to_reset_day(
    rate: RateConfig, now: datetime, count: int
) -> None:
    state = PoolState(daily_count=count, daily_day=day_key(rate, now))
    _, next_reset = day_bounds(rate.reset_utc, now)
    assert daily_used(rate, state, now) == count
    assert daily_used(rate, state, next_reset - timedelta(microseconds=1)) == count
    assert daily_used(rate, state, next_reset) == 0
    assert daily_used(rate, state, now + DAY) == 0


def test_daily_used_is_zero_for_a_pool_that_never_counted() -> None:
    assert daily_used(RateConfig(), PoolState(), utc(2026, 5, 1)) == 0


# ---- the pool gate --------------------------------------------------------------------------

NOW = utc(2026, 5, 1, 12, 0)
LIMITED = RateConfig(reset_utc=time(6, 0), daily_limit=2, sustained_delay=60)


def test_pool_gate_backoff_wins_over_daily_limit_and_pacing() -> None:
    until = NOW + timedelta(minutes=5)
    state = PoolState(
        backoff_until=until.timestamp(),
        last_spawn=NOW.timestamp(),
        daily_count=2,
        daily_day=day_key(LIMITED, NOW),
    )
    assert pool_gate(LIMITED, state, NOW) == PoolGate(False, until, "backoff")


def test_pool_gate_daily_limit_wins_over_pacing_and_wakes_at_the_next_reset() -> None:
    state = PoolState(last_spawn=NOW.timestamp(), daily_count=2, daily_day=day_key(LIMITED, NOW))
    assert pool_gate(LIMITED, state, NOW) == PoolGate(False, utc(2026, 5, 2, 6), "daily limit")


def test_pool_gate_pacing_wakes_at_last_spawn_plus_the_delay() -> None:
    last = NOW - timedelta(seconds=20)
    state = PoolState(last_spawn=last.timestamp(), daily_count=1, daily_day=day_key(LIMITED, NOW))
    assert pool_gate(LIMITED, state, NOW) == PoolGate(False, last + timedelta(seconds=60), "pacing")


def test_pool_gate_opens_once_the_pacing_delay_has_passed() -> None:
    last = NOW - timedelta(seconds=60)
    state = PoolState(last_spawn=last.timestamp(), daily_count=1, daily_day=day_key(LIMITED, NOW))
    assert pool_gate(LIMITED, state, NOW) == PoolGate(True)


def test_pool_gate_ignores_an_expired_backoff_and_a_count_from_yesterday() -> None:
    yesterday = NOW - DAY
    state = PoolState(
        backoff_until=(NOW - timedelta(seconds=1)).timestamp(),
        daily_count=2,
        daily_day=day_key(LIMITED, yesterday),
    )
    assert pool_gate(LIMITED, state, NOW) == PoolGate(True)


def test_pool_gate_without_rates_is_only_closed_by_backoff() -> None:
    busy = PoolState(last_spawn=NOW.timestamp(), daily_count=10_000, daily_day="x")
    assert pool_gate(None, busy, NOW) == PoolGate(True)
    until = NOW + timedelta(seconds=1)
    assert pool_gate(None, PoolState(backoff_until=until.timestamp()), NOW) == PoolGate(
        False, until, "backoff"
    )


@given(
    rate=rates,
    now=instants,
    backoff_s=st.integers(1, 100_000),
    used=st.integers(0, 600),
    ago_s=st.integers(0, 10_000),
)
def test_pool_gate_precedence_is_backoff_then_daily_limit_then_pacing(
    rate: RateConfig, now: datetime, backoff_s: int, used: int, ago_s: int
) -> None:
    last = now - timedelta(seconds=ago_s)
    base = PoolState(last_spawn=last.timestamp(), daily_count=used, daily_day=day_key(rate, now))
    until = now + timedelta(seconds=backoff_s)
    backed = PoolState(
        backoff_until=until.timestamp(),
        last_spawn=base.last_spawn,
        daily_count=used,
        daily_day=base.daily_day,
    )
    assert pool_gate(rate, backed, now) == PoolGate(False, until, "backoff")

    gate = pool_gate(rate, base, now)
    paced_until = last + timedelta(seconds=pacing_delay_s(rate, now))
    if rate.daily_limit is not None and used >= rate.daily_limit:
        assert gate == PoolGate(False, day_bounds(rate.reset_utc, now)[1], "daily limit")
    elif paced_until > now:
        assert gate == PoolGate(False, paced_until, "pacing")
    else:
        assert gate == PoolGate(True)
    if not gate.open:
        assert gate.wake_at is not None and gate.wake_at > now


# ---- after a spawn ----------------------------------------------------------------------------


@given(rate=rates, now=instants, count=st.integers(0, 500), fails=st.integers(0, 9))
def test_after_spawn_counts_the_spawn_today_and_keeps_backoff_state(
    rate: RateConfig, now: datetime, count: int, fails: int
) -> None:
    state = PoolState(
        backoff_until=123.0, fail_count=fails, last_spawn=1.0, daily_count=count, daily_day=day_key(rate, now)
    )
    assert after_spawn(rate, state, now) == PoolState(
        backoff_until=123.0,
        fail_count=fails,
        last_spawn=now.timestamp(),
        daily_count=count + 1,
        daily_day=day_key(rate, now),
    )


def test_after_spawn_on_a_new_day_starts_the_count_at_one() -> None:
    yesterday = NOW - DAY
    state = PoolState(last_spawn=yesterday.timestamp(), daily_count=7, daily_day=day_key(LIMITED, yesterday))
    after = after_spawn(LIMITED, state, NOW)
    assert (after.daily_count, after.daily_day) == (1, "2026-05-01T06:00:00+00:00")
    assert after.last_spawn == NOW.timestamp()


def test_after_spawn_without_rates_counts_the_day_by_the_default_reset() -> None:
    state = PoolState(backoff_until=5.0, fail_count=2, last_spawn=1.0, daily_count=3, daily_day="d")
    today = day_key(RateConfig(), NOW)
    assert after_spawn(None, state, NOW) == PoolState(
        backoff_until=5.0, fail_count=2, last_spawn=NOW.timestamp(), daily_count=1, daily_day=today
    )


# ---- capacity ---------------------------------------------------------------------------------


@given(
    total=st.one_of(st.none(), st.integers(-5, 0)),
    running=st.integers(0, 10_000),
    model_running=st.integers(0, 10_000),
)
def test_a_missing_or_non_positive_limit_is_unlimited(
    total: int | None, running: int, model_running: int
) -> None:
    limit = PoolLimit(total=total, models={"m": 0, "n": -1})
    for model in (None, "m", "n", "other"):
        assert has_capacity(limit, pool_running=running, model=model, model_running=model_running)
    assert has_capacity(None, pool_running=running, model="m", model_running=model_running)


@given(total=st.integers(1, 50), running=st.integers(0, 100))
def test_pool_total_limit_admits_strictly_fewer_running(total: int, running: int) -> None:
    limit = PoolLimit(total=total)
    assert has_capacity(limit, pool_running=running, model=None, model_running=0) == (running < total)


def test_model_limits_apply_only_to_listed_models() -> None:
    limit = PoolLimit(total=5, models={"gpt-5.4": 1})
    assert not has_capacity(limit, pool_running=1, model="gpt-5.4", model_running=1)
    assert has_capacity(limit, pool_running=1, model="gpt-5.4", model_running=0)
    assert has_capacity(limit, pool_running=4, model="o3", model_running=4)
    assert has_capacity(limit, pool_running=4, model=None, model_running=4)
    assert not has_capacity(limit, pool_running=5, model="o3", model_running=0)


# ---- retries and exits ------------------------------------------------------------------------


@pytest.mark.parametrize(("attempt", "delay"), [(1, 5.0), (2, 10.0), (3, 20.0), (4, 40.0)])
def test_retry_delay_doubles_from_five_seconds(attempt: int, delay: float) -> None:
    assert retry_delay_s(attempt) == delay


@given(n=st.integers(1, 10))
def test_retry_delay_is_five_times_two_to_the_attempt_minus_one(n: int) -> None:
    assert retry_delay_s(n) == 5.0 * 2 ** (n - 1)


def test_success_completes_the_workspace() -> None:
    assert decide_exit(Outcome.SUCCEEDED, attempts_before=2, max_attempts=3) == ExitDecision(
        WorkspaceState.COMPLETED, None
    )


def test_killed_run_is_killed_with_a_reason() -> None:
    assert decide_exit(Outcome.KILLED, attempts_before=0, max_attempts=3) == ExitDecision(
        WorkspaceState.KILLED, "killed on request"
    )
    assert decide_exit(Outcome.KILLED, attempts_before=0, max_attempts=3, detail="timeout") == ExitDecision(
        WorkspaceState.KILLED, "timeout"
    )


@given(before=st.integers(0, 20), max_attempts=st.integers(1, 20))
def test_rate_limited_run_is_requeued_without_counting_an_attempt(before: int, max_attempts: int) -> None:
    assert decide_exit(
        Outcome.RATE_LIMITED, attempts_before=before, max_attempts=max_attempts
    ) == ExitDecision(WorkspaceState.QUEUED, "rate limited", counts_attempt=False)


@pytest.mark.parametrize("outcome", [Outcome.FAILED, Outcome.TIMED_OUT])
def test_failures_retry_after_5_10_20_s_then_dead_letter(outcome: Outcome) -> None:
    decisions = [decide_exit(outcome, attempts_before=n, max_attempts=4, detail="exit 1") for n in range(4)]
    assert decisions == [
        ExitDecision(WorkspaceState.QUEUED, "exit 1", not_before_delay_s=5.0),
        ExitDecision(WorkspaceState.QUEUED, "exit 1", not_before_delay_s=10.0),
        ExitDecision(WorkspaceState.QUEUED, "exit 1", not_before_delay_s=20.0),
        ExitDecision(WorkspaceState.FAILED, "max retries exceeded: exit 1", dead_letter=True),
    ]


def test_lost_runs_retry_like_failures_but_end_lost() -> None:
    decisions = [decide_exit(Outcome.LOST, attempts_before=n, max_attempts=3) for n in range(3)]
    assert decisions == [
        ExitDecision(WorkspaceState.QUEUED, None, not_before_delay_s=5.0),
        ExitDecision(WorkspaceState.QUEUED, None, not_before_delay_s=10.0),
        ExitDecision(WorkspaceState.LOST, "max retries exceeded", dead_letter=True),
    ]


@given(max_attempts=st.integers(2, 30), extra=st.integers(0, 5))
def test_the_failure_at_max_attempts_and_beyond_dead_letters(max_attempts: int, extra: int) -> None:
    decision = decide_exit(
        Outcome.FAILED, attempts_before=max_attempts - 1 + extra, max_attempts=max_attempts
    )
    assert decision == ExitDecision(WorkspaceState.FAILED, "max retries exceeded", dead_letter=True)


def test_a_single_attempt_failure_is_dead_lettered() -> None:
    assert decide_exit(Outcome.FAILED, attempts_before=0, max_attempts=1) == ExitDecision(
        WorkspaceState.FAILED, "max retries exceeded", dead_letter=True
    )


# ---- rate-limit backoff ----------------------------------------------------------------------


def test_rate_limit_backoff_prefers_a_parsed_retry_time() -> None:
    retry_at = NOW + timedelta(minutes=7)
    assert rate_limit_backoff_until(now=NOW, retry_at=retry_at, rate=LIMITED, fail_count=3) == retry_at


def test_rate_limit_backoff_falls_back_to_the_daily_reset() -> None:
    assert rate_limit_backoff_until(now=NOW, retry_at=None, rate=LIMITED, fail_count=1) == utc(2026, 5, 2, 6)
    past = NOW - timedelta(seconds=1)
    assert rate_limit_backoff_until(now=NOW, retry_at=past, rate=LIMITED, fail_count=1) == utc(2026, 5, 2, 6)


@pytest.mark.parametrize(
    ("fails", "delay_s"), [(0, 60), (1, 60), (2, 120), (3, 240), (6, 1920), (7, 3600), (60, 3600)]
)
def test_rate_limit_backoff_without_hints_doubles_from_a_minute_up_to_an_hour(
    fails: int, delay_s: int
) -> None:
    assert rate_limit_backoff_until(now=NOW, retry_at=None, rate=None, fail_count=fails) == NOW + timedelta(
        seconds=delay_s
    )


# ---- retry times named by providers (real CLI transcripts) ------------------------------------


def _jsonl(name: str) -> list[dict[str, object]]:
    text = (FIXTURES / name).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _turn_failed_message(name: str) -> str:
    (failed,) = [e for e in _jsonl(name) if e["type"] == "turn.failed"]
    error = failed["error"]
    assert isinstance(error, dict)
    return str(error["message"])


def test_claude_usage_limit_text_resets_at_the_named_utc_clock_time() -> None:
    (result,) = _jsonl("claude-err-usage-limit-oauth-json.stdout")
    text = str(result["result"])
    assert "resets 6:38pm (UTC)" in text
    assert parse_retry_at(text, utc(2026, 11, 23, 17, 0)) == utc(2026, 11, 23, 18, 38)
    # after 18:38 the next such time is tomorrow
    assert parse_retry_at(text, utc(2026, 11, 23, 18, 38)) == utc(2026, 11, 24, 18, 38)


def test_claude_rate_limit_event_epoch_wins_over_the_text() -> None:
    (event,) = [
        e
        for e in _jsonl("claude-err-usage-limit-oauth-stream-json.stdout")
        if e["type"] == "rate_limit_event"
    ]
    info = event["rate_limit_info"]
    assert isinstance(info, dict)
    resets_at = float(info["resetsAt"])
    now = utc(2026, 11, 23, 14, 0)
    assert parse_retry_at("", now, resets_at_epoch=resets_at) == utc(2026, 11, 23, 18, 38, 7)
    # an epoch already past is ignored; the text still counts
    later = utc(2026, 11, 23, 19, 0)
    assert parse_retry_at("resets 6:38pm (UTC)", later, resets_at_epoch=resets_at) == utc(
        2026, 11, 24, 18, 38
    )


def test_codex_usage_limit_try_again_at_clock_time() -> None:
    text = _turn_failed_message("codex-err-429-usage-limit.stdout")
    assert text.endswith("try again at 6:38 PM.")
    assert parse_retry_at(text, utc(2026, 11, 23, 6, 0)) == utc(2026, 11, 23, 18, 38)


def test_codex_stream_rate_limit_try_again_in_seconds() -> None:
    text = _turn_failed_message("codex-err-stream-rate-limit.stdout")
    assert "Please try again in 2.674s" in text
    assert parse_retry_at(text, NOW) == NOW + timedelta(seconds=2.674)


@pytest.mark.parametrize(
    ("text", "after"),
    [
        ("Rate limited. Retry in 3 minutes.", timedelta(minutes=3)),
        ("please try again in 90 seconds", timedelta(seconds=90)),
        ("try again in 2 min", timedelta(minutes=2)),
    ],
)
def test_relative_retry_times_in_seconds_and_minutes(text: str, after: timedelta) -> None:
    assert parse_retry_at(text, NOW) == NOW + after


@pytest.mark.parametrize(
    ("text", "at"),
    [
        ("resets 12am (UTC)", utc(2026, 5, 2, 0, 0)),
        ("try again at 12:05 PM", utc(2026, 5, 1, 12, 5)),
        ("resets 11:59pm", utc(2026, 5, 1, 23, 59)),
    ],
)
def test_clock_retry_times_handle_noon_and_midnight(text: str, at: datetime) -> None:
    assert parse_retry_at(text, NOW) == at


@pytest.mark.parametrize(
    "name", ["claude-err-429-json.stdout", "claude-err-529-json.stdout", "codex-err-401.stdout"]
)
def test_texts_without_a_retry_time_parse_to_none(name: str) -> None:
    assert parse_retry_at((FIXTURES / name).read_text(encoding="utf-8"), NOW) is None


# ---- queue estimates and order --------------------------------------------------------------

runtimes = st.lists(st.floats(min_value=0.001, max_value=10_000, allow_nan=False), max_size=40)


@given(
    position=st.integers(1, 500),
    limit=st.integers(1, 20),
    history=runtimes.filter(bool),
    gate=st.floats(min_value=0, max_value=1000, allow_nan=False),
)
def test_eta_is_average_recent_runtime_times_rounds_ahead_with_gate_wait_as_floor(
    position: int, limit: int, history: list[float], gate: float
) -> None:
    recent = history[-ETA_WINDOW:]
    expected = max(sum(recent) / len(recent) * math.ceil(position / limit), gate)
    assert estimate_wait_s(
        position=position, limit=limit, runtimes_s=history, gate_wait_s=gate
    ) == pytest.approx(expected)


@given(position=st.integers(1, 500), limit=st.one_of(st.none(), st.integers(-3, 20)))
def test_eta_without_history_is_unknown_not_a_guess(position: int, limit: int | None) -> None:
    assert estimate_wait_s(position=position, limit=limit, runtimes_s=[]) is None


@pytest.mark.parametrize(
    ("eta", "position", "gate", "max_wait", "refused"),
    [
        (None, 0, 0.0, 0.0, False),  # a free slot starts now
        (None, 0, 30.0, 10.0, True),  # pacing alone waits longer
        (None, 2, 0.0, 0.0, True),  # a full pool never starts at once
        (None, 2, 0.0, 600.0, True),  # unknown: no bound can be promised
        (None, 2, 900.0, 600.0, True),  # pacing alone waits longer
        (30.0, 2, 0.0, 20.0, True),
        (30.0, 2, 0.0, 40.0, False),
        (30.0, 2, 0.0, None, False),
    ],
)
def test_max_wait_refuses_only_on_what_is_known(
    eta: float | None, position: int, gate: float, max_wait: float | None, refused: bool
) -> None:
    assert exceeds_max_wait(eta_s=eta, position=position, gate_wait_s=gate, max_wait_s=max_wait) is refused


def test_eta_examples() -> None:
    assert estimate_wait_s(position=3, limit=2, runtimes_s=[10.0, 30.0]) == 40.0
    assert estimate_wait_s(position=3, limit=None, runtimes_s=[10.0, 30.0]) == 60.0
    assert estimate_wait_s(position=1, limit=1, runtimes_s=[10.0], gate_wait_s=25.0) == 25.0
    assert estimate_wait_s(position=0, limit=1, runtimes_s=[10.0], gate_wait_s=25.0) == 25.0
    assert estimate_wait_s(position=0, limit=1, runtimes_s=[10.0]) == 0.0
    # only the last ETA_WINDOW runtimes count
    assert estimate_wait_s(position=1, limit=1, runtimes_s=[1000.0] + [2.0] * ETA_WINDOW) == 2.0


def test_order_key_runs_critical_first_then_oldest_then_by_sequence() -> None:
    queued = [
        ("low-old", Priority.LOW, 1.0, 1),
        ("medium", Priority.MEDIUM, 5.0, 2),
        ("critical-new", Priority.CRITICAL, 9.0, 3),
        ("high", Priority.HIGH, 7.0, 4),
        ("critical-old", Priority.CRITICAL, 2.0, 5),
        ("critical-same-time-later-seq", Priority.CRITICAL, 2.0, 6),
    ]
    ordered = sorted(queued, key=lambda q: order_key(q[1], q[2], q[3]))
    assert [q[0] for q in ordered] == [
        "critical-old",
        "critical-same-time-later-seq",
        "critical-new",
        "high",
        "medium",
        "low-old",
    ]


def test_to_dt_is_aware_utc() -> None:
    assert to_dt(NOW.timestamp()) == NOW
    assert to_dt(0).tzinfo is UTC


def test_rate_limit_requeues_stop_counting_as_free_after_the_cap() -> None:
    from dispatch_runner.policy import MAX_RATE_LIMIT_REQUEUES

    free = decide_exit(
        Outcome.RATE_LIMITED, attempts_before=0, max_attempts=3, requeues_before=MAX_RATE_LIMIT_REQUEUES - 1
    )
    assert free.state is WorkspaceState.QUEUED and free.counts_attempt is False
    capped = decide_exit(
        Outcome.RATE_LIMITED, attempts_before=2, max_attempts=3, requeues_before=MAX_RATE_LIMIT_REQUEUES
    )
    assert capped.state is WorkspaceState.FAILED and capped.dead_letter is True
    assert capped.reason is not None and "rate limited" in capped.reason


@pytest.mark.parametrize(
    ("text", "limited"),
    [
        ("API Error: Request rejected (429) · slow down", True),
        ("exceeded retry limit, last status: 429 Too Many Requests", True),
        ("You\u2019ve hit your usage limit. Upgrade to Pro", True),
        ("Ran 1429 tests, 3 FAILED", False),
        ("FAILED tests/test_rate_limit_handling.py::test_x", False),
    ],
)
def test_rate_limit_patterns_match_whole_phrases_only(text: str, limited: bool) -> None:
    from dispatch_runner.config import DEFAULT_RATE_LIMIT_PATTERNS
    from dispatch_runner.policy import matches_rate_limit

    assert matches_rate_limit(text, DEFAULT_RATE_LIMIT_PATTERNS) is limited


# ---- clamped delays (hardening) ----------------------------------------------------------------


@given(n=st.integers(11, 10**9))
def test_retry_delay_is_capped_at_an_hour_for_any_attempt_number(n: int) -> None:
    assert retry_delay_s(n) == MAX_RETRY_DELAY_S == 3600.0


@given(attempts=st.integers(0, 10**9))
def test_deciding_a_failed_exit_never_overflows_however_many_attempts_came_before(attempts: int) -> None:
    decision = decide_exit(Outcome.FAILED, attempts_before=attempts, max_attempts=10**9 + 2)
    assert decision.state is WorkspaceState.QUEUED
    assert 5.0 <= decision.not_before_delay_s <= MAX_RETRY_DELAY_S


@given(fails=st.integers(1, 10**9))
def test_rate_limit_backoff_never_overflows_and_stays_under_its_cap(fails: int) -> None:
    until = rate_limit_backoff_until(now=NOW, retry_at=None, rate=None, fail_count=fails)
    assert NOW < until <= NOW + timedelta(seconds=3600)


# ---- a claim that never started gives back its pacing mark and daily slot ----------------------


def test_undo_spawn_restores_the_previous_mark_and_the_daily_slot() -> None:
    before = PoolState(last_spawn=100.0, daily_count=4, daily_day="d1", fail_count=2, backoff_until=5.0)
    after = PoolState(last_spawn=200.0, daily_count=5, daily_day="d1", fail_count=2, backoff_until=5.0)
    assert undo_spawn(after, marked=200.0, previous=100.0, day="d1") == before


def test_undo_spawn_leaves_a_later_claims_mark_and_another_days_count() -> None:
    later = PoolState(last_spawn=300.0, daily_count=1, daily_day="d2")
    assert undo_spawn(later, marked=200.0, previous=100.0, day="d1") == later


def test_undo_spawn_never_counts_below_zero() -> None:
    state = PoolState(last_spawn=None, daily_count=0, daily_day="d1")
    assert undo_spawn(state, marked=None, previous=None, day="d1").daily_count == 0
