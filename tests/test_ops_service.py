"""deploy/systemd and deploy/logrotate: the unit passes systemd's checks, and the
rotation it documents works on a running maitred's access log.

``systemd-analyze`` (package systemd) and ``logrotate`` skip their tests when
missing.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from maitred.config import Config
from tests.support.backends import BackendProcess, build_request, connect, read_response
from tests.support.balancer import BalancerFactory

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "systemd" / "maitred.service"
LOGROTATE = ROOT / "deploy" / "logrotate" / "maitred"
INSTALLED_COMMAND = "/opt/maitred/bin/maitred"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
LOGROTATE_COMMAND = shutil.which("logrotate") or (
    "/usr/sbin/logrotate" if Path("/usr/sbin/logrotate").exists() else None
)


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_reloads_with_sighup_and_outlasts_the_drain() -> None:
    settings = unit_settings()
    assert settings["ExecReload"][-1] == "/bin/kill -HUP $MAINPID"
    assert settings["KillSignal"] == ["SIGTERM"]
    stop = re.fullmatch(r"(\d+)s", settings["TimeoutStopSec"][0])
    assert stop, settings["TimeoutStopSec"]
    drain_timeout = Config.model_fields["drain_timeout"].default
    assert int(stop.group(1)) > drain_timeout
    assert settings["Restart"] == ["on-failure"]
    assert settings["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert settings["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    for hardening in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert settings[hardening] == ["yes"], hardening
    assert settings["ProtectSystem"] == ["strict"]
    # Under ProtectSystem=strict only these stay writable: state and access logs.
    assert settings["StateDirectory"] == ["maitred"]
    assert settings["LogsDirectory"] == ["maitred"]
    # The commands the unit runs exist with these arguments.
    for command in settings["ExecStartPre"] + settings["ExecStart"]:
        assert command.startswith(f"{INSTALLED_COMMAND} ")
        result = subprocess.run(
            [sys.executable, "-m", "maitred", *command.split()[1:], "--help"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, (command, result.stderr)


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="needs systemd-analyze (package systemd)")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that ExecStart's program exists: point it at an installed one.
    program = shutil.which("maitred") or sys.executable
    unit = tmp_path / "maitred.service"
    unit.write_text(UNIT.read_text().replace(INSTALLED_COMMAND, program))
    result = subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # warnings too (unknown settings...)


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="needs systemd-analyze (package systemd)")
def test_unit_sandboxing_rates_ok(tmp_path: Path) -> None:
    unit = tmp_path / "maitred.service"
    shutil.copy(UNIT, unit)
    result = subprocess.run(
        [str(SYSTEMD_ANALYZE), "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if "--offline" in result.stderr:
        pytest.skip("systemd-analyze security --offline needs systemd 250 or later")
    match = re.search(r"Overall exposure level for maitred.service: ([\d.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    # systemd's scale: 0 (locked down) to 10 (unprotected); below 2 reads "OK".
    assert float(match.group(1)) < 2.0, result.stdout


@pytest.mark.skipif(LOGROTATE_COMMAND is None, reason="needs logrotate")
def test_logrotate_copytruncate_keeps_a_running_maitred_logging(
    backends: list[BackendProcess], balancer: BalancerFactory, tmp_path: Path
) -> None:
    log_dir = tmp_path / "log"
    log_dir.mkdir(mode=0o750)
    access_log = log_dir / "access.log"
    lb = balancer(
        f"""
listeners:
  - name: public
    bind: 127.0.0.1:0
    pool: web
    access_log: {{format: combined, path: {access_log}}}
pools:
  web:
    servers: [{{address: {backends[0].address}}}]
"""
    )
    send(lb.port, "/before", 5)
    wait_for_lines(access_log, "/before", 5)

    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    config = tmp_path / "logrotate.conf"
    config.write_text(
        LOGROTATE.read_text()
        .replace("/var/log/maitred/", f"{log_dir}/")
        .replace("su maitred maitred", f"su {user} {group}")
    )
    assert LOGROTATE_COMMAND is not None
    result = subprocess.run(
        [LOGROTATE_COMMAND, "--force", "--state", str(tmp_path / "state"), str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    rotated = log_dir / "access.log.1"  # delaycompress: the newest stays plain
    assert rotated.read_text().count("/before") == 5

    send(lb.port, "/after", 5)
    wait_for_lines(access_log, "/after", 5)
    data = access_log.read_bytes()
    # Truncated in place and appended to from its start: no hole of NULs, no old lines.
    assert b"\0" not in data
    assert data.count(b"/before") == 0
    assert data.startswith(b"127.0.0.1 - - [")


def send(port: int, path: str, count: int) -> None:
    with connect("127.0.0.1", port) as sock:
        for _ in range(count):
            sock.sendall(build_request("GET", path))
            assert read_response(sock).status == 200


def wait_for_lines(path: Path, marker: str, count: int, timeout: float = 10.0) -> None:
    """maitred writes its access log once a second, from a thread: watch the file."""
    deadline = time.monotonic() + timeout
    while True:
        found = path.read_text().count(marker) if path.exists() else 0
        if found >= count:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{count} lines with {marker} not in {path} within {timeout}s")
        time.sleep(0.1)
