"""Fake ``claude`` (Claude Code) for tests: ``claude -p PROMPT [flags]``.

    fake_claude.py -p PROMPT --output-format stream-json --verbose [--model M] [--resume ID] [...]
    fake_claude.py -p --input-format stream-json --output-format stream-json --verbose [...]

Replays a captured transcript byte for byte (stdout, stderr, exit code):
``claude-plain-stream-json`` for ``--output-format stream-json``, ``claude-plain-json`` for
``--output-format json``; ``@fixture=NAME`` picks another one. With the default text format it
prints the fixture's final ``result`` text, as the real CLI does.

Like the real CLI: ``-p``/``--print`` is required (interactive mode is not faked); stream-json
without ``--verbose`` fails with the real CLI's message; the prompt is the positional argument,
or stdin when there is none. Unknown ``--flags`` are accepted as boolean switches (``--flag=value``
works for any flag); flags known to take a value are listed in VALUE_FLAGS.

``--resume ID`` continues session ID: every ``session_id`` in stream-json output is ID (the json
format replays its fixture as it is); it is logged as ``resume`` in the ``parsed`` event. ``--input-format stream-json`` reads user messages from stdin,
one JSON line each (``{"type":"user","message":{"role":"user","content":...}}``): the first is the
prompt (answered as above); each later one is answered, as it arrives, with an assistant message
and a ``result`` whose text is ``echo: TEXT`` (logged as a ``message`` event); it ends at the end
of stdin. ``--max-turns N`` is accepted.

Directives in the prompt: see _fakecommon.py. Claude specifics: ``@turns=N`` (stream-json) prints
N assistant messages, one after each @sleep, then a result with num_turns N; ``@cost=USD`` sets the
result's total_cost_usd. Also: ``@ratelimit`` replays
``claude-err-429-{stream-json,json}``; a run failed by ``@fail-until`` replays
``claude-err-529-*`` (overloaded), or ``claude-err-429-*`` with ``@ratelimit``, or ``@fail-fixture``.

``@ask=TOOL`` asks for permission to use TOOL (input ``{"command": "echo asked"}``) the way the
real CLI does in print mode: with ``--permission-prompt-tool mcp__SERVER__TOOL`` and
``--mcp-config JSON`` (or a file of it) it starts SERVER as the config says (a real stdio
subprocess, with this process's environment plus the config's ``env``), calls TOOL with
``{tool_name, input, tool_use_id}`` through a real MCP client and reads the JSON text it returns;
without a prompt tool the request is denied, as print mode denies what it would have prompted
for. The result's text is ``allowed: TOOL`` or ``denied: MESSAGE``; the answer is logged as a
``permission`` event (``behavior``, ``message``, ``updated_input``).
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _fakecommon import (
    CliExit,
    Directives,
    Fake,
    Output,
    UsageError,
    jsonl,
    main,
    read_fixture,
    read_stdin_prompt,
    replay,
    rewrite,
    split_args,
    write_all,
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
    stream_in = opts.get("--input-format", "text") == "stream-json"
    if stream_in and fmt != "stream-json":
        raise UsageError("--input-format stream-json needs --output-format stream-json")
    turns = opts.get("--max-turns")
    if turns is not None and not (isinstance(turns, str) and turns.isdigit()):
        raise UsageError(f"--max-turns needs a number, got {turns!r}")
    if stream_in:
        prompt = next_user_message()
        if prompt is None:
            raise UsageError("--input-format stream-json: no user message on stdin")
    else:
        prompt = positionals[0] if positionals else read_stdin_prompt(PROG)
    resume = opts.get("--resume") or opts.get("-r")
    ctx = {"format": fmt, "resume": resume, "stream_in": stream_in, "options": opts}
    ctx["log"] = {"resume": resume, "input_format": "stream-json" if stream_in else "text"}
    return prompt, ctx


def next_user_message() -> str | None:
    """The text of the next user message on stdin (stream-json), or None at its end."""
    while raw := sys.stdin.buffer.readline():
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        if isinstance(obj, dict) and obj.get("type") == "user":
            content = obj.get("message", {}).get("content")
            if isinstance(content, str):
                return content
            texts = [b.get("text", "") for b in content or () if isinstance(b, dict)]
            return "".join(t for t in texts if isinstance(t, str))
    return None


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
    if d.ask is not None and not failing:
        return permission_output(ctx["options"], d.ask)
    if ctx["format"] == "stream-json" and d.turns is not None and not failing:
        out = turns_output(d.turns, d.cost)
    elif ctx["format"] != "text":
        out = replay(pick_fixture(ctx["format"], d, failing))
    else:
        return text_output(pick_fixture(ctx["format"], d, failing))
    # (the json format replays its fixture as it is, --resume or not)
    session = ctx["resume"] if isinstance(ctx["resume"], str) and ctx["format"] == "stream-json" else None
    if session is not None or d.cost is not None:
        change = reporting(session, d.cost)
        out.pre_out, out.post_out = rewrite(out.pre_out, change), rewrite(out.post_out, change)
        out.steps = [rewrite(step, change) for step in out.steps] if out.steps else out.steps
    if ctx["stream_in"]:
        first = jsonl(out.pre_out + out.post_out)
        sid = next((o["session_id"] for o in first if isinstance(o.get("session_id"), str)), SESSION)
        done = next((o["num_turns"] for o in first if isinstance(o.get("num_turns"), int)), 1)
        out.then = lambda fake: answer_messages(fake, sid, d.cost, done)
    return out


SESSION = "fake-session-0001"


def reporting(session: str | None, cost: float | None) -> Any:
    def change(obj: dict[str, Any]) -> None:
        if session is not None and "session_id" in obj:
            obj["session_id"] = session
        if cost is not None and obj.get("type") == "result":
            obj["total_cost_usd"] = cost

    return change


def line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode()


def assistant(n: int, text: str, session: str) -> bytes:
    message = {
        "id": f"msg_fake_{n:04}", "type": "message", "role": "assistant", "model": "fake",
        "content": [{"type": "text", "text": text}], "usage": {"input_tokens": 10, "output_tokens": 5},
    }  # fmt: skip
    return line({"type": "assistant", "message": message, "parent_tool_use_id": None, "session_id": session})


def result(text: str, session: str, *, turns: int, cost: float | None) -> bytes:
    return line({
        "type": "result", "subtype": "success", "is_error": False, "result": text,
        "session_id": session, "num_turns": turns, "total_cost_usd": 0.001 * turns if cost is None else cost,
        "usage": {"input_tokens": 10 * turns, "output_tokens": 5 * turns},
    })  # fmt: skip


def turns_output(n: int, cost: float | None) -> Output:
    """A run of n turns: init, then one assistant message per step, then the result."""
    init = line({"type": "system", "subtype": "init", "session_id": SESSION, "model": "fake"})
    steps = [assistant(i, f"turn {i}", SESSION) for i in range(1, n + 1)]
    return Output(pre_out=init, steps=steps, post_out=result(f"turn {n}", SESSION, turns=n, cost=cost))


def answer_messages(fake: Fake, session: str, cost: float | None, turns: int) -> None:
    """Answer each later user message on stdin, until its end (num_turns counts the session's)."""
    n = 0
    while (text := next_user_message()) is not None:
        n += 1
        fake.log("message", text=text[:2000])
        reply = f"echo: {text}"
        answer = assistant(1000 + n, reply, session) + result(reply, session, turns=turns + n, cost=cost)
        write_all(1, answer)


ASKED_INPUT = {"command": "echo asked"}


def permission_output(options: dict[str, Any], tool: str) -> Output:
    """Ask for permission to use `tool`, then end with what the answer was."""
    prompt_tool, config = options.get("--permission-prompt-tool"), options.get("--mcp-config")
    if isinstance(prompt_tool, str) and isinstance(config, str):
        answer = ask_permission(prompt_tool, config, tool, ASKED_INPUT)
    else:
        answer = {
            "behavior": "deny",
            "message": f"Claude requested permissions to use {tool}, but you haven't granted it yet.",
        }
    allowed = answer.get("behavior") == "allow"
    text = f"allowed: {tool}" if allowed else f"denied: {answer.get('message')}"
    init = line({"type": "system", "subtype": "init", "session_id": SESSION, "model": "fake"})
    out = Output(pre_out=init, post_out=result(text, SESSION, turns=1, cost=None))
    out.then = lambda fake: fake.log(
        "permission",
        behavior=answer.get("behavior"),
        message=answer.get("message"),
        updated_input=answer.get("updatedInput"),
    )
    return out


def ask_permission(prompt_tool: str, config: str, tool: str, tool_input: dict[str, Any]) -> dict[str, Any]:
    """Call the permission-prompt tool as Claude Code does: the server named by
    ``mcp__SERVER__TOOL``, started from the MCP config, answers with the text of a JSON object."""
    import anyio  # the MCP SDK only here: the other runs of the fake start light
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters, stdio_client

    prefix, server, name = prompt_tool.split("__", 2)
    if prefix != "mcp":
        raise UsageError(f"--permission-prompt-tool {prompt_tool!r} is not an MCP tool (mcp__server__tool)")
    if not config.lstrip().startswith("{"):
        with open(config, encoding="utf-8") as f:
            config = f.read()
    spec = json.loads(config)["mcpServers"][server]
    params = StdioServerParameters(
        command=spec["command"], args=spec.get("args", []), env={**os.environ, **spec.get("env", {})}
    )
    arguments = {"tool_name": tool, "input": tool_input, "tool_use_id": "toolu_fake_0001"}

    async def call() -> dict[str, Any]:
        async with Client(stdio_client(params), mode="legacy") as client:
            answered = await client.call_tool(name, arguments)
        text = "".join(getattr(block, "text", "") for block in answered.content)
        answer: dict[str, Any] = json.loads(text)
        return answer

    return anyio.run(call)


def text_output(name: str) -> Output:
    """Text mode: the final result text (or the error list), from the fixture's result object."""
    out, err, code = read_fixture(name)
    results = [o for o in jsonl(out) if o.get("type") == "result"]
    text = ""
    if results:
        r = results[-1]
        text = r["result"] if isinstance(r.get("result"), str) else "\n".join(r.get("errors", []))
    return Output(post_out=(text + "\n").encode(), post_err=err, code=code)


if __name__ == "__main__":
    main(PROG, parse_args, build_output)
