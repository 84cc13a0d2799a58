"""The `schedule` command: cron schedules from the command line, and how they read.

    dispatch-runner schedule create '0 3 * * *' 'TASK' [--timezone TZ] [--agent A] [--repo DIR] …
    dispatch-runner schedule list
    dispatch-runner schedule delete SCHEDULE

The dispatch each tick submits is TASK with the usual dispatch options, or any dispatch
arguments as a JSON object (--dispatch); the options win over the object's keys.
"""

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InvalidArgument

# dispatch options this command takes itself (the rest: --dispatch JSON)
OPTIONS = ("agent", "cwd", "repo", "priority", "label", "template")


def add_parser(cmd: Callable[..., argparse.ArgumentParser]) -> None:
    s = cmd(
        "schedule",
        "cron schedules that dispatch a task at each tick: create CRON TASK, list, delete SCHEDULE",
    )
    s.add_argument("action", choices=("create", "list", "delete"))
    s.add_argument(
        "target",
        nargs="?",
        metavar="CRON|SCHEDULE",
        help="create: 5 cron fields in one quoted argument, minute hour day-of-month month "
        "day-of-week ('0 3 * * *': 03:00 daily); delete: the schedule's id",
    )
    s.add_argument("task", nargs="?", metavar="TASK", help="create: what each tick's sub-agent should do")
    s.add_argument("--timezone", metavar="TZ", help="the IANA timezone CRON reads in (default UTC)")
    s.add_argument("--agent", help="base[:model], or a comma-separated preference list")
    where = s.add_mutually_exclusive_group()
    where.add_argument("--cwd", metavar="DIR", help="run in DIR (relative to here)")
    where.add_argument("--repo", metavar="DIR", help="a fresh worktree of this git repository per tick")
    s.add_argument(
        "--priority", choices=("critical", "high", "medium", "low"), help="queue order of each tick's run"
    )
    s.add_argument("--label", help="short label shown in status and in the completion event")
    s.add_argument("--template", help="prompt template from agents.yaml")
    s.add_argument(
        "--dispatch",
        metavar="JSON",
        help="any other dispatch arguments, as the dispatch tool takes them: '{\"max_cost_usd\": 2}'",
    )


def request(args: argparse.Namespace) -> Any:
    """The ScheduleRequest of the command line."""
    from ..actions import ScheduleRequest

    if args.action == "list":
        return ScheduleRequest(action="list")
    if args.action == "delete":
        if not args.target:
            raise InvalidArgument("id", "say which: dispatch-runner schedule delete SCHEDULE (schedule list)")
        return ScheduleRequest(action="delete", id=args.target)
    if not args.target:
        raise InvalidArgument(
            "cron", "say when and what: dispatch-runner schedule create '0 3 * * *' 'TASK' [options]"
        )
    return ScheduleRequest(
        action="create", cron=args.target, timezone=args.timezone, dispatch=_dispatch(args)
    )


def _dispatch(args: argparse.Namespace) -> dict[str, Any]:
    given: dict[str, Any] = {}
    if args.dispatch:
        try:
            given = json.loads(args.dispatch)
        except json.JSONDecodeError as exc:
            raise InvalidArgument("dispatch", f"--dispatch is not JSON: {exc}") from None
        if not isinstance(given, dict):
            raise InvalidArgument("dispatch", "--dispatch must be a JSON object of dispatch arguments")
    if args.task is not None:
        given["task"] = sys.stdin.read() if args.task == "-" else args.task
    for option in OPTIONS:
        if getattr(args, option) is not None:
            given[option] = getattr(args, option)
    if isinstance(given.get("agent"), str) and "," in given["agent"]:
        given["agent"] = [a.strip() for a in given["agent"].split(",")]
    for place in ("cwd", "repo"):  # a path means what it means in the caller's directory
        if isinstance(given.get(place), str):
            given[place] = str(Path(given[place]).expanduser().absolute())
    return given


def text(result: dict[str, Any]) -> str:
    """One line per schedule: id, cron and timezone, next and last tick, what it dispatches."""
    rows = result["schedules"]
    if not rows:
        return "no schedules (dispatch-runner schedule create CRON TASK makes one)"
    lines = []
    for s in rows:
        task = str(s["dispatch"].get("task") or s["dispatch"].get("tasks") or "")
        task = task if len(task) <= 50 else task[:47] + "..."
        last = f"last {s['last_run_at']} -> {s['last_workspace'] or '?'}" if s["last_run_at"] else "never run"
        lines.append(f"{s['id']}  {s['cron']} ({s['timezone']})  next {s['next_run_at']}  {last}  {task}")
        if s.get("last_error"):
            lines.append(f"    last submit failed: {s['last_error']}")
    if result.get("deleted"):
        lines[0] = f"deleted {lines[0]}"
    return "\n".join(lines)
