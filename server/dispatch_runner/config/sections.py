"""The sections of agents.yaml about policy rather than agents: `dispatch:`, this host's labels,
per-pool policy (`pools:`), daily allowances (`allowance:`) and preference lists (`routes:`)."""

from dataclasses import replace
from typing import Any, Final

import yaml

from ..adaptive import Aimd
from ..allowance import Allowance
from ..errors import InvalidArgument
from ..model import LABEL_RE, AgentRef
from . import sandboxes
from .schema import Config, PoolPolicy
from .yaml_reader import YamlReader as _Reader


def flag(r: _Reader, v: yaml.Node, at: str) -> bool:
    value = r.scalar(v, at)
    if not isinstance(value, bool):
        raise r.fail(v, at, "expected true or false")
    return value


def _labels(r: _Reader, node: yaml.Node, where: str) -> frozenset[str]:
    labels = r.strings(node, where)
    for label in labels:
        if not LABEL_RE.match(label):
            raise r.fail(
                node,
                where,
                f"{label!r} is not a label: use letters, digits and ._/@:+- (e.g. gpu, repo:shop)",
            )
    return frozenset(labels)


def host(r: _Reader, node: yaml.Node, c: Config) -> Config:
    items = r.mapping(node, "host")
    r.only(items, ("labels",), "host")
    if "labels" not in items:
        return c
    return replace(c, host_labels=_labels(r, items["labels"][1], "host.labels"))


_DISPATCH_KEYS: Final = (
    "default_agent",
    "default_template",
    "workspace_root",
    "allowed_roots",
    "max_attempts",
    "timeout_s",
    "kill_grace_s",
    "reservation_timeout_s",
    "lease_s",
    "retention_days",
    "max_task_bytes",
    "max_depth",
    "max_descendants",
    "approval_timeout_s",
    "fair_share",
    "promote_after_s",
)


def dispatch(r: _Reader, node: yaml.Node, c: Config) -> Config:
    items = r.mapping(node, "dispatch")
    r.only(items, _DISPATCH_KEYS, "dispatch")
    changes: dict[str, Any] = {}
    for name, (_, value) in items.items():
        where = f"dispatch.{name}"
        if name in ("default_agent", "default_template"):
            changes[name] = r.string(value, where)
        elif name == "workspace_root":
            changes[name] = r.dir_path(value, where)
        elif name == "allowed_roots":
            roots = r.dir_paths(value, where)
            if not roots:
                raise r.fail(value, where, "list at least one directory")
            changes[name] = tuple(p.resolve() for p in roots)
        elif name == "fair_share":
            changes[name] = flag(r, value, where)
        elif name == "promote_after_s":  # 0: never
            changes[name] = r.number(value, where, minimum=0) or None
        elif name in ("max_attempts", "max_task_bytes", "max_depth", "max_descendants"):
            changes[name] = int(r.number(value, where, integer=True, minimum=1))
        elif name == "lease_s":  # 0 would turn leases off: another host could never judge a run
            changes[name] = r.number(value, where, minimum=1)
        else:
            changes[name] = r.number(value, where, minimum=0)
    return replace(c, **changes)


_POOL_KEYS: Final = (
    "labels",
    "max_attempts",
    "timeout_s",
    "retry_timeouts",
    "startup_timeout_s",
    "idle_timeout_s",
    "kill_stalled",
    "adaptive",
    "preemption",
    "sandbox",
    "ask",
)
# sandbox and approval policy (sandboxes.py)
_POLICY_READERS: Final = {"sandbox": sandboxes.pool_sandbox, "ask": sandboxes.pool_ask}


def pools(r: _Reader, node: yaml.Node, c: Config) -> Config:
    """Per-pool policy: retries, time limits and watchdogs, and `labels` (a host runs the pool
    only if it has them all)."""
    found: dict[str, PoolPolicy] = {}
    for pool, (_, value) in r.mapping(node, "pools").items():
        where = f"pools.{pool}"
        items = r.mapping(value, where)
        # a model variant (codex:gpt-5.4) may have an adaptive limit of its own, nothing else
        r.only(items, ("adaptive",) if ":" in pool else _POOL_KEYS, where)
        kw: dict[str, Any] = {}
        for name, (_, v) in items.items():
            at = f"{where}.{name}"
            if name == "labels":
                kw[name] = _labels(r, v, at)
            elif name == "max_attempts":
                kw[name] = int(r.number(v, at, integer=True, minimum=1))
            elif name in ("retry_timeouts", "kill_stalled"):
                kw[name] = flag(r, v, at)
            elif name == "adaptive":
                kw[name] = _adaptive(r, v, at)
            elif name == "preemption":
                kw["preempt_after_s"] = _preemption(r, v, at)
            elif name in _POLICY_READERS:
                kw[name] = _POLICY_READERS[name](r, v, at)
            else:
                kw[name] = r.number(v, at, minimum=0) or None  # 0: none
        found[pool] = PoolPolicy(**kw)
    return replace(c, pools=found)


def _adaptive(r: _Reader, v: yaml.Node, at: str) -> Aimd | None:
    """`adaptive: true` (the defaults), `false`, or `{floor, clean_streak}`."""
    if isinstance(v, yaml.ScalarNode):
        return Aimd() if flag(r, v, at) else None
    items = r.mapping(v, at)
    r.only(items, ("floor", "clean_streak"), at)
    kw = {k: int(r.number(n, f"{at}.{k}", integer=True, minimum=1)) for k, (_, n) in items.items()}
    return Aimd(**kw)


def _preemption(r: _Reader, v: yaml.Node, at: str) -> float | None:
    """`preemption: {min_runtime_s: 30}` (or `true`: 30 s, `false`: never)."""
    if isinstance(v, yaml.ScalarNode):
        return DEFAULT_MIN_RUNTIME_S if flag(r, v, at) else None
    items = r.mapping(v, at)
    r.only(items, ("min_runtime_s",), at)
    if "min_runtime_s" not in items:
        return DEFAULT_MIN_RUNTIME_S
    return r.number(items["min_runtime_s"][1], f"{at}.min_runtime_s", minimum=0)


DEFAULT_MIN_RUNTIME_S: Final = 30.0


def routes(r: _Reader, node: yaml.Node, c: Config) -> Config:
    """Named preference lists: `routes: {fast: ["claude:haiku", "gemini"]}`; each entry an agent
    this file defines (checked once every agent is read)."""
    found: dict[str, tuple[str, ...]] = {}
    for name, (key_node, value) in r.mapping(node, "routes").items():
        where = f"routes.{name}"
        if name in c.agents or ":" in name:
            raise r.fail(key_node, where, "a route's name must not be an agent's (pick another name)")
        entries = r.strings(value, where)
        if not entries:
            raise r.fail(value, where, "list at least one agent")
        for entry in entries:
            try:
                AgentRef.parse(entry)
            except InvalidArgument as exc:
                raise r.fail(value, where, str(exc)) from None
        found[name] = tuple(entries)
    return replace(c, routes=found)


def check_routes(r: _Reader, node: yaml.Node | None, c: Config) -> None:
    """Every route's entries name agents the file (or the built-ins) define: checked once the
    whole file is read, as `routes:` may come before `agents:`."""
    for name, entries in c.routes.items():
        unknown = [e for e in entries if AgentRef.parse(e).pool not in c.agents]
        if unknown and node is not None:
            known = ", ".join(sorted(c.agents))
            raise r.fail(node, f"routes.{name}", f"no agent {unknown[0]!r} (known: {known})")


def allowance(r: _Reader, node: yaml.Node, c: Config) -> Config:
    """Daily budgets per pool or agent: `claude: {runs: 200, tokens: 5000000, usd: 50}`."""
    found: dict[str, Allowance] = {}
    for key, (key_node, value) in r.mapping(node, "allowance").items():
        where = f"allowance.{key}"
        try:
            ref = AgentRef.parse(key)
        except InvalidArgument:
            raise r.fail(key_node, where, "name a pool (claude) or an agent (claude:opus)") from None
        items = r.mapping(value, where)
        r.only(items, ("runs", "tokens", "usd"), where)
        kw: dict[str, Any] = {}
        for name, (_, v) in items.items():
            integer = name != "usd"
            number = r.number(v, f"{where}.{name}", integer=integer, minimum=0)
            kw[name] = int(number) if integer else float(number)
        found[str(ref)] = Allowance(**kw)
    return replace(c, allowance=found)
