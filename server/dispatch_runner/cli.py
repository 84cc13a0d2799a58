"""Commands for people: thin wrappers over the runner's actions, printing tables or --json.

Commands that do not serve MCP never import the MCP SDK (about 1 s of import).
"""

import argparse
import fcntl
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from .config import config_path, load_config
from .errors import ConfigError, DispatchError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dispatch-runner", description="Run AI coding agents as "
                                "supervised background sub-agents (MCP server and CLI).")
    p.add_argument("--config", help="agents.yaml to use (default: $DISPATCH_RUNNER_CONFIG or "
                   "$DISPATCH_RUNNER_HOME/agents.yaml)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, help_: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_, description=help_)
        c.add_argument("--json", action="store_true", help="print the MCP tool's result object")
        return c

    s = cmd("serve", "serve MCP (stdio by default) and keep the queue moving")
    s.add_argument("--transport", choices=("stdio", "sse", "http"), default="stdio")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8765)
    s.add_argument("--token", help="bearer token for HTTP (or DISPATCH_RUNNER_TOKEN)")
    s.add_argument("--drain", action="store_true", help="no MCP: drain the queue, exit when idle")

    d = cmd("dispatch", "start (or queue) a sub-agent on TASK")
    d.add_argument("task")
    d.add_argument("--agent", help="base[:model], e.g. claude, codex:gpt-5.4")
    where = d.add_mutually_exclusive_group()
    where.add_argument("--cwd", help="run in this directory")
    where.add_argument("--repo", help="git repository: run in a fresh worktree on runner/<id>")
    d.add_argument("--priority", choices=("critical", "high", "medium", "low"))
    d.add_argument("--label")
    d.add_argument("--template")
    d.add_argument("--idempotency-key")
    d.add_argument("--max-wait", type=float, dest="max_wait_s")
    d.add_argument("--timeout", type=float, dest="timeout_s")
    d.add_argument("--max-attempts", type=int)

    st = cmd("status", "overall status, or one workspace")
    st.add_argument("workspace", nargs="?")
    st.add_argument("--agent")
    st.add_argument("--state")
    st.add_argument("--limit", type=int)

    lg = cmd("logs", "print a workspace's agent output")
    lg.add_argument("workspace")
    lg.add_argument("-f", "--follow", action="store_true", help="follow until the run ends")

    k = cmd("kill", "kill running / cancel queued workspaces")
    k.add_argument("workspace", nargs="*")
    k.add_argument("--agent")
    k.add_argument("--all", action="store_true")

    cmd("stop", "freeze the queue (running agents go on; dispatch still queues)")
    cmd("start", "unfreeze the queue")
    cmd("poke", "drain the queue now")
    w = cmd("wait", "wait for workspaces to finish")
    w.add_argument("workspaces", nargs="+")
    w.add_argument("--timeout", type=float, default=50.0, dest="timeout_s")
    w.add_argument("--mode", choices=("all", "any"), default="all")
    g = cmd("gc", "remove finished workspaces: rows, directories, git worktrees and empty "
                  "runner/<id> branches")
    g.add_argument("--older-than", type=float, metavar="DAYS", dest="older_than_days",
                   help="only workspaces that ended more than DAYS days ago (default: "
                        "dispatch.retention_days, 14); 0 removes every finished workspace")
    g.add_argument("--dry-run", action="store_true", help="say what would be removed; remove nothing")
    g.add_argument("--force", action="store_true",
                   help="also remove worktrees that hold uncommitted changes")
    cmd("doctor", "check config, agent CLIs on PATH, store writable")
    i = cmd("init", "write a commented agents.yaml")
    i.add_argument("--force", action="store_true", help="overwrite an existing file")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except ConfigError as exc:
        print(f"dispatch-runner: config error: {exc}", file=sys.stderr)
        return 2
    except DispatchError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"error": str(exc)}))
        print(f"dispatch-runner: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _run(args: argparse.Namespace) -> int:
    if args.command == "init":
        return _init(args)
    if args.command == "doctor":
        return _doctor(args)
    if args.command == "serve":
        return _serve(args)
    return _action(args)


def _action(args: argparse.Namespace) -> int:
    import anyio

    from .runner import Runner

    runner = Runner(load_config(args.config), kind="cli")
    try:
        name, kwargs = _action_call(args)
        if args.command == "logs":
            return _logs(runner, args)
        result = anyio.run(lambda: runner.bus.invoke(name, **kwargs))
        if args.command in ("dispatch", "start", "poke", "kill"):
            runner.ensure_progress()
    finally:
        runner.close()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(FORMATTERS.get(args.command, _plain)(result))
    return 0


def _action_call(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    if args.command == "dispatch":
        keys = ("task", "agent", "cwd", "repo", "priority", "label", "template", "idempotency_key",
                "max_wait_s", "timeout_s", "max_attempts")
        return "runner.dispatch", {k: getattr(args, k) for k in keys}
    if args.command == "status":
        return "runner.status", {"workspace": args.workspace, "agent": args.agent, "state": args.state,
                                 "limit": args.limit}
    if args.command == "kill":
        return "runner.kill", {"workspace": args.workspace, "agent": args.agent, "all": args.all}
    if args.command == "wait":
        return "runner.wait", {"workspaces": args.workspaces, "timeout_s": args.timeout_s,
                               "mode": args.mode}
    if args.command == "gc":
        days = args.older_than_days
        return "runner.gc", {"older_than_s": None if days is None else days * 86400,
                             "dry_run": args.dry_run, "force": args.force}
    return f"runner.{args.command}", {}


# ---- human output ---------------------------------------------------------------------------------


def _plain(result: dict[str, Any]) -> str:
    return "\n".join(f"{k}: {v}" for k, v in result.items())


def _fmt_dispatch(r: dict[str, Any]) -> str:
    line = f"{r['workspace']}  {r['status']}  {r['agent']}"
    if r["status"] == "queued":
        line += f"  position {r['position']}, eta ~{r['eta_s']:.0f}s"
    if r.get("deduplicated"):
        line += "  (existing workspace for this idempotency key)"
    return line + f"\n{r['path']}"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _fmt_status(r: dict[str, Any]) -> str:
    if "pools" not in r:
        keys = ("workspace", "state", "agent", "pid", "runs", "priority", "label", "created_at",
                "started_at", "ended_at", "exit_code", "reason", "path", "branch")
        head = "\n".join(f"{k:>10}: {r[k]}" for k in keys if r.get(k) is not None)
        summary = f"\n\nsummary:\n{r['summary']}" if r.get("summary") else ""
        tail = f"\n\nlog tail:\n{r['log_tail']}" if r.get("log_tail") else ""
        return head + summary + tail
    out = [f"queue: {'FROZEN (start to resume)' if r['frozen'] else 'running'}   "
           + "  ".join(f"{k} {v}" for k, v in sorted(r["counts"].items()))]
    rows = [["POOL", "RUNNING", "QUEUED", "LIMIT", "MODELS", "DAILY", "BACKOFF UNTIL", "NEXT SPAWN",
             "OLDEST QUEUED", "DONE/1M"]]
    for name, p in r["pools"].items():
        models = ",".join(f"{m}:{v['running']}/{v['limit'] or '-'}" for m, v in p["models"].items())
        daily = f"{p['daily_used']}/{p['daily_limit']}" if p["daily_limit"] else str(p["daily_used"])
        rows.append([name, str(p["running"]), str(p["queued"]), str(p["limit"] or "-"), models or "-",
                     daily, p["backoff_until"] or "-", p["next_spawn_at"] or "-",
                     p["oldest_queued_at"] or "-", str(p["throughput_1m"])])
    out.append(_table(rows))
    if r["workspaces"]:
        ws = [["WORKSPACE", "STATE", "AGENT", "PRIORITY", "CREATED", "DURATION", "LABEL"]]
        ws += [[w["workspace"], w["state"], w["agent"], w["priority"], w["created_at"] or "-",
                f"{w['duration_s']:.1f}s" if w["duration_s"] is not None else "-", w["label"] or ""]
               for w in r["workspaces"]]
        out.append(_table(ws))
    if r.get("bus_dropped"):
        out.append(f"bus: {r['bus_dropped']} events dropped by slow subscribers")
    return "\n\n".join(out)


def _fmt_kill(r: dict[str, Any]) -> str:
    return (f"killed: {', '.join(r['killed']) or 'none'}\n"
            f"cancelled: {', '.join(r['cancelled']) or 'none'}")


def _fmt_gc(r: dict[str, Any]) -> str:
    if r.get("busy"):
        return "another gc is running in this home (a serving peer); try again in a moment"
    verb = "would remove" if r["dry_run"] else "removed"
    lines = [f"{verb} {len(r['removed'])} workspace(s)" + (f": {', '.join(r['removed'])}" if r["removed"]
                                                           else "")]
    lines += [f"  {n['workspace']}: {n['note']}" for n in r["notes"]]
    lines += [f"kept {k['workspace']}: {k['note']}" for k in r["kept"]]
    if r["orphans"]:
        lines.append(f"{verb} {len(r['orphans'])} orphaned directory(ies): {', '.join(r['orphans'])}")
    if r.get("dead_peers"):
        lines.append(f"forgot {r['dead_peers']} dead peer(s)")
    return "\n".join(lines)


def _fmt_wait(r: dict[str, Any]) -> str:
    lines = [f"done: {r['done']}"]
    for w in r["workspaces"]:
        first = (w["summary"] or "").strip().splitlines()[:1]
        lines.append(f"{w['workspace']}  {w['state']}  exit {w['exit_code']}  "
                     f"{first[0][:100] if first else ''}")
    return "\n".join(lines)


FORMATTERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "dispatch": _fmt_dispatch, "status": _fmt_status, "kill": _fmt_kill, "wait": _fmt_wait,
    "gc": _fmt_gc,
    "poke": lambda r: f"spawned: {', '.join(r['spawned']) or 'nothing'}",
    "stop": lambda r: "queue frozen: running agents go on, dispatch still queues",
    "start": lambda r: "queue running: queued work starts as slots allow",
}


# ---- logs, init, doctor, serve ------------------------------------------------------------------


def _logs(runner: Any, args: argparse.Namespace) -> int:
    from .errors import UnknownWorkspace
    from .workspaces import latest_logs

    row = runner.store.get_workspace(args.workspace)
    if row is None:
        raise UnknownWorkspace(args.workspace)
    offset = 0
    while True:
        out, _ = latest_logs(Path(row.path))
        if out is not None and out.exists():
            with open(out, "rb") as f:
                f.seek(offset)
                chunk = f.read()
            offset += len(chunk)
            sys.stdout.write(chunk.decode("utf-8", errors="replace"))
            sys.stdout.flush()
        if not args.follow or row.state not in ("queued", "running"):
            return 0
        time.sleep(0.2)  # following a file as it grows: no event to wait on
        row = runner.store.get_workspace(args.workspace)


def _init(args: argparse.Namespace) -> int:
    path, _ = config_path(args.config)
    if path.exists() and not args.force:
        print(f"dispatch-runner: {path} exists; pass --force to overwrite it", file=sys.stderr)
        return 1
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(resources.files("dispatch_runner").joinpath("example_agents.yaml").read_text())
    print(f"wrote {path}")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from .store import open_store
    from .supervisor import find_executable

    problems = 0
    config = load_config(args.config)
    print(f"ok    config: {config.source}")
    for name, agent in sorted(config.agents.items()):
        found = find_executable(agent.command[0], agent.env)
        mark = "ok  " if found else "warn"
        print(f"{mark}  agent {name}: {agent.command[0]} "
              + (f"-> {found}" if found else "not on PATH (dispatches to it are refused)"))
    try:
        store = open_store(config.store_url)
        store.set_frozen(store.is_frozen(), now=time.time())
        store.close()
        print(f"ok    store writable: {config.store_url}")
    except DispatchError as exc:
        problems += 1
        print(f"FAIL  store: {exc}")
    try:
        config.workspace_root.mkdir(parents=True, exist_ok=True)
        probe = config.workspace_root / ".doctor"
        probe.write_text("ok")
        probe.unlink()
        print(f"ok    workspace root writable: {config.workspace_root}")
    except OSError as exc:
        problems += 1
        print(f"FAIL  workspace root {config.workspace_root}: {exc.strerror}")
    print("allowed roots: " + ", ".join(str(r) for r in config.allowed_roots))
    return 1 if problems else 0


def _serve(args: argparse.Namespace) -> int:
    import faulthandler
    import logging
    import signal

    # A long-lived peer: its log goes to stderr (never stdout, the protocol stream), and
    # `kill -USR1 <pid>` dumps every thread's stack there when it seems stuck.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("dispatch_runner").setLevel(logging.INFO)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    config = load_config(args.config)
    if args.drain:
        return _drain(config)
    from .mcp_server import serve

    token = args.token or os.environ.get("DISPATCH_RUNNER_TOKEN")
    return serve(config, transport=args.transport, host=args.host, port=args.port, token=token)


def _drain(config: Any) -> int:
    """The on-demand drainer: at most one per home (flock), exits once nothing is left."""
    import anyio

    from .runner import Runner

    config.home.mkdir(parents=True, exist_ok=True)
    with open(config.home / "drainer.lock", "w") as lock:
        # a drainer that is just finishing still holds the lock: wait a little for it
        deadline = time.monotonic() + 5.0
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return 0  # another drainer is at work
                time.sleep(0.05)  # flock has no timeout; poll the lock with a deadline
        runner = Runner(config, kind="drainer")
        try:
            # serve() exits when nothing is left and has withdrawn this peer by then; work that
            # arrived meanwhile (its dispatcher saw this peer alive and started no drainer) is
            # picked up by going round again
            while True:
                anyio.run(lambda: runner.serve(drain_only=True))
                if not runner.store.has_work():
                    break
        finally:
            runner.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
