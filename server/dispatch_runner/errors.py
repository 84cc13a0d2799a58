"""The DispatchError tree. Every message says what happened and what to do about it.

DispatchError
├── InvalidArgument      a tool/CLI argument is wrong (which one, and the allowed values)
│   ├── UnknownAgent     no such agent configured (lists the known ones)
│   ├── PathNotAllowed   cwd/repo outside allowed_roots, missing, or not a git repo
│   ├── UnknownWorkspace no workspace with that id
│   ├── TaskTooLarge     past dispatch.max_task_bytes, or too big for the agent's argv
│   └── AgentUnavailable the agent's executable is not on PATH
├── QueueBusy            the estimated wait exceeds max_wait_s (carries the ETA)
├── WorkspaceUnavailable the workspace's directory or files cannot be made (disk full …)
├── ConfigError          agents.yaml is invalid (file, line, field)
├── InvalidTransition    a state move the transition table forbids (a bug, not user input)
└── StoreError           the store failed (driver errors stop here)
"""

from collections.abc import Iterable


class DispatchError(Exception):
    """Base of every error dispatch-runner reports to a person or a model."""


class InvalidArgument(DispatchError):
    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


class UnknownAgent(InvalidArgument):
    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name = name
        self.known = sorted(known)
        super().__init__(
            "agent",
            f"no agent {name!r} configured (known: {', '.join(self.known)}); "
            "use one of those or add it under agents: in agents.yaml",
        )


class PathNotAllowed(InvalidArgument):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(field, message)


class UnknownWorkspace(InvalidArgument):
    def __init__(self, workspace: str) -> None:
        self.workspace = workspace
        super().__init__(
            "workspace",
            f"no workspace {workspace!r}; run status to list workspaces and their ids",
        )


class TaskTooLarge(InvalidArgument):
    def __init__(self, message: str) -> None:
        super().__init__("task", message)


class AgentUnavailable(InvalidArgument):
    def __init__(self, agent: str, executable: str) -> None:
        self.agent = agent
        self.executable = executable
        super().__init__(
            "agent",
            f"agent {agent!r} cannot run on this machine: its executable {executable!r} is not on "
            "PATH; install it, or fix the command of this agent in agents.yaml, then run "
            "'dispatch-runner doctor' to check every agent; nothing was queued",
        )


class WorkspaceUnavailable(DispatchError):
    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        super().__init__(
            f"cannot prepare the workspace {path}: {reason}; free space or fix permissions there, "
            "or point dispatch.workspace_root in agents.yaml elsewhere; nothing was queued"
        )


class QueueBusy(DispatchError):
    def __init__(self, pool: str, eta_s: float | None, max_wait_s: float, position: int) -> None:
        self.pool = pool
        self.eta_s = eta_s
        self.max_wait_s = max_wait_s
        self.position = position
        wait = (
            f"estimated wait {eta_s:.1f}s"
            if eta_s is not None
            else "its slots are full and its wait cannot be estimated yet (no run of it has finished)"
        )
        super().__init__(
            f"pool {pool!r} is busy at queue position {position}: {wait}, which max_wait_s="
            f"{max_wait_s:g} does not allow; nothing was queued. Retry later, raise max_wait_s "
            "(or leave it out), or pick another agent"
        )


class LimitRefused(DispatchError):
    """A dispatch refused by a limit that only time or the configuration lifts: sub-agent depth,
    the descendants of one top-level dispatch, a daily allowance (CLI exit code 3, like QueueBusy)."""

    def __init__(self, limit: str, message: str) -> None:
        self.limit = limit
        super().__init__(message)


class ConfigError(DispatchError):
    def __init__(self, path: str, line: int | None, field: str, message: str) -> None:
        self.path = path
        self.line = line
        self.field = field
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {field}: {message}")


class InvalidTransition(DispatchError):
    def __init__(self, current: str, target: str) -> None:
        super().__init__(f"workspace state cannot move from {current} to {target}")


class StoreError(DispatchError):
    pass
