"""The `schedule` tool: cron schedules whose ticks fire as ordinary dispatches (create, list,
delete). The runner checks the dispatch arguments (runner/schedules.py) as the dispatch tool's
would be checked, so a schedule that could never fire is refused before anything is stored.
"""

# No `from __future__ import annotations`: the SDK reads the tool's signature at registration.
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Final, Literal

import mcp_types as types
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.tools import Tool
from pydantic import Field

from ..actions import ScheduleRequest
from ..runner import Runner
from .clients import Clients

NAME: Final = "schedule"
DESCRIPTION: Final = (
    "Run a dispatch on a cron schedule. action=create with cron (5 fields: minute hour "
    "day-of-month month day-of-week, e.g. '0 3 * * *' for 03:00 daily, '*/30 9-17 * * mon-fri'), "
    "timezone (IANA, e.g. 'Europe/Paris'; default UTC) and dispatch (an object of the dispatch "
    'tool\'s arguments, e.g. {"task": "...", "agent": "codex", "repo": "/src/app"}); it is checked '
    "as a dispatch now and refused, with the reason, if it would be. Each tick then dispatches "
    "it through the same queue and limits, exactly once across every runner sharing the store; "
    "its completion reaches you like your own dispatch's. Ticks missed while no runner served "
    "fire once, not once each. action=list shows every schedule; action=delete with id removes "
    "one. Returns {schedules: [{id, cron, timezone, next_run_at, last_run_at, last_workspace, "
    "last_error, dispatch, created_at, host}]} (times in UTC ISO 8601; host: the only host "
    "whose runners fire it, when its dispatch names a cwd or repo there)."
)
ANNOTATIONS: Final = types.ToolAnnotations(destructive_hint=True, open_world_hint=True)

Action = Annotated[
    Literal["create", "list", "delete"],
    Field(description="create a schedule, list them, or delete one."),
]
Cron = Annotated[
    str | None,
    Field(
        description="create: 5 fields, minute hour day-of-month month day-of-week "
        "('0 3 * * *': 03:00 every day; '*/15 * * * mon-fri': every 15 minutes on weekdays)."
    ),
]
Timezone = Annotated[
    str | None, Field(description="create: the IANA timezone the cron reads in (default UTC).")
]
Dispatch = Annotated[
    dict[str, Any] | None,
    Field(
        description="create: the dispatch tool's arguments each tick submits (task required; "
        "idempotency_key and resume are set or refused by the schedule)."
    ),
]
ScheduleId = Annotated[str | None, Field(description="delete: the schedule's id (sch-…).")]

Invoke = Callable[[str, Awaitable[dict[str, Any]]], Awaitable[types.CallToolResult]]


def build_tool(runner: Runner, clients: Clients, invoke: Invoke, *, prefix: str) -> Tool:
    """The tool, bound to `runner`; `invoke` turns the action's answer or error into the result."""

    async def schedule(
        ctx: Context,
        action: Action,
        cron: Cron = None,
        timezone: Timezone = None,
        dispatch: Dispatch = None,
        id: ScheduleId = None,
    ) -> types.CallToolResult:
        req = ScheduleRequest(action=action, cron=cron, timezone=timezone, dispatch=dispatch, id=id)
        client = clients.of(ctx.session)
        return await invoke(NAME, runner.schedule(req, origin=client.key, client=client.identity))

    return Tool.from_function(
        schedule,
        name=prefix + NAME,
        description=DESCRIPTION,
        annotations=ANNOTATIONS,
        structured_output=False,
    )
