"""What the origin servers and the NGINX proxy share: config preamble and launch."""

from __future__ import annotations

import os
from pathlib import Path

from bench.processes import Child, Supervisor
from bench.tools import require


def main_block(workdir: Path, name: str, max_open_files: int, connections: int) -> str:
    """Top of an nginx.conf that keeps every file nginx writes inside `workdir`."""
    # Worker processes drop to "nobody" by default and could not read workdir.
    user = "user root;" if os.geteuid() == 0 else ""
    return f"""
{user}
daemon off;
worker_processes 1;
worker_rlimit_nofile {max_open_files};
pid {workdir}/{name}.pid;
error_log {workdir}/{name}-error.log warn;
events {{ worker_connections {connections}; }}
"""


def temp_paths(workdir: Path) -> str:
    # Debian's compiled-in defaults point at /var/lib/nginx.
    return "\n".join(
        f"{kind}_temp_path {workdir}/{kind}_temp;"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )


def start(supervisor: Supervisor, workdir: Path, name: str, conf: str, cpus: str | None) -> Child:
    conf_path = workdir / f"{name}.conf"
    conf_path.write_text(conf)
    argv = [
        require("nginx"),
        "-p",
        str(workdir),
        "-c",
        str(conf_path),
        "-e",  # the startup error log, before the config's error_log applies
        str(workdir / f"{name}-error.log"),
    ]
    return supervisor.start(name, argv, workdir / f"{name}.log", cpus)
