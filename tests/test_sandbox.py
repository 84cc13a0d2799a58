"""Sandbox levels (DESIGN §8; README "Sandbox and approvals"): each CLI is started with its own
options for a level, before its data; a level past its pool's ceiling is refused with the ceiling
and where to raise it; a sub-agent's own dispatch never gets a wider level than its parent's.
Through the CLI and the MCP tools, on both store backends, with fake CLIs that parse argv as the
real ones do (the built-in agents' flag maps, only the executables swapped for the fakes)."""

import json
from pathlib import Path
from typing import Any

import pytest

from dispatch_runner.config import parse_config
from dispatch_runner.errors import ConfigError
from tests.conftest import PY, Home, wait_for
from tests.fakes import FAKE_GEMINI
from tests.fakes.overlap import starts
from tests.mcp_helpers import connect, error, ok
from tests.test_cli import run_cli

pytestmark = pytest.mark.anyio

GEMINI = f'  gemini:\n    command: [{PY}, {FAKE_GEMINI}, -m, "{{model}}"]\n    stdin: prompt\n'
# what each CLI must be started with, per level (the README's table)
EXPECTED = {
    ("claude", "read-only"): ["--permission-mode", "plan", "--disallowedTools", "Edit,Write,NotebookEdit"],
    ("claude", "workspace-write"): ["--permission-mode", "acceptEdits"],
    ("claude", "full"): ["--permission-mode", "bypassPermissions"],
    ("codex", "read-only"): ["--sandbox", "read-only"],
    ("codex", "workspace-write"): ["--sandbox", "workspace-write"],
    ("codex", "full"): ["--sandbox", "danger-full-access"],
    ("gemini", "read-only"): ["--approval-mode", "default"],
    ("gemini", "workspace-write"): ["--approval-mode", "auto_edit"],
    ("gemini", "full"): ["--approval-mode", "yolo"],
}


def argv_of(home: Home, ws: str) -> list[str]:
    """The argv the workspace's agent was started with (after the fake's own path)."""
    [start] = wait_for(lambda: [e for e in starts(home.agent_log) if e["ws"] == ws], message=f"{ws} to start")
    argv: list[str] = start["argv"][1:]
    return argv


def has_run(argv: list[str], flags: list[str]) -> bool:
    """`flags` appear in `argv` one after the other."""
    return any(argv[i : i + len(flags)] == flags for i in range(len(argv)))


def dispatched(*args: str) -> str:
    workspace: str = json.loads(run_cli("dispatch", *args, "--json").stdout)["workspace"]
    return workspace


def test_each_cli_is_started_with_its_own_options_for_each_level(home: Home, backend: str) -> None:
    home.write_config(GEMINI + "pools:\n  codex: {sandbox: {network: false}}\n")
    started = {key: dispatched("work", "--agent", key[0], "--sandbox", key[1]) for key in EXPECTED}
    assert run_cli("wait", *started.values(), "--timeout", "60", check=False).returncode == 0
    for (agent, level), ws in started.items():
        argv = argv_of(home, ws)
        assert has_run(argv, EXPECTED[agent, level]), (agent, level, argv)
        if agent == "codex":  # options before the `-` that says the prompt is on stdin
            assert has_run(argv, ["-c", "sandbox_workspace_write.network_access=false"]), argv
            assert argv[-1] == "-" and argv.index(EXPECTED[agent, level][0]) < len(argv) - 1
        else:
            assert "sandbox_workspace_write.network_access=false" not in argv
    plain = dispatched("no level", "--agent", "claude")  # no policy anywhere: the CLI's own settings
    never = dispatched("no approvals", "--agent", "codex", "--ask", "off")
    run_cli("wait", plain, never, "--timeout", "60")
    assert not {"--permission-mode", "--permission-prompt-tool", "-c"} & set(argv_of(home, plain))
    assert has_run(argv_of(home, never), ["-c", 'approval_policy="never"'])


async def test_a_level_past_the_pools_ceiling_is_refused_and_the_default_applies(
    home: Home, backend: str
) -> None:
    home.write_config("pools:\n  claude: {sandbox: {default: read-only, ceiling: workspace-write}}\n")
    async with connect(home.path) as (client, _):
        refused = error(await client.call_tool("dispatch", {"task": "x", "sandbox": "full"}))
        assert (
            "sandbox 'full' is wider than pool 'claude' allows: its ceiling is 'workspace-write'" in refused
        )
        assert (
            f"pools.claude.sandbox.ceiling). Ask for workspace-write or narrower, or raise the ceiling in {home.config}"
            in refused
        )
        assert refused.endswith("nothing was queued")
        by_default = ok(await client.call_tool("dispatch", {"task": "x"}))["workspace"]
        allowed = ok(await client.call_tool("dispatch", {"task": "x", "sandbox": "workspace-write"}))[
            "workspace"
        ]
        assert ok(await client.call_tool("wait", {"workspaces": [by_default, allowed]}))["done"]
        overview = ok(await client.call_tool("status", {}))
    assert has_run(argv_of(home, by_default), EXPECTED["claude", "read-only"])
    assert has_run(argv_of(home, allowed), EXPECTED["claude", "workspace-write"])
    assert overview["counts"] == {"completed": 2}  # the refused one left nothing behind
    cli = run_cli("dispatch", "x", "--sandbox", "full", check=False)
    assert cli.returncode == 3 and "its ceiling is 'workspace-write'" in cli.stderr


NESTING = """\
  nest:                           # an agent that dispatches a sub-agent through the CLI
    command: [{py}, -m, dispatch_runner.cli, dispatch, --agent, codex, --json, "{{prompt}}"]
    sandbox: {{read-only: [], workspace-write: [], full: []}}
  widen:                      # … and asks for more than it has itself
    command: [{py}, -m, dispatch_runner.cli, dispatch, --agent, codex, --sandbox, full, --json, "{{prompt}}"]
    sandbox: {{read-only: [], workspace-write: [], full: []}}
pools:
  nest: {{max_attempts: 1}}
  widen: {{max_attempts: 1}}
"""


async def test_a_sub_agent_never_gets_a_wider_sandbox_than_its_parent(home: Home, backend: str) -> None:
    home.write_config(NESTING.format(py=PY))
    async with connect(home.path) as (client, _):
        wide = ok(
            await client.call_tool("dispatch", {"task": "child", "agent": "widen", "sandbox": "read-only"})
        )
        narrow = ok(
            await client.call_tool("dispatch", {"task": "child", "agent": "nest", "sandbox": "read-only"})
        )
        # a parent with no level runs with its CLI's own settings: its children get read-only
        unset = ok(await client.call_tool("dispatch", {"task": "child", "agent": "widen"}))
        ids = [wide["workspace"], narrow["workspace"], unset["workspace"]]
        assert ok(await client.call_tool("wait", {"workspaces": ids, "timeout_s": 50}))["done"]
        unset_view = ok(await client.call_tool("status", {"workspace": unset["workspace"]}))
        assert unset_view["state"] == "failed" and unset_view["children"] == []
        assert "may do (read-only: it runs with its CLI's own settings)" in unset_view["log_tail"]
        refused = ok(await client.call_tool("status", {"workspace": wide["workspace"]}))
        parent = ok(await client.call_tool("status", {"workspace": narrow["workspace"]}))
        [child] = parent["children"]
        assert ok(await client.call_tool("wait", {"workspaces": [child["workspace"]], "timeout_s": 50}))[
            "done"
        ]
    # the refusal is the sub-agent's CLI's exit code 3 and its sentence, nothing was dispatched
    assert refused["state"] == "failed" and refused["exit_code"] == 3 and refused["children"] == []
    assert (
        f"sandbox 'full' is wider than what workspace {wide['workspace']}, whose agent dispatches "
        "it, may do (read-only)" in refused["log_tail"] + (refused["summary"] or "")
    )
    # a default (codex has none here) is the parent's level: the child runs read-only
    assert has_run(argv_of(home, child["workspace"]), EXPECTED["codex", "read-only"])


async def test_what_an_agent_cannot_do_is_refused_with_the_reason(home: Home, backend: str) -> None:
    home.write_config(GEMINI + "pools:\n  gemini: {sandbox: {network: false}}\n")
    async with connect(home.path) as (client, _):
        offline = error(await client.call_tool("dispatch", {"task": "x", "agent": "gemini"}))
        assert "agent 'gemini' cannot run with the network off" in offline
        no_map = error(
            await client.call_tool("dispatch", {"task": "x", "agent": "agent", "sandbox": "read-only"})
        )
        assert "agent 'agent' has no options for the 'read-only' sandbox (levels it has: none)" in no_map
        no_channel = error(
            await client.call_tool("dispatch", {"task": "x", "agent": "codex", "ask": "on-miss"})
        )
        assert "agent 'codex' cannot park approval requests (ask 'on-miss'" in no_channel
        wrong = error(await client.call_tool("dispatch", {"task": "x", "sandbox": "sideways"}))
        assert wrong.startswith("sandbox must be one of") and "sideways" in wrong
        assert ok(await client.call_tool("status", {}))["counts"] == {}


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        (
            "pools:\n  claude: {sandbox: {default: full, ceiling: read-only}}\n",
            "wider than its ceiling 'read-only'",
        ),
        (
            "pools:\n  claude: {sandbox: {ceiling: everything}}\n",
            "use one of read-only, workspace-write, full",
        ),
        ("pools:\n  claude: {ask: sometimes}\n", "use one of off, on-miss, always"),
        ("agents:\n  claude:\n    sandbox: {full: [yolo]}\n", "a list of the CLI's own options"),
        ("agents:\n  claude:\n    sandbox: {full: [--x, '{prompt}']}\n", "flags are fixed strings"),
        ("agents:\n  claude:\n    ask: {on-miss: [--tool, 'x{approval_tool}']}\n", "flags are fixed strings"),
        ("agents:\n  claude:\n    sandbox: {sometimes: [--x]}\n", "unknown key"),
    ],
)
def test_a_bad_policy_in_agents_yaml_names_its_line_and_field(yaml_text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"agents\.yaml:[0-9]+: ") as caught:
        parse_config(yaml_text, "agents.yaml", home=Path("/tmp"), env={})
    assert message in str(caught.value)


def test_a_pools_policy_and_an_agents_own_maps_are_read(tmp_path: Path) -> None:
    text = (
        "pools:\n  claude: {sandbox: {default: read-only, ceiling: workspace-write, network: false}, ask: off}\n"
        "agents:\n  mytool:\n    command: [mytool]\n    sandbox: {read-only: [--ro], network_off: []}\n"
        "    ask: {off: [], on-miss: [--prompt-tool, '{approval_tool}']}\n"
    )
    config = parse_config(text, "agents.yaml", home=tmp_path, env={})
    policy: Any = config.pool_policy("claude")
    assert (policy.sandbox.default, policy.sandbox.ceiling, policy.sandbox.network, policy.ask) == (
        "read-only",
        "workspace-write",
        False,
        "off",
    )
    assert config.agents["mytool"].sandbox == {"read-only": ("--ro",), "network_off": ()}
    assert config.agents["mytool"].ask["on-miss"] == ("--prompt-tool", "{approval_tool}")
    assert config.agents["claude"].sandbox["full"] == ("--permission-mode", "bypassPermissions")


def test_a_sub_agent_asks_at_least_as_often_as_its_parent_and_gets_read_only_under_an_unset_one() -> None:
    from dispatch_runner.actions import DispatchRequest
    from dispatch_runner.errors import LimitRefused
    from dispatch_runner.runner.sandboxing import Parent, Policy, resolve

    cfg = parse_config(
        "pools:\n  claude: {sandbox: {default: workspace-write}}\n", "agents.yaml", home=Path("/h"), env={}
    )
    claude = cfg.agents["claude"]
    asking = Parent("ws-parent", Policy(sandbox="workspace-write", ask="always"))
    child = resolve(cfg, "claude", claude, DispatchRequest(task="x", ask="off"), parent=asking)
    assert (child.sandbox, child.ask) == ("workspace-write", "always")
    unset = Parent("ws-parent", Policy())
    assert resolve(cfg, "claude", claude, DispatchRequest(task="x"), parent=unset).sandbox == "read-only"
    with pytest.raises(LimitRefused, match="it runs with its CLI's own settings"):
        resolve(cfg, "claude", claude, DispatchRequest(task="x", sandbox="full"), parent=unset)
    top = resolve(cfg, "claude", claude, DispatchRequest(task="x"), parent=None)
    assert top.sandbox == "workspace-write"  # a client's dispatch gets its pool's default
