"""Completions are never dropped: each is owed to the client that dispatched it (the store's
outbox, written in the transaction that records the exit) and reaches one session of that client
exactly once (clients.py says who a client is).

Exactly once across processes: a session first takes a completion in the store (compare-and-set
on "not delivered yet"), then sends it; a send that fails gives it back. So of two servers of one
client, only the one that took it sends. `wait` hands completions over too (`handed_over`).

Who takes it: the dispatching session, at once. Another session of the same client when the
dispatching one is gone: it left this process, or its process is gone (crashed, killed,
restarted: no longer a registered peer), or — its process still living — once ORIGIN_GRACE_S
have passed since the completion (a live server takes its own within milliseconds). Each session
looks when it connects, when a completion reaches this process, when a session leaves, when a
held-back completion falls due, and every POLL_S (one given back by another process), reading
what is still undelivered from the start (an index of undelivered rows).
"""

import logging
import math
import time
from collections.abc import Container, Iterable, Mapping, Sequence
from typing import Any, Final

import anyio
import anyio.abc
import anyio.to_thread

from ..events import Event
from ..runner import Runner
from .clients import Client, Clients
from .push import SEND_TIMEOUT_S, channel_message, is_pushed, send_channel, workspace_view

log = logging.getLogger("dispatch_runner.mcp")

ORIGIN_GRACE_S: Final = 5.0
POLL_S: Final = 5.0
PAGE: Final = 100
NOT_PUSHED: Final = "-"  # delivered_to of an outbox row that ends no workspace: settled, never sent


def due_at(event: Event, client: Client, clients: Clients, *, peers: Container[str], grace_s: float) -> float:
    """When `client` may take this completion owed to its client: at once (0) for the session
    that dispatched it, or when that session is gone (from this process, or with its process:
    its peer id is no longer among the live `peers`); never (inf) while it is connected here;
    `grace_s` after the completion when it was a live process's session."""
    origin = event.origin
    if origin is None or origin == client.key:
        return 0.0
    if clients.is_local(origin):
        return math.inf if clients.connected(origin) else 0.0
    if origin.rpartition("/")[0] not in peers:  # connection keys are <peer id>/<n>
        return 0.0
    return event.at + grace_s


class Outbox:
    """Delivers the completions owed to the clients of this process's sessions."""

    def __init__(
        self, runner: Runner, clients: Clients, *, grace_s: float = ORIGIN_GRACE_S, poll_s: float = POLL_S
    ) -> None:
        self.runner = runner
        self.clients = clients
        self.grace_s = grace_s
        self.poll_s = poll_s
        self.delivered = 0  # owed completions sent
        self.released = 0  # owed completions given back after a failed send
        self._wake = anyio.Event()
        clients.on_change(self.wake)

    def wake(self) -> None:
        """Look again now (a session came or left, a completion reached this process)."""
        self._wake.set()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            self._wake = anyio.Event()  # a wake-up from here on is not missed
            due = await self.deliver_all()
            with anyio.move_on_after(min(self.poll_s, max(due - time.time(), 0.0))):
                await self._wake.wait()

    async def deliver_all(self) -> float:
        """Deliver what each connected session's client is owed. Returns when a completion held
        back for its dispatching session falls due (inf: none is)."""
        due = math.inf
        for client in self.clients:
            try:
                due = min(due, await self.deliver(client))
            except Exception:  # the task edge: a store that fails now is asked again later
                log.exception("delivering completions to %s failed", client.key)
        return due

    async def deliver(self, client: Client) -> float:
        """Take and send, oldest first, what `client`'s client is owed; returns when a completion
        held back falls due (inf: none is). A send that fails ends the pass (the connection is
        broken or stalled: later, or another session)."""
        if client.connection is None:
            return math.inf
        # from the start each time: owed() reads only what is still undelivered (an index), and a
        # completion another session took and gave back (its send failed) must be seen again
        due, after = math.inf, 0
        while True:
            page = await _db(self.runner.store.owed, client.owed_to, after=after, limit=PAGE)
            peers = await self._live_peers(page)
            for owed in page:
                after = owed.id
                at = due_at(owed.event, client, self.clients, peers=peers, grace_s=self.grace_s)
                if at > time.time():
                    due = min(due, at)
                elif not await self._take(client, owed.client, owed.event):
                    return due
            if len(page) < PAGE:
                return due

    async def _live_peers(self, page: Sequence[Any]) -> frozenset[str]:
        """The peers registered in the store (a serving peer forgets dead ones within seconds),
        read only when a completion of the page was dispatched through another process."""
        if not any(o.event.origin and not self.clients.is_local(o.event.origin) for o in page):
            return frozenset()
        return frozenset(p["id"] for p in await _db(self.runner.store.peers))

    async def _take(self, client: Client, owed_to: str, event: Event) -> bool:
        """Take the completion in the store, then send it; False when the send failed (it is
        given back). One that ends no workspace (a lost run that is retried, the failure a dead
        letter also reports) is settled without a push."""
        assert event.workspace is not None  # an outbox row always names its workspace
        pushed = is_pushed(event)
        to = client.key if pushed else NOT_PUSHED
        store, now = self.runner.store, time.time()
        if not await _db(store.claim_delivery, event.workspace, event.id, client=owed_to, to=to, now=now):
            return True  # another session (of this or another server) took it
        if not pushed or not client.reserve(event.id):
            return True  # already sent to this session live (it subscribed to every completion)
        try:
            message = channel_message(event, await workspace_view(self.runner, event.workspace))
            assert client.connection is not None
            with anyio.fail_after(SEND_TIMEOUT_S):
                await send_channel(client.connection, message)
        except Exception:  # a connection that broke meanwhile: another session gets it
            client.unreserve(event.id)
            await _db(store.release_delivery, event.workspace, event.id, to=client.key)
            self.released += 1
            log.warning("could not push %s's completion to %s; it is owed again", event.workspace, client.key)
            return False
        self.delivered += 1
        return True


async def handed_over(runner: Runner, client: Client, undelivered: Iterable[Mapping[str, Any]]) -> None:
    """`wait` returned these completions to `client`'s session: those owed to its client are
    delivered by that answer (never pushed later)."""
    for item in undelivered:
        workspace, event_id = item["workspace"], int(item["event_id"])
        if await _db(
            runner.store.claim_delivery,
            workspace,
            event_id,
            client=client.owed_to,
            to=client.key,
            now=time.time(),
        ):
            client.reserve(event_id)


async def _db(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """A store call in a worker thread (every store call blocks)."""
    return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))
