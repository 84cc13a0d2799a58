"""A per-peer fork server: `python -m dispatch_runner.launch.forkserver`, fed one JSON line per run.

Starting a fresh interpreter per shim costs ~60 ms of imports; a serving peer instead keeps one
single-threaded process that has imported the shim already and forks each run's shim from it.
Each shim is double-forked into its own session, so it outlives both this process and the peer,
exactly like a shim started directly. The server exits when the peer closes the pipe (or dies).
Request line: {"spec": path, "log": path, "env": {...}}. Arguments: store backends to import
before forking (sqlite always is).
"""

import importlib
import json
import os
import sys
import traceback
from typing import Any

from ..store import sqlite as _sqlite  # noqa: F401 - loaded once here, not in every forked shim
from . import shim

PRELOADABLE = ("sqlite", "postgres")


def _run_shim(request: dict[str, Any]) -> int:
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    try:
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError:  # a full or vanished workspace: the shim still runs and records why
        log = os.open(os.devnull, os.O_WRONLY)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.environ.clear()
    os.environ.update(request["env"])
    try:
        return shim.main([request["spec"]])
    except BaseException:  # the shim's last words go to its log
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def _fork_detached(request: dict[str, Any]) -> None:
    child = os.fork()
    if child == 0:
        code = 1
        try:
            os.setsid()
            if os.fork() == 0:
                code = _run_shim(request)
            else:
                code = 0
        finally:
            os._exit(code)
    os.waitpid(child, 0)  # the intermediate exits at once; the shim is init's now


def main(argv: list[str] | None = None) -> int:
    for backend in sys.argv[1:] if argv is None else argv:  # e.g. postgres: psycopg, once
        if backend in PRELOADABLE:
            importlib.import_module(f"dispatch_runner.store.{backend}")
    for raw in sys.stdin.buffer:
        if not raw.strip():
            continue
        try:
            request = json.loads(raw)
        except ValueError:
            print(f"forkserver: bad request {raw[:200]!r}", file=sys.stderr, flush=True)
            continue
        _fork_detached(request)
    return 0


if __name__ == "__main__":
    sys.exit(main())
