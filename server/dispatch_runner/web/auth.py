"""Who may use the dashboard, and from where.

A browser cannot send the bearer token on a page load, so a person gives it once (`/?token=…`, or
the form the page shows without it) and gets a cookie instead: HttpOnly, SameSite=Strict, holding
an HMAC of the token rather than the token itself, so it opens the dashboard and nothing else.
Requests must be addressed to a name the bind allows (the DNS-rebinding check of the MCP
endpoint), and an action must come from the dashboard's own origin, as JSON: a page of another
site can neither read the dashboard nor make it act.
"""

import hashlib
import hmac
from collections.abc import Callable
from urllib.parse import urlsplit

from starlette.requests import Request

COOKIE = "dispatch_runner_dashboard"
COOKIE_MAX_AGE_S = 30 * 86400


class Gate:
    def __init__(self, token: str | None, host_allowed: Callable[[str], bool]) -> None:
        self.token = token
        self.host_allowed = host_allowed
        self.cookie = hmac.new(token.encode(), b"dashboard", hashlib.sha256).hexdigest() if token else None

    def given(self, token: str) -> bool:
        """Whether `token` (from the form or the query) is the bearer token."""
        return self.token is not None and hmac.compare_digest(token.encode(), self.token.encode())

    def authorized(self, request: Request) -> bool:
        if self.token is None or self.cookie is None:
            return True
        header = request.headers.get("authorization", "")
        if hmac.compare_digest(header.encode(), f"Bearer {self.token}".encode()):
            return True
        return hmac.compare_digest(request.cookies.get(COOKIE, "").encode(), self.cookie.encode())

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
