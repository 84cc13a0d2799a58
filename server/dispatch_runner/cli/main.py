"""Commands for people: thin wrappers over the runner's actions, printing tables or --json.

Commands that do not serve MCP never import the MCP SDK (about 1 s of import). Exit codes follow
DESIGN §8 (EXIT_HELP in parser.py), and no user error ends in a traceback.
"""

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from ..config import Config, config_path, home_dir, load_config
from ..errors import ConfigError, DispatchError, InvalidArgument, LimitRefused, QueueBusy
from . import schedules
from .parser import build_parser

OK, RUN_FAILED, USAGE, REFUSED, TIMED_OUT, INTERRUPTED, BROKEN_PIPE = 0, 1, 2, 3, 4, 130, 141


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    if "_ARGCOMPLETE" in os.environ:  # a shell asking for completions: answer and exit
        import argcomplete

        argcomplete.autocomplete(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else USAGE
    if getattr(args, "home", None):
        os.environ["DISPATCH_RUNNER_HOME"] = str(Path(args.home).expanduser().absolute())
    if getattr(args, "store", None):  # a flag wins over the environment and the file
        os.environ["DISPATCH_RUNNER_STORE"] = args.store
    try:
        return _run(args)
    except DispatchError as exc:
        return _failed(args, exc)
    except KeyboardInterrupt:
        # an event loop the interrupt cut short (its self-pipe half closed) is collected at exit
        # and would print "Exception ignored in BaseEventLoop.__del__": Ctrl-C says all there is
        sys.unraisablehook = lambda unraisable: None
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
    return REFUSED if isinstance(exc, QueueBusy | LimitRefused) else RUN_FAILED


def _config(args: argparse.Namespace) -> Config:
    return load_config(getattr(args, "config", None))


def _run(args: argparse.Namespace) -> int:
    simple: dict[str, Callable[[argparse.Namespace], int]] = {
        "init": _init,
        "doctor": _doctor,
        "serve": _serve,
        "completion": _completion,
        "approval-server": _approval_server,
        "top": _top,
    }
    if args.command in simple:
        return simple[args.command](args)
    return _action(args)


def _top(args: argparse.Namespace) -> int:
    """The fleet in a terminal (textual, the `tui` extra)."""
    try:
        from .top import Top
    except ImportError as exc:
        print(f"dispatch-runner: top needs {exc.name}: pip install 'dispatch-runner[tui]'", file=sys.stderr)
        return 2
    from ..runner import Runner

    if not args.interval > 0:
        print("dispatch-runner: --interval must be a positive number of seconds", file=sys.stderr)
        return 2
    runner = Runner(_config(args), kind="cli")
    try:
        Top(runner, interval=args.interval).run()
    finally:
        runner.close()
    return 0


def _action(args: argparse.Namespace) -> int:
    from ..runner import Runner

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
            from . import follow  # rich: ~30 ms of import, only where people read the output
        if args.command == "logs":
            return follow.logs(runner, args)
        if args.command == "status" and args.watch:
            return follow.watch(runner, args, config_error)
        req = request_of(args)
        method = getattr(runner, args.command)
        result = _run_action(method(req) if req is not None else method())
        if args.command in ("dispatch", "start", "poke", "kill"):
            runner.ensure_progress()
        if args.command == "dispatch" and (args.wait or args.follow):
            return follow.until_done(runner, args, result)
    finally:
        runner.close()
    if config_error is not None:
        result = {"config_error": config_error, **result}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        from . import view as cli_view

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
    from ..config import defaults

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
    from .. import actions

    if args.command == "dispatch":
        from . import fanout

        given = {f: getattr(args, f) for f in actions.DISPATCH_FIELDS if f not in ("task", "cwd", "repo")}
        if given["agent"] and "," in given["agent"]:  # a preference list: claude:opus,codex
            given["agent"] = [a.strip() for a in given["agent"].split(",")]
        given.update(fanout.arguments(args))
        # a fan-out of --each tasks has no TASK of its own
        fans_tasks = given["tasks"] is not None and args.task is None and not args.task_file
        task = "" if fans_tasks else _task(args)
        return actions.DispatchRequest(task=task, cwd=_here(args.cwd), repo=_here(args.repo), **given)
    if args.command == "status":
        return actions.StatusRequest(
            workspace=args.workspace, agent=args.agent, state=args.state, limit=args.limit
        )
    if args.command == "kill":
        return actions.KillRequest(workspace=args.workspace, agent=args.agent, all=args.all, tree=args.tree)
    if args.command == "message":
        text = sys.stdin.read() if args.text == "-" else args.text
        return actions.MessageRequest(workspace=args.workspace, text=text)
    if args.command == "approve":
        return actions.ApproveRequest(request=args.request, decision=args.decision, note=args.note)
    if args.command == "schedule":
        return schedules.request(args)
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
    from ..runner import doctor_checks as checks

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
    from ..mcp.server import serve

    token = args.token or os.environ.get("DISPATCH_RUNNER_TOKEN")
    session = args.session or os.environ.get("DISPATCH_RUNNER_SESSION") or None
    return serve(
        config, transport=args.transport, host=args.host, port=args.port, token=token, session=session
    )


def _approval_server(args: argparse.Namespace) -> int:
    """The approval server of a workspace's runs, over stdio (mcp/approvals.py)."""
    workspace = args.workspace or os.environ.get("DISPATCH_RUNNER_PARENT")
    if not workspace:
        raise InvalidArgument("workspace", "name the workspace whose runs ask: --workspace WORKSPACE")
    from ..mcp.approvals import serve_approvals

    return serve_approvals(_config(args), workspace)


def _drain(config: Config) -> int:
    from ..runner import run_drainer

    run_drainer(config)
    return OK


if __name__ == "__main__":
    sys.exit(main())
