"""The detached per-run shim: `python -m dispatch_runner.launch.shim SPEC.json`.

It claims its reservation (compare-and-set reserved -> running, so a reservation that was given
back never starts a second agent), starts the agent in its own session and process group with
output to files (stdin: /dev/null, a pipe with its prompt, or its live input), watches it, and
records exit code, end time, result summary, usage and the changes it made with a
compare-and-set — whether or not any dispatch-runner peer is alive. The exit is also written to
an exit file first, so recovery can record it if the shim dies right after.
While the agent runs (launch/watching.py), the shim renews the run's lease (its heartbeat across
hosts: a shim whose lease was lost stops its agent rather than let it run twice), follows its
output (time limit, startup and idle watchdogs, budgets) and hands it live messages. A follow-up
run continues the agent's session (resume_argv).
Imports stay light (stdlib + our stdlib-only modules): this runs once per agent.
"""

import contextlib
import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from .. import argv as argvlib
from ..errors import StoreError
from ..model import Outcome
from ..outputs import parse_output, read_tail
from ..store.base import RunExit, Store, WorkspaceRow
from ..workspaces import PROMPT_FILE, atomic_write, run_log_paths, write_status
from . import gitdiff, supervisor, watching
from .runfiles import (
    adaptive_from_spec,
    ensure_drainer,
    rate_from_spec,
    read_spec,
    start_failure,
    write_exit_file,
)
from .watching import LeaseKeeper, LiveInput, Stop, Watch, say

RECORD_RETRY_S = 600.0  # how long a shim keeps trying to record an exit in an unwritable store
DISK_FULL_BYTES = 64 * 1024  # less than this left: the disk is full
LEASE_UNRENEWED = "the run's lease could not be renewed (the store is unreachable): stopped"


class CannotResume(Exception):
    """A follow-up run cannot continue its agent's session; the message says why and what to do."""


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
        self.watch: Watch | None = None
        self.live: LiveInput | None = None
        self._row: WorkspaceRow | None = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.terminated = True
        halt(self.live)
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
        except CannotResume as exc:  # what the store holds will not change: no retry
            return self._finish(RunExit(outcome=Outcome.FAILED, exit_code=None, detail=str(exc), final=True))
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
        stop = self._wait()
        leave_nothing_behind(self.agent.pid, self.agent_start, self.spec, subreaper=self.subreaper)
        result = self._outcome(out_path, err_path, stop)
        return self._finish(with_changes(result, self._workspace(), self.spec))

    def _outcome(self, out_path: Path, err_path: Path, stop: Stop | None) -> RunExit:
        """The run's end as the agent's output, exit status and our own signals tell it, with
        what it spent."""
        assert self.agent is not None and self.watch is not None
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
            usage=self.watch.usage(parsed),
        )
        if self.fenced:
            return RunExit(outcome=Outcome.LOST, exit_code=exit_code, detail=self.fenced, usage=result.usage)
        if self.terminated:
            return replace(result, outcome=Outcome.KILLED, detail="killed by a signal to the shim")
        if stop is not None:
            return stop.ended(result)
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
        its stdin (with live input: the first of its user messages) or as data in its argv."""
        cwd = self.spec["cwd"]
        if not os.path.isdir(cwd):
            raise FileNotFoundError(errno.ENOENT, "the working directory no longer exists", cwd)
        prompt, argv = self._command()
        env = agent_env(self.spec)
        feed, live = self.spec.get("stdin") == "prompt", self.spec.get("input") == "stream-json"
        self.watch = Watch(self.spec, out_path, err_path, store=self.store)
        with contextlib.ExitStack() as files:
            out = files.enter_context(open(out_path, "ab"))
            err = files.enter_context(open(err_path, "ab"))
            self.agent = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdout=out,
                stderr=err,
                stdin=subprocess.PIPE if feed or live else subprocess.DEVNULL,
                start_new_session=True,
            )
        if self.agent.stdin is None:
            return
        if live:
            first = prompt if feed else None
            self.live = LiveInput(self.store, self.agent.stdin, self.spec, self.watch.tracker, first)
            self.live.start()
        else:  # a pipe (no disk needed)
            watching.feed(self.agent.stdin, prompt.encode() + b"\n")

    def _command(self) -> tuple[str, list[str]]:
        """The prompt and the argv. A follow-up run (its workspace has a next input) continues
        the agent's session by resume_argv, with that input as the prompt, as it was written;
        any other run's prompt is rebuilt here from the task in the store and the template in
        the spec: prompt.md is the agent's to read (and to spoil), never a retry's source."""
        row = self._workspace()
        resume = self.spec.get("resume_argv")
        if row is not None and row.next_input is not None and resume and row.session_id:
            if not argvlib.SESSION_ID_RE.match(row.session_id):
                raise CannotResume(
                    f"cannot resume the agent's session: its agent reported {row.session_id[:80]!r}, "
                    "which is not a session id (letters, digits and ._:-); dispatch the follow-up "
                    "as a new task instead"
                )
            values = {"prompt": row.next_input, "task": row.next_input, "session_id": row.session_id}
            return row.next_input, argvlib.render(resume, values.__getitem__)
        prompt = self._prompt()
        return prompt, argvlib.render(self.spec["argv"], {"prompt": prompt, "task": self._task()}.__getitem__)

    def _workspace(self) -> WorkspaceRow | None:
        if self._row is None:
            self._row = self.store.get_workspace(str(self.spec["workspace"]))
        return self._row

    def _task(self) -> str:
        row = self._workspace()
        return row.task if row is not None else ""

    def _prompt(self) -> str:
        template = self.spec.get("template_text")
        if template is None:  # a spec from before prompts were rebuilt: prompt.md is all there is
            return (self.path / PROMPT_FILE).read_text(encoding="utf-8").removesuffix("\n")
        row = self._workspace()
        values = {
            "task": self._task(),
            "workspace": str(self.spec["cwd"]),
            "branch": (row and row.branch) or "",
        }
        prompt = argvlib.expand(template, values)
        _refresh(self.path / PROMPT_FILE, prompt + "\n")  # what {prompt_file} hands the agent
        return prompt

    def _wait(self) -> Stop | None:
        """Watch the agent until it ends, while the lease thread renews; the Stop when the watch
        stopped it. Unrenewed by its lease's fence time, it is stopped (it would soon be lost)."""
        assert self.agent is not None and self.watch is not None
        self.lease.start(self._on_verdict, self.watch.tracker)  # renewals carry what it said
        answered = 0
        try:
            while not self._ended_within(self.watch.wait_s()):
                stop = self.watch.look()
                if stop is not None:
                    halt(self.live)
                    supervisor.terminate_group(self.agent.pid, grace_s=self._grace())
                    self.agent.wait()
                    return stop
                if self.live is not None and self.watch.tracker.results > answered:
                    answered = self.watch.tracker.results
                    self.live.nudge()  # it answered: close its input now if nothing else waits
                if self.lease.fence_in() == 0:
                    self._on_verdict(LEASE_UNRENEWED)
            return None
        finally:
            self.lease.stop()
            if self.live is not None:
                self.live.stop()
            self.watch.catch_up()

    def _ended_within(self, wait_s: float) -> bool:
        """Wait for the agent's end, at most wait_s (less when the lease's fence time is near)."""
        assert self.agent is not None
        fence = self.lease.fence_in()
        try:
            self.agent.wait(timeout=wait_s if fence is None else min(wait_s, fence))
            return True
        except subprocess.TimeoutExpired:
            return False

    def _on_verdict(self, verdict: str) -> None:
        """From the lease thread (or the wait, at the fence time): a kill, or the lease is lost."""
        assert self.agent is not None
        halt(self.live)
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
        row = record(self.store, self.run_id, result, ended_at=ended_at, spec=self.spec)
        if row is not None:
            write_status(row, now=time.time())
        try:
            ensure_drainer(self.store, self.spec.get("drainer") or {})  # a slot freed
        except (OSError, StoreError) as exc:
            say(f"cannot start a drainer: {exc}")
        self.store.close()
        return 0


def agent_env(spec: Mapping[str, Any]) -> dict[str, str]:
    """The agent's environment: ours, its spec's, and where its own dispatches go."""
    env = {**os.environ, **(spec.get("env") or {})}
    env.setdefault("DISPATCH_RUNNER_STORE", store_url(spec))
    env.pop("DISPATCH_RUNNER_SESSION", None)  # a runner it starts is a client of its own, not ours
    return env


def halt(live: LiveInput | None) -> None:
    """A stopping agent takes no more live messages: they stay pending."""
    if live is not None:
        live.halt()


def leave_nothing_behind(
    agent_pid: int, agent_start: int, spec: Mapping[str, Any], *, subreaper: bool
) -> None:
    """Children the agent left in its group go, and so do descendants that left the group or
    the session: as a subreaper this shim inherited them all; without one, they are found
    by the run's environment marker (a scan of every process)."""
    supervisor.terminate_group(agent_pid, grace_s=1.0)
    marker = {k: v for k, v in (spec.get("env") or {}).items() if k in supervisor.MARKER_KEYS}
    if subreaper:
        supervisor.stop_children(keep=None, grace_s=1.0, marker=marker if len(marker) == 2 else None)
        return
    if len(marker) == 2:
        supervisor.terminate_marked(marker, grace_s=1.0, started_since=agent_start)


def with_changes(result: RunExit, row: WorkspaceRow | None, spec: Mapping[str, Any]) -> RunExit:
    """What the run changed in its git working tree, from the commit its workspace started at
    (a `repo` dispatch's worktree)."""
    if row is None or not row.base_commit:
        return result
    where, base = spec["cwd"], row.base_commit
    return replace(result, diff=gitdiff.diff_stat(where, base), commits=gitdiff.commits(where, base))


def record(store: Store, run_id: int, result: RunExit, *, ended_at: float, spec: Mapping[str, Any]) -> Any:
    """record_exit (with the pool's rates and adaptive limit from the run's spec), retried while
    the store cannot be written (a full disk under it): while this process lives the run is not
    taken for lost, and the end is recorded once space frees."""
    rate, adaptive = rate_from_spec(spec.get("rate")), adaptive_from_spec(spec.get("adaptive"))
    deadline = time.monotonic() + RECORD_RETRY_S
    delay = 0.5
    while True:
        try:
            return store.record_exit(run_id, result, now=ended_at, rate=rate, adaptive=adaptive)
        except StoreError as exc:
            if time.monotonic() > deadline:
                say(f"giving up recording the exit: {exc}")
                raise
            say(f"cannot record the exit yet, retrying: {exc}")
            time.sleep(delay)  # waiting for the store to become writable again: nothing to wait on
            delay = min(delay * 2, 10.0)


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


def store_url(spec: Mapping[str, Any]) -> str:
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
