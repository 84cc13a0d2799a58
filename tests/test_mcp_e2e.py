"""The MCP surface end to end: a real `dispatch-runner serve` stdio subprocess, the SDK client in
legacy (2025-11-25) mode, fake agent CLIs. Every wait is on an event or a poll with a deadline."""

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError
from mcp_types import ReadResourceResult, TextResourceContents

from tests.conftest import Home, wait_for
from tests.mcp_helpers import SERVE, connect, error, ok, server_env

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning"),
]

TOOLS = {
    "dispatch",
    "status",
    "logs",
    "kill",
    "message",
    "poke",
    "stop",
    "start",
    "wait",
    "approve",
    "schedule",
}
META_KEYS = {"event", "workspace", "agent", "state", "exit_code", "duration_s", "host", "cost_usd"}
REPO = Path(__file__).resolve().parent.parent


def _text(resource: ReadResourceResult) -> str:
    """The text of a resource's first contents (the runner's resources are all text)."""
    contents = resource.contents[0]
    assert isinstance(contents, TextResourceContents), contents
    return contents.text


async def test_tools_are_listed_with_the_design_names_and_model_facing_schemas(home: Home) -> None:
    async with connect(home.path) as (client, _):
        assert client.protocol_version == "2025-11-25"
        caps = client.server_capabilities
        assert caps.experimental == {"claude/channel": {}}
        assert caps.resources is not None and caps.resources.subscribe is True
        assert caps.logging is not None
        assert client.server_info is not None and client.server_info.name == "runner"
        assert client.instructions and len(client.instructions) <= 2048
        assert '<channel source="runner"' in client.instructions
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert set(tools) == TOOLS
        for tool in tools.values():
            assert re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", tool.name) and "__" not in tool.name
            assert tool.description and len(tool.description) <= 2048
        dispatch = tools["dispatch"].input_schema
        assert "required" not in dispatch  # task too: a fan-out gives tasks instead
        assert set(dispatch["properties"]) == {
            "task",
            "agent",
            "cwd",
            "repo",
            "template",
            "priority",
            "label",
            "idempotency_key",
            "max_wait_s",
            "timeout_s",
            "max_attempts",
            "requires",
            "host",
            "resume",
            "max_cost_usd",
            "max_turns",
            *("preemptible", "sandbox", "ask"),
            *("not_before", "after", "after_mode", "tasks", "items", "group_concurrency"),
        }
        assert all(p.get("description") for p in dispatch["properties"].values())
        assert set(tools["kill"].input_schema["properties"]) == {"workspace", "agent", "all", "tree"}
        assert set(tools["message"].input_schema["properties"]) == {"workspace", "text"}
        assert set(tools["wait"].input_schema["properties"]) == {"workspaces", "timeout_s", "mode"}
        assert tools["wait"].input_schema["properties"]["timeout_s"]["default"] == 50
        assert set(tools["status"].input_schema["properties"]) == {
            "workspace",
            "agent",
            "state",
            "limit",
            "subscribe",
        }
        assert set(tools["logs"].input_schema["properties"]) == {
            "workspace",
            "run",
            "stream",
            "offset",
            "limit",
        }
        # dispatch starts processes that may change files: neither read-only nor harmless
        hints = tools["dispatch"].annotations
        assert hints is not None and hints.read_only_hint is False and hints.destructive_hint is True
        for event in ("AgentCompleted", "AgentFailed", "AgentKilled", "AgentLost", "TaskDeadLettered"):
            assert event in client.instructions
        templates = {t.uri_template for t in (await client.list_resource_templates()).resource_templates}
        assert templates == {"runner://workspaces/{id}", "runner://workspaces/{id}/log"}
        assert [str(r.uri) for r in (await client.list_resources()).resources] == ["runner://status"]


async def test_tools_prefix_renames_every_tool(home: Home) -> None:
    home.write_config("tools:\n  prefix: dr_\n")
    async with connect(home.path) as (client, _):
        names = {t.name for t in (await client.list_tools()).tools}
        assert names == {f"dr_{name}" for name in TOOLS}
        assert ok(await client.call_tool("dr_status", {}))["frozen"] is False


async def test_a_finished_dispatch_is_pushed_to_the_dispatching_session_as_a_channel_event(
    home: Home,
) -> None:
    async with connect(home.path) as (client, seen):
        started = time.monotonic()
        sent = ok(await client.call_tool("dispatch", {"task": "say hello @sleep=0.3", "label": "greeting"}))
        ws = sent["workspace"]
        assert sent["status"] == "running" and sent["agent"] == "claude"
        assert sent["deduplicated"] is False and sent["path"].startswith(str(home.path))
        await client.subscribe_resource(f"runner://workspaces/{ws}")
        [push] = await seen.until(lambda: seen.channel_for(ws), what="channel event")
        assert time.monotonic() - started < 10
        assert set(push.meta) == META_KEYS
        assert push.meta["event"] == "AgentCompleted"
        assert push.meta["state"] == "completed"
        assert push.meta["agent"] == "claude"
        assert push.meta["exit_code"] == "0"
        assert float(push.meta["duration_s"]) >= 0
        assert push.content.startswith(f'completed: sub-agent claude in workspace {ws} ("greeting") after ')
        status = ok(await client.call_tool("status", {"workspace": ws}))
        assert status["summary"] and f"Result:\n{status['summary'].splitlines()[0]}" in push.content
        await seen.until(lambda: seen.logged(ws), what="log message")
        await seen.until(lambda: f"runner://workspaces/{ws}" in seen.updated, what="resource update")
        assert len(seen.channel_for(ws)) == 1


async def test_a_run_that_fails_for_good_is_pushed_once_as_dead_lettered(home: Home) -> None:
    async with connect(home.path) as (client, seen):
        ws = ok(await client.call_tool("dispatch", {"task": "breaks @exit=3", "max_attempts": 1}))
        [push] = await seen.until(lambda: seen.channel_for(ws["workspace"]), what="failure event")
        assert push.meta["event"] == "TaskDeadLettered"
        assert push.meta["state"] == "failed" and push.meta["exit_code"] == "3"
        assert push.meta["reason"] == "failed"
        assert push.content.startswith("failed: ") and "\nReason: max retries exceeded" in push.content
        # the AgentFailed that precedes it is not pushed; a later call flushes anything pending
        ok(await client.call_tool("status", {"workspace": ws["workspace"]}))
        assert len(seen.channel_for(ws["workspace"])) == 1


async def test_wait_sends_progress_and_returns_each_workspace_result(home: Home) -> None:
    async with connect(home.path) as (client, seen):
        ws = ok(await client.call_tool("dispatch", {"task": "slow one @sleep=0.5"}))["workspace"]
        result = ok(
            await client.call_tool(
                "wait", {"workspaces": [ws], "timeout_s": 20}, progress_callback=seen.on_progress
            )
        )
        assert result["done"] is True
        [row] = result["workspaces"]
        assert row["workspace"] == ws and row["state"] == "completed" and row["exit_code"] == 0
        assert row["summary"] and row["duration_s"] >= 0.5
        assert seen.progress[0][:2] == (0.0, 1.0) and seen.progress[-1][:2] == (1.0, 1.0)
        first, last = seen.progress[0][2], seen.progress[-1][2]
        assert first is not None and first.startswith("0/1 workspaces finished after ")
        assert last is not None and last.startswith("1/1 workspaces finished after ")
        # one id instead of a list, and a timeout that ends the wait before the run does
        slow = ok(await client.call_tool("dispatch", {"task": "@sleep=30"}))["workspace"]
        early = ok(await client.call_tool("wait", {"workspaces": slow, "timeout_s": 0.2}))
        assert early["done"] is False and early["workspaces"][0]["state"] == "running"
        ok(await client.call_tool("kill", {"workspace": slow}))


async def test_status_shows_the_overview_and_one_workspace(home: Home) -> None:
    async with connect(home.path) as (client, _):
        ws = ok(await client.call_tool("dispatch", {"task": "done soon", "priority": "high"}))["workspace"]
        ok(await client.call_tool("wait", {"workspaces": [ws], "timeout_s": 20}))
        overall = ok(await client.call_tool("status", {}))
        assert {"frozen", "pools", "counts", "workspaces", "bus_dropped"} <= set(overall)
        assert overall["counts"].get("completed") == 1
        assert overall["pools"]["claude"]["limit"] == 1
        assert [w["workspace"] for w in overall["workspaces"]] == [ws]
        one = ok(await client.call_tool("status", {"workspace": ws}))
        assert {
            "workspace",
            "state",
            "agent",
            "host",
            "pid",
            "runs",
            "priority",
            "label",
            "created_at",
            "started_at",
            "ended_at",
            "exit_code",
            "reason",
            "summary",
            "log_tail",
            "path",
            "branch",
            "parent",
        } <= set(one)
        assert one["state"] == "completed" and one["priority"] == "high" and one["runs"] == 1
        assert one["created_at"].endswith(("Z", "+00:00"))
        filtered = ok(await client.call_tool("status", {"state": "running"}))
        assert filtered["workspaces"] == []
        resource = await client.read_resource(f"runner://workspaces/{ws}")
        assert json.loads(_text(resource))["state"] == "completed"
        log = await client.read_resource(f"runner://workspaces/{ws}/log")
        assert _text(log).endswith(one["log_tail"])
        page = ok(await client.call_tool("logs", {"workspace": ws, "limit": 1}))
        assert page["run"] == 1 and page["runs"] == [1] and page["next_offset"] == 1
        assert page["lines"] == [_text(log).splitlines()[0]] and page["eof"] is False
        rest = ok(await client.call_tool("logs", {"workspace": ws, "offset": 1, "limit": 2000}))
        assert rest["eof"] is True and "\n".join(page["lines"] + rest["lines"]) == _text(log)
        assert set(overall["agents"]["claude"]) == {"pool", "limit", "models", "available"}
        assert overall["agents"]["claude"]["available"] is True
        assert json.loads(_text(await client.read_resource("runner://status")))["frozen"] is False
        with pytest.raises(MCPError, match="no workspace 'ws-nope'"):
            await client.read_resource("runner://workspaces/ws-nope")


async def test_kill_ends_a_sleeping_agent_as_killed_and_pushes_it(home: Home) -> None:
    async with connect(home.path) as (client, seen):
        ws = ok(await client.call_tool("dispatch", {"task": "long @sleep=60"}))["workspace"]
        queued = ok(await client.call_tool("dispatch", {"task": "behind it @sleep=60"}))
        assert queued["status"] == "queued" and queued["position"] == 1
        killed = ok(await client.call_tool("kill", {"workspace": ws}))
        assert killed == {"killed": [ws], "cancelled": []}
        [push] = await seen.until(lambda: seen.channel_for(ws), what="killed event")
        assert push.meta["state"] == "killed" and push.meta["event"] == "AgentKilled"
        assert ok(await client.call_tool("status", {"workspace": ws}))["state"] == "killed"
        everything = ok(await client.call_tool("kill", {"all": True}))
        assert queued["workspace"] in everything["killed"] + everything["cancelled"]


async def test_stop_freezes_the_queue_start_resumes_it_and_poke_drains(home: Home) -> None:
    async with connect(home.path) as (client, seen):
        assert ok(await client.call_tool("stop", {})) == {"frozen": True}
        ws = ok(await client.call_tool("dispatch", {"task": "waits for start"}))
        assert ws["status"] == "queued" and ws["frozen"] is True
        assert ok(await client.call_tool("poke", {})) == {"spawned": [], "frozen": True}
        assert ok(await client.call_tool("status", {}))["frozen"] is True
        assert ok(await client.call_tool("start", {})) == {"frozen": False}
        await seen.until(lambda: seen.channel_for(ws["workspace"]), what="completion after start")
        assert ok(await client.call_tool("poke", {})) == {"spawned": [], "frozen": False}


BAD_INPUTS: list[tuple[str, dict[str, Any], str]] = [
    (
        "dispatch",
        {"task": "x", "agent": "gpt"},
        r"no agent 'gpt' configured \(known: agent, claude, codex.*\)",
    ),
    ("dispatch", {"task": "x", "cwd": "/etc"}, r"allowed_roots|allowed roots"),
    ("dispatch", {"task": "   "}, r"task is empty"),
    ("dispatch", {}, r"dispatch needs the argument task: what the sub-agent should do.*for a fan-out\)$"),
    ("dispatch", {"task": 5}, r"^task must be a string \(got 5\)$"),
    (
        "dispatch",
        {"task": "x", "priority": "urgent"},
        r"^priority must be one of 'critical', 'high', 'medium' or 'low' \(got \"urgent\"\)$",
    ),
    ("dispatch", {"task": "x", "max_attempts": 0}, r"^max_attempts must be >= 1 \(got 0\)$"),
    # hostile or careless input (hardening): refused at the door, as a sentence
    (
        "dispatch",
        {"task": "x", "agent": "gemini:--yolo"},
        r"^model variant '--yolo' of agent 'gemini' is not allowed: it must start with a letter or digit",
    ),
    (
        "dispatch",
        {"task": "x", "agent": "claude:--dangerously-skip-permissions"},
        r"^model variant '--dangerously-skip-permissions' of agent 'claude' is not allowed",
    ),
    ("dispatch", {"task": "x", "max_attempts": "5"}, r"^max_attempts must be an integer \(got \"5\"\)$"),
    ("dispatch", {"task": "x", "max_attempts": True}, r"^max_attempts must be an integer \(got true\)$"),
    ("dispatch", {"task": "x", "max_attempts": 10**9}, r"^max_attempts must be <= 100 \(got 1000000000\)$"),
    ("dispatch", {"task": "x", "timeout_s": 1e300}, r"^timeout_s must be <= 604800"),
    ("dispatch", {"task": "x", "max_wait_s": "60"}, r"^max_wait_s must be a number \(got \"60\"\)$"),
    ("dispatch", {"task": "a\x00b"}, r"^task contains a NUL character \(\\x00, at offset 1\)"),
    ("dispatch", {"task": "x", "label": "l\x00"}, r"^label contains a NUL character"),
    ("dispatch", {"task": "x", "idempotency_key": "\x00"}, r"^idempotency_key contains a NUL character"),
    ("dispatch", {"task": "x", "cwd": "/tmp/\x00"}, r"^cwd contains a NUL character"),
    (
        "dispatch",
        {"task": "x" * (1024 * 1024 + 1)},
        r"^the task is 1\.0 MiB \(1,048,577 bytes\), more than the 1\.0 MiB dispatch\.max_task_bytes allows",
    ),
    (
        "dispatch",
        {"task": "x", "agent": "ghost"},
        r"^agent 'ghost' cannot run on this machine: its executable 'no-such-agent-cli' is not on PATH; "
        r".*'dispatch-runner doctor'",
    ),
    ("wait", {"workspaces": ["x"], "timeout_s": 1e9}, r"^timeout_s must be <= 3600"),
    ("status", {"limit": "5"}, r"^limit must be an integer \(got \"5\"\)$"),
    ("dispatch", {"task": "x", "timeout_s": "soon"}, r"^timeout_s must be a number \(got \"soon\"\)$"),
    (
        "dispatch",
        {"task": "x", "agnet": "claude"},
        r"^dispatch has no argument 'agnet'; its arguments are: task, agent",
    ),
    ("status", {"workspace": "ws-nope"}, r"^no workspace 'ws-nope'; run status to list"),
    ("status", {"state": "done"}, r"^state must be one of 'queued', 'running'"),
    ("kill", {}, r"say what to kill"),
    ("kill", {"workspace": "ws-nope"}, r"^no workspace 'ws-nope'"),
    ("kill", {"all": "maybe"}, r"^all must be true or false \(got \"maybe\"\)$"),
    ("wait", {"workspaces": ["ws-nope"]}, r"^no workspace 'ws-nope'"),
    ("wait", {"workspaces": [1]}, r"^workspaces\.0 must be a string \(got 1\)$"),
    ("wait", {"workspaces": ["x"], "mode": "some"}, r"^mode must be one of 'all' or 'any'"),
    ("nope", {}, r"Unknown tool: nope"),
]


async def test_every_bad_input_is_a_tool_error_with_an_actionable_sentence(home: Home) -> None:
    home.write_config("  ghost:\n    command: [no-such-agent-cli]\nconcurrency:\n  claude: 1\n")
    async with connect(home.path) as (client, _):
        for tool, arguments, expected in BAD_INPUTS:
            sentence = error(await client.call_tool(tool, arguments))
            assert re.search(expected, sentence), (tool, arguments, sentence)
            assert "Error executing tool" not in sentence and "pydantic" not in sentence
            assert "unexpectedly" not in sentence, sentence
        assert ok(await client.call_tool("status", {}))["counts"] == {}  # nothing was queued
        assert not (home.path / "workspaces").exists() or not any((home.path / "workspaces").iterdir())
        # queue busy beyond max_wait_s: refused with the ETA, nothing queued
        ok(await client.call_tool("dispatch", {"task": "@sleep=30"}))
        ok(await client.call_tool("dispatch", {"task": "@sleep=30"}))
        busy = error(await client.call_tool("dispatch", {"task": "x", "max_wait_s": 0}))
        assert re.search(
            r"pool 'claude' is busy at queue position \d+: its slots are full and its wait "
            r"cannot be estimated yet \(no run of it has finished\), which max_wait_s=0 does "
            r"not allow; nothing was queued",
            busy,
        ), busy
        assert ok(await client.call_tool("status", {}))["counts"].get("queued") == 1
        roots = error(await client.call_tool("dispatch", {"task": "x", "cwd": "/etc"}))
        assert str(home.root) in roots, roots
        ok(await client.call_tool("kill", {"all": True}))


async def test_each_session_gets_only_its_own_completions_unless_it_subscribes(home: Home) -> None:
    home.write_config("concurrency:\n  claude: 4\n")
    async with connect(home.path) as (one, seen_one), connect(home.path) as (two, seen_two):
        a = ok(await one.call_tool("dispatch", {"task": "first"}))["workspace"]
        b = ok(await two.call_tool("dispatch", {"task": "second @sleep=0.3"}))["workspace"]
        await seen_one.until(lambda: seen_one.channel_for(a), what="own completion (one)")
        await seen_two.until(lambda: seen_two.channel_for(b), what="own completion (two)")
        # both peers heard of both runs (log messages go to every session) ...
        await seen_one.until(lambda: seen_one.logged(b), what="log of the other run")
        await seen_two.until(lambda: seen_two.logged(a), what="log of the other run")
        # ... but each channel event went only to the session that dispatched
        assert [c.meta["workspace"] for c in seen_one.channel] == [a]
        assert [c.meta["workspace"] for c in seen_two.channel] == [b]
        # status(subscribe=true) opts a session in to every completion
        ok(await one.call_tool("status", {"subscribe": True}))
        c = ok(await two.call_tool("dispatch", {"task": "third"}))["workspace"]
        await seen_one.until(lambda: seen_one.channel_for(c), what="subscribed completion")
        await seen_two.until(lambda: seen_two.channel_for(c), what="own completion")


async def test_closing_the_client_leaves_the_run_running_and_it_is_recorded(home: Home) -> None:
    async with connect(home.path) as (client, _):
        ws = ok(await client.call_tool("dispatch", {"task": "outlives the session @sleep=1.5"}))
        assert ws["status"] == "running"
    # the server is gone; the agent finishes and its shim records the outcome
    assert wait_for(
        lambda: _cli_state(ws["workspace"]) == "completed",
        timeout=20,
        message="the run to be recorded as completed",
    )


def _cli_state(ws: str) -> str:
    """The workspace's state as `dispatch-runner status --json WS` reports it."""
    out = subprocess.run(
        [*SERVE[:-1], "status", "--json", ws], env=server_env(), capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    return str(json.loads(out.stdout)["state"])


def _handshake(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    assert proc.stdin and proc.stdout
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"},
        },
    }
    proc.stdin.write(json.dumps(init).encode() + b"\n")
    proc.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
    proc.stdin.flush()
    response: dict[str, Any] = json.loads(proc.stdout.readline())
    return response


@contextmanager
def _raw_server(home: Home) -> Iterator[subprocess.Popen[bytes]]:
    """`dispatch-runner serve` on plain pipes, for what the SDK client hides (exit, stdout)."""
    with (
        open(home.path / "raw-server.log", "w") as errlog,
        subprocess.Popen(
            SERVE, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errlog, env=server_env()
        ) as proc,
    ):
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_the_server_exits_promptly_when_stdin_closes_and_writes_only_protocol(home: Home) -> None:
    with _raw_server(home) as proc:
        assert _handshake(proc)["result"]["capabilities"]["experimental"] == {"claude/channel": {}}
        assert proc.stdin and proc.stdout
        call = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "dispatch", "arguments": {"task": "keeps going @sleep=1"}},
        }
        proc.stdin.write(json.dumps(call).encode() + b"\n")
        proc.stdin.flush()
        reply = json.loads(proc.stdout.readline())
        ws = reply["result"]["structuredContent"]["workspace"]
        closed = time.monotonic()
        proc.stdin.close()
        assert proc.wait(timeout=5) == 0
        assert time.monotonic() - closed < 1.0
        for line in proc.stdout.read().decode().splitlines():  # anything else is JSON-RPC too
            assert json.loads(line)["jsonrpc"] == "2.0"
    # the agent outlived the server, and its outcome is recorded
    assert wait_for(lambda: _cli_state(ws) == "completed", timeout=20, message="completed after exit")


def test_the_server_exits_promptly_on_sigterm(home: Home) -> None:
    with _raw_server(home) as proc:
        _handshake(proc)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        assert time.monotonic() - signalled < 1.0


def _inspector() -> list[str] | None:
    local = REPO / "node_modules" / ".bin" / "mcp-inspector"
    if local.exists():
        return [str(local), "--cli"]
    if shutil.which("npx"):
        return ["npx", "-y", "@modelcontextprotocol/inspector", "--cli"]
    return None


def test_the_mcp_inspector_cli_lists_the_tools_and_dispatches(home: Home) -> None:
    inspector = _inspector()
    if inspector is None:
        pytest.skip("needs node: neither node_modules/.bin/mcp-inspector nor npx is available")
    env_args = [
        arg
        for key in ("DISPATCH_RUNNER_HOME", "FAKE_AGENT_LOG")
        for arg in ("-e", f"{key}={server_env()[key]}")
    ]
    base = [*inspector, *env_args, sys.executable, "-m", "dispatch_runner.cli", "serve"]
    listed = subprocess.run(
        [*base, "--method", "tools/list"], capture_output=True, text=True, timeout=120, env=server_env()
    )
    assert listed.returncode == 0, listed.stderr
    assert {t["name"] for t in json.loads(listed.stdout)["tools"]} == TOOLS
    called = subprocess.run(
        [*base, "--method", "tools/call", "--tool-name", "dispatch", "--tool-arg", "task=from the inspector"],
        capture_output=True,
        text=True,
        timeout=120,
        env=server_env(),
    )
    assert called.returncode == 0, called.stderr
    result = json.loads(called.stdout)
    assert not result.get("isError"), result
    ws = result["structuredContent"]["workspace"]
    assert wait_for(lambda: _cli_state(ws) == "completed", timeout=20, message="inspector's run")
