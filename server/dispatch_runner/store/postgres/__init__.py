"""PostgreSQL backend: many hosts, one set of limits.

The store's logic is store/sql/ (shared with SQLite); this backend is its connections, locks and
wake-ups (core.py), its named queries (queries.sql, the same names as SQLite's) and its numbered
migrations (migrations/NNNN.sql). Needs the `postgres` extra (psycopg 3 and psycopg_pool).
"""

from ..sql import SQLStore
from .core import MIGRATIONS, PgWatcher, PostgresCore, Q, redacted


class PostgresStore(SQLStore, PostgresCore):
    """The Store protocol on PostgreSQL."""


__all__ = ["MIGRATIONS", "PgWatcher", "PostgresStore", "Q", "redacted"]
