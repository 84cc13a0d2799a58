"""The files a run starts from and leaves behind (launch/runfiles.py): what the shim writes is
what recovery reads, and a damaged exit file reads as a lost run, never as an error that would
stop recovery for every other run."""

from datetime import time
from pathlib import Path

import pytest

from dispatch_runner.launch import runfiles
from dispatch_runner.model import Outcome
from dispatch_runner.policy import RateConfig
from dispatch_runner.store import RunExit


def test_the_exit_a_shim_writes_is_the_exit_recovery_reads(tmp_path: Path) -> None:
    result = RunExit(
        outcome=Outcome.RATE_LIMITED,
        exit_code=1,
        summary="limit",
        session_id="s-1",
        detail="429",
        retry_at=1234.5,
        ended_reason="rate_limited",
    )
    runfiles.write_exit_file(tmp_path, 7, result, ended_at=99.0)
    assert runfiles.read_exit_file(tmp_path, 7) == (result, 99.0)
    assert runfiles.read_exit_file(tmp_path, 8) is None


@pytest.mark.parametrize(
    "text", ["[]", "null", '"x"', "{", '{"outcome": "nope"}', '{"outcome": "completed", "ended_at": [1]}', ""]
)
def test_a_damaged_exit_file_reads_as_a_lost_run(tmp_path: Path, text: str) -> None:
    runfiles.exit_file(tmp_path, 7).write_text(text)
    found = runfiles.read_exit_file(tmp_path, 7)
    assert found is not None and found[0].outcome is Outcome.LOST


def test_a_pools_rate_settings_reach_the_shim_unchanged() -> None:
    rate = RateConfig(
        reset_utc=time(7, 30),
        daily_limit=40,
        min_delay=1.5,
        sustained_delay=2.0,
        burst_window=60,
        burst_delay=3,
    )
    assert runfiles.rate_from_spec(runfiles.rate_to_spec(rate)) == rate
    assert runfiles.rate_to_spec(None) is None and runfiles.rate_from_spec(None) is None


def test_a_start_failure_names_what_could_not_start_and_where() -> None:
    missing = FileNotFoundError(2, "No such file or directory")
    failed = runfiles.start_failure(missing, where="/ws/x", what="agent")
    assert failed.outcome is Outcome.FAILED and failed.ended_reason == "spawn_failed"
    assert failed.detail == "the agent could not start: No such file or directory (/ws/x)"
    full = runfiles.start_failure(OSError(28, "No space left on device"), where="/ws/y")
    assert full.ended_reason == "no_space" and full.pool_fault


def test_a_runs_spec_file_holds_no_store_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The spec sits beside the agent's files; the shim takes the whole URL from its environment."""
    from dispatch_runner.launch.shim import store_url

    monkeypatch.setenv("DISPATCH_RUNNER_STORE", "postgresql://runner:s3cret@db.internal/q")
    assert (
        store_url({"store": "postgresql://runner@db.internal/q"})
        == "postgresql://runner:s3cret@db.internal/q"
    )
    monkeypatch.delenv("DISPATCH_RUNNER_STORE")
    assert store_url({"store": "sqlite:////x/state.db"}) == "sqlite:////x/state.db"  # an older peer's spec
