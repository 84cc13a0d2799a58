"""`status` and the claim at scale: 10,000 queued + 10,000 finished workspaces.

The finished history goes in through the SQLiteStore API (enqueue, claim_next, record_exit; times
spread over the past three days so it looks like history, not a burst). The queued backlog goes in
by direct SQL into the same schema (the very INSERTs `enqueue` makes), because `enqueue` itself
costs O(queue depth) and filling 10,000 through it takes ~30 s; `--fill api` uses the API for
everything. Then:
- `runner.status` overall and for one workspace, through `Runner.status` of an in-process Runner;
- `dispatch-runner status` (CLI, table output) wall time;
- `claim_next` when the head of the queue is a saturated model: N queued `codex:gpt-5.4` (model
  limit 1, one already running) and one `codex:other` at the back. Capacity-first must skip the
  saturated lane in O(log n): the same claim over a 100-deep queue is the baseline;
- `enqueue` (dispatch's store transaction) and `queue_position` at the back of that queue.
Baselines: a bare `SELECT count(*) FROM workspaces`, `python -c pass`, the 100-deep claim.

    .venv/bin/python bench/bench_status.py [--n 10000] [--calls 50]
"""

import argparse
import sqlite3
import sys
import time
from pathlib import Path

import _benchlib as b
import anyio

AGENTS_YAML = """\
version: 1
dispatch: {default_template: none, allowed_roots: ["{home}"]}
concurrency:
  claude: 1
  codex: {total: 5, gpt-5.4: 1}
  gemini: 3
"""
QUEUED_AGENTS = (("claude", None), ("codex", "gpt-5.4"), ("codex", "gpt-5.4-mini"), ("gemini", None))
DAY_S = 86400.0


def new_ws(i: int, pool: str, model: str | None, home: Path, *, tag: str, max_attempts: int = 3):
    from dispatch_runner.store import NewWorkspace

    ws_id = f"ws-bench-{tag}-{i:06d}"
    path = home / "workspaces" / ws_id
    return NewWorkspace(
        id=ws_id,
        pool=pool,
        model=model,
        agent=f"{pool}:{model}" if model else pool,
        task=f"bench task {i}: refactor module {i % 97} and add tests",
        prompt=f"bench task {i}",
        template="none",
        priority=2,
        label=f"bench-{i % 10}",
        path=str(path),
        run_dir=str(path / "work"),
        cwd=None,
        repo=None,
        branch=None,
        idempotency_key=None,
        max_attempts=max_attempts,
        timeout_s=None,
        origin=None,
        parent=None,
        spec={
            "argv": [pool, "-p", "--", [{"ref": "prompt"}]],
            "stdin": "none",
            "env": {},
            "output": "text",
            "patterns": [],
        },
    )


def sql_enqueue(db_path: Path, items: list) -> None:
    """Insert queued workspaces (and their AgentQueued events) the way SQLiteStore.enqueue does,
    in one transaction: items are (NewWorkspace, created_at)."""
    import json

    from dispatch_runner.store.sql.rows import insert_args
    from dispatch_runner.store.sqlite import Q

    db = sqlite3.connect(db_path, timeout=30, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        # the store's own named query and parameters: a new column cannot leave the bench behind
        db.executemany(Q.insert_workspace, [insert_args(ws, t) for ws, t in items])
        db.executemany(
            Q.insert_event,
            [
                (
                    t,
                    "AgentQueued",
                    ws.id,
                    ws.origin,
                    json.dumps({"agent": ws.agent, "priority": ws.priority}, separators=(",", ":")),
                )
                for ws, t in items
            ],
        )
        db.execute("COMMIT")
    finally:
        db.close()


def enqueue_all(store, items: list, limits, fill: str) -> None:
    if fill == "sql":
        sql_enqueue(store.path, items)
        return
    for ws, t in items:
        store.enqueue(ws, now=t, max_wait_s=None, limits=limits)


def populate(store, home: Path, n_finished: int, n_queued: int, limits, fill: str) -> dict[str, float]:
    """Finished history first (one at a time: enqueue, claim, exit), then the queued backlog,
    then claim with the real limits so every pool has its running share."""
    from dispatch_runner.model import Outcome
    from dispatch_runner.store import Limits, RunExit

    unlimited = Limits()
    now = time.time()
    t0 = time.perf_counter()
    start = now - 3 * DAY_S
    step = (3 * DAY_S - 4 * 3600) / max(n_finished, 1)
    for i in range(n_finished):
        pool, model = QUEUED_AGENTS[i % len(QUEUED_AGENTS)]
        failed = i % 10 == 9
        t = start + i * step
        store.enqueue(
            new_ws(i, pool, model, home, tag="done", max_attempts=1 if failed else 3),
            now=t,
            max_wait_s=None,
            limits=unlimited,
        )
        claim = store.claim_next(now=t + 1, limits=unlimited, peer="bench").claim
        result = (
            RunExit(outcome=Outcome.FAILED, exit_code=1, detail="exit 1")
            if failed
            else RunExit(outcome=Outcome.SUCCEEDED, exit_code=0, summary=f"did task {i}")
        )
        store.record_exit(claim.run_id, result, now=t + 60 + i % 300, rate=None)
    t_finished = time.perf_counter() - t0
    t0 = time.perf_counter()
    start = now - 3 * 3600
    items = [
        (new_ws(i, *QUEUED_AGENTS[i % len(QUEUED_AGENTS)], home, tag="q"), start + i * (3 * 3600 / n_queued))
        for i in range(n_queued)
    ]
    enqueue_all(store, items, limits, fill)
    t_queued = time.perf_counter() - t0
    while store.claim_next(now=time.time(), limits=limits, peer="bench").claim is not None:
        pass
    return {"finished": t_finished, "queued": t_queued}


def bench_status_calls(runner, calls: int, one_id: str) -> tuple[list[float], list[float], list[float], dict]:
    from dispatch_runner.actions import StatusRequest

    overall, single, board = [], [], []
    last: dict = {}

    async def main() -> None:
        nonlocal last
        await runner.status(StatusRequest())  # warm-up: worker thread, first-call paths
        for _ in range(calls):
            t0 = time.perf_counter()
            last = await runner.status(StatusRequest())
            overall.append(time.perf_counter() - t0)
        for _ in range(calls):
            t0 = time.perf_counter()
            await runner.status(StatusRequest(workspace=one_id))
            single.append(time.perf_counter() - t0)
        await runner.board()  # the dashboard's read: status plus queue places, ETAs, the timeline
        for _ in range(calls):
            t0 = time.perf_counter()
            await runner.board()
            board.append(time.perf_counter() - t0)

    anyio.run(main)
    return overall, single, board, last


def bench_claim(home: Path, depth: int, calls: int, fill_mode: str) -> dict[str, object]:
    """claim_next with a saturated model at the head, `depth` deep: claims that find the `other`
    lane, claims that find nothing; then enqueue and queue_position at the back."""
    from dispatch_runner.policy import PoolLimit
    from dispatch_runner.store import Limits
    from dispatch_runner.store.sqlite import SQLiteStore

    limits = Limits(concurrency={"codex": PoolLimit(total=5, models={"gpt-5.4": 1})})
    store = SQLiteStore(home / f"claim-{depth}.db")
    try:
        t0 = time.perf_counter()
        base = time.time() - 3600
        items = [
            (new_ws(i, "codex", "gpt-5.4", home, tag=f"c{depth}"), base + i * 0.01) for i in range(depth)
        ]
        items.append((new_ws(depth, "codex", "other", home, tag=f"c{depth}"), base + depth * 0.01))
        enqueue_all(store, items, limits, fill_mode)
        fill = time.perf_counter() - t0
        head = store.claim_next(now=time.time(), limits=limits, peer="bench").claim
        assert head is not None and head.workspace.model == "gpt-5.4", "the head should start first"
        found, empty = [], []
        for _ in range(calls + 1):
            t0 = time.perf_counter()
            res = store.claim_next(now=time.time(), limits=limits, peer="bench")
            t1 = time.perf_counter()
            if res.claim is None or res.claim.workspace.model != "other":
                raise RuntimeError(f"expected the codex:other workspace, got {res.claim}")
            t2 = time.perf_counter()
            none = store.claim_next(now=time.time(), limits=limits, peer="bench")
            t3 = time.perf_counter()
            if none.claim is not None:
                raise RuntimeError(f"expected nothing claimable, got {none.claim.workspace.agent}")
            store.return_reservation(res.claim.run_id, now=time.time())
            found.append(t1 - t0)
            empty.append(t3 - t2)
        enq, pos = [], []
        for i in range(calls + 1):
            ws = new_ws(depth + 1 + i, "codex", "gpt-5.4", home, tag=f"c{depth}")
            t0 = time.perf_counter()
            store.enqueue(ws, now=time.time(), max_wait_s=None, limits=limits)
            t1 = time.perf_counter()
            store.queue_position(ws.id)
            t2 = time.perf_counter()
            enq.append(t1 - t0)
            pos.append(t2 - t1)
        return {"found": found[1:], "empty": empty[1:], "enqueue": enq[1:], "position": pos[1:], "fill": fill}
    finally:
        store.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10_000, help="queued and finished workspaces each")
    ap.add_argument("--calls", type=int, default=50, help="timed calls per figure (default 50)")
    ap.add_argument("--cli-n", type=int, default=10, help="CLI status runs (default 10)")
    ap.add_argument(
        "--fill",
        choices=("sql", "api"),
        default="sql",
        help="how the queued backlog goes in: direct SQL (default) or SQLiteStore.enqueue",
    )
    args = ap.parse_args()
    home = b.make_home(AGENTS_YAML, "status")
    try:
        return _run(args, home)
    finally:
        b.cleanup(home)


def _run(args: argparse.Namespace, home: Path) -> int:
    from dispatch_runner.config import load_config
    from dispatch_runner.runner import Runner

    print(f"bench_status: {b.machine()}\n{b.bytecode_note()}; home {home}")
    t_start = time.monotonic()
    runner = Runner(load_config(), kind="bench")
    try:
        fill = populate(runner.store, home, args.n, args.n, runner.limits, args.fill)
        one_id = f"ws-bench-done-{args.n // 2:06d}"
        one = runner.store.get_workspace(one_id)
        Path(one.path).mkdir(parents=True)
        (Path(one.path) / "run-1.out.log").write_text(
            "".join(f"log line {k}: working on it\n" for k in range(2000))
        )
        overall, single, board, snap = bench_status_calls(runner, args.calls, one_id)
    finally:
        runner.close()
    db = sqlite3.connect(home / "state.db")
    count = b.time_calls(lambda: db.execute("SELECT count(*) FROM workspaces").fetchone(), args.calls + 1)[1:]
    db.close()
    env = b.cli_env(home)
    cli = b.run_cmd_times([b.CLI, "status"], args.cli_n + 1, env=env)[1:]
    py_pass = b.run_cmd_times([b.PYTHON, "-c", "pass"], max(args.cli_n, 20))
    small = bench_claim(home, 100, args.calls, args.fill)
    big = bench_claim(home, args.n, args.calls, args.fill)

    n = f"{args.n:,}"
    how = "direct SQL (enqueue's INSERTs)" if args.fill == "sql" else "SQLiteStore.enqueue"
    print(
        f"store: {snap['counts']}\nfinished: SQLiteStore.enqueue + claim_next + record_exit, "
        f"{fill['finished']:.1f} s; queued backlog: {how}, {fill['queued']:.1f} s; "
        f"claim store {n} deep: {how}, {big['fill']:.1f} s"
    )
    rows = [
        b.latency_row(
            f"runner.status overall ({n}+{n})", overall, "SELECT count(*) FROM workspaces", count, "<= 50 ms"
        ),
        b.latency_row(
            f"runner.board, the dashboard's read ({n}+{n})",
            board,
            "runner.status overall",
            overall,
            "one per change",
        ),
        b.latency_row(
            "runner.status one workspace (2,000-line log)", single, "SELECT count(*) FROM workspaces", count
        ),
        b.latency_row("CLI `dispatch-runner status` wall", cli, "python -c pass", py_pass, "<= 300 ms"),
        b.latency_row(
            f"claim_next, saturated head, {n} deep",
            big["found"],
            "same claim, 100 deep",
            small["found"],
            "O(log n): ratio ~1",
        ),
        b.latency_row(
            f"claim_next, nothing eligible, {n} deep",
            big["empty"],
            "same, 100 deep",
            small["empty"],
            "O(log n): ratio ~1",
        ),
        b.latency_row(
            f"enqueue at the back, {n} deep",
            big["enqueue"],
            "same, 100 deep",
            small["enqueue"],
            "(no O(n) on hot path)",
        ),
        b.latency_row(
            f"queue_position at the back, {n} deep",
            big["position"],
            "same, 100 deep",
            small["position"],
            "(no O(n) on hot path)",
        ),
    ]
    print()
    print(b.table(rows, b.LATENCY_HEADER))
    print()
    print(
        b.verdict(
            f"status overall p50 {b.ms(b.p50(overall))} ms (DESIGN §7: <= 50 ms)", b.p50(overall), 0.050
        )
    )
    print(b.verdict(f"CLI status p50 {b.ms(b.p50(cli))} ms (DESIGN §7: <= 300 ms)", b.p50(cli), 0.300))
    for what, key in (("claim", "found"), ("enqueue", "enqueue")):
        r = b.p50(big[key]) / b.p50(small[key])
        print(b.verdict(f"{what} at {n} / at 100 deep = {r:.1f}x (O(log n): <= 2x)", r, 2.0))
    print(f"({time.monotonic() - t_start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
