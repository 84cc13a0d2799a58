"""`GET /metrics` on the HTTP transport, in Prometheus' text format (prometheus_client).

What the store holds is fleet-wide, read at each scrape: workspaces per pool and state, ended
runs per pool and outcome with their tokens and dollars, each pool's queue (depth, oldest age),
limit and backoff, and completions not yet delivered. What this peer measured itself is its
own: how long its claims took, how long its dispatches waited before their first run started,
and the events its bus dropped. Scrape one peer per store for the fleet-wide series (each peer
reports the same numbers), and every peer for its own timings.
"""

import time
from collections.abc import Iterator
from typing import Any

import anyio.to_thread
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..policy import parse_iso
from ..runner import Runner

METRICS_PATH = "/metrics"
PREFIX = "dispatch_runner"
# claims take milliseconds; a dispatch may wait from no time at all to hours behind a full pool
CLAIM_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600)


class StoreCollector(Collector):
    """The fleet-wide series, read from the store at each scrape (in a worker thread)."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def collect(self) -> Iterator[Any]:
        counts = self.runner.store.metric_counts()
        snap = self.runner.store.snapshot(now=time.time(), limits=self.runner.limits, limit=1)
        yield from _workspaces(counts["workspaces"])
        yield from _runs(counts["runs"])
        yield from _pools(snap["pools"], now=time.time())
        undelivered = GaugeMetricFamily(
            f"{PREFIX}_undelivered_completions", "Completions written to the outbox, not yet delivered"
        )
        undelivered.add_metric([], snap["undelivered"])
        yield undelivered
        dropped = CounterMetricFamily(
            f"{PREFIX}_bus_dropped", "Events this peer's bus dropped for slow subscribers"
        )
        dropped.add_metric([], self.runner.statistics().bus.dropped)
        yield dropped


def _workspaces(rows: list[dict[str, Any]]) -> Iterator[Any]:
    family = GaugeMetricFamily(
        f"{PREFIX}_workspaces", "Workspaces by pool and state", labels=["pool", "state"]
    )
    for r in rows:
        family.add_metric([r["pool"], r["state"]], r["n"])
    yield family


def _runs(rows: list[dict[str, Any]]) -> Iterator[Any]:
    runs = CounterMetricFamily(f"{PREFIX}_runs", "Ended runs by pool and outcome", labels=["pool", "outcome"])
    limited = CounterMetricFamily(
        f"{PREFIX}_rate_limited", "Runs that hit their provider's limit", labels=["pool"]
    )
    tokens = CounterMetricFamily(
        f"{PREFIX}_tokens", "Tokens the runs reported, by pool and direction", labels=["pool", "direction"]
    )
    cost = CounterMetricFamily(f"{PREFIX}_cost_usd", "Dollars the runs reported, by pool", labels=["pool"])
    by_pool: dict[str, dict[str, float]] = {}
    for r in rows:
        runs.add_metric([r["pool"], r["outcome"]], r["n"])
        mine = by_pool.setdefault(r["pool"], {"input": 0, "output": 0, "usd": 0.0, "limited": 0})
        mine["input"] += r["input_tokens"]
        mine["output"] += r["output_tokens"]
        mine["usd"] += float(r["cost_usd"])
        mine["limited"] += r["n"] if r["outcome"] == "rate_limited" else 0
    for pool, mine in sorted(by_pool.items()):
        tokens.add_metric([pool, "input"], mine["input"])
        tokens.add_metric([pool, "output"], mine["output"])
        cost.add_metric([pool], mine["usd"])
        limited.add_metric([pool], mine["limited"])
    yield from (runs, limited, tokens, cost)


def _pools(pools: dict[str, dict[str, Any]], *, now: float) -> Iterator[Any]:
    names = ("pool",)
    depth = GaugeMetricFamily(f"{PREFIX}_queue_depth", "Queued workspaces per pool", labels=names)
    oldest = GaugeMetricFamily(
        f"{PREFIX}_queue_oldest_age_seconds", "How long the oldest queued workspace has waited", labels=names
    )
    running = GaugeMetricFamily(f"{PREFIX}_running", "Running (and reserved) runs per pool", labels=names)
    limit = GaugeMetricFamily(
        f"{PREFIX}_pool_limit", "The concurrency a pool obeys now (adaptive: its current one)", labels=names
    )
    backoff = GaugeMetricFamily(
        f"{PREFIX}_backoff_seconds", "How long a pool still waits before it spawns again", labels=names
    )
    for name, p in pools.items():
        depth.add_metric([name], p["queued"])
        running.add_metric([name], p["running"])
        at = parse_iso(p["oldest_queued_at"])
        oldest.add_metric([name], max(now - at, 0.0) if at is not None else 0.0)
        if p.get("effective_limit") is not None:
            limit.add_metric([name], p["effective_limit"])
        until = parse_iso(p["backoff_until"])
        backoff.add_metric([name], max(until - now, 0.0) if until is not None else 0.0)
    yield from (depth, oldest, running, limit, backoff)


def host_allowed(security: TransportSecuritySettings, host: str) -> bool:
    """The DNS-rebinding check the MCP endpoint makes, for this route too: a token-less loopback
    bind answers only requests addressed to a loopback name. It mirrors the SDK's own host rule
    (exact, or `name:*` for any port), which is private to its middleware."""
    if not security.enable_dns_rebinding_protection:
        return True
    return any(
        host == p.removesuffix(":*") or host.startswith(p.removesuffix("*")) for p in security.allowed_hosts
    )


def add_metrics_route(mcp: MCPServer, runner: Runner, security: TransportSecuritySettings) -> None:
    """GET /metrics (behind the bearer token when one is set, like every route)."""
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response

    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(runner))
    claims = Histogram(
        f"{PREFIX}_claim_seconds",
        "How long this peer's claims took",
        ["pool"],
        registry=registry,
        buckets=CLAIM_BUCKETS,
    )
    waits = Histogram(
        f"{PREFIX}_dispatch_to_running_seconds",
        "From a dispatch to the spawn of its first run, as this peer started them",
        ["pool"],
        registry=registry,
        buckets=WAIT_BUCKETS,
    )
    histograms = {"claim": claims, "dispatch_to_running": waits}

    def observe(name: str, pool: str, seconds: float) -> None:
        histograms[name].labels(pool=pool or "none").observe(seconds)

    runner.observe_with(observe)

    async def metrics(request: Request) -> Response:
        if not host_allowed(security, request.headers.get("host", "")):
            return PlainTextResponse("Invalid Host header\n", status_code=421)
        body = await anyio.to_thread.run_sync(generate_latest, registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    mcp.custom_route(METRICS_PATH, methods=["GET"])(metrics)
