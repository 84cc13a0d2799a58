"""The CLI in a person's hands (first hour): exit codes, following a run, logs with both streams,
tasks from stdin or a file, relative paths, completion, --home anywhere, quiet pipes and Ctrl-C.
Real subprocesses of `python -m dispatch_runner.cli`, real fake agents, a real store."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import dispatch_runner.cli as cli
from dispatch_runner.cli.parser import build_parser
from tests.conftest import Home, wait_for
from tests.test_cli import run_cli, state_of

CLI = [sys.executable, "-m", "dispatch_runner.cli"]


def dispatched(*args: str) -> dict[str, str]:
    result: dict[str, str] = json.loads(run_cli("dispatch", *args, "--json").stdout)
    return result


def test_wait_exits_0_only_when_every_workspace_completed(home: Home) -> None:
    good = dispatched("fine", "--agent", "agent")["workspace"]
    bad = dispatched("breaks @exit=3", "--agent", "agent", "--max-attempts", "1")["workspace"]
    assert run_cli("wait", good, "--timeout", "60", check=False).returncode == 0
    assert run_cli("wait", good, bad, "--timeout", "60", check=False).returncode == 1
    slow = dispatched("@sleep=60", "--agent", "agent")["workspace"]
    timed_out = run_cli("wait", slow, "--timeout", "0.2", check=False)
    assert timed_out.returncode == 4 and "not done yet" in timed_out.stdout
    assert run_cli("wait", good, slow, "--mode", "any", "--timeout", "5", check=False).returncode == 0
    run_cli("kill", "--all")


def test_dispatch_wait_exits_with_the_runs_outcome(home: Home) -> None:
    ok = run_cli("dispatch", "fine", "--agent", "agent", "--wait", "--json", check=False)
    assert ok.returncode == 0
    result = json.loads(ok.stdout)
    assert result["outcome"]["state"] == "completed" and result["outcome"]["exit_code"] == 0
    failed = run_cli(
        "dispatch", "breaks @exit=3", "--agent", "agent", "--max-attempts", "1", "--wait", check=False
    )
    assert failed.returncode == 1 and " failed after " in failed.stdout and "exit code 3" in failed.stdout


def test_dispatch_follow_streams_the_log_then_the_outcome(home: Home) -> None:
    out = run_cli("dispatch", "say it @sleep=0.5", "--agent", "agent", "--follow", check=False)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "fake-agent: started" in lines and "fake-agent: done" in lines
    assert lines.index("fake-agent: started") < lines.index("fake-agent: done")
    assert " completed after " in lines[-1] or any(" completed after " in x for x in lines)


def test_logs_show_both_streams_with_stderr_marked_and_json_lines(home: Home) -> None:
    home.write_config("  noisy:\n    command: [sh, -c, 'echo out-line; echo err-line >&2']\n")
    ws = dispatched("x", "--agent", "noisy")["workspace"]
    wait_for(lambda: state_of(ws) == "completed", message="run completed")
    both = run_cli("logs", ws).stdout.splitlines()
    assert both == ["out-line", "[stderr] err-line"]
    assert run_cli("logs", ws, "--stdout").stdout.splitlines() == ["out-line"]
    assert run_cli("logs", ws, "--stderr").stdout.splitlines() == ["[stderr] err-line"]
    rows = [json.loads(line) for line in run_cli("logs", ws, "--json").stdout.splitlines()]
    assert rows == [
        {"run": 1, "stream": "stdout", "line": "out-line"},
        {"run": 1, "stream": "stderr", "line": "err-line"},
    ]


def test_logs_follow_goes_across_retries_until_the_workspace_ends(home: Home, tmp_path: Path) -> None:
    counter = tmp_path / "count"
    ws = dispatched(f"@counter={counter} @fail-until=2 @sleep=0.2", "--agent", "agent")["workspace"]
    out = run_cli("logs", ws, "-f", check=False)
    assert out.returncode == 0
    assert "── run 2 ──" in out.stdout and "fake-agent: done" in out.stdout
    assert out.stdout.count("fake-agent: started") == 2  # each run's lines once, never printed again
    assert state_of(ws) == "completed"


def test_a_task_from_stdin_or_a_file_and_relative_paths(home: Home, tmp_path: Path) -> None:
    piped = subprocess.run(
        [*CLI, "dispatch", "-", "--agent", "agent", "--json"],
        input="from stdin\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    ws = json.loads(piped.stdout)["workspace"]
    task_file = tmp_path / "task.md"
    task_file.write_text("from a file")
    project = home.root / "project"
    project.mkdir()
    filed = subprocess.run(
        [*CLI, "dispatch", "--task-file", str(task_file), "--agent", "agent", "--cwd", "project", "--json"],
        cwd=home.root,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    ws2 = json.loads(filed.stdout)["workspace"]
    wait_for(lambda: state_of(ws) == state_of(ws2) == "completed", message="both completed")
    assert "prompt: from stdin" in run_cli("logs", ws).stdout
    assert "prompt: from a file" in run_cli("logs", ws2).stdout
    status = json.loads(run_cli("status", ws2, "--json").stdout)
    assert Path(status["path"]).name == ws2
    both = run_cli("dispatch", "x", "--task-file", str(task_file), check=False)
    assert both.returncode == 2 and "not two of them" in both.stderr


def test_home_and_config_work_before_or_after_the_command(
    home: Home, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other-home"
    assert cli.main(["init", "--home", str(other)]) == 0
    assert (other / "agents.yaml").exists()
    assert cli.main(["--home", str(other), "status", "--json"]) == 0
    capsys.readouterr()
    assert cli.main(["status", "--json", "--config", str(home.config)]) == 0
    assert "agent" in json.loads(capsys.readouterr().out)["agents"]


def test_version_completion_and_help(home: Home) -> None:
    assert run_cli("--version").stdout.strip().startswith("dispatch-runner ")
    for shell in ("bash", "zsh", "fish"):
        script = run_cli("completion", shell).stdout
        assert "dispatch-runner" in script and "_ARGCOMPLETE" in script
    completed = subprocess.run(
        [*CLI],
        capture_output=True,
        text=True,
        timeout=30,
        env={
            **os.environ,
            "_ARGCOMPLETE": "1",
            "COMP_LINE": "dispatch-runner sta",
            "COMP_POINT": "19",
            "_ARGCOMPLETE_STDOUT_FILENAME": "/dev/stdout",
        },
    )
    assert "status" in completed.stdout and "start" in completed.stdout
    helped = run_cli("dispatch", "--help").stdout
    for option in (
        "--max-wait SECONDS",
        "--timeout SECONDS",
        "--max-attempts N",
        "{critical,high,medium,low}",
        "--follow",
        "exit codes:",
    ):
        assert option in helped, option


def test_a_closed_pipe_and_ctrl_c_end_quietly(home: Home) -> None:
    for n in range(30):
        dispatched(f"{n}", "--agent", "true")
    piped = subprocess.run(
        f"{sys.executable} -m dispatch_runner.cli status | head -n 1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert piped.stderr == "" and piped.stdout.startswith("queue:")
    with subprocess.Popen(
        [*CLI, "dispatch", "@sleep=60", "--agent", "agent", "--follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        slow = proc.stdout.readline().split()[0]  # dispatched: now it follows the run
        wait_for(lambda: state_of(slow) == "running", message="running")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 130
        assert "Traceback" not in proc.stderr.read()
    assert state_of(slow) == "running"  # Ctrl-C leaves the run running
    run_cli("kill", slow)


def test_an_unsupported_or_unreachable_store_is_a_sentence_not_a_traceback(home: Home) -> None:
    def status_with(url: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DISPATCH_RUNNER_STORE": url}
        return subprocess.run([*CLI, "status"], capture_output=True, text=True, timeout=30, env=env)

    out = status_with("mysql://db/runner")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "unsupported store URL 'mysql://db/runner'; use sqlite:///" in out.stderr
    out = status_with("postgresql://runner:secret@127.0.0.1:1/runner")  # nothing listens on port 1
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "cannot use the PostgreSQL store at postgresql://runner@127.0.0.1:1/runner" in out.stderr
    assert "secret" not in out.stderr and "createdb" in out.stderr


def test_status_is_a_table_people_can_read(home: Home) -> None:
    ws = dispatched("x", "--agent", "agent", "--label", "two\nlines")["workspace"]
    wait_for(lambda: state_of(ws) == "completed", message="completed")
    table = run_cli("status").stdout
    row = next(line for line in table.splitlines() if line.startswith(ws))
    assert "completed" in row and "two\\nlines" in row and " ago" in row
    assert "fake-agent: done" in row  # the summary column
    assert "\x1b[" not in table  # piped: no colour codes
    assert "AGENT" in table and "INSTALLED" in table


def test_status_watch_refreshes_until_ctrl_c(home: Home) -> None:
    with subprocess.Popen(
        [*CLI, "status", "--watch", "--interval", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        frames = 0
        for line in iter(proc.stdout.readline, ""):  # piped: one snapshot after the other
            frames += "Ctrl-C ends" in line
            if frames == 2:
                break
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        assert "Traceback" not in proc.stderr.read()
    assert frames == 2


def test_every_option_of_every_command_is_documented() -> None:
    import argparse

    parser = build_parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, sub in commands.choices.items():
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help and len(action.help) > 8, f"{name} {action.option_strings}"
                if action.type in (float, int) and action.dest not in ("port",):
                    assert action.metavar, f"{name} {action.option_strings} names no unit"


@pytest.mark.parametrize("stdin", ["</dev/null", "<&-", "< /dev/null 0<&-"])
def test_serve_with_stdin_at_its_end_or_closed_exits_0_promptly(home: Home, stdin: str) -> None:
    import time

    started = time.monotonic()
    out = subprocess.run(
        ["bash", "-c", f"{sys.executable} -m dispatch_runner.cli serve {stdin}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert time.monotonic() - started < 10
    assert out.stdout == ""  # stdout is the protocol stream: nothing else ever goes there


def test_logs_print_long_lines_whole_and_all_of_a_long_log(home: Home) -> None:
    home.write_config(
        '  wide:\n    command: [sh, -c, \'for i in $(seq 200); do printf "%05d" $i; '
        'head -c 9000 /dev/zero | tr "\\\\0" x; echo; done\']\n'
    )
    ws = dispatched("x", "--agent", "wide")["workspace"]
    wait_for(lambda: state_of(ws) == "completed", message="completed")
    lines = run_cli("logs", ws, "--stdout").stdout.splitlines()
    assert len(lines) == 200 and all(len(line) == 9005 for line in lines)  # past 256 KiB, uncut
    assert [line[:5] for line in lines] == [f"{n:05d}" for n in range(1, 201)]


def test_dispatch_wait_or_follow_with_json_prints_one_object_and_nothing_else(home: Home) -> None:
    out = run_cli("dispatch", "fine", "--agent", "agent", "--follow", "--json")
    result = json.loads(out.stdout)  # the whole of stdout is one JSON object
    assert result["outcome"]["state"] == "completed"


def test_status_watch_with_json_prints_json_lines(home: Home) -> None:
    with subprocess.Popen(
        [*CLI, "status", "--watch", "--json", "--interval", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        objects = [json.loads(proc.stdout.readline()) for _ in range(2)]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        proc.stderr.read()
    assert all("pools" in o for o in objects)


def test_init_into_a_place_it_cannot_write_is_a_sentence(home: Home, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = run_cli("init", "--home", str(blocker / "home"), check=False)
    assert out.returncode == 2 and "cannot write" in out.stderr and "Traceback" not in out.stderr
    spaced = tmp_path / "x home #1"
    assert run_cli("init", "--home", str(spaced)).returncode == 0
    config = json.loads(run_cli("--home", str(spaced), "doctor", "--json").stdout)
    root = next(c for c in config if c["check"] == "workspace root")
    assert root["detail"] == f"writable: {spaced / 'workspaces'}"


def test_a_closed_pipe_after_a_table_exits_141_quietly(home: Home) -> None:
    ws = dispatched("x", "--agent", "agent")["workspace"]
    wait_for(lambda: state_of(ws) == "completed", message="completed")
    for args in (f"logs {ws}", "status", f"logs --json {ws}"):
        out = subprocess.run(
            f'{sys.executable} -m dispatch_runner.cli {args} | head -n 1; echo "rc=${{PIPESTATUS[0]}}"',
            shell=True,
            executable="/bin/bash",
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.stderr == "", (args, out.stderr)
        assert out.stdout.strip().endswith(("rc=141", "rc=0")), (args, out.stdout)
