"""The MCP tools' arguments: type, bounds and the description a model reads, one alias each.

The SDK builds each tool's input schema from these annotations. Numbers are strict: "5" or true
is refused, never converted; NaN and infinities too. The dispatch arguments match
actions.DispatchRequest (tests/test_actions.py checks it).
"""

# No `from __future__ import annotations`: the SDK reads these annotations at registration.
from typing import Annotated, Any, Final, Literal

from pydantic import Field

from ..policy import MAX_ATTEMPTS_LIMIT, MAX_QUEUE_WAIT_S, MAX_TIMEOUT_S, MAX_WAIT_TIMEOUT_S
from ..validate import MAX_AFTER, MAX_GROUP_SIZE

STRICT: Final[dict[str, Any]] = {"strict": True, "allow_inf_nan": False}
PriorityName = Literal["critical", "high", "medium", "low"]
StateName = Literal["queued", "running", "completed", "failed", "killed", "lost", "cancelled"]

# ---- dispatch -----------------------------------------------------------------------------------
Task = Annotated[
    str,
    Field(
        description="What the sub-agent should do: a complete, "
        "self-contained instruction (it does not see this conversation). Required, except for a "
        "fan-out of tasks."
    ),
]
Agent = Annotated[
    str | Annotated[list[str], Field(min_length=1, max_length=8)] | None,
    Field(
        description="Which agent runs it, base[:model]: 'claude', 'claude:opus', 'codex:gpt-5.4'; "
        "or a preference list (the first with room runs it, one that hits a rate limit passes it "
        "on): ['claude:opus', 'codex']; or a route's name from agents.yaml. Default: the "
        "configured default agent.",
    ),
]
Cwd = Annotated[
    str | None,
    Field(
        description="Directory to run in; must lie inside the "
        "configured allowed roots. Default: a fresh empty "
        "directory."
    ),
]
Repo = Annotated[
    str | None,
    Field(
        description="A git repository instead of cwd: the agent "
        "works in a fresh worktree on branch runner/<workspace>, "
        "leaving the checkout untouched."
    ),
]
Template = Annotated[
    str | None,
    Field(
        description="Prompt template that wraps the task (agents.yaml templates; built-ins: coding, none)."
    ),
]
Priority = Annotated[
    PriorityName | None, Field(description="Queue order when the pool is full. Default medium.")
]
Label = Annotated[str | None, Field(description="Short label shown in status and in the completion event.")]
IdempotencyKey = Annotated[
    str | None,
    Field(
        description="Dispatching again with the same "
        "key returns the existing workspace "
        "(deduplicated: true) instead of a duplicate."
    ),
]
MaxWait = Annotated[
    float | None,
    Field(
        description="Refuse, with the estimated wait, "
        "rather than queue longer than this many "
        "seconds (0 to 604800).",
        ge=0,
        le=MAX_QUEUE_WAIT_S,
        **STRICT,
    ),
]
Timeout = Annotated[
    float | None,
    Field(
        description="Kill the run after this many seconds (up to 604800, 7 days).",
        gt=0,
        le=MAX_TIMEOUT_S,
        **STRICT,
    ),
]
MaxAttempts = Annotated[
    int | None,
    Field(
        description="Tries for a failing run, 1 to 100 (default from agents.yaml, usually 3).",
        ge=1,
        le=MAX_ATTEMPTS_LIMIT,
        **STRICT,
    ),
]
Requires = Annotated[
    list[str] | None,
    Field(
        description='Host labels the run needs (agents.yaml host: labels), e.g. ["gpu"]: only a '
        "host that has them all runs it.",
        max_length=16,
    ),
]
Host = Annotated[
    str | None,
    Field(
        description="Run on this host of the fleet only (its DISPATCH_RUNNER_HOST_ID). Without cwd "
        "or repo a run goes to any host that has its agent; with them, it stays on this one."
    ),
]

Resume = Annotated[
    str | None,
    Field(
        description="A workspace id: task is a follow-up that continues that workspace's agent "
        "session in its directory, as a new run (give only task, priority or label)."
    ),
]
Preemptible = Annotated[
    bool | None,
    Field(
        description="Whether a critical dispatch into a full pool may stop this run and queue it "
        "again (default: true below critical, where the pool allows preemption).",
        strict=True,
    ),
]
Sandbox = Annotated[
    Literal["read-only", "workspace-write", "full"] | None,
    Field(
        description="What the sub-agent may do without asking: read-only, workspace-write (edit "
        "its workspace) or full; mapped to its CLI's own flags. Default: its pool's; never wider "
        "than the pool's ceiling, nor than the run that dispatches it."
    ),
]
Ask = Annotated[
    Literal["off", "on-miss", "always"] | None,
    Field(
        description="When the sub-agent needs a permission its sandbox lacks: off (refused), "
        "on-miss or always (parked: you get an approval event and answer with approve). Only for "
        "agents with a permission-prompt channel (claude). Default: its pool's, else off."
    ),
]
MaxCostUsd = Annotated[
    float | None,
    Field(
        description="Stop the run (reason budget, partial result kept) once it reports costing "
        "more than this many US dollars.",
        gt=0,
        le=100_000,
        **STRICT,
    ),
]
MaxTurns = Annotated[
    int | None,
    Field(
        description="Stop the run (reason budget) after this many agent turns.", ge=1, le=10_000, strict=True
    ),
]

NotBefore = Annotated[
    str | Annotated[float, Field(strict=True)] | None,
    Field(
        description="Start no earlier than this: an ISO-8601 time with Z or an offset "
        "(2026-05-01T09:00:00Z), or a number of seconds from now; at most 7 days ahead, a past "
        "time means now."
    ),
]
After = Annotated[
    list[str] | None,
    Field(
        description="Workspace ids (a group id stands for its members) this task waits for: it "
        "starts once every one has ended. Unknown ids are refused.",
        max_length=MAX_AFTER,
    ),
]
AfterMode = Annotated[
    Literal["success", "always"] | None,
    Field(
        description="With after: success (default) runs it only if every one completed, else it is "
        'cancelled with reason "after: <id> <state>"; always runs it however they ended.'
    ),
]
Tasks = Annotated[
    list[str] | None,
    Field(
        description="Fan-out: one workspace per task, under one group id (leave task out). "
        f"1 to {MAX_GROUP_SIZE} tasks; one invalid task queues none.",
        max_length=MAX_GROUP_SIZE,
    ),
]
Items = Annotated[
    list[str] | None,
    Field(
        description="Fan-out: task holds {item}; one workspace per item, {item} replaced by it "
        f"(1 to {MAX_GROUP_SIZE} items, each one's label).",
        max_length=MAX_GROUP_SIZE,
    ),
]
GroupConcurrency = Annotated[
    int | None,
    Field(
        description="Fan-out: at most this many of the group queued or running at once; the "
        "others start, in order, as those end.",
        ge=1,
        le=MAX_GROUP_SIZE,
        strict=True,
    ),
]

# ---- message ------------------------------------------------------------------------------------
MessageWorkspace = Annotated[str, Field(description="The workspace id to send the message to.")]
MessageText = Annotated[
    str,
    Field(
        description="The message: delivered live to its running agent when that agent reads input, "
        "else the input of a run that resumes its session (now, or when the current run ends)."
    ),
]

# ---- status -------------------------------------------------------------------------------------
StatusWorkspace = Annotated[
    str | None, Field(description="A workspace id for its details; omit for the overview.")
]
StatusAgent = Annotated[str | None, Field(description="Overview: only this agent's workspaces.")]
State = Annotated[StateName | None, Field(description="Overview: only workspaces in this state.")]
StatusLimit = Annotated[
    int | None,
    Field(description="Overview: at most this many workspace rows (default 20).", ge=1, le=1000, strict=True),
]
Subscribe = Annotated[
    bool | None,
    Field(
        description="true: this session receives every "
        "workspace's completion event; false: only its "
        "own dispatches'.",
        strict=True,
    ),
]

# ---- wait ---------------------------------------------------------------------------------------
WaitWorkspaces = Annotated[
    list[str] | str, Field(description="Workspace ids to wait for (one id or a list).")
]
WaitTimeout = Annotated[
    float,
    Field(
        description="Return after this many seconds even if not done (default 50, at most 3600).",
        ge=0,
        le=MAX_WAIT_TIMEOUT_S,
        **STRICT,
    ),
]
WaitMode = Annotated[
    Literal["all", "any"], Field(description="all: until every workspace is finished; any: until one is.")
]

# ---- kill ---------------------------------------------------------------------------------------
KillWorkspace = Annotated[str | None, Field(description="The workspace id to kill or cancel.")]
KillAgent = Annotated[
    str | None, Field(description="Kill every workspace of this agent (base or base:model).")
]
KillAll = Annotated[
    bool, Field(description="Kill every running and cancel every queued workspace.", strict=True)
]
KillTree = Annotated[
    bool,
    Field(description="Also every sub-agent the workspace dispatched, at any depth.", strict=True),
]

# ---- logs ---------------------------------------------------------------------------------------
LogsWorkspace = Annotated[str, Field(description="The workspace id.")]
LogsRun = Annotated[
    int | None,
    Field(
        description="Which run (1, 2 ... : retries start new ones). Default: the latest.", ge=1, strict=True
    ),
]
LogsStream = Annotated[
    Literal["stdout", "stderr", "both"],
    Field(description="stdout (default), stderr, or both (stdout, then stderr lines marked '[stderr] ')."),
]
LogsOffset = Annotated[
    int,
    Field(
        description="First line to return, 0-based; pass the previous page's next_offset.", ge=0, strict=True
    ),
]
LogsLimit = Annotated[
    int,
    Field(
        description="At most this many lines (1-2000; a page also stops at 256 KiB).",
        ge=1,
        le=2000,
        strict=True,
    ),
]

# ---- approve ------------------------------------------------------------------------------------
ApprovalId = Annotated[
    str, Field(description="The approval request's id (apr-…), from its event or status's approvals.")
]
Decision = Annotated[Literal["allow", "deny"], Field(description="allow or deny what the sub-agent asked.")]
ApprovalNote = Annotated[
    str | None, Field(description="Optional: told to the sub-agent with the answer (why, or what instead).")
]
