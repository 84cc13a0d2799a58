"""A run's log as server-sent events, for the workspace page: what the log holds, then each line as
it is written, across retries, until the workspace ends. Lines come through runner.logs, so a run
on another host is read through its peer, as the logs tool reads it.

Events: `lines` {run, lines}, `run` {run} when a retry starts, `end` {state} when the workspace
is over, `problem` {error} when the log cannot be read.
"""

import json
from collections.abc import AsyncIterator
from typing import Any, Final

import anyio

from ..actions import LogsRequest
from ..errors import DispatchError

PAGE_LINES: Final = 1000
FOLLOW_POLL_S: Final = 0.25  # a log grows without events: look at it this often, on the server
FINISHED: Final = frozenset({"completed", "failed", "killed", "lost", "cancelled"})


def _event(kind: str, **data: Any) -> dict[str, Any]:
    return {"event": kind, "data": json.dumps(data)}


async def log_events(
    runner: Any, workspace: str, stream: str, closing: anyio.Event
) -> AsyncIterator[dict[str, Any]]:
    run: int | None = None
    offset, cursor = 0, 0
    while not closing.is_set():
        req = LogsRequest(
            workspace=workspace,
            run=run,
            stream=stream,
            offset=offset,
            cursor=cursor,
            limit=PAGE_LINES,
            whole_lines=True,
        )
        try:
            page = await runner.logs(req)
        except DispatchError as exc:
            yield _event("problem", error=str(exc))
            return
        if page.get("elsewhere"):
            yield _event("problem", error=page["elsewhere"])
            return
        if run is None:
            run = page["run"]
            yield _event("run", run=run)
        if page["lines"]:
            yield _event("lines", run=run, lines=page["lines"])
        offset, cursor = page["next_offset"], page["cursor"] or 0
        if page["more"]:
            continue
        if run < max(page["runs"], default=run):  # a retry started: follow it
            run, offset, cursor = run + 1, 0, 0
            yield _event("run", run=run)
            continue
        if page["eof"] and page["state"] in FINISHED:
            yield _event("end", state=page["state"])
            return
        with anyio.move_on_after(FOLLOW_POLL_S):
            await closing.wait()
