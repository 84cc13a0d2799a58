"""Commands for people: thin wrappers over the runner's actions, printing tables or --json.

Commands that do not serve MCP never import the MCP SDK (about 1 s of import). Exit codes follow
DESIGN §8 (EXIT_HELP below), and no user error ends in a traceback.
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

from . import __version__
from .config import Config, config_path, home_dir, load_config
from .errors import ConfigError, DispatchError, InvalidArgument, QueueBusy

OK, RUN_FAILED, USAGE, REFUSED, TIMED_OUT, INTERRUPTED, BROKEN_PIPE = 0, 1, 2, 3, 4, 130, 141
EXIT_HELP = """\
exit codes: 0 success; 1 a run ended failed, killed or lost (wait, dispatch --wait/--follow),
or the runner failed; 2 a usage or configuration error; 3 refused by a limit (--max-wait);
4 wait timed out; 130 interrupted (running agents go on)."""
SECONDS = "SECONDS"
FOLLOW_POLL_S = 0.2  # following files as they grow: nothing to wait on but the files


def _parser() -> argparse.ArgumentParser:
    # --config and --home work before or after the command (SUPPRESS: the one given wins)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="agents.yaml to use (default: $DISPATCH_RUNNER_CONFIG, else HOME/agents.yaml)",
    )
    common.add_argument(
        "--home",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="where state.db, workspaces/ and agents.yaml live (default: "
        "$DISPATCH_RUNNER_HOME, else ~/.dispatch-runner)",
    )
    p = argparse.ArgumentParser(
        prog="dispatch-runner",
        parents=[common],
        epilog=EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run AI coding agents (claude, codex, gemini, opencode, "
        "any command) as supervised background sub-agents: an "
        "MCP server and this CLI over one queue.",
    )
    p.add_argument("--version", action="version", version=f"dispatch-runner {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(
        name: str,
        help_: str,
        *,
        json_help: str | None = "print the MCP tool's result object as JSON, nothing else",
    ) -> argparse.ArgumentParser:
        c = sub.add_parser(
            name,
            parents=[common],
            help=help_,
            description=help_,
            epilog=EXIT_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if json_help:
            c.add_argument("--json", action="store_true", help=json_help)
        return c

    s = cmd("serve", "serve MCP (stdio by default) and keep the queue moving", json_help=None)
    s.add_argument(
        "--transport",
        choices=("stdio", "sse", "http"),
        default="stdio",
        help="stdio (what MCP clients start), sse, or http (streamable HTTP, the "
        "always-on daemon); default stdio",
    )
    s.add_argument(
        "--host",
        default="127.0.0.1",
        help="HTTP/SSE bind address (default 127.0.0.1; any other needs --token)",
    )
    s.add_argument("--port", type=int, default=8765, help="HTTP/SSE port (default 8765)")
    s.add_argument("--token", help="bearer token HTTP clients must send (or DISPATCH_RUNNER_TOKEN)")
    s.add_argument(
        "--drain",
        action="store_true",
        help="no MCP: run the queue until it is empty, "
        "then exit (what a CLI-only user gets started automatically)",
    )

    d = cmd("dispatch", "start (or queue) a sub-agent on TASK")
    d.add_argument(
        "task", nargs="?", metavar="TASK", help="what the sub-agent should do; '-' reads it from stdin"
    )
    d.add_argument("--task-file", metavar="FILE", help="read the task from FILE instead")
    d.add_argument("--agent", help="base[:model], e.g. claude, codex:gpt-5.4 (status lists them)")
    where = d.add_mutually_exclusive_group()
    where.add_argument("--cwd", metavar="DIR", help="run in DIR (relative to here)")
    where.add_argument(
        "--repo",
        metavar="DIR",
        help="git repository: run in a fresh worktree on branch runner/<workspace> (relative to here)",
    )
    d.add_argument(
        "--priority",
        choices=("critical", "high", "medium", "low"),
        help="queue order when the pool is full (default medium)",
    )
    d.add_argument("--label", help="short label shown in status and in the completion event")
    d.add_argument("--template", help="prompt template from agents.yaml (built-ins: coding, none)")
    d.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="a second dispatch with KEY returns the first workspace instead of a duplicate",
    )
    d.add_argument(
        "--max-wait",
        type=float,
        dest="max_wait_s",
        metavar=SECONDS,
        help="refuse (exit 3) rather than queue longer than this, 0-604800",
    )
    d.add_argument(
        "--timeout",
        type=float,
        dest="timeout_s",
        metavar=SECONDS,
        help="kill the run after this long, up to 604800 (7 days)",
    )
    d.add_argument(
        "--max-attempts",
        type=int,
        metavar="N",
        help="tries for a failing run, 1-100 (default from agents.yaml, usually 3)",
    )
    then = d.add_mutually_exclusive_group()
    then.add_argument(
        "--wait",
        action="store_true",
        help="wait for the run to end; exit with its outcome (0 completed, 1 failed/killed/lost)",
    )
    then.add_argument(
        "-f", "--follow", action="store_true", help="like --wait, streaming the agent's output meanwhile"
    )

    st = cmd("status", "overall status (pools, agents, recent workspaces), or one workspace")
    st.add_argument("workspace", nargs="?", metavar="WORKSPACE")
    st.add_argument("--agent", help="only this agent's workspaces (base or base:model)")
    st.add_argument(
        "--state",
        choices=("queued", "running", "completed", "failed", "killed", "lost", "cancelled"),
        help="only workspaces in this state",
    )
    st.add_argument("--limit", type=int, metavar="N", help="at most N workspace rows (1-1000, default 20)")
    st.add_argument("-w", "--watch", action="store_true", help="refresh in place until Ctrl-C")
    st.add_argument(
        "--interval", type=float, default=2.0, metavar=SECONDS, help="--watch refresh period (default 2)"
    )

    lg = cmd(
        "logs",
        "print a workspace's agent output (stdout and stderr, stderr marked)",
        json_help="one JSON object per line: {run, stream, line}",
    )
    lg.add_argument("workspace", metavar="WORKSPACE")
    lg.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep printing as it grows, across retries, until the workspace ends",
    )
    which = lg.add_mutually_exclusive_group()
    which.add_argument("--stdout", action="store_true", help="only stdout")
    which.add_argument("--stderr", action="store_true", help="only stderr")
    lg.add_argument("--run", type=int, metavar="N", help="this run (1, 2 ...; default the latest)")

    k = cmd("kill", "kill running / cancel queued workspaces")
    k.add_argument("workspace", nargs="*", metavar="WORKSPACE")
    k.add_argument("--agent", help="every workspace of this agent (base or base:model)")
    k.add_argument("--all", action="store_true", help="every running and queued workspace")

    cmd("stop", "freeze the queue (running agents go on; dispatch still queues)")
    cmd("start", "unfreeze the queue")
    cmd("poke", "drain the queue now and recover vanished runs")
    w = cmd("wait", "wait for workspaces to finish; exit 0 only if every one completed")
    w.add_argument("workspaces", nargs="+", metavar="WORKSPACE")
    w.add_argument(
        "--timeout",
        type=float,
        default=50.0,
        dest="timeout_s",
        metavar=SECONDS,
        help="give up after this long, exit 4 (default 50, at most 3600)",
    )
    w.add_argument(
        "--mode",
        choices=("all", "any"),
        default="all",
        help="all: until every workspace ends (default); any: until one does",
    )
    g = cmd(
        "gc", "remove finished workspaces: rows, directories, git worktrees and empty runner/<id> branches"
    )
    g.add_argument(
        "--older-than",
        type=float,
        metavar="DAYS",
        dest="older_than_days",
        help="only workspaces that ended more than DAYS days ago (default: "
        "dispatch.retention_days, 14); 0 removes every finished workspace",
    )
    g.add_argument("--dry-run", action="store_true", help="say what would be removed; remove nothing")
    g.add_argument("--force", action="store_true", help="also remove worktrees that hold uncommitted changes")
    cmd(
        "doctor",
        "check the config, the agent CLIs on PATH, the store and the workspace root",
        json_help="print the checks as JSON: [{check, ok, detail}]",
    )
    i = cmd("init", "write a commented agents.yaml into the home", json_help=None)
    i.add_argument("--force", action="store_true", help="overwrite an existing file")
    c = cmd(
        "completion",
        'print the shell completion script (e.g. eval "$(dispatch-runner completion bash)" in ~/.bashrc)',
        json_help=None,
    )
    c.add_argument("shell", choices=("bash", "zsh", "fish"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    if "_ARGCOMPLETE" in os.environ:  # a shell asking for completions: answer and exit
        import argcomplete

        argcomplete.autocomplete(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else USAGE
    if getattr(args, "home", None):
        os.environ["DISPATCH_RUNNER_HOME"] = str(Path(args.home).expanduser().absolute())
    try:
        return _run(args)
    except DispatchError as exc:
        return _failed(args, exc)
    except KeyboardInterrupt:
        return INTERRUPTED
    except BrokenPipeError:  # `| head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return BROKEN_PIPE


def _failed(args: argparse.Namespace, exc: DispatchError) -> int:
    if getattr(args, "json", False):
        print(json.dumps({"error": str(exc)}))
    kind = "config error: " if isinstance(exc, ConfigError) else ""
    print(f"dispatch-runner: {kind}{exc}", file=sys.stderr)
    if isinstance(exc, ConfigError | InvalidArgument):
        return USAGE
    return REFUSED if isinstance(exc, QueueBusy) else RUN_FAILED


def _config(args: argparse.Namespace) -> Config:
    return load_config(getattr(args, "config", None))


def _run(args: argparse.Namespace) -> int:
    simple: dict[str, Callable[[argparse.Namespace], int]] = {
        "init": _init,
        "doctor": _doctor,
        "serve": _serve,
        "completion": _completion,
    }
    if args.command in simple:
        return simple[args.command](args)
    return _action(args)


def _action(args: argparse.Namespace) -> int:
    from .runner import Runner

    config_error = None
    try:
        config = _config(args)
    except ConfigError as exc:
        if args.command != "status":
            raise
        config_error, config = str(exc), _fallback_config(args)  # status still answers
    runner = Runner(config, kind="cli")
    try:
        if (
            args.command == "logs"
            or getattr(args, "watch", False)
            or getattr(args, "wait", False)
            or getattr(args, "follow", False)
        ):
            from . import cli_view  # rich: ~30 ms of import, only where people read the output
        if args.command == "logs":
            return cli_view.logs(runner, args)
        if args.command == "status" and args.watch:
            return cli_view.watch(runner, args, config_error)
        req = request_of(args)
        method = getattr(runner, args.command)
        result = _run_action(method(req) if req is not None else method())
        if args.command in ("dispatch", "start", "poke", "kill"):
            runner.ensure_progress()
        if args.command == "dispatch" and (args.wait or args.follow):
            return cli_view.until_done(runner, args, result)
    finally:
        runner.close()
    if config_error is not None:
        result = {"config_error": config_error, **result}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        from . import cli_view

        cli_view.show(args, result)
    return _exit_code(args, result)


def _run_action(call: Any) -> Any:
    """Await one runner action from synchronous code."""
    import anyio

    async def run() -> Any:
        return await call

    return anyio.run(run)


def _exit_code(args: argparse.Namespace, result: dict[str, Any]) -> int:
    """wait: 0 only when every workspace completed (with --mode any: when one that finished
    completed), 4 on its timeout, 1 otherwise."""
    if args.command != "wait":
        return OK
    if not result["done"]:
        return TIMED_OUT
    states = [w["state"] for w in result["workspaces"]]
    good = "completed" in states if args.mode == "any" else set(states) == {"completed"}
    return OK if good else RUN_FAILED


def _fallback_config(args: argparse.Namespace) -> Config:
    from .config import defaults

    return defaults(home_dir(), os.environ, "built-in defaults (agents.yaml is invalid)")


def _task(args: argparse.Namespace) -> str:
    if args.task_file and args.task not in (None, ""):
        raise InvalidArgument(
            "task", "give the task as an argument, '-' (stdin) or --task-file, not two of them"
        )
    if args.task_file:
        try:
            return Path(args.task_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidArgument("task", f"cannot read --task-file {args.task_file}: {exc}") from exc
    if args.task == "-":
        if sys.stdin.isatty():
            print("dispatch-runner: reading the task from stdin (Ctrl-D ends it)", file=sys.stderr)
        return sys.stdin.read()
    if args.task is None:
        raise InvalidArgument(
            "task",
            "say what the sub-agent should do: dispatch-runner dispatch "
            "TASK (or '-' to read it from stdin, or --task-file FILE)",
        )
    return str(args.task)


def _here(path: str | None) -> str | None:
    """A path given on the command line means what it means in the caller's directory."""
    return None if path is None else str(Path(path).expanduser().absolute())


def request_of(args: argparse.Namespace) -> Any:
    """The typed request of a data command (actions.py), from its command line."""
    from . import actions

    if args.command == "dispatch":
        given = {f: getattr(args, f) for f in actions.DISPATCH_FIELDS if f not in ("task", "cwd", "repo")}
        return actions.DispatchRequest(task=_task(args), cwd=_here(args.cwd), repo=_here(args.repo), **given)
    if args.command == "status":
        return actions.StatusRequest(
            workspace=args.workspace, agent=args.agent, state=args.state, limit=args.limit
        )
    if args.command == "kill":
        return actions.KillRequest(workspace=args.workspace, agent=args.agent, all=args.all)
    if args.command == "wait":
        return actions.WaitRequest(workspaces=args.workspaces, timeout_s=args.timeout_s, mode=args.mode)
    if args.command == "gc":
        days = args.older_than_days
        return actions.GcRequest(
            older_than_s=None if days is None else days * 86400, dry_run=args.dry_run, force=args.force
        )
    return None  # stop, start, poke take none


# ---- init, doctor, completion, serve -------------------------------------------------------------


def _init(args: argparse.Namespace) -> int:
    path, _ = config_path(getattr(args, "config", None))
    if path.exists() and not args.force:
        print(f"dispatch-runner: {path} exists; pass --force to overwrite it", file=sys.stderr)
        return USAGE
    home = home_dir()
    text = resources.files("dispatch_runner").joinpath("example_agents.yaml").read_text()
    text = text.replace(
        "workspace_root: ~/.dispatch-runner/workspaces",
        f"workspace_root: {json.dumps(str(home / 'workspaces'))}",
    )  # quoted: any path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as exc:
        print(
            f"dispatch-runner: cannot write {path}: {exc.strerror or exc}; pick another --home or --config",
            file=sys.stderr,
        )
        return USAGE
    print(f"wrote {path}")
    return OK


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import checks

    results = checks(getattr(args, "config", None))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        marks = {True: "ok  ", False: "FAIL", None: "warn"}
        for c in results:
            print(f"{marks[c['ok']]}  {c['check']}: {c['detail']}")
    return OK if all(c["ok"] is not False for c in results) else RUN_FAILED


def _completion(args: argparse.Namespace) -> int:
    from argcomplete import shell_integration

    sys.stdout.write(shell_integration.shellcode(["dispatch-runner"], shell=args.shell))
    return OK


def _serve(args: argparse.Namespace) -> int:
    import faulthandler
    import logging
    import signal

    # A long-lived peer: its log goes to stderr (never stdout, the protocol stream), and
    # `kill -USR1 <pid>` dumps every thread's stack there when it seems stuck.
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    logging.getLogger("dispatch_runner").setLevel(logging.INFO)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    config = _config(args)
    if args.drain:
        return _drain(config)
    from .mcp_server import serve

    token = args.token or os.environ.get("DISPATCH_RUNNER_TOKEN")
    return serve(config, transport=args.transport, host=args.host, port=args.port, token=token)


def _drain(config: Config) -> int:
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
                    return OK  # another drainer is at work
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
    return OK


if __name__ == "__main__":
    sys.exit(main())
