"""The detached per-run shim: `python -m dispatch_runner.shim SPEC.json`.

It claims its reservation (compare-and-set reserved -> running, so a reservation that was given
back never starts a second agent), starts the agent in its own session and process group with
stdin /dev/null and output to files, waits, and records exit code, end time and result summary
with a compare-and-set — whether or not any dispatch-runner peer is alive. The exit is also
written to an exit file first, so recovery can record it if the shim dies right after.
Imports stay light (stdlib + our stdlib-only modules): this runs once per agent.
"""

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from . import supervisor
from .model import Outcome
from .outputs import parse_output, read_tail
from .policy import RateConfig
from .store.base import RunExit
from .workspaces import atomic_write, run_log_paths, write_status


def rate_from(spec: dict[str, Any] | None) -> RateConfig | None:
    if not spec:
        return None
    from datetime import time as dtime

    hh, mm = spec["reset_utc"].split(":")
    return RateConfig(reset_utc=dtime(int(hh), int(mm)), daily_limit=spec.get("daily_limit"),
                      min_delay=spec.get("min_delay", 0.0), sustained_delay=spec.get("sustained_delay", 0.0),
                      burst_window=spec.get("burst_window", 0.0), burst_delay=spec.get("burst_delay", 0.0))


def exit_file(path: Path, run_id: int) -> Path:
    return path / f"exit-{run_id}.json"


def result_from_exit_file(data: dict[str, Any]) -> RunExit:
    return RunExit(outcome=Outcome(data["outcome"]), exit_code=data.get("exit_code"),
                   summary=data.get("summary"), session_id=data.get("session_id"),
                   detail=data.get("detail"), retry_at=data.get("retry_at"))


class Shim:
    def __init__(self, spec: dict[str, Any]) -> None:
        from .store import open_store

        self.spec = spec
        self.run_id = int(spec["run_id"])
        self.path = Path(spec["path"])
        self.store = open_store(spec["store"])
        self.agent: subprocess.Popen[bytes] | None = None
        self.terminated = False

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.terminated = True
        if self.agent is not None:
            supervisor.signal_group(self.agent.pid, signal.SIGTERM)

    def run(self) -> int:
        me = os.getpid()
        if not self.store.start_run(self.run_id, shim_pid=me, shim_start=supervisor.proc_start(me) or 0,
                                    boot_id=supervisor.boot_id(), now=time.time()):
            return 0  # the reservation was given back or killed before we started
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        supervisor.crash_point("shim-after-start")
        out_path, err_path = run_log_paths(self.path, int(self.spec["attempt"]))
        env = dict(os.environ)
        env.update(self.spec.get("env") or {})
        try:
            with open(out_path, "ab") as out, open(err_path, "ab") as err:
                self.agent = subprocess.Popen(self.spec["argv"], cwd=self.spec["cwd"], env=env,
                                              stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                              start_new_session=True)
        except OSError as exc:
            return self._finish(RunExit(outcome=Outcome.FAILED, exit_code=127,
                                        detail=f"cannot start {self.spec['argv'][0]!r}: {exc.strerror}"))
        supervisor.crash_point("shim-after-spawn")
        kill_requested = self.store.record_agent(
            self.run_id, agent_pid=self.agent.pid, agent_start=supervisor.proc_start(self.agent.pid) or 0,
            now=time.time())
        if self.terminated or kill_requested:  # a signal or a kill raced the spawn
            self.terminated = True
            supervisor.signal_group(self.agent.pid, signal.SIGTERM)
        timed_out = self._wait()
        code = self.agent.returncode
        # leave nothing behind: children the agent left in its group go too
        supervisor.terminate_group(self.agent.pid, grace_s=1.0)
        exit_code = code if code >= 0 else 128 - code
        now = datetime.now(UTC)
        parsed = parse_output(self.spec.get("output", "text"), read_tail(out_path), read_tail(err_path),
                              exit_code=exit_code, patterns=self.spec.get("patterns") or (), now=now)
        outcome, detail = parsed.outcome, parsed.detail
        if timed_out:
            outcome, detail = Outcome.TIMED_OUT, f"timed out after {self.spec['timeout_s']:g}s"
        elif self.terminated:
            outcome, detail = Outcome.KILLED, "killed by a signal to the shim"
        return self._finish(RunExit(outcome=outcome, exit_code=exit_code, summary=parsed.summary,
                                    session_id=parsed.session_id, detail=detail,
                                    retry_at=parsed.retry_at))

    def _wait(self) -> bool:
        assert self.agent is not None
        timeout = self.spec.get("timeout_s")
        while True:
            try:
                self.agent.wait(timeout=timeout)
                return False
            except subprocess.TimeoutExpired:
                supervisor.terminate_group(self.agent.pid, grace_s=float(self.spec.get("kill_grace_s", 10)))
                self.agent.wait()
                return True
            except InterruptedError:  # pragma: no cover - PEP 475 retries for us
                continue

    def _finish(self, result: RunExit) -> int:
        ended_at = time.time()
        record = {"run_id": self.run_id, "outcome": result.outcome.value, "exit_code": result.exit_code,
                  "summary": result.summary, "session_id": result.session_id, "detail": result.detail,
                  "retry_at": result.retry_at, "ended_at": ended_at}
        try:
            atomic_write(exit_file(self.path, self.run_id), json.dumps(record))
        except OSError as exc:  # the fallback failed; the store record below is what counts
            print(f"shim: cannot write the exit file: {exc}", file=sys.stderr)
        supervisor.crash_point("shim-before-record")
        row = self.store.record_exit(self.run_id, result, now=ended_at,
                                     rate=rate_from(self.spec.get("rate")))
        if row is not None:
            write_status(row, now=time.time())
        self._ensure_drainer()
        self.store.close()
        return 0

    def _ensure_drainer(self) -> None:
        """A slot freed: if work is queued and no live peer drains, start the on-demand drainer."""
        try:
            if not self.store.has_work():
                return
            now = time.time()
            for peer in self.store.peers():
                if peer["heartbeat_at"] > now - 10 and supervisor.is_alive(peer["pid"], peer["start"],
                                                                          peer["boot_id"]):
                    return
        except Exception:
            return
        spawn_drainer(self.spec.get("drainer") or {})


def spawn_drainer(drainer: dict[str, Any]) -> None:
    argv = drainer.get("argv")
    if not argv:
        return
    env = dict(os.environ)
    env.update(drainer.get("env") or {})
    log = drainer.get("log") or os.devnull
    actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
               (os.POSIX_SPAWN_OPEN, 1, log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
               (os.POSIX_SPAWN_DUP2, 1, 2)]
    os.posix_spawn(argv[0], argv, env, file_actions=actions, setsid=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m dispatch_runner.shim SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(args[0]).read_text())
    return Shim(spec).run()


if __name__ == "__main__":
    sys.exit(main())
