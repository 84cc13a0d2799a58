"""Where a dispatch may run. A `cwd` or `repo` names a path on this host, so the workspace is
pinned here; otherwise it runs on the named `host`, or on any host of the fleet that has its
agent and the labels it `requires`. A dispatch is refused only when no live host can take it:
this one (what it has, looked up now) or another that advertised it in its heartbeat."""

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .. import validate
from ..actions import DispatchRequest
from ..config import AgentDef
from ..errors import AgentUnavailable, InvalidArgument
from ..launch import supervisor
from ..model import LABEL_RE, AgentRef
from ..store import HostCaps

LIVE_PEER_S = 15.0  # a peer that beat within this long (every 2 s) is live
MAX_LABELS = 16

Peers = Callable[[], Sequence[Mapping[str, Any]]]
Names = Sequence[str] | frozenset[str]


@dataclass(frozen=True, slots=True)
class Fleet:
    here: HostCaps  # what this host can run
    peers: Peers  # every registered peer, with what its host advertised


@dataclass(frozen=True, slots=True)
class Placement:
    host: str | None  # the host it must run on; None: any that can
    requires: tuple[str, ...]
    remote: bool = False  # only another host can run it

    def fields(self) -> dict[str, Any]:
        """The NewWorkspace fields of this placement; its directory is made on this host."""
        return {
            "host": self.host,
            "requires": self.requires,
            "remote": self.remote,
            "dir_host": supervisor.host_id(),
        }


def check_requires(requires: Sequence[str] | None) -> tuple[str, ...]:
    """The labels a dispatch requires, checked: a list of label strings, sorted, once each."""
    if requires is None:
        return ()
    if isinstance(requires, str) or not isinstance(requires, Sequence):
        raise InvalidArgument("requires", 'requires is a list of host labels, e.g. ["gpu", "repo:shop"]')
    if len(requires) > MAX_LABELS:
        raise InvalidArgument("requires", f"requires names {len(requires)} labels; at most {MAX_LABELS}")
    for label in requires:
        if not isinstance(label, str) or not LABEL_RE.match(label):
            raise InvalidArgument(
                "requires",
                f"{label!r} is not a host label: use 1-64 letters, digits and ._/@:+- (e.g. gpu, repo:shop)",
            )
    return tuple(sorted(set(requires)))


def place(ref: AgentRef, agent: AgentDef, req: DispatchRequest, *, pinned: bool, fleet: Fleet) -> Placement:
    """Where the dispatch runs; raises a sentence when nowhere can."""
    here = fleet.here
    host, requires = req.host, check_requires(req.requires)
    validate.text("host", host, max_chars=253)
    me = supervisor.host_id()
    if pinned and host not in (None, me):
        raise InvalidArgument(
            "host",
            f"cwd and repo name a path on this host ({me}), so the run stays here; to use a path on "
            f"{host}, dispatch from {host} itself, or leave out cwd/repo to run anywhere",
        )
    target = me if pinned else host
    if target in (None, me) and _fits(here.pools or (), here.labels, ref.pool, requires):
        return Placement(target, requires)
    live = [] if pinned else live_hosts(fleet.peers(), me)
    if pinned or (not live and target in (None, me)):  # nowhere else to look: say what this host lacks
        if supervisor.find_executable(agent.command[0], agent.env) is None:
            raise AgentUnavailable(str(ref), agent.command[0])
        _refuse_here(ref, requires, here, pinned=pinned)
    if any(
        (target is None or p["host"] == target) and _fits(p["agents"], p["labels"], ref.pool, requires)
        for p in live
    ):
        return Placement(target, requires, remote=True)
    raise InvalidArgument("host" if target else "agent", _nowhere(ref, target, requires, here, live, me))


def _fits(agents: Names, labels: Any, pool: str, requires: tuple[str, ...]) -> bool:
    return pool in agents and set(requires) <= set(labels)


def fresh(peer: Mapping[str, Any]) -> bool:
    """The peer beat within LIVE_PEER_S."""
    return float(peer.get("heartbeat_at") or 0) > time.time() - LIVE_PEER_S


def live_hosts(peers: Sequence[Mapping[str, Any]], me: str) -> list[Mapping[str, Any]]:
    """The peers of other hosts that beat lately and advertised what their host runs."""
    return [p for p in peers if fresh(p) and p.get("host") != me and p.get("agents") is not None]


def describe(host: str, agents: Names, labels: Names) -> str:
    return f"{host} (agents: {_names(agents)}; labels: {_names(labels)})"


def _refuse_here(ref: AgentRef, requires: tuple[str, ...], here: HostCaps, *, pinned: bool) -> None:
    missing = sorted(set(requires) - here.labels)
    raise InvalidArgument(
        "requires",
        f"this host ({supervisor.host_id()}) lacks "
        + (f"the labels {', '.join(missing)}" if missing else f"the labels pool {ref.pool!r} needs")
        + (", and a cwd or repo keeps the run here" if pinned else ", and no other host of the fleet is live")
        + "; add them under host: labels: in agents.yaml or leave out requires; nothing was queued",
    )


def _nowhere(
    ref: AgentRef,
    target: str | None,
    requires: tuple[str, ...],
    here: HostCaps,
    live: Sequence[Mapping[str, Any]],
    me: str,
) -> str:
    wanted = f"agent {str(ref)!r}" + (f" with labels {', '.join(requires)}" if requires else "")
    hosts = [describe(f"{me}, this host", here.pools or (), here.labels)]
    hosts += [describe(p["host"], p["agents"], p["labels"]) for p in live]
    if target:
        problem = f"host {target!r} is not live or cannot run {wanted}"
    else:
        problem = f"no live host of the fleet can run {wanted}"
    return (
        f"{problem}; live hosts: {'; '.join(hosts)}. Install the agent's executable on a host (or add "
        "the labels under host: labels: in its agents.yaml) and run `dispatch-runner serve` there; "
        "nothing was queued"
    )


def _names(values: Names) -> str:
    return ", ".join(sorted(values)) or "none"
