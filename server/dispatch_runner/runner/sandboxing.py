"""A dispatch's sandbox and approval policy: its level, ask mode and network resolved against its
pool's policy (agents.yaml `pools.X.sandbox` / `ask`), the run that dispatched it (a sub-agent
never gets more than its parent) and its agent's flags; then those flags in the run's argv.

Levels and flags: config/sandboxes.py. The resolved policy is kept in the workspace's spec
(`policy`) and its `sandbox` / `ask` columns, so a sub-agent's dispatch reads its parent's, and
a run started on another host gets the same flags from that host's agent definition.
"""

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from .. import argv as argvlib
from ..actions import DispatchRequest
from ..config import AgentDef, Config
from ..config.sandboxes import (
    APPROVAL_SERVER,
    APPROVAL_TOOL_NAME,
    ASK_MODES,
    LEVELS,
    NETWORK_OFF,
    SandboxPolicy,
    narrowest,
    wider,
)
from ..errors import InvalidArgument, LimitRefused
from ..store import WorkspaceRow


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """What a run may do: its sandbox level (None: the CLI's own settings), its ask mode (None:
    off) and whether it may reach the network."""

    sandbox: str | None = None
    ask: str | None = None
    network: bool = True

    def to_spec(self) -> dict[str, Any]:
        return {"sandbox": self.sandbox, "ask": self.ask, "network": self.network}

    @staticmethod
    def of(row: WorkspaceRow) -> "Policy":
        """A stored workspace's policy (its spec's, else its columns')."""
        kept = row.spec.get("policy") or {}
        return Policy(
            sandbox=kept.get("sandbox", row.sandbox),
            ask=kept.get("ask", row.ask),
            network=bool(kept.get("network", True)),
        )


UNRESTRICTED: Final = Policy()


@dataclass(frozen=True, slots=True)
class Parent:
    """The run a dispatch comes from: its workspace and what it may do."""

    workspace: str
    policy: Policy


def check_values(req: DispatchRequest) -> None:
    if req.sandbox is not None and req.sandbox not in LEVELS:
        raise InvalidArgument(
            "sandbox", f"sandbox must be one of {', '.join(LEVELS)} (got {str(req.sandbox)[:60]!r})"
        )
    if req.ask is not None and req.ask not in ASK_MODES:
        raise InvalidArgument("ask", f"ask must be one of {', '.join(ASK_MODES)} (got {str(req.ask)[:60]!r})")


def resolve(
    cfg: Config, pool: str, agent: AgentDef, req: DispatchRequest, *, parent: Parent | None
) -> Policy:
    """The policy of a dispatch to `pool`: the level it asks for (refused past the pool's ceiling
    or its parent's level), else the pool's default narrowed to its parent's; the network off
    when the pool or the parent has it off; the ask mode it gives, else the pool's."""
    check_values(req)
    box = cfg.pool_policy(pool).sandbox or SandboxPolicy()
    above = parent.policy if parent else Policy()
    # a parent run with no level runs with its CLI's own settings, which change nothing without
    # asking (claude -p's default mode, codex exec's read-only): its sub-agents get read-only
    cap = above.sandbox or (LEVELS[0] if parent is not None else None)
    if req.sandbox is not None:
        _check_ceiling(cfg, pool, req.sandbox, box.ceiling or LEVELS[-1])
        if parent is not None and cap is not None and wider(req.sandbox, cap):
            raise LimitRefused(
                "sandbox",
                f"refused: sandbox {req.sandbox!r} is wider than what workspace {parent.workspace}, "
                f"whose agent dispatches it, may do ({cap}"
                + ("" if above.sandbox else ": it runs with its CLI's own settings")
                + f"): a sub-agent never gets more than its parent. Ask for {cap} or narrower (or "
                "leave sandbox out to get the parent's); nothing was queued",
            )
        level: str | None = req.sandbox
    else:  # the pool's default, narrowed to the parent's; none at all: the CLI's own settings
        given = box.default or box.ceiling
        level = narrowest(given, cap) if given else above.sandbox
    ask = _stricter(req.ask or cfg.pool_policy(pool).ask, above.ask)  # never asks less than its parent
    policy = Policy(sandbox=level, ask=ask, network=box.network and above.network)
    _check_agent(cfg, pool, agent, policy)
    return policy


def _stricter(a: str | None, b: str | None) -> str | None:
    """Of two ask modes, the one that asks more (off < on-miss < always)."""
    given = [mode for mode in (a, b) if mode is not None]
    return max(given, key=ASK_MODES.index) if given else None


def _check_ceiling(cfg: Config, pool: str, level: str, ceiling: str) -> None:
    if wider(level, ceiling):
        raise LimitRefused(
            "sandbox",
            f"refused: sandbox {level!r} is wider than pool {pool!r} allows: its ceiling is "
            f"{ceiling!r} (pools.{pool}.sandbox.ceiling). Ask for {ceiling} or narrower, or raise "
            f"the ceiling in {cfg.source}; nothing was queued",
        )


def _check_agent(cfg: Config, pool: str, agent: AgentDef, policy: Policy) -> None:
    """The agent's CLI must have flags for what the policy asks of it."""
    name, where = agent.name, cfg.source
    if policy.sandbox is not None and policy.sandbox not in agent.sandbox:
        known = ", ".join(level for level in LEVELS if level in agent.sandbox) or "none"
        raise InvalidArgument(
            "sandbox",
            f"agent {name!r} has no options for the {policy.sandbox!r} sandbox (levels it has: "
            f"{known}); pick another agent or level, or give agents.{name}.sandbox.{policy.sandbox} "
            f"its CLI's options in {where}; nothing was queued",
        )
    if not policy.network and NETWORK_OFF not in agent.sandbox:
        raise InvalidArgument(
            "sandbox",
            f"agent {name!r} cannot run with the network off (pools.{pool}.sandbox.network is "
            "false, or the run dispatching it has the network off) and has no "
            f"agents.{name}.sandbox.{NETWORK_OFF} options in {where}; pick an agent that can "
            "(claude, codex); nothing was queued",
        )
    if policy.ask not in (None, "off") and policy.ask not in agent.ask:
        raise InvalidArgument(
            "ask",
            f"agent {name!r} cannot park approval requests (ask {policy.ask!r}, from the dispatch "
            f"or pools.{pool}.ask): its CLI has no permission-prompt channel (codex exec and gemini "
            "-p refuse what needs approval). Use ask off, or an agent with one (claude), or give "
            f"agents.{name}.ask.{policy.ask} its options in {where}; nothing was queued",
        )


# ---- the flags in argv --------------------------------------------------------------------------


def policy_flags(agent: AgentDef, policy: Policy, approval: Mapping[str, str]) -> list[str]:
    """The CLI's options for the policy: the level's, the network's, then the ask mode's (the
    last may override the level's, e.g. claude's permission mode under ask always)."""
    flags: list[str] = []
    if policy.sandbox is not None:
        flags += agent.sandbox.get(policy.sandbox, ())
    if not policy.network:
        flags += agent.sandbox.get(NETWORK_OFF, ())
    for flag in agent.ask.get(policy.ask, ()) if policy.ask is not None else ():
        ref = flag[1:-1] if flag.startswith("{") and flag.endswith("}") else ""
        flags.append(approval.get(ref, flag))
    return flags


def with_policy(
    spec: Mapping[str, Any], agent: AgentDef, policy: Policy, cfg: Config, workspace: str
) -> dict[str, Any]:
    """The spec with the policy kept (`policy`) and its flags in the argv of first and resume runs."""
    flags = policy_flags(agent, policy, approval_values(cfg, workspace))
    out = {**spec, "policy": policy.to_spec()}
    for key in ("argv", "resume_argv"):
        if flags and out.get(key):
            out[key] = insert_options(out[key], flags)
    return out


def insert_options(argv: Sequence[argvlib.Element], options: Sequence[str]) -> list[argvlib.Element]:
    """Options go before `--`, a `-` (the prompt on stdin), the first element with client text or
    a subcommand that takes the session (`exec … resume {session_id}`), else at the end."""
    for i, element in enumerate(argv):
        if not i:
            continue
        refs = argvlib.refs([element])
        if element in ("--", "-") or refs & argvlib.CLIENT_TEXT:
            return [*argv[:i], *options, *argv[i:]]
        before = argv[i - 1]
        if "session_id" in refs and i > 1 and isinstance(before, str) and not before.startswith("-"):
            return [*argv[: i - 1], *options, *argv[i - 1 :]]
    return [*argv, *options]


def approval_values(cfg: Config, workspace: str) -> dict[str, str]:
    """{approval_tool} and {approval_config}: the MCP tool Claude Code asks for permission, and
    the --mcp-config JSON that starts the runner's approval server for this workspace (the
    store's URL is in it only when it holds no secret: a PostgreSQL one comes from the
    environment the agent passes on)."""
    env = {"DISPATCH_RUNNER_HOME": str(cfg.home)}
    if Path(cfg.source).is_file():
        env["DISPATCH_RUNNER_CONFIG"] = cfg.source
    if cfg.store_url.startswith("sqlite:"):
        env["DISPATCH_RUNNER_STORE"] = cfg.store_url
    server = {
        "type": "stdio",
        "command": sys.executable,
        "args": ["-m", "dispatch_runner.cli", "approval-server", "--workspace", workspace],
        "env": env,
    }
    config = json.dumps({"mcpServers": {APPROVAL_SERVER: server}}, separators=(",", ":"))
    return {"approval_tool": APPROVAL_TOOL_NAME, "approval_config": config}


def columns(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The workspace columns of a compiled spec's policy: `sandbox` and `ask`."""
    kept = spec.get("policy") or {}
    return {"sandbox": kept.get("sandbox"), "ask": kept.get("ask")}
