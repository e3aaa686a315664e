"""The ``ambient`` command. Each package registers its own subcommands; this module only routes.

Errors a user can cause (bad flags, a broken CA directory, a refusal from the CA) print one line
naming what is wrong and exit 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys


def build_parser() -> argparse.ArgumentParser:
    from bpf import cli as bpf_cli
    from ca import cli as ca_cli
    from mesh import controlplane, demo, validate
    from mesh.lab import cli as lab_cli
    from ztunnel import cli as ztunnel_cli

    parser = argparse.ArgumentParser(prog="ambient", description="ambient-mesh: sidecar-less mTLS service mesh")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ca_cli.register(sub)
    controlplane.register(sub)
    demo.register(sub)
    validate.register(sub)
    lab_cli.register(sub)
    bpf_cli.register(sub)
    ztunnel_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ca.cli import USER_ERRORS, fail
    from mesh.lab.cli import LabError
    from mesh.lab.state import LabNotFoundError
    from mesh.lab.topology import LabPlanError

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except (*USER_ERRORS, LabError, LabNotFoundError, LabPlanError) as exc:
        return fail(exc)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
