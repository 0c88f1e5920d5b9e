"""The admin listener: API, Prometheus metrics, dashboard, health and readiness.

Open to anyone who reaches the listener: ``/healthz``, ``/readyz`` (for
orchestrators and keepalived), ``/metrics`` (for Prometheus scrapers) and the
dashboard page ``/`` (a static page; its API calls carry the token). Every
``/api/`` route needs ``Authorization: Bearer <admin.token>`` when a token is
configured; without a token the configuration only allows a loopback bind.
"""

from __future__ import annotations

import hmac
import logging
from importlib import resources
from typing import TYPE_CHECKING

from maitred.control.admin_api import AdminApi
from maitred.control.admin_http import HttpServer, Request, Response, Router, json_response
from maitred.control.admin_views import Views
from maitred.control.prometheus import CONTENT_TYPE, BalancerCollector, build_registry, render
from maitred.control.stats import Sampler, take_sample

if TYPE_CHECKING:
    from maitred.control.supervisor import Supervisor

log = logging.getLogger("maitred.admin")

DASHBOARD_FILE = "dashboard.html"


class AdminServer:
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        assert supervisor.worker is not None and supervisor.health is not None
        worker = supervisor.worker
        self.sampler = Sampler(lambda: take_sample(worker.pools, len(worker.plane.connections)))
        self.views = Views(worker, supervisor.health, self.sampler, supervisor.runtime.leaving)
        self.api = AdminApi(supervisor, self.views)
        self.collector = BalancerCollector(supervisor)
        self._registry = build_registry(self.collector)
        self._dashboard = resources.files("maitred.control").joinpath(DASHBOARD_FILE).read_bytes()
        router = Router()
        router.add("GET", "/healthz", self._healthz)
        router.add("GET", "/readyz", self._readyz)
        router.add("GET", "/metrics", self._metrics)
        router.add("GET", "/", self._dashboard_page)
        self.api.register(router)
        self._router = router
        self._http = HttpServer(self._dispatch)

    async def start(self, host: str, port: int) -> None:
        await self._http.start(host, port)
        self.sampler.start()
        log.info("admin listening on %s", ", ".join(self.addresses()))

    def addresses(self) -> list[str]:
        return self._http.addresses()

    async def close(self) -> None:
        await self.api.close()
        await self.sampler.close()
        await self._http.close()

    async def _dispatch(self, request: Request) -> Response:
        if request.path.startswith("/api/") and not self._authorized(request):
            return json_response(
                401,
                {"error": "missing or wrong token: send 'Authorization: Bearer <admin.token>'"},
                [("WWW-Authenticate", 'Bearer realm="maitred"')],
            )
        return await self._router.dispatch(request)

    def _authorized(self, request: Request) -> bool:
        admin = self.supervisor.config.admin
        token = admin.token if admin is not None else None
        if token is None:
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode(), token.encode())

    async def _healthz(self, request: Request) -> Response:
        return json_response(200, {"status": "ok"})

    async def _readyz(self, request: Request) -> Response:
        ready, detail = self.supervisor._readiness()
        return json_response(200 if ready else 503, {"ready": ready, **detail})

    async def _metrics(self, request: Request) -> Response:
        return Response(200, render(self._registry), CONTENT_TYPE)

    async def _dashboard_page(self, request: Request) -> Response:
        return Response(
            200,
            self._dashboard,
            "text/html; charset=utf-8",
            [
                (
                    "Content-Security-Policy",
                    "default-src 'none'; script-src 'unsafe-inline'; "
                    "style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:",
                ),
                ("X-Content-Type-Options", "nosniff"),
                ("Referrer-Policy", "no-referrer"),
            ],
        )
