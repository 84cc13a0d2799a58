"""Client text never becomes an option of an agent CLI (hardening, DESIGN §8 "Argv safety").

The end-to-end tests run every built-in agent's real command line, with only the executable
swapped for a fake CLI that parses argv the way the real one does (commander, clap, yargs: an
element starting with '-' before '--' is an option), and check which options each parser saw.
"""

import json
import sqlite3
import sys
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

import dispatch_runner.argv as argvlib
from dispatch_runner.actions import DispatchRequest, WaitRequest
from dispatch_runner.config import BUILTIN_AGENTS, load_config
from dispatch_runner.errors import TaskTooLarge
from dispatch_runner.runner import Runner
from tests.conftest import Home
from tests.fakes import FAKE_AGENT, FAKE_CLAUDE, FAKE_CODEX, FAKE_GEMINI, FAKE_OPENCODE

PY = sys.executable
FAKES = {"claude": FAKE_CLAUDE, "codex": FAKE_CODEX, "gemini": FAKE_GEMINI, "opencode": FAKE_OPENCODE}
HOSTILE_TASKS = [
    "--dangerously-skip-permissions",
    "--dangerously-bypass-approvals-and-sandbox",
    "--yolo",
    "-y",
    "--approval-mode=yolo",
    "--model=evil --auto",
    "-p --dangerously-skip-permissions",
    "--",
    "-",
    "task with {prompt} and {model} and {task} in it",
]


# ---- the pure part ------------------------------------------------------------------------------


def test_end_of_options_goes_before_the_first_element_that_begins_with_client_text() -> None:
    argv = argvlib.compile_argv(["tool", "--flag", "{prompt}", "{task}"], {})
    assert argvlib.render(argv, {"prompt": "--evil", "task": "-t"}.__getitem__) == [
        "tool",
        "--flag",
        "--",
        "--evil",
        "-t",
    ]


def test_a_template_that_writes_its_own_end_of_options_gets_no_second_one() -> None:
    argv = argvlib.compile_argv(["tool", "--", "{prompt}"], {})
    assert argvlib.render(argv, {"prompt": "-x"}.__getitem__) == ["tool", "--", "-x"]


def test_client_text_inside_an_option_value_needs_no_end_of_options() -> None:
    argv = argvlib.compile_argv(["tool", "--message={prompt}"], {})
    assert argvlib.render(argv, {"prompt": "--evil"}.__getitem__) == ["tool", "--message=--evil"]


def test_end_of_options_false_passes_the_elements_as_written() -> None:
    argv = argvlib.compile_argv(["sh", "-c", 'echo "$1"', "sh", "{prompt}"], {}, end_of_options=False)
    assert argvlib.render(argv, {"prompt": "-n"}.__getitem__) == ["sh", "-c", 'echo "$1"', "sh", "-n"]


def test_a_missing_model_drops_its_flag_and_a_given_one_is_a_value() -> None:
    command = ["codex", "exec", "-m", "{model}", "-"]
    assert argvlib.compile_argv(command, {"model": None}) == ["codex", "exec", "-"]
    assert argvlib.compile_argv(command, {"model": "gpt-5.4"}) == ["codex", "exec", "-m", "gpt-5.4", "-"]


def test_a_directory_named_like_a_placeholder_stays_literal() -> None:
    argv = argvlib.compile_argv(
        ["tool", "--cwd", "{workspace}", "{prompt}"], {"workspace": "/srv/{task}/{prompt}"}
    )
    assert argvlib.render(argv, {"prompt": "p {model}", "task": "T"}.__getitem__) == [
        "tool",
        "--cwd",
        "/srv/{task}/{prompt}",
        "--",
        "p {model}",
    ]


def test_end_of_options_is_decided_on_the_filled_element() -> None:
    argv = argvlib.compile_argv(["tool", "{branch}{prompt}"], {"branch": None})
    assert argvlib.render(argv, {"prompt": "--evil"}.__getitem__) == ["tool", "--", "--evil"]


def test_overriding_a_builtin_command_that_takes_the_prompt_itself_stops_feeding_stdin(home: Home) -> None:
    home.write_config(
        "agents:\n  gemini:\n    command: [gemini, '--prompt={prompt}']\n"
        "  codex:\n    command: [codex, exec, --json]\n",
        base=False,
    )
    agents = load_config().agents
    assert agents["gemini"].stdin == "none"  # not delivered twice
    assert agents["codex"].stdin == "prompt"  # still on stdin: the command does not name it


def test_a_template_expands_task_and_workspace_once() -> None:
    assert (
        argvlib.expand("{task} in {workspace}", {"task": "say {workspace}", "workspace": "/w/{task}"})
        == "say {workspace} in /w/{task}"
    )


@given(st.text(max_size=30), st.text(max_size=30))
def test_rendering_puts_client_text_in_verbatim_and_only_after_the_marker(prompt: str, task: str) -> None:
    argv = argvlib.compile_argv(["t", "-a", "{prompt}", "x{task}"], {})
    out = argvlib.render(argv, {"prompt": prompt, "task": task}.__getitem__)
    assert out == ["t", "-a", "--", prompt, f"x{task}"]


def test_the_store_keeps_one_copy_of_the_task(home: Home) -> None:
    task = "unique-task-text-" + "z" * 5000
    runner = Runner(load_config())
    try:
        anyio.run(runner.stop)
        ws = anyio.run(runner.dispatch, DispatchRequest(task=task, agent="agent"))
    finally:
        runner.close()
    db = sqlite3.connect(home.path / "state.db")
    row = db.execute("SELECT * FROM workspaces WHERE id = ?", (ws["workspace"],)).fetchone()
    assert [value for value in row if isinstance(value, str) and "unique-task-text" in value] == [task]
    assert not [e for (e,) in db.execute("SELECT data FROM events") if "unique-task-text" in e]
    db.close()


# ---- every built-in, end to end -----------------------------------------------------------------


def builtin_config(name: str) -> str:
    """The built-in's own command line and delivery, with the fake as its executable."""
    agent = BUILTIN_AGENTS[name]
    command = [PY, str(FAKES[name]), *agent.command[1:]]
    return (
        f"agents:\n  {name}:\n    command: {json.dumps(command)}\n    stdin: {agent.stdin}\n"
        f"    output: {agent.output}\nconcurrency:\n  {name}: 10\n"
    )


def run_to_end(**dispatch: Any) -> dict[str, Any]:
    """Dispatch one task with a fresh runner and wait for it; its `wait` row."""
    runner = Runner(load_config())
    try:

        async def go() -> dict[str, Any]:
            ws = await runner.dispatch(DispatchRequest(**dispatch))
            done = await runner.wait(WaitRequest(workspaces=[ws["workspace"]], timeout_s=60))
            assert done["done"], done
            return dict(done["workspaces"][0])

        return anyio.run(go)
    finally:
        runner.close()


def parsed_lines(home: Home) -> dict[str, dict[str, Any]]:
    lines = [json.loads(x) for x in home.agent_log.read_text().splitlines()]
    return {x["ws"]: x for x in lines if x["event"] == "parsed"}


@pytest.mark.parametrize("name", sorted(FAKES))
def test_no_client_text_is_ever_read_as_an_option_by_a_builtin_agent(home: Home, name: str) -> None:
    home.write_config(builtin_config(name), base=False)
    runner = Runner(load_config())
    allowed = {
        el.partition("=")[0]
        for el in BUILTIN_AGENTS[name].command[1:]
        if el.startswith("-") and el not in ("-", "--")
    }
    try:

        async def go() -> list[dict[str, Any]]:
            ids = [
                (await runner.dispatch(DispatchRequest(task=task, agent=f"{name}:model-1", template="none")))[
                    "workspace"
                ]
                for task in HOSTILE_TASKS
            ]
            done = await runner.wait(WaitRequest(workspaces=ids, timeout_s=60))
            assert done["done"], done
            return list(done["workspaces"])

        rows = anyio.run(go)
    finally:
        runner.close()
    seen = parsed_lines(home)
    for task, row in zip(HOSTILE_TASKS, rows, strict=True):
        assert row["state"] == "completed", (task, row)
        parsed = seen[row["workspace"]]
        assert set(parsed["options"]) <= allowed, (task, parsed["options"])
        assert parsed["prompt"].rstrip("\n") == task  # the prompt arrived whole, as data
        # the command line is the built-in's own, whatever the task: no client text in argv at all
        assert parsed["argv"][1:] == argvlib.compile_argv(
            BUILTIN_AGENTS[name].command[1:], {"model": "model-1"}
        )


def test_a_user_defined_agent_gets_end_of_options_by_default(home: Home) -> None:
    home.write_config("  mine:\n    command: [" + PY + ", " + str(FAKE_AGENT) + ", '{prompt}']\n")
    row = run_to_end(task="--help", agent="mine", template="none")
    assert row["state"] == "completed"
    parsed = parsed_lines(home)[row["workspace"]]
    assert parsed["options"] == [] and parsed["prompt"] == "--help"
    assert parsed["argv"][-2:] == ["--", "--help"]


def test_a_shell_agent_that_opts_out_gets_the_prompt_as_its_first_parameter(home: Home) -> None:
    home.write_config(
        "  echo:\n    command: [sh, -c, 'printf \"%s\" \"$1\"', sh, '{prompt}']\n    end_of_options: false\n"
    )
    row = run_to_end(task="-n {task}", agent="echo", template="none")
    assert row["state"] == "completed" and row["summary"] == "-n {task}"


def test_a_shell_agent_without_the_opt_out_is_refused_with_the_fix(home: Home) -> None:
    from dispatch_runner.errors import ConfigError

    home.write_config("  echo:\n    command: [sh, -c, 'echo \"$1\"', sh, '{prompt}']\n")
    with pytest.raises(ConfigError, match=r"add end_of_options: false to this agent"):
        load_config()


def test_options_after_the_prompt_element_are_refused_at_config_load(home: Home) -> None:
    from dispatch_runner.errors import ConfigError

    home.write_config("  mine:\n    command: [tool, '{prompt}', --model, '{model}']\n")
    with pytest.raises(ConfigError, match=r"'--model' comes after the prompt/task element"):
        load_config()


# ---- size: any task up to max_task_bytes runs, or is refused at dispatch ----------------------


def test_a_task_larger_than_one_argument_reaches_a_builtin_on_stdin(home: Home) -> None:
    home.write_config(builtin_config("claude"), base=False)
    task = "x" * (300 * 1024)
    row = run_to_end(task=task, agent="claude", template="none")
    assert row["state"] == "completed", row
    # the built-in claude reads live input: the prompt arrives as the text of a stream-json message
    assert parsed_lines(home)[row["workspace"]]["prompt_bytes"] == len(task)


def test_a_task_too_big_for_an_argv_agent_is_refused_at_dispatch_naming_size_limit_and_fix(
    home: Home,
) -> None:
    runner = Runner(load_config())
    try:
        with pytest.raises(TaskTooLarge) as info:
            anyio.run(
                runner.dispatch, DispatchRequest(task="y" * (200 * 1024), agent="agent", template="none")
            )
        assert runner.store.last_event_id() == 0
    finally:
        runner.close()
    message = str(info.value)
    assert "200 KiB" in message and "128 KiB" in message
    assert "stdin: prompt" in message and "{prompt_file}" in message and "nothing was queued" in message
    assert not (home.path / "workspaces").exists() or not any((home.path / "workspaces").iterdir())


def test_prompt_file_hands_the_agent_the_path_of_prompt_md(home: Home) -> None:
    home.write_config("  reader:\n    command: [sh, -c, 'cat \"$1\"', sh, '{prompt_file}']\n")
    task = "z" * (200 * 1024)
    row = run_to_end(task=task, agent="reader", template="none")
    assert row["state"] == "completed"
    out = (home.path / "workspaces" / row["workspace"] / "run-1.out.log").read_text()
    assert out == task + "\n"


def test_a_task_past_max_task_bytes_is_refused(home: Home) -> None:
    home.write_config("dispatch:\n  max_task_bytes: 1000\n", base=False)
    runner = Runner(load_config())
    try:
        with pytest.raises(
            TaskTooLarge,
            match=r"^the task is 1001 bytes \(1,001 bytes\), more than the "
            r"1000 bytes dispatch.max_task_bytes allows",
        ):
            anyio.run(runner.dispatch, DispatchRequest(task="é" * 500 + "x"))
    finally:
        runner.close()
