"""Runs/s through 3 host ids on one store, beside the same workload through one host.

Each host is a `dispatch-runner serve` stdio peer of its own, with its own
DISPATCH_RUNNER_HOST_ID (host-a, host-b, host-c) and DISPATCH_RUNNER_HOME (its own agents.yaml and
workspace root), all on one store: a SQLite file, or with DISPATCH_RUNNER_BENCH_PG a fresh
PostgreSQL database per measurement. N dispatches of `/bin/true` without cwd or repo (so not
pinned to the dispatching host: any host that has the agent may claim them) go through host-a's
session, one call after the other (`--spread`: dispatch i through host i mod 3, the sessions at
once), into pool `tp` limited to 8 across the fleet.

- runs/s: N over first dispatch -> last `ended_at` in the store (polled through the store's
  methods until every workspace has finished, with a deadline);
- the split: how many runs each host claimed (the `host` of each run row), and under whose
  workspace root each workspace's `path` lies at the end (a host that claims a workspace
  dispatched elsewhere makes a directory under its own root and records it); how many of the
  directories made at dispatch are still there after their workspace moved to another host;
- claim -> shim's `start_run` p50 per host; channel events at the dispatching sessions; runs per
  workspace (exactly one each).

`--backlog`: the N go into a stopped queue (the `stop` tool) and the clock starts at `start`, which
wakes every peer at once: the fleet's drain alone, without the dispatch calls' pace.

Baseline, same run, interleaved (one host, three hosts, one, three, ...): the same N through
host-a alone on a fresh store; and sequential `Popen`+wait of `/bin/true`. Medians over --reps.

    .venv/bin/python bench/bench_hosts.py [--n 120] [--reps 3] [--limit 8] [--spread] [--backlog]
"""

import argparse
import os
import subprocess
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import _benchlib as b
import anyio
import anyio.abc
import anyio.to_thread
from _mcplib import Pushes, structured
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPDeprecationWarning

AGENTS_YAML = """\
version: 1
dispatch: {default_agent: tp, default_template: none, allowed_roots: ["{home}"]}
concurrency: {tp: LIMIT, w: 0}
agents:
  tp:
    command: [/bin/true]
  w:                        # warm-up runs, pinned to each host, outside pool tp
    command: [/bin/true]
"""
HOSTS = ("host-a", "host-b", "host-c")
MARKER = "DR_BENCH_HOST"  # a unique value per peer (its home) finds its processes
FINISHED = ("completed", "failed", "killed", "lost", "cancelled")
CONNECT_S = 120.0
PUSH_GRACE_S = 2.0  # after the store shows every run finished, for the last channel events


# ---- one measurement: a fleet of peers on a fresh store -------------------------------------------


def host_home(root: Path, tag: str, host: str, limit: int) -> Path:
    home = root / f"{tag}-{host}"
    home.mkdir()
    (home / "agents.yaml").write_text(AGENTS_YAML.replace("LIMIT", str(limit)).replace("{home}", str(home)))
    return home


def peer_env(home: Path, host: str, store_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DISPATCH_RUNNER_CONFIG"}
    env.update(
        DISPATCH_RUNNER_HOME=str(home),
        DISPATCH_RUNNER_HOST_ID=host,
        DISPATCH_RUNNER_STORE=store_url,
        **{MARKER: str(home)},
    )
    return env


async def dispatch_share(client: Client, ks: range, ids: list[str]) -> None:
    for k in ks:
        res = structured(await client.call_tool("dispatch", {"task": f"tp {k}", "agent": "tp"}))
        ids.append(res["workspace"])


async def dispatch_all(sessions: dict[str, Client], n: int) -> dict[str, list[str]]:
    """Dispatch i through session i mod len(sessions), each session one call after the other,
    the sessions at once. Returns each session's workspaces."""
    mine: dict[str, list[str]] = {h: [] for h in sessions}
    async with anyio.create_task_group() as tg:
        for i, (host, client) in enumerate(sessions.items()):
            tg.start_soon(dispatch_share, client, range(i, n, len(sessions)), mine[host])
    return mine


async def pushes_of(pushes: Pushes, ids: Iterable[str]) -> int:
    """How many of these workspaces' channel events arrived, waiting a moment for the last ones."""
    with anyio.move_on_after(PUSH_GRACE_S):
        for ws in ids:
            await pushes.wait(ws)
    return sum(1 for ws in ids if ws in pushes.at)


async def peer(
    host: str,
    home: Path,
    store_url: str,
    pushes: Pushes,
    done: anyio.Event,
    *,
    task_status: anyio.abc.TaskStatus[Client],
) -> None:
    """One host's serving peer: started once connected and warmed up; its session lives (and so
    does the peer) until `done`."""
    params = StdioServerParameters(
        command=b.PYTHON, args=["-m", "dispatch_runner.cli", "serve"], env=peer_env(home, host, store_url)
    )
    with open(home / "server.log", "w") as errlog:  # noqa: ASYNC230 - opened once
        async with Client(
            stdio_client(params, errlog=errlog), mode="legacy", extensions=[pushes.extension()]
        ) as client:
            # warm-up on this very host: worker threads, the fork server, first-call imports
            warm = structured(
                await client.call_tool("dispatch", {"task": "warm-up", "agent": "w", "host": host})
            )
            await pushes.wait(warm["workspace"])
            task_status.started(client)
            await done.wait()


async def fleet(homes: dict[str, Path], store_url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Connect a peer per host, warm each up, then dispatch N and wait until all have finished.
    With `backlog`, the queue is stopped while the N are dispatched and the clock starts at `start`."""
    out: dict[str, Any] = {}
    pushes = {h: Pushes() for h in homes}
    sessions: dict[str, Client] = {}
    done = anyio.Event()

    async def connect(tg: anyio.abc.TaskGroup, host: str) -> None:
        sessions[host] = await tg.start(peer, host, homes[host], store_url, pushes[host], done)

    async with anyio.create_task_group() as tg:
        with anyio.fail_after(CONNECT_S):
            async with anyio.create_task_group() as connecting:  # the peers start together
                for host in homes:
                    connecting.start_soon(connect, tg, host)
        first = sessions[next(iter(homes))]
        via = dict(sessions) if args.spread else {next(iter(homes)): first}
        if args.backlog:
            structured(await first.call_tool("stop", {}))
        out["t_first"] = t0 = time.time()
        with anyio.fail_after(60 + args.n):
            mine = await dispatch_all(via, args.n)
        out["dispatch_s"] = time.time() - t0
        if args.backlog:
            out["t_first"] = time.time()
            structured(await first.call_tool("start", {}))
        out["ids"] = [ws for ids in mine.values() for ws in ids]
        # the directory the dispatch made (the result may already show the claiming host's one)
        out["dispatch_paths"] = {
            ws: str(homes[h] / "workspaces" / ws) for h, ids in mine.items() for ws in ids
        }
        out["rows"], out["complete"] = await wait_finished(store_url, out["ids"], 60 + args.n * 0.5)
        out["pushes"] = sum([await pushes_of(pushes[h], ids) for h, ids in mine.items()])
        out["peers"] = await anyio.to_thread.run_sync(read_peers, store_url)
        done.set()
    return out


async def wait_finished(store_url: str, ids: list[str], deadline_s: float) -> tuple[list[Any], bool]:
    """Poll the store until every workspace has finished, or the deadline: (rows, all finished)."""
    from dispatch_runner.store import open_store

    store = open_store(store_url)
    try:
        rows: list[Any] = []
        with anyio.move_on_after(deadline_s):
            while True:
                rows = await anyio.to_thread.run_sync(store.workspaces, ids)
                if all(r is not None and r.state in FINISHED for r in rows):
                    return rows, True
                await anyio.sleep(0.05)
        return rows, False
    finally:
        store.close()


def read_peers(store_url: str) -> dict[str, list[str] | None]:
    """What each registered peer's host advertised (its heartbeat's `agents`)."""
    from dispatch_runner.store import open_store

    store = open_store(store_url)
    try:
        return {str(p["host"]): p["agents"] for p in store.peers()}
    finally:
        store.close()


def read_runs(store_url: str, ids: list[str]) -> dict[str, list[Any]]:
    from dispatch_runner.store import open_store

    store = open_store(store_url)
    try:
        return {ws: store.runs_of(ws) for ws in ids}
    finally:
        store.close()


# ---- figures of one measurement --------------------------------------------------------------------


def owner_of(path: str, homes: dict[str, Path]) -> str:
    """The host under whose workspace root a workspace's directory lies."""
    for host, home in homes.items():
        if Path(path).is_relative_to(home):
            return host
    return "elsewhere"


def figures(res: dict[str, Any], homes: dict[str, Path], store_url: str) -> dict[str, Any]:
    rows = [r for r in res["rows"] if r is not None]
    runs = read_runs(store_url, res["ids"])
    last = [r.ended_at for r in rows if r.ended_at is not None]
    claim_start: dict[str, list[float]] = {h: [] for h in homes}
    for rs in runs.values():
        for run in rs:
            if run.started_at is not None and run.host in claim_start:
                claim_start[run.host].append(run.started_at - run.claimed_at)
    n = len(res["ids"])
    return {
        "n": n,
        "complete": res["complete"],
        "rate": n / (max(last) - res["t_first"]) if last and res["complete"] else float("nan"),
        "accepted": n / res["dispatch_s"],
        "states": Counter(r.state for r in rows),
        "by_host": Counter(str(run.host) for rs in runs.values() for run in rs),
        "by_path": Counter(owner_of(r.path, homes) for r in rows),
        "claim_start": claim_start,
        "extra_runs": sum(1 for rs in runs.values() if len(rs) != 1),
        "moved": sum(1 for r in rows if r.path != res["dispatch_paths"][r.id]),
        "left_behind": sum(
            1
            for r in rows
            if r.path != res["dispatch_paths"][r.id] and Path(res["dispatch_paths"][r.id]).exists()
        ),
        "pushes": res["pushes"],
        "peers": res["peers"],
        "load": os.getloadavg()[0],
    }


def measure(root: Path, tag: str, hosts: tuple[str, ...], args: argparse.Namespace) -> dict[str, Any]:
    homes = {h: host_home(root, tag, h, args.limit) for h in hosts}
    store_url = b.fresh_store_url(root / f"{tag}.db")
    try:
        res = anyio.run(fleet, homes, store_url, args)
    except BaseException:
        for home in homes.values():
            print(f"--- {home.name}/server.log (tail)\n{tail(home / 'server.log')}", file=sys.stderr)
        raise
    fig = figures(res, homes, store_url)
    for home in homes.values():  # shims and fork servers of these peers end with them
        left = b.wait_processes_gone(home, 10.0)
        if left:
            print(f"warning: processes of {home.name} still alive: {left}", file=sys.stderr)
    return fig


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text().splitlines()[-lines:])
    except OSError:
        return "(none)"


def popen_rate(n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        subprocess.Popen(["/bin/true"], stdin=subprocess.DEVNULL).wait()
    return n / (time.perf_counter() - t0)


# ---- the report --------------------------------------------------------------------------------------


def split(counter: Counter[str], hosts: tuple[str, ...]) -> str:
    extra = sorted(set(counter) - set(hosts))
    return " / ".join(str(counter.get(h, 0)) for h in hosts) + "".join(f" + {k}: {counter[k]}" for k in extra)


def detail_rows(results: list[tuple[str, dict[str, Any]]]) -> list[list[str]]:
    rows = []
    for name, f in results:
        rows.append(
            [
                name,
                f"{f['rate']:.1f}",
                f"{f['accepted']:.1f}",
                split(f["by_host"], HOSTS),
                split(f["by_path"], HOSTS),
                f"{f['moved']} ({f['left_behind']})",
                " / ".join(b.ms(b.p50(f["claim_start"].get(h, []))) for h in HOSTS),
                f"{f['pushes']}/{f['n']}",
                f"{f['load']:.2f}",
            ]
        )
    return rows


def summary_rows(one: list[dict[str, Any]], three: list[dict[str, Any]], base: float) -> list[list[str]]:
    r1, r3 = b.p50([f["rate"] for f in one]), b.p50([f["rate"] for f in three])
    share = Counter[str]()
    for f in three:
        share.update(f["by_host"])
    total = sum(share.values()) or 1
    return [
        [
            f"3 host ids ({', '.join(HOSTS)})",
            f"{r3:.1f}",
            f"{1000 / r3:.2f}",
            "1 host (host-a alone)",
            f"{r1:.1f}",
            b.ratio(r3, r1),
            " / ".join(f"{100 * share.get(h, 0) / total:.0f}%" for h in HOSTS),
        ],
        ["", "", "", "Popen+wait /bin/true, sequential", f"{base:.0f}", b.ratio(r3, base), ""],
    ]


def report(results: list[tuple[str, dict[str, Any]]], base: float, args: argparse.Namespace) -> int:
    one = [f for name, f in results if name.endswith("1 host")]
    three = [f for name, f in results if name.endswith("3 hosts")]
    via = "host i mod (hosts) at once (--spread)" if args.spread else "host-a"
    when = "into a stopped queue, timed from `start` (--backlog)" if args.backlog else "timed from the first"
    print(f"\n{args.n} dispatches of /bin/true through {via}, {when}; pool tp limited to {args.limit}")
    header = (
        "run",
        "runs/s",
        "accepted/s",
        "runs a/b/c",
        "dirs a/b/c",
        "moved (left)",
        "claim->start p50 ms a/b/c",
    )
    print(b.table(detail_rows(results), (*header, "pushes", "load")))
    print()
    head = ("figure (median)", "runs/s", "ms/run", "baseline (same run)", "runs/s", "ratio", "runs a/b/c")
    print(b.table(summary_rows(one, three, base), head))
    peers = three[-1]["peers"] if three else {}
    print(f"\npeers' advertised agents (heartbeat): {peers}")
    bad = [
        (name, f)
        for name, f in results
        if not f["complete"] or f["extra_runs"] or set(f["states"]) != {"completed"}
    ]
    for name, f in bad:
        states, extra = dict(f["states"]), f["extra_runs"]
        print(f"  {name}: states {states}, all finished {f['complete']}, extra runs {extra}")
    idle = [h for f in three for h in HOSTS if not f["by_host"].get(h)]
    print()
    print(b.verdict(f"every run finished, exactly one run each ({len(bad)} measurements off)", len(bad), 0))
    print(
        b.verdict(
            f"all three hosts claimed runs ({len(idle)} host-measurements without a claim)", len(idle), 0
        )
    )
    return 0 if not bad else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=120, help="dispatches per measurement (default 120)")
    ap.add_argument("--reps", type=int, default=3, help="measurements of each fleet (default 3)")
    ap.add_argument("--limit", type=int, default=8, help="pool limit across the fleet (default 8)")
    ap.add_argument("--spread", action="store_true", help="dispatch through every host, not host-a only")
    ap.add_argument(
        "--backlog",
        action="store_true",
        help="dispatch N into a stopped queue, then time the drain from `start`",
    )
    args = ap.parse_args()
    warnings.filterwarnings("ignore", category=MCPDeprecationWarning)
    root = b.make_home("", "hosts")
    try:
        pg = "a fresh PostgreSQL database" if os.environ.get("DISPATCH_RUNNER_BENCH_PG") else "a SQLite file"
        print(f"bench_hosts: {b.machine()}\n{b.bytecode_note()}; root {root}; store: {pg} per measurement")
        t = time.monotonic()
        b.run_cmd_times(
            [
                b.PYTHON,
                "-c",
                "import dispatch_runner.mcp.server, dispatch_runner.launch.shim, dispatch_runner.cli",
            ],
            1,
        )
        results = []
        for r in range(args.reps):
            for hosts in (HOSTS[:1], HOSTS):
                name = f"#{r + 1} {len(hosts)} host{'s' if len(hosts) > 1 else ''}"
                results.append((name, measure(root, f"r{r}-{len(hosts)}", hosts, args)))
        code = report(results, popen_rate(args.n), args)
        print(f"({time.monotonic() - t:.1f} s)")
        return code
    finally:
        b.cleanup(root)


if __name__ == "__main__":
    sys.exit(main())
