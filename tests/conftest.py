"""Shared fixtures: a private DISPATCH_RUNNER_HOME with fake agents configured, and helpers that
wait on a condition with a deadline (never a bare sleep)."""

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.fakes import FAKE_AGENT, FAKE_CLAUDE, FAKE_CODEX

T = TypeVar("T")
PY = sys.executable

BASE_CONFIG = """\
version: 1
dispatch:
  default_agent: claude
  default_template: none
  allowed_roots: [{root}]
  kill_grace_s: 1
  reservation_timeout_s: 5
agents:
  claude:
    command: [{py}, {claude}, -p, --model, "{{model}}", --output-format, stream-json, --verbose]
    output: claude-stream-json
    stdin: prompt
  codex:
    command: [{py}, {codex}, exec, --json, -m, "{{model}}", "-"]
    output: codex-json
    stdin: prompt
  agent:
    command: [{py}, {agent}, "{{prompt}}"]
  true:
    command: [/bin/true]
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Home:
    """A private runner home: config file, agent log, and helpers to read them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / "home"
        self.path.mkdir()
        self.agent_log = root / "agents.log"
        self.config = self.path / "agents.yaml"

    def write_config(self, extra: str = "", *, base: bool = True) -> Path:
        text = (
            BASE_CONFIG.format(root=self.root, py=PY, claude=FAKE_CLAUDE, codex=FAKE_CODEX, agent=FAKE_AGENT)
            if base
            else ""
        )
        self.config.write_text(text + extra)
        return self.config


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[Home]:
    """DISPATCH_RUNNER_TEST_STORE=postgres runs the test on an empty PostgreSQL database instead
    of the home's SQLite file."""
    h = Home(tmp_path)
    monkeypatch.setenv("DISPATCH_RUNNER_HOME", str(h.path))
    monkeypatch.delenv("DISPATCH_RUNNER_CONFIG", raising=False)
    monkeypatch.delenv("DISPATCH_RUNNER_STORE", raising=False)
    for inherited in ("DISPATCH_RUNNER_PARENT", "DISPATCH_RUNNER_DEPTH", "DISPATCH_RUNNER_SESSION"):
        monkeypatch.delenv(inherited, raising=False)  # the suite may itself run inside a run
    if os.environ.get("DISPATCH_RUNNER_TEST_STORE") == "postgres":
        monkeypatch.setenv("DISPATCH_RUNNER_STORE", request.getfixturevalue("pg_url"))
    monkeypatch.setenv("FAKE_AGENT_LOG", str(h.agent_log))
    h.write_config()
    yield h
    kill_leftovers(h.path)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, home: Home, monkeypatch: pytest.MonkeyPatch) -> str:
    """The store a test's runners share: the home's SQLite file, or a fresh PostgreSQL database."""
    if request.param == "postgres":
        monkeypatch.setenv("DISPATCH_RUNNER_STORE", request.getfixturevalue("pg_url"))
    return str(request.param)


def wait_for(
    predicate: Callable[[], T], *, timeout: float = 15.0, interval: float = 0.02, message: str = "condition"
) -> T:
    """Poll until predicate() is truthy; fail with `message` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def processes_with_env(key: str, value: str) -> list[int]:
    """Live (non-zombie) processes whose environment has key=value."""
    needle = f"{key}={value}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            env = Path(entry.path, "environ").read_bytes()
            stat = Path(entry.path, "stat").read_bytes()
        except OSError:
            continue
        state = stat[stat.rfind(b")") + 2 :].split()[0]
        if state not in (b"Z", b"X") and needle in env.split(b"\0"):
            found.append(int(entry.name))
    return found


def kill_leftovers(home_path: Path) -> None:
    for pid in processes_with_env("DISPATCH_RUNNER_HOME", str(home_path)):
        if pid != os.getpid():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def workspace_state(store: Any, ws: str) -> str:
    row = store.get_workspace(ws)
    assert row is not None
    return str(row.state)


async def until(
    predicate: Callable[[], T],
    *,
    timeout: float = 15.0,
    interval: float = 0.02,
    message: str | Callable[[], str] = "condition",
) -> T:
    """Async twin of wait_for: polls without blocking the event loop the runner lives on. A
    callable message is read at the timeout (diagnostics of the state then, not at the start)."""
    import anyio

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout}s waiting for {text}")
        await anyio.sleep(interval)


# ---- PostgreSQL ---------------------------------------------------------------------------------

PG_ADMIN_URL = os.environ.get("DISPATCH_RUNNER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


class PgDatabase:
    """A throwaway database for this test run (dropped at its end); `fresh()` empties it so each
    test starts from a store that migrates itself."""

    def __init__(self, admin_url: str) -> None:
        import psycopg

        self.name = f"dr_test_{os.getpid()}_{int(time.time() * 1000) % 10**8}"
        self.admin_url = admin_url
        with psycopg.connect(admin_url, autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{self.name}"')
        base = admin_url.rsplit("/", 1)[0]
        self.url = f"{base}/{self.name}"

    def fresh(self) -> str:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as db:
            db.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        return self.url

    def drop(self) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as db:
            db.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_database() -> Iterator[PgDatabase]:
    try:
        import psycopg

        psycopg.connect(PG_ADMIN_URL, connect_timeout=3).close()
    except Exception as exc:
        if os.environ.get("CI"):
            raise AssertionError(f"CI needs PostgreSQL at {PG_ADMIN_URL}: {exc}") from exc
        pytest.skip(f"no PostgreSQL at {PG_ADMIN_URL} ({exc}); CI always has one")
    db = PgDatabase(PG_ADMIN_URL)
    yield db
    db.drop()


@pytest.fixture
def pg_url(pg_database: PgDatabase) -> str:
    """The URL of an empty PostgreSQL database for this test."""
    return pg_database.fresh()
