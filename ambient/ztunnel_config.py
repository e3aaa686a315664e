"""``ambient ztunnel-config KIND``: what one ztunnel knows, read from its admin port, as tables.

Like ``istioctl ztunnel-config``: ``workloads``, ``services``, ``policies``, ``certificates``,
``connections`` or ``all``, as a table (istioctl's columns) or as JSON (``-o json``, the entries of
``/config_dump`` as ztunnel wrote them). Two steps, each testable alone. ``fetch_config_dump``
(``lab.admin_client``, shared with ``ambient waypoint apply --wait``) does one ``GET /config_dump``
of the ztunnel ``resolve_target`` finds, as istioctl finds a ztunnel pod itself: with
``--admin-address`` alone, that address; else the admin port on loopback inside a lab node's network
namespace (entered by a worker thread), of ``--node`` or else the lab's first node that runs a
ztunnel, in the lab ``--name`` (or ``--lab``), ``$AMBIENT_LAB`` or the only lab picks; with no lab on
the machine, a ztunnel of one's own on the default address. Then ``render`` turns
the dump into text, with no I/O. Failures (no lab, no such node, nothing listening, an error status,
bytes that are not a JSON object) raise ``ConfigFetchError`` with one line that says what to do;
without root, asking inside a lab is refused in one line (``lab.cli.root_needed``). ``zc`` is its alias.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable

from lab.admin_client import (
    DEFAULT_TIMEOUT,
    AdminTarget as Target,
    ConfigFetchError,
    NetnsAccessError,
    fetch_config_dump,
)
from lab.cli import format_table, load_status, root_needed
from lab.state import LAB_ENV
from ztunnel.admin import ADMIN_PORT

KINDS = ("workloads", "services", "policies", "certificates", "connections")
_ALIASES = {"workloads": ["workload", "w"], "services": ["service", "s"], "policies": ["policy", "p"],
            "certificates": ["certificate", "certs", "c"], "connections": ["connection"], "all": []}
DEFAULT_ADMIN_ADDRESS = f"127.0.0.1:{ADMIN_PORT}"
NONE = "None"  # istioctl's word for an absent waypoint or VIP
NA = "NA"


def register(subparsers: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--node", help="the lab node whose ztunnel to ask (default: the lab's first with one)")
    common.add_argument("--name", "--lab", dest="lab", metavar="LAB",
                        help=f"the lab (default ${LAB_ENV}, else the only one)")
    common.add_argument("--admin-address", metavar="HOST:PORT",
                        help=f"ztunnel's admin port (default {DEFAULT_ADMIN_ADDRESS}: in the lab's node, or of a "
                        "ztunnel of one's own when no lab is on the machine; with --node, inside that node)")
    common.add_argument("-n", "--namespace", help="only entries of this namespace")
    common.add_argument("-o", "--output", choices=["table", "json"], default="table")
    common.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds to wait for ztunnel")
    parser = subparsers.add_parser("ztunnel-config", aliases=["zc"],
                                   help="what a node's ztunnel knows (like istioctl ztunnel-config; alias zc)")
    sub = parser.add_subparsers(dest="ztunnel_config_command", required=True, metavar="KIND")
    helps = {"workloads": "the workloads ztunnel knows", "services": "the services and their endpoints",
             "policies": "the authorization policies", "certificates": "the certificates of the local workloads",
             "connections": "the open connections of the local workloads", "all": "every table"}
    for kind in (*KINDS, "all"):
        kind_parser = sub.add_parser(kind, aliases=_ALIASES[kind], parents=[common], help=helps[kind])
        if kind in ("connections", "all"):
            kind_parser.add_argument("--direction", choices=["inbound", "outbound"], help="only this direction")
        kind_parser.set_defaults(func=cmd_ztunnel_config, kind=kind)


ENTERS_NODE_NETNS = "it enters the node's network namespace"


def cmd_ztunnel_config(args: argparse.Namespace) -> int:
    # A ztunnel at an address is anyone's to ask; a lab's (its state, its node's netns) is root's.
    command = "ztunnel-config --node" if args.node is not None else "ztunnel-config"
    with root_needed(command, ENTERS_NODE_NETNS, also=(NetnsAccessError,)):
        dump = fetch_config_dump(resolve_target(args), args.timeout)
    direction = getattr(args, "direction", None)
    if args.output == "json":
        json.dump(select(args.kind, dump, namespace=args.namespace, direction=direction), sys.stdout, indent=2)
        print()
    else:
        print(render(args.kind, dump, namespace=args.namespace, direction=direction))
    return 0


# -- where to ask


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too); raises UsageError naming the flag."""
    from mesh.errors import UsageError

    host, _, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UsageError(f"--admin-address: {text!r} is not HOST:PORT")
    return host, int(port)


def resolve_target(args: argparse.Namespace) -> Target:
    from lab import network
    from lab.state import NoLabError, pick_lab
    from mesh.errors import UsageError

    host, port = parse_address(args.admin_address or DEFAULT_ADMIN_ADDRESS)
    if args.node is None and args.admin_address is not None:
        if args.lab is not None:
            raise UsageError("--name: not with --admin-address alone (say --node to ask inside a lab's node)")
        return Target(host, port)
    try:
        paths = pick_lab(args.lab)
    except NoLabError:
        if args.node is not None:
            raise
        return Target(host, port)  # no lab: a ztunnel run by hand, on the default address
    status, _ = load_status(paths)
    node = args.node if args.node is not None else first_ztunnel_node(status)
    netns = node_netns(status, node)
    return Target(host, port, network.netns_path(netns), f"in node {node} of lab {paths.name!r}")


def first_ztunnel_node(status: dict) -> str:
    """The lab's first node that runs a ztunnel: the one istioctl would pick, its first ztunnel pod."""
    from lab.components import ztunnel_name

    for node in status.get("nodes", ()):
        if any(c.get("name") == ztunnel_name(node["name"]) for c in node.get("components", ())):
            return node["name"]
    raise ConfigFetchError(f"no node of lab {status.get('lab')!r} runs a ztunnel (it was started with --no-ztunnel)")


def node_netns(status: dict, node: str) -> str:
    """The netns of lab node ``node``, from the lab's status."""
    nodes = {n["name"]: n for n in status.get("nodes", ())}
    if node not in nodes:
        raise ConfigFetchError(f"no node {node} in lab {status.get('lab')!r}; its nodes are "
                               f"{', '.join(sorted(nodes)) or 'none'}")
    return nodes[node]["netns"]


# -- rendering (no I/O)


def _namespace_of_identity(identity: str) -> str:
    parts = identity.split("/")  # spiffe: '' td ns <ns> sa <sa>
    return parts[parts.index("ns") + 1] if "ns" in parts[:-1] else ""


def _rows(kind: str, dump: dict, namespace: str | None, direction: str | None) -> list[dict]:
    rows = [row for row in dump.get(kind) or () if isinstance(row, dict)]
    if namespace is not None:
        of = {"certificates": lambda c: _namespace_of_identity(str(c.get("identity", ""))),
              "connections": lambda c: str(c.get("pod", "")).partition("/")[0]}.get(kind, lambda r: r.get("namespace"))
        rows = [row for row in rows if of(row) == namespace]
    if direction is not None and kind == "connections":
        rows = [row for row in rows if row.get("direction") == direction]
    return rows


def select(kind: str, dump: dict, *, namespace: str | None = None, direction: str | None = None) -> dict | list:
    """The JSON output: the entries of ``kind``, or for ``all`` the dump with every list filtered."""
    if kind == "all":
        return {**dump, **{k: _rows(k, dump, namespace, direction) for k in KINDS}}
    return _rows(kind, dump, namespace, direction)


def _text(value: object, empty: str = NONE) -> str:
    return empty if value in (None, "", []) else str(value)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _leaf(cert: dict) -> dict:
    chain = cert.get("certChain")
    return chain[0] if isinstance(chain, list) and chain and isinstance(chain[0], dict) else {}


def _valid(cert: dict, now: dt.datetime) -> bool:
    leaf = _leaf(cert)
    try:
        not_before = dt.datetime.fromisoformat(leaf["validFrom"])
        not_after = dt.datetime.fromisoformat(leaf["expirationTime"])
    except (KeyError, TypeError, ValueError):
        return False
    utc = dt.UTC
    not_before, not_after = (t if t.tzinfo else t.replace(tzinfo=utc) for t in (not_before, not_after))  # naive: UTC
    return cert.get("state") == "Available" and not_before <= now <= not_after


def _waypoint(entry: dict) -> object:
    waypoint = entry.get("waypoint")
    return waypoint.get("destination") if isinstance(waypoint, dict) else None


def _without_network(address: object) -> str:
    """Istio's dump writes a VIP as ``<network>/<ip>``; the table shows the IP."""
    return str(address).rpartition("/")[2]


def _workloads(rows: list[dict], now: dt.datetime) -> list[list[str]]:
    return [["NAMESPACE", "POD NAME", "ADDRESS", "NODE", "WAYPOINT", "PROTOCOL"]] + [
        [_text(w.get("namespace")), _text(w.get("name")), ",".join(w.get("workloadIps") or ()) or NONE,
         _text(w.get("node")), _text(_waypoint(w)), _text(w.get("protocol"))]
        for w in sorted(rows, key=lambda w: (str(w.get("namespace")), str(w.get("name"))))]


def _services(rows: list[dict], now: dt.datetime) -> list[list[str]]:
    return [["NAMESPACE", "SERVICE NAME", "SERVICE VIP", "WAYPOINT", "ENDPOINTS"]] + [
        [_text(s.get("namespace")), _text(s.get("name")), ",".join(map(_without_network, s.get("vips") or ())) or NONE,
         _text(_waypoint(s)), str(len(s.get("endpoints") or ()))]
        for s in sorted(rows, key=lambda s: (str(s.get("namespace")), str(s.get("name"))))]


def _policies(rows: list[dict], now: dt.datetime) -> list[list[str]]:
    return [["NAMESPACE", "POLICY NAME", "ACTION", "SCOPE"]] + [
        [_text(p.get("namespace")), _text(p.get("name")), _text(p.get("action")), _text(p.get("scope"))]
        for p in sorted(rows, key=lambda p: (str(p.get("namespace")), str(p.get("name"))))]


def _certificates(rows: list[dict], now: dt.datetime) -> list[list[str]]:
    return [["CERTIFICATE NAME", "TYPE", "STATUS", "VALID CERT", "SERIAL NUMBER", "NOT AFTER", "NOT BEFORE"]] + [
        [_text(c.get("identity")), "Leaf" if _leaf(c) else NA, _text(c.get("state")),
         str(_valid(c, now)).lower(), _text(_leaf(c).get("serialNumber"), NA),
         _text(_leaf(c).get("expirationTime"), NA), _text(_leaf(c).get("validFrom"), NA)]
        for c in sorted(rows, key=lambda c: str(c.get("identity")))]


def _connections(rows: list[dict], now: dt.datetime) -> list[list[str]]:
    def peer(c: dict) -> object:
        return c.get("source_identity") if c.get("direction") == "inbound" else c.get("destination_identity")

    return [["NAMESPACE", "POD", "DIRECTION", "SOURCE", "DESTINATION", "PEER IDENTITY", "PROTOCOL", "POLICY",
             "SENT", "RECEIVED", "DURATION"]] + [
        [*str(c.get("pod", "")).partition("/")[::2], _text(c.get("direction")).capitalize(), _text(c.get("source")),
         _text(c.get("destination")), _text(peer(c), "-"), _text(c.get("protocol")), _text(c.get("policy"), "-"),
         str(c.get("bytes_sent", 0)), str(c.get("bytes_received", 0)), _duration(float(c.get("duration_seconds", 0)))]
        for c in sorted(rows, key=lambda c: (str(c.get("pod")), str(c.get("direction")), str(c.get("source"))))]


_TABLES: dict[str, Callable[[list[dict], dt.datetime], list[list[str]]]] = {
    "workloads": _workloads, "services": _services, "policies": _policies, "certificates": _certificates,
    "connections": _connections,
}


def render(kind: str, dump: dict, *, namespace: str | None = None, direction: str | None = None,
           now: dt.datetime | None = None) -> str:
    """The table (or, for ``all``, the tables) of ``kind``; certificate errors follow their table."""
    now = now or dt.datetime.now(dt.UTC)
    parts = []
    for each in KINDS if kind == "all" else (kind,):
        rows = _rows(each, dump, namespace, direction)
        text = format_table(_TABLES[each](rows, now))
        errors = [f"  {c.get('identity')}: {c['error']}" for c in rows if each == "certificates" and c.get("error")]
        parts.append("\n".join([text, *(["", "Errors:", *errors] if errors else [])]))
    return "\n\n".join(parts)
