"""Values of the domain: agent references, priorities, workspace states and their transitions.

Pure: no I/O, no clock.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any, Final

from .errors import InvalidArgument, InvalidTransition


class WorkspaceState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    KILLED = "killed"
    LOST = "lost"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED: Final = frozenset(
    {
        WorkspaceState.COMPLETED,
        WorkspaceState.FAILED,
        WorkspaceState.KILLED,
        WorkspaceState.LOST,
        WorkspaceState.CANCELLED,
    }
)

_S = WorkspaceState
# running -> queued: a retry with attempts left, or a rate-limited run requeued (not an attempt).
NEXT: Final[Mapping[WorkspaceState, frozenset[WorkspaceState]]] = {
    _S.QUEUED: frozenset({_S.RUNNING, _S.CANCELLED}),
    _S.RUNNING: frozenset({_S.QUEUED, _S.COMPLETED, _S.FAILED, _S.KILLED, _S.LOST}),
    # a follow-up (dispatch resume, message) queues a finished workspace again to resume its session
    _S.COMPLETED: frozenset({_S.QUEUED}),
    _S.FAILED: frozenset({_S.QUEUED}),
    _S.KILLED: frozenset({_S.QUEUED}),
    _S.LOST: frozenset({_S.QUEUED}),
    _S.CANCELLED: frozenset(),
}


def check_transition(current: WorkspaceState, target: WorkspaceState) -> WorkspaceState:
    """Return `target` when the table allows `current -> target`, else raise InvalidTransition."""
    if target not in NEXT[current]:
        raise InvalidTransition(current.value, target.value)
    return target


class Priority(IntEnum):
    """Lower value runs first (critical > high > medium > low)."""

    CRITICAL = 0
    HIGH = 1
    MEDIUM = 2
    LOW = 3

    @classmethod
    def parse(cls, name: str | None) -> "Priority":
        if name is None or name == "":
            return cls.MEDIUM
        try:
            return cls[name.upper()]
        except KeyError:
            raise InvalidArgument(
                "priority",
                f"unknown priority {name!r}; use one of critical, high, medium, low",
            ) from None

    @property
    def label(self) -> str:
        return self.name.lower()


_BASE_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# A model variant reaches agent CLIs as an option's value: it can never start with '-'.
MODEL_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/@:+-]{0,127}$")
# a host label (agents.yaml `host: {labels}`, a pool's `labels`, a dispatch's `requires`)
LABEL_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/@:+-]{0,63}$")


@dataclass(frozen=True, slots=True)
class AgentRef:
    """`base[:model]`: the pool is the base, the model variant what follows the first colon."""

    pool: str
    model: str | None

    @classmethod
    def parse(cls, text: str) -> "AgentRef":
        if not isinstance(text, str):
            raise InvalidArgument("agent", "agent must be a string such as claude or codex:gpt-5.4")
        text = text.strip()
        base, colon, model = text.partition(":")
        if not _BASE_RE.match(base):
            raise InvalidArgument(
                "agent",
                f"agent {_shown(text)} is not of the form base[:model], e.g. claude or codex:gpt-5.4",
            )
        if colon and not MODEL_RE.match(model):
            raise InvalidArgument(
                "agent",
                f"model variant {_shown(model)} of agent {_shown(base)} is not allowed: it must start "
                "with a letter or digit and hold only letters, digits and . _ / @ : + - (at most "
                "128 characters), e.g. claude:opus or codex:gpt-5.4",
            )
        # Anything naming codex-spark runs in its own pool (reference 000, baseAgent).
        pool = "codex-spark" if "codex-spark" in text else base
        return cls(pool=pool, model=model or None)

    @property
    def base(self) -> str:
        return self.pool

    def __str__(self) -> str:
        return f"{self.pool}:{self.model}" if self.model else self.pool


def _shown(text: str, limit: int = 60) -> str:
    """A client string quoted for an error message, cut to a readable length."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


# The outcome a finished run reports, before policy turns it into a workspace state.
class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RATE_LIMITED = "rate_limited"
    KILLED = "killed"
    TIMED_OUT = "timed_out"
    LOST = "lost"


# ---- lifecycle events (the bus in events.py carries them; the store records them) ----------

EVENT_TYPES: Final = (
    "AgentQueued",
    "AgentStarted",
    "AgentCompleted",
    "AgentFailed",
    "AgentKilled",
    "AgentLost",
    "TaskDeadLettered",
    "QueueFrozen",
    "QueueUnfrozen",
    "PoolBackoff",
    "ChannelPush",
    "AgentRetrying",
    "AgentCancelled",
    "AgentStalled",
    "AllowanceExhausted",
    "MessageQueued",
    "MessageDelivered",
    "AgentPreempted",
    "AgentRouted",
    "ApprovalRequested",
    "ApprovalAnswered",
    "ScheduleFired",
    "GroupCompleted",
    "PoolLimitChanged",
    "AgentPromoted",
)
# Events that end a workspace and are pushed to clients.
TERMINAL_EVENTS: Final = frozenset(
    {"AgentCompleted", "AgentFailed", "AgentKilled", "AgentLost", "TaskDeadLettered"}
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One lifecycle event. `id` is the store's sequence number (0 for local-only events)."""

    type: str
    workspace: str | None = None
    at: float = 0.0
    origin: str | None = None  # the session that dispatched the workspace, if any
    data: Mapping[str, Any] = field(default_factory=dict)
    id: int = 0

    def __post_init__(self) -> None:
        if self.type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {self.type!r}")
