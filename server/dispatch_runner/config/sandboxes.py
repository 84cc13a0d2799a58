"""Sandbox and approval policy in agents.yaml: the levels, each built-in CLI's own flags for them,
an agent's `sandbox:` / `ask:` flag maps and a pool's `sandbox:` / `ask:` policy.

A level is what a run may do without a person saying yes: `read-only` < `workspace-write` <
`full`. `ask` is what happens when the agent wants more: `off` (refused, as the CLI refuses in
non-interactive mode), `on-miss` (a request the CLI would prompt for is parked for an answer)
or `always` (the CLI prompts for everything it can, and every prompt is parked). The flags are
fixed strings from this file or agents.yaml, inserted as options: never client text.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import yaml

from .. import argv as argvlib
from .yaml_reader import YamlReader as _Reader

LEVELS: Final = ("read-only", "workspace-write", "full")  # narrowest first
ASK_MODES: Final = ("off", "on-miss", "always")
NETWORK_OFF: Final = "network_off"  # the sandbox-map key whose flags turn the network off
SANDBOX_KEYS: Final = (*LEVELS, NETWORK_OFF)
# what an `ask:` flag may name, filled by the runner: the MCP tool that answers permission
# prompts, and the --mcp-config JSON that starts the server holding it
APPROVAL_REFS: Final = ("approval_tool", "approval_config")
APPROVAL_SERVER: Final = "runner_approval"  # its key in the agent's MCP config
APPROVAL_TOOL: Final = "permission"
APPROVAL_TOOL_NAME: Final = f"mcp__{APPROVAL_SERVER}__{APPROVAL_TOOL}"  # as Claude Code names it
DEFAULT_APPROVAL_TIMEOUT_S: Final = 600.0

FlagMap = Mapping[str, tuple[str, ...]]


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxPolicy:
    """agents.yaml `pools.X.sandbox`: the level a dispatch gets when it names none (default: the
    ceiling, when one is set), the widest one it may ask for, and whether the network is on."""

    default: str | None = None
    ceiling: str | None = None  # None: full
    network: bool = True


def wider(a: str, b: str) -> bool:
    """Level `a` lets a run do more than level `b`."""
    return LEVELS.index(a) > LEVELS.index(b)


def narrowest(*levels: str | None) -> str | None:
    given = [level for level in levels if level is not None]
    return min(given, key=LEVELS.index) if given else None


# ---- the built-in CLIs' flags (README: "Sandbox and approvals") ---------------------------------

# Claude Code has no OS sandbox switch on its command line: its permission mode is the level.
# Deny rules hold in every mode, so read-only stays so even where `ask: always` sets the mode
# that asks (repeated options: the last --permission-mode wins, --disallowedTools add up).
_CLAUDE_PROMPT_TOOL: Final = (
    "--permission-prompt-tool",
    "{approval_tool}",
    "--mcp-config",
    "{approval_config}",
)
CLAUDE_SANDBOX: Final[FlagMap] = {
    "read-only": ("--permission-mode", "plan", "--disallowedTools", "Edit,Write,NotebookEdit"),
    "workspace-write": ("--permission-mode", "acceptEdits"),
    "full": ("--permission-mode", "bypassPermissions"),
    NETWORK_OFF: ("--disallowedTools", "WebFetch,WebSearch"),
}
CLAUDE_ASK: Final[FlagMap] = {
    "off": (),
    "on-miss": _CLAUDE_PROMPT_TOOL,
    "always": ("--permission-mode", "default", *_CLAUDE_PROMPT_TOOL),
}
# Codex enforces the level itself (Landlock/seccomp). `codex exec` has no approval channel (it
# refuses -a/--ask-for-approval and runs with approval policy never): only `ask: off` exists.
CODEX_SANDBOX: Final[FlagMap] = {
    "read-only": ("--sandbox", "read-only"),
    "workspace-write": ("--sandbox", "workspace-write"),
    "full": ("--sandbox", "danger-full-access"),
    NETWORK_OFF: ("-c", "sandbox_workspace_write.network_access=false"),
}
CODEX_ASK: Final[FlagMap] = {"off": ("-c", 'approval_policy="never"')}
# Gemini CLI's approval mode is the level (non-interactive, it leaves out the tools a mode would
# prompt for: default keeps reading only, auto_edit adds edits, yolo everything). Its own
# --sandbox (a container) needs Docker or Podman, so it is not in the built-in map.
GEMINI_SANDBOX: Final[FlagMap] = {
    "read-only": ("--approval-mode", "default"),
    "workspace-write": ("--approval-mode", "auto_edit"),
    "full": ("--approval-mode", "yolo"),
}
GEMINI_ASK: Final[FlagMap] = {"off": ()}


# ---- reading agents.yaml ------------------------------------------------------------------------

_OPTION = re.compile(r"^--?[A-Za-z0-9]")


def _flags(r: _Reader, v: yaml.Node, at: str, *, refs: tuple[str, ...] = ()) -> tuple[str, ...]:
    if isinstance(v, yaml.SequenceNode) and not v.value:
        return ()
    flags = r.strings(v, at)
    if not _OPTION.match(flags[0]):
        raise r.fail(v, at, "a list of the CLI's own options, starting with one, e.g. [--sandbox, read-only]")
    for node, flag in zip(v.value, flags, strict=True):
        named = re.findall(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", flag)
        if any(name not in refs for name in named) or (named and flag != f"{{{named[0]}}}"):
            allowed = ", ".join(f"{{{p}}}" for p in refs) or "none"
            raise r.fail(node, at, f"flags are fixed strings (placeholders allowed here: {allowed})")
        if argvlib.PLACEHOLDER_RE.search(flag):
            raise r.fail(node, at, "flags are fixed strings: no {prompt}, {task} or other placeholder")
    return flags


def agent_sandbox(r: _Reader, v: yaml.Node, at: str) -> FlagMap:
    """agents.X.sandbox: `{read-only: [...], workspace-write: [...], full: [...], network_off: [...]}`,
    the CLI's options for each level; a level left out cannot be dispatched to this agent."""
    items = r.mapping(v, at)
    r.only(items, SANDBOX_KEYS, at)
    return {key: _flags(r, node, f"{at}.{key}") for key, (_, node) in items.items()}


def agent_ask(r: _Reader, v: yaml.Node, at: str) -> FlagMap:
    """agents.X.ask: `{off: [...], on-miss: [...], always: [...]}`; {approval_tool} and
    {approval_config} name the runner's approval server (each a whole element)."""
    items = r.mapping(v, at)
    r.only(items, ASK_MODES, at)
    return {key: _flags(r, node, f"{at}.{key}", refs=APPROVAL_REFS) for key, (_, node) in items.items()}


AGENT_FIELDS: Final = {"sandbox": agent_sandbox, "ask": agent_ask}  # agents.X keys read here


def _level(r: _Reader, v: yaml.Node, at: str) -> str:
    value = r.string(v, at)
    if value not in LEVELS:
        raise r.fail(v, at, f"use one of {', '.join(LEVELS)}")
    return value


def pool_sandbox(r: _Reader, v: yaml.Node, at: str) -> SandboxPolicy:
    """pools.X.sandbox: `{default: workspace-write, ceiling: workspace-write, network: false}`."""
    items = r.mapping(v, at)
    r.only(items, ("default", "ceiling", "network"), at)
    default = _level(r, items["default"][1], f"{at}.default") if "default" in items else None
    ceiling = _level(r, items["ceiling"][1], f"{at}.ceiling") if "ceiling" in items else None
    if default and ceiling and wider(default, ceiling):
        raise r.fail(items["default"][1], f"{at}.default", f"wider than its ceiling {ceiling!r}")
    network = True
    if "network" in items:
        value = r.scalar(items["network"][1], f"{at}.network")
        if not isinstance(value, bool):
            raise r.fail(items["network"][1], f"{at}.network", "expected true or false")
        network = value
    return SandboxPolicy(default=default, ceiling=ceiling, network=network)


def pool_ask(r: _Reader, v: yaml.Node, at: str) -> str:
    r.scalar(v, at)
    value = str(v.value)  # the text as written: YAML 1.1 reads a bare `off` as false
    if value not in ASK_MODES:
        raise r.fail(v, at, f"use one of {', '.join(ASK_MODES)}")
    return value
