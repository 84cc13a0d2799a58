"""Agent output → outcome and usage: parse_output at the end of a run, Tracker while it runs.

Read from the transcripts in fixtures/agent-transcripts (captured for claude and codex,
hand-written to the CLIs' schemas for gemini and opencode), cut, chunked and mixed with garbage.
"""

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatch_runner.config import OUTPUT_KINDS
from dispatch_runner.config.schema import DEFAULT_RATE_LIMIT_PATTERNS
from dispatch_runner.model import Outcome
from dispatch_runner.outputs import LINE_LIMIT, Parsed, Tracker, follow, parse_output

TESTS = Path(__file__).resolve().parent
FIXTURES = TESTS / "fixtures" / "agent-transcripts"
NOW = datetime(2026, 11, 23, 17, 0, tzinfo=UTC)
CLAUDE, CODEX = "claude-stream-json", "codex-json"
GEMINI, GEMINI_STREAM, OPENCODE = "gemini-json", "gemini-stream-json", "opencode-json"


def stdout_of(name: str) -> bytes:
    return (FIXTURES / f"{name}.stdout").read_bytes()


def parse(name: str, kind: str, *, stdout: str | None = None) -> Parsed:
    """parse_output over fixture NAME (its stdout, or the one given)."""
    return parse_output(
        kind,
        stdout_of(name).decode() if stdout is None else stdout,
        (FIXTURES / f"{name}.stderr").read_text(),
        exit_code=int((FIXTURES / f"{name}.exitcode").read_text()),
        patterns=DEFAULT_RATE_LIMIT_PATTERNS,
        now=NOW,
    )


def tracked(kind: str, *chunks: bytes) -> Tracker:
    t = Tracker(kind)
    for chunk in chunks:
        t.feed(chunk)
    return t


def figures(t: Tracker) -> tuple[object, ...]:
    return (
        t.turns,
        t.input_tokens,
        t.output_tokens,
        t.cost_usd,
        t.session_id,
        t.last_line,
        t.results,
        t.rate_limit_reset,
    )


def test_the_new_formats_are_configurable_output_kinds() -> None:
    assert {CLAUDE, CODEX, GEMINI, GEMINI_STREAM, OPENCODE, "text"} <= set(OUTPUT_KINDS)


# ---- the end of a run: outcome, summary, session and usage per format -----------------------

SUCCESSES = [
    # name, kind, summary, session, turns, input, output, cost
    ("claude-plain-stream-json", CLAUDE, "Hello! The answer is 42.", "8723ada8-da2a-4f6e-ac20-8ae08afb34e3",
     1, 10, 5, 0.00014),
    ("claude-plain-json", CLAUDE, "Hello! The answer is 42.", "3dbd5616-8922-4162-959b-6641ad5e4a28",
     1, 10, 5, 0.00014),
    ("claude-tool-bash-stream-json", CLAUDE, "The command printed: hi", "a0005cd4-0cba-4daf-bc93-d490ae7a3f2f",
     2, 20, 10, 0.00028),
    # total_cost_usd is cumulative for the session: the resumed run reports both runs' cost
    ("claude-resume-2-followup", CLAUDE, "The secret word was PELICAN.", "76246321-9113-4ece-b439-ec919481a5d2",
     1, 10, 5, 0.00028),
    ("codex-plain", CODEX, "Hello! The answer is 42.", "01a2097c-b9a7-7700-b030-b3633de5c94a", 1, 10, 5, None),
    ("codex-plain-unknown-model", CODEX, "Hello! The answer is 42.", "01a2097c-bbf6-7622-be6e-dbed1ece38e0",
     1, 10, 5, None),
    # codex's turn usage is cumulative over the thread: the resumed run reports 20/10 for one request
    ("codex-resume-2-followup", CODEX, "The secret word was PELICAN.", "01a2097c-c11b-77b1-b950-ebd11d0e5ca5",
     1, 20, 10, None),
    # prompt tokens include the cached ones; thoughts count as output; no cost in gemini's output
    ("gemini-plain-json", GEMINI, "Hello! The answer is 42.", "5d1f3c2a-8b7e-4f60-9a1d-2c3b4e5f6a70",
     1, 8234, 12 + 96, None),
    ("gemini-plain-stream-json", GEMINI_STREAM, "Hello! The answer is 42.", "9e8d7c6b-5a49-4382-b1a0-f9e8d7c6b5a4",
     None, 8234, 12, None),
    ("gemini-tool-stream-json", GEMINI_STREAM, "The command printed: hi", "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
     None, 16702, 31, None),
    ("opencode-plain-json", OPENCODE, "Hello! The answer is 42.", "ses_3a8f2c1d7ffeQ1xY2zAbCdEfGh",
     1, 10, 5, 0.00014),
    # per-step figures add up; input counts cache reads and writes
    ("opencode-tool-bash-json", OPENCODE, "The command printed: hi", "ses_3a8f1b0c6ffeR2wX3yZaBcDeFg",
     2, 8 + 1200 + 300 + 30 + 1500, 20 + 6, 0.0021 + 0.0011),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "kind", "summary", "session", "turns", "used_in", "used_out", "cost"), SUCCESSES
)
def test_a_successful_run_gives_its_answer_session_and_usage(
    name: str,
    kind: str,
    summary: str,
    session: str,
    turns: int | None,
    used_in: int,
    used_out: int,
    cost: float | None,
) -> None:
    parsed = parse(name, kind)
    assert (parsed.outcome, parsed.summary, parsed.session_id) == (Outcome.SUCCEEDED, summary, session)
    assert (parsed.detail, parsed.retry_at) == (None, None)
    assert (parsed.turns, parsed.input_tokens, parsed.output_tokens) == (turns, used_in, used_out)
    assert parsed.cost_usd == (None if cost is None else pytest.approx(cost))


FAILURES = [
    # name, kind, outcome, detail starts with, retry in seconds after NOW (None: no time named)
    ("claude-err-429-stream-json", CLAUDE, Outcome.RATE_LIMITED, "rate limited: API Error: Request rejected (429)",
     None),
    ("claude-err-usage-limit-oauth-stream-json", CLAUDE, Outcome.RATE_LIMITED,
     "rate limited: You've hit your 5-hour limit", 1795459087 - NOW.timestamp()),
    ("claude-err-529-json", CLAUDE, Outcome.FAILED, "API Error: 529 Overloaded.", None),
    ("claude-err-max-turns-stream-json", CLAUDE, Outcome.FAILED, "Reached maximum number of turns (1)", None),
    ("codex-err-stream-rate-limit", CODEX, Outcome.RATE_LIMITED, "rate limited: rate limit exceeded:", 2.674),
    ("codex-err-401", CODEX, Outcome.FAILED, "unexpected status 401 Unauthorized", None),
    ("gemini-err-429-json", GEMINI, Outcome.RATE_LIMITED,
     "rate limited: Resource has been exhausted (e.g. check quota).", None),
    ("gemini-err-429-stream-json", GEMINI_STREAM, Outcome.RATE_LIMITED,
     "rate limited: [API Error: Resource has been exhausted", None),
    ("opencode-err-429-json", OPENCODE, Outcome.RATE_LIMITED,
     "rate limited: This request would exceed the rate limit", None),
]  # fmt: skip


@pytest.mark.parametrize(("name", "kind", "outcome", "detail", "retry_in_s"), FAILURES)
def test_a_failed_run_says_why_and_whether_it_was_rate_limited(
    name: str, kind: str, outcome: Outcome, detail: str, retry_in_s: float | None
) -> None:
    parsed = parse(name, kind)
    assert parsed.outcome is outcome
    assert parsed.detail is not None and parsed.detail.startswith(detail)
    if retry_in_s is None:
        assert parsed.retry_at is None
    else:
        assert parsed.retry_at == pytest.approx(NOW.timestamp() + retry_in_s)


def test_claude_error_results_keep_session_and_usage() -> None:
    parsed = parse("claude-err-max-turns-stream-json", CLAUDE)
    assert parsed.session_id == "4046dfb8-8bdd-469a-9ce9-77026c8de39a"
    assert parsed.summary == "Reached maximum number of turns (1)"
    assert (parsed.turns, parsed.input_tokens, parsed.output_tokens) == (2, 10, 5)
    assert parsed.cost_usd == pytest.approx(0.00014)


def test_a_truncated_claude_run_falls_back_to_what_its_assistant_messages_said_and_used() -> None:
    parsed = parse("claude-truncated-stream-json", CLAUDE)
    assert parsed.outcome is Outcome.FAILED and parsed.detail == "exit code 143"
    assert parsed.summary == "Hello! The answer is 42."
    # no result, but the session it opened (the CLI saves it as it goes): a killed or preempted
    # run can be resumed
    assert parsed.session_id == "8723ada8-da2a-4f6e-ac20-8ae08afb34e3"
    # the streamed message's usage is not final (1 output token there, 5 in the lost result)
    assert (parsed.turns, parsed.input_tokens, parsed.output_tokens, parsed.cost_usd) == (1, 10, 1, None)
    t = tracked(CLAUDE, stdout_of("claude-truncated-stream-json"))
    assert (t.results, t.session_id) == (0, "8723ada8-da2a-4f6e-ac20-8ae08afb34e3")


def test_a_codex_run_cut_during_retries_reports_the_last_error_event() -> None:
    lines = stdout_of("codex-err-stream-rate-limit").decode().splitlines(keepends=True)
    cut = "".join(line for line in lines if '"turn.failed"' not in line)
    parsed = parse("codex-err-stream-rate-limit", CODEX, stdout=cut)
    assert parsed.outcome is Outcome.RATE_LIMITED
    assert parsed.detail is not None and "Please try again in 2.674s" in parsed.detail
    assert parsed.retry_at == pytest.approx(NOW.timestamp() + 2.674)
    assert parsed.turns is None


def test_a_json_agent_that_printed_nothing_of_its_format_is_judged_by_stderr() -> None:
    parsed = parse("codex-err-resume-unknown-thread", CODEX)
    assert parsed.outcome is Outcome.FAILED
    assert parsed.detail is not None and parsed.detail.startswith("Error: thread/resume")
    assert (parsed.session_id, parsed.turns, parsed.input_tokens, parsed.cost_usd) == (None, None, None, None)


def test_text_output_summary_is_its_last_lines_without_usage() -> None:
    parsed = parse_output(
        "text", "one\n\ntwo\n", "", exit_code=0, patterns=DEFAULT_RATE_LIMIT_PATTERNS, now=NOW
    )
    assert parsed == Parsed(Outcome.SUCCEEDED, "one\ntwo")


# ---- gemini and opencode details -------------------------------------------------------------


def gemini_error(error: dict[str, object], *, exit_code: int = 1, before: str = "") -> Parsed:
    stderr = before + json.dumps({"session_id": "s-1", "error": error}, indent=2) + "\n"
    return parse_output(GEMINI, "", stderr, exit_code=exit_code, patterns=("rate limit",), now=NOW)


@pytest.mark.parametrize(
    "error",
    [
        {"type": "ApiError", "message": "got status: 429 Too Many Requests", "code": 429},
        {"type": "Error", "message": '{"error":{"code":429,"status":"RESOURCE_EXHAUSTED"}}', "code": 1},
        {"type": "TerminalQuotaError", "message": "You have exhausted your daily quota on this model."},
    ],
)
def test_gemini_quota_errors_are_rate_limits(error: dict[str, object]) -> None:
    parsed = gemini_error(error, before="Loaded cached credentials.\n")
    assert (parsed.outcome, parsed.session_id) == (Outcome.RATE_LIMITED, "s-1")


def test_other_gemini_errors_fail_with_their_message() -> None:
    parsed = gemini_error(
        {"type": "FatalAuthenticationError", "message": "Please set an Auth method", "code": 41}
    )
    assert (parsed.outcome, parsed.detail) == (Outcome.FAILED, "Please set an Auth method")


def test_gemini_json_on_one_line_reads_the_same() -> None:
    doc = json.loads(stdout_of("gemini-plain-json"))
    compact = parse_output(GEMINI, json.dumps(doc), "", exit_code=0, patterns=(), now=NOW)
    assert compact == parse("gemini-plain-json", GEMINI)


def test_a_stray_brace_line_does_not_swallow_the_gemini_object() -> None:
    stdout = "{\nnoise\n" + stdout_of("gemini-plain-json").decode()
    assert parse("gemini-plain-json", GEMINI, stdout=stdout) == parse("gemini-plain-json", GEMINI)


def test_an_opencode_error_without_a_status_is_a_failure() -> None:
    line = json.dumps({"type": "error", "sessionID": "ses_1", "error": {"name": "UnknownError", "data": {}}})
    parsed = parse_output(
        OPENCODE, line + "\n", "", exit_code=1, patterns=DEFAULT_RATE_LIMIT_PATTERNS, now=NOW
    )
    assert (parsed.outcome, parsed.detail, parsed.session_id) == (Outcome.FAILED, "UnknownError", "ses_1")


# ---- the running figures -------------------------------------------------------------------


def claude_line(**obj: object) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def assistant(mid: str, text: str, used_in: int, used_out: int, **extra: object) -> bytes:
    usage = {"input_tokens": used_in, "output_tokens": used_out, "cache_read_input_tokens": 100}
    message = {"id": mid, "model": "claude-x", "content": [{"type": "text", "text": text}], "usage": usage}
    return claude_line(type="assistant", session_id="s-9", message=message, **extra)


def result(turns: int, used_in: int, used_out: int, cost: float) -> bytes:
    usage = {"input_tokens": used_in, "cache_creation_input_tokens": 5, "output_tokens": used_out}
    return claude_line(
        type="result", session_id="s-9", is_error=False, result="done", num_turns=turns, usage=usage,
        total_cost_usd=cost,
    )  # fmt: skip


def test_claude_running_usage_counts_each_message_once_until_a_result_replaces_it() -> None:
    t = Tracker(CLAUDE)
    assert figures(t) == (None, None, None, None, None, None, 0, None)
    t.feed(assistant("m1", "Let me look.", 10, 1))
    t.feed(assistant("m1", "Looking.\nStill looking.", 10, 3))  # same message, next content block
    t.feed(assistant("sub", "sub-agent", 7, 7, parent_tool_use_id="toolu_1"))  # not the main loop
    assert (t.turns, t.input_tokens, t.output_tokens, t.cost_usd) == (1, 110, 3, None)
    assert (t.last_line, t.session_id, t.results) == ("Still looking.", "s-9", 0)
    t.feed(result(1, 20, 6, 0.01))
    assert (t.turns, t.input_tokens, t.output_tokens, t.cost_usd, t.results) == (1, 25, 6, 0.01, 1)
    # live input: the next user message starts another turn, then its own result
    t.feed(assistant("m2", "Again.", 30, 2))
    assert (t.turns, t.input_tokens, t.output_tokens, t.cost_usd) == (2, 25 + 130, 6 + 2, 0.01)
    t.feed(result(2, 40, 8, 0.03))
    # num_turns and total_cost_usd are cumulative for the session, each result's usage its own
    assert (t.turns, t.input_tokens, t.output_tokens, t.cost_usd, t.results) == (2, 25 + 45, 6 + 8, 0.03, 2)
    assert t.last_line == "done"


def test_claude_rate_limit_event_gives_the_reset_time() -> None:
    t = tracked(CLAUDE, stdout_of("claude-err-usage-limit-oauth-stream-json"))
    assert t.rate_limit_reset == 1795459087.0
    assert t.last_line == "You've hit your 5-hour limit · resets 6:38pm (UTC)"
    assert tracked(CLAUDE, stdout_of("claude-err-429-stream-json")).rate_limit_reset is None


@pytest.mark.parametrize(
    ("name", "kind", "results"),
    [
        ("claude-tool-bash-stream-json", CLAUDE, 1),
        ("codex-tool-exec", CODEX, 1),
        ("codex-err-401", CODEX, 1),
        ("gemini-tool-stream-json", GEMINI_STREAM, 1),
        ("opencode-tool-bash-json", OPENCODE, 1),  # the tool-calls step is not an answer
    ],
)
def test_results_count_the_final_reports(name: str, kind: str, results: int) -> None:
    assert tracked(kind, stdout_of(name)).results == results


def test_gemini_stream_last_line_joins_delta_chunks_of_the_current_message() -> None:
    lines = stdout_of("gemini-tool-stream-json").splitlines(keepends=True)
    t = tracked(GEMINI_STREAM, *lines[:3])
    assert t.last_line == "I'll run the command."
    t.feed(b"".join(lines[3:6]))  # tool_use, tool_result, the next message's first chunk
    assert t.last_line == "The command"
    t.feed(b"".join(lines[6:]))
    assert (t.last_line, t.results, t.input_tokens) == ("The command printed: hi", 1, 16702)


def test_text_kind_tracks_the_last_non_empty_line_at_most_300_chars() -> None:
    t = tracked("text", b"first\n", b"x" * 400 + b"\n  \n", b"partial")
    assert t.last_line == "x" * 300
    assert (t.turns, t.input_tokens, t.output_tokens, t.cost_usd, t.session_id) == (None,) * 5
    t.feed(b" line\n")
    assert t.last_line == "partial line"


GARBAGE = [
    b"\n",
    b"not json at all\n",
    b"{broken json\n",
    b"[1, 2, 3]\n",
    b'"a string"\n',
    b"{\n",  # a lone brace: only gemini-json puts pretty-printed objects together
    b"}\n",
    b'{"type": "assistant", "message": "not an object"}\n',
    b'{"type": "item.completed", "item": null}\n',
    b'{"type": "step_finish", "part": "none"}\n',
    b"\xff\xfe invalid utf-8\n",
]


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("claude-tool-bash-stream-json", CLAUDE),
        ("codex-tool-exec", CODEX),
        ("gemini-tool-stream-json", GEMINI_STREAM),
        ("opencode-tool-bash-json", OPENCODE),
    ],
)
def test_interleaved_garbage_lines_are_skipped(name: str, kind: str) -> None:
    lines = stdout_of(name).splitlines(keepends=True)
    mixed = [out for line in lines for out in (line, *GARBAGE)]
    assert figures(tracked(kind, *mixed)) == figures(tracked(kind, *lines))
    stdout = b"".join(mixed).decode("utf-8", "replace")
    assert parse(name, kind, stdout=stdout) == parse(name, kind)
    assert parse(name, kind).outcome is Outcome.SUCCEEDED


def test_a_malformed_claude_result_still_ends_the_turn_without_breaking_figures() -> None:
    bad = b'{"type": "result", "usage": [1], "num_turns": "two", "total_cost_usd": "free"}\n'
    t = tracked(CLAUDE, assistant("m1", "hi", 10, 1), bad)
    assert (t.results, t.turns, t.input_tokens, t.output_tokens, t.cost_usd) == (1, 1, 0, 0, None)


def test_a_line_over_the_limit_is_dropped_whole_or_in_chunks() -> None:
    huge = assistant("big", "x" * (LINE_LIMIT + 10), 50, 50)
    small = assistant("m1", "small", 10, 1)
    at_once = tracked(CLAUDE, huge + small)
    in_chunks = tracked(CLAUDE, *(huge[i : i + 65536] for i in range(0, len(huge), 65536)), small)
    for t in (at_once, in_chunks):
        assert (t.turns, t.input_tokens, t.last_line) == (1, 110, "small")


FEEDS = [
    (CLAUDE, "claude-tool-bash-stream-json"),
    (CLAUDE, "claude-err-usage-limit-oauth-stream-json"),
    (CLAUDE, "claude-truncated-stream-json"),
    (CODEX, "codex-tool-exec"),
    (CODEX, "codex-err-stream-rate-limit"),
    (GEMINI, "gemini-plain-json"),
    (GEMINI_STREAM, "gemini-tool-stream-json"),
    (OPENCODE, "opencode-tool-bash-json"),
    ("text", "codex-tool-exec"),
]


def test_feeding_byte_by_byte_equals_feeding_all_at_once() -> None:
    for kind, name in FEEDS:
        data = stdout_of(name) + b"\n"
        bytewise = tracked(kind, *(data[i : i + 1] for i in range(len(data))))
        assert figures(bytewise) == figures(tracked(kind, data)), name


@given(feed=st.sampled_from(FEEDS), cuts=st.lists(st.integers(min_value=0, max_value=20_000), max_size=30))
def test_any_chunking_gives_the_same_figures(feed: tuple[str, str], cuts: list[int]) -> None:
    kind, name = feed
    data = stdout_of(name) + b"\n"
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert figures(tracked(kind, *chunks)) == figures(tracked(kind, data))


# ---- follow: the shim reads what was appended ------------------------------------------------


def test_follow_feeds_what_was_appended_since_the_offset(tmp_path: Path) -> None:
    log = tmp_path / "stdout.log"
    t = Tracker(CLAUDE)
    assert follow(log, t, 0) == 0  # no file yet
    data = stdout_of("claude-tool-bash-stream-json")
    cut = len(data) // 2
    log.write_bytes(data[:cut])
    offset = follow(log, t, 0)
    assert offset == cut and t.results == 0
    with log.open("ab") as f:
        f.write(data[cut:])
    offset = follow(log, t, offset, limit=100)  # at most limit bytes at a time
    assert offset == cut + 100
    while (new := follow(log, t, offset)) != offset:
        offset = new
    assert offset == len(data)
    assert figures(t) == figures(tracked(CLAUDE, data))
    assert (t.results, t.turns) == (1, 2)
    assert t.cost_usd == pytest.approx(0.00028)


# ---- the fakes replay these transcripts with the real CLIs' flags ---------------------------


def run_fake(script: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, str(TESTS / "fakes" / script), *args],
        capture_output=True, stdin=subprocess.DEVNULL, timeout=30,
    )  # fmt: skip


def fixture_bytes(name: str) -> tuple[bytes, bytes, int]:
    return (
        stdout_of(name),
        (FIXTURES / f"{name}.stderr").read_bytes(),
        int((FIXTURES / f"{name}.exitcode").read_text()),
    )


@pytest.mark.parametrize(
    ("script", "args", "name"),
    [
        ("fake_gemini.py", ["-p", "Say hi", "--output-format", "json"], "gemini-plain-json"),
        ("fake_gemini.py", ["-p", "Say hi @ratelimit", "-o", "json"], "gemini-err-429-json"),
        ("fake_gemini.py", ["-p", "Say hi", "--output-format=stream-json"], "gemini-plain-stream-json"),
        ("fake_gemini.py", ["-p", "go @ratelimit", "--output-format", "stream-json"], "gemini-err-429-stream-json"),
        ("fake_gemini.py", ["-p", "go @fixture=gemini-tool-stream-json", "-o", "stream-json"],
         "gemini-tool-stream-json"),
        ("fake_opencode.py", ["run", "--format", "json", "Say hi"], "opencode-plain-json"),
        ("fake_opencode.py", ["run", "--format", "json", "Say hi @ratelimit"], "opencode-err-429-json"),
        ("fake_opencode.py", ["run", "--format", "json", "x @fixture=opencode-tool-bash-json"],
         "opencode-tool-bash-json"),
    ],
)  # fmt: skip
def test_fakes_replay_the_json_transcripts(script: str, args: list[str], name: str) -> None:
    done = run_fake(script, *args)
    assert (done.stdout, done.stderr, done.returncode) == fixture_bytes(name)


def test_fakes_keep_their_text_answer_without_a_json_flag() -> None:
    assert run_fake("fake_gemini.py", "-p", "Say hi").stdout == b"Hello! The answer is 42.\n"
    assert run_fake("fake_opencode.py", "run", "Say hi").stdout == b"Hello! The answer is 42.\n"
