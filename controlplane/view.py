"""The dataplane view: what every ztunnel and waypoint needs to know, computed from the resources.

``compute_view(state, config)`` is a pure function of the cluster's state (the resources from YAML,
the pods' runtime status, the Service VIPs the registry assigned) and returns a frozen
``DataplaneView``: Workloads, Services and L4 Authorizations as the ``istio.workload`` /
``istio.security`` messages discovery sends, the waypoints to run, and which identities run on which
node (for the CA). Discovery diffs two views resource by resource, so a change to one pod sends one
Workload.

The label rules (DESIGN.md section 2, as in Istio):
- enrolment: pod label ``istio.io/dataplane-mode`` (``ambient`` or ``none``) wins over the
  namespace's; another value on the pod is ignored, as istio-cni does; enrolled workloads get tunnel
  protocol HBONE, others NONE.
- waypoint: ``istio.io/use-waypoint`` on the pod (for Workloads) or the Service, else on the
  namespace; ``none`` opts out of the namespace's; ``istio.io/use-waypoint-namespace`` names another
  namespace. It applies only if that waypoint Gateway exists, serves that kind of traffic
  (``istio.io/waypoint-for`` on the Gateway, else on its GatewayClass: ``service`` (default),
  ``workload``, ``all``, ``none``), and admits the object's namespace (its HBONE listener's
  ``allowedRoutes.namespaces``: ``Same`` by default, ``All``, or ``Selector``).
- endpoints: a Service selects pods in its namespace; each Workload carries the Services it backs
  with the target port resolved (a named targetPort through the pod's container ports).
- a pod appears once it has an IP (runtime status from the lab); until then it is pending.

Each waypoint Gateway also gets a pod (``waypoint_pod``; the lab runs the waypoint process in it) and
a Service of the same name (hostname ``<name>.<ns>.svc.cluster.local``,
port 15008), whose endpoints are the waypoint's own pods (label
``gateway.networking.k8s.io/gateway-name``), as Istio's deployment controller creates.
"""

from __future__ import annotations

import socket
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from google.protobuf import any_pb2

from controlplane import authz, waypoint_config
from mesh import resources as r
from mesh.api import authorization_pb2, waypoint_pb2, workload_pb2 as wpb
from mesh.api.types import (
    ADDRESS_TYPE_URL,
    AUTHORIZATION_TYPE_URL,
    L7_POLICY_TYPE_URL,
    ROUTE_TYPE_URL,
    WASM_PLUGIN_TYPE_URL,
    pack,
)
from mesh.identity import DEFAULT_TRUST_DOMAIN, ROOT_NAMESPACE, SpiffeId
from mesh.ports import HBONE_PORT

GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
DEFAULT_DOMAIN_SUFFIX = "cluster.local"  # the cluster's DNS domain: not the trust domain, even when they match
USE_WAYPOINT_NAMESPACE = "istio.io/use-waypoint-namespace"


@dataclass(frozen=True)
class MeshConfig:
    cluster_id: str = "Kubernetes"
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    root_namespace: str = ROOT_NAMESPACE
    network: str = ""
    domain_suffix: str = DEFAULT_DOMAIN_SUFFIX  # Kubernetes' cluster domain, as in <svc>.<ns>.svc.cluster.local

    def service_hostname(self, namespace: str, name: str) -> str:
        """A Service's hostname, ``<name>.<ns>.svc.<domain suffix>``: the key of its Address and routes."""
        return f"{name}.{namespace}.svc.{self.domain_suffix}"


@dataclass(frozen=True)
class PodStatus:
    """What the lab reports about a running pod."""

    ip: str
    node: str
    ready: bool = True

    def __post_init__(self) -> None:
        try:
            socket.inet_pton(socket.AF_INET, self.ip)  # strict dotted quad; C-fast for 10k pods
        except (OSError, TypeError):
            raise ValueError(f"pod IP {self.ip!r} is not an IPv4 address") from None
        if not self.node:
            raise ValueError("a running pod needs a node")


@dataclass(frozen=True)
class ClusterState:
    """The inputs of the view. ``pods`` includes the pods of Deployments and of each waypoint;
    ``services`` includes each waypoint's Service (``waypoint_pod``, ``waypoint_service``)."""

    namespaces: Mapping[str, r.Namespace]
    pods: Mapping[tuple[str, str], r.Pod]
    services: Mapping[tuple[str, str], r.Service]
    gateways: Mapping[tuple[str, str], r.Gateway]
    policies: tuple[r.AuthorizationPolicy, ...]
    peer_authentications: tuple[r.PeerAuthentication, ...]
    pod_status: Mapping[tuple[str, str], PodStatus]
    vips: Mapping[tuple[str, str], str]  # Service (ns, name) → its cluster IP
    gateway_classes: Mapping[str, r.GatewayClass] = field(default_factory=dict)  # by name
    nodes: Mapping[str, r.Node] = field(default_factory=dict)  # by name; only those declared in YAML
    routes: tuple[r.Route, ...] = ()  # HTTPRoutes and GRPCRoutes, for the waypoints (controlplane.waypoint_config)
    wasm_plugins: tuple[r.WasmPlugin, ...] = ()  # for the waypoints too

    @classmethod
    def build(cls, resources: Iterable[r.Resource], pod_status: Mapping[tuple[str, str], PodStatus] | None = None,
              vips: Mapping[tuple[str, str], str] | None = None) -> ClusterState:
        namespaces, pods, services, gateways, policies, peer, classes, nodes = {}, {}, {}, {}, [], [], {}, {}
        routes: list[r.Route] = []
        plugins: list[r.WasmPlugin] = []
        for res in resources:
            key = (res.meta.namespace, res.meta.name)
            if isinstance(res, r.Namespace):
                namespaces[res.meta.name] = res
            elif isinstance(res, r.Pod):
                pods[key] = res
            elif isinstance(res, r.Deployment):
                pods.update(((p.meta.namespace, p.meta.name), p) for p in res.pods)
            elif isinstance(res, r.Service):
                services[key] = res
            elif isinstance(res, r.Gateway) and res.is_waypoint:
                gateways[key] = res
                pod = waypoint_pod(res)
                pods[(pod.meta.namespace, pod.meta.name)] = pod
            elif isinstance(res, r.AuthorizationPolicy):
                policies.append(res)
            elif isinstance(res, r.PeerAuthentication):
                peer.append(res)
            elif isinstance(res, r.GatewayClass):
                classes[res.meta.name] = res
            elif isinstance(res, r.Node):
                nodes[res.meta.name] = res
            elif isinstance(res, r.Route):
                routes.append(res)
            elif isinstance(res, r.WasmPlugin):
                plugins.append(res)
        for key, gateway in gateways.items():  # a Service per waypoint, unless the user declared one
            services.setdefault(key, waypoint_service(gateway))
        return cls(namespaces, pods, services, gateways, tuple(policies), tuple(peer),
                   dict(pod_status or {}), dict(vips or {}), classes, nodes, tuple(routes), tuple(plugins))

    def waypoint_for(self, gateway: r.Gateway) -> str:
        """The traffic a waypoint takes: its own label, else its GatewayClass's, else ``service``."""
        return gateway.waypoint_for(self.gateway_classes.get(gateway.gateway_class))

    def attachment_allowed(self, gateway: r.Gateway, namespace: str) -> bool:
        """Whether objects of ``namespace`` may use this waypoint (its listener's allowedRoutes)."""
        ns = self.namespaces.get(namespace)
        labels = ns.meta.labels if ns is not None else {}
        return gateway.allowed_namespaces.admits(gateway.meta.namespace, namespace, labels)


@dataclass(frozen=True)
class Waypoint:
    """A waypoint to run: one per Gateway of class istio-waypoint."""

    namespace: str
    name: str
    waypoint_for: str
    identity: SpiffeId  # the waypoint's pods run as service account <name>
    hostname: str
    pod: str  # the pod that runs it (``waypoint_pod``), in the same namespace

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class DataplaneView:
    """Computed resources, keyed by their discovery names. The messages are shared: do not mutate."""

    workloads: Mapping[str, wpb.Workload]  # uid
    services: Mapping[str, wpb.Service]  # "<ns>/<hostname>"
    authorizations: Mapping[str, authorization_pb2.Authorization]  # "<ns>/<name>"
    waypoints: Mapping[str, Waypoint]  # "<ns>/<name>"
    placements: Mapping[str, frozenset[SpiffeId]] = field(default_factory=dict)  # node → identities
    # For the waypoints only (controlplane.waypoint_config); ztunnels do not subscribe to these types.
    l7_policies: Mapping[str, waypoint_pb2.L7Policy] = field(default_factory=dict)  # "<ns>/<name>"
    routes: Mapping[str, waypoint_pb2.Route] = field(default_factory=dict)  # "<ns>/<kind>/<name>"
    wasm_plugins: Mapping[str, waypoint_pb2.WasmPlugin] = field(default_factory=dict)  # "<ns>/<name>"

    def has_pod(self, node: str, identity: SpiffeId) -> bool:
        return identity in self.placements.get(node, ())

    def resources(self) -> dict[str, dict[str, any_pb2.Any]]:
        """``{type_url: {name: Any}}``, the packed form discovery serves."""
        addresses = {uid: pack(wpb.Address(workload=w)) for uid, w in self.workloads.items()}
        addresses.update((key, pack(wpb.Address(service=s))) for key, s in self.services.items())
        return {
            ADDRESS_TYPE_URL: addresses,
            AUTHORIZATION_TYPE_URL: {key: pack(a) for key, a in self.authorizations.items()},
            L7_POLICY_TYPE_URL: {key: pack(p) for key, p in self.l7_policies.items()},
            ROUTE_TYPE_URL: {key: pack(route) for key, route in self.routes.items()},
            WASM_PLUGIN_TYPE_URL: {key: pack(plugin) for key, plugin in self.wasm_plugins.items()},
        }


def waypoint_pod(gateway: r.Gateway) -> r.Pod:
    """The pod that runs a waypoint, as Istio's deployment controller would create it: service
    account named after the Gateway, never captured itself (it speaks HBONE on its own)."""
    labels = r.frozen_map({GATEWAY_NAME_LABEL: gateway.meta.name, r.DATAPLANE_MODE: "none"})
    meta = r.Meta(f"{gateway.meta.name}-waypoint", gateway.meta.namespace, labels)
    spec = r.PodSpec(containers=(r.Container("waypoint"),), service_account=gateway.meta.name)
    return r.Pod(meta, gateway.origin, spec, owner=f"Gateway/{gateway.meta.name}")


def workload_uid(config: MeshConfig, namespace: str, name: str) -> str:
    """A pod's discovery key as istiod writes it: ``<cluster>//Pod/<namespace>/<name>``."""
    return f"{config.cluster_id}//Pod/{namespace}/{name}"


def wire_trust_domain(config: MeshConfig) -> str:
    """The trust domain as istiod puts it on a Workload: empty for the default ``cluster.local``
    (ztunnel reads empty as that default), else the mesh's own."""
    return "" if config.trust_domain == DEFAULT_TRUST_DOMAIN else config.trust_domain


def service_key(namespace: str, hostname: str) -> str:
    return f"{namespace}/{hostname}"


# ---------------------------------------------------------------- label rules (pure, table-tested)


def waypoint_ref(own: r.Meta, namespace_labels: Mapping[str, str]) -> tuple[str, str] | None:
    """``(namespace, name)`` of the waypoint that ``istio.io/use-waypoint`` asks for, if any."""
    for labels, home in ((own.labels, own.namespace), (namespace_labels, own.namespace)):
        name = labels.get(r.USE_WAYPOINT)
        if name is not None:
            return None if name == "none" else (labels.get(USE_WAYPOINT_NAMESPACE, home), name)
    return None


def serves(traffic_type: str, kind: str) -> bool:
    """Whether a waypoint of ``traffic_type`` takes traffic addressed to a ``service`` or a ``workload``."""
    return traffic_type in (kind, "all")


def _selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


class _LabelIndex:
    """Pods by (namespace, label, value): a selector is an intersection of small sets, not a scan."""

    def __init__(self, pods: Iterable[tuple[tuple[str, str], r.Pod]]) -> None:
        self._by_label: dict[tuple[str, str, str], set[tuple[str, str]]] = defaultdict(set)
        self._by_namespace: dict[str, set[tuple[str, str]]] = defaultdict(set)
        for key, pod in pods:
            self._by_namespace[key[0]].add(key)
            for label, value in pod.meta.labels.items():
                self._by_label[(key[0], label, value)].add(key)

    def select(self, namespace: str | None, selector: Mapping[str, str]) -> set[tuple[str, str]]:
        """Pods matching ``selector`` in ``namespace`` (every namespace when None)."""
        if not selector:
            if namespace is None:
                return set().union(*self._by_namespace.values())
            return set(self._by_namespace.get(namespace, ()))
        namespaces = self._by_namespace if namespace is None else (namespace,)
        found: set[tuple[str, str]] = set()
        for ns in namespaces:
            sets = sorted((self._by_label.get((ns, k, v), set()) for k, v in selector.items()), key=len)
            found |= set.intersection(*sets) if sets[0] else set()
        return found


# ---------------------------------------------------------------- the view


def _gateway_address(gateway: r.Gateway, config: MeshConfig) -> wpb.GatewayAddress:
    hostname = config.service_hostname(gateway.meta.namespace, gateway.meta.name)
    return wpb.GatewayAddress(
        hostname=wpb.NamespacedHostname(namespace=gateway.meta.namespace, hostname=hostname),
        hbone_mtls_port=HBONE_PORT,
    )


def service_waypoint(service: r.Service, state: ClusterState, config: MeshConfig) -> wpb.GatewayAddress | None:
    """The waypoint that takes the Service's traffic, as its Address says it; None when none does."""
    ns = state.namespaces.get(service.meta.namespace)
    return _waypoint_for(service.meta, ns.meta.labels if ns is not None else {}, state, "service", config)


def _waypoint_for(meta: r.Meta, ns_labels, state: ClusterState, kind: str, config: MeshConfig):
    ref = waypoint_ref(meta, ns_labels)
    gateway = state.gateways.get(ref) if ref else None
    if gateway is None or not serves(state.waypoint_for(gateway), kind):
        return None
    # As istiod: the waypoint's HBONE listener must admit the object's namespace (allowedRoutes,
    # default Same); else no waypoint, and ``ambient validate`` says why.
    if not state.attachment_allowed(gateway, meta.namespace):
        return None
    # A waypoint's own pods and Service never go through a waypoint, not even another one (as
    # Istio): its pods carry the gateway-name label, its Service has the Gateway's name.
    if (meta.namespace, meta.labels.get(GATEWAY_NAME_LABEL)) in state.gateways:
        return None
    if kind == "service" and (meta.namespace, meta.name) in state.gateways:
        return None
    return _gateway_address(gateway, config)


def _target_port(port: r.ServicePort, pod: r.Pod) -> int:
    if isinstance(port.target_port, int):
        return port.target_port
    for container in pod.spec.containers:
        for cport in container.ports:
            if cport.name == port.target_port and cport.protocol == port.protocol:  # as Kubernetes
                return cport.container_port
    return 0  # named port the pod does not have: no endpoint on that port


_APP_PROTOCOLS = {"http": wpb.HTTP11, "http2": wpb.HTTP2, "grpc": wpb.GRPC}


def app_protocol(port: r.ServicePort) -> wpb.AppProtocol:
    """The application protocol istiod puts on a Service port: from ``appProtocol`` if set, else from
    the port name's prefix before the first ``-`` (``http``, ``http2``, ``grpc``; any case). UDP and
    SCTP ports, ``grpc-web`` and any other name are UNKNOWN."""
    if port.protocol != "TCP":
        return wpb.UNKNOWN
    name = (port.app_protocol or port.name).lower()
    if name.startswith("grpc-web"):  # its own protocol to Istio, not gRPC
        return wpb.UNKNOWN
    return _APP_PROTOCOLS.get(name.partition("-")[0], wpb.UNKNOWN)


TRAFFIC_DISTRIBUTION_ANNOTATION = "networking.istio.io/traffic-distribution"  # istiod's legacy spelling
_LB = wpb.LoadBalancing
_PREFER_SAME_ZONE = (_LB.NETWORK, _LB.REGION, _LB.ZONE)
_PREFER_SAME_NODE = (_LB.NETWORK, _LB.REGION, _LB.ZONE, _LB.SUBZONE, _LB.NODE)
# trafficDistribution values istiod reads (the field, else the annotation, which is case-insensitive).
_DISTRIBUTIONS = {"PreferClose": _PREFER_SAME_ZONE, "PreferSameZone": _PREFER_SAME_ZONE,
                  "PreferSameNode": _PREFER_SAME_NODE}


def load_balancing(svc: r.Service) -> wpb.LoadBalancing | None:
    """A Service's endpoint choice as istiod maps it (``constructService``): ``internalTrafficPolicy:
    Local`` → only the client's node (STRICT NODE), which wins over ``trafficDistribution``:
    ``PreferClose``/``PreferSameZone`` → FAILOVER over NETWORK, REGION, ZONE; ``PreferSameNode`` →
    the same plus SUBZONE, NODE. A field value istiod does not know falls back to the annotation.
    ``publishNotReadyAddresses`` adds health policy ALLOW_ALL. None when nothing applies."""
    lb: wpb.LoadBalancing | None
    if svc.internal_traffic_policy == "Local":
        lb = wpb.LoadBalancing(routing_preference=[_LB.NODE], mode=_LB.STRICT)
    else:
        scopes = _DISTRIBUTIONS.get(svc.traffic_distribution)
        if scopes is None:
            annotation = svc.meta.annotations.get(TRAFFIC_DISTRIBUTION_ANNOTATION, "").lower()
            scopes = next((v for k, v in _DISTRIBUTIONS.items() if k.lower() == annotation), None)
        lb = wpb.LoadBalancing(routing_preference=scopes, mode=_LB.FAILOVER) if scopes else None
    if svc.publish_not_ready_addresses:
        lb = lb or wpb.LoadBalancing()
        lb.health_policy = _LB.ALLOW_ALL
    return lb


def locality(pod: r.Pod, node: r.Node | None) -> wpb.Locality | None:
    """As istiod: the pod's ``istio-locality`` label (``region.zone.subzone``, ``/`` also accepted),
    else its node's ``topology.kubernetes.io/region``/``zone`` and ``topology.istio.io/subzone``."""
    label = pod.meta.labels.get(r.POD_LOCALITY)
    if label:
        region, zone, subzone = (label.replace(".", "/").split("/", 2) + ["", ""])[:3]
    elif node is not None:
        labels = node.meta.labels
        region, zone, subzone = (labels.get(r.NODE_REGION, ""), labels.get(r.NODE_ZONE, ""),
                                 labels.get(r.NODE_SUBZONE, ""))
    else:
        return None
    if not (region or zone or subzone):
        return None
    return wpb.Locality(region=region, zone=zone, subzone=subzone)


def _canonical(pod: r.Pod) -> tuple[str, str, str]:
    labels = pod.meta.labels
    kind, _, owner = pod.owner.partition("/")
    workload_name = owner if kind in ("Deployment", "Gateway") else pod.meta.name
    name = (labels.get("service.istio.io/canonical-name") or labels.get("app.kubernetes.io/name")
            or labels.get("app") or workload_name)
    revision = (labels.get("service.istio.io/canonical-revision") or labels.get("app.kubernetes.io/version")
                or labels.get("version") or "latest")
    return name, revision, workload_name


def waypoint_service(gateway: r.Gateway) -> r.Service:
    """The Service in front of a waypoint's pods (port 15008), as Istio's deployment controller
    creates it; it gets a VIP like any ClusterIP Service."""
    meta = r.Meta(gateway.meta.name, gateway.meta.namespace, r.frozen_map({GATEWAY_NAME_LABEL: gateway.meta.name}))
    return r.Service(meta, gateway.origin, r.frozen_map({GATEWAY_NAME_LABEL: gateway.meta.name}),
                     (r.ServicePort(HBONE_PORT, HBONE_PORT, "mesh"),))


def compute_view(state: ClusterState, config: MeshConfig = MeshConfig()) -> DataplaneView:
    no_labels: Mapping[str, str] = MappingProxyType({})

    def ns_labels(namespace: str) -> Mapping[str, str]:
        ns = state.namespaces.get(namespace)
        return ns.meta.labels if ns is not None else no_labels

    running = {key: pod for key, pod in state.pods.items() if key in state.pod_status}
    index = _LabelIndex(running.items())

    # Services, and for each running pod the services it backs.
    services: dict[str, wpb.Service] = {}
    backs: dict[tuple[str, str], dict[str, wpb.PortList]] = defaultdict(dict)
    for (namespace, name), svc in state.services.items():
        hostname = config.service_hostname(namespace, name)
        key = service_key(namespace, hostname)
        vip = state.vips.get((namespace, name))
        services[key] = wpb.Service(
            name=name, namespace=namespace, hostname=hostname,
            addresses=[wpb.NetworkAddress(network=config.network, address=socket.inet_aton(vip))]
            if vip else [],
            # Every port of the Service, as istiod lists them (a named targetPort is resolved per workload).
            ports=[wpb.Port(service_port=p.port, target_port=p.target_port if isinstance(p.target_port, int) else 0,
                            app_protocol=app_protocol(p))
                   for p in svc.ports],
            waypoint=_waypoint_for(svc.meta, ns_labels(namespace), state, "service", config),
            load_balancing=load_balancing(svc),
        )
        if not svc.selector:
            continue
        for pod_key in index.select(namespace, svc.selector):
            pod = running[pod_key]
            ports = [wpb.Port(service_port=p.port, target_port=t) for p in svc.ports
                     if p.protocol == "TCP" and (t := _target_port(p, pod))]
            backs[pod_key][key] = wpb.PortList(ports=ports)

    # Authorizations: user policies, then converted PeerAuthentications.
    authorizations: dict[str, authorization_pb2.Authorization] = {}
    attached: dict[tuple[str, str], list[str]] = defaultdict(list)
    for policy in state.policies:
        translated = authz.translate_policy(policy, config.root_namespace)
        if translated is None:
            continue
        name = authz.policy_key(policy.meta.namespace, policy.meta.name)
        authorizations[name] = translated
        if translated.scope == authorization_pb2.WORKLOAD_SELECTOR and policy.selector:  # as scope_of says
            in_namespace = None if policy.meta.namespace == config.root_namespace else policy.meta.namespace
            for pod_key in index.select(in_namespace, policy.selector):
                attached[pod_key].append(name)
    _attach_peer_authentications(state, config, running, authorizations, attached)

    workloads: dict[str, wpb.Workload] = {}
    placements: dict[str, set[SpiffeId]] = defaultdict(set)
    trust_domain = wire_trust_domain(config)
    identities: dict[tuple[str, str], SpiffeId] = {}
    for (namespace, name), pod in state.pods.items():
        identity = identities.get((namespace, pod.spec.service_account))
        if identity is None:  # validated once per service account, not per pod
            identity = identities[(namespace, pod.spec.service_account)] = SpiffeId(
                config.trust_domain, namespace, pod.spec.service_account)
        status = state.pod_status.get((namespace, name))
        node = status.node if status else pod.spec.node_name
        if node:
            placements[node].add(identity)
        if status is None:
            continue
        labels = ns_labels(namespace)
        canonical_name, revision, workload_name = _canonical(pod)
        uid = workload_uid(config, namespace, name)
        workloads[uid] = wpb.Workload(
            uid=uid, name=name, namespace=namespace,
            addresses=[socket.inet_aton(status.ip)],  # IPv4, checked by PodStatus
            network=config.network,
            tunnel_protocol=wpb.HBONE if r.is_enrolled(pod.meta.labels, labels) else wpb.NONE,
            trust_domain=trust_domain,
            service_account=pod.spec.service_account,
            waypoint=_waypoint_for(pod.meta, labels, state, "workload", config),
            node=node, locality=locality(pod, state.nodes.get(node)),
            canonical_name=canonical_name, canonical_revision=revision,
            workload_type=wpb.POD, workload_name=workload_name,  # as istiod: every pod is a POD
            services=backs.get((namespace, name), {}),
            authorization_policies=sorted(attached.get((namespace, name), ())),
            status=wpb.HEALTHY if status.ready else wpb.UNHEALTHY,
            cluster_id=config.cluster_id,
        )

    waypoints = {}
    for (namespace, name), gateway in state.gateways.items():
        waypoint = Waypoint(namespace, name, state.waypoint_for(gateway),
                            SpiffeId(config.trust_domain, namespace, name),
                            config.service_hostname(namespace, name), waypoint_pod(gateway).meta.name)
        waypoints[waypoint.key] = waypoint

    return DataplaneView(
        MappingProxyType(workloads), MappingProxyType(services), MappingProxyType(authorizations),
        MappingProxyType(waypoints), MappingProxyType({n: frozenset(ids) for n, ids in placements.items()}),
        MappingProxyType(dict(waypoint_config.l7_policies(state, config))),
        MappingProxyType(dict(waypoint_config.routes(state, config))),
        MappingProxyType(dict(waypoint_config.wasm_plugins(state, config))),
    )


def _attach_peer_authentications(state, config, running, authorizations, attached) -> None:
    mesh_policy = authz.pick_policy(p for p in state.peer_authentications
                               if p.meta.namespace == config.root_namespace and not p.selector)
    converted: dict[tuple, str | None] = {}
    by_namespace: dict[str, list[r.PeerAuthentication]] = defaultdict(list)
    for policy in state.peer_authentications:
        by_namespace[policy.meta.namespace].append(policy)
    for (namespace, name), pod in running.items():
        candidates = by_namespace.get(namespace, ())
        namespace_policy = authz.pick_policy(p for p in candidates if not p.selector)  # as Istio: {} is none
        workload_policy = authz.pick_policy(p for p in candidates
                                            if p.selector and _selects(p.selector, pod.meta.labels))
        decided = (workload_policy, namespace_policy, mesh_policy)
        memo = tuple(map(id, decided))  # the policies are alive for the whole computation
        key = converted.get(memo, "")
        if key == "":  # pods mostly share a few combinations: translate each once
            mode, source = authz.effective_mtls(*decided)
            translated = authz.translate_mtls(source, mode) if source is not None else None
            key = authz.policy_key(translated.namespace, translated.name) if translated else None
            if translated:
                authorizations.setdefault(key, translated)
            converted[memo] = key
        if key:
            attached[(namespace, name)].append(key)
