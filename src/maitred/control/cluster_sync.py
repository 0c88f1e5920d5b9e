"""Runtime changes as a cluster of instances shares them: subjects, versions, decisions.

Sans-I/O: no Redis, no clock. An :class:`Overlay` (what the admin API changed)
is flattened into one entry per *subject*: ``["server_added", pool, address]``
→ the server's data, ``["weight", pool, address]`` → 5, ``["state", pool,
address]`` → ``"maint"``... One commit publishes only the subjects it changed,
so two instances changing different servers at the same moment never undo each
other. Every publication gets the next number of one counter in Redis (the
cluster *version*); per subject the value published with the highest version
wins (last writer wins), on every instance, whatever order messages arrive in.

:class:`ClusterReplica` is what one instance knows of the cluster: the version
each subject was applied at, the last version followed without a gap, and its
own changes not yet published. It decides what a message, a snapshot or a
heartbeat means; :mod:`maitred.control.cluster` does the talking and installs
the overlays it returns.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from maitred.control.overlay import PERSISTED_STATES, Overlay

#: Subject (a JSON list as text) → its value; JSON-able.
Flat = dict[str, Any]
#: Subject → new value, ``None`` when the subject no longer holds a change.
Changes = dict[str, Any]

POOL_ADDED = "pool_added"
POOL_REMOVED = "pool_removed"
SERVER_ADDED = "server_added"
SERVER_REMOVED = "server_removed"
WEIGHT = "weight"
STATE = "state"
_POOL_KINDS = (POOL_ADDED, POOL_REMOVED)
_SERVER_KINDS = (SERVER_ADDED, SERVER_REMOVED, WEIGHT, STATE)


def subject(kind: str, *where: str) -> str:
    return json.dumps([kind, *where], separators=(",", ":"))


def parse_subject(key: str) -> tuple[str, ...] | None:
    """``(kind, pool)`` or ``(kind, pool, address)``; None for what this version does not know."""
    try:
        parts = json.loads(key)
    except (json.JSONDecodeError, TypeError):
        return None
    if not isinstance(parts, list) or not all(isinstance(part, str) for part in parts):
        return None
    if (len(parts) == 2 and parts[0] in _POOL_KINDS) or (
        len(parts) == 3 and parts[0] in _SERVER_KINDS
    ):
        return tuple(parts)
    return None


# -- overlay <-> subjects ----------------------------------------------------------


def flatten(overlay: Overlay) -> Flat:
    flat: Flat = {}
    for name, pool in overlay.added_pools.items():
        flat[subject(POOL_ADDED, name)] = pool
    for name in sorted(overlay.removed_pools):
        flat[subject(POOL_REMOVED, name)] = True
    for pool_name, servers in overlay.added_servers.items():
        for address, server in servers.items():
            flat[subject(SERVER_ADDED, pool_name, address)] = server
    for pool_name, addresses in sorted(overlay.removed_servers.items()):
        for address in sorted(addresses):
            flat[subject(SERVER_REMOVED, pool_name, address)] = True
    for pool_name, weights in overlay.weights.items():
        for address, weight in weights.items():
            flat[subject(WEIGHT, pool_name, address)] = weight
    for pool_name, states in overlay.states.items():
        for address, state in states.items():
            flat[subject(STATE, pool_name, address)] = state
    return flat


def unflatten(flat: Flat) -> Overlay:
    """The overlay ``flat`` describes; subjects or values this version cannot read are left out."""
    overlay = Overlay()
    for key, value in flat.items():
        parts = parse_subject(key)
        if parts is None:
            continue
        kind, pool_name = parts[0], parts[1]
        address = parts[2] if len(parts) == 3 else ""
        if kind == POOL_ADDED and isinstance(value, dict):
            overlay.added_pools[pool_name] = copy.deepcopy(value)
        elif kind == POOL_REMOVED and value is True:
            overlay.removed_pools.add(pool_name)
        elif kind == SERVER_ADDED and isinstance(value, dict):
            overlay.added_servers.setdefault(pool_name, {})[address] = copy.deepcopy(value)
        elif kind == SERVER_REMOVED and value is True:
            overlay.removed_servers.setdefault(pool_name, set()).add(address)
        elif kind == WEIGHT and isinstance(value, int) and not isinstance(value, bool):
            overlay.weights.setdefault(pool_name, {})[address] = value
        elif kind == STATE and value in PERSISTED_STATES:
            overlay.states.setdefault(pool_name, {})[address] = value
    return overlay


def diff(old: Flat, new: Flat) -> Changes:
    """The subjects whose value differs, with the new value (None: gone)."""
    changes: Changes = {key: value for key, value in new.items() if old.get(key) != value}
    changes.update((key, None) for key in old if key not in new)
    return changes


def apply_changes(flat: Flat, changes: Changes) -> Flat:
    updated = dict(flat)
    for key, value in changes.items():
        if value is None:
            updated.pop(key, None)
        else:
            updated[key] = value
    return updated


# -- what travels ------------------------------------------------------------------


@dataclass(frozen=True)
class ChangeMessage:
    """One publication on the change channel."""

    version: int
    node: str
    changes: Changes


@dataclass(frozen=True)
class Snapshot:
    """The cluster's whole state: its version and, per subject, (version, value or None)."""

    version: int
    entries: dict[str, tuple[int, Any]] = field(default_factory=dict)


def encode_changes(changes: Changes) -> str:
    return json.dumps(changes, sort_keys=True, separators=(",", ":"))


def decode_message(raw: bytes | str) -> ChangeMessage:
    """Raises ValueError for anything but ``{"v": int, "node": str, "changes": {...}}``."""
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("a change message must be a JSON object")
    version, node, changes = data.get("v"), data.get("node"), data.get("changes")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError("a change message needs a version >= 1")
    if not isinstance(node, str) or not isinstance(changes, dict):
        raise ValueError("a change message needs 'node' and 'changes'")
    return ChangeMessage(version, node, changes)


def decode_entry(raw: bytes | str) -> tuple[int, Any]:
    """One stored subject: ``{"v": int, "value": ...}`` → (version, value)."""
    data = json.loads(raw)
    if not isinstance(data, dict) or not isinstance(data.get("v"), int):
        raise ValueError("a stored subject must be {'v': int, 'value': ...}")
    return data["v"], data.get("value")


# -- one instance's view -----------------------------------------------------------


class Step(NamedTuple):
    """What to do after a message: nothing, install ``flat``, or read the whole state again."""

    action: Literal["none", "apply", "resync"]
    flat: Flat


class ClusterReplica:
    def __init__(self) -> None:
        #: Subject → the version of the value this instance holds.
        self.versions: dict[str, int] = {}
        #: Every version up to this one has been applied (or was in a snapshot).
        self.followed = 0
        #: False until the first snapshot: messages before it are not understood.
        self.synced = False
        #: This instance's changes not yet published (kept while Redis is away).
        self.pending: Changes = {}
        self._lag_target: int | None = None

    # -- local changes ----------------------------------------------------------------

    def record_local(self, before: Overlay, after: Overlay) -> bool:
        """A change made through this instance's admin API; True when there is news to publish."""
        changes = diff(flatten(before), flatten(after))
        self.pending.update(changes)
        return bool(changes)

    def to_publish(self) -> Changes:
        return dict(self.pending)

    def published(self, changes: Changes, version: int) -> None:
        """``changes`` went out as ``version``: its own echo will not undo anything."""
        for key, value in changes.items():
            self.versions[key] = max(self.versions.get(key, 0), version)
            # Changed again meanwhile: the newer value still has to go out.
            if key in self.pending and self.pending[key] == value:
                del self.pending[key]

    # -- the cluster's changes --------------------------------------------------------

    def receive(self, message: ChangeMessage, flat: Flat) -> Step:
        """One message from the channel, given this instance's current subjects."""
        if not self.synced or message.version <= self.followed:
            return Step("none", flat)  # already part of the snapshot, or seen
        if message.version > self.followed + 1:
            return Step("resync", flat)  # a message was missed
        self.followed = message.version
        accepted: Changes = {}
        for key, value in message.changes.items():
            # Own changes not yet out will be published with a higher version: they win.
            if key in self.pending or self.versions.get(key, 0) >= message.version:
                continue
            self.versions[key] = message.version
            accepted[key] = value
        updated = apply_changes(flat, accepted)
        return Step("apply" if updated != flat else "none", updated)

    def resync(self, snapshot: Snapshot, flat: Flat) -> Flat:
        """After reading the cluster's whole state: the subjects this instance should hold.

        An empty cluster (version 0: new, or Redis lost its data) is seeded with
        this instance's own changes; otherwise the cluster's state wins, except
        for this instance's changes still waiting to be published.
        """
        self.synced = True
        self._lag_target = None
        self.followed = snapshot.version
        if snapshot.version == 0:
            self.versions = {}
            self.pending = {**self.pending, **flat}
            return flat
        ordered = sorted(snapshot.entries.items(), key=lambda item: item[1][0])
        self.versions = {key: version for key, (version, _) in ordered}
        state = {key: value for key, (_, value) in ordered if value is not None}
        return apply_changes(state, self.pending)

    def needs_resync(self, cluster_version: int) -> bool:
        """Told the cluster's version at each heartbeat: True when a resync is due.

        Lagging behind one heartbeat is normal (a message on its way); still not
        having caught up with that version at the next heartbeat is not.
        """
        if cluster_version < self.followed:
            return True  # Redis lost its data (restarted without persistence, flushed)
        if cluster_version == self.followed:
            self._lag_target = None
            return False
        if self._lag_target is not None and self.followed < self._lag_target:
            return True
        self._lag_target = cluster_version
        return False
