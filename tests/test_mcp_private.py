"""The SDK's private attributes we rely on (all read in dispatch_runner/mcp/private.py) still
exist in the installed mcp release, on real objects: an upgrade that moves one fails here, by
name, before it fails in a client session."""

import pytest
from mcp.server.mcpserver import MCPServer

import dispatch_runner.mcp.private as mcp_private
from tests.conftest import Home
from tests.mcp_helpers import connect

pytestmark = pytest.mark.anyio


def test_every_private_attribute_is_listed_and_exists_on_the_mcpserver() -> None:
    names = {name for _, name in mcp_private.USED}
    assert names == {"_connection", "_lowlevel_server"}
    server = MCPServer("probe")
    assert hasattr(server, "_lowlevel_server"), "MCPServer._lowlevel_server is gone from this mcp release"
    assert mcp_private.lowlevel(server) is server._lowlevel_server


async def test_a_session_still_reaches_its_connection(home: Home) -> None:
    # end to end: pushes need ServerSession._connection; a channel event proves it is there
    async with connect(home.path) as (client, seen):
        result = await client.call_tool("dispatch", {"task": "hi"})
        assert not result.is_error
        ws = result.structured_content["workspace"]
        await seen.until(lambda: seen.channel_for(ws), what="a channel event (needs the connection)")
