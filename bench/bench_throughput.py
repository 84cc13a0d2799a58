"""Throughput of tiny agents (`/bin/true`) through the whole path: dispatch -> claim -> shim ->
agent -> exit recorded -> slot freed -> next claim.

One in-process Runner runs its background `serve()` loop (as a server peer does) in an anyio task
group; N dispatches go into a pool limited to 8 concurrent runs; the figure is N over the time
from the first dispatch to the last recorded exit (the store's `ended_at`). CPU per run is read
from getrusage (the shims are this process's children; the agents are the shims').

Baselines, same run, sequential: bare `Popen`+wait of `/bin/true`; of `python -c 'import sqlite3,
json'` (what a stdlib-only shim would at least cost); of `python -c 'import dispatch_runner.launch.shim'`
(what the shim costs before doing anything).

    .venv/bin/python bench/bench_throughput.py [--n 300] [--concurrency 8]
"""

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

import _benchlib as b
import anyio

AGENTS_YAML = """\
version: 1
dispatch: {default_agent: tp, default_template: none, allowed_roots: ["{home}"]}
concurrency: {tp: CONCURRENCY}
agents:
  tp:
    command: [/bin/true]
"""


def cpu_s(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def bench_runner(n: int, home: Path) -> dict[str, float]:
    from dispatch_runner.actions import DispatchRequest
    from dispatch_runner.config import load_config
    from dispatch_runner.events import TERMINAL_EVENTS
    from dispatch_runner.runner import Runner

    runner = Runner(load_config(), kind="bench")
    out: dict[str, float] = {}

    async def wait_done(sub, ids: set[str], timeout_s: float) -> None:
        """Terminal events on the bus; the store count underneath (the bus may drop)."""
        done: set[str] = set()
        with anyio.fail_after(timeout_s):
            while len(done) < len(ids):
                with anyio.move_on_after(0.5):
                    event = await sub.receive.receive()
                    if event.type in TERMINAL_EVENTS and event.workspace in ids:
                        done.add(event.workspace)
                    continue
                done |= {
                    i
                    for i in ids
                    if runner.store.get_workspace(i).state
                    in ("completed", "failed", "killed", "lost", "cancelled")
                }

    async def main() -> None:
        sub = runner.bus.subscribe(10 * n + 100)
        async with anyio.create_task_group() as tg:
            await tg.start(runner.serve)
            warm = await runner.dispatch(DispatchRequest(task="warm-up", agent="tp"))
            await wait_done(sub, {warm["workspace"]}, 30)  # bytecode cache, thread pool
            runner.launcher.reap()
            cpu_self, cpu_children = cpu_s(resource.RUSAGE_SELF), cpu_s(resource.RUSAGE_CHILDREN)
            ids = []
            out["t_first"] = time.time()
            for i in range(n):
                res = await runner.dispatch(DispatchRequest(task=f"tp {i}", agent="tp"))
                ids.append(res["workspace"])
            out["t_dispatched"] = time.time()
            await wait_done(sub, set(ids), 60 + n)
            out["t_seen"] = time.time()
            tg.cancel_scope.cancel()
        # direct shims are reaped into RUSAGE_CHILDREN; shims forked by the fork server are
        # init's grandchildren and are not counted there
        runner.launcher.close()
        b.wait_until(lambda: runner.launcher.reap() == 0, timeout_s=10, poll_s=0.01, what="shims")
        out["cpu_runner"] = cpu_s(resource.RUSAGE_SELF) - cpu_self
        out["cpu_shims"] = cpu_s(resource.RUSAGE_CHILDREN) - cpu_children
        out["warm"] = warm["workspace"]

    try:
        anyio.run(main)
    finally:
        runner.close()
    return out


STEP_EVENTS = {"AgentStarted", "AgentCompleted", "AgentFailed", "AgentKilled", "AgentLost", "AgentRetrying"}


def store_figures(home: Path, warm: str) -> dict[str, object]:
    """From the store (either backend), through its public methods."""
    from dispatch_runner.config import load_config
    from dispatch_runner.store import open_store

    store = open_store(load_config().store_url)
    try:
        rows = [r for r in store.finished_before(float("inf"), limit=100_000) if r.id != warm]
        states: dict[str, int] = {}
        for r in rows:
            states[r.state] = states.get(r.state, 0) + 1
        last_end = max((r.ended_at or 0.0 for r in rows), default=None)
        runs = [store.get_run(r.current_run) for r in rows if r.current_run is not None]
        spans = sorted((r.claimed_at, r.started_at, r.ended_at) for r in runs if r is not None)
        # commit order, not timestamps: a claim's `now` is read before it waits for the write lock
        steps: list[tuple[str, dict[str, object]]] = []
        cursor = 0
        while batch := store.events_after(cursor, 1000):
            cursor = batch[-1].id
            steps += [(e.type, e.data) for e in batch if e.workspace != warm and e.type in STEP_EVENTS]
    finally:
        store.close()
    # +1 when a run starts, -1 when that run ends (a claim that never started has no start)
    running: set[object] = set()
    peak = 0
    for kind, data in steps:
        run = data.get("run")
        if kind == "AgentStarted":
            running.add(run)
            peak = max(peak, len(running))
        else:
            running.discard(run)
    return {
        "states": states,
        "last_end": last_end,
        "peak": peak,
        "claim_to_shim": [s - c for c, s, _ in spans if s is not None],
        "shim_to_end": [e - s for _, s, e in spans if s is not None and e is not None],
    }


def sequential_rate(argv: list[str], n: int) -> tuple[float, list[float]]:
    times = []
    t0 = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        subprocess.Popen(argv, stdin=subprocess.DEVNULL).wait()
        times.append(time.perf_counter() - t)
    return n / (time.perf_counter() - t0), times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=300, help="dispatches (default 300)")
    ap.add_argument("--concurrency", type=int, default=8, help="pool limit (default 8)")
    ap.add_argument(
        "--import-n", type=int, default=40, help="runs of the python-import baselines (default 40)"
    )
    args = ap.parse_args()
    home = b.make_home(AGENTS_YAML.replace("CONCURRENCY", str(args.concurrency)), "throughput")
    try:
        return _run(args, home)
    finally:
        b.cleanup(home)


def _run(args: argparse.Namespace, home: Path) -> int:
    print(f"bench_throughput: {b.machine()}\n{b.bytecode_note()}; home {home}; {b.store_note()}")
    t_start = time.monotonic()
    n = args.n
    res = bench_runner(n, home)
    fig = store_figures(home, res["warm"])
    elapsed = fig["last_end"] - res["t_first"]
    rate = n / elapsed
    true_rate, _ = sequential_rate(["/bin/true"], n)
    sj_rate, _ = sequential_rate([b.PYTHON, "-c", "import sqlite3, json"], args.import_n)
    shim_rate, shim_times = sequential_rate(
        [b.PYTHON, "-c", "import dispatch_runner.launch.shim"], args.import_n
    )
    pass_rate, _ = sequential_rate([b.PYTHON, "-c", "pass"], args.import_n)

    print(
        f"\n{n} dispatches of /bin/true, pool limit {args.concurrency}: states {fig['states']}, "
        f"peak concurrent runs {fig['peak']} (from the event order)"
    )
    rows = [
        [
            "whole path (dispatch -> exit recorded)",
            f"{rate:.1f}",
            f"{1000 / rate:.2f}",
            "Popen+wait /bin/true, sequential",
            f"{true_rate:.0f}",
            f"{1000 / true_rate:.2f}",
            b.ratio(true_rate, rate),
            ">= 50 runs/s",
        ],
        [
            "",
            "",
            "",
            "Popen+wait python -c 'import sqlite3, json'",
            f"{sj_rate:.1f}",
            f"{1000 / sj_rate:.2f}",
            b.ratio(sj_rate, rate),
            "",
        ],
        [
            "",
            "",
            "",
            "Popen+wait python -c 'import dispatch_runner.launch.shim'",
            f"{shim_rate:.1f}",
            f"{1000 / shim_rate:.2f}",
            b.ratio(shim_rate, rate),
            "",
        ],
        [
            "",
            "",
            "",
            "Popen+wait python -c pass",
            f"{pass_rate:.1f}",
            f"{1000 / pass_rate:.2f}",
            b.ratio(pass_rate, rate),
            "",
        ],
        [
            "dispatch calls alone (accepted/s)",
            f"{n / (res['t_dispatched'] - res['t_first']):.1f}",
            f"{1000 * (res['t_dispatched'] - res['t_first']) / n:.2f}",
            "",
            "",
            "",
            "",
            "",
        ],
    ]
    print()
    print(
        b.table(
            rows,
            (
                "figure",
                "runs/s",
                "ms/run",
                "baseline (same run)",
                "runs/s",
                "ms/run",
                "baseline/figure",
                "target",
            ),
        )
    )
    print("\nwhere the time goes (per run):")
    cpu_rows = [
        ["CPU in the runner process (dispatch, claim, spawn, watch)", b.ms(res["cpu_runner"] / n)],
        ["CPU in shims + agents (children)", b.ms(res["cpu_shims"] / n)],
        ["CPU budget per run at 50 runs/s on 2 cores", b.ms(2 / 50)],
        ["claim -> shim's start_run, p50", b.ms(b.p50(fig["claim_to_shim"]))],
        ["shim's start_run -> exit recorded, p50", b.ms(b.p50(fig["shim_to_end"]))],
        ["python -c 'import dispatch_runner.launch.shim' wall, p50", b.ms(b.p50(shim_times))],
    ]
    print(b.table(cpu_rows, ("what", "ms")))
    print()
    print(
        b.verdict(
            f"throughput {rate:.1f} runs/s (DESIGN §7: >= 50 runs/s on 2 cores)",
            rate,
            50,
            higher_is_better=True,
        )
    )
    print(f"({time.monotonic() - t_start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
