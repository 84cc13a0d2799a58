"""An agent's output → outcome (answer, session id, rate limit, retry time) and usage (turns,
tokens, cost), at the end of a run (`parse_output`) or while it runs (`Tracker`, fed by `follow`),
one decoder per format (fixtures, and where each schema comes from: tests/fixtures/agent-transcripts).
claude-stream-json  `claude -p --output-format stream-json --verbose` or `json`: the last `result`
                    decides (`is_error`, not `subtype`).   codex-json  `codex exec --json` (JSONL).
gemini-json         `gemini -p … --output-format json`: one pretty-printed object; a failure's on stderr.
gemini-stream-json  `--output-format stream-json` (JSONL).   opencode-json  `opencode run --format json`.
text                anything else: the last lines are the summary; no usage.
input_tokens counts cached input (claude's cache writes and reads, codex's cached input, gemini's
prompt, opencode's cache read/write), output_tokens reasoning; claude's are the main loop's, as its
`result` reports them. Stdlib only and cheap to import: the per-run shim imports this.
"""

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from .model import Outcome
from .policy import matches_rate_limit, parse_retry_at

TAIL_BYTES = 256 * 1024
SUMMARY_CHARS = 4000
LINE_LIMIT = 1 << 20  # a longer line (or pretty-printed object) is dropped, never kept
LAST_LINE_CHARS = 300
_CLAUDE_CACHE = ("cache_creation_input_tokens", "cache_read_input_tokens")
_GEMINI_QUOTA_ERRORS = ("TerminalQuotaError", "RetryableQuotaError")
_GEMINI_EVENTS = frozenset({"init", "message", "tool_use", "tool_result", "error", "result"})


@dataclass(frozen=True, slots=True)
class Parsed:
    outcome: Outcome
    summary: str | None
    session_id: str | None = None
    detail: str | None = None
    retry_at: float | None = None
    turns: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None


def read_tail(path: Path, limit: int = TAIL_BYTES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(size - limit, 0))
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    if size > limit:  # drop the partial first line
        text = text.split("\n", 1)[-1]
    return text


def last_lines(text: str, n: int = 20) -> str:
    lines = [ln for ln in text.rstrip().splitlines() if ln.strip()]
    return "\n".join(lines[-n:])[-SUMMARY_CHARS:]


def _last_line(text: str) -> str | None:
    return next((ln.strip()[:LAST_LINE_CHARS] for ln in reversed(text.splitlines()) if ln.strip()), None)


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


class Tracker:
    """What an agent's stdout said so far, fed chunks of any size as its log grows: complete lines
    are decoded, a partial last line waits, a line over LINE_LIMIT is dropped, what is no object
    of the format is skipped (gemini-json: a pretty-printed object, "{" to "}", is put together).
    Claude's figures sum the assistant messages (one per message id) until a `result` replaces them:
    its `num_turns` and `total_cost_usd` are cumulative for the session, its usage is the turn's."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._on_object = _DECODERS.get(kind)  # None: plain text
        self._pending, self._dropping = bytearray(), False  # dropping: an overlong line's rest
        self._doc: list[str] | None = None  # a pretty-printed object being put together
        self._doc_chars = self.results = 0
        self.session_id: str | None = None
        self.cost_usd: float | None = None
        self.last_line: str | None = None
        self.rate_limit_reset: float | None = None
        # for parse_output: a decisive object arrived (claude: a result); the last report failed
        # (what it says: final_text), a rate limit by a structured field; the last error on the way
        self.reported = self.failed = self.limited = False
        self.said: str | None = None
        self.final_text: str | None = None
        self.error: str | None = None
        self.turns: int | None = None
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self._live: dict[str, tuple[int, int]] = {}  # claude: usage per message since the last result
        self._settled = (0, 0)  # claude: the usage of all results so far
        self._open, self._tail = False, ""  # gemini-stream-json: the open message takes more deltas

    def feed(self, data: bytes) -> None:
        buf = self._pending
        begin, scan = 0, len(buf)  # no newline before scan
        buf += data
        while (nl := buf.find(b"\n", scan)) >= 0:
            if not self._dropping and nl - begin <= LINE_LIMIT:
                self._line(buf[begin:nl].decode("utf-8", "replace"))
            self._dropping, begin = False, nl + 1
            scan = begin
        del buf[:begin]
        if len(buf) > LINE_LIMIT:
            buf.clear()
            self._dropping = True

    def _line(self, text: str) -> None:
        if self._on_object is None:
            self.last_line = text.strip()[:LAST_LINE_CHARS] or self.last_line
        elif self.kind == "gemini-json" and text.rstrip() == "{":  # (re)starts a top-level object
            self._doc, self._doc_chars = ["{"], 2
        elif self._doc is not None:
            self._doc.append(text)
            self._doc_chars += len(text) + 1
            if text.rstrip() == "}":
                doc, self._doc = "\n".join(self._doc), None
                self._decode(doc)
            elif self._doc_chars > LINE_LIMIT:
                self._doc = None
        elif (text := text.strip()).startswith("{"):
            self._decode(text)

    def _decode(self, text: str) -> None:
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError):
            return
        if isinstance(obj, dict) and self._on_object is not None:
            self._on_object(self, obj)

    def _say(self, text: object) -> None:
        if isinstance(text, str) and text.strip():
            self.said = text[:SUMMARY_CHARS]
            self.last_line = _last_line(text)

    def _end(self, failure: str | None, *, failed: bool, limited: bool = False) -> None:
        self.reported, self.results = True, self.results + 1
        self.failed, self.final_text, self.limited = failed, failure, limited

    # ---- claude -p --output-format stream-json | json

    def _claude(self, obj: dict[str, Any]) -> None:
        self.session_id = _str(obj.get("session_id")) or self.session_id
        kind = obj.get("type")
        if kind == "assistant":
            self._claude_message(obj)
        elif kind == "result":
            self._claude_result(obj)
        elif kind == "rate_limit_event":
            if (info := _dict(obj.get("rate_limit_info"))).get("status") == "rejected":
                self.rate_limit_reset = _num(info.get("resetsAt")) or self.rate_limit_reset

    def _claude_message(self, obj: dict[str, Any]) -> None:
        if obj.get("parent_tool_use_id"):  # a sub-agent's: neither the answer nor the main loop's
            return
        msg = _dict(obj.get("message"))
        content = msg.get("content")
        for block in content if isinstance(content, list) else ():
            if isinstance(block, dict) and block.get("type") == "text":
                self._say(block.get("text"))
        mid = msg.get("id")
        # a message (and its usage so far) comes once per content block; <synthetic>: an API error
        if isinstance(mid, str) and msg.get("model") != "<synthetic>":
            now_in, now_out = _tokens(msg.get("usage"), *_CLAUDE_CACHE)
            was_in, was_out = self._live.get(mid, (0, 0))
            self.turns = (self.turns or 0) + (mid not in self._live)
            self._live[mid] = (now_in, now_out)
            self.input_tokens = (self.input_tokens or 0) + now_in - was_in
            self.output_tokens = (self.output_tokens or 0) + now_out - was_out

    def _claude_result(self, obj: dict[str, Any]) -> None:
        text, errors = obj.get("result"), obj.get("errors")
        if not isinstance(text, str):  # error_max_turns, error_during_execution: errors instead
            text = "; ".join(map(str, errors)) if isinstance(errors, list) else None
        self._say(text)
        used_in, used_out = _tokens(obj.get("usage"), *_CLAUDE_CACHE)
        self._settled = (self._settled[0] + used_in, self._settled[1] + used_out)
        self.input_tokens, self.output_tokens = self._settled
        turns = obj.get("num_turns")
        self.turns = turns if isinstance(turns, int) else self.turns or 0
        self._live.clear()
        cost = _num(obj.get("total_cost_usd"))
        self.cost_usd = self.cost_usd if cost is None else cost
        limited = obj.get("api_error_status") == 429 or obj.get("api_error") == "usage_limit_reached"
        self._end(text or None, failed=bool(obj.get("is_error")), limited=limited)

    # ---- codex exec --json

    def _codex(self, obj: dict[str, Any]) -> None:
        kind = obj.get("type")
        self.reported = True
        if kind == "thread.started":
            self.session_id = _str(obj.get("thread_id")) or self.session_id
        elif kind == "item.completed":
            item = _dict(obj.get("item"))
            if item.get("type") == "agent_message":
                self._say(item.get("text"))
        elif kind in ("turn.completed", "turn.failed"):
            self.turns = (self.turns or 0) + 1
            usage = obj.get("usage")
            if isinstance(usage, dict):  # cumulative over the thread: the latest counts
                self.input_tokens, self.output_tokens = _tokens(usage)
            failed = kind == "turn.failed"
            message = str(_dict(obj.get("error")).get("message") or "turn failed") if failed else None
            self._end(message, failed=failed)
        elif kind == "error":  # Codex goes on after most of these ("Reconnecting... 1/5 (…)")
            self.error = _str(obj.get("message")) or self.error

    # ---- gemini -p … --output-format json | stream-json

    def _gemini(self, obj: dict[str, Any]) -> None:
        if not {"response", "stats", "error"} & obj.keys():
            return
        self.session_id = _str(obj.get("session_id")) or self.session_id
        self._say(obj.get("response"))
        if models := _dict(_dict(obj.get("stats")).get("models")):
            self.turns, self.input_tokens, self.output_tokens = _gemini_usage(models.values())
        self._gemini_end(obj.get("error"))

    def _gemini_end(self, error: object) -> None:
        err = _dict(error)
        message = str(err.get("message") or err.get("type") or "error")
        limited = str(err.get("code")) == "429" or err.get("type") in _GEMINI_QUOTA_ERRORS
        limited |= "RESOURCE_EXHAUSTED" in message
        self._end(message if err else None, failed=bool(err), limited=limited)

    def _gemini_stream(self, obj: dict[str, Any]) -> None:
        kind = obj.get("type")
        if kind not in _GEMINI_EVENTS:
            return
        self.reported = True
        if kind == "message" and obj.get("role") == "assistant" and isinstance(obj.get("content"), str):
            head, tail = (self.said or "", self._tail) if obj.get("delta") and self._open else ("", "")
            self._tail = (tail + obj["content"])[-4 * LAST_LINE_CHARS :]
            self.said = (head + obj["content"])[:SUMMARY_CHARS] or None
            self.last_line = _last_line(self._tail) or self.last_line
            self._open = True
            return
        self._open = False
        if kind == "init":
            self.session_id = _str(obj.get("session_id")) or self.session_id
        elif kind == "error":
            self.error = _str(obj.get("message")) or self.error
        elif kind == "result":
            if stats := _dict(obj.get("stats")):
                self.input_tokens, self.output_tokens = _tokens(stats)
            error = obj.get("error")
            if obj.get("status") != "success" and not isinstance(error, dict):
                error = {"message": self.error or "gemini reported an error"}
            self._gemini_end(error)

    # ---- opencode run --format json

    def _opencode(self, obj: dict[str, Any]) -> None:
        kind, part = obj.get("type"), obj.get("part")
        if kind == "error":
            error = _dict(obj.get("error"))
            data = _dict(error.get("data"))
            message = str(data.get("message") or error.get("name") or "error")
            self.error = message
            self._end(message, failed=True, limited=data.get("statusCode") == 429)
        elif not isinstance(part, dict):  # every other event carries its part
            return
        elif kind == "text":
            self._say(part.get("text"))
        elif kind == "step_finish":
            self._opencode_step(part)
        self.session_id = _str(obj.get("sessionID")) or self.session_id
        self.reported = True

    def _opencode_step(self, part: dict[str, Any]) -> None:
        tokens = _dict(part.get("tokens"))
        cache = _dict(tokens.get("cache"))
        cached = _int(cache.get("read")) + _int(cache.get("write"))
        self.turns = (self.turns or 0) + 1
        self.input_tokens = (self.input_tokens or 0) + _int(tokens.get("input")) + cached
        used_out = _int(tokens.get("output")) + _int(tokens.get("reasoning"))
        self.output_tokens = (self.output_tokens or 0) + used_out
        cost = _num(part.get("cost"))
        self.cost_usd = self.cost_usd if cost is None else (self.cost_usd or 0.0) + cost
        if part.get("reason") != "tool-calls":  # the answer's last step (an earlier error stands)
            self.results += 1


_DECODERS: dict[str, Callable[[Tracker, dict[str, Any]], None]] = {
    "claude-stream-json": Tracker._claude,
    "codex-json": Tracker._codex,
    "gemini-json": Tracker._gemini,
    "gemini-stream-json": Tracker._gemini_stream,
    "opencode-json": Tracker._opencode,
}


def _gemini_usage(models: Iterable[object]) -> tuple[int, int, int]:
    """Turns (the API calls that answered), input (prompt = input + cached), output (+ thoughts)."""
    turns = used_in = used_out = 0
    for model in models:
        tokens, api = _dict(_dict(model).get("tokens")), _dict(_dict(model).get("api"))
        turns += max(_int(api.get("totalRequests")) - _int(api.get("totalErrors")), 0)
        used_in += _int(tokens.get("prompt"))
        used_out += _int(tokens.get("candidates")) + _int(tokens.get("thoughts"))
    return turns, used_in, used_out


def _tokens(usage: object, *cached: str) -> tuple[int, int]:
    """(input_tokens + the cached counts named, output_tokens) of a usage object."""
    u = _dict(usage)
    return _int(u.get("input_tokens")) + sum(_int(u.get(k)) for k in cached), _int(u.get("output_tokens"))


def follow(path: Path, tracker: Tracker, offset: int, limit: int = 1 << 20) -> int:
    """Feed tracker what path gained since offset (≤ limit bytes); the new offset (same: no file)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(limit)
    except OSError:
        return offset
    tracker.feed(data)
    return offset + len(data)


def parse_output(
    kind: str, stdout: str, stderr: str, *, exit_code: int | None, patterns: Iterable[str], now: datetime
) -> Parsed:
    patterns = tuple(patterns)
    if kind not in _DECODERS:
        return _text(stdout, stderr, exit_code, patterns, now)
    t = Tracker(kind)
    t.feed(stdout.encode("utf-8", "replace") + b"\n")  # the newline ends a last line that had none
    if kind == "gemini-json":  # its failures are printed on stderr
        t.feed(stderr.encode("utf-8", "replace") + b"\n")
    if not t.reported:  # killed or crashed before its final object: what it last said, its session
        p = replace(_text("", stderr, exit_code, patterns, now), summary=t.said or last_lines(stderr) or None)
        p = replace(p, session_id=t.session_id)
    elif exit_code == 0 and not t.failed:
        p = Parsed(Outcome.SUCCEEDED, t.said, t.session_id)
    else:
        text = t.final_text or t.error or stderr
        limited = t.limited or (kind.startswith("gemini") and "RESOURCE_EXHAUSTED" in text)
        said, at = t.said or t.final_text, t.rate_limit_reset
        p = _failure(text, exit_code, patterns, now, said, t.session_id, rate_limited=limited, resets_at=at)
    return replace(
        p, turns=t.turns, input_tokens=t.input_tokens, output_tokens=t.output_tokens, cost_usd=t.cost_usd
    )


def _failure(
    text: str,
    exit_code: int | None,
    patterns: tuple[str, ...],
    now: datetime,
    summary: str | None,
    session: str | None = None,
    *,
    rate_limited: bool = False,
    resets_at: float | None = None,
) -> Parsed:
    detail = (text.strip().splitlines() or [f"exit code {exit_code}"])[-1][:300]
    if rate_limited or resets_at is not None or matches_rate_limit(text, patterns):
        at = parse_retry_at(text, now, resets_at_epoch=resets_at)
        return Parsed(
            Outcome.RATE_LIMITED, summary, session, f"rate limited: {detail}", at.timestamp() if at else None
        )
    return Parsed(Outcome.FAILED, summary, session, detail or f"exit code {exit_code}")


def _text(
    stdout: str, stderr: str, exit_code: int | None, patterns: tuple[str, ...], now: datetime
) -> Parsed:
    summary = last_lines(stdout) or None
    if exit_code == 0:
        return Parsed(Outcome.SUCCEEDED, summary)
    tail = last_lines(stdout + "\n" + stderr, 40)
    return _failure(tail, exit_code, patterns, now, summary or last_lines(stderr) or None)
