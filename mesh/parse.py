"""YAML documents → frozen resources (``mesh.resources``), with every problem reported.

One function per kind reads its fields through ``mesh.source.Field``, which records a problem at
the exact path when something is missing or mistyped. A document with any error yields no resource:
later stages only ever see valid objects. Unknown kinds are reported (warning) and skipped; unknown
fields of known kinds warn; fields Kubernetes defines that the mesh does not act on are ignored
quietly, so real manifests do not drown in warnings.
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
_POD_SPEC_IGNORED = {"restartPolicy", "terminationGracePeriodSeconds", "volumes", "securityContext",
                     "affinity", "tolerations", "nodeSelector", "dnsPolicy", "hostname", "subdomain",
                     "priorityClassName", "schedulerName", "imagePullSecrets", "automountServiceAccountToken"}
_CONTAINER_IGNORED = {"resources", "imagePullPolicy", "livenessProbe", "startupProbe",
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
    if not top.mapping({"apiVersion", "kind", "metadata", "spec", "status", "data"}):
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
    resource = _PARSERS[kind](top["spec"], meta, origin)
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


def _port(f: Field, *, required: bool = True, value: object = None) -> int | None:
    """A port given as a number or, as Istio's policy fields have it, a numeric string.
    ``value`` overrides the field's value (for ports that are mapping keys)."""
    value = f.value if value is None else value
    shown = value
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, str) or isinstance(value, bool):
        f.report(f"{shown!r} is not a port number")
        return None
    if value is None:
        if required:
            f.report("is required")
        return None
    if not isinstance(value, int):
        f.report(f"expected a port number, got {value!r}")
        return None
    if not 1 <= value <= 65535:
        f.report(f"{value} is not a port number (1-65535)")
        return None
    return value


def _labels_selector(f: Field) -> dict[str, str] | None:
    """``selector: {matchLabels: {...}}`` (Istio policies, Deployments); None when absent."""
    if not f.present:
        return None
    if not f.mapping({"matchLabels", "matchExpressions"}):
        return None
    if f["matchExpressions"].present:
        f["matchExpressions"].report("matchExpressions are not supported; use matchLabels")
    return f["matchLabels"].str_map()


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


def _probe_port(f: Field, ports: list[r.ContainerPort]) -> int | str | None:
    """A probe's port: a number, or the name of one of the container's ports."""
    name = f.value
    if not isinstance(name, str) or name.isdigit():
        return _port(f)
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
    """A readiness probe, checked as Kubernetes checks it, keeping only what the lab can run: it
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
    port = _probe_port(handler["port"], ports)
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
    if not f.mapping({"name", "image", "command", "args", "env", "ports", "readinessProbe"} | _CONTAINER_IGNORED):
        return None
    env: dict[str, str] = {}
    for item in f["env"].items():
        if item.mapping({"name", "value", "valueFrom"}) and (name := item["name"].str(required=True)):
            if item["valueFrom"].present:
                item["valueFrom"].warn("valueFrom is not supported; the variable is left unset")
            else:
                env[name] = item["value"].str(default="")
    ports = []
    for item in f["ports"].items():
        if item.mapping({"containerPort", "name", "protocol", "hostPort", "hostIP"}):
            port = _port(item["containerPort"])
            protocol = item["protocol"].str(default="TCP", choices=PROTOCOLS)
            if port is not None:
                ports.append(r.ContainerPort(port, item["name"].str(default=""), protocol))
    probe = _probe(f["readinessProbe"], ports) if f["readinessProbe"].present else None
    user, group, non_root = _security_context(f["securityContext"], pod_context)
    return r.Container(
        name=_name(f["name"], "container name") or "", image=f["image"].str(default=""),
        command=f["command"].str_list(), args=f["args"].str_list(), env=r.frozen_map(env), ports=tuple(ports),
        readiness_probe=probe, run_as_user=user, run_as_group=group, run_as_non_root=non_root,
    )


def _pod_spec(f: Field) -> r.PodSpec | None:
    if not f.mapping({"containers", "serviceAccountName", "serviceAccount", "nodeName", "initContainers"}
                     | _POD_SPEC_IGNORED, required=True):
        return None
    if f["initContainers"].present:
        f["initContainers"].warn("init containers are not run by the lab")
    pod_context = _security_context(f["securityContext"])
    containers = tuple(c for item in f["containers"].items(required=True) if (c := _container(item, pod_context)))
    account = _name(f["serviceAccountName"], "service account", required=False) \
        or _name(f["serviceAccount"], "service account", required=False) or "default"
    return r.PodSpec(containers, account, _name(f["nodeName"], "node name", required=False) or "")


def _pod(spec: Field, meta: r.Meta, origin: r.Origin) -> r.Pod | None:
    pod_spec = _pod_spec(spec)
    return r.Pod(meta, origin, pod_spec) if pod_spec else None


def _deployment(spec: Field, meta: r.Meta, origin: r.Origin) -> r.Deployment | None:
    if not spec.mapping({"replicas", "selector", "template", "strategy", "revisionHistoryLimit",
                         "minReadySeconds", "progressDeadlineSeconds", "paused"}, required=True):
        return None
    replicas = spec["replicas"].int(default=1, low=0, high=1000)
    selector = _labels_selector(spec["selector"])
    if selector is None:
        spec["selector"].report("is required (matchLabels)")
    template = spec["template"]
    if not template.mapping({"metadata", "spec"}, required=True):
        return None
    template_meta = template["metadata"]
    template_meta.mapping({"labels", "annotations", "name", "namespace"} | _META_IGNORED)
    labels = template_meta["labels"].str_map()
    annotations = template_meta["annotations"].str_map()
    pod_spec = _pod_spec(template["spec"])
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
        port = _port(item["port"])
        target = item["targetPort"].value
        if target is None:
            target = port
        elif isinstance(target, str) and not target.isdigit():
            target = _name(item["targetPort"], "target port name")
        else:
            target = _port(item["targetPort"])
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

def _object_ref(f: Field, *, default_kind: str = "", default_group: str = "", with_port: bool = False
                ) -> r.ObjectRef | None:
    """A Gateway API reference; without ``default_kind`` the kind must be given."""
    known = {"group", "kind", "name", "namespace", "sectionName"} | ({"port"} if with_port else set())
    if not f.mapping(known):
        return None
    name = f["name"].str(required=True)
    kind = f["kind"].str(required=not default_kind, default=default_kind)
    port = _port(f["port"], required=False) if with_port else None
    if name is None or kind is None:
        return None
    return r.ObjectRef(kind, name, f["group"].str(default=default_group) or "", f["namespace"].str(default="") or "",
                       port, f["sectionName"].str(default="") or "")


def _gateway(spec: Field, meta: r.Meta, origin: r.Origin) -> r.Gateway | None:
    if not spec.mapping({"gatewayClassName", "listeners", "addresses", "infrastructure"}, required=True):
        return None
    gateway_class = spec["gatewayClassName"].str(required=True)
    listeners = []
    for item in spec["listeners"].items(required=True):
        if item.mapping({"name", "port", "protocol", "hostname", "tls", "allowedRoutes"}):
            name, port = item["name"].str(required=True), _port(item["port"])
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


_DURATION = re.compile(r"^(?:\d{1,5}(?:h|ms|m|s)){1,4}$")
_DURATION_PART = re.compile(r"(\d{1,5})(h|ms|m|s)")
_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def _duration(f: Field) -> float | None:
    """A Gateway API duration (GEP-2257): ``10s``, ``500ms``, ``1m30s``."""
    text = f.str()
    if text is None:
        return None
    if not _DURATION.match(text):
        f.report(f"{text!r} is not a duration like 10s, 500ms or 1m30s")
        return None
    return sum(int(n) * _SECONDS[unit] for n, unit in _DURATION_PART.findall(text))


def _header_matches(f: Field) -> tuple[r.HeaderMatchSpec, ...]:
    result = []
    for item in f.items():
        if item.mapping({"type", "name", "value"}):
            name, value = item["name"].str(required=True), item["value"].str(required=True)
            kind = item["type"].str(default="Exact", choices=("Exact", "RegularExpression"))
            if name and value is not None:
                result.append(r.HeaderMatchSpec(name, value, kind))
    return tuple(result)


_HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")


def _route_match(f: Field) -> r.RouteMatch | None:
    if not f.mapping({"path", "headers", "queryParams", "method"}):
        return None
    path = None
    if f["path"].mapping({"type", "value"}):
        kind = f["path"]["type"].str(default="PathPrefix", choices=("Exact", "PathPrefix", "RegularExpression"))
        value = f["path"]["value"].str(default="/")
        if kind != "RegularExpression" and not value.startswith("/"):
            f["path"]["value"].report(f"{value!r} must start with '/'")
        path = r.StringMatchSpec(kind, value)
    method = f["method"].str(default="", choices=_HTTP_METHODS)
    return r.RouteMatch(path, _header_matches(f["headers"]), _header_matches(f["queryParams"]), method)


def _grpc_match(f: Field) -> r.RouteMatch | None:
    """A GRPCRoute match: ``method`` (service and/or method) and ``headers``."""
    if not f.mapping({"method", "headers"}):
        return None
    grpc_method = None
    m = f["method"]
    if m.mapping({"type", "service", "method"}):
        kind = m["type"].str(default="Exact", choices=("Exact", "RegularExpression"))
        service, method = m["service"].str(default=""), m["method"].str(default="")
        if kind == "Exact":
            if not service and not method:  # as Gateway API's validation: one of them at least
                m.report("an Exact method match needs service or method")
            for name, value in (("service", service), ("method", method)):
                if "/" in value:
                    m[name].report(f"{value!r} must not contain '/'")
        else:
            for name, value in (("service", service), ("method", method)):
                try:
                    re.compile(value)
                except re.error as exc:
                    m[name].report(f"{value!r} is not a regular expression: {exc}")
        grpc_method = r.GRPCMethodMatch(kind, service, method)
    return r.RouteMatch(headers=_header_matches(f["headers"]), grpc_method=grpc_method)


def _header_modifier(f: Field) -> r.HeaderModifier | None:
    if not f.mapping({"set", "add", "remove"}, required=True):
        return None
    pairs: dict[str, dict[str, str]] = {}
    for op in ("set", "add"):
        pairs[op] = {}
        for item in f[op].items():
            if item.mapping({"name", "value"}) and (name := item["name"].str(required=True)):
                pairs[op][name] = item["value"].str(required=True) or ""
    return r.HeaderModifier(r.frozen_map(pairs["set"]), r.frozen_map(pairs["add"]), f["remove"].str_list())


_BACKEND_FIELDS = {"group", "kind", "name", "namespace", "port"}


def _backend_object(f: Field, *, weight: int = 1, required: bool = True) -> r.BackendRef | None:
    """A BackendObjectReference (a backendRef without weight and filters; a mirror's ``backendRef``)."""
    name = f["name"].str(required=True)
    kind = f["kind"].str(default="Service") or "Service"
    group = f["group"].str(default="") or ""
    # Gateway API: the port is required when the backend is a Service.
    port = _port(f["port"], required=kind == "Service" and group in ("", "core") and required)
    if name is None:
        return None
    return r.BackendRef(name, port, weight, f["namespace"].str(default="") or "", kind, group)


def _path_modifier(f: Field, matches: tuple[r.RouteMatch, ...]) -> r.PathModifier | None:
    if not f.mapping({"type", "replaceFullPath", "replacePrefixMatch"}):
        return None
    kind = f["type"].str(required=True, choices=("ReplaceFullPath", "ReplacePrefixMatch"))
    if kind is None:
        return None
    key = "replaceFullPath" if kind == "ReplaceFullPath" else "replacePrefixMatch"
    other = "replacePrefixMatch" if kind == "ReplaceFullPath" else "replaceFullPath"
    if f[other].present:
        f[other].report(f"must not be set with type {kind}")
    value = f[key].str(required=True)
    if value is None:
        return None
    if not value.startswith("/"):
        f[key].report(f"{value!r} must start with '/'")
    # Gateway API: ReplacePrefixMatch replaces what a PathPrefix match matched, so every match of the
    # rule must be one.
    if kind == "ReplacePrefixMatch" and any(m.path is None or m.path.type != "PathPrefix" for m in matches):
        f["type"].report("ReplacePrefixMatch needs every match of the rule to be a PathPrefix path match")
    return r.PathModifier(kind, value)


def _redirect(f: Field, matches: tuple[r.RouteMatch, ...]) -> r.RequestRedirect | None:
    if not f.mapping({"scheme", "hostname", "path", "port", "statusCode"}, required=True):
        return None
    return r.RequestRedirect(
        f["scheme"].str(default="", choices=("http", "https")),
        f["hostname"].str(default=""),
        _path_modifier(f["path"], matches) if f["path"].present else None,
        _port(f["port"], required=False),
        _choice_int(f["statusCode"], 302, (301, 302)),
    )


def _choice_int(f: Field, default: int, choices: tuple[int, ...]) -> int:
    value = f.int(default=default)
    if value is not None and value not in choices:
        f.report(f"{value} is not one of {', '.join(map(str, choices))}")
    return default if value is None or value not in choices else value


def _rewrite(f: Field, matches: tuple[r.RouteMatch, ...]) -> r.URLRewrite | None:
    if not f.mapping({"hostname", "path"}, required=True):
        return None
    return r.URLRewrite(f["hostname"].str(default=""),
                        _path_modifier(f["path"], matches) if f["path"].present else None)


def _mirror(f: Field) -> r.RequestMirror | None:
    """``backendRef`` and ``percent`` or ``fraction`` (numerator/denominator, default 100): a share
    of the requests, copied to the backend without waiting for its answer."""
    if not f.mapping({"backendRef", "percent", "fraction"}, required=True):
        return None
    backend = None
    if f["backendRef"].mapping(_BACKEND_FIELDS, required=True):
        backend = _backend_object(f["backendRef"])
    percent = 100.0
    if f["percent"].present and f["fraction"].present:
        f.report("percent and fraction are mutually exclusive")
    elif f["percent"].present:
        percent = float(f["percent"].int(default=100, low=0, high=100) or 0)
    elif f["fraction"].mapping({"numerator", "denominator"}):
        numerator = f["fraction"]["numerator"].int(required=True, low=0)
        denominator = f["fraction"]["denominator"].int(default=100, low=1)
        if numerator is not None and denominator is not None:
            if numerator > denominator:
                f["fraction"].report(f"numerator {numerator} is more than denominator {denominator}")
            percent = 100.0 * min(numerator, denominator) / denominator
    return r.RequestMirror(backend, percent) if backend else None


# Filters each route kind has, by type: the field that holds the filter's settings.
_FILTER_FIELDS = {"RequestHeaderModifier": "requestHeaderModifier", "ResponseHeaderModifier": "responseHeaderModifier",
                  "RequestMirror": "requestMirror", "RequestRedirect": "requestRedirect", "URLRewrite": "urlRewrite",
                  "ExtensionRef": "extensionRef", "CORS": "cors", "ExternalAuth": "externalAuth"}
_HTTP_FILTERS = ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror", "RequestRedirect", "URLRewrite")
_GRPC_FILTERS = ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror")


@dataclass
class _Filters:
    request_headers: r.HeaderModifier | None = None
    response_headers: r.HeaderModifier | None = None
    redirect: r.RequestRedirect | None = None
    rewrite: r.URLRewrite | None = None
    mirrors: list[r.RequestMirror] = field(default_factory=list)


def _filters(f: Field, supported: tuple[str, ...], matches: tuple[r.RouteMatch, ...]) -> _Filters:
    """A rule's ``filters``. A type the mesh does not run (ExtensionRef, CORS...) is an error, as
    Gateway API asks (a route must not be served without a filter it names); so is a type given
    twice, other than RequestMirror, and a redirect together with a rewrite."""
    result = _Filters()
    seen: set[str] = set()
    for item in f.items():
        if not item.mapping({"type"} | set(_FILTER_FIELDS.values())):
            continue
        kind = item["type"].str(required=True)
        if kind is None:
            continue
        if kind not in supported:
            item["type"].report(f"filter {kind} is not supported ({', '.join(supported)})")
            continue
        if kind in seen and kind != "RequestMirror":
            item["type"].report(f"filter {kind} is given twice; a rule takes it once")
            continue
        seen.add(kind)
        for other, name in _FILTER_FIELDS.items():
            if other != kind and item[name].present:
                item[name].report(f"does not belong to a filter of type {kind}")
        settings = item[_FILTER_FIELDS[kind]]
        if kind == "RequestHeaderModifier":
            result.request_headers = _header_modifier(settings)
        elif kind == "ResponseHeaderModifier":
            result.response_headers = _header_modifier(settings)
        elif kind == "RequestRedirect":
            result.redirect = _redirect(settings, matches)
        elif kind == "URLRewrite":
            result.rewrite = _rewrite(settings, matches)
        elif (mirror := _mirror(settings)) is not None:
            result.mirrors.append(mirror)
    if "RequestRedirect" in seen and "URLRewrite" in seen:
        f.report("RequestRedirect and URLRewrite cannot both be used in one rule")
    return result


def _backend_refs(f: Field) -> tuple[r.BackendRef, ...]:
    backends = []
    for item in f.items():
        if not item.mapping(_BACKEND_FIELDS | {"weight", "filters"}):
            continue
        if item["filters"].present and item["filters"].value != []:
            # Not carried to the waypoint (its Backend has no filters): refused rather than ignored,
            # so a header a backend relies on is never silently missing.
            item["filters"].report("filters on a backendRef are not supported; put them in the rule's filters")
        weight = item["weight"].int(default=1, low=0, high=1_000_000)
        backend = _backend_object(item, weight=weight or 0)
        if backend is not None and weight is not None:
            backends.append(backend)
    return tuple(backends)


def _route_rule(f: Field, grpc: bool = False) -> r.RouteRule | None:
    known = {"name", "matches", "filters", "backendRefs", "sessionPersistence"}
    if not f.mapping(known if grpc else known | {"timeouts", "retry"}):
        return None
    parse_match = _grpc_match if grpc else _route_match
    matches = tuple(m for item in f["matches"].items() if (m := parse_match(item))) or (r.RouteMatch(),)
    filters = _filters(f["filters"], _GRPC_FILTERS if grpc else _HTTP_FILTERS, matches)
    backends = _backend_refs(f["backendRefs"])
    if filters.redirect is not None and backends:
        f["backendRefs"].report("a rule with a RequestRedirect filter answers itself: it takes no backendRefs")
    timeouts = f["timeouts"]
    timeouts.mapping({"request", "backendRequest"})
    retry = f["retry"]
    retry.mapping({"attempts", "codes", "backoff"})
    codes = tuple(c for item in retry["codes"].items() if (c := item.int(required=True, low=400, high=599)))
    return r.RouteRule(
        matches, backends, filters.request_headers, filters.response_headers,
        _duration(timeouts["request"]), _duration(timeouts["backendRequest"]),
        retry["attempts"].int(default=0, low=0, high=100) or 0, codes, _duration(retry["backoff"]),
        name=f["name"].str(default=""), redirect=filters.redirect, rewrite=filters.rewrite,
        mirrors=tuple(filters.mirrors), retry=retry.present,
    )


def _created(spec: Field) -> str:
    """``metadata.creationTimestamp`` as written (YAML reads an unquoted one as a datetime)."""
    meta = spec.doc.data.get("metadata") if isinstance(spec.doc.data, dict) else None
    value = meta.get("creationTimestamp") if isinstance(meta, dict) else None
    if value is None:
        return ""
    return value.isoformat().replace("+00:00", "Z") if hasattr(value, "isoformat") else str(value)


def _route(spec: Field, meta: r.Meta, origin: r.Origin, cls: type[r.HTTPRoute] | type[r.GRPCRoute]):
    if not spec.mapping({"parentRefs", "hostnames", "rules"}, required=True):
        return None
    parents = tuple(p for item in spec["parentRefs"].items(required=True)
                    if (p := _object_ref(item, default_kind="Gateway", default_group="gateway.networking.k8s.io",
                                         with_port=True)))
    if spec["parentRefs"].value == []:
        spec["parentRefs"].report("needs at least one parent (a Service, for the waypoint)")
    grpc = cls is r.GRPCRoute
    rules = tuple(rule for item in spec["rules"].items() if (rule := _route_rule(item, grpc)))
    return cls(meta, origin, parents, spec["hostnames"].str_list(), rules, _created(spec))


def _http_route(spec: Field, meta: r.Meta, origin: r.Origin) -> r.HTTPRoute | None:
    return _route(spec, meta, origin, r.HTTPRoute)


def _grpc_route(spec: Field, meta: r.Meta, origin: r.Origin) -> r.GRPCRoute | None:
    return _route(spec, meta, origin, r.GRPCRoute)


# ---------------------------------------------------------------- Istio

def _target_refs(spec: Field) -> tuple[r.ObjectRef, ...]:
    """``targetRefs``, plus the older singular ``targetRef``."""
    fields = spec["targetRefs"].items() + ([spec["targetRef"]] if spec["targetRef"].present else [])
    return tuple(ref for item in fields if (ref := _object_ref(item)))


def _cidrs(f: Field) -> tuple[str, ...]:
    result = []
    for item in f.items():
        value = item.str(required=True)
        if value is None:
            continue
        try:
            ipaddress.ip_network(value, strict=False)
            result.append(value)
        except ValueError:
            item.report(f"{value!r} is not an IP address or CIDR block")
    return tuple(result)


def _ports(f: Field) -> tuple[int, ...]:
    return tuple(p for item in f.items() if (p := _port(item)))


_SOURCE_FIELDS = {"principals", "notPrincipals", "requestPrincipals", "notRequestPrincipals", "namespaces",
                  "notNamespaces", "ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks",
                  "serviceAccounts", "notServiceAccounts", "trustDomains", "notTrustDomains"}
_OPERATION_FIELDS = {"hosts", "notHosts", "ports", "notPorts", "methods", "notMethods", "paths", "notPaths"}


def _service_accounts(f: Field) -> tuple[str, ...]:
    """Istio's ``serviceAccounts``: exact ``ns/sa`` names, or ``sa`` in the policy's namespace."""
    result = []
    for item in f.items():
        value = item.str(required=True)
        if value is None:
            continue
        parts = value.split("/")
        if len(parts) > 2 or not all(parts) or "*" in value:
            item.report(f"{value!r} is not a service account (namespace/name, or name; no wildcards)")
            continue
        result.append(value)
    return tuple(result)


_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")  # SPIFFE's trust domain characters


def _trust_domains(f: Field) -> tuple[str, ...]:
    """Istio's ``trustDomains``: the peer's trust domain, exactly, or ``*`` for any peer with one.
    Partial wildcards are refused: a principal match cannot express them together with the rest."""
    result = []
    for item in f.items():
        value = item.str(required=True)
        if value is None:
            continue
        if value != "*" and not _TRUST_DOMAIN.fullmatch(value):
            item.report(f"{value!r} is not a trust domain (lower-case letters, digits, '.', '-', '_'; "
                        "or '*' alone)")
            continue
        result.append(value)
    return tuple(result)


def _rule(f: Field) -> r.Rule | None:
    """A rule; the fields it does not know are collected in ``Rule.unknown`` (``validate`` reports
    them: what they do depends on the action) rather than warned about as ignored."""
    unknown: list[str] = []

    def note(where: str, names: list[str]) -> tuple[str, ...]:
        paths = tuple(f"{where}.{name}" if where else name for name in names)
        unknown.extend(paths)
        return paths

    names: list[str] = []
    if not f.mapping({"from", "to", "when"}, unknown=names):
        return None
    note("", names)
    sources = []
    for i, item in enumerate(f["from"].items()):
        outer: list[str] = []
        inner: list[str] = []
        if item.mapping({"source"}, unknown=outer) and item["source"].mapping(_SOURCE_FIELDS, required=True,
                                                                               unknown=inner):
            s = item["source"]
            if not any(s[name].value for name in _SOURCE_FIELDS) and not inner:  # as Istio: a mistake, not "anyone"
                s.report("must not be empty")
            sources.append(r.Source(
                s["principals"].str_list(), s["notPrincipals"].str_list(), s["requestPrincipals"].str_list(),
                s["notRequestPrincipals"].str_list(), s["namespaces"].str_list(), s["notNamespaces"].str_list(),
                _cidrs(s["ipBlocks"]), _cidrs(s["notIpBlocks"]), _cidrs(s["remoteIpBlocks"]),
                _cidrs(s["notRemoteIpBlocks"]), _service_accounts(s["serviceAccounts"]),
                _service_accounts(s["notServiceAccounts"]), _trust_domains(s["trustDomains"]),
                _trust_domains(s["notTrustDomains"]),
                note(f"from[{i}]", outer) + note(f"from[{i}].source", inner),
            ))
    operations = []
    for i, item in enumerate(f["to"].items()):
        outer, inner = [], []
        if item.mapping({"operation"}, unknown=outer) and item["operation"].mapping(
                _OPERATION_FIELDS, required=True, unknown=inner):
            o = item["operation"]
            if not any(o[name].value for name in _OPERATION_FIELDS) and not inner:
                o.report("must not be empty")
            operations.append(r.Operation(
                o["hosts"].str_list(), o["notHosts"].str_list(), _ports(o["ports"]), _ports(o["notPorts"]),
                o["methods"].str_list(), o["notMethods"].str_list(), o["paths"].str_list(), o["notPaths"].str_list(),
                note(f"to[{i}]", outer) + note(f"to[{i}].operation", inner),
            ))
    conditions = []
    for i, item in enumerate(f["when"].items()):
        names = []
        if item.mapping({"key", "values", "notValues"}, unknown=names) and (key := item["key"].str(required=True)):
            note(f"when[{i}]", names)
            if not item["values"].value and not item["notValues"].value:
                item.report(f"condition {key} needs values or notValues")
            conditions.append(r.Condition(key, _condition_values(item["values"], key),
                                          _condition_values(item["notValues"], key)))
    return r.Rule(tuple(sources), tuple(operations), tuple(conditions), tuple(unknown))


_IP_KEYS = ("source.ip", "destination.ip", "remote.ip")


def _condition_values(f: Field, key: str) -> tuple[str, ...]:
    """A condition's values; those of keys that name addresses or ports must be ones (as Istio
    checks them): ztunnel evaluates these, and a typo must not become a rule that never matches."""
    values = f.str_list()  # reports what is not a list of strings
    for item in f.items() if isinstance(f.value, list) else ():
        if not isinstance(item.value, str):
            continue
        if key in _IP_KEYS:
            try:
                ipaddress.ip_network(item.value, strict=False)
            except ValueError:
                item.report(f"{item.value!r} is not an IP address or CIDR block")
        elif key == "destination.port":
            _port(item)
    return values


def _authorization_policy(spec: Field, meta: r.Meta, origin: r.Origin) -> r.AuthorizationPolicy | None:
    if spec.present and not spec.mapping({"selector", "targetRef", "targetRefs", "action", "rules", "provider"}):
        return None
    action = spec["action"].str(default="ALLOW", choices=("ALLOW", "DENY", "AUDIT", "CUSTOM"))
    # As Istio's ambient translation: ztunnel enforces ALLOW and DENY only; it skips the others.
    if action == "CUSTOM":
        spec["action"].report("CUSTOM (external authorization) is not enforced by ztunnel, nor by the mesh's "
                              "waypoint: the policy is skipped", Severity.WARNING, code=Code.ACTION_NOT_ENFORCED)
    elif action == "AUDIT":
        spec["action"].report("AUDIT has no effect at L4: ztunnel ignores AUDIT policies, and the mesh writes no "
                              "audit log: the policy is skipped", Severity.WARNING, code=Code.ACTION_NOT_ENFORCED)
    selector = _labels_selector(spec["selector"])
    targets = _target_refs(spec)
    if selector is not None and targets:
        spec["selector"].report("selector and targetRefs cannot both be set")
    rules = tuple(rule for item in spec["rules"].items() if (rule := _rule(item)))
    return r.AuthorizationPolicy(meta, origin, action, rules, r.frozen_map(selector) if selector is not None else None,
                                 targets, _dry_run(meta))


def _dry_run(meta: r.Meta) -> bool:
    """``istio.io/dry-run``, read as Istio does (Go's ``strconv.ParseBool``: anything else is false)."""
    return meta.annotations.get(r.DRY_RUN, "") in ("1", "t", "T", "TRUE", "true", "True")


_MTLS_MODES = ("UNSET", "DISABLE", "PERMISSIVE", "STRICT")


def _peer_authentication(spec: Field, meta: r.Meta, origin: r.Origin) -> r.PeerAuthentication | None:
    if spec.present and not spec.mapping({"selector", "mtls", "portLevelMtls"}):
        return None
    mode = "UNSET"
    if spec["mtls"].mapping({"mode"}):
        mode = spec["mtls"]["mode"].str(default="UNSET", choices=_MTLS_MODES)
    port_modes = {}
    for key, entry in spec["portLevelMtls"].entries():
        port = _port(entry, value=key)
        if entry.mapping({"mode"}) and port:
            port_modes[port] = entry["mode"].str(default="UNSET", choices=_MTLS_MODES)
    selector = _labels_selector(spec["selector"])
    return r.PeerAuthentication(meta, origin, mode, r.frozen_map(selector) if selector is not None else None,
                                r.MappingProxyType(port_modes))


def _wasm_plugin(spec: Field, meta: r.Meta, origin: r.Origin) -> r.WasmPlugin | None:
    if not spec.mapping({"url", "sha256", "pluginConfig", "pluginName", "phase", "priority", "failStrategy",
                         "targetRef", "targetRefs", "selector", "type", "imagePullPolicy", "imagePullSecret",
                         "vmConfig", "match", "verificationKey"}, required=True):
        return None
    url = spec["url"].str(required=True)
    if url and not url.startswith(("file://", "http://", "https://")):
        spec["url"].report(f"{url!r}: only file://, http:// and https:// URLs can be fetched here (no OCI registry)")
    digest = spec["sha256"].str(default="") or ""
    if digest and not re.fullmatch(r"[0-9a-f]{64}", digest):
        spec["sha256"].report("must be 64 lowercase hex digits")
    if spec["selector"].present:
        spec["selector"].report("selector applies to sidecars; in ambient mode use targetRefs to the waypoint Gateway")
    targets = _target_refs(spec)
    if not targets:
        spec.report("targetRefs is required: the waypoint Gateway that runs the plugin")
    priority = spec["priority"].int(default=0)
    return r.WasmPlugin(
        meta, origin, url or "", targets, digest, spec["pluginConfig"].value, spec["pluginName"].str(default="") or "",
        spec["phase"].str(default="UNSPECIFIED_PHASE", choices=("UNSPECIFIED_PHASE", "AUTHN", "AUTHZ", "STATS")),
        priority or 0, spec["failStrategy"].str(default="FAIL_CLOSE", choices=("FAIL_CLOSE", "FAIL_OPEN")),
    )


_PARSERS = {
    "Namespace": _namespace, "Node": _node, "ServiceAccount": _service_account, "Pod": _pod, "Deployment": _deployment,
    "Service": _service, "Gateway": _gateway, "GatewayClass": _gateway_class, "HTTPRoute": _http_route,
    "GRPCRoute": _grpc_route, "AuthorizationPolicy": _authorization_policy, "PeerAuthentication": _peer_authentication,
    "WasmPlugin": _wasm_plugin,
}
