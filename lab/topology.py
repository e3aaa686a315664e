"""The lab's network plan: which namespaces, links, addresses and routes a lab has.

How it works: `plan_lab` is a pure function (no I/O). From a lab name, a node count and the pods it
returns a frozen `LabPlan` that names everything the executor (`lab.network`) will create:

    fabric netns   amb-<lab>.fabric   bridge br-fabric, no address; one veth per node and one for the
                                      control plane (their other end is eth0 in that netns)
    control plane  amb-<lab>.cp       eth0 10.255.0.2/24; routes to every node's pod CIDR via that node
    node i         amb-<lab>.node-<i> eth0 10.255.0.<10+i>/24 on the fabric; bridge br-pods
                                      10.244.<i>.1/24; routes to the other nodes' pod CIDRs via their
                                      fabric addresses; forwards IPv4
    pod            amb-<lab>.pod-<h>  eth0 10.244.<i>.<k>/24; default route via 10.244.<i>.1 only.
                                      Its node-side end, veth-<h>, is a port of br-pods.

`<h>` is a hash of "namespace/name", so a pod's names do not depend on the other pods. The prefix
ends with a dot, which a lab name (a DNS label) cannot contain: `amb-a.` never matches a name of the
lab `a-b`, so removing "every netns with the prefix" removes exactly one lab. Interface names live
inside the lab's namespaces, so they are short and fixed (IFNAMSIZ is 15 characters).

Pods are placed and addressed stably: given the previous plan, a pod that is still there keeps its
node and IP, so the lab can add or remove one pod live. A new pod goes to the node it asks for, or to
the node with the fewest pods (lowest index on ties, which spreads pods round-robin), and gets the
lowest free address of that node's CIDR. No route leaves 10.244.0.0/16 and 10.255.0.0/24: nothing in
a lab can reach the host's network.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from mesh import netns
from mesh.netns import NETNS_PREFIX, pod_hash, pod_netns, pod_netns_name  # noqa: F401 (re-exported: the lab's names)

IFNAMSIZ = 15  # the kernel's limit on interface names, without the NUL

POD_NETWORK = IPv4Network("10.244.0.0/16")
FABRIC_SUBNET = IPv4Network("10.255.0.0/24")
CONTROL_PLANE_ADDRESS = IPv4Interface("10.255.0.2/24")
FIRST_NODE_FABRIC_HOST = 10  # node i is 10.255.0.<10+i>
MAX_NODES = 64
DEFAULT_ROUTE = IPv4Network("0.0.0.0/0")

# Interface names (each is unique inside its netns).
FABRIC_BRIDGE = "br-fabric"
POD_BRIDGE = "br-pods"
UPLINK = "eth0"  # a node's, control plane's or pod's own end of its veth
CONTROL_PLANE_FABRIC_VETH = "veth-cp"



class LabPlanError(ValueError):
    """The lab cannot be planned as asked (bad name, too many pods, conflicting pods)."""


@dataclass(frozen=True)
class PodSpec:
    """A pod the lab should run: `node` is a node index, or None to let the plan spread it."""

    namespace: str
    name: str
    node: int | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Route:
    """`destination` via `gateway` (an on-link address of the netns)."""

    destination: IPv4Network
    gateway: IPv4Address

    @property
    def is_default(self) -> bool:
        return self.destination == DEFAULT_ROUTE


@dataclass(frozen=True)
class NodePlan:
    index: int
    netns: str
    pod_cidr: IPv4Network
    bridge_address: IPv4Interface  # on br-pods: the pods' gateway
    fabric_address: IPv4Interface  # on eth0, the node's uplink to the fabric
    fabric_veth: str  # the other end of eth0, a port of br-fabric in the fabric netns
    routes: tuple[Route, ...]  # the other nodes' pod CIDRs


@dataclass(frozen=True)
class PodPlan:
    namespace: str
    name: str
    node: int
    netns: str
    address: IPv4Interface  # on the pod's eth0
    node_veth: str  # the other end of eth0, a port of br-pods in the node's netns
    routes: tuple[Route, ...]  # only the default route, via the node's bridge

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def ip(self) -> IPv4Address:
        return self.address.ip


@dataclass(frozen=True)
class ControlPlanePlan:
    netns: str
    address: IPv4Interface  # on eth0, on the fabric
    fabric_veth: str
    routes: tuple[Route, ...]  # every node's pod CIDR


@dataclass(frozen=True)
class LabPlan:
    name: str
    netns_prefix: str
    fabric_netns: str
    fabric_subnet: IPv4Network
    control_plane: ControlPlanePlan
    nodes: tuple[NodePlan, ...]
    pods: tuple[PodPlan, ...]  # in the order they were asked for

    @property
    def all_netns(self) -> tuple[str, ...]:
        return (
            self.fabric_netns,
            self.control_plane.netns,
            *(node.netns for node in self.nodes),
            *(pod.netns for pod in self.pods),
        )

    def pod(self, namespace: str, name: str) -> PodPlan:
        for pod in self.pods:
            if (pod.namespace, pod.name) == (namespace, name):
                return pod
        raise KeyError(f"no pod {namespace}/{name} in lab {self.name!r}")

    def node_of(self, pod: PodPlan) -> NodePlan:
        return self.nodes[pod.node]


def validate_lab_name(name: str) -> str:
    try:
        return netns.validate_lab_name(name)
    except netns.InvalidLabName as exc:
        raise LabPlanError(str(exc)) from None


def netns_prefix(lab_name: str) -> str:
    """The prefix of every netns of the lab `lab_name`, and of no other lab's."""
    return netns.netns_prefix(validate_lab_name(lab_name))


def node_fabric_address(index: int) -> IPv4Interface:
    host = FABRIC_SUBNET.network_address + FIRST_NODE_FABRIC_HOST + index
    return IPv4Interface(f"{host}/{FABRIC_SUBNET.prefixlen}")


def node_pod_cidr(index: int) -> IPv4Network:
    return IPv4Network(f"10.244.{index}.0/24")


def plan_lab(
    name: str,
    pods: list[PodSpec] | tuple[PodSpec, ...] = (),
    node_count: int = 2,
    previous: LabPlan | None = None,
) -> LabPlan:
    """Plan lab `name` with `node_count` nodes and `pods`; pods also in `previous` keep node and IP."""
    prefix = netns_prefix(name)
    if not 1 <= node_count <= MAX_NODES:
        raise LabPlanError(f"a lab has 1 to {MAX_NODES} nodes, not {node_count}")
    if previous is not None and previous.name != name:
        raise LabPlanError(f"the previous plan is of lab {previous.name!r}, not {name!r}")
    _check_pods(pods, node_count)

    nodes = tuple(_plan_node(prefix, index, node_count) for index in range(node_count))
    placement = _place_pods(pods, nodes, previous)
    planned_pods = tuple(
        _plan_pod(prefix, spec, nodes[node_index], address)
        for spec, (node_index, address) in zip(pods, placement, strict=True)
    )
    control_plane = ControlPlanePlan(
        netns=f"{prefix}cp",
        address=CONTROL_PLANE_ADDRESS,
        fabric_veth=CONTROL_PLANE_FABRIC_VETH,
        routes=tuple(Route(node.pod_cidr, node.fabric_address.ip) for node in nodes),
    )
    return LabPlan(
        name=name,
        netns_prefix=prefix,
        fabric_netns=f"{prefix}fabric",
        fabric_subnet=FABRIC_SUBNET,
        control_plane=control_plane,
        nodes=nodes,
        pods=planned_pods,
    )


def _check_pods(pods, node_count: int) -> None:
    seen_keys: set[str] = set()
    seen_hashes: dict[str, str] = {}
    for spec in pods:
        if spec.key in seen_keys:
            raise LabPlanError(f"pod {spec.key} is listed twice")
        seen_keys.add(spec.key)
        digest = pod_hash(spec.namespace, spec.name)
        if digest in seen_hashes:  # practically never: 40 bits
            raise LabPlanError(f"pods {seen_hashes[digest]} and {spec.key} hash alike; rename one")
        seen_hashes[digest] = spec.key
        if spec.node is not None and not 0 <= spec.node < node_count:
            raise LabPlanError(
                f"pod {spec.key} asks for node {spec.node}, but the lab has nodes 0-{node_count - 1}"
            )


def _plan_node(prefix: str, index: int, node_count: int) -> NodePlan:
    fabric_address = node_fabric_address(index)
    return NodePlan(
        index=index,
        netns=f"{prefix}node-{index}",
        pod_cidr=node_pod_cidr(index),
        bridge_address=IPv4Interface(f"{node_pod_cidr(index).network_address + 1}/24"),
        fabric_address=fabric_address,
        fabric_veth=f"veth-node-{index}",
        routes=tuple(
            Route(node_pod_cidr(other), node_fabric_address(other).ip)
            for other in range(node_count)
            if other != index
        ),
    )


def _plan_pod(prefix: str, spec: PodSpec, node: NodePlan, address: IPv4Interface) -> PodPlan:
    digest = pod_hash(spec.namespace, spec.name)
    return PodPlan(
        namespace=spec.namespace,
        name=spec.name,
        node=node.index,
        netns=pod_netns(prefix, digest),
        address=address,
        node_veth=f"veth-{digest}",
        routes=(Route(DEFAULT_ROUTE, node.bridge_address.ip),),
    )


def _place_pods(pods, nodes: tuple[NodePlan, ...], previous: LabPlan | None):
    """(node index, address) per pod: kept from `previous` where possible, else allocated."""
    kept: dict[str, tuple[int, IPv4Interface]] = {}
    if previous is not None:
        wanted = {spec.key: spec for spec in pods}
        for old in previous.pods:
            spec = wanted.get(old.key)
            if (
                spec is not None
                and old.node < len(nodes)
                and spec.node in (None, old.node)
                and _is_pod_address(nodes[old.node], old.address)
            ):
                kept[old.key] = (old.node, old.address)
    used: dict[int, set[IPv4Interface]] = {index: set() for index in range(len(nodes))}
    for node_index, address in kept.values():
        used[node_index].add(address)

    placement = []
    for spec in pods:
        if spec.key in kept:
            placement.append(kept[spec.key])
            continue
        if spec.node is not None:
            node_index = spec.node
        else:
            node_index = min(used, key=lambda index: (len(used[index]), index))
        free = (a for a in _pod_addresses(nodes[node_index]) if a not in used[node_index])
        address = next(free, None)
        if address is None:
            raise LabPlanError(f"node {node_index} has no free pod address for {spec.key}")
        used[node_index].add(address)
        placement.append((node_index, address))
    return placement


def _pod_addresses(node: NodePlan):
    """The addresses a node hands to pods, lowest first: its CIDR but network, bridge, broadcast."""
    for host in node.pod_cidr.hosts():
        if host != node.bridge_address.ip:
            yield IPv4Interface(f"{host}/{node.pod_cidr.prefixlen}")


def _is_pod_address(node: NodePlan, address: IPv4Interface) -> bool:
    return (
        address.network == node.pod_cidr
        and address.ip not in (node.pod_cidr.network_address, node.pod_cidr.broadcast_address)
        and address.ip != node.bridge_address.ip
    )
