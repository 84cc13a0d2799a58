"""What only the PostgreSQL backend has: peers that start together migrate once, a wake-up by
LISTEN/NOTIFY when another peer commits, and a schema newer than the code is refused."""

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import psycopg
import pytest

from dispatch_runner.errors import StoreError
from dispatch_runner.store import Limits, open_store
from dispatch_runner.store.postgres import MIGRATIONS, PostgresStore, redacted
from tests.conftest import Home
from tests.test_runner import dispatch, serving, wait_all


def test_peers_that_start_together_migrate_once(pg_url: str) -> None:
    with ThreadPoolExecutor(max_workers=6) as pool:
        stores = list(pool.map(lambda _: open_store(pg_url), range(6)))
    try:
        with psycopg.connect(pg_url) as db:
            versions = [r[0] for r in db.execute("SELECT version FROM dispatch_runner_schema ORDER BY 1")]
        assert versions == list(range(1, len(MIGRATIONS) + 1))  # each step applied exactly once
        assert all(s.has_work() is False for s in stores)
    finally:
        for s in stores:
            s.close()


def test_a_schema_newer_than_this_code_is_refused(pg_url: str) -> None:
    open_store(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute("INSERT INTO dispatch_runner_schema (version) VALUES (%s)", (len(MIGRATIONS) + 1,))
    with pytest.raises(StoreError, match="newer than this dispatch-runner knows"):
        open_store(pg_url)


@pytest.mark.anyio
async def test_a_commit_by_another_peer_wakes_a_listening_peer(pg_url: str) -> None:
    listener, writer = open_store(pg_url), open_store(pg_url)
    watcher = listener.watcher()
    try:
        assert await watcher.changed(0.2) is False  # nothing happened: the timeout
        writer.set_frozen(True, now=time.time())  # an event (QueueFrozen) and its NOTIFY
        with anyio.fail_after(5):
            assert await watcher.changed(10) is True
        assert listener.data_version() == listener.last_event_id() > 0
        assert (
            listener.is_frozen()
            and listener.claim_next(now=None, limits=Limits(), peer="p:1:1").claim is None
        )
    finally:
        watcher.close()
        listener.close()
        writer.close()


def test_urls_are_shown_without_their_password() -> None:
    assert (
        redacted("postgresql://runner:s3cret@db.internal:5433/q") == "postgresql://runner@db.internal:5433/q"
    )
    assert "s3cret" not in redacted("host=db password=s3cret dbname=q")


def test_a_light_store_holds_one_connection_and_none_once_released(pg_url: str) -> None:
    def others() -> int:
        with psycopg.connect(pg_url) as db:
            row = db.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
        assert row is not None
        return int(row[0])

    store = open_store(pg_url, light=True)
    assert isinstance(store, PostgresStore)
    try:
        store.set_frozen(False, now=time.time())
        assert not store.is_frozen() and others() == 1  # no pool: one connection, reused
        store.release()  # what a shim does while its agent runs
        assert others() == 0
        assert store.has_work() is False and others() == 1  # the next call connects again
    finally:
        store.close()
    assert others() == 0


@pytest.mark.anyio
async def test_a_run_on_postgresql_completes_and_its_spec_file_holds_no_password(
    home: Home, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_password = pg_url.replace("postgresql://postgres@", "postgresql://postgres:not-a-secret@")
    monkeypatch.setenv("DISPATCH_RUNNER_STORE", with_password)  # trust auth: any password does
    async with serving(home) as runner:
        ws = await dispatch(runner, "hello", agent="agent")
        [row] = await wait_all(runner, [ws["workspace"]])
    assert row["state"] == "completed"
    spec = (Path(ws["path"]) / "run-1.spec.json").read_text()
    assert "not-a-secret" not in spec and '"store": "postgresql://postgres@' in spec
