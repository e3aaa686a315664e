"""``ambient ztunnel-config KIND``: what one ztunnel knows, read from its admin port, as tables; ``log``.

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
``-o wide`` adds columns, ``-o yaml`` is the JSON's rows as YAML (``lab.listing``); ``-n``/``-A`` filter.

``log`` is istioctl's ``zc log``: ``POST /logging`` with ``level=`` (the ``--level`` values, checked
here by ztunnel's own rule, ``mesh.http_admin.parse_levels``) and ``reset``, printing ztunnel's answer,
its levels now, through the same admin request as the config dump (``lab.admin_client.admin_request``).
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Callable
from urllib.parse import quote

from lab.admin_client import (
    DEFAULT_TIMEOUT,
    AdminTarget as Target,
    ConfigFetchError,
    NetnsAccessError,
    admin_request,
    fetch_config_dump,
)
from lab.cli import load_status, root_needed
from lab.listing import (
    JSON,
    TABLE,
    YAML,
    Column,
    add_namespace_flags,
    add_output_flag,
    format_data,
    format_table,
    table_rows,
)
from lab.state import LAB_ENV
from mesh.http_admin import LEVELS, parse_levels
from ztunnel.admin import ADMIN_PORT

KINDS = ("workloads", "services", "policies", "certificates", "connections")
_ALIASES = {"workloads": ["workload", "w"], "services": ["service", "s"], "policies": ["policy", "p"],
            "certificates": ["certificate", "certs", "c"], "connections": ["connection"], "all": []}
DEFAULT_ADMIN_ADDRESS = f"127.0.0.1:{ADMIN_PORT}"
NONE = "None"  # istioctl's word for an absent waypoint or VIP
NA = "NA"


def register(subparsers: argparse._SubParsersAction) -> None:
    where = argparse.ArgumentParser(add_help=False)  # which ztunnel: every subcommand's
    where.add_argument("--node", help="the lab node whose ztunnel to ask (default: the lab's first with one)")
    where.add_argument("--name", "--lab", dest="lab", metavar="LAB",
                       help=f"the lab (default ${LAB_ENV}, else the only one)")
    where.add_argument("--admin-address", metavar="HOST:PORT",
                       help=f"ztunnel's admin port (default {DEFAULT_ADMIN_ADDRESS}: in the lab's node, or of a "
                       "ztunnel of one's own when no lab is on the machine; with --node, inside that node)")
    where.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds to wait for ztunnel")
    common = argparse.ArgumentParser(add_help=False, parents=[where])  # the listings'
    add_namespace_flags(common, "entries")
    add_output_flag(common)
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
    log_parser = sub.add_parser("log", parents=[where], help="read or set the ztunnel's log levels, live")
    log_parser.add_argument("--level", action="append", type=_level_arg, metavar="LEVEL|NAME=LEVEL",
                            help="the default level, or a logger's (NAME:LEVEL too); several may be given, or "
                            "comma-separated. Levels: " + "|".join(LEVELS))
    log_parser.add_argument("-r", "--reset", action="store_true", help="back to the levels it started with first")
    log_parser.set_defaults(func=cmd_log)


ENTERS_NODE_NETNS = "it enters the node's network namespace"


def cmd_ztunnel_config(args: argparse.Namespace) -> int:
    # A ztunnel at an address is anyone's to ask; a lab's (its state, its node's netns) is root's.
    command = "ztunnel-config --node" if args.node is not None else "ztunnel-config"
    with root_needed(command, ENTERS_NODE_NETNS, also=(NetnsAccessError,)):
        dump = fetch_config_dump(resolve_target(args), args.timeout)
    direction = getattr(args, "direction", None)
    if args.output in (JSON, YAML):
        print(format_data(select(args.kind, dump, namespace=args.namespace, direction=direction), args.output))
    else:
        print(render(args.kind, dump, namespace=args.namespace, direction=direction, output=args.output))
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


def _sorted(*keys: str) -> Callable[[list[dict]], list[dict]]:
    return lambda rows: sorted(rows, key=lambda row: tuple(str(row.get(k)) for k in keys))


def _workloads(now: dt.datetime) -> list[Column]:
    return [Column("NAMESPACE", lambda w: _text(w.get("namespace"))),
            Column("POD NAME", lambda w: _text(w.get("name"))),
            Column("ADDRESS", lambda w: ",".join(w.get("workloadIps") or ()) or NONE),
            Column("NODE", lambda w: _text(w.get("node"))), Column("WAYPOINT", lambda w: _text(_waypoint(w))),
            Column("PROTOCOL", lambda w: _text(w.get("protocol"))),
            Column("STATUS", lambda w: _text(w.get("status")), wide=True),
            Column("SERVICE ACCOUNT", lambda w: _text(w.get("serviceAccount")), wide=True)]


def _service_ports(service: dict) -> str:
    ports = service.get("ports")
    if not isinstance(ports, dict) or not ports:
        return NONE
    return ",".join(f"{port}->{target}" for port, target in ports.items())


def _services(now: dt.datetime) -> list[Column]:
    return [Column("NAMESPACE", lambda s: _text(s.get("namespace"))),
            Column("SERVICE NAME", lambda s: _text(s.get("name"))),
            Column("SERVICE VIP", lambda s: ",".join(map(_without_network, s.get("vips") or ())) or NONE),
            Column("WAYPOINT", lambda s: _text(_waypoint(s))),
            Column("ENDPOINTS", lambda s: str(len(s.get("endpoints") or ()))),
            Column("HOSTNAME", lambda s: _text(s.get("hostname")), wide=True),
            Column("PORTS", _service_ports, wide=True)]


def _policies(now: dt.datetime) -> list[Column]:
    return [Column("NAMESPACE", lambda p: _text(p.get("namespace"))),
            Column("POLICY NAME", lambda p: _text(p.get("name"))),
            Column("ACTION", lambda p: _text(p.get("action"))), Column("SCOPE", lambda p: _text(p.get("scope"))),
            Column("DRY RUN", lambda p: str(bool(p.get("dryRun"))).lower(), wide=True),
            Column("RULES", lambda p: str(len(p.get("rules") or ())), wide=True)]


def _certificates(now: dt.datetime) -> list[Column]:
    return [Column("CERTIFICATE NAME", lambda c: _text(c.get("identity"))),
            Column("TYPE", lambda c: "Leaf" if _leaf(c) else NA), Column("STATUS", lambda c: _text(c.get("state"))),
            Column("VALID CERT", lambda c: str(_valid(c, now)).lower()),
            Column("SERIAL NUMBER", lambda c: _text(_leaf(c).get("serialNumber"), NA)),
            Column("NOT AFTER", lambda c: _text(_leaf(c).get("expirationTime"), NA)),
            Column("NOT BEFORE", lambda c: _text(_leaf(c).get("validFrom"), NA))]


def _connections(now: dt.datetime) -> list[Column]:
    def peer(c: dict) -> object:
        return c.get("source_identity") if c.get("direction") == "inbound" else c.get("destination_identity")

    return [Column("NAMESPACE", lambda c: str(c.get("pod", "")).partition("/")[0]),
            Column("POD", lambda c: str(c.get("pod", "")).partition("/")[2]),
            Column("DIRECTION", lambda c: _text(c.get("direction")).capitalize()),
            Column("SOURCE", lambda c: _text(c.get("source"))),
            Column("DESTINATION", lambda c: _text(c.get("destination"))),
            Column("PEER IDENTITY", lambda c: _text(peer(c), "-")),
            Column("PROTOCOL", lambda c: _text(c.get("protocol"))),
            Column("POLICY", lambda c: _text(c.get("policy"), "-")),
            Column("SENT", lambda c: str(c.get("bytes_sent", 0))),
            Column("RECEIVED", lambda c: str(c.get("bytes_received", 0))),
            Column("DURATION", lambda c: _duration(float(c.get("duration_seconds", 0))))]


# Per kind: its columns (given the time, for the certificates' validity) and the order of its rows.
_TABLES: dict[str, tuple[Callable[[dt.datetime], list[Column]], Callable[[list[dict]], list[dict]]]] = {
    "workloads": (_workloads, _sorted("namespace", "name")), "services": (_services, _sorted("namespace", "name")),
    "policies": (_policies, _sorted("namespace", "name")), "certificates": (_certificates, _sorted("identity")),
    "connections": (_connections, _sorted("pod", "direction", "source")),
}


def render(kind: str, dump: dict, *, namespace: str | None = None, direction: str | None = None,
           now: dt.datetime | None = None, output: str = TABLE) -> str:
    """The table (or, for ``all``, the tables) of ``kind``, ``-o wide``'s with ``output``; certificate
    errors follow their table."""
    now = now or dt.datetime.now(dt.UTC)
    parts = []
    for each in KINDS if kind == "all" else (kind,):
        columns, order = _TABLES[each]
        rows = _rows(each, dump, namespace, direction)
        text = format_table(table_rows(order(rows), columns(now), output))
        errors = [f"  {c.get('identity')}: {c['error']}" for c in rows if each == "certificates" and c.get("error")]
        parts.append("\n".join([text, *(["", "Errors:", *errors] if errors else [])]))
    return "\n\n".join(parts)


# -- log levels


def _level_arg(text: str) -> str:
    """``--level``'s type: what ztunnel's POST /logging takes (``mesh.http_admin.parse_levels``)."""
    try:
        parse_levels(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}; say LEVEL or NAME=LEVEL, LEVEL one of {'|'.join(LEVELS)}") from None
    return text


def logging_path(levels: list[str] | None, reset: bool) -> str:
    """The request istioctl's ``zc log`` makes: ``/logging``, with ``?level=`` and ``reset``."""
    query = [f"level={quote(','.join(levels), safe=',:=')}"] if levels else []
    return "/logging" + ("?" + "&".join((["reset"] if reset else []) + query) if query or reset else "")


def cmd_log(args: argparse.Namespace) -> int:
    command = "ztunnel-config log --node" if args.node is not None else "ztunnel-config log"
    with root_needed(command, ENTERS_NODE_NETNS, also=(NetnsAccessError,)):
        target = resolve_target(args)
        answer = post_admin(target, logging_path(args.level, args.reset), args.timeout)
    print(answer)
    return 0


def post_admin(target: Target, path: str, timeout: float) -> str:
    """POST ``path`` to ``target``'s admin port: its answer's text (failures: ``ConfigFetchError``, one line)."""
    return admin_request(target, "POST", path, timeout).decode("utf-8", "replace").strip()
