"""Installing runtime changes that came from the cluster, the way the admin API would.

The overlay is validated against this instance's file, written to its state
file (so it starts with it even without Redis) and applied like a reload. A
server the new overlay no longer has drains first (in-flight requests finish),
exactly as after ``DELETE /api/v1/servers/{id}`` on this instance.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from maitred.control.admin_views import ServerRef, iter_servers
from maitred.control.overlay import ConfigData, Overlay
from maitred.control.validation import ChangeRejected

if TYPE_CHECKING:
    from maitred.control.supervisor import Supervisor

log = logging.getLogger("maitred.cluster")


async def install_overlay(supervisor: Supervisor, target: Overlay) -> bool:
    """Make ``target`` this process's runtime changes; False when it was refused.

    The caller holds ``supervisor.runtime.lock``.
    """
    runtime = supervisor.runtime
    file_config = supervisor.file_config
    data, _ = target.replay(file_config.to_dict())
    pools: dict[str, ConfigData] = data.get("pools", {})
    admin = supervisor.admin
    leaving_before = dict(runtime.leaving)
    departing: list[ServerRef] = []
    if admin is not None:
        departing = [
            ref
            for ref in iter_servers(supervisor.config)
            if (ref.pool, ref.address) not in runtime.leaving
            and ref.pool in pools
            and not _has_server(pools[ref.pool], ref.address)
        ]
    # ``leaving`` is shared with the admin views: change it in place.
    for key in list(runtime.leaving):
        pool = pools.get(key[0])
        if pool is None or _has_server(pool, key[1]):
            del runtime.leaving[key]  # its pool went, or it is back
    current = supervisor.config.to_dict()["pools"]
    for ref in departing:
        runtime.leaving[(ref.pool, ref.address)] = next(
            s for s in current[ref.pool]["servers"] if s["address"] == ref.address
        )
    try:
        config = runtime.build(file_config, target)
    except ChangeRejected as exc:
        runtime.leaving.clear()
        runtime.leaving.update(leaving_before)
        log.error("cluster change not applied: with it, %s: %s", exc.field, exc.message)
        return False
    try:
        await runtime.commit(target, notify=False)
    except OSError as exc:
        log.error(
            "cluster change applied but not saved: cannot write %s: %s",
            runtime.path,
            exc.strerror or exc,
        )
        runtime.overlay = target
    await supervisor._apply(config)
    supervisor.config = config
    if admin is not None:
        for ref in departing:
            admin.api.remove_after_drain(ref)
    return True


def _has_server(pool: ConfigData, address: str) -> bool:
    return any(server.get("address") == address for server in pool.get("servers", []))
