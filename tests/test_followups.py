"""Follow-ups through the surfaces people and models use: `dispatch --resume` and `message` on
the CLI, `dispatch(resume=…)` and the `message` tool over a real MCP session, on both store
backends; the resume command line as the built-ins write it (`--resume {session_id}`)."""

import json
import os
import subprocess
from typing import Any

import pytest

from tests.conftest import PY, Home, wait_for
from tests.fakes import FAKE_CLAUDE
from tests.fakes.overlap import events as fake_events
from tests.mcp_helpers import connect, error, ok

pytestmark = pytest.mark.anyio

CLAUDE_SESSION = "8723ada8-da2a-4f6e-ac20-8ae08afb34e3"  # in the claude-plain-* transcripts
IO = "--input-format, stream-json, --output-format, stream-json, --verbose"
AGENTS = f"""\
  chat:
    command: [{PY}, {FAKE_CLAUDE}, -p, {IO}]
    resume_command: [{PY}, {FAKE_CLAUDE}, -p, --resume, "{{session_id}}", {IO}]
    output: claude-stream-json
    stdin: prompt
"""


@pytest.fixture
def chat(home: Home, backend: str) -> str:
    """The home's config with a resumable claude that reads live input, on `backend`'s store."""
    home.write_config(AGENTS)
    return backend


def cli(*args: str) -> tuple[int, Any, str]:
    done = subprocess.run(
        [PY, "-m", "dispatch_runner.cli", *args, "--json"], capture_output=True, text=True, env=os.environ
    )
    out = json.loads(done.stdout) if done.stdout.strip() else None
    return done.returncode, out, done.stderr


def status(ws: str) -> dict[str, Any]:
    code, out, err = cli("status", ws)
    assert code == 0, err
    result: dict[str, Any] = out
    return result


def parsed(home: Home, ws: str) -> list[dict[str, Any]]:
    return [e for e in fake_events(home.agent_log) if e["ws"] == ws and e["event"] == "parsed"]


def test_dispatch_resume_on_the_cli_continues_the_session(home: Home, chat: str) -> None:
    code, sent, err = cli("dispatch", "write the plan", "--agent", "chat", "--wait")
    assert code == 0, err
    ws = sent["workspace"] if "workspace" in sent else sent["workspaces"][0]["workspace"]
    first = status(ws)
    assert first["state"] == "completed" and first["session_id"] == CLAUDE_SESSION
    assert first["usage"]["output_tokens"] and first["cost_usd"] is not None and first["turns"]
    code, again, err = cli("dispatch", "now the tests", "--resume", ws)
    assert code == 0, err
    assert again["workspace"] == ws and again["resumed"] is True and again["delivered"] == "queued"
    wait_for(lambda: status(ws)["state"] == "completed" and status(ws)["runs"] == 2, timeout=30)
    fresh, resumed = parsed(home, ws)
    assert fresh["resume"] is None and resumed["resume"] == CLAUDE_SESSION
    assert resumed["prompt"] == "now the tests"  # as written: a follow-up is never wrapped
    done = status(ws)
    assert done["cost_usd"] == pytest.approx(2 * first["cost_usd"])  # summed over its runs


def test_a_follow_up_that_cannot_be_delivered_is_refused_with_the_reason(home: Home, chat: str) -> None:
    code, _, err = cli("dispatch", "x", "--resume", "ws-0101-000000-abcdef")
    assert code == 2 and "ws-0101-000000-abcdef" in err
    code, sent, err = cli("dispatch", "@exit=3", "--agent", "agent", "--max-attempts", "1", "--wait")
    ws = sent["workspaces"][0]["workspace"] if "workspaces" in sent else sent["workspace"]
    code, _, err = cli("message", ws, "more")
    assert code == 2 and "cannot take a follow-up" in err and "resume_command" in err
    code, _, err = cli("dispatch", "x", "--resume", ws, "--agent", "claude")
    assert code == 2 and "leave out agent" in err


async def test_the_message_tool_reaches_a_running_agent_live_and_an_ended_one_by_resuming(
    home: Home, chat: str
) -> None:
    async with connect(home.path) as (client, seen):
        ws = ok(await client.call_tool("dispatch", {"task": "first @sleep=3", "agent": "chat"}))["workspace"]
        wait_for(lambda: any(e["event"] == "sleep" and e["ws"] == ws for e in fake_events(home.agent_log)))
        live = ok(await client.call_tool("message", {"workspace": ws, "text": "are you there"}))
        assert live == {"workspace": ws, "delivered": "live", "state": "running"}
        await seen.until(lambda: seen.channel_for(ws), what="its completion")
        detail = ok(await client.call_tool("status", {"workspace": ws}))
        assert detail["summary"] == "echo: are you there" and detail["runs"] == 1
        later = ok(await client.call_tool("message", {"workspace": ws, "text": "one more thing"}))
        assert later["delivered"] == "queued"
        done = ok(await client.call_tool("wait", {"workspaces": [ws], "timeout_s": 30}))
        assert done["done"] and done["workspaces"][0]["state"] == "completed"
        assert ok(await client.call_tool("status", {"workspace": ws}))["runs"] == 2
        refused = error(
            await client.call_tool("message", {"workspace": "ws-0101-000000-abcdef", "text": "x"})
        )
        assert "ws-0101-000000-abcdef" in refused
