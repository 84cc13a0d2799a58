"""The CLI commands that keep going: `logs` (and `--follow` across retries), `dispatch --wait /
--follow`, `status --watch`. Each calls the runner's actions in a loop and prints as it goes."""

import argparse
import json
import sys
import time
from datetime import datetime
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.text import Text

from ..actions import LogsRequest, StatusRequest, WaitRequest
from .dispatched import dispatch_view, group_dispatch_view, group_view
from .view import (
    FINISHED,
    console,
    duration,
    run_action,
    state_text,
    status_view,
    workspace_view,
)

PAGE = 2000
FOLLOW_POLL_S = 0.2  # following files as they grow: nothing to wait on but the files
WAIT_SLICE_S = 3600.0


def logs(
    runner: Any, args: argparse.Namespace, *, workspace: str | None = None, as_json: bool | None = None
) -> int:
    """Print a workspace's output: stdout, then stderr marked (or one of them); with --follow,
    both as they grow, across retries, until the workspace ends. Lines are printed whole."""
    ws = workspace or args.workspace
    streams = (
        ["stdout"]
        if getattr(args, "stdout", False)
        else ["stderr"]
        if getattr(args, "stderr", False)
        else ["stdout", "stderr"]
    )
    as_json = bool(getattr(args, "json", False)) if as_json is None else as_json
    follow = bool(args.follow)
    out = console()
    first = run_action(runner.logs(LogsRequest(workspace=ws, run=getattr(args, "run", None), limit=1)))
    if first.get("elsewhere"):  # on another host, whose peer could not be reached
        print(f"dispatch-runner: {first['elsewhere']}", file=sys.stderr)
        return 1
    run = first["run"]
    while True:
        state, runs = _print_run(runner, out, ws, run, streams, as_json, follow)
        if state in FINISHED and run >= max(runs, default=run):
            return 0
        if not follow:
            return 0
        if run < max(runs, default=run):  # a retry started: follow it
            run += 1
            if not as_json:
                out.print(Text(f"── run {run} ──", style="bold"))


def _print_run(
    runner: Any, out: Console, ws: str, run: int, streams: list[str], as_json: bool, follow: bool
) -> tuple[str, list[int]]:
    """One run's lines: everything there is, or (following) until that run is over."""
    where = dict.fromkeys(streams, (0, 0))  # (line offset, byte cursor) per stream
    while True:
        done, full = True, False
        for s in streams:
            offset, cursor = where[s]
            req = LogsRequest(
                workspace=ws, run=run, stream=s, offset=offset, cursor=cursor, limit=PAGE, whole_lines=True
            )
            page = run_action(runner.logs(req))
            for line in page["lines"]:
                _emit(out, as_json, run, s, line)
            where[s] = (page["next_offset"], page["cursor"])
            done, full = done and page["eof"], full or page["more"]
        if done or (not follow and not full):
            return page["state"], page["runs"]
        if not full:
            time.sleep(FOLLOW_POLL_S)


def _emit(out: Console, as_json: bool, run: int, stream: str, line: str) -> None:
    if as_json:
        print(json.dumps({"run": run, "stream": stream, "line": line}))
    elif stream == "stderr":
        out.print(Text("[stderr] " + line, style="red"))
    else:
        out.print(Text(line))


def until_done(runner: Any, args: argparse.Namespace, dispatched: dict[str, Any]) -> int:
    """dispatch --wait / --follow: the run's end, and its outcome as the exit code."""
    if "size" in dispatched:  # a fan-out: its group's end
        return _until_group_done(runner, args, dispatched)
    ws = dispatched["workspace"]
    if not args.json:  # with --json: one object, the dispatch and its outcome, at the end
        console().print(dispatch_view(dispatched))
        if args.follow:
            logs(runner, args, workspace=ws, as_json=False)
    while True:
        result = run_action(runner.wait(WaitRequest(workspaces=[ws], timeout_s=WAIT_SLICE_S)))
        if result["done"]:
            break
    [row] = result["workspaces"]
    if args.json:
        print(json.dumps({**dispatched, "outcome": row}, indent=2))
    else:
        line = Text(f"{ws} ")
        line.append_text(state_text(row["state"]))
        line.append(f" after {duration(row['duration_s'])}, exit code {row['exit_code']}")
        console().print(line)
        if row.get("summary"):
            console().print(Text(row["summary"]))
    return 0 if row["state"] == "completed" else 1


def _until_group_done(runner: Any, args: argparse.Namespace, dispatched: dict[str, Any]) -> int:
    """Every member's end (--follow waits the same: members' outputs would interleave); exit 0
    only when every one completed."""
    group = dispatched["group"]
    if not args.json:
        console().print(group_dispatch_view(dispatched))
    while not run_action(runner.wait(WaitRequest(workspaces=[group], timeout_s=WAIT_SLICE_S)))["done"]:
        pass
    outcome = run_action(runner.status(StatusRequest(workspace=group)))
    if args.json:
        print(json.dumps({**dispatched, "outcome": outcome}, indent=2))
    else:
        console().print(group_view(outcome))
    return 0 if outcome["state"] == "completed" else 1


def watch(runner: Any, args: argparse.Namespace, config_error: str | None) -> int:
    """status --watch: the overview, refreshed in place until Ctrl-C."""
    from rich.live import Live

    request = StatusRequest(workspace=args.workspace, agent=args.agent, state=args.state, limit=args.limit)

    def frame() -> RenderableType:
        r = run_action(runner.status(request))
        if config_error:
            r = {"config_error": config_error, **r}
        body = status_view(r) if "pools" in r else workspace_view(r)
        stamp = Text(
            f"every {args.interval:g}s, {datetime.now().strftime('%H:%M:%S')} (Ctrl-C ends)", style="dim"
        )
        return Group(stamp, body)

    out = console()
    period = max(args.interval, 0.2)
    try:
        if args.json:  # JSON lines: one status object per refresh
            while True:
                r = run_action(runner.status(request))
                print(json.dumps(r if not config_error else {"config_error": config_error, **r}), flush=True)
                time.sleep(period)  # a refresh period, not a wait for a condition
        if not sys.stdout.isatty():  # piped: one snapshot after the other
            while True:
                out.print(frame())
                out.print()
                sys.stdout.flush()
                time.sleep(period)  # a refresh period, not a wait for a condition
        with Live(frame(), console=out, auto_refresh=False) as live:
            while True:
                time.sleep(period)
                live.update(frame(), refresh=True)
    except KeyboardInterrupt:
        return 0
