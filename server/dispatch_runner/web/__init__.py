"""The dashboard: a page served on the HTTP transport's bind that shows the fleet and steers it
through the runner's actions, updated by push (server-sent events) from the store's events."""

from .app import dashboard_app, with_dashboard
from .auth import Gate
from .feed import Feed

__all__ = ["Feed", "Gate", "dashboard_app", "with_dashboard"]
