"""runner.approve and sub-agents' permission requests.

A run's agent that needs a permission (Claude Code's --permission-prompt-tool) asks the runner's
approval server, which its CLI started (mcp/approvals.py); the server parks the request here: a
row in the store with an `ApprovalRequested` event, which every serving peer pushes to the
session that dispatched the workspace. It then waits — the store's wake-ups, a short poll
under them — for an answer (`approve`, from any session or the CLI) or for its deadline,
`dispatch.approval_timeout_s` after the request: unanswered, it is denied with that reason.
"""

import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Final

import anyio

from .. import validate
from ..actions import ApproveRequest, PermissionRequest
from ..errors import InvalidArgument, LimitRefused, UnknownWorkspace
from ..policy import iso
from ..store import Approval
from . import followups
from .core import Core

POLL_S: Final = 0.5  # under the store's wake-ups
ID_RE: Final = re.compile(r"^apr-[0-9a-f]{12}$")
DECISIONS: Final = ("allow", "deny")
TIMEOUT: Final = "timeout"  # answered_by of a request denied at its deadline
WITHDRAWN: Final = "withdrawn"  # … of one whose agent stopped waiting


def new_id() -> str:
    return f"apr-{secrets.token_hex(6)}"


class Approvals:
    def __init__(self, core: Core) -> None:
        self.core = core

    async def approve(self, req: ApproveRequest, *, by: str) -> dict[str, Any]:
        """Answer a pending request, once: allow or deny (with a note the agent is told)."""
        validate.text("request", req.request, required=True, max_chars=200)
        validate.text("note", req.note, max_chars=2000)
        if req.decision not in DECISIONS:
            got = str(req.decision)[:40]
            raise InvalidArgument("decision", f"decision must be allow or deny (got {got!r})")
        if not ID_RE.match(req.request):
            raise _unknown(req.request)
        store, now = self.core.store, time.time()
        await self._check_waiting(req.request)
        found, won = await self.core.db(
            store.answer_approval, req.request, req.decision, note=req.note, by=by, now=now
        )
        if found is None:
            raise _unknown(req.request)
        if not won:
            raise InvalidArgument("request", _why_not(found))
        await self.core.publish_new()
        return {
            "request": found.id,
            "workspace": found.workspace,
            "tool": found.tool,
            "decision": found.decision,
            "note": found.note,
        }

    async def _check_waiting(self, request: str) -> None:
        """A request still unanswered whose run has ended waits for nothing: no answer is taken.
        A sub-agent (this peer runs inside a run) answers only its own sub-agents' requests —
        never its own, a sibling's or anyone else's."""
        found: Approval | None = await self.core.db(self.core.store.get_approval, request)
        if found is None:
            raise _unknown(request)
        inside = followups.parent_from_env()
        if inside is not None and found.workspace not in await self.core.db(
            self.core.store.subtree, [inside]
        ):
            raise LimitRefused(
                "request",
                f"refused: approval request {request} belongs to workspace {found.workspace}, which "
                f"is not a sub-agent of workspace {inside}, where this runner runs; a sub-agent may "
                "answer only the requests of the sub-agents it dispatched. Nothing changed",
            )
        row = await self.core.db(self.core.store.get_workspace, found.workspace)
        if found.decision is None and (row is None or row.state != "running"):
            state = row.state if row is not None else "gone"
            raise InvalidArgument(
                "request",
                f"approval request {request} has nobody waiting for it: workspace {found.workspace} "
                f"is {state}, so its agent has stopped; nothing changed",
            )

    async def park(self, req: PermissionRequest) -> dict[str, Any]:
        """Park a sub-agent's request until it is answered or its deadline passes; the answer in
        the shape Claude Code's permission-prompt tool returns: {"behavior": "allow",
        "updatedInput": {...}} or {"behavior": "deny", "message": "..."}."""
        validate.text("tool_name", req.tool_name, required=True, max_chars=200)
        store, now = self.core.store, time.time()
        row = await self.core.db(store.get_workspace, req.workspace)
        if row is None:
            raise UnknownWorkspace(req.workspace)
        asked = Approval(
            id=new_id(),
            workspace=row.id,
            run=row.current_run,
            tool=req.tool_name,
            input=dict(req.input),
            tool_use_id=req.tool_use_id,
            created_at=now,
            deadline=now + self.core.config.approval_timeout_s,
        )
        parked = await self.core.db(store.request_approval, asked, now=now)
        if parked is None:
            raise UnknownWorkspace(req.workspace)
        try:
            answer = await self._answer(parked)
        except anyio.get_cancelled_exc_class():  # the agent stopped waiting: nobody may answer now
            with anyio.CancelScope(shield=True):
                await self._deny_late(parked, note="the agent stopped waiting for an answer", by=WITHDRAWN)
            raise
        return behavior(answer, req.input)

    async def _answer(self, asked: Approval) -> Approval:
        store = self.core.store
        watcher = store.watcher()
        try:
            while True:
                found: Approval | None = await self.core.db(store.get_approval, asked.id)
                if found is None:  # removed with its workspace
                    return replace(asked, decision="deny", note="the request was withdrawn")
                if found.decision is not None:
                    return found
                left = asked.deadline - time.time()
                if left <= 0:
                    waited = asked.deadline - asked.created_at
                    note = f"no answer within {waited:g} s (dispatch.approval_timeout_s)"
                    await self._deny_late(asked, note=note, by=TIMEOUT)
                    continue  # read what stands: this denial, or an answer that came first
                await watcher.changed(min(left, POLL_S))
        finally:
            watcher.close()

    async def _deny_late(self, asked: Approval, *, note: str, by: str) -> None:
        """Deny it unless someone answered first (at any time: it is past waiting)."""
        answer = self.core.store.answer_approval
        await self.core.db(answer, asked.id, "deny", note=note, by=by, now=time.time(), late=True)


def behavior(answer: Approval, asked_input: Mapping[str, Any]) -> dict[str, Any]:
    if answer.decision == "allow":
        return {"behavior": "allow", "updatedInput": dict(asked_input)}
    if answer.answered_by == TIMEOUT:
        message = f"Permission denied: {answer.note}."
    else:
        message = "Permission denied by the person supervising this run" + (
            f": {answer.note}" if answer.note else "."
        )
    return {"behavior": "deny", "message": message}


def _unknown(request: str) -> InvalidArgument:
    return InvalidArgument(
        "request",
        f"no approval request {request[:60]!r}; status lists the pending ones under approvals "
        "(ids look like apr-0123456789ab)",
    )


def _why_not(found: Approval) -> str:
    if found.decision is None:  # its deadline passed: its server is denying it
        return (
            f"approval request {found.id} is past its deadline ({iso(found.deadline)}) and is "
            "denied; nothing changed"
        )
    if found.answered_by == WITHDRAWN:
        return f"approval request {found.id} was withdrawn ({found.note}); nothing changed"
    if found.answered_by == TIMEOUT:
        return (
            f"approval request {found.id} was not answered by its deadline ({iso(found.deadline)}) "
            "and was denied then; nothing changed"
        )
    return (
        f"approval request {found.id} was already answered: {found.decision} by "
        f"{found.answered_by} at {iso(found.answered_at)}; an answer is final"
    )
