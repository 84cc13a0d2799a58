"""agents.yaml + environment -> Config (DESIGN §4): schema, built-ins, precedence, strict errors."""

from datetime import time
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import dispatch_runner
from dispatch_runner.adaptive import Aimd
from dispatch_runner.allowance import Allowance
from dispatch_runner.config import (
    BUILTIN_AGENTS,
    BUILTIN_TEMPLATES,
    DEFAULT_RATE_LIMIT_PATTERNS,
    AgentDef,
    Config,
    load_config,
    parse_config,
)
from dispatch_runner.errors import ConfigError, UnknownAgent
from dispatch_runner.model import AgentRef
from dispatch_runner.policy import PoolLimit, RateConfig

PATH = "/etc/dispatch/agents.yaml"
HOME = Path("/srv/runner-home")
EXAMPLE = Path(dispatch_runner.__file__).resolve().parent / "example_agents.yaml"
TOP_KEYS = (
    "version",
    "store",
    "dispatch",
    "concurrency",
    "rates",
    "agents",
    "templates",
    "tools",
    "notify",
    "host",
    "pools",
)
RATE_KEYS = ("reset_utc", "daily_limit", "min_delay", "sustained_delay", "burst_window", "burst_delay")


def parse(text: str, env: dict[str, str] | None = None) -> Config:
    return parse_config(text, PATH, home=HOME, env=env or {})


def refused(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return info.value


def assert_refused(text: str, *, line: int | None, field: str, says: str) -> None:
    error = refused(text)
    assert (error.path, error.line, error.field) == (PATH, line, field)
    where = f"{PATH}:{line}" if line else PATH
    assert str(error).startswith(f"{where}: {field}: ")
    assert says in str(error)


# ---- schema -----------------------------------------------------------------------------------


def test_flat_and_nested_concurrency() -> None:
    config = parse(
        "concurrency:\n  claude: 1\n  codex: {total: 5, gpt-5.4: 1}\n  gemini:\n    gemini-2.5-pro: 2\n"
    )
    assert config.concurrency == {
        "claude": PoolLimit(total=1),
        "codex": PoolLimit(total=5, models={"gpt-5.4": 1}),
        "gemini": PoolLimit(total=None, models={"gemini-2.5-pro": 2}),
    }


def test_zero_and_negative_limits_are_kept_and_mean_unlimited() -> None:
    config = parse("concurrency:\n  claude: 0\n  codex: {total: -1, o3: 0}\n")
    assert config.concurrency["claude"].total_limit is None
    assert config.concurrency["codex"].total_limit is None
    assert config.concurrency["codex"].model_limit("o3") is None


def test_rates_with_every_field() -> None:
    config = parse(
        'rates:\n  gemini: {reset_utc: "05:30", daily_limit: 200, min_delay: 10,\n'
        "           sustained_delay: 120, burst_window: 3, burst_delay: 30.5}\n"
    )
    assert config.rates == {
        "gemini": RateConfig(
            reset_utc=time(5, 30),
            daily_limit=200,
            min_delay=10.0,
            sustained_delay=120.0,
            burst_window=3.0,
            burst_delay=30.5,
        )
    }


def test_rates_default_to_a_0600_utc_reset_and_a_zero_daily_limit_is_unlimited() -> None:
    config = parse("rates:\n  gemini: {daily_limit: 0}\n")
    assert config.rates == {"gemini": RateConfig(reset_utc=time(6, 0), daily_limit=None)}


def test_a_new_agent_with_an_argv_template() -> None:
    config = parse(
        'agents:\n  echo:\n    command: [sh, -c, \'echo "$1"\', sh, "{prompt}"]\n'
        "    end_of_options: false\n"
        "    env: {GREETING: 1}\n    max_attempts: 5\n    timeout_s: 90\n"
    )
    assert config.agents["echo"] == AgentDef(
        name="echo",
        command=("sh", "-c", 'echo "$1"', "sh", "{prompt}"),
        output="text",
        rate_limit_patterns=DEFAULT_RATE_LIMIT_PATTERNS,
        env={"GREETING": "1"},
        max_attempts=5,
        timeout_s=90.0,
        end_of_options=False,
    )
    assert config.max_attempts_for("echo") == 5
    assert config.max_attempts_for("claude") == 3


def test_builtin_agents_and_templates_are_present_without_a_file() -> None:
    config = parse("")
    assert set(config.agents) == {"claude", "codex", "gemini", "opencode"}
    assert config.agents == BUILTIN_AGENTS
    assert set(config.templates) == {"coding", "none"}
    assert config.templates["none"] == "{task}"
    assert "{task}" in config.templates["coding"]
    assert "{workspace}" in config.templates["coding"]
    assert config.concurrency == {"claude": PoolLimit(total=1), "gemini": PoolLimit(total=3)}
    assert (config.default_agent, config.default_template, config.max_attempts) == ("claude", "coding", 3)
    assert config.agents["claude"].output == "claude-stream-json"
    assert config.agents["codex"].output == "codex-json"
    for agent in config.agents.values():  # the prompt is never an argv element of a built-in
        assert agent.stdin == "prompt" and not any("{" in el and "{model}" != el for el in agent.command)


def test_builtin_agents_stay_when_the_file_adds_one() -> None:
    config = parse("agents:\n  echo:\n    command: [echo, '{prompt}']\n")
    assert set(config.agents) == {"claude", "codex", "gemini", "opencode", "echo"}
    assert set(config.templates) == set(BUILTIN_TEMPLATES)


def test_partial_override_of_a_builtin_agent_keeps_its_other_fields() -> None:
    config = parse("agents:\n  claude:\n    rate_limit_patterns: [quota]\n    model: sonnet\n")
    builtin = BUILTIN_AGENTS["claude"]
    claude = config.agents["claude"]
    assert claude.command == builtin.command
    assert claude.output == "claude-stream-json"
    assert claude.rate_limit_patterns == ("quota",)
    assert claude.model == "sonnet"


def test_templates_add_to_the_builtins_and_may_override_them() -> None:
    config = parse("templates:\n  review: 'Review: {task}'\n  coding: '{task} in {workspace}'\n")
    assert config.templates == {
        "coding": "{task} in {workspace}",
        "none": "{task}",
        "review": "Review: {task}",
    }


def test_dispatch_section_and_store_url_from_the_environment() -> None:
    config = parse(
        "dispatch:\n  default_agent: codex:gpt-5.4\n  default_template: none\n"
        "  max_attempts: 5\n  timeout_s: 600\n  kill_grace_s: 2\n"
        "  workspace_root: /data/ws\n  allowed_roots: [/data, /tmp]\n",
        env={"DISPATCH_RUNNER_STORE": "sqlite:////data/state.db"},
    )
    assert (config.default_agent, config.default_template, config.max_attempts) == (
        "codex:gpt-5.4",
        "none",
        5,
    )
    assert (config.timeout_s, config.kill_grace_s) == (600.0, 2.0)
    assert config.workspace_root == Path("/data/ws")
    assert config.allowed_roots == (Path("/data").resolve(), Path("/tmp").resolve())
    assert config.store_url == "sqlite:////data/state.db"
    assert config.source == PATH
    assert config.home == HOME


def test_the_store_comes_from_the_file_unless_the_environment_names_one() -> None:
    pg = "postgresql://runner@db.internal/dispatch_runner"
    assert parse(f"store: {pg}\n").store_url == pg
    assert (
        parse("store: sqlite:///~/q/state.db\n").store_url == f"sqlite:///{Path('~/q/state.db').expanduser()}"
    )
    assert (
        parse(f"store: {pg}\n", env={"DISPATCH_RUNNER_STORE": "sqlite:////x.db"}).store_url
        == "sqlite:////x.db"
    )
    assert parse("").store_url == f"sqlite:///{HOME / 'state.db'}"
    error = refused("version: 1\nstore: mysql://db/runner\n")
    assert (error.line, error.field) == (2, "store")
    assert "use sqlite:///path/to/state.db or postgresql://user@host/dbname" in str(error)


def test_unknown_agent_names_the_configured_ones() -> None:
    config = parse("")
    with pytest.raises(UnknownAgent) as info:
        config.agent_def(AgentRef.parse("aider"))
    assert info.value.known == ["claude", "codex", "gemini", "opencode"]
    assert config.agent_def(AgentRef.parse("codex:gpt-5.4")) is BUILTIN_AGENTS["codex"]


def test_example_file_parses_cleanly() -> None:
    config = load_config(str(EXAMPLE), env={"DISPATCH_RUNNER_HOME": str(HOME)})
    assert config.source == str(EXAMPLE)
    assert config.concurrency == {
        "claude": PoolLimit(total=1),
        "codex": PoolLimit(total=5, models={"gpt-5.4": 1}),
        "gemini": PoolLimit(total=3),
    }
    assert config.rates == {
        "gemini": RateConfig(
            reset_utc=time(6, 0),
            daily_limit=200,
            min_delay=10,
            sustained_delay=120,
            burst_window=3,
            burst_delay=30,
        )
    }
    assert set(config.agents) == {"claude", "codex", "gemini", "opencode", "echo"}
    assert config.agents["echo"].command == ("sh", "-c", 'echo "$1"', "sh", "{prompt}")
    assert config.agents["claude"].rate_limit_patterns == ("rate limit", "usage limit", "429")
    assert (config.max_attempts, config.kill_grace_s, config.retention_days) == (3, 10.0, 14.0)
    assert config.workspace_root == Path("~/.dispatch-runner/workspaces").expanduser()
    assert config.allowed_roots == (Path.home().resolve(),)


def test_allowed_roots_expand_the_home_directory_quoted_or_bare() -> None:
    config = parse('dispatch:\n  allowed_roots: ["~", ~, "~/src"]\n  workspace_root: ~\n')
    home = Path.home().resolve()
    assert config.allowed_roots == (home, home, (Path.home() / "src").resolve())
    assert config.workspace_root.resolve() == home


# ---- where the file comes from ----------------------------------------------------------------


def _write(path: Path, claude_limit: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"concurrency:\n  claude: {claude_limit}\n", encoding="utf-8")
    return path


@pytest.fixture
def three_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    return (
        _write(tmp_path / "flag.yaml", 1),
        _write(tmp_path / "env.yaml", 2),
        _write(tmp_path / "home" / "agents.yaml", 3),
    )


def test_config_flag_wins_over_env_and_home(three_files: tuple[Path, Path, Path]) -> None:
    flag, env_file, home_file = three_files
    env = {"DISPATCH_RUNNER_CONFIG": str(env_file), "DISPATCH_RUNNER_HOME": str(home_file.parent)}
    config = load_config(str(flag), env=env)
    assert (config.source, config.concurrency["claude"].total) == (str(flag), 1)
    assert config.home == home_file.parent


def test_config_env_wins_over_home(three_files: tuple[Path, Path, Path]) -> None:
    _, env_file, home_file = three_files
    env = {"DISPATCH_RUNNER_CONFIG": str(env_file), "DISPATCH_RUNNER_HOME": str(home_file.parent)}
    config = load_config(None, env=env)
    assert (config.source, config.concurrency["claude"].total) == (str(env_file), 2)


def test_home_agents_yaml_wins_over_defaults(three_files: tuple[Path, Path, Path]) -> None:
    _, _, home_file = three_files
    config = load_config(None, env={"DISPATCH_RUNNER_HOME": str(home_file.parent)})
    assert (config.source, config.concurrency["claude"].total) == (str(home_file), 3)
    assert config.store_url == f"sqlite:///{home_file.parent / 'state.db'}"


def test_defaults_apply_when_no_file_exists(tmp_path: Path) -> None:
    config = load_config(None, env={"DISPATCH_RUNNER_HOME": str(tmp_path)})
    assert config.source == "built-in defaults"
    assert config.concurrency == {"claude": PoolLimit(total=1), "gemini": PoolLimit(total=3)}
    assert config.workspace_root == tmp_path / "workspaces"
    assert config.store_url == f"sqlite:///{tmp_path / 'state.db'}"


@pytest.mark.parametrize("via", ["flag", "env"])
def test_an_explicit_config_file_that_is_missing_is_an_error(tmp_path: Path, via: str) -> None:
    missing = tmp_path / "nope.yaml"
    env = {"DISPATCH_RUNNER_HOME": str(tmp_path)}
    if via == "env":
        env["DISPATCH_RUNNER_CONFIG"] = str(missing)
    with pytest.raises(ConfigError) as info:
        load_config(str(missing) if via == "flag" else None, env=env)
    assert (info.value.path, info.value.line, info.value.field) == (str(missing), None, "file")
    assert str(info.value).startswith(f"{missing}: file: no such file")


def test_a_bad_file_on_disk_names_its_path_and_line(tmp_path: Path) -> None:
    path = tmp_path / "agents.yaml"
    path.write_text("version: 1\nconcurrency:\n  claude: many\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"DISPATCH_RUNNER_HOME": str(tmp_path)})
    assert str(info.value) == f"{path}:3: concurrency.claude: expected an integer"


# ---- bad files: file, line, field -------------------------------------------------------------


def test_unknown_top_level_key() -> None:
    assert_refused(
        "version: 1\nconcurency:\n  claude: 1\n",
        line=2,
        field="concurency",
        says="unknown key; allowed here: " + ", ".join(TOP_KEYS),
    )


def test_unknown_key_under_a_pool_rate() -> None:
    assert_refused(
        "rates:\n  gemini:\n    reset_utc: '06:00'\n    burst: 3\n",
        line=4,
        field="rates.gemini.burst",
        says="unknown key; allowed here: " + ", ".join(RATE_KEYS),
    )


@pytest.mark.parametrize(
    ("text", "line", "field", "says"),
    [
        ("concurrency:\n  claude: two\n", 2, "concurrency.claude", "expected an integer"),
        ("concurrency:\n  claude: true\n", 2, "concurrency.claude", "expected an integer"),
        ("concurrency:\n  codex: {total: 5, o3: 1.5}\n", 2, "concurrency.codex.o3", "expected an integer"),
        ("rates:\n  gemini:\n    min_delay: soon\n", 3, "rates.gemini.min_delay", "expected a number"),
        ("rates:\n  gemini:\n    min_delay: -1\n", 3, "rates.gemini.min_delay", "must be >= 0"),
        ("rates: [gemini]\n", 1, "rates", "expected a mapping"),
        ("dispatch:\n  max_attempts: 0\n", 2, "dispatch.max_attempts", "must be >= 1"),
        ("dispatch:\n  allowed_roots: /tmp\n", 2, "dispatch.allowed_roots", "expected a list"),
        ("agents:\n  echo:\n    command: echo hi\n", 3, "agents.echo.command", "expected a list"),
        ("agents:\n  echo:\n    command: []\n", 3, "agents.echo.command", "argv list is empty"),
        (
            "agents:\n  echo:\n    command: [echo]\n    output: xml\n",
            4,
            "agents.echo.output",
            "unknown output kind",
        ),
        ("agents:\n  foo:\n    output: text\n", 3, "agents.foo.command", "required for a new agent"),
        ("agents:\n  claude:\n    colour: red\n", 3, "agents.claude.colour", "unknown key"),
        ("version: 2\n", 1, "version", "only version: 1 is supported"),
        ("notify: everyone\n", 1, "notify", "use 'own'"),
        ("tools:\n  prefix: a__b\n", 2, "tools.prefix", "no '__'"),
        ("- a\n- b\n", 1, "(top level)", "expected a mapping"),
    ],
)
def test_wrong_types_and_values_name_line_and_field(text: str, line: int, field: str, says: str) -> None:
    assert_refused(text, line=line, field=field, says=says)


def test_unknown_placeholder_in_command() -> None:
    assert_refused(
        "agents:\n  echo:\n    command: [sh, -c, 'echo {prmpt}']\n",
        line=3,
        field="agents.echo.command",
        says="unknown placeholder {prmpt}; use {prompt}, {prompt_file}, {model}, "
        "{workspace}, {task}, {branch}",
    )


def test_unknown_placeholder_in_a_block_list_names_the_elements_line() -> None:
    assert_refused(
        "agents:\n  echo:\n    command:\n      - sh\n      - '{prmpt}'\n",
        line=5,
        field="agents.echo.command",
        says="unknown placeholder {prmpt}",
    )


@pytest.mark.parametrize("value", ["'25:00'", "'6'", "'06:60'", "noon", "'6:00pm'"])
def test_bad_reset_utc(value: str) -> None:
    assert_refused(
        f"rates:\n  gemini:\n    reset_utc: {value}\n",
        line=3,
        field="rates.gemini.reset_utc",
        says='expected "HH:MM" in UTC',
    )


def test_unquoted_reset_utc_is_read_as_written() -> None:
    assert parse("rates:\n  gemini:\n    reset_utc: 18:00\n").rates["gemini"].reset_utc == time(18, 0)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("version: 1\nconcurrency:\n\tclaude: 1\n", 3),
        ("version: 1\nagents: [\n  a: b\n", 4),
        ("version: 1\nrates: {gemini: {min_delay: 1}\n", 3),
    ],
)
def test_bad_yaml_syntax_names_the_line(text: str, line: int) -> None:
    assert_refused(text, line=line, field="yaml", says="not valid YAML")


def test_duplicate_key_names_the_second_occurrence() -> None:
    assert_refused(
        "concurrency:\n  claude: 1\n  gemini: 2\n  claude: 3\n",
        line=4,
        field="concurrency.claude",
        says="duplicate key",
    )
    assert_refused(
        "agents:\n  claude:\n    env: {A: 1, A: 2}\n",
        line=3,
        field="agents.claude.env.A",
        says="duplicate key",
    )


def test_duplicate_top_level_section_is_refused() -> None:
    error = refused("version: 1\nconcurrency: {}\nconcurrency: {}\n")
    assert error.line == 3
    assert error.field.endswith("concurrency")
    assert "duplicate key" in str(error)


def test_template_without_task_is_refused() -> None:
    assert_refused(
        "templates:\n  short: 'do it in {workspace}'\n",
        line=2,
        field="templates.short",
        says="a template must contain {task}",
    )


def test_default_template_must_exist() -> None:
    assert_refused(
        "version: 1\ndispatch:\n  default_agent: claude\n  default_template: nope\n",
        line=3,
        field="dispatch.default_template",
        says="no template 'nope'",
    )


def test_default_agent_must_be_configured() -> None:
    assert_refused(
        "dispatch:\n  default_agent: nosuch\n", line=2, field="dispatch.default_agent", says="nosuch"
    )


# ---- properties -------------------------------------------------------------------------------

keys = st.from_regex(r"[a-z_][a-z0-9_]{0,15}", fullmatch=True)
values = st.one_of(
    st.integers(),
    st.text(alphabet="abc xyz", max_size=8),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(keys, st.integers(), max_size=2),
)


@settings(deadline=None)  # YAML parsing: keep slow CI machines from tripping the deadline
@given(key=keys.filter(lambda k: k not in TOP_KEYS), value=values)
def test_any_mapping_with_an_unknown_top_level_key_is_refused(key: str, value: object) -> None:
    text = "version: 1\nconcurrency:\n  claude: 2\n" + yaml.safe_dump({key: value})
    error = refused(text)
    assert (error.line, error.field) == (4, key)
    assert PATH in str(error)


@settings(deadline=None)
@given(key=keys.filter(lambda k: k not in RATE_KEYS), pool=keys)
def test_any_unknown_key_under_a_rate_is_refused(key: str, pool: str) -> None:
    text = yaml.safe_dump(
        {"rates": {pool: {"min_delay": 1, key: 2}}}, sort_keys=False, default_flow_style=False
    )
    error = refused(text)
    assert (error.line, error.field) == (4, f"rates.{pool}.{key}")


@settings(deadline=None)
@given(
    limits=st.dictionaries(keys.filter(lambda k: k != "total"), st.integers(-5, 50), max_size=4),
    total=st.one_of(st.none(), st.integers(-5, 50)),
    pool=keys,
)
def test_any_nested_concurrency_mapping_parses_to_the_same_limits(
    limits: dict[str, int], total: int | None, pool: str
) -> None:
    nested: dict[str, int] = dict(limits)
    if total is not None:
        nested["total"] = total
    config = parse(yaml.safe_dump({"concurrency": {pool: nested}}))
    assert config.concurrency == {pool: PoolLimit(total=total, models=limits)}


# ---- report-back: pool policy, allowance, follow-ups, the tree of sub-agents -------------------


def test_pool_policy_allowance_and_tree_limits() -> None:
    c = parse(
        "dispatch: {max_depth: 3, max_descendants: 25, timeout_s: 100}\n"
        "pools:\n"
        "  claude: {max_attempts: 2, timeout_s: 3600, retry_timeouts: true, startup_timeout_s: 120,\n"
        "           idle_timeout_s: 900, kill_stalled: true, labels: [gpu]}\n"
        "allowance:\n"
        "  claude: {runs: 200, tokens: 5000000, usd: 50}\n"
        "  claude:opus: {usd: 12.5}\n"
    )
    assert (c.max_depth, c.max_descendants) == (3, 25)
    pool = c.pool_policy("claude")
    assert (pool.max_attempts, pool.timeout_s, pool.retry_timeouts) == (2, 3600, True)
    assert (pool.startup_timeout_s, pool.idle_timeout_s, pool.kill_stalled) == (120, 900, True)
    assert c.pool_labels == {"claude": frozenset({"gpu"})}
    assert c.max_attempts_for("claude") == 2 and c.max_attempts_for("codex") == 3
    assert c.timeout_for("claude") == 3600 and c.timeout_for("codex") == 100
    assert c.allowance["claude"] == Allowance(runs=200, tokens=5_000_000, usd=50.0)
    assert c.allowance["claude:opus"] == Allowance(usd=12.5)
    assert (parse("").max_depth, parse("").max_descendants) == (2, 10)


def test_builtin_claude_and_codex_resume_their_sessions_and_claude_reads_live_input() -> None:
    c = parse("")
    claude, codex = c.agents["claude"], c.agents["codex"]
    assert claude.resume_command is not None and "{session_id}" in claude.resume_command
    assert claude.resume_command[claude.resume_command.index("{session_id}") - 1] == "--resume"
    assert claude.input == "stream-json" and "--input-format" in claude.command
    assert (claude.max_turns_flag, claude.max_cost_flag) == ("--max-turns", "--max-budget-usd")
    assert codex.resume_command is not None
    assert codex.resume_command[-3:] == ("resume", "{session_id}", "-") and codex.input == "none"


@pytest.mark.parametrize(
    ("text", "line", "field", "says"),
    [
        ("pools:\n  claude: {timeout: 5}\n", 2, "pools.claude.timeout", "timeout_s"),
        ("pools:\n  claude: {kill_stalled: 1}\n", 2, "pools.claude.kill_stalled", "true or false"),
        ("pools:\n  claude: {idle_timeout_s: -1}\n", 2, "pools.claude.idle_timeout_s", ">="),
        ("allowance:\n  claude: {dollars: 5}\n", 2, "allowance.claude.dollars", "usd"),
        ("allowance:\n  '-x': {runs: 5}\n", 2, "allowance.-x", "name a pool"),
        ("allowance:\n  claude: {runs: 1.5}\n", 2, "allowance.claude.runs", "integer"),
        ("dispatch: {max_depth: 0}\n", 1, "dispatch.max_depth", ">= 1"),
        (
            "agents:\n  x:\n    command: [x, '{session_id}']\n",
            3,
            "agents.x.command",
            "belongs in resume_command",
        ),
        (
            "agents:\n  x:\n    command: [x]\n    resume_command: [x, --continue]\n",
            4,
            "agents.x.resume_command",
            "add {session_id}",
        ),
        ("agents:\n  x:\n    command: [x]\n    input: json\n", 4, "agents.x.input", "stream-json"),
        (
            "agents:\n  x:\n    command: [x]\n    max_turns_flag: 'rm -rf'\n",
            4,
            "agents.x.max_turns_flag",
            "an option",
        ),
    ],
)
def test_bad_report_back_settings_are_refused_with_the_field(
    text: str, line: int, field: str, says: str
) -> None:
    error = refused(text)
    assert (error.line, error.field) == (line, field), str(error)
    assert says in str(error)


def test_a_new_command_line_keeps_no_live_input_or_resume_it_does_not_declare() -> None:
    plain = parse("agents:\n  claude:\n    command: [claude, -p, --output-format, stream-json, --verbose]\n")
    assert (plain.agents["claude"].input, plain.agents["claude"].resume_command) == ("none", None)
    live = parse("agents:\n  claude:\n    command: [claude, -p, --input-format, stream-json]\n")
    assert live.agents["claude"].input == "stream-json"
    kept = parse("agents:\n  claude:\n    model: opus\n")  # no new command: the built-in's abilities stay
    assert kept.agents["claude"].resume_command == parse("").agents["claude"].resume_command


# ---- routing and scheduling (issue 13) ------------------------------------------------------------


def test_routes_adaptive_pools_preemption_and_fair_share() -> None:
    cfg = parse(
        "routes:\n  fast: [claude:haiku, gemini]\n"
        "pools:\n  claude: {adaptive: true, preemption: {min_runtime_s: 5}}\n"
        "  codex: {adaptive: {floor: 2, clean_streak: 3}, preemption: true}\n"
        "concurrency:\n  claude: 4\n"
        "dispatch: {fair_share: false, promote_after_s: 0}\n"
    )
    assert cfg.routes == {"fast": ("claude:haiku", "gemini")}
    assert cfg.pools["claude"].adaptive == Aimd() and cfg.pools["claude"].preempt_after_s == 5
    assert cfg.pools["codex"].adaptive == Aimd(floor=2, clean_streak=3)
    assert cfg.pools["codex"].preempt_after_s == 30
    assert cfg.adaptive_for("claude", None) == {"claude": (Aimd(), 4)}
    assert cfg.adaptive_for("codex", None) == {}  # unlimited: nothing to adapt
    assert cfg.fair_share is False and cfg.promote_after_s is None
    per_model = parse(
        'concurrency:\n  codex: {total: 5, gpt-5.4: 2}\npools:\n  "codex:gpt-5.4": {adaptive: {floor: 1}}\n'
    )
    assert per_model.adaptive_for("codex", "gpt-5.4") == {"codex:gpt-5.4": (Aimd(floor=1), 2)}
    assert per_model.adaptive_for("codex", None) == {}
    assert parse("").fair_share is True and parse("").promote_after_s == 3600


@pytest.mark.parametrize(
    ("text", "line", "field", "says"),
    [
        ("routes:\n  fast: [claude, nosuch]\n", 2, "routes.fast", "no agent 'nosuch'"),
        ("routes:\n  claude: [codex]\n", 2, "routes.claude", "must not be an agent's"),
        ("routes:\n  fast: []\n", 2, "routes.fast", "list at least one agent"),
        ("routes:\n  fast: ['-x']\n", 2, "routes.fast", "base[:model]"),
        ("pools:\n  claude: {adaptive: {floor: 0}}\n", 2, "pools.claude.adaptive.floor", ">= 1"),
        ("pools:\n  claude: {adaptive: {step: 2}}\n", 2, "pools.claude.adaptive.step", "unknown"),
        (
            "pools:\n  claude: {preemption: {min_runtime_s: -1}}\n",
            2,
            "pools.claude.preemption.min_runtime_s",
            "0",
        ),
        ("dispatch: {fair_share: 1}\n", 1, "dispatch.fair_share", "true or false"),
        ('pools:\n  "codex:gpt-5.4": {timeout_s: 5}\n', 2, "pools.codex:gpt-5.4.timeout_s", "unknown"),
    ],
)
def test_bad_routing_and_scheduling_settings_name_line_and_field(
    text: str, line: int, field: str, says: str
) -> None:
    assert_refused(text, line=line, field=field, says=says)
