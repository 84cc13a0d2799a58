"""The control side of a SQL store: freezing the queue, kills, peers and garbage collection."""

import json
from collections.abc import Sequence
from typing import Any

from ...model import WorkspaceState, check_transition
from ..base import HostCaps, KillPlan, RunRow, WorkspaceRow
from . import deps
from .conn import Conn
from .core import Conflict, SQLCore
from .rows import host_of, read_frozen, read_workspace, run_row, workspace_row

GC_CHUNK = 500  # ids per DELETE … IN (…), well under SQLite's bound-parameter limit


class ControlSide(SQLCore):
    def set_frozen(self, frozen: bool, *, now: float) -> bool:
        def tx(db: Conn) -> bool:
            was = read_frozen(db)
            db.execute(db.q.set_frozen, ("1" if frozen else "0",))
            if was != frozen:
                self._event(db, "QueueFrozen" if frozen else "QueueUnfrozen", now)
            return frozen

        return self._write(tx)

    def plan_kill(
        self,
        *,
        workspaces: Sequence[str] = (),
        agent: str | None = None,
        everything: bool = False,
        now: float,
    ) -> KillPlan:
        """Cancel the queued targets; mark running ones kill_requested and return them to signal."""

        def tx(db: Conn) -> KillPlan:
            if everything:
                rows = db.execute(db.q.kill_targets_all)
            elif agent is not None:
                rows = db.execute(db.q.kill_targets_of_agent, (agent, agent, agent))
            else:
                sql = db.q.expand("kill_targets_by_ids", ids=db.q.marks(len(workspaces)))
                rows = db.execute(sql, list(workspaces))
            cancelled: list[WorkspaceRow] = []
            signal: list[RunRow] = []
            for ws in [workspace_row(r) for r in rows]:
                if ws.state == WorkspaceState.QUEUED:
                    check_transition(WorkspaceState.QUEUED, WorkspaceState.CANCELLED)
                    if db.execute(db.q.cancel_workspace, (now, now, ws.id)).rowcount != 1:
                        if read_workspace(db, ws.id).state == WorkspaceState.CANCELLED:
                            continue  # cancelled just now with a need of it (deps.py)
                        raise Conflict(f"{ws.id} was claimed meanwhile")  # retried: then it is killed
                    self._event(
                        db, "AgentCancelled", now, ws.id, ws.origin, agent=ws.agent, state="cancelled"
                    )
                    cancelled.append(read_workspace(db, ws.id))
                    deps.ended(self, db, cancelled[-1], now)  # its dependents, its group
                elif ws.current_run is not None:
                    db.execute(db.q.request_kill, (ws.current_run,))
                    signal.append(run_row(db.execute(db.q.run, (ws.current_run,)).fetchone()))
            return KillPlan(cancelled, signal)

        return self._write(tx)

    # ---- peers and housekeeping -------------------------------------------------------------

    def heartbeat_peer(
        self,
        peer: str,
        *,
        pid: int,
        start: int,
        boot_id: str,
        kind: str,
        now: float,
        can: HostCaps | None = None,
        url: str | None = None,
    ) -> None:
        """This peer lives; its host can run `can` (advertised to the fleet) and serves `url`."""
        agents = json.dumps(sorted(can.pools)) if can is not None and can.pools is not None else None
        labels = json.dumps(sorted(can.labels)) if can is not None else None
        args = (peer, pid, start, boot_id, kind, now, self.schema_version, host_of(peer), agents, labels, url)
        self._write(lambda db: db.execute(db.q.heartbeat_peer, args))

    def peers(self) -> list[dict[str, Any]]:
        """Every registered peer: `agents` and `labels` decoded (agents None: not advertised)."""
        found = []
        for r in self._read(self.q.peers):
            row = dict(r)
            row["agents"] = json.loads(row["agents"]) if row.get("agents") else None
            row["labels"] = json.loads(row["labels"]) if row.get("labels") else []
            found.append(row)
        return found

    def remove_peers(self, peers: Sequence[str]) -> int:
        if not peers:
            return 0
        sql = self.q.expand("remove_peers", ids=self.q.marks(len(peers)))
        return self._write(lambda db: db.execute(sql, list(peers)).rowcount)

    def finished_before(
        self, before: float, *, after: tuple[float, str] | None = None, limit: int = 500
    ) -> list[WorkspaceRow]:
        """Finished workspaces that ended before `before`, oldest first, from past the
        (ended_at, id) cursor `after` (garbage collection pages through them)."""
        since, last = after if after is not None else (float("-inf"), "")
        return [
            workspace_row(r) for r in self._read(self.q.finished_before, (before, since, since, last, limit))
        ]

    def forget(self, workspaces: Sequence[str], *, events_before: float) -> int:
        """Delete these finished workspaces with their runs, messages, approval requests and owed
        completions (a completion no session took by then is never taken), and every event older
        than `events_before`. Their files are removed by the caller first."""

        def tx(db: Conn) -> int:
            gone = 0
            for chunk in range(0, len(workspaces), GC_CHUNK):
                part = list(workspaces[chunk : chunk + GC_CHUNK])
                ids = db.q.marks(len(part))
                db.execute(db.q.expand("forget_runs", ids=ids), part)
                db.execute(db.q.expand("forget_outbox", ids=ids), part)
                db.execute(db.q.expand("forget_messages", ids=ids), part)
                db.execute(db.q.expand("forget_approvals", ids=ids), part)
                gone += db.execute(db.q.expand("forget_workspaces", ids=ids), part).rowcount
            db.execute(db.q.forget_groups_outbox)  # a fan-out group goes with its last member
            db.execute(db.q.forget_groups)
            db.execute(db.q.forget_events, (events_before,))
            return gone

        return self._write(tx)
