"""The MCP figures of DESIGN §7 through a real stdio client: `dispatch` round trip, agent exit ->
channel notification, idle server RSS and per-run shim RSS.

One real `dispatch-runner serve` subprocess (stdio), driven by the SDK `Client(..., mode="legacy")`
(protocol 2025-11-25, the era with a push path), which watches `notifications/claude/channel`
through a ClientExtension and stamps each one with its receive time.

- `dispatch` round trip of `/bin/true` (pool unlimited), N calls, each after the previous run's
  channel event arrived (isolated), then N back to back (runs overlap). Baseline: `ping` and
  `tools/list` round trips in the same session, interleaved with the isolated calls.
- agent exit -> channel received: the agent writes its own end time just before it exits
  (`sh -c 'date +%s.%N > "$1"' sh {workspace}/ended`); the client's handler stamps the receive.
  Baselines: `Popen`+wait of the same agent command; the `ping` round trip. The store's rows split
  it into agent end -> shim's recorded `ended_at` and `ended_at` -> client.
- RSS (/proc/<pid>/status VmRSS) of the server after connecting and 2 s idle, and after the
  runs; of the fork server; of a shim caught while its agent (`sleep`) runs, with its private
  memory (smaps_rollup). Baselines: sleeping `python -c 'import mcp.server.mcpserver'`, sleeping
  `python -c 'import dispatch_runner.launch.shim'` (a directly started shim), sleeping bare python.

The server's store is the home's SQLite file, or with DISPATCH_RUNNER_BENCH_PG=postgresql://...
a fresh PostgreSQL database (given to the server as DISPATCH_RUNNER_STORE, dropped at exit).

    .venv/bin/python bench/bench_mcp.py [--n 100] [--sleepers 3]
"""

import argparse
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import _benchlib as b
import anyio
from _mcplib import Pushes, structured
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPDeprecationWarning

AGENTS_YAML = """\
version: 1
dispatch: {default_agent: tru, default_template: none, allowed_roots: ["{home}"]}
concurrency: {tru: 0, rec: 0, sleeper: 0}     # unlimited: every dispatch starts at once
agents:
  tru:
    command: [/bin/true]
  rec:
    command: [sh, -c, 'date +%s.%N > "$1"', sh, "{workspace}/ended"]
  sleeper:
    command: [sleep, "60"]
"""
REC_ARGV = ["sh", "-c", 'date +%s.%N > "$1"', "sh"]
MARKER = "DR_BENCH_MCP_SERVER"  # a unique value per run finds the server in /proc
DEADLINE_S = 30.0


# ---- /proc ---------------------------------------------------------------------------------------


def proc_field(pid: int, key: str, name: str = "status") -> float | None:
    """A kB field of /proc/<pid>/status (or smaps_rollup), in MB."""
    try:
        text = Path(f"/proc/{pid}/{name}").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return None


def rss_mb(pid: int) -> float | None:
    return proc_field(pid, "VmRSS")


def private_mb(pid: int) -> float | None:
    clean = proc_field(pid, "Private_Clean", "smaps_rollup")
    dirty = proc_field(pid, "Private_Dirty", "smaps_rollup")
    return None if clean is None or dirty is None else clean + dirty


def pss_mb(pid: int) -> float | None:
    return proc_field(pid, "Pss", "smaps_rollup")


def ppid_of(pid: int) -> int | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return int(raw[raw.rfind(b")") + 2 :].split()[1])


def find_pids(*, env: bytes | None = None, argv: bytes | None = None, parent: int | None = None) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            if env is not None and env not in Path(entry.path, "environ").read_bytes():
                continue
            if argv is not None and argv not in Path(entry.path, "cmdline").read_bytes():
                continue
        except OSError:
            continue
        if parent is not None and ppid_of(pid) != parent:
            continue
        found.append(pid)
    return found


def sleeping_python_rss(code: str, n: int = 3) -> list[float]:
    """RSS of `python -c CODE` once it has run CODE and sleeps (median of n processes)."""
    out = []
    for _ in range(n):
        proc = subprocess.Popen(
            [b.PYTHON, "-c", f"{code}\nimport sys, time\nprint('ready', flush=True)\ntime.sleep(60)"],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        try:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != b"ready":
                raise RuntimeError(f"baseline {code!r} did not start")
            value = rss_mb(proc.pid)
            if value is not None:
                out.append(value)
        finally:
            proc.kill()
            proc.wait()
    return out


# ---- the benchmark -------------------------------------------------------------------------------


def popen_wait(argv: list[str], n: int, work: Path) -> list[float]:
    out = []
    for i in range(n + 1):
        t0 = time.perf_counter()
        subprocess.run(
            [*argv, str(work / f"popen-{i}")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=True,
        )
        if i:
            out.append(time.perf_counter() - t0)
    return out


async def timed(fn: Any, *args: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    res = await fn(*args)
    return time.perf_counter() - t0, res


async def phase_round_trips(client: Client, pushes: Pushes, n: int, out: dict[str, Any]) -> None:
    """`dispatch` round trips, isolated (ping and tools/list interleaved), then back to back."""
    for i in range(n):
        out["ping"].append((await timed(client.send_ping))[0])
        out["list"].append((await timed(client.list_tools))[0])
        dt, res = await timed(client.call_tool, "dispatch", {"task": f"rt {i}", "agent": "tru"})
        res = structured(res)
        if res["status"] != "running":
            raise RuntimeError(f"dispatch {i} did not start at once: {res}")
        out["dispatch"].append(dt)
        await pushes.wait(res["workspace"])
    # back to back: the runs of earlier calls start, exit and push meanwhile
    ids = []
    for i in range(n):
        dt, res = await timed(client.call_tool, "dispatch", {"task": f"b2b {i}", "agent": "tru"})
        ids.append(structured(res)["workspace"])
        out["b2b"].append(dt)
    for ws in ids:
        await pushes.wait(ws)


async def phase_exit_push(client: Client, pushes: Pushes, n: int, out: dict[str, Any]) -> None:
    """Agent exit (its own stamp) -> channel event received (the handler's stamp)."""
    for i in range(n):
        res = structured(await client.call_tool("dispatch", {"task": f"exit {i}", "agent": "rec"}))
        received = await pushes.wait(res["workspace"])
        stamp = b.read_stamp(Path(res["path"]) / "work" / "ended")
        if stamp is None:
            raise RuntimeError(f"agent of {res['workspace']} wrote no end stamp")
        out["exit_push"].append(received - stamp)
        out["ended"].append((res["workspace"], stamp, received))


def shim_of(ws: str) -> int:
    """The shim of a running workspace: the parent of its agent (found by the environment the
    shim gives it). Forked from the fork server, a shim carries the fork server's argv."""
    found = b.wait_until(
        lambda: find_pids(env=f"DISPATCH_RUNNER_WORKSPACE={ws}\0".encode(), argv=b"sleep\0"),
        timeout_s=DEADLINE_S,
        poll_s=0.01,
        what=f"the agent of {ws}",
    )
    assert isinstance(found, list)
    agent = int(found[0])
    shim = ppid_of(agent)
    if shim is None or b"dispatch_runner" not in Path(f"/proc/{shim}/cmdline").read_bytes():
        raise RuntimeError(f"the parent of agent {agent} is not a shim")
    return shim


async def phase_memory(
    client: Client, pushes: Pushes, server: int, sleepers: int, out: dict[str, Any]
) -> None:
    """Shims caught while their agents sleep, and the fork server; then kill the sleepers."""
    ids = [
        structured(await client.call_tool("dispatch", {"task": f"sleep {i}", "agent": "sleeper"}))[
            "workspace"
        ]
        for i in range(sleepers)
    ]
    shims = [shim_of(ws) for ws in ids]
    await anyio.sleep(0.5)  # each shim has recorded its agent and waits
    out["shim_rss"] = [v for v in map(rss_mb, shims) if v is not None]
    out["shim_private"] = [v for v in map(private_mb, shims) if v is not None]
    out["shim_pss"] = [v for v in map(pss_mb, shims) if v is not None]
    forkservers = find_pids(argv=b"dispatch_runner.launch.forkserver", parent=server)
    out["fork_rss"] = [v for v in map(rss_mb, forkservers) if v is not None]
    out["fork_private"] = [v for v in map(private_mb, forkservers) if v is not None]
    killed = structured(await client.call_tool("kill", {"agent": "sleeper"}))
    for ws in killed["killed"]:
        await pushes.wait(ws)


async def bench_session(home: Path, n: int, sleepers: int) -> dict[str, Any]:
    tag = f"{home}:server"
    env = {**os.environ, MARKER: tag, "DISPATCH_RUNNER_STORE": b.store_url(home)}
    params = StdioServerParameters(command=b.PYTHON, args=["-m", "dispatch_runner.cli", "serve"], env=env)
    pushes = Pushes()
    out: dict[str, Any] = {k: [] for k in ("ping", "list", "dispatch", "b2b", "exit_push", "ended")}
    with open(home / "server.log", "w") as errlog:  # noqa: ASYNC230 - opened once, never read here
        t_connect = time.perf_counter()
        async with Client(
            stdio_client(params, errlog=errlog), mode="legacy", extensions=[pushes.extension()]
        ) as client:
            out["connect_s"] = time.perf_counter() - t_connect
            if client.protocol_version != "2025-11-25":
                raise RuntimeError(f"unexpected protocol era {client.protocol_version}")
            servers = find_pids(env=f"{MARKER}={tag}\0".encode(), parent=os.getpid())
            if len(servers) != 1:
                raise RuntimeError(f"expected one server process, found {servers}")
            server = servers[0]
            await anyio.sleep(2.0)
            out["rss_idle"], out["pss_idle"] = rss_mb(server), pss_mb(server)

            # warm-up: first-call imports, the worker thread pool, the fork server
            for agent in ("tru", "rec"):
                res = structured(await client.call_tool("dispatch", {"task": "warm-up", "agent": agent}))
                await pushes.wait(res["workspace"])
                await client.send_ping()
                await client.list_tools()

            out["t_rt"] = (await timed(phase_round_trips, client, pushes, n, out))[0]
            out["t_exit"] = (await timed(phase_exit_push, client, pushes, n, out))[0]
            await phase_memory(client, pushes, server, sleepers, out)
            await anyio.sleep(2.0)
            out["rss_after"] = rss_mb(server)
    return out


def store_breakdown(home: Path, ended: list[tuple[str, float, float]]) -> dict[str, list[float]]:
    """agent's end stamp -> shim's recorded ended_at -> channel received, from the store's rows
    (either backend, through its public methods)."""
    from dispatch_runner.store import open_store

    store = open_store(b.store_url(home))
    try:
        rows = store.workspaces([ws for ws, _, _ in ended])
    finally:
        store.close()
    out: dict[str, list[float]] = {"shim": [], "peer": []}
    for (_, stamp, received), row in zip(ended, rows, strict=True):
        if row is None or row.ended_at is None:
            continue
        out["shim"].append(row.ended_at - stamp)
        out["peer"].append(received - row.ended_at)
    return out


def mb(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def mb_med(values: list[float]) -> float | None:
    return b.p50(values) if values else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100, help="calls / runs per figure (default 100)")
    ap.add_argument("--sleepers", type=int, default=3, help="shims to catch for RSS (default 3)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", category=MCPDeprecationWarning)
    home = b.make_home(AGENTS_YAML, "mcp")
    try:
        print(f"bench_mcp: {b.machine()}\n{b.bytecode_note()}; home {home}; {b.store_note()}")
        t = time.monotonic()
        # compile the package and the SDK into the bytecode cache once, outside every figure
        warm = b.run_cmd_times(
            [
                b.PYTHON,
                "-c",
                "import dispatch_runner.mcp.server, dispatch_runner.launch.shim,"
                " dispatch_runner.launch.forkserver, dispatch_runner.cli",
            ],
            1,
        )[0]
        res = anyio.run(bench_session, home, args.n, args.sleepers)
        parts = store_breakdown(home, res["ended"])
        base_popen = popen_wait(REC_ARGV, args.n, home)
        rss_mcp = sleeping_python_rss("import mcp.server.mcpserver", 2)
        rss_shim = sleeping_python_rss("import dispatch_runner.launch.shim")
        rss_bare = sleeping_python_rss("pass")
        print(
            f"bytecode cache filled in {warm:.1f} s; server connected in {res['connect_s']:.2f} s "
            f"(spawn + import + initialize); round trips {res['t_rt']:.1f} s, exit -> channel "
            f"{res['t_exit']:.1f} s"
        )

        print()
        rows = [
            b.latency_row(
                "dispatch round trip (isolated)",
                res["dispatch"],
                "ping round trip",
                res["ping"],
                "p50 <= 15 ms",
            ),
            b.latency_row("", [], "tools/list round trip", res["list"]),
            b.latency_row("dispatch round trip (back to back)", res["b2b"], "ping round trip", res["ping"]),
            b.latency_row(
                "agent exit -> channel received",
                res["exit_push"],
                "Popen+wait of the agent",
                base_popen,
                "p50 <= 50 ms",
            ),
            b.latency_row("", [], "ping round trip", res["ping"]),
            b.latency_row("  agent end -> shim's ended_at", parts["shim"], "", []),
            b.latency_row("  shim's ended_at -> client received", parts["peer"], "", []),
        ]
        print(b.table(rows, b.LATENCY_HEADER))
        slow = [x for x in res["exit_push"] if x >= 0.4]
        if slow:
            print(
                f"slow tail: {len(slow)}/{len(res['exit_push'])} exit -> channel samples took >= 400 ms "
                f"(median {b.ms(b.p50(slow))} ms: about the peer's 0.5 s store poll, i.e. the wake-up "
                "hint did not lead to the commit)"
            )

        print()
        header = ("memory (MB)", "VmRSS", "private", "PSS", "baseline (same run)", "VmRSS", "ratio", "target")
        idle = res["rss_idle"]
        shim = mb_med(res["shim_rss"])
        mem = [
            [
                "server, connected + 2 s idle",
                mb(idle),
                "",
                mb(res["pss_idle"]),
                "python -c 'import mcp.server.mcpserver'",
                mb(mb_med(rss_mcp)),
                b.ratio(idle or 0, mb_med(rss_mcp) or 0),
                "<= 80 MB",
            ],
            [
                "server, after the runs",
                mb(res["rss_after"]),
                "",
                "",
                "bare python",
                mb(mb_med(rss_bare)),
                b.ratio(res["rss_after"] or 0, mb_med(rss_bare) or 0),
                "",
            ],
            [
                f"shim (forked), median of {len(res['shim_rss'])}",
                mb(shim),
                mb(mb_med(res["shim_private"])),
                mb(mb_med(res["shim_pss"])),
                "python -c 'import dispatch_runner.launch.shim'",
                mb(mb_med(rss_shim)),
                b.ratio(shim or 0, mb_med(rss_shim) or 0),
                "<= 12 MB",
            ],
            [
                "fork server",
                mb(mb_med(res["fork_rss"])),
                mb(mb_med(res["fork_private"])),
                "",
                "bare python",
                mb(mb_med(rss_bare)),
                b.ratio(mb_med(res["fork_rss"]) or 0, mb_med(rss_bare) or 0),
                "",
            ],
        ]
        print(b.table(mem, header))
        print(
            "(a forked shim shares the fork server's pages copy-on-write: VmRSS counts them, "
            "private is what the shim alone adds)"
        )

        print()
        print(
            b.verdict(
                f"dispatch round trip p50 {b.ms(b.p50(res['dispatch']))} ms (DESIGN §7: <= 15 ms)",
                b.p50(res["dispatch"]),
                0.015,
            )
        )
        print(
            b.verdict(
                f"agent exit -> channel p50 {b.ms(b.p50(res['exit_push']))} ms (DESIGN §7: <= 50 ms)",
                b.p50(res["exit_push"]),
                0.050,
            )
        )
        print(b.verdict(f"idle server RSS {mb(idle)} MB (DESIGN §7: <= 80 MB)", idle or 1e9, 80))
        if shim is None:
            print("MISS  per-run shim RSS: no shim caught")
        else:
            print(
                b.verdict(
                    f"per-run shim RSS {mb(shim)} MB VmRSS, {mb(mb_med(res['shim_private']))} MB "
                    "private (DESIGN §7: <= 12 MB; VmRSS judged)",
                    shim,
                    12,
                )
            )
        print(f"({time.monotonic() - t:.1f} s)")
    finally:
        b.cleanup(home)
    return 0


if __name__ == "__main__":
    sys.exit(main())
