"""Store values and the Store protocol every backend implements (one contract test suite)."""

import errno
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from ..adaptive import Adaptive, Aimd
from ..allowance import Allowance
from ..model import Event, Outcome
from ..policy import PoolLimit, PoolState, RateConfig
from .approving import ApprovalStore
from .grouping import GroupStore
from .schedules import ScheduleStore


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """What the gate reads inside a claim; passed in so a changed agents.yaml applies next claim."""

    concurrency: Mapping[str, PoolLimit] = field(default_factory=dict)
    rates: Mapping[str, RateConfig] = field(default_factory=dict)
    allowance: Mapping[str, Allowance] = field(default_factory=dict)  # by pool or agent
    adaptive: Mapping[str, Aimd] = field(default_factory=dict)  # adaptive limits: pool, pool:model
    preempt_after_s: Mapping[str, float] = field(default_factory=dict)  # pools that allow preemption
    fair_share: bool = True
    promote_after_s: float | None = None  # queued this long: one level up (None: never)


@dataclass(frozen=True, slots=True, kw_only=True)
class HostCaps:
    """What a claiming peer's host can run: the pools whose agent it has (None: any) and its
    labels. A claim takes only workspaces that fit (lifecycle.runs_pool, fits_labels)."""

    pools: frozenset[str] | None = None
    labels: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class RouteEntry:
    """One entry of a preference list: an agent (with its model variant) and the pool it runs in."""

    agent: str
    pool: str
    model: str | None
    spec: Mapping[str, Any] = field(default_factory=dict)  # how to start this entry's agent

    def to_json(self) -> dict[str, Any]:
        return {"agent": self.agent, "pool": self.pool, "model": self.model, "spec": self.spec}


@dataclass(frozen=True, slots=True, kw_only=True)
class NewWorkspace:
    id: str
    pool: str
    model: str | None
    agent: str
    task: str
    prompt: str
    template: str
    priority: int
    label: str | None
    path: str
    run_dir: str
    cwd: str | None
    repo: str | None
    branch: str | None
    idempotency_key: str | None
    max_attempts: int
    timeout_s: float | None
    origin: str | None
    parent: str | None
    spec: Mapping[str, Any]  # how to start the agent: compiled argv, stdin, env, output, patterns
    base_commit: str | None = None  # HEAD of `repo` when its worktree was made
    host: str | None = None  # the host it must run on (its cwd or repo is there); None: any
    requires: tuple[str, ...] = ()  # labels the host that runs it must have
    remote: bool = False  # the dispatching host cannot run it: other hosts' peers look at once
    dir_host: str | None = None  # the host whose disk holds `path` (where it was dispatched)
    depth: int = 1  # 1: dispatched by a client; parent's depth + 1 when dispatched from a run
    root: str | None = None  # the top of its tree of sub-agents (None: it is a top itself)
    client: str | None = None  # the client its completion is owed to (outbox; see mcp/push.py)
    route: Sequence["RouteEntry"] = ()  # a preference list: the claim takes the first with room
    group: str | None = None  # the fan-out group it belongs to
    held: str | None = None  # why it is not claimable yet ("after", "group"); None: it is
    after: Sequence[str] = ()  # workspaces it waits for
    after_mode: str | None = None  # success (cancel when one failed) | always
    not_before: float | None = None  # not claimed before this time
    share_key: str | None = None  # whose share of the queue it is (fair share), None: nobody's
    preemptible: bool = True
    sandbox: str | None = None  # read-only | workspace-write | full (None: the agent's own)
    ask: str | None = None  # off | on-miss | always


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkspaceRow:
    id: str
    seq: int
    pool: str
    model: str | None
    agent: str
    task: str
    template: str
    priority: int
    label: str | None
    state: str
    reason: str | None
    path: str
    run_dir: str
    cwd: str | None
    repo: str | None
    branch: str | None
    idempotency_key: str | None
    base_commit: str | None
    runs: int
    attempts: int
    ended_reason: str | None
    rev: int  # +1 on every change: status.json never takes an older one
    max_attempts: int
    timeout_s: float | None
    not_before: float
    created_at: float
    updated_at: float
    started_at: float | None
    ended_at: float | None
    exit_code: int | None
    summary: str | None
    session_id: str | None
    origin: str | None
    parent: str | None
    current_run: int | None
    pid: int | None
    spec: Mapping[str, Any]
    host: str | None = None  # the host it must run on (its cwd or repo is there); None: any
    requires: tuple[str, ...] = ()  # labels the host that runs it must have
    dir_host: str | None = None  # the host whose disk holds `path` (None: from before fleets)
    usage: "Usage" = field(default_factory=lambda: Usage())  # summed over its runs
    diff: Mapping[str, Any] | None = None  # {files, insertions, deletions, names}
    commits: Sequence[Mapping[str, str]] | None = None  # [{sha, subject}] on its branch
    stalled_at: float | None = None  # its running agent has been silent since then
    depth: int = 1
    root: str | None = None
    client: str | None = None
    next_input: str | None = None  # a follow-up: the input of its next run, which resumes its session
    route: Sequence["RouteEntry"] = ()
    routed: Mapping[str, Any] | None = None  # the entry a routed claim took and why: {agent, why}
    group: str | None = None
    held: str | None = None
    after_mode: str | None = None
    share_key: str | None = None
    share_rank: int = 0
    preemptible: bool = True
    sandbox: str | None = None
    ask: str | None = None
    release_not_before: float | None = None  # a held one's not_before once released


@dataclass(frozen=True, slots=True, kw_only=True)
class RunRow:
    id: int
    workspace: str
    pool: str
    attempt: int
    phase: str  # reserved | running | exited | abandoned
    claimed_by: str | None
    claimed_at: float
    shim_pid: int | None
    shim_start: int | None
    agent_pid: int | None
    agent_start: int | None
    boot_id: str | None
    started_at: float | None
    ended_at: float | None
    kill_requested: bool
    host: str | None = None  # the claiming peer's host: the only one that may judge the run
    lease_until: float | None = None  # renewed by its shim; judged across hosts (None: old shim)
    outcome: str | None = None  # once exited: completed, failed, lost, …


@dataclass(frozen=True, slots=True)
class Claim:
    workspace: WorkspaceRow
    run_id: int


@dataclass(frozen=True, slots=True)
class ClaimResult:
    claim: Claim | None
    wake_at: float | None  # when a time-gated pool (pacing, backoff, retry) opens next
    events: Sequence[Event] = ()
    preempt: "RunRow | None" = None  # a run the claim marked to stop for a critical dispatch


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    workspace: WorkspaceRow
    deduplicated: bool
    position: int
    eta_s: float | None  # None: unknown (a full pool with no finished run to estimate from)


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    """What runs said they spent (None: not reported)."""

    turns: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None

    @property
    def tokens(self) -> int:
        return (self.input_tokens or 0) + (self.output_tokens or 0)

    def __add__(self, other: "Usage") -> "Usage":
        def add(a: Any, b: Any) -> Any:
            return b if a is None else a if b is None else a + b

        return Usage(
            turns=add(self.turns, other.turns),
            input_tokens=add(self.input_tokens, other.input_tokens),
            output_tokens=add(self.output_tokens, other.output_tokens),
            cost_usd=add(self.cost_usd, other.cost_usd),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RunExit:
    outcome: Outcome
    exit_code: int | None
    summary: str | None = None
    session_id: str | None = None
    detail: str | None = None
    retry_at: float | None = None  # provider-named retry time for a rate limit
    ended_reason: str | None = None  # more precise than the outcome: spawn_failed, no_space, budget
    pool_fault: bool = False  # the cause is the machine's, not the run's: the pool backs off
    final: bool = False  # never retried (a timeout the pool does not retry, a budget stop)
    usage: Usage = field(default_factory=lambda: Usage())
    diff: Mapping[str, Any] | None = None
    commits: Sequence[Mapping[str, str]] | None = None


# A spawn that failed for one of these failed for every run of the pool alike (the disk, the
# process table): the pool backs off, so one fault does not spend the whole queue's attempts.
POOL_FAULTS: Final = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN}
)


def spawn_reason(exc: OSError) -> str:
    return "no_space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "spawn_failed"


@dataclass(frozen=True, slots=True)
class Lease:
    """A renewal's answer: whether the run still runs (False: it was ended elsewhere, e.g. taken
    for lost when an earlier lease expired, and the shim must stop its agent) and whether a kill
    was asked for."""

    held: bool
    kill_requested: bool


@dataclass(frozen=True, slots=True)
class KillPlan:
    cancelled: Sequence[WorkspaceRow]
    to_signal: Sequence[RunRow]


@dataclass(frozen=True, slots=True, kw_only=True)
class Owed:
    """A completion in the outbox that no session has received yet (store/sql/outbox.py)."""

    id: int  # its outbox row: the cursor of a delivery scan
    client: str  # who it is owed to: a client identity, or the dispatching connection's key
    event: Event  # the event that ended the workspace


class Watcher(Protocol):
    """Wake-up hints that the store changed; the caller still checks and polls."""

    async def changed(self, timeout_s: float) -> bool: ...
    def close(self) -> None: ...


class Store(GroupStore, ScheduleStore, ApprovalStore, Protocol):
    url: str
    display_url: str  # without a password: what banners and messages show

    def close(self) -> None: ...
    def release(self) -> None: ...  # drop idle connections until the next call
    def data_version(self) -> int: ...
    def watcher(self) -> "Watcher": ...

    # workspaces and the queue
    def enqueue(
        self, ws: NewWorkspace, *, now: float, max_wait_s: float | None, limits: Limits
    ) -> EnqueueResult: ...
    def find_by_idempotency_key(self, key: str) -> WorkspaceRow | None: ...
    def get_workspace(self, workspace_id: str) -> WorkspaceRow | None: ...
    def workspaces(self, ids: Sequence[str]) -> list[WorkspaceRow | None]: ...
    def claim_next(
        self, *, now: float | None, limits: Limits, peer: str, can: HostCaps | None = None
    ) -> ClaimResult: ...
    def relocate(self, workspace_id: str, *, path: str, run_dir: str, host: str) -> None: ...
    def queue_position(self, workspace_id: str) -> int: ...

    # runs, written by the shim and by recovery
    def start_run(
        self,
        run_id: int,
        *,
        shim_pid: int,
        shim_start: int,
        boot_id: str,
        now: float,
        lease_until: float | None = None,
    ) -> bool: ...
    def renew_lease(self, run_id: int, *, until: float, live: Mapping[str, Any] | None = None) -> Lease: ...
    def record_agent(self, run_id: int, *, agent_pid: int, agent_start: int, now: float) -> bool: ...
    def set_stalled(self, run_id: int, since: float | None, *, now: float) -> bool: ...
    def take_messages(self, workspace_id: str, run_id: int, *, now: float) -> list[str]: ...
    def record_exit(
        self,
        run_id: int,
        result: RunExit,
        *,
        now: float,
        rate: RateConfig | None,
        lease_ended_by: float | None = None,
        adaptive: Adaptive | None = None,  # the adaptive limits it moves (pool, pool:model)
    ) -> WorkspaceRow | None: ...
    def return_reservation(self, run_id: int, *, now: float) -> WorkspaceRow | None: ...
    def active_runs(self) -> list[RunRow]: ...
    def runs_of(self, workspace_id: str) -> list[RunRow]: ...
    def get_run(self, run_id: int) -> RunRow | None: ...

    # follow-ups and the tree of sub-agents
    def send_message(self, workspace_id: str, text: str, *, now: float) -> tuple[WorkspaceRow, str, int]: ...
    def message_state(self, message_id: int) -> str | None: ...
    def children(self, workspace_id: str) -> list[dict[str, str]]: ...
    def descendants(self, root: str) -> int: ...
    def subtree(self, workspace_ids: Sequence[str]) -> list[str]: ...

    # control
    def set_frozen(self, frozen: bool, *, now: float) -> bool: ...
    def is_frozen(self) -> bool: ...
    def plan_kill(
        self,
        *,
        workspaces: Sequence[str] = (),
        agent: str | None = None,
        everything: bool = False,
        now: float,
    ) -> KillPlan: ...

    # reading
    def pool_state(self, pool: str) -> PoolState: ...
    def recent_runtimes(self, pool: str, limit: int = 16) -> list[float]: ...
    def metric_counts(self) -> dict[str, list[dict[str, Any]]]: ...
    def snapshot(
        self,
        *,
        now: float,
        limits: Limits,
        agent: str | None = None,
        state: str | None = None,
        limit: int = 20,
    ) -> dict[str, Any]: ...
    def board(self, *, now: float, since: float, limits: Limits, recent: int = 30) -> dict[str, Any]: ...
    def workspace_events(self, workspace_id: str, limit: int = 100) -> list[dict[str, Any]]: ...
    def events_after(self, cursor: int, limit: int = 500) -> list[Event]: ...
    def last_event_id(self) -> int: ...
    def has_work(self) -> bool: ...
    def server_time(self) -> float: ...

    # peers and housekeeping
    def heartbeat_peer(
        self,
        peer: str,
        *,
        pid: int,
        start: int,
        boot_id: str,
        kind: str,
        now: float,
        can: HostCaps | None = None,
        url: str | None = None,
    ) -> None: ...
    def peers(self) -> list[dict[str, Any]]: ...
    def remove_peers(self, peers: Sequence[str]) -> int: ...
    def finished_before(
        self, before: float, *, after: tuple[float, str] | None = None, limit: int = 500
    ) -> list[WorkspaceRow]: ...
    def forget(self, workspaces: Sequence[str], *, events_before: float) -> int: ...

    # the outbox: completions owed to clients, each delivered once
    def owed(self, client: str, *, after: int = 0, limit: int = 100) -> list[Owed]: ...
    def undelivered_of(self, workspaces: Sequence[str]) -> list[Owed]: ...
    def claim_delivery(self, workspace: str, event_id: int, *, client: str, to: str, now: float) -> bool: ...
    def release_delivery(self, workspace: str, event_id: int, *, to: str) -> bool: ...
