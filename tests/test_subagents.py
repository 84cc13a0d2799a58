"""Sub-agents that dispatch sub-agents: the parent, depth and store reach every agent's
environment; a dispatch from inside a run is recorded under its parent and refused past
dispatch.max_depth or the tree's dispatch.max_descendants, through the real MCP surface and the
real CLI run by a real agent; kill --tree takes a whole tree."""

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from dispatch_runner.store import Store, open_store
from tests.conftest import PY, Home, wait_for
from tests.fakes import FAKE_AGENT
from tests.mcp_helpers import connect, error, ok

pytestmark = pytest.mark.anyio

# an agent that dispatches its own task again, to itself, through the CLI: without a guard the
# tree would grow without end
NESTING = """\
version: 1
dispatch:
  default_agent: nest
  default_template: none
  allowed_roots: [{root}]
  kill_grace_s: 1
  max_depth: {depth}
  max_descendants: {descendants}
pools:
  nest: {{max_attempts: 1}}
agents:
  nest:
    command: [{py}, -m, dispatch_runner.cli, dispatch, --agent, nest, --json, "{{prompt}}"]
  agent:
    command: [{py}, {agent}, "{{prompt}}"]
"""


def nesting(home: Home, *, depth: int, descendants: int) -> None:
    home.config.write_text(
        NESTING.format(root=home.root, py=PY, agent=FAKE_AGENT, depth=depth, descendants=descendants)
    )


def store_of(home: Home) -> Store:
    return open_store(os.environ.get("DISPATCH_RUNNER_STORE") or f"sqlite:///{home.path / 'state.db'}")


def tree(store: Store, top: str) -> dict[str, Any]:
    """The tree under `top`: {workspace: (state, depth, parent)} of every workspace."""
    ids = [top, *store.subtree([top])]
    return {w: (r.state, r.depth, r.parent) for w, r in zip(ids, store.workspaces(ids), strict=True) if r}


async def ended_tree(home: Home, store: Store, *, size: int) -> str:
    """Dispatch the self-dispatching agent from a client session; its top workspace, once the
    tree under it has `size` workspaces and every one of them ended."""
    async with connect(home.path) as (client, _):
        top = str(ok(await client.call_tool("dispatch", {"task": "again"}))["workspace"])
    wait_for(
        lambda: (
            len(t := tree(store, top)) == size and all(s in ("completed", "failed") for s, _, _ in t.values())
        ),
        timeout=30,
        message=f"a tree of {size} to end",
    )
    return top


def stderr_of(store: Store, workspace: str) -> str:
    row = store.get_workspace(workspace)
    assert row is not None
    return "".join(p.read_text() for p in sorted(Path(row.path).glob("run-*.err.log")))


async def test_a_run_s_own_dispatch_is_its_child_and_the_depth_limit_stops_the_recursion(
    home: Home, backend: str
) -> None:
    nesting(home, depth=2, descendants=10)
    store = store_of(home)
    try:
        top = await ended_tree(home, store, size=2)
        [child] = store.subtree([top])
        assert tree(store, top) == {top: ("completed", 1, None), child: ("failed", 2, top)}
        child_row = store.get_workspace(child)
        assert child_row is not None and child_row.runs == 1  # its parent's end never took its run
        said = stderr_of(store, child)
        assert "depth 3" in said and "dispatch.max_depth = 2" in said and "nothing was queued" in said
        assert [c["workspace"] for c in store.children(top)] == [child]
        status = ok_status(home, top)
        assert status["children"] == [{"workspace": child, "agent": "nest", "state": "failed"}]
        assert ok_status(home, child)["parent"] == top
    finally:
        store.close()


def ok_status(home: Home, workspace: str) -> dict[str, Any]:
    out = subprocess.run(
        [PY, "-m", "dispatch_runner.cli", "status", workspace, "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


async def test_the_descendant_budget_stops_a_deep_tree(home: Home) -> None:
    nesting(home, depth=10, descendants=2)
    store = store_of(home)
    try:
        top = await ended_tree(home, store, size=3)
        states = sorted((depth, state) for state, depth, _ in tree(store, top).values())
        assert states == [(1, "completed"), (2, "completed"), (3, "failed")]
        last = next(w for w, (_, depth, _) in tree(store, top).items() if depth == 3)
        assert "dispatch.max_descendants = 2" in stderr_of(store, last)
    finally:
        store.close()


async def test_a_session_inside_a_run_is_refused_past_the_depth_with_the_limit_to_raise(
    home: Home, backend: str
) -> None:
    """An MCP server started by a sub-agent inherits its environment (DISPATCH_RUNNER_PARENT)."""
    home.write_config()
    async with connect(home.path) as (client, _):
        top = ok(await client.call_tool("dispatch", {"task": "hi", "agent": "agent"}))["workspace"]
    async with connect(home.path, DISPATCH_RUNNER_PARENT=top) as (client, _):
        child = ok(await client.call_tool("dispatch", {"task": "hi", "agent": "agent"}))["workspace"]
        detail = ok(await client.call_tool("status", {"workspace": child}))
        assert (detail["parent"], detail["depth"]) == (top, 2)
    async with connect(home.path, DISPATCH_RUNNER_PARENT=child) as (client, _):
        refused = error(await client.call_tool("dispatch", {"task": "hi", "agent": "agent"}))
        assert "depth 3" in refused and "dispatch.max_depth = 2" in refused and "agents.yaml" in refused
        overview = ok(await client.call_tool("status", {}))
        assert sum(overview["counts"].values()) == 2  # nothing was queued


async def test_every_agent_learns_its_workspace_depth_and_store(home: Home) -> None:
    home.write_config(
        "  env:\n    command: [sh, -c, 'echo \"$DISPATCH_RUNNER_PARENT $DISPATCH_RUNNER_DEPTH "
        "$DISPATCH_RUNNER_STORE $DISPATCH_RUNNER_HOME\"']\n    end_of_options: false\n"
    )
    async with connect(home.path) as (client, _):
        ws = ok(await client.call_tool("dispatch", {"task": "x", "agent": "env"}))["workspace"]
        done = ok(await client.call_tool("wait", {"workspaces": [ws], "timeout_s": 20}))
    parent, depth, store_url, home_dir = done["workspaces"][0]["summary"].split()
    assert (parent, depth, home_dir) == (ws, "1", str(home.path))
    assert store_url.startswith(("sqlite:///", "postgresql://"))


async def test_kill_tree_takes_the_sub_agents_too(home: Home) -> None:
    home.write_config()
    async with connect(home.path) as (client, _):
        top = ok(await client.call_tool("dispatch", {"task": "@sleep=60", "agent": "agent"}))["workspace"]
    async with connect(home.path, DISPATCH_RUNNER_PARENT=top) as (client, _):
        child = ok(await client.call_tool("dispatch", {"task": "@sleep=60", "agent": "agent"}))["workspace"]
    async with connect(home.path) as (client, _):
        alone = ok(await client.call_tool("kill", {"workspace": top}))
        assert alone["killed"] == [top]
        assert ok(await client.call_tool("status", {"workspace": child}))["state"] == "running"
    async with connect(home.path, DISPATCH_RUNNER_PARENT=top) as (client, _):
        second = ok(await client.call_tool("dispatch", {"task": "@sleep=60", "agent": "agent"}))
    out = subprocess.run(
        [PY, "-m", "dispatch_runner.cli", "kill", top, "--tree", "--json"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    killed = json.loads(out.stdout)
    assert sorted(killed["killed"]) == sorted([child, second["workspace"]])
