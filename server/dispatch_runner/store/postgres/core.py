"""The PostgreSQL backend's core: a psycopg connection pool, one READ COMMITTED transaction per
write (retried, bounded, on a deadlock, a serialisation failure, a lost compare-and-set or a
lost race for an idempotency key), migrations under a transaction advisory lock when any are
pending, and wake-ups by LISTEN/NOTIFY.

Fleet-wide limits hold because a claim locks every pool it counts (transaction advisory locks,
in sorted order) before it counts; events are appended under one advisory lock held to commit,
so their ids follow commit order and no reader's cursor skips one.
"""

import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Self, TypeVar

import anyio
import anyio.to_thread
import psycopg
from psycopg import IsolationLevel
from psycopg import errors as pgerrors
from psycopg_pool import ConnectionPool, PoolTimeout

from ...errors import StoreError
from ..sql.conn import Conn
from ..sql.core import Conflict, SQLCore
from ..sql.queries import load_migrations, load_queries

HERE = Path(__file__).parent
Q = load_queries(HERE, placeholder="%s")
MIGRATIONS = load_migrations(HERE / "migrations")
T = TypeVar("T")
WRITE_TRIES = 8
RETRYABLE = (pgerrors.DeadlockDetected, pgerrors.SerializationFailure, Conflict)
# a concurrent enqueue of the same key committed first: run again, the transaction finds it
RETRY_ON_UNIQUE = frozenset({"workspaces_idempotency_key_key"})
CONNECT_TIMEOUT_S = 10.0
# a transaction-level lock (a pooler in transaction mode keeps no session lock); it takes the
# key an older peer's session lock took, so it also waits for one still migrating
LOCK_MIGRATIONS = Q.lock_migrations


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _retryable(exc: Exception) -> bool:
    """Worth running the whole transaction again: a deadlock, a serialisation failure, a lost
    compare-and-set, a lost race for an idempotency key. Another unique violation (a workspace
    id twice) would fail the same way every time."""
    if isinstance(exc, pgerrors.UniqueViolation):
        return exc.diag.constraint_name in RETRY_ON_UNIQUE
    return isinstance(exc, RETRYABLE)


def _read_committed(conn: "psycopg.Connection[Any]") -> None:
    """Every transaction the store opens begins READ COMMITTED, whatever the server's or the
    role's default: the claims' locks, the compare-and-sets and the migration's second look
    each rely on a statement seeing what committed before it began."""
    conn.isolation_level = IsolationLevel.READ_COMMITTED


class PgRow:
    """A row readable by position and by column name, like sqlite3.Row."""

    __slots__ = ("_index", "_values")

    def __init__(self, values: Sequence[Any], index: dict[str, int]) -> None:
        self._values = values
        self._index = index

    def __getitem__(self, key: int | str) -> Any:
        return self._values[key] if isinstance(key, int) else self._values[self._index[key]]

    def keys(self) -> list[str]:
        return list(self._index)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def dual_rows(cursor: Any) -> Callable[[Sequence[Any]], PgRow]:
    """psycopg row factory: PgRow for every row of the cursor's result."""
    index = {c.name: i for i, c in enumerate(cursor.description or ())}
    return lambda values: PgRow(values, index)


def redacted(url: str) -> str:
    """The URL without its password (for banners and messages)."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://…"
    if "password" in info:
        info["password"] = "***"
    host, port, db = info.get("host", ""), info.get("port", ""), info.get("dbname", "")
    user = info.get("user")
    return f"postgresql://{f'{user}@' if user else ''}{host}{f':{port}' if port else ''}/{db}"


class PostgresCore(SQLCore):
    q = Q
    schema_version = len(MIGRATIONS)

    def __init__(self, url: str, *, max_size: int = 4, light: bool = False) -> None:
        """`light`: a short-lived process that touches the store a few times (a run's shim, a
        one-shot command) holds no pool: one connection, closed by release() while it waits. A
        fleet's connection budget then grows with its peers, not with its running agents."""
        self.url = url
        self.display_url = redacted(url)
        self._closed = False
        try:
            # one direct connection first: a wrong host or user fails at once, with the server's
            # own words (the pool would retry until its timeout and then say only "timeout")
            with psycopg.connect(url, autocommit=True, connect_timeout=int(CONNECT_TIMEOUT_S)) as raw:
                self._migrate(raw)
        except psycopg.Error as exc:
            raise StoreError(
                f"cannot use the PostgreSQL store at {self.display_url}: {_first_line(exc)}; check "
                "that the server runs, the database exists (createdb) and the URL's user may connect"
            ) from exc
        self._pool: ConnectionPool | None = None
        self._kept: psycopg.Connection[Any] | None = None  # light: one connection, until release()
        self._kept_lock = threading.RLock()  # ... used by one thread at a time (kills run in 8)
        if light:
            return
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            num_workers=1,
            kwargs={"autocommit": True, "row_factory": dual_rows},
            configure=_read_committed,
            open=True,
            name="dispatch-runner",
        )

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.release()
            if self._pool is not None:
                self._pool.close()

    def release(self) -> None:
        """A light store closes its connection (a shim, while its agent runs: minutes or hours
        in which it would hold a server process for nothing); the next call connects again."""
        with self._kept_lock:
            kept, self._kept = self._kept, None
            if kept is not None:
                kept.close()

    @contextlib.contextmanager
    def _connection(self) -> Iterator["psycopg.Connection[Any]"]:
        if self._closed:
            raise StoreError("the store is closed")
        if self._pool is not None:
            with self._pool.connection() as raw:
                yield raw
            return
        with self._kept_lock:
            if self._kept is None or self._kept.closed or self._kept.broken:
                self._kept = psycopg.connect(
                    self.url, autocommit=True, row_factory=dual_rows, connect_timeout=int(CONNECT_TIMEOUT_S)
                )
                _read_committed(self._kept)
            try:
                yield self._kept
            except psycopg.OperationalError:
                self.release()  # a broken connection is never reused
                raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- transactions and reads -------------------------------------------------------------

    def _write(self, fn: Callable[[Conn], T]) -> T:
        for attempt in range(WRITE_TRIES):
            try:
                with self._connection() as raw, raw.transaction():
                    return fn(Conn(raw, Q))
            except (psycopg.Error, PoolTimeout, Conflict) as exc:
                if not _retryable(exc):
                    raise StoreError(f"store write failed: {exc}") from exc
                if attempt == WRITE_TRIES - 1:
                    raise StoreError(f"store write failed after {WRITE_TRIES} tries: {exc}") from exc
                # jittered: two peers that collided should not collide again
                time.sleep(random.uniform(0, 0.005 * 2**attempt))
        raise AssertionError("unreachable")

    def _reading(self, fn: Callable[[Conn], T], *, separate: bool = False) -> T:
        """Reads never wait behind writes in PostgreSQL (MVCC); one transaction per read. At READ
        COMMITTED each query of a read sees what had committed when it began: a read of several
        queries (the status snapshot) may straddle a commit."""
        try:
            with self._connection() as raw, raw.transaction():
                return fn(Conn(raw, Q))
        except (psycopg.Error, PoolTimeout) as exc:
            raise StoreError(f"store read failed: {exc}") from exc

    def _lock_pools(self, db: Conn, pools: Iterable[str]) -> None:
        for pool in pools:  # sorted by the caller: every claim locks in one order, no deadlock
            db.execute(Q.lock_pool, (pool,))

    def _event(
        self, db: Conn, type_: str, now: float, ws: str | None = None, origin: str | None = None, **data: Any
    ) -> int:
        db.execute(Q.lock_events)
        event_id = super()._event(db, type_, now, ws, origin, **data)
        db.execute(Q.notify)  # delivered at commit, once per transaction
        return event_id

    def _migrate(self, raw: "psycopg.Connection[Any]") -> None:
        """Most peers find the schema current: one read, no lock and no CREATE (a role that may
        only use the rows opens a migrated store). With steps pending, one transaction takes
        the migration lock (a transaction lock: nothing outlives it behind a pooler), looks
        again (a peer that started at the same time may have applied them) and applies them."""
        _read_committed(raw)
        version = self._schema_version(raw)
        if version == len(MIGRATIONS):
            return
        try:
            with raw.transaction():
                raw.execute(LOCK_MIGRATIONS)
                raw.execute(Q.schema_table)
                version = self._schema_version(raw)
                for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                    raw.execute(script.encode())  # no parameters: the whole script at once
                    raw.execute(Q.set_schema_version, (number,))
        except pgerrors.InsufficientPrivilege as exc:
            raise StoreError(
                f"the store {self.display_url} needs schema steps {version + 1}..{len(MIGRATIONS)} "
                f"and its URL's user may not apply them ({_first_line(exc)}); start dispatch-runner "
                "once with the URL of the database's owner, which applies them"
            ) from exc

    def _schema_version(self, raw: "psycopg.Connection[Any]") -> int:
        """The steps applied (0 before the first); a schema newer than this code is refused."""
        try:
            version = int(raw.execute(Q.schema_version).fetchall()[0][0])
        except pgerrors.UndefinedTable:  # a new database (only ever outside a transaction)
            return 0
        if version > len(MIGRATIONS):
            raise StoreError(
                f"the store {self.display_url} has schema version {version}, newer than "
                f"this dispatch-runner knows ({len(MIGRATIONS)}); upgrade dispatch-runner"
            )
        return version

    # ---- change hints -----------------------------------------------------------------------

    def data_version(self) -> int:
        return int(self._read(Q.data_version)[0][0])

    def watcher(self) -> "PgWatcher":
        return PgWatcher(self.url)


class PgWatcher:
    """A wake-up hint when any peer commits an event: LISTEN on a connection of its own. When
    that connection breaks (a server restart, a failover, an idle timeout) it listens again on a
    new one: at once after a connection that had lasted, else after a wait that doubles up to
    max_backoff_s. Until then, and where LISTEN cannot be had, it answers like a short poll; the
    runner polls data_version underneath either way."""

    def __init__(self, url: str, *, fallback_poll_s: float = 0.25, max_backoff_s: float = 30.0) -> None:
        self.url = url
        self.fallback_poll_s = fallback_poll_s
        self.max_backoff_s = max_backoff_s
        self._lock = threading.Lock()  # _conn and the fields below: the loop, a connecting thread
        self._conn: psycopg.Connection[Any] | None = None
        self._closed = self._connecting = False
        self._backoff_s = self._retry_at = self._since = 0.0  # time.monotonic() for the last two
        self._listen()

    async def changed(self, timeout_s: float) -> bool:
        conn = self._conn
        if conn is None or conn.closed:
            return await self._unlistened(timeout_s)
        with anyio.move_on_after(timeout_s):
            while True:
                if self._drain():
                    return True
                await anyio.wait_readable(conn.fileno())
        return False

    async def _unlistened(self, timeout_s: float) -> bool:
        """Try to listen again when the backoff allows, within timeout_s (a connect that takes
        longer goes on in its thread); True once listening, since a NOTIFY may have been missed
        meanwhile. Otherwise a short poll."""
        with self._lock:
            retry = not (self._closed or self._connecting) and time.monotonic() >= self._retry_at
            self._connecting |= retry
        if retry:
            with anyio.move_on_after(timeout_s) as connecting:
                if await anyio.to_thread.run_sync(self._listen, abandon_on_cancel=True):
                    return True
            if connecting.cancelled_caught:
                return True  # the time is up; the connect goes on (_listen sees a close())
        await anyio.sleep(min(timeout_s, self.fallback_poll_s))
        return True

    def _listen(self) -> bool:
        """Connect and LISTEN (blocking)."""
        conn = None
        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=int(CONNECT_TIMEOUT_S))
            conn.execute(Q.listen)
        except psycopg.Error:
            if conn is not None:
                conn.close()
            conn = None
        with self._lock:
            self._connecting = False
            if conn is None or self._closed:
                if conn is not None:
                    conn.close()
                self._retry_later(lasted=False)
                return False
            self._conn, self._since = conn, time.monotonic()
            return True

    def _retry_later(self, *, lasted: bool) -> None:
        """Under the lock: the next try to listen at once after a connection that had lasted,
        else after twice the last wait (fallback_poll_s at first, max_backoff_s at most)."""
        wait_s = min(self.max_backoff_s, max(self.fallback_poll_s, 2 * self._backoff_s))
        self._backoff_s = 0.0 if lasted else wait_s
        self._retry_at = time.monotonic() + self._backoff_s

    def _drain(self) -> bool:
        with self._lock:
            if self._conn is None:
                return True
            try:
                if list(self._conn.notifies(timeout=0.0)):
                    return True
                if not self._conn.broken:
                    return False
            except psycopg.Error:
                pass
            self._conn.close()  # broken: a hint (something may have been missed), listen again
            self._conn = None
            self._retry_later(lasted=time.monotonic() - self._since >= self.max_backoff_s)
            return True

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None
