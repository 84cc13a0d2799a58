"""Wake-ups when another process commits to the SQLite store: inotify on the store's directory.

A hint, never the guarantee: the runner still checks `PRAGMA data_version` and polls underneath.
With inotify an idle peer costs no CPU and hears a shim's commit within a millisecond; where
inotify is unavailable the watcher falls back to a short poll.
"""

import ctypes
import ctypes.util
import os
import struct
from pathlib import Path

import anyio

IN_MODIFY = 0x00000002
IN_CREATE = 0x00000100
IN_MOVED_TO = 0x00000080
_EVENT = struct.Struct("iIII")


class StoreWatcher:
    def __init__(self, db_path: Path, *, fallback_poll_s: float = 0.025) -> None:
        self.names = {db_path.name, f"{db_path.name}-wal"}
        self.fallback_poll_s = fallback_poll_s
        self.fd: int | None = None
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            if fd < 0:
                return
            if (
                libc.inotify_add_watch(fd, str(db_path.parent).encode(), IN_MODIFY | IN_CREATE | IN_MOVED_TO)
                < 0
            ):
                os.close(fd)
                return
            self.fd = fd
        except (OSError, AttributeError):
            self.fd = None

    async def changed(self, timeout_s: float) -> bool:
        """Return True when the store's files changed, False after timeout_s without a sign."""
        if self.fd is None:
            await anyio.sleep(min(timeout_s, self.fallback_poll_s))
            return True
        with anyio.move_on_after(timeout_s):
            while True:
                await anyio.wait_readable(self.fd)
                if self._drain():
                    return True
        return False

    def _drain(self) -> bool:
        """Consume queued inotify events; True if one concerns the store's files."""
        assert self.fd is not None
        hit = False
        while True:
            try:
                data = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                return hit
            offset = 0
            while offset + _EVENT.size <= len(data):
                _, _, _, length = _EVENT.unpack_from(data, offset)
                name = (
                    data[offset + _EVENT.size : offset + _EVENT.size + length]
                    .rstrip(b"\0")
                    .decode(errors="replace")
                )
                hit = hit or name in self.names
                offset += _EVENT.size + length

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
