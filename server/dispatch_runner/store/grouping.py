"""Store values and intentions for work that waits: fan-out groups (one dispatch of many tasks,
with a cap on how many run at once) and dependencies (`after`). The Store protocol includes
GroupStore; store/sql/groups.py and deps.py implement it once for every backend.

A held workspace (`held`: "after" or "group") waits at policy.HELD_UNTIL, where no claim reaches
it; the transaction that ends the last workspace it waits for (or frees a slot of its group)
releases it to its own not_before. So a group's cap and a dependency cost the claim nothing.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # base.py imports this module for its Store protocol
    from .base import EnqueueResult, Limits, NewWorkspace, WorkspaceRow


@dataclass(frozen=True, slots=True, kw_only=True)
class NewGroup:
    id: str
    concurrency: int | None  # at most this many members released (queued or running) at once
    client: str | None  # who is owed the group's completion (the outbox)
    origin: str | None  # the connection that dispatched it


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupRow:
    id: str
    size: int
    concurrency: int | None
    client: str | None
    origin: str | None
    created_at: float
    ended_at: float | None  # when its last member ended (GroupCompleted)


@dataclass(frozen=True, slots=True)
class GroupEnqueued:
    group: GroupRow
    members: Sequence["EnqueueResult"]  # in the order of the dispatch's tasks
    deduplicated: bool  # an earlier dispatch with the same idempotency key made it


class GroupStore(Protocol):
    def enqueue_group(
        self,
        group: NewGroup,
        members: Sequence["NewWorkspace"],
        *,
        now: float,
        max_wait_s: float | None,
        limits: "Limits",
    ) -> GroupEnqueued: ...
    def get_group(self, group_id: str) -> GroupRow | None: ...
    def group_members(self, group_id: str) -> list["WorkspaceRow"]: ...
    def waiting_for(self, workspace_id: str) -> list[str]: ...
