"""What the MCP surface pushes when the runner's bus reports an event.

On a finished run: `notifications/claude/channel` to a session of the client that dispatched it,
exactly once (the outbox, delivery.py), and live to every session with `notify: all` or that
opted in with `status(subscribe=true)`; an MCP log message to every session; and
`notifications/resources/updated` to subscribers.
"""

import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, get_args

import anyio
import anyio.abc
from mcp.server.connection import Connection
from mcp_types import LoggingLevel

from ..actions import StatusRequest
from ..errors import DispatchError
from ..events import TERMINAL_EVENTS, Event
from ..policy import duration_text
from ..runner import Runner
from .approvals import approval_notice
from .clients import Client, Clients
from .group_notice import GROUP_COMPLETED, group_message

if TYPE_CHECKING:  # delivery.py builds on this module's messages
    from .delivery import Outbox

__all__ = [  # Clients too: it lived here before clients.py
    "CHANNEL_METHOD",
    "Clients",
    "Pusher",
    "channel_message",
    "is_pushed",
    "resource_uris",
    "send_channel",
    "workspace_view",
]
log = logging.getLogger("dispatch_runner.mcp")

CHANNEL_METHOD: Final = "notifications/claude/channel"
FINISHED_STATES: Final = frozenset({"completed", "failed", "killed", "lost"})
LOG_LEVELS: Final[tuple[LoggingLevel, ...]] = get_args(LoggingLevel)
SEND_TIMEOUT_S: Final = 2.0  # a client that stops reading must not stall pushes to the others
SUMMARY_LINES: Final = 8
SUMMARY_CHARS: Final = 800
SEEN_EVENTS: Final = 4096
NOTICES: Final = frozenset({"AgentStalled", "AgentRetrying", "AgentPreempted", "ApprovalRequested"})


def is_pushed(event: Event) -> bool:
    """A run that ended the workspace. A dead-lettered failure is pushed once, as TaskDeadLettered.
    A fan-out member's end is not: its group's (GroupCompleted, one notice for every item) is."""
    if event.type == GROUP_COMPLETED:
        return True
    if event.data.get("group"):
        return False
    if event.type not in TERMINAL_EVENTS or event.data.get("state") not in FINISHED_STATES:
        return False
    return not (event.type in ("AgentFailed", "AgentLost") and event.data.get("dead_letter"))


def resource_uris(event: Event) -> set[str]:
    uris = {"runner://status"}
    if event.workspace:
        uris |= {f"runner://workspaces/{event.workspace}", f"runner://workspaces/{event.workspace}/log"}
    return uris


def _first_lines(text: str | None) -> str:
    """The first lines of a result, as lines: a list or a diff stays readable."""
    lines = [line.rstrip() for line in (text or "").strip("\n").splitlines()]
    kept = "\n".join(lines[:SUMMARY_LINES])
    if len(kept) > SUMMARY_CHARS:
        kept = kept[: SUMMARY_CHARS - 1] + "…"
    elif len(lines) > SUMMARY_LINES:
        kept += f"\n… ({len(lines) - SUMMARY_LINES} more lines)"
    return kept


def channel_message(event: Event, view: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    """(content, meta) of a channel event: one paragraph for a person or a model, and string
    meta under identifier keys (Claude Code drops any other key silently)."""
    if event.type == GROUP_COMPLETED:  # a fan-out's end: a line per item
        return group_message(event)
    return _workspace_message(event, view)


def _workspace_message(event: Event, view: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    data = event.data
    ws = event.workspace or "?"
    state = str(data.get("state") or view.get("state") or "finished")
    agent = str(data.get("agent") or view.get("agent") or "agent")
    exit_code, duration = data.get("exit_code"), data.get("duration_s")
    label = f' ("{_one_line(view["label"])}")' if view.get("label") else ""
    # the outcome first: a client that shows only the start of the line still shows it
    head = f"{state}: sub-agent {agent} in workspace {ws}{label}"
    if duration is not None:
        head += f" after {duration_text(float(duration))}"
    if exit_code is not None:
        head += f", exit code {exit_code}"
    parts = [head + "."]
    reason = str(view.get("reason") or data.get("reason") or "").strip().rstrip(".")
    if state != "completed" and reason:
        parts.append(f"Reason: {reason}.")
    summary = _first_lines(view.get("summary"))
    if summary:
        parts.append(f"{'Result' if state == 'completed' else 'Last output'}:\n{summary}")
    parts.append(f"Details: status with workspace={ws}; the whole output: logs with workspace={ws}.")
    meta = {"event": event.type, "workspace": ws, "agent": agent, "state": state}
    if exit_code is not None:
        meta["exit_code"] = str(exit_code)
    if duration is not None:
        meta["duration_s"] = f"{float(duration):.3f}"
    if data.get("ended_reason"):
        meta["reason"] = str(data["ended_reason"])
    if view.get("host"):
        meta["host"] = str(view["host"])
    if view.get("cost_usd") is not None:
        meta["cost_usd"] = f"{float(view['cost_usd']):.4f}"
    return "\n".join(parts), meta


def notice_message(event: Event, view: Mapping[str, Any]) -> tuple[str, dict[str, str]] | None:
    """A running workspace's notice for the session that dispatched it: it went silent
    (AgentStalled), or its provider's limit sent it back to the queue (why and until when), or
    its agent asks for a permission (ApprovalRequested: approvals.py)."""
    if event.type == "ApprovalRequested":
        return approval_notice(event, view)
    data, ws = event.data, event.workspace or "?"
    agent = str(data.get("agent") or view.get("agent") or "agent")
    meta = {"event": event.type, "workspace": ws, "agent": agent}
    if event.type == "AgentStalled":
        idle = duration_text(float(data.get("idle_s") or 0))
        content = (
            f"stalled: sub-agent {agent} in workspace {ws} has written no output for {idle} and is "
            f"still running. Read its output with logs, send it a message, or kill it."
        )
        return content, {**meta, "state": "running", "reason": "stalled"}
    if event.type == "AgentPreempted":
        content = (
            f"preempted: sub-agent {agent} in workspace {ws} was stopped to free its slot for a "
            "critical dispatch and is queued again (not counted as an attempt; it resumes its "
            "session where its agent can)."
        )
        return content, {**meta, "state": "queued", "reason": "preempted"}
    if event.type == "AgentRetrying" and data.get("outcome") == "rate_limited":
        until = view.get("backoff_until")
        reason = str(data.get("reason") or "rate limited").strip().rstrip(".")
        content = (
            f"rate_limited: sub-agent {agent} in workspace {ws} hit its provider's limit and is "
            "queued again (not counted as an attempt)"
            + (f"; its pool waits until {until}" if until else "")
            + f". Reason: {reason}."
        )
        extra = {"until": str(until)} if until else {}
        return content, {**meta, "state": "queued", "reason": "rate_limited", **extra}
    return None


def _one_line(text: object) -> str:
    return str(text).replace("\r", "\\r").replace("\n", "\\n")


async def workspace_view(runner: Runner, workspace: str | None) -> dict[str, Any]:
    """What a channel message says of the workspace beyond its event (label, summary, reason)."""
    if not workspace:
        return {}
    try:
        view: dict[str, Any] = await runner.status(StatusRequest(workspace=workspace, log_lines=0))
    except DispatchError:
        return {}
    return view


async def send_channel(connection: Connection, message: tuple[str, dict[str, str]]) -> None:
    """Send a channel event; raises when the connection is closed (the SDK's own notify drops
    it silently, and a completion owed to the client must then go to another session)."""
    content, meta = message
    await connection.outbound.notify(CHANNEL_METHOD, {"content": content, "meta": meta})


@dataclass(frozen=True, slots=True)
class PusherStatistics:
    clients: int  # connected sessions that can receive pushes
    pushed: int  # channel notifications sent (owed completions included)
    failed: int  # sends that failed (a broken connection)
    delivered: int  # owed completions sent to a session of their client
    released: int  # owed completions given back after a failed send


class Pusher:
    """Reads the runner's bus and sends each event's notifications to the right clients; runs
    the outbox's deliveries beside it."""

    def __init__(self, runner: Runner, clients: Clients, outbox: "Outbox") -> None:
        self.runner = runner
        self.clients = clients
        self.outbox = outbox
        self.pushed = 0
        self.failed = 0
        self._seen: OrderedDict[int, None] = OrderedDict()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        sub = self.runner.bus.subscribe(1024)
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(self.outbox.run)
                task_status.started()
                async for event in sub.receive:
                    if event.type in TERMINAL_EVENTS or event.type == GROUP_COMPLETED:
                        self.outbox.wake()  # a completion may be owed to a session here
                    if self._first_time(event):
                        await self.handle(event)
                tg.cancel_scope.cancel()
        finally:
            self.runner.bus.unsubscribe(sub)

    def statistics(self) -> "PusherStatistics":
        return PusherStatistics(
            clients=len(self.clients),
            pushed=self.pushed + self.outbox.delivered,
            failed=self.failed + self.outbox.released,
            delivered=self.outbox.delivered,
            released=self.outbox.released,
        )

    def _first_time(self, event: Event) -> bool:
        # The runner may publish one stored event twice when two readers race on its cursor;
        # a client must not hear about one completion twice.
        if not event.id:
            return True
        if event.id in self._seen:
            return False
        self._seen[event.id] = None
        if len(self._seen) > SEEN_EVENTS:
            self._seen.popitem(last=False)
        return True

    async def handle(self, event: Event) -> None:
        if not len(self.clients):
            return
        message: tuple[str, dict[str, str]] | None = None
        if is_pushed(event):
            message = channel_message(event, await workspace_view(self.runner, event.workspace))
        elif event.type in NOTICES:
            notice = notice_message(event, await workspace_view(self.runner, event.workspace))
            if notice is not None:
                await self._notify(event, notice)
        uris = resource_uris(event)
        for client in self.clients:
            with anyio.move_on_after(SEND_TIMEOUT_S):
                try:
                    await self._send(client, event, message, uris)
                except Exception:  # one broken connection must not end pushes for the others
                    self.failed += 1
                    log.exception("push to client %s failed", client.key)

    async def _notify(self, event: Event, notice: tuple[str, dict[str, str]]) -> None:
        """A notice goes to the dispatching session and to those that take every event."""
        content, meta = notice
        for client in self.clients:
            if client.connection is None or not (client.key == event.origin or self.wants_channel(client)):
                continue
            with anyio.move_on_after(SEND_TIMEOUT_S):
                try:
                    await client.connection.notify(CHANNEL_METHOD, {"content": content, "meta": meta})
                    self.pushed += 1
                except Exception:  # a broken connection: the notice is only a hint
                    self.failed += 1

    def wants_channel(self, client: Client) -> bool:
        """Sessions that take every completion live. The dispatching client's own session gets
        its completion from the outbox (delivery.py), exactly once."""
        return client.everything or self.runner.config.notify == "all"

    async def _send(
        self, client: Client, event: Event, message: tuple[str, dict[str, str]] | None, uris: set[str]
    ) -> None:
        connection = client.connection
        if connection is None:
            return
        if message is not None:
            content, meta = message
            # the dispatching session's own completion comes from the outbox (delivery.py), which
            # sends it once; a live push that fails must not count as sent there
            if client.key != event.origin and self.wants_channel(client) and client.reserve(event.id):
                try:
                    await send_channel(connection, message)
                except BaseException:
                    client.unreserve(event.id)
                    raise
                self.pushed += 1
            level: LoggingLevel = "info" if meta["state"] == "completed" else "warning"
            if LOG_LEVELS.index(level) >= LOG_LEVELS.index(client.log_level):
                await connection.log(level, {**meta, "message": content}, logger="runner")
        for uri in sorted(uris & client.resources):
            await connection.send_resource_updated(uri)
