"""What agents.yaml can say, as frozen values: agents (with the built-ins), templates, limits,
rates and the dispatch settings; `defaults` is the config without a file."""

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from .. import argv as argvlib
from ..adaptive import Aimd
from ..allowance import Allowance
from ..errors import UnknownAgent
from ..model import AgentRef
from ..policy import DEFAULT_MAX_ATTEMPTS, PoolLimit, RateConfig
from . import sandboxes
from .sandboxes import FlagMap, SandboxPolicy

OUTPUT_KINDS: Final = (
    "claude-stream-json",
    "codex-json",
    "gemini-json",
    "gemini-stream-json",
    "opencode-json",
    "text",
)
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
INPUT_MODES: Final = ("none", "stream-json")
DEFAULT_MAX_DEPTH: Final = 2
DEFAULT_MAX_DESCENDANTS: Final = 10
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
    # how a follow-up run continues the agent's session ({session_id}); None: it cannot
    resume_command: tuple[str, ...] | None = None
    input: str = "none"  # "stream-json": reads user messages on stdin while it runs (live messages)
    max_turns_flag: str | None = None  # the CLI's own option for a dispatch's max_turns
    max_cost_flag: str | None = None  # … and for its max_cost_usd
    # the CLI's options for each sandbox level (and network_off), and for each ask mode
    sandbox: FlagMap = field(default_factory=dict)
    ask: FlagMap = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolPolicy:
    """agents.yaml `pools.X`: how the pool's runs are watched and retried (all optional)."""

    max_attempts: int | None = None
    timeout_s: float | None = None  # kill at the deadline, reason "timeout"
    retry_timeouts: bool = False
    startup_timeout_s: float | None = None  # no output at all by then: kill and retry
    idle_timeout_s: float | None = None  # no output for this long: flagged stalled
    kill_stalled: bool = False
    labels: frozenset[str] = frozenset()
    sandbox: SandboxPolicy | None = None  # default and ceiling of its runs' sandbox level
    ask: str | None = None  # off | on-miss | always (None: off)
    adaptive: Aimd | None = None  # AIMD on the pool's concurrency limit
    preempt_after_s: float | None = None  # `preemption: {min_runtime_s}`; None: never preempted


_CLAUDE: Final = ("claude", "-p")
# user messages arrive as stream-json on stdin (the prompt first, then live messages)
_CLAUDE_IO: Final = ("--input-format", "stream-json", "--output-format", "stream-json", "--verbose")
_CODEX: Final = ("codex", "exec", "--json", "--skip-git-repo-check")

# Each built-in reads its prompt from stdin, as the real CLI does when no prompt argument is given
# (`codex exec -` says so explicitly): no client text is ever in argv, and no 128 KiB limit.
BUILTIN_AGENTS: Final[Mapping[str, AgentDef]] = {
    "claude": AgentDef(
        name="claude",
        command=(*_CLAUDE, "--model", "{model}", *_CLAUDE_IO),
        output="claude-stream-json",
        stdin="prompt",
        resume_command=(*_CLAUDE, "--resume", "{session_id}", "--model", "{model}", *_CLAUDE_IO),
        input="stream-json",
        max_turns_flag="--max-turns",
        max_cost_flag="--max-budget-usd",
        sandbox=sandboxes.CLAUDE_SANDBOX,
        ask=sandboxes.CLAUDE_ASK,
    ),
    "codex": AgentDef(
        name="codex",
        command=(*_CODEX, "-m", "{model}", "-"),
        output="codex-json",
        stdin="prompt",
        resume_command=(*_CODEX, "-m", "{model}", "resume", "{session_id}", "-"),
        sandbox=sandboxes.CODEX_SANDBOX,
        ask=sandboxes.CODEX_ASK,
    ),
    "gemini": AgentDef(
        name="gemini",
        command=("gemini", "-m", "{model}"),
        stdin="prompt",
        sandbox=sandboxes.GEMINI_SANDBOX,
        ask=sandboxes.GEMINI_ASK,
    ),
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
    pools: Mapping[str, PoolPolicy] = field(default_factory=dict)  # `pools.X`
    allowance: Mapping[str, Allowance] = field(default_factory=dict)  # by pool or agent
    max_depth: int = DEFAULT_MAX_DEPTH  # how deep sub-agents may dispatch sub-agents
    max_descendants: int = DEFAULT_MAX_DESCENDANTS  # workspaces under one top-level dispatch
    approval_timeout_s: float = sandboxes.DEFAULT_APPROVAL_TIMEOUT_S  # unanswered: denied then
    routes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # name: preference list
    fair_share: bool = True  # interleave one priority level's senders round-robin
    promote_after_s: float | None = 3600.0  # queued this long: one level more urgent (None: never)

    @property
    def pool_labels(self) -> Mapping[str, frozenset[str]]:
        return {pool: p.labels for pool, p in self.pools.items() if p.labels}

    def pool_policy(self, pool: str) -> PoolPolicy:
        return self.pools.get(pool) or PoolPolicy()

    def adaptive_for(self, pool: str, model: str | None) -> dict[str, tuple[Aimd, int]]:
        """The adaptive limits a run of `pool` (and `model`) moves: the pool's total (`pools.X`)
        and the model's own (`pools.X:model`), each with its AIMD and configured limit; a limit
        that is not configured (unlimited) does not adapt."""
        limit = self.concurrency.get(pool)
        found: dict[str, tuple[Aimd, int]] = {}
        total = limit.total_limit if limit else None
        if (aimd := self.pool_policy(pool).adaptive) is not None and total is not None:
            found[pool] = (aimd, total)
        key = f"{pool}:{model}"
        cap = limit.model_limit(model) if limit and model else None
        if model and (aimd := self.pool_policy(key).adaptive) is not None and cap is not None:
            found[key] = (aimd, cap)
        return found

    def agent_def(self, ref: AgentRef) -> AgentDef:
        known = self.agents.get(ref.pool)
        if known is None:
            raise UnknownAgent(str(ref), self.agents)
        return known

    def max_attempts_for(self, pool: str) -> int:
        """pools.X.max_attempts, else agents.X.max_attempts, else dispatch.max_attempts."""
        agent = self.agents.get(pool)
        return (
            self.pool_policy(pool).max_attempts
            or (agent.max_attempts if agent else None)
            or self.max_attempts
        )

    def timeout_for(self, pool: str) -> float | None:
        """pools.X.timeout_s, else agents.X.timeout_s, else dispatch.timeout_s (None: none)."""
        agent = self.agents.get(pool)
        return self.pool_policy(pool).timeout_s or (agent.timeout_s if agent else None) or self.timeout_s


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
