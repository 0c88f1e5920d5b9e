"""The three proxies under test: configs with equivalent settings, and launch.

Equivalent means: one worker/thread, round robin over the same four origins,
active health checks every 2 s on /health (except open-source NGINX, which has
none), X-Forwarded-For added, keep-alive to clients and origins, logging off.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from bench import nginx
from bench.processes import Child, Supervisor, free_port, wait_until_serving
from bench.tls_files import TlsFiles
from bench.tools import require

MAITRED = "maitred"
HAPROXY = "HAProxy"
NGINX = "NGINX"
ALL_TARGETS = (MAITRED, HAPROXY, NGINX)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Enough descriptors for the 10,000 idle connections, under the 20,000 per process.
MAX_CLIENT_CONNECTIONS = 15000
MAX_OPEN_FILES = 19000
START_TIMEOUT_SECONDS = 15.0


@dataclass
class Target:
    name: str
    port: int
    child: Child | None  # None when the target could not start
    problem: str = ""
    tls_port: int = 0  # the same proxying over HTTPS (scenario "https")

    @property
    def available(self) -> bool:
        return self.child is not None and self.child.alive()

    @property
    def pid(self) -> int:
        assert self.child is not None, f"{self.name} is not running"
        return self.child.pid


def haproxy_config(
    port: int, origin_ports: list[int], tls_port: int = 0, tls: TlsFiles | None = None
) -> str:
    tls_frontend = ""
    if tls is not None:
        tls_frontend = f"""
frontend bench_tls
    bind 127.0.0.1:{tls_port} ssl crt {tls.combined} alpn http/1.1
    default_backend origins
"""
    servers = "\n".join(
        f"    server origin{i} 127.0.0.1:{p} check inter 2s" for i, p in enumerate(origin_ports)
    )
    # No "log" line anywhere: logging off.
    return f"""
global
    nbthread 1
    maxconn {MAX_CLIENT_CONNECTIONS}
    # maxconn assumes two descriptors per connection; idle clients need only one.
    no strict-limits

defaults
    mode http
    maxconn {MAX_CLIENT_CONNECTIONS}
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    timeout http-keep-alive 120s
    option http-keep-alive
    option forwardfor
    http-reuse always

frontend bench
    bind 127.0.0.1:{port}
    default_backend origins
{tls_frontend}
backend origins
    balance roundrobin
    option httpchk GET /health
{servers}
"""


def nginx_proxy_config(
    workdir: Path,
    port: int,
    origin_ports: list[int],
    tls_port: int = 0,
    tls: TlsFiles | None = None,
) -> str:
    tls_listen = ""
    if tls is not None:
        tls_listen = (
            f"listen 127.0.0.1:{tls_port} ssl backlog=4096;\n"
            f"    ssl_certificate {tls.cert};\n"
            f"    ssl_certificate_key {tls.key};"
        )
    servers = "\n".join(f"    server 127.0.0.1:{p};" for p in origin_ports)
    main = nginx.main_block(workdir, "nginx-proxy", MAX_OPEN_FILES, MAX_CLIENT_CONNECTIONS)
    # Buffers large enough that a 50 KB answer never spills to a temp file.
    return f"""
{main}
http {{
  access_log off;
  {nginx.temp_paths(workdir)}
  keepalive_timeout 120s;
  keepalive_requests 10000000;
  upstream origins {{
{servers}
    keepalive 64;
    keepalive_requests 10000000;
  }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    {tls_listen}
    location / {{
      proxy_pass http://origins;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_buffer_size 16k;
      proxy_buffers 8 16k;
    }}
  }}
}}
"""


def maitred_config(
    port: int, origin_ports: list[int], tls_port: int = 0, tls: TlsFiles | None = None
) -> str:
    tls_listener = ""
    if tls is not None:
        tls_listener = f"""  - name: bench_tls
    bind: 127.0.0.1:{tls_port}
    pool: origins
    timeouts: {{idle: 120s}}
    tls:
      certificates:
        - {{cert: {tls.cert}, key: {tls.key}}}
"""
    servers = "\n".join(f"      - {{address: 127.0.0.1:{p}}}" for p in origin_ports)
    return f"""workers: 1
listeners:
  - name: bench
    bind: 127.0.0.1:{port}
    pool: origins
    timeouts: {{idle: 120s}}
{tls_listener}pools:
  origins:
    algorithm: round_robin
    servers:
{servers}
    health_check: {{path: /health, interval: 2s}}
"""


def maitred_argv(config_path: Path) -> tuple[list[str], dict[str, str]]:
    """Run the checkout's maitred whether or not it is pip-installed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PROJECT_ROOT / "src"), env.get("PYTHONPATH", "")) if p
    )
    return [sys.executable, "-m", "maitred", "run", "-c", str(config_path)], env


def start(
    name: str,
    supervisor: Supervisor,
    workdir: Path,
    origin_ports: list[int],
    cpus: str | None,
    tls: TlsFiles | None = None,
) -> Target:
    port, tls_port = free_port(), free_port()
    if name == NGINX:
        conf = nginx_proxy_config(workdir, port, origin_ports, tls_port, tls)
        child = nginx.start(supervisor, workdir, "nginx-proxy", conf, cpus)
    elif name == HAPROXY:
        conf_path = workdir / "haproxy.cfg"
        conf_path.write_text(haproxy_config(port, origin_ports, tls_port, tls))
        argv = [require("haproxy"), "-f", str(conf_path), "-db"]
        child = supervisor.start(name, argv, workdir / "haproxy.log", cpus)
    elif name == MAITRED:
        conf_path = workdir / "maitred.yaml"
        conf_path.write_text(maitred_config(port, origin_ports, tls_port, tls))
        argv, env = maitred_argv(conf_path)
        child = supervisor.start(name, argv, workdir / "maitred.log", cpus, env)
    else:
        raise ValueError(f"unknown target {name!r}")
    if wait_until_serving(child, port, "/", START_TIMEOUT_SECONDS):
        return Target(name, port, child, tls_port=tls_port)
    problem = child.log_tail(5) or "did not answer 200 on /"
    supervisor.stop(child)
    return Target(name, port, None, f"not available: {problem}")
