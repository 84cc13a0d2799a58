"""SQLite backend: WAL, BEGIN IMMEDIATE for every read-then-write, busy_timeout, retry on lock.

SQLite has no SKIP LOCKED: BEGIN IMMEDIATE serialises claims across processes, so two peers can
never both take the last slot. The store's logic is store/sql/ (shared with PostgreSQL); this
backend is its connections (core.py), its named queries (queries.sql) and its numbered
migrations (migrations/NNNN.sql). Imports stay stdlib-only: the per-run shim uses this package.
"""

from ..sql import LANE_SEP, SQLStore, lane_of
from .core import MIGRATIONS, Q, SQLiteCore, statements


class SQLiteStore(SQLStore, SQLiteCore):
    """The Store protocol on SQLite."""


__all__ = ["LANE_SEP", "MIGRATIONS", "Q", "SQLiteStore", "lane_of", "statements"]
