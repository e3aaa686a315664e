"""The lab's kube-proxy: Service VIPs answer pods outside the mesh, by nftables DNAT in each node's netns.

How it works, as kube-proxy's nftables mode does it (pkg/proxy/nftables): ``service_ports`` (pure) turns
the cluster state and the pods' status into one ``ServicePort`` per VIP, protocol and port, with its
ready endpoints (pod IP, target port, node; a named targetPort resolved per pod by name and protocol,
a pod without that port is no endpoint of it). ``ruleset`` (pure) writes one node's whole table,
``table ip ambient-kube-proxy``:

- ``nat-prerouting`` (pods' traffic, which the node routes) and ``nat-output`` (the node's own
  processes), type nat at priority dstnat: ``ip daddr . meta l4proto . th dport vmap @service-ips``
  jumps to the Service port's chain, which picks an endpoint with ``numgen random mod N vmap`` and
  goes to that endpoint's chain: ``dnat to <pod IP>:<target port>``. Conntrack un-NATs the replies.
- ``filter-prerouting`` / ``filter-output`` at dstnat + 10, after the DNAT (a packet DNATed already
  matches no VIP), on new connections: a Service port without endpoints is rejected at once (TCP
  reset; ICMP port unreachable for anything else), one with ``internalTrafficPolicy: Local`` and no
  endpoint on this node is dropped, a VIP's undefined port is rejected and an unallocated address of
  the service CIDR dropped: kube-proxy's four answers. Without them, the node has no route to the
  service CIDR and would answer "network unreachable".
- ``nat-postrouting``, priority srcnat: a DNATed connection from one of this node's pods to one of
  this node's pods (the endpoint is on the same bridge; the client itself too, hairpin) is
  masqueraded to the node's bridge address. Otherwise the endpoint would answer the client directly
  across the bridge, which no netfilter hook of the node sees, and the client would get a reply from
  the pod IP instead of the VIP. Across nodes the reply is routed back through the client's node,
  whose conntrack un-NATs it, so the endpoint sees the client's own address.

``internalTrafficPolicy: Local`` keeps only the endpoints on the client's node: the table is per node,
and so is the choice. ``externalTrafficPolicy`` concerns traffic entering a node from outside the
cluster (NodePort, LoadBalancer); a lab has no outside (no lab netns routes to the host, DESIGN.md
section 9), so ``mesh.parse`` accepts the field and nothing acts on it. Headless Services (no VIP)
have no rules: DNS gives their pod IPs.

``KubeProxy.sync`` is the thin driver: for each node of the plan, the ruleset, applied when it differs
from what that node last got, with one ``nft -f -`` whose input deletes and re-creates the whole table
in a single transaction (the table is created empty first so that the delete never fails), so packets
see the old rules or the new, never half. ``nft`` runs in the node's netns only: the netns must be one
of the plan's nodes (the lab's prefix) and must not be the netns the lab itself runs in (the host's),
which is checked on the opened file before anything runs. Existing connections keep their NAT
(conntrack) across a rewrite; a removed UDP endpoint's entries are not flushed (kube-proxy does).

Ambient pods: their TCP is captured inside the pod's own netns (the node agent's local route and
sk_lookup program, ``bpf.enrollment``) and ztunnel connects to the endpoint it picked (a pod IP, over
HBONE on 15008), so what reaches the node is addressed to a pod, never to a VIP, and none of this
applies; a VIP ztunnel passed through as is would be DNATed here, as kube-proxy does after Istio's.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from controlplane.registry import DEFAULT_SERVICE_CIDR
from lab.endpoints import selected_pods
from lab.topology import LabPlan, netns_prefix
from lab.workloads import node_name
from mesh.netns import netns_path
from mesh.nft import run_nft

log = logging.getLogger("ambient.lab.kube_proxy")

TABLE = "ambient-kube-proxy"
SERVICE_CIDR = IPv4Network(DEFAULT_SERVICE_CIDR)  # the control plane's, where the VIPs come from
POD_BRIDGE = "br-pods"  # lab.topology.POD_BRIDGE: the node's bridge to its pods
# Hook priorities: nftables' dstnat (-100) and srcnat (100), written as numbers since nft 1.0.6 takes the
# names in prerouting and postrouting but not in output; the checks run just after the DNAT.
DSTNAT, SRCNAT, AFTER_DSTNAT = -100, 100, -90
# Where the lab runs (the host's netns, inherited by every process the lab starts outside a lab netns).
OWN_NETNS = "/proc/self/ns/net"


@dataclass(frozen=True)
class Endpoint:
    ip: IPv4Address
    port: int  # the target port on the pod
    node: str  # "node-<i>"


@dataclass(frozen=True)
class ServicePort:
    """One VIP:port of a Service, with its ready endpoints."""

    namespace: str
    name: str
    vip: IPv4Address
    protocol: str  # "tcp" | "udp" | "sctp", as nft names them
    port: int
    port_name: str
    local: bool  # internalTrafficPolicy: Local
    endpoints: tuple[Endpoint, ...]

    @property
    def chain(self) -> str:
        return f"service-{self.namespace}/{self.name}/{self.protocol}/{self.port}"

    def endpoint_chain(self, endpoint: Endpoint) -> str:
        return f"endpoint-{self.namespace}/{self.name}/{self.protocol}/{self.port}__{endpoint.ip}/{endpoint.port}"

    def endpoints_for(self, node: str) -> tuple[Endpoint, ...]:
        """The endpoints a client on ``node`` may reach: only that node's with the Local policy."""
        return tuple(e for e in self.endpoints if e.node == node) if self.local else self.endpoints


def _target_port(port: Any, pod: Any) -> int | None:
    """The pod's port for a Service port: the number, or the container port of that name and protocol
    (as Kubernetes); None when the pod has no port of that name."""
    if isinstance(port.target_port, int):
        return port.target_port
    for container in pod.spec.containers:
        for cport in container.ports:
            if cport.name == port.target_port and cport.protocol == port.protocol:
                return cport.container_port
    return None


def service_ports(state: Any, pod_status: Mapping[tuple[str, str], Any]) -> tuple[ServicePort, ...]:
    """Pure: every VIP:port of a ``controlplane.view.ClusterState`` (VIPs from ``state.vips``) with the
    endpoints ``pod_status`` (``PodStatus``: ip, node, ready) gives it: the pods of its namespace its
    selector picks, ready (or any with ``publishNotReadyAddresses``) and with an IP. A Service without
    a selector has no endpoints here (the lab keeps no EndpointSlices of its own)."""
    result = []
    for key, svc in sorted(state.services.items()):
        vip = state.vips.get(key)
        if svc.cluster_ip == "None" or not vip:
            continue
        selected = selected_pods(state, pod_status, key[0], svc)
        for port in svc.ports:
            endpoints = tuple(Endpoint(IPv4Address(status.ip), target, status.node) for pod, status in selected
                              if (target := _target_port(port, pod)) is not None)
            result.append(ServicePort(key[0], key[1], IPv4Address(vip), port.protocol.lower(), port.port, port.name,
                                      svc.internal_traffic_policy == "Local", endpoints))
    return tuple(result)


def _elements(entries: Iterable[str]) -> str:
    listed = ", ".join(entries)
    return f"\t\telements = {{ {listed} }}\n" if listed else ""


def ruleset(ports: Sequence[ServicePort], node: str, pod_cidr: IPv4Network, bridge_ip: IPv4Address,
            service_cidr: IPv4Network = SERVICE_CIDR) -> str:
    """Pure: the nft script that replaces node ``node``'s table with the rules for ``ports``
    (``pod_cidr`` and ``bridge_ip``: the node's pods and its address on their bridge)."""
    dispatch, refused, service_chains, endpoint_chains = [], [], [], []
    vips = sorted({p.vip for p in ports})
    for port in ports:
        key = f"{port.vip} . {port.protocol} . {port.port}"
        reachable = port.endpoints_for(node)
        if not port.endpoints:
            refused.append(f"{key} : goto reject-chain")
            continue
        if not reachable:  # Local, and none on this node: kube-proxy drops rather than refuses
            refused.append(f"{key} : drop")
            continue
        dispatch.append(f"{key} : goto {port.chain}")
        picks = ", ".join(f"{i} : goto {port.endpoint_chain(e)}" for i, e in enumerate(reachable))
        label = f"{port.namespace}/{port.name}:{port.port_name or port.port}"
        service_chains.append(f"\tchain {port.chain} {{\n\t\tcounter numgen random mod {len(reachable)} "
                              f"vmap {{ {picks} }} comment \"{label}\"\n\t}}\n")
        for e in reachable:
            endpoint_chains.append(f"\tchain {port.endpoint_chain(e)} {{\n"
                                   f"\t\tmeta l4proto {port.protocol} dnat to {e.ip}:{e.port}\n\t}}\n")
    verdict_map = "\t\ttype ipv4_addr . inet_proto . inet_service : verdict\n"
    checks = ("\t\tct state new ip daddr . meta l4proto . th dport vmap @no-endpoint-services\n"
              "\t\tct state new ip daddr @cluster-ips reject\n"
              f"\t\tct state new ip daddr {service_cidr} drop\n")
    return "".join([
        f"table ip {TABLE}\n",
        f"delete table ip {TABLE}\n",
        f"table ip {TABLE} {{\n",
        f"\tcomment \"the lab's kube-proxy for {node}\"\n",
        "\tset cluster-ips {\n\t\ttype ipv4_addr\n", _elements(str(v) for v in vips), "\t}\n",
        "\tmap service-ips {\n", verdict_map, _elements(dispatch), "\t}\n",
        "\tmap no-endpoint-services {\n", verdict_map, _elements(refused), "\t}\n",
        f"\tchain nat-prerouting {{\n\t\ttype nat hook prerouting priority {DSTNAT}; policy accept;\n"
        "\t\tip daddr . meta l4proto . th dport vmap @service-ips\n\t}\n",
        f"\tchain nat-output {{\n\t\ttype nat hook output priority {DSTNAT}; policy accept;\n"
        "\t\tip daddr . meta l4proto . th dport vmap @service-ips\n\t}\n",
        f"\tchain filter-prerouting {{\n\t\ttype filter hook prerouting priority {AFTER_DSTNAT}; policy accept;\n",
        checks, "\t}\n",
        f"\tchain filter-output {{\n\t\ttype filter hook output priority {AFTER_DSTNAT}; policy accept;\n",
        checks, "\t}\n",
        f"\tchain nat-postrouting {{\n\t\ttype nat hook postrouting priority {SRCNAT}; policy accept;\n"
        f"\t\tct status dnat ip saddr {pod_cidr} oifname \"{POD_BRIDGE}\" snat to {bridge_ip}\n\t}}\n",
        "\tchain reject-chain {\n\t\tmeta l4proto tcp reject with tcp reset\n\t\treject\n\t}\n",
        *service_chains,
        *endpoint_chains,
        "}\n",
    ])


def apply(lab_name: str, netns: str, script: str) -> None:
    """Run ``nft -f -`` with ``script`` in the lab netns ``netns`` (blocking). Refuses a netns outside
    the lab and, checked on the opened file, the netns this process runs in (the host's)."""
    if not netns.startswith(netns_prefix(lab_name)):
        raise ValueError(f"{netns!r} is not a netns of lab {lab_name!r}")
    fd = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        target, own = os.fstat(fd), os.stat(OWN_NETNS)
        if (target.st_dev, target.st_ino) == (own.st_dev, own.st_ino):
            raise ValueError(f"{netns!r} is the netns the lab runs in, not a node's")
        run_nft(fd, script, netns)
    finally:
        os.close(fd)


class KubeProxy:
    """The driver: keeps each node's table in step with the lab (``sync``, blocking, in a thread)."""

    def __init__(self, lab_name: str, run=apply) -> None:
        self.lab_name = lab_name
        self._run = run  # (lab name, netns, script): tests give their own
        self._applied: dict[str, str] = {}  # netns -> the script it last took
        self.error: str | None = None  # the last failure, None once every node took its table

    def sync(self, plan: LabPlan, state: Any, pod_status: Mapping[tuple[str, str], Any]) -> bool:
        """Rewrite the table of each node whose ruleset changed; True if any was. A node that fails
        keeps its old table and is tried again at the next call (the error is logged and kept)."""
        ports = service_ports(state, pod_status)
        changed, self.error = False, None
        for node in plan.nodes:
            script = ruleset(ports, node_name(node.index), node.pod_cidr, node.bridge_address.ip)
            if self._applied.get(node.netns) == script:
                continue
            try:
                self._run(self.lab_name, node.netns, script)
            except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as exc:
                self.error = f"{node_name(node.index)}: {exc}"
                log.error("kube-proxy: the table of %s was not updated: %s", node.netns, exc)
                self._applied.pop(node.netns, None)
                continue
            self._applied[node.netns] = script
            changed = True
        return changed
