"""What waits for what, inside the transactions that change it: a workspace dispatched `after`
others (deps rows, one per need not yet ended) and the members of a fan-out group beyond its cap
are held (store/grouping.py). `admit` settles a new workspace's needs as it is queued; `ended`,
called by every transition that ends a workspace (a run's exit, a cancel), settles the work that
waited for it:

- each dependent loses that need; with none left it is released (to its own not_before);
- a need that ended otherwise than completed cancels a dependent that needs success
  (after_mode success, the default: reason "after: <need> <state>"), which in turn ends — so
  the cancel cascades down a chain of dependents;
- a group member's end releases the group's next held member (lowest seq) while fewer than its
  cap are queued or running, and the last member's end completes the group: one GroupCompleted
  event with every member's outcome, owed once to the client that dispatched it (the outbox).

Each runs after its transaction has appended an event, which holds the store's event lock
until commit (PostgreSQL: an advisory lock; SQLite: the write lock). So every end and every
admission is serialised: an end never misses a dependency recorded at the same moment, and a
group's count of active members is exact.
"""

from collections.abc import Sequence
from typing import Any, Final

from ...errors import InvalidArgument
from ..base import NewWorkspace, WorkspaceRow
from ..grouping import GroupRow
from .conn import Conn, Row
from .core import SQLCore
from .rows import read_workspace, workspace_row

COMPLETED: Final = "completed"
ENDED: Final = frozenset({"completed", "failed", "killed", "lost", "cancelled"})
SUMMARY_CHARS: Final = 300  # of each member's result in the group's event
TASK_CHARS: Final = 100


def admit(core: SQLCore, db: Conn, ws: NewWorkspace, now: float) -> None:
    """A workspace just inserted (held when it has needs or its group is full): its needs that
    have ended already count at once; the others become deps rows. Raises InvalidArgument for
    a need the store does not know (the transaction, and the dispatch, are then undone)."""
    if ws.held:
        db.execute(db.q.set_release_not_before, (ws.not_before or 0.0, ws.id))
    if not ws.after:
        return
    needs = list(dict.fromkeys(ws.after))
    sql = db.q.expand("workspaces_by_ids", ids=db.q.marks(len(needs)))
    states = {r["id"]: r["state"] for r in db.execute(sql, needs).fetchall()}
    unknown = [n for n in needs if n not in states]
    if unknown:
        raise InvalidArgument(
            "after",
            f"after names workspace {unknown[0]!r}, which does not exist; give ids of existing "
            "workspaces or groups (status lists them); nothing was queued",
        )
    failed = [n for n in needs if states[n] in ENDED and states[n] != COMPLETED]
    if failed and ws.after_mode != "always":
        if (cancelled := _cancel(core, db, ws.id, failed[0], states[failed[0]], now)) is not None:
            ended(core, db, cancelled, now)
        return
    pending = [n for n in needs if states[n] not in ENDED]
    for need in pending:
        db.execute(db.q.insert_dep, (ws.id, need))
    if not pending:
        _release(db, ws.id, ws.group, now)


def ended(core: SQLCore, db: Conn, ws: WorkspaceRow, now: float) -> None:
    """`ws` has just ended (completed, failed, killed, lost or cancelled): settle what waited
    for it, and for what that cancels in turn (a worklist, not recursion: a chain may be long)."""
    todo = [ws]
    while todo:
        done = todo.pop()
        for row in db.execute(db.q.dependents, (done.id,)).fetchall():
            dep = workspace_row(row)
            db.execute(db.q.drop_dep, (dep.id, done.id))
            if dep.state != "queued" or dep.held != "after":
                continue
            if done.state != COMPLETED and dep.after_mode != "always":
                if (cancelled := _cancel(core, db, dep.id, done.id, done.state, now)) is not None:
                    todo.append(cancelled)
            elif not db.execute(db.q.deps_left, (dep.id,)).fetchone()[0]:
                _release(db, dep.id, dep.group, now)
        if done.group:
            _group_member_ended(core, db, done.group, now)


def _cancel(core: SQLCore, db: Conn, ws_id: str, need: str, state: str, now: float) -> WorkspaceRow | None:
    """Cancel a held workspace whose need did not complete: the cancelled row, or None when it was
    no longer queued."""
    reason = f"after: {need} {state}"
    if db.execute(db.q.cancel_dependent, (reason, now, now, ws_id)).rowcount != 1:
        return None
    db.execute(db.q.drop_deps_of, (ws_id,))
    ws = read_workspace(db, ws_id)
    extra = {"group": ws.group} if ws.group else {}
    core._event(
        db,
        "AgentCancelled",
        now,
        ws.id,
        ws.origin,
        agent=ws.agent,
        state="cancelled",
        reason=reason,
        after=need,
        **extra,
    )
    return ws


def _release(db: Conn, ws_id: str, group_id: str | None, now: float) -> None:
    """A held workspace whose needs are met: claimable at its own not_before, unless its group
    is at its cap (then it waits its turn there)."""
    if group_id is not None and _group_full(db, group_id):
        db.execute(db.q.hold_for_group, (now, ws_id))
    else:
        db.execute(db.q.release_held, (now, ws_id))


def _group(db: Conn, group_id: str) -> GroupRow | None:
    row = db.execute(db.q.group, (group_id,)).fetchone()
    return group_row(row) if row is not None else None


def _group_full(db: Conn, group_id: str) -> bool:
    group = _group(db, group_id)
    if group is None or not group.concurrency:
        return False
    return int(db.execute(db.q.group_active, (group_id,)).fetchone()[0]) >= group.concurrency


def _group_member_ended(core: SQLCore, db: Conn, group_id: str, now: float) -> None:
    """Release held members while the group has room; complete it with its last member."""
    while not _group_full(db, group_id):
        nxt = db.execute(db.q.group_next_held, (group_id,)).fetchone()
        if nxt is None:
            break
        db.execute(db.q.release_held, (now, nxt[0]))
    if db.execute(db.q.group_unfinished, (group_id,)).fetchone()[0]:
        return
    if db.execute(db.q.end_group, (now, group_id)).rowcount != 1:
        return  # completed before (a member resumed by a follow-up ended again)
    group = _group(db, group_id)
    assert group is not None
    members = [workspace_row(r) for r in db.execute(db.q.group_members, (group_id,)).fetchall()]
    event_id = core._event(
        db, "GroupCompleted", now, group_id, group.origin, **group_outcome(group, members, now)
    )
    owed = group.client or group.origin
    if owed:
        db.execute(db.q.insert_outbox, (owed, group_id, event_id, now))


def group_row(row: Row) -> GroupRow:
    return GroupRow(
        id=row["id"],
        size=int(row["size"]),
        concurrency=row["concurrency"],
        client=row["client"],
        origin=row["origin"],
        created_at=float(row["created_at"]),
        ended_at=row["ended_at"],
    )


def group_outcome(group: GroupRow, members: Sequence[WorkspaceRow], now: float) -> dict[str, Any]:
    """The GroupCompleted event's data: the group's state (completed when every member did,
    else failed), counts per state, and each member's outcome in dispatch order."""
    counts: dict[str, int] = {}
    for m in members:
        counts[m.state] = counts.get(m.state, 0) + 1
    return {
        "group": group.id,
        "state": COMPLETED if set(counts) == {COMPLETED} else "failed",
        "size": len(members),
        "counts": counts,
        "duration_s": round(now - group.created_at, 3),
        "members": [member_outcome(m) for m in members],
    }


def member_outcome(ws: WorkspaceRow) -> dict[str, Any]:
    duration = (
        round(ws.ended_at - ws.started_at, 3)
        if ws.ended_at is not None and ws.started_at is not None
        else None
    )
    return {
        "workspace": ws.id,
        "state": ws.state,
        "exit_code": ws.exit_code,
        "label": ws.label,
        "task": _cut(ws.task.strip().splitlines()[0] if ws.task.strip() else "", TASK_CHARS),
        "summary": _cut((ws.summary or "").strip(), SUMMARY_CHARS),
        "reason": ws.reason if ws.state != COMPLETED else None,
        "duration_s": duration,
    }


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
