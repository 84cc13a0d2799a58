"""Traces of dispatches (OpenTelemetry, GenAI semantic conventions): spans collected by the SDK's
in-memory exporter carry the agent, model and usage; the agent's TRACEPARENT is its dispatch's
span; a sub-agent's own dispatch (its CLI, with the OTEL_* environment) joins the same trace."""

import json
import sys
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from dispatch_runner.actions import DispatchRequest, WaitRequest
from dispatch_runner.runner import tracing
from tests.conftest import Home
from tests.test_runner import serving

pytestmark = pytest.mark.anyio

# prints the TRACEPARENT it was given (its summary), like a CLI that propagates W3C context
TP_AGENT = """\
  tp:
    command: [sh, -c, 'echo "traceparent=$TRACEPARENT"']
  nested:
    command: [{py}, -m, dispatch_runner.cli, dispatch, "child of {{workspace}}", --agent, tp, --wait, --json]
    env: {{OTEL_TRACES_EXPORTER: console}}
"""


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    yield exporter
    tracing.use(None)  # off again for the other tests


async def test_a_dispatch_is_an_invoke_agent_span_and_its_context_reaches_the_agent(
    home: Home, backend: str, spans: InMemorySpanExporter
) -> None:
    async with serving(home, TP_AGENT.format(py=sys.executable)) as runner:
        done = await runner.dispatch(DispatchRequest(task="hello", agent="tp"))
        await runner.wait(WaitRequest(workspaces=[done["workspace"]], timeout_s=30))
        row = runner.store.get_workspace(done["workspace"])
        assert row is not None and row.state == "completed"
        await runner.core.publish_new()
    [root] = [s for s in spans.get_finished_spans() if s.name == "invoke_agent tp"]
    attrs = root.attributes or {}
    assert attrs["gen_ai.operation.name"] == "invoke_agent" and attrs["gen_ai.agent.name"] == "tp"
    assert attrs["dispatch_runner.workspace"] == done["workspace"]
    assert attrs["dispatch_runner.state"] == "completed"
    ctx = root.get_span_context()
    assert ctx is not None
    assert row.summary == f"traceparent=00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
    children = {s.name: s for s in spans.get_finished_spans() if s.parent and s.parent.span_id == ctx.span_id}
    assert set(children) == {"queue", "run"}
    queue, run = children["queue"], children["run"]
    assert queue.end_time is not None and run.start_time is not None and run.end_time is not None
    assert queue.end_time <= run.start_time <= run.end_time


async def test_usage_is_on_the_span(home: Home, spans: InMemorySpanExporter) -> None:
    async with serving(home) as runner:
        done = await runner.dispatch(DispatchRequest(task="@turns=2 @cost=0.1 priced", agent="claude"))
        await runner.wait(WaitRequest(workspaces=[done["workspace"]], timeout_s=30))
        await runner.core.publish_new()
    [root] = [s for s in spans.get_finished_spans() if s.name.startswith("invoke_agent claude")]
    attrs = dict(root.attributes or {})
    used = attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]
    assert all(isinstance(n, int) and n > 0 for n in used)
    assert attrs["gen_ai.conversation.id"]


async def test_a_sub_agents_dispatch_joins_its_parents_trace(home: Home, spans: InMemorySpanExporter) -> None:
    async with serving(home, TP_AGENT.format(py=sys.executable)) as runner:
        done = await runner.dispatch(DispatchRequest(task="go", agent="nested"))
        await runner.wait(WaitRequest(workspaces=[done["workspace"]], timeout_s=60))
        await runner.core.publish_new()
        row = runner.store.get_workspace(done["workspace"])
        assert row is not None and row.state == "completed", row
    [root] = [s for s in spans.get_finished_spans() if s.name == "invoke_agent nested"]
    ctx = root.get_span_context()
    assert ctx is not None
    trace_id = f"0x{ctx.trace_id:032x}"
    # the sub-agent's CLI exported its own span (console exporter) into its stdout log
    err = (home.path / "workspaces" / done["workspace"] / "run-1.out.log").read_text()
    child_spans = [json.loads(block) for block in _json_objects(err) if '"invoke_agent tp"' in block]
    assert child_spans and child_spans[0]["context"]["trace_id"] == trace_id
    assert child_spans[0]["parent_id"] == f"0x{ctx.span_id:016x}"


def _json_objects(text: str) -> list[str]:
    """The top-level {...} blocks printed one after another (the console exporter's spans)."""
    blocks, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "{":
            depth, start = depth + 1, i if depth == 0 else start
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                blocks.append(text[start : i + 1])
    return blocks
