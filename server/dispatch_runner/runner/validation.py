"""A dispatch's arguments checked and resolved into the workspace to store: types and bounds,
the agent and its executable, the template, the directory or repository (inside the allowed
roots), and whether the prompt can reach the agent. Nothing is written here; a refusal is a
sentence a model or a person can act on."""

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from .. import argv as argvlib
from .. import validate, workspaces
from ..actions import DispatchRequest
from ..config import AgentDef, Config
from ..errors import InvalidArgument, TaskTooLarge
from ..launch import runfiles, supervisor
from ..model import AgentRef, Priority
from ..policy import MAX_ATTEMPTS_LIMIT, MAX_QUEUE_WAIT_S, MAX_TIMEOUT_S
from ..store import NewWorkspace, RouteEntry
from ..validate import human_size
from . import routing, sandboxing
from .placement import Fleet, Placement, place

MAX_COST_USD = 100_000.0  # bounds of a dispatch's spend limits
MAX_TURNS = 10_000


def new_workspace(
    cfg: Config,
    req: DispatchRequest,
    *,
    origin: str | None,
    fleet: Fleet,
    client: str | None = None,
    lineage: "Lineage | None" = None,
) -> NewWorkspace:
    """The workspace a dispatch stores (its values already checked: check_dispatch_values);
    raises a DispatchError for an invalid one. May run git, resolve paths and read the fleet's
    peers: call it off the event loop."""
    check_size(cfg, req.task)
    template_name, template_text = _template(cfg, req.template)
    cwd_path, repo_path = _places(cfg, req.cwd, req.repo)
    ws_id, path, branch, run_dir = _directories(cfg, cwd_path, repo_path)
    prompt = argvlib.expand(
        template_text, {"task": req.task, "workspace": str(run_dir), "branch": branch or ""}
    )
    where = _Where(ws_id, path, run_dir, branch, template_text, prompt, pinned=bool(cwd_path or repo_path))
    entry = partial(_route_entry, cfg, req, where, fleet=fleet, parent=(lineage or Lineage()).above())
    route, placement = routing.resolve(routing.refs(cfg, req.agent), entry)
    first = route[0]
    return NewWorkspace(
        id=ws_id,
        pool=first.pool,
        model=first.model,
        agent=first.agent,
        route=route if len(route) > 1 else (),
        task=req.task,
        prompt=prompt,
        template=template_name,
        priority=int(Priority.parse(req.priority)),
        label=req.label,
        path=str(path),
        run_dir=str(run_dir),
        cwd=str(cwd_path) if cwd_path else None,
        repo=str(repo_path) if repo_path else None,
        branch=branch,
        idempotency_key=req.idempotency_key,
        origin=origin,
        client=client,
        share_key=client or origin or "",  # whose share of the queue (fair share): the session's
        preemptible=req.preemptible if req.preemptible is not None else True,
        spec=first.spec,
        **sandboxing.columns(first.spec),
        **_limits(cfg, first.pool, req),
        **(lineage or Lineage()).fields(),
        **placement.fields(),
    )


@dataclass(frozen=True, slots=True)
class _Where:
    """What every entry of a dispatch's preference list shares: its workspace and prompt."""

    ws_id: str
    path: Path
    run_dir: Path
    branch: str | None
    template_text: str
    prompt: str
    pinned: bool


def _route_entry(
    cfg: Config,
    req: DispatchRequest,
    at: _Where,
    ref: AgentRef,
    *,
    fleet: Fleet,
    parent: sandboxing.Parent | None,
) -> tuple[RouteEntry, Placement]:
    """One agent of the dispatch, checked as a dispatch of its own: where it may run, its spec
    (argv, run limits, sandbox) and that its argv fits."""
    agent_def = cfg.agent_def(ref)
    model = ref.model or agent_def.model
    placement = place(ref, agent_def, req, pinned=at.pinned, fleet=fleet)
    agent_spec = runfiles.agent_spec(
        agent_def,
        model=model,
        path=at.path,
        run_dir=at.run_dir,
        branch=at.branch,
        template_text=at.template_text,
    )
    spec = with_run_limits(agent_spec, agent_def, max_cost_usd=req.max_cost_usd, max_turns=req.max_turns)
    policy = sandboxing.resolve(cfg, ref.pool, agent_def, req, parent=parent)
    spec = sandboxing.with_policy(spec, agent_def, policy, cfg, at.ws_id)
    _check_fits(ref, agent_def, at.ws_id, spec, at.prompt, req.task)
    name = f"{ref.pool}:{model}" if model else ref.pool
    return RouteEntry(name, ref.pool, model, spec), placement


def _limits(cfg: Config, pool: str, req: DispatchRequest) -> dict[str, Any]:
    """Tries and time: the dispatch's own, else the pool's, agent's or the default."""
    return {
        "max_attempts": req.max_attempts or cfg.max_attempts_for(pool),
        "timeout_s": req.timeout_s or cfg.timeout_for(pool),
    }


def _directories(cfg: Config, cwd: Path | None, repo: Path | None) -> tuple[str, Path, str | None, Path]:
    """A new workspace's id, its directory, its branch (for a repo's worktree) and where its agent
    runs: `cwd`, the worktree, or a fresh `work` directory."""
    path = cfg.workspace_root / (ws_id := workspaces.new_id())
    branch = f"runner/{ws_id}" if repo else None
    return ws_id, path, branch, cwd or (path / "worktree" if repo else path / "work")


@dataclass(frozen=True, slots=True)
class Lineage:
    """Where a dispatch sits in a tree of sub-agents: the workspace whose agent dispatched it,
    its depth (1: dispatched by a client) and the top of its tree."""

    parent: str | None = None
    depth: int = 1
    root: str | None = None
    policy: sandboxing.Policy = sandboxing.UNRESTRICTED  # what the parent's run may do

    def fields(self) -> dict[str, Any]:
        return {"parent": self.parent, "depth": self.depth, "root": self.root}

    def above(self) -> sandboxing.Parent | None:
        """The run that dispatches this one (a sub-agent never gets more than it)."""
        return sandboxing.Parent(self.parent, self.policy) if self.parent else None


def with_run_limits(
    spec: dict[str, Any], agent_def: AgentDef, *, max_cost_usd: float | None, max_turns: int | None
) -> dict[str, Any]:
    """A dispatch's spend limits in its spec: kept for the shim to enforce from the parsed usage,
    and passed to the CLI by its own options where agents.yaml names them (max_turns_flag,
    max_cost_flag) — before the client text, as runner-made values, never client text."""
    extra: list[str] = []
    if max_turns is not None and agent_def.max_turns_flag:
        extra += [agent_def.max_turns_flag, str(max_turns)]
    if max_cost_usd is not None and agent_def.max_cost_flag:
        extra += [agent_def.max_cost_flag, f"{max_cost_usd:g}"]
    out = {**spec, "max_cost_usd": max_cost_usd, "max_turns": max_turns}
    for key in ("argv", "resume_argv"):
        if extra and out.get(key):
            out[key] = _insert_options(out[key], extra)
    return out


def _insert_options(argv: list[argvlib.Element], options: list[str]) -> list[argvlib.Element]:
    """Options go before `--`, a `-` (the prompt on stdin) or the first element with client
    text, else at the end."""
    for i, element in enumerate(argv):
        if i and (element in ("--", "-") or argvlib.CLIENT_TEXT & argvlib.refs([element])):
            return [*argv[:i], *options, *argv[i:]]
    return [*argv, *options]


def _check_fits(
    ref: AgentRef, agent_def: AgentDef, ws_id: str, spec: dict[str, Any], prompt: str, task: str
) -> None:
    env = {**agent_def.env, **supervisor.run_marker(ws_id, 2**63)}
    check_argv_fits(ref, spec["argv"], {"prompt": prompt, "task": task}, env)


def check_dispatch_values(req: DispatchRequest) -> None:
    """Types, characters and bounds of a dispatch's arguments, before anything else reads them."""
    validate.text("task", req.task, required=True)
    for field in ("cwd", "repo", "template", "priority"):
        validate.text(field, getattr(req, field), max_chars=4096)
    routing.check_agent(req.agent)
    if req.preemptible is not None and not isinstance(req.preemptible, bool):
        raise InvalidArgument("preemptible", "preemptible must be true or false")
    validate.text("label", req.label, max_chars=200)
    validate.text("idempotency_key", req.idempotency_key, max_chars=200)
    if req.idempotency_key is not None and not req.idempotency_key:
        raise InvalidArgument("idempotency_key", "idempotency_key is empty; give 1-200 characters")
    validate.number("max_wait_s", req.max_wait_s, minimum=0, maximum=MAX_QUEUE_WAIT_S, unit=" s")
    validate.number("timeout_s", req.timeout_s, minimum=0, maximum=MAX_TIMEOUT_S, above=True, unit=" s")
    validate.number("max_attempts", req.max_attempts, minimum=1, maximum=MAX_ATTEMPTS_LIMIT, integer=True)
    validate.number(
        "max_cost_usd", req.max_cost_usd, minimum=0, maximum=MAX_COST_USD, above=True, unit=" USD"
    )
    validate.number("max_turns", req.max_turns, minimum=1, maximum=MAX_TURNS, integer=True)
    validate.text("resume", req.resume, max_chars=200)


def check_size(cfg: Config, task: str) -> None:
    size = len(task.encode())
    if size > cfg.max_task_bytes:
        raise TaskTooLarge(
            f"the task is {human_size(size)} ({size:,} bytes), more than the "
            f"{human_size(cfg.max_task_bytes)} dispatch.max_task_bytes allows; "
            "shorten it (put long material in a file inside the workspace and "
            "refer to it) or raise the limit in agents.yaml; nothing was queued"
        )


def _template(cfg: Config, name: str | None) -> tuple[str, str]:
    template_name = name or cfg.default_template
    if template_name not in cfg.templates:
        raise InvalidArgument(
            "template",
            f"no template {template_name!r} (known: "
            f"{', '.join(sorted(cfg.templates))}); add it under templates: "
            "in agents.yaml",
        )
    return template_name, cfg.templates[template_name]


def _places(cfg: Config, cwd: str | None, repo: str | None) -> tuple[Path | None, Path | None]:
    """The directory to run in, or the repository to make a worktree of, inside the allowed roots."""
    if cwd and repo:
        raise InvalidArgument(
            "cwd",
            "give either cwd (a directory) or repo (a git repository for a fresh worktree), not both",
        )
    cwd_path = workspaces.resolve_inside(cwd, "cwd", cfg.allowed_roots) if cwd else None
    repo_path = workspaces.resolve_inside(repo, "repo", cfg.allowed_roots) if repo else None
    if repo_path is not None:
        workspaces.check_git_repo(repo_path)
    return cwd_path, repo_path


def check_argv_fits(
    ref: AgentRef, argv: list[argvlib.Element], client: dict[str, str], agent_env: dict[str, str]
) -> None:
    """Refuse, at dispatch, a prompt the kernel would refuse to pass (E2BIG) when the run starts."""
    needed = argvlib.refs(argv)
    if not needed:
        return
    rendered = argvlib.render(argv, client.__getitem__)
    problem = argvlib.argv_problem(rendered, {**os.environ, **agent_env}, arg_max=_arg_max())
    if problem:
        raise TaskTooLarge(
            f"this task cannot be passed to agent {str(ref)!r}: {problem}, because its "
            "command in agents.yaml puts the "
            f"{' and '.join('{' + n + '}' for n in sorted(needed))} on the command "
            "line. Shorten the task, or let the agent read the prompt from stdin "
            "(stdin: prompt) or from a file ({prompt_file}); nothing was queued"
        )


def _arg_max() -> int:
    try:
        return int(os.sysconf("SC_ARG_MAX"))
    except (ValueError, OSError):
        return 2 * 1024 * 1024
