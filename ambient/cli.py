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
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv``'s command, or for every command when none is named (``--help``)."""
    parser = argparse.ArgumentParser(prog="ambient", description="ambient-mesh: sidecar-less mTLS service mesh")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    named = _command(sys.argv[1:] if argv is None else argv)
    modules = [COMMAND_MODULES[named]] if named in COMMAND_MODULES else list(dict.fromkeys(COMMAND_MODULES.values()))
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


def _command(argv: list[str]) -> str | None:
    """The first positional argument: the command (the global options before it take no value but
    ``--log-level``'s)."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--log-level":
            skip = True
        elif not arg.startswith("-"):
            return arg
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
