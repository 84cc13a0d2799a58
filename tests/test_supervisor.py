"""Process plumbing: identity by pid + start time, group kills, and the fork server."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import dispatch_runner.launch.supervisor as supervisor
from dispatch_runner.launch import launcher
from tests.conftest import wait_for


def test_a_zombie_or_reused_pid_is_not_alive() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    start = supervisor.proc_start(child.pid)
    wait_for(
        lambda: (stat := supervisor._stat(child.pid)) is None or stat[0] == "Z",
        message="the child to exit",
    )
    assert not supervisor.is_alive(child.pid, start)  # a zombie is dead
    child.wait()
    me = os.getpid()
    assert supervisor.is_alive(me, supervisor.proc_start(me), supervisor.boot_id())
    assert not supervisor.is_alive(me, (supervisor.proc_start(me) or 0) + 1)  # another process
    assert not supervisor.is_alive(me, None, "another-boot")


def test_terminate_group_escalates_to_sigkill_for_a_process_ignoring_sigterm() -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    assert supervisor.terminate_group(proc.pid, grace_s=0.3)
    assert proc.wait(timeout=5) == -signal.SIGKILL
    proc.stdout.close()


def test_a_fork_server_that_stops_reading_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(launcher, "FORKSERVER_STALL_S", 0.3)
    shims = launcher.ShimLauncher(forkserver=True, log_dir=tmp_path)
    env = {**os.environ, "PAD": "x" * 8000}  # large requests fill the pipe quickly
    spec = tmp_path / "missing-spec.json"  # the shim fails on it: only the plumbing matters here
    try:
        assert shims.spawn([], env=env, log_path=tmp_path / "shim.log", spec_path=spec) is None
        stuck = shims._server_pid
        assert stuck is not None
        os.kill(stuck, signal.SIGSTOP)
        started = time.monotonic()
        for _ in range(20):  # 160 KB: more than a pipe holds
            shims.spawn([], env=env, log_path=tmp_path / "shim.log", spec_path=spec)
        assert time.monotonic() - started < 10
        assert shims._server_pid not in (None, stuck)
        wait_for(lambda: shims.reap() <= 1, message="the stuck server killed and reaped")
    finally:
        shims.close()
