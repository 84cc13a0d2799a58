"""`dispatch-runner doctor`: what a new user needs to know is right, as a list of checks.

Each check is {check, ok, detail}: ok true, false (something is broken) or null (a warning).
"""

import os
import shutil
import time
from typing import Any

from ..config import Config, defaults, home_dir, load_config
from ..errors import ConfigError, DispatchError
from ..launch.supervisor import find_executable, host_id
from .placement import describe, live_hosts

MAX_SKEW_OK_S = 1.0
MAX_SKEW_S = 10.0


def _check(name: str, ok: bool | None, detail: str) -> dict[str, Any]:
    return {"check": name, "ok": ok, "detail": detail}


def checks(config_flag: str | None) -> list[dict[str, Any]]:
    out = []
    try:
        config: Config = load_config(config_flag)
        out.append(_check("config", True, config.source))
    except ConfigError as exc:
        out.append(_check("config", False, str(exc)))
        config = defaults(home_dir(), os.environ, "built-in defaults")
    out.append(_check("home", True, str(config.home)))
    on_path = shutil.which("dispatch-runner")
    out.append(
        _check(
            "dispatch-runner on PATH",
            True if on_path else None,
            on_path
            or "not found by name: MCP clients that start 'dispatch-runner serve' will not "
            "find it; add ~/.local/bin (or the install's bin directory) to PATH",
        )
    )
    for name, agent in sorted(config.agents.items()):
        found = find_executable(agent.command[0], agent.env)
        out.append(
            _check(
                f"agent {name}",
                True if found else None,
                f"{agent.command[0]} -> {found}"
                if found
                else f"{agent.command[0]} is not on PATH: dispatches to {name} are refused "
                "unless another live host of the fleet has it",
            )
        )
    out += _store(config)
    out.append(_workspace_root(config))
    out.append(_check("allowed roots", True, ", ".join(str(r) for r in config.allowed_roots)))
    return out


def _store(config: Config) -> list[dict[str, Any]]:
    """Reachable and writable, migrated, and on a clock that agrees with this host's."""
    from ..store import open_store

    try:
        store = open_store(config.store_url)
        try:
            store.set_frozen(store.is_frozen(), now=time.time())  # a real write transaction
            before = time.time()
            server = store.server_time()
            skew = server - (before + time.time()) / 2
            fleet = _fleet(config, store.peers())
        finally:
            store.close()
    except DispatchError as exc:
        return [_check("store", False, str(exc))]
    version = getattr(store, "schema_version", "?")
    ok: bool | None = True if abs(skew) < MAX_SKEW_OK_S else None if abs(skew) < MAX_SKEW_S else False
    return [
        _check("store", True, f"writable: {store.display_url}, schema version {version} (current)"),
        _check(
            "store clock",
            ok,
            f"{skew:+.3f} s from this host's"
            + ("" if ok else "; run NTP (chronyd, systemd-timesyncd): runs are judged by time across hosts"),
        ),
        fleet,
    ]


def _fleet(config: Config, peers: list[dict[str, Any]]) -> dict[str, Any]:
    """This host, what it can run, and the other live hosts of the store with what they advertise."""
    from .core import host_caps

    here, caps = host_id(), host_caps(config)
    others = {p["host"]: describe(p["host"], p["agents"], p["labels"]) for p in live_hosts(peers, here)}
    mine = describe(here, caps.pools or (), caps.labels)
    return _check("fleet", True, f"this host {mine}" + "".join(f" | {o}" for o in sorted(others.values())))


def _workspace_root(config: Config) -> dict[str, Any]:
    try:
        config.workspace_root.mkdir(parents=True, exist_ok=True)
        probe = config.workspace_root / ".doctor"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        return _check("workspace root", False, f"{config.workspace_root}: {exc.strerror}")
    return _check("workspace root", True, f"writable: {config.workspace_root}")
