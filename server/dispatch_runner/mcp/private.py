"""Every use of the MCP SDK's private attributes, in one place.

mcp 2.3 gives no public way to reach a request's long-lived Connection (needed to push later,
outside any request) or the low-level server under MCPServer (where the spec's subscribe and
logging/setLevel handlers, and the handshake-only stdio loop, live). The `mcp` dependency is
pinned to the minor version these were written for, and tests/test_mcp_private.py fails loudly,
naming the attribute, when an SDK release moves one of them.
"""

from typing import Any, Final

from mcp.server.connection import Connection
from mcp.server.lowlevel import Server
from mcp.server.mcpserver import MCPServer
from mcp.server.session import ServerSession

# (owner class, attribute): what this module reads
USED: Final = ((ServerSession, "_connection"), (MCPServer, "_lowlevel_server"))


def connection_of(session: ServerSession) -> Connection:
    """The connection a session belongs to: it lives as long as the client (a ServerSession is
    rebuilt for every request). The SDK's extension Context reads the same field."""
    connection: Connection = session._connection
    return connection


def lowlevel(mcp: MCPServer) -> "Server[Any]":
    """The low-level server under MCPServer."""
    server: Server[Any] = mcp._lowlevel_server
    return server
