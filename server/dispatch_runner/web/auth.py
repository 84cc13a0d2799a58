"""Who may use the dashboard, and from where.

A browser cannot send the bearer token on a page load, so a person gives it once (`/?token=…`, or
the form the page shows without it) and gets a cookie instead: HttpOnly, SameSite=Lax, named after
the port and holding an HMAC of the token and the port rather than the token, so it opens this
server's dashboard and nothing else. The cookie only reads. Cookies are sent to every port of a
host, so an action also needs the action key, another HMAC of the token and the port, which is
handed out only to whoever gave the token: in the fragment of the sign-in redirect, which the page
keeps in its origin's localStorage (no other port or site can read it, and the server never sees a
fragment again). Or the bearer token itself. Every request must be addressed to a name the bind
allows (the DNS-rebinding check of the MCP endpoint), and an action must come from the
dashboard's own origin, as JSON.
"""

import hashlib
import hmac
from collections.abc import Callable
from urllib.parse import urlsplit

from starlette.requests import Request

COOKIE_MAX_AGE_S = 30 * 86400
ACTION_HEADER = "x-dispatch-runner-action"


def _derived(token: str, purpose: bytes) -> str:
    return hmac.new(token.encode(), purpose, hashlib.sha256).hexdigest()


class Gate:
    def __init__(self, token: str | None, host_allowed: Callable[[str], bool], *, port: int) -> None:
        self.token = token
        self.host_allowed = host_allowed
        self.cookie_name = f"dispatch_runner_{port}"
        self.cookie = _derived(token, b"dashboard:%d" % port) if token else None
        self.action_key = _derived(token, b"dashboard actions:%d" % port) if token else ""

    def given(self, token: str) -> bool:
        """Whether `token` (from the form or the query) is the bearer token."""
        return self.token is not None and hmac.compare_digest(token.encode(), self.token.encode())

    def _bearer(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        return self.token is not None and hmac.compare_digest(
            header.encode(), f"Bearer {self.token}".encode()
        )

    def authorized(self, request: Request) -> bool:
        """May read: no token is set, or the bearer token or the dashboard's cookie came."""
        if self.cookie is None or self._bearer(request):
            return True
        return hmac.compare_digest(request.cookies.get(self.cookie_name, "").encode(), self.cookie.encode())

    def may_act(self, request: Request) -> bool:
        """May act: no token is set, or the bearer token, or the cookie and the page's action key."""
        if self.cookie is None or self._bearer(request):
            return True
        key = request.headers.get(ACTION_HEADER, "")
        return self.authorized(request) and hmac.compare_digest(key.encode(), self.action_key.encode())

    def addressed_here(self, request: Request) -> bool:
        return self.host_allowed(request.headers.get("host", ""))

    def same_origin(self, request: Request) -> bool:
        """An action's Origin (browsers always send one with a POST) names this server, as the
        request's Host does; a client without a browser sends none."""
        origin = request.headers.get("origin")
        if origin is None:
            return True
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and parts.netloc == request.headers.get("host")
