"""How the MCP server is reached: stdio (what clients start; the handshake-only loop, with stdin
claimed so no child inherits the protocol streams), or SSE / streamable HTTP (bind checks,
DNS-rebinding protection, a bearer token), and the signals that end serving.
"""

import fcntl
import hmac
import ipaddress
import logging
import os
import select
import signal
import socket
import stat
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final

import anyio
import anyio.abc
from mcp.server.mcpserver import MCPServer
from mcp.server.runner import serve_loop
from mcp.server.stdio import stdio_server
from mcp.server.transport_security import TransportSecuritySettings

from ..actions import LogsRequest
from ..errors import DispatchError, InvalidArgument
from ..runner import LOGS_PATH, Runner
from .private import lowlevel
from .push import Pusher

CHANNEL_CAPABILITY: Final = "claude/channel"
LOOPBACK_NAMES: Final = ("localhost", "127.0.0.1", "::1")
log = logging.getLogger("dispatch_runner.mcp")


async def serve_stdio(runner: Runner, mcp: MCPServer, pusher: Pusher) -> None:
    low = lowlevel(mcp)
    # capabilities are read from the handlers registered by now (subscribe, setLevel)
    options = low.create_initialization_options(experimental_capabilities={CHANNEL_CAPABILITY: {}})
    # The task group's scope covers stdio_server too: its exit waits for the stdin reader.
    with _claimed_stdin() as stdin:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_on_signal, tg.cancel_scope.cancel)
            async with low.lifespan(low) as state, stdio_server(stdin=stdin) as (read, write):
                # fds 0 and 1 are claimed now: no child can inherit the protocol streams
                await tg.start(runner.serve)
                await tg.start(pusher.run)
                await serve_loop(low, read, write, lifespan_state=state, init_options=options)
                tg.cancel_scope.cancel()  # stdin closed: stop our tasks; the agents' shims go on


class _StdinLines:
    """stdin as an async iterator of lines that a cancellation interrupts at once. The SDK reads
    stdin in a worker thread nothing can interrupt, so SIGTERM could not end an idle server."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buffer = b""

    def __aiter__(self) -> "_StdinLines":
        return self

    async def __anext__(self) -> str:
        while b"\n" not in self._buffer:
            await anyio.wait_readable(self.fd)
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                if not self._buffer:
                    raise StopAsyncIteration
                line, self._buffer = self._buffer, b""
                return line.decode("utf-8", errors="replace")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode("utf-8", errors="replace") + "\n"


@contextmanager
def _claimed_stdin() -> Iterator[Any]:
    """Read the protocol from a private duplicate of fd 0 and point fd 0 at /dev/null meanwhile,
    so no child process can read the protocol stream. What epoll cannot watch (a regular file,
    /dev/null) is served by the SDK's own reader, which sees its end at once."""
    if not _pollable(0):
        yield None
        return
    private = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 3)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    try:
        yield _StdinLines(private)
    finally:
        os.dup2(private, 0)
        os.close(private)


def _pollable(fd: int) -> bool:
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        poller = select.epoll()
    except OSError:
        return False
    try:
        poller.register(fd, select.EPOLLIN)
    except OSError:  # /dev/null and other devices epoll refuses (EPERM)
        return False
    finally:
        poller.close()
    return True


def stdin_closed() -> bool:
    try:
        os.fstat(0)
    except OSError:
        return True
    return False


async def _on_signal(stop: Callable[[], None]) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("signal %s: leaving; running agents go on", signum)
            stop()
            return


# ---- HTTP --------------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    if not is_loopback(host) and not token:
        raise InvalidArgument(
            "host",
            f"refusing to serve HTTP on {host!r} without a bearer token: "
            "anyone who can reach it could run agents. Pass --token or set "
            "DISPATCH_RUNNER_TOKEN, or bind 127.0.0.1",
        )


def transport_security(host: str) -> TransportSecuritySettings:
    """DNS-rebinding protection: only loopback names (and the bound name) in Host and Origin."""
    names = ["127.0.0.1", "localhost", "[::1]"]
    try:
        wildcard = ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        wildcard = False
    if wildcard:
        # clients reach 0.0.0.0 under names we cannot know; the required token guards it
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    if not is_loopback(host):
        names.append(f"[{host}]" if ":" in host else host)
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[f"{n}:*" for n in names],
        allowed_origins=[f"{scheme}://{n}:*" for n in names for scheme in ("http", "https")],
    )


class BearerAuth:
    """ASGI wrapper: every HTTP request needs `Authorization: Bearer <token>` (401 otherwise).
    Covers every route, not only the MCP endpoint; the lifespan scope passes through."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            got = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            if not hmac.compare_digest(got, self.expected):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                else:
                    await _unauthorized(send)
                return
        await self.app(scope, receive, send)


async def _unauthorized(send: Any) -> None:
    body = b"missing or wrong bearer token: send Authorization: Bearer <token>\n"
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", b"Bearer"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def advertised_url(host: str, port: int) -> str | None:
    """How other hosts of the fleet reach this peer: $DISPATCH_RUNNER_URL, else the bound address
    (this host's name for a wildcard bind); None for a loopback bind (no other host reaches it)."""
    explicit = os.environ.get("DISPATCH_RUNNER_URL")
    if explicit:
        return explicit
    if is_loopback(host):
        return None
    try:
        name = socket.gethostname() if ipaddress.ip_address(host.strip("[]")).is_unspecified else host
    except ValueError:
        name = host
    return f"http://{f'[{name}]' if ':' in name else name}:{port}"


def request_from_query(query: Mapping[str, str]) -> LogsRequest:
    """The LogsRequest of a `GET /runner/logs` query string; ValueError/KeyError when malformed."""
    return LogsRequest(
        workspace=query["workspace"],
        run=int(query["run"]) if "run" in query else None,
        stream=query.get("stream", "stdout"),
        offset=int(query.get("offset", 0)),
        limit=int(query.get("limit", 200)),
        cursor=int(query["cursor"]) if "cursor" in query else None,
        whole_lines=query.get("whole_lines") == "1",
    )


def add_peer_routes(mcp: MCPServer, runner: Runner) -> None:
    """`GET /runner/logs`: a page of a run's log on this host, for peers of other hosts (behind
    the same bearer token as the MCP endpoint)."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response

    async def logs(request: Request) -> Response:
        try:
            req = request_from_query(request.query_params)
            return JSONResponse(await runner.logs(req, here_only=True))
        except (KeyError, ValueError) as exc:
            return JSONResponse({"error": f"bad query: {exc}"}, status_code=400)
        except DispatchError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)

    mcp.custom_route(LOGS_PATH, methods=["GET"])(logs)


async def serve_http(
    runner: Runner, mcp: MCPServer, pusher: Pusher, transport: str, host: str, port: int, token: str | None
) -> None:
    import uvicorn

    class Server(uvicorn.Server):
        @contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn re-raises the signal after shutdown, which would end the process before
            # our cleanup; _on_signal handles them instead
            yield

    security = transport_security(host)
    if token:  # peers of other hosts read this host's logs with the fleet's token, never without
        runner.advertise(advertised_url(host, port), token)
        add_peer_routes(mcp, runner)
    from ..web import Feed, Gate, dashboard_app, with_dashboard  # starlette: only for HTTP serving
    from .metrics import add_metrics_route, host_allowed

    add_metrics_route(mcp, runner, security)
    if transport == "http":
        app = mcp.streamable_http_app(transport_security=security, host=host)
    else:
        app = mcp.sse_app(transport_security=security, host=host)
    feed = Feed(runner)
    gate = Gate(token, lambda name: host_allowed(security, name), port=port)
    server = Server(
        uvicorn.Config(
            with_dashboard(dashboard_app(runner, feed, gate), BearerAuth(app, token) if token else app),
            host=host,
            port=port,
            log_level="warning",
            lifespan="on",
        )
    )

    def stop() -> None:
        feed.close()  # the dashboard's streams end, so no open page holds up the exit
        server.should_exit = True

    async with anyio.create_task_group() as tg:
        await tg.start(runner.serve)
        await tg.start(pusher.run)
        await tg.start(feed.run)
        tg.start_soon(_on_signal, stop)
        await server.serve()
        tg.cancel_scope.cancel()
