"""The shim watching its agent (launch/watching.py) end to end: real shims over real fake agents
through a real store — the startup and idle watchdogs, the time limit, budgets, follow-up runs
that resume the agent's session, live messages on a running agent's stdin, and what a worktree
run changed. Plus the pieces on their own: the store's stall flag and live inbox, the git
measures, the exit file, the budget rule."""

import json
import subprocess
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dispatch_runner.actions import DispatchRequest, MessageRequest, StatusRequest, WaitRequest
from dispatch_runner.launch import gitdiff, runfiles
from dispatch_runner.launch.watching import over_budget, user_message
from dispatch_runner.model import Event, Outcome
from dispatch_runner.outputs import Tracker
from dispatch_runner.runner import Runner
from dispatch_runner.store import RunExit, Store, Usage, WorkspaceRow, open_store
from tests.conftest import PY, Home, until
from tests.fakes import FAKE_CLAUDE, FAKE_CODEX
from tests.fakes.overlap import events as fake_events
from tests.store.test_contract import NO_LIMITS, T0, must_claim, new_ws, start
from tests.test_runner import serving as runner_serving

CLAUDE_SESSION = "8723ada8-da2a-4f6e-ac20-8ae08afb34e3"  # in the claude-plain-* transcripts
CODEX_THREAD = "01a2097c-b9a7-7700-b030-b3633de5c94a"  # in codex-plain
STREAM = "--output-format, stream-json, --verbose"

AGENTS = f"""\
  resumable:
    command: [{PY}, {FAKE_CLAUDE}, -p, {STREAM}]
    resume_command: [{PY}, {FAKE_CLAUDE}, -p, "--resume={{session_id}}", {STREAM}]
    output: claude-stream-json
    stdin: prompt
  live:
    command: [{PY}, {FAKE_CLAUDE}, -p, --input-format, stream-json, {STREAM}]
    resume_command: [{PY}, {FAKE_CLAUDE}, -p, "--resume={{session_id}}", --input-format, stream-json, {STREAM}]
    output: claude-stream-json
    stdin: prompt
  codexr:
    command: [{PY}, {FAKE_CODEX}, exec, --json, "-"]
    resume_command: [{PY}, {FAKE_CODEX}, exec, --json, resume, "{{session_id}}", "-"]
    output: codex-json
    stdin: prompt
"""

pytestmark = pytest.mark.anyio


def serving(home: Home, pools: str = "") -> AbstractAsyncContextManager[Runner]:
    """A serving runner with these agents (and pools: policy)."""
    return runner_serving(home, AGENTS + (f"pools:\n{pools}" if pools else ""))


async def dispatch(runner: Runner, task: str, **kw: Any) -> str:
    result = await runner.dispatch(DispatchRequest(task=task, **kw), origin=None, parent=None)
    return str(result["workspace"])


async def finished(runner: Runner, ws: str, timeout: float = 30) -> WorkspaceRow:
    done = await runner.wait(WaitRequest(workspaces=[ws], timeout_s=timeout))
    assert done["done"], done
    return row(runner, ws)


def row(runner: Runner, ws: str) -> WorkspaceRow:
    found = runner.store.get_workspace(ws)
    assert found is not None
    return found


def events_of(runner: Runner, ws: str, kind: str) -> list[Event]:
    return [e for e in runner.store.events_after(0) if e.workspace == ws and e.type == kind]


def agent_log(home: Home, ws: str, event: str) -> list[dict[str, Any]]:
    return [e for e in fake_events(home.agent_log) if e["ws"] == ws and e["event"] == event]


# ---- watchdogs ------------------------------------------------------------------------------


async def test_an_agent_silent_past_its_startup_timeout_is_stopped_and_retried(home: Home) -> None:
    async with serving(home, "  claude: {startup_timeout_s: 0.5, max_attempts: 2}\n") as runner:
        ws = await dispatch(runner, "@silent=30")
        await until(lambda: row(runner, ws).state == "queued" and row(runner, ws).attempts == 1)
        retry = row(runner, ws)
        [retrying] = events_of(runner, ws, "AgentRetrying")
    assert retry.ended_reason == "startup_timeout" and retry.not_before > retry.updated_at
    assert retrying.data["ended_reason"] == "startup_timeout"
    assert "produced no output in 0.5s" in retrying.data["reason"]
    [ended] = agent_log(home, ws, "end")
    assert ended["signal"] == 15  # stopped, not left to run


async def test_a_silent_agent_is_flagged_stalled_and_cleared_when_it_speaks_again(home: Home) -> None:
    async with serving(home, "  claude: {idle_timeout_s: 0.6}\n") as runner:
        ws = await dispatch(runner, "@turns=2 @sleep=1.5")
        await until(lambda: row(runner, ws).stalled_at is not None, message="the stall flag")
        status = await runner.status(StatusRequest(workspace=ws))
        done = await finished(runner, ws)
        stalls = events_of(runner, ws, "AgentStalled")
    assert status["stalled"] is True and status["state"] == "running"
    assert done.state == "completed" and done.stalled_at is None and done.summary == "turn 2"
    # flagged again only after it had spoken: every silence is one event
    assert len(stalls) == 2 and stalls[0].data["since"] < stalls[1].data["since"]
    assert {e.data["agent"] for e in stalls} == {"claude"} and all(e.data["idle_s"] >= 0.6 for e in stalls)


async def test_a_stalled_agent_is_stopped_when_its_pool_says_kill_stalled(home: Home) -> None:
    pools = "  claude: {idle_timeout_s: 0.5, kill_stalled: true, max_attempts: 1}\n"
    async with serving(home, pools) as runner:
        ws = await dispatch(runner, "@sleep=30")
        done = await finished(runner, ws)
        stalls = events_of(runner, ws, "AgentStalled")
    assert done.state == "failed" and done.ended_reason == "stalled"
    assert done.reason is not None and "no output for 0.5s" in done.reason
    assert len(stalls) == 1 and done.stalled_at is None


async def test_a_timeout_is_final_unless_its_pool_retries_timeouts(home: Home) -> None:
    pools = (
        "  claude: {timeout_s: 0.5, max_attempts: 3}\n"
        "  agent: {timeout_s: 0.5, max_attempts: 3, retry_timeouts: true}\n"
    )
    async with serving(home, pools) as runner:
        final = await dispatch(runner, "@sleep=30")
        retried = await dispatch(runner, "@sleep=30", agent="agent")
        done = await finished(runner, final)
        await until(lambda: row(runner, retried).attempts == 1, message="the retried timeout")
        again = row(runner, retried)
    assert (done.state, done.ended_reason, done.attempts) == ("failed", "timeout", 1)  # of 3
    assert done.reason == "timed out after 0.5s"
    assert (again.state, again.ended_reason) == ("queued", "timeout")


async def test_a_run_past_its_turn_budget_is_stopped_and_keeps_what_it_did(home: Home) -> None:
    async with serving(home) as runner:
        ws = await dispatch(runner, "@turns=6 @sleep=0.8", max_turns=2)
        done = await finished(runner, ws)
    turns = done.usage.turns
    assert done.state == "failed" and done.ended_reason == "budget" and done.attempts == 1  # of 3
    assert turns in (3, 4) and done.reason == f"stopped: {turns} turns over max_turns 2"
    assert done.summary == f"turn {turns}"  # what it said last
    assert done.usage.input_tokens == 10 * turns and done.usage.output_tokens == 5 * turns
    [parsed] = agent_log(home, ws, "parsed")
    assert "--max-turns" in parsed["options"]  # the CLI's own limit is passed on as well


def test_a_budget_is_over_once_cost_or_turns_pass_it() -> None:
    tracker = Tracker("claude-stream-json")
    result = {"type": "result", "result": "x", "num_turns": 3, "total_cost_usd": 0.75, "session_id": "s"}
    assert over_budget(tracker, {"max_cost_usd": 0.5}) is None
    tracker.feed(json.dumps(result).encode() + b"\n")
    assert over_budget(tracker, {"max_cost_usd": 0.5}) == "stopped: cost $0.75 over max_cost_usd $0.5"
    assert over_budget(tracker, {"max_cost_usd": 0.75, "max_turns": 3}) is None
    assert over_budget(tracker, {"max_turns": 2}) == "stopped: 3 turns over max_turns 2"
    assert over_budget(tracker, {}) is None


# ---- follow-ups -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("agent", "session"), [("resumable", CLAUDE_SESSION), ("live", CLAUDE_SESSION), ("codexr", CODEX_THREAD)]
)
async def test_a_follow_up_run_resumes_the_session_with_its_input_as_the_prompt(
    home: Home, agent: str, session: str
) -> None:
    async with serving(home) as runner:
        ws = await dispatch(runner, "first task", agent=agent)
        first = await finished(runner, ws)
        sent = await runner.message(MessageRequest(workspace=ws, text="and now @this, as written"))
        second = await finished(runner, ws)
    assert first.session_id == session and sent["delivered"] == "queued"
    assert second.state == "completed" and second.runs == 2 and second.session_id == session
    assert second.next_input is None and second.usage.tokens == 2 * first.usage.tokens
    fresh, resumed = agent_log(home, ws, "parsed")
    assert fresh["resume"] is None and fresh["prompt"].rstrip("\n") == "first task"  # on stdin
    assert resumed["resume"] == session and resumed["prompt"].rstrip("\n") == "and now @this, as written"
    assert any(session in arg for arg in resumed["argv"])


async def test_a_message_reaches_a_running_agent_on_its_stdin(home: Home) -> None:
    async with serving(home) as runner:
        ws = await dispatch(runner, "first @sleep=3", agent="live")
        await until(lambda: agent_log(home, ws, "sleep"), message="the agent at work")
        sent = await runner.message(MessageRequest(workspace=ws, text="second message"))
        done = await finished(runner, ws)
        [delivered] = events_of(runner, ws, "MessageDelivered")
    assert sent["delivered"] == "live"
    assert done.state == "completed" and done.runs == 1 and done.summary == "echo: second message"
    assert delivered.data["how"] == "live" and delivered.data["run"] is not None
    [heard] = agent_log(home, ws, "message")
    assert heard["text"] == "second message"
    [parsed] = agent_log(home, ws, "parsed")
    assert parsed["prompt"] == "first @sleep=3" and parsed["input_format"] == "stream-json"


def test_a_live_message_is_one_stream_json_user_line() -> None:
    line = user_message('say "hi"\nthen go')
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    doc = json.loads(line)
    assert doc["type"] == "user"
    assert doc["message"] == {"role": "user", "content": [{"type": "text", "text": 'say "hi"\nthen go'}]}


# ---- what a worktree run changed ------------------------------------------------------------


def git(repo: Path, *args: str) -> str:
    who = ["-c", "user.email=t@t", "-c", "user.name=t"]
    done = subprocess.run(["git", "-C", str(repo), *who, *args], capture_output=True, text=True, check=True)
    return done.stdout


def new_repo(path: Path, files: dict[str, bytes]) -> str:
    path.mkdir()
    git(path, "init", "-q")
    for name, data in files.items():
        (path / name).write_bytes(data)
    git(path, "add", "-A")
    git(path, "commit", "-q", "--allow-empty", "-m", "init")
    return git(path, "rev-parse", "HEAD").strip()


async def test_a_worktree_run_reports_its_diff_and_commits(home: Home) -> None:
    repo = home.root / "repo"
    new_repo(repo, {"README": b"one\ntwo\n"})
    async with serving(home) as runner:
        ws = await dispatch(runner, "@commit=added.txt @write=notes.txt", agent="agent", repo=str(repo))
        done = await finished(runner, ws)
        status = await runner.status(StatusRequest(workspace=ws))
    assert done.state == "completed"
    assert done.diff == {"files": 2, "insertions": 2, "deletions": 0, "names": ["added.txt", "notes.txt"]}
    assert done.commits is not None and [c["subject"] for c in done.commits] == ["fake: add added.txt"]
    assert status["diff"] == done.diff and status["commits"][0]["sha"] == done.commits[0]["sha"]


def test_diff_stat_counts_changes_new_files_and_binaries_against_the_base(tmp_path: Path) -> None:
    repo = tmp_path / "r"
    base = new_repo(repo, {"a.txt": b"1\n2\n3\n", "gone.txt": b"x\ny\n", "é.txt": b"k\n"})
    (repo / "a.txt").write_bytes(b"1\nTWO\n3\n4")  # one line changed, one added (no newline)
    (repo / "gone.txt").unlink()
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "edit a, drop gone")
    (repo / "é.txt").write_bytes(b"k\nl\n")  # uncommitted
    (repo / "blob.bin").write_bytes(b"\0\1\2")  # untracked binary: a file, no lines
    (repo / "new.txt").write_bytes(b"a\nb")  # untracked: 2 lines
    (repo / ".gitignore").write_text("*.log\n")
    (repo / "noise.log").write_text("ignored\n")
    stat = gitdiff.diff_stat(repo, base)
    assert stat is not None
    # a.txt +2 -1, gone.txt -2, é.txt +1; new: .gitignore +1, blob.bin +0, new.txt +2; noise.log ignored
    assert (stat["files"], stat["insertions"], stat["deletions"]) == (6, 6, 3)
    assert set(stat["names"]) == {"a.txt", "gone.txt", "é.txt", ".gitignore", "blob.bin", "new.txt"}
    [commit] = gitdiff.commits(repo, base) or []
    assert commit["subject"] == "edit a, drop gone" and len(commit["sha"]) == 40


def test_git_measures_are_none_when_git_cannot_say(tmp_path: Path) -> None:
    assert gitdiff.diff_stat(tmp_path, "HEAD") is None  # not a repository
    repo = tmp_path / "r"
    new_repo(repo, {"a": b"1\n"})
    assert gitdiff.diff_stat(repo, "0" * 40) is None and gitdiff.commits(repo, "nope") is None
    assert gitdiff.diff_stat(repo, "--output=/tmp/x") is None  # never an option
    assert gitdiff.diff_stat(tmp_path / "missing", "HEAD") is None


# ---- the pieces the shim writes through -----------------------------------------------------


def test_an_exit_file_keeps_usage_changes_and_finality(tmp_path: Path) -> None:
    result = RunExit(
        outcome=Outcome.FAILED,
        exit_code=143,
        summary="turn 3",
        detail="stopped: 3 turns over max_turns 2",
        ended_reason="budget",
        final=True,
        usage=Usage(turns=3, input_tokens=30, output_tokens=15, cost_usd=0.25),
        diff={"files": 1, "insertions": 2, "deletions": 0, "names": ["a"]},
        commits=[{"sha": "abc", "subject": "s"}],
    )
    runfiles.write_exit_file(tmp_path, 3, result, ended_at=5.0)
    assert runfiles.read_exit_file(tmp_path, 3) == (result, 5.0)
    older = {"run_id": 4, "ended_at": 6.0, "outcome": "succeeded", "exit_code": 0}
    runfiles.exit_file(tmp_path, 4).write_text(json.dumps(older))
    assert runfiles.read_exit_file(tmp_path, 4) == (RunExit(outcome=Outcome.SUCCEEDED, exit_code=0), 6.0)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    url = (
        f"sqlite:///{tmp_path / 'state.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    opened = open_store(url)
    yield opened
    opened.close()


def running(store: Store, wid: str) -> int:
    live = replace(new_ws(wid), spec={"argv": ["agent"], "output": "text", "input": "stream-json"})
    store.enqueue(live, now=T0, max_wait_s=None, limits=NO_LIMITS)
    got = must_claim(store)
    assert start(store, got.run_id)
    return got.run_id


def test_a_stall_is_flagged_once_with_an_event_and_cleared_silently(store: Store) -> None:
    run = running(store, "w1")
    assert store.set_stalled(run, 100.0, now=160.0) is True
    assert store.set_stalled(run, 100.0, now=170.0) is False  # already flagged
    assert (store.get_workspace("w1") or pytest.fail()).stalled_at == 100.0
    assert store.set_stalled(run, None, now=180.0) is True
    assert (store.get_workspace("w1") or pytest.fail()).stalled_at is None
    assert store.set_stalled(run + 99, 1.0, now=190.0) is False  # not a running run
    [stalled] = [e for e in store.events_after(0) if e.type == "AgentStalled"]
    assert stalled.workspace == "w1" and stalled.data == {
        "agent": "claude",
        "run": run,
        "since": 100.0,
        "idle_s": 60.0,
    }


def test_a_running_agent_takes_the_waiting_messages_once(store: Store) -> None:
    run = running(store, "w1")
    assert store.take_messages("w1", run, now=1.0) == []
    _, how, first = store.send_message("w1", "one", now=2.0)
    store.send_message("w1", "two", now=3.0)
    assert how == "pending" and store.take_messages("w1", run + 1, now=4.0) == []  # not its run
    assert store.take_messages("w1", run, now=5.0) == ["one", "two"]
    assert store.take_messages("w1", run, now=6.0) == []
    assert store.message_state(first) == "live"
    delivered = [e for e in store.events_after(0) if e.type == "MessageDelivered"]
    assert [(e.data["message"], e.data["how"], e.data["run"]) for e in delivered] == [
        (first, "live", run),
        (first + 1, "live", run),
    ]
