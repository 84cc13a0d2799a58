"""The durable store: a Protocol of intentions, and `open_store(url)` to pick a backend.

Backends: SQLite (`sqlite:///path/state.db`, the default; any number of peers on one host) and,
later, PostgreSQL. Driver errors stop here as StoreError.
"""

from .base import (
    Claim,
    ClaimResult,
    EnqueueResult,
    KillPlan,
    Limits,
    NewWorkspace,
    RunExit,
    RunRow,
    Store,
    WorkspaceRow,
)


def open_store(url: str) -> Store:
    if url.startswith("sqlite:///"):
        from .sqlite import SQLiteStore

        return SQLiteStore(url.removeprefix("sqlite:///"))
    from ..errors import ConfigError

    if url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            "DISPATCH_RUNNER_STORE",
            None,
            "store",
            "this dispatch-runner has no "
            "PostgreSQL store yet (it comes with the multi-host release); use the "
            "embedded store: unset DISPATCH_RUNNER_STORE or set it to "
            "sqlite:///path/to/state.db",
        )
    raise ConfigError(
        "DISPATCH_RUNNER_STORE",
        None,
        "store",
        f"unsupported store URL {url!r}; use sqlite:///path/to/state.db",
    )


__all__ = [
    "Claim",
    "ClaimResult",
    "EnqueueResult",
    "KillPlan",
    "Limits",
    "NewWorkspace",
    "RunExit",
    "RunRow",
    "Store",
    "WorkspaceRow",
    "open_store",
]
