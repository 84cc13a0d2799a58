"""The dashboard's routes, on the HTTP transport's bind: the page (`/`, `/w/<workspace>`), its
files, the board and a workspace as JSON, the live streams (server-sent events: the board, one
run's log) and the actions (kill, freeze, unfreeze, poke, approve) through the runner's actions,
as the tools call them. Everything but the page's own files needs the token when one is set
(auth.py); every route answers only requests addressed to a name the bind allows.
"""

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from html import escape
from importlib import resources
from typing import Any, Final
from urllib.parse import parse_qs

from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from ..actions import ApproveRequest, KillRequest
from ..errors import DispatchError, StoreError, UnknownWorkspace
from ..runner import Runner
from .auth import COOKIE_MAX_AGE_S, Gate
from .feed import Feed
from .logs import log_events

PREFIX: Final = "/dashboard"
MAX_BODY: Final = 64 * 1024
SIGN_IN_BODY: Final = 4096
SSE_PING_S: Final = 15
ASSETS: Final = {"app.js": "text/javascript", "app.css": "text/css", "favicon.svg": "image/svg+xml"}
SECURITY_HEADERS: Final = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


def is_dashboard_path(path: str) -> bool:
    return path == "/" or path.startswith(("/w/", f"{PREFIX}/")) or path == "/favicon.ico"


def _asset(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


class Dashboard:
    """The handlers; `app()` puts each behind the host check and, unless public, the token."""

    def __init__(self, runner: Runner, feed: Feed, gate: Gate) -> None:
        self.runner, self.feed, self.gate = runner, feed, gate

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/", self._guarded(self.page, public=True)),
                Route("/w/{workspace}", self._guarded(self.page, public=True)),
                Route(f"{PREFIX}/sign-in", self._guarded(self.sign_in, public=True), methods=["POST"]),
                Route(f"{PREFIX}/static/{{name}}", self._guarded(self.asset, public=True)),
                Route("/favicon.ico", self._guarded(self.favicon, public=True)),
                Route(f"{PREFIX}/api/board", self._guarded(self.board)),
                Route(f"{PREFIX}/api/workspace/{{workspace}}", self._guarded(self.workspace)),
                Route(f"{PREFIX}/api/stream", self._guarded(self.stream)),
                Route(f"{PREFIX}/api/logs/{{workspace}}", self._guarded(self.logs)),
                Route(f"{PREFIX}/api/actions/{{action}}", self._guarded(self.act), methods=["POST"]),
            ]
        )

    def _guarded(self, handler: Callable[[Request], Awaitable[Response]], *, public: bool = False) -> Any:
        async def endpoint(request: Request) -> Response:
            if not self.gate.addressed_here(request):
                return PlainTextResponse("Invalid Host header\n", status_code=421)
            if not public and not self.gate.authorized(request):
                return JSONResponse({"error": "missing or wrong token"}, status_code=401)
            response = await handler(request)
            response.headers.update(SECURITY_HEADERS)
            return response

        return endpoint

    async def page(self, request: Request) -> Response:
        here = request.url.path
        given = request.query_params.get("token")
        if given is not None and self.gate.token is not None:
            return _signed_in(self.gate, here) if self.gate.given(given) else _sign_in_page(here, wrong=True)
        if not self.gate.authorized(request):
            return _sign_in_page(here, wrong=False)
        if "sign-in" in request.query_params and self.gate.token is not None:  # to get the action key again
            return _sign_in_page(here, wrong=False)
        return HTMLResponse(_asset("index.html"))

    async def sign_in(self, request: Request) -> Response:
        """The sign-in form's post: urlencoded, a few KB at most, read before anything is parsed."""
        body = await _bounded_body(request, SIGN_IN_BODY)
        if body is None:
            return _refused(413, f"a sign-in body of at most {SIGN_IN_BODY} bytes")
        form = parse_qs(body.decode("utf-8", "replace"))
        token, back = form.get("token", [""])[0], form.get("next", ["/"])[0]
        if self.gate.given(token):
            return _signed_in(self.gate, back)
        return _sign_in_page(back, wrong=True)

    async def asset(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            return PlainTextResponse("not found\n", status_code=404)
        return Response(_asset(name), media_type=ASSETS[name])

    async def favicon(self, request: Request) -> Response:
        return Response(_asset("favicon.svg"), media_type=ASSETS["favicon.svg"])

    async def board(self, request: Request) -> Response:
        return JSONResponse(await self.runner.board())

    async def workspace(self, request: Request) -> Response:
        return await _answer(self.runner.workspace_page(request.path_params["workspace"]))

    async def stream(self, request: Request) -> Response:
        async def boards() -> AsyncIterator[dict[str, Any]]:
            async for board in self.feed.boards():
                yield {"event": "board", "data": board}

        return _events(boards(), self.feed)

    async def logs(self, request: Request) -> Response:
        ws, stream = request.path_params["workspace"], request.query_params.get("stream", "stdout")
        events = log_events(
            self.runner, ws, stream, self.feed.closing, last_event_id=request.headers.get("last-event-id")
        )
        return _events(events, self.feed)

    async def act(self, request: Request) -> Response:
        if not self.gate.same_origin(request):
            return _refused(403, "actions come from the dashboard's own page")
        if not self.gate.may_act(request):
            return _refused(403, "an action needs the bearer token, or the dashboard's page (reload it)")
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return _refused(415, "send the action's arguments as application/json")
        body = await _bounded_body(request, MAX_BODY)
        if body is None:
            return _refused(413, f"a body of at most {MAX_BODY} bytes")
        try:
            args = json.loads(body or b"{}")
        except ValueError:
            return _refused(400, "the body is not JSON")
        if not isinstance(args, dict):
            return _refused(400, "the body must be a JSON object")
        action = ACTIONS.get(request.path_params["action"])
        if action is None:
            return _refused(404, f"no such action; use one of {', '.join(ACTIONS)}")
        try:
            call = action(self.runner, args)
        except ValueError as exc:
            return _refused(400, f"bad arguments: {exc}")
        try:
            return await _answer(call)
        finally:
            self.feed.changed()  # every open page sees what the action did at once


def dashboard_app(runner: Runner, feed: Feed, gate: Gate) -> Starlette:
    return Dashboard(runner, feed, gate).app()


async def _bounded_body(request: Request, limit: int) -> bytes | None:
    """The request's body, or None past `limit` bytes (read no further than that)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def _refused(status: int, error: str) -> Response:
    return JSONResponse({"error": error}, status_code=status)


def _text(args: dict[str, Any], key: str, *, required: bool = True) -> Any:
    value = args.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{key!r} must be a string")
    return value


ACTIONS: Final[dict[str, Callable[[Runner, dict[str, Any]], Awaitable[dict[str, Any]]]]] = {
    "kill": lambda r, a: r.kill(KillRequest(workspace=_text(a, "workspace"))),
    "freeze": lambda r, a: r.stop(),
    "unfreeze": lambda r, a: r.start(),
    "poke": lambda r, a: r.poke(),
    "approve": lambda r, a: r.approve(
        ApproveRequest(
            request=_text(a, "request"), decision=_text(a, "decision"), note=_text(a, "note", required=False)
        ),
        by="dashboard",
    ),
}


async def _answer(call: Awaitable[dict[str, Any]]) -> Response:
    try:
        return JSONResponse(await call)
    except DispatchError as exc:
        status = 404 if isinstance(exc, UnknownWorkspace) else 503 if isinstance(exc, StoreError) else 400
        return JSONResponse({"error": str(exc)}, status_code=status)


def _events(content: AsyncIterator[dict[str, Any]], feed: Feed) -> Response:
    return EventSourceResponse(
        content, ping=SSE_PING_S, shutdown_event=feed.closing, headers={"x-accel-buffering": "no"}
    )


def _page_path(path: str) -> str:
    """Where to go after signing in: one of the dashboard's pages, else its front page."""
    parts = path.split("/")
    page = len(parts) == 3 and parts[1] == "w" and parts[2] not in ("", ".", "..") and "\\" not in path
    return path if page else "/"


def _signed_in(gate: Gate, back: str) -> Response:
    """To the page without the token in the address; the cookie stands for it from now on, and
    the action key rides in the fragment, for the page alone (a fragment never reaches a server)."""
    response = RedirectResponse(f"{_page_path(back)}#key={gate.action_key}", status_code=303)
    assert gate.cookie is not None
    response.set_cookie(
        gate.cookie_name, gate.cookie, max_age=COOKIE_MAX_AGE_S, httponly=True, samesite="lax", path="/"
    )
    return response


def _sign_in_page(back: str, *, wrong: bool) -> Response:
    html = _asset("sign-in.html").decode()
    note = "That token is not this server's." if wrong else ""
    html = html.replace("{{note}}", note).replace("{{next}}", escape(_page_path(back), quote=True))
    return HTMLResponse(html, status_code=401)


def with_dashboard(dashboard: Any, rest: Any) -> Any:
    """One ASGI app: the dashboard's paths to the dashboard, the rest (the MCP endpoint, /metrics,
    the lifespan) to the MCP app."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and is_dashboard_path(scope["path"]):
            await dashboard(scope, receive, send)
        else:
            await rest(scope, receive, send)

    return app
