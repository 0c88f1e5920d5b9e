"""Active-passive failover with real keepalived (VRRP) between two maitred nodes.

Each test builds its own small network out of namespaces (names end in this
process's id and a counter): a "switch" namespace holds a bridge, and a veth
pair joins it to each of client, lb1, lb2 and backend (10.213.0.0/24, nothing
outside these namespaces is touched). The backend runs the demo backend; lb1
and lb2 each run ``maitred run -c FILE`` and Debian's keepalived with a config
made by ``render_keepalived_config`` and the shipped check and notify scripts.
A client thread inside the client namespace sends ``GET /echo`` to the VIP every
25 ms (fresh connection, 300 ms timeout); the backend's echo names the balancer
that proxied it (the connection's source address), so every answer says which
node held the VIP.

The tests SIGKILL the primary's maitred and measure the time from the kill to
the first answer through the standby, and the requests lost in between; then
they bring the primary back and check where the VIP goes: back to the primary
by default (keepalived's preemption, what HAProxy + keepalived setups expect),
nowhere with ``nopreempt``. The figures are printed (run with ``-s``) and
quoted in docs/high-availability.md.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import itertools
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from maitred.control.keepalived import KeepalivedSettings, render_keepalived_config
from tests.support.backends import BackendProcess, http_request
from tests.support.balancer import BalancerProcess, LogFollower

SUBNET_PREFIX = "10.213.0"
ADDRESSES = {
    "client": f"{SUBNET_PREFIX}.10",
    "lb1": f"{SUBNET_PREFIX}.11",
    "lb2": f"{SUBNET_PREFIX}.12",
    "backend": f"{SUBNET_PREFIX}.20",
}
VIP = f"{SUBNET_PREFIX}.100"
ROUTER_ID = 51
# Close together and high: after the primary's priority-0 advert the standby
# waits its skew time, (256 - priority) / 256 adverts: 0.06 s at 240, 0.6 s at 100.
PRIORITIES = {"lb1": 250, "lb2": 240}
PEER = {"lb1": "lb2", "lb2": "lb1"}

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "keepalived"
CHECK_SCRIPT = DEPLOY / "check-maitred"
NOTIFY_SCRIPT = DEPLOY / "notify-maitred"

# The seed's failover target; what we measure is printed and documented.
FAILOVER_LIMIT = 5.0
PROBE_INTERVAL = 0.025
PROBE_TIMEOUT = 0.3
# How long the VIP must stay put when a nopreempt primary returns.
NOPREEMPT_WATCH = 5.0
# Generous: election and restarts on a loaded 2-core machine.
SETTLE_TIMEOUT = 20.0

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_lab_numbers = itertools.count(1)

T = TypeVar("T")


# -- namespaces ------------------------------------------------------------------


def join_namespace(namespace: str) -> None:
    """Move the calling thread (only it) into ``namespace``; what it starts lives there.

    A network namespace is per thread, and a child process inherits the one of
    the thread that forked it: this lets the shared helpers (BackendProcess,
    BalancerProcess) start their processes inside a namespace unchanged.
    """
    with open(f"/run/netns/{namespace}") as handle:
        if _libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({namespace}): {os.strerror(errno)}")


def in_namespace(namespace: str, action: Callable[[], T]) -> T:
    """Run ``action`` on a fresh thread inside ``namespace`` and return its result."""
    results: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            join_namespace(namespace)
            results.append(action())
        except BaseException as exc:  # handed to the caller's thread below
            errors.append(exc)

    thread = threading.Thread(target=target, name=f"in-{namespace}")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return results[0]


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result


# -- keepalived ------------------------------------------------------------------


class KeepalivedProcess:
    """``keepalived --dont-fork --log-console`` with pid files of its own."""

    def __init__(self, config_text: str, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "keepalived.conf"
        self.config_path.write_text(config_text)
        command = [
            shutil.which("keepalived") or "keepalived",
            "--dont-fork",
            "--log-console",
            "--no-syslog",
            "--log-detail",
            "--vrrp",
            "--use-file",
            str(self.config_path),
            "--pid",
            str(workdir / "keepalived.pid"),
            "--vrrp_pid",
            str(workdir / "vrrp.pid"),
            "--checkers_pid",
            str(workdir / "checkers.pid"),
        ]
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.log = LogFollower(self.proc.stdout)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (keepalived sends a priority-0 advert and drops the VIP), then SIGKILL."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)


# -- the client ------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    started: float
    finished: float
    via: str | None  # the balancer's address as the backend saw it; None: failed
    error: str | None


class VipClient:
    """Steady requests to the VIP from the client namespace, every ``PROBE_INTERVAL``."""

    def __init__(self, namespace: str, port: int) -> None:
        self.namespace = namespace
        self.port = port
        self.probes: list[Probe] = []
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vip-client", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        join_namespace(self.namespace)
        while not self._stop.is_set():
            started = time.monotonic()
            via, error = self._probe()
            with self._changed:
                self.probes.append(Probe(started, time.monotonic(), via, error))
                self._changed.notify_all()
            # Pacing, not synchronisation: a steady request rate.
            self._stop.wait(max(0.0, started + PROBE_INTERVAL - time.monotonic()))

    def _probe(self) -> tuple[str | None, str | None]:
        try:
            response = http_request(VIP, self.port, "GET", "/echo", timeout=PROBE_TIMEOUT)
            if response.status != 200:
                return None, f"status {response.status}"
            client: str = response.json()["client"]
        except (OSError, ValueError) as exc:
            return None, repr(exc)
        return client.rsplit(":", 1)[0], None

    def wait_for(
        self, condition: Callable[[list[Probe]], bool], timeout: float = SETTLE_TIMEOUT
    ) -> list[Probe]:
        """Until ``condition(probes so far)`` holds; returns a snapshot of the probes."""
        with self._changed:
            if not self._changed.wait_for(lambda: condition(self.probes), timeout):
                recent = [(p.via, p.error) for p in self.probes[-5:]]
                raise AssertionError(f"no such traffic within {timeout}s; last probes {recent}")
            return list(self.probes)

    def first_answer(self, via: str, after: float, timeout: float = SETTLE_TIMEOUT) -> Probe:
        """The first probe sent after ``after`` that ``via`` answered (waits for it)."""

        def answered(probes: list[Probe]) -> Probe | None:
            return next((p for p in probes if p.started >= after and p.via == via), None)

        probes = self.wait_for(lambda probes: answered(probes) is not None, timeout)
        found = answered(probes)
        assert found is not None
        return found

    def answers_in_a_row(self, via: str, count: int, after: float) -> list[Probe]:
        """Wait for ``count`` probes after ``after``; all of them must be answers via ``via``."""
        probes = self.wait_for(lambda probes: sum(p.started >= after for p in probes) >= count)
        window = [p for p in probes if p.started >= after][:count]
        wrong = [(p.via, p.error) for p in window if p.via != via]
        assert not wrong, f"expected {count} answers via {via}, got {wrong}"
        return window


@dataclass(frozen=True)
class Outage:
    seconds: float  # from the event to the first answer through the new holder
    lost: int  # requests sent in between that got no answer
    sent: int

    def __str__(self) -> str:
        return f"{self.seconds:.2f} s, {self.lost} of {self.sent} requests lost"


def outage_after(client: VipClient, event_at: float, new_holder: str) -> Outage:
    first = client.first_answer(new_holder, after=event_at)
    between = [p for p in client.probes if event_at <= p.started < first.started]
    lost = sum(p.via is None for p in between)
    return Outage(first.finished - event_at, lost, len(between) + 1)


# -- the lab ---------------------------------------------------------------------


class Lab:
    """The namespaces of one test and everything running in them; ``close`` removes it all."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        suffix = f"{os.getpid()}x{next(_lab_numbers)}"
        self.namespaces = {
            role: f"mtd{suffix}-{role}" for role in ("sw", "client", "lb1", "lb2", "backend")
        }
        self.created: list[str] = []
        self.backend: BackendProcess | None = None
        self.balancers: dict[str, BalancerProcess] = {}
        self.keepaliveds: dict[str, KeepalivedProcess] = {}
        self.client: VipClient | None = None
        self.listen_port = 0
        self.admin_ports: dict[str, int] = {}

    # -- network

    def build_network(self) -> None:
        for namespace in self.namespaces.values():
            ip("netns", "add", namespace)
            self.created.append(namespace)
            ip("-n", namespace, "link", "set", "lo", "up")
        switch = self.namespaces["sw"]
        ip("-n", switch, "link", "add", "br0", "type", "bridge")
        ip("-n", switch, "link", "set", "br0", "up")
        for role, address in ADDRESSES.items():
            namespace = self.namespaces[role]
            # Created inside the switch namespace, its peer moved straight into the node's.
            ip("-n", switch, "link", "add", role, "type", "veth", "peer", "name", "eth0")
            ip("-n", switch, "link", "set", "eth0", "netns", namespace)
            ip("-n", switch, "link", "set", role, "master", "br0")
            ip("-n", switch, "link", "set", role, "up")
            ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
            ip("-n", namespace, "link", "set", "eth0", "up")

    def vip_holders(self) -> list[str]:
        """The balancers whose eth0 carries the VIP right now."""
        holders = []
        for role in ("lb1", "lb2"):
            shown = ip("-n", self.namespaces[role], "-4", "-o", "addr", "show", "dev", "eth0")
            if f" {VIP}/" in shown.stdout:
                holders.append(role)
        return holders

    # -- processes

    def start_backend(self) -> None:
        self.backend = in_namespace(
            self.namespaces["backend"], lambda: BackendProcess("web1", host=ADDRESSES["backend"])
        )

    def start_maitred(self, role: str) -> BalancerProcess:
        """maitred on 0.0.0.0 (so it answers on the VIP wherever the VIP is), admin on loopback.

        The first node picks free ports; the other node and restarts reuse them,
        since keepalived's check and the client need the same ports every time.
        """
        assert self.backend is not None
        admin_port = self.admin_ports.get(role, 0)
        config = f"""
admin:
  bind: 127.0.0.1:{admin_port}
listeners:
  - name: public
    bind: 0.0.0.0:{self.listen_port}
    pool: web
pools:
  web:
    timeouts: {{connect: 1s, response: 2s}}
    servers:
      - {{address: {self.backend.address}}}
"""
        workdir = self.workdir / role
        workdir.mkdir(exist_ok=True)
        balancer = in_namespace(self.namespaces[role], lambda: BalancerProcess(config, workdir))
        self.balancers[role] = balancer
        self.listen_port = balancer.port
        self.admin_ports[role] = balancer.admin[1]
        return balancer

    def keepalived_settings(self, role: str, *, preempt: bool) -> KeepalivedSettings:
        return KeepalivedSettings(
            vip=f"{VIP}/24",
            interface="eth0",
            router_id=ROUTER_ID,
            priority=PRIORITIES[role],
            peers=(ADDRESSES[PEER[role]],),
            # With preemption the primary starts as MASTER (the classic layout);
            # nopreempt needs both to start as BACKUP.
            state="MASTER" if preempt and role == "lb1" else "BACKUP",
            source=ADDRESSES[role],
            admin=f"127.0.0.1:{self.admin_ports[role]}",
            check_script=str(CHECK_SCRIPT),
            notify=f"{NOTIFY_SCRIPT} {self.state_file(role)}",
            preempt=preempt,
        )

    def start_keepalived(self, role: str, *, preempt: bool) -> None:
        config = render_keepalived_config(self.keepalived_settings(role, preempt=preempt))
        self.keepaliveds[role] = in_namespace(
            self.namespaces[role],
            lambda: KeepalivedProcess(config, self.workdir / f"keepalived-{role}"),
        )

    def state_file(self, role: str) -> Path:
        return self.workdir / f"{role}.vrrp-state"

    def vrrp_state(self, role: str) -> str | None:
        """What the notify script last recorded for ``role``: MASTER, BACKUP, FAULT..."""
        try:
            return self.state_file(role).read_text().split()[0]
        except (FileNotFoundError, IndexError):
            return None

    def wait_for_states(self, holders: list[str], lb1: str | None, lb2: str | None) -> None:
        """Until the VIP sits on ``holders`` and the notify hooks recorded these states."""

        def observed() -> tuple[list[str], str | None, str | None]:
            return self.vip_holders(), self.vrrp_state("lb1"), self.vrrp_state("lb2")

        # The hooks run asynchronously to the traffic: poll with a deadline.
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while observed() != (holders, lb1, lb2):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"expected {(holders, lb1, lb2)}, still {observed()}\n{self.logs()}"
                )
            time.sleep(0.05)

    def start_client(self) -> VipClient:
        self.client = VipClient(self.namespaces["client"], self.listen_port)
        self.client.start()
        return self.client

    def logs(self) -> str:
        parts = [f"--- keepalived {role}\n{k.log.text()}" for role, k in self.keepaliveds.items()]
        parts += [f"--- maitred {role}\n{b.log.text()}" for role, b in self.balancers.items()]
        return "\n".join(parts)

    # -- teardown

    def close(self) -> None:
        """Stop everything, then delete the namespaces; keeps going past any failure."""
        steps: list[Callable[[], object]] = []
        if self.client is not None:
            steps.append(self.client.stop)
        steps += [keepalived.stop for keepalived in self.keepaliveds.values()]
        steps += [balancer.kill for balancer in self.balancers.values()]
        if self.backend is not None:
            steps.append(self.backend.kill)
        steps.append(self._kill_leftovers)
        steps += [functools.partial(ip, "netns", "del", ns, check=False) for ns in self.created]
        for step in steps:
            try:
                step()
            except Exception as exc:  # cleanup must reach the namespace deletion
                print(f"cleanup step failed: {exc!r}")

    def _kill_leftovers(self) -> None:
        """Any process still inside our namespaces (keepalived's VRRP child, say) was ours."""
        for namespace in self.created:
            listed = ip("netns", "pids", namespace, check=False).stdout.split()
            for pid in listed:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("keepalived") is None:
        pytest.skip("keepalived is not installed (Debian package keepalived)")
    if shutil.which("ip") is None:
        pytest.skip("ip is not installed (Debian package iproute2)")
    probe = f"mtd{os.getpid()}probe"
    created = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if created.returncode != 0:
        pytest.skip(f"cannot create network namespaces here: {created.stderr.strip()}")
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    built = Lab(tmp_path)
    try:
        built.build_network()
        yield built
    finally:
        built.close()


def start_pair(lab: Lab, *, preempt: bool) -> VipClient:
    """Backend, maitred on both nodes, keepalived on both; waits until lb1 serves the VIP."""
    lab.start_backend()
    lab.start_maitred("lb1")
    lab.start_maitred("lb2")
    # The primary first, as in a real rollout: started together, both nodes would
    # race their master-down timers (3.02 s against 3.06 s), and under nopreempt
    # a standby that won by a hair would keep the VIP.
    lab.start_keepalived("lb1", preempt=preempt)
    lab.wait_for_states(holders=["lb1"], lb1="MASTER", lb2=None)
    lab.start_keepalived("lb2", preempt=preempt)
    # Only a standby that is ready (BACKUP, its own check passing) can take over.
    lab.wait_for_states(holders=["lb1"], lb1="MASTER", lb2="BACKUP")
    client = lab.start_client()
    client.first_answer(ADDRESSES["lb1"], after=0.0)
    return client


def kill_primary(lab: Lab, client: VipClient) -> Outage:
    """SIGKILL lb1's maitred; the VIP must move to lb2 within FAILOVER_LIMIT."""
    client.answers_in_a_row(ADDRESSES["lb1"], 10, after=time.monotonic())
    killed_at = time.monotonic()
    lab.balancers["lb1"].kill()
    try:
        outage = outage_after(client, killed_at, ADDRESSES["lb2"])
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{lab.logs()}") from None
    print(f"\nfailover (primary maitred SIGKILLed): {outage}")
    assert outage.seconds < FAILOVER_LIMIT, f"failover took {outage}\n{lab.logs()}"
    # The standby keeps serving: no request fails once it answered.
    client.answers_in_a_row(ADDRESSES["lb2"], 20, after=time.monotonic())
    lab.wait_for_states(holders=["lb2"], lb1="FAULT", lb2="MASTER")
    return outage


def test_vip_moves_to_standby_when_primary_maitred_dies_and_back_when_it_returns(
    lab: Lab,
) -> None:
    client = start_pair(lab, preempt=True)
    kill_primary(lab, client)

    lab.start_maitred("lb1")
    restarted_at = time.monotonic()
    failback = outage_after(client, restarted_at, ADDRESSES["lb1"])
    print(f"failback (primary maitred ready again, preempt): {failback}")
    client.answers_in_a_row(ADDRESSES["lb1"], 20, after=time.monotonic())
    lab.wait_for_states(holders=["lb1"], lb1="MASTER", lb2="BACKUP")


def test_with_nopreempt_the_vip_stays_on_the_standby_when_the_primary_returns(
    lab: Lab,
) -> None:
    client = start_pair(lab, preempt=False)
    kill_primary(lab, client)

    keepalived = lab.keepaliveds["lb1"]
    log_mark = len(keepalived.log.lines)
    lab.start_maitred("lb1")
    keepalived.log.wait_for(r"Entering BACKUP STATE", timeout=SETTLE_TIMEOUT, start=log_mark)
    # A preempting primary takes over when its master-down timer runs out, three
    # adverts plus skew (3.02 s here) after it entered BACKUP: watch past that.
    watch_from = time.monotonic()
    probes = client.wait_for(
        lambda probes: (
            bool(probes)
            and probes[-1].started >= watch_from + NOPREEMPT_WATCH
            or any(p.started >= watch_from and p.via != ADDRESSES["lb2"] for p in probes)
        )
    )
    window = [p for p in probes if p.started >= watch_from]
    wrong = [(p.via, p.error) for p in window if p.via != ADDRESSES["lb2"]]
    assert not wrong, f"the VIP left the standby: {wrong}\n{lab.logs()}"
    lab.wait_for_states(holders=["lb2"], lb1="BACKUP", lb2="MASTER")
