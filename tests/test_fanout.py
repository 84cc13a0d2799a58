"""Fan-out end to end, on both stores: one dispatch of many items becomes a group of workspaces
run by real fake agents, never more of them queued or running than the group's cap, all or
none queued; wait, status and kill take the group's id; and the CLI's fan-out options."""

import json
from pathlib import Path
from typing import Any

import anyio
import pytest

import dispatch_runner.cli as cli
from dispatch_runner.actions import DispatchRequest, KillRequest, StatusRequest, WaitRequest
from dispatch_runner.errors import InvalidArgument, TaskTooLarge
from dispatch_runner.store import Store
from tests.conftest import Home
from tests.fakes.overlap import events as agent_events
from tests.fakes.overlap import max_overlap
from tests.test_runner import serving

pytestmark = pytest.mark.anyio
ROOMY = "concurrency:\n  agent: 10\n"  # the pool has room: the group's cap is what binds


def released(store: Store, group: str) -> int:
    """Members queued (not held) or running: what the cap bounds."""
    return sum(
        1 for m in store.group_members(group) if m.state == "running" or (m.state == "queued" and not m.held)
    )


def most_running(store: Store, cursor: int, ids: set[str]) -> int:
    """The most of `ids` running at once, replayed from the store's events in commit order."""
    best = running = 0
    for e in store.events_after(cursor, 10_000):
        if e.workspace in ids and e.type == "AgentStarted":
            running += 1
            best = max(best, running)
        elif e.workspace in ids and e.type in ("AgentCompleted", "AgentFailed", "AgentKilled", "AgentLost"):
            running -= 1
    return best


async def test_a_fan_out_of_20_with_a_cap_of_3_never_runs_more_than_3_and_all_complete(
    home: Home, backend: str
) -> None:
    async with serving(home, ROOMY) as runner:
        store, cursor = runner.store, runner.store.last_event_id()
        items = [f"file-{i:02}.py" for i in range(20)]
        req = DispatchRequest(
            task="review {item} @sleep=0.2", items=items, group_concurrency=3, agent="agent"
        )
        out = await runner.dispatch(req)
        group, ids = out["group"], [w["workspace"] for w in out["workspaces"]]
        assert (out["size"], out["group_concurrency"], len(ids)) == (20, 3, 20)
        assert [w["held"] for w in out["workspaces"]] == [None] * 3 + ["group"] * 17
        samples: list[int] = []

        def sampled_until_done() -> bool:
            samples.append(released(store, group))
            return all(m.state == "completed" for m in store.group_members(group))

        deadline = anyio.current_time() + 60
        while not sampled_until_done():
            assert anyio.current_time() < deadline, f"group not done: {store.group_members(group)}"
            await anyio.sleep(0.01)  # a poll of the store between samples, with a deadline
        waited = await runner.wait(WaitRequest(workspaces=[group], timeout_s=5))
        status = await runner.status(StatusRequest(workspace=group))
        most = most_running(store, cursor, set(ids))
    assert max(samples) == 3  # reached, never passed
    assert most <= 3
    assert max_overlap(home.agent_log) <= 3
    assert waited["done"] and [w["workspace"] for w in waited["workspaces"]] == ids
    assert waited["groups"] == [
        {
            "group": group,
            "state": "completed",
            "size": 20,
            "counts": {"completed": 20},
            "ended_at": status["ended_at"],
        }
    ]
    assert status["state"] == "completed" and status["counts"] == {"completed": 20}
    assert [m["label"] for m in status["members"]] == items  # each item labels its workspace
    prompts = {e["ws"]: e["prompt"] for e in agent_events(home.agent_log) if e["event"] == "parsed"}
    assert prompts[ids[7]].startswith("review file-07.py")


async def test_tasks_fan_out_one_workspace_per_task_and_the_group_is_waited_for(home: Home) -> None:
    async with serving(home) as runner:
        out = await runner.dispatch(
            DispatchRequest(tasks=["first", "second @exit=3"], agent="agent", max_attempts=1)
        )
        waited = await runner.wait(WaitRequest(workspaces=[out["group"]], timeout_s=30))
        status = await runner.status(StatusRequest(workspace=out["group"]))
    assert [w["state"] for w in waited["workspaces"]] == ["completed", "failed"]
    assert waited["groups"][0]["state"] == "failed"
    assert status["state"] == "failed" and status["counts"] == {"completed": 1, "failed": 1}
    assert status["members"][1]["exit_code"] == 3


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        (
            {"task": "x {item}", "items": [f"i{n}" for n in range(101)]},
            "items has 101 entries; a fan-out has 1",
        ),
        ({"task": "x", "items": ["a"]}, "with items, task must contain {item}"),
        ({"task": "x", "tasks": ["a"]}, "with tasks, leave task out"),
        ({"tasks": ["a", " "]}, "tasks[1] is empty"),
        ({"tasks": ["a"], "items": ["b"]}, "give tasks (a list of tasks) or task with items"),
        ({"task": "x", "group_concurrency": 2}, "group_concurrency caps a fan-out"),
        ({"tasks": ["a"], "group_concurrency": 0}, "group_concurrency must be an integer at least 1"),
    ],
)
async def test_a_malformed_fan_out_is_refused_with_what_to_send(
    home: Home, fields: dict[str, Any], error: str
) -> None:
    async with serving(home) as runner:
        with pytest.raises(InvalidArgument) as refused:
            await runner.dispatch(DispatchRequest(agent="agent", **fields))
        assert error in str(refused.value)
        assert runner.store.has_work() is False


async def test_one_item_that_cannot_be_dispatched_queues_none(home: Home) -> None:
    async with serving(home) as runner:
        with pytest.raises(TaskTooLarge):  # past dispatch.max_task_bytes (1 MiB) once expanded
            await runner.dispatch(
                DispatchRequest(task="do {item}", items=["a", "b" * 1_100_000, "c"], agent="agent")
            )
        overall = await runner.status(StatusRequest())
    assert overall["counts"] == {} or sum(overall["counts"].values()) == 0
    root = Path(home.path / "workspaces")
    assert not root.exists() or list(root.iterdir()) == []  # no directory left behind


async def test_killing_a_group_cancels_its_waiting_members_and_ends_the_group(home: Home) -> None:
    async with serving(home, ROOMY) as runner:
        out = await runner.dispatch(
            DispatchRequest(
                task="slow {item} @sleep=30", items=["a", "b", "c"], group_concurrency=1, agent="agent"
            )
        )
        group, ids = out["group"], [w["workspace"] for w in out["workspaces"]]
        killed = await runner.kill(KillRequest(workspace=group))
        waited = await runner.wait(WaitRequest(workspaces=[group], timeout_s=20))
    assert killed["killed"] == ids[:1] and sorted(killed["cancelled"]) == sorted(ids[1:])
    assert [w["state"] for w in waited["workspaces"]] == ["killed", "cancelled", "cancelled"]
    assert waited["groups"][0]["state"] == "failed"


async def test_an_unknown_group_is_a_sentence(home: Home) -> None:
    async with serving(home) as runner:
        for call in (
            runner.status(StatusRequest(workspace="grp-0101-000000-deadbeef")),
            runner.wait(WaitRequest(workspaces=["grp-0101-000000-deadbeef"], timeout_s=1)),
        ):
            with pytest.raises(InvalidArgument, match="no group 'grp-0101-000000-deadbeef'; run status"):
                await call


def test_the_cli_fans_out_and_waits_for_the_group_by_its_id(
    home: Home, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    items = tmp_path / "items.txt"
    items.write_text("beta\n\ngamma\n")
    argv = ["dispatch", "--agent", "agent", "--item", "alpha", "--items-file", str(items)]
    assert cli.main([*argv, "--group-concurrency", "2", "--json", "say {item}"]) == 0
    out = json.loads(capsys.readouterr().out)
    group = out["group"]
    assert out["size"] == 3 and out["group_concurrency"] == 2
    assert cli.main(["wait", group, "--timeout", "30", "--json"]) == 0
    waited = json.loads(capsys.readouterr().out)
    assert waited["done"] and [w["state"] for w in waited["workspaces"]] == ["completed"] * 3
    assert cli.main(["status", group]) == 0
    table = capsys.readouterr().out
    assert group in table and "3 members (3 completed)" in table and "gamma" in table
    assert cli.main(["status", group, "--json"]) == 0
    assert [m["label"] for m in json.loads(capsys.readouterr().out)["members"]] == ["alpha", "beta", "gamma"]


def test_the_cli_fans_out_tasks_and_dispatch_wait_exits_with_the_groups_outcome(
    home: Home, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps(["line one\nline two", "fails @exit=2"]))
    argv = [
        "dispatch",
        "--agent",
        "agent",
        "--max-attempts",
        "1",
        "--each",
        "plain",
        "--tasks-file",
        str(tasks),
    ]
    assert cli.main([*argv, "--wait"]) == 1  # one of them failed
    shown = capsys.readouterr().out
    assert "fan-out of 3" in shown and "3 members (2 completed, 1 failed)" in shown
    assert cli.main(["dispatch", "--agent", "agent", "--each", "x", "--group-concurrency", "0"]) == 2
    assert "group_concurrency must be an integer at least 1" in capsys.readouterr().err


async def test_status_of_a_member_names_its_group_and_why_it_waits(home: Home) -> None:
    async with serving(home, ROOMY) as runner:
        out = await runner.dispatch(
            DispatchRequest(tasks=["a @sleep=30", "b"], group_concurrency=1, agent="agent")
        )
        first, second = [
            await runner.status(StatusRequest(workspace=w["workspace"])) for w in out["workspaces"]
        ]
        await runner.kill(KillRequest(workspace=out["group"]))
    assert first["group"] == second["group"] == out["group"]
    assert (first["state"], first["held"]) == ("running", None)
    assert (second["state"], second["held"], second["after"]) == ("queued", "group", [])
