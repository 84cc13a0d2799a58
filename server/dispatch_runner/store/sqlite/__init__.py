"""SQLite backend: WAL, BEGIN IMMEDIATE for every read-then-write, busy_timeout, retry on lock.

SQLite has no SKIP LOCKED: BEGIN IMMEDIATE serialises claims across processes, so two peers can
never both take the last slot. The lifecycle decides; this backend reads rows and writes plans
with the named queries of queries.sql, and migrates with migrations/NNNN.sql. Imports stay
stdlib-only: the per-run shim uses this package.

    core.py     connections, transactions, migrations, events
    queue.py    enqueue and its ETA, queue positions, claims
    runs.py     a run's start and end, reservations given back
    reads.py    events, workspaces, the status snapshot (snapshot.py)
    control.py  freeze, kill, peers, garbage collection
    rows.py     rows to values and back;  sql.py  the SQL files, loaded once
"""

from .control import ControlSide
from .queue import QueueSide
from .reads import ReadSide
from .rows import LANE_SEP, lane_of
from .runs import RunSide


class SQLiteStore(QueueSide, RunSide, ReadSide, ControlSide):
    """The Store protocol on SQLite: one side per concern over one core (SQLiteCore)."""


__all__ = ["LANE_SEP", "SQLiteStore", "lane_of"]
