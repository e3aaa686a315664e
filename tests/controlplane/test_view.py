"""The dataplane view as tables: Kubernetes-format resources + pod status in, istio.workload messages out.

Each row builds a tiny cluster from YAML (through ``mesh.parse``, as the control plane does), marks
its pods running, and checks one translation rule of DESIGN.md section 2.
"""

from __future__ import annotations

import ipaddress
import json

import pytest

from controlplane.view import ClusterState, MeshConfig, PodStatus, compute_view, workload_uid
from mesh import resources as r
from mesh.api import authorization_pb2 as apb, workload_pb2 as wpb
from mesh.identity import SpiffeId
from mesh.parse import parse_text

CONFIG = MeshConfig()
AMBIENT = {r.DATAPLANE_MODE: "ambient"}
OPT_OUT = {r.DATAPLANE_MODE: "none"}


def use(name: str, namespace: str | None = None) -> dict[str, str]:
    labels = {r.USE_WAYPOINT: name}
    if namespace:
        labels["istio.io/use-waypoint-namespace"] = namespace
    return labels


# ---------------------------------------------------------------- YAML builders (JSON is YAML)


def _doc(api: str, kind: str, name: str, namespace: str | None, labels: dict | None, spec: dict | None) -> str:
    meta: dict = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    if labels:
        meta["labels"] = labels
    doc: dict = {"apiVersion": api, "kind": kind, "metadata": meta}
    if spec is not None:
        doc["spec"] = spec
    return json.dumps(doc)


def namespace(name: str, labels: dict | None = None) -> str:
    return _doc("v1", "Namespace", name, None, labels, None)


def pod(name: str, ns: str = "shop", labels: dict | None = None, *, sa: str = "default",
        ports: tuple = (), node: str = "") -> str:
    """``ports``: (name, containerPort) or (name, containerPort, protocol)."""
    container: dict = {"name": "app"}
    if ports:
        container["ports"] = [{"name": p[0], "containerPort": p[1], "protocol": (p[2:] or ("TCP",))[0]}
                              for p in ports]
    spec: dict = {"serviceAccountName": sa, "containers": [container]}
    if node:
        spec["nodeName"] = node
    return _doc("v1", "Pod", name, ns, {"app": name, **(labels or {})}, spec)


def service(name: str, ns: str = "shop", labels: dict | None = None, *, selector: dict | None | str = "app",
            ports: tuple = ((80, 8080),), cluster_ip: str | None = None) -> str:
    """``selector="app"`` selects ``app: <name>``; ``ports``: (port, targetPort[, protocol])."""
    spec: dict = {"ports": [{"name": f"p{i}", "port": p[0], "targetPort": p[1], "protocol": (p[2:] or ("TCP",))[0]}
                            for i, p in enumerate(ports)]}
    if selector == "app":
        spec["selector"] = {"app": name}
    elif selector is not None:
        spec["selector"] = selector
    if cluster_ip is not None:
        spec["clusterIP"] = cluster_ip
    return _doc("v1", "Service", name, ns, labels, spec)


def waypoint(name: str = "wp", ns: str = "shop", for_: str | None = None, allowed: dict | None = None) -> str:
    """``allowed``: the HBONE listener's ``allowedRoutes.namespaces`` (absent: Same)."""
    labels = {r.WAYPOINT_FOR: for_} if for_ else None
    listener: dict = {"name": "mesh", "port": 15008, "protocol": "HBONE"}
    if allowed is not None:
        listener["allowedRoutes"] = {"namespaces": allowed}
    spec = {"gatewayClassName": "istio-waypoint", "listeners": [listener]}
    return _doc("gateway.networking.k8s.io/v1", "Gateway", name, ns, labels, spec)


def gateway_class(name: str = "istio-waypoint", labels: dict | None = None) -> str:
    return _doc("gateway.networking.k8s.io/v1", "GatewayClass", name, None, labels,
                {"controllerName": "istio.io/mesh-controller"})


def deployment(name: str, ns: str = "shop", labels: dict | None = None, *, replicas: int = 2,
               sa: str = "default") -> str:
    labels = {"app": name, **(labels or {})}
    spec = {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": labels},
                         "spec": {"serviceAccountName": sa, "containers": [{"name": "app"}]}}}
    return _doc("apps/v1", "Deployment", name, ns, None, spec)


def authorization_policy(name: str, ns: str, spec: dict) -> str:
    return _doc("security.istio.io/v1", "AuthorizationPolicy", name, ns, None, spec)


def peer_authentication(name: str, ns: str, spec: dict) -> str:
    return _doc("security.istio.io/v1", "PeerAuthentication", name, ns, None, spec)


# ---------------------------------------------------------------- running the view

ALL = object()  # every pod (and waypoint pod) running


def resources_of(*docs: str) -> list[r.Resource]:
    parsed = parse_text("\n---\n".join(docs), "t.yaml")
    assert [str(p) for p in parsed.errors] == []
    return parsed.resources


def build(*docs: str, running=ALL, vips: dict | None = None, config: MeshConfig = CONFIG):
    """The view of ``docs``; ``running``: ALL, or ``{"ns/name": PodStatus}``."""
    resources = resources_of(*docs)
    if running is ALL:
        keys = sorted(ClusterState.build(resources).pods)
        status = {key: PodStatus(f"10.244.0.{i + 2}", "node-a") for i, key in enumerate(keys)}
    else:
        status = {tuple(key.split("/")): s for key, s in running.items()}
    return compute_view(ClusterState.build(resources, status, vips), config)


def workload(view, key: str) -> wpb.Workload:
    ns, name = key.split("/")
    return view.workloads[workload_uid(CONFIG, ns, name)]


def svc_of(view, key: str) -> wpb.Service:
    ns, name = key.split("/")
    return view.services[f"{ns}/{name}.{ns}.svc.cluster.local"]


def waypoint_of(message) -> str | None:
    """``"ns/name"`` of the waypoint a Workload or Service is sent through, or None."""
    if not message.HasField("waypoint"):
        return None
    address = message.waypoint
    assert address.hbone_mtls_port == 15008
    name, ns = address.hostname.hostname.split(".")[:2]
    assert address.hostname.namespace == ns
    return f"{ns}/{name}"


def ports_of(port_list) -> list[tuple[int, int]]:
    return [(p.service_port, p.target_port) for p in port_list.ports]


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


# ---------------------------------------------------------------- enrolment


@pytest.mark.parametrize("ns_labels, pod_labels, expected", [
    pytest.param(AMBIENT, {}, wpb.HBONE, id="namespace-ambient-enrols-its-pods"),
    pytest.param({}, AMBIENT, wpb.HBONE, id="pod-ambient-in-a-plain-namespace"),
    pytest.param(AMBIENT, OPT_OUT, wpb.NONE, id="pod-none-opts-out-of-an-ambient-namespace"),
    pytest.param(OPT_OUT, AMBIENT, wpb.HBONE, id="pod-ambient-in-an-opted-out-namespace"),
    pytest.param({}, {}, wpb.NONE, id="no-labels-is-not-enrolled"),
    pytest.param({r.DATAPLANE_MODE: "sidecar"}, {}, wpb.NONE, id="other-namespace-value-is-not-ambient"),
    pytest.param(None, {}, wpb.NONE, id="undeclared-namespace"),
    pytest.param(None, AMBIENT, wpb.HBONE, id="undeclared-namespace-pod-ambient"),
    # As istio-cni: only "none" on the pod opts out; another value neither enrols nor opts out.
    pytest.param(AMBIENT, {r.DATAPLANE_MODE: "sidecar"}, wpb.HBONE, id="other-pod-value-does-not-opt-out"),
    pytest.param(AMBIENT, {r.DATAPLANE_MODE: "Ambient"}, wpb.HBONE, id="wrong-case-pod-value-does-not-opt-out"),
    pytest.param({}, {r.DATAPLANE_MODE: "Ambient"}, wpb.NONE, id="wrong-case-pod-value-does-not-enrol"),
    pytest.param({r.DATAPLANE_MODE: "Ambient"}, {}, wpb.NONE, id="wrong-case-namespace-value-does-not-enrol"),
])
def test_enrolment(ns_labels, pod_labels, expected):
    docs = [pod("a", labels=pod_labels)]
    if ns_labels is not None:
        docs.append(namespace("shop", ns_labels))
    assert workload(build(*docs), "shop/a").tunnel_protocol == expected


# ---------------------------------------------------------------- waypoints

# World: namespace shop (labels per row), Service shop/web and pod shop/web (labels per row), the
# waypoint shop/wp (waypoint-for per row), shop/other and infra/shared (both "all").
WAYPOINT_ROWS = [
    # id, namespace labels, service labels, pod labels, wp's waypoint-for, service's waypoint, pod's waypoint
    ("namespace-label-service-waypoint", use("wp"), {}, {}, "service", "shop/wp", None),
    ("namespace-label-default-is-for-services", use("wp"), {}, {}, None, "shop/wp", None),
    ("namespace-label-workload-waypoint", use("wp"), {}, {}, "workload", None, "shop/wp"),
    ("namespace-label-all-waypoint", use("wp"), {}, {}, "all", "shop/wp", "shop/wp"),
    ("namespace-label-waypoint-for-none", use("wp"), {}, {}, "none", None, None),
    ("service-label", {}, use("wp"), {}, "service", "shop/wp", None),
    ("service-label-on-a-workload-waypoint", {}, use("wp"), {}, "workload", None, None),
    ("pod-label", {}, {}, use("wp"), "workload", None, "shop/wp"),
    ("pod-label-on-a-service-waypoint-no-fallback", use("other"), {}, use("wp"), "service", "shop/other", None),
    ("service-none-opts-out-of-namespace", use("wp"), {r.USE_WAYPOINT: "none"}, {}, "all", None, "shop/wp"),
    ("pod-none-opts-out-of-namespace", use("wp"), {}, {r.USE_WAYPOINT: "none"}, "all", "shop/wp", None),
    ("service-label-wins-over-namespace", use("wp"), use("other"), {}, "all", "shop/other", "shop/wp"),
    ("pod-label-wins-over-namespace", use("wp"), {}, use("other"), "all", "shop/wp", "shop/other"),
    ("missing-gateway-no-waypoint", use("gone"), {}, {}, "all", None, None),
    ("service-names-missing-gateway-no-fallback", use("wp"), use("gone"), {}, "all", None, "shop/wp"),
    ("use-waypoint-namespace-on-service", {}, use("shared", "infra"), {}, "all", "infra/shared", None),
    ("use-waypoint-namespace-on-pod", {}, {}, use("shared", "infra"), "all", None, "infra/shared"),
    ("use-waypoint-namespace-on-namespace", use("shared", "infra"), {}, {}, "all", "infra/shared", "infra/shared"),
    ("use-waypoint-namespace-wrong-namespace", {}, use("wp", "infra"), {}, "all", None, None),
    ("no-labels-no-waypoint", {}, {}, {}, "all", None, None),
]


@pytest.mark.parametrize("ns_labels, svc_labels, pod_labels, wp_for, svc_expected, pod_expected",
                         [row[1:] for row in WAYPOINT_ROWS], ids=[row[0] for row in WAYPOINT_ROWS])
def test_use_waypoint(ns_labels, svc_labels, pod_labels, wp_for, svc_expected, pod_expected):
    view = build(
        namespace("shop", {**AMBIENT, **ns_labels}), namespace("infra"),
        service("web", labels=svc_labels), pod("web", labels=pod_labels),
        waypoint("wp", for_=wp_for), waypoint("other", for_="all"),
        waypoint("shared", "infra", for_="all", allowed={"from": "All"}),
    )
    assert waypoint_of(svc_of(view, "shop/web")) == svc_expected
    assert waypoint_of(workload(view, "shop/web")) == pod_expected


# A waypoint in another namespace is used only where its HBONE listener's allowedRoutes admits the
# object's namespace (istiod's AllowsAttachmentFromNamespace); default Same.
ATTACHMENT_ROWS = [
    ("default-same-refuses-other-namespaces", None, {}, None),
    ("explicit-same-refuses", {"from": "Same"}, {}, None),
    ("all-admits", {"from": "All"}, {}, "infra/shared"),
    ("selector-admits-matching-labels", {"from": "Selector", "selector": {"matchLabels": {"team": "a"}}},
     {"team": "a"}, "infra/shared"),
    ("selector-refuses-other-labels", {"from": "Selector", "selector": {"matchLabels": {"team": "a"}}},
     {"team": "b"}, None),
    ("selector-expressions", {"from": "Selector", "selector": {"matchExpressions": [
        {"key": "team", "operator": "In", "values": ["a", "b"]}, {"key": "frozen", "operator": "DoesNotExist"}]}},
     {"team": "b"}, "infra/shared"),
    ("selector-expressions-refuse", {"from": "Selector", "selector": {"matchExpressions": [
        {"key": "team", "operator": "NotIn", "values": ["a"]}]}}, {"team": "a"}, None),
]


@pytest.mark.parametrize("allowed, shop_labels, expected", [row[1:] for row in ATTACHMENT_ROWS],
                         ids=[row[0] for row in ATTACHMENT_ROWS])
def test_cross_namespace_waypoint_needs_allowed_routes(allowed, shop_labels, expected):
    view = build(namespace("shop", {**AMBIENT, **shop_labels, **use("shared", "infra")}), namespace("infra"),
                 service("web"), pod("web"), waypoint("shared", "infra", for_="all", allowed=allowed))
    assert waypoint_of(svc_of(view, "shop/web")) == expected
    assert waypoint_of(workload(view, "shop/web")) == expected


def test_same_namespace_waypoint_needs_no_allowed_routes():
    view = build(namespace("shop", {**AMBIENT, **use("wp")}), service("web"), pod("web"), waypoint("wp"))
    assert waypoint_of(svc_of(view, "shop/web")) == "shop/wp"


@pytest.mark.parametrize("class_label, gateway_label, expected", [
    (None, None, "service"),
    ("workload", None, "workload"),
    ("workload", "all", "all"),  # the Gateway's own label wins, as in istiod
    ("none", None, "none"),
])
def test_waypoint_for_from_the_gateway_class(class_label, gateway_label, expected):
    docs = [namespace("shop", {**AMBIENT, **use("wp")}), service("web"), pod("web"),
            waypoint("wp", for_=gateway_label),
            gateway_class(labels={r.WAYPOINT_FOR: class_label} if class_label else None)]
    view = build(*docs)
    assert view.waypoints["shop/wp"].waypoint_for == expected
    assert (waypoint_of(svc_of(view, "shop/web")) == "shop/wp") == (expected in ("service", "all"))
    assert (waypoint_of(workload(view, "shop/web")) == "shop/wp") == (expected in ("workload", "all"))


def test_waypoint_pods_and_services_never_use_a_waypoint():
    # The namespace sends everything through "wp", and a second waypoint lives beside it.
    view = build(namespace("shop", {**AMBIENT, **use("wp")}), waypoint("wp", for_="all"),
                 waypoint("second", for_="all"), pod("web"))
    assert waypoint_of(workload(view, "shop/web")) == "shop/wp"
    for name in ("wp", "second"):
        own_pod = workload(view, f"shop/{name}-waypoint")
        assert waypoint_of(own_pod) is None, name
        assert own_pod.tunnel_protocol == wpb.NONE  # the waypoint speaks HBONE itself; never captured
        assert waypoint_of(svc_of(view, f"shop/{name}")) is None, name


def test_a_user_declared_waypoint_service_does_not_use_the_waypoint():
    view = build(namespace("shop", use("wp")), waypoint("wp", for_="all"),
                 service("wp", selector={"gateway.networking.k8s.io/gateway-name": "wp"}, ports=((15008, 15008),)))
    assert waypoint_of(svc_of(view, "shop/wp")) is None


def test_waypoints_and_their_services():
    view = build(waypoint("wp", for_="workload"), vips={("shop", "wp"): "10.96.0.20"})
    wp = view.waypoints["shop/wp"]
    assert (wp.namespace, wp.name, wp.waypoint_for, wp.pod) == ("shop", "wp", "workload", "wp-waypoint")
    assert wp.identity == SpiffeId("cluster.local", "shop", "wp")
    assert wp.hostname == "wp.shop.svc.cluster.local"
    svc = svc_of(view, "shop/wp")
    assert ports_of(svc) == [(15008, 15008)]
    assert [a.address for a in svc.addresses] == [ip("10.96.0.20")]
    pod_wl = workload(view, "shop/wp-waypoint")
    assert pod_wl.service_account == "wp"
    assert ports_of(pod_wl.services["shop/wp.shop.svc.cluster.local"]) == [(15008, 15008)]


def test_no_gateway_no_waypoint_pod():
    view = build(namespace("shop", use("wp")), pod("web"))
    assert view.waypoints == {}
    assert list(view.workloads) == [workload_uid(CONFIG, "shop", "web")]


# ---------------------------------------------------------------- workloads


def test_workload_fields():
    status = {"shop/a": PodStatus("10.244.1.7", "node-b", ready=False)}
    view = build(namespace("shop", AMBIENT), pod("a", sa="web"), running=status,
                 config=MeshConfig(cluster_id="c1", network="n1"))
    (uid, w), = view.workloads.items()
    assert uid == "c1//Pod/shop/a" == w.uid  # as istiod names a pod: <cluster>//Pod/<ns>/<name>
    # The default trust domain is left empty on the wire, as istiod does; ztunnel reads it as cluster.local.
    assert (w.name, w.namespace, w.service_account, w.node, w.network, w.cluster_id, w.trust_domain) == \
        ("a", "shop", "web", "node-b", "n1", "c1", "")
    assert list(w.addresses) == [ip("10.244.1.7")]
    assert w.status == wpb.UNHEALTHY
    assert (w.workload_type, w.workload_name) == (wpb.POD, "a")


def test_a_trust_domain_other_than_the_default_is_on_every_workload():
    view = build(pod("a"), config=MeshConfig(trust_domain="example.org"))
    (w,) = view.workloads.values()
    assert w.trust_domain == "example.org"


def test_pods_without_status_are_pending():
    status = {"shop/running": PodStatus("10.244.0.9", "node-a")}
    view = build(pod("running", sa="one"), pod("scheduled", sa="two", node="node-b"), pod("unscheduled", sa="three"),
                 running=status)
    assert list(view.workloads) == [workload_uid(CONFIG, "shop", "running")]
    # A pod with spec.nodeName counts for the CA before it runs; one without a node does not.
    assert view.has_pod("node-a", SpiffeId("cluster.local", "shop", "one"))
    assert view.has_pod("node-b", SpiffeId("cluster.local", "shop", "two"))
    assert not any(SpiffeId("cluster.local", "shop", "three") in ids for ids in view.placements.values())


@pytest.mark.parametrize("node, account, expected", [
    pytest.param("node-a", "web", True, id="its-node-its-account"),
    pytest.param("node-b", "web", False, id="another-node"),
    pytest.param("node-a", "db", False, id="another-account"),
    pytest.param("node-c", "web", False, id="unknown-node"),
])
def test_has_pod(node, account, expected):
    status = {"shop/a": PodStatus("10.244.0.2", "node-a"), "shop/b": PodStatus("10.244.1.2", "node-b")}
    # The runtime node wins over spec.nodeName.
    view = build(pod("a", sa="web", node="node-b"), pod("b", sa="db"), running=status)
    assert view.has_pod(node, SpiffeId("cluster.local", "shop", account)) is expected


def test_deployment_pods_are_workloads():
    view = build(deployment("web", labels={"version": "v2"}, replicas=2, sa="web"))
    workloads = sorted(view.workloads.values(), key=lambda w: w.name)
    assert len(workloads) == 2
    for w in workloads:
        assert w.name.startswith("web-")
        assert (w.workload_type, w.workload_name, w.canonical_name, w.canonical_revision, w.service_account) == \
            (wpb.POD, "web", "web", "v2", "web")  # as istiod: a pod is a POD; the owner names the workload


@pytest.mark.parametrize("labels, expected", [
    pytest.param({}, ("p", "latest"), id="pod-name-and-latest"),
    pytest.param({"app": "a", "version": "v1"}, ("a", "v1"), id="app-and-version"),
    pytest.param({"app": "a", "app.kubernetes.io/name": "b", "version": "v1", "app.kubernetes.io/version": "v2"},
                 ("b", "v2"), id="kubernetes-recommended-labels-win"),
    pytest.param({"app.kubernetes.io/name": "b", "service.istio.io/canonical-name": "c",
                  "app.kubernetes.io/version": "v2", "service.istio.io/canonical-revision": "v3"},
                 ("c", "v3"), id="istio-canonical-labels-win"),
])
def test_canonical_name_and_revision(labels, expected):
    # pod() labels every pod app=<name>; a row's own "app" overrides it, and {} drops it below.
    text = pod("p", labels=labels)
    if "app" not in labels:
        data = json.loads(text)
        del data["metadata"]["labels"]["app"]
        text = json.dumps(data)
    w = workload(build(text), "shop/p")
    assert (w.canonical_name, w.canonical_revision) == expected


# ---------------------------------------------------------------- services


def test_service_vip_and_headless():
    view = build(service("web"), service("db", cluster_ip="None"), vips={("shop", "web"): "10.96.0.10"})
    web, db = svc_of(view, "shop/web"), svc_of(view, "shop/db")
    assert (web.name, web.namespace, web.hostname) == ("web", "shop", "web.shop.svc.cluster.local")
    assert [(a.network, a.address) for a in web.addresses] == [("", ip("10.96.0.10"))]
    assert list(db.addresses) == []


@pytest.mark.parametrize("container_ports, expected", [
    pytest.param((("http", 9090),), [(80, 8080), (81, 9090)], id="named-target-resolved-per-pod"),
    pytest.param((("metrics", 9090),), [(80, 8080)], id="pod-without-the-named-port-gets-no-such-port"),
    pytest.param((), [(80, 8080)], id="pod-without-ports"),
    pytest.param((("http", 9090, "UDP"),), [(80, 8080)], id="named-port-of-another-protocol-does-not-count"),
])
def test_service_ports(container_ports, expected):
    view = build(service("web", ports=((80, 8080), (81, "http"), (53, 53, "UDP"))), pod("web", ports=container_ports))
    # The Service itself: every port, as istiod lists them; numeric targets, 0 for a named one
    # (resolved per workload). A workload lists the TCP ports it serves.
    assert ports_of(svc_of(view, "shop/web")) == [(80, 8080), (81, 0), (53, 53)]
    assert ports_of(workload(view, "shop/web").services["shop/web.shop.svc.cluster.local"]) == expected


@pytest.mark.parametrize("port, expected", [
    pytest.param({"name": "http"}, wpb.HTTP11, id="name-http"),
    pytest.param({"name": "http-web"}, wpb.HTTP11, id="name-prefix-http"),
    pytest.param({"name": "HTTP2-api"}, wpb.HTTP2, id="name-prefix-http2-any-case"),
    pytest.param({"name": "grpc"}, wpb.GRPC, id="name-grpc"),
    pytest.param({"name": "grpc-web"}, wpb.UNKNOWN, id="grpc-web-is-not-grpc"),
    pytest.param({"name": "https"}, wpb.UNKNOWN, id="name-https"),
    pytest.param({"name": "tcp-db"}, wpb.UNKNOWN, id="name-tcp"),
    pytest.param({"name": "web"}, wpb.UNKNOWN, id="name-without-a-protocol"),
    pytest.param({}, wpb.UNKNOWN, id="no-name"),
    pytest.param({"name": "tcp", "appProtocol": "http"}, wpb.HTTP11, id="appProtocol-wins-over-the-name"),
    pytest.param({"name": "http", "appProtocol": "tcp"}, wpb.UNKNOWN, id="appProtocol-tcp-wins-over-http-name"),
    pytest.param({"appProtocol": "grpc"}, wpb.GRPC, id="appProtocol-grpc"),
    pytest.param({"name": "http", "protocol": "UDP"}, wpb.UNKNOWN, id="udp-port"),
])
def test_service_port_app_protocol(port, expected):
    doc = _doc("v1", "Service", "web", "shop", None,
               {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080, **port}]})
    (p,) = svc_of(build(doc), "shop/web").ports
    assert (p.service_port, p.target_port, p.app_protocol) == (80, 8080, expected)


LB = wpb.LoadBalancing


SAME_ZONE = [LB.NETWORK, LB.REGION, LB.ZONE]
SAME_NODE = [LB.NETWORK, LB.REGION, LB.ZONE, LB.SUBZONE, LB.NODE]


# As istiod's constructService and GetTrafficDistribution.
@pytest.mark.parametrize("spec, annotations, expected", [
    pytest.param({}, None, None, id="none"),
    pytest.param({"internalTrafficPolicy": "Cluster"}, None, None, id="cluster"),
    pytest.param({"internalTrafficPolicy": "Local"}, None, ([LB.NODE], LB.STRICT, LB.ONLY_HEALTHY),
                 id="local-is-strict-node"),
    pytest.param({"trafficDistribution": "PreferClose"}, None, (SAME_ZONE, LB.FAILOVER, LB.ONLY_HEALTHY),
                 id="prefer-close-is-same-zone"),
    pytest.param({"trafficDistribution": "PreferSameZone"}, None, (SAME_ZONE, LB.FAILOVER, LB.ONLY_HEALTHY),
                 id="prefer-same-zone"),
    pytest.param({"trafficDistribution": "PreferSameNode"}, None, (SAME_NODE, LB.FAILOVER, LB.ONLY_HEALTHY),
                 id="prefer-same-node"),
    pytest.param({"trafficDistribution": "PreferClose", "internalTrafficPolicy": "Local"}, None,
                 ([LB.NODE], LB.STRICT, LB.ONLY_HEALTHY), id="local-wins-over-prefer-close"),
    pytest.param({}, {"networking.istio.io/traffic-distribution": "preferclose"},
                 (SAME_ZONE, LB.FAILOVER, LB.ONLY_HEALTHY), id="legacy-annotation-any-case"),
    pytest.param({}, {"networking.istio.io/traffic-distribution": "PREFERSAMENODE"},
                 (SAME_NODE, LB.FAILOVER, LB.ONLY_HEALTHY), id="legacy-annotation-same-node"),
    pytest.param({"trafficDistribution": "PreferSameNode"}, {"networking.istio.io/traffic-distribution": "PreferClose"},
                 (SAME_NODE, LB.FAILOVER, LB.ONLY_HEALTHY), id="the-field-wins-over-the-annotation"),
    pytest.param({"trafficDistribution": "Elsewhere"}, {"networking.istio.io/traffic-distribution": "PreferClose"},
                 (SAME_ZONE, LB.FAILOVER, LB.ONLY_HEALTHY), id="an-unknown-field-value-falls-back-to-the-annotation"),
    pytest.param({"publishNotReadyAddresses": True}, None, ([], LB.UNSPECIFIED_MODE, LB.ALLOW_ALL),
                 id="publish-not-ready-allows-all"),
    pytest.param({"publishNotReadyAddresses": True, "internalTrafficPolicy": "Local"}, None,
                 ([LB.NODE], LB.STRICT, LB.ALLOW_ALL), id="publish-not-ready-with-local"),
])
def test_service_load_balancing(spec, annotations, expected):
    doc = _doc("v1", "Service", "web", "shop", None,
               {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}], **spec})
    if annotations:
        parsed = json.loads(doc)
        parsed["metadata"]["annotations"] = annotations
        doc = json.dumps(parsed)
    service_ = svc_of(build(doc), "shop/web")
    if expected is None:
        assert not service_.HasField("load_balancing")
    else:
        lb = service_.load_balancing
        assert (list(lb.routing_preference), lb.mode, lb.health_policy) == expected


def test_load_balancing_is_on_the_wire_as_istio_has_it():
    assert wpb.Service.DESCRIPTOR.fields_by_name["load_balancing"].number == 8
    assert {f.name: f.number for f in LB.DESCRIPTOR.fields} == {"routing_preference": 1, "mode": 2,
                                                                "health_policy": 3}
    assert dict(LB.HealthPolicy.items()) == {"ONLY_HEALTHY": 0, "ALLOW_ALL": 1}
    assert dict(LB.Scope.items()) == {"UNSPECIFIED_SCOPE": 0, "REGION": 1, "ZONE": 2, "SUBZONE": 3, "NODE": 4,
                                      "CLUSTER": 5, "NETWORK": 6}
    assert dict(LB.Mode.items()) == {"UNSPECIFIED_MODE": 0, "STRICT": 1, "FAILOVER": 2}


def test_port_app_protocol_is_on_the_wire_as_istio_has_it():
    # istio.workload.Port.app_protocol = 3, enum AppProtocol {UNKNOWN, HTTP11, HTTP2, GRPC}: Istio's ztunnel
    # decodes our Service ports, and we decode istiod's.
    assert wpb.Port.DESCRIPTOR.fields_by_name["app_protocol"].number == 3
    assert dict(wpb.AppProtocol.items()) == {"UNKNOWN": 0, "HTTP11": 1, "HTTP2": 2, "GRPC": 3}
    decoded = wpb.Port.FromString(bytes([0x08, 80, 0x10, 0x90, 0x3F, 0x18, 3]))  # 1: 80, 2: 8080, 3: GRPC
    assert (decoded.service_port, decoded.target_port, decoded.app_protocol) == (80, 8080, wpb.GRPC)


@pytest.mark.parametrize("docs, expected", [
    pytest.param([service("web"), pod("web")], {"shop/web.shop.svc.cluster.local"}, id="selects-its-pod"),
    pytest.param([service("web", ns="other"), pod("web")], set(), id="selector-does-not-leak-across-namespaces"),
    pytest.param([service("web", selector={}), pod("web")], set(), id="empty-selector-selects-nothing"),
    pytest.param([service("web", selector=None), pod("web")], set(), id="no-selector-selects-nothing"),
    pytest.param([service("web", selector={"app": "web", "tier": "x"}), pod("web")], set(),
                 id="every-selector-label-must-match"),
    pytest.param([service("web"), service("all", selector={"app": "web"}), pod("web")],
                 {"shop/web.shop.svc.cluster.local", "shop/all.shop.svc.cluster.local"}, id="two-services"),
])
def test_service_endpoints(docs, expected):
    assert set(workload(build(*docs), "shop/web").services) == expected


def test_pending_pod_is_no_endpoint():
    view = build(service("web"), pod("web"), running={})
    assert "shop/web.shop.svc.cluster.local" in view.services and view.workloads == {}


# ---------------------------------------------------------------- authorization policies

SELECT_WEB = {"selector": {"matchLabels": {"app": "web"}}}


@pytest.mark.parametrize("policy_ns, spec, scope, attached_to", [
    pytest.param("shop", SELECT_WEB, apb.WORKLOAD_SELECTOR, {"shop/web"}, id="selector-attaches-to-matching-pods"),
    pytest.param("istio-system", SELECT_WEB, apb.WORKLOAD_SELECTOR, {"shop/web", "other/web"},
                 id="root-namespace-selector-attaches-across-namespaces"),
    pytest.param("shop", {}, apb.NAMESPACE, set(), id="namespace-wide-is-not-attached"),
    pytest.param("istio-system", {}, apb.GLOBAL, set(), id="root-namespace-wide-is-global"),
    pytest.param("shop", {"selector": {"matchLabels": {"app": "nothing"}}}, apb.WORKLOAD_SELECTOR, set(),
                 id="selector-matching-nothing"),
])
def test_authorization_policy_attachment(policy_ns, spec, scope, attached_to):
    view = build(pod("web"), pod("db"), pod("web", ns="other"),
                 authorization_policy("p", policy_ns, {**spec, "action": "DENY", "rules": [{}]}))
    key = f"{policy_ns}/p"
    assert view.authorizations[key].scope == scope
    assert (view.authorizations[key].name, view.authorizations[key].namespace) == ("p", policy_ns)
    attached = {f"{w.namespace}/{w.name}" for w in view.workloads.values() if key in w.authorization_policies}
    assert attached == attached_to


def test_policies_enforced_elsewhere_are_not_in_the_view():
    view = build(pod("web"), waypoint("wp"),
                 authorization_policy("l7", "shop", {"targetRefs": [{"kind": "Gateway", "group":
                                                                     "gateway.networking.k8s.io", "name": "wp"}]}),
                 authorization_policy("audit", "shop", {**SELECT_WEB, "action": "AUDIT"}),
                 authorization_policy("custom", "shop", {**SELECT_WEB, "action": "CUSTOM", "provider": {"name": "x"}}))
    assert view.authorizations == {}
    assert list(workload(view, "shop/web").authorization_policies) == []


def test_attached_policies_are_sorted():
    view = build(pod("web"), *(authorization_policy(name, "shop", SELECT_WEB) for name in ("b", "c", "a")))
    assert list(workload(view, "shop/web").authorization_policies) == ["shop/a", "shop/b", "shop/c"]


def test_resources_are_packed_by_type_url():
    view = build(service("web"), pod("web"), authorization_policy("p", "shop", SELECT_WEB))
    packed = view.resources()
    addresses = packed["type.googleapis.com/istio.workload.Address"]
    assert set(addresses) == {workload_uid(CONFIG, "shop", "web"), "shop/web.shop.svc.cluster.local"}
    assert set(packed["type.googleapis.com/istio.security.Authorization"]) == {"shop/p"}


def node(name: str, labels: dict | None = None) -> str:
    return _doc("v1", "Node", name, None, labels, None)


# Locality as istiod reads it: the pod's istio-locality label, else its node's topology labels.
@pytest.mark.parametrize("pod_labels, node_labels, expected", [
    pytest.param({}, None, None, id="no-node-declared"),
    pytest.param({}, {}, None, id="node-without-topology-labels"),
    pytest.param({}, {"topology.kubernetes.io/region": "eu-west", "topology.kubernetes.io/zone": "eu-west-1a",
                      "topology.istio.io/subzone": "rack-7"}, ("eu-west", "eu-west-1a", "rack-7"), id="from-the-node"),
    pytest.param({"istio-locality": "us-east.us-east-1b"}, {"topology.kubernetes.io/region": "eu-west"},
                 ("us-east", "us-east-1b", ""), id="the-pod-label-wins"),
    pytest.param({"istio-locality": "r/z/s"}, None, ("r", "z", "s"), id="slashes-too"),
])
def test_workload_locality(pod_labels, node_labels, expected):
    docs = [namespace("shop", AMBIENT), pod("web", labels=pod_labels)]
    if node_labels is not None:
        docs.append(node("node-a", node_labels))
    wl = workload(build(*docs), "shop/web")
    if expected is None:
        assert not wl.HasField("locality")
    else:
        assert (wl.locality.region, wl.locality.zone, wl.locality.subzone) == expected
