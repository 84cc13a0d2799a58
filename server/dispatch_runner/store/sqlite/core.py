"""The SQLite backend's core: its connections, one IMMEDIATE transaction per write (retried on a
lock) and the migrations; the sides of the store (store/sql/) build on it.

One main connection per store, guarded by a lock (the async runner calls it from worker threads);
a read connection for the reads that must never wait behind a write; a third one that only polls
PRAGMA data_version.
"""

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self, TypeVar

from ...errors import StoreError
from ..sql.conn import Conn
from ..sql.core import SQLCore
from ..sql.queries import load_migrations, load_queries

# beside this module (the package is installed as files; importlib.resources would add
# tempfile and shutil to every shim's start-up)
HERE = Path(__file__).parent
Q = load_queries(HERE, placeholder="?")
MIGRATIONS = load_migrations(HERE / "migrations")

T = TypeVar("T")
LOCK_RETRIES = 5


class SQLiteCore(SQLCore):
    q = Q
    schema_version = len(MIGRATIONS)

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self.display_url = self.url
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
            mode = self._db.execute(Q.journal_wal).fetchone()[0]
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
        db.execute(Q.expand("busy_timeout", ms=str(int(self._busy_timeout_s * 1000))))
        db.execute(Q.synchronous_normal)
        db.execute(Q.foreign_keys_on)
        return db

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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- transactions and reads -------------------------------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[Conn]:
        """One IMMEDIATE transaction; retried by `_write` when the database is locked.

        Whatever fails — the body or the COMMIT itself (I/O error, disk full, a busy database) —
        the connection leaves the transaction: a failed COMMIT can leave SQLite's transaction open
        with the write lock held, which would stall every other peer."""
        db = self._conn()
        db.execute(Q.begin)
        try:
            yield Conn(db, Q)
            db.execute(Q.commit)
        except BaseException:
            self._abandon()
            raise

    def _abandon(self) -> None:
        if self._db.in_transaction:
            try:
                self._db.execute(Q.rollback)
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

    def _write(self, fn: Callable[[Conn], T]) -> T:
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

    def _reading(self, fn: Callable[[Conn], T], *, separate: bool = False) -> T:
        """A read; driver errors stop here. The runner's own reads share the main connection
        (its page cache stays warm across its writes); `separate` reads (status, wait) go to a
        read connection of their own, which in WAL never waits behind a write transaction."""
        if not separate:
            with self._lock:
                try:
                    return fn(Conn(self._conn(), Q))
                except sqlite3.Error as exc:
                    raise StoreError(f"store read failed: {exc}") from exc
        with self._read_lock:
            try:
                if self._closed:
                    raise sqlite3.ProgrammingError("the store is closed")
                if self._rdb is None:
                    self._rdb = self._connect()
                    self._rdb.execute(Q.query_only)
                return fn(Conn(self._rdb, Q))
            except sqlite3.Error as exc:
                raise StoreError(f"store read failed: {exc}") from exc

    def _migrate(self) -> None:
        version = self._read(Q.schema_version)[0][0]
        if version > len(MIGRATIONS):
            raise StoreError(
                f"the store {self.path} has schema version {version}, newer than this "
                f"dispatch-runner knows ({len(MIGRATIONS)}); upgrade dispatch-runner"
            )
        if version == len(MIGRATIONS):
            return  # the common case (every shim opens the store): no write transaction

        def step(db: Conn) -> None:
            version = db.execute(Q.schema_version).fetchone()[0]
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in statements(script):
                    db.execute(statement)
                db.execute(Q.expand("set_schema_version", version=str(number)))

        self._write(step)

    # ---- change hints -----------------------------------------------------------------------

    def watcher(self) -> Any:
        """A wake-up hint when another process commits (inotify on the database's directory)."""
        from ...watch import StoreWatcher

        return StoreWatcher(self.path)

    def data_version(self) -> int:
        """Changes whenever any connection (another peer, a shim, or this store) commits.

        A separate connection, so our own commits count too and the check never waits behind a
        write in progress on the main connection: cheap enough (~6 µs) to poll from the event loop."""
        with self._watch_lock:
            if self._watch is None:
                self._watch = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                return int(self._watch.execute(Q.data_version).fetchone()[0])
            except sqlite3.Error as exc:
                raise StoreError(f"store read failed: {exc}") from exc


def statements(script: str) -> list[str]:
    """A migration's statements, one by one (comments dropped), as SQLite completes them."""
    out, buf = [], ""
    for line in script.splitlines():
        buf += line.split("--", 1)[0] + "\n"
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    return out
