"""OpenTelemetry traces of dispatches, following the GenAI semantic conventions: one
`invoke_agent {agent}` span per dispatch, from the tool call to the completion this peer
publishes, with `queue` and `run` children timed from the store's rows. The span's
context reaches the agent as `TRACEPARENT` (W3C), so a sub-agent's own dispatches (its runner
reads TRACEPARENT) join the same trace.

Off by default. On with the standard environment — `OTEL_TRACES_EXPORTER` (otlp, console) or an
OTLP endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`) — when the SDK is installed (`pip install
'dispatch-runner[otel]'`); `use(provider)` sets one up in-process (tests). A dispatch whose
peer ends before its completion leaves its span unended: it is not exported.
"""

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from ..model import TERMINAL_EVENTS, Event
from ..store import RunRow, WorkspaceRow

log = logging.getLogger("dispatch_runner")
_NS = 1_000_000_000


class _State:
    tracer: Any = None  # an opentelemetry Tracer once tracing is on


_state = _State()
_setup = threading.Lock()


def use(provider: Any) -> None:
    """Trace with this TracerProvider (the SDK's), from now on; None: tracing off."""
    _state.tracer = provider.get_tracer("dispatch_runner") if provider is not None else None


def setup_from_env(env: Mapping[str, str] = os.environ) -> None:
    """Turn tracing on when the OTEL_* environment asks for it and the SDK is installed."""
    exporter_name = env.get("OTEL_TRACES_EXPORTER", "")
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if _state.tracer is not None or exporter_name == "none" or not (exporter_name or endpoint):
        return
    with _setup:
        try:
            from opentelemetry import trace
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

            if exporter_name == "console":
                exporter: Any = ConsoleSpanExporter()
            else:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

                exporter = OTLPSpanExporter()
        except ImportError as exc:
            log.warning(
                "OTEL_* asks for traces, but %s is not installed: pip install 'dispatch-runner[otel]'",
                exc.name,
            )
            return
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        use(provider)


class Traces:
    """The open `invoke_agent` spans of the dispatches this peer made."""

    def __init__(self) -> None:
        self._open: dict[str, Any] = {}
        self._lock = threading.Lock()

    def dispatched(self, workspace: str, *, agent: str, model: str | None, pool: str) -> str | None:
        """Start a dispatch's span (a child of this process's TRACEPARENT, if any: a sub-agent's
        runner joins its parent's trace); its W3C traceparent, for the agent's environment."""
        tracer = _state.tracer
        if tracer is None:
            return None
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        propagator = TraceContextTextMapPropagator()
        parent = propagator.extract({"traceparent": os.environ.get("TRACEPARENT", "")})
        attributes = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": agent,
            "gen_ai.system": pool,
            "dispatch_runner.workspace": workspace,
        }
        if model:
            attributes["gen_ai.request.model"] = model
        span = tracer.start_span(f"invoke_agent {agent}", context=parent, attributes=attributes)
        with self._lock:
            self._open[workspace] = span
        ctx = span.get_span_context()
        return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"

    def ends(self, events: Sequence[Event]) -> list[str]:
        """The workspaces with an open span that these events end."""
        with self._lock:
            return [e.workspace for e in events if e.type in TERMINAL_EVENTS and e.workspace in self._open]

    def completed(self, row: WorkspaceRow, runs: Sequence[RunRow]) -> None:
        """End a dispatch's span with its usage and outcome; its queue wait and each of its runs
        as children, timed from the store."""
        with self._lock:
            span = self._open.pop(row.id, None)
        if span is None or _state.tracer is None:
            return
        from opentelemetry import trace

        parent = trace.set_span_in_context(span)
        for run in runs:
            _child(parent, "run", run.started_at, run.ended_at, {"dispatch_runner.run": run.id})
        if runs:
            _child(parent, "queue", row.created_at, runs[0].claimed_at, {})
        usage = row.usage
        if usage.input_tokens is not None:
            span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
        if usage.output_tokens is not None:
            span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
        if row.session_id:
            span.set_attribute("gen_ai.conversation.id", row.session_id)
        if row.model:
            span.set_attribute("gen_ai.response.model", row.model)
        span.set_attribute("dispatch_runner.state", row.state)
        if row.state != "completed":
            span.set_status(trace.Status(trace.StatusCode.ERROR, row.reason or row.state))
        span.end()  # now: the completion has reached this peer, which pushes it

    def discard(self, workspace: str) -> None:
        """A dispatch that stored nothing (refused, or another's by its idempotency key)."""
        with self._lock:
            span = self._open.pop(workspace, None)
        if span is not None:
            span.set_attribute("dispatch_runner.stored", False)
            span.end()


def _child(parent: Any, name: str, start: float | None, end: float | None, attrs: dict[str, Any]) -> None:
    if start is None or end is None or _state.tracer is None:
        return
    span = _state.tracer.start_span(name, context=parent, start_time=int(start * _NS), attributes=attrs)
    span.end(end_time=int(end * _NS))
