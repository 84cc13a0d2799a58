"""Store values and intentions for approvals: a sub-agent's permission request, parked until a
person answers it or its deadline passes (denied then). The Store protocol includes
ApprovalStore; store/sql/approvals.py implements it once for every backend."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True, kw_only=True)
class Approval:
    id: str
    workspace: str
    run: int | None  # the run whose agent asked
    tool: str  # what the agent asked to use (Bash, Edit, …)
    input: Mapping[str, Any]  # what it asked to do with it
    tool_use_id: str | None = None
    created_at: float
    deadline: float
    decision: str | None = None  # allow | deny; None: not answered yet
    note: str | None = None
    answered_at: float | None = None
    answered_by: str | None = None  # who: a session, "cli", or "timeout"
    agent: str | None = None  # the workspace's agent (read with it)
    origin: str | None = None  # the session that dispatched the workspace


class ApprovalStore(Protocol):
    """Each request answered once: a compare-and-set on its decision."""

    def request_approval(self, approval: Approval, *, now: float) -> Approval | None: ...
    def get_approval(self, approval_id: str) -> Approval | None: ...
    def answer_approval(
        self, approval_id: str, decision: str, *, note: str | None, by: str, now: float, late: bool = False
    ) -> tuple[Approval | None, bool]: ...
