"""The client side the MCP benches share: channel pushes of one session and tool results.
(A few lines after tests/mcp_helpers.py; bench does not import tests/.)"""

import time
from collections import Counter
from typing import Any

import anyio
from mcp.client import ClientExtension, NotificationBinding
from pydantic import BaseModel

CHANNEL = "notifications/claude/channel"


class ChannelParams(BaseModel):
    content: str
    meta: dict[str, str] = {}


class Pushes:
    """Channel events of one session: when each workspace's first push arrived, and how many."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.seen: Counter[str] = Counter()
        self._waiters: dict[str, anyio.Event] = {}

    async def on_channel(self, params: ChannelParams) -> None:
        t = time.time()
        ws = params.meta.get("workspace", "?")
        self.at.setdefault(ws, t)
        self.seen[ws] += 1
        waiter = self._waiters.pop(ws, None)
        if waiter is not None:
            waiter.set()

    async def wait(self, ws: str, deadline_s: float = 30.0) -> float:
        if ws not in self.at:
            event = self._waiters.setdefault(ws, anyio.Event())
            with anyio.fail_after(deadline_s):
                await event.wait()
        return self.at[ws]

    def extension(self) -> ClientExtension:
        pushes = self

        class ClaudeChannel(ClientExtension):
            identifier = "com.example/claude-channel"

            def notifications(self) -> list[NotificationBinding[Any]]:
                return [
                    NotificationBinding(method=CHANNEL, params_type=ChannelParams, handler=pushes.on_channel)
                ]

        return ClaudeChannel()


def structured(result: Any) -> dict[str, Any]:
    if result.is_error or not isinstance(result.structured_content, dict):
        text = result.content[0].text if result.content else ""
        raise RuntimeError(f"tool error: {text}")
    content: dict[str, Any] = result.structured_content
    return content
