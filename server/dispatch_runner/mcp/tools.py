"""The MCP tools: dispatch, status, kill, poke, stop, start, wait.

Each tool parses its arguments, builds one typed request (actions.py) for the runner and returns the
action's object as structured content plus the same JSON as text. A DispatchError becomes a tool
error whose text is exactly its sentence; an argument that breaks the schema becomes a tool error
naming the argument and what it must be (the SDK's own message is a pydantic dump).
"""

# No `from __future__ import annotations`: the SDK reads these signatures at registration.
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import mcp_types as types
from mcp.server.context import CallNext, HandlerResult, ServerMiddleware, ServerRequestContext
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.tools import Tool
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError

from ..actions import (
    DISPATCH_FIELDS,
    ApproveRequest,
    DispatchRequest,
    KillRequest,
    LogsRequest,
    MessageRequest,
    StatusRequest,
    WaitRequest,
)
from ..errors import DispatchError
from ..runner import Runner
from . import arguments as args
from . import schedules
from .clients import Clients
from .delivery import handed_over

log = logging.getLogger("dispatch_runner.mcp")

NAMES: Final = ("dispatch", "status", "logs", "kill", "message", "poke", "stop", "start", "wait", "approve")

DESCRIPTIONS: Final = {
    "dispatch": (
        "Start a sub-agent (another coding-agent CLI, e.g. claude or codex) on a task in the "
        "background and return at once with its workspace id. The outcome arrives later as a "
        '<channel source="runner"> event when channels are enabled; otherwise call wait (or '
        "status) with the workspace id. Each agent pool has concurrency limits: when it is full "
        "the task is queued (status queued, position, eta_s: null when unknown) and starts by "
        "itself; frozen=true says the queue is stopped. max_wait_s refuses instead of queueing "
        "too long. The configured agents are listed by status. Returns {workspace, status, "
        "agent, position, eta_s, path, deduplicated, frozen, host} (host: where it runs; null "
        "while any host of the fleet may take it). resume=<workspace> sends task as a follow-up "
        "that continues that workspace's agent session. max_cost_usd / max_turns stop a run "
        "that spends more (reason budget). not_before starts it later; after=[ids] once those "
        "ended (status shows held and after meanwhile). Fan-out: tasks=[...] (or task with "
        "{item} and items=[...]) makes one workspace per entry under one group and returns "
        "{group, size, workspaces: [...]}; group_concurrency caps how many run at once; the "
        "group's end is one channel event with every item's outcome; wait and status take the "
        "group id."
    ),
    "message": (
        "Send a message to a workspace's agent. A running agent that reads input (claude) gets it "
        "live; otherwise it becomes the input of a new run that resumes the agent's session (now "
        "if the workspace has ended, else when its current run ends). Returns {workspace, "
        'delivered: "live" | "queued", state}. Fails when the agent has no session to resume.'
    ),
    "status": (
        "Show the runner. Without workspace: per pool running/queued counts, limits, backoff, "
        "daily use and next spawn time, whether the queue is frozen, counts per state and the "
        "latest workspaces (filter with agent, state, limit). With workspace: its state, agent, "
        "pid, runs, times, exit code, reason, result summary, log tail, path and branch (and "
        "not_before, held, after, group while it waits). With a group id (grp-…): its state, "
        "counts and every member's state and outcome. Cheap; "
        "call it any time. subscribe=true makes this session receive the completion event of "
        "every workspace, not only of those it dispatched (false undoes it)."
    ),
    "kill": (
        "Stop work: one workspace id (a group id: all its members), every workspace of an agent, "
        "or all=true; tree=true takes "
        "the sub-agents a workspace dispatched too. A running agent gets SIGTERM on its process "
        "group (SIGKILL after a grace period) and ends as killed; a queued one is cancelled. "
        "Returns {killed: [ids], cancelled: [ids]}."
    ),
    "logs": (
        "Read a workspace's agent output in pages: one run (default the latest), stdout, stderr "
        "or both (stderr follows stdout once the run is over), from line offset. Returns "
        "{lines, next_offset, eof, more, run, runs, state}; call again with the same run and "
        "offset=next_offset until eof is true (a running run grows: eof stays false). Lines "
        "over 8,000 characters are cut."
    ),
    "poke": (
        "Drain the queue now and recover runs whose process vanished. Normally automatic; use it "
        "when queued work seems stuck. Returns {spawned: [ids]}."
    ),
    "stop": (
        "Freeze the queue: running agents go on and dispatch still queues, but nothing new starts "
        "until start is called. Returns {frozen: true}."
    ),
    "start": "Unfreeze the queue; queued work starts as slots allow. Returns {frozen: false}.",
    "approve": (
        "Answer a sub-agent's permission request: it wants to do something its sandbox does not "
        "allow (run a command, edit a file) and waits. Requests arrive as channel events "
        '(event="ApprovalRequested", with request, tool and what it asked) and are listed by '
        "status under approvals. decision allow lets it go ahead, deny refuses (note: told to "
        "the agent). Unanswered by its deadline it is denied. An answer is final. Returns "
        "{request, workspace, tool, decision, note}."
    ),
    "wait": (
        "Wait until the given workspaces (a group id stands for all its members) finish (mode "
        "all) or one of them does (mode any), or "
        "until timeout_s passes (default 50 s, under common 60 s tool timeouts), sending progress "
        "notifications meanwhile. Returns {done, workspaces: [{workspace, state, exit_code, "
        "summary, duration_s}], undelivered} (undelivered: their completions no session had "
        "received yet; now they count as received here). If done is false, call it again. For "
        "clients that do not show channel events this is how results arrive."
    ),
}

_PHRASES: Final = {
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "list_type": "must be a list of workspace ids",
}


def ok(data: Mapping[str, Any]) -> types.CallToolResult:
    payload = dict(data)
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)], structured_content=payload
    )


def failed(sentence: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=sentence)], is_error=True)


async def invoke(action: str, call: Awaitable[dict[str, Any]]) -> types.CallToolResult:
    """One runner action; its DispatchError is the tool error, its sentence unchanged."""
    try:
        result = await call
    except DispatchError as exc:
        return failed(str(exc))
    except Exception as exc:  # the tool edge: log it, and give the model more than "Error executing"
        log.exception("%s failed", action)
        return failed(
            f"{action} failed unexpectedly ({type(exc).__name__}: {exc}); the server log "
            "has the details. Retry, or check status."
        )
    return ok(result)


def build_tools(runner: Runner, clients: Clients, *, prefix: str) -> list[Tool]:
    """The tools, named `prefix` + name, bound to `runner`."""
    fns = {**_session_tools(runner, clients), **_plain_tools(runner)}
    read_only = types.ToolAnnotations(read_only_hint=True)
    annotations: dict[str, types.ToolAnnotations] = {
        "status": read_only,
        "wait": read_only,
        "logs": read_only,
        "kill": types.ToolAnnotations(destructive_hint=True),
        "message": types.ToolAnnotations(destructive_hint=True, open_world_hint=True),
        # it starts processes that may change files, reach the network and spend money
        "dispatch": types.ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=True),
    }
    return [
        Tool.from_function(
            fns[name],
            name=prefix + name,
            description=DESCRIPTIONS[name],
            annotations=annotations.get(name),
            structured_output=False,
        )
        for name in NAMES
    ] + [schedules.build_tool(runner, clients, invoke, prefix=prefix)]


def _session_tools(runner: Runner, clients: Clients) -> dict[str, Callable[..., Any]]:
    """The tools that need the calling session: status (subscribe) and wait (progress); dispatch
    (its origin) has its own."""

    async def status(
        ctx: Context,
        workspace: args.StatusWorkspace = None,
        agent: args.StatusAgent = None,
        state: args.State = None,
        limit: args.StatusLimit = None,
        subscribe: args.Subscribe = None,
    ) -> types.CallToolResult:
        if subscribe is not None:
            clients.of(ctx.session).everything = subscribe
        req = StatusRequest(workspace=workspace, agent=agent, state=state, limit=limit)
        return await invoke("status", runner.status(req))

    async def wait(
        ctx: Context,
        workspaces: args.WaitWorkspaces,
        timeout_s: args.WaitTimeout = 50.0,
        mode: args.WaitMode = "all",
    ) -> types.CallToolResult:
        async def progress(value: float, total: float | None, message: str | None) -> None:
            await ctx.report_progress(value, total, message)

        async def waited() -> dict[str, Any]:
            result = await runner.wait(req, progress=progress)
            await handed_over(runner, clients.of(ctx.session), result["undelivered"])
            return result

        ids = [workspaces] if isinstance(workspaces, str) else workspaces
        req = WaitRequest(workspaces=ids, timeout_s=timeout_s, mode=mode)
        return await invoke("wait", waited())

    async def approve(
        ctx: Context, request: args.ApprovalId, decision: args.Decision, note: args.ApprovalNote = None
    ) -> types.CallToolResult:
        req = ApproveRequest(request=request, decision=decision, note=note)
        return await invoke("approve", runner.approve(req, by=f"session {clients.of(ctx.session).key}"))

    return {"dispatch": _dispatch_tool(runner, clients), "status": status, "wait": wait, "approve": approve}


def _dispatch_tool(runner: Runner, clients: Clients) -> Callable[..., Any]:
    async def dispatch(
        ctx: Context,
        task: args.Task = "",
        agent: args.Agent = None,
        cwd: args.Cwd = None,
        repo: args.Repo = None,
        template: args.Template = None,
        priority: args.Priority = None,
        label: args.Label = None,
        idempotency_key: args.IdempotencyKey = None,
        max_wait_s: args.MaxWait = None,
        timeout_s: args.Timeout = None,
        max_attempts: args.MaxAttempts = None,
        requires: args.Requires = None,
        host: args.Host = None,
        resume: args.Resume = None,
        max_cost_usd: args.MaxCostUsd = None,
        max_turns: args.MaxTurns = None,
        preemptible: args.Preemptible = None,
        sandbox: args.Sandbox = None,
        ask: args.Ask = None,
        not_before: args.NotBefore = None,
        after: args.After = None,
        after_mode: args.AfterMode = None,
        tasks: args.Tasks = None,
        items: args.Items = None,
        group_concurrency: args.GroupConcurrency = None,
    ) -> types.CallToolResult:
        # the arguments are DispatchRequest's fields, by name and in order (tests/test_actions.py)
        given = locals()
        req = DispatchRequest(**{name: given[name] for name in DISPATCH_FIELDS})
        client = clients.of(ctx.session)
        return await invoke("dispatch", runner.dispatch(req, origin=client.key, client=client.identity))

    return dispatch


def _plain_tools(runner: Runner) -> dict[str, Callable[..., Any]]:
    """The tools that need no session: logs, kill, poke, stop, start."""

    async def kill(
        workspace: args.KillWorkspace = None,
        agent: args.KillAgent = None,
        all: args.KillAll = False,
        tree: args.KillTree = False,
    ) -> types.CallToolResult:
        req = KillRequest(workspace=workspace, agent=agent, all=all, tree=tree)
        return await invoke("kill", runner.kill(req))

    async def message(workspace: args.MessageWorkspace, text: args.MessageText) -> types.CallToolResult:
        return await invoke("message", runner.message(MessageRequest(workspace=workspace, text=text)))

    async def poke() -> types.CallToolResult:
        return await invoke("poke", runner.poke())

    async def stop() -> types.CallToolResult:
        return await invoke("stop", runner.stop())

    async def start() -> types.CallToolResult:
        return await invoke("start", runner.start())

    async def logs(
        workspace: args.LogsWorkspace,
        run: args.LogsRun = None,
        stream: args.LogsStream = "stdout",
        offset: args.LogsOffset = 0,
        limit: args.LogsLimit = 200,
    ) -> types.CallToolResult:
        req = LogsRequest(workspace=workspace, run=run, stream=stream, offset=offset, limit=limit)
        return await invoke("logs", runner.logs(req))

    return {"logs": logs, "kill": kill, "message": message, "poke": poke, "stop": stop, "start": start}


# ---- argument checking -------------------------------------------------------------------------


def argument_problem(tool: Tool, arguments: Mapping[str, Any]) -> str | None:
    """The sentence telling a model what is wrong with its arguments, or None."""
    fields = tool.fn_metadata.arg_model.model_fields
    unknown = sorted(set(arguments) - set(fields))
    if unknown:
        return f"{tool.name} has no argument {unknown[0]!r}; its arguments are: {', '.join(fields) or 'none'}"
    try:
        tool.fn_metadata.validate_arguments(dict(arguments))
    except ValidationError as exc:
        return _describe(exc, tool)
    return None


def _describe(exc: ValidationError, tool: Tool) -> str:
    err = _most_telling(exc.errors())
    # keep the argument and list indices; drop union members ("list[str]") from the location
    loc = [str(part) for i, part in enumerate(err["loc"]) if i == 0 or isinstance(part, int)]
    name = loc[0] if loc else "arguments"
    where = ".".join(loc) or "arguments"
    kind, ctx = err["type"], err.get("ctx") or {}
    got = json.dumps(err.get("input"), default=str)  # as the model wrote it: null, "x", [1]
    got = got if len(got) <= 60 else got[:57] + "..."
    if kind == "missing":
        info = tool.fn_metadata.arg_model.model_fields.get(name)
        hint = f": {info.description}" if info is not None and info.description else ""
        return f"{tool.name} needs the argument {name}{hint}"
    if kind == "literal_error":
        return f"{where} must be one of {ctx.get('expected')} (got {got})"
    bounds = {
        "greater_than_equal": ">= {ge}",
        "greater_than": "> {gt}",
        "less_than_equal": "<= {le}",
        "less_than": "< {lt}",
    }
    if kind in bounds:
        return f"{where} must be {bounds[kind].format(**ctx)} (got {got})"
    phrase = _PHRASES.get(kind) or str(err["msg"])[:1].lower() + str(err["msg"])[1:]
    return f"{where} {phrase} (got {got})"


def _most_telling(errors: list[Any]) -> Any:
    """Of a union's errors for the first bad argument (`agent`: a string, or a list), the one about
    the shape the model sent: a bound or an inner element rather than "must be a string"."""
    first = errors[0]
    same = [e for e in errors if e["loc"][:1] == first["loc"][:1]]
    telling = [e for e in same if not str(e["type"]).endswith("_type")]
    if telling:
        return telling[0]
    return max(same, key=lambda e: len(e["loc"]))


def argument_checker(tools: list[Tool]) -> ServerMiddleware[Any]:
    """Server middleware: a `tools/call` whose arguments break the schema is answered with a tool
    error naming the argument, before the SDK validates it (its text would be a pydantic dump)."""
    by_name = {tool.name: tool for tool in tools}

    async def check_arguments(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        params = ctx.params
        if ctx.method == "tools/call" and isinstance(params, Mapping):
            tool = by_name.get(str(params.get("name")))
            arguments = params.get("arguments") or {}
            if tool is not None and isinstance(arguments, Mapping):
                problem = argument_problem(tool, arguments)
                if problem is not None:
                    log.info("tool %s: %s", tool.name, problem)
                    result = failed(problem).model_dump(by_alias=True, mode="json", exclude_none=True)
                    if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
                        result["resultType"] = "complete"
                    return result
        return await call_next(ctx)

    return check_arguments
