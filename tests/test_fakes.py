"""The fake agent CLIs in tests/fakes/ behave as documented (they are real subprocesses here)."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil
import pytest

TESTS = Path(__file__).resolve().parent
FAKES = TESTS / "fakes"
FIXTURES = TESTS / "fixtures" / "agent-transcripts"
FAKE_CLAUDE = FAKES / "fake_claude.py"
FAKE_CODEX = FAKES / "fake_codex.py"
FAKE_AGENT = FAKES / "fake_agent.py"
FAKE_GEMINI = FAKES / "fake_gemini.py"
FAKE_OPENCODE = FAKES / "fake_opencode.py"
CLAUDE_STREAM = ["-p", "--output-format", "stream-json", "--verbose"]


def _load_overlap() -> ModuleType:  # by path: independent of how pytest puts tests/ on sys.path
    spec = importlib.util.spec_from_file_location("_fakes_overlap_under_test", FAKES / "overlap.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


overlap = _load_overlap()


def fixture(name: str) -> tuple[bytes, bytes, int]:
    return (
        (FIXTURES / f"{name}.stdout").read_bytes(),
        (FIXTURES / f"{name}.stderr").read_bytes(),
        int((FIXTURES / f"{name}.exitcode").read_text()),
    )


def run(
    script: Path,
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    input: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    # stdin is the input (run() makes it a pipe) or else /dev/null
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True, env=env, cwd=cwd, timeout=30,
        input=input, stdin=subprocess.DEVNULL if input is None else None,
    )  # fmt: skip


def log_env(log: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "FAKE_AGENT_LOG": str(log), **extra}


def wait_for_event(
    proc: subprocess.Popen[bytes], log: Path, event: str, timeout: float = 15
) -> dict[str, Any]:
    """Poll the log (with proc.wait as the pause) until proc has logged ``event``."""
    deadline = time.monotonic() + timeout
    while True:
        found: list[dict[str, Any]] = [
            e for e in overlap.events(log) if e["event"] == event and e["pid"] == proc.pid
        ]
        if found:
            return found[-1]
        if proc.poll() is not None:
            raise AssertionError(f"fake exited ({proc.returncode}) before logging {event!r}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {event!r} event from pid {proc.pid} in {timeout}s")
        try:
            proc.wait(timeout=0.02)
        except subprocess.TimeoutExpired:
            pass


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # nobody reaps orphans here
    except psutil.NoSuchProcess:
        return True


def wait_gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not gone(pid):
        if time.monotonic() > deadline:
            return False
        try:
            psutil.Process(pid).wait(timeout=0.02)
        except (psutil.TimeoutExpired, psutil.NoSuchProcess):
            pass
    return True


class Spawned:
    """Popen with stdout/stderr in files; always killed (group) and waited on exit."""

    def __init__(
        self, tmp_path: Path, script: Path, *args: str, env: dict[str, str] | None = None, group: bool = False
    ) -> None:
        self.out_path, self.err_path = tmp_path / "out", tmp_path / "err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(script), *args], stdin=subprocess.DEVNULL, stdout=out,
                stderr=err, env=env, cwd=tmp_path, start_new_session=group,
            )  # fmt: skip
        self.group = group

    def __enter__(self) -> subprocess.Popen[bytes]:
        return self.proc

    def __exit__(self, *exc: object) -> None:
        if self.group:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        elif self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


# --------------------------------------------------------------------------- replay


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ([*CLAUDE_STREAM, "Say hi", "--model", "opus", "--dangerously-skip-permissions"],
         "claude-plain-stream-json"),
        (["-p", "Say hi", "--output-format", "json"], "claude-plain-json"),
        (["-p", "--resume", "abc", "Say hi", "--output-format=json", "--some-new-flag"],
         "claude-plain-json"),
        ([*CLAUDE_STREAM, "Say hi @fixture=claude-err-resume-unknown-session-stream-json"],
         "claude-err-resume-unknown-session-stream-json"),
    ],
)  # fmt: skip
def test_fake_claude_replays_fixture_bytes(args: list[str], name: str) -> None:
    result = run(FAKE_CLAUDE, *args)
    assert (result.stdout, result.stderr, result.returncode) == fixture(name)


def test_fake_claude_rate_limit_fixture() -> None:
    result = run(FAKE_CLAUDE, *CLAUDE_STREAM, "go @fixture=claude-err-429-stream-json")
    assert result.returncode == 1
    last = json.loads(result.stdout.splitlines()[-1])
    assert last["type"] == "result"
    assert last["is_error"] is True
    assert last["api_error_status"] == 429
    assert run(FAKE_CLAUDE, *CLAUDE_STREAM, "go @ratelimit").stdout == result.stdout


def test_fake_claude_text_mode_and_cli_errors() -> None:
    text = run(FAKE_CLAUDE, "-p", "Say hi")
    assert (text.stdout, text.returncode) == (b"Hello! The answer is 42.\n", 0)
    no_verbose = run(FAKE_CLAUDE, "-p", "x", "--output-format", "stream-json")
    assert no_verbose.returncode == 1
    assert b"requires --verbose" in no_verbose.stderr
    assert run(FAKE_CLAUDE, "-p", "x @fixture=no-such-fixture").returncode == 2


@pytest.mark.parametrize(
    "args",
    [
        ["exec", "--json", "-m", "gpt-5.5", "--skip-git-repo-check", "Say hi"],
        ["exec", "resume", "01a2097c-b9a7-7700-b030-b3633de5c94a", "Say hi", "--json"],
    ],
)
def test_fake_codex_replays_codex_plain(args: list[str]) -> None:
    result = run(FAKE_CODEX, *args)
    assert (result.stdout, result.stderr, result.returncode) == fixture("codex-plain")


def test_fake_codex_fixture_and_ratelimit() -> None:
    result = run(FAKE_CODEX, "exec", "--json", "x @fixture=codex-err-resume-unknown-thread")
    assert (result.stdout, result.stderr, result.returncode) == fixture("codex-err-resume-unknown-thread")
    limited = run(FAKE_CODEX, "exec", "--json", "x @ratelimit")
    assert limited.returncode == 1
    assert json.loads(limited.stdout.splitlines()[-1])["type"] == "turn.failed"


def test_fake_agent_plain_and_ratelimit() -> None:
    ok = run(FAKE_AGENT, "do the thing")
    assert ok.returncode == 0
    assert ok.stdout.decode().splitlines() == [
        "fake-agent: started", "fake-agent: prompt: do the thing", "fake-agent: done",
    ]  # fmt: skip
    limited = run(FAKE_AGENT, "do it @ratelimit")
    assert limited.returncode == 1
    assert "Request rejected (429)" in limited.stdout.decode()
    assert run(FAKE_AGENT, "x @exit=7").returncode == 7


# --------------------------------------------------------------------------- directives


def test_write_creates_file_in_cwd(tmp_path: Path) -> None:
    result = run(FAKE_AGENT, "@write=marker.txt", cwd=tmp_path)
    assert result.returncode == 0
    assert (tmp_path / "marker.txt").is_file()


def test_fail_until_with_counter(tmp_path: Path) -> None:
    prompt = f"@fail-until=3 @counter={tmp_path / 'n'}"
    codes = [run(FAKE_CLAUDE, *CLAUDE_STREAM, prompt).returncode for _ in range(4)]
    assert codes == [1, 1, 0, 0]
    assert (tmp_path / "n").read_text().strip() == "4"


def test_sleep_then_sigterm_ends_it_and_logs_end(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    env = log_env(log, DISPATCH_RUNNER_WORKSPACE="ws-1")
    with Spawned(tmp_path, FAKE_CLAUDE, *CLAUDE_STREAM, "@sleep=60", env=env) as proc:
        wait_for_event(proc, log, "sleep")
        # everything but the final result line is out before the sleep
        expected, _, _ = fixture("claude-plain-stream-json")
        assert (tmp_path / "out").read_bytes() == expected[: expected.rindex(b"\n", 0, -1) + 1]
        proc.terminate()
        assert proc.wait(timeout=10) == -signal.SIGTERM
    start, end = (e for e in overlap.events(log) if e["event"] in ("start", "end"))
    assert (start["pid"], end["pid"]) == (proc.pid, proc.pid)
    assert end["signal"] == signal.SIGTERM
    assert start["ws"] == "ws-1"
    assert start["cwd"] == str(tmp_path)
    assert start["argv"][0] == str(FAKE_CLAUDE)


def test_ignore_term_needs_sigkill(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    with Spawned(tmp_path, FAKE_AGENT, "@sleep=60 @ignore-term", env=log_env(log)) as proc:
        wait_for_event(proc, log, "sleep")
        proc.terminate()
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=0.5)
        proc.kill()
        assert proc.wait(timeout=10) == -signal.SIGKILL
    assert [e["event"] for e in overlap.events(log)] == ["start", "parsed", "sleep"]  # no end after SIGKILL


def test_child_is_in_the_group_and_dies_with_it(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    with Spawned(tmp_path, FAKE_AGENT, "@child @sleep=60", env=log_env(log), group=True) as proc:
        child = wait_for_event(proc, log, "child")["child_pid"]
        wait_for_event(proc, log, "sleep")
        assert os.getpgid(child) == proc.pid
        proc.terminate()  # the leader only: the child survives
        assert proc.wait(timeout=10) == -signal.SIGTERM
        assert not gone(child)
        os.killpg(proc.pid, signal.SIGTERM)
        assert wait_gone(child)


def test_ignore_term_child_needs_group_sigkill(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    prompt = "@child @ignore-term @sleep=60"
    with Spawned(tmp_path, FAKE_CLAUDE, *CLAUDE_STREAM, prompt, env=log_env(log), group=True) as proc:
        child = wait_for_event(proc, log, "child")["child_pid"]
        wait_for_event(proc, log, "sleep")
        os.killpg(proc.pid, signal.SIGTERM)
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=0.5)
        assert not gone(child)
        os.killpg(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        assert wait_gone(child)


def test_child_is_reaped_on_normal_exit(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    result = run(FAKE_AGENT, "@child", env=log_env(log))
    assert result.returncode == 0
    child = next(e["child_pid"] for e in overlap.events(log) if e["event"] == "child")
    assert gone(child)


# --------------------------------------------------------------------------- log and overlap


def test_log_has_start_and_end(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    result = run(FAKE_CODEX, "exec", "--json", "hi", env=log_env(log, DISPATCH_RUNNER_WORKSPACE="w"))
    assert result.returncode == 0
    events = overlap.events(log)
    assert [e["event"] for e in events] == ["start", "parsed", "end"]
    assert events[0]["pid"] == events[2]["pid"]
    assert events[0]["t"] <= events[1]["t"] <= events[2]["t"]
    assert events[1]["options"] == ["--json"] and events[1]["prompt"] == "hi"
    assert events[2]["code"] == 0
    assert events[0]["ws"] == "w"
    assert overlap.starts(log) == [events[0]]
    assert overlap.max_overlap(log) == 1


def test_max_overlap_of_concurrent_fakes(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    env = log_env(log)
    spawned = []
    try:
        for i in range(3):
            (tmp_path / str(i)).mkdir()
            spawned.append(Spawned(tmp_path / str(i), FAKE_AGENT, "@sleep=60", env=env))
        for s in spawned:
            wait_for_event(s.proc, log, "sleep")
        for s in spawned:
            s.proc.terminate()
            s.proc.wait(timeout=10)
    finally:
        for s in spawned:
            s.__exit__()
    assert overlap.max_overlap(log) == 3
    assert len(overlap.starts(log)) == 3


def test_max_overlap_hand_written_log(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    rows = [
        ("start", 1, 0), ("start", 2, 5), ("end", 1, 10), ("start", 3, 12),
        ("start", 5, 14), ("end", 2, 15), ("end", 5, 16), ("start", 4, 18),
        ("end", 3, 20), ("start", 6, 20),  # touching: 3 ends when 6 starts
        ("end", 99, 21),  # end without start: ignored
    ]  # fmt: skip
    log.write_text("".join(json.dumps({"event": e, "pid": p, "t": t}) + "\n" for e, p, t in rows))
    assert overlap.max_overlap(log) == 3  # pids 2, 3, 5 during [14, 15)
    assert [s["pid"] for s in overlap.starts(log)] == [1, 2, 3, 5, 4, 6]
    # 4 and 6 never end: running until the end of the log
    assert (4, 18, float("inf")) in overlap.intervals(log)
    with log.open("a") as f:
        f.write(json.dumps({"event": "start", "pid": 7, "t": 30}) + "\n")
    assert overlap.max_overlap(log) == 3  # 4, 6, 7
    assert overlap.max_overlap(tmp_path / "missing.jsonl") == 0


# ---- the fakes parse argv as the real CLIs do (hardening: client text is never an option) -----


def parsed_event(log: Path) -> dict[str, Any]:
    events: list[dict[str, Any]] = [e for e in overlap.events(log) if e["event"] == "parsed"]
    [event] = events
    return event


def test_fake_gemini_reads_stdin_first_and_treats_dash_words_as_options_even_after_the_marker(
    tmp_path: Path,
) -> None:
    log = tmp_path / "log.jsonl"
    piped = run(FAKE_GEMINI, "-m", "m1", input=b"from stdin\n", env=log_env(log))
    assert piped.returncode == 0 and piped.stdout == b"Hello! The answer is 42.\n"
    assert parsed_event(log)["prompt"] == "from stdin\n" and parsed_event(log)["options"] == ["-m"]
    log.unlink()
    # the real CLI parses positional query words again (gemini-cli#19156): `--` does not protect
    run(FAKE_GEMINI, "--", "--yolo", input=b"task", env=log_env(log))
    assert "--yolo" in parsed_event(log)["options"]
    nothing = run(FAKE_GEMINI, input=b"")
    assert nothing.returncode == 42 and b"No input provided via stdin" in nothing.stderr


def test_fake_opencode_honours_the_marker_and_appends_stdin(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    result = run(FAKE_OPENCODE, "run", "-m", "p/m", "--", "--auto", input=b"more", env=log_env(log))
    assert result.returncode == 0
    assert parsed_event(log)["options"] == ["-m"] and parsed_event(log)["prompt"] == "--auto\nmore"
    log.unlink()
    run(FAKE_OPENCODE, "run", "--auto", "x", input=b"", env=log_env(log))
    assert parsed_event(log)["options"] == ["--auto"]


def test_fake_agent_refuses_an_option_it_does_not_know(tmp_path: Path) -> None:
    result = run(FAKE_AGENT, "--yolo")
    assert result.returncode == 2 and b"unknown option '--yolo'" in result.stderr
    assert run(FAKE_AGENT, "--", "--yolo").returncode == 0


def test_escape_spawns_a_child_outside_the_agents_process_group(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    with Spawned(tmp_path, FAKE_AGENT, "@escape @sleep=60", env=log_env(log)) as proc:
        wait_for_event(proc, log, "sleep")
        [escaped] = [e for e in overlap.events(log) if e["event"] == "escaped"]
        pid = escaped["child_pid"]
        try:
            assert os.getpgid(pid) != os.getpgid(proc.pid) and os.getsid(pid) == pid
        finally:
            os.kill(pid, signal.SIGKILL)
