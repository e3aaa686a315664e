"""The ``ambient`` command. Each package registers its own subcommands; this module only routes.

No traceback reaches a user. Errors a user can cause (bad flags, a broken CA directory, a refusal
from the CA, a lab command run without root) print one line naming what is wrong and exit 1; any
other exception is a bug and prints one line too, its traceback going to the log at debug level
(``--log-level debug`` shows it). Flags argparse can check are usage errors (exit 2), and that
includes every ``--trust-domain`` whatever command registers it: ``build_parser`` gives each one
``mesh.identity``'s rule as its type. Output to a pipe whose reader left (``| head``) ends quietly
with ``EXIT_BROKEN_PIPE``. ``version`` and ``--version`` live here, as they belong to no package, and so do
istioctl's names for our commands (``zc``, ``analyze``: ``COMMAND_ALIASES``). gRPC's own log lines
are kept off a gRPC client command's stderr (``GRPC_CLIENT_COMMANDS``): its one line says it all.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import mesh
from mesh.errors import describe
from mesh.identity import InvalidSpiffeId, validate_trust_domain

log = logging.getLogger("ambient")

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
    "cni": "bpf.cni_install",
    "ztunnel": "ztunnel.cli",
    "ztunnel-config": "ambient.ztunnel_config",
    "waypoint": "lab.waypoint_cli",
    "version": "ambient.cli",
    "completion": "ambient.completion",
}
# istioctl's names for our commands (argparse aliases: the same parser, options and output): zc, its
# short name for ztunnel-config; analyze, its command for what validate does. ztunnel-config names
# its alias itself; ``ALIASES_ADDED`` are added here, to a command registered without them.
COMMAND_ALIASES = {"zc": "ztunnel-config", "analyze": "validate"}
ALIASES_ADDED = {"analyze": "validate"}
# The status of a command whose reader closed the pipe: what a shell reports for a process that
# SIGPIPE ended (128 + 13), as for kubectl, istioctl or `yes` in `| head`. Not 0: with `set -o pipefail`
# a truncated listing is not a full one, and the tools people use already say so this way.
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
EXIT_USAGE = 2  # argparse's status for a flag it refuses
# `ambient waypoint run` is the waypoint proxy, a long-running process like ztunnel: it registers
# from its own package and never loads the lab's modules, which the group's other commands need.
WAYPOINT_RUN = ("waypoint", "run")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv``'s command, or for every command when none is named (``--help``)."""
    parser = argparse.ArgumentParser(prog="ambient", description="ambient-mesh: sidecar-less mTLS service mesh")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.add_argument("--version", action="version", version=_version_line(version_info()),
                        help="print the version and exit")
    args = sys.argv[1:] if argv is None else argv
    named = COMMAND_ALIASES.get(_command(args) or "", _command(args))
    if _command(args, 2) == WAYPOINT_RUN:
        _register_waypoint_run(sub)
        _check_trust_domains(parser)
        return parser
    modules = [COMMAND_MODULES[named]] if named in COMMAND_MODULES else list(dict.fromkeys(COMMAND_MODULES.values()))
    for name in modules:
        importlib.import_module(name).register(sub)
    for alias, command in ALIASES_ADDED.items():
        if command in sub.choices:
            _add_alias(sub, command, alias)
    _check_trust_domains(parser)
    return parser


def _add_alias(sub: argparse._SubParsersAction, command: str, alias: str) -> None:
    """What ``add_parser(command, aliases=[alias])`` would have made, for a command whose package
    registered it without: the name maps to the same parser, and ``--help`` lists it as argparse
    lists an alias."""
    sub._name_parser_map[alias] = sub._name_parser_map[command]
    for action in sub._choices_actions:
        if action.dest == command:
            action.metavar = f"{command} ({alias})"


def _subparsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """``parser`` and every parser under it (argparse keeps them in its subparsers action's choices)."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # an alias maps to the same parser
                yield from _subparsers(child)


def trust_domain_arg(text: str) -> str:
    """The type of every ``--trust-domain``: ``mesh.identity``'s rule, refused as a usage error."""
    try:
        return validate_trust_domain(text)
    except InvalidSpiffeId as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _check_trust_domains(parser: argparse.ArgumentParser) -> None:
    """Give each command's ``--trust-domain`` the type ``trust_domain_arg``. Done here, once, rather
    than in each package's parser: a bad value used to reach the CA's code and end in a traceback."""
    for each in _subparsers(parser):
        for action in each._actions:
            if "--trust-domain" in action.option_strings and action.type is None:
                action.type = trust_domain_arg


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


# -- version


def git_revision(start: Path | None = None) -> str | None:
    """The commit of the checkout the package runs from (None if it runs from an installed copy), read
    from ``.git`` as git stores it: HEAD names a ref (a loose file, else a line of packed-refs) or is a
    commit itself (detached). A worktree's ``.git`` file points at its git directory, whose
    ``commondir`` holds the refs."""
    top = (start or Path(__file__).resolve().parent.parent) / ".git"
    try:
        gitdir = top
        if top.is_file():
            gitdir = (top.parent / top.read_text().strip().removeprefix("gitdir:").strip()).resolve()
        common = gitdir
        if (gitdir / "commondir").is_file():
            common = (gitdir / (gitdir / "commondir").read_text().strip()).resolve()
        head = (gitdir / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head or None
        ref = head.removeprefix("ref:").strip()
        for where in (gitdir, common):
            if (where / ref).is_file():
                return (where / ref).read_text().strip() or None
        for line in (common / "packed-refs").read_text().splitlines():
            sha, _, name = line.partition(" ")
            if name == ref:
                return sha
    except OSError:
        return None
    return None


def version_info() -> dict:
    """``istioctl version -o json``'s shape: the client's version and, from a checkout, its commit."""
    info = {"version": mesh.__version__}
    revision = git_revision()
    if revision:
        info["revision"] = revision
    return {"clientVersion": info}


REVISION_SHOWN = 12  # hex digits of the commit in the one-line form (`-o json` has them all)


def _version_line(info: dict) -> str:
    client = info["clientVersion"]
    revision = f" (git {client['revision'][:REVISION_SHOWN]})" if "revision" in client else ""
    return f"client version: {client['version']}{revision}"


def register(subparsers: argparse._SubParsersAction) -> None:
    version = subparsers.add_parser("version", help="print the version (as istioctl version --remote=false)")
    version.add_argument("-o", "--output", choices=["short", "json", "yaml"], default="short")
    version.set_defaults(func=cmd_version)


def cmd_version(args: argparse.Namespace) -> int:
    info = version_info()
    if args.output == "json":
        print(json.dumps(info, indent=2))
    elif args.output == "yaml":
        import yaml

        print(yaml.safe_dump(info, sort_keys=False), end="")
    else:
        print(_version_line(info))
    return 0


# -- errors


def _user_errors() -> tuple[type[BaseException], ...]:
    from ca.cli import USER_ERRORS
    from lab.cli import LabError
    from lab.state import LabNotFoundError
    from lab.topology import LabPlanError

    return (*USER_ERRORS, LabError, LabNotFoundError, LabPlanError)


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reading end is closed (poll reports an error on the writing
    end): a BrokenPipeError from elsewhere, a socket say, is not the quiet case."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError):
        return False


def _quiet_stdout() -> None:
    """Point stdout at /dev/null after its reader left, so the interpreter's last flush at exit finds
    nowhere to fail (else it prints "Exception ignored ... BrokenPipeError"): Python's docs' recipe,
    https://docs.python.org/3/library/signal.html#note-on-sigpipe. Not SIG_DFL for SIGPIPE: that would
    also kill a daemon whose peer's socket closes."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


# gRPC's core logs through absl straight to stderr (a failed TLS handshake is an "I... Handshake failed"
# line), beside the one line a client command prints of the same failure. It reads GRPC_VERBOSITY once,
# when grpc is imported, so it is set before the command's module is: only for the commands that are gRPC
# clients (a daemon's gRPC lines, and those of processes the lab starts, which inherit the environment,
# stay as gRPC writes them); a GRPC_VERBOSITY the user set, or --log-level debug, keeps gRPC's lines.
GRPC_CLIENT_COMMANDS = {("ca", "request")}
GRPC_QUIET = "NONE"


def _quiet_grpc(argv: list[str]) -> None:
    if _command(argv, 2) in GRPC_CLIENT_COMMANDS and "debug" not in _log_levels(argv):
        os.environ.setdefault("GRPC_VERBOSITY", GRPC_QUIET)


def _log_levels(argv: list[str]) -> list[str]:
    return [value for flag, value in zip(argv, argv[1:], strict=False) if flag == "--log-level"] + [
        arg.partition("=")[2] for arg in argv if arg.startswith("--log-level=")]


def main(argv: list[str] | None = None) -> int:
    _quiet_grpc(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        status = args.func(args)
        sys.stdout.flush()  # here, not at exit, so a closed pipe is handled below
        return status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError as exc:
        if _stdout_reader_gone():
            _quiet_stdout()
            return EXIT_BROKEN_PIPE
        return _unexpected(args, exc)
    except Exception as exc:
        if isinstance(exc, _user_errors()):  # imported only when something went wrong
            print(f"ambient: error: {exc}", file=sys.stderr)
            return 1
        return _unexpected(args, exc)


def _unexpected(args: argparse.Namespace, exc: BaseException) -> int:
    """A bug: one line for the user, the traceback in the log (at debug) for whoever debugs it."""
    log.debug("ambient %s failed", args.command, exc_info=exc)
    hint = "" if log.isEnabledFor(logging.DEBUG) else " (--log-level debug shows where)"
    print(f"ambient: error: {type(exc).__name__}: {describe(exc)}{hint}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
