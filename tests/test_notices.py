"""Notices about running work, pushed to the session that dispatched it: a run that went silent
(stalled) and a run its provider's limit sent back to the queue, with why and until when."""

import pytest

from tests.conftest import Home
from tests.mcp_helpers import connect, ok

pytestmark = pytest.mark.anyio


async def test_a_silent_run_is_announced_as_stalled_to_its_session(home: Home) -> None:
    home.write_config("pools:\n  agent: {idle_timeout_s: 0.5}\n")
    async with connect(home.path) as (client, seen):
        ws = ok(await client.call_tool("dispatch", {"task": "@silent=3 quiet", "agent": "agent"}))[
            "workspace"
        ]
        [notice] = await seen.until(
            lambda: [c for c in seen.channel_for(ws) if c.meta["event"] == "AgentStalled"],
            what="stall notice",
        )
        assert notice.meta["reason"] == "stalled" and notice.meta["state"] == "running"
        assert notice.content.startswith(f"stalled: sub-agent agent in workspace {ws} has written no output")
        assert ok(await client.call_tool("status", {"workspace": ws}))["stalled"] is True
        await seen.until(
            lambda: [c for c in seen.channel_for(ws) if c.meta["event"] == "AgentCompleted"], what="its end"
        )
        assert ok(await client.call_tool("status", {"workspace": ws}))["stalled"] is False


async def test_a_rate_limited_run_says_why_and_until_when(home: Home) -> None:
    async with connect(home.path) as (client, seen):
        task = "@fixture=claude-err-usage-limit-oauth-stream-json"
        ws = ok(await client.call_tool("dispatch", {"task": task}))["workspace"]
        [notice] = await seen.until(
            lambda: [c for c in seen.channel_for(ws) if c.meta["event"] == "AgentRetrying"],
            what="requeue notice",
        )
        assert notice.meta["reason"] == "rate_limited" and notice.meta["state"] == "queued"
        detail = ok(await client.call_tool("status", {"workspace": ws}))
        assert detail["state"] == "queued" and detail["backoff_until"] is not None
        assert notice.meta["until"] == detail["backoff_until"]
        assert f"its pool waits until {detail['backoff_until']}" in notice.content
        ok(await client.call_tool("kill", {"workspace": ws}))
