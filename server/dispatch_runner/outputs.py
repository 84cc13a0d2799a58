"""Read an agent's output files into an outcome: final answer, session id, rate limit, retry time.

Formats (fixtures/agent-transcripts): claude `--output-format stream-json|json` ends with a
`result` object (check `is_error`, not `subtype`); `codex exec --json` is JSONL ending with
`turn.completed` or `turn.failed`; anything else is plain text (the last lines are the summary).
Stdlib only: the per-run shim imports this.
"""

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .model import Outcome
from .policy import matches_rate_limit, parse_retry_at

TAIL_BYTES = 256 * 1024
SUMMARY_CHARS = 4000


@dataclass(frozen=True, slots=True)
class Parsed:
    outcome: Outcome
    summary: str | None
    session_id: str | None = None
    detail: str | None = None
    retry_at: float | None = None


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


def _json_lines(text: str) -> Iterator[dict[str, Any]]:
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                yield obj


def last_lines(text: str, n: int = 20) -> str:
    lines = [ln for ln in text.rstrip().splitlines() if ln.strip()]
    return "\n".join(lines[-n:])[-SUMMARY_CHARS:]


def parse_output(
    kind: str, stdout: str, stderr: str, *, exit_code: int | None, patterns: Iterable[str], now: datetime
) -> Parsed:
    patterns = tuple(patterns)
    if kind == "claude-stream-json":
        parsed = _claude(stdout, stderr, exit_code, patterns, now)
    elif kind == "codex-json":
        parsed = _codex(stdout, stderr, exit_code, patterns, now)
    else:
        return _text(stdout, stderr, exit_code, patterns, now)
    if parsed is not None:
        return parsed
    # a JSON agent that ended without its final object (killed, crashed): its raw JSON lines are
    # no summary; the last thing it said, if anything, is
    said = _last_assistant_text(stdout)
    fallback = _text("", stderr, exit_code, patterns, now)
    return Parsed(
        fallback.outcome, said or (last_lines(stderr) or None), None, fallback.detail, fallback.retry_at
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
    if rate_limited or matches_rate_limit(text, patterns):
        at = parse_retry_at(text, now, resets_at_epoch=resets_at)
        return Parsed(
            Outcome.RATE_LIMITED, summary, session, f"rate limited: {detail}", at.timestamp() if at else None
        )
    return Parsed(Outcome.FAILED, summary, session, detail or f"exit code {exit_code}")


def _last_assistant_text(stdout: str) -> str | None:
    """The last text an agent emitted: claude `assistant` text blocks, codex `agent_message`."""
    said: str | None = None
    for obj in _json_lines(stdout):
        if obj.get("type") == "assistant":
            for block in (obj.get("message") or {}).get("content") or []:
                if isinstance(block, dict) and block.get("type") == "text" and block.get("text"):
                    said = str(block["text"])
        elif obj.get("type") == "item.completed":
            item = obj.get("item") or {}
            if item.get("type") == "agent_message" and item.get("text"):
                said = str(item["text"])
    return said[:SUMMARY_CHARS] if said else None


def _claude(
    stdout: str, stderr: str, exit_code: int | None, patterns: tuple[str, ...], now: datetime
) -> Parsed | None:
    result: dict[str, Any] | None = None
    resets_at: float | None = None
    session: str | None = None
    for obj in _json_lines(stdout):
        session = obj.get("session_id") or session
        if obj.get("type") == "result":
            result = obj
        elif obj.get("type") == "rate_limit_event":
            info = obj.get("rate_limit_info") or {}
            if info.get("status") == "rejected" and isinstance(info.get("resetsAt"), int | float):
                resets_at = float(info["resetsAt"])
    if result is None:
        return None
    text = result.get("result")
    if not isinstance(text, str):
        text = "; ".join(str(e) for e in result.get("errors") or []) or None
    summary = text[:SUMMARY_CHARS] if text else None
    session = result.get("session_id") or session
    if exit_code == 0 and not result.get("is_error"):
        return Parsed(Outcome.SUCCEEDED, summary, session)
    limited = (
        result.get("api_error_status") == 429
        or result.get("api_error") == "usage_limit_reached"
        or resets_at is not None
    )
    return _failure(
        text or stderr or "",
        exit_code,
        patterns,
        now,
        summary,
        session,
        rate_limited=limited,
        resets_at=resets_at,
    )


def _codex(
    stdout: str, stderr: str, exit_code: int | None, patterns: tuple[str, ...], now: datetime
) -> Parsed | None:
    message: str | None = None
    failed: str | None = None
    thread: str | None = None
    seen = False
    for obj in _json_lines(stdout):
        seen = True
        kind = obj.get("type")
        if kind == "thread.started":
            thread = obj.get("thread_id") or thread
        elif kind == "item.completed":
            item = obj.get("item") or {}
            if item.get("type") == "agent_message" and isinstance(item.get("text"), str):
                message = item["text"]
        elif kind == "turn.failed":
            failed = str((obj.get("error") or {}).get("message") or "turn failed")
    if not seen:
        return None
    summary = message[:SUMMARY_CHARS] if message else None
    if exit_code == 0 and failed is None:
        return Parsed(Outcome.SUCCEEDED, summary, thread)
    return _failure(failed or stderr or "", exit_code, patterns, now, summary or failed, thread)


def _text(
    stdout: str, stderr: str, exit_code: int | None, patterns: tuple[str, ...], now: datetime
) -> Parsed:
    summary = last_lines(stdout) or None
    if exit_code == 0:
        return Parsed(Outcome.SUCCEEDED, summary)
    tail = last_lines(stdout + "\n" + stderr, 40)
    return _failure(tail, exit_code, patterns, now, summary or last_lines(stderr) or None)
