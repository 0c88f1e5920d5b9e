"""`maitred demo`: three demo backends and the balancer, nothing to install.

The backends run as child processes (as real servers would) on 127.0.0.1:8081-8083;
the balancer listens on 127.0.0.1:8080 with the admin API on 127.0.0.1:9090.
"""

from __future__ import annotations

import http.client
import logging
import random
import subprocess
import sys
import threading

from maitred.config import parse_config_text

log = logging.getLogger("maitred.demo")

DEMO_BACKEND_PORTS = (8081, 8082, 8083)

DEMO_CONFIG = """
admin:
  bind: 127.0.0.1:9090
listeners:
  - name: public
    bind: 127.0.0.1:8080
    pool: web
pools:
  web:
    algorithm: round_robin
    health_check: {path: /health, interval: 2s, timeout: 1s}
    servers:
"""


def demo_config_text() -> str:
    servers = "".join(
        f"      - {{address: 127.0.0.1:{port}, weight: 1}}\n" for port in DEMO_BACKEND_PORTS
    )
    return DEMO_CONFIG + servers


def run_demo() -> int:
    from maitred.cli import serve

    backends: list[subprocess.Popen[str]] = []
    for index, port in enumerate(DEMO_BACKEND_PORTS, start=1):
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "maitred.demo.backend",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--name",
                f"demo-{index}",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.startswith("listening on"):
            log.error("demo backend %d did not start (port %d busy?)", index, port)
            proc.terminate()
            for other in backends:
                other.terminate()
            return 1
        log.info("demo backend demo-%d %s", index, line)
        backends.append(proc)
    log.info("try: curl -i http://127.0.0.1:8080/   dashboard: http://127.0.0.1:9090/")
    stop = threading.Event()
    threading.Thread(target=_demo_traffic, args=(stop,), daemon=True).start()
    try:
        return serve(parse_config_text(demo_config_text()))
    finally:
        stop.set()
        for proc in backends:
            proc.terminate()
        for proc in backends:
            proc.wait(timeout=10)


def _demo_traffic(stop: threading.Event) -> None:
    """A trickle of requests (some slow, a few failing) so the dashboard moves."""
    paths = ["/"] * 24 + ["/delay?ms=40"] * 3 + ["/delay?ms=120", "/echo", "/status?code=503"]
    conn: http.client.HTTPConnection | None = None
    while not stop.wait(random.uniform(0.02, 0.15)):
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", 8080, timeout=5)
            conn.request("GET", random.choice(paths))
            conn.getresponse().read()
        except (OSError, http.client.HTTPException):
            conn = None  # the balancer is starting or stopping
