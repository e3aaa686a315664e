"""YAML documents → frozen resources (``mesh.resources``), with every problem reported.

One function per kind reads its fields through ``mesh.source.Field``, which records a problem at
the exact path when something is missing or mistyped. A document with any error yields no resource:
later stages only ever see valid objects. Unknown kinds are reported (warning) and skipped; unknown
fields of known kinds warn; fields Kubernetes defines that the mesh does not act on are ignored
quietly, so real manifests do not drown in warnings.

The core kinds are here; routes are ``mesh.parse_routes``, Istio's kinds ``mesh.parse_istio`` and
``mesh.parse_wasm`` (WasmPlugin), and the field readers they share ``mesh.parse_fields``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from mesh import resources as r
from mesh.identity import InvalidSpiffeId, validate_k8s_name
from mesh.parse_env import config_map, env_from, env_ref
from mesh.parse_fields import labels_selector, port_field
from mesh.parse_istio import authorization_policy, peer_authentication
from mesh.parse_routes import grpc_route, http_route
from mesh.parse_wasm import wasm_plugin
from mesh.source import (
    MAX_FILE_BYTES,
    Code,
    Document,
    Field,
    Problem,
    Severity,
    YamlError,
    load_documents,
    yaml_files,
)
from mesh.watched_file import read_at_most

GATEWAY_API = ("gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1beta1")
ISTIO_SECURITY = ("security.istio.io/v1", "security.istio.io/v1beta1")
API_VERSIONS: dict[str, tuple[str, ...]] = {
    "Namespace": ("v1",), "Node": ("v1",), "ServiceAccount": ("v1",), "Pod": ("v1",), "Service": ("v1",),
    "ConfigMap": ("v1",),
    "Deployment": ("apps/v1",), "Gateway": GATEWAY_API, "GatewayClass": GATEWAY_API, "HTTPRoute": GATEWAY_API,
    "GRPCRoute": ("gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1alpha2"),
    "AuthorizationPolicy": ISTIO_SECURITY, "PeerAuthentication": ISTIO_SECURITY,
    "WasmPlugin": ("extensions.istio.io/v1alpha1",),
}
CLUSTER_SCOPED = {"Namespace", "Node", "GatewayClass"}

# Istio kinds an ambient mesh of ztunnel and waypoints does without: read, skipped with one warning
# that says what the mesh uses instead (never an error: real Istio manifests carry them).
REPLACED_KINDS: dict[tuple[str, str], str] = {
    ("networking.istio.io", "Gateway"): "ingress gateways are not run; a Gateway API Gateway of class "
                                        "istio-waypoint is the mesh's waypoint",
    ("networking.istio.io", "VirtualService"): "use an HTTPRoute whose parentRefs name the Service "
                                               "(applied by its waypoint)",
    ("networking.istio.io", "DestinationRule"): "traffic between enrolled pods is always HBONE mTLS; use an "
                                                "HTTPRoute's timeouts and retry on the waypoint",
    ("networking.istio.io", "ServiceEntry"): "the mesh routes only Kubernetes Services; other destinations "
                                             "are reached directly",
    ("networking.istio.io", "Sidecar"): "ambient mode has no sidecars; each node's ztunnel serves its "
                                        "enrolled pods",
    ("networking.istio.io", "WorkloadEntry"): "only Kubernetes pods are workloads of the mesh",
    ("networking.istio.io", "WorkloadGroup"): "only Kubernetes pods are workloads of the mesh",
    ("networking.istio.io", "EnvoyFilter"): "ztunnel and the waypoint are not configured through Envoy; use "
                                            "a WasmPlugin targeting the waypoint",
    ("networking.istio.io", "ProxyConfig"): "ztunnel is configured by its command line",
    ("telemetry.istio.io", "Telemetry"): "ztunnel always reports Istio's TCP metrics and writes its access log",
    ("security.istio.io", "RequestAuthentication"): "JWT authentication is not supported (it needs a waypoint)",
}
PROTOCOLS = ("TCP", "UDP", "SCTP")

# Kubernetes fields that are valid but that the mesh does not act on: accepted without a warning.
_META_IGNORED = {"uid", "resourceVersion", "generation", "creationTimestamp", "managedFields",
                 "ownerReferences", "finalizers", "generateName", "deletionTimestamp", "selfLink"}
_POD_SPEC_IGNORED = {"terminationGracePeriodSeconds", "volumes", "securityContext",
                     "affinity", "tolerations", "nodeSelector", "dnsPolicy", "hostname", "subdomain",
                     "priorityClassName", "schedulerName", "imagePullSecrets", "automountServiceAccountToken"}
_CONTAINER_IGNORED = {"resources", "imagePullPolicy", "startupProbe",
                      "volumeMounts", "securityContext", "workingDir", "lifecycle", "terminationMessagePath",
                      "terminationMessagePolicy", "stdin", "tty"}
_SERVICE_IGNORED = {"type", "sessionAffinity", "clusterIPs", "ipFamilies", "ipFamilyPolicy",
                    "externalTrafficPolicy"}


@dataclass
class ParseResult:
    resources: list[r.Resource] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity is Severity.ERROR]


def parse_paths(paths: list[Path]) -> ParseResult:
    result = ParseResult()
    for path in yaml_files(paths):
        try:
            data = read_at_most(path, MAX_FILE_BYTES)  # a huge file is refused unread, as the watchers do
            if data is None:
                raise OSError(f"larger than the {MAX_FILE_BYTES} bytes a manifest file may hold")
            text = data.decode()
        except (OSError, UnicodeDecodeError) as exc:
            result.problems.append(Problem(Severity.ERROR, str(path), 1, "", "", f"cannot read: {exc}", Code.YAML))
            continue
        part = parse_text(text, str(path))
        result.resources += part.resources
        result.problems += part.problems
    return result


def parse_text(text: str, file: str) -> ParseResult:
    result = ParseResult()
    try:
        documents = load_documents(text, file, result.problems)
    except YamlError as exc:
        result.problems.append(exc.problem)
        return result
    for doc in documents:
        resource = parse_document(doc, result.problems)
        if resource is not None:
            result.resources.append(resource)
    return result


def parse_document(doc: Document, problems: list[Problem]) -> r.Resource | None:
    """The resource in ``doc``, or None if it has errors or is of a kind the mesh ignores."""
    errors_before = sum(p.severity is Severity.ERROR for p in problems)
    top = Field(doc, (), doc.data, problems)
    if not top.mapping({"apiVersion", "kind", "metadata", "spec", "status", "data", "binaryData", "immutable"}):
        return None
    kind = top["kind"].str(required=True)
    api_version = top["apiVersion"].str(required=True)
    if kind is None or api_version is None:
        return None
    replaced = REPLACED_KINDS.get((api_version.split("/")[0], kind))
    if replaced is not None:
        top["kind"].report(f"{kind} ({api_version}) is not used in ambient mode: {replaced}; skipped",
                           Severity.WARNING, code=Code.REPLACED_KIND)
        return None
    if kind not in API_VERSIONS:
        top["kind"].report(f"kind {kind} ({api_version}) is not used by the mesh; skipped", Severity.WARNING,
                           code=Code.UNUSED_KIND)
        return None
    if api_version not in API_VERSIONS[kind]:
        expected = " or ".join(API_VERSIONS[kind])
        top["apiVersion"].report(f"{api_version} is not an apiVersion of {kind} (expected {expected})")
        return None
    meta = _meta(top["metadata"], kind, top.resource)
    if meta is None:
        return None
    origin = r.Origin(doc.file, doc.line_of(()))
    # A ConfigMap has no spec: its data is beside its metadata.
    resource = _PARSERS[kind](top if kind == "ConfigMap" else top["spec"], meta, origin)
    if sum(p.severity is Severity.ERROR for p in problems) > errors_before:
        return None
    return resource


def _name(f: Field, what: str, *, required: bool = True) -> str | None:
    value = f.str(required=required)
    if value is None:
        return None
    try:
        return validate_k8s_name(what, value)
    except InvalidSpiffeId as exc:
        f.report(str(exc))
        return None


def _meta(f: Field, kind: str, label: list[str]) -> r.Meta | None:
    """Also names the resource in ``label`` (shared with every Field of the document), so that
    problems found from here on say which resource they are in."""
    if not f.mapping({"name", "namespace", "labels", "annotations"} | _META_IGNORED, required=True):
        return None
    name = _name(f["name"], "name")
    if kind in CLUSTER_SCOPED:
        if f["namespace"].present:
            f["namespace"].warn(f"{kind} is cluster-scoped; namespace ignored")
        namespace = ""
    else:
        namespace = _name(f["namespace"], "namespace", required=False) or "default"
    if name is None:
        return None
    label[0] = f"{kind} {namespace + '/' if namespace else ''}{name}"
    return r.Meta(name, namespace, r.frozen_map(f["labels"].str_map()), r.frozen_map(f["annotations"].str_map()))


# ---------------------------------------------------------------- core kinds

def _namespace(spec: Field, meta: r.Meta, origin: r.Origin) -> r.Namespace:
    return r.Namespace(meta, origin)


def _node(spec: Field, meta: r.Meta, origin: r.Origin) -> r.Node:
    return r.Node(meta, origin)  # its spec (podCIDR, taints...) is the cluster's business, not the mesh's


def _service_account(spec: Field, meta: r.Meta, origin: r.Origin) -> r.ServiceAccount:
    return r.ServiceAccount(meta, origin)


# A port name as Kubernetes checks it (IANA_SVC_NAME, RFC 6335): at most 15 lowercase letters, digits
# and '-', with at least one letter, and no '-' at either end or twice in a row.
_PORT_NAME = re.compile(r"(?=.*[a-z])[a-z0-9](?:-?[a-z0-9])*")
_PROBE_HANDLERS = {"tcpSocket": {"port", "host"}, "httpGet": {"path", "port", "host", "scheme", "httpHeaders"},
                   "exec": {"command"}}
_PROBE_FIELDS = set(_PROBE_HANDLERS) | {"grpc", "initialDelaySeconds", "periodSeconds", "timeoutSeconds",
                                        "successThreshold", "failureThreshold"}


def _probeport_field(f: Field, ports: list[r.ContainerPort]) -> int | str | None:
    """A probe's port: a number, or the name of one of the container's ports."""
    name = f.value
    if not isinstance(name, str) or name.isdigit():
        return port_field(f)
    if len(name) > 15 or not _PORT_NAME.fullmatch(name):
        f.report(f"{name!r} is not a port number or a port name (at most 15 lowercase letters, digits and '-', "
                 "with at least one letter)")
        return None
    names = [p.name for p in ports if p.name]
    if name not in names:
        f.report(f"no container port named {name!r}"
                 + (f" (named ports: {', '.join(names)})" if names else " (the container names no ports)"))
        return None
    return name


def _probe_int(f: Field, *, default: int, low: int) -> int:
    value = f.int(default=default)
    if value is not None and value < low:
        f.report(f"{value} must be at least {low}")
    return default if value is None or value < low else value


def _probe(f: Field, ports: list[r.ContainerPort]) -> r.Probe | None:
    """A readiness or liveness probe, checked as Kubernetes checks it, keeping only what the lab can run: it
    probes the pod's IP from the host (no ``host``), over plain HTTP, and runs no gRPC probes."""
    if not f.mapping(_PROBE_FIELDS):
        return None
    if f["grpc"].present:
        f["grpc"].report("grpc probes are not supported")
    given = [action for action in r.PROBE_ACTIONS if f[action].present]
    if len(given) > 1:
        f.report(f"has {' and '.join(given)}: a probe has exactly one of {', '.join(r.PROBE_ACTIONS)}")
    elif not given and not f["grpc"].present:
        f.report(f"needs one of {', '.join(r.PROBE_ACTIONS)}")
    probe = partial(
        r.Probe,
        initial_delay_seconds=_probe_int(f["initialDelaySeconds"], default=0, low=0),
        period_seconds=_probe_int(f["periodSeconds"], default=10, low=1),
        timeout_seconds=_probe_int(f["timeoutSeconds"], default=1, low=1),
        success_threshold=_probe_int(f["successThreshold"], default=1, low=1),
        failure_threshold=_probe_int(f["failureThreshold"], default=3, low=1),
    )
    if len(given) != 1:
        return None
    action = given[0]
    handler = f[action]
    if not handler.mapping(_PROBE_HANDLERS[action]):
        return None
    if action == "exec":
        command = handler["command"]
        if not command.present:
            command.report("is required")
        elif command.value == []:
            command.report("must not be empty")
        return probe(action, command=command.str_list())
    if handler["host"].present:
        handler["host"].report("is not supported: the lab probes the pod's IP")
    port = _probeport_field(handler["port"], ports)
    if action == "tcpSocket":
        return probe(action, port=port or 0)
    if handler["scheme"].str(default="HTTP", choices=("HTTP", "HTTPS")) == "HTTPS":
        handler["scheme"].report("only HTTP probes are supported")
    path = handler["path"].str(default="/")
    path = "/" if path is None else path
    if not path.startswith("/"):
        handler["path"].report(f"{path!r} must start with '/'")
    elif not re.fullmatch(r"[!-~]+", path):  # what a request line can carry
        handler["path"].report(f"{path!r} must be printable ASCII without spaces (percent-encode the rest)")
    return probe(action, port=port or 0, path=path)


MAX_ID = 2**32 - 2  # a uid or gid; (uid_t)-1 means "unchanged" to the kernel


def _security_context(f: Field, inherited: tuple[int | None, int | None, bool] = (None, None, False),
                      ) -> tuple[int | None, int | None, bool]:
    """(runAsUser, runAsGroup, runAsNonRoot) of a securityContext over ``inherited`` (the pod's).
    Its other fields (capabilities, seccomp, ...) are the container runtime's, not read here."""
    if not f.present or not isinstance(f.value, dict):
        return inherited
    user = f["runAsUser"].int(low=0, high=MAX_ID)
    group = f["runAsGroup"].int(low=0, high=MAX_ID)
    non_root = f["runAsNonRoot"].bool(default=inherited[2]) if f["runAsNonRoot"].present else inherited[2]
    return (inherited[0] if user is None else user, inherited[1] if group is None else group, non_root)


def _container(f: Field, pod_context: tuple[int | None, int | None, bool] = (None, None, False),
               ) -> r.Container | None:
    if not f.mapping({"name", "image", "command", "args", "env", "envFrom", "ports", "readinessProbe",
                      "livenessProbe"} | _CONTAINER_IGNORED):
        return None
    env: dict[str, str | r.EnvRef] = {}  # in order, a later entry of a name replacing an earlier one
    for item in f["env"].items():
        if item.mapping({"name", "value", "valueFrom"}) and (name := item["name"].str(required=True)):
            env.pop(name, None)
            if item["valueFrom"].present:
                if item["value"].present:
                    item["value"].report("may not be set together with valueFrom")
                if (ref := env_ref(item["valueFrom"], name)) is not None:
                    env[name] = ref
            else:
                env[name] = item["value"].str(default="")
    sources = tuple(each for item in f["envFrom"].items() if (each := env_from(item)) is not None)
    ports = []
    for item in f["ports"].items():
        if item.mapping({"containerPort", "name", "protocol", "hostPort", "hostIP"}):
            port = port_field(item["containerPort"])
            protocol = item["protocol"].str(default="TCP", choices=PROTOCOLS)
            if port is not None:
                ports.append(r.ContainerPort(port, item["name"].str(default=""), protocol))
    probe = _probe(f["readinessProbe"], ports) if f["readinessProbe"].present else None
    liveness = _probe(f["livenessProbe"], ports) if f["livenessProbe"].present else None
    if liveness is not None and liveness.success_threshold != 1:
        f["livenessProbe"]["successThreshold"].report("must be 1 for a liveness probe")
    user, group, non_root = _security_context(f["securityContext"], pod_context)
    return r.Container(
        name=_name(f["name"], "container name") or "", image=f["image"].str(default=""),
        command=f["command"].str_list(), args=f["args"].str_list(),
        env=r.frozen_map({k: v for k, v in env.items() if isinstance(v, str)}), ports=tuple(ports),
        readiness_probe=probe, liveness_probe=liveness, run_as_user=user, run_as_group=group,
        run_as_non_root=non_root, env_refs=tuple(v for v in env.values() if isinstance(v, r.EnvRef)),
        env_from=sources,
    )


def _pod_spec(f: Field, *, owner: str = "") -> r.PodSpec | None:
    """A pod's spec; ``owner`` is the kind whose template it is ("Deployment"), whose pods restart Always only."""
    if not f.mapping({"containers", "serviceAccountName", "serviceAccount", "nodeName", "initContainers",
                      "restartPolicy"} | _POD_SPEC_IGNORED, required=True):
        return None
    restart_policy = f["restartPolicy"].str(default="Always", choices=r.RESTART_POLICIES) or "Always"
    if owner and restart_policy != "Always":
        f["restartPolicy"].report(f"{restart_policy!r} is not allowed in a {owner}'s pod template: only Always "
                                  "(as the API server refuses others)")
    if f["initContainers"].present:
        f["initContainers"].warn("init containers are not run by the lab")
    pod_context = _security_context(f["securityContext"])
    containers = tuple(c for item in f["containers"].items(required=True) if (c := _container(item, pod_context)))
    account = _name(f["serviceAccountName"], "service account", required=False) \
        or _name(f["serviceAccount"], "service account", required=False) or "default"
    return r.PodSpec(containers, account, _name(f["nodeName"], "node name", required=False) or "", restart_policy)


def _pod(spec: Field, meta: r.Meta, origin: r.Origin) -> r.Pod | None:
    pod_spec = _pod_spec(spec)
    return r.Pod(meta, origin, pod_spec) if pod_spec else None


def _deployment(spec: Field, meta: r.Meta, origin: r.Origin) -> r.Deployment | None:
    if not spec.mapping({"replicas", "selector", "template", "strategy", "revisionHistoryLimit",
                         "minReadySeconds", "progressDeadlineSeconds", "paused"}, required=True):
        return None
    replicas = spec["replicas"].int(default=1, low=0, high=1000)
    selector = labels_selector(spec["selector"])
    if selector is None:
        spec["selector"].report("is required (matchLabels)")
    template = spec["template"]
    if not template.mapping({"metadata", "spec"}, required=True):
        return None
    template_meta = template["metadata"]
    template_meta.mapping({"labels", "annotations", "name", "namespace"} | _META_IGNORED)
    labels = template_meta["labels"].str_map()
    annotations = template_meta["annotations"].str_map()
    pod_spec = _pod_spec(template["spec"], owner="Deployment")
    if selector and any(labels.get(k) != v for k, v in selector.items()):
        template_meta["labels"].report("does not match spec.selector.matchLabels")
        return None
    if pod_spec is None or selector is None or replicas is None:
        return None
    # Stable names, like a ReplicaSet's: the template's hash, then the replica index. Editing
    # the template renames (replaces) the pods, as a rollout would.
    canonical = json.dumps(template.value, sort_keys=True, default=str).encode()
    template_hash = hashlib.sha256(canonical).hexdigest()[:10]
    pod_labels = r.frozen_map({**labels, "pod-template-hash": template_hash})
    pods = tuple(
        r.Pod(r.Meta(f"{meta.name}-{template_hash}-{i}", meta.namespace, pod_labels, r.frozen_map(annotations)),
              origin, pod_spec, owner=f"Deployment/{meta.name}")
        for i in range(replicas)
    )
    return r.Deployment(meta, origin, replicas, r.frozen_map(selector), r.frozen_map(labels), pod_spec, pods)


def _service(spec: Field, meta: r.Meta, origin: r.Origin) -> r.Service | None:
    if not spec.mapping({"selector", "clusterIP", "ports", "internalTrafficPolicy", "trafficDistribution",
                         "publishNotReadyAddresses"} | _SERVICE_IGNORED, required=True):
        return None
    cluster_ip = spec["clusterIP"].str(default="")
    if cluster_ip not in ("", "None"):
        try:
            if ipaddress.ip_address(cluster_ip).version != 4:
                spec["clusterIP"].report("only IPv4 cluster IPs are supported")
        except ValueError:
            spec["clusterIP"].report(f"{cluster_ip!r} is not an IP address")
    ports = []
    items = spec["ports"].items(required=True)
    for item in items:
        if not item.mapping({"name", "port", "targetPort", "protocol", "appProtocol", "nodePort"}):
            continue
        port = port_field(item["port"])
        target = item["targetPort"].value
        if target is None:
            target = port
        elif isinstance(target, str) and not target.isdigit():
            target = _name(item["targetPort"], "target port name")
        else:
            target = port_field(item["targetPort"])
        name = item["name"].str(default="")
        if len(items) > 1 and not name:
            item["name"].report("is required when a Service has more than one port")
        if port is not None and target is not None:
            ports.append(r.ServicePort(port, target, name, item["protocol"].str(default="TCP", choices=PROTOCOLS),
                                       item["appProtocol"].str(default="")))
    selector = spec["selector"].str_map() if spec["selector"].present else None
    internal = spec["internalTrafficPolicy"].str(default="Cluster", choices=("Cluster", "Local"))
    distribution = spec["trafficDistribution"].str(default="")
    publish_not_ready = spec["publishNotReadyAddresses"].bool(default=False)
    return r.Service(meta, origin, r.frozen_map(selector) if selector is not None else None, tuple(ports), cluster_ip,
                     internal, distribution, bool(publish_not_ready))


# ---------------------------------------------------------------- Gateway API

def _gateway(spec: Field, meta: r.Meta, origin: r.Origin) -> r.Gateway | None:
    if not spec.mapping({"gatewayClassName", "listeners", "addresses", "infrastructure"}, required=True):
        return None
    gateway_class = spec["gatewayClassName"].str(required=True)
    listeners = []
    for item in spec["listeners"].items(required=True):
        if item.mapping({"name", "port", "protocol", "hostname", "tls", "allowedRoutes"}):
            name, port = item["name"].str(required=True), port_field(item["port"])
            protocol = item["protocol"].str(required=True)
            allowed = _allowed_namespaces(item["allowedRoutes"])
            if name and port and protocol and allowed:
                listeners.append(r.Listener(name, port, protocol, allowed))
    if gateway_class is None:
        return None
    gateway = r.Gateway(meta, origin, gateway_class, tuple(listeners))
    if not gateway.is_waypoint:
        what = " (an ingress gateway)" if gateway_class == "istio" else ""
        spec["gatewayClassName"].report(
            f"class {gateway_class!r}{what} is not run by the mesh, nor are the routes attached to it: only "
            f"{r.WAYPOINT_CLASS!r} gateways are", Severity.WARNING, code=Code.GATEWAY_NOT_RUN)
        return gateway
    _check_waypoint_for(spec, meta)
    if not any((lis.name, lis.port, lis.protocol) == r.WAYPOINT_LISTENER for lis in listeners):
        spec["listeners"].report("a waypoint needs the listener {name: mesh, port: 15008, protocol: HBONE}")
    return gateway


def _check_waypoint_for(at: Field, meta: r.Meta) -> None:
    value = meta.labels.get(r.WAYPOINT_FOR)
    if value is not None and value not in r.WAYPOINT_FOR_VALUES:
        at.report(f"label {r.WAYPOINT_FOR}={value!r} is not one of {', '.join(r.WAYPOINT_FOR_VALUES)}")


_SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


def _allowed_namespaces(f: Field) -> r.AllowedNamespaces | None:
    """``allowedRoutes`` (its ``kinds`` are not checked: a waypoint takes any route kind it runs)."""
    if not f.present:
        return r.AllowedNamespaces()
    if not f.mapping({"namespaces", "kinds"}):
        return None
    namespaces = f["namespaces"]
    if not namespaces.present:
        return r.AllowedNamespaces()
    if not namespaces.mapping({"from", "selector"}):
        return None
    source = namespaces["from"].str(default="Same", choices=("All", "Same", "Selector"))
    selector = namespaces["selector"]
    if source == "Selector" and not selector.present:
        selector.report("is required when from is Selector")
        return None
    if not selector.present or not selector.mapping({"matchLabels", "matchExpressions"}):
        return r.AllowedNamespaces(source or "Same")
    expressions = []
    for item in selector["matchExpressions"].items():
        if not item.mapping({"key", "operator", "values"}):
            continue
        key = item["key"].str(required=True)
        operator = item["operator"].str(required=True, choices=_SELECTOR_OPERATORS)
        values = item["values"].str_list()
        if operator in ("In", "NotIn") and not values:
            item["values"].report(f"must not be empty for {operator}")
        elif operator in ("Exists", "DoesNotExist") and values:
            item["values"].report(f"must be empty for {operator}")
        if key and operator:
            expressions.append(r.LabelRequirement(key, operator, values))
    return r.AllowedNamespaces(source or "Same", r.frozen_map(selector["matchLabels"].str_map()), tuple(expressions))


def _gateway_class(spec: Field, meta: r.Meta, origin: r.Origin) -> r.GatewayClass | None:
    if not spec.mapping({"controllerName", "parametersRef", "description"}, required=True):
        return None
    controller = spec["controllerName"].str(required=True)
    if meta.name == r.WAYPOINT_CLASS:
        _check_waypoint_for(spec, meta)
    return r.GatewayClass(meta, origin, controller) if controller else None



_PARSERS = {
    "ConfigMap": config_map,
    "Namespace": _namespace, "Node": _node, "ServiceAccount": _service_account, "Pod": _pod, "Deployment": _deployment,
    "Service": _service, "Gateway": _gateway, "GatewayClass": _gateway_class, "HTTPRoute": http_route,
    "GRPCRoute": grpc_route, "AuthorizationPolicy": authorization_policy, "PeerAuthentication": peer_authentication,
    "WasmPlugin": wasm_plugin,
}
