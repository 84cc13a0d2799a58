"""The follow-up side of a SQL store: messages to a workspace (taken live by a running agent that
reads input, else the input of a run that resumes its session), and the tree of sub-agents
(children, a top-level dispatch's descendants, a subtree to kill).

A message and the exit of the workspace's run take the workspace's row in turn, so neither
misses the other: a message that comes as the run ends is either seen by the exit (which queues
the resume run) or sees the ended workspace (and queues it itself).
"""

from collections.abc import Sequence
from typing import Final

from ...errors import InvalidArgument, UnknownWorkspace
from ...model import FINISHED, WorkspaceState
from ..base import WorkspaceRow
from .conn import Conn
from .core import SQLCore
from .rows import read_workspace, workspace_row

TREE_LIMIT: Final = 10_000  # a subtree to kill is read level by level, at most this many


class FollowUpSide(SQLCore):
    def send_message(self, workspace_id: str, text: str, *, now: float) -> tuple[WorkspaceRow, str, int]:
        """Queue `text` for the workspace. Returns the workspace after it, how it will arrive —
        "pending" (a running agent that reads input takes it live, else it becomes the input of
        the run that resumes its session when the current run ends) or "resumed" (the workspace
        had ended: a resume run is queued now) — and the message's id."""

        def tx(db: Conn) -> tuple[WorkspaceRow, str, int]:
            row = db.execute(db.q.workspace_for_update, (workspace_id,)).fetchone()
            if row is None:
                raise UnknownWorkspace(workspace_id)
            ws = workspace_row(row)
            _check_can_follow_up(ws)
            message_id = int(db.execute(db.q.insert_message, (ws.id, text, now)).fetchone()[0])
            self._event(db, "MessageQueued", now, ws.id, ws.origin, agent=ws.agent, message=message_id)
            if WorkspaceState(ws.state) not in FINISHED:
                return ws, "pending", message_id
            pending = db.execute(db.q.pending_messages, (ws.id,)).fetchall()
            joined = "\n\n".join(r["text"] for r in pending)
            db.execute(db.q.reopen_workspace, (joined, now, ws.priority, now, ws.id))
            for r in pending:
                db.execute(db.q.deliver_message, (now, "run", None, r["id"]))
            self._event(
                db, "AgentQueued", now, ws.id, ws.origin, agent=ws.agent, priority=ws.priority, resume=True
            )
            return read_workspace(db, ws.id), "resumed", message_id

        return self._write(tx)

    def message_state(self, message_id: int) -> str | None:
        """How a message was delivered (live, run), or None while it waits."""
        rows = self._read(self.q.message_state, (message_id,))
        return rows[0]["delivered_how"] if rows and rows[0]["delivered_at"] is not None else None

    def children(self, workspace_id: str) -> list[dict[str, str]]:
        """The workspaces dispatched from this workspace's runs (the first 100), oldest first."""
        return [
            {"workspace": r["id"], "agent": r["agent"], "state": r["state"]}
            for r in self._read(self.q.children, (workspace_id,))
        ]

    def descendants(self, root: str) -> int:
        """How many workspaces a top-level dispatch has under it, at any depth."""
        return int(self._read(self.q.descendants, (root,))[0][0])

    def subtree(self, workspace_ids: Sequence[str]) -> list[str]:
        """Every descendant of these workspaces (not themselves), level by level."""

        def read(db: Conn) -> list[str]:
            found: list[str] = []
            seen = set(workspace_ids)
            level = list(workspace_ids)
            while level and len(found) < TREE_LIMIT:
                sql = db.q.expand("tree_ids", ids=db.q.marks(len(level)))
                level = [r[0] for r in db.execute(sql, level).fetchall() if r[0] not in seen]
                seen.update(level)
                found.extend(level)
            return found[:TREE_LIMIT]

        return self._reading(read)


def _check_can_follow_up(ws: WorkspaceRow) -> None:
    """A follow-up needs a way in: a running agent that reads input, or a session to resume."""
    resumable = bool(ws.spec.get("resume_argv"))
    live = ws.spec.get("input") == "stream-json"
    if ws.state == WorkspaceState.CANCELLED:
        raise InvalidArgument(
            "workspace", f"workspace {ws.id} was cancelled before it ran: dispatch the task anew"
        )
    if not resumable and not (live and ws.state == WorkspaceState.RUNNING):
        raise InvalidArgument(
            "workspace",
            f"agent {ws.agent!r} of workspace {ws.id} cannot take a follow-up: it reads no input "
            "while it runs and has no resume_command in agents.yaml (claude and codex have one); "
            "dispatch a new task instead",
        )
    if WorkspaceState(ws.state) in FINISHED and not ws.session_id:
        raise InvalidArgument(
            "workspace",
            f"workspace {ws.id} has no agent session to resume: its agent never reported a session "
            "id (it may have failed before it started one, or its output format has none); "
            "dispatch a new task instead",
        )
