"""Later, dependent and fan-out work in the store, on every backend, with times chosen by the
test: not_before holds a workspace from the claim until its time; `after` holds it until its
needs end (released when they completed, cancelled with the reason when one did not, unless
after_mode always, cascading down a chain); a group releases at most its cap at once, the
next member (lowest seq) as each one ends, and completes once, owed to its client once."""

from dataclasses import replace
from typing import Any

import pytest

from dispatch_runner.errors import InvalidArgument
from dispatch_runner.model import Outcome
from dispatch_runner.policy import HELD_UNTIL
from dispatch_runner.store import Limits, NewWorkspace, Store
from dispatch_runner.store.grouping import NewGroup
from tests.store.test_contract import T0, claim, events_since, finish, must_claim, new_ws, start, types, ws

CLIENT = "client-a"


def put(store: Store, wid: str, *, now: float = T0, **fields: Any) -> None:
    """Queue `wid` with these NewWorkspace fields (held as the runner holds it: while it has
    needs, or waits its group's turn)."""
    held = "after" if fields.get("after") else fields.pop("held", None)
    new = replace(new_ws(wid, max_attempts=1), held=held, **fields)
    store.enqueue(new, now=now, max_wait_s=None, limits=Limits())


def run(store: Store, wid: str, now: float, outcome: Outcome = Outcome.SUCCEEDED) -> None:
    """Claim `wid` (the only claimable workspace) and run it to its end at `now`."""
    got = must_claim(store, now)
    assert got.workspace.id == wid
    start(store, got.run_id, now)
    finish(store, got.run_id, now, outcome, exit_code=0 if outcome is Outcome.SUCCEEDED else 1)


def test_not_before_keeps_a_workspace_from_the_claim_until_its_time(store: Store) -> None:
    put(store, "later", not_before=T0 + 60)
    got = store.claim_next(now=T0 + 59, limits=Limits(), peer="peer-a")
    assert got.claim is None and got.wake_at == T0 + 60  # a peer wakes for it
    assert must_claim(store, T0 + 60).workspace.id == "later"


def test_after_holds_a_workspace_until_its_need_completed(store: Store) -> None:
    put(store, "need")
    put(store, "then", after=("need",))
    row = ws(store, "then")
    assert (row.held, row.not_before, row.after_mode) == ("after", HELD_UNTIL, None)
    assert store.waiting_for("then") == ["need"]
    got = must_claim(store, T0)
    assert got.workspace.id == "need"
    assert claim(store, T0 + 1) is None  # the held one is not claimable, and wakes nobody
    assert store.claim_next(now=T0 + 1, limits=Limits(), peer="p").wake_at is None
    start(store, got.run_id, T0)
    finish(store, got.run_id, T0 + 5)
    row = ws(store, "then")
    assert (row.state, row.held, row.not_before) == ("queued", None, 0.0)
    assert store.waiting_for("then") == []
    assert must_claim(store, T0 + 6).workspace.id == "then"


def test_a_need_that_failed_cancels_its_dependents_down_the_chain(store: Store) -> None:
    put(store, "a")
    put(store, "b", after=("a",), after_mode="success")
    put(store, "c", after=("b",))
    cursor = store.last_event_id()
    run(store, "a", T0 + 1, Outcome.FAILED)
    b, c = ws(store, "b"), ws(store, "c")
    assert (b.state, b.reason, b.ended_reason) == ("cancelled", "after: a failed", "after")
    assert (c.state, c.reason) == ("cancelled", "after: b cancelled")
    cancels = [e for e in events_since(store, cursor) if e.type == "AgentCancelled"]
    assert [(e.workspace, e.data["after"]) for e in cancels] == [("b", "a"), ("c", "b")]
    assert claim(store, T0 + 2) is None


def test_after_mode_always_runs_once_its_need_ended_however(store: Store) -> None:
    put(store, "a")
    put(store, "b", after=("a",), after_mode="always")
    run(store, "a", T0 + 1, Outcome.FAILED)
    assert ws(store, "b").held is None
    assert must_claim(store, T0 + 2).workspace.id == "b"


def test_a_dependent_waits_for_every_need(store: Store) -> None:
    put(store, "a")
    put(store, "b")
    put(store, "c", after=("a", "b"))
    run(store, "a", T0 + 1)
    assert store.waiting_for("c") == ["b"] and ws(store, "c").held == "after"
    run(store, "b", T0 + 2)
    assert must_claim(store, T0 + 3).workspace.id == "c"


def test_needs_that_have_ended_are_settled_when_it_is_queued(store: Store) -> None:
    put(store, "done")
    run(store, "done", T0 + 1)
    put(store, "fail")
    run(store, "fail", T0 + 2, Outcome.FAILED)
    put(store, "ok", now=T0 + 3, after=("done",))
    put(store, "doomed", now=T0 + 3, after=("done", "fail"))
    put(store, "anyway", now=T0 + 3, after=("fail",), after_mode="always")
    assert ws(store, "doomed").state == "cancelled" and ws(store, "doomed").reason == "after: fail failed"
    assert set(_claim_all(store, T0 + 4)) == {"ok", "anyway"}


def test_an_unknown_need_is_refused_and_nothing_is_queued(store: Store) -> None:
    put(store, "real")
    with pytest.raises(InvalidArgument, match="after names workspace 'ghost', which does not exist"):
        put(store, "x", after=("real", "ghost"))
    assert store.get_workspace("x") is None and store.waiting_for("x") == []


def test_a_released_workspace_keeps_its_own_not_before(store: Store) -> None:
    put(store, "a")
    put(store, "b", after=("a",), not_before=T0 + 100)
    run(store, "a", T0 + 10)
    row = ws(store, "b")
    assert row.held is None and row.not_before == T0 + 100
    got = store.claim_next(now=T0 + 11, limits=Limits(), peer="peer-a")
    assert got.claim is None and got.wake_at == T0 + 100


def test_kill_of_a_need_cancels_its_dependent(store: Store) -> None:
    put(store, "a")
    put(store, "b", after=("a",))
    plan = store.plan_kill(workspaces=["a", "b"], now=T0 + 1)  # b goes with a: listed or not
    assert [w.id for w in plan.cancelled] == ["a"]
    assert ws(store, "b").reason == "after: a cancelled"


# ---- fan-out groups ----------------------------------------------------------------------------


def members(n: int, cap: int | None, **fields: Any) -> list[NewWorkspace]:
    """A group's members as the runner makes them: past the cap, each waits its turn."""
    return [
        replace(
            new_ws(f"m{i}", max_attempts=1, origin="peer-a/1"),
            group="g1",
            held="group" if cap is not None and i >= cap else None,
            client=CLIENT,
            **fields,
        )
        for i in range(n)
    ]


def group(store: Store, n: int, cap: int | None, *, key: str | None = None) -> None:
    new = members(n, cap)
    if key:
        new = [replace(m, idempotency_key=f"{key}#{i + 1}") for i, m in enumerate(new)]
    done = store.enqueue_group(
        NewGroup(id="g1", concurrency=cap, client=CLIENT, origin="peer-a/1"),
        new,
        now=T0,
        max_wait_s=None,
        limits=Limits(),
    )
    assert [m.workspace.id for m in done.members] == [m.id for m in new]


def released(store: Store) -> list[str]:
    """Members queued or running and not held: what the cap counts."""
    return [m.id for m in store.group_members("g1") if m.state in ("queued", "running") and not m.held]


def test_a_group_releases_at_most_its_cap_and_the_next_member_as_each_ends(store: Store) -> None:
    group(store, 5, 2)
    assert released(store) == ["m0", "m1"]
    first = must_claim(store, T0)
    second = must_claim(store, T0)
    assert claim(store, T0) is None
    start(store, first.run_id, T0)
    finish(store, first.run_id, T0 + 1)
    assert released(store) == ["m1", "m2"]  # the lowest seq waiting goes next
    assert must_claim(store, T0 + 1).workspace.id == "m2" and claim(store, T0 + 1) is None
    store.plan_kill(workspaces=["m3"], now=T0 + 2)  # a cancelled member frees no slot: m3 was held
    start(store, second.run_id, T0)
    finish(store, second.run_id, T0 + 3, Outcome.FAILED, exit_code=1)
    assert released(store) == ["m2", "m4"]


def test_a_group_completes_once_with_every_outcome_owed_once_to_its_client(store: Store) -> None:
    group(store, 3, None)
    cursor = store.last_event_id()
    for i, outcome in enumerate([Outcome.SUCCEEDED, Outcome.FAILED, Outcome.SUCCEEDED]):
        got = must_claim(store, T0 + i)
        start(store, got.run_id, T0 + i)
        finish(store, got.run_id, T0 + i + 1, outcome, exit_code=0 if outcome is Outcome.SUCCEEDED else 1)
    fresh = events_since(store, cursor)
    assert types(fresh).count("GroupCompleted") == 1 and types(fresh)[-1] == "GroupCompleted"
    [done] = [e for e in fresh if e.type == "GroupCompleted"]
    assert done.workspace == "g1" and done.origin == "peer-a/1"
    assert done.data["state"] == "failed" and done.data["counts"] == {"completed": 2, "failed": 1}
    assert [(m["workspace"], m["state"]) for m in done.data["members"]] == [
        ("m0", "completed"),
        ("m1", "failed"),
        ("m2", "completed"),
    ]
    assert all(e.data.get("group") == "g1" for e in fresh if e.type in ("AgentCompleted", "AgentFailed"))
    [owed] = store.owed(CLIENT)  # the group's, not one per member
    assert (owed.event.type, owed.event.workspace) == ("GroupCompleted", "g1")
    group_row = store.get_group("g1")
    assert group_row is not None and group_row.ended_at == T0 + 3 and group_row.size == 3


def test_a_group_with_a_known_idempotency_key_is_the_same_group(store: Store) -> None:
    group(store, 2, None, key="k")
    again = store.enqueue_group(
        NewGroup(id="g2", concurrency=None, client=None, origin=None),
        [
            replace(m, id=f"x{i}", idempotency_key=f"k#{i + 1}", group="g2")
            for i, m in enumerate(members(2, None))
        ],
        now=T0,
        max_wait_s=None,
        limits=Limits(),
    )
    assert again.deduplicated and again.group.id == "g1"
    assert [m.workspace.id for m in again.members] == ["m0", "m1"]
    assert store.get_group("g2") is None


def test_a_group_waits_for_its_needs_then_releases_within_its_cap(store: Store) -> None:
    put(store, "need")
    new = [replace(m, after=("need",), held="after", after_mode="success") for m in members(3, 1)]
    store.enqueue_group(
        NewGroup(id="g1", concurrency=1, client=None, origin=None),
        new,
        now=T0,
        max_wait_s=None,
        limits=Limits(),
    )
    assert released(store) == []
    run(store, "need", T0 + 1)
    assert released(store) == ["m0"]
    assert [m.held for m in store.group_members("g1")] == [None, "group", "group"]


def _claim_all(store: Store, now: float) -> list[str]:
    ids = []
    while (got := claim(store, now)) is not None:
        ids.append(got.workspace.id)
    return ids


def test_a_group_is_forgotten_with_its_last_member(store: Store) -> None:
    group(store, 2, None)
    for i in range(2):
        got = must_claim(store, T0 + i)
        start(store, got.run_id, T0 + i)
        finish(store, got.run_id, T0 + i + 1)
    store.forget(["m0"], events_before=T0)
    assert store.get_group("g1") is not None  # a member is left
    store.forget(["m1"], events_before=T0)
    assert store.get_group("g1") is None and store.owed(CLIENT) == []
