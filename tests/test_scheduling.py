"""Routing and scheduling end to end, with fake agents as real processes, through the MCP tools
(a real stdio client) and the CLI: preference lists and routes, an adaptive limit, preemption,
fair share between sessions and limits that change without a restart."""

import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.conftest import BASE_CONFIG, PY, Home, until
from tests.fakes import FAKE_AGENT, FAKE_CLAUDE, FAKE_CODEX
from tests.fakes.overlap import intervals, max_overlap
from tests.mcp_helpers import connect, error, ok

pytestmark = pytest.mark.anyio

# an agent whose every run hits its provider's limit (the fake claude replays a real 429)
LIMITED = f"""\
  limited:
    command: [{PY}, {FAKE_CLAUDE}, -p, --output-format, stream-json, --verbose]
    output: claude-stream-json
    stdin: prompt
    env: {{FAKE_AGENT_DIRECTIVES: "@ratelimit"}}
"""


def write(home: Home, extra: str = "") -> None:
    """The test config with the `limited` agent added, and `extra` sections."""
    base = BASE_CONFIG.format(root=home.root, py=PY, claude=FAKE_CLAUDE, codex=FAKE_CODEX, agent=FAKE_AGENT)
    home.config.write_text(base.replace("  true:\n", LIMITED + "  true:\n") + extra)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatch_runner.cli", *args], capture_output=True, text=True, timeout=120
    )


async def poll(check: Callable[[], Awaitable[bool]], *, what: str, timeout: float = 30.0) -> None:
    """Ask (an MCP call) until the answer is yes; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await anyio.sleep(0.05)


def sleeping(home: Home) -> int:
    """How many fake agents have reached their sleep (started, set up)."""
    return home.agent_log.read_text().count('"sleep"') if home.agent_log.exists() else 0


def started_order(log: Path) -> list[str]:
    """The tasks (their first word) in the order their agents started."""
    starts = [json.loads(line) for line in log.read_text().splitlines() if '"parsed"' in line]
    return [s["prompt"].split()[0] for s in sorted(starts, key=lambda s: s["t"])]


async def test_a_route_passes_a_rate_limited_agent_and_ends_on_the_next(home: Home, backend: str) -> None:
    write(home, "routes:\n  fast: [limited, codex]\n")
    async with connect(home.path) as (client, seen):
        ws = ok(await client.call_tool("dispatch", {"task": "hello", "agent": "fast"}))["workspace"]
        await seen.until(
            lambda: [c for c in seen.channel_for(ws) if c.meta["event"] == "AgentCompleted"],
            what="completion on the route's second agent",
            deadline_s=60,
        )
        view = ok(await client.call_tool("status", {"workspace": ws}))
        assert view["agent"] == "codex" and view["route"] == ["limited", "codex"]
        assert view["routed"]["agent"] == "codex"
        assert view["routed"]["skipped"]["limited"].startswith("backoff until")
        assert view["runs"] == 2 and view["state"] == "completed"


async def test_the_cli_takes_a_preference_list_and_refuses_an_unknown_entry(home: Home, backend: str) -> None:
    write(home)
    done = cli("dispatch", "hello", "--agent", "limited,codex", "--wait", "--json")
    assert done.returncode == 0, done.stderr
    ws = json.loads(done.stdout)["workspace"]
    view = json.loads(cli("status", ws, "--json").stdout)
    assert view["agent"] == "codex" and view["routed"]["skipped"]["limited"].startswith("backoff")
    bad = cli("dispatch", "hello", "--agent", "codex,nosuch")
    assert bad.returncode == 2 and "nosuch" in bad.stderr


async def test_an_adaptive_pool_halves_its_limit_on_a_rate_limit_and_status_shows_it(
    home: Home, backend: str
) -> None:
    write(home, "concurrency:\n  limited: 4\npools:\n  limited: {adaptive: {floor: 1, clean_streak: 3}}\n")
    async with connect(home.path) as (client, seen):
        ws = ok(await client.call_tool("dispatch", {"task": "hello", "agent": "limited"}))["workspace"]

        await seen.until(
            lambda: [c for c in seen.channel_for(ws) if c.meta["event"] == "AgentRetrying"], what="rate limit"
        )
        shown = ok(await client.call_tool("status", {}))["pools"]["limited"]
        assert shown["effective_limit"] == 2 and shown["limit"] == 4 and shown["adaptive"] is True
        ok(await client.call_tool("kill", {"workspace": ws}))


async def test_a_critical_dispatch_preempts_a_low_run_which_goes_back_to_the_queue(
    home: Home, backend: str
) -> None:
    home.write_config("concurrency:\n  agent: 1\npools:\n  agent: {preemption: {min_runtime_s: 0}}\n")
    async with connect(home.path) as (client, seen):
        low = ok(
            await client.call_tool(
                "dispatch", {"task": "slow @sleep=60", "agent": "agent", "priority": "low"}
            )
        )["workspace"]
        await until(lambda: sleeping(home) == 1, message="low running")
        urgent = ok(
            await client.call_tool("dispatch", {"task": "urgent", "agent": "agent", "priority": "critical"})
        )["workspace"]
        [notice] = await seen.until(
            lambda: [c for c in seen.channel_for(low) if c.meta["event"] == "AgentPreempted"],
            what="preemption notice",
        )
        assert notice.meta["reason"] == "preempted" and notice.content.startswith("preempted:")
        await seen.until(
            lambda: [c for c in seen.channel_for(urgent) if c.meta["event"] == "AgentCompleted"],
            what="the critical run's end",
        )
        await until(lambda: sleeping(home) == 2, message="the preempted run started again")
        view = ok(await client.call_tool("status", {"workspace": low}))
        assert view["runs"] == 2 and view["state"] == "running"
        ok(await client.call_tool("kill", {"workspace": low}))
    assert max_overlap(home.agent_log) == 1  # never more than the limit, before or after


async def test_fair_share_lets_another_sessions_task_go_before_a_burst(home: Home, backend: str) -> None:
    home.write_config("concurrency:\n  agent: 1\n")
    async with connect(home.path, DISPATCH_RUNNER_SESSION="alice") as (alice, _seen):
        async with connect(home.path, DISPATCH_RUNNER_SESSION="bob") as (bob, _):
            first = ok(await alice.call_tool("dispatch", {"task": "a0 @sleep=1", "agent": "agent"}))
            await until(lambda: sleeping(home) == 1, message="a0 running")
            for i in (1, 2, 3):
                ok(await alice.call_tool("dispatch", {"task": f"a{i}", "agent": "agent"}))
            ok(await bob.call_tool("dispatch", {"task": "b0", "agent": "agent"}))
            await until(lambda: len(intervals(home.agent_log)) == 5, message="all five ran", timeout=60)
            assert first["workspace"]
    assert started_order(home.agent_log) == ["a0", "b0", "a1", "a2", "a3"]


async def test_a_changed_limit_applies_without_a_restart_and_a_bad_edit_keeps_the_old(
    home: Home, backend: str
) -> None:
    home.write_config("concurrency:\n  agent: 1\n")
    async with connect(home.path) as (client, _seen):
        ids = [
            ok(await client.call_tool("dispatch", {"task": f"job{i} @sleep=60", "agent": "agent"}))[
                "workspace"
            ]
            for i in range(3)
        ]

        async def running() -> int:
            return int(ok(await client.call_tool("status", {}))["pools"]["agent"]["running"])

        await until(lambda: sleeping(home) == 1, message="one runs")
        home.write_config("concurrency:\n  agent: 2\n")
        await until(lambda: sleeping(home) == 2, message="the second starts on the new limit")
        home.config.write_text(home.config.read_text() + "concurrency: [not, a, mapping]\n")
        status: dict[str, Any] = {}

        async def error_shown() -> bool:
            status.update(ok(await client.call_tool("status", {})))
            return bool(status["config"]["error"])

        await poll(error_shown, what="status says the edit is invalid")
        assert "previous config is in force" in status["config"]["error"]
        assert status["pools"]["agent"]["limit"] == 2 and await running() == 2
        ok(await client.call_tool("kill", {"all": True}))
        assert len(ids) == 3


async def test_a_preempted_claude_run_resumes_its_session(home: Home, backend: str) -> None:
    io = "--input-format, stream-json, --output-format, stream-json, --verbose"
    chat = f"""\
  chat:
    command: [{PY}, {FAKE_CLAUDE}, -p, {io}]
    resume_command: [{PY}, {FAKE_CLAUDE}, -p, --resume, "{{session_id}}", {io}]
    output: claude-stream-json
    stdin: prompt
"""
    home.write_config(chat + "concurrency:\n  chat: 1\npools:\n  chat: {preemption: {min_runtime_s: 0}}\n")
    async with connect(home.path) as (client, seen):
        low = ok(
            await client.call_tool(
                "dispatch", {"task": "slow @turns=3 @sleep=20", "agent": "chat", "priority": "low"}
            )
        )
        await until(lambda: sleeping(home) >= 1, message="the low run working")
        urgent = ok(
            await client.call_tool("dispatch", {"task": "urgent", "agent": "chat", "priority": "critical"})
        )["workspace"]
        await seen.until(
            lambda: [c for c in seen.channel_for(urgent) if c.meta["event"] == "AgentCompleted"],
            what="the critical run's end",
        )
        parsed = await until(
            lambda: [e for e in events(home) if e["event"] == "parsed" and e.get("resume")],
            message="the preempted run resumed with --resume",
        )
        assert parsed[0]["prompt"].startswith("You were stopped to free a slot")
        ok(await client.call_tool("kill", {"workspace": low["workspace"]}))


def events(home: Home) -> list[dict[str, Any]]:
    if not home.agent_log.exists():
        return []
    return [json.loads(line) for line in home.agent_log.read_text().splitlines()]


async def test_a_bad_preference_list_is_refused_and_queues_nothing(home: Home, backend: str) -> None:
    write(home)
    async with connect(home.path) as (client, _seen):
        for agent, says in (
            (["claude"] * 9, "at most 8"),
            ([], "at least 1"),
            (["claude", 3], "string"),
            (["claude", "claude"], "twice"),
            (["claude", "nosuch"], "nosuch"),
            ("nosuch", "nosuch"),
        ):
            refusal = error(await client.call_tool("dispatch", {"task": "x", "agent": agent}))
            assert says in refusal, (agent, refusal)
        assert ok(await client.call_tool("status", {}))["counts"] == {}
        # a plain agent name is no list: its length is not a list's
        named = ok(await client.call_tool("dispatch", {"task": "x", "agent": "codex:gpt-5.4-long-name"}))
        assert named["agent"] == "codex:gpt-5.4-long-name"
