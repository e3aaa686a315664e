"""The lab's network executor: builds and removes what a `LabPlan` describes, with pyroute2.

How it works: every netns is created with `pyroute2.netns.create` (the same bind mount under
/var/run/netns that `ip netns add` makes), and every netlink request goes through an `IPRoute` opened
*inside* a lab netns. Each veth is created in the netns of one end (the fabric for a node or the
control plane, the node for a pod) with its peer placed directly in the other lab netns, so nothing is
ever created in, moved through or changed in the root netns. Sysctls (IPv4 forwarding on nodes; IPv6
off everywhere, so no link-local routes appear) are written inside the netns too.

"Inside" means `inside_netns`: the calling thread enters the lab netns (setns of a network namespace
is per thread), creates the netlink socket or opens the /proc/sys/net file, which then belong to that
netns for life, and returns to its own netns at once. That is ~100x cheaper than pyroute2's
`IPRoute(netns=...)`, which forks a helper process per socket, and than running `sh` for sysctls.

Each pod's node-side veth gets the node's filter on what the pod sends (``lab.pod_filter``, at tc
ingress, attached before the link is up): only the pod's own source address, and nothing to the
mesh's metrics ports, which the fabric side still reaches.

`create` refuses a lab whose namespaces already exist and removes what it built if it fails halfway.
`destroy(lab_name)` removes every netns whose name has the lab's prefix, which removes their
interfaces and routes with them; it is safe to run twice and after a crashed `create`. A netns lives
on while a process is inside it: stop the lab's processes before `destroy`.

The calls block (pyroute2's synchronous API); call them from `trio.to_thread.run_sync` in async code.
"""

from __future__ import annotations

import os
import socket
import subprocess
from functools import partial
from ipaddress import IPv4Address

from pyroute2 import IPRoute, netns as pyroute2_netns

from lab import pod_filter
from lab.topology import (
    FABRIC_BRIDGE,
    FABRIC_SUBNET,
    POD_BRIDGE,
    POD_NETWORK,
    UPLINK,
    LabPlan,
    NodePlan,
    PodPlan,
    Route,
    netns_prefix,
)
from mesh.netlink import rtnl, write_sysctls  # noqa: F401 (used here and re-exported)
from mesh.netns import enter_netns, inside_netns, inside_netns_fd, netns_path  # noqa: F401 (used here and re-exported)


class LabExistsError(RuntimeError):
    """Some of the lab's namespaces already exist: destroy the lab first."""


def lab_netns(lab_name: str) -> list[str]:
    """The namespaces of lab `lab_name` that exist now."""
    prefix = netns_prefix(lab_name)
    return sorted(name for name in pyroute2_netns.listnetns() if name.startswith(prefix))


def create(plan: LabPlan) -> None:
    """Build the whole lab: fabric, control plane, nodes, then pods."""
    existing = lab_netns(plan.name)
    if existing:
        raise LabExistsError(
            f"lab {plan.name!r} already has namespaces {existing}; run destroy first"
        )
    try:
        _create_netns(plan.fabric_netns)
        with rtnl(plan.fabric_netns) as fabric:
            fabric.link("add", ifname=FABRIC_BRIDGE, kind="bridge")
            fabric.link("set", index=_index(fabric, FABRIC_BRIDGE), state="up")

        control_plane = plan.control_plane
        _create_netns(control_plane.netns)
        _attach_to_fabric(plan, control_plane.netns, control_plane.fabric_veth, control_plane.address)

        for node in plan.nodes:
            _create_netns(node.netns, ip_forward=True)
            _attach_to_fabric(plan, node.netns, node.fabric_veth, node.fabric_address)
            with rtnl(node.netns) as ipr:
                # A fixed address: a bridge otherwise takes the lowest of its ports' addresses, so adding
                # or removing a pod could change the gateway's MAC under every other pod of the node,
                # which then loses traffic until its ARP entry expires.
                ipr.link("add", ifname=POD_BRIDGE, kind="bridge", address=pod_bridge_mac(node.index))
                bridge = _index(ipr, POD_BRIDGE)
                _add_address(ipr, bridge, node.bridge_address)
                ipr.link("set", index=bridge, state="up")

        for netns, routes in [
            (control_plane.netns, control_plane.routes),
            *((node.netns, node.routes) for node in plan.nodes),
        ]:
            with rtnl(netns) as ipr:
                _add_routes(ipr, routes)

        for pod in plan.pods:
            _create_pod(plan.node_of(pod), pod)
    except BaseException:
        destroy(plan.name)
        raise


def add_pod(plan: LabPlan, pod: PodPlan) -> None:
    """Add one pod to a running lab (its node must exist); undone if it fails halfway."""
    if pod.netns in pyroute2_netns.listnetns():
        raise LabExistsError(f"pod {pod.key} already has its netns {pod.netns}")
    try:
        _create_pod(plan.node_of(pod), pod)
    except BaseException:
        remove_pod(plan, pod)
        raise


def remove_pod(plan: LabPlan, pod: PodPlan) -> None:
    """Remove one pod's netns and its veth on the node; nothing happens for parts already gone."""
    node = plan.node_of(pod)
    existing = pyroute2_netns.listnetns()
    if node.netns in existing:
        with rtnl(node.netns) as ipr:
            for index in ipr.link_lookup(ifname=pod.node_veth):
                ipr.link("del", index=index)
    if pod.netns in existing:
        pyroute2_netns.remove(pod.netns)


def destroy(lab_name: str) -> list[str]:
    """Remove every netns of lab `lab_name`; returns their names (empty if the lab is gone)."""
    removed = []
    for name in lab_netns(lab_name):
        try:
            pyroute2_netns.remove(name)
        except FileNotFoundError:  # removed meanwhile
            continue
        removed.append(name)
    return removed


def run_in_netns(netns: str, argv: list[str], **popen_kwargs) -> subprocess.Popen:
    """Start `argv` inside the lab netns `netns` (like `ip netns exec`, without needing `ip`)."""
    fd = os.open(netns_path(netns), os.O_RDONLY)
    try:
        return subprocess.Popen(argv, preexec_fn=partial(enter_netns, fd), **popen_kwargs)
    finally:
        os.close(fd)


def socket_in_netns(netns: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A socket of the lab netns ``netns`` for a process that stays in its own: the lab daemon
    probes and talks to its pods this way."""
    with inside_netns(netns):
        return socket.socket(family, kind)


def _create_netns(netns: str, ip_forward: bool = False) -> None:
    pyroute2_netns.create(netns)
    sysctls = {"ipv4/ip_forward": int(ip_forward)}
    if os.path.isdir("/proc/sys/net/ipv6"):
        sysctls.update({"ipv6/conf/all/disable_ipv6": 1, "ipv6/conf/default/disable_ipv6": 1})
    write_sysctls(netns, sysctls)
    with rtnl(netns) as ipr:
        ipr.link("set", index=_index(ipr, "lo"), state="up")


def _attach_to_fabric(plan: LabPlan, netns: str, fabric_veth: str, address) -> None:
    with rtnl(plan.fabric_netns) as fabric:
        fabric.link("add", ifname=fabric_veth, kind="veth", peer={"ifname": UPLINK, "net_ns_fd": netns})
        fabric.link(
            "set", index=_index(fabric, fabric_veth), master=_index(fabric, FABRIC_BRIDGE), state="up"
        )
    with rtnl(netns) as ipr:
        uplink = _index(ipr, UPLINK)
        _add_address(ipr, uplink, address)
        ipr.link("set", index=uplink, state="up")


def _create_pod(node: NodePlan, pod: PodPlan) -> None:
    _create_netns(pod.netns)
    with rtnl(node.netns) as ipr:
        ipr.link("add", ifname=pod.node_veth, kind="veth", peer={"ifname": UPLINK, "net_ns_fd": pod.netns})
        veth = _index(ipr, pod.node_veth)
        _filter_pod(ipr, veth, pod.ip)  # before the link is up: no packet of the pod goes unfiltered
        ipr.link("set", index=veth, master=_index(ipr, POD_BRIDGE), state="up")
    with rtnl(pod.netns) as ipr:
        uplink = _index(ipr, UPLINK)
        _add_address(ipr, uplink, pod.address)
        ipr.link("set", index=uplink, state="up")
        _add_routes(ipr, pod.routes)


def _index(ipr: IPRoute, ifname: str) -> int:
    (index,) = ipr.link_lookup(ifname=ifname)
    return index


def pod_bridge_mac(node_index: int) -> str:
    """The pod bridge's MAC on node ``node_index``: locally administered, unicast, one per node."""
    return f"02:a0:00:00:{node_index >> 8 & 0xff:02x}:{node_index & 0xff:02x}"


def _add_address(ipr: IPRoute, index: int, address) -> None:
    ipr.addr("add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen)


def _add_routes(ipr: IPRoute, routes: tuple[Route, ...]) -> None:
    for route in routes:
        ipr.route("add", dst=str(route.destination), gateway=str(route.gateway))


def _filter_pod(ipr: IPRoute, veth: int, pod_ip: IPv4Address) -> None:
    """Attach the node's filter on what the pod sends (``lab.pod_filter``) at tc ingress of ``veth``."""
    fd = pod_filter.load(pod_filter.program(pod_ip, FABRIC_SUBNET, POD_NETWORK))
    try:
        ipr.tc("add", "ingress", veth, "ffff:")
        ipr.tc("add-filter", "bpf", veth, ":1", fd=fd, name="amb_pod_filter", parent="ffff:",
               direct_action=True)
    finally:
        os.close(fd)  # the attached filter holds the program
