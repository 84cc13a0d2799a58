"""Report-back on every backend: usage and spend recorded with the exit, allowances closing a
lane inside the claim (and refusing a dispatch past max_wait_s), final failures, follow-up
messages that resume an ended session, and the tree of sub-agents."""

from dataclasses import replace
from typing import Any

import pytest

from dispatch_runner.allowance import Allowance
from dispatch_runner.errors import InvalidArgument, LimitRefused
from dispatch_runner.model import Outcome
from dispatch_runner.policy import PoolLimit
from dispatch_runner.store import Limits, Store, Usage
from tests.store.test_contract import (
    NEXT_RESET,
    NO_LIMITS,
    T0,
    claim,
    enqueue,
    events_since,
    finish,
    must_claim,
    new_ws,
    start,
    types,
    ws,
)

RESUMABLE = {"argv": ["agent"], "resume_argv": ["agent", "--resume", [{"ref": "session_id"}]]}


def budget(**allowance: Allowance) -> Limits:
    return Limits(concurrency={"claude": PoolLimit(total=5)}, allowance=allowance)


def run_once(store: Store, wid: str, *, now: float = T0, limits: Limits = NO_LIMITS, **exit: Any) -> None:
    got = must_claim(store, now, limits)
    assert got.workspace.id == wid
    start(store, got.run_id, now)
    finish(store, got.run_id, now + 1, **exit)


def test_an_exit_records_usage_on_the_workspace_summed_over_runs_and_counts_spend(store: Store) -> None:
    enqueue(store, "w1", max_attempts=3)
    used = Usage(turns=3, input_tokens=1000, output_tokens=200, cost_usd=0.25)
    run_once(store, "w1", outcome=Outcome.FAILED, exit_code=1, usage=used)
    run_once(store, "w1", now=T0 + 10, usage=used, session_id="sess-1")
    row = ws(store, "w1")
    assert row.state == "completed" and row.session_id == "sess-1"
    assert row.usage == Usage(turns=6, input_tokens=2000, output_tokens=400, cost_usd=0.5)
    snap = store.snapshot(now=T0 + 20, limits=Limits())
    assert snap["pools"]["claude"]["usage_today"] == {"runs": 2, "tokens": 2400, "usd": 0.5}


def test_a_diff_and_commits_are_kept_with_the_workspace(store: Store) -> None:
    enqueue(store, "w1")
    diff = {"files": 2, "insertions": 10, "deletions": 1, "names": ["a.py", "b.py"]}
    commits = [{"sha": "abc123", "subject": "fix it"}]
    run_once(store, "w1", diff=diff, commits=commits)
    row = ws(store, "w1")
    assert row.diff == diff and list(row.commits or ()) == commits


def test_a_run_allowance_closes_the_lane_until_the_reset_and_says_so_once(store: Store) -> None:
    limits = budget(claude=Allowance(runs=2))
    for i in range(4):
        enqueue(store, f"w{i}", now=T0 + i)
    cursor = store.last_event_id()
    run_once(store, "w0", limits=limits)
    run_once(store, "w1", limits=limits)
    result = store.claim_next(now=T0 + 5, limits=limits, peer="peer-a")
    assert result.claim is None and result.wake_at == NEXT_RESET
    assert store.claim_next(now=T0 + 6, limits=limits, peer="peer-a").claim is None
    assert types(events_since(store, cursor)).count("AllowanceExhausted") == 1
    snap = store.snapshot(now=T0 + 7, limits=limits)
    assert snap["pools"]["claude"]["allowance"] == {"runs": {"used": 2, "limit": 2}, "exhausted": "runs"}
    assert claim(store, NEXT_RESET + 1, limits) is not None  # a new day, a new allowance


def test_a_dollar_allowance_counts_what_runs_reported_and_an_agent_allowance_its_model_only(
    store: Store,
) -> None:
    limits = budget(**{"claude:opus": Allowance(usd=1.0)})
    enqueue(store, "o1", "claude:opus")
    enqueue(store, "o2", "claude:opus", now=T0 + 1)
    enqueue(store, "s1", "claude:sonnet", now=T0 + 2)
    run_once(store, "o1", limits=limits, usage=Usage(cost_usd=1.5))
    got = must_claim(store, T0 + 5, limits)
    assert got.workspace.id == "s1"  # opus has spent its dollars today; sonnet has no allowance
    snap = store.snapshot(now=T0 + 6, limits=limits)
    assert snap["allowance"]["claude:opus"]["usd"] == {"used": 1.5, "limit": 1.0}


def test_a_dispatch_that_would_wait_for_the_reset_past_max_wait_is_refused(store: Store) -> None:
    limits = budget(claude=Allowance(runs=1))
    enqueue(store, "w0")
    run_once(store, "w0", limits=limits)
    with pytest.raises(LimitRefused, match="daily allowance of runs") as info:
        enqueue(store, "w1", now=T0 + 5, limits=limits, max_wait_s=60)
    assert info.value.limit == "allowance" and store.get_workspace("w1") is None
    queued = enqueue(store, "w2", now=T0 + 5, limits=limits)  # without max_wait_s it waits
    assert queued.eta_s is not None and queued.eta_s >= NEXT_RESET - T0 - 5


def test_a_final_failure_is_not_retried(store: Store) -> None:
    enqueue(store, "w1", max_attempts=3)
    run_once(store, "w1", outcome=Outcome.FAILED, exit_code=1, final=True, ended_reason="budget")
    row = ws(store, "w1")
    assert (row.state, row.ended_reason, row.attempts, row.runs) == ("failed", "budget", 1, 1)


def test_a_message_to_an_ended_workspace_queues_a_resume_run(store: Store) -> None:
    store.enqueue(replace(new_ws("w1"), spec=RESUMABLE), now=T0, max_wait_s=None, limits=Limits())
    run_once(store, "w1", session_id="sess-9")
    cursor = store.last_event_id()
    row, how, message = store.send_message("w1", "now add tests", now=T0 + 10)
    assert how == "resumed" and row.state == "queued" and row.next_input == "now add tests"
    assert store.message_state(message) == "run"
    assert "AgentQueued" in types(events_since(store, cursor))
    got = must_claim(store, T0 + 11)
    assert got.workspace.next_input == "now add tests" and got.workspace.session_id == "sess-9"
    start(store, got.run_id, T0 + 11)
    finish(store, got.run_id, T0 + 12)
    assert ws(store, "w1").next_input is None and ws(store, "w1").state == "completed"


def test_messages_sent_while_it_runs_become_one_resume_run_at_its_end(store: Store) -> None:
    store.enqueue(replace(new_ws("w1"), spec=RESUMABLE), now=T0, max_wait_s=None, limits=Limits())
    got = must_claim(store)
    start(store, got.run_id)
    assert store.send_message("w1", "first", now=T0 + 1)[1] == "pending"
    assert store.send_message("w1", "second", now=T0 + 2)[1] == "pending"
    finish(store, got.run_id, T0 + 3, session_id="sess-2")
    row = ws(store, "w1")
    assert row.state == "queued" and row.next_input == "first\n\nsecond"


def test_a_killed_run_takes_no_follow_up_and_a_workspace_without_a_session_refuses_one(
    store: Store,
) -> None:
    store.enqueue(replace(new_ws("w1"), spec=RESUMABLE), now=T0, max_wait_s=None, limits=Limits())
    run_once(store, "w1", outcome=Outcome.FAILED, exit_code=1, final=True)  # no session reported
    with pytest.raises(InvalidArgument, match="no agent session to resume"):
        store.send_message("w1", "again", now=T0 + 5)
    enqueue(store, "w2", now=T0 + 6)  # an agent without resume_command
    run_once(store, "w2", now=T0 + 6, session_id="s")
    with pytest.raises(InvalidArgument, match="cannot take a follow-up"):
        store.send_message("w2", "again", now=T0 + 9)


def test_the_tree_of_sub_agents(store: Store) -> None:
    enqueue(store, "top")
    for child, parent, depth in (("c1", "top", 2), ("c2", "top", 2), ("g1", "c1", 3)):
        new = replace(new_ws(child), parent=parent, depth=depth, root="top")
        store.enqueue(new, now=T0 + depth, max_wait_s=None, limits=Limits())
    assert [c["workspace"] for c in store.children("top")] == ["c1", "c2"]
    assert store.descendants("top") == 3
    assert sorted(store.subtree(["c1"])) == ["g1"]
    assert sorted(store.subtree(["top"])) == ["c1", "c2", "g1"]
    assert ws(store, "g1").depth == 3 and ws(store, "g1").root == "top"
