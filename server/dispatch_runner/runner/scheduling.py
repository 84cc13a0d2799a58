"""When a dispatch may start: `not_before` (an ISO-8601 time or seconds from now) and `after`
(workspaces, or groups, it waits for; `after_mode` success or always), checked and applied to
the workspace to store, and how a workspace's schedule reads in results.

The store holds a waiting workspace (store/grouping.py) and releases or cancels it in the
transaction that ends what it waits for (store/sql/deps.py); the claim never looks at it.
"""

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from .. import validate
from ..actions import DispatchRequest
from ..errors import InvalidArgument
from ..policy import HELD_UNTIL, iso
from ..store import NewWorkspace, Store, WorkspaceRow
from . import groups

AFTER_MODES: Final = ("success", "always")


@dataclass(frozen=True, slots=True, kw_only=True)
class Schedule:
    """A dispatch's timing, resolved: not_before as epoch seconds (None: now) and the workspace
    ids it waits for (a group's id stands for its members)."""

    not_before: float | None = None
    after: tuple[str, ...] = ()
    after_mode: str | None = None

    def apply(self, new: NewWorkspace, *, group: str | None = None, wait_turn: bool = False) -> NewWorkspace:
        """The workspace to store: held while it waits for others ("after") or, as a member of
        a group past its cap, for its turn ("group")."""
        held = "after" if self.after else "group" if wait_turn else None
        return replace(
            new,
            not_before=self.not_before,
            after=self.after,
            after_mode=self.after_mode if self.after else None,
            group=group,
            held=held,
        )

    def max_wait(self, max_wait_s: float | None) -> float | None:
        """max_wait_s judges work that may start now; work set for later is not refused by it."""
        return None if self.after or self.not_before else max_wait_s


def check_schedule_values(req: DispatchRequest) -> None:
    """Types and bounds of not_before, after and after_mode (the time itself: `plan`)."""
    if req.not_before is not None and not isinstance(req.not_before, str | int | float):
        raise InvalidArgument("not_before", "not_before must be an ISO-8601 time or a number of seconds")
    if req.after_mode is not None and req.after_mode not in AFTER_MODES:
        raise InvalidArgument(
            "after_mode", f"after_mode must be success or always (got {str(req.after_mode)[:40]!r})"
        )
    if req.group_concurrency is not None and req.tasks is None and req.items is None:
        raise InvalidArgument("group_concurrency", "group_concurrency caps a fan-out: give tasks, or items")
    if req.after is None:
        return
    if isinstance(req.after, str) or not isinstance(req.after, Sequence):
        raise InvalidArgument("after", "after must be a list of workspace ids")
    if len(req.after) > validate.MAX_AFTER:
        raise InvalidArgument(
            "after", f"after lists {len(req.after)} workspaces; wait for at most {validate.MAX_AFTER}"
        )
    for ws_id in req.after:
        validate.text("after", ws_id, max_chars=200, required=True)


def plan(store: Store, req: DispatchRequest, *, now: float) -> Schedule:
    """The dispatch's schedule; raises InvalidArgument for a bad time or an unknown group (an
    unknown workspace is refused by the store, in the enqueue transaction). Reads the store:
    call it off the event loop."""
    check_schedule_values(req)
    at = validate.when("not_before", req.not_before, now=now)
    after = tuple(groups.expand_ids(store, list(req.after or []), field="after"))
    return Schedule(not_before=at, after=after, after_mode=(req.after_mode or "success") if after else None)


def schedule_view(row: WorkspaceRow, waiting: Sequence[str]) -> dict[str, Any]:
    """A workspace's schedule in results: `not_before` (while it is queued; null: none), `held` (why it is not
    claimable yet: "after", "group"; null: it is), `after` (what it still waits for), `group`."""
    at = row.release_not_before if row.not_before >= HELD_UNTIL else row.not_before
    return {
        "not_before": iso(at) if at and row.state == "queued" else None,
        "held": row.held if row.state == "queued" else None,
        "after": list(waiting),
        "after_mode": row.after_mode,
        "group": row.group,
    }


def waiting(store: Store, row: WorkspaceRow) -> list[str]:
    """What a workspace still waits for (a read only for one that waits)."""
    return store.waiting_for(row.id) if row.held == "after" and row.state == "queued" else []
