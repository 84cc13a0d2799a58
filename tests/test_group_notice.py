"""Fan-out and dependent work through the MCP tools of a real stdio server, on both stores: a
group's end reaches the dispatching client as ONE channel notice with each item's outcome and
no notice per member; wait and status take the group id; after and not_before show in the
dispatch result and status, and an unknown need is a tool error that says what to send."""

import pytest

from tests.conftest import Home
from tests.mcp_helpers import connect, error, ok

pytestmark = pytest.mark.anyio


async def test_a_groups_end_is_one_notice_with_each_items_outcome(home: Home, backend: str) -> None:
    async with connect(home.path) as (client, seen):
        args = {
            "task": "check {item}",
            "items": ["alpha", "beta @exit=4", "gamma"],
            "group_concurrency": 2,
            "agent": "agent",
            "max_attempts": 1,
        }
        out = ok(await client.call_tool("dispatch", args))
        group, members = out["group"], [w["workspace"] for w in out["workspaces"]]
        [notice] = await seen.until(
            lambda: [c for c in seen.channel if c.meta.get("event") == "GroupCompleted"],
            what="the group's notice",
        )
        # an ordinary dispatch after it: its notice comes after anything owed for the members
        plain = ok(await client.call_tool("dispatch", {"task": "plain", "agent": "agent"}))["workspace"]
        await seen.until(lambda: seen.channel_for(plain), what="the plain run's notice")
        waited = ok(await client.call_tool("wait", {"workspaces": [group], "timeout_s": 5}))
        status = ok(await client.call_tool("status", {"workspace": group}))
    assert notice.meta["group"] == notice.meta["workspace"] == group
    assert (notice.meta["state"], notice.meta["size"]) == ("failed", "3")
    assert (notice.meta["completed"], notice.meta["failed"]) == ("2", "1")
    assert notice.content.startswith(
        f"failed: fan-out group {group} of 3 sub-agents ended (2 completed, 1 failed)"
    )
    lines = notice.content.splitlines()
    assert lines[1].startswith(f"1. completed {members[0]} (alpha): ")
    assert lines[2].startswith(f"2. failed {members[1]} (beta @exit=4), exit code 4")
    assert lines[3].startswith(f"3. completed {members[2]} (gamma): ")
    assert all(seen.channel_for(m) == [] for m in members)  # no notice per member
    assert [c.meta["event"] for c in seen.channel] == ["GroupCompleted", "AgentCompleted"]
    assert waited["done"] and waited["undelivered"] == []  # pushed already: not owed again
    assert [w["state"] for w in waited["workspaces"]] == ["completed", "failed", "completed"]
    assert status["state"] == "failed" and [m["workspace"] for m in status["members"]] == members


async def test_after_and_not_before_through_the_tools(home: Home) -> None:
    home.write_config("concurrency:\n  agent: 4\n")
    async with connect(home.path) as (client, _):
        need = ok(await client.call_tool("dispatch", {"task": "need @sleep=0.5", "agent": "agent"}))[
            "workspace"
        ]
        args = {"task": "then", "agent": "agent", "after": [need], "not_before": 0.5}
        then = ok(await client.call_tool("dispatch", args))
        status = ok(await client.call_tool("status", {"workspace": then["workspace"]}))
        waited = ok(await client.call_tool("wait", {"workspaces": [then["workspace"]], "timeout_s": 20}))
        unknown = error(await client.call_tool("dispatch", {"task": "x", "after": ["ws-0101-000000-abcdef"]}))
        naive = error(await client.call_tool("dispatch", {"task": "x", "not_before": "2031-01-01T09:00:00"}))
        many = error(await client.call_tool("dispatch", {"tasks": [f"t{i}" for i in range(101)]}))
    assert (then["status"], then["held"], then["after"]) == ("queued", "after", [need])
    assert then["not_before"] is not None and status["not_before"] == then["not_before"]
    assert (status["held"], status["after"], status["after_mode"]) == ("after", [need], "success")
    assert waited["workspaces"][0]["state"] == "completed"
    assert unknown.startswith("after names workspace 'ws-0101-000000-abcdef', which does not exist")
    assert "has no UTC offset; add Z (UTC) or an offset" in naive
    assert many.startswith("tasks") and "at most 100" in many
