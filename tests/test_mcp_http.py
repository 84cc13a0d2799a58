"""`dispatch-runner serve --transport http|sse`: bearer token, DNS-rebinding protection, and a
working session, against a real server subprocess on a free loopback port."""

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import BASE_CONFIG, PY, kill_leftovers, wait_for
from tests.fakes import FAKE_AGENT, FAKE_CLAUDE, FAKE_CODEX
from tests.mcp_helpers import SERVE, free_port, listening, ok, session

pytestmark = pytest.mark.anyio

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "probe", "version": "0"},
    },
}


def _home(root: Path) -> dict[str, str]:
    home = root / "home"
    home.mkdir()
    (home / "agents.yaml").write_text(
        BASE_CONFIG.format(root=root, py=PY, claude=FAKE_CLAUDE, codex=FAKE_CODEX, agent=FAKE_AGENT)
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_RUNNER_")}
    return {**env, "DISPATCH_RUNNER_HOME": str(home), "FAKE_AGENT_LOG": str(root / "agents.log")}


class HttpServer:
    def __init__(self, root: Path, transport: str) -> None:
        self.port = free_port()
        self.env = _home(root)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(root / "server.log", "w")  # closed in stop()
        self.proc = subprocess.Popen(
            [*SERVE, "--transport", transport, "--port", str(self.port), "--token", TOKEN],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        wait_for(
            lambda: listening(self.port) or self.proc.poll() is not None,
            timeout=20,
            message="the HTTP server to listen",
        )
        assert self.proc.poll() is None, (root / "server.log").read_text()

    def stop(self) -> None:
        self.proc.terminate()
        assert self.proc.wait(timeout=5) == 0  # SIGTERM is a clean exit
        self.log.close()
        kill_leftovers(Path(self.env["DISPATCH_RUNNER_HOME"]))


@pytest.fixture(scope="module")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    server = HttpServer(tmp_path_factory.mktemp("http"), "http")
    yield server
    server.stop()


async def test_http_requests_without_the_bearer_token_get_401(http_server: HttpServer) -> None:
    async with httpx2.AsyncClient() as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            r = await http.post(f"{http_server.url}/mcp", json=INITIALIZE, headers={**JSON, **headers})
            assert r.status_code == 401, headers
            assert r.headers["www-authenticate"] == "Bearer"
            assert "bearer token" in r.text
        r = await http.get(f"{http_server.url}/anything-else")
        assert r.status_code == 401


async def test_http_refuses_a_foreign_host_or_origin(http_server: HttpServer) -> None:
    async with httpx2.AsyncClient() as http:
        url = f"{http_server.url}/mcp"
        r = await http.post(url, json=INITIALIZE, headers={**JSON, **AUTH, "Host": "evil.example:80"})
        assert r.status_code == 421
        r = await http.post(url, json=INITIALIZE, headers={**JSON, **AUTH, "Origin": "http://evil.example"})
        assert r.status_code == 403


async def test_a_tool_call_with_the_token_works_and_the_completion_is_pushed(http_server: HttpServer) -> None:
    async with (
        httpx2.AsyncClient(headers=AUTH) as http,
        session(streamable_http_client(f"{http_server.url}/mcp", http_client=http)) as (client, seen),
    ):
        assert client.protocol_version == "2025-11-25"
        assert client.server_capabilities.experimental == {"claude/channel": {}}
        ws = ok(await client.call_tool("dispatch", {"task": "over http"}))["workspace"]
        [push] = await seen.until(lambda: seen.channel_for(ws), what="channel event over HTTP")
        assert push.meta["state"] == "completed"


async def test_sse_transport_serves_tools_with_the_token(tmp_path: Path) -> None:
    server = HttpServer(tmp_path, "sse")
    try:
        async with httpx2.AsyncClient() as http:
            r = await http.get(f"{server.url}/sse")
            assert r.status_code == 401
        async with session(sse_client(f"{server.url}/sse", headers=AUTH)) as (client, _):
            assert client.server_capabilities.experimental == {"claude/channel": {}}
            assert ok(await client.call_tool("status", {}))["frozen"] is False
    finally:
        server.stop()


def test_a_non_loopback_bind_without_a_token_is_refused(tmp_path: Path) -> None:
    env = {k: v for k, v in _home(tmp_path).items() if k != "DISPATCH_RUNNER_TOKEN"}
    out = subprocess.run(
        [*SERVE, "--transport", "http", "--host", "0.0.0.0", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode != 0
    assert "without a bearer token" in out.stderr and "--token" in out.stderr
