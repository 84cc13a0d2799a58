"""agents.yaml + environment -> a frozen Config. Nothing else reads either.

Precedence: `--config` > $DISPATCH_RUNNER_CONFIG > $DISPATCH_RUNNER_HOME/agents.yaml > built-ins.
Parsing is strict (reader.py): unknown keys and wrong types are refused with file, line and field.
"""

import os
from collections.abc import Mapping
from pathlib import Path

from ..errors import ConfigError
from .reader import parse_config
from .schema import (
    BUILTIN_AGENTS,
    BUILTIN_TEMPLATES,
    DEFAULT_MAX_TASK_BYTES,
    DEFAULT_RATE_LIMIT_PATTERNS,
    OUTPUT_KINDS,
    AgentDef,
    Config,
    PoolPolicy,
    defaults,
)

__all__ = [
    "BUILTIN_AGENTS",
    "BUILTIN_TEMPLATES",
    "DEFAULT_MAX_TASK_BYTES",
    "DEFAULT_RATE_LIMIT_PATTERNS",
    "OUTPUT_KINDS",
    "AgentDef",
    "Config",
    "PoolPolicy",
    "config_path",
    "defaults",
    "home_dir",
    "load_config",
    "parse_config",
]


def home_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("DISPATCH_RUNNER_HOME") or "~/.dispatch-runner").expanduser()


def config_path(flag: str | None = None, env: Mapping[str, str] | None = None) -> tuple[Path, bool]:
    """(path, explicit): explicit paths must exist; the home file is optional."""
    env = os.environ if env is None else env
    if flag:
        return Path(flag).expanduser(), True
    if env.get("DISPATCH_RUNNER_CONFIG"):
        return Path(env["DISPATCH_RUNNER_CONFIG"]).expanduser(), True
    return home_dir(env) / "agents.yaml", False


def load_config(flag: str | None = None, env: Mapping[str, str] | None = None) -> Config:
    env = dict(os.environ if env is None else env)
    path, explicit = config_path(flag, env)
    home = home_dir(env)
    if not path.exists():
        if explicit:
            raise ConfigError(
                str(path), None, "file", "no such file; create it with 'dispatch-runner init' or fix the path"
            )
        return defaults(home, env, "built-in defaults")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), None, "file", f"cannot read: {exc.strerror}") from exc
    return parse_config(text, str(path), home=home, env=env)
