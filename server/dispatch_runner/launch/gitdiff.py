"""What a run changed in its git working tree, measured against the commit it started from:
`diff_stat` (files, lines added and removed, the first paths; uncommitted work and new files
included) and `commits` (what it committed on its branch). Best effort: any failure of git is
None, never an exception — the run's end is recorded either way.

Stdlib only: the per-run shim imports this.
"""

import os
import stat
import subprocess
from pathlib import Path
from typing import Any, Final

GIT_TIMEOUT_S: Final = 10.0
MAX_NAMES: Final = 50
MAX_COMMITS: Final = 50
_COUNT_CHUNK: Final = 1 << 20


def _git(cwd: Path | str, *args: str) -> bytes | None:
    """git's stdout, or None when it failed, hung or is missing. No optional locks: the agent
    (or its children) may still hold the index."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
    try:
        done = subprocess.run(
            ["git", "-c", "core.quotepath=off", *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def diff_stat(run_dir: Path | str, base: str) -> dict[str, Any] | None:
    """{files, insertions, deletions, names} of the working tree against `base`: committed and
    uncommitted changes, and untracked (not ignored) files counted as all-new lines. A binary
    file counts as a file with no lines. None when git cannot say."""
    if not base or base.startswith("-"):
        return None
    numstat = _git(run_dir, "diff", "--numstat", "-z", "--no-renames", "--no-ext-diff", base, "--")
    untracked = _git(run_dir, "ls-files", "--others", "--exclude-standard", "-z")
    if numstat is None or untracked is None:
        return None
    files = insertions = deletions = 0
    names: list[str] = []
    for entry in filter(None, numstat.split(b"\0")):
        added, removed, path = [*entry.split(b"\t", 2), b"", b""][:3]
        files += 1
        insertions += int(added) if added.isdigit() else 0  # "-": a binary file
        deletions += int(removed) if removed.isdigit() else 0
        names.append(path.decode("utf-8", "replace"))
    for raw in filter(None, untracked.split(b"\0")):
        files += 1
        insertions += _lines(Path(run_dir) / os.fsdecode(raw))
        names.append(raw.decode("utf-8", "replace"))
    return {"files": files, "insertions": insertions, "deletions": deletions, "names": names[:MAX_NAMES]}


MAX_COUNT_BYTES = 64 * 1024 * 1024  # a new file's lines are counted in its first 64 MiB


def _lines(path: Path) -> int:
    """Lines of a new text file as git counts them (a last line without a newline counts);
    0 for a binary file (a NUL byte) or one that cannot be read."""
    count, last, read = 0, b"\n", 0
    try:
        # a regular file only, never followed through a link (a FIFO would hang the shim, a link
        # to a huge log read it all): git counts a link as one line
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return 1 if path.is_symlink() else 0
    try:
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return 0
            while read < MAX_COUNT_BYTES and (chunk := f.read(_COUNT_CHUNK)):
                read += len(chunk)
                if b"\0" in chunk:
                    return 0
                count += chunk.count(b"\n")
                last = chunk[-1:]
    except OSError:
        return 0
    return count + (last != b"\n")


def commits(run_dir: Path | str, base: str) -> list[dict[str, str]] | None:
    """The commits on HEAD since `base`, newest first (at most MAX_COMMITS): [{sha, subject}]."""
    if not base or base.startswith("-"):
        return None
    out = _git(run_dir, "log", f"--max-count={MAX_COMMITS}", "--format=%H%x00%s", f"{base}..HEAD", "--")
    if out is None:
        return None
    found = []
    for line in out.decode("utf-8", "replace").splitlines():
        sha, _, subject = line.partition("\0")
        if sha:
            found.append({"sha": sha, "subject": subject})
    return found
