"""Preference lists (reference 001's router): `agent` may be one agent, a list in preference
order, or the name of a route in agents.yaml. Each entry is checked as a dispatch of its own
(its agent defined, placeable, its argv fitting); entries that cannot run anywhere are left out,
and the dispatch is refused only when none can. The claim then takes the first entry with room
(store/sql/queue.py), and a run that hits a rate limit moves on to the next."""

from collections.abc import Callable, Sequence
from typing import TypeVar

from .. import validate
from ..config import Config
from ..errors import DispatchError, InvalidArgument, UnknownAgent
from ..model import AgentRef
from ..store import RouteEntry

MAX_ROUTE = 8  # entries in one preference list
P = TypeVar("P")


def check_agent(agent: object) -> None:
    """An agent, a route's name or a preference list: strings, at most MAX_ROUTE of them."""
    if agent is None or isinstance(agent, str):
        validate.text("agent", agent, max_chars=4096)
        return
    if not isinstance(agent, list | tuple) or not agent or len(agent) > MAX_ROUTE:
        raise InvalidArgument(
            "agent",
            f'agent is an agent ("claude"), a route\'s name, or a list of 1-{MAX_ROUTE} agents '
            'such as ["claude:opus", "codex"]',
        )
    for entry in agent:
        validate.text("agent", entry, required=True, max_chars=200)


def refs(cfg: Config, agent: str | Sequence[str] | None) -> list[AgentRef]:
    """The agents a dispatch names, in preference order: a route's entries, a list's, or one."""
    if agent is None:
        return [AgentRef.parse(cfg.default_agent)]
    if isinstance(agent, str):
        named = cfg.routes.get(agent.strip())
        return [AgentRef.parse(e) for e in named] if named else [AgentRef.parse(agent)]
    if not isinstance(agent, Sequence) or not agent:
        raise InvalidArgument(
            "agent",
            'agent is an agent ("claude"), a route\'s name, or a list such as ["claude:opus", "codex"]',
        )
    if len(agent) > MAX_ROUTE:
        raise InvalidArgument("agent", f"agent lists {len(agent)} entries; at most {MAX_ROUTE}")
    parsed = [AgentRef.parse(a) for a in agent]
    seen: set[AgentRef] = set()
    for ref, text in zip(parsed, agent, strict=True):
        if ref in seen:
            raise InvalidArgument("agent", f"agent lists {text!r} twice")
        seen.add(ref)
    return parsed


def resolve(
    refs: Sequence[AgentRef], entry: Callable[[AgentRef], tuple[RouteEntry, P]]
) -> tuple[tuple[RouteEntry, ...], P]:
    """The entries that can run (each checked by `entry`) and the first one's placement. One that
    cannot is left out of a list; if none can, the first one's refusal is the answer."""
    made: list[RouteEntry] = []
    placement: P | None = None
    first_error: DispatchError | None = None
    for ref in refs:
        try:
            route_entry, where = entry(ref)
        except DispatchError as exc:  # e.g. no host has it, or its sandbox ceiling refuses
            if len(refs) == 1 or isinstance(exc, UnknownAgent):
                raise  # a typo in a list is an error, not an entry to skip
            first_error = first_error or exc
            continue
        made.append(route_entry)
        placement = where if placement is None else placement
    if not made or placement is None:
        assert first_error is not None
        raise first_error
    return tuple(made), placement
