"""Approvals (DESIGN §8; README "Sandbox and approvals"): a sub-agent that needs a permission
parks the request; the session that dispatched it is told (a channel notice), `approve` (tool or
CLI) answers it once, and the answer reaches the agent; unanswered, it is denied at the deadline.

The fake claude asks as the real CLI does in print mode: `--permission-prompt-tool` names a tool
of the MCP server `--mcp-config` describes, which it starts as a real subprocess (the runner's
`approval-server`) and calls with a real MCP client. On both store backends."""

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.conftest import Home, wait_for
from tests.fakes.overlap import events
from tests.mcp_helpers import ChannelParams, Observer, connect, error, ok
from tests.test_cli import run_cli

pytestmark = pytest.mark.anyio

ASKING = "pools:\n  claude: {sandbox: {default: workspace-write}, ask: on-miss}\n"


def permission_answers(home: Home, ws: str) -> list[dict[str, Any]]:
    """What the fake claude of `ws` was told by its permission-prompt tool."""
    return [e for e in events(home.agent_log) if e["event"] == "permission" and e["ws"] == ws]


async def notice(seen: Observer, ws: str, event: str) -> ChannelParams:
    [found] = await seen.until(
        lambda: [c for c in seen.channel_for(ws) if c.meta["event"] == event], what=f"{event} of {ws}"
    )
    return found


async def test_a_request_reaches_the_session_and_its_answer_reaches_the_agent(
    home: Home, backend: str
) -> None:
    home.write_config(ASKING)
    async with connect(home.path) as (client, seen):
        ws = ok(await client.call_tool("dispatch", {"task": "tidy up @ask=Bash"}))["workspace"]
        asked = await notice(seen, ws, "ApprovalRequested")
        request = asked.meta["request"]
        assert asked.meta["tool"] == "Bash" and asked.meta["state"] == "running"
        assert asked.content.startswith(
            f"approval: sub-agent claude in workspace {ws} asks to use Bash: echo asked."
        )
        assert f"approve (request={request}, decision allow or deny" in asked.content
        [pending] = ok(await client.call_tool("status", {}))["approvals"]
        assert pending["request"] == request and pending["workspace"] == ws and pending["tool"] == "Bash"
        assert pending["input"] == "echo asked" and pending["agent"] == "claude"
        answer = {"request": request, "decision": "allow", "note": "go ahead"}
        assert ok(await client.call_tool("approve", answer)) == {
            "request": request,
            "workspace": ws,
            "tool": "Bash",
            "decision": "allow",
            "note": "go ahead",
        }
        done = await notice(seen, ws, "AgentCompleted")
        assert "allowed: Bash" in done.content
        again = error(await client.call_tool("approve", {"request": request, "decision": "deny"}))
        assert f"approval request {request} was already answered: allow by session " in again
        assert again.endswith("an answer is final")
        unknown = error(
            await client.call_tool("approve", {"request": "apr-000000000000", "decision": "deny"})
        )
        assert unknown.startswith("no approval request 'apr-000000000000'; status lists the pending ones")
        assert ok(await client.call_tool("status", {}))["approvals"] == []
    [told] = permission_answers(home, ws)
    assert told["behavior"] == "allow" and told["updated_input"] == {"command": "echo asked"}
    [start] = [e for e in events(home.agent_log) if e["event"] == "start" and e["ws"] == ws]
    argv = start["argv"]
    assert argv[argv.index("--permission-prompt-tool") + 1] == "mcp__runner_approval__permission"
    server = json.loads(argv[argv.index("--mcp-config") + 1])["mcpServers"]["runner_approval"]
    assert server["args"][-3:] == ["approval-server", "--workspace", ws]


def pending(ws: str) -> list[dict[str, Any]]:
    approvals: list[dict[str, Any]] = json.loads(run_cli("status", "--json").stdout)["approvals"]
    return [a for a in approvals if a["workspace"] == ws]


def test_the_cli_lists_and_answers_a_request(home: Home, backend: str) -> None:
    home.write_config(ASKING)
    ws = json.loads(run_cli("dispatch", "tidy up @ask=Edit", "--json").stdout)["workspace"]
    [request] = wait_for(lambda: pending(ws), message="the request to be parked")
    assert "asks to use Edit" in run_cli("status").stdout  # the table shows it, with the command
    inside = subprocess.run(  # the asking agent's own runner (or a sibling's) cannot answer it
        [sys.executable, "-m", "dispatch_runner.cli", "approve", request["request"], "allow"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DISPATCH_RUNNER_PARENT": ws},
    )
    assert inside.returncode == 3 and "not a sub-agent of workspace" in inside.stderr
    listed = subprocess.run(  # nor is it listed to it: it is no sub-agent of its own
        [sys.executable, "-m", "dispatch_runner.cli", "status", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DISPATCH_RUNNER_PARENT": ws},
    )
    assert json.loads(listed.stdout)["approvals"] == []
    answered = run_cli("approve", request["request"], "deny", "--note", "not in this repo")
    assert answered.stdout.strip() == f"{request['request']}: deny (Edit, workspace {ws})"
    assert run_cli("wait", ws, "--timeout", "60").returncode == 0
    summary = json.loads(run_cli("status", ws, "--json").stdout)["summary"]
    assert summary == "denied: Permission denied by the person supervising this run: not in this repo"
    twice = run_cli("approve", request["request"], "allow", check=False)
    assert twice.returncode == 2 and "was already answered: deny by cli" in twice.stderr
    assert permission_answers(home, ws)[0]["behavior"] == "deny"


async def test_an_unanswered_request_is_denied_at_its_deadline(home: Home, backend: str) -> None:
    home.write_config(ASKING)
    timed = home.config.read_text().replace("dispatch:\n", "dispatch:\n  approval_timeout_s: 1\n", 1)
    home.config.write_text(timed)
    async with connect(home.path) as (client, seen):
        ws = ok(await client.call_tool("dispatch", {"task": "tidy up @ask=Bash"}))["workspace"]
        request = (await notice(seen, ws, "ApprovalRequested")).meta["request"]
        done = await notice(seen, ws, "AgentCompleted")
        assert "denied: Permission denied: no answer within 1 s (dispatch.approval_timeout_s)" in done.content
        late = error(await client.call_tool("approve", {"request": request, "decision": "allow"}))
        assert late.startswith(f"approval request {request} was not answered by its deadline")
        assert ok(await client.call_tool("status", {}))["approvals"] == []
    assert permission_answers(home, ws)[0]["behavior"] == "deny"


async def test_with_ask_off_claude_is_given_no_prompt_tool_and_refuses(home: Home, backend: str) -> None:
    async with connect(home.path) as (client, seen):
        ws = ok(await client.call_tool("dispatch", {"task": "tidy up @ask=Bash", "ask": "off"}))["workspace"]
        done = await notice(seen, ws, "AgentCompleted")
        assert "denied: Claude requested permissions to use Bash" in done.content
        assert ok(await client.call_tool("status", {}))["approvals"] == []


async def test_a_request_of_a_run_that_was_killed_waits_for_nothing(home: Home, backend: str) -> None:
    home.write_config(ASKING)
    async with connect(home.path) as (client, seen):
        ws = ok(await client.call_tool("dispatch", {"task": "tidy up @ask=Bash"}))["workspace"]
        request = (await notice(seen, ws, "ApprovalRequested")).meta["request"]
        assert ok(await client.call_tool("kill", {"workspace": ws}))["killed"] == [ws]
        await notice(seen, ws, "AgentKilled")
        assert ok(await client.call_tool("status", {}))["approvals"] == []
        gone = error(await client.call_tool("approve", {"request": request, "decision": "allow"}))
        # its approval server withdrew it when its agent went, or the run's end says so
        assert gone.startswith(f"approval request {request} ") and gone.endswith("; nothing changed")
        assert (
            "was withdrawn (the agent stopped waiting for an answer)" in gone
            or f"has nobody waiting for it: workspace {ws} is killed, so its agent has stopped" in gone
        )
    assert permission_answers(home, ws) == []  # the agent never heard an answer
