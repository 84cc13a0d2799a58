"""The detached per-run shim: `python -m dispatch_runner.launch.shim SPEC.json`.

It claims its reservation (compare-and-set reserved -> running, so a reservation that was given
back never starts a second agent), starts the agent in its own session and process group with
stdin /dev/null and output to files, waits, and records exit code, end time and result summary
with a compare-and-set — whether or not any dispatch-runner peer is alive. The exit is also
written to an exit file first, so recovery can record it if the shim dies right after.
While the agent runs, the shim renews the run's lease (its heartbeat across hosts): a run whose
lease expired is taken for lost by any peer of the fleet, so a shim whose lease was lost stops
its agent rather than let it run twice.
Imports stay light (stdlib + our stdlib-only modules): this runs once per agent.
"""

import contextlib
import errno
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from .. import argv as argvlib
from ..errors import StoreError
from ..model import Outcome
from ..outputs import parse_output, read_tail
from ..store.base import RunExit, Store
from ..workspaces import PROMPT_FILE, atomic_write, run_log_paths, write_status
from . import supervisor
from .runfiles import ensure_drainer, rate_from_spec, read_spec, start_failure, write_exit_file

RECORD_RETRY_S = 600.0  # how long a shim keeps trying to record an exit in an unwritable store
DISK_FULL_BYTES = 64 * 1024  # less than this left: the disk is full


class Shim:
    def __init__(self, spec: dict[str, Any]) -> None:
        from ..store import open_store

        self.spec = spec
        self.run_id = int(spec["run_id"])
        self.path = Path(spec["path"])
        self.store = open_store(store_url(spec), light=True)
        self.agent: subprocess.Popen[bytes] | None = None
        self.agent_start = 0
        self.terminated = False
        self.fenced: str | None = None  # why the run's lease was lost (its agent was stopped)
        self.subreaper = False
        self.lease = LeaseKeeper(
            self.store, self.run_id, spec.get("lease_s"), float(spec.get("kill_grace_s", 10))
        )
        self._task_text: str | None = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.terminated = True
        if self.agent is not None:
            supervisor.signal_group(self.agent.pid, signal.SIGTERM)

    def run(self) -> int:
        me = os.getpid()
        if not self.store.start_run(
            self.run_id,
            shim_pid=me,
            shim_start=supervisor.proc_start(me) or 0,
            boot_id=supervisor.boot_id(),
            now=time.time(),
            lease_until=self.lease.first(time.time()),
        ):
            return 0  # the reservation was given back or killed before we started
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        self.subreaper = supervisor.become_subreaper()
        supervisor.crash_point("shim-after-start")
        out_path, err_path = run_log_paths(self.path, int(self.spec["attempt"]))
        try:
            self._start_agent(out_path, err_path)
        except (OSError, ValueError) as exc:  # ValueError: an undecodable legacy prompt.md
            where = getattr(exc, "filename", None) or (self.spec.get("argv") or ["?"])[0]
            return self._finish(start_failure(exc, where=str(where), what="agent"))
        assert self.agent is not None
        supervisor.crash_point("shim-after-spawn")
        self.agent_start = supervisor.proc_start(self.agent.pid) or 0
        kill_requested = self.store.record_agent(
            self.run_id, agent_pid=self.agent.pid, agent_start=self.agent_start, now=time.time()
        )
        if self.terminated or kill_requested:  # a signal or a kill raced the spawn
            self.terminated = True
            supervisor.signal_group(self.agent.pid, signal.SIGTERM)
        self.store.release()  # the agent may run for hours: hold no database connection meanwhile
        timed_out = self._wait()
        self._leave_nothing_behind()
        return self._finish(self._outcome(out_path, err_path, timed_out=timed_out))

    def _outcome(self, out_path: Path, err_path: Path, *, timed_out: bool) -> RunExit:
        """The run's end as the agent's output, exit status and our own signals tell it."""
        assert self.agent is not None
        code = self.agent.returncode
        exit_code = code if code >= 0 else 128 - code
        parsed = parse_output(
            self.spec.get("output", "text"),
            read_tail(out_path),
            read_tail(err_path),
            exit_code=exit_code,
            patterns=self.spec.get("patterns") or (),
            now=datetime.now(UTC),
        )
        result = RunExit(
            outcome=parsed.outcome,
            exit_code=exit_code,
            summary=parsed.summary,
            session_id=parsed.session_id,
            detail=parsed.detail,
            retry_at=parsed.retry_at,
        )
        if self.fenced:
            return RunExit(outcome=Outcome.LOST, exit_code=exit_code, detail=self.fenced)
        if timed_out:
            return replace(
                result, outcome=Outcome.TIMED_OUT, detail=f"timed out after {self.spec['timeout_s']:g}s"
            )
        if self.terminated:
            return replace(result, outcome=Outcome.KILLED, detail="killed by a signal to the shim")
        if result.outcome is Outcome.FAILED and disk_full(self.path):
            # the agent's writes (and its log) failed: say so, rather than "exit code 1"
            return replace(
                result,
                ended_reason="no_space",
                detail=f"no space left on the disk of {self.path} ({result.detail})",
            )
        return result

    def _start_agent(self, out_path: Path, err_path: Path) -> None:
        """Start the agent: its own session and group, output to files, the prompt on a pipe to
        its stdin or as data in its argv. The prompt is rebuilt here from the task in the store
        and the template in the spec: prompt.md is the agent's to read (and to spoil), never
        the source of a retry's prompt."""
        cwd = self.spec["cwd"]
        if not os.path.isdir(cwd):
            raise FileNotFoundError(errno.ENOENT, "the working directory no longer exists", cwd)
        prompt = self._prompt()
        argv = argvlib.render(self.spec["argv"], {"prompt": prompt, "task": self._task()}.__getitem__)
        env = dict(os.environ)
        env.update(self.spec.get("env") or {})
        feed = self.spec.get("stdin") == "prompt"
        with contextlib.ExitStack() as files:
            out = files.enter_context(open(out_path, "ab"))
            err = files.enter_context(open(err_path, "ab"))
            self.agent = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdout=out,
                stderr=err,
                stdin=subprocess.PIPE if feed else subprocess.DEVNULL,
                start_new_session=True,
            )
        if feed:
            assert self.agent.stdin is not None
            # a pipe (no disk needed), filled by a thread: a prompt may be larger than its buffer
            threading.Thread(
                target=_feed, args=(self.agent.stdin, prompt.encode() + b"\n"), daemon=True
            ).start()

    def _task(self) -> str:
        if self._task_text is None:
            row = self.store.get_workspace(str(self.spec["workspace"]))
            self._task_text = row.task if row is not None else ""
        return self._task_text

    def _prompt(self) -> str:
        template = self.spec.get("template_text")
        if template is None:  # a spec from before prompts were rebuilt: prompt.md is all there is
            return (self.path / PROMPT_FILE).read_text(encoding="utf-8").removesuffix("\n")
        prompt = argvlib.expand(template, {"task": self._task(), "workspace": str(self.spec["cwd"])})
        _refresh(self.path / PROMPT_FILE, prompt + "\n")  # what {prompt_file} hands the agent
        return prompt

    def _wait(self) -> bool:
        """Wait for the agent while the lease thread renews; True when it timed out. Without a
        renewal by the lease's fence time, the agent is stopped: another host may soon take the
        run for lost and start it again."""
        assert self.agent is not None
        timeout = self.spec.get("timeout_s")
        deadline = None if timeout is None else time.monotonic() + float(timeout)
        self.lease.start(self._on_verdict)
        try:
            while True:
                steps = [s for s in (self.lease.fence_in(), _left(deadline)) if s is not None]
                try:
                    self.agent.wait(timeout=min(steps) if steps else None)
                    return False
                except subprocess.TimeoutExpired:
                    if deadline is not None and time.monotonic() >= deadline:
                        supervisor.terminate_group(self.agent.pid, grace_s=self._grace())
                        self.agent.wait()
                        return True
                    if self.lease.fence_in() == 0:
                        self._on_verdict(
                            "the run's lease could not be renewed (the store is unreachable): stopped"
                        )
        finally:
            self.lease.stop()

    def _on_verdict(self, verdict: str) -> None:
        """From the lease thread (or the wait, at the fence time): a kill, or the lease is lost."""
        assert self.agent is not None
        if verdict == "kill":
            if not self.terminated:
                self.terminated = True  # asked by a peer of another host (or one that went away)
                supervisor.terminate_group(self.agent.pid, grace_s=self._grace())
            return
        if not self.fenced:
            self.fenced = verdict
            say(verdict)
            supervisor.terminate_group(self.agent.pid, grace_s=self._grace())

    def _grace(self) -> float:
        return float(self.spec.get("kill_grace_s", 10))

    def _leave_nothing_behind(self) -> None:
        """Children the agent left in its group go, and so do descendants that left the group or
        the session: as a subreaper this shim inherited them all; without one, they are found
        by the run's environment marker (a scan of every process)."""
        assert self.agent is not None
        supervisor.terminate_group(self.agent.pid, grace_s=1.0)
        if self.subreaper:
            supervisor.stop_children(keep=None, grace_s=1.0)
            return
        marker = {k: v for k, v in (self.spec.get("env") or {}).items() if k in supervisor.MARKER_KEYS}
        if len(marker) == 2:
            supervisor.terminate_marked(marker, grace_s=1.0, started_since=self.agent_start)

    def _finish(self, result: RunExit) -> int:
        """Record the end. The store is what counts; the exit file (written first, so recovery can
        record the end if this process dies right here), status.json and our own log are best
        effort: on a full disk they fail, and the run must still end with its reason."""
        ended_at = time.time()
        try:
            write_exit_file(self.path, self.run_id, result, ended_at=ended_at)
        except OSError as exc:
            say(f"cannot write the exit file: {exc}")
        supervisor.crash_point("shim-before-record")
        row = self._record(result, ended_at)
        if row is not None:
            write_status(row, now=time.time())
        try:
            ensure_drainer(self.store, self.spec.get("drainer") or {})  # a slot freed
        except (OSError, StoreError) as exc:
            say(f"cannot start a drainer: {exc}")
        self.store.close()
        return 0

    def _record(self, result: RunExit, ended_at: float) -> Any:
        """record_exit, retried while the store cannot be written (a full disk under it): while
        this process lives the run is not taken for lost, and the end is recorded once space
        frees."""
        rate = rate_from_spec(self.spec.get("rate"))
        deadline = time.monotonic() + RECORD_RETRY_S
        delay = 0.5
        while True:
            try:
                return self.store.record_exit(self.run_id, result, now=ended_at, rate=rate)
            except StoreError as exc:
                if time.monotonic() > deadline:
                    say(f"giving up recording the exit: {exc}")
                    raise
                say(f"cannot record the exit yet, retrying: {exc}")
                time.sleep(delay)  # waiting for the store to become writable again: nothing to wait on
                delay = min(delay * 2, 10.0)


class LeaseKeeper:
    """The run's lease, renewed every third of `lease_s` by a thread of its own while the agent
    runs (no lease for a spec without one), so a renewal that hangs on an unreachable store never
    holds up the wait. A renewal that finds the run ended elsewhere, or a kill asked for, is
    reported to `on_verdict` at once. The shim stops its agent by `fence_in()`: while the lease
    it last got still holds, early enough for the agent to be gone (kill_grace_s) before any
    other host may take the lease for expired."""

    def __init__(self, store: Store, run_id: int, lease_s: float | None, kill_grace_s: float) -> None:
        self.store, self.run_id = store, run_id
        self.lease_s = float(lease_s) if lease_s else None
        self.margin = min(kill_grace_s + 1.0, (self.lease_s or 0) / 2)
        self.fence_at = 0.0  # monotonic: stop the agent by then unless renewed
        self._stop = threading.Event()

    def first(self, now: float) -> float | None:
        if self.lease_s is None:
            return None
        self.fence_at = time.monotonic() + self.lease_s - self.margin
        return now + self.lease_s

    def fence_in(self) -> float | None:
        """Seconds until the agent must be stopped for want of a renewal (None: no lease)."""
        return None if self.lease_s is None else max(0.0, self.fence_at - time.monotonic())

    def start(self, on_verdict: Any) -> None:
        if self.lease_s is not None:
            threading.Thread(target=self._loop, args=(on_verdict,), daemon=True, name="lease").start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self, on_verdict: Any) -> None:
        assert self.lease_s is not None
        while not self._stop.wait(self.lease_s / 3):
            verdict = self.renew()
            if verdict is not None and not self._stop.is_set():
                on_verdict(verdict)
                if verdict != "kill":
                    return

    def renew(self) -> str | None:
        """None (renewed, or not yet: the store is unreachable), "kill", or why the lease is lost."""
        assert self.lease_s is not None
        asked, now = time.monotonic(), time.time()
        try:
            lease = self.store.renew_lease(self.run_id, until=now + self.lease_s)
        except StoreError as exc:
            say(f"cannot renew the run's lease yet ({exc}); its agent stops in {self.fence_in():.0f}s")
            return None
        finally:
            self.store.release()
        if not lease.held:
            return "the run was ended elsewhere (its lease had expired): its agent was stopped"
        self.fence_at = asked + self.lease_s - self.margin
        return "kill" if lease.kill_requested else None


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _feed(pipe: Any, data: bytes) -> None:
    """Write the prompt to the agent's stdin and close it; an agent that stops reading (or
    exits) ends the feed quietly."""
    with contextlib.suppress(OSError, ValueError):
        with pipe:
            pipe.write(data)


def _refresh(path: Path, text: str) -> None:
    """Rewrite `path` when it no longer holds `text`; best effort (a full disk)."""
    try:
        if path.read_text(encoding="utf-8") == text:
            return
    except (OSError, ValueError):
        pass
    with contextlib.suppress(OSError):
        atomic_write(path, text)


def disk_full(path: Path) -> bool:
    """Less than DISK_FULL_BYTES left (for us) on the file system holding `path`."""
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    free = st.f_bfree if os.geteuid() == 0 else st.f_bavail
    return free * st.f_frsize < DISK_FULL_BYTES


def say(message: str) -> None:
    """A line in the shim's log; best effort (the log may sit on a full disk)."""
    with contextlib.suppress(OSError, ValueError):
        print(f"shim: {message}", file=sys.stderr, flush=True)


def store_url(spec: dict[str, Any]) -> str:
    """The store's whole URL: from the environment the peer gave this shim (it holds the password
    the spec file, on disk beside the agent's files, leaves out); a spec written before that by
    an older peer still names the store itself."""
    return os.environ.get("DISPATCH_RUNNER_STORE") or str(spec["store"])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m dispatch_runner.launch.shim SPEC.json", file=sys.stderr)
        return 2
    spec = read_spec(Path(args[0]))
    return Shim(spec).run()


if __name__ == "__main__":
    sys.exit(main())
