"""Fake ``claude`` (Claude Code) for tests: ``claude -p PROMPT [flags]``.

    fake_claude.py -p PROMPT --output-format stream-json --verbose [--model M] [--resume ID] [...]

Replays a captured transcript byte for byte (stdout, stderr, exit code):
``claude-plain-stream-json`` for ``--output-format stream-json``, ``claude-plain-json`` for
``--output-format json``; ``@fixture=NAME`` picks another one. With the default text format it
prints the fixture's final ``result`` text, as the real CLI does.

Like the real CLI: ``-p``/``--print`` is required (interactive mode is not faked); stream-json
without ``--verbose`` fails with the real CLI's message; the prompt is the positional argument,
or stdin when there is none. Unknown ``--flags`` are accepted as boolean switches (``--flag=value``
works for any flag); flags known to take a value are listed in VALUE_FLAGS.

Directives in the prompt: see _fakecommon.py. Claude specifics: ``@ratelimit`` replays
``claude-err-429-{stream-json,json}``; a run failed by ``@fail-until`` replays
``claude-err-529-*`` (overloaded), or ``claude-err-429-*`` with ``@ratelimit``, or ``@fail-fixture``.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _fakecommon import (
    CliExit,
    Directives,
    Output,
    UsageError,
    jsonl,
    main,
    read_fixture,
    read_stdin_prompt,
    replay,
    split_args,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~4 ms at each start)
if TYPE_CHECKING:
    from typing import Any

PROG = "fake_claude"

# Options of claude 2.x that take a value (one argument each here; the real CLI's variadic
# ones, e.g. --allowedTools/--add-dir, would also swallow the following words).
VALUE_FLAGS = {
    "--output-format", "--input-format", "--model", "--fallback-model",
    "-r", "--resume", "--session-id", "--max-turns", "--max-budget-usd",
    "--allowedTools", "--allowed-tools", "--disallowedTools", "--disallowed-tools", "--tools",
    "--permission-mode", "--permission-prompt-tool",
    "--system-prompt", "--system-prompt-file", "--append-system-prompt",
    "--append-system-prompt-file", "--mcp-config", "--settings", "--setting-sources",
    "--add-dir", "--agents", "--agent", "--json-schema", "--betas", "--plugin-dir",
    "--debug-file", "--effort",
}  # fmt: skip

STREAM_JSON_NEEDS_VERBOSE = b"Error: When using --print, --output-format=stream-json requires --verbose\n"


def parse_args(argv: list[str]) -> tuple[str, dict[str, Any]]:
    opts, positionals = split_args(argv, VALUE_FLAGS)
    if not (opts.get("-p") or opts.get("--print")):
        raise UsageError("only print mode is faked: pass -p/--print")
    if len(positionals) > 1:
        raise UsageError(
            f"more than one positional argument {positionals!r}: the prompt is one argument; "
            "if the first is an option's value, add that option to VALUE_FLAGS in "
            f"{os.path.abspath(__file__)}"
        )
    fmt = opts.get("--output-format", "text")
    if fmt not in ("text", "json", "stream-json"):
        raise UsageError(f"--output-format must be text, json or stream-json, not {fmt!r}")
    if fmt == "stream-json" and not opts.get("--verbose"):
        raise CliExit(1, stderr=STREAM_JSON_NEEDS_VERBOSE)
    prompt = positionals[0] if positionals else read_stdin_prompt(PROG)
    return prompt, {"format": fmt, "resume": opts.get("--resume") or opts.get("-r"), "options": opts}


def pick_fixture(fmt: str, d: Directives, failing: bool) -> str:
    mode = "json" if fmt == "json" else "stream-json"
    if failing:
        return d.fail_fixture or (f"claude-err-429-{mode}" if d.ratelimit else f"claude-err-529-{mode}")
    if d.fixture:
        fixture: str = d.fixture  # Directives, from _fakecommon imported by path, is Any here
        return fixture
    if d.ratelimit and d.fail_until is None:  # with @fail-until: only the failing runs
        return f"claude-err-429-{mode}"
    return f"claude-plain-{mode}"


def build_output(ctx: dict[str, Any], d: Directives, failing: bool, attempt: int | None) -> Output:
    name = pick_fixture(ctx["format"], d, failing)
    if ctx["format"] != "text":
        return replay(name)
    # Text mode: the final result text (or the error list), from the fixture's result object.
    out, err, code = read_fixture(name)
    results = [o for o in jsonl(out) if o.get("type") == "result"]
    text = ""
    if results:
        r = results[-1]
        text = r["result"] if isinstance(r.get("result"), str) else "\n".join(r.get("errors", []))
    return Output(post_out=(text + "\n").encode(), post_err=err, code=code)


if __name__ == "__main__":
    main(PROG, parse_args, build_output)
