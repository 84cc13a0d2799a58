"""What only the PostgreSQL backend has: peers that start together migrate once, a current
schema opens without a lock or a CREATE, and a newer one is refused; transactions at READ
COMMITTED whatever the server's default; a wake-up by LISTEN/NOTIFY when another peer commits,
listened again after the connection breaks."""

import contextlib
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import anyio
import psycopg
import pytest

from dispatch_runner.errors import StoreError
from dispatch_runner.store import Limits, open_store
from dispatch_runner.store.postgres import MIGRATIONS, PgWatcher, PostgresStore, Q, redacted
from dispatch_runner.store.sql.conn import Conn
from tests.conftest import Home, PgDatabase
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


# ---- migrations: a current schema needs no lock and no CREATE ----------------------------------


def _admin(url: str, *statements: str) -> None:
    with psycopg.connect(url, autocommit=True) as db:
        for statement in statements:
            db.execute(statement.encode())


@contextlib.contextmanager
def rows_only_role(pg_url: str) -> Iterator[str]:
    """A login role that may read and write the store's rows and draw from its sequences, and
    create nothing; yields its URL."""
    role = f"dr_rows_{os.getpid()}"
    _admin(
        pg_url,
        f"CREATE ROLE {role} LOGIN PASSWORD '{role}'",
        f"GRANT USAGE ON SCHEMA public TO {role}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}",
    )
    parts = urlsplit(pg_url)
    try:
        yield urlunsplit(parts._replace(netloc=f"{role}:{role}@{parts.hostname}:{parts.port or 5432}"))
    finally:
        _admin(
            pg_url,
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'",
            f"DROP OWNED BY {role}",
            f"DROP ROLE {role}",
        )


def test_a_role_that_may_only_use_rows_opens_a_current_store(pg_url: str) -> None:
    open_store(pg_url).close()  # the schema's owner migrates it
    with rows_only_role(pg_url) as url:
        for light in (False, True):
            store = open_store(url, light=light)
            try:
                store.set_frozen(not light, now=time.time())  # a row, an event, a NOTIFY
                assert store.is_frozen() is not light and store.last_event_id() > 0
            finally:
                store.close()


def test_a_role_that_may_not_create_tables_is_told_the_schema_needs_its_owner(pg_url: str) -> None:
    with rows_only_role(pg_url) as url, pytest.raises(StoreError, match="owner") as info:
        open_store(url)
    assert f"1..{len(MIGRATIONS)}" in str(info.value)


def test_a_current_schema_opens_while_another_session_holds_the_migration_lock(pg_url: str) -> None:
    """Only a peer with steps to apply waits for the lock (behind PgBouncer, a session that
    holds a lock may be anyone's)."""
    open_store(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as holder, ThreadPoolExecutor(max_workers=1) as pool:
        holder.execute("SELECT pg_advisory_lock(hashtext('dispatch-runner:migrate'))")
        opening = pool.submit(open_store, pg_url)
        try:
            store = opening.result(timeout=10)
        finally:
            holder.execute("SELECT pg_advisory_unlock_all()")
        store.close()


# ---- isolation: READ COMMITTED whatever the server's default ----------------------------------


@contextlib.contextmanager
def default_isolation(pg_database: PgDatabase, level: str) -> Iterator[None]:
    """New sessions of the test database start at `level` (as a server's configuration may say)."""
    name = pg_database.name
    _admin(pg_database.admin_url, f"ALTER DATABASE \"{name}\" SET default_transaction_isolation = '{level}'")
    try:
        yield
    finally:
        _admin(pg_database.admin_url, f'ALTER DATABASE "{name}" RESET default_transaction_isolation')


def _isolation(db: Conn) -> str:
    return str(db.execute("SHOW transaction_isolation").fetchone()[0])


@pytest.mark.parametrize("level", ["serializable", "repeatable read"])
def test_store_transactions_read_committed_whatever_the_database_default(
    pg_database: PgDatabase, pg_url: str, level: str
) -> None:
    with default_isolation(pg_database, level):
        with psycopg.connect(pg_url) as plain:
            assert _isolation(Conn(plain, Q)) == level  # what the store's sessions would get
        for light in (False, True):
            store = open_store(pg_url, light=light)
            assert isinstance(store, PostgresStore)
            try:
                assert store._reading(_isolation) == store._write(_isolation) == "read committed"
            finally:
                store.close()


def test_peers_that_start_together_under_a_serializable_default_migrate_once(
    pg_database: PgDatabase, pg_url: str
) -> None:
    """The peer that waited for the migration lock reads the version again: at READ COMMITTED
    it sees what the first one committed (a serializable snapshot would predate it)."""
    with default_isolation(pg_database, "serializable"):
        test_peers_that_start_together_migrate_once(pg_url)


# ---- the LISTEN connection: listened again after a break --------------------------------------


def listening(url: str) -> set[int]:
    """The backends of `url`'s database that listen (the watchers)."""
    with psycopg.connect(url, autocommit=True) as db:
        rows = db.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'"
        ).fetchall()
    return {int(r[0]) for r in rows}


@pytest.mark.anyio
async def test_a_watcher_whose_connection_was_cut_listens_again(pg_url: str) -> None:
    listener, writer = open_store(pg_url), open_store(pg_url)
    watcher = listener.watcher()
    try:
        [cut] = listening(pg_url)
        _admin(pg_url, f"SELECT pg_terminate_backend({cut})")
        with anyio.fail_after(5):
            assert await watcher.changed(10) is True  # the break: something may have been missed
            while not listening(pg_url) - {cut}:  # polls (True) until it listens again
                assert await watcher.changed(1) is True
        assert len(listening(pg_url)) == 1
        assert await watcher.changed(0.3) is False  # quiet: it listens, it does not poll
        writer.set_frozen(True, now=time.time())
        with anyio.fail_after(5):
            assert await watcher.changed(10) is True
    finally:
        watcher.close()
        listener.close()
        writer.close()
    assert listening(pg_url) == set()


@pytest.mark.anyio
async def test_a_watcher_that_cannot_connect_polls_and_listens_once_it_can(pg_database: PgDatabase) -> None:
    name = f"{pg_database.name}_late"
    url = f"{pg_database.url.rsplit('/', 1)[0]}/{name}"
    watcher = PgWatcher(url, fallback_poll_s=0.01, max_backoff_s=0.2)
    try:
        with anyio.fail_after(2):
            assert await watcher.changed(10) is True  # no such database yet: a short poll
        _admin(pg_database.admin_url, f'CREATE DATABASE "{name}"')
        with anyio.fail_after(5):
            while not listening(url):
                assert await watcher.changed(0.05) is True
        assert await watcher.changed(0.3) is False
    finally:
        watcher.close()
        _admin(pg_database.admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
