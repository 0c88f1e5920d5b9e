"""The runtime changes of one process: the overlay, its state file, servers on their way out.

The supervisor asks ``effective(file_config)`` at start and on every reload;
the admin API changes the overlay through ``candidate()`` / ``build()`` /
``commit()``, under ``lock`` so two changes (or a change and a reload) never
interleave.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

from maitred.config import Config
from maitred.control.overlay import (
    ConfigData,
    Overlay,
    OverlayError,
    load_overlay,
    save_overlay,
)
from maitred.control.validation import ChangeRejected, validate_config_data
from maitred.control.worker import server_id

log = logging.getLogger("maitred.admin")


class RuntimeChanges:
    def __init__(self, state_file: Path) -> None:
        self.path = state_file
        self.overlay = self._load()
        self.lock = asyncio.Lock()
        #: Servers deleted through the API that still finish their in-flight requests,
        #: by (pool, address): kept in the running configuration, drained, until they leave.
        self.leaving: dict[tuple[str, str], ConfigData] = {}
        #: Conflicts between the file and the overlay found by the latest replay.
        self.conflicts: list[str] = []
        #: Told (overlay before, overlay after) of each change committed here (cluster sharing).
        self.on_commit: list[Callable[[Overlay, Overlay], None]] = []

    def _load(self) -> Overlay:
        try:
            overlay = load_overlay(self.path)
        except OverlayError as exc:
            # Keep the operator's data for inspection, and start from the file alone.
            aside = self.path.with_name(f"{self.path.name}.unreadable")
            log.error("runtime changes not replayed: %s (moved to %s)", exc, aside)
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            return Overlay()
        if not overlay.is_empty():
            log.info("replaying runtime changes from %s", self.path)
        return overlay

    # -- building configurations ------------------------------------------------------

    def effective(self, file_config: Config) -> Config:
        """The file's configuration with the runtime changes; never refuses.

        Entries that no longer fit the file are skipped (and logged); when the
        result would be invalid as a whole, the file's configuration is used alone.
        """
        try:
            config, conflicts = self.replay(file_config, self.overlay)
        except ChangeRejected as exc:
            log.error(
                "runtime changes in %s not applied: with them, %s: %s",
                self.path,
                exc.field,
                exc.message,
            )
            self.conflicts = [f"{exc.field}: {exc.message}"]
            return file_config
        _, state_conflicts = self.overlay.states_for(config)
        conflicts += state_conflicts
        if conflicts != self.conflicts:
            for conflict in conflicts:
                log.warning("runtime change skipped: %s", conflict)
        self.conflicts = conflicts
        return config

    def replay(self, file_config: Config, overlay: Overlay) -> tuple[Config, list[str]]:
        data, conflicts = self.replayed_data(file_config, overlay)
        return validate_config_data(data), conflicts

    def replayed_data(self, file_config: Config, overlay: Overlay) -> tuple[ConfigData, list[str]]:
        """Configuration data: the file, the overlay, and the servers still leaving."""
        data, conflicts = overlay.replay(file_config.to_dict())
        pools = data.get("pools", {})
        for (pool_name, address), server in self.leaving.items():
            pool = pools.get(pool_name)
            if pool is None:
                continue
            servers = pool.setdefault("servers", [])
            if all(s.get("address") != address for s in servers):
                servers.append(dict(server))
        return data, conflicts

    def build(
        self, file_config: Config, overlay: Overlay, blame: tuple[str | int, ...] = ()
    ) -> Config:
        """Validate the configuration ``overlay`` would give (raises ``ChangeRejected``)."""
        data, _ = self.replayed_data(file_config, overlay)
        return validate_config_data(data, blame=blame)

    def admin_states(self, config: Config) -> dict[str, str]:
        """Operator states by server id for ``config``: persisted ones, plus "drain" for
        the servers on their way out."""
        states, _ = self.overlay.states_for(config)
        for pool_name, address in self.leaving:
            pool = config.pools.get(pool_name)
            for server in pool.servers if pool is not None else ():
                if str(server.address) == address:
                    states[server_id(pool_name, server.address.host, server.address.port)] = "drain"
        return states

    # -- persisting -------------------------------------------------------------------

    def candidate(self) -> Overlay:
        return self.overlay.copy()

    async def commit(self, overlay: Overlay, *, notify: bool = True) -> None:
        """Write ``overlay`` to the state file (atomically), then make it current.

        ``notify=False`` for changes that came from the cluster: they are not told
        to ``on_commit``, so they are never published again (no echo loop).
        """
        await asyncio.to_thread(save_overlay, self.path, overlay)
        previous, self.overlay = self.overlay, overlay
        if notify:
            for listener in self.on_commit:
                listener(previous, overlay)
