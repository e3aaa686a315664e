"""``ambient lab status``'s text, from the lab's status.json: pure functions, no I/O.

``lab.cli.cmd_status`` reads the status (and the lab's record, and checks its configuration directory
as ``ambient validate`` does), then ``render`` makes the output: the lab's line, then the tables of
nodes, pods, services and waypoints (``lab.listing``'s columns: ``-o wide`` adds some, ``-o json|yaml``
is the status itself with the same rows), then the pods that are not ready and the configuration
errors the lab holds. ``-n`` keeps the rows of one namespace (nodes have none: all are kept).

AGE is kubectl's: a node's is the lab's (the nodes are made when the lab starts: the record's
``started``); a pod's, service's or waypoint's is its entry's ``created`` when the status has one,
else ``<unknown>`` as kubectl shows an object without a creation timestamp.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

from lab.listing import JSON, YAML, Column, format_data, format_table, human_age, parse_timestamp, table_rows

USED_BY_SHOWN = 3  # objects named per waypoint in the table; `-o wide` and `-o json` have them all
CREATED = "created"  # an entry's creation time (RFC 3339, UTC) in status.json, as kubectl's creationTimestamp


def _used_by(users: Sequence[str], shown: int | None = USED_BY_SHOWN) -> str:
    if not users:
        return "-"
    more = len(users) - shown if shown is not None else 0
    return ", ".join(users[:shown]) + (f" (+{more} more)" if more > 0 else "")


def _ports(service: Mapping) -> str:
    return ", ".join(f"{p['port']}->{p['target_port']}/{p['protocol']}" for p in service["ports"]) or "<none>"


def _columns(now: dt.datetime, lab_started: dt.datetime | None) -> dict[str, list[Column]]:
    def age(entry: Mapping) -> str:
        return human_age(parse_timestamp(entry.get(CREATED)), now)

    return {
        "nodes": [
            Column("NODE", lambda n: n["name"]),
            Column("FABRIC IP", lambda n: n["fabric_ip"]),
            Column("POD CIDR", lambda n: n["pod_cidr"]),
            Column("PODS", lambda n: str(n["pods"])),
            Column("AGE", lambda n: human_age(lab_started, now)),
            Column("COMPONENTS", lambda n: ", ".join(f"{c['name']} {c['state']}" for c in n["components"]) or "-"),
            Column("NETNS", lambda n: n.get("netns") or "-", wide=True),
        ],
        "pods": [
            Column("NAMESPACE", lambda p: p["namespace"]),
            Column("POD", lambda p: p["name"]),
            Column("NODE", lambda p: p["node"] or "-"),
            Column("IP", lambda p: p["ip"] or "-"),
            Column("READY", lambda p: p["ready"]),
            Column("STATE", lambda p: p["state"]),
            Column("RESTARTS", lambda p: str(p["restarts"])),
            Column("AGE", age),
            Column("DATAPLANE", lambda p: p["dataplane_mode"]),
            Column("CAPTURE", lambda p: p.get("capture", "-")),
            Column("SERVICE ACCOUNT", lambda p: p.get("service_account") or "default", wide=True),
            Column("CONTAINERS", lambda p: ",".join(c["name"] for c in p.get("containers", ())) or "-", wide=True),
            Column("NETNS", lambda p: p.get("netns") or "-", wide=True),
        ],
        "services": [
            Column("NAMESPACE", lambda s: s["namespace"]),
            Column("SERVICE", lambda s: s["name"]),
            Column("VIP", lambda s: s["vip"] or "None"),
            Column("PORTS", _ports),
            Column("AGE", age),
            Column("PORT NAMES", lambda s: ",".join(p.get("name") or "-" for p in s["ports"]) or "<none>", wide=True),
        ],
        "waypoints": [
            Column("NAMESPACE", lambda w: w["namespace"]),
            Column("NAME", lambda w: w["name"]),
            Column("FOR", lambda w: w["for"]),
            Column("POD", lambda w: w["pod"]),
            Column("READY", lambda w: w["ready"]),
            Column("AGE", age),
            Column("USED BY", lambda w: _used_by(w["used_by"])),
        ],
    }


def _wide_waypoints(columns: list[Column]) -> list[Column]:
    """-o wide names every user of a waypoint (the table's last column, so nothing after it moves)."""
    return [c if c.head != "USED BY" else Column("USED BY", lambda w: _used_by(w["used_by"], None)) for c in columns]


def filtered(status: Mapping, namespace: str | None) -> dict:
    """The status with only ``namespace``'s pods, services and waypoints (all for None)."""
    if namespace is None:
        return dict(status)
    return {**status, **{key: [e for e in status.get(key) or () if e.get("namespace") == namespace]
                         for key in ("pods", "services", "waypoints")}}


def render(status: Mapping, running: bool, *, output: str, namespace: str | None = None,
           config_errors: Sequence[str] = (), findings: Sequence[Mapping] = (), lab_started: dt.datetime | None = None,
           now: dt.datetime) -> str:
    """The output of ``lab status``. ``config_errors``: the lines ``ambient validate`` prints for each
    error in the lab's configuration directory; ``findings``: the same as ``validate -o json`` has them."""
    shown = filtered(status, namespace)
    if output in (JSON, YAML):
        return format_data({**shown, "running": running, "config_errors": list(findings)}, output)
    cp = status["controlplane"]
    state = "running" if running else "NOT RUNNING (its daemon is gone)"
    age = f" for {human_age(lab_started, now)}" if running and lab_started is not None else ""
    lines = [f"Lab {status['lab']!r}: {state}{age}; config {status['config_dir']}; state {status['state_dir']}",
             f"Control plane: {cp['state']} at {cp['address']} (restarts {cp['restarts']})"]
    columns = _columns(now, lab_started)
    if output != "table":
        columns["waypoints"] = _wide_waypoints(columns["waypoints"])
    for key in ("nodes", "pods", "services", "waypoints"):
        if key == "nodes" or key == "pods" or shown.get(key):
            lines += ["", format_table(table_rows(shown.get(key) or (), columns[key], output))]
    notes = [f"  {p['namespace']}/{p['name']}: {p['message']}" for p in shown["pods"]
             if p["message"] and not p["all_ready"]]
    if notes:
        lines += ["", "Not ready:", *notes]
    if config_errors:
        lines += ["", f"Configuration errors ({len(config_errors)}), as `ambient validate {status['config_dir']}` "
                  "reports them:", *(f"  {e}" for e in config_errors)]
    return "\n".join(lines)
