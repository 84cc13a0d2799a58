"""The dispatch command's options for later, dependent and fan-out work (add_options), and what
they set in the request (arguments): --not-before as seconds or an ISO time, the items and
tasks of a fan-out from repeated options and files (--items-file: one per line; --tasks-file:
a JSON list, or one per line)."""

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import InvalidArgument


def arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The request fields these options set (the others come straight from their options)."""
    items = _joined(args.items, _lines(args.items_file, "--items-file") if args.items_file else None)
    tasks = _joined(args.tasks, _tasks_file(args.tasks_file) if args.tasks_file else None)
    return {"not_before": _when(args.not_before), "items": items, "tasks": tasks}


def _when(text: str | None) -> str | float | None:
    """Seconds from now when it reads as a number, else the ISO time as given."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return text


def _joined(given: list[str] | None, read: list[str] | None) -> list[str] | None:
    if given is None and read is None:
        return None
    return [*(given or []), *(read or [])]


def _read(path: str, option: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(
            option.lstrip("-").replace("-", "_"), f"cannot read {option} {path}: {exc}"
        ) from exc


def _lines(path: str, option: str) -> list[str]:
    return [line for line in _read(path, option).splitlines() if line.strip()]


def _tasks_file(path: str) -> list[str]:
    text = _read(path, "--tasks-file")
    if not text.lstrip().startswith("["):
        return [line for line in text.splitlines() if line.strip()]
    try:
        tasks = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument("tasks", f"--tasks-file {path} is not a JSON list of strings: {exc}") from exc
    if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
        raise InvalidArgument("tasks", f"--tasks-file {path} must hold a JSON list of strings")
    return tasks


def add_options(d: argparse.ArgumentParser) -> None:
    """The dispatch command's options for when it starts, and fan-out (README "Later, dependent
    and fan-out work")."""
    d.add_argument(
        "--not-before",
        metavar="TIME",
        help="start no earlier than TIME: ISO-8601 with Z or an offset (2026-05-01T09:00:00Z), or "
        "seconds from now; at most 7 days ahead",
    )
    d.add_argument(
        "--after",
        action="append",
        metavar="WORKSPACE",
        help="start once WORKSPACE has ended (repeat for several; a group id: all its members)",
    )
    d.add_argument(
        "--after-mode",
        choices=("success", "always"),
        help="success (default): cancel it if one of --after did not complete; always: run anyway",
    )
    d.add_argument(
        "--item",
        action="append",
        dest="items",
        metavar="ITEM",
        help="fan-out: one workspace per --item, TASK's {item} replaced by it (repeat; at most 100)",
    )
    d.add_argument("--items-file", metavar="FILE", help="fan-out: the items, one per line")
    d.add_argument(
        "--each",
        action="append",
        dest="tasks",
        metavar="TASK",
        help="fan-out: one workspace per --each TASK, under one group (repeat; no TASK argument)",
    )
    d.add_argument(
        "--tasks-file",
        metavar="FILE",
        help="fan-out: the tasks, as a JSON list of strings, or one per line",
    )
    d.add_argument(
        "--group-concurrency",
        type=int,
        metavar="N",
        help="fan-out: at most N of the group queued or running at once",
    )
