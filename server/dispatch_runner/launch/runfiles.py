"""The files a run is started from and leaves behind, written and read in one place: the spec a
shim starts from (`run-N.spec.json`), the exit file it writes before recording the end
(`exit-<run>.json`, read by recovery when the shim died after writing it), the rate settings the
shim records an exit with, and the on-demand drainer a shim or a one-shot command starts when
nobody else keeps the queue moving.

Stdlib and our stdlib-only modules only: the per-run shim imports this.
"""

import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import time as dtime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import argv as argvlib
from ..adaptive import Adaptive, Aimd
from ..model import Outcome
from ..policy import RateConfig
from ..store.base import POOL_FAULTS, RunExit, Usage, spawn_reason
from ..workspaces import PROMPT_FILE, atomic_write
from . import supervisor

if TYPE_CHECKING:  # config pulls in yaml: the shim never needs it
    from ..config import AgentDef

LIVE_PEER_S = 10.0  # a peer that heartbeat this recently (every 2 s) drains the queue
EXIT_FIELDS = (
    "outcome",
    "exit_code",
    "summary",
    "session_id",
    "detail",
    "retry_at",
    "ended_reason",
    "final",
    "diff",
    "commits",
)
USAGE_FIELDS = ("turns", "input_tokens", "output_tokens", "cost_usd")

# ---- the spec a run starts from -----------------------------------------------------------------


def agent_spec(
    agent_def: "AgentDef",
    *,
    model: str | None,
    path: Path,
    run_dir: Path,
    branch: str | None,
    template_text: str | None,
) -> dict[str, Any]:
    """How a workspace's runs start (stored with the workspace at dispatch): the compiled argv
    (client text kept as references), how the prompt is delivered, and the template it is
    rebuilt from (None: from prompt.md)."""
    values = {
        "model": model,
        "workspace": str(run_dir),
        "branch": branch,
        "prompt_file": str(path / PROMPT_FILE),
    }
    argv = argvlib.compile_argv(agent_def.command, values, end_of_options=agent_def.end_of_options)
    resume = agent_def.resume_command
    return {
        "argv": argv,
        # a follow-up run: the same, continuing the session its last run reported ({session_id})
        "resume_argv": argvlib.compile_argv(resume, values, end_of_options=agent_def.end_of_options)
        if resume
        else None,
        "input": agent_def.input,
        "stdin": agent_def.stdin,
        "template_text": template_text,
        "env": dict(agent_def.env),
        "output": agent_def.output,
        "patterns": list(agent_def.rate_limit_patterns),
    }


def spec_path(path: Path, attempt: int) -> Path:
    return path / f"run-{attempt}.spec.json"


def write_spec(path: Path, attempt: int, spec: Mapping[str, Any]) -> Path:
    target = spec_path(path, attempt)
    atomic_write(target, json.dumps(spec))
    return target


def read_spec(target: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(target.read_text())
    return data


def rate_to_spec(rate: RateConfig | None) -> dict[str, Any] | None:
    if rate is None:
        return None
    return {
        "reset_utc": rate.reset_utc.strftime("%H:%M"),
        "daily_limit": rate.daily_limit,
        "min_delay": rate.min_delay,
        "sustained_delay": rate.sustained_delay,
        "burst_window": rate.burst_window,
        "burst_delay": rate.burst_delay,
    }


def rate_from_spec(spec: Mapping[str, Any] | None) -> RateConfig | None:
    if not spec:
        return None
    hh, mm = spec["reset_utc"].split(":")
    return RateConfig(
        reset_utc=dtime(int(hh), int(mm)),
        daily_limit=spec.get("daily_limit"),
        min_delay=spec.get("min_delay", 0.0),
        sustained_delay=spec.get("sustained_delay", 0.0),
        burst_window=spec.get("burst_window", 0.0),
        burst_delay=spec.get("burst_delay", 0.0),
    )


def adaptive_to_spec(adaptive: Adaptive) -> dict[str, list[int]]:
    """The adaptive limits a run moves ({key: [floor, clean_streak, configured limit]}), for the
    shim that records its end."""
    return {key: [aimd.floor, aimd.clean_streak, limit] for key, (aimd, limit) in adaptive.items()}


def adaptive_from_spec(spec: Mapping[str, Sequence[int]] | None) -> Adaptive:
    return {key: (Aimd(floor=v[0], clean_streak=v[1]), v[2]) for key, v in (spec or {}).items()}


def start_failure(exc: OSError | ValueError, *, where: str, what: str = "run") -> RunExit:
    """A run (what="run": its shim) or its agent (what="agent") could not start: an executable
    or directory gone, a full disk, an undecodable legacy prompt.md. A failed attempt, with the
    reason; a fault of the pool's environment (POOL_FAULTS) backs the pool off."""
    if not isinstance(exc, OSError):
        return RunExit(
            outcome=Outcome.FAILED,
            exit_code=None,
            ended_reason="spawn_failed",
            detail=f"the {what} could not start: {exc}",
        )
    return RunExit(
        outcome=Outcome.FAILED,
        exit_code=None,
        detail=f"the {what} could not start: {exc.strerror or exc} ({where})",
        ended_reason=spawn_reason(exc),
        pool_fault=exc.errno in POOL_FAULTS,
    )


# ---- the exit file ------------------------------------------------------------------------------


def exit_file(path: Path, run_id: int) -> Path:
    return path / f"exit-{run_id}.json"


def write_exit_file(path: Path, run_id: int, result: RunExit, *, ended_at: float) -> None:
    """Written before the end is recorded in the store (raises OSError on a full disk)."""
    record: dict[str, Any] = {"run_id": run_id, "ended_at": ended_at}
    record.update({name: getattr(result, name) for name in EXIT_FIELDS})
    record["outcome"] = result.outcome.value
    record["usage"] = {name: getattr(result.usage, name) for name in USAGE_FIELDS}
    atomic_write(exit_file(path, run_id), json.dumps(record))


def read_exit_file(path: Path, run_id: int) -> tuple[RunExit, float] | None:
    """The end a shim wrote before it died, and when; None if it wrote none. A damaged file
    (the shim died mid-write on an old kernel, a full disk) reads as a lost run."""
    marker = exit_file(path, run_id)
    if not marker.exists():
        return None
    try:
        data = json.loads(marker.read_text())
        if not isinstance(data, dict):
            return lost(), time.time()
        fields: dict[str, Any] = {name: data.get(name) for name in EXIT_FIELDS}
        fields["outcome"] = Outcome(data["outcome"])
        fields["final"] = bool(fields["final"])  # absent in an exit file of an older shim
        used = data["usage"] if isinstance(data.get("usage"), dict) else {}
        fields["usage"] = Usage(**{name: used.get(name) for name in USAGE_FIELDS})
        return RunExit(**fields), float(data.get("ended_at") or time.time())
    except (OSError, ValueError, KeyError, TypeError):
        return lost(), time.time()


def lost() -> RunExit:
    return RunExit(
        outcome=Outcome.LOST, exit_code=None, detail="the run's shim vanished without recording an exit"
    )


# ---- keeping the queue moving -------------------------------------------------------------------


def drainer_spec(*, config_source: str, home: Path) -> dict[str, Any]:
    """How to start `serve --drain` for this home and config (carried in every run's spec). The
    store's URL is not in it (a spec file sits beside the agent's files): the drainer inherits
    $DISPATCH_RUNNER_STORE from whoever starts it, or reads the same config."""
    argv = [sys.executable, "-m", "dispatch_runner.cli"]
    if config_source != "built-in defaults":
        argv += ["--config", config_source]
    argv += ["serve", "--drain"]
    return {
        "argv": argv,
        "env": {"DISPATCH_RUNNER_HOME": str(home)},
        "log": str(home / "drainer.log"),
    }


def ensure_drainer(store: Any, drainer: Mapping[str, Any]) -> bool:
    """If work is queued or running and no live peer drains the queue, start the on-demand
    drainer (`serve --drain`; it takes a lock, so at most one runs). The one place that decides
    it, for a shim whose run freed a slot and for a one-shot CLI command. True if started."""
    if not store.has_work():
        return False
    now = time.time()
    for peer in store.peers():
        if peer["heartbeat_at"] > now - LIVE_PEER_S and supervisor.is_alive(
            peer["pid"], peer["start"], peer["boot_id"]
        ):
            return False
    return spawn_drainer(drainer)


def spawn_drainer(drainer: Mapping[str, Any]) -> bool:
    argv = drainer.get("argv")
    if not argv:
        return False
    env = supervisor.unmarked(os.environ)
    env.update(drainer.get("env") or {})
    log = drainer.get("log") or os.devnull
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    os.posix_spawn(argv[0], argv, env, file_actions=actions, setsid=True)
    return True
