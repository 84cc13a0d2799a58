"""Input validation under Hypothesis: any argument either dispatches or is refused with a
DispatchError that writes nothing — never another exception, never a half-made workspace."""

from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatch_runner.actions import (
    DispatchRequest,
    GcRequest,
    KillRequest,
    Result,
    StatusRequest,
    WaitRequest,
)
from dispatch_runner.config import load_config
from dispatch_runner.errors import DispatchError
from dispatch_runner.runner import Runner
from tests.conftest import Home

# any text at all, NUL and lone surrogates included: what a client sends is not ours to choose
text = st.one_of(st.text(max_size=40), st.sampled_from(["a\x00b", "\ud800", "--yolo", "-", "{prompt}"]))
numbers = st.one_of(
    st.integers(-3, 5),
    st.integers(10**6, 10**30),
    st.just(10**400),
    st.floats(),
    st.booleans(),
    st.sampled_from(["5", "1e3", ""]),
    st.none(),
)
args = st.fixed_dictionaries(
    {},
    optional={
        "agent": st.one_of(
            text,
            st.sampled_from(
                ["agent", "codex:gpt-5.4", "claude:", ":x", "a b", "agent:--yolo", "agent:-m", "agent:x\x00"]
            ),
        ),
        "priority": st.one_of(text, st.sampled_from(["critical", "HIGH", "medium", "low", ""])),
        "cwd": st.one_of(text, st.sampled_from(["/", "/etc", "..", "~", "/tmp/../etc", "/tmp/\x00"])),
        "template": st.one_of(text, st.sampled_from(["none", "coding"])),
        "max_attempts": numbers,
        "timeout_s": numbers,
        "max_wait_s": numbers,
        "label": text,
        "idempotency_key": text,
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(task=st.one_of(text, st.just("  ")), extra=args)
def test_any_dispatch_input_is_accepted_or_refused_cleanly(
    home: Home, task: str, extra: dict[str, Any]
) -> None:
    runner = Runner(load_config())
    try:
        anyio.run(runner.stop)  # frozen: an accepted dispatch queues, nothing is spawned
        before_events = runner.store.last_event_id()
        before_dirs = _dirs(home)
        try:
            result = anyio.run(runner.dispatch, DispatchRequest(task=task, **extra))
        except DispatchError as exc:
            assert str(exc) and str(exc)[0].isalpha() and "unexpectedly" not in str(exc)
            assert runner.store.last_event_id() == before_events
            assert _dirs(home) == before_dirs
        else:
            assert result["status"] == "queued"
            assert task.strip()
    finally:
        runner.close()


def _dirs(home: Home) -> set[Path]:
    root = home.path / "workspaces"
    return set(root.iterdir()) if root.exists() else set()


Request = StatusRequest | KillRequest | WaitRequest | GcRequest


async def act(runner: Runner, req: Request) -> Result:
    """The runner's action for this request: the one the MCP tool or the CLI command calls."""
    if isinstance(req, StatusRequest):
        return await runner.status(req)
    if isinstance(req, KillRequest):
        return await runner.kill(req)
    if isinstance(req, WaitRequest):
        return await runner.wait(req)
    return await runner.gc(req)


@pytest.mark.parametrize(
    "req",
    [
        StatusRequest(workspace="ws-\udcff"),
        StatusRequest(agent="a\x00"),
        KillRequest(workspace="ws-\udcff"),
        KillRequest(agent="\ud800"),
        WaitRequest(workspaces=["ws-\x00"]),
        WaitRequest(workspaces=["x"], timeout_s=10**400),
        GcRequest(older_than_s=float("nan")),
    ],
)
def test_text_no_os_can_hold_and_impossible_numbers_are_refused_by_every_action(
    home: Home, req: Request
) -> None:
    runner = Runner(load_config())
    try:
        with pytest.raises(DispatchError) as info:
            anyio.run(act, runner, req)
    finally:
        runner.close()
    assert str(info.value)[0].isalpha()
