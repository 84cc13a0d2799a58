"""The store's logic on SQL, once for every backend: the sides read rows, ask the lifecycle for
a plan and write it with the backend's named queries (`db.q.<name>`).

    core.py     what a backend provides: write transactions, reads, events, the claim lock
    conn.py     the driver seam: a connection with its named queries, rows by name or position
    queue.py    enqueue and its ETA, queue positions, claims
    runs.py     a run's start and end, reservations given back
    reads.py    events, workspaces, the status snapshot (snapshot.py)
    control.py  freeze, kill, peers, garbage collection
    followups.py  messages and resume runs, the tree of sub-agents
    outbox.py   completions owed to clients, each delivered once
    groups.py   fan-out groups queued at once;  deps.py  what an end releases, cancels, completes
    schedules.py  cron schedules and the compare-and-set race for each tick
    approvals.py  sub-agents' permission requests, each answered once
    rows.py     rows to values and back;  queries.py  reading queries.sql and migrations/
"""

from .approvals import ApprovalSide
from .control import ControlSide
from .followups import FollowUpSide
from .groups import GroupSide
from .outbox import OutboxSide
from .queue import QueueSide
from .reads import ReadSide
from .rows import LANE_SEP, lane_of
from .runs import RunSide
from .schedules import ScheduleSide


class SQLStore(
    GroupSide,
    QueueSide,
    RunSide,
    ReadSide,
    ControlSide,
    FollowUpSide,
    OutboxSide,
    ScheduleSide,
    ApprovalSide,
):
    """The Store protocol over a backend's core: one side per concern."""


__all__ = ["LANE_SEP", "SQLStore", "lane_of"]
