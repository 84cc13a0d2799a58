"""Fake generic agent for tests: ``fake_agent.py [--] PROMPT`` (several arguments are joined with
spaces; no argument reads the prompt from stdin). It takes no options: like a real CLI, any
argument before ``--`` that starts with ``-`` is an option, and an unknown one is a usage error
(exit 2), so a prompt that reaches it as an option shows.

Prints three lines of plain text and exits 0:

    fake-agent: started
    fake-agent: prompt: <the prompt, newlines shown as \\n>
    fake-agent: done

(the last one after the @sleep). Directives in the prompt: see _fakecommon.py. Specifics:
``@ratelimit`` prints ``API Error: Request rejected (429) · rate limit exceeded`` and exits 1;
a run failed by ``@fail-until`` prints an error line on stdout and stderr and exits 1 (the
rate-limit line with ``@ratelimit``, a replay with ``@fail-fixture``); ``@fixture=NAME``
replays any fixture.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _fakecommon import Directives, Output, UsageError, main, read_stdin_prompt, replay, split_args

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~4 ms at each start)
if TYPE_CHECKING:
    from typing import Any

PROG = "fake_agent"
RATE_LIMIT_LINE = "API Error: Request rejected (429) · rate limit exceeded\n"


def parse_args(argv: list[str]) -> tuple[str, dict[str, Any]]:
    opts, positionals = split_args(argv, set())
    if opts:
        raise UsageError(f"unknown option {sorted(opts)[0]!r}")
    prompt = " ".join(positionals) if positionals else read_stdin_prompt(PROG)
    return prompt, {"prompt": prompt, "options": opts}


def build_output(ctx: dict[str, Any], d: Directives, failing: bool, attempt: int | None) -> Output:
    if failing:
        if d.fail_fixture:
            return replay(d.fail_fixture)
        if d.ratelimit:
            return Output(post_out=RATE_LIMIT_LINE.encode(), code=1)
        msg = f"Error: simulated transient failure (attempt {attempt}, succeeds at {d.fail_until})\n"
        return Output(post_out=b"fake-agent: started\n" + msg.encode(), post_err=msg.encode(), code=1)
    if d.fixture:
        return replay(d.fixture)
    if d.ratelimit and d.fail_until is None:
        return Output(post_out=RATE_LIMIT_LINE.encode(), code=1)
    shown = ctx["prompt"].replace("\\", "\\\\").replace("\n", "\\n")
    return Output(
        pre_out=f"fake-agent: started\nfake-agent: prompt: {shown}\n".encode(),
        post_out=b"fake-agent: done\n",
    )


if __name__ == "__main__":
    main(PROG, parse_args, build_output)
