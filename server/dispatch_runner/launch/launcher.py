"""Starting shims: forked from a per-peer fork server that has imported the shim once (serving
peers), or spawned directly (one-shot commands, or when the fork server is gone). Each shim is
double-forked or spawned into its own session, so it outlives the peer."""

import contextlib
import json
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from .supervisor import unmarked

FORKSERVER_STALL_S = 5.0  # a fork server that reads nothing for this long is replaced


class ShimLauncher:
    """Starts detached shims and reaps what it started directly.

    With `forkserver=True` (serving peers) shims are forked from a pre-imported fork server,
    which saves an interpreter start per run; if the server is gone, shims start directly."""

    def __init__(
        self,
        python: str | None = None,
        *,
        forkserver: bool = False,
        log_dir: Path | None = None,
        preload: Sequence[str] = (),
    ) -> None:
        self.python = python or sys.executable
        self.use_forkserver = forkserver
        self.log_dir = log_dir
        self.preload = tuple(preload)  # store backends the fork server imports once for its shims
        self._children: set[int] = set()
        self._server_pid: int | None = None
        self._server_pipe: int | None = None
        # dispatches, the tick's drain and recovery call in from several worker threads
        self._lock = threading.RLock()

    def spawn(
        self, args: Sequence[str], *, env: Mapping[str, str], log_path: Path, spec_path: Path | None = None
    ) -> int | None:
        """Start a shim; returns its pid when started directly (None via the fork server)."""
        env = unmarked(env)
        with self._lock:
            if (
                self.use_forkserver
                and spec_path is not None
                and self._via_forkserver(spec_path, env, log_path)
            ):
                return None
            return self._spawn_direct(args, env=env, log_path=log_path)

    def _spawn_direct(self, args: Sequence[str], *, env: Mapping[str, str], log_path: Path) -> int:
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(log_path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ]
        pid = os.posix_spawn(self.python, [self.python, *args], dict(env), file_actions=actions, setsid=True)
        self._children.add(pid)
        return pid

    def _via_forkserver(self, spec_path: Path, env: Mapping[str, str], log_path: Path) -> bool:
        line = (json.dumps({"spec": str(spec_path), "log": str(log_path), "env": dict(env)}) + "\n").encode()
        for _ in range(2):
            if self._server_pipe is None and not self._start_forkserver(env, self.log_dir or log_path.parent):
                return False
            assert self._server_pipe is not None
            try:
                self._send(self._server_pipe, line)
                return True
            except TimeoutError:  # alive but not reading: never let it block the peer
                if self._server_pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self._server_pid, signal.SIGKILL)
                self._close()
            except OSError:
                self._close()  # the server died: start a new one and try once more
        return False

    @staticmethod
    def _send(fd: int, data: bytes) -> None:
        """Write all of `data` to the non-blocking pipe, or raise TimeoutError if it stays full."""
        view = memoryview(data)
        deadline = time.monotonic() + FORKSERVER_STALL_S
        while view:
            _, writable, _ = select.select([], [fd], [], max(deadline - time.monotonic(), 0.0))
            if not writable:
                raise TimeoutError("the fork server stopped reading its requests")
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                continue

    def _start_forkserver(self, env: Mapping[str, str], log_dir: Path) -> bool:
        read_end, write_end = os.pipe()
        try:
            actions = [
                (os.POSIX_SPAWN_DUP2, read_end, 0),
                (
                    os.POSIX_SPAWN_OPEN,
                    1,
                    str(log_dir / "forkserver.log"),
                    os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                    0o644,
                ),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ]
            pid = os.posix_spawn(
                self.python,
                [self.python, "-m", "dispatch_runner.launch.forkserver", *self.preload],
                dict(env),
                file_actions=actions,
            )
        except OSError:
            os.close(write_end)
            return False
        finally:
            os.close(read_end)
        os.set_blocking(write_end, False)
        self._server_pid, self._server_pipe = pid, write_end
        self._children.add(pid)
        return True

    def close(self) -> None:
        """Stop the fork server (shims it started run on, detached) and reap it."""
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._server_pipe is not None:
            os.close(self._server_pipe)
            self._server_pipe = None
        pid, self._server_pid = self._server_pid, None
        if pid is not None:
            deadline = time.monotonic() + 1.0  # it exits as soon as it reads end-of-file
            while time.monotonic() < deadline:
                try:
                    if os.waitpid(pid, os.WNOHANG)[0]:
                        break
                except ChildProcessError:
                    break
                time.sleep(0.002)
            self._children.discard(pid)

    def reap(self) -> int:
        """Collect exited children (no zombie stays under a peer). Returns how many are left.
        Never waits: called from the event loop, it skips a round while a spawn is under way."""
        if not self._lock.acquire(blocking=False):
            return len(self._children)
        try:
            return self._reap()
        finally:
            self._lock.release()

    def _reap(self) -> int:
        for pid in list(self._children):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self._children.discard(pid)
                if pid == self._server_pid:  # it died: the next spawn starts a new one
                    if self._server_pipe is not None:
                        os.close(self._server_pipe)
                    self._server_pipe = self._server_pid = None
        return len(self._children)

    @property
    def children(self) -> frozenset[int]:
        return frozenset(self._children)


def shim_args(spec_path: Path) -> list[str]:
    return ["-m", "dispatch_runner.launch.shim", str(spec_path)]
