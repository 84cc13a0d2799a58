"""runner.kill: running workspaces are stopped (SIGTERM to the agent's group, SIGKILL after the
grace) and queued ones cancelled, each decided in one store transaction."""

import time
from functools import partial
from typing import Any

import anyio
import anyio.to_thread

from .. import validate
from ..actions import KillRequest
from ..errors import InvalidArgument, UnknownWorkspace
from ..launch import supervisor
from ..model import Outcome
from ..store import RunExit, RunRow
from . import groups
from .core import Core

KILL_THREADS = 8  # kills wait out a grace period: never let them take every worker thread
KILL_SLACK_S = 5.0  # beyond the grace: the shim records the exit within milliseconds
KILL_POLL_S = 0.01


class Killer:
    def __init__(self, core: Core) -> None:
        self.core = core

    async def kill(self, req: KillRequest) -> dict[str, Any]:
        core = self.core
        targets = [req.workspace] if isinstance(req.workspace, str) else list(req.workspace or [])
        for ws_id in targets:
            validate.text("workspace", ws_id, max_chars=200)
        validate.text("agent", req.agent, max_chars=200)
        if not targets and req.agent is None and not req.all:
            raise InvalidArgument("workspace", "say what to kill: a workspace id, an agent, or all")
        # a group's id stands for its members
        targets = await core.db(groups.expand_ids, core.store, targets, field="workspace")
        for ws_id in targets:
            if await core.db(core.store.get_workspace, ws_id) is None:
                raise UnknownWorkspace(ws_id)
        if req.tree and targets:  # and every sub-agent they dispatched, at any depth
            targets += await core.db(core.store.subtree, targets)
        plan = await core.db(
            core.store.plan_kill, workspaces=targets, agent=req.agent, everything=req.all, now=time.time()
        )
        await anyio.to_thread.run_sync(lambda: [core.record_status(row) for row in plan.cancelled])
        limiter = anyio.CapacityLimiter(KILL_THREADS)
        async with anyio.create_task_group() as tg:
            for run in plan.to_signal:
                tg.start_soon(partial(anyio.to_thread.run_sync, self.stop_run, run, limiter=limiter))
        await core.publish_new()
        result: dict[str, Any] = {
            "killed": sorted({r.workspace for r in plan.to_signal}),
            "cancelled": [r.id for r in plan.cancelled],
        }
        here = supervisor.host_id()
        elsewhere = {r.workspace: r.host for r in plan.to_signal if r.host not in (None, here)}
        if elsewhere:  # carried out by a peer on that host, which records the end
            result["elsewhere"] = elsewhere
        return result

    def stop_run(self, run: RunRow) -> None:
        """SIGTERM the agent's group, SIGKILL after the grace; wait until the exit is recorded."""
        store = self.core.store
        deadline = time.monotonic() + self.core.config.kill_grace_s + KILL_SLACK_S
        while time.monotonic() < deadline:
            grace_s = self.core.config.kill_grace_s  # as in force now (agents.yaml may change)
            current = store.get_run(run.id)
            if current is None or current.phase in ("exited", "abandoned"):
                return
            if current.phase == "running" and current.host not in (None, supervisor.host_id()):
                return  # another host's run: a peer there stops it at its next tick (kill_requested)
            if current.agent_pid and supervisor.is_alive(current.agent_pid, current.agent_start):
                supervisor.terminate_group(current.agent_pid, grace_s=grace_s)
            elif current.phase == "reserved" or not supervisor.is_alive(current.shim_pid, current.shim_start):
                ws = store.get_workspace(current.workspace)
                if ws is not None and current.phase == "running":  # the shim cannot sweep: we do
                    supervisor.terminate_marked(supervisor.run_marker(ws.id, current.id), grace_s=grace_s)
                self.core.record(run.id, RunExit(outcome=Outcome.KILLED, exit_code=None))
                return
            time.sleep(KILL_POLL_S)  # the shim records the exit within milliseconds of the agent's end
