"""The runner's actions as typed requests: what the MCP tools and the CLI build and hand to the
runner, one frozen dataclass per action, and the `Actions` protocol the runner implements.

The dispatch fields are declared here once; tests check the MCP input schema and the CLI options
against DISPATCH_FIELDS, so a new argument is added in one place. Values are checked by the
runner (validate.py), not here: a request carries what the client sent.
"""

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Final, Protocol

Progress = Callable[[float, float | None, str | None], Awaitable[None]]
Result = dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class DispatchRequest:
    task: str = ""  # empty only for a fan-out of `tasks`
    agent: str | Sequence[str] | None = None  # an agent, a preference list, or a route's name
    cwd: str | None = None
    repo: str | None = None
    template: str | None = None
    priority: str | None = None
    label: str | None = None
    idempotency_key: str | None = None
    max_wait_s: float | None = None
    timeout_s: float | None = None
    max_attempts: int | None = None
    requires: Sequence[str] | None = None
    host: str | None = None
    resume: str | None = None  # a workspace whose agent session this task continues
    max_cost_usd: float | None = None
    max_turns: int | None = None
    # routing and scheduling (DESIGN §8)
    preemptible: bool | None = None  # None: true below critical
    sandbox: str | None = None  # read-only | workspace-write | full
    ask: str | None = None  # off | on-miss | always
    not_before: str | float | None = None  # ISO time, or seconds from now
    after: Sequence[str] | None = None  # workspaces this one waits for
    after_mode: str | None = None  # success (default) | always
    tasks: Sequence[str] | None = None  # fan-out: one workspace per task, under one group
    items: Sequence[str] | None = None  # fan-out: `task` with {item}, once per item
    group_concurrency: int | None = None  # at most this many of the group released at once


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusRequest:
    workspace: str | None = None
    agent: str | None = None
    state: str | None = None
    limit: int | None = None
    log_lines: int = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class LogsRequest:
    workspace: str
    run: int | None = None
    stream: str = "stdout"
    offset: int = 0
    limit: int = 200
    cursor: int | None = None
    whole_lines: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class KillRequest:
    workspace: str | Sequence[str] | None = None
    agent: str | None = None
    all: bool = False
    tree: bool = False  # the workspaces' descendants too (sub-agents they dispatched)


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageRequest:
    workspace: str
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ApproveRequest:
    request: str  # an approval request's id (status lists the pending ones)
    decision: str  # allow | deny
    note: str | None = None  # told to the agent with a denial


@dataclass(frozen=True, slots=True, kw_only=True)
class PermissionRequest:
    """What a sub-agent's CLI asks its permission-prompt tool (the runner's approval server)."""

    workspace: str
    tool_name: str
    input: Mapping[str, Any]
    tool_use_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class WaitRequest:
    workspaces: Sequence[str]
    timeout_s: float | None = 50.0
    mode: str = "all"


@dataclass(frozen=True, slots=True, kw_only=True)
class GcRequest:
    older_than_s: float | None = None
    dry_run: bool = False
    force: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleRequest:
    action: str  # create | list | delete
    cron: str | None = None  # 5 fields (create)
    timezone: str | None = None  # IANA name (create; default UTC)
    dispatch: Mapping[str, Any] | None = None  # the dispatch arguments each tick submits (create)
    id: str | None = None  # the schedule (delete)


# the arguments a client may send to dispatch, in the order the tool lists them
DISPATCH_FIELDS: Final = tuple(f.name for f in fields(DispatchRequest))


class Actions(Protocol):
    """What a surface may ask of the runner; every answer is the tool's result object."""

    async def dispatch(
        self,
        req: DispatchRequest,
        *,
        origin: str | None = None,
        parent: str | None = None,
        client: str | None = None,
    ) -> Result: ...
    async def status(self, req: StatusRequest) -> Result: ...
    async def logs(self, req: LogsRequest) -> Result: ...
    async def kill(self, req: KillRequest) -> Result: ...
    async def message(self, req: MessageRequest) -> Result: ...
    async def approve(self, req: ApproveRequest, *, by: str = "cli") -> Result: ...
    async def wait(self, req: WaitRequest, *, progress: Progress | None = None) -> Result: ...
    async def gc(self, req: GcRequest) -> Result: ...
    async def schedule(
        self, req: ScheduleRequest, *, origin: str | None = None, client: str | None = None
    ) -> Result: ...
    async def stop(self) -> Result: ...
    async def start(self) -> Result: ...
    async def poke(self) -> Result: ...
