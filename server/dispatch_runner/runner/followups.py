"""Follow-ups and the tree of sub-agents: `dispatch(resume=…)` and `message` continue a
workspace's agent session (live when its running agent reads input, else as a new run that
resumes the session, under the same gates); a dispatch from inside a run is placed in its
parent's tree and refused past `max_depth` or the tree's descendant budget."""

import os
import time
from dataclasses import fields
from typing import Any, Final

import anyio
import anyio.to_thread

from .. import validate, workspaces
from ..actions import DispatchRequest, MessageRequest
from ..config import Config
from ..errors import InvalidArgument, LimitRefused, UnknownWorkspace
from ..store import Store, WorkspaceRow
from .sandboxing import Policy
from .validation import Lineage, check_size

LIVE_WAIT_S: Final = 5.0  # how long `message` waits for a running agent to take a message live
LIVE_POLL_S: Final = 0.1
# what a resume keeps from its workspace: only the follow-up's own text and order may be given
RESUME_ALLOWS: Final = frozenset({"task", "resume"})


TOP_LEVEL = ""  # a dispatch's parent when it is nobody's sub-agent (a cron tick), wherever it runs


def parent_from_env() -> str | None:
    """The workspace whose agent this process runs in (its shim set DISPATCH_RUNNER_PARENT)."""
    return os.environ.get("DISPATCH_RUNNER_PARENT") or None


def parent_of(given: str | None) -> str | None:
    """A dispatch's parent: the one given, none for TOP_LEVEL, else the run this process is in."""
    return parent_from_env() if given is None else (given or None)


def lineage(store: Store, config: Config, parent: str | None) -> Lineage:
    """Where a dispatch from `parent`'s agent sits; refused (LimitRefused) past the depth or the
    descendant budget, with the sentence that says which limit and how to raise it."""
    if not parent:
        return Lineage()
    if not workspaces.ID_RE.match(parent):
        raise InvalidArgument("parent", f"DISPATCH_RUNNER_PARENT {parent[:60]!r} is not a workspace id")
    row = store.get_workspace(parent)
    if row is None:  # a made-up parent would start a fresh tree with a fresh budget
        raise LimitRefused(
            "parent",
            f"refused: DISPATCH_RUNNER_PARENT names workspace {parent}, which this store does not "
            "know: a sub-agent dispatches into the store of the run it is part of "
            "(DISPATCH_RUNNER_STORE, as its run set it); nothing was queued",
        )
    depth, root = row.depth + 1, row.root or row.id
    if depth > config.max_depth:
        raise LimitRefused(
            "max_depth",
            f"refused: this dispatch would run at depth {depth} (workspace {parent}, which "
            f"dispatches it, is at depth {depth - 1}), past dispatch.max_depth = "
            f"{config.max_depth}. Do the work in this agent instead, or raise dispatch.max_depth "
            f"in {config.source}; nothing was queued",
        )
    under = store.descendants(root)
    if under >= config.max_descendants:
        raise LimitRefused(
            "max_descendants",
            f"refused: the tree of top-level workspace {root} already has {under} sub-agent "
            f"workspaces, the dispatch.max_descendants = {config.max_descendants} it may have. "
            f"Finish with the ones it has, or raise dispatch.max_descendants in {config.source}; "
            "nothing was queued",
        )
    return Lineage(parent=parent, depth=depth, root=root, policy=Policy.of(row))


def check_resume(config: Config, req: DispatchRequest) -> str:
    """A resume names an existing workspace and gives only the follow-up's text (and order):
    its agent, directory and template are the workspace's."""
    validate.text("task", req.task, required=True)
    check_size(config, req.task)
    given = sorted(
        f.name
        for f in fields(req)
        if f.name not in RESUME_ALLOWS and getattr(req, f.name) not in (None, (), [])
    )
    if given:
        raise InvalidArgument(
            given[0],
            f"resume continues workspace {req.resume} with its own agent, directory and settings: "
            f"leave out {', '.join(given)} (give only task: the follow-up)",
        )
    workspace = str(req.resume)
    if not workspaces.ID_RE.match(workspace):
        raise UnknownWorkspace(workspace)
    return workspace


async def send(store: Store, workspace: str, text: str) -> tuple[WorkspaceRow, str]:
    """Give `text` to the workspace: "live" (its running agent took it), "queued" (the input of
    the run that resumes its session, now or when the current run ends)."""
    row, how, message_id = await anyio.to_thread.run_sync(
        lambda: store.send_message(workspace, text, now=time.time())
    )
    if how == "pending" and row.state == "running" and row.spec.get("input") == "stream-json":
        deadline = time.monotonic() + LIVE_WAIT_S
        while time.monotonic() < deadline:
            state = await anyio.to_thread.run_sync(store.message_state, message_id)
            if state is not None:
                return row, "live" if state == "live" else "queued"
            await anyio.sleep(LIVE_POLL_S)  # the shim polls the store: no event reaches us here
    return row, "queued"


def check_message(config: Config, req: MessageRequest) -> None:
    validate.text("workspace", req.workspace, required=True, max_chars=200)
    validate.text("text", req.text, required=True)
    check_size(config, req.text)
    if not workspaces.ID_RE.match(req.workspace):
        raise UnknownWorkspace(req.workspace)


def message_result(row: WorkspaceRow, delivered: str) -> dict[str, Any]:
    return {"workspace": row.id, "delivered": delivered, "state": row.state}
