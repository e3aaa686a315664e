"""The L4 authorization engine (``ztunnel.policy``): tables over single Matches, over the structure
of a policy, over whole decisions, and end to end from AuthorizationPolicy / PeerAuthentication YAML
through ``mesh.parse``, ``controlplane.authz`` and ``controlplane.view`` to the verdict.
"""

from __future__ import annotations

import ipaddress
import textwrap

import pytest
from hypothesis import given, strategies as st

from controlplane import authz
from controlplane.view import ClusterState, DataplaneView, MeshConfig, PodStatus, compute_view, workload_uid
from mesh.api import authorization_pb2 as pb, workload_pb2 as wpb
from mesh.identity import SpiffeId
from mesh.parse import parse_text
from tests.controlplane.test_authz import PRESENT, exact, prefix, suffix  # the StringMatch forms, built once
from ztunnel.policy import (
    ConnectionAttributes,
    Decision,
    applicable_policies,
    authorize,
    clause_holds,
    compiled,
    group_holds,
    match_holds,
    policy_matches,
)

ROOT = "istio-system"
M = pb.Match


def conn(identity: str | None = "spiffe://cluster.local/ns/shop/sa/client", src: str = "10.244.1.7",
         dst: str = "10.244.0.5", port: int = 8080) -> ConnectionAttributes:
    return ConnectionAttributes(src, SpiffeId.parse(identity) if identity else None, dst, port)


def cidr(text: str) -> pb.Address:
    network = ipaddress.ip_network(text)
    return pb.Address(address=network.network_address.packed, length=network.prefixlen)


def sa(namespace: str, name: str) -> pb.ServiceAccountMatch:
    return pb.ServiceAccountMatch(namespace=namespace, service_account=name)


# ---------------------------------------------------------------- one Match

TLS = conn()  # shop/client from 10.244.1.7 to 10.244.0.5:8080
OTHER = conn("spiffe://td-alt/ns/ops/sa/admin", src="10.9.0.3", dst="10.244.0.6", port=9090)
PLAIN = conn(None)  # same addresses as TLS, no identity
V6 = conn(src="fd00::7", dst="fd00::5")
CONNS = (TLS, OTHER, PLAIN, V6)

MATCHES = [
    # id, Match, (TLS, OTHER, PLAIN, V6)
    ("principals-exact", M(principals=[exact("cluster.local/ns/shop/sa/client")]), (True, False, False, True)),
    ("principals-prefix", M(principals=[prefix("cluster.local/ns/shop/")]), (True, False, False, True)),
    ("principals-suffix", M(principals=[suffix("/sa/admin")]), (False, True, False, False)),
    ("principals-presence", M(principals=[PRESENT]), (True, True, False, True)),
    ("principals-any-entry", M(principals=[exact("x"), suffix("/sa/admin")]), (False, True, False, False)),
    ("principals-compare-without-the-scheme", M(principals=[exact("spiffe://cluster.local/ns/shop/sa/client")]),
     (False, False, False, False)),
    ("not-principals-exact", M(not_principals=[exact("cluster.local/ns/shop/sa/client")]), (False, True, True, False)),
    ("not-principals-prefix", M(not_principals=[prefix("td-alt/")]), (True, False, True, True)),
    ("not-principals-suffix", M(not_principals=[suffix("/sa/admin")]), (True, False, True, True)),
    ("not-principals-presence-is-plaintext-only", M(not_principals=[PRESENT]), (False, False, True, False)),
    ("namespaces-exact", M(namespaces=[exact("shop")]), (True, False, False, True)),
    ("namespaces-prefix", M(namespaces=[prefix("op")]), (False, True, False, False)),
    ("namespaces-suffix", M(namespaces=[suffix("hop")]), (True, False, False, True)),
    ("namespaces-presence", M(namespaces=[PRESENT]), (True, True, False, True)),
    ("not-namespaces", M(not_namespaces=[exact("shop")]), (False, True, True, False)),
    ("not-namespaces-presence", M(not_namespaces=[PRESENT]), (False, False, True, False)),
    ("service-accounts", M(service_accounts=[sa("shop", "client")]), (True, False, False, True)),
    ("service-accounts-ignore-trust-domain", M(service_accounts=[sa("ops", "admin")]), (False, True, False, False)),
    ("service-accounts-need-both-parts", M(service_accounts=[sa("shop", "admin"), sa("ops", "client")]),
     (False, False, False, False)),
    ("not-service-accounts", M(not_service_accounts=[sa("shop", "client")]), (False, True, True, False)),
    ("source-ips-cidr", M(source_ips=[cidr("10.244.0.0/16")]), (True, False, True, False)),
    ("source-ips-host", M(source_ips=[cidr("10.9.0.3/32")]), (False, True, False, False)),
    ("source-ips-host-bits-ignored", M(source_ips=[pb.Address(address=bytes([10, 244, 9, 9]), length=16)]),
     (True, False, True, False)),
    ("source-ips-v4-everything-but-no-v6", M(source_ips=[cidr("0.0.0.0/0")]), (True, True, True, False)),
    ("source-ips-v6", M(source_ips=[cidr("fd00::/8")]), (False, False, False, True)),
    ("not-source-ips", M(not_source_ips=[cidr("10.244.0.0/16")]), (False, True, False, True)),
    ("not-source-ips-v6", M(not_source_ips=[cidr("fd00::/8")]), (True, True, True, False)),
    ("destination-ips", M(destination_ips=[cidr("10.244.0.5/32")]), (True, False, True, False)),
    ("not-destination-ips", M(not_destination_ips=[cidr("10.244.0.5/32")]), (False, True, False, True)),
    ("destination-ports", M(destination_ports=[8080]), (True, False, True, True)),
    ("destination-ports-any", M(destination_ports=[80, 9090]), (False, True, False, False)),
    ("not-destination-ports", M(not_destination_ports=[8080]), (False, True, False, False)),
    ("fields-are-all-required", M(namespaces=[PRESENT], destination_ports=[8080]), (True, False, False, True)),
    ("positive-and-not-twin-together", M(source_ips=[cidr("10.0.0.0/8")], not_source_ips=[cidr("10.9.0.0/16")]),
     (True, False, True, False)),
    ("empty-match-never-holds", M(), (False, False, False, False)),
    ("unset-string-match-matches-nothing", M(principals=[pb.StringMatch()]), (False, False, False, False)),
    ("unset-string-match-in-not-twin", M(not_principals=[pb.StringMatch()]), (True, True, True, True)),
    ("address-of-three-bytes-matches-nothing", M(source_ips=[pb.Address(address=b"\x0a\x00\x00", length=8)]),
     (False, False, False, False)),
    ("unreadable-only-entry-keeps-its-field", M(source_ips=[pb.Address(address=b"", length=0)],
                                                destination_ports=[8080]), (False, False, False, False)),
    ("prefix-too-long-matches-nothing", M(source_ips=[pb.Address(address=bytes([10, 9, 0, 3]), length=33)]),
     (False, False, False, False)),
    ("unreadable-entry-beside-a-good-one", M(source_ips=[pb.Address(address=b"\x01", length=8), cidr("10.9.0.3/32")]),
     (False, True, False, False)),
]


@pytest.mark.parametrize("match, expected", [row[1:] for row in MATCHES], ids=[row[0] for row in MATCHES])
def test_match(match, expected):
    assert tuple(match_holds(match, c) for c in CONNS) == expected


@pytest.mark.parametrize("match, port, expected", [
    pytest.param(M(destination_ports=[8080]), 0, False, id="unknown-port-matches-no-port"),
    pytest.param(M(not_destination_ports=[8080]), 0, True, id="unknown-port-satisfies-not-ports"),
    pytest.param(M(destination_ports=[0]), 0, False, id="port-zero-in-policy-is-not-a-wildcard"),
    pytest.param(M(destination_ports=[0, 8080]), 8080, True, id="port-zero-beside-a-real-port"),
    pytest.param(M(destination_ports=[65536 + 8080]), 8080, False, id="ports-are-not-truncated"),
])
def test_destination_port(match, port, expected):
    assert match_holds(match, conn(port=port)) is expected


# ---------------------------------------------------------------- clauses, groups, policies

NS_SHOP = M(namespaces=[exact("shop")])
NS_OPS = M(namespaces=[exact("ops")])
PORT_8080 = M(destination_ports=[8080])
PORT_9090 = M(destination_ports=[9090])


def group(*clauses: list[pb.Match]) -> pb.Group:
    """``group([m1, m2], [m3])``: (m1 OR m2) AND m3."""
    return pb.Group(rules=[pb.Rules(matches=matches) for matches in clauses])


@pytest.mark.parametrize("clause, expected", [
    pytest.param([NS_OPS, NS_SHOP], True, id="any-match-holds"),
    pytest.param([NS_OPS, PORT_9090], False, id="none-holds"),
    pytest.param([], True, id="no-matches-holds"),
    pytest.param([M()], False, id="only-an-empty-match-does-not-hold"),
    pytest.param([M(), NS_SHOP], True, id="empty-match-is-skipped"),
])
def test_clause(clause, expected):
    assert clause_holds(pb.Rules(matches=clause), TLS) is expected


@pytest.mark.parametrize("g, expected", [
    pytest.param(group(), True, id="no-clauses-matches-all"),
    pytest.param(group([NS_SHOP], [PORT_8080]), True, id="all-clauses-hold"),
    pytest.param(group([NS_SHOP], [PORT_9090]), False, id="one-clause-fails"),
    pytest.param(group([NS_OPS, NS_SHOP], [PORT_9090, PORT_8080]), True, id="alternatives-within-each-clause"),
    pytest.param(group([], [PORT_9090]), False, id="empty-clause-does-not-rescue-a-failing-one"),
    pytest.param(group([M()]), False, id="clause-of-an-empty-match"),
])
def test_group(g, expected):
    assert group_holds(g, TLS) is expected


def authorization(name: str, action: int, *groups: pb.Group, ns: str = "shop",
                  scope: int = pb.WORKLOAD_SELECTOR) -> pb.Authorization:
    return pb.Authorization(name=name, namespace=ns, scope=scope, action=action, groups=list(groups))


def allow(name: str, *groups: pb.Group, **kw) -> pb.Authorization:
    return authorization(name, pb.ALLOW, *groups, **kw)


def deny(name: str, *groups: pb.Group, **kw) -> pb.Authorization:
    return authorization(name, pb.DENY, *groups, **kw)


@pytest.mark.parametrize("policy, expected", [
    pytest.param(allow("a"), False, id="no-groups-matches-nothing"),
    pytest.param(deny("d"), False, id="deny-without-groups-matches-nothing"),
    pytest.param(allow("a", group()), True, id="empty-group-matches-everything"),
    pytest.param(allow("a", group([NS_OPS]), group([PORT_8080])), True, id="any-group"),
    pytest.param(allow("a", group([NS_OPS]), group([PORT_9090])), False, id="no-group"),
])
def test_policy_matches(policy, expected):
    assert policy_matches(policy, TLS) is expected


# ---------------------------------------------------------------- decisions

DECISIONS = [
    # id, policies, connection, expected decision
    ("no-policies-allow", [], TLS, Decision(True, None, "no ALLOW policies")),
    ("deny-that-does-not-match-allows", [deny("d", group([NS_OPS]))], TLS, Decision(True, None, "no ALLOW policies")),
    ("deny-that-matches", [deny("d", group([NS_SHOP]))], TLS,
     Decision(False, "shop/d", "denied by DENY policy shop/d")),
    ("deny-before-allow", [allow("a", group([NS_SHOP])), deny("d", group([NS_SHOP]))], TLS,
     Decision(False, "shop/d", "denied by DENY policy shop/d")),
    ("first-matching-deny-decides", [deny("d1", group([NS_OPS])), deny("d2", group()), deny("d3", group())], TLS,
     Decision(False, "shop/d2", "denied by DENY policy shop/d2")),
    ("allow-that-matches", [allow("a", group([NS_SHOP]))], TLS, Decision(True, "shop/a", "allowed by shop/a")),
    ("allow-that-does-not-match-denies", [allow("a", group([NS_OPS]))], TLS,
     Decision(False, None, "no ALLOW policy matched")),
    ("any-allow-suffices", [allow("a", group([NS_OPS])), allow("b", group([PORT_8080]))], TLS,
     Decision(True, "shop/b", "allowed by shop/b")),
    ("allow-without-groups-denies-everything", [allow("a")], TLS, Decision(False, None, "no ALLOW policy matched")),
    ("allow-without-groups-denies-plaintext", [allow("a")], PLAIN, Decision(False, None, "no ALLOW policy matched")),
    ("deny-without-groups-denies-nothing", [deny("d")], PLAIN, Decision(True, None, "no ALLOW policies")),
    ("allow-empty-group-allows-all", [allow("a", group())], PLAIN, Decision(True, "shop/a", "allowed by shop/a")),
    ("deny-empty-group-denies-all", [deny("d", group()), allow("a", group())], PLAIN,
     Decision(False, "shop/d", "denied by DENY policy shop/d")),
    ("deny-not-matching-then-allow", [deny("d", group([NS_OPS])), allow("a", group([NS_SHOP]))], TLS,
     Decision(True, "shop/a", "allowed by shop/a")),
    ("unsupported-action-counts-as-deny", [authorization("x", 7, group()), allow("a", group())], TLS,
     Decision(False, "shop/x", "denied by policy shop/x with unsupported action 7")),
    ("unsupported-action-that-does-not-match", [authorization("x", 7, group([NS_OPS]))], TLS,
     Decision(True, None, "no ALLOW policies")),
    ("key-is-namespace-slash-name", [deny("d", group(), ns=ROOT, scope=pb.GLOBAL)], TLS,
     Decision(False, f"{ROOT}/d", f"denied by DENY policy {ROOT}/d")),
]


@pytest.mark.parametrize("policies, connection, expected", [row[1:] for row in DECISIONS],
                         ids=[row[0] for row in DECISIONS])
def test_authorize(policies, connection, expected):
    assert authorize(connection, policies) == expected


# ---------------------------------------------------------------- from the user's YAML


def parse(text: str) -> list:
    result = parse_text(textwrap.dedent(text), "policy.yaml")
    assert [str(p) for p in result.errors] == []
    return result.resources


def policy_yaml(spec: str, name: str = "p", ns: str = "shop") -> str:
    return (f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
            f"metadata:\n  name: {name}\n  namespace: {ns}\nspec:\n"
            + textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ") + "\n")


def translated(spec: str) -> pb.Authorization:
    (resource,) = parse(policy_yaml(spec))
    result = authz.translate_policy(resource, ROOT)
    assert result is not None
    return result


CLIENT = conn("spiffe://cluster.local/ns/shop/sa/client", src="10.244.1.7", port=8080)
ADMIN = conn("spiffe://cluster.local/ns/ops/sa/admin", src="10.245.0.9", port=9090)
PLAINTEXT = conn(None, src="192.168.1.20", port=8080)
NAMED = {"client": CLIENT, "admin": ADMIN, "plaintext": PLAINTEXT}

YAML = [
    # id, spec, {connection: allowed}
    ("allow-principal-exact", """
        action: ALLOW
        rules:
        - from:
          - source:
              principals: ["cluster.local/ns/shop/sa/client"]
     """, {"client": True, "admin": False, "plaintext": False}),
    ("allow-principal-with-spiffe-scheme", """
        rules:
        - from:
          - source:
              principals: ["spiffe://cluster.local/ns/ops/sa/admin"]
     """, {"client": False, "admin": True, "plaintext": False}),
    ("allow-principal-prefix", """
        rules:
        - from:
          - source:
              principals: ["cluster.local/ns/shop/*"]
     """, {"client": True, "admin": False, "plaintext": False}),
    ("allow-principal-suffix", """
        rules:
        - from:
          - source:
              principals: ["*/sa/admin"]
     """, {"client": False, "admin": True, "plaintext": False}),
    ("allow-any-principal-is-mtls-only", """
        rules:
        - from:
          - source:
              principals: ["*"]
     """, {"client": True, "admin": True, "plaintext": False}),
    ("allow-not-principals-admits-plaintext-as-istio", """
        rules:
        - from:
          - source:
              notPrincipals: ["cluster.local/ns/ops/sa/admin"]
     """, {"client": True, "admin": False, "plaintext": True}),
    ("deny-not-principals-any-requires-mtls", """
        action: DENY
        rules:
        - from:
          - source:
              notPrincipals: ["*"]
     """, {"client": True, "admin": True, "plaintext": False}),
    ("allow-namespaces", """
        rules:
        - from:
          - source:
              namespaces: ["ops"]
     """, {"client": False, "admin": True, "plaintext": False}),
    ("deny-not-namespaces", """
        action: DENY
        rules:
        - from:
          - source:
              notNamespaces: ["shop"]
     """, {"client": True, "admin": False, "plaintext": False}),
    ("allow-ip-blocks", """
        rules:
        - from:
          - source:
              ipBlocks: ["10.244.0.0/16", "192.168.1.20"]
     """, {"client": True, "admin": False, "plaintext": True}),
    ("allow-not-ip-blocks", """
        rules:
        - from:
          - source:
              notIpBlocks: ["10.244.0.0/16"]
     """, {"client": False, "admin": True, "plaintext": True}),
    ("allow-ports", """
        rules:
        - to:
          - operation:
              ports: ["9090"]
     """, {"client": False, "admin": True, "plaintext": False}),
    ("deny-not-ports", """
        action: DENY
        rules:
        - to:
          - operation:
              notPorts: ["8080"]
     """, {"client": True, "admin": False, "plaintext": True}),
    ("allow-from-and-to", """
        rules:
        - from:
          - source:
              namespaces: ["shop"]
          to:
          - operation:
              ports: ["8080"]
     """, {"client": True, "admin": False, "plaintext": False}),
    ("allow-either-rule", """
        rules:
        - from:
          - source:
              namespaces: ["ops"]
        - to:
          - operation:
              ports: ["8080"]
     """, {"client": True, "admin": True, "plaintext": True}),
    ("allow-when-l4-conditions", """
        rules:
        - when:
          - key: source.ip
            values: ["10.0.0.0/8"]
          - key: destination.port
            notValues: ["9090"]
     """, {"client": True, "admin": False, "plaintext": False}),
    ("allow-when-destination-ip", """
        rules:
        - when:
          - key: destination.ip
            values: ["10.244.0.5"]
          - key: source.principal
            values: ["cluster.local/ns/ops/*"]
     """, {"client": False, "admin": True, "plaintext": False}),
    ("allow-no-rules-allows-nothing", """
        action: ALLOW
     """, {"client": False, "admin": False, "plaintext": False}),
    ("allow-empty-rule-allows-everything", """
        rules:
        - {}
     """, {"client": True, "admin": True, "plaintext": True}),
    ("deny-empty-rule-denies-everything", """
        action: DENY
        rules:
        - {}
     """, {"client": False, "admin": False, "plaintext": False}),
    # L7 fields at L4: an ALLOW that needs them matches nothing; a DENY loses them and denies more.
    ("allow-methods-only-allows-nothing", """
        rules:
        - to:
          - operation:
              methods: ["GET"]
     """, {"client": False, "admin": False, "plaintext": False}),
    ("allow-l7-alternative-drops-the-whole-rule-as-istio", """
        rules:
        - to:
          - operation:
              methods: ["GET"]
          - operation:
              ports: ["9090"]
     """, {"client": False, "admin": False, "plaintext": False}),
    ("allow-request-principals-allows-nothing", """
        rules:
        - from:
          - source:
              requestPrincipals: ["*"]
     """, {"client": False, "admin": False, "plaintext": False}),
    ("deny-methods-alone-has-no-effect-at-l4", """
        action: DENY
        rules:
        - to:
          - operation:
              methods: ["GET"]
     """, {"client": True, "admin": True, "plaintext": True}),
    ("deny-methods-and-port-denies-the-port", """
        action: DENY
        rules:
        - to:
          - operation:
              methods: ["POST"]
              ports: ["9090"]
     """, {"client": True, "admin": False, "plaintext": True}),
    ("deny-header-condition-never-matches-at-l4", """
        action: DENY
        rules:
        - from:
          - source:
              namespaces: ["ops"]
          when:
          - key: request.headers[x-debug]
            values: ["1"]
     """, {"client": True, "admin": True, "plaintext": True}),
]


@pytest.mark.parametrize("spec, expected", [row[1:] for row in YAML], ids=[row[0] for row in YAML])
def test_policy_from_yaml(spec, expected):
    policy = translated(spec)
    assert {name: authorize(NAMED[name], [policy]).allowed for name in expected} == expected


# ---------------------------------------------------------------- through the view: scope and PeerAuthentication

NAMESPACES = """
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {istio.io/dataplane-mode: ambient}
---
apiVersion: v1
kind: Namespace
metadata:
  name: other
  labels: {istio.io/dataplane-mode: ambient}
---
apiVersion: v1
kind: Namespace
metadata: {name: istio-system}
"""


def pod_yaml(name: str, ns: str = "shop") -> str:
    return f"""
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {ns}
  labels: {{app: {name}}}
spec:
  serviceAccountName: {name}
  containers: [{{name: app}}]
"""


PODS = {("shop", "web"): "10.244.0.5", ("shop", "db"): "10.244.0.6", ("other", "web"): "10.244.0.7"}


def view_of(*docs: str) -> DataplaneView:
    resources = parse("\n---\n".join((NAMESPACES, *(pod_yaml(n, ns) for ns, n in PODS), *docs)))
    status = {key: PodStatus(ip, "node-a") for key, ip in PODS.items()}
    return compute_view(ClusterState.build(resources, status))


def workload(view: DataplaneView, ns: str, name: str) -> wpb.Workload:
    return view.workloads[workload_uid(MeshConfig(), ns, name)]


def peer_authentication_yaml(spec: str, name: str = "default", ns: str = "shop") -> str:
    return (f"apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
            f"metadata:\n  name: {name}\n  namespace: {ns}\nspec:\n"
            + textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ") + "\n")


def keys(policies: list[pb.Authorization]) -> list[str]:
    return [authz.policy_key(p.namespace, p.name) for p in policies]


def test_applicable_policies_by_scope():
    view = view_of(
        policy_yaml("action: DENY", name="mesh-wide", ns=ROOT),
        policy_yaml("selector: {matchLabels: {app: web}}", name="every-web", ns=ROOT),
        policy_yaml("action: DENY", name="shop-wide"),
        policy_yaml("selector: {matchLabels: {app: web}}", name="web-only"),
        policy_yaml("selector: {matchLabels: {app: db}}", name="db-only"),
        policy_yaml("action: DENY", name="other-wide", ns="other"),
        policy_yaml("targetRefs: [{kind: Service, group: '', name: web}]", name="waypoint-bound"),
        peer_authentication_yaml("mtls: {mode: STRICT}"),
    )
    strict = "shop/" + authz.CONVERTED_PEER_AUTHENTICATION + "default"
    assert keys(applicable_policies(workload(view, "shop", "web"), view.authorizations)) == [
        f"{ROOT}/mesh-wide", "shop/shop-wide", f"{ROOT}/every-web", strict, "shop/web-only"]
    assert keys(applicable_policies(workload(view, "shop", "db"), view.authorizations)) == [
        f"{ROOT}/mesh-wide", "shop/shop-wide", strict, "shop/db-only"]
    assert keys(applicable_policies(workload(view, "other", "web"), view.authorizations)) == [
        f"{ROOT}/mesh-wide", "other/other-wide", f"{ROOT}/every-web"]


def test_applicable_policies_root_namespace_is_a_parameter():
    view = view_of(policy_yaml("action: DENY", name="mesh-wide", ns=ROOT))
    web = workload(view, "shop", "web")
    assert keys(applicable_policies(web, view.authorizations)) == [f"{ROOT}/mesh-wide"]
    assert keys(applicable_policies(web, view.authorizations, root_namespace="mesh-root")) == []


@pytest.mark.parametrize("authorizations, named, expected", [
    pytest.param({"shop/g": deny("g", scope=pb.GLOBAL)}, [], ["shop/g"],
                 id="global-outside-the-root-namespace-is-namespace-wide"),
    pytest.param({"other/g": deny("g", ns="other", scope=pb.GLOBAL)}, [], [],
                 id="global-outside-the-root-namespace-stays-there"),
    pytest.param({"other/n": deny("n", ns="other", scope=pb.NAMESPACE)}, [], [], id="other-namespace"),
    pytest.param({"shop/s": deny("s")}, [], [], id="selector-policy-not-named"),
    pytest.param({"shop/s": deny("s")}, ["shop/s"], ["shop/s"], id="selector-policy-named"),
    pytest.param({}, ["shop/gone"], [], id="named-policy-not-yet-known-is-skipped"),
    pytest.param({"shop/n": deny("n", scope=pb.NAMESPACE)}, ["shop/n"], ["shop/n"], id="named-and-namespace-wide-once"),
])
def test_applicable_policies_edges(authorizations, named, expected):
    web = wpb.Workload(uid="u", name="web", namespace="shop", authorization_policies=named)
    assert keys(applicable_policies(web, authorizations)) == expected


def decide(view: DataplaneView, ns: str, name: str, connection: ConnectionAttributes) -> Decision:
    return authorize(connection, applicable_policies(workload(view, ns, name), view.authorizations))


MTLS = conn("spiffe://cluster.local/ns/other/sa/web", src="10.244.0.7", port=8080)
MESH_STRICT = peer_authentication_yaml("mtls: {mode: STRICT}", ns=ROOT)
SHOP_STRICT = peer_authentication_yaml("mtls: {mode: STRICT}")
SHOP_PERMISSIVE = peer_authentication_yaml("mtls: {mode: PERMISSIVE}")
CONVERTED = authz.CONVERTED_PEER_AUTHENTICATION
WEB_STRICT_BUT_9090 = peer_authentication_yaml("""
    selector: {matchLabels: {app: web}}
    mtls: {mode: STRICT}
    portLevelMtls:
      9090: {mode: PERMISSIVE}
""", name="web")  # portLevelMtls needs a selector, as in Istio


def denied_by(key: str) -> Decision:
    return Decision(False, key, f"denied by DENY policy {key}")


ALLOW_ALL = Decision(True, None, "no ALLOW policies")
NOT_OPS = policy_yaml("""
    rules:
    - from:
      - source:
          notPrincipals: ["cluster.local/ns/ops/*"]
""", name="not-ops")
MTLS_ONLY = policy_yaml("""
    rules:
    - from:
      - source:
          principals: ["*"]
""", name="mtls-only")


@pytest.mark.parametrize("docs, port, plaintext", [
    pytest.param([], 8080, ALLOW_ALL, id="no-peer-authentication"),
    pytest.param([MESH_STRICT], 8080, denied_by(f"{ROOT}/{CONVERTED}default"), id="mesh-strict-denies-plaintext"),
    pytest.param([SHOP_STRICT], 8080, denied_by(f"shop/{CONVERTED}default"), id="namespace-strict-denies-plaintext"),
    pytest.param([SHOP_PERMISSIVE], 8080, ALLOW_ALL, id="permissive"),
    pytest.param([MESH_STRICT, SHOP_PERMISSIVE], 8080, ALLOW_ALL, id="namespace-permissive-overrides-mesh-strict"),
    pytest.param([WEB_STRICT_BUT_9090], 9090, ALLOW_ALL, id="permissive-port-under-strict"),
    pytest.param([WEB_STRICT_BUT_9090], 8080, denied_by(f"shop/{CONVERTED}web"),
                 id="strict-port-beside-a-permissive-one"),
    pytest.param([SHOP_STRICT, NOT_OPS], 8080, denied_by(f"shop/{CONVERTED}default"),
                 id="strict-beats-an-allow-that-plaintext-satisfies"),
    pytest.param([NOT_OPS], 8080, Decision(True, "shop/not-ops", "allowed by shop/not-ops"),
                 id="not-principals-allow-admits-plaintext"),
    pytest.param([MTLS_ONLY], 8080, Decision(False, None, "no ALLOW policy matched"),
                 id="allow-principals-denies-plaintext"),
])
def test_peer_authentication(docs, port, plaintext):
    """Plaintext from other/web's address is judged by the converted policy; mTLS always passes."""
    view = view_of(*docs)
    assert decide(view, "shop", "web", conn(None, src="10.244.0.7", port=port)) == plaintext
    assert decide(view, "shop", "web", conn(str(MTLS.source_identity), src="10.244.0.7", port=port)).allowed


def test_l7_only_deny_at_l4_has_no_effect():
    view = view_of(policy_yaml("""
        selector: {matchLabels: {app: web}}
        action: DENY
        rules:
        - to:
          - operation:
              methods: ["GET"]
              paths: ["/admin"]
    """, name="no-admin"))
    assert decide(view, "shop", "web", MTLS) == Decision(True, None, "no ALLOW policies")
    assert decide(view, "shop", "db", MTLS) == Decision(True, None, "no ALLOW policies")
    assert decide(view, "other", "web", MTLS) == Decision(True, None, "no ALLOW policies")


def test_l7_allow_at_l4_allows_nothing_it_selects():
    view = view_of(policy_yaml("""
        selector: {matchLabels: {app: web}}
        rules:
        - to:
          - operation:
              methods: ["GET"]
    """, name="get-only"))
    assert decide(view, "shop", "web", MTLS) == Decision(False, None, "no ALLOW policy matched")
    assert decide(view, "shop", "db", MTLS) == Decision(True, None, "no ALLOW policies")


# ---------------------------------------------------------------- the connection and the compiled form


@pytest.mark.parametrize("kwargs, error", [
    pytest.param({"destination_port": 65536}, ValueError, id="port-too-large"),
    pytest.param({"destination_port": -1}, ValueError, id="negative-port"),
    pytest.param({"destination_port": True}, ValueError, id="bool-port"),
    pytest.param({"destination_port": "80"}, ValueError, id="text-port"),
    pytest.param({"source_ip": "10.0.0"}, ValueError, id="bad-source-ip"),
    pytest.param({"destination_ip": "pod"}, ValueError, id="bad-destination-ip"),
    pytest.param({"source_identity": "spiffe://cluster.local/ns/a/sa/b"}, TypeError, id="identity-as-text"),
])
def test_connection_attributes_validate(kwargs, error):
    args = {"source_ip": "10.0.0.1", "source_identity": None, "destination_ip": "10.0.0.2",
            "destination_port": 80, **kwargs}
    with pytest.raises(error):
        ConnectionAttributes(**args)


def test_connection_attributes_derive_from_the_identity():
    c = conn("spiffe://td/ns/shop/sa/client", src="::ffff:10.244.1.7", dst=b"\x0a\xf4\x00\x05")
    assert (c.source_principal, c.source_namespace, c.source_service_account) == (
        "td/ns/shop/sa/client", "shop", ("shop", "client"))
    assert c.source_ip == ipaddress.IPv4Address("10.244.1.7")  # IPv4-mapped compares as IPv4
    assert c.destination_ip == ipaddress.IPv4Address("10.244.0.5")
    assert match_holds(M(source_ips=[cidr("10.244.0.0/16")]), c)
    plain = conn(None)
    assert (plain.source_principal, plain.source_namespace, plain.source_service_account) == (None, None, None)


def test_compiled_once_per_message_and_never_stale():
    policy = allow("a", group([NS_SHOP]))
    assert compiled(policy) is compiled(policy)
    assert authorize(TLS, [policy]).allowed
    replacement = allow("a", group([NS_OPS]))  # discovery sends a new message, never mutates the old
    assert compiled(replacement) is not compiled(policy)
    assert not authorize(TLS, [replacement]).allowed


# ---------------------------------------------------------------- a field and its not_ twin

_FIELDS = {
    "principals": st.sampled_from([exact("cluster.local/ns/shop/sa/client"), prefix("cluster.local/ns/o"),
                                   suffix("/sa/admin"), PRESENT, pb.StringMatch()]),
    "namespaces": st.sampled_from([exact("shop"), prefix("o"), suffix("p"), PRESENT]),
    "service_accounts": st.sampled_from([sa("shop", "client"), sa("ops", "admin"), sa("shop", "admin")]),
    "source_ips": st.builds(lambda ip, n: pb.Address(address=ipaddress.ip_address(ip).packed, length=n),
                            st.sampled_from(["10.244.1.7", "10.9.0.0", "0.0.0.0", "fd00::"]), st.integers(0, 40)),
    "destination_ips": st.builds(lambda ip, n: pb.Address(address=ipaddress.ip_address(ip).packed, length=n),
                                 st.sampled_from(["10.244.0.5", "10.244.0.0", "fd00::5"]), st.integers(0, 32)),
    "destination_ports": st.sampled_from([0, 80, 8080, 9090]),
}
_CONNECTIONS = st.builds(
    ConnectionAttributes,
    st.sampled_from(["10.244.1.7", "10.9.0.3", "fd00::7", "::ffff:10.9.0.3"]),
    st.sampled_from([None, SpiffeId("cluster.local", "shop", "client"), SpiffeId("td", "ops", "admin")]),
    st.sampled_from(["10.244.0.5", "10.244.9.9", "fd00::5"]),
    st.sampled_from([0, 80, 8080, 9090]),
)


@given(st.sampled_from(sorted(_FIELDS)).flatmap(lambda f: st.tuples(st.just(f), st.lists(_FIELDS[f], min_size=1,
                                                                                          max_size=3))),
       _CONNECTIONS)
def test_a_field_and_its_not_twin_are_complements(field_entries, connection):
    name, entries = field_entries
    assert match_holds(M(**{name: entries}), connection) != match_holds(M(**{f"not_{name}": entries}), connection)


# ---------------------------------------------------------------- issue #9: never wider than written, dry-run


def test_service_accounts_allow_only_the_ones_named():
    """Istio's ``serviceAccounts`` (``ns/sa``): default/other is not default/curl."""
    policy = translated("""
        rules:
        - from:
          - source:
              namespaces: ["default"]
              serviceAccounts: ["default/curl"]
    """)
    curl = conn("spiffe://cluster.local/ns/default/sa/curl")
    other = conn("spiffe://cluster.local/ns/default/sa/other")
    assert [authorize(c, [policy]).allowed for c in (curl, other, conn(None))] == [True, False, False]


def test_an_unknown_field_never_widens_an_allow():
    policy = translated("""
        rules:
        - from:
          - source:
              namespaces: ["shop"]
              serviceAcounts: ["shop/admin"]
    """)
    assert {name: authorize(c, [policy]).allowed for name, c in NAMED.items()} == \
        {"client": False, "admin": False, "plaintext": False}


def test_an_unknown_field_keeps_a_deny_as_wide_as_its_known_fields():
    policy = translated("""
        action: DENY
        rules:
        - from:
          - source:
              namespaces: ["shop"]
              serviceAcounts: ["shop/admin"]
    """)
    assert {name: authorize(c, [policy]).allowed for name, c in NAMED.items()} == \
        {"client": False, "admin": True, "plaintext": True}


DRY_DENY = """
    action: DENY
    rules:
    - from:
      - source:
          namespaces: ["shop"]
"""
DRY_ALLOW = """
    rules:
    - from:
      - source:
          namespaces: ["ops"]
"""


def dry(spec: str, name: str) -> pb.Authorization:
    (resource,) = parse(policy_yaml(spec, name=name).replace(
        f"name: {name}\n", f"name: {name}\n  annotations: {{istio.io/dry-run: 'true'}}\n"))
    result = authz.translate_policy(resource, ROOT)
    assert result is not None and result.dry_run
    return result


def test_a_dry_run_deny_never_denies_and_says_what_it_would_do(caplog):
    policy = dry(DRY_DENY, "no-shop")
    caplog.set_level("INFO", logger="ambient.ztunnel.policy")
    client = conn("spiffe://cluster.local/ns/shop/sa/client")
    decision = authorize(client, [policy])
    assert decision == Decision(True, None, "no ALLOW policies", "dry-run policy shop/no-shop would deny: denied by "
                                "DENY policy shop/no-shop")
    authorize(client, [policy])  # decided again (the view changed): logged once per connection
    assert [r.getMessage() for r in caplog.records] == [
        "dry-run policy shop/no-shop would deny: denied by DENY policy shop/no-shop (enforced: no ALLOW policies)"]
    authorize(conn("spiffe://cluster.local/ns/shop/sa/client"), [policy])  # another connection: logged again
    assert len(caplog.records) == 2
    assert authorize(ADMIN, [policy]) == Decision(True, None, "no ALLOW policies",
                                                 "dry-run policy shop/no-shop would allow: no ALLOW policies")


def test_a_dry_run_allow_never_denies():
    policy = dry(DRY_ALLOW, "ops-only")
    assert authorize(CLIENT, [policy]) == Decision(True, None, "no ALLOW policies",
                                                  "dry-run policy shop/ops-only would deny: no ALLOW policy matched")
    assert authorize(ADMIN, [policy]).dry_run == "dry-run policy shop/ops-only would allow: allowed by shop/ops-only"


def test_a_dry_run_policy_beside_enforced_ones_changes_nothing():
    enforced = translated(DRY_ALLOW)  # shop/p: only ops
    policies = [enforced, dry(DRY_DENY, "no-shop"), dry("rules: [{}]", "everyone")]
    for name, c in NAMED.items():
        without = authorize(c, [enforced])
        decision = authorize(c, policies)
        assert (decision.allowed, decision.policy, decision.reason) == (without.allowed, without.policy,
                                                                        without.reason), name
    assert authorize(CLIENT, policies).dry_run == \
        "dry-run policy shop/no-shop would deny: denied by DENY policy shop/no-shop"
    assert authorize(PLAINTEXT, policies).dry_run == \
        "dry-run policy shop/everyone would allow: allowed by shop/everyone"


def test_without_dry_run_policies_a_decision_has_no_dry_run_note():
    assert authorize(CLIENT, [translated(DRY_DENY)]).dry_run is None
