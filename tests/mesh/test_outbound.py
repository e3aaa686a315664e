"""ztunnel's outbound plans as tables, against what the control plane really sends.

Each world is a few Kubernetes YAML documents run through the control plane's own pipeline
(``mesh.parse`` → ``ClusterState`` with pod IPs and VIPs → ``compute_view`` → the packed
``istio.workload.Address`` resources discovery serves → unpacked again), then indexed by
``ProxyState.from_addresses`` exactly as ztunnel receives them. Every row checks the whole plan.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, strategies as st

from mesh.api import workload_pb2 as wpb
from mesh.api.types import ADDRESS_TYPE_URL
from mesh.identity import SpiffeId
from mesh.outbound import (
    HboneToPod,
    HboneToWaypoint,
    LeastRequests,
    Passthrough,
    Refuse,
    RoundRobin,
    closest,
    plan_outbound,
)
from mesh.proxy_state import Endpoint, ProxyState
from tests.ztunnel.worlds import WAYPOINT_IPS, WAYPOINT_PODS, discovery_view, uid

# ---------------------------------------------------------------- worlds

# Ambient namespace: two healthy web pods (named port http = 8080), one unready web pod, a pod that
# opted out of the mesh, and Services in front of them.
PLAIN = """
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
spec: {serviceAccountName: client, containers: [{name: app}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: shop, labels: {app: web}}
spec: {serviceAccountName: web, containers: [{name: app, ports: [{name: http, containerPort: 8080}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec: {serviceAccountName: web, containers: [{name: app, ports: [{name: http, containerPort: 8080}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-sick, namespace: shop, labels: {app: web, tier: sick}}
spec: {serviceAccountName: web, containers: [{name: app, ports: [{name: http, containerPort: 8080}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: legacy, namespace: shop, labels: {app: legacy, istio.io/dataplane-mode: none}}
spec: {serviceAccountName: legacy, containers: [{name: app}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}, {name: admin, port: 81, targetPort: 9000}]
---
apiVersion: v1
kind: Service
metadata: {name: legacy, namespace: shop}
spec: {selector: {app: legacy}, ports: [{port: 80, targetPort: 9090}]}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: shop}
spec: {selector: {app: nothing}, ports: [{port: 80, targetPort: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: sick, namespace: shop}
spec: {selector: {tier: sick}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: sick-published, namespace: shop}
spec: {selector: {tier: sick}, ports: [{port: 80, targetPort: 8080}], publishNotReadyAddresses: true}
"""
PLAIN_IPS = {"shop/client": "10.244.0.10", "shop/web-0": "10.244.0.11", "shop/web-1": "10.244.0.12",
             "shop/web-sick": "10.244.0.13", "shop/legacy": "10.244.0.14"}
PLAIN_VIPS = {"shop/web": "10.96.0.10", "shop/legacy": "10.96.0.20", "shop/empty": "10.96.0.30",
              "shop/sick": "10.96.0.40", "shop/sick-published": "10.96.0.41"}

# A waypoint for all traffic: the Service "web" and the pod "db" use it; the Service "db" does not.
WAYPOINT = WAYPOINT_PODS + """---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop, labels: {istio.io/use-waypoint: wp}}
spec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec: {selector: {app: db}, ports: [{port: 5432, targetPort: 5432}]}
"""
WAYPOINT_VIPS = {"shop/web": "10.96.0.10", "shop/db": "10.96.0.20", "shop/wp": "10.96.0.99"}

WORLDS = {"plain": (PLAIN, PLAIN_IPS, PLAIN_VIPS), "waypoint": (WAYPOINT, WAYPOINT_IPS, WAYPOINT_VIPS)}
UNREADY = frozenset({"shop/web-sick"})


def addresses_of(docs: str, ips: dict[str, str], vips: dict[str, str]) -> dict[str, wpb.Address]:
    """What discovery sends for ``docs``: every Address resource, packed and unpacked again."""
    return discovery_view(docs, ips, vips, UNREADY)[ADDRESS_TYPE_URL]


def world(name: str, *, missing: tuple[str, ...] = (), not_running: tuple[str, ...] = ()) -> ProxyState:
    """The ProxyState of a world; ``missing``: discovery names not (yet) received; ``not_running``:
    pods without an IP."""
    docs, ips, vips = WORLDS[name]
    addresses = addresses_of(docs, {k: v for k, v in ips.items() if k not in not_running}, vips)
    for key in missing:
        del addresses[key]
    return ProxyState.from_addresses(addresses)


def svc(name: str) -> str:
    return f"shop/{name}.shop.svc.cluster.local"


def spiffe(account: str) -> SpiffeId:
    return SpiffeId("cluster.local", "shop", account)


def source(state: ProxyState, key: str) -> wpb.Workload:
    return state.workloads[uid(key)]


WEB = spiffe("web")
WP = spiffe("wp")
WP_POD = ("10.244.0.50", 15008)

# ---------------------------------------------------------------- the table


@pytest.mark.parametrize("world_name, src, destination, expected", [
    # Service VIPs, no waypoint.
    pytest.param("plain", "shop/client", ("10.96.0.10", 80),
                 HboneToPod(("10.244.0.11", 15008), "10.244.0.11:8080", WEB, uid("shop/web-0"), svc("web")),
                 id="vip-to-hbone-pod-named-target-port-resolved"),
    pytest.param("plain", "shop/client", ("10.96.0.10", 81),
                 HboneToPod(("10.244.0.11", 15008), "10.244.0.11:9000", WEB, uid("shop/web-0"), svc("web")),
                 id="vip-to-hbone-pod-numeric-target-port"),
    pytest.param("plain", "shop/client", ("10.96.0.20", 80),
                 Passthrough(("10.244.0.14", 9090), uid("shop/legacy"), svc("legacy")),
                 id="vip-whose-endpoint-is-not-enrolled-passes-through-to-the-endpoint"),
    pytest.param("plain", "shop/client", ("10.96.0.10", 8080),
                 Refuse(f"service {svc('web')} has no port 8080"),
                 id="vip-port-the-service-does-not-list-is-refused"),
    pytest.param("plain", "shop/client", ("10.96.0.30", 80),
                 Refuse(f"service {svc('empty')} has no healthy endpoint for port 80"),
                 id="vip-without-endpoints-is-refused"),
    pytest.param("plain", "shop/client", ("10.96.0.40", 80),
                 Refuse(f"service {svc('sick')} has no healthy endpoint for port 80"),
                 id="vip-with-only-unhealthy-endpoints-is-refused"),
    pytest.param("plain", "shop/client", ("10.96.0.41", 80),
                 HboneToPod(("10.244.0.13", 15008), "10.244.0.13:8080", WEB, uid("shop/web-sick"),
                            svc("sick-published")),
                 id="publish-not-ready-addresses-lets-unready-endpoints-take-traffic"),
    # Pod IPs, no waypoint.
    pytest.param("plain", "shop/client", ("10.244.0.12", 8080),
                 HboneToPod(("10.244.0.12", 15008), "10.244.0.12:8080", WEB, uid("shop/web-1")),
                 id="pod-ip-in-the-mesh-hbone-same-port"),
    pytest.param("plain", "shop/client", ("10.244.0.12", 12345),
                 HboneToPod(("10.244.0.12", 15008), "10.244.0.12:12345", WEB, uid("shop/web-1")),
                 id="pod-ip-any-port-kept-as-is"),
    pytest.param("plain", "shop/client", ("10.244.0.14", 9090),
                 Passthrough(("10.244.0.14", 9090), uid("shop/legacy")),
                 id="pod-ip-not-enrolled-passes-through"),
    pytest.param("plain", "shop/client", ("10.244.0.13", 8080),
                 HboneToPod(("10.244.0.13", 15008), "10.244.0.13:8080", WEB, uid("shop/web-sick")),
                 id="pod-ip-addressed-directly-is-not-load-balanced-so-health-does-not-matter"),
    pytest.param("plain", "shop/client", ("192.0.2.7", 443), Passthrough(("192.0.2.7", 443)),
                 id="unknown-ip-passes-through"),
    # Waypoints.
    pytest.param("waypoint", "shop/client", ("10.96.0.10", 80),
                 HboneToWaypoint(WP_POD, "10.96.0.10:80", WP, uid("shop/wp-waypoint"), svc("wp"), service=svc("web")),
                 id="vip-with-a-waypoint-goes-to-the-waypoint-authority-keeps-the-vip"),
    pytest.param("waypoint", "shop/client", ("10.96.0.10", 9999),
                 HboneToWaypoint(WP_POD, "10.96.0.10:9999", WP, uid("shop/wp-waypoint"), svc("wp"), service=svc("web")),
                 id="vip-with-a-waypoint-any-port-goes-to-the-waypoint"),
    pytest.param("waypoint", "shop/client", ("10.244.0.20", 5432),
                 HboneToWaypoint(WP_POD, "10.244.0.20:5432", WP, uid("shop/wp-waypoint"), svc("wp"),
                                 workload_uid=uid("shop/db")),
                 id="pod-ip-with-a-workload-waypoint-goes-to-the-waypoint"),
    pytest.param("waypoint", "shop/impostor", ("10.244.0.20", 5432),
                 HboneToWaypoint(WP_POD, "10.244.0.20:5432", WP, uid("shop/wp-waypoint"), svc("wp"),
                                 workload_uid=uid("shop/db")),
                 id="same-identity-as-the-waypoint-but-not-its-pod-still-goes-to-the-waypoint"),
    pytest.param("waypoint", "shop/wp-waypoint", ("10.96.0.10", 80),
                 HboneToPod(("10.244.0.11", 15008), "10.244.0.11:8080", WEB, uid("shop/web-0"), svc("web")),
                 id="source-is-the-service-waypoint-goes-to-the-endpoint"),
    pytest.param("waypoint", "shop/wp-waypoint", ("10.244.0.20", 5432),
                 HboneToPod(("10.244.0.20", 15008), "10.244.0.20:5432", spiffe("db"), uid("shop/db")),
                 id="source-is-the-workload-waypoint-goes-to-the-pod"),
    pytest.param("waypoint", "shop/client", ("10.96.0.20", 5432),
                 HboneToPod(("10.244.0.20", 15008), "10.244.0.20:5432", spiffe("db"), uid("shop/db"), svc("db")),
                 id="vip-addressed-ignores-the-endpoints-workload-waypoint-as-istio"),
])
def test_plan(world_name, src, destination, expected):
    state = world(world_name)
    assert plan_outbound(source(state, src), destination, state, RoundRobin()) == expected


def test_waypoint_without_a_running_pod_is_refused():
    state = world("waypoint", not_running=("shop/wp-waypoint",))
    client = source(state, "shop/client")
    assert plan_outbound(client, ("10.96.0.10", 80), state, RoundRobin()) == Refuse(
        f"waypoint {svc('wp')} of service {svc('web')} has no healthy endpoint")
    assert plan_outbound(client, ("10.244.0.20", 5432), state, RoundRobin()) == Refuse(
        f"waypoint {svc('wp')} of workload {uid('shop/db')} has no healthy endpoint")


def test_waypoint_discovery_has_not_sent_is_refused_not_bypassed():
    state = world("waypoint", missing=(svc("wp"),))
    assert plan_outbound(source(state, "shop/client"), ("10.96.0.10", 80), state, RoundRobin()) == Refuse(
        f"waypoint {svc('wp')} of service {svc('web')} is unknown")


def test_expected_identities_include_the_services_subject_alt_names():
    addresses = addresses_of(*WORLDS["plain"])
    addresses[svc("web")].service.subject_alt_names.extend(
        ["spiffe://cluster.local/ns/shop/sa/web-canary", "not a spiffe id"])
    state = ProxyState.from_addresses(addresses)
    plan = plan_outbound(source(state, "shop/client"), ("10.96.0.10", 80), state, RoundRobin())
    assert plan.expected_identities == (WEB, spiffe("web-canary"))  # the invalid SAN is skipped


# ---------------------------------------------------------------- load balancing through the planner


def authorities(state: ProxyState, balancer, n: int, destination=("10.96.0.10", 80)) -> list[str]:
    client = source(state, "shop/client")
    return [plan_outbound(client, destination, state, balancer).authority for _ in range(n)]


def test_round_robin_spreads_a_vip_evenly_and_skips_the_unhealthy_endpoint():
    state = world("plain")
    assert authorities(state, RoundRobin(), 6) == ["10.244.0.11:8080", "10.244.0.12:8080"] * 3


def test_endpoints_are_the_healthy_ones_unless_asked_otherwise():
    state = world("plain")
    sick = state.workloads[uid("shop/web-sick")]
    assert sick.status == wpb.UNHEALTHY  # the control plane's own flag, not ours
    assert [e.uid for e in state.endpoints(svc("web"), 80, healthy_only=False)] == [
        uid("shop/web-0"), uid("shop/web-1"), uid("shop/web-sick")]
    assert [e.uid for e in state.endpoints(svc("web"), 80)] == [uid("shop/web-0"), uid("shop/web-1")]


def test_least_requests_prefers_the_idle_endpoint():
    state = world("plain")
    balancer = LeastRequests()
    balancer.started(uid("shop/web-0"))
    assert authorities(state, balancer, 3) == ["10.244.0.12:8080"] * 3  # web-1 is idle
    balancer.started(uid("shop/web-1"))
    balancer.started(uid("shop/web-1"))
    assert authorities(state, balancer, 1) == ["10.244.0.11:8080"]  # now web-0 has fewer
    balancer.finished(uid("shop/web-1"))
    balancer.finished(uid("shop/web-1"))
    balancer.finished(uid("shop/web-0"))
    # All idle again: ties in turn, after web-0 (the last one picked for this service).
    assert authorities(state, balancer, 4) == ["10.244.0.12:8080", "10.244.0.11:8080"] * 2


# ---------------------------------------------------------------- balancers alone


def eps(*uids: str) -> list[Endpoint]:
    return [Endpoint(u, wpb.Workload(uid=u), "10.0.0.1", 80) for u in uids]


@given(st.sets(st.text(min_size=1, max_size=4), min_size=1, max_size=8), st.integers(0, 50))
def test_round_robin_counts_differ_by_at_most_one(uids, picks):
    balancer, candidates = RoundRobin(), eps(*uids)
    counts = {u: 0 for u in uids}
    for _ in range(picks):
        counts[balancer.pick("s", candidates).uid] += 1
    assert max(counts.values()) - min(counts.values()) <= 1


def test_round_robin_state_is_per_service():
    balancer, candidates = RoundRobin(), eps("a", "b", "c")
    assert [balancer.pick("one", candidates).uid for _ in range(2)] == ["a", "b"]
    assert balancer.pick("two", candidates).uid == "a"
    assert balancer.pick("one", candidates).uid == "c"


def test_round_robin_keeps_its_turn_when_candidates_change():
    balancer = RoundRobin()
    assert balancer.pick("s", eps("a", "b", "c")).uid == "a"
    assert balancer.pick("s", eps("c", "a")).uid == "c"  # b left: the turn moves past it, order-free
    assert balancer.pick("s", eps("a", "b", "c")).uid == "a"


def test_least_requests_counts_per_pod_across_services_and_rejects_unmatched_finish():
    balancer = LeastRequests()
    balancer.started("a")
    assert balancer.pick("other", eps("a", "b")).uid == "b"
    assert balancer.open_requests("a") == 1
    balancer.finished("a")
    assert balancer.open_requests("a") == 0
    with pytest.raises(ValueError, match="without a matching started"):
        balancer.finished("a")


@pytest.mark.parametrize("balancer", [RoundRobin(), LeastRequests()], ids=["round-robin", "least-requests"])
def test_balancers_refuse_an_empty_choice(balancer):
    with pytest.raises(ValueError):
        balancer.pick("s", [])


# ---------------------------------------------------------------- state and plans


def test_state_indexes_what_the_control_plane_sends():
    state = world("waypoint")
    assert state.workload_by_ip("10.244.0.20").uid == uid("shop/db")
    assert state.workload_by_ip("10.96.0.20") is None
    assert state.service_by_vip("10.96.0.20").hostname == "db.shop.svc.cluster.local"
    assert state.service_by_vip("10.244.0.20") is None
    assert state.workload_by_ip("10.244.0.20", network="elsewhere") is None
    waypoint = state.waypoint_of(state.services[svc("web")].waypoint)
    assert (waypoint.service_key, waypoint.vip, waypoint.port) == (svc("wp"), "10.96.0.99", 15008)
    assert waypoint.identity() == WP
    assert str(waypoint.identity("example.org")) == "spiffe://example.org/ns/shop/sa/wp"
    assert [(e.uid, e.ip, e.port) for e in waypoint.endpoints] == [(uid("shop/wp-waypoint"), "10.244.0.50", 15008)]


def test_waypoint_named_by_address():
    state = world("waypoint")
    by_vip = wpb.GatewayAddress(address=wpb.NetworkAddress(address=bytes([10, 96, 0, 99])), hbone_mtls_port=15008)
    by_pod = wpb.GatewayAddress(address=wpb.NetworkAddress(address=bytes([10, 244, 0, 50])), hbone_mtls_port=15008)
    assert state.waypoint_of(by_vip).service_key == svc("wp")
    resolved = state.waypoint_of(by_pod)
    assert (resolved.service_key, resolved.identity(), [e.ip for e in resolved.endpoints]) == (
        None, WP, ["10.244.0.50"])
    wp_pod = source(state, "shop/wp-waypoint")
    assert state.is_waypoint(wp_pod, by_vip) and state.is_waypoint(wp_pod, by_pod)
    assert not state.is_waypoint(source(state, "shop/impostor"), by_pod)
    nowhere = wpb.GatewayAddress(address=wpb.NetworkAddress(address=bytes([10, 9, 9, 9])), hbone_mtls_port=15008)
    assert state.waypoint_of(nowhere) is None


def test_named_target_port_a_pod_lacks_makes_it_no_endpoint_of_that_port():
    docs, ips, vips = WORLDS["plain"]
    extra = """
---
apiVersion: v1
kind: Pod
metadata: {name: web-bare, namespace: shop, labels: {app: web}}
spec: {serviceAccountName: web, containers: [{name: app}]}
"""
    state = ProxyState.from_addresses(addresses_of(docs + extra, {**ips, "shop/web-bare": "10.244.0.15"}, vips))
    assert uid("shop/web-bare") not in [e.uid for e in state.endpoints(svc("web"), 80)]
    assert uid("shop/web-bare") in [e.uid for e in state.endpoints(svc("web"), 81)]  # numeric target


def test_a_port_only_the_workload_lists_is_no_service_port():
    # As Istio's load_balance: the Service's ports decide which ports exist; a workload's own port
    # map only overrides the target of a listed one.
    addresses = addresses_of(*WORLDS["plain"])
    addresses[uid("shop/web-0")].workload.services[svc("web")].ports.add(service_port=8443, target_port=8443)
    state = ProxyState.from_addresses(addresses)
    assert state.endpoints(svc("web"), 8443) == ()
    assert plan_outbound(source(state, "shop/client"), ("10.96.0.10", 8443), state, RoundRobin()) == Refuse(
        f"service {svc('web')} has no port 8443")


def test_building_ignores_addresses_of_a_bad_length():
    bad = wpb.Workload(uid="u", namespace="shop", addresses=[b"\x01\x02\x03", bytes([10, 0, 0, 1])])
    state = ProxyState.from_addresses({"u": wpb.Address(workload=bad)})
    assert state.workload_by_ip("10.0.0.1").uid == "u"
    assert len(state.workloads) == 1


@pytest.mark.parametrize("make", [
    pytest.param(lambda: Passthrough(("10.0.0.1", 0)), id="port-zero"),
    pytest.param(lambda: Passthrough(("", 80)), id="no-ip"),
    pytest.param(lambda: HboneToPod(("10.0.0.1", 70000), "10.0.0.1:80", WEB, "u"), id="port-too-big"),
    pytest.param(lambda: Refuse(""), id="refusal-without-reason"),
])
def test_plans_validate_themselves(make):
    with pytest.raises(ValueError):
        make()


def test_an_ipv6_destinations_authority_is_bracketed():
    """The control plane sends IPv4 only today; a dual-stack pod's CONNECT must still be well formed."""
    web = wpb.Workload(uid="w", name="web-0", namespace="shop", service_account="web", tunnel_protocol=wpb.HBONE,
                       addresses=[ipaddress.IPv6Address("fd00::11").packed])
    client = wpb.Workload(uid="c", name="client", namespace="shop", service_account="client",
                          tunnel_protocol=wpb.HBONE, addresses=[ipaddress.IPv6Address("fd00::10").packed])
    state = ProxyState.from_addresses({"w": wpb.Address(workload=web), "c": wpb.Address(workload=client)})
    assert plan_outbound(client, ("fd00::11", 8080), state, RoundRobin()) == HboneToPod(
        ("fd00::11", 15008), "[fd00::11]:8080", SpiffeId("cluster.local", "shop", "web"), "w")


def test_plans_are_frozen():
    plan = Passthrough(("10.0.0.1", 80))
    with pytest.raises(AttributeError):
        plan.address = ("10.0.0.2", 80)


# ---------------------------------------------------------------- load balancing by locality

# Pods on two nodes (a third node runs only a client) behind Services with each kind of load balancing.
SPREAD = """
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: client-a, namespace: shop, labels: {app: client}}
spec: {serviceAccountName: client, containers: [{name: app}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client-c, namespace: shop, labels: {app: client}}
spec: {serviceAccountName: client, containers: [{name: app}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-a, namespace: shop, labels: {app: web}}
spec: {serviceAccountName: web, containers: [{name: app}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-b, namespace: shop, labels: {app: web}}
spec: {serviceAccountName: web, containers: [{name: app}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: web-local, namespace: shop}
spec: {selector: {app: web}, internalTrafficPolicy: Local, ports: [{port: 80, targetPort: 8080}]}
"""
SPREAD_IPS = {"shop/client-a": "10.244.0.10", "shop/client-c": "10.244.2.10", "shop/web-a": "10.244.0.11",
              "shop/web-b": "10.244.1.11"}
SPREAD_NODES = {"shop/client-a": "node-a", "shop/client-c": "node-c", "shop/web-a": "node-a", "shop/web-b": "node-b"}
SPREAD_VIPS = {"shop/web": "10.96.0.10", "shop/web-local": "10.96.0.11"}


def spread() -> ProxyState:
    return ProxyState.from_addresses(
        discovery_view(SPREAD, SPREAD_IPS, SPREAD_VIPS, nodes=SPREAD_NODES)[ADDRESS_TYPE_URL])


def picked(state: ProxyState, src: str, vip: str, times: int = 4) -> list:
    balancer = RoundRobin()
    return [plan_outbound(source(state, src), (vip, 80), state, balancer) for _ in range(times)]


def test_internal_traffic_policy_local_keeps_a_client_on_its_own_node():
    state = spread()
    assert {p.workload_uid for p in picked(state, "shop/client-a", "10.96.0.10")} == \
        {uid("shop/web-a"), uid("shop/web-b")}  # without the policy: both nodes
    assert [p.workload_uid for p in picked(state, "shop/client-a", "10.96.0.11")] == [uid("shop/web-a")] * 4


def test_internal_traffic_policy_local_refuses_a_client_on_a_node_without_an_endpoint():
    state = spread()
    (plan,) = picked(state, "shop/client-c", "10.96.0.11", times=1)
    assert plan == Refuse(f"service {svc('web-local')} has no healthy endpoint for port 80 that matches this "
                          "client in NODE (STRICT), as its load balancing requires")


def _at(uid_: str, node: str = "n", region: str = "r", zone: str = "z", network: str = "") -> Endpoint:
    workload = wpb.Workload(uid=uid_, node=node, network=network,
                            locality=wpb.Locality(region=region, zone=zone))
    return Endpoint(uid_, workload, "10.0.0.1", 80)


PREFER_CLOSE = wpb.LoadBalancing(routing_preference=[wpb.LoadBalancing.NETWORK, wpb.LoadBalancing.REGION,
                                                     wpb.LoadBalancing.ZONE, wpb.LoadBalancing.SUBZONE],
                                 mode=wpb.LoadBalancing.FAILOVER)


@pytest.mark.parametrize("endpoints, expected", [
    pytest.param([_at("same-zone"), _at("other-zone", zone="y"), _at("other-region", region="q")], {"same-zone"},
                 id="the-same-zone-first"),
    pytest.param([_at("other-zone", zone="y"), _at("other-region", region="q", zone="z")], {"other-zone"},
                 id="then-the-same-region-a-same-zone-name-elsewhere-does-not-count"),
    pytest.param([_at("q1", region="q"), _at("q2", region="q", zone="y")], {"q1", "q2"},
                 id="then-anything-on-the-network"),
    pytest.param([_at("near", network="far"), _at("far", network="far")], {"near", "far"},
                 id="other-network-only-still-served"),
])
def test_prefer_close_fails_over_to_the_closest_endpoints(endpoints, expected):
    client = wpb.Workload(uid="c", node="n", locality=wpb.Locality(region="r", zone="z"))
    assert {e.uid for e in closest(client, endpoints, PREFER_CLOSE)} == expected


# ---------------------------------------------------------------- capacity


def _weighted(uid_: str, capacity: int | None) -> Endpoint:
    workload = wpb.Workload(uid=uid_)
    if capacity is not None:
        workload.capacity.value = capacity
    return Endpoint(uid_, workload, "10.0.0.1", 80)


@pytest.mark.parametrize("capacities, expected", [
    pytest.param({"a": None, "b": None}, "abababab", id="unset-is-1-a-plain-rotation"),
    pytest.param({"a": 3, "b": 1}, "aaabaaab", id="three-to-one"),
    pytest.param({"a": 0, "b": 2}, "bbbbbbbb", id="zero-takes-nothing-while-another-has-capacity"),
    pytest.param({"a": 0, "b": 0}, "abababab", id="all-zero-falls-back-to-a-rotation"),
])
def test_round_robin_weighs_endpoints_by_capacity(capacities, expected):
    endpoints = [_weighted(u, c) for u, c in capacities.items()]
    balancer = RoundRobin()
    assert "".join(balancer.pick("svc", endpoints).uid for _ in range(8)) == expected


def test_round_robin_can_ignore_capacity():
    endpoints = [_weighted("a", 3), _weighted("b", 1)]
    balancer = RoundRobin(weighted=False)
    assert "".join(balancer.pick("svc", endpoints).uid for _ in range(4)) == "abab"


def test_capacity_is_on_the_wire_as_istio_has_it():
    field = wpb.Workload.DESCRIPTOR.fields_by_name["capacity"]
    assert (field.number, field.message_type.full_name) == (27, "google.protobuf.UInt32Value")
    assert wpb.Workload.FromString(bytes([0xDA, 0x01, 0x02, 0x08, 0x05])).capacity.value == 5  # 27: {1: 5}
