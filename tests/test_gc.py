"""Garbage collection (hardening): a pruned workspace takes its directory, its git worktree and
its runner/<id> branch with it, unless the branch holds commits (kept, and said so); a worktree
with uncommitted changes is kept unless forced; `gc --dry-run` removes nothing; a dispatch that
fails before it is stored leaves no directory behind."""

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

import dispatch_runner.cli as cli
from dispatch_runner.actions import DispatchRequest, WaitRequest
from dispatch_runner.config import load_config
from dispatch_runner.errors import PathNotAllowed
from dispatch_runner.runner import Runner
from tests.conftest import Home

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
}
AGENTS = """\
  committer:
    command: [sh, -c, 'echo work > made.txt && git add made.txt && git commit -qm work']
    env: {GIT_AUTHOR_NAME: t, GIT_AUTHOR_EMAIL: t@example.com, GIT_COMMITTER_NAME: t, GIT_COMMITTER_EMAIL: t@example.com}
  scribbler:
    command: [sh, -c, 'echo draft > draft.txt']
"""


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(repo), *args],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **GIT_ENV},
    )
    return out.stdout.strip()


@pytest.fixture
def repo(home: Home) -> Path:
    path = home.root / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "README").write_text("hi\n")
    git(path, "add", "README")
    git(path, "commit", "-qm", "init")
    return path


def run_all(home: Home, dispatches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    runner = Runner(load_config())
    try:

        async def go() -> list[dict[str, Any]]:
            made = [await runner.dispatch(DispatchRequest(**d)) for d in dispatches]
            done = await runner.wait(WaitRequest(workspaces=[m["workspace"] for m in made], timeout_s=60))
            assert done["done"], done
            return made

        return anyio.run(go)
    finally:
        runner.close()


def gc(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert cli.main(["gc", "--json", *args]) == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


def test_gc_removes_directories_worktrees_and_empty_branches_and_keeps_work(
    home: Home, repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home.write_config(AGENTS)
    own_dir = home.root / "mine"
    own_dir.mkdir()
    plain, empty, committed, dirty, in_cwd = run_all(
        home,
        [
            {"task": "x", "agent": "true"},
            {"task": "x", "agent": "true", "repo": str(repo)},
            {"task": "x", "agent": "committer", "repo": str(repo)},
            {"task": "x", "agent": "scribbler", "repo": str(repo)},
            {"task": "x", "agent": "true", "cwd": str(own_dir)},
        ],
    )

    def branches() -> set[str]:
        return set(git(repo, "branch", "--format=%(refname:short)").split())

    assert {f"runner/{w['workspace']}" for w in (empty, committed, dirty)} <= branches()

    preview = gc(capsys, "--older-than", "0", "--dry-run")
    assert preview["dry_run"] is True
    assert set(preview["removed"]) == {w["workspace"] for w in (plain, empty, committed, in_cwd)}
    assert all(Path(w["path"]).exists() for w in (plain, empty, committed, dirty, in_cwd))

    report = gc(capsys, "--older-than", "0")
    assert set(report["removed"]) == {w["workspace"] for w in (plain, empty, committed, in_cwd)}
    assert report["notes"] == [
        {
            "workspace": committed["workspace"],
            "note": f"branch runner/{committed['workspace']} kept: 1 commit(s) beyond its base",
        }
    ]
    [kept] = report["kept"]
    assert kept["workspace"] == dirty["workspace"] and "uncommitted changes" in kept["note"]
    for w in (plain, empty, committed, in_cwd):
        assert not Path(w["path"]).exists()
    assert own_dir.is_dir()  # a cwd of the user's is never removed
    assert branches() == {"main", f"runner/{committed['workspace']}", f"runner/{dirty['workspace']}"}
    worktrees = git(repo, "worktree", "list", "--porcelain")
    assert empty["workspace"] not in worktrees and dirty["workspace"] in worktrees

    forced = gc(capsys, "--older-than", "0", "--force")
    assert forced["removed"] == [dirty["workspace"]] and not Path(dirty["path"]).exists()
    assert branches() == {"main", f"runner/{committed['workspace']}"}
    assert dirty["workspace"] not in git(repo, "worktree", "list", "--porcelain")
    runner = Runner(load_config())
    try:
        assert runner.store.get_workspace(plain["workspace"]) is None
    finally:
        runner.close()


def test_gc_keeps_workspaces_younger_than_the_retention(
    home: Home, capsys: pytest.CaptureFixture[str]
) -> None:
    [ws] = run_all(home, [{"task": "x", "agent": "true"}])
    report = gc(capsys)
    assert report["removed"] == [] and Path(ws["path"]).exists()


def test_gc_removes_a_directory_the_store_never_knew(home: Home, capsys: pytest.CaptureFixture[str]) -> None:
    root = home.path / "workspaces"
    orphan = root / "ws-0101-000000-abcdef"
    orphan.mkdir(parents=True)
    (orphan / "prompt.md").write_text("x\n")
    young = root / "ws-0101-000000-fedcba"
    young.mkdir()
    old = time.time() - 2 * 3600
    os.utime(orphan, (old, old))
    report = gc(capsys)
    assert report["orphans"] == [str(orphan)]
    assert not orphan.exists() and young.exists()  # a young one may be a dispatch in progress


def test_a_dispatch_that_fails_before_it_is_stored_leaves_no_directory(home: Home) -> None:
    empty_repo = home.root / "empty"
    empty_repo.mkdir()
    git(empty_repo, "init", "-q")
    runner = Runner(load_config())
    try:
        with pytest.raises(PathNotAllowed, match="git worktree add failed"):
            anyio.run(runner.dispatch, DispatchRequest(task="x", agent="true", repo=str(empty_repo)))
    finally:
        runner.close()
    root = home.path / "workspaces"
    assert not root.exists() or list(root.iterdir()) == []


def test_gc_keeps_a_worktree_whose_repository_is_gone_unless_forced(
    home: Home, repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home.write_config(AGENTS)
    [ws] = run_all(home, [{"task": "x", "agent": "scribbler", "repo": str(repo)}])
    repo.rename(repo.with_name("moved"))  # git can no longer tell what the worktree holds
    report = gc(capsys, "--older-than", "0")
    assert report["removed"] == [] and "cannot tell whether" in report["kept"][0]["note"]
    assert (Path(ws["path"]) / "worktree" / "draft.txt").exists()
    assert gc(capsys, "--older-than", "0", "--force")["removed"] == [ws["workspace"]]
    assert not Path(ws["path"]).exists()


def test_gc_keeps_an_orphaned_worktree_unless_forced(
    home: Home, repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    orphan = home.path / "workspaces" / "ws-0101-000000-abcdef"
    orphan.mkdir(parents=True)
    git(repo, "worktree", "add", "-q", "-b", "runner/ws-0101-000000-abcdef", str(orphan / "worktree"))
    old = time.time() - 2 * 3600
    os.utime(orphan, (old, old))
    report = gc(capsys)
    assert report["orphans"] == [] and "no workspace owns" in report["kept"][0]["note"]
    forced = gc(capsys, "--force")
    assert forced["orphans"] == [str(orphan)] and not orphan.exists()
    assert str(orphan) not in git(repo, "worktree", "list", "--porcelain")
