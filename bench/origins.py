"""Four fast origin servers: one nginx process, one worker, four ports."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench import nginx
from bench.processes import Child, Supervisor, free_port, wait_until_serving

SMALL_BODY = "hello\n"
LARGE_BODY_BYTES = 50 * 1024
ORIGIN_COUNT = 4


@dataclass
class Origins:
    ports: list[int]
    child: Child


def config(workdir: Path, ports: list[int]) -> str:
    listens = "\n".join(f"    listen 127.0.0.1:{port} backlog=4096;" for port in ports)
    return f"""
{nginx.main_block(workdir, "origins", max_open_files=8192, connections=4096)}
http {{
  access_log off;
  {nginx.temp_paths(workdir)}
  default_type text/plain;
  sendfile on;
  tcp_nopush on;
  keepalive_timeout 120s;
  keepalive_requests 10000000;
  server {{
{listens}
    root {workdir}/www;
    location = / {{ return 200 "{SMALL_BODY.strip()}\\n"; }}
    location = /health {{ return 200 "ok\\n"; }}
    location = /50k {{ }}
  }}
}}
"""


def start(supervisor: Supervisor, workdir: Path, cpus: str | None) -> Origins:
    (workdir / "www").mkdir(parents=True, exist_ok=True)
    (workdir / "www" / "50k").write_bytes(b"x" * (LARGE_BODY_BYTES - 1) + b"\n")
    ports = [free_port() for _ in range(ORIGIN_COUNT)]
    child = nginx.start(supervisor, workdir, "origins", config(workdir, ports), cpus)
    if not all(wait_until_serving(child, port, "/health", timeout=10) for port in ports):
        raise SystemExit(f"bench: origin nginx did not start:\n{child.log_tail()}")
    return Origins(ports, child)
