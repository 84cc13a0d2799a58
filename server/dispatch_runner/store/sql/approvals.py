"""The approvals side of a SQL store: sub-agents' permission requests, parked until a person
answers or the deadline passes.

A request is written with its `ApprovalRequested` event in one transaction (the event carries
the dispatching session as its origin, so that session is told). The answer is a compare-and-set
on `decision IS NULL`: the first of a person's answer (only before the deadline) and the
deadline's denial wins, and only the winner's `ApprovalAnswered` is written.
"""

import json
from typing import Any

from ...policy import iso
from ..approving import Approval
from .conn import Conn, Row
from .core import SQLCore

PENDING_LIMIT = 100


class ApprovalSide(SQLCore):
    def request_approval(self, approval: Approval, *, now: float) -> Approval | None:
        """Park a request of the workspace's agent; None when the workspace is unknown."""
        a = approval

        def tx(db: Conn) -> Approval | None:
            ws = db.execute(db.q.workspace, (a.workspace,)).fetchone()
            if ws is None:
                return None
            args = (a.id, a.workspace, a.run, a.tool, json.dumps(a.input), a.tool_use_id, now, a.deadline)
            db.execute(db.q.insert_approval, args)
            self._event(
                db,
                "ApprovalRequested",
                now,
                a.workspace,
                ws["origin"],
                request=a.id,
                tool=a.tool,
                input=summary(a.input),
                agent=ws["agent"],
                deadline=iso(a.deadline),
            )
            return _approval(db.execute(db.q.approval, (a.id,)).fetchone())

        return self._write(tx)

    def get_approval(self, approval_id: str) -> Approval | None:
        rows = self._reading(lambda db: db.execute(db.q.approval, (approval_id,)).fetchall(), separate=True)
        return _approval(rows[0]) if rows else None

    def answer_approval(
        self, approval_id: str, decision: str, *, note: str | None, by: str, now: float, late: bool = False
    ) -> tuple[Approval | None, bool]:
        """Compare-and-set the answer: (the request as it stands, whether this answer won). A
        person's answer wins only before the deadline; `late` (the deadline's own denial) at any
        time, if nobody answered first."""

        def tx(db: Conn) -> tuple[Approval | None, bool]:
            not_after = 0.0 if late else now
            args = (decision, note, now, by, approval_id, not_after)
            won = db.execute(db.q.answer_approval, args).rowcount == 1
            row = db.execute(db.q.approval, (approval_id,)).fetchone()
            found = _approval(row) if row is not None else None
            if won and found is not None:
                self._event(
                    db,
                    "ApprovalAnswered",
                    now,
                    found.workspace,
                    found.origin,
                    request=approval_id,
                    decision=decision,
                    note=note,
                    by=by,
                )
            return found, won

        return self._write(tx)


def pending_rows(db: Conn, now: float, limit: int = PENDING_LIMIT) -> list[dict[str, Any]]:
    """What overall status lists as `approvals` (snapshot.py reads it in its own transaction)."""
    return [approval_view(_approval(r)) for r in db.execute(db.q.approvals_pending, (now, limit))]


def approval_view(a: Approval) -> dict[str, Any]:
    return {
        "request": a.id,
        "workspace": a.workspace,
        "agent": a.agent,
        "tool": a.tool,
        "input": summary(a.input),
        "requested_at": iso(a.created_at),
        "deadline": iso(a.deadline),
    }


def summary(data: Any, limit: int = 300) -> str:
    """What the agent asked to do, short: a command or a path when it names one, else its JSON."""
    if isinstance(data, dict):
        for key in ("command", "file_path", "path", "url", "pattern"):
            if isinstance(data.get(key), str):
                text = str(data[key])
                break
        else:
            text = json.dumps(data, ensure_ascii=False, sort_keys=True)
    else:
        text = json.dumps(data, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _approval(r: Row) -> Approval:
    return Approval(
        id=r["id"],
        workspace=r["workspace"],
        run=r["run"],
        tool=r["tool"],
        input=json.loads(r["input"]),
        tool_use_id=r["tool_use_id"],
        created_at=r["created_at"],
        deadline=r["deadline"],
        decision=r["decision"],
        note=r["note"],
        answered_at=r["answered_at"],
        answered_by=r["answered_by"],
        agent=r["agent"],
        origin=r["origin"],
    )
