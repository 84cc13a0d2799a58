"""runner.gc: finished workspaces past retention go (rows, directories, worktrees, empty
runner/<id> branches), with directories the store never knew and rows of dead peers."""

import fcntl
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio.to_thread

from .. import validate, workspaces
from ..actions import GcRequest
from ..launch import supervisor
from ..store import WorkspaceRow
from .core import Core

GC_BATCH = 500
ORPHAN_AGE_S = 3600.0  # a workspace directory without a row this old was never stored


class Collector:
    def __init__(self, core: Core, forget_dead_peers: Callable[[], int]) -> None:
        self.core = core
        self.forget_dead_peers = forget_dead_peers

    async def gc(self, req: GcRequest | None = None) -> dict[str, Any]:
        """Remove finished workspaces that ended more than `older_than_s` ago (default
        retention_days): their rows, directories, worktrees and empty runner/<id> branches;
        directories the store does not know; rows of dead peers."""
        req = req or GcRequest()
        validate.number("older_than_s", req.older_than_s, minimum=0, maximum=100 * 365 * 86400.0, unit=" s")
        config = self.core.config
        age = config.retention_days * 86400 if req.older_than_s is None else float(req.older_than_s)
        return await anyio.to_thread.run_sync(
            partial(self._gc_sync, before=time.time() - age, dry_run=req.dry_run, force=req.force)
        )

    def _gc_sync(self, *, before: float, dry_run: bool, force: bool) -> dict[str, Any]:
        report: dict[str, Any] = {
            "removed": [],
            "kept": [],
            "notes": [],
            "orphans": [],
            "dead_peers": 0,
            "elsewhere": 0,
            "dry_run": dry_run,
        }
        home = self.core.config.home
        home.mkdir(parents=True, exist_ok=True)
        with open(home / "gc.lock", "w") as lock:
            try:  # one collector per home at a time; the others have nothing to add
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                report["busy"] = True
                return report
            self._collect_finished(report, before=before, dry_run=dry_run, force=force)
            self._collect_orphans(report, dry_run=dry_run, force=force)
            if not dry_run:
                report["dead_peers"] = self.forget_dead_peers()
        return report

    def _collect_finished(self, report: dict[str, Any], *, before: float, dry_run: bool, force: bool) -> None:
        store = self.core.store
        cursor: tuple[float, str] | None = None
        while rows := store.finished_before(before, after=cursor, limit=GC_BATCH):
            cursor = (rows[-1].ended_at or 0.0, rows[-1].id)
            removed = []
            for row in rows:
                if self._elsewhere(row):  # its directory (and worktree) are there: its peers collect it
                    report["elsewhere"] += 1
                    continue
                outcome = workspaces.remove_workspace(row, force=force, dry_run=dry_run)
                if outcome.removed:
                    removed.append(row.id)
                    if outcome.note:
                        report["notes"].append({"workspace": row.id, "note": outcome.note})
                else:
                    report["kept"].append({"workspace": row.id, "note": outcome.note or "kept"})
            if not dry_run and removed:
                store.forget(removed, events_before=before)
                self.core.counts["gc_removed"] += len(removed)
            report["removed"] += removed

    def _elsewhere(self, row: WorkspaceRow) -> bool:
        """The workspace's directory is on another host of the fleet: the one it is pinned to,
        else the one its latest run ran on."""
        here = supervisor.host_id()
        if row.host is not None:
            return row.host != here
        run = self.core.store.get_run(row.current_run) if row.current_run else None
        return run is not None and run.host not in (None, here)

    def _collect_orphans(self, report: dict[str, Any], *, dry_run: bool, force: bool) -> None:
        for path in self._orphans():
            risk = None if force else workspaces.orphan_risk(path)
            if risk:
                report["kept"].append({"workspace": path.name, "note": risk})
                continue
            report["orphans"].append(str(path))
            if not dry_run:
                workspaces.remove_orphan(path)

    def _orphans(self) -> list[Path]:
        """Workspace directories without a row, left by dispatches that died before they were
        stored, or left behind when another host took the workspace (its row names that host's
        directory); young ones may belong to a dispatch or a claim in progress."""
        root = self.core.config.workspace_root
        try:
            entries = [p for p in root.iterdir() if workspaces.ID_RE.match(p.name) and p.is_dir()]
        except OSError:
            return []
        cutoff = time.time() - ORPHAN_AGE_S
        out = []
        for path in entries:
            try:
                young = path.stat().st_mtime > cutoff
            except OSError:
                continue
            if young:
                continue
            row = self.core.store.get_workspace(path.name)
            if row is None or Path(row.path) != path:
                out.append(path)
        return out
