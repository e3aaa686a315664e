"""The ``ambient`` command. Each package registers its own subcommands; this module only routes.

Errors a user can cause (bad flags, a broken CA directory, a refusal from the CA) print one line
naming what is wrong and exit 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# The module that registers each command, in the order ``ambient --help`` lists them. Only the
# module of the command being run is imported: a long-running daemon (ztunnel, the node agent)
# should not hold the lab's or the control plane's modules in memory.
COMMAND_MODULES = {
    "ca": "ca.cli",
    "controlplane": "controlplane.server",
    "demo": "lab.demo",
    "validate": "controlplane.validate",
    "lab": "lab.cli",
    "exec": "lab.cli",
    "node-agent": "bpf.cli",
    "ztunnel": "ztunnel.cli",
    "ztunnel-config": "ambient.ztunnel_config",
    "waypoint": "lab.waypoint_cli",
}
# `ambient waypoint run` is the waypoint proxy, a long-running process like ztunnel: it registers
# from its own package and never loads the lab's modules, which the group's other commands need.
WAYPOINT_RUN = ("waypoint", "run")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv``'s command, or for every command when none is named (``--help``)."""
    parser = argparse.ArgumentParser(prog="ambient", description="ambient-mesh: sidecar-less mTLS service mesh")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    args = sys.argv[1:] if argv is None else argv
    named = _command(args)
    if _command(args, 2) == WAYPOINT_RUN:
        _register_waypoint_run(sub)
        return parser
    modules = [COMMAND_MODULES[named]] if named in COMMAND_MODULES else list(dict.fromkeys(COMMAND_MODULES.values()))
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


def _register_waypoint_run(sub: argparse._SubParsersAction) -> None:
    """The ``waypoint`` group with ``run`` alone (``lab.waypoint_cli.register`` adds the rest)."""
    from waypoint.cli import register_run

    group = sub.add_parser("waypoint", help="manage waypoints, as istioctl waypoint does")
    register_run(group.add_subparsers(dest="waypoint_command", required=True, metavar="COMMAND"))


def _command(argv: list[str], count: int = 1):
    """The first positional argument: the command (the global options before it take no value but
    ``--log-level``'s); with ``count`` 2, the tuple of the first two (the command and its
    subcommand, which come before any option of theirs here), or None."""
    skip = False
    found: list[str] = []
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--log-level" and not found:
            skip = True
        elif not arg.startswith("-"):
            found.append(arg)
            if len(found) == count:
                return arg if count == 1 else tuple(found)
        elif found:
            break  # an option of the command: its subcommand, if any, came first
    return None


def _user_errors() -> tuple[type[BaseException], ...]:
    from ca.cli import USER_ERRORS
    from lab.cli import LabError
    from lab.state import LabNotFoundError
    from lab.topology import LabPlanError

    return (*USER_ERRORS, LabError, LabNotFoundError, LabPlanError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if isinstance(exc, _user_errors()):  # imported only when something went wrong
            print(f"ambient: error: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
