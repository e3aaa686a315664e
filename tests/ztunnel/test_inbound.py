"""ztunnel's inbound decision (``decide_inbound(request, state)``) as a table, against what the
control plane sends.

Each world is Kubernetes YAML run through the control plane's own pipeline (``mesh.parse`` →
``ClusterState`` → ``compute_view`` → the packed resources discovery serves → unpacked again), so the
workloads, the waypoint and the authorizations (PeerAuthentications converted by ``controlplane.authz``)
are the protos ztunnel receives. Every row checks the whole decision: allowed, status, reason and
the policy named in the access log.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import pytest

from controlplane.authz import CONVERTED_PEER_AUTHENTICATION
from mesh.api import workload_pb2 as wpb
from mesh.api.types import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL
from mesh.identity import SpiffeId
from mesh.proxy_state import ProxyState
from tests.ztunnel.worlds import WAYPOINT_IPS, WAYPOINT_PODS, discovery_view, uid
from ztunnel.inbound import InboundDecision, InboundRequest, decide_inbound

# ---------------------------------------------------------------- worlds

# The shared waypoint world (tests/ztunnel/worlds.py) with the root namespace for mesh-wide policy.
BASE = WAYPOINT_PODS + """---
apiVersion: v1
kind: Namespace
metadata: {name: istio-system}
"""
IPS = {**WAYPOINT_IPS, "shop/api-0": "10.244.0.40"}
VIPS = {"shop/wp": "10.96.0.99", "shop/api": "10.96.0.40"}

# L4 policies of the web pod (two ALLOWs, one DENY) and of the db pod (only its waypoint may come).
POLICIES = """
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-client, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/client"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-metrics-port, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  rules: [{to: [{operation: {ports: ["9090"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-ops, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules: [{from: [{source: {namespaces: ["ops"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: db-from-waypoint, namespace: shop}
spec:
  selector: {matchLabels: {app: db}}
  rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/wp"]}}]}]
"""

STRICT = """
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec: {mtls: {mode: STRICT}}
"""

MESH_STRICT = """
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
"""

# A mesh-wide DENY of plaintext written as an AuthorizationPolicy of the root namespace (unlike a
# converted PeerAuthentication, not named by the workloads: it applies through the root namespace).
MESH_DENY_PLAINTEXT = """
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-mtls, namespace: istio-system}
spec:
  action: DENY
  rules: [{from: [{source: {notPrincipals: ["*"]}}]}]
"""

# The web pod's policies plus an ALLOW in dry-run: logged, never enforced, never named as considered.
DRY_RUN_ALLOW = """
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: trial-allow-ops, namespace: shop, annotations: {istio.io/dry-run: "true"}}
spec:
  selector: {matchLabels: {app: web}}
  rules: [{from: [{source: {namespaces: ["ops"]}}]}]
"""

# A Service that uses the waypoint (the pod behind it does not: its Workload has no waypoint), and
# the L4 ALLOW Istio's documentation recommends to make its pods reachable only through the waypoint.
SERVICE_WAYPOINT = """
---
apiVersion: v1
kind: Pod
metadata: {name: api-0, namespace: shop, labels: {app: api}}
spec: {serviceAccountName: api, containers: [{name: app}]}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop, labels: {istio.io/use-waypoint: wp}}
spec: {selector: {app: api}, ports: [{port: 80, targetPort: 8080}]}
"""
API_ONLY_FROM_WAYPOINT = """
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api-from-waypoint, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/wp"]}}]}]
"""

WORLDS = {"open": BASE, "policies": BASE + POLICIES, "dry-run": BASE + POLICIES + DRY_RUN_ALLOW,
          "strict": BASE + STRICT, "mesh-strict": BASE + MESH_STRICT,
          "mesh-deny": BASE + MESH_DENY_PLAINTEXT, "service-waypoint": BASE + SERVICE_WAYPOINT,
          "service-waypoint-only": BASE + SERVICE_WAYPOINT + API_ONLY_FROM_WAYPOINT}


@functools.cache
def world(name: str) -> ProxyState:
    """What discovery sends for the world, packed and unpacked again, indexed as ztunnel does."""
    view = discovery_view(WORLDS[name], IPS, VIPS)
    return ProxyState.from_addresses(view[ADDRESS_TYPE_URL], view[AUTHORIZATION_TYPE_URL])


def spiffe(account: str, ns: str = "shop") -> SpiffeId:
    return SpiffeId("cluster.local", ns, account)


CLIENT, WP, ADMIN, STRANGER = spiffe("client"), spiffe("wp"), spiffe("admin", "ops"), spiffe("x", "other")
CLIENT_IP, WP_IP, IMPOSTOR_IP, OFF_MESH_IP = "10.244.0.10", "10.244.0.50", "10.244.0.30", "192.0.2.7"
WEB_ALLOWS = "shop/allow-client,shop/allow-metrics-port"  # the ALLOW policies of web-0, as considered
CONVERTED = f"shop/{CONVERTED_PEER_AUTHENTICATION}default"


@dataclass(frozen=True)
class Case:
    world: str
    pod: str | None  # the destination pod; None: no workload at the address
    source_ip: str
    identity: SpiffeId | None  # the verified peer identity (None: plaintext)
    hbone: bool = True
    port: int = 8080
    served: bool = True


def request(case: Case) -> InboundRequest:
    """What the executor builds when the connection arrives at the pod's listener."""
    pod_uid = uid(case.pod) if case.pod else "no-such-pod"
    destination_ip = IPS[case.pod] if case.pod else "10.244.0.99"
    return InboundRequest(pod_uid=pod_uid, served=case.served, destination=(destination_ip, case.port),
                          source_ip=case.source_ip, peer_identity=case.identity, hbone=case.hbone)


def decide(case: Case, root_namespace: str | None = None) -> InboundDecision:
    state = world(case.world)
    if root_namespace is not None:
        state = dataclasses.replace(state, root_namespace=root_namespace)
    return decide_inbound(request(case), state)


def allowed(reason: str = "no ALLOW policies", policy: str | None = None) -> InboundDecision:
    return InboundDecision(True, 200, reason, policy)


def bypassed(pod: str) -> InboundDecision:
    return InboundDecision(False, 401, f"bypassed waypoint: {pod} must be reached through its waypoint")


def denied_by(key: str) -> InboundDecision:
    return InboundDecision(False, 401, f"denied by DENY policy {key}", key)


NO_ALLOW_MATCHED = InboundDecision(False, 401, "no ALLOW policy matched", WEB_ALLOWS)

# ---------------------------------------------------------------- the table

CASES = [
    # What is not served here: nothing to connect to.
    ("no-workload-is-503", Case("open", None, CLIENT_IP, CLIENT),
     InboundDecision(False, 503, "no workload at 10.244.0.99 is served by this ztunnel")),
    ("a-workload-this-ztunnel-does-not-serve-is-503", Case("open", "shop/web-0", CLIENT_IP, CLIENT, served=False),
     InboundDecision(False, 503, "no workload at 10.244.0.11 is served by this ztunnel")),
    ("not-served-is-503-even-for-plaintext", Case("open", None, CLIENT_IP, None, hbone=False),
     InboundDecision(False, 503, "no workload at 10.244.0.99 is served by this ztunnel")),
    # ztunnel's own listeners are never a destination: dialling them would loop back into ztunnel.
    *[(f"ztunnel-own-port-{port}-is-503-{'hbone' if hbone else 'plaintext'}",
       Case("open", "shop/web-0", CLIENT_IP, CLIENT if hbone else None, hbone=hbone, port=port),
       InboundDecision(False, 503, f"port {port} is ztunnel's own listener, not the app's"))
      for port in (15001, 15006, 15008) for hbone in (True, False)],
    # The waypoint rule.
    ("hbone-to-a-waypointed-pod-from-a-client-bypassed-it", Case("open", "shop/db", CLIENT_IP, CLIENT),
     bypassed("shop/db")),
    ("hbone-from-the-waypoint-pod-with-its-identity-passes", Case("open", "shop/db", WP_IP, WP), allowed()),
    ("waypoints-address-but-another-identity-bypassed", Case("open", "shop/db", WP_IP, CLIENT), bypassed("shop/db")),
    ("waypoints-identity-from-a-pod-that-is-not-the-waypoint", Case("open", "shop/db", IMPOSTOR_IP, WP),
     bypassed("shop/db")),
    ("waypoints-identity-from-outside-the-mesh", Case("open", "shop/db", OFF_MESH_IP, WP), bypassed("shop/db")),
    ("hbone-without-a-verified-identity-is-not-the-waypoint", Case("open", "shop/db", WP_IP, None),
     bypassed("shop/db")),
    ("waypoint-rule-not-applied-to-plaintext", Case("open", "shop/db", CLIENT_IP, None, hbone=False), allowed()),
    ("pod-without-a-waypoint-takes-any-hbone-peer", Case("open", "shop/web-0", CLIENT_IP, CLIENT), allowed()),
    # A Service's waypoint is for traffic addressed to the Service (its VIP): the source's ztunnel
    # sends that to the waypoint. A CONNECT to one of its pods names the pod's IP, as a connection
    # addressed to the pod does, and pod-addressed traffic does not use a service waypoint: Istio's
    # ztunnel lets it in (L4 policy decides), and so does this one. The L4 ALLOW for the waypoint's
    # principal that Istio documents is what makes such pods reachable only through the waypoint.
    ("service-waypoints-pod-reached-at-its-ip-is-l4-traffic", Case("service-waypoint", "shop/api-0", CLIENT_IP,
                                                                   CLIENT), allowed()),
    ("service-waypoints-pod-from-the-waypoint", Case("service-waypoint", "shop/api-0", WP_IP, WP), allowed()),
    ("service-waypoints-pod-only-from-the-waypoint-by-policy",
     Case("service-waypoint-only", "shop/api-0", CLIENT_IP, CLIENT),
     InboundDecision(False, 401, "no ALLOW policy matched", "shop/api-from-waypoint")),
    ("service-waypoints-pod-policy-sees-the-waypoint", Case("service-waypoint-only", "shop/api-0", WP_IP, WP),
     allowed("allowed by shop/api-from-waypoint", "shop/api-from-waypoint")),
    ("no-policies-allow-plaintext", Case("open", "shop/web-0", OFF_MESH_IP, None, hbone=False), allowed()),
    # L4 AuthorizationPolicy with the verified identity.
    ("allow-matches-the-verified-identity", Case("policies", "shop/web-0", CLIENT_IP, CLIENT),
     allowed("allowed by shop/allow-client", "shop/allow-client")),
    ("another-allow-matches-the-port", Case("policies", "shop/web-0", OFF_MESH_IP, STRANGER, port=9090),
     allowed("allowed by shop/allow-metrics-port", "shop/allow-metrics-port")),
    ("deny-matches-before-any-allow", Case("policies", "shop/web-0", OFF_MESH_IP, ADMIN, port=9090),
     denied_by("shop/deny-ops")),
    ("no-allow-matched-names-the-allows-considered", Case("policies", "shop/web-0", OFF_MESH_IP, STRANGER),
     NO_ALLOW_MATCHED),
    ("an-allowed-identity-from-any-address", Case("policies", "shop/web-0", OFF_MESH_IP, CLIENT),
     allowed("allowed by shop/allow-client", "shop/allow-client")),
    ("plaintext-has-no-principal", Case("policies", "shop/web-0", CLIENT_IP, None, hbone=False), NO_ALLOW_MATCHED),
    ("plaintext-still-meets-an-allow-without-principals",
     Case("policies", "shop/web-0", CLIENT_IP, None, hbone=False, port=9090),
     allowed("allowed by shop/allow-metrics-port", "shop/allow-metrics-port")),
    ("from-the-waypoint-the-policy-sees-the-waypoint", Case("policies", "shop/db", WP_IP, WP),
     allowed("allowed by shop/db-from-waypoint", "shop/db-from-waypoint")),
    ("the-waypoint-rule-comes-before-policy", Case("policies", "shop/db", CLIENT_IP, CLIENT), bypassed("shop/db")),
    ("plaintext-to-the-waypointed-pod-meets-its-policy", Case("policies", "shop/db", CLIENT_IP, None, hbone=False),
     InboundDecision(False, 401, "no ALLOW policy matched", "shop/db-from-waypoint")),
    # A dry-run ALLOW neither allows nor is named among the ALLOW policies that did not match.
    ("dry-run-allow-allows-nothing-and-is-not-named", Case("dry-run", "shop/web-0", OFF_MESH_IP, ADMIN),
     denied_by("shop/deny-ops")),
    ("dry-run-allow-is-not-among-the-allows-considered", Case("dry-run", "shop/web-0", OFF_MESH_IP, STRANGER),
     NO_ALLOW_MATCHED),
    # STRICT PeerAuthentication, converted by the control plane into a DENY of plaintext.
    ("strict-denies-plaintext", Case("strict", "shop/web-0", CLIENT_IP, None, hbone=False), denied_by(CONVERTED)),
    ("strict-denies-plaintext-to-a-waypointed-pod", Case("strict", "shop/db", CLIENT_IP, None, hbone=False),
     denied_by(CONVERTED)),
    ("strict-lets-mtls-through", Case("strict", "shop/web-0", CLIENT_IP, CLIENT), allowed()),
    ("strict-lets-the-waypoint-through", Case("strict", "shop/db", WP_IP, WP), allowed()),
    ("mesh-wide-strict-from-the-root-namespace", Case("mesh-strict", "shop/web-0", CLIENT_IP, None, hbone=False),
     denied_by(f"istio-system/{CONVERTED_PEER_AUTHENTICATION}default")),
]


@pytest.mark.parametrize("case, expected", [row[1:] for row in CASES], ids=[row[0] for row in CASES])
def test_decide_inbound(case, expected):
    assert decide(case) == expected


def test_the_root_namespace_is_a_parameter():
    plaintext = Case("mesh-deny", "shop/web-0", CLIENT_IP, None, hbone=False)
    assert decide(plaintext) == denied_by("istio-system/require-mtls")
    assert decide(plaintext, root_namespace="istio-system") == denied_by("istio-system/require-mtls")
    assert decide(plaintext, root_namespace="mesh-root") == allowed()


def test_the_worlds_are_what_the_rows_assume():
    """Guards the table: the db pod really has a waypoint, web-0 none, and the policies arrived."""
    state = world("policies")
    db, web = state.workloads[uid("shop/db")], state.workloads[uid("shop/web-0")]
    assert db.HasField("waypoint") and not web.HasField("waypoint")
    assert db.tunnel_protocol == web.tunnel_protocol == wpb.HBONE
    assert state.is_waypoint(state.workloads[uid("shop/wp-waypoint")], db.waypoint)
    assert not state.is_waypoint(state.workloads[uid("shop/impostor")], db.waypoint)
    assert sorted(state.authorizations) == [
        "shop/allow-client", "shop/allow-metrics-port", "shop/db-from-waypoint", "shop/deny-ops"]
    assert list(world("strict").authorizations) == [CONVERTED]
    served = world("service-waypoint")
    api = served.workloads[uid("shop/api-0")]
    assert not api.HasField("waypoint")  # the Service has the waypoint, its pod does not
    (key,) = api.services
    assert served.services[key].HasField("waypoint")


def test_a_policy_change_is_seen_by_the_next_decision():
    """``decide_inbound`` keeps nothing: the same connection decided against a new view (as
    ``ConnectionTracker.reevaluate`` does) follows the new policies."""
    once = request(Case("open", "shop/web-0", CLIENT_IP, None, hbone=False))
    assert decide_inbound(once, world("open")).allowed
    assert decide_inbound(once, world("strict")) == denied_by(CONVERTED)
    assert decide_inbound(once, world("open")).allowed


@pytest.mark.parametrize("changes", [
    pytest.param({"destination": ("10.244.0.11", 70000)}, id="port-out-of-range"),
    pytest.param({"destination": ("web-0", 8080)}, id="destination-not-an-ip"),
    pytest.param({"source_ip": "10.244.0.300"}, id="source-not-an-ip"),
])
def test_a_request_checks_its_addresses_when_built(changes):
    """A bad address is the caller's bug: it fails where the request is made, not in a later decision."""
    fields = dict(pod_uid=uid("shop/web-0"), served=True, destination=("10.244.0.11", 8080), source_ip=CLIENT_IP,
                  peer_identity=CLIENT, hbone=True)
    with pytest.raises(ValueError):
        InboundRequest(**{**fields, **changes})
