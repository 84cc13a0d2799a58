"""Another host's run, read through its peer. A run's log lives on the host that ran it; a peer
serving HTTP there (`serve --transport http`, its URL registered with its heartbeat) answers
`GET /runner/logs` with the page `logs` gives on that host. The fleet shares one bearer token
(DISPATCH_RUNNER_TOKEN). When no peer of that host is reachable, the answer says where the log
is instead."""

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from ..actions import LogsRequest
from ..launch import supervisor
from ..store import Store, WorkspaceRow
from .placement import fresh

LOGS_PATH = "/runner/logs"
FETCH_TIMEOUT_S = 5.0


def host_of_run(store: Store, row: WorkspaceRow, number: int) -> str | None:
    """The host run `number` of the workspace ran on, when it is not this one."""
    here = supervisor.host_id()
    host = next((r.host for r in store.runs_of(row.id) if r.attempt == number), None)
    return host if host not in (None, here) else None


def logs_elsewhere(
    store: Store, row: WorkspaceRow, req: LogsRequest, host: str, token: str | None
) -> dict[str, Any]:
    """The page, from a live peer of `host` that serves HTTP; else where the log is. `token`:
    the fleet's bearer token (this peer's own, else $DISPATCH_RUNNER_TOKEN)."""
    tried: list[str] = []
    for url in _urls(store.peers(), host):
        try:
            page = _fetch(url, req, token or os.environ.get("DISPATCH_RUNNER_TOKEN"))
        except (OSError, ValueError) as exc:  # URLError is an OSError; ValueError: bad JSON
            tried.append(f"{url}: {getattr(exc, 'reason', exc)}")
            continue
        return {**page, "host": host}
    why = "; ".join(tried) if tried else f"no live peer of {host} serves HTTP"
    return {
        "workspace": row.id,
        "run": req.run,
        "runs": [],
        "stream": req.stream,
        "lines": [],
        "next_offset": req.offset,
        "eof": False,
        "more": False,
        "cursor": None,
        "state": row.state,
        "host": host,
        "elsewhere": (
            f"this run's log is on host {host}, in {row.path} ({why}); run `dispatch-runner logs "
            f"{row.id}` there, or `dispatch-runner serve --transport http` there with the fleet's "
            "token so its peer can serve it"
        ),
    }


def _urls(peers: Sequence[Mapping[str, Any]], host: str) -> list[str]:
    return [p["url"] for p in peers if p.get("host") == host and p.get("url") and fresh(p)]


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A peer answers itself: a redirect (and the token with it) is never followed."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def _fetch(base: str, req: LogsRequest, token: str | None) -> dict[str, Any]:
    if urllib.parse.urlsplit(base).scheme not in ("http", "https"):
        raise ValueError(f"not an http(s) URL: {base!r}")
    query = {"workspace": req.workspace, "stream": req.stream, "offset": req.offset, "limit": req.limit}
    if req.run is not None:
        query["run"] = req.run
    if req.cursor is not None:
        query["cursor"] = req.cursor
    if req.whole_lines:
        query["whole_lines"] = 1
    request = urllib.request.Request(f"{base.rstrip('/')}{LOGS_PATH}?{urllib.parse.urlencode(query)}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with _OPENER.open(request, timeout=FETCH_TIMEOUT_S) as response:
            page: dict[str, Any] = json.load(response)
    except urllib.error.HTTPError as exc:
        if exc.code == 400:  # the other peer's own refusal (an unknown run): pass its sentence on
            raise ValueError(json.load(exc).get("error", exc.reason)) from exc
        if exc.code == 401:
            raise ValueError(
                "it refused this host's token: set DISPATCH_RUNNER_TOKEN here to the fleet's token"
                if token
                else "it wants the fleet's token: set DISPATCH_RUNNER_TOKEN here"
            ) from exc
        raise
    return page
