"""Strict reading of agents.yaml: unknown keys and wrong types are refused with file, line and
field, and a sentence that says what to write instead."""

import itertools
import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import time
from pathlib import Path
from typing import Any, Final

import yaml

from .. import argv as argvlib
from ..errors import ConfigError, InvalidArgument
from ..model import MODEL_RE, AgentRef
from ..policy import PoolLimit, RateConfig
from . import sandboxes, sections
from .schema import (
    INPUT_MODES,
    OUTPUT_KINDS,
    PLACEHOLDERS,
    SHELLS,
    STDIN_MODES,
    AgentDef,
    Config,
    defaults,
)
from .yaml_reader import YamlReader as _Reader


def parse_config(text: str, path: str, *, home: Path, env: Mapping[str, str]) -> Config:
    reader = _Reader(path)
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(path, line, "yaml", f"not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    config = defaults(home, env, path)
    if root is None:
        return config
    top = reader.mapping(root, "(top level)")
    readers: dict[str, Callable[[_Reader, yaml.Node, Config], Config]] = {
        "version": _version,
        # the environment (and so the --store flag) wins over the file
        "store": (lambda r, n, c: c) if env.get("DISPATCH_RUNNER_STORE") else _store,
        "dispatch": sections.dispatch,
        "concurrency": _concurrency,
        "rates": _rates,
        "agents": _agents,
        "templates": _templates,
        "tools": _tools,
        "notify": _notify,
        "host": sections.host,
        "pools": sections.pools,
        "allowance": sections.allowance,
        "routes": sections.routes,
    }
    reader.only(top, tuple(readers), "")
    for name, (_, node) in top.items():
        config = readers[name](reader, node, config)
    try:
        default_pool: str | None = AgentRef.parse(config.default_agent).pool
    except InvalidArgument:
        default_pool = None
    if default_pool not in config.agents:
        raise reader.fail(
            top.get("dispatch", (None, None))[1],
            "dispatch.default_agent",
            f"no agent {config.default_agent!r} (known: {', '.join(sorted(config.agents))})",
        )
    sections.check_routes(reader, top.get("routes", (None, None))[1], config)
    if config.default_template not in config.templates:
        raise reader.fail(
            top.get("dispatch", (None, None))[1],
            "dispatch.default_template",
            f"no template {config.default_template!r} (known: {', '.join(sorted(config.templates))})",
        )
    return config


def _version(r: _Reader, node: yaml.Node, c: Config) -> Config:
    if r.scalar(node, "version") != 1:
        raise r.fail(node, "version", "only version: 1 is supported")
    return c


def _concurrency(r: _Reader, node: yaml.Node, c: Config) -> Config:
    limits: dict[str, PoolLimit] = {}
    for pool, (_, value) in r.mapping(node, "concurrency").items():
        where = f"concurrency.{pool}"
        if isinstance(value, yaml.ScalarNode):
            limits[pool] = PoolLimit(total=int(r.number(value, where, integer=True)))
            continue
        nested = r.mapping(value, where)
        total = None
        models: dict[str, int] = {}
        for model, (_, v) in nested.items():
            n = int(r.number(v, f"{where}.{model}", integer=True))
            if model == "total":
                total = n
            else:
                models[model] = n
        limits[pool] = PoolLimit(total=total, models=models)
    return replace(c, concurrency=limits)


_RATE_KEYS: Final = (
    "reset_utc",
    "daily_limit",
    "min_delay",
    "sustained_delay",
    "burst_window",
    "burst_delay",
)
_HHMM: Final = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


def _rates(r: _Reader, node: yaml.Node, c: Config) -> Config:
    rates: dict[str, RateConfig] = {}
    for pool, (_, value) in r.mapping(node, "rates").items():
        items = r.mapping(value, f"rates.{pool}")
        r.only(items, _RATE_KEYS, f"rates.{pool}")
        kw: dict[str, Any] = {}
        for name, (_, v) in items.items():
            where = f"rates.{pool}.{name}"
            if name == "reset_utc":
                # the raw text: YAML 1.1 reads an unquoted 18:00 as the base-60 integer 1080
                r.scalar(v, where)
                m = _HHMM.match(str(v.value))
                if not m:
                    raise r.fail(v, where, 'expected "HH:MM" in UTC, e.g. "06:00"')
                kw[name] = time(int(m.group(1)), int(m.group(2)))
            elif name == "daily_limit":
                kw[name] = int(r.number(v, where, integer=True)) or None
            else:
                kw[name] = r.number(v, where, minimum=0)
        rates[pool] = RateConfig(**kw)
    return replace(c, rates=rates)


_AGENT_KEYS: Final = (
    "command",
    "output",
    "rate_limit_patterns",
    "env",
    "model",
    "max_attempts",
    "timeout_s",
    "stdin",
    "end_of_options",
    "resume_command",
    "input",
    "max_turns_flag",
    "max_cost_flag",
    *sandboxes.AGENT_FIELDS,  # sandbox, ask
)


def _agents(r: _Reader, node: yaml.Node, c: Config) -> Config:
    agents = dict(c.agents)
    for name, (key, value) in r.mapping(node, "agents").items():
        where = f"agents.{name}"
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", name) or ":" in name:
            raise r.fail(key, where, "agent names are letters, digits, '.', '_' or '-'")
        items = r.mapping(value, where)
        r.only(items, _AGENT_KEYS, where)
        base = agents.get(name)
        if base is None and "command" not in items:
            raise r.fail(
                value,
                f"{where}.command",
                'required for a new agent: an argv list, e.g. [sh, -c, \'echo "$1"\', sh, "{prompt}"]',
            )
        agent = base or AgentDef(name=name, command=("true",))
        agents[name] = _agent_fields(r, items, agent, where)
    return replace(c, agents=agents)


def _command(r: _Reader, v: yaml.Node, at: str) -> tuple[str, ...]:
    argv = r.strings(v, at)
    if not argv:
        raise r.fail(v, at, "the argv list is empty")
    for node, element in zip(v.value, argv, strict=True):
        unknown = argvlib.unknown_placeholders(element)
        if unknown:
            raise r.fail(
                node,
                at,
                f"unknown placeholder {{{unknown[0]}}}; use " + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS),
            )
    if argvlib.names(argv[0]):
        raise r.fail(v.value[0], at, "the first element is the program to run; it cannot be a placeholder")
    return argv


def _model(r: _Reader, v: yaml.Node, at: str) -> str:
    model = r.string(v, at)
    if not MODEL_RE.match(model):
        raise r.fail(
            v,
            at,
            "a model must start with a letter or digit and hold only letters, digits "
            "and . _ / @ : + - (at most 128 characters)",
        )
    return model


def _stdin(r: _Reader, v: yaml.Node, at: str) -> str:
    mode = r.string(v, at)
    if mode not in STDIN_MODES:
        raise r.fail(v, at, "use 'prompt' (the prompt arrives on the agent's stdin) or 'none'")
    return mode


def _output(r: _Reader, v: yaml.Node, at: str) -> str:
    kind = r.string(v, at)
    if kind not in OUTPUT_KINDS:
        raise r.fail(v, at, f"unknown output kind; use one of {', '.join(OUTPUT_KINDS)}")
    return kind


_AGENT_FIELDS: Final[Mapping[str, Callable[[_Reader, yaml.Node, str], Any]]] = {
    "command": _command,
    "output": _output,
    "rate_limit_patterns": lambda r, v, at: r.strings(v, at),
    "env": lambda r, v, at: {k: str(r.scalar(n, f"{at}.{k}")) for k, (_, n) in r.mapping(v, at).items()},
    "model": lambda r, v, at: _model(r, v, at),
    "max_attempts": lambda r, v, at: int(r.number(v, at, integer=True, minimum=1)),
    "timeout_s": lambda r, v, at: r.number(v, at, minimum=0) or None,
    "stdin": _stdin,
    "end_of_options": sections.flag,
    "resume_command": lambda r, v, at: _resume_command(r, v, at),
    "input": lambda r, v, at: _choice(r, v, at, INPUT_MODES, "how it reads messages while it runs"),
    "max_turns_flag": lambda r, v, at: _option(r, v, at),
    "max_cost_flag": lambda r, v, at: _option(r, v, at),
    **sandboxes.AGENT_FIELDS,
}


def _reads_stream_json(command: tuple[str, ...]) -> bool:
    """`--input-format stream-json` (claude's live input) is on the command line."""
    pairs = itertools.pairwise(command)
    return "--input-format=stream-json" in command or ("--input-format", "stream-json") in pairs


def _resume_command(r: _Reader, v: yaml.Node, at: str) -> tuple[str, ...]:
    argv = _command(r, v, at)
    if not any("session_id" in argvlib.names(el) for el in argv):
        raise r.fail(v, at, "a resume command names the session it continues: add {session_id}")
    return argv


def _choice(r: _Reader, v: yaml.Node, at: str, choices: tuple[str, ...], what: str) -> str:
    value = r.string(v, at)
    if value not in choices:
        raise r.fail(v, at, f"{what}: use one of {', '.join(choices)}")
    return value


def _option(r: _Reader, v: yaml.Node, at: str) -> str:
    value = r.string(v, at)
    if not re.match(r"^--?[A-Za-z0-9][A-Za-z0-9-]*$", value):
        raise r.fail(v, at, "an option of the agent's CLI, e.g. --max-turns")
    return value


def _agent_fields(
    r: _Reader, items: Mapping[str, tuple[yaml.Node, yaml.Node]], agent: AgentDef, where: str
) -> AgentDef:
    changes = {key: _AGENT_FIELDS[key](r, v, f"{where}.{key}") for key, (_, v) in items.items()}
    if any("session_id" in argvlib.names(el) for el in changes.get("command", ())):
        raise r.fail(
            items["command"][1],
            f"{where}.command",
            "{session_id} belongs in resume_command (a first run has no session yet)",
        )
    if (
        "command" in changes
        and "stdin" not in changes
        and any({"prompt", "prompt_file"} & set(argvlib.names(el)) for el in changes["command"])
    ):
        changes["stdin"] = "none"  # a command that takes the prompt itself: not on stdin as well
    if "command" in changes:  # a new command line: what the old one could do is not known of it
        if "input" not in changes:
            changes["input"] = "stream-json" if _reads_stream_json(changes["command"]) else "none"
        changes.setdefault("resume_command", None)
    agent = replace(agent, **changes)
    node = items["command"][1] if "command" in items else None
    if agent.end_of_options and "end_of_options" not in items:
        program = Path(agent.command[0]).name
        reads_client_text = argvlib.first_client_index(agent.command) is not None
        if program in SHELLS and "-c" in agent.command and reads_client_text:
            raise r.fail(
                node,
                f"{where}.command",
                f"{program} -c reads the elements after its "
                "script as $0, $1 ..., never as options, so a '--' before {prompt} would "
                "reach the script as $1: add end_of_options: false to this agent (or "
                "read the prompt with stdin: prompt)",
            )
    late = argvlib.options_after_client_text(agent.command) if agent.end_of_options else []
    if late:
        raise r.fail(
            node,
            f"{where}.command",
            f"{late[0]!r} comes after the prompt/task element; "
            "the runner puts '--' before that element so that client text is never read "
            "as an option, and the CLI would then read every later element as data: move "
            "the options before it, or deliver the prompt with stdin: prompt",
        )
    return agent


def _templates(r: _Reader, node: yaml.Node, c: Config) -> Config:
    templates = dict(c.templates)
    for name, (_, value) in r.mapping(node, "templates").items():
        text = r.string(value, f"templates.{name}")
        if "{task}" not in text:
            raise r.fail(value, f"templates.{name}", "a template must contain {task}")
        templates[name] = text
    return replace(c, templates=templates)


def _tools(r: _Reader, node: yaml.Node, c: Config) -> Config:
    items = r.mapping(node, "tools")
    r.only(items, ("prefix",), "tools")
    if "prefix" not in items:
        return c
    prefix = str(r.scalar(items["prefix"][1], "tools.prefix") or "")
    if prefix and (not re.match(r"^[a-zA-Z0-9_-]{1,40}$", prefix) or "__" in prefix):
        raise r.fail(
            items["prefix"][1],
            "tools.prefix",
            "use letters, digits, '_' or '-' (no '__'), at most 40 characters",
        )
    return replace(c, tools_prefix=prefix)


def _store(r: _Reader, node: yaml.Node, c: Config) -> Config:
    value = r.string(node, "store")
    if value.startswith("sqlite:///"):
        path = Path(value.removeprefix("sqlite:///")).expanduser()
        return replace(c, store_url=f"sqlite:///{path}")
    if not value.startswith(("postgresql://", "postgres://")):
        raise r.fail(node, "store", "use sqlite:///path/to/state.db or postgresql://user@host/dbname")
    return replace(c, store_url=value)


def _notify(r: _Reader, node: yaml.Node, c: Config) -> Config:
    value = r.string(node, "notify")
    if value not in ("own", "all"):
        raise r.fail(node, "notify", "use 'own' (the dispatching session) or 'all'")
    return replace(c, notify=value)
