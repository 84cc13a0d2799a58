"""The MCP surface: server `runner` over stdio, SSE or streamable HTTP.

One Runner and one background loop per process (not per connection): `runner.serve()` watches
the store, drains the queue and recovers runs; the Pusher turns bus events into notifications.
Stdio is served on the handshake-only loop (protocol 2025-11-25), the only era with a push path
and experimental capabilities, which Claude Code needs to register the `claude/channel`.
Leaving — stdin closed, SIGTERM — stops our own tasks only: agents keep running.

This is the only module family that imports the MCP SDK (about 1 s of import).
"""

import gc
import json
import logging
import sys
import warnings
from typing import Any, Final

import anyio
import anyio.abc
import mcp_types as types
from mcp.server.context import CallNext, HandlerResult, ServerMiddleware, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError
from mcp.shared.exceptions import MCPDeprecationWarning

from .. import __version__
from ..actions import LogsRequest, StatusRequest
from ..config import Config
from ..errors import InvalidArgument, UnknownWorkspace
from ..runner import Runner
from .clients import Clients, process_client, session_key
from .delivery import Outbox
from .private import lowlevel
from .push import LOG_LEVELS, Pusher
from .tools import argument_checker, build_tools
from .transports import CHANNEL_CAPABILITY, check_bind, serve_http, serve_stdio, stdin_closed

log = logging.getLogger("dispatch_runner.mcp")


INSTRUCTIONS: Final = """\
dispatch-runner runs coding-agent CLIs (claude, codex, gemini, ...) as background sub-agents, \
under per-pool concurrency limits, rate pacing and a durable priority queue. Hand it \
self-contained tasks and keep working while they run.

Tools:
- dispatch: start a task (task; optional agent such as "codex:gpt-5.4", cwd or repo, priority, \
label). Returns at once with a workspace id: running, or queued with position and eta_s (null \
when unknown; frozen=true while the queue is stopped); it then starts by itself.
- status: without arguments, the pools and their limits, "agents" (every configured agent, \
whether its CLI is installed here: pick from these) and recent workspaces; with workspace, its \
state, result summary and log tail. subscribe=true also sends this session every completion.
- logs: a workspace run's whole output, in pages (offset, limit; next_offset, eof).
- wait: block up to timeout_s (default 50) until workspaces finish; returns states and result \
summaries. Call again while done is false.
- kill: a workspace, every workspace of an agent, or all=true. stop / start: freeze / unfreeze \
the queue (running agents go on). poke: drain the queue now.

Results: when channels are enabled, each finished workspace you dispatched arrives as \
<channel source="runner" event="..." workspace="ws-..." agent="..." state="..." exit_code="..." \
duration_s="...">; its text starts with the outcome (completed, failed, killed or lost), then \
the reason and the first lines of the result. Events pushed: AgentCompleted, AgentFailed, \
AgentKilled, AgentLost, TaskDeadLettered (failed for good after its retries), GroupCompleted \
(a fan-out's end). The same arrive \
as MCP log messages. No polling needed; without channel events (or to be sure), use wait or \
status. Runs survive the end of this session; their results stay readable with status, and one \
that ends while no session of yours is connected arrives, once, when one connects again. Errors \
are sentences that say what to change (an unknown agent lists the configured ones).
"""


# ---- building the server -----------------------------------------------------------------------


def build_server(runner: Runner, *, identity: str | None = None) -> tuple[MCPServer, Clients, Pusher]:
    """The server, its connections and what pushes to them. `identity`: the client behind this
    process's connections (clients.process_client), None when each connection stands alone."""
    clients = Clients(runner.peer, identity)
    tools = build_tools(runner, clients, prefix=runner.config.tools_prefix)
    mcp = MCPServer(
        "runner",
        instructions=INSTRUCTIONS,
        version=__version__,
        tools=tools,
        log_level="WARNING",
        middleware=[_tracker(clients), _announce_channel, argument_checker(tools)],
    )
    _add_resources(mcp, runner)
    _add_handlers(mcp, clients)
    return mcp, clients, Pusher(runner, clients, Outbox(runner, clients))


def _tracker(clients: Clients) -> ServerMiddleware[Any]:
    async def track_clients(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        result = await call_next(ctx)
        if ctx.method != "initialize":  # known from notifications/initialized on: pushes may start
            clients.of(ctx.session, getattr(ctx.request, "headers", None))  # HTTP: a starlette Request
        return result

    return track_clients


async def _announce_channel(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
    # The HTTP apps build their own initialization options, without experimental capabilities.
    result = await call_next(ctx)
    if ctx.method == "initialize" and isinstance(result, dict):
        result.setdefault("capabilities", {}).setdefault("experimental", {})[CHANNEL_CAPABILITY] = {}
    return result


def _add_resources(mcp: MCPServer, runner: Runner) -> None:
    async def view(workspace: str) -> dict[str, Any]:
        try:
            result: dict[str, Any] = await runner.status(StatusRequest(workspace=workspace))
        except UnknownWorkspace as exc:
            raise ResourceNotFoundError(str(exc)) from exc
        return result

    @mcp.resource(
        "runner://status",
        name="status",
        mime_type="application/json",
        description="The runner's overall status (the status tool without arguments).",
    )
    async def status_resource() -> str:
        return json.dumps(await runner.status(StatusRequest()))

    @mcp.resource(
        "runner://workspaces/{id}",
        name="workspace",
        mime_type="application/json",
        description="One workspace's status (state, agent, times, result summary, log tail).",
    )
    async def workspace_resource(id: str) -> str:
        return json.dumps(await view(id))

    @mcp.resource(
        "runner://workspaces/{id}/log",
        name="workspace-log",
        mime_type="text/plain",
        description="A workspace's latest run output (stdout), whole up to 2,000 lines; "
        "the logs tool pages through longer ones.",
    )
    async def workspace_log(id: str) -> str:
        try:
            page = await runner.logs(LogsRequest(workspace=id, limit=2000))
        except UnknownWorkspace as exc:
            raise ResourceNotFoundError(str(exc)) from exc
        more = (
            ""
            if page["eof"]
            else (
                f"\n… more: the logs tool with workspace={id} "
                f"run={page['run']} offset={page['next_offset']}\n"
            )
        )
        return "\n".join(page["lines"]) + more


def _add_handlers(mcp: MCPServer, clients: Clients) -> None:
    async def subscribe(
        ctx: ServerRequestContext[Any, Any], params: types.SubscribeRequestParams
    ) -> types.EmptyResult:
        clients.of(ctx.session).resources.add(str(params.uri))
        return types.EmptyResult()

    async def unsubscribe(
        ctx: ServerRequestContext[Any, Any], params: types.UnsubscribeRequestParams
    ) -> types.EmptyResult:
        clients.of(ctx.session).resources.discard(str(params.uri))
        return types.EmptyResult()

    async def set_level(
        ctx: ServerRequestContext[Any, Any], params: types.SetLevelRequestParams
    ) -> types.EmptyResult:
        if params.level in LOG_LEVELS:
            clients.of(ctx.session).log_level = params.level
        return types.EmptyResult()

    # MCPServer registers none of these; the low-level server is where spec handlers live.
    low = lowlevel(mcp)
    low.add_request_handler("resources/subscribe", types.SubscribeRequestParams, subscribe)
    low.add_request_handler("resources/unsubscribe", types.UnsubscribeRequestParams, unsubscribe)
    low.add_request_handler("logging/setLevel", types.SetLevelRequestParams, set_level)


# ---- serving -----------------------------------------------------------------------------------


def serve(
    config: Config,
    *,
    transport: str = "stdio",
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    session: str | None = None,
) -> int:
    """Serve MCP until stdin closes (stdio) or SIGTERM/SIGINT. Returns the exit status.
    `session`: the key naming this server's client (--session, DISPATCH_RUNNER_SESSION)."""
    if transport not in ("stdio", "sse", "http"):
        raise InvalidArgument("transport", f"unknown transport {transport!r}; use stdio, sse or http")
    named = session_key(session) if session else None  # a bad key is refused before anything starts
    if transport != "stdio":
        check_bind(host, token)
    elif stdin_closed():
        sys.stderr.write(
            "dispatch-runner: stdin is closed: no MCP client to serve (a client starts "
            "'dispatch-runner serve' with a pipe; see the README)\n"
        )
        return 0
    # send_log_message is deprecated only for the 2026 era; our clients speak 2025-11-25
    warnings.filterwarnings("ignore", category=MCPDeprecationWarning)
    runner = Runner(config, kind="stdio" if transport == "stdio" else "http")
    try:
        identity = process_client(transport, peer=runner.peer, named=named)
        where = _where(transport, host, port)
        sys.stderr.write(
            f"dispatch-runner {__version__}: serving MCP server 'runner' over {where}; store "
            f"{runner.store_url}; config {config.source}; home {config.home}; "
            f"client {identity or 'none (each connection its own)'}\n"
        )
        sys.stderr.flush()
        mcp, _, pusher = build_server(runner, identity=identity)
        # The SDK's import graph is large: moved out of the collector's reach, it costs neither
        # GC pauses while serving nor ~0.6 s of collection at exit (stdin closed -> exit < 1 s).
        gc.freeze()
        if transport == "stdio":
            anyio.run(serve_stdio, runner, mcp, pusher)
        else:
            anyio.run(serve_http, runner, mcp, pusher, transport, host, port, token)
    finally:
        runner.close()
    return 0


def _where(transport: str, host: str, port: int) -> str:
    if transport == "stdio":
        return "stdio"
    kind, path = ("streamable HTTP", "mcp") if transport == "http" else ("SSE", "sse")
    base = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    return f"{kind} at {base}/{path} (dashboard at {base}/)"
