"""The dashboard's push: from a dispatch's return (its row committed) to the board that shows it in
every open page, with 1 page open (the baseline) and with many; how many times the server read the
board meanwhile (once per change, however many pages); and what open pages cost the server while nothing
happens, against the same server with none open.

A real `dispatch-runner serve --transport http` on a temporary home; the pages are SSE readers of
`/dashboard/api/stream` (httpx, one thread each), as a browser's EventSource is; the dispatches go
through an in-process Runner on the same store (another session, as far as the server knows),
each running /bin/true. A dispatch counts as seen when every page got a board that names it.

    .venv/bin/python bench/bench_dashboard.py [--pages 20] [--dispatches 30]
"""

import argparse
import json
import socket
import subprocess
import sys
import threading
import time

import _benchlib as b
import anyio
import httpx2 as httpx
import psutil

AGENTS_YAML = """\
version: 1
dispatch: {default_agent: quick, default_template: none, allowed_roots: ["{home}"]}
agents:
  quick: {command: [/bin/true]}
concurrency:
  quick: 4
"""
TOKEN = "bench-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Page(threading.Thread):
    """One open dashboard: the workspaces each board names, and when each was first named."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.first_seen: dict[str, float] = {}
        self.boards = 0
        self.reads: set[int] = set()  # the server's board reads this page was sent
        self.ready = threading.Event()
        self.stop = False

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with (
            httpx.Client(timeout=None, headers=headers) as http,
            http.stream("GET", f"{self.url}/dashboard/api/stream") as response,
        ):
            for line in response.iter_lines():
                if self.stop:
                    return
                if not line.startswith("data: "):
                    continue
                board = json.loads(line[6:])
                now = time.perf_counter()
                self.boards += 1
                self.reads.add(board.get("read", 0))
                for key in ("queue", "running", "recent"):
                    for row in board.get(key, ()):
                        self.first_seen.setdefault(row["workspace"], now)
                self.ready.set()


def push_latencies(url: str, pages: int, dispatches: int, spacing_s: float) -> tuple[list[float], int]:
    """Each dispatch's push to every page, and how many board reads the server made meanwhile."""
    from dispatch_runner.actions import DispatchRequest
    from dispatch_runner.config import load_config
    from dispatch_runner.runner import Runner

    readers = [Page(url) for _ in range(pages)]
    for r in readers:
        r.start()
    for r in readers:
        if not r.ready.wait(20):
            raise SystemExit("a page got no board")
    runner = Runner(load_config(), kind="bench")
    out = []
    try:
        for i in range(dispatches):
            ws = anyio.run(runner.dispatch, DispatchRequest(task=f"bench {i}"))["workspace"]
            t0 = time.perf_counter()  # the dispatch returned: its row is committed
            b.wait_until(
                lambda ws=ws: all(ws in r.first_seen for r in readers),
                timeout_s=20,
                what=f"{ws} on every page",
            )
            out.append(max(r.first_seen[ws] for r in readers) - t0)
            time.sleep(spacing_s)  # apart, so each dispatch is its own change: a schedule, not a wait
    finally:
        runner.close()
        for r in readers:
            r.stop = True
    reads = set().union(*(r.reads for r in readers))
    return out, max(reads) - min(reads)


def idle_cpu(pid: int, url: str, pages: int, seconds: float) -> float:
    """The server's CPU seconds per second over `seconds` with `pages` pages open."""
    readers = [Page(url) for _ in range(pages)]
    for r in readers:
        r.start()
    for r in readers:
        r.ready.wait(20)
    proc = psutil.Process(pid)
    before = proc.cpu_times()
    time.sleep(seconds)  # measuring over a span of time
    after = proc.cpu_times()
    for r in readers:
        r.stop = True
    return (after.user + after.system - before.user - before.system) / seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pages", type=int, default=20)
    ap.add_argument("--dispatches", type=int, default=30)
    ap.add_argument("--idle-s", type=float, default=10.0)
    ap.add_argument("--spacing", type=float, default=1.0, help="seconds between dispatches")
    args = ap.parse_args()
    home = b.make_home(AGENTS_YAML, "dashboard")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    print(f"bench_dashboard: {b.machine()}\n{b.store_note()}; home {home}")
    with open(home / "server.log", "w") as log:
        server = subprocess.Popen(
            [b.CLI, "serve", "--transport", "http", "--port", str(port), "--token", TOKEN],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    try:
        b.wait_until(lambda: _listening(port) or server.poll() is not None, timeout_s=30, what="listening")
        if server.poll() is not None:
            raise SystemExit((home / "server.log").read_text())
        one, reads_one = push_latencies(url, 1, args.dispatches, args.spacing)
        many, reads_many = push_latencies(url, args.pages, args.dispatches, args.spacing)
        cpu_none = idle_cpu(server.pid, url, 0, args.idle_s)
        cpu_many = idle_cpu(server.pid, url, args.pages, args.idle_s)
    finally:
        server.terminate()
        server.wait(timeout=20)
        b.cleanup(home)
    rows = [
        b.latency_row(
            f"dispatch returned -> board on all {args.pages} pages",
            many,
            "… on 1 page",
            one,
            "(clients share the cores)",
        ),
    ]
    print()
    print(b.table(rows, b.LATENCY_HEADER))
    print(
        f"\nserver CPU while idle: {cpu_many * 1000:.1f} ms/s with {args.pages} pages open, "
        f"{cpu_none * 1000:.1f} ms/s with none (over {args.idle_s:.0f} s each)"
    )
    print(
        f"board reads by the server: {reads_many} over {args.dispatches} dispatches with {args.pages} pages "
        f"open, {reads_one} with 1 (a dispatch is queued, started and ended; a read at most every 250 ms)"
    )
    ratio = reads_many / max(reads_one, 1)
    what = (
        f"reads with {args.pages} pages / with 1 = {ratio:.2f}x (one read per change, not per page: <= 1.2x)"
    )
    print(b.verdict(what, ratio, 1.2))
    return 0


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


if __name__ == "__main__":
    sys.exit(main())
