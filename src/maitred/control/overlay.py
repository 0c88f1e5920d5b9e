"""Runtime changes (admin API) kept as an overlay on top of the configuration file.

The file stays the operator's source of truth; what the admin API changes is
recorded here as a small declarative diff (pools and servers added or removed,
weights, drain/maint states) and replayed on top of the file's configuration at
start and after every reload, so runtime changes survive both. The diff lives
in ``<state_dir>/runtime.json``, written atomically (temporary file, fsync,
rename), so a crash leaves either the old or the new file, never half of one.

Replaying is forgiving: an entry that no longer fits the file (it deletes a
server the file dropped since, or adds one the file now has too) is skipped
and reported as a conflict; ``maitred check`` lists those conflicts.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maitred.config import Address, Config
from maitred.control.validation import ChangeRejected, validate_config_data
from maitred.control.worker import server_id
from maitred.policies.sticky_secret import default_state_dir

log = logging.getLogger("maitred.admin")

STATE_FILE = "runtime.json"
STATE_FORMAT = 1
#: Under the default state directory when the configuration sets no state_dir.
RUNTIME_SUBDIR = "runtime"
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
#: Operator states kept across restarts ("ready" is the absence of an entry).
PERSISTED_STATES = ("drain", "maint")

#: A pool or a server as configuration data (what ``Config.to_dict()`` holds).
ConfigData = dict[str, Any]


class OverlayError(Exception):
    """The state file exists but cannot be read or understood."""


@dataclass
class Overlay:
    """What the admin API changed, relative to the file (addresses as ``HOST:PORT``)."""

    added_pools: dict[str, ConfigData] = field(default_factory=dict)
    removed_pools: set[str] = field(default_factory=set)
    #: pool -> address -> server data, in the order they were added.
    added_servers: dict[str, dict[str, ConfigData]] = field(default_factory=dict)
    #: pool -> addresses of the file's servers that were deleted.
    removed_servers: dict[str, set[str]] = field(default_factory=dict)
    #: pool -> address -> weight, for the file's servers.
    weights: dict[str, dict[str, int]] = field(default_factory=dict)
    #: pool -> address -> "drain" | "maint".
    states: dict[str, dict[str, str]] = field(default_factory=dict)

    def copy(self) -> Overlay:
        return copy.deepcopy(self)

    def is_empty(self) -> bool:
        return not any(
            (
                self.added_pools,
                self.removed_pools,
                self.added_servers,
                self.removed_servers,
                self.weights,
                self.states,
            )
        )

    # -- changes (``file`` is the configuration as the file says it) --------------

    def add_pool(self, name: str, pool: ConfigData, file: Config) -> None:
        self._forget_pool(name)
        if name in file.pools:
            # Replaces the file's pool of that name: replay removes it, then adds this one.
            self.removed_pools.add(name)
        self.added_pools[name] = copy.deepcopy(pool)

    def remove_pool(self, name: str, file: Config) -> None:
        self._forget_pool(name)
        if name in file.pools:
            self.removed_pools.add(name)

    def add_server(self, pool: str, server: ConfigData, file: Config) -> None:
        address = server["address"]
        self._forget_server(pool, address)
        if _file_has_server(file, pool, address) and pool not in self.added_pools:
            self.removed_servers.setdefault(pool, set()).add(address)
        self.added_servers.setdefault(pool, {})[address] = copy.deepcopy(server)

    def remove_server(self, pool: str, address: str, file: Config) -> None:
        self._forget_server(pool, address)
        if _file_has_server(file, pool, address) and pool not in self.added_pools:
            self.removed_servers.setdefault(pool, set()).add(address)

    def set_weight(self, pool: str, address: str, weight: int) -> None:
        added = self.added_servers.get(pool, {}).get(address)
        if added is not None:
            added["weight"] = weight
        elif pool in self.added_pools:
            for server in self.added_pools[pool].get("servers", []):
                if _same_address(server.get("address"), address):
                    server["weight"] = weight
        else:
            self.weights.setdefault(pool, {})[address] = weight

    def set_state(self, pool: str, address: str, state: str) -> None:
        if state in PERSISTED_STATES:
            self.states.setdefault(pool, {})[address] = state
        else:
            _discard(self.states, pool, address)

    def _forget_pool(self, name: str) -> None:
        self.added_pools.pop(name, None)
        self.removed_pools.discard(name)
        for table in (self.added_servers, self.removed_servers, self.weights, self.states):
            table.pop(name, None)

    def _forget_server(self, pool: str, address: str) -> None:
        _discard(self.added_servers, pool, address)
        _discard(self.weights, pool, address)
        _discard(self.states, pool, address)
        removed = self.removed_servers.get(pool)
        if removed is not None:
            removed.discard(address)
            if not removed:
                del self.removed_servers[pool]
        if pool in self.added_pools:
            servers = self.added_pools[pool].get("servers", [])
            servers[:] = [s for s in servers if not _same_address(s.get("address"), address)]

    # -- replay ---------------------------------------------------------------------

    def replay(self, file_data: Mapping[str, Any]) -> tuple[ConfigData, list[str]]:
        """The file's configuration data with these changes applied, and the conflicts.

        ``file_data`` is ``Config.to_dict()`` of the file; it is not modified.
        """
        data: ConfigData = copy.deepcopy(dict(file_data))
        pools: dict[str, ConfigData] = data.setdefault("pools", {})
        conflicts: list[str] = []
        for name in sorted(self.removed_pools):
            if pools.pop(name, None) is None:
                conflicts.append(
                    f"pools.{name}: deleted at runtime, but the file no longer has this pool"
                )
        for name, pool in self.added_pools.items():
            if name in pools:
                conflicts.append(
                    f"pools.{name}: added at runtime, but the file now has a pool of that "
                    "name too (the file's is used)"
                )
            else:
                pools[name] = copy.deepcopy(pool)
        for pool_name, addresses in sorted(self.removed_servers.items()):
            for address in sorted(addresses):
                servers = _servers_of(pools, pool_name)
                index = _index_of(servers, address)
                if index is None:
                    conflicts.append(
                        f"pools.{pool_name}: server {address} was deleted at runtime, "
                        "but the file no longer has it"
                    )
                else:
                    del servers[index]
        for pool_name, weights in sorted(self.weights.items()):
            for address, weight in sorted(weights.items()):
                servers = _servers_of(pools, pool_name)
                index = _index_of(servers, address)
                if index is None:
                    conflicts.append(
                        f"pools.{pool_name}: the weight of server {address} was changed at "
                        "runtime, but the file no longer has that server"
                    )
                else:
                    servers[index]["weight"] = weight
        for pool_name, added in self.added_servers.items():
            if pool_name not in pools:
                conflicts.append(
                    f"pools.{pool_name}: servers were added at runtime "
                    f"({', '.join(added)}), but the pool no longer exists"
                )
                continue
            servers = _servers_of(pools, pool_name)
            for address, server in added.items():
                if _index_of(servers, address) is not None:
                    conflicts.append(
                        f"pools.{pool_name}: server {address} was added at runtime, but the "
                        "file now has it too (the file's settings are used)"
                    )
                else:
                    servers.append(copy.deepcopy(server))
        return data, conflicts

    def states_for(self, config: Config) -> tuple[dict[str, str], list[str]]:
        """Operator states by server id for the servers ``config`` has, and the conflicts."""
        states: dict[str, str] = {}
        conflicts: list[str] = []
        for pool_name, by_address in sorted(self.states.items()):
            pool = config.pools.get(pool_name)
            present = {str(s.address): s for s in pool.servers} if pool is not None else {}
            for address, state in sorted(by_address.items()):
                server = present.get(address)
                if server is None:
                    conflicts.append(
                        f"pools.{pool_name}: server {address} was set to {state!r} at "
                        "runtime, but the configuration no longer has it"
                    )
                    continue
                sid = server_id(pool_name, server.address.host, server.address.port)
                states[sid] = state
        return states, conflicts

    # -- the state file -------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "added_pools": self.added_pools,
            "removed_pools": sorted(self.removed_pools),
            "added_servers": self.added_servers,
            "removed_servers": {p: sorted(a) for p, a in sorted(self.removed_servers.items())},
            "weights": self.weights,
            "states": self.states,
        }

    @classmethod
    def from_json(cls, raw: object) -> Overlay:
        if not isinstance(raw, dict) or raw.get("format") != STATE_FORMAT:
            raise OverlayError(f"not a maitred runtime state (format {STATE_FORMAT})")
        try:
            return cls(
                added_pools=dict(raw.get("added_pools", {})),
                removed_pools=set(raw.get("removed_pools", [])),
                added_servers={
                    pool: dict(servers) for pool, servers in raw.get("added_servers", {}).items()
                },
                removed_servers={
                    pool: set(addresses)
                    for pool, addresses in raw.get("removed_servers", {}).items()
                },
                weights={pool: dict(w) for pool, w in raw.get("weights", {}).items()},
                states={pool: dict(s) for pool, s in raw.get("states", {}).items()},
            )
        except (TypeError, ValueError, AttributeError) as exc:
            raise OverlayError(f"malformed runtime state: {exc}") from None


def _discard(table: dict[str, dict[str, Any]], pool: str, address: str) -> None:
    entries = table.get(pool)
    if entries is not None:
        entries.pop(address, None)
        if not entries:
            del table[pool]


def _same_address(value: object, address: str) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return str(Address.parse(value)) == address
    except ValueError:
        return False


def _file_has_server(file: Config, pool: str, address: str) -> bool:
    file_pool = file.pools.get(pool)
    return file_pool is not None and any(str(s.address) == address for s in file_pool.servers)


def _servers_of(pools: Mapping[str, ConfigData], pool_name: str) -> list[ConfigData]:
    pool = pools.get(pool_name)
    if pool is None:
        return []
    servers: list[ConfigData] = pool.setdefault("servers", [])
    return servers


def _index_of(servers: list[ConfigData], address: str) -> int | None:
    for index, server in enumerate(servers):
        if _same_address(server.get("address"), address):
            return index
    return None


# -- where the state lives --------------------------------------------------------


def resolve_state_file(config: Config, config_path: Path | None) -> Path:
    """Where this instance keeps its runtime changes.

    ``<state_dir>/runtime.json`` when the configuration sets ``state_dir``. Else
    under the default state directory (the one the sticky-cookie secret uses:
    ``/var/lib/maitred`` for root, ``~/.local/state/maitred`` otherwise), in
    ``runtime/`` with a name taken from the configuration file's absolute path,
    or from the first listen address when there is no file, so instances on one
    host keep apart.
    """
    if config.state_dir is not None:
        return Path(config.state_dir).expanduser() / STATE_FILE
    if config_path is not None:
        key = str(config_path.expanduser().resolve())
    else:
        key = "listen-" + str(config.listeners[0].bind)
    name = _UNSAFE_NAME_CHARS.sub("_", key).strip("_") + ".json"
    return default_state_dir() / RUNTIME_SUBDIR / name


def load_overlay(path: Path) -> Overlay:
    """The overlay stored at ``path``; an empty one when there is no such file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Overlay()
    except OSError as exc:
        raise OverlayError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OverlayError(f"{path} is not JSON: {exc}") from None
    return Overlay.from_json(raw)


def save_overlay(path: Path, overlay: Overlay) -> None:
    """Write atomically: a reader (or a crash) sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = json.dumps(overlay.to_json(), indent=2, sort_keys=True).encode() + b"\n"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(payload)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    # The rename itself must reach the disk too.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def check_overlay(config: Config, state_file: Path) -> list[str]:
    """What ``maitred check`` reports about the runtime changes kept in ``state_file``
    (see ``resolve_state_file``).

    Each entry is a conflict between the file and the changes made at runtime
    (they are skipped when the balancer replays them), or the reason the
    replayed configuration would be refused as a whole.
    """
    try:
        overlay = load_overlay(state_file)
    except OverlayError as exc:
        return [f"{state_file}: {exc}"]
    if overlay.is_empty():
        return []
    data, conflicts = overlay.replay(config.to_dict())
    try:
        effective = validate_config_data(data)
    except ChangeRejected as exc:
        return [*conflicts, f"{state_file}: with the runtime changes, {exc.field}: {exc.message}"]
    _, state_conflicts = overlay.states_for(effective)
    return [*conflicts, *state_conflicts]


def overlay_warnings(config: Config, config_path: Path | None) -> list[str]:
    """``check_overlay`` as ``maitred check`` prints it: ``path: warning: message``."""
    lines = []
    for conflict in check_overlay(config, resolve_state_file(config, config_path)):
        where, _, message = conflict.partition(": ")
        lines.append(f"{where}: warning: runtime change: {message}")
    return lines
