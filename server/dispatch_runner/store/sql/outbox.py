"""The outbox side of a SQL store: completions owed to clients, each delivered once.

A row is written with the exit that ends a workspace (runs.py, in the same transaction), owed to
the client that dispatched it. Whoever hands it to a session first — the MCP surface pushing it,
or `wait` returning it — takes it with a compare-and-set on `delivered_at IS NULL`; the loser
sends nothing. A send that fails gives it back.
"""

import json
from collections.abc import Sequence
from typing import Final

from ...model import Event
from ..base import Owed
from .conn import Row
from .core import SQLCore

PAGE: Final = 100


class OutboxSide(SQLCore):
    def owed(self, client: str, *, after: int = 0, limit: int = PAGE) -> list[Owed]:
        """The completions owed to `client` that no session has received, oldest first, from
        past the cursor `after` (an outbox id: what a delivery scan has already looked at). Every
        peer's sessions ask at each completion: a read that never waits behind a write."""
        args = (client, after, limit)
        rows = self._reading(lambda db: db.execute(db.q.outbox_pending, args).fetchall(), separate=True)
        return [_owed(r) for r in rows]

    def undelivered_of(self, workspaces: Sequence[str]) -> list[Owed]:
        """The completions of these workspaces that no session has received (whoever is owed them)."""
        if not workspaces:
            return []
        sql = self.q.expand("outbox_undelivered_of", ids=self.q.marks(len(workspaces)))
        rows = self._reading(lambda db: db.execute(sql, list(workspaces)).fetchall(), separate=True)
        return [_owed(r) for r in rows]

    def claim_delivery(self, workspace: str, event_id: int, *, client: str, to: str, now: float) -> bool:
        """Compare-and-set: the completion (`event_id` of `workspace`) owed to `client` goes to
        the session `to`. True for the one caller that wins it (it sends it, or has already);
        False when it was delivered already, or is owed to another client."""
        args = (now, to, workspace, event_id, client)
        return bool(self._write(lambda db: db.execute(db.q.outbox_deliver, args).rowcount == 1))

    def release_delivery(self, workspace: str, event_id: int, *, to: str) -> bool:
        """A claimed completion that could not be sent to `to` is owed again (another session of
        its client gets it). False when `to` did not hold it."""
        args = (workspace, event_id, to)
        return bool(self._write(lambda db: db.execute(db.q.outbox_release, args).rowcount == 1))


def _owed(r: Row) -> Owed:
    event = Event(
        type=r["type"],
        workspace=r["workspace"],
        at=r["at"],
        origin=r["origin"],
        data=json.loads(r["data"]),
        id=r["event"],
    )
    return Owed(id=r["id"], client=r["client"], event=event)
