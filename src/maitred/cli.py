"""The `maitred` command: run, check, demo, demo-backend, keepalived-config."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from maitred import __version__
from maitred.config import Config, ConfigError, config_from_flags
from maitred.config.file_checks import load_checked_config
from maitred.control.keepalived import add_arguments as add_keepalived_arguments
from maitred.control.keepalived import print_config as print_keepalived_config
from maitred.log import setup_logging


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maitred", description="A load balancer and health-check system."
    )
    parser.add_argument("--version", action="version", version=f"maitred {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the balancer in the foreground")
    run.add_argument("-c", "--config", type=Path, help="YAML configuration file")
    run.add_argument("--listen", metavar="HOST:PORT", help="listen address (without -c)")
    run.add_argument(
        "--backend", metavar="HOST:PORT", action="append", default=[], help="a server (repeat)"
    )
    run.add_argument("--algorithm", default="round_robin", help="balancing algorithm")
    run.add_argument("--admin", metavar="HOST:PORT", help="admin API address")
    _add_logging_flags(run)

    check = commands.add_parser("check", help="validate a configuration file")
    check.add_argument("-c", "--config", type=Path, required=True)

    demo = commands.add_parser("demo", help="run the embedded demo: backends, balancer, admin")
    _add_logging_flags(demo)

    keepalived = commands.add_parser(
        "keepalived-config",
        help="print a keepalived.conf for one node of an active-passive pair",
    )
    add_keepalived_arguments(keepalived)

    backend = commands.add_parser(
        "demo-backend", help="run one demo/test backend server", add_help=False
    )
    backend.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _add_logging_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), default="info"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check":
        return _check(args.config)
    if args.command == "keepalived-config":
        return print_keepalived_config(args)
    if args.command == "demo-backend":
        from maitred.demo.backend import main as backend_main

        return backend_main(args.args)
    setup_logging(args.log_format, args.log_level)
    if args.command == "demo":
        from maitred.demo.run import run_demo

        return run_demo()
    return _run(args)


def _check(path: Path) -> int:
    try:
        config, warnings = load_checked_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem)
        return 2
    for warning in warnings:
        print(warning)
    # Runtime changes made through the admin API, replayed on top of this file.
    from maitred.control.overlay import overlay_warnings

    for runtime_warning in overlay_warnings(config, path):
        print(runtime_warning)
    print(f"{path}: configuration is valid")
    return 0


def _run(args: argparse.Namespace) -> int:
    try:
        if args.config is not None:
            if args.listen or args.backend:
                print("use either -c FILE or --listen/--backend, not both", file=sys.stderr)
                return 2
            config, warnings = load_checked_config(args.config)
            for warning in warnings:
                print(warning, file=sys.stderr)
        elif args.listen and args.backend:
            config = config_from_flags(args.listen, args.backend, args.algorithm, args.admin)
        else:
            print("maitred run needs -c FILE, or --listen and --backend", file=sys.stderr)
            return 2
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    return serve(config, args.config)


def serve(config: Config, config_path: Path | None = None) -> int:
    """Run the balancer until SIGTERM/SIGINT; the exit code is 0 after a clean drain."""
    import uvloop

    from maitred.control.supervisor import Supervisor

    return uvloop.run(Supervisor(config, config_path).run())


if __name__ == "__main__":
    raise SystemExit(main())
