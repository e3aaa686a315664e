"""The mesh's resources: typed, frozen models of the Kubernetes YAML users already have.

Same ``apiVersion``/``kind`` as Kubernetes, Istio and the Gateway API (DESIGN.md section 2). Only the
fields the mesh acts on are modelled; ``mesh.parse`` builds these from YAML, reports everything else,
and never hands out a half-valid object. Every resource remembers where it came from (``Origin``)
so that later checks (``controlplane.validate``) can point at the file and line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar

# Labels and values the mesh acts on (Istio's names).
DATAPLANE_MODE = "istio.io/dataplane-mode"  # ambient | none
# Locality: a pod's own label (region/zone/subzone, "." or "/" separated), else its node's labels.
POD_LOCALITY = "istio-locality"
NODE_REGION = "topology.kubernetes.io/region"
NODE_ZONE = "topology.kubernetes.io/zone"
NODE_SUBZONE = "topology.istio.io/subzone"
DRY_RUN = "istio.io/dry-run"
USE_WAYPOINT = "istio.io/use-waypoint"
WAYPOINT_FOR = "istio.io/waypoint-for"  # service | workload | all | none
WAYPOINT_CLASS = "istio-waypoint"
WAYPOINT_FOR_VALUES = ("service", "workload", "all", "none")


def frozen_map(data: Mapping[str, str] | None = None) -> Mapping[str, str]:
    return MappingProxyType(dict(data or {}))


@dataclass(frozen=True)
class Origin:
    file: str
    line: int


@dataclass(frozen=True)
class Meta:
    name: str
    namespace: str  # "" for cluster-scoped kinds
    labels: Mapping[str, str] = field(default_factory=frozen_map)
    annotations: Mapping[str, str] = field(default_factory=frozen_map)


@dataclass(frozen=True)
class Resource:
    meta: Meta
    origin: Origin

    kind: ClassVar[str] = ""  # set on each subclass by @_kind

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.meta.namespace, self.meta.name)

    @property
    def label(self) -> str:
        ns = f"{self.meta.namespace}/" if self.meta.namespace else ""
        return f"{self.kind} {ns}{self.meta.name}"


def _kind(name: str):
    def decorate(cls):
        cls.kind = name
        return cls
    return decorate


@_kind("Namespace")
@dataclass(frozen=True)
class Namespace(Resource):
    pass


@_kind("Node")
@dataclass(frozen=True)
class Node(Resource):
    """Cluster-scoped. Read for its topology labels: the locality of the pods it runs."""


@_kind("ServiceAccount")
@dataclass(frozen=True)
class ServiceAccount(Resource):
    pass


@dataclass(frozen=True)
class ContainerPort:
    container_port: int
    name: str = ""
    protocol: str = "TCP"


PROBE_ACTIONS = ("tcpSocket", "httpGet", "exec")


@dataclass(frozen=True)
class Probe:
    """A container's readiness or liveness probe (Kubernetes names and defaults); ``lab.probes`` runs it."""

    action: str  # one of PROBE_ACTIONS
    port: int | str = 0  # a number, or the name of a container port (tcpSocket, httpGet)
    path: str = "/"  # httpGet
    command: tuple[str, ...] = ()  # exec
    initial_delay_seconds: float = 0
    period_seconds: float = 10
    timeout_seconds: float = 1
    success_threshold: int = 1
    failure_threshold: int = 3


# The downward API's fieldRef paths the lab fills in (``metadata.labels['k']`` and
# ``metadata.annotations['k']`` are read with their key); any other path is a parse error.
FIELD_PATHS = ("metadata.name", "metadata.namespace", "metadata.uid", "spec.nodeName", "spec.serviceAccountName",
               "status.podIP", "status.hostIP")
FIELD_PATH_MAPS = ("metadata.labels", "metadata.annotations")


@dataclass(frozen=True)
class EnvRef:
    """An ``env`` entry's ``valueFrom``: a downward-API ``field_path`` (``metadata.labels['app']``), or a
    ConfigMap's key (``config_map``/``key``; ``optional`` leaves the variable unset when either is missing)."""

    name: str
    field_path: str = ""
    config_map: str = ""
    key: str = ""
    optional: bool = False


@dataclass(frozen=True)
class EnvFrom:
    """An ``envFrom`` entry: every key of a ConfigMap, each prefixed with ``prefix``."""

    config_map: str
    prefix: str = ""
    optional: bool = False


@dataclass(frozen=True)
class Container:
    name: str
    image: str = ""
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=frozen_map)  # the literal values
    ports: tuple[ContainerPort, ...] = ()
    readiness_probe: Probe | None = None
    liveness_probe: Probe | None = None
    # ``env`` entries with valueFrom (their names are not in ``env``: the later entry of a name wins, as in
    # Kubernetes), and ``envFrom``, under both in precedence.
    env_refs: tuple[EnvRef, ...] = ()
    env_from: tuple[EnvFrom, ...] = ()
    # securityContext, the container's over the pod's: who its processes run as (None: root, as the
    # lab runs images that name no user), and whether root is refused.
    run_as_user: int | None = None
    run_as_group: int | None = None
    run_as_non_root: bool = False


@dataclass(frozen=True)
class PodSpec:
    containers: tuple[Container, ...]
    service_account: str = "default"
    node_name: str = ""
    restart_policy: str = "Always"  # one of RESTART_POLICIES; a Deployment's pods are Always only


RESTART_POLICIES = ("Always", "OnFailure", "Never")


@_kind("Pod")
@dataclass(frozen=True)
class Pod(Resource):
    spec: PodSpec
    owner: str = ""  # "Deployment/<name>" for pods generated from a Deployment


@_kind("ConfigMap")
@dataclass(frozen=True)
class ConfigMap(Resource):
    """Its ``data`` only (``binaryData`` cannot be an environment variable), read by pods' env."""

    data: Mapping[str, str] = field(default_factory=frozen_map)


@_kind("Deployment")
@dataclass(frozen=True)
class Deployment(Resource):
    replicas: int
    selector: Mapping[str, str]
    template_labels: Mapping[str, str]
    template: PodSpec
    pods: tuple[Pod, ...]  # generated, with stable names


@dataclass(frozen=True)
class ServicePort:
    port: int
    target_port: int | str  # a number, or the name of a container port
    name: str = ""
    protocol: str = "TCP"
    app_protocol: str = ""


@_kind("Service")
@dataclass(frozen=True)
class Service(Resource):
    selector: Mapping[str, str] | None  # None: no selector (endpoints managed elsewhere)
    ports: tuple[ServicePort, ...]
    cluster_ip: str = ""  # "" to be assigned; "None" for headless
    internal_traffic_policy: str = "Cluster"  # or "Local": only endpoints on the client's node
    traffic_distribution: str = ""  # e.g. "PreferClose"
    publish_not_ready_addresses: bool = False  # endpoints take traffic before they are ready

    @property
    def hostname(self) -> str:
        return f"{self.meta.name}.{self.meta.namespace}.svc.cluster.local"


@dataclass(frozen=True)
class LabelRequirement:
    """One ``matchExpressions`` entry of a Kubernetes label selector."""

    key: str
    operator: str  # In | NotIn | Exists | DoesNotExist
    values: tuple[str, ...] = ()

    def holds(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return labels.get(self.key) in self.values
        if self.operator == "NotIn":  # as Kubernetes: an absent label is "not in"
            return labels.get(self.key) not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels  # DoesNotExist


@dataclass(frozen=True)
class AllowedNamespaces:
    """A listener's ``allowedRoutes.namespaces``: which namespaces may attach to it (Gateway API:
    ``Same`` by default, ``All``, or ``Selector`` over the namespace's labels)."""

    source: str = "Same"  # the field "from"
    match_labels: Mapping[str, str] = field(default_factory=frozen_map)
    match_expressions: tuple[LabelRequirement, ...] = ()

    def admits(self, own_namespace: str, namespace: str, namespace_labels: Mapping[str, str]) -> bool:
        if self.source == "All":
            return True
        if self.source == "Selector":  # an empty selector selects every namespace, as Kubernetes
            return (all(namespace_labels.get(k) == v for k, v in self.match_labels.items())
                    and all(e.holds(namespace_labels) for e in self.match_expressions))
        return namespace == own_namespace


@dataclass(frozen=True)
class Listener:
    name: str
    port: int
    protocol: str
    allowed_namespaces: AllowedNamespaces = AllowedNamespaces()


WAYPOINT_LISTENER = ("mesh", 15008, "HBONE")  # name, port, protocol: what a waypoint Gateway declares


@_kind("Gateway")
@dataclass(frozen=True)
class Gateway(Resource):
    gateway_class: str
    listeners: tuple[Listener, ...]

    @property
    def is_waypoint(self) -> bool:
        return self.gateway_class == WAYPOINT_CLASS

    def waypoint_for(self, gateway_class: GatewayClass | None = None) -> str:
        """The traffic the waypoint takes, as istiod reads it: the Gateway's ``istio.io/waypoint-for``
        label, else its GatewayClass's, else ``service``."""
        class_labels = gateway_class.meta.labels if gateway_class is not None else {}
        return self.meta.labels.get(WAYPOINT_FOR, class_labels.get(WAYPOINT_FOR, "service"))

    @property
    def allowed_namespaces(self) -> AllowedNamespaces:
        """Who may use this waypoint from another namespace: the HBONE listener on 15008 says (as
        istiod's ``makeAllowedRoutes``); without one, only its own namespace."""
        for listener in self.listeners:
            if (listener.protocol, listener.port) == ("HBONE", 15008):
                return listener.allowed_namespaces
        return AllowedNamespaces()


@_kind("GatewayClass")
@dataclass(frozen=True)
class GatewayClass(Resource):
    """Cluster-scoped. Read for its ``istio.io/waypoint-for`` label, which its waypoints inherit."""

    controller: str


@dataclass(frozen=True)
class ObjectRef:
    """A reference from a policy or route to another object (Gateway API ``targetRefs``/``parentRefs``)."""

    kind: str
    name: str
    group: str = ""
    namespace: str = ""  # "" means the referring object's namespace
    port: int | None = None
    section_name: str = ""  # a parentRef's listener (Gateway) or port name; "" for the whole parent


@dataclass(frozen=True)
class StringMatchSpec:
    type: str  # Exact | PathPrefix | RegularExpression (Gateway API names)
    value: str


@dataclass(frozen=True)
class HeaderMatchSpec:
    name: str
    value: str
    type: str = "Exact"


@dataclass(frozen=True)
class GRPCMethodMatch:
    """A GRPCRoute's ``method`` match: Exact names the service and/or the method (at least one);
    RegularExpression matches them as RE2 patterns (an empty one: any)."""

    type: str = "Exact"  # Exact | RegularExpression
    service: str = ""
    method: str = ""


@dataclass(frozen=True)
class RouteMatch:
    path: StringMatchSpec | None = None
    headers: tuple[HeaderMatchSpec, ...] = ()
    query_params: tuple[HeaderMatchSpec, ...] = ()
    method: str = ""  # an HTTP method (HTTPRoute)
    grpc_method: GRPCMethodMatch | None = None  # GRPCRoute


@dataclass(frozen=True)
class HeaderModifier:
    set: Mapping[str, str] = field(default_factory=frozen_map)
    add: Mapping[str, str] = field(default_factory=frozen_map)
    remove: tuple[str, ...] = ()


@dataclass(frozen=True)
class BackendRef:
    name: str
    port: int | None
    weight: int = 1
    namespace: str = ""
    kind: str = "Service"
    group: str = ""  # "" is the core group (a Service)


@dataclass(frozen=True)
class PathModifier:
    """A redirect's or rewrite's ``path``: the whole path, or the part its PathPrefix match matched."""

    type: str  # ReplaceFullPath | ReplacePrefixMatch
    value: str


@dataclass(frozen=True)
class RequestRedirect:
    """Answered by the waypoint itself; an empty field keeps the request's own value."""

    scheme: str = ""
    hostname: str = ""
    path: PathModifier | None = None
    port: int | None = None
    status_code: int = 302


@dataclass(frozen=True)
class URLRewrite:
    hostname: str = ""
    path: PathModifier | None = None


@dataclass(frozen=True)
class RequestMirror:
    backend: BackendRef
    percent: float = 100.0  # ``percent``, or ``fraction`` as a percentage


@dataclass(frozen=True)
class RouteRule:
    matches: tuple[RouteMatch, ...]
    backends: tuple[BackendRef, ...]
    request_headers: HeaderModifier | None = None
    response_headers: HeaderModifier | None = None
    timeout_seconds: float | None = None  # timeouts.request
    backend_timeout_seconds: float | None = None  # timeouts.backendRequest
    retry_attempts: int = 0
    retry_codes: tuple[int, ...] = ()
    retry_backoff_seconds: float | None = None
    name: str = ""
    redirect: RequestRedirect | None = None
    rewrite: URLRewrite | None = None
    mirrors: tuple[RequestMirror, ...] = ()
    retry: bool = False  # the rule has a ``retry`` (else the waypoint applies Istio's default)


@dataclass(frozen=True)
class Route(Resource):
    """What an HTTPRoute and a GRPCRoute share; a GRPCRoute's matches carry ``grpc_method``."""

    parents: tuple[ObjectRef, ...]
    hostnames: tuple[str, ...]
    rules: tuple[RouteRule, ...]
    created: str = ""  # metadata.creationTimestamp as written (Gateway API's tie-break), "" if absent


@_kind("HTTPRoute")
@dataclass(frozen=True)
class HTTPRoute(Route):
    pass


@_kind("GRPCRoute")
@dataclass(frozen=True)
class GRPCRoute(Route):
    pass


@dataclass(frozen=True)
class Source:
    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()
    request_principals: tuple[str, ...] = ()
    not_request_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()
    ip_blocks: tuple[str, ...] = ()
    not_ip_blocks: tuple[str, ...] = ()
    remote_ip_blocks: tuple[str, ...] = ()
    not_remote_ip_blocks: tuple[str, ...] = ()
    # Istio's ServiceAccountMatch: "ns/sa", or "sa" in the policy's own namespace.
    service_accounts: tuple[str, ...] = ()
    not_service_accounts: tuple[str, ...] = ()
    # The peer's trust domain (exact, or "*"): Istio's trustDomains/notTrustDomains.
    trust_domains: tuple[str, ...] = ()
    not_trust_domains: tuple[str, ...] = ()
    # Fields the mesh does not understand (as written, e.g. "serviceAcounts"): see Rule.unknown.
    unknown: tuple[str, ...] = ()


@dataclass(frozen=True)
class Operation:
    hosts: tuple[str, ...] = ()
    not_hosts: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    not_ports: tuple[int, ...] = ()
    methods: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    not_paths: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()  # fields the mesh does not understand: see Rule.unknown

    L7_FIELDS = ("hosts", "not_hosts", "methods", "not_methods", "paths", "not_paths")

    def l7_fields(self) -> tuple[str, ...]:
        return tuple(f for f in self.L7_FIELDS if getattr(self, f))


@dataclass(frozen=True)
class Condition:
    key: str
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rule:
    sources: tuple[Source, ...] = ()
    operations: tuple[Operation, ...] = ()
    conditions: tuple[Condition, ...] = ()
    # Paths inside the rule (e.g. "from[0].source.serviceAcounts") of every field the mesh does not
    # understand. Such a field may only make the rule match less: an ALLOW rule with one never
    # matches; a DENY rule keeps as wide as its known fields (controlplane.authz).
    unknown: tuple[str, ...] = ()


@_kind("AuthorizationPolicy")
@dataclass(frozen=True)
class AuthorizationPolicy(Resource):
    action: str  # ALLOW | DENY | AUDIT | CUSTOM
    rules: tuple[Rule, ...]
    selector: Mapping[str, str] | None = None  # None: namespace-wide (or root-namespace-wide)
    target_refs: tuple[ObjectRef, ...] = ()
    dry_run: bool = False  # annotation istio.io/dry-run: "true": logged, never enforced

    @property
    def enforced_at_l7(self) -> bool:
        """With targetRefs the waypoint enforces it; otherwise the destination ztunnel (L4)."""
        return bool(self.target_refs)


@_kind("PeerAuthentication")
@dataclass(frozen=True)
class PeerAuthentication(Resource):
    mode: str  # UNSET | DISABLE | PERMISSIVE | STRICT
    selector: Mapping[str, str] | None = None
    port_modes: Mapping[int, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class WasmEnv:
    """One ``vmConfig.env`` entry: a value given inline, or (``from_host``) the waypoint's own
    environment variable of that name, left unset in the VM when the waypoint has none (Envoy's HOST)."""

    name: str
    value: str = ""
    from_host: bool = False


@dataclass(frozen=True)
class TrafficSelector:
    """One ``match`` entry: the traffic a WasmPlugin runs for (any entry may match)."""

    mode: str = "UNDEFINED"  # UNDEFINED | CLIENT | SERVER | CLIENT_AND_SERVER (Istio's WorkloadMode)
    ports: tuple[int, ...] = ()  # none: every port


@_kind("WasmPlugin")
@dataclass(frozen=True)
class WasmPlugin(Resource):
    """``extensions.istio.io/v1alpha1`` WasmPlugin, validated (``mesh.parse_wasm``): only what a
    waypoint can run is ever built (a ``file://`` or ``http(s)://`` module, an HTTP plugin)."""

    url: str  # file:///abs/path.wasm, or http(s)://... (then sha256 is set)
    target_refs: tuple[ObjectRef, ...] = ()
    sha256: str = ""  # 64 lowercase hex digits, or "" (file:// only)
    plugin_config: bytes = b""  # pluginConfig as canonical JSON (sorted keys, no spaces); b"" when absent or {}
    plugin_name: str = ""
    phase: str = "UNSPECIFIED_PHASE"  # UNSPECIFIED_PHASE | AUTHN | AUTHZ | STATS
    priority: int = 0
    fail_strategy: str = "FAIL_CLOSE"  # FAIL_CLOSE | FAIL_OPEN | FAIL_RELOAD
    vm_env: tuple[WasmEnv, ...] = ()
    match: tuple[TrafficSelector, ...] = ()  # none: all traffic
    image_pull_policy: str = "UNSPECIFIED_POLICY"
    selector: Mapping[str, str] | None = None  # for sidecars only: a waypoint never applies it (Istio)

    @property
    def fail_open(self) -> bool:
        """FAIL_RELOAD fails closed too: the waypoint rebuilds a failed VM for the next request anyway."""
        return self.fail_strategy == "FAIL_OPEN"


KINDS: dict[str, type[Resource]] = {
    cls.kind: cls
    for cls in (Namespace, ServiceAccount, Pod, Deployment, Service, Gateway, HTTPRoute, GRPCRoute,
                AuthorizationPolicy, PeerAuthentication, WasmPlugin)
}


def is_enrolled(pod_labels: Mapping[str, str], namespace_labels: Mapping[str, str]) -> bool:
    """Whether a pod is in the ambient mesh, as istio-cni decides: the pod or its namespace says
    ``ambient`` and the pod does not say ``none``. Any other value (``Ambient``, ``sidecar``) is no
    opinion: it neither enrols nor opts out. One rule for the control plane's view, the lab and the
    node agent's CNI decision."""
    pod_mode = pod_labels.get(DATAPLANE_MODE)
    if pod_mode == "none":
        return False
    return pod_mode == "ambient" or namespace_labels.get(DATAPLANE_MODE) == "ambient"
