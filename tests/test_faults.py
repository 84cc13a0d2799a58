"""No fault stalls a pool or mislabels a run (hardening): a spawn that cannot happen, a full disk,
a failed COMMIT, a reservation given back, concurrent status.json writers, dead peers, and
descendants that left the run's process group."""

import json
import multiprocessing
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest

import dispatch_runner.workspaces as workspaces
from dispatch_runner.actions import KillRequest, StatusRequest
from dispatch_runner.config import load_config
from dispatch_runner.errors import StoreError
from dispatch_runner.runner import Runner
from dispatch_runner.store.sqlite import SQLiteStore
from tests.conftest import Home, until, wait_for
from tests.fakes import FAKE_AGENT
from tests.mcp_helpers import free_port, listening
from tests.test_recovery import _cli_dispatch, _only_workspace
from tests.test_runner import _log, dispatch, serving, wait_all

pytestmark = pytest.mark.anyio


# ---- a spawn that cannot happen counts, with backoff; the pool moves on ------------------------


async def test_a_run_whose_workspace_vanished_fails_as_an_attempt_and_the_pool_keeps_moving(
    home: Home,
) -> None:
    async with serving(home, "concurrency:\n  agent: 1\n") as runner:
        await runner.stop()
        doomed = await dispatch(runner, "@sleep=0", agent="agent", max_attempts=2)
        fine = await dispatch(runner, "@sleep=0", agent="agent")
        shutil.rmtree(doomed["path"])  # the directory is gone before the run can start
        await runner.start()
        [row] = await wait_all(runner, [fine["workspace"]])
        assert row["state"] == "completed"
        first = runner.store.get_workspace(doomed["workspace"])
        assert first is not None and first.attempts >= 1
        [final] = await wait_all(runner, [doomed["workspace"]], timeout=30)
        status = await runner.status(StatusRequest(workspace=doomed["workspace"]))
    assert final["state"] == "failed"
    assert status["ended_reason"] == "spawn_failed"
    assert status["reason"].startswith("max retries exceeded: the run could not start: No such file")
    # one claim per attempt, not a claim loop
    assert status["runs"] == 2
    db = sqlite3.connect(home.path / "state.db")
    assert (
        db.execute("SELECT count(*) FROM runs WHERE workspace = ?", (doomed["workspace"],)).fetchone()[0] == 2
    )


async def test_a_reservation_whose_peer_lives_but_never_spawns_fails_after_the_timeout(home: Home) -> None:
    home.write_config(
        "dispatch:\n  reservation_timeout_s: 0.5\n  max_attempts: 1\n"
        "agents:\n  t:\n    command: [/bin/true]\n",
        base=False,
    )
    runner = Runner(load_config())
    try:
        await runner.stop()
        ws = await dispatch(runner, "x", agent="t")
        runner.store.set_frozen(False, now=time.time())
        # claimed by a live peer (this one) that never starts a shim for it
        result = runner.store.claim_next(now=None, limits=runner.limits, peer=runner.peer)
        assert result.claim is not None
        await until(lambda: time.time() - result.claim.workspace.updated_at > 0.6)  # type: ignore[union-attr]
        await runner.recover()
        row = runner.store.get_workspace(ws["workspace"])
    finally:
        runner.close()
    assert row is not None and (row.state, row.ended_reason) == ("failed", "spawn_failed")
    assert "did not start within 0.5s" in (row.reason or "")


# ---- a full disk ----------------------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a real file system that fills up."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _config_on(home: Home, root: Path) -> None:
    home.write_config(
        f"dispatch:\n  workspace_root: {root}\n  allowed_roots: [{home.root}]\n"
        "  max_attempts: 1\n  kill_grace_s: 1\n  default_template: none\n"
        "agents:\n  filler:\n    command: [sh, -c, 'head -c 4000000 /dev/zero']\n"
        f"  agent:\n    command: [{sys.executable}, {FAKE_AGENT}, '{{prompt}}']\n",
        base=False,
    )


async def test_a_full_disk_while_the_agent_writes_ends_failed_with_no_space_not_lost(
    home: Home, tiny_disk: Path
) -> None:
    _config_on(home, tiny_disk)
    async with serving(home) as runner:
        ws = await dispatch(runner, "fill the disk", agent="filler")
        [row] = await wait_all(runner, [ws["workspace"]])
        status = await runner.status(StatusRequest(workspace=ws["workspace"]))
    assert row["state"] == "failed", status
    assert status["ended_reason"] == "no_space"
    assert "no space left on the disk of" in status["reason"]


async def test_a_dispatch_onto_a_full_disk_is_refused_with_a_sentence_and_leaves_nothing(
    home: Home, tiny_disk: Path
) -> None:
    _config_on(home, tiny_disk)
    (tiny_disk / "ballast").write_bytes(b"")
    with open(tiny_disk / "ballast", "wb") as f, pytest.raises(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    async with serving(home) as runner:
        from dispatch_runner.errors import WorkspaceUnavailable

        with pytest.raises(
            WorkspaceUnavailable,
            match=r"^cannot prepare the workspace .*: No space "
            r"left on device; .*nothing was queued$",
        ):
            await dispatch(runner, "x" * 100_000, agent="agent")
        assert runner.store.last_event_id() == 0
    assert [p.name for p in tiny_disk.iterdir()] == ["ballast"]


# ---- a failed COMMIT never leaves the write lock held ----------------------------------------------


def test_a_failed_commit_rolls_back_and_the_store_stays_writable_for_everyone(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SQLiteStore(path)
    other = sqlite3.connect(path, timeout=0.5, isolation_level=None)
    # a real COMMIT-time failure: a deferred foreign key that is still violated when committing
    other.executescript(
        "CREATE TABLE parent (id INTEGER PRIMARY KEY); CREATE TABLE child (p INTEGER "
        "REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED);"
    )
    try:
        with pytest.raises(StoreError, match="FOREIGN KEY"):
            store._write(lambda db: db.execute("INSERT INTO child VALUES (1)"))
        # the connection left the transaction: another writer is not locked out ...
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        # ... and this store can write again
        assert store.set_frozen(True, now=1.0) is True
        assert store.is_frozen()
    finally:
        other.close()
        store.close()


# ---- a reservation given back costs nothing and started nothing --------------------------------


async def test_a_returned_reservation_uses_no_pacing_or_daily_slot_and_never_said_started(home: Home) -> None:
    home.write_config("rates:\n  agent: {sustained_delay: 3600, daily_limit: 1}\n")
    out = _cli_dispatch("@sleep=0", "--agent", "agent", crash_at="peer-after-claim")
    assert out.returncode == 137  # the claiming peer died before it spawned anything
    ws = _only_workspace(home)
    async with serving(home) as runner:
        # pacing of an hour and one spawn a day: only a slot that was given back lets it run now
        [row] = await wait_all(runner, [ws])
        events = runner.store.events_after(0)
        state = runner.store.pool_state("agent")
    assert row["state"] == "completed"
    kinds = [(e.type, e.data.get("outcome")) for e in events if e.workspace == ws]
    assert kinds[:2] == [("AgentQueued", None), ("AgentRetrying", "reservation_returned")]
    assert [k for k, _ in kinds].count("AgentStarted") == 1
    assert kinds.index(("AgentStarted", None)) > 1
    assert state.daily_count == 1


# ---- status.json never goes backwards ---------------------------------------------------------------


def _hammer(path: str, revs: list[int]) -> None:
    for rev in revs:
        row = SimpleNamespace(
            id="ws",
            path=path,
            state=f"s{rev}",
            rev=rev,
            updated_at=float(rev),
            agent="a",
            task="t",
            priority=2,
            label=None,
            runs=1,
            attempts=0,
            max_attempts=3,
            created_at=0.0,
            started_at=None,
            ended_at=None,
            exit_code=None,
            reason=None,
            ended_reason=None,
            summary=None,
            session_id=None,
            run_dir=path,
            branch=None,
        )
        workspaces.write_status(row, now=time.time())


@pytest.mark.parametrize("trial", range(3))
def test_concurrent_writers_never_leave_an_older_status_json(tmp_path: Path, trial: int) -> None:
    # four writers, each moving through its own increasing revisions, as a peer and a shim do;
    # a compare-then-replace without a lock leaves an older one last most of the time
    revs = list(range(1, 2001))
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_hammer, args=(str(tmp_path), revs[i::4])) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    doc = json.loads((tmp_path / "status.json").read_text())
    assert (doc["rev"], doc["state"]) == (2000, "s2000")


async def test_every_fast_run_ends_with_a_completed_status_json(home: Home) -> None:
    home.write_config("concurrency:\n  true: 4\n")
    async with serving(home) as runner:
        ids = [(await dispatch(runner, "x", agent="true"))["workspace"] for _ in range(40)]
        rows = await wait_all(runner, ids, timeout=60)
    assert {r["state"] for r in rows} == {"completed"}
    for ws in ids:
        doc = json.loads((home.path / "workspaces" / ws / "status.json").read_text())
        assert doc["state"] == "completed", doc


# ---- dead peers are forgotten ---------------------------------------------------------------------


async def test_rows_of_peers_that_were_killed_are_removed(home: Home) -> None:
    procs = []
    for _ in range(3):
        port = free_port()
        procs.append(
            (
                port,
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "dispatch_runner.cli",
                        "serve",
                        "--transport",
                        "http",
                        "--port",
                        str(port),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                ),
            )
        )
    store = SQLiteStore(home.path / "state.db")
    try:
        wait_for(lambda: len(store.peers()) == 3, timeout=30, message="three serving peers")
        for port, _ in procs:
            wait_for(partial(listening, port), timeout=30, message="the peer listening")
        for _, proc in procs:  # all stopped first: a live one would sweep the others' rows away
            proc.send_signal(signal.SIGSTOP)
        for _, proc in procs:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert len(store.peers()) == 3  # nobody withdrew them
        async with serving(home) as runner:
            await until(
                lambda: [p["id"] for p in store.peers()] == [runner.peer], message="only the live peer left"
            )
    finally:
        store.close()


# ---- killing a run stops descendants that left its process group --------------------------------


def _escaped(home: Home, ws: str) -> int:
    found = [e["child_pid"] for e in _log(home) if e["event"] == "escaped" and e["ws"] == ws]
    return found[0] if found else 0


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


async def test_kill_stops_a_descendant_that_left_the_process_group(home: Home) -> None:
    async with serving(home) as runner:
        ws = (await dispatch(runner, "@escape @sleep=60", agent="agent"))["workspace"]
        pid = await until(lambda: _escaped(home, ws), message="the escaped child")
        assert os.getsid(pid) == pid  # its own session: a group kill cannot reach it
        await runner.kill(KillRequest(workspace=ws))
        [row] = await wait_all(runner, [ws])
        await until(lambda: not _alive(pid), message="the escaped child gone")
    assert row["state"] == "killed"


async def test_a_finished_run_leaves_no_escaped_descendant_behind(home: Home) -> None:
    async with serving(home) as runner:
        ws = (await dispatch(runner, "@escape", agent="agent"))["workspace"]
        [row] = await wait_all(runner, [ws])
        pid = _escaped(home, ws)
        await until(lambda: not _alive(pid), message="the escaped child gone")
    assert row["state"] == "completed" and pid


# ---- found by review ------------------------------------------------------------------------------


async def test_a_sub_agent_dispatched_by_a_run_outlives_the_run_that_dispatched_it(home: Home) -> None:
    cli = f"{sys.executable} -m dispatch_runner.cli"
    home.write_config(
        f"  parent:\n    command: [sh, -c, '{cli} dispatch --agent agent \"@sleep=1\" --json > child.json']\n"
    )
    async with serving(home) as runner:
        parent = (await dispatch(runner, "x", agent="parent"))["workspace"]
        [row] = await wait_all(runner, [parent])
        assert row["state"] == "completed"
        child = json.loads((home.path / "workspaces" / parent / "work" / "child.json").read_text())
        [done] = await wait_all(runner, [child["workspace"]])
    assert done["state"] == "completed", done  # not killed with its parent's descendants


async def test_a_workspace_id_drawn_twice_never_discards_the_other_workspace(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serving(home) as runner:
        await runner.stop()
        first = await dispatch(runner, "first", agent="agent")
        ids = iter([first["workspace"], first["workspace"]])
        real = workspaces.new_id
        monkeypatch.setattr(workspaces, "new_id", lambda: next(ids, None) or real())
        second = await dispatch(runner, "second", agent="agent")
    assert second["workspace"] != first["workspace"]
    assert (Path(first["path"]) / "prompt.md").read_text() == "first\n"


async def test_a_spoilt_prompt_md_does_not_change_what_the_run_is_asked(home: Home) -> None:
    async with serving(home) as runner:
        await runner.stop()
        ws = await dispatch(runner, "the real task", agent="agent")
        (Path(ws["path"]) / "prompt.md").write_bytes(b"\xff\xfe spoilt")  # not even UTF-8
        await runner.start()
        [row] = await wait_all(runner, [ws["workspace"]])
    assert row["state"] == "completed"
    [parsed] = [e for e in _log(home) if e["event"] == "parsed" and e["ws"] == ws["workspace"]]
    assert parsed["prompt"] == "the real task"
    assert (Path(ws["path"]) / "prompt.md").read_text() == "the real task\n"


async def test_a_full_disk_at_spawn_backs_the_pool_off_instead_of_spending_every_attempt(
    home: Home, tiny_disk: Path
) -> None:
    _config_on(home, tiny_disk)
    async with serving(home) as runner:
        await runner.stop()
        ids = [(await dispatch(runner, f"task {n}", agent="agent"))["workspace"] for n in range(5)]
        with open(tiny_disk / "ballast", "wb") as f, pytest.raises(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        await runner.start()
        backoff = await until(
            lambda: runner.store.pool_state("agent").backoff_until, message="the pool backing off"
        )
        rows = [runner.store.get_workspace(i) for i in ids]
    assert backoff is not None and backoff > time.time() + 20
    charged = [r for r in rows if r is not None and r.attempts]
    assert len(charged) == 1 and charged[0].ended_reason == "no_space"
    assert [r.state for r in rows if r is not None and not r.attempts] == ["queued"] * 4


async def test_a_claim_by_a_peer_of_an_older_version_goes_back_to_the_queue(home: Home) -> None:
    old = subprocess.Popen(["sleep", "60"])  # a live process standing for the old peer
    try:
        runner = Runner(load_config())
        try:
            from dispatch_runner.launch import supervisor

            peer = f"{os.uname().nodename}:{old.pid}:{supervisor.proc_start(old.pid)}"
            await runner.stop()
            ws = await dispatch(runner, "x", agent="agent")
            runner.store.set_frozen(False, now=time.time())
            db = sqlite3.connect(home.path / "state.db", isolation_level=None)
            db.execute(
                "INSERT INTO peers (id, pid, start, boot_id, kind, heartbeat_at) VALUES (?,?,?,?,?,?)",
                (peer, old.pid, supervisor.proc_start(old.pid), supervisor.boot_id(), "stdio", time.time()),
            )  # no schema
            db.close()
            claim = runner.store.claim_next(now=time.time() - 5, limits=runner.limits, peer=peer).claim
            assert claim is not None
            await runner.recover()
            row = runner.store.get_workspace(ws["workspace"])
        finally:
            runner.close()
    finally:
        old.kill()
        old.wait()
    assert row is not None and (row.state, row.attempts) == ("queued", 0)
