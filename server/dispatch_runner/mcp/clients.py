"""Who is connected to this process: each MCP connection (its origin key, what it asked to
receive) and the client behind it, which outlives the connection.

A connection's key names it alone (unique across peers and restarts). A client is who stands
behind connections across server restarts, crashes and reconnects; a completion is owed to the
client of the session that dispatched it (the store's outbox, delivery.py):
- `serve --session KEY` or DISPATCH_RUNNER_SESSION=KEY: "key:KEY", for every connection of the
  server. Over HTTP a connection's own `X-Dispatch-Session: KEY` header comes first;
- else, over stdio, the process that started the server: "proc:<host>:<pid>:<start time>".
  Claude Code and Codex start the server themselves, so a restarted or reconnected server has the
  same client. A launcher in between (uvx, a wrapper script) makes every server a client of its
  own: give such a setup a key;
- else (HTTP without a key, or a server whose parent is gone) none: the completion is owed to
  the dispatching connection only. HTTP connections share a process, so the process says nothing
  about who is behind them.
"""

import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import count
from typing import Final

import psutil
from mcp.server.connection import Connection
from mcp.server.session import ServerSession
from mcp_types import LoggingLevel

from ..errors import InvalidArgument
from .private import connection_of

log = logging.getLogger("dispatch_runner.mcp")

SESSION_ENV: Final = "DISPATCH_RUNNER_SESSION"
SESSION_HEADER: Final = "x-dispatch-session"
SESSION_KEY: Final = re.compile(r"[A-Za-z0-9._:@/-]{1,200}")
SENT_KEPT: Final = 4096  # event ids a connection remembers having received


def session_key(value: str, *, source: str = "--session or DISPATCH_RUNNER_SESSION") -> str:
    """The client a user named: "key:<value>"."""
    if not SESSION_KEY.fullmatch(value):
        raise InvalidArgument(
            "session",
            f"the session key {value[:60]!r} ({source}) is not valid: use 1 to 200 characters "
            "of A-Z a-z 0-9 . _ : @ / -",
        )
    return f"key:{value}"


def parent_client(host: str) -> str | None:
    """The process that started this one, as a client (pid + start time: a pid alone is reused);
    None when that is init (this process was orphaned) or it is gone."""
    ppid = os.getppid()
    if ppid <= 1:
        return None
    try:
        started = psutil.Process(ppid).create_time()
    except psutil.Error:
        return None
    return f"proc:{host}:{ppid}:{started:.2f}"


def process_client(transport: str, *, peer: str, named: str | None) -> str | None:
    """The client of this server's connections (see the module's docstring): `named` (the
    session_key of --session or the environment), else over stdio the parent process. `peer` is
    this process's peer id, host:pid:start."""
    if named:
        return named
    return parent_client(peer.rsplit(":", 2)[0]) if transport == "stdio" else None


def header_client(headers: Mapping[str, str] | None) -> str | None:
    """The client an HTTP connection names with X-Dispatch-Session; None without (or with a bad
    one: logged, and the connection is then the server's)."""
    value = headers.get(SESSION_HEADER) if headers is not None else None
    if not value:
        return None
    try:
        return session_key(value, source="X-Dispatch-Session")
    except InvalidArgument as exc:
        log.warning("ignoring the connection's session header: %s", exc)
        return None


@dataclass(eq=False, kw_only=True)
class Client:
    """One client connection: its origin key, the client behind it and what it asked to receive."""

    key: str
    connection: Connection | None
    identity: str | None = None  # the client behind it; None: the connection stands alone
    everything: bool = False  # status(subscribe=true): every completion, not only its own
    log_level: LoggingLevel = "info"
    resources: set[str] = field(default_factory=set)
    _sent: dict[int, None] = field(default_factory=dict, init=False, repr=False)

    @property
    def owed_to(self) -> str:
        """Whom its dispatches' completions are owed to (the outbox's `client`)."""
        return self.identity or self.key

    def reserve(self, event_id: int) -> bool:
        """Mark a completion as sent to this connection; False when it was already (pushed live
        to a session that subscribed to everything, and owed to its client as well)."""
        if event_id in self._sent:
            return False
        self._sent[event_id] = None
        if len(self._sent) > SENT_KEPT:
            del self._sent[next(iter(self._sent))]
        return True

    def unreserve(self, event_id: int) -> None:
        self._sent.pop(event_id, None)


class Clients:
    """The clients connected to this process. Keys are unique across peers and restarts (the peer
    id holds host, pid and process start time), so `event.origin` names exactly one session."""

    def __init__(self, peer: str, identity: str | None = None) -> None:
        self._peer = peer
        self.identity = identity  # the client of this process's connections, if it has one
        self._seq = count(1)
        self._by_connection: dict[Connection, Client] = {}
        self._listeners: list[Callable[[], None]] = []

    def of(self, session: ServerSession, headers: Mapping[str, str] | None = None) -> Client:
        """The session's connection (known from its first request after `initialize` on; an HTTP
        connection's X-Dispatch-Session header is read then)."""
        connection = connection_of(session)
        client = self._by_connection.get(connection)
        if client is not None:
            return client
        identity = header_client(headers) or self.identity
        client = Client(key=f"{self._peer}/{next(self._seq)}", connection=connection, identity=identity)
        if not connection.has_standalone_channel:
            # stateless 2026-era request: nothing can be pushed to it, nothing to remember
            client.connection = None
            return client
        self._by_connection[connection] = client
        connection.exit_stack.callback(self._left, connection)
        self._changed()
        return client

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call `listener` whenever a connection arrives or leaves."""
        self._listeners.append(listener)

    def connected(self, key: str) -> bool:
        return any(c.key == key for c in self._by_connection.values())

    def is_local(self, key: str) -> bool:
        """The key names a connection of this process (connected or gone)."""
        return key.startswith(f"{self._peer}/")

    def _left(self, connection: Connection) -> None:
        self._by_connection.pop(connection, None)
        self._changed()

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    def __iter__(self) -> Iterator[Client]:
        return iter(list(self._by_connection.values()))

    def __len__(self) -> int:
        return len(self._by_connection)
