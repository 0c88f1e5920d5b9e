"""A keepalived.conf for one node of an active-passive maitred pair.

Two balancers share a virtual IP (VIP) through VRRP: keepalived on each node
runs a ``vrrp_script`` that asks the local maitred's ``GET /healthz`` on the
admin address. The node whose check passes and whose priority is highest holds
the VIP; when its maitred stops answering, its instance enters FAULT, sends a
priority-0 advertisement and the peer takes the address over at once.

``render_keepalived_config`` is a pure function of ``KeepalivedSettings``;
``maitred keepalived-config`` is its command-line face. Every setting is
validated here, so a config that renders is one keepalived accepts.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from maitred.config.scalars import Address

VrrpState = Literal["MASTER", "BACKUP"]
# ``problem(option, message)``: how ``validate`` collects what its helpers find.
_Reporter = Callable[[str, str], None]

INSTANCE_NAME = "maitred"
CHECK_NAME = "chk_maitred"
DEFAULT_ADMIN = "127.0.0.1:9090"
DEFAULT_CHECK_PATH = "/healthz"
CURL = "/usr/bin/curl"

# Linux interface names: at most 15 bytes, no spaces or slashes.
_INTERFACE = re.compile(r"[A-Za-z0-9_.:@-]{1,15}")
# Anything keepalived would split on or mis-quote inside ``script "..."``.
_UNSAFE_IN_COMMAND = re.compile(r"[\"'\\\n\r\0{}#!]")
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


@dataclass(frozen=True, slots=True)
class KeepalivedSettings:
    """One node's view of the pair. Durations are whole seconds except ``advert_int``."""

    vip: str  # "10.0.0.100/24" (no prefix means a host route, /32 or /128)
    interface: str  # where the VIP lives and VRRP adverts go
    router_id: int  # virtual_router_id, 1..255, the same on both nodes
    priority: int  # 1..254; the higher one holds the VIP
    peers: tuple[str, ...]  # unicast peers: the other node(s)' addresses
    state: VrrpState = "BACKUP"  # initial state only; the election decides
    source: str | None = None  # unicast_src_ip; default: the interface's primary address
    admin: str = DEFAULT_ADMIN  # maitred's admin.bind as seen from this node
    check_path: str = DEFAULT_CHECK_PATH
    check_script: str | None = None  # None: curl; else a script called with ADMIN PATH
    check_interval: int = 1
    check_timeout: int = 1
    fall: int = 2  # failed checks before FAULT
    rise: int = 2  # passed checks before the node may hold the VIP again
    advert_int: float = 1.0  # VRRPv3 allows sub-second adverts (centiseconds)
    preempt: bool = True  # the primary takes the VIP back when it returns
    preempt_delay: int = 0
    notify: str | None = None  # command run on every state change
    script_user: str = "root"
    instance_name: str = INSTANCE_NAME


def validate(settings: KeepalivedSettings) -> list[str]:
    """Every problem with ``settings`` as ``--flag: message``; empty when valid."""
    problems: list[str] = []

    def problem(option: str, message: str) -> None:
        # Named after the command-line flag, the face most users see.
        problems.append(f"--{option.replace('_', '-')}: {message}")

    vip_version = _check_vip(settings.vip, problem)
    if not _INTERFACE.fullmatch(settings.interface):
        problem("interface", f"invalid interface name {settings.interface!r}")
    if not 1 <= settings.router_id <= 255:
        problem("router_id", "must be between 1 and 255")
    if not 1 <= settings.priority <= 254:
        problem("priority", "must be between 1 and 254 (255 is reserved for the address owner)")
    if settings.state not in ("MASTER", "BACKUP"):
        problem("state", "must be MASTER or BACKUP")
    if not settings.peers:
        problem("peer", "name at least one peer (the other balancer's address)")
    for peer in settings.peers:
        _check_ip("peer", peer, vip_version, problem)
    if settings.source is not None:
        _check_ip("source", settings.source, vip_version, problem)
        if settings.source in settings.peers:
            problem("source", "must not be one of the peers")
    try:
        admin = Address.parse(settings.admin)
        if admin.port == 0:
            problem("admin", "port must be between 1 and 65535")
    except ValueError as exc:
        problem("admin", str(exc))
    if not settings.check_path.startswith("/") or _has_unsafe(settings.check_path, " "):
        problem("check_path", "must be a path like /healthz, without spaces or quotes")
    if settings.check_script is not None:
        _check_command("check_script", settings.check_script, problem, must_be_path=True)
    if settings.notify is not None:
        _check_command("notify", settings.notify, problem, must_be_path=False)
    for option, value in (
        ("check_interval", settings.check_interval),
        ("check_timeout", settings.check_timeout),
        ("fall", settings.fall),
        ("rise", settings.rise),
    ):
        if not 1 <= value <= 3600:
            problem(option, "must be a whole number between 1 and 3600")
    if not 0.01 <= settings.advert_int <= 40.95:
        problem("advert_int", "must be between 0.01 and 40.95 seconds (VRRPv3)")
    elif round(settings.advert_int * 100) != settings.advert_int * 100:
        problem("advert_int", "VRRPv3 counts in centiseconds: at most two decimals")
    if not 0 <= settings.preempt_delay <= 1000:
        problem("preempt_delay", "must be between 0 and 1000 seconds")
    if not settings.preempt and settings.state == "MASTER":
        problem("state", "nopreempt only works when both nodes start as BACKUP")
    if not settings.preempt and settings.preempt_delay:
        problem("preempt_delay", "has no effect with nopreempt")
    elif settings.preempt_delay and settings.state == "MASTER":
        problem("preempt_delay", "needs --state BACKUP (keepalived drops it otherwise)")
    if not _USER.fullmatch(settings.script_user):
        problem("script_user", f"invalid user name {settings.script_user!r}")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", settings.instance_name):
        problem("instance_name", "letters, digits, '_' and '-' only")
    return problems


def health_check_command(settings: KeepalivedSettings) -> str:
    """The command keepalived runs every ``check_interval``; exit 0 means healthy."""
    admin = Address.parse(settings.admin)
    if settings.check_script is not None:
        return f"{settings.check_script} {admin} {settings.check_path}"
    # --max-time bounds the whole exchange below keepalived's own timeout.
    return (
        f"{CURL} --silent --fail --max-time {settings.check_timeout} --output /dev/null "
        f"http://{admin}{settings.check_path}"
    )


def render_keepalived_config(settings: KeepalivedSettings) -> str:
    """The keepalived.conf text for this node; raises ValueError listing every problem."""
    problems = validate(settings)
    if problems:
        raise ValueError("\n".join(problems))
    vip = ipaddress.ip_interface(settings.vip)
    lines = [
        "# keepalived.conf for one node of an active-passive maitred pair.",
        f"# VIP {vip.with_prefixlen} on {settings.interface}, "
        f"virtual_router_id {settings.router_id}, this node's priority {settings.priority}.",
        "# Generated by `maitred keepalived-config`; the peer uses the same VIP and",
        "# router id, a different priority, and this node's address as its peer.",
        "",
        "global_defs {",
        # Scripts run only from root-owned, non-writable paths.
        "    enable_script_security",
        f"    script_user {settings.script_user}",
        "}",
        "",
        f"vrrp_script {CHECK_NAME} {{",
        f'    script "{health_check_command(settings)}"',
        f"    interval {settings.check_interval}",
        f"    timeout {settings.check_timeout}",
        f"    fall {settings.fall}",
        f"    rise {settings.rise}",
        "}",
        "",
        f"vrrp_instance {settings.instance_name} {{",
        f"    state {settings.state}",
        f"    interface {settings.interface}",
        f"    virtual_router_id {settings.router_id}",
        f"    priority {settings.priority}",
        # VRRPv3: sub-second adverts are allowed; v2's PASS authentication is
        # cleartext anyway, and unicast peers already limit who takes part.
        "    version 3",
        f"    advert_int {_format_seconds(settings.advert_int)}",
    ]
    if not settings.preempt:
        lines.append("    nopreempt")
    elif settings.preempt_delay:
        lines.append(f"    preempt_delay {settings.preempt_delay}")
    if settings.source is not None:
        lines.append(f"    unicast_src_ip {ipaddress.ip_address(settings.source)}")
    lines.append("    unicast_peer {")
    lines.extend(f"        {ipaddress.ip_address(peer)}" for peer in settings.peers)
    lines.append("    }")
    lines += [
        "    virtual_ipaddress {",
        f"        {vip.with_prefixlen} dev {settings.interface}",
        "    }",
        # Without a weight, a failing check puts the instance in FAULT: a node
        # whose maitred is down never holds the VIP, whatever its priority.
        "    track_script {",
        f"        {CHECK_NAME}",
        "    }",
    ]
    if settings.notify is not None:
        # keepalived appends: "INSTANCE" NAME STATE PRIORITY.
        lines.append(f'    notify "{settings.notify}"')
    lines += ["}", ""]
    return "\n".join(lines)


def _check_vip(vip: str, problem: _Reporter) -> int | None:
    try:
        interface = ipaddress.ip_interface(vip)
    except ValueError:
        problem("vip", f"{vip!r} is not an address like 10.0.0.100/24")
        return None
    if interface.ip.is_unspecified or interface.ip.is_loopback or interface.ip.is_multicast:
        problem("vip", "must be a unicast address that clients can reach")
    return interface.version


def _check_ip(option: str, text: str, version: int | None, problem: _Reporter) -> None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        problem(option, f"{text!r} is not an IP address")
        return
    if version is not None and address.version != version:
        problem(option, f"{text} is IPv{address.version} but the VIP is IPv{version}")


def _check_command(option: str, command: str, problem: _Reporter, *, must_be_path: bool) -> None:
    program = command.split(" ", 1)[0]
    if not program.startswith("/"):
        problem(option, "must start with an absolute path (keepalived runs it without PATH)")
    if _has_unsafe(command, "") or (must_be_path and " " in command):
        problem(option, "must not contain quotes, backslashes, braces, '#', '!' or line breaks")


def _has_unsafe(text: str, extra: str) -> bool:
    return bool(_UNSAFE_IN_COMMAND.search(text)) or any(char in text for char in extra)


def _format_seconds(seconds: float) -> str:
    return str(int(seconds)) if seconds == int(seconds) else f"{seconds:g}"


# -- command line: `maitred keepalived-config` ---------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``maitred keepalived-config``, one per ``KeepalivedSettings`` field."""
    parser.add_argument("--vip", required=True, help="virtual IP with prefix, e.g. 10.0.0.100/24")
    parser.add_argument("--interface", required=True, help="interface for the VIP and adverts")
    parser.add_argument(
        "--router-id", type=int, required=True, help="virtual_router_id (1-255), same on both"
    )
    parser.add_argument(
        "--priority", type=int, required=True, help="1-254; give the primary the higher one"
    )
    parser.add_argument(
        "--peer", action="append", required=True, help="the other node's address (repeatable)"
    )
    parser.add_argument(
        "--state", choices=("MASTER", "BACKUP"), default="BACKUP", help="initial state"
    )
    parser.add_argument("--source", help="unicast_src_ip (default: the interface's address)")
    parser.add_argument(
        "--admin", default=DEFAULT_ADMIN, help=f"maitred admin address (default {DEFAULT_ADMIN})"
    )
    parser.add_argument("--check-path", default=DEFAULT_CHECK_PATH, help="default /healthz")
    parser.add_argument(
        "--check-script",
        metavar="PATH",
        help="run this script with ADMIN PATH instead of curl (deploy/keepalived/check-maitred)",
    )
    parser.add_argument("--check-interval", type=int, default=1, help="seconds (default 1)")
    parser.add_argument("--check-timeout", type=int, default=1, help="seconds (default 1)")
    parser.add_argument("--fall", type=int, default=2, help="failed checks before FAULT")
    parser.add_argument("--rise", type=int, default=2, help="passed checks before recovery")
    parser.add_argument("--advert-int", type=float, default=1.0, help="VRRP advert interval")
    parser.add_argument(
        "--nopreempt",
        action="store_true",
        help="keep the VIP where it is when a higher-priority node returns",
    )
    parser.add_argument("--preempt-delay", type=int, default=0, help="seconds")
    parser.add_argument(
        "--notify", metavar="COMMAND", help="run on every state change (absolute path + args)"
    )
    parser.add_argument("--script-user", default="root", help="user the scripts run as")
    parser.add_argument("--instance-name", default=INSTANCE_NAME, help="vrrp_instance name")


def settings_from_args(args: argparse.Namespace) -> KeepalivedSettings:
    return KeepalivedSettings(
        vip=args.vip,
        interface=args.interface,
        router_id=args.router_id,
        priority=args.priority,
        peers=tuple(args.peer),
        state=args.state,
        source=args.source,
        admin=args.admin,
        check_path=args.check_path,
        check_script=args.check_script,
        check_interval=args.check_interval,
        check_timeout=args.check_timeout,
        fall=args.fall,
        rise=args.rise,
        advert_int=args.advert_int,
        preempt=not args.nopreempt,
        preempt_delay=args.preempt_delay,
        notify=args.notify,
        script_user=args.script_user,
        instance_name=args.instance_name,
    )


def print_config(args: argparse.Namespace) -> int:
    """Print the config to stdout (exit 0), or each problem to stderr (exit 2)."""
    settings = settings_from_args(args)
    problems = validate(settings)
    if problems:
        for line in problems:
            print(line, file=sys.stderr)
        return 2
    sys.stdout.write(render_keepalived_config(settings))
    return 0
