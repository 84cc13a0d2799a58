"""What a claim takes: the best head among the lanes the lifecycle opens and this host can run —
including workspaces with a preference list, which take the first of their entries with room —
and, for a critical head that finds its pool full, the run it may preempt."""

from collections.abc import Callable, Sequence

from ... import allowance
from ...policy import PoolState
from .. import lanes as gates
from .. import lifecycle
from ..base import HostCaps, Limits, RouteEntry, RunRow, WorkspaceRow
from .conn import Conn
from .rows import lane_from, lane_of, read_pool_state, read_spent, requires_of, run_row, workspace_row

ROUTED_PAGE = 16  # routed workspaces looked at per claim, from the front of the queue


def _running_counts(db: Conn) -> tuple[dict[str, int], dict[tuple[str, str | None], int]]:
    """Running (and reserved) runs per pool and per (pool, model)."""
    pools: dict[str, int] = {}
    models: dict[tuple[str, str | None], int] = {}
    for r in db.execute(db.q.running_by_lane):
        pools[r["pool"]] = pools.get(r["pool"], 0) + r["n"]
        models[(r["pool"], r["model"])] = r["n"]
    return pools, models


def _pool_states(db: Conn, lanes: Sequence[lifecycle.Lane], limits: Limits) -> dict[str, PoolState]:
    """The state of every pool of these lanes, and of each model with an adaptive limit of its
    own (kept under pool:model)."""
    keys = {lane.pool for lane in lanes}
    keys |= {f"{lane.pool}:{lane.model}" for lane in lanes if lane.model} & set(limits.adaptive)
    return {key: read_pool_state(db, key) for key in keys}


class Pick:
    """The best head among the lanes the lifecycle opens and this host can run, one index probe
    per open lane (a page of it, when the lane's first workspaces need another host or labels
    this one lacks); and the times at which a time-gated pool opens. After a call: `entry`, the
    route entry a routed head takes (None: its own lane), `why` each closed lane is closed
    ("pool:model" keys), `used_up` allowances found used up."""

    PAGE = 16

    def __init__(self, db: Conn, now: float, host: str, can: HostCaps | None) -> None:
        self.db, self.now, self.host, self.can = db, now, host, can
        self.used_up: list[tuple[str, float]] = []  # allowances found used up: (key, renews at)
        self.entry: RouteEntry | None = None
        self.why: dict[str, str] = {}
        self._open: set[lifecycle.Lane] = set()
        self._closed_full: list[lifecycle.Lane] = []
        self._running: tuple[dict[str, int], dict[tuple[str, str | None], int]] = ({}, {})
        self._pools: dict[str, PoolState] = {}

    def __call__(
        self, limits: Limits, *, lock: Callable[[list[str]], None]
    ) -> tuple[WorkspaceRow | None, list[float]]:
        """The pools with queued work (and those a routed head may move to) are locked (`lock`, in
        sorted order) before their runs are counted."""
        db = self.db
        queued = [lane_from(r[0]) for r in db.execute(db.q.queued_lanes).fetchall()]
        routed = [
            workspace_row(r)
            for r in db.execute(db.q.routed_heads, (self.now, self.host, ROUTED_PAGE)).fetchall()
        ]
        lanes = list(dict.fromkeys([*queued, *(_lane(e) for ws in routed for e in ws.route)]))
        lock(sorted({lane.pool for lane in lanes}))
        running_pool, running_model = self._running = _running_counts(db)
        pools = self._pools = _pool_states(db, lanes, limits)
        budgeted = {k for lane in lanes for k in allowance.allowance_keys(lane.pool, lane.model)}
        budgeted &= set(limits.allowance)
        spent = read_spent(db, budgeted, limits.rates, self.now) if budgeted else None
        opened = gates.open_lanes(
            lanes,
            pools=pools,
            running_pool=running_pool,
            running_model=running_model,
            limits=limits,
            now=self.now,
            spent=spent,
        )
        self._open = set(opened.taken)
        self.why = {f"{lane.pool}:{lane.model or ''}": text for lane, text in opened.why.items()}
        self._closed_full = [lane for lane in queued if opened.why.get(lane) == "full"]
        if spent is not None:
            self.used_up = [
                u
                for lane in lanes
                if (u := allowance.used_up(lane.pool, lane.model, limits, spent, self.now))
            ]
        heads = [h for lane in opened.taken if lane in queued and (h := self._head(lane)) is not None]
        heads += [
            ws
            for ws in routed
            if lifecycle.fits_labels(ws.requires, self.can) and self._entry(ws) is not None
        ][:1]
        best = lifecycle.best_head(heads)
        if best is not None and best.route:
            self.entry = self._entry(best)
        return best, opened.wake

    def _entry(self, ws: WorkspaceRow) -> RouteEntry | None:
        """The first entry of a routed workspace with room, that this host can run. One whose
        next run resumes its agent's session (a follow-up, a preempted run) stays on its agent:
        another one's CLI knows nothing of that session."""
        resuming = ws.next_input is not None and ws.session_id is not None
        for entry in ws.route:
            if resuming and (entry.pool, entry.model) != (ws.pool, ws.model):
                continue
            if _lane(entry) in self._open and lifecycle.runs_pool(self.can, entry.pool):
                return entry
        return None

    def _head(self, lane: lifecycle.Lane) -> WorkspaceRow | None:
        """The lane's first workspace this host may run. A host without labels asks SQL for the
        first that requires none; one with labels reads on page by page (keyed on the queue
        order: each row is read once) past those that require labels it lacks."""
        db, key = self.db, lane_of(lane.pool, lane.model)
        runs_pool = lifecycle.runs_pool(self.can, lane.pool)
        if runs_pool and (self.can is None or not self.can.labels):
            row = db.execute(db.q.lane_head_plain, (key, self.now, self.host)).fetchone()
            return workspace_row(row) if row is not None else None
        sql = db.q.lane_head if runs_pool else db.q.lane_head_pinned
        after: tuple[int, int, float, int] = (-1, 0, 0.0, 0)
        while True:
            rows = db.execute(sql, (key, self.now, self.host, *after, self.PAGE)).fetchall()
            for row in rows:
                if lifecycle.fits_labels(requires_of(row), self.can):  # before decoding the whole row
                    return workspace_row(row)
            if len(rows) < self.PAGE:
                return None
            last = rows[-1]
            after = (last["priority"], last["share_rank"], last["created_at"], last["seq"])

    def preemption(self, limits: Limits) -> RunRow | None:
        """A critical head whose pool is full, in a pool that allows preemption, stops the
        lowest-priority preemptible run there that has run at least min_runtime_s — one at a
        time per pool: none while an earlier victim is still stopping. The victim's run is
        marked (kill_requested = PREEMPT) and returned, for the caller to signal."""
        db = self.db
        for lane in self._closed_full:
            min_runtime = limits.preempt_after_s.get(lane.pool)
            if min_runtime is None:
                continue
            key = lane_of(lane.pool, lane.model)
            if db.execute(db.q.critical_head, (key, self.now)).fetchone() is None:
                continue
            if db.execute(db.q.preempting_in_pool, (lane.pool,)).fetchone()[0]:
                continue
            anywhere = gates.pool_binds(
                lane, limits, self._pools.get(lane.pool, PoolState()), running=self._running
            )  # else only a run of its own model frees the slot it needs
            args = (lane.pool, key, anywhere, self.now - min_runtime)
            row = db.execute(db.q.preempt_victim, args).fetchone()
            if row is None:
                continue
            victim = run_row(row)
            if db.execute(db.q.request_preempt, (victim.id,)).rowcount == 1:
                return victim
        return None


def _lane(entry: RouteEntry) -> lifecycle.Lane:
    return lifecycle.Lane(entry.pool, entry.model)
