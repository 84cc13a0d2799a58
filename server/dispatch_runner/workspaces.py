"""Workspace directories and files: paths checked against allowed_roots, prompt, status.json
(atomically rewritten on every transition), result, logs, and git worktrees for `repo`.
"""

import itertools
import json
import os
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .errors import PathNotAllowed
from .model import Priority

_TMP_SEQ = itertools.count()


def new_id(now: float | None = None) -> str:
    import secrets  # here, not at the top: it pulls in OpenSSL (4 MB in every forked shim)

    stamp = time.strftime("%m%d-%H%M%S", time.gmtime(now if now is not None else time.time()))
    return f"ws-{stamp}-{secrets.token_hex(3)}"


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write via a temporary file and rename: readers see the old or the new file, never half."""
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{next(_TMP_SEQ)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.replace(tmp, path)
    except BaseException:
        with _suppress():
            os.unlink(tmp)
        raise


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True


def resolve_inside(text: str, field: str, roots: Iterable[Path]) -> Path:
    """An existing directory, symlinks followed, inside one of `roots`; '..' is refused."""
    roots = tuple(roots)
    names = ", ".join(str(r) for r in roots)
    if not text or not text.strip():
        raise PathNotAllowed(field, f"{field} is empty; give an absolute directory path")
    raw = Path(text).expanduser()
    if ".." in raw.parts:
        raise PathNotAllowed(field, f"{field} {text!r} contains '..'; give the directory without "
                             "parent references")
    if not raw.is_absolute():
        raise PathNotAllowed(field, f"{field} {text!r} is relative; give an absolute path")
    try:
        real = raw.resolve(strict=True)
    except (OSError, RuntimeError):
        raise PathNotAllowed(field, f"{field} {text!r} does not exist; create it or fix the path") \
            from None
    if not real.is_dir():
        raise PathNotAllowed(field, f"{field} {text!r} is not a directory")
    if not any(real == root or real.is_relative_to(root) for root in roots):
        raise PathNotAllowed(field, f"{field} {str(real)!r} is outside the allowed roots ({names}); "
                             "use a directory inside one of them or add its root to "
                             "dispatch.allowed_roots in agents.yaml")
    return real


def check_git_repo(repo: Path) -> None:
    probe = subprocess.run(["git", "-C", str(repo), "rev-parse", "--is-inside-work-tree"],
                           capture_output=True, text=True, check=False)
    if probe.returncode != 0 or probe.stdout.strip() != "true":
        raise PathNotAllowed("repo", f"repo {str(repo)!r} is not a git repository; use cwd for a "
                             "plain directory or run 'git init' there")


def add_worktree(repo: Path, dest: Path, branch: str) -> None:
    out = subprocess.run(["git", "-C", str(repo), "worktree", "add", "-b", branch, str(dest)],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise PathNotAllowed("repo", f"git worktree add failed in {str(repo)!r}: "
                             f"{out.stderr.strip() or out.stdout.strip()}; does the repo have a "
                             "commit? (a worktree needs one)")


def status_document(row: Any, *, now: float, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    from .policy import iso

    doc = {
        "workspace": row.id, "state": row.state, "agent": row.agent, "task": row.task,
        "priority": Priority(row.priority).label, "label": row.label,
        "runs": row.runs, "attempts": row.attempts, "max_attempts": row.max_attempts,
        "created_at": iso(row.created_at), "started_at": iso(row.started_at),
        "ended_at": iso(row.ended_at), "exit_code": row.exit_code, "reason": row.reason,
        "summary": row.summary, "session_id": row.session_id, "path": row.path,
        "cwd": row.run_dir, "branch": row.branch, "updated_at": iso(now),
    }
    if extra:
        doc.update(extra)
    return doc


def write_status(row: Any, *, now: float) -> None:
    """status.json for people and agents that read it; the store stays the truth."""
    path = Path(row.path)
    if not path.is_dir():
        return
    target = path / "status.json"
    try:  # peers write concurrently: never replace a newer transition with an older one
        if json.loads(target.read_bytes()).get("version", 0) > row.updated_at:
            return
    except (OSError, ValueError, AttributeError):
        pass
    doc = status_document(row, now=now, extra={"version": row.updated_at})
    atomic_write(target, json.dumps(doc, indent=2) + "\n")
    if row.summary and row.state in ("completed", "failed", "killed", "lost"):
        atomic_write(path / "result.md", row.summary.rstrip() + "\n")


def run_log_paths(path: Path, attempt: int) -> tuple[Path, Path]:
    return path / f"run-{attempt}.out.log", path / f"run-{attempt}.err.log"


def latest_logs(path: Path) -> tuple[Path | None, Path | None]:
    outs = sorted(path.glob("run-*.out.log"), key=lambda p: int(p.name.split("-")[1].split(".")[0]))
    if not outs:
        return None, None
    out = outs[-1]
    return out, out.with_name(out.name.replace(".out.", ".err."))
