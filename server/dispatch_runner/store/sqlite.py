"""SQLite backend: WAL, BEGIN IMMEDIATE for every read-then-write, busy_timeout, retry on lock.

SQLite has no SKIP LOCKED: BEGIN IMMEDIATE serialises claims across processes, so two peers can
never both take the last slot. One connection per Store, guarded by a lock (the async runner
calls it from worker threads). Imports stay stdlib-only: the per-run shim uses this module.
"""

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from .. import policy
from ..errors import QueueBusy, StoreError
from ..model import Event, Outcome, WorkspaceState, check_transition
from ..policy import PoolState, RateConfig
from . import lifecycle
from .base import (
    Claim,
    ClaimResult,
    EnqueueResult,
    KillPlan,
    Limits,
    NewWorkspace,
    RunExit,
    RunRow,
    WorkspaceRow,
)
from .sqlite_schema import MIGRATIONS
from .sqlite_snapshot import snapshot

T = TypeVar("T")
LANE_SEP = "\x1f"
LOCK_RETRIES = 5


def lane_of(pool: str, model: str | None) -> str:
    return f"{pool}{LANE_SEP}{model or ''}"


def _dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


class SQLiteStore:
    def __init__(self, path: str | Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self._lock = threading.RLock()
        self._watch_lock = threading.Lock()
        self._watch: sqlite3.Connection | None = None
        self._busy_timeout_s = busy_timeout_s
        self._broken = False
        self._read_lock = threading.Lock()
        self._rdb: sqlite3.Connection | None = None  # made at the first read
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = self._connect()
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(
                f"cannot open the store at {self.path}: {exc}; check the directory "
                "exists and is writable, or set DISPATCH_RUNNER_STORE"
            ) from exc
        if str(mode).lower() != "wal":
            # without WAL a reader blocks a writer's COMMIT and peers stall each other
            self._db.close()
            raise StoreError(
                f"the store at {self.path} cannot use SQLite's WAL journal (it stays "
                f"in {mode!r} mode; WAL needs a local file system with shared memory "
                "and write access): put it on a local disk or set DISPATCH_RUNNER_STORE"
            )
        self._migrate()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            self.path, timeout=self._busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        db.row_factory = sqlite3.Row
        db.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA foreign_keys = ON")
        return db

    # ---- plumbing ---------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._db.close()
        with self._read_lock:
            self._closed = True
            if self._rdb is not None:
                self._rdb.close()
                self._rdb = None
        with self._watch_lock:
            if self._watch is not None:
                self._watch.close()
                self._watch = None

    def __enter__(self) -> "SQLiteStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction; retried by `_write` when the database is locked.

        Whatever fails — the body or the COMMIT itself (I/O error, disk full, a busy database) —
        the connection leaves the transaction: a failed COMMIT can leave SQLite's transaction open
        with the write lock held, which would stall every other peer."""
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            self._abandon()
            raise

    def _abandon(self) -> None:
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                # the rollback failed too (the file is gone or unwritable): closing the
                # connection releases the lock; the next call connects again
                with contextlib.suppress(sqlite3.Error):
                    self._db.close()
                self._broken = True

    def _conn(self) -> sqlite3.Connection:
        """The main connection, made again after one was dropped in a failure (raises
        sqlite3.Error while that is still impossible: the caller turns it into StoreError)."""
        if self._broken:
            self._db = self._connect()
            self._broken = False
        return self._db

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        delay = 0.005
        with self._lock:
            # busy_timeout already waits up to 30 s for the write lock; a few retries on top
            for attempt in range(LOCK_RETRIES):
                try:
                    with self._tx() as db:
                        return fn(db)
                except sqlite3.OperationalError as exc:
                    locked = "locked" in str(exc) or "busy" in str(exc)
                    if not locked or attempt == LOCK_RETRIES - 1:
                        raise StoreError(f"store write failed: {exc}") from exc
                    time.sleep(delay)  # brief back-off between lock retries, not a wait on state
                    delay = min(delay * 2, 0.5)
                except sqlite3.Error as exc:
                    raise StoreError(f"store write failed: {exc}") from exc
        raise AssertionError("unreachable")

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return self._reading(lambda db: db.execute(sql, args).fetchall())

    def _reading(self, fn: Callable[[sqlite3.Connection], T], *, separate: bool = False) -> T:
        """A read; driver errors stop here. The runner's own reads share the main connection
        (its page cache stays warm across its writes); `separate` reads (status, wait) go to a
        read connection of their own, which in WAL never waits behind a write transaction."""
        if not separate:
            with self._lock:
                try:
                    return fn(self._conn())
                except sqlite3.Error as exc:
                    raise StoreError(f"store read failed: {exc}") from exc
        with self._read_lock:
            try:
                if self._closed:
                    raise sqlite3.ProgrammingError("the store is closed")
                if self._rdb is None:
                    self._rdb = self._connect()
                    self._rdb.execute("PRAGMA query_only = ON")
                return fn(self._rdb)
            except sqlite3.Error as exc:
                raise StoreError(f"store read failed: {exc}") from exc

    def _migrate(self) -> None:
        version = self._read("PRAGMA user_version")[0][0]
        if version > len(MIGRATIONS):
            raise StoreError(
                f"the store {self.path} has schema version {version}, newer than this "
                f"dispatch-runner knows ({len(MIGRATIONS)}); upgrade dispatch-runner"
            )
        if version == len(MIGRATIONS):
            return  # the common case (every shim opens the store): no write transaction

        def step(db: sqlite3.Connection) -> None:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in _statements(script):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {number}")

        self._write(step)

    def watcher(self) -> Any:
        """A wake-up hint when another process commits (inotify on the database's directory)."""
        from ..watch import StoreWatcher

        return StoreWatcher(self.path)

    def data_version(self) -> int:
        """Changes whenever any connection (another peer, a shim, or this store) commits.

        A separate connection, so our own commits count too and the check never waits behind a
        write in progress on the main connection: cheap enough (~6 µs) to poll from the event loop."""
        with self._watch_lock:
            if self._watch is None:
                self._watch = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                return int(self._watch.execute("PRAGMA data_version").fetchone()[0])
            except sqlite3.Error as exc:
                raise StoreError(f"store read failed: {exc}") from exc

    # ---- events -----------------------------------------------------------------------------

    @staticmethod
    def _event(
        db: sqlite3.Connection,
        type_: str,
        now: float,
        ws: str | None = None,
        origin: str | None = None,
        **data: Any,
    ) -> None:
        db.execute(
            "INSERT INTO events (at, type, workspace, origin, data) VALUES (?,?,?,?,?)",
            (now, type_, ws, origin, json.dumps(data, separators=(",", ":"))),
        )

    def events_after(self, cursor: int, limit: int = 500) -> list[Event]:
        rows = self._read("SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?", (cursor, limit))
        return [
            Event(
                type=r["type"],
                workspace=r["workspace"],
                at=r["at"],
                origin=r["origin"],
                data=json.loads(r["data"]),
                id=r["id"],
            )
            for r in rows
        ]

    def last_event_id(self) -> int:
        return int(self._read("SELECT coalesce(max(id), 0) FROM events")[0][0])

    # ---- enqueue ----------------------------------------------------------------------------

    def find_by_idempotency_key(self, key: str) -> WorkspaceRow | None:
        rows = self._read("SELECT * FROM workspaces WHERE idempotency_key = ?", (key,))
        return _ws(rows[0]) if rows else None

    def enqueue(
        self, ws: NewWorkspace, *, now: float, max_wait_s: float | None, limits: Limits
    ) -> EnqueueResult:
        def tx(db: sqlite3.Connection) -> EnqueueResult:
            if ws.idempotency_key:
                row = db.execute(
                    "SELECT * FROM workspaces WHERE idempotency_key = ?", (ws.idempotency_key,)
                ).fetchone()
                if row is not None:
                    existing = _ws(row)
                    return EnqueueResult(existing, True, self._position(db, existing), 0.0)
            position, eta, gate_wait = self._estimate(db, ws.pool, ws.model, ws.priority, now, limits)
            if policy.exceeds_max_wait(
                eta_s=eta, position=position, gate_wait_s=gate_wait, max_wait_s=max_wait_s
            ):
                raise QueueBusy(ws.pool, eta, max_wait_s or 0.0, position)
            db.execute(
                """INSERT INTO workspaces (id, pool, model, lane, agent, task, template,
                   priority, label, state, path, run_dir, cwd, repo, branch, base_commit,
                   idempotency_key, max_attempts, timeout_s, not_before, created_at, updated_at,
                   origin, parent, spec, rev)
                   VALUES (?,?,?,?,?,?,?,?,?,'queued',?,?,?,?,?,?,?,?,?,0,?,?,?,?,?,1)""",
                (
                    ws.id,
                    ws.pool,
                    ws.model,
                    lane_of(ws.pool, ws.model),
                    ws.agent,
                    ws.task,
                    ws.template,
                    ws.priority,
                    ws.label,
                    ws.path,
                    ws.run_dir,
                    ws.cwd,
                    ws.repo,
                    ws.branch,
                    ws.base_commit,
                    ws.idempotency_key,
                    ws.max_attempts,
                    ws.timeout_s,
                    now,
                    now,
                    ws.origin,
                    ws.parent,
                    json.dumps(ws.spec),
                ),
            )
            self._event(db, "AgentQueued", now, ws.id, ws.origin, agent=ws.agent, priority=ws.priority)
            row = db.execute("SELECT * FROM workspaces WHERE id = ?", (ws.id,)).fetchone()
            return EnqueueResult(_ws(row), False, position, eta)

        return self._write(tx)

    def _estimate(
        self, db: sqlite3.Connection, pool: str, model: str | None, priority: int, now: float, limits: Limits
    ) -> tuple[int, float | None, float]:
        """(1-based position a new dispatch would take in its pool queue, estimated wait or None
        when unknown, the pool's time gate alone)."""
        state = self._pool_state(db, pool)
        gate = policy.pool_gate(limits.rates.get(pool), state, _dt(now))
        gate_wait = max((gate.wake_at.timestamp() - now) if gate.wake_at else 0.0, 0.0)
        limit = limits.concurrency.get(pool)
        total = limit.total_limit if limit else None
        if total is None and (limit is None or limit.model_limit(model) is None):
            return 0, gate_wait, gate_wait  # unlimited: only pacing or backoff can delay it
        model_cap = limit.model_limit(model) if limit else None
        if model_cap is not None and (total is None or model_cap < total):
            # the model's own limit is the tighter gate: count its lane only
            total = model_cap
            running = db.execute(
                "SELECT count(*) FROM workspaces WHERE state = 'running' AND pool = ? AND model = ?",
                (pool, model),
            ).fetchone()[0]
            ahead_sql = (
                "SELECT count(*) FROM workspaces INDEXED BY workspaces_queue "
                "WHERE state = 'queued' AND lane = ? AND priority <= ?"
            )
            args: tuple[Any, ...] = (lane_of(pool, model), priority)
        else:
            running = db.execute(
                "SELECT count(*) FROM workspaces WHERE state = 'running' AND pool = ?", (pool,)
            ).fetchone()[0]
            ahead_sql = (
                "SELECT count(*) FROM workspaces INDEXED BY workspaces_queue_pool "
                "WHERE state = 'queued' AND pool = ? AND priority <= ?"
            )
            args = (pool, priority)
        assert total is not None
        ahead = db.execute(ahead_sql, args).fetchone()[0]
        if running + ahead < total:
            return 0, gate_wait, gate_wait
        position = ahead + 1 - max(total - running, 0)
        return (
            position,
            policy.estimate_wait_s(
                position=position, limit=total, runtimes_s=self._runtimes(db, pool), gate_wait_s=gate_wait
            ),
            gate_wait,
        )

    def _runtimes(self, db: sqlite3.Connection, pool: str, limit: int = policy.ETA_WINDOW) -> list[float]:
        rows = db.execute(
            """SELECT ended_at - coalesce(agent_started_at, started_at) FROM runs WHERE pool = ?
               AND ended_at IS NOT NULL AND started_at IS NOT NULL ORDER BY ended_at DESC LIMIT ?""",
            (pool, limit),
        ).fetchall()
        return [float(r[0]) for r in reversed(rows)]

    def recent_runtimes(self, pool: str, limit: int = policy.ETA_WINDOW) -> list[float]:
        return self._reading(lambda db: self._runtimes(db, pool, limit))

    def queue_position(self, workspace_id: str) -> int:
        def read(db: sqlite3.Connection) -> int:
            row = db.execute("SELECT * FROM workspaces WHERE id = ?", (workspace_id,)).fetchone()
            return self._position(db, _ws(row)) if row else 0

        return self._reading(read)

    @staticmethod
    def _position(db: sqlite3.Connection, ws: WorkspaceRow) -> int:
        if ws.state != WorkspaceState.QUEUED:
            return 0
        return int(
            db.execute(
                """SELECT count(*) FROM workspaces INDEXED BY workspaces_queue_pool
               WHERE state = 'queued' AND pool = ? AND
               (priority < ? OR (priority = ? AND (created_at < ? OR (created_at = ? AND seq <= ?))))""",
                (ws.pool, ws.priority, ws.priority, ws.created_at, ws.created_at, ws.seq),
            ).fetchone()[0]
        )

    def workspaces(self, ids: Sequence[str]) -> list[WorkspaceRow | None]:
        """These workspaces, in this order (None for an unknown id), in one read that never waits
        behind a write (what `wait` polls)."""
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = self._reading(
            lambda db: db.execute(f"SELECT * FROM workspaces WHERE id IN ({marks})", list(ids)).fetchall(),
            separate=True,
        )
        found = {r["id"]: _ws(r) for r in rows}
        return [found.get(i) for i in ids]

    def get_workspace(self, workspace_id: str) -> WorkspaceRow | None:
        rows = self._read("SELECT * FROM workspaces WHERE id = ?", (workspace_id,))
        return _ws(rows[0]) if rows else None

    # ---- the gate ---------------------------------------------------------------------------

    def claim_next(self, *, now: float | None, limits: Limits, peer: str) -> ClaimResult:
        """`now=None` reads the clock inside the transaction, after the write lock is held, so
        claim times follow commit order across peers."""
        return self._write(lambda db: self._claim(db, time.time() if now is None else now, limits, peer))

    def _claim(self, db: sqlite3.Connection, now: float, limits: Limits, peer: str) -> ClaimResult:
        if self._frozen(db):
            return ClaimResult(None, None)
        best, wake = self._pick(db, now, limits)
        later = db.execute(
            "SELECT min(not_before) FROM workspaces INDEXED BY workspaces_not_before "
            "WHERE state = 'queued' AND not_before > ?",
            (now,),
        ).fetchone()[0]
        if later is not None:
            wake.append(float(later))
        wake_at = min(wake) if wake else None
        if best is None:
            return ClaimResult(None, wake_at)
        return ClaimResult(self._take(db, best, now, limits, peer), wake_at)

    def _pick(
        self, db: sqlite3.Connection, now: float, limits: Limits
    ) -> tuple[WorkspaceRow | None, list[float]]:
        """The best head among the lanes the lifecycle opens, one index probe per open lane;
        and the times at which a time-gated pool opens."""
        running_pool, running_model = _running_counts(db)
        lanes = [
            lifecycle.Lane(pool, model or None)
            for pool, _, model in (lane.partition(LANE_SEP) for lane in _lanes(db))
        ]
        pools = {pool: self._pool_state(db, pool) for pool in {lane.pool for lane in lanes}}
        taken, wake = lifecycle.open_lanes(
            lanes, pools=pools, running_pool=running_pool, running_model=running_model, limits=limits, now=now
        )
        heads = [
            db.execute(
                """SELECT * FROM workspaces INDEXED BY workspaces_queue
                   WHERE state = 'queued' AND lane = ? AND not_before <= ?
                   ORDER BY priority, created_at, seq LIMIT 1""",
                (lane_of(lane.pool, lane.model), now),
            ).fetchone()
            for lane in taken
        ]
        return lifecycle.best_head(_ws(h) for h in heads if h is not None), wake

    def _take(self, db: sqlite3.Connection, ws: WorkspaceRow, now: float, limits: Limits, peer: str) -> Claim:
        """Reserve the workspace's next run as the lifecycle plans it."""
        plan = lifecycle.plan_take(ws, self._pool_state(db, ws.pool), rate=limits.rates.get(ws.pool), now=now)
        cur = db.execute(
            "INSERT INTO runs (workspace, pool, attempt, phase, claimed_by, claimed_at, spawn_mark, "
            "prev_last_spawn, counted_day) VALUES (?,?,?,'reserved',?,?,?,?,?)",
            (ws.id, ws.pool, ws.runs + 1, peer, now, plan.spawn_mark, plan.prev_last_spawn, plan.counted_day),
        )
        run_id = int(cur.lastrowid or 0)
        db.execute(
            """UPDATE workspaces SET state = 'running', runs = runs + 1, current_run = ?,
               started_at = NULL, ended_at = NULL, exit_code = NULL, ended_reason = NULL,
               updated_at = ?, rev = rev + 1 WHERE id = ?""",
            (run_id, now, ws.id),
        )
        self._save_pool_state(db, ws.pool, plan.pool)
        claimed = _ws(db.execute("SELECT * FROM workspaces WHERE id = ?", (ws.id,)).fetchone())
        return Claim(claimed, run_id)

    # ---- pool state -------------------------------------------------------------------------

    @staticmethod
    def _pool_state(db: sqlite3.Connection, pool: str) -> PoolState:
        row = db.execute("SELECT * FROM pool_state WHERE pool = ?", (pool,)).fetchone()
        if row is None:
            return PoolState()
        return PoolState(
            backoff_until=row["backoff_until"],
            fail_count=row["fail_count"],
            last_spawn=row["last_spawn"],
            daily_count=row["daily_count"],
            daily_day=row["daily_day"],
        )

    @staticmethod
    def _save_pool_state(db: sqlite3.Connection, pool: str, s: PoolState) -> None:
        db.execute(
            """INSERT INTO pool_state (pool, backoff_until, fail_count, last_spawn, daily_count,
               daily_day) VALUES (?,?,?,?,?,?) ON CONFLICT (pool) DO UPDATE SET
               backoff_until = excluded.backoff_until, fail_count = excluded.fail_count,
               last_spawn = excluded.last_spawn, daily_count = excluded.daily_count,
               daily_day = excluded.daily_day""",
            (pool, s.backoff_until, s.fail_count, s.last_spawn, s.daily_count, s.daily_day),
        )

    def pool_state(self, pool: str) -> PoolState:
        return self._reading(lambda db: self._pool_state(db, pool))

    # ---- runs -------------------------------------------------------------------------------

    def start_run(self, run_id: int, *, shim_pid: int, shim_start: int, boot_id: str, now: float) -> bool:
        """Compare-and-set reserved -> running; False when the reservation was given back."""

        def tx(db: sqlite3.Connection) -> bool:
            cur = db.execute(
                """UPDATE runs SET phase = 'running', shim_pid = ?, shim_start = ?, boot_id = ?,
                   started_at = ? WHERE id = ? AND phase = 'reserved' AND kill_requested = 0""",
                (shim_pid, shim_start, boot_id, now, run_id),
            )
            if cur.rowcount != 1:
                return False
            run = db.execute(
                "SELECT r.attempt, w.id, w.agent, w.origin FROM runs r JOIN workspaces w "
                "ON w.id = r.workspace WHERE r.id = ?",
                (run_id,),
            ).fetchone()
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

        def tx(db: sqlite3.Connection) -> bool:
            cur = db.execute(
                "UPDATE runs SET agent_pid = ?, agent_start = ?, agent_started_at = ? "
                "WHERE id = ? AND phase = 'running'",
                (agent_pid, agent_start, now, run_id),
            )
            if cur.rowcount:  # the workspace's times are the agent's: its wall time is the duration
                db.execute("UPDATE workspaces SET started_at = ? WHERE current_run = ?", (now, run_id))
            row = db.execute("SELECT kill_requested FROM runs WHERE id = ?", (run_id,)).fetchone()
            return bool(row and row[0])

        return self._write(tx)

    def get_run(self, run_id: int) -> RunRow | None:
        rows = self._read("SELECT * FROM runs WHERE id = ?", (run_id,))
        return _run(rows[0]) if rows else None

    def active_runs(self) -> list[RunRow]:
        return [
            _run(r)
            for r in self._read("SELECT * FROM runs WHERE phase IN ('reserved', 'running') ORDER BY id")
        ]

    def record_exit(
        self, run_id: int, result: RunExit, *, now: float, rate: RateConfig | None
    ) -> WorkspaceRow | None:
        """Compare-and-set the run's end; apply retry / dead-letter / backoff policy.

        Returns the updated workspace, or None when the exit was already recorded (by the shim or
        by recovery, whichever came first)."""
        return self._write(lambda db: self._record_exit(db, run_id, result, now, rate))

    def _record_exit(
        self, db: sqlite3.Connection, run_id: int, result: RunExit, now: float, rate: RateConfig | None
    ) -> WorkspaceRow | None:
        run = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if run is None or run["phase"] not in ("reserved", "running"):
            return None
        ws = _ws(db.execute("SELECT * FROM workspaces WHERE id = ?", (run["workspace"],)).fetchone())
        requeues = db.execute(
            "SELECT count(*) FROM runs WHERE workspace = ? AND outcome = ?",
            (ws.id, Outcome.RATE_LIMITED.value),
        ).fetchone()[0]
        pool = self._pool_state(db, ws.pool)
        plan = lifecycle.plan_exit(
            ws,
            _spawn_mark(run),
            result,
            pool,
            kill_requested=bool(run["kill_requested"]),
            requeues_before=requeues,
            now=now,
            rate=rate,
            run_id=run_id,
        )
        db.execute(
            "UPDATE runs SET phase = 'exited', ended_at = ?, exit_code = ?, outcome = ? WHERE id = ?",
            (now, result.exit_code, plan.outcome.value, run_id),
        )
        db.execute(
            """UPDATE workspaces SET state = ?, reason = ?, attempts = ?, not_before = ?,
               exit_code = ?, summary = coalesce(?, summary), session_id = coalesce(?, session_id),
               ended_at = ?, updated_at = ?, current_run = CASE WHEN ? THEN current_run END,
               ended_reason = ?, rev = rev + 1
               WHERE id = ?""",
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
                ws.id,
            ),
        )
        if plan.pool is not None:
            self._save_pool_state(db, ws.pool, plan.pool)
        for event in plan.events:
            self._event(db, event.type, now, ws.id, ws.origin, **event.data)
        return _ws(db.execute("SELECT * FROM workspaces WHERE id = ?", (ws.id,)).fetchone())

    def _give_back_spawn(self, db: sqlite3.Connection, run: sqlite3.Row) -> None:
        """A claim that never started returns its pacing mark and daily slot."""
        pool = self._pool_state(db, run["pool"])
        self._save_pool_state(db, run["pool"], lifecycle.plan_give_back(_spawn_mark(run), pool))

    def return_reservation(self, run_id: int, *, now: float) -> WorkspaceRow | None:
        """A claim that was never spawned goes back to the queue (not an attempt)."""

        def tx(db: sqlite3.Connection) -> WorkspaceRow | None:
            cur = db.execute(
                "UPDATE runs SET phase = 'abandoned', ended_at = ? WHERE id = ? AND phase = 'reserved'",
                (now, run_id),
            )
            if cur.rowcount != 1:
                return None
            run = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
            ws_id = run["workspace"]
            db.execute(
                """UPDATE workspaces SET state = 'queued', runs = runs - 1, current_run = NULL,
                          started_at = NULL, updated_at = ?, rev = rev + 1
                          WHERE id = ? AND state = 'running'""",
                (now, ws_id),
            )
            self._give_back_spawn(db, run)
            ws = _ws(db.execute("SELECT * FROM workspaces WHERE id = ?", (ws_id,)).fetchone())
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

    # ---- control ----------------------------------------------------------------------------

    @staticmethod
    def _frozen(db: sqlite3.Connection) -> bool:
        row = db.execute("SELECT value FROM settings WHERE key = 'frozen'").fetchone()
        return row is not None and row[0] == "1"

    def is_frozen(self) -> bool:
        return self._reading(self._frozen)

    def set_frozen(self, frozen: bool, *, now: float) -> bool:
        def tx(db: sqlite3.Connection) -> bool:
            was = self._frozen(db)
            db.execute(
                "INSERT INTO settings (key, value) VALUES ('frozen', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                ("1" if frozen else "0",),
            )
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

        def tx(db: sqlite3.Connection) -> KillPlan:
            if everything:
                where, args = "state IN ('queued', 'running')", []
            elif agent is not None:
                where = "state IN ('queued', 'running') AND (agent = ? OR (pool = ? AND ? NOT LIKE '%:%'))"
                args = [agent, agent, agent]
            else:
                marks = ",".join("?" * len(workspaces))
                where, args = f"state IN ('queued', 'running') AND id IN ({marks})", list(workspaces)
            rows = [_ws(r) for r in db.execute(f"SELECT * FROM workspaces WHERE {where}", args)]
            cancelled: list[WorkspaceRow] = []
            signal: list[RunRow] = []
            for ws in rows:
                if ws.state == WorkspaceState.QUEUED:
                    check_transition(WorkspaceState.QUEUED, WorkspaceState.CANCELLED)
                    db.execute(
                        "UPDATE workspaces SET state = 'cancelled', reason = 'cancelled on "
                        "request', ended_reason = 'cancelled', ended_at = ?, updated_at = ?, "
                        "rev = rev + 1 WHERE id = ?",
                        (now, now, ws.id),
                    )
                    self._event(
                        db, "AgentCancelled", now, ws.id, ws.origin, agent=ws.agent, state="cancelled"
                    )
                    cancelled.append(
                        _ws(db.execute("SELECT * FROM workspaces WHERE id = ?", (ws.id,)).fetchone())
                    )
                elif ws.current_run is not None:
                    db.execute("UPDATE runs SET kill_requested = 1 WHERE id = ?", (ws.current_run,))
                    signal.append(
                        _run(db.execute("SELECT * FROM runs WHERE id = ?", (ws.current_run,)).fetchone())
                    )
            return KillPlan(cancelled, signal)

        return self._write(tx)

    # ---- reading ----------------------------------------------------------------------------

    def has_work(self) -> bool:
        return bool(
            self._read("SELECT EXISTS (SELECT 1 FROM workspaces WHERE state IN ('queued', 'running'))")[0][0]
        )

    def snapshot(
        self,
        *,
        now: float,
        limits: Limits,
        agent: str | None = None,
        state: str | None = None,
        limit: int = 20,
    ) -> dict[str, Any]:
        return self._reading(
            separate=True,
            fn=lambda db: snapshot(
                db,
                now=now,
                limits=limits,
                agent=agent,
                state=state,
                limit=limit,
                pool_state=self._pool_state,
                frozen=self._frozen(db),
                to_row=_ws,
            ),
        )

    # ---- peers and housekeeping -------------------------------------------------------------

    def heartbeat_peer(self, peer: str, *, pid: int, start: int, boot_id: str, kind: str, now: float) -> None:
        self._write(
            lambda db: db.execute(
                """INSERT INTO peers (id, pid, start, boot_id, kind, heartbeat_at, schema)
               VALUES (?,?,?,?,?,?,?)
               ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,
               schema = excluded.schema""",
                (peer, pid, start, boot_id, kind, now, len(MIGRATIONS)),
            )
        )

    def peers(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._read("SELECT * FROM peers ORDER BY heartbeat_at DESC")]

    def remove_peers(self, peers: Sequence[str]) -> int:
        if not peers:
            return 0
        marks = ",".join("?" * len(peers))
        return self._write(
            lambda db: db.execute(f"DELETE FROM peers WHERE id IN ({marks})", list(peers)).rowcount
        )

    def finished_before(
        self, before: float, *, after: tuple[float, str] | None = None, limit: int = 500
    ) -> list[WorkspaceRow]:
        """Finished workspaces that ended before `before`, oldest first, from past the
        (ended_at, id) cursor `after` (garbage collection pages through them)."""
        since, last = after if after is not None else (float("-inf"), "")
        return [
            _ws(r)
            for r in self._read(
                "SELECT * FROM workspaces WHERE ended_at IS NOT NULL AND ended_at < ? AND state NOT IN "
                "('queued', 'running') AND (ended_at > ? OR (ended_at = ? AND id > ?)) "
                "ORDER BY ended_at, id LIMIT ?",
                (before, since, since, last, limit),
            )
        ]

    def forget(self, workspaces: Sequence[str], *, events_before: float) -> int:
        """Delete these finished workspaces with their runs, and every event older than
        `events_before`. Their files are removed by the caller first."""

        def tx(db: sqlite3.Connection) -> int:
            gone = 0
            for chunk in range(0, len(workspaces), 500):
                part = list(workspaces[chunk : chunk + 500])
                marks = ",".join("?" * len(part))
                db.execute(f"DELETE FROM runs WHERE workspace IN ({marks})", part)
                gone += db.execute(
                    f"DELETE FROM workspaces WHERE id IN ({marks}) AND state NOT IN ('queued', 'running')",
                    part,
                ).rowcount
            db.execute("DELETE FROM events WHERE at < ?", (events_before,))
            return gone

        return self._write(tx)


# ---- helpers ----------------------------------------------------------------------------------


def _statements(script: str) -> list[str]:
    out, buf = [], ""
    for line in script.splitlines():
        buf += line.split("--", 1)[0] + "\n"
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    return out


def _running_counts(db: sqlite3.Connection) -> tuple[dict[str, int], dict[tuple[str, str | None], int]]:
    """Running (and reserved) runs per pool and per (pool, model)."""
    pools: dict[str, int] = {}
    models: dict[tuple[str, str | None], int] = {}
    for r in db.execute(
        "SELECT pool, model, count(*) n FROM workspaces WHERE state = 'running' GROUP BY pool, model"
    ):
        pools[r["pool"]] = pools.get(r["pool"], 0) + r["n"]
        models[(r["pool"], r["model"])] = r["n"]
    return pools, models


def _lanes(db: sqlite3.Connection) -> list[str]:
    """Distinct lanes with queued work: a loose index scan, O(lanes * log n)."""
    rows = db.execute(
        """WITH RECURSIVE l(lane) AS (
             SELECT min(lane) FROM workspaces INDEXED BY workspaces_queue WHERE state = 'queued'
             UNION ALL
             SELECT (SELECT min(lane) FROM workspaces INDEXED BY workspaces_queue
                     WHERE state = 'queued' AND lane > l.lane)
             FROM l WHERE l.lane IS NOT NULL)
           SELECT lane FROM l WHERE lane IS NOT NULL"""
    ).fetchall()
    return [r[0] for r in rows]


def _spawn_mark(run: sqlite3.Row) -> lifecycle.SpawnMark:
    return lifecycle.SpawnMark(
        reserved=run["phase"] == "reserved",
        spawn_mark=run["spawn_mark"],
        prev_last_spawn=run["prev_last_spawn"],
        counted_day=run["counted_day"],
        started_at=run["agent_started_at"] or run["started_at"],
        claimed_at=run["claimed_at"],
    )


def _ws(row: sqlite3.Row) -> WorkspaceRow:
    return WorkspaceRow(
        id=row["id"],
        seq=row["seq"],
        pool=row["pool"],
        model=row["model"],
        agent=row["agent"],
        task=row["task"],
        template=row["template"],
        priority=row["priority"],
        label=row["label"],
        state=row["state"],
        reason=row["reason"],
        path=row["path"],
        run_dir=row["run_dir"],
        cwd=row["cwd"],
        repo=row["repo"],
        branch=row["branch"],
        idempotency_key=row["idempotency_key"],
        base_commit=row["base_commit"],
        runs=row["runs"],
        attempts=row["attempts"],
        ended_reason=row["ended_reason"],
        rev=row["rev"],
        max_attempts=row["max_attempts"],
        timeout_s=row["timeout_s"],
        not_before=row["not_before"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        exit_code=row["exit_code"],
        summary=row["summary"],
        session_id=row["session_id"],
        origin=row["origin"],
        parent=row["parent"],
        current_run=row["current_run"],
        pid=None,
        spec=json.loads(row["spec"]),
    )


def _run(row: sqlite3.Row) -> RunRow:
    return RunRow(
        id=row["id"],
        workspace=row["workspace"],
        pool=row["pool"],
        attempt=row["attempt"],
        phase=row["phase"],
        claimed_by=row["claimed_by"],
        claimed_at=row["claimed_at"],
        shim_pid=row["shim_pid"],
        shim_start=row["shim_start"],
        agent_pid=row["agent_pid"],
        agent_start=row["agent_start"],
        boot_id=row["boot_id"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        kill_requested=bool(row["kill_requested"]),
    )
