"""What agents.yaml can say, as frozen values: agents (with the built-ins), templates, limits,
rates and the dispatch settings; `defaults` is the config without a file."""

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from .. import argv as argvlib
from ..errors import UnknownAgent
from ..model import AgentRef
from ..policy import DEFAULT_MAX_ATTEMPTS, PoolLimit, RateConfig

OUTPUT_KINDS: Final = ("claude-stream-json", "codex-json", "text")
DEFAULT_RATE_LIMIT_PATTERNS: Final = (
    "rate limit",
    "rate_limit",
    "usage limit",
    "usage_limit",
    "429",
    "too many requests",
    "quota exceeded",
)
PLACEHOLDERS: Final = argvlib.PLACEHOLDERS
STDIN_MODES: Final = ("prompt", "none")
DEFAULT_MAX_TASK_BYTES: Final = 1024 * 1024
SHELLS: Final = frozenset({"sh", "bash", "dash", "zsh", "ksh", "fish"})


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentDef:
    name: str
    command: tuple[str, ...]
    output: str = "text"
    rate_limit_patterns: tuple[str, ...] = DEFAULT_RATE_LIMIT_PATTERNS
    env: Mapping[str, str] = field(default_factory=dict)
    model: str | None = None  # default model when the dispatch names none
    max_attempts: int | None = None
    timeout_s: float | None = None
    stdin: str = "none"  # "prompt": the prompt arrives on the agent's stdin
    end_of_options: bool = True  # put `--` before the first element that begins with client text


# Each built-in reads its prompt from stdin, as the real CLI does when no prompt argument is given
# (`codex exec -` says so explicitly): no client text is ever in argv, and no 128 KiB limit.
BUILTIN_AGENTS: Final[Mapping[str, AgentDef]] = {
    "claude": AgentDef(
        name="claude",
        command=("claude", "-p", "--model", "{model}", "--output-format", "stream-json", "--verbose"),
        output="claude-stream-json",
        stdin="prompt",
    ),
    "codex": AgentDef(
        name="codex",
        command=("codex", "exec", "--json", "--skip-git-repo-check", "-m", "{model}", "-"),
        output="codex-json",
        stdin="prompt",
    ),
    "gemini": AgentDef(name="gemini", command=("gemini", "-m", "{model}"), stdin="prompt"),
    "opencode": AgentDef(name="opencode", command=("opencode", "run", "-m", "{model}"), stdin="prompt"),
}

BUILTIN_TEMPLATES: Final[Mapping[str, str]] = {
    "coding": "{task}\n\nWork in {workspace}. When done, write a short summary of what you did "
    "as your final message.",
    "none": "{task}",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    source: str  # the file read, or "built-in defaults"
    home: Path
    store_url: str
    default_agent: str = "claude"
    default_template: str = "coding"
    workspace_root: Path
    allowed_roots: tuple[Path, ...]
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    timeout_s: float | None = None
    kill_grace_s: float = 10.0
    reservation_timeout_s: float = 30.0
    lease_s: float = 60.0  # a run's lease across hosts, renewed by its shim every third of it
    retention_days: float = 14.0
    max_task_bytes: int = DEFAULT_MAX_TASK_BYTES
    concurrency: Mapping[str, PoolLimit] = field(default_factory=dict)
    rates: Mapping[str, RateConfig] = field(default_factory=dict)
    agents: Mapping[str, AgentDef] = field(default_factory=dict)
    templates: Mapping[str, str] = field(default_factory=dict)
    tools_prefix: str = ""
    notify: str = "own"
    host_labels: frozenset[str] = frozenset()  # `host: {labels}`: what this host offers
    pool_labels: Mapping[str, frozenset[str]] = field(default_factory=dict)  # `pools.X.labels`

    def agent_def(self, ref: AgentRef) -> AgentDef:
        known = self.agents.get(ref.pool)
        if known is None:
            raise UnknownAgent(str(ref), self.agents)
        return known

    def max_attempts_for(self, pool: str) -> int:
        agent = self.agents.get(pool)
        return agent.max_attempts if agent and agent.max_attempts else self.max_attempts


def defaults(home: Path, env: Mapping[str, str], source: str) -> Config:
    return Config(
        source=source,
        home=home,
        store_url=env.get("DISPATCH_RUNNER_STORE") or f"sqlite:///{home / 'state.db'}",
        workspace_root=home / "workspaces",
        allowed_roots=(Path("~").expanduser().resolve(),),
        concurrency={"claude": PoolLimit(total=1), "gemini": PoolLimit(total=3)},
        agents=dict(BUILTIN_AGENTS),
        templates=dict(BUILTIN_TEMPLATES),
    )
