"""Workspace directories and files: paths checked against allowed_roots, prompt, status.json
(atomically rewritten on every transition), result, logs, and git worktrees for `repo`.
"""

import contextlib
import fcntl
import itertools
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import PathNotAllowed
from .model import Priority

_TMP_SEQ = itertools.count()
PROMPT_FILE = "prompt.md"
STATUS_FILE = "status.json"


ID_RE = re.compile(r"^ws-\d{4}-\d{6}-[0-9a-f]{6}$")


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
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def resolve_inside(text: str, field: str, roots: Iterable[Path]) -> Path:
    """An existing directory, symlinks followed, inside one of `roots`; '..' is refused."""
    roots = tuple(roots)
    names = ", ".join(str(r) for r in roots)
    if not text or not text.strip():
        raise PathNotAllowed(field, f"{field} is empty; give an absolute directory path")
    raw = Path(text).expanduser()
    if ".." in raw.parts:
        raise PathNotAllowed(
            field, f"{field} {text!r} contains '..'; give the directory without parent references"
        )
    if not raw.is_absolute():
        raise PathNotAllowed(field, f"{field} {text!r} is relative; give an absolute path")
    try:
        real = raw.resolve(strict=True)
    except (OSError, RuntimeError):
        raise PathNotAllowed(field, f"{field} {text!r} does not exist; create it or fix the path") from None
    if not real.is_dir():
        raise PathNotAllowed(field, f"{field} {text!r} is not a directory")
    if not any(real == root or real.is_relative_to(root) for root in roots):
        raise PathNotAllowed(
            field,
            f"{field} {str(real)!r} is outside the allowed roots ({names}); "
            "use a directory inside one of them or add its root to "
            "dispatch.allowed_roots in agents.yaml",
        )
    return real


def check_git_repo(repo: Path) -> None:
    probe = _git(repo, "rev-parse", "--is-inside-work-tree")
    if probe.returncode != 0 or probe.stdout.strip() != "true":
        raise PathNotAllowed(
            "repo",
            f"repo {str(repo)!r} is not a git repository; use cwd for a "
            "plain directory or run 'git init' there",
        )


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)


def add_worktree(repo: Path, dest: Path, branch: str) -> str:
    """A fresh worktree on a new branch; returns the commit it starts from (its base)."""
    out = _git(repo, "worktree", "add", "-b", branch, str(dest))
    if out.returncode != 0:
        raise PathNotAllowed(
            "repo",
            f"git worktree add failed in {str(repo)!r}: "
            f"{out.stderr.strip() or out.stdout.strip()}; does the repo have a "
            "commit? (a worktree needs one)",
        )
    return _git(dest, "rev-parse", "HEAD").stdout.strip()


def remove_worktree(
    repo: Path, dest: Path, branch: str, *, base: str | None, dry_run: bool = False
) -> str | None:
    """Remove the worktree at `dest` (uncommitted changes included) and its branch, unless the
    branch has commits beyond `base` (its base commit; None: a branch made a moment ago, always
    removed). Returns why the branch is kept, or None."""
    if _git(repo, "rev-parse", "--git-dir").returncode != 0:
        return None  # the repository itself is gone: only the directory is left to remove
    if not dry_run:
        _git(repo, "worktree", "remove", "--force", str(dest))
    if _git(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}").returncode != 0:
        return None
    kept = _branch_has_work(repo, branch, base) if base is not None else None
    if kept is None and not dry_run:
        _git(repo, "branch", "-D", branch)
    return kept


def _branch_has_work(repo: Path, branch: str, base: str) -> str | None:
    if not base:
        return f"branch {branch} kept: its base commit was not recorded"
    ahead = _git(repo, "rev-list", "--count", f"{base}..refs/heads/{branch}")
    count = ahead.stdout.strip()
    if ahead.returncode != 0 or not count.isdigit():
        return f"branch {branch} kept: cannot compare it with its base {base[:12]}"
    return f"branch {branch} kept: {count} commit(s) beyond its base" if int(count) else None


def worktree_changes(dest: Path) -> str | None:
    """Why removing this worktree could lose work (uncommitted changes, untracked files, or git
    cannot tell), or None when it is clean or gone."""
    if not dest.is_dir():
        return None
    out = _git(dest, "status", "--porcelain")
    if out.returncode != 0:
        return (
            f"cannot tell whether {dest} holds uncommitted changes (git status: "
            f"{(out.stderr.strip().splitlines() or ['failed'])[0]})"
        )
    return f"uncommitted changes in {dest}" if out.stdout.strip() else None


def status_document(row: Any, *, now: float, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    from .policy import iso

    doc = {
        "workspace": row.id,
        "state": row.state,
        "agent": row.agent,
        "task": row.task,
        "priority": Priority(row.priority).label,
        "label": row.label,
        "runs": row.runs,
        "attempts": row.attempts,
        "max_attempts": row.max_attempts,
        "created_at": iso(row.created_at),
        "started_at": iso(row.started_at),
        "ended_at": iso(row.ended_at),
        "exit_code": row.exit_code,
        "reason": row.reason,
        "ended_reason": row.ended_reason,
        "summary": row.summary,
        "session_id": row.session_id,
        "path": row.path,
        "cwd": row.run_dir,
        "branch": row.branch,
        "updated_at": iso(now),
    }
    if extra:
        doc.update(extra)
    return doc


def write_status(row: Any, *, now: float) -> bool:
    """status.json for people and agents that read it; the store stays the truth.

    Never goes backwards: peers and shims write concurrently, so the compare (the file's revision
    against the row's) and the replace happen under a lock on the workspace directory. Best
    effort: a full or read-only disk is logged, never raised. True if the file was written."""
    path = Path(row.path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False  # the workspace is gone (pruned, or never made)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        target = path / STATUS_FILE
        with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
            if json.loads(target.read_bytes()).get("rev", 0) >= row.rev:
                return False
        doc = status_document(row, now=now, extra={"rev": row.rev})
        atomic_write(target, json.dumps(doc, indent=2) + "\n")
        if row.summary and row.state in ("completed", "failed", "killed", "lost"):
            atomic_write(path / "result.md", row.summary.rstrip() + "\n")
        return True
    except OSError as exc:
        with contextlib.suppress(OSError, ValueError):  # our own log may be on that disk too
            sys.stderr.write(f"dispatch-runner: cannot write {path / STATUS_FILE}: {exc.strerror or exc}\n")
        return False
    finally:
        os.close(fd)  # releases the lock


def run_log_paths(path: Path, attempt: int) -> tuple[Path, Path]:
    return path / f"run-{attempt}.out.log", path / f"run-{attempt}.err.log"


def latest_logs(path: Path) -> tuple[Path | None, Path | None]:
    outs = sorted(path.glob("run-*.out.log"), key=lambda p: int(p.name.split("-")[1].split(".")[0]))
    if not outs:
        return None, None
    out = outs[-1]
    return out, out.with_name(out.name.replace(".out.", ".err."))


# ---- garbage collection ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Removal:
    removed: bool
    note: str | None = None  # what was kept, and why


def remove_workspace(row: Any, *, force: bool = False, dry_run: bool = False) -> Removal:
    """Remove a finished workspace's directory, its git worktree and (when it holds no commits
    beyond its base) its runner/<id> branch. A worktree with uncommitted changes is kept unless
    `force`. Only a directory named after the workspace is ever removed: never a user's cwd.
    With `dry_run`, only say what would happen."""
    import shutil  # here, not at the top: every shim imports this module

    path = Path(row.path)
    if path.name != row.id or path.is_symlink():
        return Removal(False, f"{path} is not a workspace directory; left alone")
    note = None
    if row.repo and row.branch:
        worktree = Path(row.run_dir)
        risk = None if force else worktree_changes(worktree)
        if risk:
            return Removal(
                False, f"kept: {risk}; commit them, or run 'dispatch-runner gc --force' to discard them"
            )
        # "" (not None): a workspace from before base commits were recorded keeps its branch
        note = remove_worktree(
            Path(row.repo), worktree, row.branch, base=row.base_commit or "", dry_run=dry_run
        )
    if dry_run:
        return Removal(True, note)
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        return Removal(False, f"cannot remove {path}; check its permissions")
    return Removal(True, note)


def orphan_risk(path: Path) -> str | None:
    """Why an orphaned workspace directory should stay: a worktree in it may hold work."""
    worktree = path / "worktree"
    if worktree.is_dir() and any(worktree.iterdir()):
        return (
            f"kept: {worktree} is a worktree no workspace owns; look at it, then run "
            "'dispatch-runner gc --force' to remove it"
        )
    return None


def remove_orphan(path: Path) -> None:
    """A workspace directory the store does not know (a dispatch that died half-way): remove it,
    and let its repository forget the worktree it held (and only that one)."""
    import shutil

    worktree = path / "worktree"
    gitdir = None
    with contextlib.suppress(OSError, ValueError):
        text = (worktree / ".git").read_text().strip()
        if text.startswith("gitdir:"):
            gitdir = Path(text.removeprefix("gitdir:").strip())
    if gitdir is not None and gitdir.parent.name == "worktrees":
        _git(gitdir.parent.parent, "worktree", "remove", "--force", str(worktree))
    shutil.rmtree(path, ignore_errors=True)


# ---- logs, in pages ---------------------------------------------------------------------------

LOG_STREAMS = ("stdout", "stderr", "both")
MAX_LINE_CHARS = 8000  # a stream-json line can be megabytes: a page shows its start
MAX_PAGE_BYTES = 256 * 1024  # and a page stays small enough for a model's context


def log_runs(path: Path) -> list[int]:
    """Run numbers that have a log, in order."""
    found = set()
    for p in path.glob("run-*.out.log"):
        number = p.name.split("-")[1].split(".")[0]
        if number.isdigit():
            found.add(int(number))
    return sorted(found)


@dataclass(frozen=True, slots=True)
class LogPage:
    lines: list[str]
    next_offset: int  # the line to ask for next
    eof: bool  # the run is over and nothing is left
    more: bool  # lines are left right now (the page was full)
    cursor: int | None  # byte position after the last line (one stream only): a seek, not a scan


def log_page(
    path: Path,
    run: int,
    stream: str,
    *,
    offset: int,
    limit: int,
    settled: bool,
    cursor: int | None = None,
    whole_lines: bool = False,
) -> LogPage:
    """Lines [offset, offset + limit) of a run's output. With "both", stdout comes first, then
    stderr with each line marked "[stderr] " — once the run is over: while it runs, stdout alone
    (stderr lines would shift as stdout grows). A last line without its newline is left for the
    next page while the run goes on. `cursor`, from the previous page of the same stream, seeks
    to `offset` instead of reading the lines before it."""
    out, err = run_log_paths(path, run)
    if stream == "both":
        sources = [(out, ""), (err, "[stderr] ")] if settled else [(out, "")]
        cursor = None
    else:
        sources = [(out if stream == "stdout" else err, "")]
    lines: list[str] = []
    size, index, more, position = 0, 0 if cursor is None else offset, False, cursor
    for file, mark in sources:
        for line, end in _file_lines(file, partial=settled, start=cursor or 0):
            if index >= offset:
                if len(lines) >= limit or size >= MAX_PAGE_BYTES:
                    more = True
                    break
                if len(line) > MAX_LINE_CHARS and not whole_lines:
                    line = f"{line[:MAX_LINE_CHARS]}… [{len(line) - MAX_LINE_CHARS} more characters]"
                lines.append(mark + line)
                size += len(line)
                position = end
            index += 1
        if more:
            break
    single = stream != "both"
    return LogPage(
        lines,
        offset + len(lines),
        settled and not more,
        more,
        (position if position is not None else (cursor or 0)) if single else None,
    )


def _file_lines(file: Path, *, partial: bool, start: int = 0) -> Iterator[tuple[str, int]]:
    """(line, byte position after it) from `start`; a last line without its newline only when
    `partial` (the writer is done)."""
    try:
        f = open(file, "rb")
    except OSError:
        return
    with f:
        f.seek(start)
        position = start
        for raw in f:
            if not raw.endswith(b"\n") and not partial:
                return  # still being written
            position += len(raw)
            yield raw.rstrip(b"\n").decode("utf-8", errors="replace"), position
