"""The outbox on every backend: a completion is owed to the client that dispatched it from the
transaction that records the exit, is taken by exactly one session (compare-and-set, also
across peers), can be given back after a failed send, and is read by cursor."""

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from dispatch_runner.model import Outcome
from dispatch_runner.store import Limits, Store
from tests.store.conftest import Backend
from tests.store.test_contract import T0, finish, must_claim, new_ws, start

CLIENT = "proc:host-a:4242:1800000000.00"


def complete(
    store: Store,
    wid: str,
    *,
    client: str | None = CLIENT,
    origin: str | None = "peer-a/1",
    now: float = T0,
    outcome: Outcome = Outcome.SUCCEEDED,
) -> None:
    """Dispatch `wid` for `client` through connection `origin` and run it to its end."""
    store.enqueue(
        replace(new_ws(wid, origin=origin, max_attempts=1), client=client),
        now=now,
        max_wait_s=None,
        limits=Limits(),
    )
    got = must_claim(store, now)
    assert got.workspace.id == wid
    start(store, got.run_id, now)
    finish(store, got.run_id, now + 2, outcome, exit_code=0 if outcome is Outcome.SUCCEEDED else 1)


def test_an_exit_owes_its_completion_to_the_client_that_dispatched_it(store: Store) -> None:
    complete(store, "w1")
    [owed] = store.owed(CLIENT)
    assert owed.client == CLIENT and owed.id > 0
    event = owed.event
    assert (event.type, event.workspace, event.origin, event.at) == (
        "AgentCompleted",
        "w1",
        "peer-a/1",
        T0 + 2,
    )
    assert event.data["state"] == "completed" and event.data["exit_code"] == 0
    assert event.id in [e.id for e in store.events_after(0)]  # the event itself, as stored
    assert store.owed("proc:host-a:4242:other") == []
    assert store.snapshot(now=T0 + 3, limits=Limits())["undelivered"] == 1


def test_without_a_client_the_completion_is_owed_to_the_dispatching_connection(store: Store) -> None:
    complete(store, "w1", client=None, origin="peer-a/7")
    assert [o.event.workspace for o in store.owed("peer-a/7")] == ["w1"]
    complete(store, "w2", client=None, origin=None, now=T0 + 10)  # the CLI: nobody to owe it to
    assert store.undelivered_of(["w2"]) == []


def test_a_failed_run_is_owed_too(store: Store) -> None:
    complete(store, "w1", outcome=Outcome.FAILED)
    assert "failed" in {o.event.data["state"] for o in store.owed(CLIENT)}


def test_taking_a_completion_is_compare_and_set_and_needs_its_client(store: Store) -> None:
    complete(store, "w1")
    [owed] = store.owed(CLIENT)
    ws, event = "w1", owed.event.id
    assert store.claim_delivery(ws, event, client="someone-else", to="peer-b/1", now=T0 + 5) is False
    assert store.claim_delivery(ws, event, client=CLIENT, to="peer-b/1", now=T0 + 5) is True
    assert store.claim_delivery(ws, event, client=CLIENT, to="peer-c/1", now=T0 + 6) is False
    assert store.owed(CLIENT) == [] and store.undelivered_of([ws]) == []
    assert store.snapshot(now=T0 + 7, limits=Limits())["undelivered"] == 0


def test_a_completion_given_back_is_owed_again_only_by_its_holder(store: Store) -> None:
    complete(store, "w1")
    [owed] = store.owed(CLIENT)
    assert store.claim_delivery("w1", owed.event.id, client=CLIENT, to="peer-b/1", now=T0 + 5)
    assert store.release_delivery("w1", owed.event.id, to="peer-c/1") is False
    assert store.release_delivery("w1", owed.event.id, to="peer-b/1") is True
    assert store.release_delivery("w1", owed.event.id, to="peer-b/1") is False  # not held now
    assert store.owed(CLIENT) == [owed]
    assert store.claim_delivery("w1", owed.event.id, client=CLIENT, to="peer-c/1", now=T0 + 6)


def test_owed_completions_are_read_oldest_first_past_a_cursor(store: Store) -> None:
    for n in range(5):
        complete(store, f"w{n}", now=T0 + 10 * n)
    owed = store.owed(CLIENT)
    assert [o.event.workspace for o in owed] == [f"w{n}" for n in range(5)]
    ids = [o.id for o in owed]
    assert ids == sorted(ids)
    assert [o.event.workspace for o in store.owed(CLIENT, after=ids[1])] == ["w2", "w3", "w4"]
    assert [o.event.workspace for o in store.owed(CLIENT, after=ids[1], limit=2)] == ["w2", "w3"]
    assert store.owed(CLIENT, after=ids[-1]) == []


def test_undelivered_of_lists_the_completions_of_those_workspaces_for_any_client(store: Store) -> None:
    complete(store, "w1")
    complete(store, "w2", client="key:other", origin="peer-z/3", now=T0 + 10)
    complete(store, "w3", now=T0 + 20)
    found = store.undelivered_of(["w1", "w2", "unknown"])
    assert [(o.event.workspace, o.client) for o in found] == [("w1", CLIENT), ("w2", "key:other")]
    w1 = found[0].event.id
    assert store.claim_delivery("w1", w1, client=CLIENT, to="peer-a/2", now=T0 + 30)
    assert [o.event.workspace for o in store.undelivered_of(["w1", "w2"])] == ["w2"]
    assert store.undelivered_of([]) == []


def test_two_peers_racing_for_one_completion_deliver_it_once(backend: Backend) -> None:
    one, two = backend.open(), backend.open()
    for n in range(20):
        complete(one, f"w{n}", now=T0 + 10 * n)
    owed = one.owed(CLIENT)
    assert len(owed) == 20

    def take(args: tuple[Store, str]) -> list[str]:
        store, to = args
        return [
            o.event.workspace or ""
            for o in owed
            if store.claim_delivery(o.event.workspace or "", o.event.id, client=CLIENT, to=to, now=T0)
        ]

    with ThreadPoolExecutor(4) as pool:
        won = list(
            pool.map(take, [(one, "peer-a/1"), (two, "peer-b/1"), (one, "peer-a/2"), (two, "peer-b/2")])
        )
    taken = [ws for part in won for ws in part]
    assert sorted(taken) == sorted(f"w{n}" for n in range(20))  # each exactly once
    assert two.owed(CLIENT) == []


def test_only_the_end_of_a_workspace_is_owed_once_retries_and_dead_letter_twins_are_not(store: Store) -> None:
    store.enqueue(
        replace(new_ws("w1", origin="peer-a/1", max_attempts=2), client=CLIENT),
        now=T0,
        max_wait_s=None,
        limits=Limits(),
    )
    for n, outcome in enumerate([Outcome.LOST, Outcome.FAILED]):  # lost, retried; failed for good
        got = must_claim(store, T0 + 100 * n)
        start(store, got.run_id, T0 + 100 * n)
        finish(store, got.run_id, T0 + 100 * n + 1, outcome, exit_code=1)
    assert [o.event.type for o in store.owed(CLIENT)] == ["TaskDeadLettered"]
