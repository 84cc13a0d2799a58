"""Recovery: what a peer does about runs nobody is watching any more. Reservations whose shim
never started are given back or failed; runs whose shim died are recorded from their exit file
or as lost (their agent stopped first); a kill whose killer went away is finished; peers that
died without withdrawing are forgotten."""

import logging
import time
from pathlib import Path

import anyio
import anyio.to_thread

from ..launch import runfiles, supervisor
from ..model import Outcome
from ..store import RunExit, RunRow, WorkspaceRow
from .core import Core, peer_alive

log = logging.getLogger("dispatch_runner")
DEAD_CLAIMER_GRACE_S = 2.0  # a shim may still be starting after its peer died
LEASE_GRACE_S = 5.0  # a lease is judged expired this long after its end (clocks may differ)
PEER_EXPIRY_S = 60.0  # a peer silent this long is gone (its heartbeat is every 2 s)


class Recovery:
    def __init__(self, core: Core) -> None:
        self.core = core

    async def recover(self) -> None:
        """Return stale reservations; record exits whose shim died; mark vanished runs lost;
        judge other hosts' runs by their leases."""
        core = self.core
        core.launcher.reap()
        runs = await core.db(core.store.active_runs)
        now = time.time()
        here = supervisor.host_id()
        for run in runs:
            if run.phase == "reserved":
                await self._recover_reservation(run, now)
            elif run.host not in (None, here):
                # another host's run: judged by its lease, never by its processes
                if self._lease_expired_for_sure(run, now) and await core.db(self._lease_expired, run, now):
                    core.nudge()
            elif await self._recover_running(run, now):
                core.nudge()

    async def _recover_running(self, run: RunRow, now: float) -> bool:
        """A run of this host, judged by its processes; True when its end was recorded."""
        if not supervisor.is_alive(run.shim_pid, run.shim_start, run.boot_id):
            return bool(await anyio.to_thread.run_sync(self._recover_dead_shim, run.id))
        if run.agent_pid and not supervisor.is_alive(run.agent_pid, run.agent_start, run.boot_id):
            # the agent ended and its shim lives but has not recorded it (its store connection
            # failed, it is retrying): the exit file it wrote first says how the run ended
            return bool(await anyio.to_thread.run_sync(self._record_exit_file, run.id))
        if run.kill_requested and run.agent_pid and now - run.claimed_at > self.core.config.kill_grace_s:
            # the killer went away before the agent ended (e.g. a CLI interrupted): finish it
            await anyio.to_thread.run_sync(self.stop_agent, run)
        return False

    async def _recover_reservation(self, run: RunRow, now: float) -> None:
        """A claim whose shim never started: killed if asked; given back (not an attempt, no
        pacing or daily slot used) when its peer died; a failed spawn when its peer lives on but
        no shim came within reservation_timeout_s."""
        core = self.core
        age = now - run.claimed_at
        timeout_s = core.config.reservation_timeout_s
        if run.kill_requested:
            row = await core.db(core.record, run.id, RunExit(outcome=Outcome.KILLED, exit_code=None), now=now)
        elif age > DEAD_CLAIMER_GRACE_S and not await core.db(self._claimer_can_start, run):
            row = await core.db(self._give_back, run.id, now)
        elif age > timeout_s:
            late = RunExit(
                outcome=Outcome.FAILED,
                exit_code=None,
                ended_reason="spawn_failed",
                detail=f"the run did not start within {timeout_s:g}s of its claim "
                "(see shim.log in the workspace and forkserver.log in the home)",
            )
            row = await core.db(core.record, run.id, late, now=now)
        else:
            return
        if row is not None:
            core.nudge()

    def _claimer_can_start(self, run: RunRow) -> bool:
        """The claiming peer is alive and knows this store's schema. A peer of an older
        dispatch-runner, still running after an upgrade, claims work its shims cannot start:
        that is not the run's failure."""
        if not peer_alive(run.claimed_by):
            return False
        row = next((p for p in self.core.store.peers() if p["id"] == run.claimed_by), None)
        if run.host not in (None, supervisor.host_id()):
            # another host's peer: alive while its heartbeat is
            return row is not None and row["heartbeat_at"] > time.time() - PEER_EXPIRY_S
        if row is not None and row.get("schema") is None:
            log.warning(
                "peer %s runs an older dispatch-runner and claimed %s, which it cannot "
                "start; restart that peer (its client session) to upgrade it",
                run.claimed_by,
                run.workspace,
            )
            return False
        return True

    def _give_back(self, run_id: int, now: float) -> WorkspaceRow | None:
        row = self.core.store.return_reservation(run_id, now=now)
        if row is not None:
            self.core.counts["reservations_returned"] += 1
            self.core.record_status(row)
        return row

    def stop_agent(self, run: RunRow) -> None:
        if supervisor.is_alive(run.agent_pid, run.agent_start, run.boot_id):
            supervisor.terminate_group(run.agent_pid or 0, grace_s=self.core.config.kill_grace_s)

    def _recover_dead_shim(self, run_id: int) -> bool:
        """Record the exit of a run whose shim is gone: from its exit file, else as lost (its agent,
        found by pid or by the run id in its environment, is stopped first). True if recorded."""
        return self._record_exit_file(run_id, shim_gone=True)

    def _lease_expired_for_sure(self, run: RunRow, now: float) -> bool:
        """The lease ran out (plus LEASE_GRACE_S for clocks) while this peer reached the store
        all along: its shim had every chance to renew. After an outage of the store every shim
        was cut off alike; they renew first, before any peer judges them."""
        ok_since = self.core.store_ok_since
        if run.lease_until is None or ok_since is None:
            return False  # a shim from before leases; a one-shot command or a peer just back
        return run.lease_until + LEASE_GRACE_S < now and ok_since <= now - self.core.config.lease_s

    def _lease_expired(self, run: RunRow, now: float) -> bool:
        """A run of another host whose shim stopped renewing its lease: that host died, or its
        shim did, or it cannot reach the store (its shim then stops the agent itself). Lost, and
        retried per max_attempts; recorded once, whichever peer of the fleet sees it first."""
        silent = now - (run.lease_until or now)
        result = RunExit(
            outcome=Outcome.LOST,
            exit_code=None,
            detail=f"its lease on host {run.host} expired {silent:.0f}s ago without an exit "
            "(that host, or the run's shim there, went silent)",
        )
        if self.core.record(run.id, result, now=now, lease_ended_by=now - LEASE_GRACE_S) is None:
            return False
        self.core.counts["lost"] += 1
        return True

    def _record_exit_file(self, run_id: int, *, shim_gone: bool = False) -> bool:
        """Record a running run's end from the exit file its shim wrote first. Without the file:
        nothing yet while the shim lives (it is about to write it); lost when it is gone."""
        store = self.core.store
        run = store.get_run(run_id)  # fresh: the shim may have recorded it meanwhile
        ws = store.get_workspace(run.workspace) if run and run.phase == "running" else None
        if run is None or ws is None:
            return False
        found = runfiles.read_exit_file(Path(ws.path), run.id)
        if found is None:
            if not shim_gone:
                return False
            self.stop_agent(run)
            # the agent's pid may never have been recorded, and descendants may have left its group
            supervisor.terminate_marked(
                supervisor.run_marker(ws.id, run.id), grace_s=self.core.config.kill_grace_s
            )
            found = runfiles.lost(), time.time()
            self.core.counts["lost"] += 1
        result, ended = found
        return self.core.record(run.id, result, now=ended) is not None

    def forget_dead_peers(self) -> int:
        """Rows of peers that died without withdrawing (SIGKILL, a crash): the table stays as
        small as the set of live peers."""
        now = time.time()
        dead = [
            p["id"]
            for p in self.core.store.peers()
            if p["id"] != self.core.peer
            and (p["heartbeat_at"] < now - PEER_EXPIRY_S or not peer_alive(p["id"]))
        ]
        return self.core.store.remove_peers(dead)
