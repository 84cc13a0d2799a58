"""Fake ``gemini`` (Gemini CLI) for tests, parsing its argv the way the real one does (yargs).

    fake_gemini.py [-m MODEL] [-p PROMPT] [-o text|json] [-y] [query..]    (prompt on stdin too)

Like the real CLI: any element that starts with ``-`` is an option — even after ``--``, where the
real CLI rebuilds positional query words as ``--query`` and parses them again (google-gemini/
gemini-cli#19156), so a query word that starts with ``-`` ends up an option. stdin, when it is
not a terminal, is read first and a ``-p``/positional prompt is appended after a blank line;
``-p`` together with a positional query is an error; no input at all exits 42 ("No input
provided via stdin"). Unknown options are accepted as switches (the fake logs them as parsed).
Prints a short text answer; with ``-o/--output-format json`` or ``stream-json`` it replays
``gemini-plain-{json,stream-json}`` (``gemini-err-429-*`` with ``@ratelimit`` or on a run failed by
``@fail-until``, unless ``@fail-fixture`` names another). Directives in the prompt: see _fakecommon.py.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _fakecommon import CliExit, Directives, Output, UsageError, main, piped_stdin, replay, split_args

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~4 ms at each start)
if TYPE_CHECKING:
    from typing import Any

PROG = "fake_gemini"
VALUE_FLAGS = {
    "-m", "--model", "-p", "--prompt", "-i", "--prompt-interactive", "-o", "--output-format",
    "--approval-mode", "-e", "--extensions", "--include-directories", "--allowed-tools",
    "--allowed-mcp-server-names", "-r", "--resume", "--session-id",
}  # fmt: skip
ANSWER = b"Hello! The answer is 42.\n"


def parse_args(argv: list[str]) -> tuple[str, dict[str, Any]]:
    words = [a for a in argv if a != "--"]  # no populate--: the words are parsed again
    opts, query = split_args(words, VALUE_FLAGS)
    flag = opts.get("-p") or opts.get("--prompt")
    if flag and query:
        raise UsageError("Cannot use both a positional prompt and the --prompt (-p) flag together")
    asked = flag if isinstance(flag, str) else " ".join(query)
    piped = piped_stdin()
    prompt = f"{piped}\n\n{asked}" if piped and asked else (piped or asked)
    if not prompt:
        raise CliExit(
            42,
            stderr=b"No input provided via stdin. Input can be provided by piping "
            b"data into gemini or using the --prompt option.\n",
        )
    fmt = opts.get("-o") or opts.get("--output-format") or "text"
    return prompt, {"options": opts, "format": fmt}


def build_output(ctx: dict[str, Any], d: Directives, failing: bool, attempt: int | None) -> Output:
    limited = failing or (d.ratelimit and d.fail_until is None)
    if ctx["format"] in ("json", "stream-json"):
        if failing and d.fail_fixture:
            return replay(d.fail_fixture)
        if d.fixture and not failing:
            return replay(d.fixture)
        return replay(f"gemini-{'err-429' if limited else 'plain'}-{ctx['format']}")
    if limited:
        msg = b"Error: [API Error: got status: 429 Too Many Requests. Quota exceeded]\n"
        return Output(post_err=msg, code=1)
    if d.fixture:
        return replay(d.fixture)
    return Output(post_out=ANSWER)


if __name__ == "__main__":
    main(PROG, parse_args, build_output)
