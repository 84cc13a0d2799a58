"""Helpers for the MCP end-to-end tests: a real `dispatch-runner serve` subprocess driven by the
SDK client in legacy (2025-11-25) mode, and an Observer of what the server pushes."""

import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import mcp_types as types
from mcp import Client
from mcp.client import ClientExtension, NotificationBinding
from mcp.client.stdio import StdioServerParameters, stdio_client
from pydantic import BaseModel

T = TypeVar("T")
SERVE = [sys.executable, "-m", "dispatch_runner.cli", "serve"]
DEADLINE_S = 15.0


class ChannelParams(BaseModel):
    content: str
    meta: dict[str, str] = {}


class Observer:
    """Everything one client session received, and a way to wait for a condition on it."""

    def __init__(self) -> None:
        self.channel: list[ChannelParams] = []
        self.logs: list[types.LoggingMessageNotificationParams] = []
        self.updated: list[str] = []
        self.progress: list[tuple[float, float | None, str | None]] = []
        self._changed = anyio.Event()

    def _touch(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def on_channel(self, params: ChannelParams) -> None:
        self.channel.append(params)
        self._touch()

    async def on_log(self, params: types.LoggingMessageNotificationParams) -> None:
        self.logs.append(params)
        self._touch()

    async def on_message(self, message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            self.updated.append(str(message.params.uri))
            self._touch()

    async def on_progress(self, progress: float, total: float | None, message: str | None) -> None:
        # the parameter names are those of mcp's ProgressFnT protocol
        self.progress.append((progress, total, message))
        self._touch()

    def extension(self) -> ClientExtension:
        observer = self

        class ClaudeChannel(ClientExtension):
            identifier = "com.example/claude-channel"

            def notifications(self) -> list[NotificationBinding[Any]]:
                return [
                    NotificationBinding(
                        method="notifications/claude/channel",
                        params_type=ChannelParams,
                        handler=observer.on_channel,
                    )
                ]

        return ClaudeChannel()

    async def until(
        self, predicate: Callable[[], T], *, deadline_s: float = DEADLINE_S, what: str = "a notification"
    ) -> T:
        """Wait (no sleeping) until predicate() is truthy; fail after `deadline_s` seconds."""
        try:
            with anyio.fail_after(deadline_s):
                while not (value := predicate()):
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"no {what} within {deadline_s}s; channel={self.channel!r} "
                f"logs={self.logs!r} updated={self.updated!r}"
            ) from None
        return value

    def channel_for(self, workspace: str) -> list[ChannelParams]:
        return [c for c in self.channel if c.meta.get("workspace") == workspace]

    def logged(self, workspace: str) -> bool:
        return any(isinstance(e.data, dict) and e.data.get("workspace") == workspace for e in self.logs)


def server_env(**extra: str) -> dict[str, str]:
    """The test's environment (DISPATCH_RUNNER_HOME and FAKE_AGENT_LOG set by the home fixture)."""
    return {**os.environ, **extra}


@asynccontextmanager
async def session(transport: Any) -> AsyncIterator[tuple[Client, Observer]]:
    """A legacy-mode (2025-11-25) client session over `transport`, observed."""
    observer = Observer()
    async with Client(
        transport,
        mode="legacy",
        extensions=[observer.extension()],
        logging_callback=observer.on_log,
        message_handler=observer.on_message,
    ) as client:
        yield client, observer


@asynccontextmanager
async def connect(home_path: Path, *args: str, **env: str) -> AsyncIterator[tuple[Client, Observer]]:
    """A real `dispatch-runner serve` over stdio, its stderr in home_path/server-<n>.log."""
    params = StdioServerParameters(command=SERVE[0], args=[*SERVE[1:], *args], env=server_env(**env))
    n = sum(1 for _ in home_path.glob("server-*.log"))
    with open(home_path / f"server-{n}.log", "w") as errlog:
        async with session(stdio_client(params, errlog=errlog)) as (client, observer):
            yield client, observer


def ok(result: types.CallToolResult) -> dict[str, Any]:
    """The structured result of a successful call; its text content is the same JSON."""
    first = result.content[0] if result.content else None
    text = first.text if isinstance(first, types.TextContent) else ""
    assert not result.is_error, text
    assert isinstance(result.structured_content, dict)
    assert json.loads(text) == result.structured_content
    return result.structured_content


def error(result: types.CallToolResult) -> str:
    """The sentence of a tool error."""
    assert result.is_error, result
    assert result.content and isinstance(result.content[0], types.TextContent)
    return result.content[0].text


def free_port() -> int:
    """A free loopback TCP port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@contextmanager
def http_server(root: Path, store: str | None, *, token: str | None, extra: str = "") -> Iterator[str]:
    """`dispatch-runner serve --transport http` on a free port with a home of its own under root
    (the fake agents' config plus `extra`); yields its base URL, stops it and its agents after."""
    from tests.conftest import BASE_CONFIG, PY, kill_leftovers, wait_for
    from tests.fakes import FAKE_AGENT, FAKE_CLAUDE, FAKE_CODEX

    home = root / "home"
    home.mkdir(parents=True)
    text = BASE_CONFIG.format(root=root, py=PY, claude=FAKE_CLAUDE, codex=FAKE_CODEX, agent=FAKE_AGENT)
    (home / "agents.yaml").write_text(text + "concurrency:\n  agent: 4\n" + extra)
    port = free_port()
    with open(root / "server.log", "w") as log:
        args = [*SERVE, "--transport", "http", "--port", str(port), *(["--token", token] if token else [])]
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=home_env(home, store)
        )
        try:
            wait_for(lambda: listening(port) or proc.poll() is not None, timeout=20, message="listening")
            assert proc.poll() is None, (root / "server.log").read_text()
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            kill_leftovers(home)


def home_env(home: Path, store: str | None) -> dict[str, str]:
    """This process's environment for a runner of `home` (and `store`), with no other runner's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_RUNNER_")}
    return env | {"DISPATCH_RUNNER_HOME": str(home), **({"DISPATCH_RUNNER_STORE": store} if store else {})}
