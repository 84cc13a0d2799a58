"""What a shim does while its agent runs, besides waiting: renew the run's lease (LeaseKeeper),
follow the agent's output and judge it (Watch: the time limit, the startup and idle watchdogs,
the budgets), and hand it live messages (LiveInput: user messages as stream-json on its stdin).

Stdlib and our stdlib-only modules only: the per-run shim imports this.
"""

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any, Final

from ..errors import StoreError
from ..model import Outcome
from ..outputs import Parsed, Tracker, follow
from ..store.base import RunExit, Store, Usage

TICK_S: Final = 0.5  # how often the watch looks at the output (at most)
MIN_TICK_S: Final = 0.05
INBOX_POLL_S: Final = 1.0  # how often live input asks the store for messages
CATCH_UP_BYTES: Final = 8 << 20  # read per look at most: a flood of output never stalls the watch


def say(message: str) -> None:
    """A line in the shim's log; best effort (the log may sit on a full disk)."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"shim: {message}\n")
        sys.stderr.flush()


@dataclass(frozen=True, slots=True)
class Stop:
    """Why the shim stopped its agent: the outcome the run ends with and whether it is final."""

    outcome: Outcome
    ended_reason: str
    detail: str
    final: bool

    def ended(self, result: RunExit) -> RunExit:
        """The run's end: this stop's, with what the agent said and spent so far."""
        return replace(
            result, outcome=self.outcome, ended_reason=self.ended_reason, detail=self.detail, final=self.final
        )


def tick_s(spec: Mapping[str, Any]) -> float:
    """How often to look: TICK_S, or a fifth of the shortest watchdog when that is shorter."""
    watchdogs = [float(spec[k]) / 5 for k in ("startup_timeout_s", "idle_timeout_s") if spec.get(k)]
    return max(MIN_TICK_S, min([TICK_S, *watchdogs]))


def over_budget(tracker: Tracker, spec: Mapping[str, Any]) -> str | None:
    """Why the run is over its budget (max_cost_usd, max_turns), or None."""
    cost, cap = tracker.cost_usd, spec.get("max_cost_usd")
    if cap is not None and cost is not None and cost > float(cap):
        return f"stopped: cost ${cost:.4g} over max_cost_usd ${float(cap):g}"
    turns, most = tracker.turns, spec.get("max_turns")
    if most is not None and turns is not None and turns > int(most):
        return f"stopped: {turns} turns over max_turns {int(most)}"
    return None


class Watch:
    """The agent's stdout followed into a Tracker (from where its log stood at the start) and
    its stderr's size, judged at every look: over budget, no output at all by
    startup_timeout_s, no new output for idle_timeout_s (flagged stalled in the store, cleared
    when it speaks again; stopped with kill_stalled), past timeout_s."""

    def __init__(self, spec: Mapping[str, Any], out_path: Path, err_path: Path, *, store: Store) -> None:
        self.spec, self.store, self.run_id = spec, store, int(spec["run_id"])
        self.tracker = Tracker(str(spec.get("output") or "text"))
        self.out_path, self.err_path = out_path, err_path
        self.offset, self.err_size = _size(out_path), _size(err_path)
        self.tick_s = tick_s(spec)
        self.started = self.last_output = time.monotonic()
        self.last_output_at = time.time()
        self.spoke = self.stalled = False
        timeout = spec.get("timeout_s")
        self.deadline = None if timeout is None else self.started + float(timeout)

    def wait_s(self) -> float:
        """How long to wait for the agent's end before the next look (a tick, or less when the
        time limit comes sooner)."""
        if self.deadline is None:
            return self.tick_s
        return max(0.0, min(self.tick_s, self.deadline - time.monotonic()))

    def look(self) -> Stop | None:
        """Read what the agent wrote since the last look; a Stop when it must be stopped."""
        if self._read():
            self.last_output, self.last_output_at, self.spoke = time.monotonic(), time.time(), True
            if self.stalled:
                self._flag(None)
        return self._verdict(time.monotonic())

    def catch_up(self) -> None:
        """What the agent wrote, read to where its log ends now (at its end: the usage it
        reported; a child it left that writes on is not waited for)."""
        end = _size(self.out_path)
        while self.offset < end:
            offset = follow(self.out_path, self.tracker, self.offset, limit=min(end - self.offset, 1 << 20))
            if offset == self.offset:
                return
            self.offset = offset

    def usage(self, parsed: Parsed) -> Usage:
        """What the run spent: the watch read the whole log, the final parse its tail."""
        t = self.tracker
        return Usage(
            turns=t.turns if t.turns is not None else parsed.turns,
            input_tokens=t.input_tokens if t.input_tokens is not None else parsed.input_tokens,
            output_tokens=t.output_tokens if t.output_tokens is not None else parsed.output_tokens,
            cost_usd=t.cost_usd if t.cost_usd is not None else parsed.cost_usd,
        )

    def _read(self) -> bool:
        before = self.offset
        while self.offset - before < CATCH_UP_BYTES:
            offset = follow(self.out_path, self.tracker, self.offset)
            if offset == self.offset:
                break
            self.offset = offset
        err_size = _size(self.err_path)
        grew = self.offset != before or err_size != self.err_size
        self.err_size = err_size
        return grew

    def _verdict(self, now: float) -> Stop | None:
        spec = self.spec
        if why := over_budget(self.tracker, spec):
            return Stop(Outcome.FAILED, "budget", why, final=True)
        startup = spec.get("startup_timeout_s")
        if startup and not self.spoke and now - self.started >= float(startup):
            detail = f"the agent produced no output in {float(startup):g}s (startup_timeout_s): stopped"
            return Stop(Outcome.FAILED, "startup_timeout", detail, final=False)
        idle = spec.get("idle_timeout_s")
        if idle and now - self.last_output >= float(idle):
            if not self.stalled:
                self._flag(self.last_output_at)
            if spec.get("kill_stalled"):
                detail = f"no output for {float(idle):g}s (idle_timeout_s, kill_stalled): stopped"
                return Stop(Outcome.FAILED, "stalled", detail, final=False)
        if self.deadline is not None and now >= self.deadline:
            detail = f"timed out after {float(spec['timeout_s']):g}s"
            return Stop(Outcome.TIMED_OUT, "timeout", detail, final=not spec.get("retry_timeouts"))
        return None

    def _flag(self, since: float | None) -> None:
        """Stalled since a time (None: no longer); tried again at the next look if the store
        cannot be written now."""
        try:
            self.store.set_stalled(self.run_id, since, now=time.time())
            self.stalled = since is not None
        except StoreError as exc:
            say(f"cannot flag the run {'stalled' if since else 'active'} yet: {exc}")
        finally:
            self.store.release()


def user_message(text: str) -> bytes:
    """One user message of `--input-format stream-json`, as the Claude Agent SDK writes it."""
    message = {
        "type": "user",
        "message": {"role": "user", "content": [{"type": "text", "text": text}]},
        "parent_tool_use_id": None,
        "session_id": "default",
    }
    return (json.dumps(message, ensure_ascii=False) + "\n").encode()


class LiveInput:
    """The stdin of an agent that reads user messages while it runs: the prompt first, then each
    message sent to its workspace (polled from the store every INBOX_POLL_S, or at once when
    nudged), from a thread of its own (a write blocks while the agent is busy). When the agent
    has answered every message (`results` of the tracker) and none waits, stdin is closed and the
    agent ends; a message that comes after stays in the store for the run that resumes it."""

    def __init__(
        self, store: Store, pipe: IO[bytes], spec: Mapping[str, Any], tracker: Tracker, first: str | None
    ) -> None:
        self.store, self.pipe, self.tracker, self.first = store, pipe, tracker, first
        self.workspace, self.run_id = str(spec["workspace"]), int(spec["run_id"])
        self.written = 0
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="live-input")

    def start(self) -> None:
        self._thread.start()

    def nudge(self) -> None:
        self._wake.set()

    def halt(self) -> None:
        """The agent is being stopped: take no more messages (they stay pending, for the run
        that resumes the session), without waiting (a signal handler may call it)."""
        self._stop.set()
        self._wake.set()

    def stop(self, wait_s: float = 2.0) -> None:
        """The agent ended: no more messages are taken (one being taken now is let finish, so
        the shim records the end after it)."""
        self._stop.set()
        self._wake.set()
        self._thread.join(wait_s)

    def _run(self) -> None:
        """The connection stays open while it polls (a light PostgreSQL store would otherwise
        connect anew every second, per running agent); it goes when input ends."""
        try:
            self._feed()
        finally:
            self.store.release()

    def _feed(self) -> None:
        with contextlib.suppress(OSError, ValueError), self.pipe:  # the agent stopped reading
            if self.first is not None:
                self._send(self.first)
            while not self._stop.is_set():
                texts = self._take()
                for text in texts or ():
                    self._send(text)
                # an agent given its prompt some other way still answers it once
                if texts == [] and self.tracker.results >= max(self.written, 1):
                    return  # closes stdin: the agent ends
                self._wake.wait(INBOX_POLL_S)
                self._wake.clear()

    def _send(self, text: str) -> None:
        self.pipe.write(user_message(text))
        self.pipe.flush()
        self.written += 1

    def _take(self) -> list[str] | None:
        """The messages waiting (taken), or None when the store cannot say now."""
        try:
            return self.store.take_messages(self.workspace, self.run_id, now=time.time())
        except StoreError as exc:
            say(f"cannot read the workspace's messages yet: {exc}")
            return None


def feed(pipe: IO[bytes], data: bytes) -> None:
    """Write the prompt to the agent's stdin and close it, from a thread (a prompt may be larger
    than the pipe's buffer); an agent that stops reading (or exits) ends the feed quietly."""

    def write() -> None:
        with contextlib.suppress(OSError, ValueError), pipe:
            pipe.write(data)

    threading.Thread(target=write, daemon=True, name="feed").start()


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


class LeaseKeeper:
    """The run's lease, renewed every third of `lease_s` by a thread of its own while the agent
    runs (no lease for a spec without one), so a renewal that hangs on an unreachable store never
    holds up the wait. A renewal that finds the run ended elsewhere, or a kill asked for, is
    reported to `on_verdict` at once. The shim stops its agent by `fence_in()`: while the lease
    it last got still holds, early enough for the agent to be gone (kill_grace_s) before any
    other host may take the lease for expired."""

    def __init__(self, store: Store, run_id: int, lease_s: float | None, kill_grace_s: float) -> None:
        self.store, self.run_id = store, run_id
        self.tracker: Tracker | None = None  # the agent's output so far: sent with each renewal
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

    def start(self, on_verdict: Callable[[str], None], tracker: Tracker | None = None) -> None:
        """Renew in a thread of its own; `tracker`: the agent's output, whose progress each
        renewal sends."""
        self.tracker = tracker
        if self.lease_s is not None:
            threading.Thread(target=self._loop, args=(on_verdict,), daemon=True, name="lease").start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self, on_verdict: Callable[[str], None]) -> None:
        assert self.lease_s is not None
        while not self._stop.wait(self.lease_s / 3):
            verdict = self.renew()
            if verdict is not None and not self._stop.is_set():
                on_verdict(verdict)
                if verdict != "kill":
                    return

    def _progress(self, now: float) -> dict[str, Any] | None:
        """What the agent said and spent so far, for dashboards on any host (read from the watch's
        tracker in this thread: a renewal may see a line half a tick old, never a torn value)."""
        t = self.tracker
        if t is None:
            return None
        tokens = None if t.input_tokens is None else t.input_tokens + (t.output_tokens or 0)
        return {"last_line": t.last_line, "tokens": tokens, "cost_usd": t.cost_usd, "at": round(now, 3)}

    def renew(self) -> str | None:
        """None (renewed, or not yet: the store is unreachable), "kill", or why the lease is lost."""
        assert self.lease_s is not None
        asked, now = time.monotonic(), time.time()
        try:
            lease = self.store.renew_lease(self.run_id, until=now + self.lease_s, live=self._progress(now))
        except StoreError as exc:
            say(f"cannot renew the run's lease yet ({exc}); its agent stops in {self.fence_in():.0f}s")
            return None
        finally:
            self.store.release()
        if not lease.held:
            return "the run was ended elsewhere (its lease had expired): its agent was stopped"
        self.fence_at = asked + self.lease_s - self.margin
        return "kill" if lease.kill_requested else None
