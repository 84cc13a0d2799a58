"""`GET /metrics` on the HTTP transport: after a known workload (fake agents as real processes,
dispatched through a real MCP session over HTTP), prometheus_client's own parser reads the
exact counts; the route is behind the bearer token and the DNS-rebinding check."""

import os
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp.client.streamable_http import streamable_http_client
from prometheus_client.parser import text_string_to_metric_families

from tests.mcp_helpers import http_server, ok, session

pytestmark = pytest.mark.anyio

TOKEN = "metrics-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and sorted labels (prometheus_client's parser)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(got: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return got[(name, tuple(sorted(labels.items())))]


async def test_metrics_after_a_known_workload_have_the_exact_counts(tmp_path: Path, backend: str) -> None:
    store = os.environ.get("DISPATCH_RUNNER_STORE")
    with http_server(tmp_path / "srv", store, token=TOKEN) as url:
        async with (
            httpx2.AsyncClient(headers=AUTH) as http,
            session(streamable_http_client(f"{url}/mcp", http_client=http)) as (client, seen),
        ):
            tasks: list[dict[str, Any]] = [
                {"task": "one", "agent": "agent"},
                {"task": "two", "agent": "agent"},
                {"task": "three @exit=1", "agent": "agent", "max_attempts": 1},
                {"task": "priced @turns=2 @cost=0.25"},  # the default agent: claude
                {"task": "@ratelimit limited", "agent": "codex"},
            ]
            ids = [ok(await client.call_tool("dispatch", t))["workspace"] for t in tasks]
            ended = ("AgentCompleted", "AgentFailed", "TaskDeadLettered", "AgentRetrying")
            await seen.until(
                lambda: all(any(c.meta["event"] in ended for c in seen.channel_for(w)) for w in ids),
                what="every run's end",
                deadline_s=60,
            )
            r = await http.get(f"{url}/metrics")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
            got = samples(r.text)
            ok(await client.call_tool("kill", {"all": True}))
    assert value(got, "dispatch_runner_runs_total", pool="agent", outcome="succeeded") == 2
    assert value(got, "dispatch_runner_runs_total", pool="agent", outcome="failed") == 1
    assert value(got, "dispatch_runner_runs_total", pool="claude", outcome="succeeded") == 1
    assert value(got, "dispatch_runner_runs_total", pool="codex", outcome="rate_limited") == 1
    assert value(got, "dispatch_runner_rate_limited_total", pool="codex") == 1
    assert value(got, "dispatch_runner_rate_limited_total", pool="agent") == 0
    assert value(got, "dispatch_runner_workspaces", pool="agent", state="completed") == 2
    assert value(got, "dispatch_runner_workspaces", pool="agent", state="failed") == 1
    assert value(got, "dispatch_runner_workspaces", pool="codex", state="queued") == 1
    assert value(got, "dispatch_runner_cost_usd_total", pool="claude") == pytest.approx(0.25)
    assert value(got, "dispatch_runner_tokens_total", pool="claude", direction="input") > 0
    assert value(got, "dispatch_runner_queue_depth", pool="codex") == 1
    assert value(got, "dispatch_runner_queue_depth", pool="agent") == 0
    assert value(got, "dispatch_runner_backoff_seconds", pool="codex") > 0  # its provider's limit
    assert value(got, "dispatch_runner_backoff_seconds", pool="agent") == 0
    assert value(got, "dispatch_runner_pool_limit", pool="agent") == 4
    assert value(got, "dispatch_runner_running", pool="agent") == 0
    # this peer's own timings: one claim and one first spawn per run it started
    assert value(got, "dispatch_runner_claim_seconds_count", pool="agent") == 3
    assert value(got, "dispatch_runner_dispatch_to_running_seconds_count", pool="agent") == 3
    assert value(got, "dispatch_runner_dispatch_to_running_seconds_count", pool="claude") == 1
    assert ("dispatch_runner_undelivered_completions", ()) in got
    assert value(got, "dispatch_runner_bus_dropped_total") == 0


async def test_metrics_need_the_token_and_a_loopback_name_without_one(tmp_path: Path) -> None:
    with http_server(tmp_path / "a", None, token=TOKEN) as url:
        async with httpx2.AsyncClient() as http:
            assert (await http.get(f"{url}/metrics")).status_code == 401
            assert (
                await http.get(f"{url}/metrics", headers={"Authorization": "Bearer nope"})
            ).status_code == 401
    with http_server(tmp_path / "b", None, token=None) as url:
        async with httpx2.AsyncClient() as http:
            assert (await http.get(f"{url}/metrics")).status_code == 200
            foreign = await http.get(f"{url}/metrics", headers={"Host": "evil.example:80"})
            assert foreign.status_code == 421  # a DNS-rebinding page cannot read it
