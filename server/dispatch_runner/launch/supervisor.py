"""Start, watch and stop agent processes.

Every agent starts through a detached per-run shim (`python -m dispatch_runner.launch.shim SPEC`) in its
own session; the shim starts the agent in a new session and process group and records the exit.
A PID is an identity only together with its start time and the boot id: orphans stay zombies for
~2 s on these machines, so `kill(pid, 0)` alone lies; we read /proc state instead.
Stdlib only: the shim imports this module.
"""

import contextlib
import ctypes  # prctl for become_subreaper(); at the top, so a fork server has it loaded
import os
import signal
import socket
import time
from collections.abc import Mapping
from pathlib import Path

_BOOT_ID: str | None = None


def host_id() -> str:
    """This host's name in a fleet: $DISPATCH_RUNNER_HOST_ID, else the hostname. Runs belong to
    the host whose peer claimed them; only that host judges them by pid."""
    return os.environ.get("DISPATCH_RUNNER_HOST_ID") or socket.gethostname()


def boot_id() -> str:
    global _BOOT_ID
    if _BOOT_ID is None:
        try:
            _BOOT_ID = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        except OSError:
            _BOOT_ID = "unknown"
    return _BOOT_ID


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state letter, process group, start time in clock ticks) from /proc/<pid>/stat, or None
    if the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except (OSError, ValueError):
        return None
    # the command name may hold spaces and parentheses: split after the last ')'
    fields = raw[raw.rfind(b")") + 2 :].split()
    return fields[0].decode(), int(fields[2]), int(fields[19])


def find_executable(program: str, env: Mapping[str, str]) -> str | None:
    """Where `program` resolves with the agent's PATH (its env, else ours), or None."""
    import shutil

    return shutil.which(program, path=env.get("PATH", os.environ.get("PATH")))


MARKER_KEYS = ("DISPATCH_RUNNER_WORKSPACE", "DISPATCH_RUNNER_RUN")


def run_marker(workspace: str, run_id: int) -> dict[str, str]:
    """The environment every process of a run carries: how its descendants are found, even
    those that left its process group or session."""
    return dict(zip(MARKER_KEYS, (workspace, str(run_id)), strict=True))


def unmarked(env: Mapping[str, str]) -> dict[str, str]:
    """`env` without a run's marker. A peer may live inside a run (an agent that dispatches
    sub-agents): the shims, fork server and drainer it starts belong to runs of their own, and
    must not be taken for descendants of its run when that run ends."""
    return {k: v for k, v in env.items() if k not in MARKER_KEYS}


def _pids() -> list[int]:
    with os.scandir("/proc") as entries:
        return [int(e.name) for e in entries if e.name.isdigit()]


def proc_start(pid: int) -> int | None:
    st = _stat(pid)
    return st[2] if st else None


def is_alive(pid: int | None, start: int | None, boot: str | None = None) -> bool:
    """True when that very process (pid + start time [+ boot]) exists and is not a zombie."""
    if not pid or pid <= 0:
        return False
    if boot is not None and boot != boot_id():
        return False
    st = _stat(pid)
    if st is None or st[0] in ("Z", "X", "x"):
        return False
    return start is None or st[2] == start


def signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def group_alive(pgid: int) -> bool:
    """Any non-zombie process left in the group (the leader may be gone already)."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    for pid in _pids():
        st = _stat(pid)
        if st is not None and st[1] == pgid and st[0] not in ("Z", "X", "x"):
            return True
    return False


def find_by_env(pairs: Mapping[str, str], *, started_since: int = 0) -> list[int]:
    """Live processes whose environment holds every key=value of `pairs` (agents carry
    run_marker()), started at or after `started_since` (clock ticks) — a run's descendants
    cannot be older than its agent, which spares reading every other process's environment."""
    needles = {f"{k}={v}".encode() for k, v in pairs.items()}
    me = os.getpid()
    found = []
    for pid in _pids():
        st = _stat(pid)
        if pid == me or st is None or st[0] in ("Z", "X", "x") or st[2] < started_since:
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if needles <= set(environ.split(b"\0")):
            found.append(pid)
    return found


PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make this process the one orphaned descendants are reparented to (instead of init), so a
    shim finds everything its agent left behind — daemonised, in a new session, with a cleared
    environment — as its own children. False where prctl is unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _children_pids(pid: int) -> list[int]:
    """Every child of `pid` (each of its threads' children), zombies included."""
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children", "rb") as f:
                found += [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        return found
    return found


def children_of(pid: int) -> list[int]:
    """Live children of `pid` (every thread's), zombies excluded."""
    return [c for c in _children_pids(pid) if is_alive(c, None)]


def stop_children(
    *, keep: int | None, grace_s: float, rounds: int = 5, marker: Mapping[str, str] | None = None
) -> int:
    """Stop every child of this process but `keep` — as a subreaper, that is every descendant its
    agent left behind — with its process group: SIGTERM, SIGKILL after grace_s, reaped; again for
    what they leave (their children come to us in turn). With `marker` (the run's), a child that
    does not carry it is spared: a runner its agent started (a nested dispatch) starts its own
    runs' shims, fork server and drainer unmarked, and those outlive the agent that asked for
    them. Returns how many were stopped."""
    me = os.getpid()
    total = 0
    for _ in range(rounds):
        found = {c: proc_start(c) for c in children_of(me) if c != keep and _ours(c, marker)}
        if not found:
            break
        total += len(found)
        for pid in found:
            signal_group(pid, signal.SIGTERM)  # those that made their own group or session
        _term_then_kill(found, grace_s)
        for pid in found:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
    _reap_quietly(keep)
    return total


def _ours(pid: int, marker: Mapping[str, str] | None) -> bool:
    """The process carries the run's marker (or there is no marker to tell, or it has exited
    and only its zombie is left to reap)."""
    if not marker:
        return True
    try:
        environ = set(Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))
    except OSError:
        return True
    return not environ or {f"{k}={v}".encode() for k, v in marker.items()} <= environ


def _reap_quietly(keep: int | None) -> None:
    """Collect exited children but `keep` (zombies of orphans we inherited)."""
    for pid in _children_pids(os.getpid()):
        if pid != keep:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)


def terminate_marked(
    pairs: Mapping[str, str], *, grace_s: float, started_since: int = 0, rounds: int = 3
) -> int:
    """SIGTERM every process carrying the run's marker — descendants that left the agent's
    process group or session included — and SIGKILL what is left after grace_s; again for what
    they started meanwhile. Returns how many were found."""
    total = 0
    for _ in range(rounds):
        found = {pid: proc_start(pid) for pid in find_by_env(pairs, started_since=started_since)}
        if not found:
            break
        total += len(found)
        _term_then_kill(found, grace_s)
    return total


def _term_then_kill(found: Mapping[int, int | None], grace_s: float, poll_s: float = 0.02) -> None:
    for pid in found:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not any(is_alive(pid, start) for pid, start in found.items()):
            return
        time.sleep(poll_s)  # processes we do not own: no event to wait on
    for pid, start in found.items():
        if is_alive(pid, start):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def terminate_group(pgid: int, *, grace_s: float, poll_s: float = 0.02) -> bool:
    """SIGTERM the group; SIGKILL whatever remains after grace_s. True if it had processes."""
    if not signal_group(pgid, signal.SIGTERM):
        return False
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return True
        time.sleep(poll_s)  # polling a process group we do not own: no event to wait on
    signal_group(pgid, signal.SIGKILL)
    return True


def crash_point(name: str) -> None:
    """Test hook: die here, as a SIGKILL would, when DISPATCH_RUNNER_TEST_CRASH_AT names this point."""
    if os.environ.get("DISPATCH_RUNNER_TEST_CRASH_AT") == name:
        os._exit(137)
