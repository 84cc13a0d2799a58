"""Fan-out groups as the actions see them: a group id ("grp-…") stands for its members wherever
workspace ids are taken (wait, kill, after), and `status` of a group shows each member's state
and outcome."""

import secrets
import time
from collections.abc import Sequence
from typing import Any, Final

from ..errors import InvalidArgument
from ..policy import iso
from ..store import Store, WorkspaceRow
from ..store.grouping import GroupRow
from .views import duration_s

PREFIX: Final = "grp-"


def is_group_id(text: str) -> bool:
    return text.startswith(PREFIX)


def new_group_id(now: float | None = None) -> str:
    stamp = time.strftime("%m%d-%H%M%S", time.gmtime(now if now is not None else time.time()))
    return f"{PREFIX}{stamp}-{secrets.token_hex(4)}"


class UnknownGroup(InvalidArgument):
    def __init__(self, field: str, group: str) -> None:
        self.group = group
        super().__init__(field, f"no group {group!r}; run status to list workspaces and their groups")


def expand_ids(store: Store, ids: Sequence[str], *, field: str = "workspaces") -> list[str]:
    """`ids` with each group id replaced by its members' ids (in dispatch order), each once.
    Raises UnknownGroup for a group the store does not know. Reads the store: off the loop."""
    out: dict[str, None] = {}
    for ws_id in ids:
        if not is_group_id(ws_id):
            out[ws_id] = None
            continue
        members = store.group_members(ws_id)
        if not members and store.get_group(ws_id) is None:
            raise UnknownGroup(field, ws_id)
        out.update(dict.fromkeys(m.id for m in members))
    return list(out)


def group_state(group: GroupRow, members: Sequence[WorkspaceRow]) -> str:
    """completed (every member did) or failed once it has ended; else running (a member
    runs) or queued."""
    states = {m.state for m in members}
    if group.ended_at is not None or not states & {"queued", "running"}:
        return "completed" if states <= {"completed"} else "failed"
    return "running" if "running" in states else "queued"


def group_view(group: GroupRow, members: Sequence[WorkspaceRow]) -> dict[str, Any]:
    """`status` of a group: its state, counts per state, and each member's state and outcome."""
    counts: dict[str, int] = {}
    for m in members:
        counts[m.state] = counts.get(m.state, 0) + 1
    return {
        "group": group.id,
        "state": group_state(group, members),
        "size": group.size,
        "group_concurrency": group.concurrency,
        "counts": counts,
        "created_at": iso(group.created_at),
        "ended_at": iso(group.ended_at),
        "members": [member_view(m) for m in members],
    }


def member_view(row: WorkspaceRow) -> dict[str, Any]:
    return {
        "workspace": row.id,
        "state": row.state,
        "held": row.held if row.state == "queued" else None,
        "agent": row.agent,
        "label": row.label,
        "exit_code": row.exit_code,
        "reason": row.reason,
        "ended_reason": row.ended_reason,
        "summary": row.summary,
        "duration_s": duration_s(row),
    }


def status_of(store: Store, group_id: str) -> dict[str, Any]:
    """`status` of a group (group_view); UnknownGroup for one the store does not know."""
    group = store.get_group(group_id)
    if group is None:
        raise UnknownGroup("workspace", group_id)
    return group_view(group, store.group_members(group_id))


def summaries(store: Store, group_ids: Sequence[str]) -> list[dict[str, Any]]:
    """What `wait` says of each group it was given: its state and counts per state."""
    out = []
    for gid in group_ids:
        group = store.get_group(gid)
        if group is not None:
            view = group_view(group, store.group_members(gid))
            out.append({k: view[k] for k in ("group", "state", "size", "counts", "ended_at")})
    return out
