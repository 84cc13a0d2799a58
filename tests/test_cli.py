"""The CLI as a person uses it: `cli.main(argv)` in-process and the installed command."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import dispatch_runner.cli as cli
from dispatch_runner.config import load_config
from dispatch_runner.store import open_store
from tests.conftest import Home, wait_for


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [sys.executable, "-m", "dispatch_runner.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if check and out.returncode != 0:
        raise AssertionError(f"exit {out.returncode}: {out.stderr}")
    return out


def state_of(ws: str) -> str:
    store = open_store(load_config().store_url)
    try:
        row = store.get_workspace(ws)
        return row.state if row else "missing"
    finally:
        store.close()


def test_dispatch_json_prints_the_tool_result_object(home: Home) -> None:
    out = run_cli("dispatch", "hello", "--agent", "agent", "--label", "demo", "--json")
    result = json.loads(out.stdout)
    assert set(result) == {
        "workspace",
        "status",
        "agent",
        "position",
        "eta_s",
        "path",
        "deduplicated",
        "frozen",
        "host",
        *("not_before", "held", "after", "after_mode", "group"),  # its schedule
    }
    assert result["status"] == "running" and result["agent"] == "agent"
    assert result["host"] == socket.gethostname()  # claimed by this dispatch, on this host
    wait_for(lambda: state_of(result["workspace"]) == "completed", message="run completed")


def test_status_prints_a_table_and_json_matches_the_tool(
    home: Home, capsys: pytest.CaptureFixture[str]
) -> None:
    home.write_config("concurrency:\n  agent: 1\n")
    ws = json.loads(run_cli("dispatch", "@sleep=0.3", "--agent", "agent", "--json").stdout)["workspace"]
    assert cli.main(["status"]) == 0
    table = capsys.readouterr().out
    assert "POOL" in table and "agent" in table and ws in table
    assert cli.main(["status", "--json"]) == 0
    overall = json.loads(capsys.readouterr().out)
    assert set(overall) == {
        "frozen",
        "pools",
        "allowance",
        "counts",
        "undelivered",
        "approvals",
        "workspaces",
        "bus_dropped",
        "agents",
        "config",
    }
    assert overall["config"]["error"] is None and overall["config"]["source"].endswith("agents.yaml")
    assert overall["pools"]["agent"]["usage_today"]["runs"] == 1
    assert overall["undelivered"] == 0
    assert overall["pools"]["agent"]["limit"] == 1
    wait_for(lambda: state_of(ws) == "completed", message="run completed")
    assert cli.main(["status", ws, "--json"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert set(one) == {
        "workspace",
        "state",
        "agent",
        "host",
        "pid",
        "runs",
        "priority",
        "label",
        "created_at",
        "started_at",
        "ended_at",
        "exit_code",
        "reason",
        "ended_reason",
        "summary",
        "log_tail",
        "path",
        "branch",
        "session_id",
        "turns",
        "usage",
        "cost_usd",
        "diff",
        "commits",
        "stalled",
        "stalled_since",
        "backoff_until",
        "parent",
        "depth",
        "children",
        "group",
        *("not_before", "held", "after", "after_mode"),  # its schedule
        *("route", "routed", "preemptible"),  # its routing
    }
    assert one["state"] == "completed" and "fake-agent: done" in one["log_tail"]
    assert one["ended_reason"] is None


def test_logs_prints_the_agent_output(home: Home, capsys: pytest.CaptureFixture[str]) -> None:
    ws = json.loads(run_cli("dispatch", "print me", "--agent", "agent", "--json").stdout)["workspace"]
    assert cli.main(["logs", ws, "-f"]) == 0
    assert "fake-agent: prompt: print me" in capsys.readouterr().out


def test_wait_kill_stop_start_poke_round_trip(home: Home, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["stop", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"frozen": True}
    ws = json.loads(run_cli("dispatch", "@sleep=0.1", "--agent", "agent", "--json").stdout)
    assert ws["status"] == "queued"
    assert cli.main(["poke", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"spawned": [], "frozen": True}
    assert cli.main(["start", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"frozen": False}
    assert cli.main(["wait", ws["workspace"], "--timeout", "30", "--json"]) == 0
    waited = json.loads(capsys.readouterr().out)
    assert waited["done"] is True and waited["workspaces"][0]["state"] == "completed"
    sleeper = json.loads(run_cli("dispatch", "@sleep=60", "--agent", "agent", "--json").stdout)
    assert cli.main(["kill", sleeper["workspace"], "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"killed": [sleeper["workspace"]], "cancelled": []}


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["dispatch", "x", "--agent", "nope"], "no agent 'nope' configured (known: agent, claude, codex"),
        (["dispatch", ""], "task is empty"),
        (["dispatch", "x", "--cwd", "/etc"], "outside the allowed roots"),
        (["status", "ws-missing"], "no workspace 'ws-missing'"),
        (["kill", "ws-missing"], "no workspace 'ws-missing'"),
        (["wait", "ws-missing"], "no workspace 'ws-missing'"),
        (["logs", "ws-missing"], "no workspace 'ws-missing'"),
    ],
)
def test_errors_exit_2_with_an_actionable_sentence_and_no_traceback(
    home: Home, args: list[str], words: str
) -> None:
    out = run_cli(*args, check=False)
    assert out.returncode == 2 and words in out.stderr and "Traceback" not in out.stderr
    assert not (home.path / "workspaces").exists() or not any((home.path / "workspaces").iterdir())


def test_unknown_priority_is_refused_by_the_parser(home: Home) -> None:
    out = run_cli("dispatch", "x", "--priority", "urgent", check=False)
    assert out.returncode == 2 and "critical" in out.stderr


def test_malformed_config_names_file_line_and_field_and_writes_nothing(home: Home) -> None:
    home.config.write_text("version: 1\nconcurrency:\n  claude: 1\nrates:\n  gemini: {reset_utc: 25:00}\n")
    out = run_cli("dispatch", "x", check=False)
    assert out.returncode == 2
    assert f"{home.config}:5: rates.gemini.reset_utc" in out.stderr and "HH:MM" in out.stderr
    assert not (home.path / "state.db").exists()


def test_unknown_config_key_is_refused_and_status_still_answers_with_the_error_on_top(home: Home) -> None:
    home.config.write_text("version: 1\nconcurency:\n  claude: 1\n")
    out = run_cli("dispatch", "x", check=False)
    assert out.returncode == 2 and ":2: concurency: unknown key" in out.stderr
    status = run_cli("status", check=False)
    assert status.returncode == 0, status.stderr
    first = status.stdout.splitlines()[0]
    assert first.startswith("config error (built-in defaults shown): ") and "concurency: unknown key" in first
    assert "config_error" in json.loads(run_cli("status", "--json").stdout)


def test_init_writes_a_commented_config_that_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCH_RUNNER_HOME", str(tmp_path / "h"))
    monkeypatch.delenv("DISPATCH_RUNNER_CONFIG", raising=False)
    assert cli.main(["init"]) == 0
    written = tmp_path / "h" / "agents.yaml"
    assert written.read_text().startswith("# dispatch-runner configuration")
    config = load_config()
    assert config.concurrency["codex"].models == {"gpt-5.4": 1}
    assert f'workspace_root: "{tmp_path / "h" / "workspaces"}"' in written.read_text()
    assert config.workspace_root == tmp_path / "h" / "workspaces"  # under the home, not ~/.dispatch-runner
    assert cli.main(["init"]) == 2  # refuses to overwrite without --force


def test_doctor_reports_config_agents_and_store(home: Home, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert f"ok    config: {home.config}" in out
    assert "ok    store: writable: sqlite:///" in out and "agent agent:" in out
    assert "agent gemini: gemini is not on PATH: dispatches to gemini are refused" in out
    assert cli.main(["doctor", "--json"]) == 0
    checks = {c["check"]: c for c in json.loads(capsys.readouterr().out)}
    assert checks["store"]["ok"] is True and checks["agent gemini"]["ok"] is None
    assert checks["home"]["detail"] == str(home.path)
    assert checks["store clock"]["ok"] is True and checks["store clock"]["detail"].endswith(
        "s from this host's"
    )
    assert "schema version" in checks["store"]["detail"]
    host = socket.gethostname()
    assert checks["fleet"]["detail"].startswith(f"this host {host} (agents: ")  # the fakes it has
    assert "agent, claude, codex" in checks["fleet"]["detail"] and "gemini" not in checks["fleet"]["detail"]


def test_the_store_flag_wins_over_the_environment_and_the_file(
    home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home.write_config(f"store: sqlite:///{tmp_path / 'from-file.db'}\n")
    monkeypatch.setenv("DISPATCH_RUNNER_STORE", f"sqlite:///{tmp_path / 'from-env.db'}")  # restored after
    flagged = tmp_path / "from-flag.db"
    assert cli.main(["status", "--json", "--store", f"sqlite:///{flagged}"]) == 0
    assert flagged.exists()
    assert not (tmp_path / "from-file.db").exists() and not (tmp_path / "from-env.db").exists()


def test_non_mcp_commands_do_not_import_the_mcp_sdk(home: Home) -> None:
    code = (
        "import sys; from dispatch_runner import cli; cli.main(['status', '--json']); "
        "print('MCP' if any(m == 'mcp' or m.startswith('mcp.') for m in sys.modules) else 'clean', "
        "file=sys.stderr)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stderr.strip().endswith("clean")
