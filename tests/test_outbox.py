"""Completions are never dropped (DESIGN §8, Delivery): a completion whose dispatching server died
reaches the next session of the same client exactly once — the same parent process, or the same
explicit session key — and `wait` returns completions no session received. Real `dispatch-runner
serve` stdio subprocesses (and one HTTP server), the SDK client, fake agents, SIGKILL; on both
store backends."""

import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx2
import psutil
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import Home, wait_for
from tests.mcp_helpers import SERVE, Observer, connect, ok, server_env, session
from tests.test_mcp_http import AUTH, HttpServer

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning"),
]

QUIET_S = 1.0  # how long a session is watched for a push that must not come


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, home: Home, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "postgres":
        monkeypatch.setenv("DISPATCH_RUNNER_STORE", request.getfixturevalue("pg_url"))
    return str(request.param)


def _servers() -> set[int]:
    """The `dispatch-runner serve` processes this test process started (they share its client)."""
    found = set()
    for child in psutil.Process().children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "serve" in child.cmdline():
                found.add(child.pid)
        except psutil.Error:
            continue
    return found


@asynccontextmanager
async def _through_a_shell(home: Home, *args: str, **env: str) -> AsyncIterator[tuple[Client, Observer]]:
    """`dispatch-runner serve` started by a shell that stays its parent: another client process."""
    params = StdioServerParameters(
        command="/bin/sh",
        args=["-c", '"$@"; exit $?', "sh", *SERVE, *args],  # not the last command: sh does not exec
        env=server_env(**env),
    )
    n = sum(1 for _ in home.path.glob("server-*.log"))
    with open(home.path / f"server-{n}.log", "w") as errlog:
        async with session(stdio_client(params, errlog=errlog)) as (client, observer):
            yield client, observer


async def _quiet(seen: Observer, workspace: str, *, received: int = 0) -> None:
    """No (further) channel event for `workspace` reaches the session within QUIET_S: it has
    `received` of them, and keeps that many."""
    with anyio.move_on_after(QUIET_S):
        await seen.until(lambda: len(seen.channel_for(workspace)) > received, deadline_s=QUIET_S * 2)
    assert len(seen.channel_for(workspace)) == received


async def _dispatch_and_kill_the_server(home: Home, task: str, *args: str, **env: str) -> str:
    """Dispatch `task` from a new server and SIGKILL that server while its agent runs."""
    async with connect(home.path, *args, **env) as (client, _):
        [pid] = _servers()
        ws = ok(await client.call_tool("dispatch", {"task": task}))
        assert ws["status"] == "running"
        os.kill(pid, signal.SIGKILL)
    return str(ws["workspace"])


def _state(ws: str) -> str:
    """The workspace's state as `dispatch-runner status --json WS` reports it."""
    out = subprocess.run(
        [*SERVE[:-1], "status", "--json", ws], env=server_env(), capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    return str(json.loads(out.stdout)["state"])


@pytest.mark.parametrize("ends", ["before the next session", "during the next session"])
async def test_a_completion_whose_server_was_killed_reaches_the_next_session_of_the_same_parent_once(
    home: Home, backend: str, ends: str
) -> None:
    ws = await _dispatch_and_kill_the_server(home, "outlives its server @sleep=1.5")
    if ends == "before the next session":
        wait_for(lambda: _state(ws) == "completed", timeout=20, message="the run to end")
    async with connect(home.path) as (client, seen):
        [push] = await seen.until(lambda: seen.channel_for(ws), what="the owed completion")
        assert push.meta["state"] == "completed" and push.content.startswith("completed:")
        assert ok(await client.call_tool("status", {}))["undelivered"] == 0
        waited = ok(await client.call_tool("wait", {"workspaces": [ws], "timeout_s": 5}))
        assert waited["done"] is True and waited["undelivered"] == []
        await _quiet(seen, ws, received=1)
    # a second new session of the same client: it was delivered, nothing comes again
    async with connect(home.path) as (client, seen):
        assert ok(await client.call_tool("status", {}))["undelivered"] == 0
        await _quiet(seen, ws)


async def test_a_session_key_carries_the_completion_to_a_server_with_another_parent(
    home: Home, backend: str
) -> None:
    ws = await _dispatch_and_kill_the_server(home, "keyed @sleep=1.5", "--session", "team-1@box:a/b")
    # a server under another parent without the key is another client: it is owed nothing
    async with (
        _through_a_shell(home) as (_, stranger),
        _through_a_shell(home, DISPATCH_RUNNER_SESSION="team-1@box:a/b") as (client, seen),
    ):
        [push] = await seen.until(lambda: seen.channel_for(ws), what="the completion owed to the key")
        assert push.meta["workspace"] == ws
        assert ok(await client.call_tool("status", {}))["undelivered"] == 0
        await _quiet(seen, ws, received=1)
        assert stranger.channel_for(ws) == []


async def test_wait_returns_a_completion_no_session_received_and_it_is_then_never_pushed(
    home: Home, backend: str
) -> None:
    async with connect(home.path) as (first, first_seen):
        [pid] = _servers()
        ws = ok(await first.call_tool("dispatch", {"task": "a stopped server's @sleep=2"}))["workspace"]
        os.kill(pid, signal.SIGSTOP)  # alive, so nobody else may take its completion for a while
        try:
            async with (
                connect(home.path, "--session", "someone-else") as (other, other_seen),
                connect(home.path) as (client, seen),
            ):
                # another client's session is told of it, but does not take it
                waited = ok(await other.call_tool("wait", {"workspaces": [ws], "timeout_s": 20}))
                assert waited["done"] is True
                [owed] = waited["undelivered"]
                assert (owed["workspace"], owed["event"], owed["state"]) == (
                    ws,
                    "AgentCompleted",
                    "completed",
                )
                assert owed["exit_code"] == 0 and owed["at"].endswith("Z") and owed["event_id"] > 0
                assert ok(await other.call_tool("status", {}))["undelivered"] == 1
                # a session of the dispatching client takes it by waiting: delivered to it
                waited = ok(await client.call_tool("wait", {"workspaces": [ws], "timeout_s": 5}))
                assert waited["undelivered"] == [owed]
                assert ok(await client.call_tool("status", {}))["undelivered"] == 0
                assert ok(await other.call_tool("wait", {"workspaces": [ws]}))["undelivered"] == []
        finally:
            os.kill(pid, signal.SIGCONT)
        # the dispatching server wakes up: the completion is no longer its to push
        assert ok(await first.call_tool("status", {}))["undelivered"] == 0
        await _quiet(first_seen, ws)
    assert seen.channel == [] and other_seen.channel == []


async def test_an_http_connection_names_its_client_with_a_header(tmp_path: Path) -> None:
    server = HttpServer(tmp_path, "http")

    @asynccontextmanager
    async def connection(key: str | None) -> AsyncIterator[tuple[Client, Observer]]:
        headers = {**AUTH, **({"X-Dispatch-Session": key} if key else {})}
        async with (
            httpx2.AsyncClient(headers=headers) as http,
            session(streamable_http_client(f"{server.url}/mcp", http_client=http)) as found,
        ):
            yield found

    try:
        async with connection("laptop-1") as (client, _):
            ws = ok(await client.call_tool("dispatch", {"task": "over http @sleep=1"}))["workspace"]
        async with connection(None) as (_, stranger), connection("laptop-1") as (client, seen):
            [push] = await seen.until(lambda: seen.channel_for(ws), what="the completion owed to the header")
            assert push.meta["state"] == "completed"
            assert ok(await client.call_tool("status", {}))["undelivered"] == 0
            assert stranger.channel_for(ws) == []
    finally:
        server.stop()


def test_a_bad_session_key_is_refused_with_what_a_key_may_hold(home: Home) -> None:
    for args, env in ((["--session", "x" * 201], {}), ([], {"DISPATCH_RUNNER_SESSION": "two words"})):
        out = subprocess.run(
            [*SERVE, *args], input="", env=server_env(**env), capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 2, out.stderr
        assert "(--session or DISPATCH_RUNNER_SESSION) is not valid: use 1 to 200 characters" in out.stderr
