"""Approvals on the MCP side: the approval server a sub-agent's CLI starts, and the notice a
parked request becomes for the session that dispatched the workspace.

The server is what `ask: on-miss | always` gives Claude Code: `--mcp-config` starts
`dispatch-runner approval-server --workspace WS` over stdio and `--permission-prompt-tool
mcp__runner_approval__permission` names its one tool. Claude Code calls it with {tool_name,
input, tool_use_id} whenever it would have prompted a person; the tool parks the request with
the runner and returns, as text, the JSON Claude Code reads: {"behavior": "allow",
"updatedInput": {...}} or {"behavior": "deny", "message": "..."}.
"""

# No `from __future__ import annotations`: the SDK reads the tool's signature at registration.
import json
import logging
from collections.abc import Mapping
from typing import Annotated, Any

import anyio
import mcp_types as types
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.tools import Tool
from pydantic import Field

from ..actions import PermissionRequest
from ..config import Config
from ..config.sandboxes import APPROVAL_SERVER, APPROVAL_TOOL
from ..errors import DispatchError
from ..events import Event
from ..runner import Runner

log = logging.getLogger("dispatch_runner.mcp")

DESCRIPTION = (
    "Ask the person supervising this run for permission to use a tool. Called by the CLI itself "
    "(--permission-prompt-tool), not by the model. Returns the JSON text {behavior: allow, "
    "updatedInput} or {behavior: deny, message}."
)


def approval_notice(event: Event, view: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    """The channel notice of an `ApprovalRequested` event: what the sub-agent asks and how to
    answer (meta keys are identifiers: Claude Code drops any other)."""
    data, ws = event.data, event.workspace or "?"
    agent = str(data.get("agent") or view.get("agent") or "agent")
    request, tool = str(data.get("request")), str(data.get("tool"))
    deadline = str(data.get("deadline") or "")
    content = (
        f"approval: sub-agent {agent} in workspace {ws} asks to use {tool}: {data.get('input')}. "
        f"Answer with approve (request={request}, decision allow or deny, an optional note for "
        f"the agent) before {deadline}; unanswered, it is denied then."
    )
    meta = {
        "event": event.type,
        "workspace": ws,
        "agent": agent,
        "state": "running",
        "request": request,
        "tool": tool,
        "deadline": deadline,
    }
    return content, meta


def build_approval_server(runner: Runner, workspace: str) -> MCPServer:
    """The approval server of one workspace's runs: one tool, `permission`."""

    async def permission(
        tool_name: Annotated[str, Field(description="The tool the agent wants to use.")],
        input: Annotated[dict[str, Any], Field(description="What it wants to do with it.")],
        tool_use_id: Annotated[str | None, Field(description="The agent's id of the tool call.")] = None,
    ) -> types.CallToolResult:
        req = PermissionRequest(
            workspace=workspace, tool_name=tool_name, input=input, tool_use_id=tool_use_id
        )
        try:
            answer = await runner.ask_permission(req)
        except DispatchError as exc:  # no store, no workspace: nobody can say yes
            answer = {"behavior": "deny", "message": f"Permission denied: {exc}"}
        except Exception as exc:  # the tool edge: deny, and say why in the log
            log.exception("approval request of %s failed", workspace)
            answer = {"behavior": "deny", "message": f"Permission denied: the runner failed ({exc})"}
        text = json.dumps(answer, ensure_ascii=False)
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)])

    tool = Tool.from_function(
        permission, name=APPROVAL_TOOL, description=DESCRIPTION, structured_output=False
    )
    return MCPServer(APPROVAL_SERVER, tools=[tool], log_level="WARNING")


def serve_approvals(config: Config, workspace: str) -> int:
    """Serve the approval server over stdio until the CLI that started it closes stdin."""
    runner = Runner(config, kind="cli")
    try:
        anyio.run(build_approval_server(runner, workspace).run_stdio_async)
    finally:
        runner.close()
    return 0
