"""`maitred keepalived-config`, the generator behind it, and the scripts in deploy/keepalived.

The generated files are checked by keepalived itself (``keepalived -t``, its
config-test mode) where keepalived is installed; the check and notify scripts
run against a real backend and a real file.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from maitred.cli import main
from maitred.control.keepalived import (
    KeepalivedSettings,
    health_check_command,
    render_keepalived_config,
    validate,
)
from tests.support.backends import BackendProcess

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "keepalived"
CHECK_SCRIPT = DEPLOY / "check-maitred"
NOTIFY_SCRIPT = DEPLOY / "notify-maitred"
TEMPLATE = DEPLOY / "keepalived.conf"

PRIMARY = KeepalivedSettings(
    vip="10.0.0.100/24",
    interface="eth0",
    router_id=51,
    priority=150,
    peers=("10.0.0.3",),
)


@pytest.fixture(scope="module")
def eth0_namespace() -> Iterator[str]:
    """A network namespace with an ``eth0``: keepalived -t insists the interface
    exists (and refuses ``lo``), and the test must not depend on the host's."""
    if shutil.which("keepalived") is None:
        pytest.skip("keepalived is not installed")
    name = f"mtd{os.getpid()}kat"
    created = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if created.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {created.stderr.strip()}")
    try:
        for command in (
            ["ip", "-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"],
            ["ip", "-n", name, "link", "set", "eth0", "up"],
        ):
            subprocess.run(command, check=True, capture_output=True, timeout=10)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def config_test(text: str, tmp_path: Path, namespace: str) -> subprocess.CompletedProcess[str]:
    """keepalived's own verdict on ``text``: exit 0 and silence mean valid."""
    path = tmp_path / "keepalived.conf"
    path.write_text(text)
    return subprocess.run(
        ["ip", "netns", "exec", namespace, "keepalived", "--config-test", "--use-file", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def assert_keepalived_accepts(text: str, tmp_path: Path, namespace: str) -> None:
    result = config_test(text, tmp_path, namespace)
    assert (result.returncode, result.stderr, result.stdout) == (0, "", ""), text


def with_shipped_check(settings: KeepalivedSettings) -> KeepalivedSettings:
    """keepalived -t refuses a check script that does not exist: use the real one."""
    return dataclasses.replace(settings, check_script=str(CHECK_SCRIPT))


# -- the generator -------------------------------------------------------------------


def test_primary_config_has_vip_peer_check_and_fast_detection() -> None:
    text = render_keepalived_config(PRIMARY)
    assert "vrrp_instance maitred {" in text
    assert "    virtual_router_id 51\n" in text
    assert "    priority 150\n" in text
    assert "    interface eth0\n" in text
    assert "        10.0.0.100/24 dev eth0\n" in text
    assert "    unicast_peer {\n        10.0.0.3\n    }\n" in text
    assert "    version 3\n    advert_int 1\n" in text
    assert "    enable_script_security\n" in text
    # The check asks maitred's /healthz on the admin address, every second.
    assert (
        '    script "/usr/bin/curl --silent --fail --max-time 1 --output /dev/null '
        'http://127.0.0.1:9090/healthz"\n'
    ) in text
    assert "    interval 1\n    timeout 1\n    fall 2\n    rise 2\n" in text
    assert "    track_script {\n        chk_maitred\n    }\n" in text
    # Preemption is keepalived's default: no nopreempt line, no notify unless asked.
    assert "nopreempt" not in text
    assert "notify" not in text
    assert text.count("{") == text.count("}")


def test_check_script_notify_source_and_nopreempt() -> None:
    settings = dataclasses.replace(
        PRIMARY,
        admin="[::1]:9191",
        check_path="/readyz",
        check_script="/usr/local/lib/maitred/check-maitred",
        notify="/usr/local/lib/maitred/notify-maitred /run/maitred/vrrp.state",
        source="10.0.0.2",
        peers=("10.0.0.3", "10.0.0.4"),
        preempt=False,
        advert_int=0.5,
    )
    text = render_keepalived_config(settings)
    assert 'script "/usr/local/lib/maitred/check-maitred [::1]:9191 /readyz"' in text
    assert 'notify "/usr/local/lib/maitred/notify-maitred /run/maitred/vrrp.state"' in text
    assert "    unicast_src_ip 10.0.0.2\n" in text
    assert "        10.0.0.3\n        10.0.0.4\n" in text
    assert "    nopreempt\n" in text
    assert "    advert_int 0.5\n" in text
    assert "    state BACKUP\n" in text


def test_preempt_delay_and_initial_state() -> None:
    assert "    state MASTER\n" in render_keepalived_config(
        dataclasses.replace(PRIMARY, state="MASTER")
    )
    assert "    preempt_delay 30\n" in render_keepalived_config(
        dataclasses.replace(PRIMARY, preempt_delay=30)
    )


def test_health_check_command_follows_admin_address() -> None:
    settings = dataclasses.replace(PRIMARY, admin="10.1.2.3:9000", check_timeout=2)
    assert health_check_command(settings).endswith(
        "--max-time 2 --output /dev/null http://10.1.2.3:9000/healthz"
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"vip": "10.0.0.300/24"}, "--vip: "),
        ({"vip": "127.0.0.1/8"}, "--vip: must be a unicast address"),
        ({"interface": "eth 0"}, "--interface: invalid interface name"),
        ({"interface": "a-very-long-interface-name"}, "--interface: "),
        ({"router_id": 0}, "--router-id: must be between 1 and 255"),
        ({"router_id": 256}, "--router-id: "),
        ({"priority": 255}, "--priority: must be between 1 and 254"),
        ({"priority": 0}, "--priority: "),
        ({"peers": ()}, "--peer: name at least one peer"),
        ({"peers": ("peer.example",)}, "--peer: 'peer.example' is not an IP address"),
        ({"peers": ("fd00::3",)}, "--peer: fd00::3 is IPv6 but the VIP is IPv4"),
        ({"source": "10.0.0.3"}, "--source: must not be one of the peers"),
        ({"admin": "localhost"}, "--admin: must be HOST:PORT"),
        ({"admin": "127.0.0.1:0"}, "--admin: port must be between 1 and 65535"),
        ({"check_path": "healthz"}, "--check-path: "),
        ({"check_script": "check-maitred"}, "--check-script: must start with an absolute path"),
        ({"check_script": "/bin/check me"}, "--check-script: must not contain"),
        ({"notify": '/bin/notify "x"'}, "--notify: must not contain"),
        ({"notify": "notify.sh"}, "--notify: must start with an absolute path"),
        ({"fall": 0}, "--fall: "),
        ({"check_interval": 0}, "--check-interval: "),
        ({"advert_int": 0.005}, "--advert-int: must be between"),
        ({"advert_int": 0.125}, "--advert-int: VRRPv3 counts in centiseconds"),
        ({"preempt": False, "state": "MASTER"}, "--state: nopreempt only works"),
        ({"preempt": False, "preempt_delay": 5}, "--preempt-delay: has no effect"),
        ({"state": "MASTER", "preempt_delay": 5}, "--preempt-delay: needs --state BACKUP"),
        ({"script_user": "Bad User"}, "--script-user: "),
        ({"instance_name": "a b"}, "--instance-name: "),
    ],
)
def test_invalid_settings_are_named_by_their_flag(change: dict[str, object], expected: str) -> None:
    settings = dataclasses.replace(PRIMARY, **change)  # type: ignore[arg-type]
    problems = validate(settings)
    assert any(problem.startswith(expected) for problem in problems), problems
    with pytest.raises(ValueError, match=re.escape(expected)):
        render_keepalived_config(settings)


def test_valid_settings_have_no_problems() -> None:
    assert validate(PRIMARY) == []
    ipv6 = dataclasses.replace(PRIMARY, vip="fd00::100/64", peers=("fd00::3",), source="fd00::2")
    assert validate(ipv6) == []


# -- the command line --------------------------------------------------------------


def test_cli_prints_the_config(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "keepalived-config",
            "--vip",
            "10.0.0.100/24",
            "--interface",
            "eth0",
            "--router-id",
            "51",
            "--priority",
            "150",
            "--peer",
            "10.0.0.3",
            "--admin",
            "127.0.0.1:9191",
            "--notify",
            "/usr/local/lib/maitred/notify-maitred",
            "--nopreempt",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    settings = dataclasses.replace(
        PRIMARY,
        admin="127.0.0.1:9191",
        notify="/usr/local/lib/maitred/notify-maitred",
        preempt=False,
    )
    assert captured.out == render_keepalived_config(settings)


def test_cli_reports_every_problem_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "keepalived-config",
            *("--vip", "10.0.0.100/24", "--interface", "eth0"),
            *("--router-id", "300", "--priority", "255", "--peer", "10.0.0.3"),
        ]
    )
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "--router-id: must be between 1 and 255",
        "--priority: must be between 1 and 254 (255 is reserved for the address owner)",
    ]


def test_cli_runs_as_a_command() -> None:
    # The console script installed beside this interpreter, as a user would run it.
    command = Path(sys.executable).parent / "maitred"
    result = subprocess.run(
        [
            str(command),
            "keepalived-config",
            *("--vip", "10.0.0.100/24", "--interface", "eth0"),
            *("--router-id", "51", "--priority", "150", "--peer", "10.0.0.3"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == render_keepalived_config(PRIMARY)


# -- keepalived's own check ------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        PRIMARY,
        dataclasses.replace(PRIMARY, priority=100, peers=("10.0.0.2",), source="10.0.0.3"),
        dataclasses.replace(PRIMARY, preempt=False, notify=f"{NOTIFY_SCRIPT} /run/x.state"),
        dataclasses.replace(PRIMARY, state="MASTER", advert_int=0.25),
        dataclasses.replace(PRIMARY, preempt_delay=10),
        dataclasses.replace(PRIMARY, vip="fd00::100/64", peers=("fd00::3",), admin="[::1]:9090"),
    ],
    ids=["primary", "standby", "nopreempt-notify", "master-fast-adverts", "preempt-delay", "ipv6"],
)
def test_keepalived_accepts_generated_config(
    settings: KeepalivedSettings, tmp_path: Path, eth0_namespace: str
) -> None:
    text = render_keepalived_config(with_shipped_check(settings))
    assert_keepalived_accepts(text, tmp_path, eth0_namespace)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_keepalived_accepts_the_default_curl_check(tmp_path: Path, eth0_namespace: str) -> None:
    assert_keepalived_accepts(render_keepalived_config(PRIMARY), tmp_path, eth0_namespace)


@pytest.mark.parametrize(
    "settings",
    [
        dataclasses.replace(PRIMARY, check_script="/nonexistent/check-maitred"),
        dataclasses.replace(with_shipped_check(PRIMARY), interface="eth9"),
    ],
    ids=["missing-script", "missing-interface"],
)
def test_config_test_catches_a_broken_config(
    settings: KeepalivedSettings, tmp_path: Path, eth0_namespace: str
) -> None:
    """The check above can fail: keepalived -t does refuse what cannot work."""
    result = config_test(render_keepalived_config(settings), tmp_path, eth0_namespace)
    assert result.returncode != 0 and result.stderr


def test_shipped_template_passes_keepalived_with_the_shipped_scripts(
    tmp_path: Path, eth0_namespace: str
) -> None:
    text = TEMPLATE.read_text()
    installed = "/usr/local/lib/maitred/"
    assert f"{installed}check-maitred" in text and f"{installed}notify-maitred" in text
    assert_keepalived_accepts(text.replace(installed, f"{DEPLOY}/"), tmp_path, eth0_namespace)


def test_shipped_template_is_what_the_generator_makes() -> None:
    """Apart from its comments, the template is the generator's output for its flags."""
    settings = KeepalivedSettings(
        vip="192.0.2.100/24",
        interface="eth0",
        router_id=51,
        priority=250,
        state="MASTER",
        peers=("192.0.2.12",),
        source="192.0.2.11",
        check_script="/usr/local/lib/maitred/check-maitred",
        notify="/usr/local/lib/maitred/notify-maitred /run/maitred/vrrp.state",
    )
    assert settings_lines(TEMPLATE.read_text()) == settings_lines(
        render_keepalived_config(settings)
    )


def settings_lines(text: str) -> list[str]:
    stripped = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line for line in stripped if line]


# -- the scripts ---------------------------------------------------------------------------


def run_check(*args: str) -> int:
    return subprocess.run([str(CHECK_SCRIPT), *args], timeout=10).returncode


def test_check_script_passes_on_200_and_fails_otherwise() -> None:
    with BackendProcess("chk") as backend:
        assert run_check(backend.address, "/health") == 0
        backend.set_health(False)
        assert run_check(backend.address, "/health") == 1  # 503
        backend.set_health(True)
        assert run_check(backend.address, "/health") == 0
        port = backend.port
    assert run_check(f"127.0.0.1:{port}", "/health") == 1  # refused


def test_check_script_gives_up_on_a_silent_server() -> None:
    with BackendProcess("frozen") as backend:
        backend.pause()
        try:
            result = subprocess.run(
                [str(CHECK_SCRIPT), backend.address, "/health"],
                env={"CHECK_READ_TIMEOUT": "0.3", "PATH": "/usr/bin:/bin"},
                timeout=10,
            )
        finally:
            backend.resume()
    assert result.returncode == 1


def test_notify_script_records_each_state(tmp_path: Path) -> None:
    state_file = tmp_path / "run" / "vrrp.state"
    for state, priority in (("BACKUP", "100"), ("MASTER", "150"), ("FAULT", "0")):
        result = subprocess.run(
            [str(NOTIFY_SCRIPT), str(state_file), "INSTANCE", "maitred", state, priority],
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert result.returncode == 0, result.stderr
        recorded_state, recorded_priority, stamp = state_file.read_text().split()
        assert (recorded_state, recorded_priority) == (state, priority)
        assert stamp.isdigit()
    assert [path.name for path in state_file.parent.iterdir()] == ["vrrp.state"]


def test_notify_script_refuses_missing_arguments() -> None:
    result = subprocess.run(
        [str(NOTIFY_SCRIPT), "INSTANCE", "maitred"], capture_output=True, text=True, timeout=10
    )
    assert result.returncode == 2
    assert "usage" in result.stderr
