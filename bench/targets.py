"""The three proxies under test: configs with equivalent settings, and launch.

Equivalent means: one worker/thread (scenario "workers" also runs two), round
robin over the same four origins, active health checks every 2 s on /health
(except open-source NGINX, which has none), keep-alive to clients and origins,
logging off, and the same headers: what maitred adds to every request by
contract (X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host, X-Request-Id)
and the X-Request-Id it adds to every answer. "HAProxy-xff" is HAProxy adding
X-Forwarded-For only, as these benchmarks did before: its column shows how much
of a ratio the header work accounts for. With a `tcp_port`, each also relays raw
TCP (layer 4, round robin) to the same origins on that port.
"""

from __future__ import annotations

import os
import subprocess
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
HAPROXY_XFF_ONLY = "HAProxy-xff"
ALL_TARGETS = (MAITRED, HAPROXY, NGINX, HAPROXY_XFF_ONLY)
# maitred's request ID is a random per-process prefix and a counter, in hex.
HAPROXY_REQUEST_ID = r"%{+X}o\ %pid-%rt"

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Enough descriptors for the 10,000 idle connections, under the 20,000 per process.
MAX_CLIENT_CONNECTIONS = 15000
MAX_OPEN_FILES = 19000
START_TIMEOUT_SECONDS = 15.0
# Debian builds the stream (layer 4) module as a loadable one, in libnginx-mod-stream.
NGINX_STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
NGINX_STREAM_PACKAGE = "libnginx-mod-stream"


@dataclass
class Target:
    name: str
    port: int
    child: Child | None  # None when the target could not start
    problem: str = ""
    tls_port: int = 0  # the same proxying over HTTPS (scenario "https")
    tcp_port: int = 0  # layer-4 relay to the same origins (scenario "tcp"); 0: none

    @property
    def available(self) -> bool:
        return self.child is not None and self.child.alive()

    @property
    def pid(self) -> int:
        assert self.child is not None, f"{self.name} is not running"
        return self.child.pid


def haproxy_config(
    port: int,
    origin_ports: list[int],
    tls_port: int = 0,
    tls: TlsFiles | None = None,
    *,
    threads: int = 1,
    tcp_port: int = 0,
    same_headers: bool = True,
) -> str:
    """`same_headers`: the headers maitred adds (see the module's docstring);
    without, X-Forwarded-For only."""

    def forwarded(scheme: str) -> str:
        if not same_headers:
            return ""
        return (
            f"    http-request set-header X-Forwarded-Proto {scheme}\n"
            "    http-request set-header X-Forwarded-Host %[req.hdr(host)]\n"
        )

    request_id = ""
    answer_request_id = ""
    if same_headers:
        request_id = (
            f"    unique-id-format {HAPROXY_REQUEST_ID}\n    unique-id-header X-Request-Id\n"
        )
        answer_request_id = "    http-after-response set-header X-Request-Id %[unique-id]\n"
    tls_frontend = ""
    if tls is not None:
        tls_frontend = f"""
frontend bench_tls
    bind 127.0.0.1:{tls_port} ssl crt {tls.combined} alpn http/1.1
{forwarded("https")}    default_backend origins
"""
    servers = "\n".join(
        f"    server origin{i} 127.0.0.1:{p} check inter 2s" for i, p in enumerate(origin_ports)
    )
    tcp_proxy = ""
    if tcp_port:
        # Sections after a second "defaults" take only its settings; the checks
        # stay HTTP, as maitred's.
        tcp_proxy = f"""
defaults tcp_defaults
    mode tcp
    maxconn {MAX_CLIENT_CONNECTIONS}
    timeout connect 5s
    timeout client 120s
    timeout server 120s

frontend bench_tcp
    bind 127.0.0.1:{tcp_port}
    default_backend origins_tcp

backend origins_tcp
    balance roundrobin
    option httpchk GET /health
{servers}
"""
    # No "log" line anywhere: logging off.
    return f"""
global
    nbthread {threads}
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
{request_id}
frontend bench
    bind 127.0.0.1:{port}
{forwarded("http")}    default_backend origins
{tls_frontend}
backend origins
    balance roundrobin
    option httpchk GET /health
{answer_request_id}{servers}
{tcp_proxy}"""


def nginx_proxy_config(
    workdir: Path,
    port: int,
    origin_ports: list[int],
    tls_port: int = 0,
    tls: TlsFiles | None = None,
    *,
    tcp_port: int = 0,
) -> str:
    """With `tcp_port`, also a stream (layer 4) proxy: needs NGINX_STREAM_MODULE."""
    tls_listen = ""
    if tls is not None:
        tls_listen = (
            f"listen 127.0.0.1:{tls_port} ssl backlog=4096;\n"
            f"    ssl_certificate {tls.cert};\n"
            f"    ssl_certificate_key {tls.key};"
        )
    servers = "\n".join(f"    server 127.0.0.1:{p};" for p in origin_ports)
    main = nginx.main_block(workdir, "nginx-proxy", MAX_OPEN_FILES, MAX_CLIENT_CONNECTIONS)
    stream = ""
    if tcp_port:
        # load_module must come before the block that uses the module.
        main = f"load_module {NGINX_STREAM_MODULE};\n{main}"
        stream = f"""
stream {{
  upstream origins_tcp {{
{servers}
  }}
  server {{
    listen 127.0.0.1:{tcp_port} backlog=4096;
    proxy_pass origins_tcp;
  }}
}}
"""
    # Buffers large enough that a 50 KB answer never spills to a temp file.
    return f"""
{main}
{stream}
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
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $http_host;
      proxy_set_header X-Request-Id $request_id;
      add_header X-Request-Id $request_id always;
      proxy_buffer_size 16k;
      proxy_buffers 8 16k;
    }}
  }}
}}
"""


def maitred_config(
    port: int,
    origin_ports: list[int],
    tls_port: int = 0,
    tls: TlsFiles | None = None,
    *,
    workers: int = 1,
    tcp_port: int = 0,
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
    tcp_listener = ""
    if tcp_port:
        # The same pool: a tcp listener relays bytes to its servers, checks included.
        tcp_listener = f"""  - name: bench_tcp
    bind: 127.0.0.1:{tcp_port}
    protocol: tcp
    pool: origins
    timeouts: {{idle: 120s}}
"""
    servers = "\n".join(f"      - {{address: 127.0.0.1:{p}}}" for p in origin_ports)
    return f"""workers: {workers}
listeners:
  - name: bench
    bind: 127.0.0.1:{port}
    pool: origins
    timeouts: {{idle: 120s}}
{tls_listener}{tcp_listener}pools:
  origins:
    algorithm: round_robin
    servers:
{servers}
    health_check: {{path: /health, interval: 2s}}
"""


def checkout_env() -> dict[str, str]:
    """The environment that imports the checkout's maitred, pip-installed or not."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PROJECT_ROOT / "src"), env.get("PYTHONPATH", "")) if p
    )
    return env


def maitred_argv(config_path: Path) -> tuple[list[str], dict[str, str]]:
    """Run the checkout's maitred whether or not it is pip-installed."""
    return [sys.executable, "-m", "maitred", "run", "-c", str(config_path)], checkout_env()


def demo_backend_argv(port: int, name: str) -> list[str]:
    """maitred's demo backend (run it with checkout_env()): `/delay?ms=`, `/stats`..."""
    module = "maitred.demo.backend"
    return [sys.executable, "-m", module, "--port", str(port), "--name", name]


def nginx_stream_module() -> Path | None:
    """NGINX's stream module, apt-get installed when missing and running as root."""
    if not NGINX_STREAM_MODULE.exists() and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends"]
        subprocess.run(
            [*install, NGINX_STREAM_PACKAGE],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    return NGINX_STREAM_MODULE if NGINX_STREAM_MODULE.exists() else None


def start(
    name: str,
    supervisor: Supervisor,
    workdir: Path,
    origin_ports: list[int],
    cpus: str | None,
    tls: TlsFiles | None = None,
    *,
    workers: int = 1,
    tcp: bool = False,
    label: str = "",
) -> Target:
    """Start one proxy; `workers` is maitred's `workers` and HAProxy's `nbthread`.

    `label` names its config and log files, so that several instances of one
    proxy can run side by side (scenario "workers").
    """
    port, tls_port = free_port(), free_port()
    tcp_port = free_port() if tcp else 0
    if name == NGINX and tcp_port and nginx_stream_module() is None:
        tcp_port = 0  # the tcp scenario reports NGINX as not measured
    if name == NGINX:
        file_name = label or "nginx-proxy"
        conf = nginx_proxy_config(workdir, port, origin_ports, tls_port, tls, tcp_port=tcp_port)
        child = nginx.start(supervisor, workdir, file_name, conf, cpus)
    elif name in (HAPROXY, HAPROXY_XFF_ONLY):
        file_name = label or name.lower()
        conf_path = workdir / f"{file_name}.cfg"
        conf = haproxy_config(
            port,
            origin_ports,
            tls_port,
            tls,
            threads=workers,
            tcp_port=tcp_port,
            same_headers=name == HAPROXY,
        )
        conf_path.write_text(conf)
        argv = [require("haproxy"), "-f", str(conf_path), "-db"]
        child = supervisor.start(name, argv, workdir / f"{file_name}.log", cpus)
    elif name == MAITRED:
        file_name = label or "maitred"
        conf_path = workdir / f"{file_name}.yaml"
        conf_path.write_text(
            maitred_config(port, origin_ports, tls_port, tls, workers=workers, tcp_port=tcp_port)
        )
        argv, env = maitred_argv(conf_path)
        child = supervisor.start(name, argv, workdir / f"{file_name}.log", cpus, env)
    else:
        raise ValueError(f"unknown target {name!r}")
    if wait_until_serving(child, port, "/", START_TIMEOUT_SECONDS):
        return Target(name, port, child, tls_port=tls_port, tcp_port=tcp_port)
    problem = child.log_tail(5) or "did not answer 200 on /"
    supervisor.stop(child)
    return Target(name, port, None, f"not available: {problem}")
