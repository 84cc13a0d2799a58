"""Later and dependent work end to end, on both stores, with real fake agents: not_before keeps a
run from starting before its time; `after` starts a run only once its needs completed, and
cancels it with the reason when one did not, unless after_mode always; both show in the
dispatch result and in status; and the CLI's --not-before, --after and --after-mode."""

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import dispatch_runner.cli as cli
from dispatch_runner.actions import DispatchRequest, StatusRequest
from dispatch_runner.errors import InvalidArgument
from dispatch_runner.policy import iso
from tests.conftest import Home
from tests.fakes.overlap import events as agent_events
from tests.test_runner import serving, wait_all

pytestmark = pytest.mark.anyio


def started_at(home: Home, ws: str) -> float:
    [t] = [e["t"] for e in agent_events(home.agent_log) if e["event"] == "start" and e["ws"] == ws]
    return float(t)


def ended_at(home: Home, ws: str) -> float:
    return max(float(e["t"]) for e in agent_events(home.agent_log) if e["event"] == "end" and e["ws"] == ws)


async def test_not_before_holds_a_run_until_its_time(home: Home, backend: str) -> None:
    async with serving(home) as runner:
        asked = time.time()
        out = await runner.dispatch(DispatchRequest(task="later", agent="agent", not_before=1.5))
        status = await runner.status(StatusRequest(workspace=out["workspace"]))
        await wait_all(runner, [out["workspace"]])
    at = datetime.fromisoformat(out["not_before"].replace("Z", "+00:00")).timestamp()
    assert out["status"] == "queued" and asked + 1.4 <= at <= time.time()
    assert status["state"] == "queued" and status["not_before"] == out["not_before"]
    assert started_at(home, out["workspace"]) >= at  # not a moment before its time


async def test_not_before_as_an_iso_time_and_its_bounds(home: Home) -> None:
    async with serving(home) as runner:
        soon = datetime.now(UTC) + timedelta(seconds=1)
        out = await runner.dispatch(
            DispatchRequest(task="at a time", agent="agent", not_before=soon.isoformat())
        )
        past = await runner.dispatch(
            DispatchRequest(task="now", agent="agent", not_before="2020-01-01T00:00:00Z")
        )
        refusals = []
        for bad in ("2030-01-01T00:00:00", "next tuesday", 8 * 86400.0, -1.0):
            with pytest.raises(InvalidArgument) as refused:
                await runner.dispatch(DispatchRequest(task="x", agent="agent", not_before=bad))
            refusals.append(str(refused.value))
        await wait_all(runner, [out["workspace"], past["workspace"]])
    assert out["not_before"] == iso(soon.timestamp())
    assert started_at(home, out["workspace"]) >= soon.timestamp()
    assert past["not_before"] is None  # a past time means now
    assert "has no UTC offset; add Z" in refusals[0]
    assert "is not an ISO-8601 time" in refusals[1]
    assert "at most 604800 s" in refusals[2] and "at least 0 s" in refusals[3]


async def test_after_runs_only_once_its_need_completed(home: Home, backend: str) -> None:
    async with serving(home, "concurrency:\n  agent: 5\n") as runner:
        need = await runner.dispatch(DispatchRequest(task="first @sleep=0.5", agent="agent"))
        then = await runner.dispatch(DispatchRequest(task="second", agent="agent", after=[need["workspace"]]))
        waiting = await runner.status(StatusRequest(workspace=then["workspace"]))
        rows = await wait_all(runner, [need["workspace"], then["workspace"]])
        done = await runner.status(StatusRequest(workspace=then["workspace"]))
    assert (then["status"], then["held"], then["after"]) == ("queued", "after", [need["workspace"]])
    assert (waiting["held"], waiting["after"], waiting["after_mode"]) == (
        "after",
        [need["workspace"]],
        "success",
    )
    assert [r["state"] for r in rows] == ["completed", "completed"]
    assert started_at(home, then["workspace"]) >= ended_at(home, need["workspace"])
    assert (done["held"], done["after"]) == (None, [])


async def test_after_a_failed_need_is_cancelled_with_the_reason_unless_after_mode_always(
    home: Home, backend: str
) -> None:
    async with serving(home) as runner:
        need = await runner.dispatch(DispatchRequest(task="breaks @exit=3", agent="agent", max_attempts=1))
        after = [need["workspace"]]
        cancelled = await runner.dispatch(DispatchRequest(task="needs it", agent="agent", after=after))
        chained = await runner.dispatch(
            DispatchRequest(task="needs that", agent="agent", after=[cancelled["workspace"]])
        )
        anyway = await runner.dispatch(
            DispatchRequest(task="anyway", agent="agent", after=after, after_mode="always")
        )
        rows = await wait_all(
            runner, [need["workspace"], cancelled["workspace"], chained["workspace"], anyway["workspace"]]
        )
        why = await runner.status(StatusRequest(workspace=cancelled["workspace"]))
        late = await runner.dispatch(DispatchRequest(task="too late", agent="agent", after=after))
    assert [r["state"] for r in rows] == ["failed", "cancelled", "cancelled", "completed"]
    assert why["reason"] == f"after: {need['workspace']} failed" and why["ended_reason"] == "after"
    # a need that has already failed cancels the dispatch at once, saying why
    assert late["status"] == "cancelled" and late["reason"] == f"after: {need['workspace']} failed"


async def test_after_names_only_existing_workspaces_or_groups(home: Home) -> None:
    async with serving(home) as runner:
        cases: list[tuple[Any, str]] = [  # Any: a client may send a string where a list belongs
            (
                ["ws-0101-000000-abcdef"],
                "after names workspace 'ws-0101-000000-abcdef', which does not exist",
            ),
            (["grp-0101-000000-abcdef01"], "no group 'grp-0101-000000-abcdef01'"),
            ("ws-1", "after must be a list of workspace ids"),
        ]
        for after, error in cases:
            with pytest.raises(InvalidArgument, match=error):
                await runner.dispatch(DispatchRequest(task="x", agent="agent", after=after))
        assert runner.store.has_work() is False


async def test_after_a_group_waits_for_every_member(home: Home) -> None:
    async with serving(home, "concurrency:\n  agent: 5\n") as runner:
        fan = await runner.dispatch(
            DispatchRequest(tasks=["one @sleep=0.6", "two @sleep=0.9"], agent="agent")
        )
        then = await runner.dispatch(DispatchRequest(task="after both", agent="agent", after=[fan["group"]]))
        await wait_all(runner, [then["workspace"]])
    members = [w["workspace"] for w in fan["workspaces"]]
    assert then["after"] == sorted(members)
    assert started_at(home, then["workspace"]) >= max(ended_at(home, m) for m in members)


def test_the_cli_dispatches_after_and_not_before(home: Home, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["dispatch", "--agent", "agent", "--json", "first @sleep=0.3"]) == 0
    need = json.loads(capsys.readouterr().out)["workspace"]
    argv = ["dispatch", "--agent", "agent", "--after", need, "--after-mode", "always", "--not-before", "1"]
    assert cli.main([*argv, "--json", "second"]) == 0
    then = json.loads(capsys.readouterr().out)
    assert (then["held"], then["after"], then["after_mode"]) == ("after", [need], "always")
    assert then["not_before"] is not None
    assert cli.main(["status", then["workspace"]]) == 0
    shown = capsys.readouterr().out
    assert "held" in shown and need in shown
    assert cli.main(["wait", then["workspace"], "--timeout", "30"]) == 0
    assert started_at(home, then["workspace"]) >= ended_at(home, need)
    assert cli.main(["dispatch", "--agent", "agent", "--not-before", "tomorrow", "x"]) == 2
    assert "not_before 'tomorrow' is not an ISO-8601 time" in capsys.readouterr().err
