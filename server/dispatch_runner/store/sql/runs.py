"""The run side of a SQL store: what the shim and recovery write as a run starts and ends.

A run's end is decided by lifecycle.plan_exit (retry, dead letter, rate-limit requeue, backoff,
a never-started claim's slot given back); this side loads the rows and writes the plan.
"""

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ...adaptive import Adaptive
from ...model import TERMINAL_EVENTS, Outcome
from ...policy import PoolState, RateConfig
from .. import lifecycle
from ..base import Lease, RunExit, RunRow, WorkspaceRow
from . import deps
from .conn import Conn
from .core import Conflict, SQLCore
from .rows import (
    add_spend,
    agent_key,
    read_pool_state,
    read_workspace,
    run_row,
    save_pool_state,
    spawn_mark,
)


def _after_end(
    db: Conn, ws: WorkspaceRow, result: RunExit, plan: lifecycle.ExitPlan, now: float, rate: RateConfig | None
) -> None:
    """A run's end beyond its workspace's row: a preempted run's next run resumes its session
    (where its agent can), its pool's new state, what it spent."""
    resumable = (result.session_id or ws.session_id) and ws.spec.get("resume_argv")
    if plan.ended_reason == "preempted" and resumable:
        db.execute(db.q.set_next_input, (PREEMPTED_INPUT, ws.id))
    if plan.pool is not None:
        save_pool_state(db, ws.pool, plan.pool)
    used = result.usage
    if used.tokens or used.cost_usd:
        add_spend(db, ws.pool, agent_key(ws), rate, now, runs=0, tokens=used.tokens, usd=used.cost_usd or 0.0)


def _adapt_model(
    db: Conn,
    ws: WorkspaceRow,
    adaptive: Adaptive | None,
    outcome: Outcome,
    pool: PoolState,
    *,
    reserved: bool,
    now: float,
) -> tuple[lifecycle.PlannedEvent, ...]:
    """AIMD on a model's own limit (`pools.X:model.adaptive`), kept under its key; its events."""
    key = f"{ws.pool}:{ws.model}"
    if reserved or not adaptive or not ws.model or key not in adaptive:
        return ()
    state, events = lifecycle.adapt_limit(key, read_pool_state(db, key), outcome, adaptive[key], pool, now)
    save_pool_state(db, key, state)
    return events


PREEMPTED_INPUT = (
    "You were stopped to free a slot for urgent work (preempted). Continue the task where you left off."
)


class WatchSide(SQLCore):
    """What a shim writes while its agent runs: the stall flag, and live messages taken."""

    def set_stalled(self, run_id: int, since: float | None, *, now: float) -> bool:
        """The run's agent has been silent since `since` (None: it spoke again). True when the
        workspace's flag changed; flagging it appends AgentStalled."""

        def tx(db: Conn) -> bool:
            if db.execute(db.q.set_stalled, (since, run_id, since)).rowcount != 1:
                return False
            if since is not None:
                run = db.execute(db.q.started_run, (run_id,)).fetchone()
                self._event(
                    db,
                    "AgentStalled",
                    now,
                    run["id"],
                    run["origin"],
                    agent=run["agent"],
                    run=run_id,
                    since=since,
                    idle_s=round(now - since, 3),
                )
            return True

        return self._write(tx)

    def take_messages(self, workspace_id: str, run_id: int, *, now: float) -> list[str]:
        """The messages waiting for the workspace, taken live by its running agent (run_id's,
        which reads input): marked delivered, each with a MessageDelivered event. Empty when
        none waits or the run no longer runs (they stay for the run that resumes its session)."""
        if not self._read(self.q.pending_messages, (workspace_id,)):
            return []  # the common case costs a read, not a write transaction

        def tx(db: Conn) -> list[str]:
            ws = db.execute(db.q.workspace_for_update, (workspace_id,)).fetchone()
            if ws is None or ws["state"] != "running" or ws["current_run"] != run_id:
                return []
            taken: list[str] = []
            for r in db.execute(db.q.pending_messages, (workspace_id,)).fetchall():
                if db.execute(db.q.deliver_message, (now, "live", run_id, r["id"])).rowcount == 1:
                    taken.append(r["text"])
                    self._event(
                        db,
                        "MessageDelivered",
                        now,
                        workspace_id,
                        ws["origin"],
                        agent=ws["agent"],
                        message=r["id"],
                        run=run_id,
                        how="live",
                    )
            return taken

        return self._write(tx)


class RunSide(WatchSide):
    def start_run(
        self,
        run_id: int,
        *,
        shim_pid: int,
        shim_start: int,
        boot_id: str,
        now: float,
        lease_until: float | None = None,
    ) -> bool:
        """Compare-and-set reserved -> running; False when the reservation was given back. The
        run's lease (renewed by its shim) runs until `lease_until`."""

        def tx(db: Conn) -> bool:
            cur = db.execute(db.q.start_run, (shim_pid, shim_start, boot_id, now, lease_until, run_id))
            if cur.rowcount != 1:
                return False
            run = db.execute(db.q.started_run, (run_id,)).fetchone()
            self._event(
                db,
                "AgentStarted",
                now,
                run["id"],
                run["origin"],
                agent=run["agent"],
                run=run_id,
                attempt=run["attempt"],
            )
            return True

        return self._write(tx)

    def record_agent(self, run_id: int, *, agent_pid: int, agent_start: int, now: float) -> bool:
        """Record the agent's identity; True when a kill was requested meanwhile (the shim then
        stops its agent itself: the killer may have gone before the pid was known)."""

        def tx(db: Conn) -> bool:
            cur = db.execute(db.q.record_agent, (agent_pid, agent_start, now, run_id))
            if cur.rowcount:  # the workspace's times are the agent's: its wall time is the duration
                db.execute(db.q.agent_started, (now, run_id))
            row = db.execute(db.q.kill_requested, (run_id,)).fetchone()
            return bool(row and row[0])

        return self._write(tx)

    def renew_lease(self, run_id: int, *, until: float, live: Mapping[str, Any] | None = None) -> Lease:
        """The shim's heartbeat: extend the run's lease while it still runs, and record what its
        agent said and spent so far (`live`: last_line, tokens, cost_usd, at)."""
        progress = json.dumps(live, separators=(",", ":")) if live is not None else None

        def tx(db: Conn) -> Lease:
            held = db.execute(db.q.renew_lease, (until, progress, run_id)).rowcount == 1
            row = db.execute(db.q.kill_requested, (run_id,)).fetchone()
            return Lease(held=held, kill_requested=bool(row and row[0]))

        return self._write(tx)

    def relocate(self, workspace_id: str, *, path: str, run_dir: str, host: str) -> None:
        """A workspace moved to the directory its claiming host made (on `host`'s disk)."""
        self._write(lambda db: db.execute(db.q.relocate_workspace, (path, run_dir, host, workspace_id)))

    def get_run(self, run_id: int) -> RunRow | None:
        rows = self._read(self.q.run, (run_id,))
        return run_row(rows[0]) if rows else None

    def runs_of(self, workspace_id: str) -> list[RunRow]:
        """Every run of a workspace, oldest first (each names the host it ran on)."""
        return [run_row(r) for r in self._read(self.q.workspace_runs, (workspace_id,))]

    def active_runs(self) -> list[RunRow]:
        return [run_row(r) for r in self._read(self.q.active_runs)]

    def record_exit(
        self,
        run_id: int,
        result: RunExit,
        *,
        now: float,
        rate: RateConfig | None,
        lease_ended_by: float | None = None,
        adaptive: Adaptive | None = None,
    ) -> WorkspaceRow | None:
        """Compare-and-set the run's end; apply retry / dead-letter / backoff policy.

        Returns the updated workspace, or None when the exit was already recorded (by the shim or
        by recovery, whichever came first). With `lease_ended_by` (a judge of another host's lease),
        only while the run's lease still ends by then: a renewal that came meanwhile wins."""
        return self._write(
            lambda db: self._record_exit(db, run_id, result, now, rate, lease_ended_by, adaptive)
        )

    def _record_exit(
        self,
        db: Conn,
        run_id: int,
        result: RunExit,
        now: float,
        rate: RateConfig | None,
        lease_ended_by: float | None = None,
        adaptive: Adaptive | None = None,
    ) -> WorkspaceRow | None:
        run = db.execute(db.q.run, (run_id,)).fetchone()
        if run is None or run["phase"] not in ("reserved", "running"):
            return None
        self._lock_pools(db, [run["pool"]])  # its backoff and slots change with claims' in order
        # read again under the lock: a concurrent recorder (the shim, a peer of another host) may
        # have ended the run and moved its workspace on while this one waited for the lock
        run = db.execute(db.q.run, (run_id,)).fetchone()
        if run["phase"] not in ("reserved", "running"):
            return None
        if lease_ended_by is not None and (run["lease_until"] is None or run["lease_until"] > lease_ended_by):
            return None  # its shim renewed the lease since the judge read it
        ws = read_workspace(db, run["workspace"])
        requeues = db.execute(db.q.requeues, (ws.id, Outcome.RATE_LIMITED.value)).fetchone()[0]
        pool = read_pool_state(db, ws.pool)
        plan = lifecycle.plan_exit(
            ws,
            spawn_mark(run),
            result,
            pool,
            kill_requested=int(run["kill_requested"]),
            requeues_before=requeues,
            now=now,
            rate=rate,
            run_id=run_id,
            adaptive=(adaptive or {}).get(ws.pool),
        )
        self._write_exit(db, ws, run_id, result, plan, now, rate)
        for event in _adapt_model(
            db, ws, adaptive, plan.outcome, pool, reserved=spawn_mark(run).reserved, now=now
        ):
            self._event(db, event.type, now, ws.id, ws.origin, **event.data)
        return read_workspace(db, ws.id)

    def _write_exit(
        self,
        db: Conn,
        ws: WorkspaceRow,
        run_id: int,
        result: RunExit,
        plan: lifecycle.ExitPlan,
        now: float,
        rate: RateConfig | None,
    ) -> None:
        used = result.usage
        end = (now, result.exit_code, plan.outcome.value, used.turns, used.input_tokens, used.output_tokens)
        if db.execute(db.q.end_run, (*end, used.cost_usd, run_id)).rowcount != 1:
            raise Conflict(f"run {run_id} ended meanwhile")  # retried: then it reads as recorded
        total = ws.usage + used
        db.execute(
            db.q.run_ended,
            (
                plan.state.value,
                plan.reason,
                plan.attempts,
                plan.not_before,
                result.exit_code,
                result.summary,
                result.session_id,
                now if plan.finished else None,
                now,
                plan.finished,
                plan.ended_reason,
                total.turns,
                total.input_tokens,
                total.output_tokens,
                total.cost_usd,
                _json(result.diff),
                _json(result.commits),
                plan.finished,
                ws.id,
            ),
        )
        _after_end(db, ws, result, plan, now, rate)
        self._exit_events(db, ws, plan, now)
        # a run stopped for good (killed, its budget or time spent) takes no follow-up by itself:
        # its messages stay pending, for a follow-up someone asks for
        if plan.finished and plan.outcome is not Outcome.KILLED and not result.final:
            self._follow_up(db, read_workspace(db, ws.id), now)

    def _exit_events(self, db: Conn, ws: WorkspaceRow, plan: lifecycle.ExitPlan, now: float) -> None:
        """The exit's events; a completion is also owed to the client that dispatched it (the
        outbox, in the same transaction: it is delivered even if that client's server died)."""
        # a fan-out member's completion is owed as part of its group's (GroupCompleted, deps.py)
        owed = None if ws.group else ws.client or ws.origin
        grouped = {"group": ws.group} if ws.group else {}
        # the one event that ends the workspace (a dead letter's, not its AgentFailed twin; none
        # for a run that is retried)
        ending = [e for e in plan.events if e.type in TERMINAL_EVENTS][-1:] if plan.finished else []
        for event in plan.events:
            event_id = self._event(db, event.type, now, ws.id, ws.origin, **{**event.data, **grouped})
            if owed and event in ending:
                db.execute(db.q.insert_outbox, (owed, ws.id, event_id, now))
        if plan.finished:  # what waited for it: dependents, its group
            deps.ended(self, db, replace(ws, state=plan.state.value), now)

    def _follow_up(self, db: Conn, ws: WorkspaceRow, now: float) -> None:
        """Messages sent while the run ran (and not taken live) become the input of a new run
        that resumes the agent's session: the workspace is queued again at once."""
        if not ws.session_id or not ws.spec.get("resume_argv"):
            return  # they stay pending: `status` shows them, and a message refuses to queue more
        pending = db.execute(db.q.pending_messages, (ws.id,)).fetchall()
        if not pending:
            return
        text = "\n\n".join(r["text"] for r in pending)
        if db.execute(db.q.reopen_workspace, (text, now, ws.priority, now, ws.id)).rowcount != 1:
            return
        for r in pending:
            db.execute(db.q.deliver_message, (now, "run", None, r["id"]))
        self._event(
            db, "AgentQueued", now, ws.id, ws.origin, agent=ws.agent, priority=ws.priority, resume=True
        )

    def return_reservation(self, run_id: int, *, now: float) -> WorkspaceRow | None:
        """A claim that was never spawned goes back to the queue (not an attempt); its pacing mark
        and daily slot go back to its pool."""

        def tx(db: Conn) -> WorkspaceRow | None:
            pool = db.execute(db.q.run, (run_id,)).fetchone()
            if pool is not None:
                self._lock_pools(db, [pool["pool"]])
            if db.execute(db.q.abandon_reservation, (now, run_id)).rowcount != 1:
                return None
            run = db.execute(db.q.run, (run_id,)).fetchone()
            db.execute(db.q.requeue_workspace, (now, run["workspace"]))
            pool = read_pool_state(db, run["pool"])
            save_pool_state(db, run["pool"], lifecycle.plan_give_back(spawn_mark(run), pool))
            ws = read_workspace(db, run["workspace"])
            self._event(
                db,
                "AgentRetrying",
                now,
                ws.id,
                ws.origin,
                agent=ws.agent,
                run=run_id,
                state="queued",
                outcome="reservation_returned",
                reason="the claiming peer never started the run",
            )
            return ws

        return self._write(tx)


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))
