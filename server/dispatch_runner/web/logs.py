"""A run's log as server-sent events, for the workspace page: what the log holds, then each line as
it is written, across retries (on whichever host each ran), until the workspace ends. Lines come
through runner.logs, so a run on another host is read through its peer, as the logs tool reads it.

Events: `lines` {run, lines}, `run` {run} when a run's lines begin, `end` {state} when the
workspace is over, `problem` {error} when the log cannot be read. Each `lines` event's id is where
it left off (`run:offset:cursor`), each `run` event's its start: a browser that reconnects sends
the last one back as Last-Event-ID and the stream goes on from there, so nothing is shown twice.
"""

import json
from collections.abc import AsyncIterator
from typing import Any, Final

import anyio

from ..actions import LogsRequest, StatusRequest
from ..errors import DispatchError

PAGE_LINES: Final = 1000
FOLLOW_POLL_S: Final = 0.25  # a local run's log grows without events: look this often, here
SLOW_POLL_S: Final = 1.5  # queued, or a run read through another host's peer
FINISHED: Final = frozenset({"completed", "failed", "killed", "lost", "cancelled"})


def _event(kind: str, event_id: str | None = None, **data: Any) -> dict[str, Any]:
    return {"event": kind, "data": json.dumps(data), **({"id": event_id} if event_id else {})}


def resume_point(last_event_id: str | None) -> tuple[int | None, int, int]:
    """(run, line offset, byte cursor) from a Last-Event-ID; the start for none or a bad one."""
    try:
        run, offset, cursor = (int(p) for p in (last_event_id or "").split(":"))
    except ValueError:
        return None, 0, 0
    return (run, offset, cursor) if run >= 1 and offset >= 0 and cursor >= 0 else (None, 0, 0)


async def log_events(
    runner: Any, workspace: str, stream: str, closing: anyio.Event, *, last_event_id: str | None = None
) -> AsyncIterator[dict[str, Any]]:
    run, offset, cursor = resume_point(last_event_id)
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
            if page.get("elsewhere"):
                yield _event("problem", error=page["elsewhere"])
                return
            if run is None:
                run = page["run"]
                yield _event("run", f"{run}:0:0", run=run)
            if page["lines"]:
                offset, cursor = page["next_offset"], page["cursor"] or 0
                yield _event("lines", f"{run}:{offset}:{cursor}", run=run, lines=page["lines"])
            if page["more"]:
                continue
            if not page["lines"] or page["eof"]:  # all of this run there is: is a later one under way?
                view = await runner.status(StatusRequest(workspace=workspace, log_lines=0))
                if _later_run_started(view, run):
                    run, offset, cursor = run + 1, 0, 0
                    yield _event("run", f"{run}:0:0", run=run)
                    continue
                if page["eof"] and view["state"] in FINISHED:
                    yield _event("end", state=view["state"])
                    return
        except DispatchError as exc:
            yield _event("problem", error=str(exc))
            return
        local_and_running = page["state"] == "running" and "host" not in page
        with anyio.move_on_after(FOLLOW_POLL_S if local_and_running else SLOW_POLL_S):
            await closing.wait()


def _later_run_started(view: dict[str, Any], run: int) -> bool:
    """Whether a run after `run` has started (on any host): the workspace ended after more runs,
    or runs now with its agent started. A claim that is only reserved may yet be handed back."""
    if view["runs"] <= run:
        return False
    return view["state"] in FINISHED or (view["state"] == "running" and view.get("started_at") is not None)
