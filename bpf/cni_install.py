"""``ambient cni install``: put the ambient-cni plugin into a node's CNI configuration, as istio-cni's installer.

Two things on the host, each replaced atomically (a temporary file in the same directory, then
``rename``), so the runtime never runs half a binary or reads half a configuration:

- the plugin binary, copied into the CNI bin directory (``--bin-dir``, e.g. /opt/cni/bin) as
  ``ambient-cni``;
- an ``ambient-cni`` entry appended to the node's network configuration list: the file the runtime
  uses, which is the lexically first ``*.conf``, ``*.conflist`` or ``*.json`` of ``--conf-dir``
  (e.g. /etc/cni/net.d), as containerd and CRI-O choose it. A single-plugin ``.conf`` is converted
  into a ``.conflist`` of that one plugin and ours, and the ``.conf`` removed.

``plan_conflist`` and ``without_plugin`` are pure and idempotent: installing twice leaves one entry
(an older one is replaced, so a changed ``--agent-socket`` takes effect), and ``--uninstall`` removes
the entry and the binary and leaves the rest of the configuration as it was.

``--watch`` stays running (the DaemonSet's container) and installs again whenever the entry or the
binary is gone: the cluster's own network plugin rewrites its configuration when it restarts, as
istio-cni's installer watches for. Unlike istio-cni's old behaviour it does *not* uninstall on exit:
with the plugin left in place, a pod created while the agent is away fails its ADD and is retried,
instead of starting uncaptured (fail closed). Removing the mesh is an explicit ``--uninstall``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bpf.cni_protocol import DEFAULT_EXCLUDED_NAMESPACES

PLUGIN_TYPE = "ambient-cni"
CONFIG_SUFFIXES = (".conf", ".conflist", ".json")  # what libcni's ConfFiles reads, in a runtime's order
WATCH_INTERVAL = 2.0  # seconds between two checks of --watch: a stat of the dir and one small file
MAX_CONFIG_BYTES = 1024 * 1024  # a network configuration is a few KiB; refuse to parse a runaway file
DEFAULT_PLUGIN_BINARY = Path(__file__).resolve().parent.parent / "build" / PLUGIN_TYPE  # `make cni-plugin`


class InstallError(Exception):
    """Why the plugin could not be installed, naming the file."""


@dataclass(frozen=True)
class InstallConfig:
    bin_dir: Path
    conf_dir: Path
    plugin_binary: Path
    agent_socket: str
    exclude_namespaces: tuple[str, ...] = DEFAULT_EXCLUDED_NAMESPACES

    def __post_init__(self) -> None:
        if not self.agent_socket.startswith("/") or "\\" in self.agent_socket or '"' in self.agent_socket:
            raise InstallError(f"--agent-socket must be an absolute path without quotes: {self.agent_socket!r}")
        if len(self.agent_socket.encode()) > 107:
            raise InstallError(f"--agent-socket is too long for a Unix socket (108 bytes): {self.agent_socket}")


def plugin_entry(config: InstallConfig) -> dict[str, Any]:
    return {"type": PLUGIN_TYPE, "agent_socket": config.agent_socket,
            "exclude_namespaces": list(config.exclude_namespaces)}


def as_conflist(document: dict[str, Any], where: str) -> dict[str, Any]:
    """A network configuration list: ``document`` itself, or a single-plugin ``.conf`` converted."""
    if "plugins" in document:
        if not isinstance(document["plugins"], list):
            raise InstallError(f"{where}: plugins is not a list")
        return document
    if "type" not in document:
        raise InstallError(f"{where}: neither a network configuration (type) nor a list of them (plugins)")
    plugin = {key: value for key, value in document.items() if key not in ("cniVersion", "name")}
    return {"cniVersion": document.get("cniVersion", "0.3.1"), "name": document.get("name", "k8s-pod-network"),
            "plugins": [plugin]}


def plan_conflist(document: dict[str, Any], config: InstallConfig, where: str) -> dict[str, Any]:
    """``document`` with exactly one ambient-cni entry, last (chained after the pod's network)."""
    conflist = without_plugin(as_conflist(document, where))
    return {**conflist, "plugins": [*conflist["plugins"], plugin_entry(config)]}


def without_plugin(conflist: dict[str, Any]) -> dict[str, Any]:
    plugins = [p for p in conflist.get("plugins", []) if not (isinstance(p, dict) and p.get("type") == PLUGIN_TYPE)]
    return {**conflist, "plugins": plugins}


def network_config_file(conf_dir: Path) -> Path:
    """The file the runtime takes its pod network from: the lexically first configuration file."""
    try:
        names = sorted(entry.name for entry in os.scandir(conf_dir)
                       if entry.is_file() and entry.name.endswith(CONFIG_SUFFIXES))
    except FileNotFoundError:
        raise InstallError(f"{conf_dir}: no such directory (--conf-dir)") from None
    if not names:
        raise InstallError(f"{conf_dir}: no network configuration (*.conf, *.conflist, *.json) to chain "
                           "ambient-cni into; is the cluster's network plugin installed?")
    return conf_dir / names[0]


def read_config(path: Path) -> dict[str, Any]:
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise InstallError(f"{path}: over {MAX_CONFIG_BYTES} bytes, not a network configuration")
    try:
        document = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InstallError(f"{path}: not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InstallError(f"{path}: not a JSON object")
    return document


def write_atomically(path: Path, data: bytes, mode: int) -> None:
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fchmod(file.fileno(), mode)
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def install(config: InstallConfig) -> Path:
    """Copy the binary, chain the plugin; the configuration file written."""
    if not config.plugin_binary.is_file():
        raise InstallError(f"{config.plugin_binary}: no plugin binary (build it with `make cni-plugin`)")
    if not config.bin_dir.is_dir():
        raise InstallError(f"{config.bin_dir}: no such directory (--bin-dir)")
    source = network_config_file(config.conf_dir)
    conflist = plan_conflist(read_config(source), config, str(source))  # refused before anything is written
    # The binary first: a configuration naming ambient-cni before it exists would fail every pod's ADD.
    write_atomically(config.bin_dir / PLUGIN_TYPE, config.plugin_binary.read_bytes(), 0o755)
    target = source if source.suffix != ".conf" else source.with_suffix(".conflist")
    write_atomically(target, (json.dumps(conflist, indent=2) + "\n").encode(), 0o644)
    if target != source:
        source.unlink()
    return target


def installed(config: InstallConfig) -> bool:
    """Whether the binary is in place and the runtime's configuration chains ambient-cni as we would."""
    try:
        if (config.bin_dir / PLUGIN_TYPE).read_bytes() != config.plugin_binary.read_bytes():
            return False
        source = network_config_file(config.conf_dir)
        document = read_config(source)
    except (InstallError, OSError):
        return False
    return source.suffix != ".conf" and plan_conflist(document, config, str(source)) == document


def watch(config: InstallConfig, interval: float = WATCH_INTERVAL) -> None:
    """Keep the plugin installed for ever (until a signal ends the process), logging each re-install."""
    import logging
    import time

    log = logging.getLogger("ambient.cni")
    while True:
        if not installed(config):
            try:
                log.info("ambient-cni (re)installed, chained in %s", install(config))
            except (InstallError, OSError) as exc:  # e.g. the network plugin has not written its file yet
                log.warning("cannot install ambient-cni yet: %s", exc)
        time.sleep(interval)


def uninstall(config: InstallConfig) -> Path | None:
    """Take ambient-cni out of the configuration and remove the binary; the file rewritten, if any."""
    written = None
    try:
        source = network_config_file(config.conf_dir)
    except InstallError:
        source = None
    if source is not None:
        document = read_config(source)
        if "plugins" in document:
            cleaned = without_plugin(document)
            if cleaned != document:
                write_atomically(source, (json.dumps(cleaned, indent=2) + "\n").encode(), 0o644)
                written = source
    (config.bin_dir / PLUGIN_TYPE).unlink(missing_ok=True)
    return written


def register(subparsers: argparse._SubParsersAction) -> None:
    cni = subparsers.add_parser("cni", help="the chained CNI plugin that enrolls new pods on a Kubernetes node")
    commands = cni.add_subparsers(dest="cni_command", required=True, metavar="COMMAND")
    add = commands.add_parser("install", help="copy ambient-cni into the CNI bin dir and chain it into the "
                                              "node's network configuration (idempotent)")
    add.add_argument("--bin-dir", type=Path, required=True, metavar="DIR", help="the CNI bin dir, e.g. /opt/cni/bin")
    add.add_argument("--conf-dir", type=Path, required=True, metavar="DIR",
                     help="the CNI configuration dir, e.g. /etc/cni/net.d")
    add.add_argument("--agent-socket", default="/var/run/ambient/cni.sock", metavar="PATH",
                     help="the node agent's CNI socket, as the host sees it (default: %(default)s)")
    add.add_argument("--plugin-binary", type=Path, default=DEFAULT_PLUGIN_BINARY, metavar="FILE",
                     help="the built plugin (default: %(default)s)")
    add.add_argument("--exclude-namespace", action="append", metavar="NAMESPACE",
                     help="never captured, passed through even with the agent down (repeatable; "
                          f"default: {', '.join(DEFAULT_EXCLUDED_NAMESPACES)})")
    mode = add.add_mutually_exclusive_group()
    mode.add_argument("--uninstall", action="store_true", help="remove the plugin's entry and binary instead")
    mode.add_argument("--watch", action="store_true",
                      help="stay running and install again whenever the entry or binary is gone (the "
                           "DaemonSet's container); the plugin is left in place on exit (fail closed)")
    add.set_defaults(func=cmd_install)


def cmd_install(args: argparse.Namespace) -> int:
    from mesh.errors import UsageError

    try:
        config = InstallConfig(args.bin_dir, args.conf_dir, args.plugin_binary, args.agent_socket,
                               tuple(args.exclude_namespace or DEFAULT_EXCLUDED_NAMESPACES))
        if args.uninstall:
            written = uninstall(config)
            print(f"ambient-cni removed from {args.bin_dir}" + (f" and {written}" if written else ""))
        else:
            written = install(config)
            print(f"ambient-cni installed in {args.bin_dir / PLUGIN_TYPE} and chained in {written}", flush=True)
            if args.watch:
                watch(config)
    except (InstallError, OSError) as exc:
        raise UsageError(str(exc)) from None
    return 0

