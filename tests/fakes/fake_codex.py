"""Fake ``codex`` (Codex CLI) for tests: ``codex exec``.

    fake_codex.py exec --json [-m M] [flags] PROMPT
    fake_codex.py exec resume SESSION_ID PROMPT --json [flags]     (or: exec resume --last PROMPT)

Replays a captured transcript byte for byte (stdout, stderr, exit code): ``codex-plain`` by default,
``@fixture=NAME`` picks another one. The prompt is the last positional argument; ``-`` or no
prompt reads it from stdin. Without ``--json`` stdout is only the final agent message (the human
output of the real CLI is not faked). ``-C/--cd DIR`` changes the working directory (so
``@write`` lands there); ``-o/--output-last-message FILE`` writes the final agent message.
Unknown ``--flags`` are accepted as boolean switches; flags taking a value are in VALUE_FLAGS.

``exec … resume ID`` continues thread ID: the ``thread.started`` event names ID (logged as ``resume``
in the ``parsed`` event).

Directives in the prompt: see _fakecommon.py. Codex specifics: ``@ratelimit`` and a run failed by
``@fail-until`` replay ``codex-err-429-rate-limit`` (or ``@fail-fixture``).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _fakecommon import (
    Directives,
    Output,
    UsageError,
    jsonl,
    main,
    read_fixture,
    read_stdin_prompt,
    replay,
    rewrite,
    split_args,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~4 ms at each start)
if TYPE_CHECKING:
    from typing import Any

PROG = "fake_codex"

VALUE_FLAGS = {
    "-m", "--model", "-c", "--config", "-C", "--cd", "-s", "--sandbox", "-p", "--profile",
    "-i", "--image", "-o", "--output-last-message", "--output-schema", "--color",
    "--add-dir", "--local-provider", "-a", "--ask-for-approval", "--enable", "--disable",
}  # fmt: skip


def parse_args(argv: list[str]) -> tuple[str, dict[str, Any]]:
    if not argv or argv[0] not in ("exec", "e"):
        raise UsageError(f"only `codex exec` is faked, got {argv[:1]!r}")
    opts, positionals = split_args(argv[1:], VALUE_FLAGS)
    resume = None
    if positionals[:1] == ["resume"]:
        positionals = positionals[1:]
        if opts.get("--last"):
            resume = "--last"
        elif positionals:
            resume = positionals.pop(0)
        else:
            raise UsageError("exec resume needs SESSION_ID (or --last)")
    prompt = positionals[-1] if positionals else "-"
    if prompt == "-":
        prompt = read_stdin_prompt(PROG)
    last_message = opts.get("-o") or opts.get("--output-last-message")
    ctx = {
        "options": opts,
        "json": bool(opts.get("--json") or opts.get("--experimental-json")),
        "resume": resume,
        "last_message": os.path.abspath(last_message) if isinstance(last_message, str) else None,
        "log": {"resume": resume},
    }
    change_dir(opts.get("-C") or opts.get("--cd"))
    return prompt, ctx


def change_dir(workdir: str | bool | None) -> None:
    if isinstance(workdir, str):
        try:
            os.chdir(workdir)
        except OSError as e:
            raise UsageError(f"-C {workdir}: {e}") from None


def pick_fixture(d: Directives, failing: bool) -> str:
    if failing:
        return d.fail_fixture or "codex-err-429-rate-limit"
    if d.fixture:
        fixture: str = d.fixture  # Directives, from _fakecommon imported by path, is Any here
        return fixture
    if d.ratelimit and d.fail_until is None:  # with @fail-until: only the failing runs
        return "codex-err-429-rate-limit"
    return "codex-plain"


def continued(thread: str) -> Any:
    def change(obj: dict[str, Any]) -> None:
        if obj.get("type") == "thread.started":
            obj["thread_id"] = thread

    return change


def final_message(stdout: bytes) -> str | None:
    texts = [
        o["item"].get("text", "")
        for o in jsonl(stdout)
        if o.get("type") == "item.completed" and o.get("item", {}).get("type") == "agent_message"
    ]
    return texts[-1] if texts else None


def build_output(ctx: dict[str, Any], d: Directives, failing: bool, attempt: int | None) -> Output:
    name = pick_fixture(d, failing)
    out, err, code = read_fixture(name)
    message = final_message(out)
    if ctx["last_message"] and message is not None:
        with open(ctx["last_message"], "w", encoding="utf-8") as f:
            f.write(message)
    if ctx["json"]:
        out = replay(name, stderr_first=True)
        thread = ctx["resume"] if ctx["resume"] not in (None, "--last") else None
        if thread is not None:
            change = continued(thread)
            out.pre_out, out.post_out = rewrite(out.pre_out, change), rewrite(out.post_out, change)
        return out
    return Output(pre_err=err, post_out=b"" if message is None else (message + "\n").encode(),
                  code=code)  # fmt: skip


if __name__ == "__main__":
    main(PROG, parse_args, build_output)
