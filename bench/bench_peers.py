"""Several peers on one store: 4 `dispatch-runner serve` stdio peers, 1,000 dispatches spread over
them concurrently into one pool limited to 3 (DESIGN §7: never more than 3 running at any instant,
no run lost, none spawned twice), then the idle CPU of a peer.

Four SDK client sessions (`Client(..., mode="legacy")`, one real stdio server each) in one anyio
task group; dispatch i goes to peer i mod 4, each session sending its share one call after the
other, the four at once. The agent appends its own start and end, with its pid and workspace id, to
a shared log: `sh -c 'echo "s $(date +%s.%N) $$ $WS" >> LOG; echo "e $(date +%s.%N) $$ $WS" >> LOG'`.

- max overlap: the most agents running at one instant, from that log (and, as a cross-check, the
  most runs holding a slot at once, claim -> recorded exit, from the store's `runs` rows);
- runs/s: N over first dispatch -> last completion (the store file is polled read-only for the
  count of completed workspaces; the last `ended_at` is the end). Baseline: the same agent command
  by `Popen`+wait, sequentially;
- `dispatch` tool latency p50/p99 under that load. Baseline: `ping` in the same sessions, every
  10th call, and idle before the load;
- exactly once: one `AgentCompleted` event, one run row and one `s` line in the agents' log per
  workspace;
- idle CPU of each peer over 10 s (utime+stime from /proc/<pid>/stat), as % of one core. Baseline:
  `python -c 'import time; time.sleep(20)'` over the same 10 s.

    .venv/bin/python bench/bench_peers.py [--n 1000] [--peers 4] [--limit 3] [--idle-s 10]
"""

import argparse
import json
import os
import resource
import sqlite3
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import _benchlib as b
import anyio
from _mcplib import Pushes, structured
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPDeprecationWarning

AGENT_SH = (
    'echo "s $(date +%s.%N) $$ $DISPATCH_RUNNER_WORKSPACE" >> "$1"; '
    'echo "e $(date +%s.%N) $$ $DISPATCH_RUNNER_WORKSPACE" >> "$1"'
)
AGENTS_YAML = f"""\
version: 1
dispatch: {{default_agent: t, default_template: none, allowed_roots: ["{{home}}"]}}
concurrency: {{t: LIMIT, w: 0}}
agents:
  t:
    command: [sh, -c, '{AGENT_SH}', sh, "{{home}}/agents.log"]
  w:                        # warm-up runs, outside pool t and its log
    command: [/bin/true]
"""
MARKER = "DR_BENCH_PEER"  # a unique value per peer finds each server in /proc
FINISHED = ("completed", "failed", "killed", "lost", "cancelled")
RUN_END = ("AgentCompleted", "AgentFailed", "AgentKilled", "AgentLost", "AgentRetrying")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---- /proc ---------------------------------------------------------------------------------------


def ppid_of(pid: int) -> int | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return int(raw[raw.rfind(b")") + 2 :].split()[1])


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of a process, in clock ticks."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def children_of(parents: set[int]) -> list[int]:
    return [int(e.name) for e in os.scandir("/proc") if e.name.isdigit() and ppid_of(int(e.name)) in parents]


def own_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def find_server(tag: str) -> int:
    """Our own child whose environment carries the tag: the stdio server (its fork server and
    shims inherit the variable too, but are not our children)."""
    needle = f"{MARKER}={tag}\0".encode()
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and ppid_of(int(entry.name)) == me:
            try:
                if needle in Path(entry.path, "environ").read_bytes():
                    return int(entry.name)
            except OSError:
                continue
    raise RuntimeError(f"no server process carries {MARKER}={tag}")


# ---- the store and the agents' log ---------------------------------------------------------------


def ro(home: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{home / 'state.db'}?mode=ro", uri=True, timeout=30)


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """Most intervals open at one instant; an end at the same instant as a start comes first."""
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = cur = 0
    for _, step in points:
        cur += step
        best = max(best, cur)
    return best


def read_agent_log(
    path: Path,
) -> tuple[list[tuple[float, float]], Counter[str], int, dict[str, tuple[float, float]]]:
    """(intervals start -> end per agent process, `s` lines per workspace, unpaired lines,
    workspace -> (start, end))."""
    open_by_pid: dict[str, float] = {}
    intervals: list[tuple[float, float]] = []
    starts: Counter[str] = Counter()
    unpaired = 0
    by_ws: dict[str, tuple[float, float]] = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) != 4:
            unpaired += 1
            continue
        kind, t, pid, ws = parts
        if kind == "s":
            starts[ws] += 1
            if pid in open_by_pid:
                unpaired += 1
            open_by_pid[pid] = float(t)
        elif pid in open_by_pid:
            intervals.append((open_by_pid.pop(pid), float(t)))
            by_ws[ws] = intervals[-1]
        else:
            unpaired += 1
    return intervals, starts, unpaired + len(open_by_pid), by_ws


# ---- the benchmark -------------------------------------------------------------------------------


async def bench_peers(home: Path, n: int, peers: int, idle_s: float) -> dict[str, Any]:
    out: dict[str, Any] = {
        "latency": [],
        "ping_load": [],
        "ping_idle": [],
        "ids": [],
        "per_peer": Counter(),
        "pushes": Counter(),
    }
    connected = 0
    all_connected, go, finished = anyio.Event(), anyio.Event(), anyio.Event()
    pushes = [Pushes() for _ in range(peers)]
    servers: dict[int, int] = {}

    async def peer(i: int) -> None:
        nonlocal connected
        tag = f"{home}:{i}"
        params = StdioServerParameters(
            command=b.PYTHON, args=["-m", "dispatch_runner.cli", "serve"], env={**os.environ, MARKER: tag}
        )
        with open(home / f"server-{i}.log", "w") as errlog:  # noqa: ASYNC230 - opened once
            async with Client(
                stdio_client(params, errlog=errlog), mode="legacy", extensions=[pushes[i].extension()]
            ) as client:
                servers[i] = find_server(tag)
                # warm-up in pool w: worker threads, the fork server, first-call imports
                warm = structured(await client.call_tool("dispatch", {"task": "warm-up", "agent": "w"}))
                await pushes[i].wait(warm["workspace"])
                for _ in range(10):
                    t0 = time.perf_counter()
                    await client.send_ping()
                    out["ping_idle"].append(time.perf_counter() - t0)
                connected += 1
                if connected == peers:
                    all_connected.set()
                await go.wait()
                for k in range(i, n, peers):
                    t0 = time.perf_counter()
                    res = structured(await client.call_tool("dispatch", {"task": f"task {k}", "agent": "t"}))
                    out["latency"].append(time.perf_counter() - t0)
                    out["ids"].append(res["workspace"])
                    out["per_peer"][i] += 1
                    if k // peers % 10 == 9:
                        t0 = time.perf_counter()
                        await client.send_ping()
                        out["ping_load"].append(time.perf_counter() - t0)
                await finished.wait()  # the session (and its server) lives until the idle figure
        out["pushes"][i] = sum(pushes[i].seen.values())

    async with anyio.create_task_group() as tg:
        t_start = time.perf_counter()
        for i in range(peers):
            tg.start_soon(peer, i)
        with anyio.fail_after(120):
            await all_connected.wait()
        out["connect_s"] = time.perf_counter() - t_start

        # the load: all peers at once; poll the store read-only for the completed count
        db = ro(home)
        forkservers = [
            pid
            for pid in children_of(set(servers.values()))
            if b"dispatch_runner.launch.forkserver" in cmdline(pid)
        ]
        load_pids = {"peers": list(servers.values()), "fork servers": forkservers}
        cpu_before = {k: [cpu_ticks(p) for p in v] for k, v in load_pids.items()}
        self_before = own_cpu_s()
        out["t_first"] = time.time()
        go.set()
        deadline = time.monotonic() + 60 + n * 0.5
        while True:
            done = db.execute(
                "SELECT count(*) FROM workspaces WHERE pool = 't' AND state = 'completed'"
            ).fetchone()[0]
            ended = db.execute(
                "SELECT count(*) FROM workspaces WHERE pool = 't' AND state IN "
                f"({','.join('?' * len(FINISHED))})",
                FINISHED,
            ).fetchone()[0]
            if ended >= n or time.monotonic() > deadline:
                break
            await anyio.sleep(0.05)
        out["t_seen"] = time.time()
        out["cpu_self"] = own_cpu_s() - self_before
        out["cpu"] = {
            k: sum((z or 0) - (a or 0) for a, z in zip(cpu_before[k], [cpu_ticks(p) for p in v], strict=True))
            / CLK_TCK
            for k, v in load_pids.items()
        }
        out["cpu_count"] = {k: len(v) for k, v in load_pids.items()}
        out["completed_polled"] = done
        out["t_last"] = db.execute("SELECT max(ended_at) FROM workspaces WHERE pool = 't'").fetchone()[0]
        db.close()

        # idle CPU: let the last pushes and heartbeats settle, then 10 s of nothing
        await anyio.sleep(2.0)
        sleeper = start_sleeper()
        await anyio.sleep(0.5)  # past its start-up
        before = {i: cpu_ticks(pid) for i, pid in servers.items()}
        base_before = cpu_ticks(sleeper.pid)
        t0 = time.monotonic()
        await anyio.sleep(idle_s)
        after = {i: cpu_ticks(pid) for i, pid in servers.items()}
        base_after = cpu_ticks(sleeper.pid)
        window = time.monotonic() - t0
        sleeper.kill()
        sleeper.wait()

        def pct_core(a: int | None, z: int | None) -> float:
            return float("nan") if a is None or z is None else (z - a) / CLK_TCK / window * 100

        out["idle_cpu"] = [pct_core(before[i], after[i]) for i in sorted(servers)]
        out["idle_base"] = pct_core(base_before, base_after)
        out["idle_window"] = window
        finished.set()
    return out


def check_store(home: Path, ids: list[str], log: dict[str, tuple[float, float]]) -> dict[str, Any]:
    """Exactly-once checks, slot overlap in commit order and where a slot's time goes."""
    db = ro(home)
    try:
        wanted = set(ids)
        completed = Counter(
            dict(
                db.execute(
                    "SELECT workspace, count(*) FROM events WHERE type = 'AgentCompleted' GROUP BY workspace"
                )
            )
        )
        runs = Counter(dict(db.execute("SELECT workspace, count(*) FROM runs GROUP BY workspace")))
        states = Counter(
            dict(db.execute("SELECT state, count(*) FROM workspaces WHERE pool = 't' GROUP BY state"))
        )
        claimed_by = Counter(
            dict(
                db.execute(
                    "SELECT r.claimed_by, count(*) FROM runs r JOIN workspaces w ON w.id = r.workspace "
                    "WHERE w.pool = 't' GROUP BY r.claimed_by"
                )
            )
        )
        # Slots in commit order: writes are serialised (BEGIN IMMEDIATE), so event ids are the
        # order the gate saw; +1 when a run starts (AgentStarted), -1 at the event that ends it.
        open_runs: set[int] = set()
        slot_overlap = inversions = 0
        last_end_at: float | None = None
        ended_since_claim = False
        exit_to_claim: list[float] = []
        for typ, at, data in db.execute(
            "SELECT e.type, e.at, e.data FROM events e JOIN workspaces w ON w.id = e.workspace "
            "WHERE w.pool = 't' ORDER BY e.id"
        ):
            run = json.loads(data).get("run")
            if typ == "AgentStarted":
                open_runs.add(run)
                slot_overlap = max(slot_overlap, len(open_runs))
                if last_end_at is not None and at < last_end_at:
                    inversions += 1
                if ended_since_claim and last_end_at is not None:
                    exit_to_claim.append(at - last_end_at)
                ended_since_claim = False
            elif typ in RUN_END and run in open_runs:
                open_runs.discard(run)
                last_end_at = at if last_end_at is None else max(last_end_at, at)
                ended_since_claim = True
        parts: dict[str, list[float]] = {k: [] for k in ("shim", "spawn", "agent", "exit")}
        for ws, claimed, started, ended in db.execute(
            "SELECT r.workspace, r.claimed_at, r.started_at, r.ended_at FROM runs r "
            "JOIN workspaces w ON w.id = r.workspace WHERE w.pool = 't'"
        ):
            if started is None or ended is None:
                continue
            parts["shim"].append(started - claimed)
            if ws in log:
                s, e = log[ws]
                parts["spawn"].append(s - started)
                parts["agent"].append(e - s)
                parts["exit"].append(ended - e)
        parts["claim"] = exit_to_claim
        return {
            "completed_once": sum(1 for w in wanted if completed[w] == 1),
            "completed_twice": sorted(w for w in wanted if completed[w] > 1),
            "not_completed": sorted(w for w in wanted if completed[w] == 0),
            "one_run": sum(1 for w in wanted if runs[w] == 1),
            "extra_runs": sorted(w for w in wanted if runs[w] > 1),
            "states": states,
            "slot_overlap": slot_overlap,
            "inversions": inversions,
            "claimed_by": claimed_by,
            "parts": parts,
        }
    finally:
        db.close()


def start_sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([b.PYTHON, "-c", "import time; time.sleep(20)"])


def popen_runs(n: int, log: Path) -> float:
    """runs/s of the agent command by Popen+wait, sequentially."""
    argv = ["sh", "-c", AGENT_SH, "sh", str(log)]
    env = {**os.environ, "DISPATCH_RUNNER_WORKSPACE": "baseline"}
    t0 = time.perf_counter()
    for _ in range(n):
        subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, check=True)
    return n / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="dispatches (default 1000)")
    ap.add_argument("--peers", type=int, default=4, help="stdio server peers (default 4)")
    ap.add_argument("--limit", type=int, default=3, help="concurrency of pool t (default 3)")
    ap.add_argument("--idle-s", type=float, default=10.0, help="idle CPU window (default 10 s)")
    ap.add_argument("--baseline-n", type=int, default=100, help="Popen+wait runs (default 100)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", category=MCPDeprecationWarning)
    home = b.make_home(AGENTS_YAML.replace("LIMIT", str(args.limit)), "peers")
    try:
        print(f"bench_peers: {b.machine()}\n{b.bytecode_note()}; home {home}")
        t = time.monotonic()
        warm = b.run_cmd_times(
            [
                b.PYTHON,
                "-c",
                "import dispatch_runner.mcp.server, dispatch_runner.launch.shim,"
                " dispatch_runner.launch.forkserver, dispatch_runner.cli",
            ],
            1,
        )[0]
        res = anyio.run(bench_peers, home, args.n, args.peers, args.idle_s)
        intervals, starts, unpaired, by_ws = read_agent_log(home / "agents.log")
        store = check_store(home, res["ids"], by_ws)
        # name the claimers peer-<pid> (the store's peer id is host:pid:start)
        claimed = Counter(
            {
                f"pid {k.split(':')[1]}" if k and k.count(":") == 2 else str(k): v
                for k, v in store["claimed_by"].items()
            }
        )
        base_rate = popen_runs(args.baseline_n, home / "baseline.log")
        elapsed = (res["t_last"] or res["t_seen"]) - res["t_first"]
        rate = len(res["ids"]) / elapsed if elapsed > 0 else float("nan")
        overlap = max_overlap(intervals)
        spawned_twice = sorted(w for w, c in starts.items() if c > 1)
        never_started = sorted(set(res["ids"]) - set(starts))
        n = len(res["ids"])

        print(
            f"bytecode cache filled in {warm:.1f} s; {args.peers} peers connected and warmed up in "
            f"{res['connect_s']:.1f} s; dispatches per peer {dict(sorted(res['per_peer'].items()))}"
        )
        print()
        rows = [
            b.latency_row(
                f"dispatch round trip ({args.peers} peers, under load)",
                res["latency"],
                "ping under the same load",
                res["ping_load"],
            ),
            b.latency_row("", [], "ping, idle (before the load)", res["ping_idle"]),
        ]
        print(b.table([r[:-1] for r in rows], b.LATENCY_HEADER[:-1]))
        print()
        header = ("figure", "value", "baseline (same run)", "value", "ratio")
        figs = [
            [
                f"runs/s, pool limit {args.limit}, first dispatch -> last completion",
                f"{rate:.1f}",
                f"Popen+wait of the agent, sequential (n={args.baseline_n})",
                f"{base_rate:.1f}",
                b.ratio(rate, base_rate),
            ],
            [
                f"  ({n} runs in {elapsed:.2f} s; per slot {args.limit / rate * 1000:.1f} ms a run)",
                "",
                "",
                "",
                "",
            ],
            [
                f"idle CPU of a peer over {res['idle_window']:.1f} s, % of one core (median of "
                f"{len(res['idle_cpu'])})",
                f"{b.p50(res['idle_cpu']):.2f}",
                "python -c 'import time; time.sleep(20)'",
                f"{res['idle_base']:.2f}",
                "",
            ],
            ["  each peer", " ".join(f"{v:.2f}" for v in res["idle_cpu"]), "", "", ""],
        ]
        cpu_rows = [
            [
                f"CPU per run during the load: {k} (all {res['cpu_count'][k]})",
                f"{v / max(n, 1) * 1000:.2f} ms",
                "",
                "",
                "",
            ]
            for k, v in res["cpu"].items()
        ]
        cpu_rows.append(
            [
                f"CPU per run during the load: this bench's {args.peers} client sessions",
                f"{res['cpu_self'] / max(n, 1) * 1000:.2f} ms",
                "",
                "",
                "",
            ]
        )
        cpu_rows.append(
            [
                f"CPU budget per run at the measured rate on {os.cpu_count()} cores",
                f"{(os.cpu_count() or 1) / rate * 1000:.2f} ms",
                "",
                "",
                "",
            ]
        )
        figs += cpu_rows
        print(b.table(figs, header))
        print("\nwhere a slot's time goes (per run, from the store's run rows and the agents' log):")
        parts = store["parts"]
        slot_rows = [
            b.latency_row("claim -> shim's start_run (fork + shim start-up)", parts["shim"], "", []),
            b.latency_row("start_run -> agent's start stamp (agent spawn)", parts["spawn"], "", []),
            b.latency_row("agent's start -> end stamp (the agent itself)", parts["agent"], "", []),
            b.latency_row("agent's end -> shim's ended_at (exit noticed)", parts["exit"], "", []),
            b.latency_row("recorded exit -> next claim in the pool", parts["claim"], "", []),
        ]
        print(b.table([r[:4] for r in slot_rows], b.LATENCY_HEADER[:4]))
        print()
        print(
            f"max agents running at once (agents' own log): {overlap}; max runs holding a slot "
            f"(store events in commit order, claim -> end of run): {store['slot_overlap']}"
        )
        if store["inversions"]:
            print(
                f"note: {store['inversions']} claims carry a time earlier than the exit committed just "
                "before them (the claim's `now` is read before its write transaction starts)"
            )
        print(
            f"states: {dict(store['states'])}; claims by peer: {dict(claimed)}; channel events per "
            f"session: {dict(sorted(res['pushes'].items()))}"
        )
        print(
            f"exactly once: {store['completed_once']}/{n} one AgentCompleted, {store['one_run']}/{n} "
            f"one run row, {sum(1 for w in res['ids'] if starts[w] == 1)}/{n} one agent start; "
            f"unpaired log lines {unpaired}"
        )
        for label, bad in (
            ("completed twice", store["completed_twice"]),
            ("never completed", store["not_completed"]),
            ("more than one run", store["extra_runs"]),
            ("agent started twice", spawned_twice),
            ("agent never started", never_started),
        ):
            if bad:
                print(f"  {label}: {len(bad)}: {', '.join(bad[:5])}{' …' if len(bad) > 5 else ''}")
        print()
        print(
            b.verdict(
                f"never more than {args.limit} running: max {overlap} (agents' log), "
                f"{store['slot_overlap']} (store slots) (DESIGN §7)",
                max(overlap, store["slot_overlap"]),
                args.limit,
            )
        )
        lost = len(store["not_completed"]) + len(never_started)
        print(
            b.verdict(
                f"no run lost: {store['completed_once']}/{n} completed exactly once, "
                f"{lost} missing (DESIGN §7)",
                lost + n - store["completed_once"],
                0,
            )
        )
        twice = len(spawned_twice) + len(store["extra_runs"]) + len(store["completed_twice"])
        print(b.verdict(f"none spawned twice: {twice} duplicates (DESIGN §7)", twice, 0))
        print(
            f"info  {rate:.1f} runs/s at limit {args.limit} (the 50 runs/s bar of DESIGN §7 is for "
            "bench_throughput.py's pool of 8)"
        )
        print(f"({time.monotonic() - t:.1f} s)")
    finally:
        b.cleanup(home)
    return 0


if __name__ == "__main__":
    sys.exit(main())
