"""``ambient waypoint run``: the waypoint proxy process (the rest of ``ambient waypoint`` is the lab's)."""

from __future__ import annotations

import argparse


def register_run(subparsers: argparse._SubParsersAction) -> None:
    """Add ``run`` to the ``ambient waypoint`` command group (``lab`` owns the group)."""
    run = subparsers.add_parser("run", help="the waypoint proxy of one istio-waypoint Gateway (the lab starts it)")
    run.set_defaults(func=_not_built)


def _not_built(args: argparse.Namespace) -> int:
    raise SystemExit("ambient waypoint run: not built yet")
