"""Input validation under Hypothesis: any argument either dispatches or is refused with a
DispatchError that writes nothing — never another exception, never a half-made workspace."""

from pathlib import Path
from typing import Any

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatch_runner.config import load_config
from dispatch_runner.errors import DispatchError
from dispatch_runner.runner import Runner
from tests.conftest import Home

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
args = st.fixed_dictionaries({}, optional={
    "agent": st.one_of(text, st.sampled_from(["agent", "codex:gpt-5.4", "claude:", ":x", "a b"])),
    "priority": st.one_of(text, st.sampled_from(["critical", "HIGH", "medium", "low", ""])),
    "cwd": st.one_of(text, st.sampled_from(["/", "/etc", "..", "~", "/tmp/../etc"])),
    "template": st.one_of(text, st.sampled_from(["none", "coding"])),
    "max_attempts": st.one_of(st.integers(-3, 5), st.floats(allow_nan=True), text),
    "timeout_s": st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-5, 5)),
    "max_wait_s": st.one_of(st.floats(-5, 5), st.none()),
    "label": text,
})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(task=st.one_of(text, st.just("  ")), extra=args)
def test_any_dispatch_input_is_accepted_or_refused_cleanly(home: Home, task: str, extra: dict[str, Any]) -> None:
    runner = Runner(load_config())
    try:
        anyio.run(runner.stop)  # frozen: an accepted dispatch queues, nothing is spawned
        before_events = runner.store.last_event_id()
        before_dirs = _dirs(home)
        try:
            result = anyio.run(lambda: runner.bus.invoke("runner.dispatch", task=task, **extra))
        except DispatchError as exc:
            assert str(exc) and str(exc)[0].isalpha()
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
