"""Noticing that certificate files changed on disk, by polling their status."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("maitred.tls")

#: How often the files are looked at; renewals are rare, a stat per file is cheap.
POLL_INTERVAL = 2.0

# What tells a rewritten or replaced file apart: a rename onto it changes the inode.
Signature = tuple[int, int, int] | None


def signature(path: Path) -> Signature:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return (status.st_mtime_ns, status.st_size, status.st_ino)


class FileWatcher:
    """Calls ``on_change`` once per poll in which any of ``paths()`` changed.

    Paths seen for the first time are only recorded: whoever named them has just
    loaded them.
    """

    def __init__(
        self,
        paths: Callable[[], list[Path]],
        on_change: Callable[[], None],
        interval: float = POLL_INTERVAL,
    ) -> None:
        self._paths = paths
        self._on_change = on_change
        self._interval = interval
        self._seen: dict[Path, Signature] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.poll()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                self.poll()
            except Exception:  # a bug here must not end the watching
                log.exception("watching certificate files failed")

    def poll(self) -> bool:
        """Look once; True when something changed (and ``on_change`` ran)."""
        changed: list[Path] = []
        seen: dict[Path, Signature] = {}
        for path in self._paths():
            now = signature(path)
            seen[path] = now
            if path in self._seen and self._seen[path] != now:
                changed.append(path)
        self._seen = seen
        if not changed:
            return False
        log.info("TLS files changed: %s", ", ".join(str(path) for path in changed))
        self._on_change()
        return True

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
