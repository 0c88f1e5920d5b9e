"""The /api/v1 routes: servers, pools, metrics, reload, the effective configuration.

Every change follows one path: copy the overlay, change the copy, build and
validate the configuration it gives (the same model as the file: a refusal
names the field), write the copy to the state file, then apply the
configuration the way a reload does, so no connection is dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeGuard

from maitred.config import Address, Config
from maitred.config.checks import unknown_choice
from maitred.control.admin_http import (
    Request,
    Response,
    Router,
    json_response,
    no_content,
)
from maitred.control.admin_views import ServerRef, Views, find_server, iter_servers, pool_users
from maitred.control.openapi import openapi_document
from maitred.control.overlay import ConfigData, Overlay
from maitred.control.stats import HISTORY_SECONDS
from maitred.control.validation import ChangeRejected, redacted

if TYPE_CHECKING:
    from maitred.control.supervisor import Supervisor

log = logging.getLogger("maitred.admin")

API = "/api/v1"
SERVER_FIELDS = ("host", "port", "weight", "health_check_path", "pool", "backup", "max_connections")
PATCH_FIELDS = ("weight", "state")
STATES = ("ready", "drain", "maint")
MAX_WEIGHT = 1000
POOL_NAME = re.compile(r"[A-Za-z0-9_-]+")
#: How often a server on its way out is checked for in-flight requests.
DRAIN_POLL_SECONDS = 0.05


class AdminApi:
    def __init__(self, supervisor: Supervisor, views: Views) -> None:
        self.supervisor = supervisor
        self.views = views
        self._drains: set[asyncio.Task[None]] = set()

    def register(self, router: Router) -> None:
        routes: list[tuple[str, str, Callable[[Request], Any]]] = [
            ("GET", "/servers", self.list_servers),
            ("POST", "/servers", self.add_server),
            ("GET", "/servers/{id}", self.get_server),
            ("PATCH", "/servers/{id}", self.patch_server),
            ("DELETE", "/servers/{id}", self.delete_server),
            ("GET", "/pools", self.list_pools),
            ("POST", "/pools", self.add_pool),
            ("GET", "/pools/{name}", self.get_pool),
            ("DELETE", "/pools/{name}", self.delete_pool),
            ("GET", "/metrics", self.metrics),
            ("GET", "/metrics/history", self.history),
            ("POST", "/reload", self.reload),
            ("GET", "/config", self.get_config),
            ("GET", "/runtime", self.get_runtime),
            ("GET", "/cluster", self.get_cluster),
            ("GET", "/openapi.json", self.openapi),
        ]
        for method, path, handler in routes:
            router.add(method, API + path, _refusals_as_json(handler))

    async def close(self) -> None:
        for task in list(self._drains):
            task.cancel()
        await asyncio.gather(*self._drains, return_exceptions=True)

    @property
    def config(self) -> Config:
        return self.supervisor.config

    # -- servers ------------------------------------------------------------------

    async def list_servers(self, request: Request) -> Response:
        pool = request.query.get("pool")
        return json_response(200, {"servers": self.views.servers(self.config, pool)})

    async def get_server(self, request: Request) -> Response:
        return json_response(200, self.views.server(self._server(request.params["id"])))

    async def add_server(self, request: Request) -> Response:
        body = _json_object(request)
        async with self.supervisor.runtime.lock:
            pool, server = _new_server(body, self.config)
            address = server["address"]
            leaving_key = (pool, address)
            existing = next(
                (ref for ref in _refs(self.config, pool) if ref.address == address), None
            )
            if existing is not None and leaving_key not in self.supervisor.runtime.leaving:
                raise ChangeRejected(
                    f"server {address} is already in pool {pool} (id {existing.id})",
                    "port",
                    status=409,
                )
            candidate = self.supervisor.runtime.candidate()
            candidate.add_server(pool, server, self.supervisor.file_config)
            # Coming back while it drained out: it stays, with the new settings.
            returning = self.supervisor.runtime.leaving.pop(leaving_key, None)
            try:
                await self._install(candidate, blame=self._blame_server(candidate, pool, address))
            except BaseException:
                if returning is not None:
                    self.supervisor.runtime.leaving[leaving_key] = returning
                raise
            ref = next(ref for ref in _refs(self.config, pool) if ref.address == address)
        log.info("admin: server %s added to pool %s", ref.id, pool)
        return json_response(201, self.views.server(ref), [("Location", f"{API}/servers/{ref.id}")])

    async def patch_server(self, request: Request) -> Response:
        body = _json_object(request)
        unknown = [key for key in body if key not in PATCH_FIELDS]
        if unknown:
            raise ChangeRejected(
                f"unknown field; expected {' and/or '.join(PATCH_FIELDS)}", unknown[0]
            )
        if not body:
            raise ChangeRejected("nothing to change: give weight and/or state", "weight")
        weight = body.get("weight")
        state = body.get("state")
        if "weight" in body:
            weight = _weight(weight)
        if "state" in body and state not in STATES:
            raise ChangeRejected(f"must be one of: {', '.join(STATES)}", "state")
        async with self.supervisor.runtime.lock:
            ref = self._server(request.params["id"])
            if (ref.pool, ref.address) in self.supervisor.runtime.leaving:
                raise ChangeRejected(
                    f"server {ref.id} is being removed (draining)", "state", status=409
                )
            candidate = self.supervisor.runtime.candidate()
            if weight is not None:
                candidate.set_weight(ref.pool, ref.address, weight)
            if isinstance(state, str):
                candidate.set_state(ref.pool, ref.address, state)
            if weight is not None:
                await self._install(candidate)
            else:
                await self.supervisor.runtime.commit(candidate)
            if isinstance(state, str):
                self._set_state(ref.id, state)
            ref = self._server(ref.id)
        log.info("admin: server %s changed: %s", ref.id, json.dumps(body, sort_keys=True))
        return json_response(200, self.views.server(ref))

    async def delete_server(self, request: Request) -> Response:
        runtime = self.supervisor.runtime
        async with runtime.lock:
            ref = self._server(request.params["id"])
            key = (ref.pool, ref.address)
            if key in runtime.leaving:
                return no_content()
            candidate = runtime.candidate()
            candidate.remove_server(ref.pool, ref.address, self.supervisor.file_config)
            pool_data = self.config.to_dict()["pools"][ref.pool]
            runtime.leaving[key] = next(
                s for s in pool_data["servers"] if s["address"] == ref.address
            )
            try:
                await self._install(candidate)
            except BaseException:
                runtime.leaving.pop(key, None)
                raise
        self.remove_after_drain(ref)
        return no_content()

    def remove_after_drain(self, ref: ServerRef) -> None:
        """Remove ``ref`` (already in ``runtime.leaving``) once idle or at the drain timeout."""
        timeout = self.config.drain_timeout
        log.info("admin: server %s draining before removal (up to %ss)", ref.id, timeout)
        task = asyncio.get_running_loop().create_task(self._remove_when_idle(ref, timeout))
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)

    async def _remove_when_idle(self, ref: ServerRef, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        idle = False
        while loop.time() < deadline:
            live = self._live(ref.id)
            if live is None or live.active == 0:
                idle = True
                break
            await asyncio.sleep(DRAIN_POLL_SECONDS)
        runtime = self.supervisor.runtime
        async with runtime.lock:
            if runtime.leaving.pop((ref.pool, ref.address), None) is None:
                return  # added back meanwhile
            try:
                config = runtime.build(self.supervisor.file_config, runtime.overlay)
            except ChangeRejected as exc:
                log.error("server %s could not be removed: %s", ref.id, exc.message)
                return
            await self.supervisor._apply(config)
            self.supervisor.config = config
        how = "once idle" if idle else "at the drain timeout"
        log.info("admin: server %s removed from pool %s %s", ref.id, ref.pool, how)

    # -- pools --------------------------------------------------------------------

    async def list_pools(self, request: Request) -> Response:
        current = self.views.sampler.now()
        base = self.views.sampler.baseline(current)
        runtime_pools = frozenset(self.supervisor.runtime.overlay.added_pools)
        pools = [
            self.views.pool(self.config, name, current, base, runtime_pools=runtime_pools)
            for name in self.config.pools
        ]
        return json_response(200, {"pools": pools})

    async def get_pool(self, request: Request) -> Response:
        name = self._pool_name(request.params["name"])
        return json_response(200, self._pool_view(name, with_config=True))

    async def add_pool(self, request: Request) -> Response:
        body = _json_object(request)
        name = body.get("name")
        if not isinstance(name, str) or not POOL_NAME.fullmatch(name):
            raise ChangeRejected("required: a pool name of letters, digits, '_' and '-'", "name")
        pool_data = {key: value for key, value in body.items() if key != "name"}
        async with self.supervisor.runtime.lock:
            if name in self.config.pools:
                raise ChangeRejected(f"pool {name} already exists", "name", status=409)
            candidate = self.supervisor.runtime.candidate()
            candidate.add_pool(name, pool_data, self.supervisor.file_config)
            await self._install(candidate, blame=("pools", name))
        log.info("admin: pool %s added", name)
        return json_response(
            201, self._pool_view(name, with_config=True), [("Location", f"{API}/pools/{name}")]
        )

    async def delete_pool(self, request: Request) -> Response:
        async with self.supervisor.runtime.lock:
            name = self._pool_name(request.params["name"])
            users = pool_users(self.config, name)
            if users:
                raise ChangeRejected(
                    f"pool {name} is in use by {', '.join(users)}", "name", status=409
                )
            candidate = self.supervisor.runtime.candidate()
            candidate.remove_pool(name, self.supervisor.file_config)
            leaving = self.supervisor.runtime.leaving
            for key in [key for key in leaving if key[0] == name]:
                del leaving[key]
            await self._install(candidate)
        log.info("admin: pool %s deleted", name)
        return no_content()

    def _pool_view(self, name: str, *, with_config: bool) -> dict[str, Any]:
        runtime_pools = frozenset(self.supervisor.runtime.overlay.added_pools)
        view = self.views.pool(self.config, name, runtime_pools=runtime_pools)
        if with_config:
            view["config"] = redacted(self.config.to_dict()["pools"][name])
        return view

    # -- the rest -----------------------------------------------------------------

    async def metrics(self, request: Request) -> Response:
        return json_response(200, self.views.totals(self.config))

    async def history(self, request: Request) -> Response:
        text = request.query.get("seconds", str(HISTORY_SECONDS))
        if not text.isdigit() or not 1 <= int(text) <= HISTORY_SECONDS:
            raise ChangeRejected(f"must be an integer from 1 to {HISTORY_SECONDS}", "seconds")
        return json_response(200, self.views.history(int(text)))

    async def reload(self, request: Request) -> Response:
        if self.supervisor.config_path is None:
            raise ChangeRejected(
                "no configuration file is in use (started with flags)", None, status=409
            )
        problems = await self.supervisor.reload_file()
        if problems:
            refused = ChangeRejected(
                "the configuration file was refused; the running configuration is kept",
                None,
                status=422,
            )
            refused.problems = problems
            raise refused
        return json_response(
            200, {"reloaded": True, "conflicts": list(self.supervisor.runtime.conflicts)}
        )

    async def get_config(self, request: Request) -> Response:
        return json_response(200, redacted(self.config.to_dict()))

    async def get_runtime(self, request: Request) -> Response:
        runtime = self.supervisor.runtime
        return json_response(
            200,
            {
                "state_file": str(runtime.path),
                "changes": runtime.overlay.to_json(),
                "conflicts": list(runtime.conflicts),
                "removing": [
                    {"pool": pool, "address": address} for pool, address in runtime.leaving
                ],
            },
        )

    async def get_cluster(self, request: Request) -> Response:
        cluster = self.supervisor.cluster
        return json_response(200, cluster.status() if cluster is not None else {"enabled": False})

    async def openapi(self, request: Request) -> Response:
        return json_response(200, openapi_document())

    # -- helpers ------------------------------------------------------------------

    async def _install(self, candidate: Overlay, blame: tuple[str | int, ...] = ()) -> None:
        """Validate, persist, apply: the configuration ``candidate`` gives."""
        runtime = self.supervisor.runtime
        config = runtime.build(self.supervisor.file_config, candidate, blame)
        try:
            await runtime.commit(candidate)
        except OSError as exc:
            raise ChangeRejected(
                f"could not write the state file {runtime.path}: {exc.strerror or exc}",
                None,
                status=500,
            ) from None
        await self.supervisor._apply(config)
        self.supervisor.config = config

    def _blame_server(self, candidate: Overlay, pool: str, address: str) -> tuple[str | int, ...]:
        data, _ = self.supervisor.runtime.replayed_data(self.supervisor.file_config, candidate)
        servers = data.get("pools", {}).get(pool, {}).get("servers", [])
        for index, server in enumerate(servers):
            if server.get("address") == address:
                return ("pools", pool, "servers", index)
        return ("pools", pool)

    def _server(self, sid: str) -> ServerRef:
        ref = find_server(self.config, sid)
        if ref is None:
            raise ChangeRejected(f"no server with id {sid!r}", "id", status=404)
        return ref

    def _pool_name(self, name: str) -> str:
        if name not in self.config.pools:
            raise ChangeRejected(f"no pool named {name!r}", "name", status=404)
        return name

    def _set_state(self, sid: str, state: str) -> None:
        health = self.supervisor.health
        assert health is not None
        if state == "ready":
            health.admin_states.pop(sid, None)
        else:
            health.admin_states[sid] = state
        health._settle_id(sid)

    def _live(self, sid: str) -> Any:
        worker = self.supervisor.worker
        if worker is None:
            return None
        return next((s for _, s in worker.servers() if s.id == sid), None)


def _refusals_as_json(handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
    async def handle(request: Request) -> Response:
        try:
            response: Response = await handler(request)
        except ChangeRejected as exc:
            return json_response(exc.status, exc.body())
        return response

    return handle


def _refs(config: Config, pool: str) -> list[ServerRef]:
    return [ref for ref in iter_servers(config) if ref.pool == pool]


def _json_object(request: Request) -> dict[str, Any]:
    if not request.body.strip():
        raise ChangeRejected("a JSON object body is required", None)
    try:
        body = json.loads(request.body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ChangeRejected(f"body is not valid JSON: {exc}", None) from None
    if not isinstance(body, dict):
        raise ChangeRejected("body must be a JSON object", None)
    return body


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _weight(value: object) -> int:
    if not _is_int(value) or not 1 <= value <= MAX_WEIGHT:
        raise ChangeRejected(f"must be an integer from 1 to {MAX_WEIGHT}", "weight")
    return value


def _new_server(body: dict[str, Any], config: Config) -> tuple[str, ConfigData]:
    """Check a POST /servers body field by field; the pool and the server's config data."""
    unknown = [key for key in body if key not in SERVER_FIELDS]
    if unknown:
        raise ChangeRejected(f"unknown field; expected: {', '.join(SERVER_FIELDS)}", unknown[0])
    host = body.get("host")
    if not isinstance(host, str) or not host.strip():
        raise ChangeRejected("required: the server's host name or IP address", "host")
    port = body.get("port")
    if not _is_int(port) or not 1 <= port <= 65535:
        raise ChangeRejected("required: an integer from 1 to 65535", "port")
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        address = Address.parse(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    except ValueError as exc:
        raise ChangeRejected(str(exc), "host") from None
    server: ConfigData = {"address": str(address), "weight": 1}
    if "weight" in body:
        server["weight"] = _weight(body["weight"])
    path = body.get("health_check_path")
    if path is not None:
        if not isinstance(path, str) or not path.startswith("/") or any(c in path for c in " \r\n"):
            raise ChangeRejected("must be a path starting with '/'", "health_check_path")
        server["health_check_path"] = path
    backup = body.get("backup")
    if backup is not None:
        if not isinstance(backup, bool):
            raise ChangeRejected("must be true or false", "backup")
        server["backup"] = backup
    max_connections = body.get("max_connections")
    if max_connections is not None:
        if not _is_int(max_connections) or max_connections < 1:
            raise ChangeRejected("must be an integer >= 1", "max_connections")
        server["max_connections"] = max_connections
    return _pool_for(body.get("pool"), config), server


def _pool_for(pool: object, config: Config) -> str:
    if pool is None:
        if len(config.pools) == 1:
            return next(iter(config.pools))
        raise ChangeRejected("required: this balancer has several pools", "pool")
    if not isinstance(pool, str):
        raise ChangeRejected("must be a pool name", "pool")
    if pool not in config.pools:
        raise ChangeRejected(unknown_choice("pool", pool, sorted(config.pools)), "pool")
    return pool
