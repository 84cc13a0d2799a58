"""The `dispatch-runner` argument parser: one builder per command (the dispatch options are
checked against `actions.DispatchRequest` by tests/test_actions.py)."""

import argparse
from collections.abc import Callable
from functools import partial

from .. import __version__
from . import fanout, schedules

SECONDS = "SECONDS"
EXIT_HELP = """\
exit codes: 0 success; 1 a run ended failed, killed or lost (wait, dispatch --wait/--follow),
or the runner failed; 2 a usage or configuration error; 3 refused by a limit (--max-wait);
4 wait timed out; 130 interrupted (running agents go on)."""


def build_parser() -> argparse.ArgumentParser:
    common = _common()
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
    cmd = partial(_command, sub, common)
    _serve(cmd("serve", "serve MCP (stdio by default) and keep the queue moving", json_help=None))
    _dispatch(cmd("dispatch", "start (or queue) a sub-agent on TASK"))
    _status(cmd("status", "overall status (pools, agents, recent workspaces), or one workspace"))
    _logs(
        cmd(
            "logs",
            "print a workspace's agent output (stdout and stderr, stderr marked)",
            json_help="one JSON object per line: {run, stream, line}",
        )
    )
    _control(cmd)
    _approvals(cmd)
    schedules.add_parser(cmd)
    _maintenance(cmd)
    return p


def _common() -> argparse.ArgumentParser:
    """--config and --home work before or after the command (SUPPRESS: the one given wins)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="agents.yaml to use (default: $DISPATCH_RUNNER_CONFIG, else HOME/agents.yaml)",
    )
    common.add_argument(
        "--store",
        metavar="URL",
        default=argparse.SUPPRESS,
        help="the store: sqlite:///path/state.db (default HOME/state.db) or postgresql://user@host/db "
        "for a fleet of hosts (default: $DISPATCH_RUNNER_STORE, else store: in agents.yaml)",
    )
    common.add_argument(
        "--home",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="where state.db, workspaces/ and agents.yaml live (default: "
        "$DISPATCH_RUNNER_HOME, else ~/.dispatch-runner)",
    )
    return common


def _command(
    sub: "argparse._SubParsersAction[argparse.ArgumentParser]",
    common: argparse.ArgumentParser,
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


def _serve(s: argparse.ArgumentParser) -> None:
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
        "--session",
        metavar="KEY",
        help="the client this server's sessions belong to (or DISPATCH_RUNNER_SESSION): a "
        "completion missed while no session of it was connected arrives, once, at the next one. "
        "Default: over stdio the process that started the server; over HTTP none (a connection "
        "may send X-Dispatch-Session: KEY)",
    )
    s.add_argument(
        "--drain",
        action="store_true",
        help="no MCP: run the queue until it is empty, "
        "then exit (what a CLI-only user gets started automatically)",
    )


def _dispatch(d: argparse.ArgumentParser) -> None:
    d.add_argument(
        "task", nargs="?", metavar="TASK", help="what the sub-agent should do; '-' reads it from stdin"
    )
    d.add_argument("--task-file", metavar="FILE", help="read the task from FILE instead")
    d.add_argument(
        "--agent",
        help="base[:model], e.g. claude or codex:gpt-5.4; a preference list claude:opus,codex (the "
        "first with room runs it); or a route's name from agents.yaml",
    )
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
        "--requires",
        action="append",
        metavar="LABEL",
        help="a host label the run needs (repeat for several): only a host that has them all runs it",
    )
    d.add_argument(
        "--host",
        metavar="HOST",
        help="run on this host of the fleet only (without --cwd/--repo it may run on any host)",
    )
    d.add_argument(
        "--resume",
        metavar="WORKSPACE",
        help="TASK is a follow-up: continue WORKSPACE's agent session in its directory, as a new run",
    )
    fanout.add_options(d)  # --not-before, --after, fan-out
    _dispatch_limits(d)


def _dispatch_policy(d: argparse.ArgumentParser) -> None:
    """What the sub-agent may do (agents.yaml pools.X.sandbox / ask; README "Sandbox and approvals"),
    and whether a critical dispatch may stop it (README "Routing and scheduling")."""
    d.add_argument(
        "--preemptible",
        action=argparse.BooleanOptionalAction,
        help="a critical dispatch into a full pool may stop this run and queue it again "
        "(default: yes below critical, where the pool allows preemption)",
    )
    d.add_argument(
        "--sandbox",
        choices=("read-only", "workspace-write", "full"),
        help="what it may do without asking, mapped to its CLI's own flags (default: its pool's; "
        "never past the pool's ceiling, nor past the run that dispatches it)",
    )
    d.add_argument(
        "--ask",
        choices=("off", "on-miss", "always"),
        help="a permission it lacks: off refuses it; on-miss/always park the request for "
        "`dispatch-runner approve` (claude only; default: its pool's, else off)",
    )


def _approvals(cmd: Callable[..., argparse.ArgumentParser]) -> None:
    """approve, and the approval server an agent's CLI starts."""
    a = cmd("approve", "answer a sub-agent's pending permission request (status lists them)")
    a.add_argument("request", metavar="REQUEST", help="the request's id (apr-…)")
    a.add_argument("decision", choices=("allow", "deny"))
    a.add_argument("--note", help="told to the sub-agent with the answer")
    s = cmd(
        "approval-server",
        "serve the permission-prompt MCP tool over stdio (an agent's CLI starts it; not for people)",
        json_help=None,
    )
    s.add_argument(
        "--workspace", metavar="WORKSPACE", help="whose runs ask (default: $DISPATCH_RUNNER_PARENT)"
    )


def _dispatch_limits(d: argparse.ArgumentParser) -> None:
    """What it may do, how long it may queue, run and retry, and whether the command waits for
    the end."""
    _dispatch_policy(d)
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
    d.add_argument(
        "--max-cost-usd",
        type=float,
        metavar="USD",
        help="stop the run (reason budget, partial result kept) once it reports costing more",
    )
    d.add_argument(
        "--max-turns", type=int, metavar="N", help="stop the run (reason budget) after N agent turns"
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


def _status(st: argparse.ArgumentParser) -> None:
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


def _logs(lg: argparse.ArgumentParser) -> None:
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


def _control(cmd: Callable[..., argparse.ArgumentParser]) -> None:
    """kill, message, stop, start, poke, wait."""
    k = cmd("kill", "kill running / cancel queued workspaces")
    k.add_argument("workspace", nargs="*", metavar="WORKSPACE")
    k.add_argument("--agent", help="every workspace of this agent (base or base:model)")
    k.add_argument("--all", action="store_true", help="every running and queued workspace")
    k.add_argument(
        "--tree", action="store_true", help="also every sub-agent the workspaces dispatched, at any depth"
    )
    m = cmd("message", "send a message to a workspace: live to its running agent, else as a resume run")
    m.add_argument("workspace", metavar="WORKSPACE")
    m.add_argument("text", metavar="TEXT", help="the message; '-' reads it from stdin")

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


def _maintenance(cmd: Callable[..., argparse.ArgumentParser]) -> None:
    """gc, doctor, init, completion."""
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
    t = cmd(
        "top",
        "the fleet in a terminal: pools, queue, runs; keys k kill, f freeze/unfreeze, p poke, l log, q quit",
        json_help=None,
    )
    t.add_argument(
        "--interval", type=float, default=1.0, metavar=SECONDS, help="seconds between refreshes (default 1)"
    )
    i = cmd("init", "write a commented agents.yaml into the home", json_help=None)
    i.add_argument("--force", action="store_true", help="overwrite an existing file")
    c = cmd(
        "completion",
        'print the shell completion script (e.g. eval "$(dispatch-runner completion bash)" in ~/.bashrc)',
        json_help=None,
    )
    c.add_argument("shell", choices=("bash", "zsh", "fish"))
