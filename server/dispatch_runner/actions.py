"""The runner's actions as typed requests: what the MCP tools and the CLI build and hand to the
runner, one frozen dataclass per action, and the `Actions` protocol the runner implements.

The dispatch fields are declared here once; tests check the MCP input schema and the CLI options
against DISPATCH_FIELDS, so a new argument is added in one place. Values are checked by the
runner (validate.py), not here: a request carries what the client sent.
"""

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, Final, Protocol

Progress = Callable[[float, float | None, str | None], Awaitable[None]]
Result = dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class DispatchRequest:
    task: str
    agent: str | None = None
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
class WaitRequest:
    workspaces: Sequence[str]
    timeout_s: float | None = 50.0
    mode: str = "all"


@dataclass(frozen=True, slots=True, kw_only=True)
class GcRequest:
    older_than_s: float | None = None
    dry_run: bool = False
    force: bool = False


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
    async def wait(self, req: WaitRequest, *, progress: Progress | None = None) -> Result: ...
    async def gc(self, req: GcRequest) -> Result: ...
    async def stop(self) -> Result: ...
    async def start(self) -> Result: ...
    async def poke(self) -> Result: ...
