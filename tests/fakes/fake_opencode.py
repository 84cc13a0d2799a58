"""Fake ``opencode`` for tests: ``opencode run [message..]``, parsing argv the way the real CLI
does (yargs with ``populate--``).

    fake_opencode.py run [-m provider/model] [--format default|json] [--auto] [message..] [-- words]

Like the real CLI: an element that starts with ``-`` before ``--`` is an option; the words after
``--`` are message text. stdin, when it is not a terminal, is read until its end and appended to
the message on a new line (the message alone when there are no words). No message at all is an
error (exit 1). Unknown options are accepted as switches (the fake logs them as parsed). Prints
a short text answer; with ``--format json`` it replays ``opencode-plain-json`` (``opencode-err-429-json``
with ``@ratelimit`` or on a run failed by ``@fail-until``, unless ``@fail-fixture`` names another).
Directives in the prompt: see _fakecommon.py.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _fakecommon import CliExit, Directives, Output, UsageError, main, piped_stdin, replay, split_args

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~4 ms at each start)
if TYPE_CHECKING:
    from typing import Any

PROG = "fake_opencode"
VALUE_FLAGS = {
    "-m", "--model", "--format", "-s", "--session", "--agent", "-f", "--file", "--title",
    "--port", "--attach", "--variant", "--command",
}  # fmt: skip
ANSWER = b"Hello! The answer is 42.\n"


def parse_args(argv: list[str]) -> tuple[str, dict[str, Any]]:
    if not argv or argv[0] != "run":
        raise UsageError(f"only `opencode run` is faked, got {argv[:1]!r}")
    opts, words = split_args(argv[1:], VALUE_FLAGS)
    message = " ".join(words)
    piped = piped_stdin()
    prompt = f"{message}\n{piped}" if message and piped else (message or piped or "")
    if not prompt.strip():
        raise CliExit(1, stderr=b"Error: You must provide a message or a command\n")
    return prompt, {"options": opts, "format": opts.get("--format") or "default"}


def build_output(ctx: dict[str, Any], d: Directives, failing: bool, attempt: int | None) -> Output:
    limited = failing or (d.ratelimit and d.fail_until is None)
    if ctx["format"] == "json":
        if failing and d.fail_fixture:
            return replay(d.fail_fixture)
        if d.fixture and not failing:
            return replay(d.fixture)
        return replay("opencode-err-429-json" if limited else "opencode-plain-json")
    if limited:
        return Output(post_err=b"Error: AI_APICallError: Rate limit exceeded (429)\n", code=1)
    if d.fixture:
        return replay(d.fixture)
    return Output(post_out=ANSWER)


if __name__ == "__main__":
    main(PROG, parse_args, build_output)
