"""The durable store: a Protocol of intentions, and `open_store(url)` to pick a backend.

Backends: SQLite (`sqlite:///path/state.db`, the default; any number of peers on one host) and
PostgreSQL (`postgresql://…`; many hosts). Driver errors stop here as StoreError.
"""

import re

from .approving import Approval
from .base import (
    Claim,
    ClaimResult,
    EnqueueResult,
    HostCaps,
    KillPlan,
    Lease,
    Limits,
    NewWorkspace,
    RouteEntry,
    RunExit,
    RunRow,
    Store,
    Usage,
    WorkspaceRow,
)
from .schedules import ScheduleRow


def open_store(url: str, *, light: bool = False) -> Store:
    """The store at `url`: sqlite:///path/state.db (the default) or postgresql://user@host/db.
    `light`: for a short-lived process (a run's shim) that should hold no idle connections."""
    from ..errors import ConfigError

    if url.startswith("sqlite:///"):
        from .sqlite import SQLiteStore

        return SQLiteStore(url.removeprefix("sqlite:///"))
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from .postgres import PostgresStore
        except ImportError as exc:
            raise ConfigError(
                "DISPATCH_RUNNER_STORE",
                None,
                "store",
                f"a PostgreSQL store needs psycopg and psycopg_pool ({exc}); install them with "
                "pip install 'dispatch-runner[postgres]'",
            ) from exc
        return PostgresStore(url, light=light)
    raise ConfigError(
        "DISPATCH_RUNNER_STORE",
        None,
        "store",
        f"unsupported store URL {_without_password(url)!r}; use sqlite:///path/to/state.db or "
        "postgresql://user@host/db",
    )


def _without_password(url: str) -> str:
    return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)


__all__ = [
    "Approval",
    "Claim",
    "ClaimResult",
    "EnqueueResult",
    "HostCaps",
    "KillPlan",
    "Lease",
    "Limits",
    "NewWorkspace",
    "RouteEntry",
    "RunExit",
    "RunRow",
    "ScheduleRow",
    "Store",
    "Usage",
    "WorkspaceRow",
    "open_store",
]
