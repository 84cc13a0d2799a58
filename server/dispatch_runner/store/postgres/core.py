"""The PostgreSQL backend's core: a psycopg connection pool, one READ COMMITTED transaction per
write (retried, bounded, on a deadlock, a serialisation failure or a lost race for a unique
key), migrations under an advisory lock, and wake-ups by LISTEN/NOTIFY.

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
RETRYABLE = (pgerrors.DeadlockDetected, pgerrors.SerializationFailure, pgerrors.UniqueViolation, Conflict)
CONNECT_TIMEOUT_S = 10.0


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


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
            except RETRYABLE as exc:
                if attempt == WRITE_TRIES - 1:
                    raise StoreError(f"store write failed after {WRITE_TRIES} tries: {exc}") from exc
                # jittered: two peers that collided should not collide again
                time.sleep(random.uniform(0, 0.005 * 2**attempt))
            except (psycopg.Error, PoolTimeout) as exc:
                raise StoreError(f"store write failed: {exc}") from exc
        raise AssertionError("unreachable")

    def _reading(self, fn: Callable[[Conn], T], *, separate: bool = False) -> T:
        """Reads never wait behind writes in PostgreSQL (MVCC); one transaction per read, so a
        read of several queries (the status snapshot) sees one state."""
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
    ) -> None:
        db.execute(Q.lock_events)
        super()._event(db, type_, now, ws, origin, **data)
        db.execute(Q.notify)  # delivered at commit, once per transaction

    def _migrate(self, raw: "psycopg.Connection[Any]") -> None:
        """Every peer may start at once: one migrates under a session advisory lock, the others
        wait for it and find the schema current."""
        raw.execute(Q.lock_migrations)
        try:
            raw.execute(Q.schema_table)
            version = int(raw.execute(Q.schema_version).fetchall()[0][0])
            if version > len(MIGRATIONS):
                raise StoreError(
                    f"the store {self.display_url} has schema version {version}, newer than "
                    f"this dispatch-runner knows ({len(MIGRATIONS)}); upgrade dispatch-runner"
                )
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                with raw.transaction():
                    raw.execute(script.encode())  # no parameters: the whole script at once
                    raw.execute(Q.set_schema_version, (number,))
        finally:
            raw.execute(Q.unlock_migrations)

    # ---- change hints -----------------------------------------------------------------------

    def data_version(self) -> int:
        return int(self._read(Q.data_version)[0][0])

    def watcher(self) -> "PgWatcher":
        return PgWatcher(self.url)


class PgWatcher:
    """A wake-up hint when any peer commits an event: LISTEN on a connection of its own. Where a
    pooler forbids LISTEN (PgBouncer in transaction mode) it falls back to a short poll; the
    runner polls data_version underneath either way."""

    def __init__(self, url: str, *, fallback_poll_s: float = 0.25) -> None:
        self.fallback_poll_s = fallback_poll_s
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None
        try:
            self._conn = psycopg.connect(url, autocommit=True, connect_timeout=int(CONNECT_TIMEOUT_S))
            self._conn.execute(Q.listen)
        except psycopg.Error:
            self._conn = None

    async def changed(self, timeout_s: float) -> bool:
        conn = self._conn
        if conn is None or conn.closed:
            await anyio.sleep(min(timeout_s, self.fallback_poll_s))
            return True
        with anyio.move_on_after(timeout_s):
            while True:
                if self._drain():
                    return True
                await anyio.wait_readable(conn.fileno())
        return False

    def _drain(self) -> bool:
        with self._lock:
            if self._conn is None:
                return True
            try:
                return bool(list(self._conn.notifies(timeout=0.0)))
            except psycopg.Error:
                self._conn = None  # the connection broke: poll from now on
                return True

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
