"""Cron schedules: the next fire time (timezones, DST, missed ticks) as pure functions; create,
list and delete through the runner, the MCP tool over stdio and the CLI; ticks fired through the
gate with a chosen clock, once per tick across peers, put back when the submit fails. Both store
backends (the `backend` fixture)."""

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import dispatch_runner.cli as cli
from dispatch_runner import cron
from dispatch_runner.actions import DispatchRequest, KillRequest, ScheduleRequest
from dispatch_runner.config import load_config
from dispatch_runner.errors import InvalidArgument
from dispatch_runner.launch import supervisor
from dispatch_runner.policy import iso
from dispatch_runner.runner import Runner
from dispatch_runner.runner.schedules import MAX_SLEEP_S, RETRY_S, Scheduler, sleep_s
from tests.conftest import Home, until
from tests.mcp_helpers import connect, error, ok
from tests.test_runner import serving, wait_all

pytestmark = pytest.mark.anyio
NY = "America/New_York"


def at(zone: str, year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    return datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(zone)).timestamp()


def fires(expr: str, zone: str, start: float, n: int) -> list[str]:
    """The next n fire times after `start`, as local wall-clock times with their UTC offsets."""
    schedule, out, t = cron.parse(expr, zone), [], start
    for _ in range(n):
        t = cron.next_fire(schedule, t)
        out.append(datetime.fromtimestamp(t, ZoneInfo(zone)).strftime("%m-%d %H:%M%z"))
    return out


# ---- the next fire time: pure -------------------------------------------------------------------


def test_a_cron_reads_in_its_timezone_winter_and_summer() -> None:
    paris = cron.parse("0 9 * * mon-fri", "Europe/Paris")
    saturday_winter = at("UTC", 2026, 1, 3, 12)
    assert iso(cron.next_fire(paris, saturday_winter)) == "2026-01-05T08:00:00.000Z"  # CET
    assert iso(cron.next_fire(paris, at("UTC", 2026, 7, 4, 12))) == "2026-07-06T07:00:00.000Z"  # CEST
    assert cron.parse("0 9 * * *").timezone == "UTC"


def test_a_fixed_time_the_spring_jump_skips_fires_as_late_as_the_jump_and_a_repeated_one_once() -> None:
    # 2026-03-08 02:00 EST -> 03:00 EDT; 2026-11-01 02:00 EDT -> 01:00 EST
    assert fires("30 2 * * *", NY, at(NY, 2026, 3, 7), 3) == [
        "03-07 02:30-0500",
        "03-08 03:30-0400",
        "03-09 02:30-0400",
    ]
    assert fires("30 1 * * *", NY, at(NY, 2026, 10, 31), 3) == [
        "10-31 01:30-0400",
        "11-01 01:30-0400",
        "11-02 01:30-0500",
    ]


def test_a_wildcard_job_stays_regular_in_real_time_across_both_jumps() -> None:
    assert fires("30 * * * *", NY, at(NY, 2026, 11, 1, 0, 0), 4) == [
        "11-01 00:30-0400",
        "11-01 01:30-0400",
        "11-01 01:30-0500",  # the repeated hour runs again
        "11-01 02:30-0500",
    ]
    assert fires("30 * * * *", NY, at(NY, 2026, 3, 8, 0, 0), 3) == [
        "03-08 00:30-0500",
        "03-08 01:30-0500",
        "03-08 03:30-0400",  # 02:30 does not exist: nothing extra
    ]


def test_missed_ticks_give_one_next_time_after_now_not_one_per_tick() -> None:
    every_5 = cron.parse("*/5 * * * *")
    due = at("UTC", 2026, 5, 1, 10, 0)
    now = due + 3 * 86400 + 7
    assert cron.fire_after_missed(every_5, due=due, now=now) == at("UTC", 2026, 5, 4, 10, 5)
    assert cron.fire_after_missed(every_5, due=due, now=due) == due + 300


@pytest.mark.parametrize(
    ("expr", "zone", "words"),
    [
        ("0 3 * *", None, "has 4 fields; give 5"),
        ("0 3 * * * *", None, "has 6 fields; give 5"),
        ("61 * * * *", None, "is not valid"),
        ("0 0 30 2 *", None, "never fires"),
        ("H * * * *", None, "R or H"),
        ("0 3 * * *", "Mars/Olympus", "unknown timezone 'Mars/Olympus'; give an IANA name"),
    ],
)
def test_a_bad_cron_or_timezone_is_refused_with_what_to_write(
    expr: str, zone: str | None, words: str
) -> None:
    with pytest.raises(InvalidArgument, match=words.replace("(", r"\(")):
        cron.parse(expr, zone)


CRONS = [
    "* * * * *",
    "*/7 * * * *",
    "30 2 * * *",
    "0 */3 * * *",
    "15 1 1 * *",
    "0 9 * * mon-fri",
    "0 0 29 2 *",
]
ZONES = ["UTC", NY, "Europe/Berlin", "Australia/Lord_Howe", "Asia/Kolkata"]


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(CRONS),
    st.sampled_from(ZONES),
    st.floats(min_value=1.70e9, max_value=1.95e9),
    st.floats(min_value=0, max_value=1, exclude_max=True),
)
def test_next_fire_is_later_and_nothing_fires_before_it(
    expr: str, zone: str, after: float, part: float
) -> None:
    schedule = cron.parse(expr, zone)
    first = cron.next_fire(schedule, after)
    assert first > after
    between = after + part * (first - after)
    assume(between < first)  # float rounding
    assert cron.next_fire(schedule, between) == first  # no fire time in [after, first)
    assert cron.next_fire(schedule, first) > first


def test_the_loop_sleeps_until_the_next_tick_bounded_and_never_spins_on_a_due_one() -> None:
    assert sleep_s(None, {}, 100.0) == MAX_SLEEP_S
    assert sleep_s(105.0, {}, 100.0) == 5.0
    assert sleep_s(1000.0, {}, 100.0) == MAX_SLEEP_S
    assert sleep_s(90.0, {"sch-1": 100.0 + RETRY_S}, 100.0) == RETRY_S  # put back: its retry
    assert sleep_s(90.0, {"sch-1": 100.2}, 100.0) == 1.0  # never under a second while due


# ---- the runner: create, fire, race, put back ------------------------------------------------------


@asynccontextmanager
async def runner_on(home: Home, extra: str = "") -> AsyncIterator[Runner]:
    """A runner peer without its background loop: the test's fire_due calls are the clock."""
    if extra:
        home.write_config(extra)
    runner = Runner(load_config(), kind="test")
    try:
        yield runner
    finally:
        runner.close()


async def create(
    runner: Runner, expr: str = "* * * * *", zone: str | None = None, **dispatch: Any
) -> dict[str, Any]:
    req = ScheduleRequest(action="create", cron=expr, timezone=zone, dispatch={"agent": "agent", **dispatch})
    [made] = (await runner.schedule(req, client="client-a"))["schedules"]
    return dict(made)


def tick_of(runner: Runner, schedule: str) -> float:
    row = runner.store.get_schedule(schedule)
    assert row is not None
    return row.next_run_at


def events(runner: Runner, type_: str) -> list[Any]:
    return [e for e in runner.store.events_after(0, 10_000) if e.type == type_]


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"cron": "0 3 * *"}, "has 4 fields"),
        ({"timezone": "Europe/Atlantis"}, "unknown timezone"),
        ({"dispatch": {"task": "x", "agent": "nope"}}, "would be refused (dispatch.agent): no agent 'nope'"),
        ({"dispatch": {"task": "x", "cwd": "/etc"}}, "outside the allowed roots"),
        ({"dispatch": {"agent": "agent"}}, "dispatch.task): task is empty"),
        ({"dispatch": {"task": "x", "colour": "red"}}, "dispatch has no argument 'colour'"),
        ({"dispatch": {"task": "x", "max_turns": "5"}}, 'dispatch.max_turns must be an integer (got "5")'),
        ({"dispatch": {"task": "x", "idempotency_key": "k"}}, "dispatch.idempotency_key: leave it out"),
        ({"dispatch": {"task": "x", "resume": "ws-1"}}, "dispatch.resume: leave it out"),
        ({"dispatch": None}, "create needs dispatch"),
        ({"cron": None}, "create needs cron"),
    ],
)
async def test_a_bad_schedule_is_refused_with_a_clear_sentence_and_nothing_is_stored(
    home: Home, backend: str, change: dict[str, Any], words: str
) -> None:
    fields = {"action": "create", "cron": "0 3 * * *", "dispatch": {"task": "nightly", "agent": "agent"}}
    async with runner_on(home) as runner:
        with pytest.raises(InvalidArgument) as refused:
            await runner.schedule(ScheduleRequest(**{**fields, **change}))
        assert words in str(refused.value)
        assert runner.store.schedules() == []
        assert (await runner.schedule(ScheduleRequest(action="list")))["schedules"] == []


async def test_fire_due_dispatches_each_tick_once_through_the_gate(home: Home, backend: str) -> None:
    async with runner_on(home, "concurrency:\n  agent: 1\n") as runner:
        made = await create(runner, "* * * * *", task="tick @sleep=30", label="nightly")
        first = tick_of(runner, made["id"])
        assert made["next_run_at"] == iso(first) and made["last_run_at"] is None
        assert await runner.fire_due(first - 1) == []  # not due yet
        [fired] = await runner.fire_due(first)
        assert await runner.fire_due(first) == []  # the tick is taken: never twice
        row = runner.store.get_workspace(fired["workspace"])
        assert row is not None and row.idempotency_key == f"schedule:{made['id']}:{first!r}"
        assert row.label == "nightly" and row.client == "client-a" and row.state == "running"
        [second] = await runner.fire_due(first + 60)
        queued = runner.store.get_workspace(second["workspace"])
        assert queued is not None and queued.state == "queued"  # the pool's limit of 1 holds it
        [listed] = (await runner.schedule(ScheduleRequest(action="list")))["schedules"]
        assert listed["next_run_at"] == iso(first + 120)
        assert listed["last_run_at"] == iso(first + 60)
        assert listed["last_workspace"] == second["workspace"]
        fired_events = events(runner, "ScheduleFired")
        assert [(e.workspace, e.data["schedule"], e.data["tick"]) for e in fired_events] == [
            (fired["workspace"], made["id"], first),
            (second["workspace"], made["id"], first + 60),
        ]
        await runner.kill(KillRequest(all=True))


async def test_a_tick_fired_by_a_peer_inside_a_run_is_nobodys_sub_agent(
    home: Home, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with runner_on(home) as runner:
        made = await create(runner, "* * * * *", task="nightly")
        inside = await runner.dispatch(DispatchRequest(task="a run @sleep=30", agent="agent"))
        monkeypatch.setenv("DISPATCH_RUNNER_PARENT", inside["workspace"])  # this peer runs in it
        [fired] = await runner.fire_due(tick_of(runner, made["id"]))
        row = runner.store.get_workspace(fired["workspace"])
        assert row is not None and (row.parent, row.depth, row.root) == (None, 1, None)
        await runner.kill(KillRequest(all=True))


async def test_two_peers_racing_for_one_tick_make_exactly_one_workspace(home: Home, backend: str) -> None:
    async with runner_on(home) as a, runner_on(home) as b:
        made = await create(a, "*/10 * * * *", task="once per tick")
        tick = tick_of(a, made["id"])
        results: list[list[dict[str, Any]]] = []

        async def fire(peer: Runner) -> None:
            results.append(await peer.fire_due(tick))

        for _ in range(3):  # each round: both at the same instant, for the same tick
            async with anyio.create_task_group() as tg:
                tg.start_soon(fire, a)
                tg.start_soon(fire, b)
            tick = tick_of(a, made["id"])
        fired = [f for r in results for f in r]
        assert len(fired) == 3 and len({f["workspace"] for f in fired}) == 3
        assert len(events(a, "AgentQueued")) == 3 and len(events(b, "ScheduleFired")) == 3
        await wait_all(a, [f["workspace"] for f in fired])


async def test_only_one_compare_and_set_takes_a_tick_and_only_its_taker_puts_it_back(
    home: Home, backend: str
) -> None:
    async with runner_on(home) as runner:
        store = runner.store
        made = await create(runner, "0 * * * *", task="hourly", cwd=str(home.root))
        assert made["host"] == supervisor.host_id()
        tick = tick_of(runner, made["id"])
        here = supervisor.host_id()
        assert [r.id for r in store.due_schedules(tick, host=here)] == [made["id"]]
        assert store.due_schedules(tick - 1, host=here) == []
        assert store.due_schedules(tick, host="another-host") == []  # where its repo is not
        assert store.take_tick(made["id"], tick=tick, next_run_at=tick + 3600, now=tick) is True
        assert store.take_tick(made["id"], tick=tick, next_run_at=tick + 3600, now=tick) is False
        assert store.next_schedule_at(host=here) == tick + 3600
        for taken, done in ((tick + 7200, False), (tick + 3600, True)):  # only what it holds
            assert (
                store.put_back_tick(made["id"], tick=tick, taken=taken, last_run_at=None, error="refused")
                is done
            )
        row = store.get_schedule(made["id"])
        assert row is not None and (row.next_run_at, row.last_error) == (tick, "refused")


async def test_a_failed_submit_puts_the_tick_back_and_a_later_try_fires_it_once(
    home: Home, backend: str
) -> None:
    async with runner_on(home, "concurrency:\n  agent: 1\n") as runner:
        blocker = await runner.dispatch(DispatchRequest(task="@sleep=60", agent="agent"))
        made = await create(runner, "0 * * * *", task="hourly", max_wait_s=0)
        tick = tick_of(runner, made["id"])
        assert await runner.fire_due(tick) == []  # the pool is full and max_wait_s=0 refuses
        row = runner.store.get_schedule(made["id"])
        assert row is not None and row.next_run_at == tick and row.last_run_at is None
        assert row.last_error is not None and "is busy" in row.last_error
        assert await runner.fire_due(tick + 1) == []  # not again before RETRY_S
        await runner.kill(KillRequest(workspace=blocker["workspace"]))
        await wait_all(runner, [blocker["workspace"]])
        [fired] = await runner.fire_due(tick + RETRY_S + 1)
        row = runner.store.get_schedule(made["id"])
        assert row is not None and row.next_run_at == tick + 3600 and row.last_error is None
        ws = runner.store.get_workspace(fired["workspace"])
        assert ws is not None and ws.idempotency_key == f"schedule:{made['id']}:{tick!r}"
        await wait_all(runner, [fired["workspace"]])


async def test_a_submit_that_fails_after_it_queued_never_dispatches_the_tick_twice(
    home: Home, backend: str
) -> None:
    """The dispatch was stored but the submit raised (a crash, a lost connection): the tick is
    put back, and the retry finds the same workspace by its idempotency key."""
    async with runner_on(home) as runner:
        made = await create(runner, "*/15 * * * *", task="quarterly")
        tick = tick_of(runner, made["id"])

        async def stored_then_failed(req: DispatchRequest, **kw: Any) -> dict[str, Any]:
            await runner.dispatch(req, **kw)
            raise ConnectionError("the store went away after the commit")

        flaky = Scheduler(runner.core, stored_then_failed, runner.dispatcher.check)
        assert await flaky.fire_due(tick) == []
        assert tick_of(runner, made["id"]) == tick  # put back
        [retried] = await runner.fire_due(tick + RETRY_S)
        assert retried["deduplicated"] is True
        assert len(events(runner, "AgentQueued")) == 1
        await wait_all(runner, [retried["workspace"]])


async def test_ticks_missed_while_no_peer_ran_fire_once(home: Home, backend: str) -> None:
    async with runner_on(home) as runner:
        made = await create(runner, "*/5 * * * *", task="catch up")
        tick = tick_of(runner, made["id"])
        later = tick + 6 * 3600 + 30  # 72 ticks missed
        fired = await runner.fire_due(later)
        assert len(fired) == 1 and fired[0]["tick"] == iso(tick)
        assert tick_of(runner, made["id"]) == tick + 6 * 3600 + 300
        assert await runner.fire_due(later) == []
        await wait_all(runner, [fired[0]["workspace"]])


async def test_a_serving_peer_fires_a_due_schedule_by_itself(home: Home, backend: str) -> None:
    async with serving(home) as runner:
        made = await create(runner, "0 0 1 1 *", task="new year")
        tick = tick_of(runner, made["id"])
        due_now = runner.store.server_time() - 1
        # back-date the tick (the same compare-and-set a failed submit uses), then wake the loop
        assert runner.store.put_back_tick(made["id"], tick=due_now, taken=tick, last_run_at=None, error="")
        await create(runner, "0 0 1 1 *", task="the wake-up")

        def fired() -> str | None:
            row = runner.store.get_schedule(made["id"])
            assert row is not None
            return row.last_workspace

        workspace = await until(fired, message="the loop fired the due schedule")
        row = runner.store.get_schedule(made["id"])
        assert workspace and row is not None and row.next_run_at == tick and row.last_error is None
        await wait_all(runner, [workspace])


async def test_delete_removes_a_schedule_and_an_unknown_id_is_refused(home: Home, backend: str) -> None:
    async with runner_on(home) as runner:
        keep = await create(runner, "0 3 * * *", "Europe/Paris", task="keep")
        gone = await create(runner, "0 4 * * *", task="go")
        deleted = await runner.schedule(ScheduleRequest(action="delete", id=gone["id"]))
        assert deleted["deleted"] is True and deleted["schedules"][0]["id"] == gone["id"]
        listed = (await runner.schedule(ScheduleRequest(action="list")))["schedules"]
        assert [(s["id"], s["cron"], s["timezone"]) for s in listed] == [
            (keep["id"], "0 3 * * *", "Europe/Paris")
        ]
        assert listed[0]["dispatch"] == {"agent": "agent", "task": "keep"}
        with pytest.raises(InvalidArgument, match=f"no schedule '{gone['id']}'"):
            await runner.schedule(ScheduleRequest(action="delete", id=gone["id"]))
        assert await runner.fire_due(tick_of(runner, keep["id"]) + 86400 * 2) != []


# ---- the surfaces --------------------------------------------------------------------------------


async def test_the_schedule_tool_over_stdio_creates_lists_and_deletes(home: Home, backend: str) -> None:
    async with connect(home.path) as (client, _):
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert set(tools["schedule"].input_schema["properties"]) == {
            "action",
            "cron",
            "timezone",
            "dispatch",
            "id",
        }
        refused = error(
            await client.call_tool(
                "schedule",
                {"action": "create", "cron": "0 3 * * *", "dispatch": {"task": "x", "agent": "nope"}},
            )
        )
        assert "no agent 'nope' configured" in refused and "no schedule was stored" in refused
        made = ok(
            await client.call_tool(
                "schedule",
                {
                    "action": "create",
                    "cron": "30 2 * * *",
                    "timezone": NY,
                    "dispatch": {"task": "nightly", "agent": "agent", "priority": "low"},
                },
            )
        )
        [row] = made["schedules"]
        assert row["cron"] == "30 2 * * *" and row["timezone"] == NY and row["last_run_at"] is None
        assert datetime.fromisoformat(row["next_run_at"]).astimezone(ZoneInfo(NY)).minute == 30
        listed = ok(await client.call_tool("schedule", {"action": "list"}))
        assert [s["id"] for s in listed["schedules"]] == [row["id"]]
        ok(await client.call_tool("schedule", {"action": "delete", "id": row["id"]}))
        assert ok(await client.call_tool("schedule", {"action": "list"}))["schedules"] == []
        unknown = error(await client.call_tool("schedule", {"action": "delete", "id": row["id"]}))
        assert f"no schedule '{row['id']}'" in unknown


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, json.loads(out.out) if "--json" in argv and out.out else out.out, out.err


def test_the_schedule_command_creates_lists_and_deletes(
    home: Home, backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, made, _ = run_main(
        capsys, "schedule", "create", "0 3 * * 1-5", "nightly build", "--agent", "agent",
        "--timezone", "Europe/Paris", "--dispatch", '{"max_cost_usd": 2}', "--json",
    )  # fmt: skip
    assert code == 0
    [row] = made["schedules"]
    assert row["dispatch"] == {"task": "nightly build", "agent": "agent", "max_cost_usd": 2}
    code, text, _ = run_main(capsys, "schedule", "list")
    assert code == 0 and row["id"] in text and "0 3 * * 1-5 (Europe/Paris)" in text and "never run" in text
    code, _, err = run_main(capsys, "schedule", "create", "0 3 * *", "x", "--agent", "agent")
    assert code == 2 and "has 4 fields; give 5" in err and "Traceback" not in err
    code, _, err = run_main(capsys, "schedule", "create", "0 3 * * *", "x", "--dispatch", "[1]")
    assert code == 2 and "--dispatch must be a JSON object" in err
    code, deleted, _ = run_main(capsys, "schedule", "delete", row["id"], "--json")
    assert code == 0 and deleted["deleted"] is True
    code, listed, _ = run_main(capsys, "schedule", "list", "--json")
    assert code == 0 and listed == {"schedules": []}
