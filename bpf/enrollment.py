"""Enrolling a pod into capture, and releasing it: the routing half, in the pod's netns, with pyroute2.

Enrollment (DESIGN.md section 5), all inside the pod's netns:

    ip rule add fwmark 0x539 lookup main priority 32000     ztunnel's own sockets: normal routing
    ip rule add ipproto tcp lookup 100 priority 32001        the pod's TCP: the local route below
    ip route add local 0.0.0.0/0 dev lo src <pod IP> table 100
    sysctl net.ipv4.conf.<eth0>.accept_local=1 ; lo up

so that the pod's outbound TCP is delivered locally and meets the sk_lookup program, which is then
attached to the netns (`bpf.capture`). Release removes exactly these, nothing else. Both are
idempotent: an existing rule or route is left alone, a missing one is not an error, so a restarted
agent can re-apply or undo a half-done step.
"""

from __future__ import annotations

import errno
import socket

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from bpf.capture import PROXY_MARK
from mesh.netlink import rtnl, write_sysctls

CAPTURE_TABLE = 100
MARK_RULE_PRIORITY = 32000  # before the main table's rule (32766)
TCP_RULE_PRIORITY = 32001
FR_ACT_TO_TBL = 1


def _rules(ipr: IPRoute) -> list[dict]:
    found = []
    for rule in ipr.get_rules(family=socket.AF_INET):
        found.append({"priority": rule.get_attr("FRA_PRIORITY"), "table": rule.get_attr("FRA_TABLE"),
                      "fwmark": rule.get_attr("FRA_FWMARK"), "ip_proto": rule.get_attr("FRA_IP_PROTO")})
    return found


def _set_accept_local(netns: str, uplink: str, value: int) -> None:
    write_sysctls(netns, {f"ipv4/conf/{uplink}/accept_local": value})


def install_routing(netns: str, pod_ip: str, uplink: str = "eth0") -> None:
    with rtnl(netns) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        rules = _rules(ipr)
        if not any(r["priority"] == MARK_RULE_PRIORITY for r in rules):
            ipr.rule("add", family=socket.AF_INET, priority=MARK_RULE_PRIORITY, fwmark=PROXY_MARK,
                     fwmask=0xFFFFFFFF, table=254, action=FR_ACT_TO_TBL)
        if not any(r["priority"] == TCP_RULE_PRIORITY for r in rules):
            ipr.rule("add", family=socket.AF_INET, priority=TCP_RULE_PRIORITY, ip_proto=socket.IPPROTO_TCP,
                     table=CAPTURE_TABLE, action=FR_ACT_TO_TBL)
        try:
            ipr.route("add", dst="0.0.0.0/0", type="local", oif=ipr.link_lookup(ifname="lo")[0],
                      prefsrc=pod_ip, table=CAPTURE_TABLE, scope="host")
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise
    _set_accept_local(netns, uplink, 1)


def remove_routing(netns: str, uplink: str = "eth0") -> None:
    with rtnl(netns) as ipr:
        for rule in _rules(ipr):  # our priorities are ours alone: the rule is found by its priority
            if rule["priority"] in (TCP_RULE_PRIORITY, MARK_RULE_PRIORITY):
                ipr.rule("del", family=socket.AF_INET, priority=rule["priority"])
        for route in ipr.get_routes(family=socket.AF_INET, table=CAPTURE_TABLE):
            ipr.route("del", dst="0.0.0.0/0", type="local", table=CAPTURE_TABLE, scope="host",
                      oif=route.get_attr("RTA_OIF"))
    try:
        _set_accept_local(netns, uplink, 0)
    except FileNotFoundError:  # the uplink is gone with the pod
        pass
