"""What every side of a SQL store builds on: a write transaction, reads, appending an event and
the claim's lock hook. A backend (sqlite/, postgres/) provides these over its driver; the sides
(queue.py, runs.py, reads.py, control.py) hold the store's logic once for every backend."""

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from ...policy import PoolState
from .conn import Conn, Row
from .queries import Queries
from .rows import read_pool_state

T = TypeVar("T")


class Conflict(Exception):
    """A concurrent transaction changed a row this one planned from: roll back and try again
    (only where rows are not serialised by the database's write lock, i.e. PostgreSQL)."""


class SQLCore:
    url: str
    display_url: str  # the URL without a password, for people
    q: Queries
    schema_version: int  # the migrations this backend knows (what a peer says it speaks)

    def _write(self, fn: Callable[[Conn], T]) -> T:
        """Run `fn` in one write transaction, retried as the backend needs; driver errors stop
        here as StoreError."""
        raise NotImplementedError

    def _reading(self, fn: Callable[[Conn], T], *, separate: bool = False) -> T:
        """A read; `separate` reads (status, wait) must never wait behind a write."""
        raise NotImplementedError

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        return self._reading(lambda db: db.execute(sql, args).fetchall())

    def release(self) -> None:
        """Let go of idle connections until the next call (a shim while its agent runs)."""

    def _lock_pools(self, db: Conn, pools: Iterable[str]) -> None:
        """Before a claim counts a pool's runs: hold what keeps any other claim from counting
        them at the same time, until the transaction ends. SQLite's write lock already does."""

    def _event(
        self, db: Conn, type_: str, now: float, ws: str | None = None, origin: str | None = None, **data: Any
    ) -> int:
        """Append an event; its id."""
        row = db.execute(
            db.q.insert_event, (now, type_, ws, origin, json.dumps(data, separators=(",", ":")))
        ).fetchone()
        return int(row[0])

    def pool_state(self, pool: str) -> PoolState:
        return self._reading(lambda db: read_pool_state(db, pool))
