"""dispatch -> agent process running, in-process and through the CLI.

The agent records its own start: `sh -c 'date +%s.%N > "$1"' sh {workspace}/started`. The clock
starts just before the runner's `runner.dispatch` action (one in-process Runner on a live anyio
loop, as a serving peer has) and stops at the timestamp the agent wrote. Baseline: a bare
`subprocess.Popen` of the very same agent command, timed the same way. Each sample waits for the
previous run to finish (exit recorded) so runs never overlap.

Also: the CLI round trip, `dispatch-runner dispatch` wall time, against `python -c pass`.

    .venv/bin/python bench/bench_dispatch.py [--n 100] [--cli-n 10]
"""

import argparse
import json
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import _benchlib as b
import anyio

AGENTS_YAML = """\
version: 1
dispatch: {default_agent: rec, default_template: none, allowed_roots: ["{home}"]}
concurrency: {rec: 0}          # unlimited: every dispatch starts at once
agents:
  rec:
    command: [sh, -c, 'date +%s.%N > "$1"', sh, "{workspace}/started"]
"""
AGENT_ARGV = ["sh", "-c", 'date +%s.%N > "$1"', "sh"]
FINISHED = ("completed", "failed", "killed", "lost", "cancelled")


def bench_runner(n: int) -> dict[str, list[float]]:
    from dispatch_runner.actions import DispatchRequest
    from dispatch_runner.config import load_config
    from dispatch_runner.runner import Runner

    runner = Runner(load_config(), kind="bench")
    out: dict[str, list[float]] = {k: [] for k in ("running", "returned", "claimed", "shim", "agent", "done")}

    async def one(i: int) -> None:
        t0 = time.time()
        res = await runner.dispatch(DispatchRequest(task=f"bench {i}", agent="rec"))
        t_ret = time.time()
        if res["status"] != "running":
            raise RuntimeError(f"dispatch {i} did not start at once: {res}")
        stamp = Path(res["path"]) / "work" / "started"
        started = b.wait_until(lambda: b.read_stamp(stamp), timeout_s=30, what="the agent's stamp")
        row = b.wait_until(
            lambda: _finished(runner, res["workspace"]), timeout_s=30, what="the recorded exit"
        )
        run = runner.store.get_run(row.current_run)
        out["running"].append(started - t0)
        out["returned"].append(t_ret - t0)
        out["claimed"].append(run.claimed_at - t0)
        out["shim"].append(run.started_at - run.claimed_at)  # shim process start -> start_run CAS
        out["agent"].append(started - run.started_at)  # start_run -> agent's own stamp
        out["done"].append(row.ended_at - started)  # agent start -> exit recorded
        runner.launcher.reap()

    async def main() -> None:
        await one(-1)  # warm-up: first-call imports and thread pool; not counted
        for k in out:
            out[k].clear()
        for i in range(n):
            await one(i)

    try:
        anyio.run(main)
    finally:
        runner.close()
    return out


def _finished(runner: object, ws_id: str) -> object:
    row = runner.store.get_workspace(ws_id)  # type: ignore[attr-defined]
    return row if row is not None and row.state in FINISHED else None


def bench_popen(n: int, work: Path) -> tuple[list[float], list[float]]:
    """(Popen -> agent's stamp, Popen call return)."""
    out, returned = [], []
    for i in range(n + 1):
        stamp = work / f"popen-{i}"
        t0 = time.time()
        proc = subprocess.Popen(
            [*AGENT_ARGV, str(stamp)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        t_ret = time.time()
        proc.wait()
        started = b.read_stamp(stamp)
        if started is None:
            raise RuntimeError("the baseline agent wrote no stamp")
        if i:
            out.append(started - t0)
            returned.append(t_ret - t0)
    return out, returned


def bench_cli(n: int, home: Path) -> tuple[list[float], list[float]]:
    """`dispatch-runner dispatch` wall time and CLI start -> agent running. Waits between samples
    for the run and the on-demand drainer it leaves behind to finish."""
    env = b.cli_env(home)
    walls, running = [], []
    for i in range(-1, n):  # -1: warm-up (bytecode cache), not counted
        t0 = time.time()
        proc = subprocess.run(
            [b.CLI, "dispatch", f"cli {i}", "--agent", "rec", "--json"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.time() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"dispatch-runner dispatch failed: {proc.stderr}")
        res = json.loads(proc.stdout)
        stamp = Path(res["path"]) / "work" / "started"
        started = b.wait_until(partial(b.read_stamp, stamp), timeout_s=30, what="the agent's stamp")
        left = b.wait_processes_gone(home, 15.0)  # shim + drainer of this sample
        if left:
            raise RuntimeError(f"processes of sample {i} still alive: {left}")
        if i >= 0:
            walls.append(wall)
            running.append(started - t0)
    return walls, running


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100, help="in-process dispatches (default 100)")
    ap.add_argument("--cli-n", type=int, default=10, help="CLI dispatches (default 10)")
    ap.add_argument(
        "--no-pycache", action="store_true", help="leave child Pythons' bytecode settings as inherited"
    )
    args = ap.parse_args()
    home = b.make_home(AGENTS_YAML, "dispatch", pycache=not args.no_pycache)
    try:
        print(f"bench_dispatch: {b.machine()}\n{b.bytecode_note()}; home {home}; {b.store_note()}")
        t = time.monotonic()
        res = bench_runner(args.n)
        base, base_ret = bench_popen(args.n, home)
        cli_wall, cli_running = bench_cli(args.cli_n, home)
        py_pass = b.run_cmd_times([b.PYTHON, "-c", "pass"], max(args.cli_n, 20))
        shim_import = b.run_cmd_times([b.PYTHON, "-c", "import dispatch_runner.launch.shim"], 21)[1:]
        rows = [
            b.latency_row(
                "dispatch -> agent running (in-process)",
                res["running"],
                "Popen -> agent running",
                base,
                "p50 <= 30 ms",
            ),
            b.latency_row(
                "dispatch call returns (in-process)", res["returned"], "Popen call returns", base_ret
            ),
            b.latency_row("CLI dispatch wall time", cli_wall, "python -c pass", py_pass),
            b.latency_row("CLI start -> agent running", cli_running, "python -c pass", py_pass),
        ]
        print()
        print(b.table(rows, b.LATENCY_HEADER))
        print("\nwhere dispatch -> running goes (in-process, from the store's run row):")
        parts = [
            b.latency_row("dispatch -> claim committed", res["claimed"], "", []),
            b.latency_row(
                "claim -> shim's start_run (shim start-up)",
                res["shim"],
                "python -c 'import dispatch_runner.launch.shim'",
                shim_import,
            ),
            b.latency_row("", [], "python -c pass", py_pass),
            b.latency_row(
                "start_run -> agent's stamp (agent spawn)", res["agent"], "Popen -> agent running", base
            ),
            b.latency_row("agent stamp -> exit recorded (not in the figure)", res["done"], "", []),
        ]
        print(b.table([r[:-1] for r in parts], b.LATENCY_HEADER[:-1]))
        print()
        print(
            b.verdict(
                f"dispatch -> running p50 {b.ms(b.p50(res['running']))} ms (DESIGN §7: <= 30 ms)",
                b.p50(res["running"]),
                0.030,
            )
        )
        print(f"({time.monotonic() - t:.1f} s)")
    finally:
        b.cleanup(home)
    return 0


if __name__ == "__main__":
    sys.exit(main())
