"""The drain: claim what the gates allow and start each claim's shim, until the store says no."""

import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from .. import workspaces
from ..config import Config, PoolPolicy
from ..launch import launcher, runfiles, supervisor
from ..store import Claim, WorkspaceRow
from . import sandboxing
from .core import Core
from .validation import with_run_limits

log = logging.getLogger("dispatch_runner")


class Drainer:
    def __init__(self, core: Core) -> None:
        self.core = core
        # one drain at a time in this peer: two at once (the loop's tick and a dispatch, say)
        # would each claim before the other's failed spawn backs the pool off
        self._draining = threading.Lock()

    def drain_sync(self) -> list[str]:
        """Claim and spawn until the gate says no; schedule a wake-up for time-gated pools.
        Returns the workspaces started."""
        with self._draining:
            return self._drain()

    def _drain(self) -> list[str]:
        spawned: list[str] = []
        self.core.reload_if_changed()  # a changed agents.yaml applies from this claim on
        while True:
            began = time.monotonic()
            result = self.core.store.claim_next(
                now=None, limits=self.core.limits, peer=self.core.peer, can=self.core.caps()
            )
            pool = result.claim.workspace.pool if result.claim else ""
            self.core.observe("claim", pool, time.monotonic() - began)
            self.core.schedule(result.wake_at)
            if result.preempt is not None:
                self.core.preempt(result.preempt)
            if result.claim is None:
                return spawned
            if self._spawn(result.claim):
                spawned.append(result.claim.workspace.id)
                if result.claim.workspace.runs == 1:  # a dispatch's first run: its wait in the queue
                    waited = time.time() - result.claim.workspace.created_at
                    self.core.observe("dispatch_to_running", pool, max(waited, 0.0))

    def _spawn(self, claim: Claim) -> bool:
        ws = claim.workspace
        config = self.core.config
        try:
            if not (ws.cwd or ws.repo) and ws.pool in config.agents:
                ws = self._for_this_host(ws)
        except OSError as exc:
            return self._not_started(claim.run_id, ws, exc)
        path = Path(ws.path)
        spec = {
            **self._current_spec(ws),
            # without its password: spec files sit beside the agent's files; the shim takes the
            # whole URL from its environment (where a nested dispatch of its agent finds it too)
            "store": self.core.store.display_url,
            "run_id": claim.run_id,
            "workspace": ws.id,
            "attempt": ws.runs,
            "path": ws.path,
            "cwd": ws.run_dir,
            "timeout_s": ws.timeout_s,
            "kill_grace_s": config.kill_grace_s,
            "lease_s": config.lease_s,
            "rate": runfiles.rate_to_spec(config.rates.get(ws.pool)),
            "adaptive": runfiles.adaptive_to_spec(config.adaptive_for(ws.pool, ws.model)),
            "drainer": self.core.drainer_spec(),
            **_watch_spec(config.pool_policy(ws.pool)),
        }
        spec["env"] = {
            **spec.get("env", {}),
            **_trace_env(claim.workspace),  # as stored: this host's spec of the agent has none
            **_lineage_env(ws, config),
            **supervisor.run_marker(ws.id, claim.run_id),
        }
        supervisor.crash_point("peer-after-claim")
        try:
            spec_path = runfiles.write_spec(path, ws.runs, spec)
            self.core.launcher.spawn(
                launcher.shim_args(spec_path),
                env={**os.environ, "DISPATCH_RUNNER_STORE": self.core.store.url},
                log_path=path / "shim.log",
                spec_path=spec_path,
            )
        except OSError as exc:
            return self._not_started(claim.run_id, ws, exc)
        self.core.counts["spawned"] += 1
        workspaces.write_status(ws, now=time.time())
        return True

    def _not_started(self, run_id: int, ws: WorkspaceRow, exc: OSError) -> bool:
        """Counted as a failed attempt, with backoff: given back instead, the same head would be
        claimed again at once, in a loop that stalls the pool and grows the store."""
        log.error("cannot start the run of %s: %s", ws.id, exc)
        self.core.counts["spawn_failures"] += 1
        self.core.record(run_id, runfiles.start_failure(exc, where=ws.path))
        return False

    def _for_this_host(self, ws: WorkspaceRow) -> WorkspaceRow:
        """A workspace without a cwd or repo runs with this host's agent (its agents.yaml says
        where that agent is and how it is called), in a directory on this host's disk: made
        under this host's workspace root, and recorded, when its directory is on another host's
        (it was dispatched there, or last ran there). The prompt is rebuilt from the task by the
        shim."""
        here = supervisor.host_id()
        path, run_dir = Path(ws.path), Path(ws.run_dir)
        elsewhere = ws.dir_host != here if ws.dir_host is not None else not run_dir.is_dir()
        if elsewhere:
            path = self.core.config.workspace_root / ws.id
            run_dir = path / "work"
            run_dir.mkdir(parents=True, exist_ok=True)
            self.core.store.relocate(ws.id, path=str(path), run_dir=str(run_dir), host=here)
        agent_def = self.core.config.agents[ws.pool]
        spec = runfiles.agent_spec(
            agent_def,
            model=ws.model,
            path=path,
            run_dir=run_dir,
            branch=None,
            template_text=ws.spec.get("template_text"),
        )
        spec = with_run_limits(
            spec, agent_def, max_cost_usd=ws.spec.get("max_cost_usd"), max_turns=ws.spec.get("max_turns")
        )
        # the sandbox and approval flags of this host's agent definition, for the same policy
        spec = sandboxing.with_policy(spec, agent_def, sandboxing.Policy.of(ws), self.core.config, ws.id)
        return replace(ws, path=str(path), run_dir=str(run_dir), spec=spec)

    def _current_spec(self, ws: WorkspaceRow) -> Mapping[str, Any]:
        """The stored spec; one queued before argv was compiled (a rendered argv, the prompt in
        it, no `--`) is compiled again from the current agents.yaml."""
        agent_def = self.core.config.agents.get(ws.pool)
        if "stdin" in ws.spec or agent_def is None:
            return ws.spec
        return runfiles.agent_spec(
            agent_def,
            model=ws.model,
            path=Path(ws.path),
            run_dir=Path(ws.run_dir),
            branch=ws.branch,
            template_text=None,
        )

    def ensure_progress(self) -> None:
        """After a one-shot command: the queue must keep moving without it."""
        runfiles.ensure_drainer(self.core.store, self.core.drainer_spec())


def _watch_spec(policy: PoolPolicy) -> dict[str, Any]:
    """How the shim watches the run (as the pool's policy says now)."""
    return {
        "retry_timeouts": policy.retry_timeouts,
        "startup_timeout_s": policy.startup_timeout_s,
        "idle_timeout_s": policy.idle_timeout_s,
        "kill_stalled": policy.kill_stalled,
    }


def _lineage_env(ws: WorkspaceRow, config: Config) -> dict[str, str]:
    """What an agent's own dispatches need to find their place: its workspace (their parent),
    its depth, and the runner's home and config (the store's URL, with its password, is in
    the shim's environment, which the agent inherits)."""
    env = {
        "DISPATCH_RUNNER_PARENT": ws.id,
        "DISPATCH_RUNNER_DEPTH": str(ws.depth),
        "DISPATCH_RUNNER_HOME": str(config.home),
    }
    if Path(config.source).is_file():
        env["DISPATCH_RUNNER_CONFIG"] = config.source
    return env


def _trace_env(ws: WorkspaceRow) -> dict[str, str]:
    """The dispatch's trace context (runner/tracing.py), for the agent and its own dispatches."""
    parent = ws.spec.get("traceparent")
    return {"TRACEPARENT": parent} if isinstance(parent, str) and parent else {}
