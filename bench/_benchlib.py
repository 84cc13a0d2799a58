"""Shared helpers of the bench scripts: a temporary home, percentiles, tables, process cleanup.

Not a benchmark itself. Each `bench/*.py` puts its own directory first on sys.path (Python does so
for `python bench/NAME.py`), so `import _benchlib` works without installing anything.
"""

import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

PYTHON = sys.executable
CLI = str(Path(sys.executable).with_name("dispatch-runner"))
_ENV_KEYS = ("DISPATCH_RUNNER_HOME", "DISPATCH_RUNNER_CONFIG", "DISPATCH_RUNNER_STORE")


# ---- the temporary home ---------------------------------------------------------------------------


def make_home(agents_yaml: str, prefix: str, *, pycache: bool = True) -> Path:
    """A fresh DISPATCH_RUNNER_HOME with its own agents.yaml; set in os.environ for children too.

    `{home}` in the YAML text is replaced by the home path. With `pycache` (the default) child
    Pythons (shims, CLI, drainers) get a bytecode cache under the home, as an installed package
    has, even where the shell sets PYTHONDONTWRITEBYTECODE (which recompiles the whole package in
    every shim); nothing is written beside the package's sources."""
    home = Path(tempfile.mkdtemp(prefix=f"dr-bench-{prefix}-")).resolve()
    (home / "agents.yaml").write_text(agents_yaml.replace("{home}", str(home)))
    for key in _ENV_KEYS:
        os.environ.pop(key, None)
    os.environ["DISPATCH_RUNNER_HOME"] = str(home)
    if os.environ.get("DISPATCH_RUNNER_BENCH_PG"):
        os.environ["DISPATCH_RUNNER_STORE"] = _fresh_pg_database(os.environ["DISPATCH_RUNNER_BENCH_PG"])
    if pycache:
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        os.environ["PYTHONPYCACHEPREFIX"] = str(home / "pycache")
    return home


def _fresh_pg_database(admin_url: str) -> str:
    """DISPATCH_RUNNER_BENCH_PG=postgresql://postgres@127.0.0.1/postgres runs a bench on a fresh
    PostgreSQL database (dropped at exit) instead of the home's SQLite file."""
    import atexit

    import psycopg

    name = f"dr_bench_{os.getpid()}_{time.time_ns()}"
    with psycopg.connect(admin_url, autocommit=True) as db:
        db.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(admin_url, autocommit=True) as db:
            db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    atexit.register(drop)
    return f"{admin_url.rsplit('/', 1)[0]}/{name}"


def store_note() -> str:
    return "store: " + (os.environ.get("DISPATCH_RUNNER_STORE") or "sqlite (the home's state.db)")


def store_url(home: Path) -> str:
    """The store a bench's peers share: the fresh PostgreSQL database make_home set up, else the
    home's SQLite file (what a peer picks by itself from DISPATCH_RUNNER_HOME)."""
    return os.environ.get("DISPATCH_RUNNER_STORE") or f"sqlite:///{home / 'state.db'}"


def fresh_store_url(sqlite_path: Path) -> str:
    """Another empty store for a bench that needs one per measurement: a fresh PostgreSQL
    database with DISPATCH_RUNNER_BENCH_PG (dropped at exit), else a new SQLite file."""
    admin = os.environ.get("DISPATCH_RUNNER_BENCH_PG")
    return _fresh_pg_database(admin) if admin else f"sqlite:///{sqlite_path}"


def bytecode_note() -> str:
    if os.environ.get("PYTHONPYCACHEPREFIX") and not os.environ.get("PYTHONDONTWRITEBYTECODE"):
        return "child Pythons: bytecode cache on (PYTHONPYCACHEPREFIX under the temp home)"
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        return "child Pythons: PYTHONDONTWRITEBYTECODE set, every child recompiles the package"
    return "child Pythons: environment as inherited"


def cli_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _ENV_KEYS}
    env["DISPATCH_RUNNER_HOME"] = str(home)
    return env


def processes_of(home: Path) -> list[int]:
    """PIDs of live processes started for this home (its path is in their environment or argv):
    shims, agents, on-demand drainers. Only ours: the home is a fresh mkdtemp path."""
    needle = str(home).encode()
    me = os.getpid()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            blob = Path(entry.path, "environ").read_bytes() + Path(entry.path, "cmdline").read_bytes()
            state = Path(entry.path, "stat").read_bytes()
        except OSError:
            continue
        if needle in blob and state[state.rfind(b")") + 2 :][:1] not in (b"Z", b"X"):
            found.append(int(entry.name))
    return found


def wait_processes_gone(home: Path, timeout_s: float) -> list[int]:
    """Poll until no process of this home is left (or the timeout); returns what is left."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = processes_of(home)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.02)


def cleanup(home: Path, *, grace_s: float = 3.0) -> None:
    """Let this home's processes finish, then SIGTERM / SIGKILL the stragglers by PID, reap our
    own children, and delete the home."""
    left = wait_processes_gone(home, grace_s)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in left:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        left = wait_processes_gone(home, 2.0)
        if not left:
            break
    reap_children()
    if left:
        print(f"warning: processes still alive after cleanup: {left}", file=sys.stderr)
    shutil.rmtree(home, ignore_errors=True)


def reap_children() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def wait_until(
    predicate: Callable[[], object], *, timeout_s: float, poll_s: float = 0.001, what: str = "condition"
) -> object:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(poll_s)


def read_stamp(path: Path) -> float | None:
    """The start time an agent wrote (`date +%s.%N`), or None while it is not complete."""
    try:
        text = path.read_text()
    except OSError:
        return None
    if not text.endswith("\n"):
        return None
    return float(text)


# ---- statistics and tables ------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def p50(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def time_calls(fn: Callable[[], object], n: int) -> list[float]:
    """Wall time of n calls, in seconds each."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def run_cmd_times(argv: Sequence[str], n: int, *, env: dict[str, str] | None = None) -> list[float]:
    """Wall time of n runs of a command (stdout/stderr discarded); fails loudly on a bad exit."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        out.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise RuntimeError(f"{argv} exited {proc.returncode}: {proc.stderr.decode()[-500:]}")
    return out


def ms(seconds: float) -> str:
    if math.isnan(seconds):
        return ""
    value = seconds * 1000
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:.0f}"


def ratio(a: float, b: float) -> str:
    if not b or math.isnan(a) or math.isnan(b):
        return ""
    return f"{a / b:.1f}x" if a / b >= 10 else f"{a / b:.2f}x"


def table(rows: Iterable[Sequence[str]], header: Sequence[str]) -> str:
    rows = [list(header), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for k, row in enumerate(rows):
        pairs = enumerate(zip(row, widths, strict=True))
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


LATENCY_HEADER = (
    "figure",
    "n",
    "p50 ms",
    "p99 ms",
    "baseline (same run)",
    "n",
    "p50 ms",
    "p99 ms",
    "ratio p50",
    "target",
)


def latency_row(
    name: str, values: Sequence[float], base_name: str, base: Sequence[float], target: str = ""
) -> list[str]:
    def n(v: Sequence[float]) -> str:
        return str(len(v)) if v else ""

    return [
        name,
        n(values),
        ms(p50(values)),
        ms(pct(values, 99)),
        base_name,
        n(base),
        ms(p50(base)),
        ms(pct(base, 99)),
        ratio(p50(values), p50(base)),
        target,
    ]


def verdict(label: str, value: float, limit: float, *, higher_is_better: bool = False) -> str:
    ok = value >= limit if higher_is_better else value <= limit
    return f"{'PASS' if ok else 'MISS'}  {label}"


def machine() -> str:
    cores = os.cpu_count() or 0
    load = os.getloadavg()[0]
    return (
        f"python {sys.version.split()[0]}, {cores} cores, load {load:.2f}, "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}"
    )
