"""Guards that only concurrency shows, on PostgreSQL: two Store instances on one database (two
peers, separate connections) and threads released together by a barrier. A unique violation is
retried only where a retry finds what the winner committed (an idempotency key); claims never
reserve past a pool's limit; event ids follow commit order, so a reader's cursor skips none."""

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

import psycopg
import pytest

from dispatch_runner.errors import StoreError
from dispatch_runner.model import Outcome
from dispatch_runner.store import Claim, EnqueueResult, Limits, RunExit, Store, open_store
from dispatch_runner.store.postgres import PostgresStore
from tests.conftest import wait_for
from tests.store.test_contract import T0, limited, new_ws

T = TypeVar("T")
NO_LIMITS = Limits()


@pytest.fixture
def peers(pg_url: str) -> Iterator[list[Store]]:
    stores = [open_store(pg_url), open_store(pg_url)]
    yield stores
    for store in stores:
        store.close()


def together(n: int, job: Callable[[int], T]) -> list[T]:
    """`job(0)` … `job(n-1)` on n threads, released at once by a barrier."""
    barrier = threading.Barrier(n)

    def run(i: int) -> T:
        barrier.wait(timeout=10)
        return job(i)

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(run, range(n)))


def enqueue(store: Store, wid: str, *, key: str | None = None, agent: str = "claude") -> EnqueueResult:
    return store.enqueue(new_ws(wid, agent, key=key), now=T0, max_wait_s=None, limits=NO_LIMITS)


def one_value(url: str, sql: str) -> Any:
    with psycopg.connect(url, autocommit=True) as db:
        row = db.execute(sql.encode()).fetchone()
    assert row is not None
    return row[0]


# ---- unique keys --------------------------------------------------------------------------------


def test_peers_that_enqueue_one_idempotency_key_together_make_one_workspace(peers: list[Store]) -> None:
    def enqueue_key(round_: int, i: int) -> EnqueueResult:
        return enqueue(peers[i % 2], f"r{round_}-{i}", key=f"key-{round_}")

    for round_ in range(12):
        results = together(6, partial(enqueue_key, round_))
        [made] = [r.workspace.id for r in results if not r.deduplicated]
        assert {r.workspace.id for r in results} == {made}
    assert peers[0].snapshot(now=T0, limits=NO_LIMITS)["counts"]["queued"] == 12


def test_an_enqueue_that_loses_the_race_for_its_key_returns_the_winners_workspace(
    pg_url: str, peers: list[Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loser read no workspace with the key (the winner had not committed), inserted its
    own and waited on the key's index; once the winner commits, its transaction is run again
    and finds the winner's."""
    winner, loser = peers
    assert isinstance(winner, PostgresStore)
    inserted, commit = threading.Event(), threading.Event()
    append = winner._event

    def event_then_wait(*args: Any, **kw: Any) -> None:
        append(*args, **kw)
        inserted.set()
        assert commit.wait(timeout=10)

    monkeypatch.setattr(winner, "_event", event_then_wait)
    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(enqueue, winner, "winner", key="k")
        assert inserted.wait(timeout=10)
        second = pool.submit(enqueue, loser, "loser", key="k")
        wait_for(
            lambda: one_value(
                pg_url,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'",
            ),
            message="the loser's insert waiting on the key's index",
        )
        commit.set()
        assert (first.result(timeout=10).deduplicated, first.result().workspace.id) == (False, "winner")
        assert (second.result(timeout=10).deduplicated, second.result().workspace.id) == (True, "winner")
    assert loser.get_workspace("loser") is None


def test_a_workspace_id_used_twice_fails_at_once_without_a_retry(pg_url: str, peers: list[Store]) -> None:
    enqueue(peers[0], "a")
    drawn = one_value(pg_url, "SELECT last_value FROM workspaces_seq_seq")
    started = time.monotonic()
    with pytest.raises(StoreError, match=r"Key \(id\)=\(a\) already exists"):
        enqueue(peers[1], "a", key="another")
    # each try's INSERT draws one value from the sequence: one try, no backoff
    assert one_value(pg_url, "SELECT last_value FROM workspaces_seq_seq") == drawn + 1
    assert time.monotonic() - started < 1


# ---- claims and events --------------------------------------------------------------------------


def test_claims_released_together_never_reserve_past_a_pool_limit(peers: list[Store]) -> None:
    limit, claimers, rounds = 3, 8, 15
    limits = limited(claude=limit)

    def claim(now: float, i: int) -> Claim | None:
        return peers[i % 2].claim_next(now=now, limits=limits, peer=f"p{i}:1:1").claim

    for n in range(limit * rounds + claimers):  # four lanes of one pool: four heads to take
        enqueue(peers[n % 2], f"w{n:03}", agent=f"claude:m{n % 4}")
    for round_ in range(rounds):
        now = T0 + round_
        got = together(claimers, partial(claim, now))
        claims = [c for c in got if c is not None]
        active = peers[0].active_runs()
        assert len(claims) == len(active) == limit, f"round {round_}"
        for run in active:
            peers[1].record_exit(run.id, RunExit(outcome=Outcome.SUCCEEDED, exit_code=0), now=now, rate=None)


def test_a_reader_following_event_ids_misses_none_while_peers_append(pg_url: str, peers: list[Store]) -> None:
    writers, each = 6, 40
    reader = open_store(pg_url)
    seen: list[int] = []
    stop = threading.Event()

    def follow() -> None:
        cursor = 0
        while True:
            last_round = stop.is_set()
            for event in reader.events_after(cursor):
                assert event.id is not None
                seen.append(cursor := event.id)
            if last_round:
                return

    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            following = pool.submit(follow)
            together(writers, lambda i: [enqueue(peers[i % 2], f"w{i}-{n}") for n in range(each)])
            stop.set()
            following.result(timeout=30)
        every = [e.id for e in reader.events_after(0, limit=writers * each + 1)]
    finally:
        reader.close()
    assert len(every) == writers * each
    assert seen == every
