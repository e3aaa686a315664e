"""AuthorizationPolicy and PeerAuthentication → the L4 ``istio.security.Authorization`` ztunnel enforces.

Policy rows compare the whole translated message with one written by hand: a rule is a Group, its
from / to / each when are clauses (AND), the alternatives of a clause are Matches (OR).
"""

from __future__ import annotations

import ipaddress

import pytest
from google.protobuf.empty_pb2 import Empty

from controlplane import authz
from mesh import resources as r
from mesh.api import authorization_pb2 as pb
from tests.controlplane.test_view import (
    authorization_policy,
    build,
    namespace,
    peer_authentication,
    pod,
    resources_of,
    workload,
)

ROOT = "istio-system"


def policy(spec: dict, ns: str = "shop") -> r.AuthorizationPolicy:
    (resource,) = resources_of(authorization_policy("p", ns, spec))
    return resource


def translate(spec: dict, ns: str = "shop") -> pb.Authorization | None:
    return authz.translate_policy(policy(spec, ns), ROOT)


def exact(value: str) -> pb.StringMatch:
    return pb.StringMatch(exact=value)


def prefix(value: str) -> pb.StringMatch:
    return pb.StringMatch(prefix=value)


def suffix(value: str) -> pb.StringMatch:
    return pb.StringMatch(suffix=value)


PRESENT = pb.StringMatch(presence=Empty())


def cidr(text: str) -> pb.Address:
    network = ipaddress.ip_network(text, strict=False)
    return pb.Address(address=network.network_address.packed, length=network.prefixlen)


def group(*clauses: list[pb.Match]) -> pb.Group:
    """``group([m1, m2], [m3])``: (m1 OR m2) AND m3."""
    return pb.Group(rules=[pb.Rules(matches=matches) for matches in clauses])


M = pb.Match
GET = {"operation": {"methods": ["GET"]}}


def to(**operation) -> dict:
    return {"operation": operation}


def src(**source) -> dict:
    return {"source": source}


def when(key: str, values=(), not_values=()) -> dict:
    condition: dict = {"key": key}
    if values:
        condition["values"] = list(values)
    if not_values:
        condition["notValues"] = list(not_values)
    return condition


# ---------------------------------------------------------------- policy rules

RULES = [
    # id, action, rules, expected groups
    ("allow-without-rules-allows-nothing", "ALLOW", None, []),
    ("allow-empty-rule-list-allows-nothing", "ALLOW", [], []),
    ("empty-rule-matches-everything", "ALLOW", [{}], [group()]),
    ("deny-empty-rule-denies-everything", "DENY", [{}], [group()]),
    ("principals-exact", "ALLOW", [{"from": [src(principals=["cluster.local/ns/a/sa/b"])]}],
     [group([M(principals=[exact("cluster.local/ns/a/sa/b")])])]),
    ("principals-wildcards-and-spiffe-prefix", "ALLOW",
     [{"from": [src(principals=["*", "cluster.local/ns/a/*", "*/sa/b", "spiffe://cluster.local/ns/c/sa/d"],
                    notPrincipals=["*/sa/evil"])]}],
     [group([M(principals=[PRESENT, prefix("cluster.local/ns/a/"), suffix("/sa/b"), exact("cluster.local/ns/c/sa/d")],
               not_principals=[suffix("/sa/evil")])])]),
    ("suffix-wins-over-prefix-as-in-istio", "ALLOW", [{"from": [src(namespaces=["*mid*"])]}],
     [group([M(namespaces=[suffix("mid*")])])]),
    ("namespaces", "DENY", [{"from": [src(namespaces=["a", "team-*"], notNamespaces=["kube-system"])]}],
     [group([M(namespaces=[exact("a"), prefix("team-")], not_namespaces=[exact("kube-system")])])]),
    ("ip-blocks", "ALLOW",
     [{"from": [src(ipBlocks=["10.0.0.0/8", "192.168.1.7", "10.1.2.3/16", "fd00::/8"], notIpBlocks=["10.9.0.0/16"])]}],
     [group([M(source_ips=[pb.Address(address=bytes([10, 0, 0, 0]), length=8),
                           pb.Address(address=bytes([192, 168, 1, 7]), length=32),
                           pb.Address(address=bytes([10, 1, 0, 0]), length=16),
                           pb.Address(address=bytes([0xfd] + [0] * 15), length=8)],
               not_source_ips=[cidr("10.9.0.0/16")])])]),
    ("ports", "ALLOW", [{"to": [to(ports=["8080", "9090"], notPorts=["9091"])]}],
     [group([M(destination_ports=[8080, 9090], not_destination_ports=[9091])])]),
    ("sources-are-alternatives", "ALLOW", [{"from": [src(namespaces=["a"]), src(principals=["td/ns/b/sa/c"])]}],
     [group([M(namespaces=[exact("a")]), M(principals=[exact("td/ns/b/sa/c")])])]),
    ("from-and-to-are-both-required", "ALLOW", [{"from": [src(namespaces=["a"])], "to": [to(ports=["80"])]}],
     [group([M(namespaces=[exact("a")])], [M(destination_ports=[80])])]),
    ("rules-are-alternatives", "ALLOW", [{"from": [src(namespaces=["a"])]}, {"to": [to(ports=["80"])]}],
     [group([M(namespaces=[exact("a")])]), group([M(destination_ports=[80])])]),
    ("when-l4-keys", "ALLOW",
     [{"when": [when("source.ip", ["10.0.0.0/8"], ["10.0.0.1"]), when("source.namespace", ["a*"], ["ab"]),
                when("source.principal", ["spiffe://td/ns/a/sa/b"], ["*/sa/c"]),
                when("destination.ip", ["10.96.0.10"], ["10.96.0.0/31"]),
                when("destination.port", ["80", "443"], ["8080"])]}],
     [group([M(source_ips=[cidr("10.0.0.0/8")], not_source_ips=[cidr("10.0.0.1/32")])],
            [M(namespaces=[prefix("a")], not_namespaces=[exact("ab")])],
            [M(principals=[exact("td/ns/a/sa/b")], not_principals=[suffix("/sa/c")])],
            [M(destination_ips=[cidr("10.96.0.10/32")], not_destination_ips=[cidr("10.96.0.0/31")])],
            [M(destination_ports=[80, 443], not_destination_ports=[8080])])]),
    # L7 parts at L4, ALLOW: an alternative that needs L7 can never match.
    ("allow-l7-only-rule-is-dropped-denies-all", "ALLOW", [{"to": [GET]}], []),
    ("allow-l7-rule-dropped-others-kept", "ALLOW", [{"to": [GET]}, {"to": [to(ports=["80"])]}],
     [group([M(destination_ports=[80])])]),
    ("allow-l7-with-ports-in-one-operation-is-dropped", "ALLOW", [{"to": [to(ports=["80"], methods=["GET"])]}], []),
    ("allow-l7-alternative-drops-the-whole-rule", "ALLOW", [{"to": [GET, to(ports=["8080"])]}], []),
    ("allow-l7-alternative-drops-only-its-rule", "ALLOW", [{"to": [to(ports=["80"]), GET]}, {"to": [to(ports=["81"])]}],
     [group([M(destination_ports=[81])])]),
    ("allow-every-l7-kind-in-operations", "ALLOW",
     [{"to": [to(hosts=["a"])]}, {"to": [to(notHosts=["a"])]}, {"to": [to(paths=["/a"])]},
      {"to": [to(notPaths=["/a"])]}, {"to": [to(notMethods=["GET"])]}], []),
    ("allow-request-principals-dropped", "ALLOW", [{"from": [src(requestPrincipals=["iss/sub"])]}], []),
    ("allow-not-request-principals-dropped", "ALLOW", [{"from": [src(notRequestPrincipals=["*"])]}], []),
    ("allow-remote-ip-blocks-dropped", "ALLOW", [{"from": [src(remoteIpBlocks=["1.2.3.4"])]}], []),
    ("allow-not-remote-ip-blocks-dropped", "ALLOW", [{"from": [src(notRemoteIpBlocks=["1.2.3.4"])]}], []),
    ("allow-l7-source-mixed-with-l4-is-dropped", "ALLOW",
     [{"from": [src(principals=["td/ns/a/sa/b"], requestPrincipals=["iss/sub"])]}], []),
    ("allow-l7-source-alternative-drops-the-rule", "ALLOW",
     [{"from": [src(requestPrincipals=["iss/sub"]), src(namespaces=["a"])]}], []),
    ("allow-request-condition-dropped", "ALLOW",
     [{"from": [src(namespaces=["a"])], "when": [when("request.headers[x-id]", ["1"])]}], []),
    ("allow-jwt-claim-condition-dropped", "ALLOW", [{"when": [when("request.auth.claims[iss]", ["me"])]}], []),
    ("allow-remote-ip-condition-dropped", "ALLOW", [{"when": [when("remote.ip", ["1.2.3.4"])]}], []),
    # DENY: the L7 fields are removed; an alternative left empty matches nothing (Istio's ztunnel skips it).
    ("deny-l7-fields-removed-keeps-ports", "DENY", [{"to": [to(ports=["80"], methods=["GET"])]}],
     [group([M(destination_ports=[80])])]),
    ("deny-l7-only-operation-has-no-effect", "DENY", [{"to": [GET]}], []),
    ("deny-l7-only-alternative-is-skipped", "DENY",
     [{"from": [src(namespaces=["a"])], "to": [GET, to(ports=["80"])]}],
     [group([M(namespaces=[exact("a")])], [M(destination_ports=[80])])]),
    ("deny-request-principals-removed", "DENY",
     [{"from": [src(principals=["td/ns/a/sa/b"], requestPrincipals=["iss/sub"], remoteIpBlocks=["1.2.3.4"])]}],
     [group([M(principals=[exact("td/ns/a/sa/b")])])]),
    ("deny-request-condition-never-matches", "DENY",
     [{"to": [to(ports=["80"])], "when": [when("request.headers[x-id]", ["1"]), when("source.namespace", ["a"])]}],
     []),
    ("deny-other-rules-kept", "DENY", [{"to": [GET]}, {"to": [to(ports=["22"])]}],
     [group([M(destination_ports=[22])])]),
    # serviceAccounts (Istio's ServiceAccountMatch): "ns/sa", or "sa" in the policy's namespace.
    ("service-accounts", "ALLOW",
     [{"from": [src(namespaces=["default"], serviceAccounts=["default/curl", "web"], notServiceAccounts=["x/y"])]}],
     [group([M(namespaces=[exact("default")],
               service_accounts=[pb.ServiceAccountMatch(namespace="default", service_account="curl"),
                                 pb.ServiceAccountMatch(namespace="shop", service_account="web")],
               not_service_accounts=[pb.ServiceAccountMatch(namespace="x", service_account="y")])])]),
    # A field the mesh does not understand: an ALLOW rule with one never matches...
    ("allow-unknown-source-field-drops-the-rule", "ALLOW",
     [{"from": [src(namespaces=["default"], serviceAcounts=["default/curl"])]}, {"to": [to(ports=["81"])]}],
     [group([M(destination_ports=[81])])]),
    ("allow-unknown-rule-field-drops-the-rule", "ALLOW", [{"to": [to(ports=["80"])], "fromm": []}], []),
    ("allow-unknown-condition-field-drops-the-rule", "ALLOW",
     [{"when": [{"key": "source.ip", "values": ["1.2.3.4"], "notValue": ["1.2.3.4"]}]}], []),
    # ... and a DENY rule keeps as wide as its known fields.
    ("deny-unknown-field-keeps-known-fields", "DENY",
     [{"from": [src(namespaces=["a"], serviceAcounts=["a/b"])], "to": [to(ports=["80"], portz=["81"])]}],
     [group([M(namespaces=[exact("a")])], [M(destination_ports=[80])])]),
    ("deny-unknown-only-source-denies-everyone", "DENY",
     [{"from": [src(serviceAcounts=["a/b"])], "to": [to(ports=["80"])]}], [group([M(destination_ports=[80])])]),
]


@pytest.mark.parametrize("action, rules, expected", [row[1:] for row in RULES], ids=[row[0] for row in RULES])
def test_policy_rules(action, rules, expected):
    spec: dict = {"action": action, "selector": {"matchLabels": {"app": "web"}}}
    if rules is not None:
        spec["rules"] = rules
    assert translate(spec) == pb.Authorization(
        name="p", namespace="shop", scope=pb.WORKLOAD_SELECTOR, action=pb.ALLOW if action == "ALLOW" else pb.DENY,
        groups=expected)


def test_no_empty_match_is_ever_sent():
    """An empty Match would mean "anything" here but "nothing" to Istio's ztunnel: never send one."""
    for _, action, rules, _ in RULES:
        translated = translate({"action": action, "rules": rules or []})
        for g in translated.groups:
            for clause in g.rules:
                assert M() not in clause.matches and len(clause.matches) > 0


@pytest.mark.parametrize("ns, spec, scope", [
    pytest.param("shop", {"selector": {"matchLabels": {"app": "web"}}}, pb.WORKLOAD_SELECTOR, id="selector"),
    pytest.param("shop", {}, pb.NAMESPACE, id="no-selector-namespace"),
    pytest.param(ROOT, {}, pb.GLOBAL, id="root-namespace-global"),
    pytest.param(ROOT, {"selector": {"matchLabels": {"app": "web"}}}, pb.WORKLOAD_SELECTOR, id="root-with-selector"),
])
def test_scope(ns, spec, scope):
    assert translate(spec, ns).scope == scope


@pytest.mark.parametrize("spec", [
    pytest.param({"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "wp"}]},
                 id="targetRefs-gateway"),
    pytest.param({"targetRefs": [{"kind": "Service", "group": "", "name": "web"}], "action": "DENY"},
                 id="targetRefs-service"),
    pytest.param({"targetRef": {"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "wp"}},
                 id="targetRef-singular"),
    pytest.param({"action": "AUDIT"}, id="audit"),
])
def test_policies_ztunnel_does_not_enforce(spec):
    assert translate(spec) is None


@pytest.mark.parametrize("rule, parts", [
    pytest.param({"from": [src(namespaces=["a"])], "to": [to(ports=["80"])], "when": [when("source.ip", ["1.2.3.4"])]},
                 [], id="l4-only"),
    pytest.param({"from": [src(namespaces=["a"]), src(requestPrincipals=["x"], notRemoteIpBlocks=["1.2.3.4"])]},
                 [("from[1].source", ("request_principals", "not_remote_ip_blocks"))], id="sources"),
    pytest.param({"to": [to(methods=["GET"], notPaths=["/x"], hosts=["h"])]},
                 [("to[0].operation", ("hosts", "methods", "not_paths"))], id="operations"),
    pytest.param({"when": [when("destination.port", ["80"]), when("request.headers[x]", ["1"])]},
                 [("when[1]", ("request.headers[x]",))], id="conditions"),
])
def test_l7_parts_of_rule(rule, parts):
    (parsed,) = policy({"rules": [rule]}).rules
    assert authz.l7_parts_of_rule(parsed) == parts


# ---------------------------------------------------------------- PeerAuthentication

STRICT = {"mtls": {"mode": "STRICT"}}
PERMISSIVE = {"mtls": {"mode": "PERMISSIVE"}}
DISABLE = {"mtls": {"mode": "DISABLE"}}
UNSET: dict = {}
ON_A = {"selector": {"matchLabels": {"app": "a"}}}


def ports(**modes: str) -> dict:
    """``ports(p8080="STRICT")`` → portLevelMtls."""
    return {"portLevelMtls": {name.removeprefix("p"): {"mode": mode} for name, mode in modes.items()}}


def deny_plaintext(**match) -> list[pb.Group]:
    return [group([M(not_principals=[PRESENT], **match)])]


def mesh(spec):
    return peer_authentication("default", ROOT, spec)


def ns_policy(spec, name="ns-policy"):
    return peer_authentication(name, "shop", spec)


def on_a(spec):
    return peer_authentication("on-a", "shop", {**ON_A, **spec})


CONVERTED = authz.CONVERTED_PEER_AUTHENTICATION
MESH_KEY = f"{ROOT}/{CONVERTED}default"
NS_KEY = f"shop/{CONVERTED}ns-policy"
A_KEY = f"shop/{CONVERTED}on-a"

PEER = [
    # id, PeerAuthentications, {pod: (attached converted policy, its groups) or None}
    ("nothing", [], {"a": None, "b": None}),
    ("mesh-strict", [mesh(STRICT)], {"a": (MESH_KEY, deny_plaintext()), "b": (MESH_KEY, deny_plaintext())}),
    ("mesh-permissive", [mesh(PERMISSIVE)], {"a": None, "b": None}),
    ("namespace-strict", [ns_policy(STRICT)], {"a": (NS_KEY, deny_plaintext()), "b": (NS_KEY, deny_plaintext())}),
    ("namespace-permissive-overrides-mesh-strict", [mesh(STRICT), ns_policy(PERMISSIVE)], {"a": None, "b": None}),
    ("namespace-disable-overrides-mesh-strict", [mesh(STRICT), ns_policy(DISABLE)], {"a": None, "b": None}),
    ("namespace-unset-inherits-mesh-strict", [mesh(STRICT), ns_policy(UNSET)],
     {"a": (MESH_KEY, deny_plaintext()), "b": (MESH_KEY, deny_plaintext())}),
    ("namespace-strict-overrides-mesh-permissive", [mesh(PERMISSIVE), ns_policy(STRICT)],
     {"a": (NS_KEY, deny_plaintext()), "b": (NS_KEY, deny_plaintext())}),
    ("workload-permissive-overrides-namespace-strict", [ns_policy(STRICT), on_a(PERMISSIVE)],
     {"a": None, "b": (NS_KEY, deny_plaintext())}),
    ("workload-disable-overrides-mesh-strict", [mesh(STRICT), on_a(DISABLE)],
     {"a": None, "b": (MESH_KEY, deny_plaintext())}),
    ("workload-strict-in-permissive-namespace", [ns_policy(PERMISSIVE), on_a(STRICT)],
     {"a": (A_KEY, deny_plaintext()), "b": None}),
    ("workload-unset-inherits-namespace-strict", [ns_policy(STRICT), on_a(UNSET)],
     {"a": (A_KEY, deny_plaintext()), "b": (NS_KEY, deny_plaintext())}),
    ("workload-unset-inherits-permissive", [ns_policy(PERMISSIVE), on_a(UNSET)], {"a": None, "b": None}),
    ("strict-ports-under-permissive", [on_a({**PERMISSIVE, **ports(p8080="STRICT", p9090="STRICT")})],
     {"a": (A_KEY, deny_plaintext(destination_ports=[8080, 9090])), "b": None}),
    ("strict-port-under-inherited-permissive", [mesh(PERMISSIVE), on_a(ports(p8080="STRICT"))],
     {"a": (A_KEY, deny_plaintext(destination_ports=[8080])), "b": None}),
    ("permissive-ports-under-strict", [on_a({**STRICT, **ports(p9090="PERMISSIVE", p9091="DISABLE")})],
     {"a": (A_KEY, deny_plaintext(not_destination_ports=[9090, 9091])), "b": None}),
    ("permissive-port-under-inherited-strict", [ns_policy(STRICT), on_a(ports(p9090="PERMISSIVE"))],
     {"a": (A_KEY, deny_plaintext(not_destination_ports=[9090])), "b": (NS_KEY, deny_plaintext())}),
    ("unset-port-inherits-the-workload-mode", [ns_policy(STRICT), on_a({**PERMISSIVE, **ports(p8080="UNSET")})],
     {"a": None, "b": (NS_KEY, deny_plaintext())}),
    ("empty-selector-is-namespace-wide", [peer_authentication("ns-policy", "shop", {"selector": {"matchLabels": {}},
                                                                                  **STRICT})],
     {"a": (NS_KEY, deny_plaintext()), "b": (NS_KEY, deny_plaintext())}),
    ("oldest-by-name-of-two-namespace-policies", [ns_policy(PERMISSIVE, "z-later"), ns_policy(STRICT, "a-first")],
     {"a": (f"shop/{CONVERTED}a-first", deny_plaintext()), "b": (f"shop/{CONVERTED}a-first", deny_plaintext())}),
    ("other-namespace-does-not-apply", [peer_authentication("strict", "other", STRICT)], {"a": None, "b": None}),
    ("root-namespace-selector-policy-is-not-mesh-wide", [peer_authentication("sel", ROOT, {**ON_A, **STRICT})],
     {"a": None, "b": None}),
]


@pytest.mark.parametrize("policies, expected", [row[1:] for row in PEER], ids=[row[0] for row in PEER])
def test_peer_authentication(policies, expected):
    view = build(namespace("shop"), namespace(ROOT), pod("a"), pod("b"), *policies)
    for name, want in expected.items():
        attached = list(workload(view, f"shop/{name}").authorization_policies)
        if want is None:
            assert attached == [], name
            continue
        key, groups = want
        assert attached == [key], name
        converted = view.authorizations[key]
        assert converted == pb.Authorization(name=key.split("/")[1], namespace=key.split("/")[0],
                                             scope=pb.WORKLOAD_SELECTOR, action=pb.DENY, groups=groups), name
    # Converted policies exist only when attached somewhere.
    attached_anywhere = {k for w in view.workloads.values() for k in w.authorization_policies}
    assert set(view.authorizations) == attached_anywhere


def test_peer_authentication_beside_authorization_policies():
    view = build(pod("a"), ns_policy(STRICT),
                 authorization_policy("allow-a", "shop", {**ON_A, "rules": [{"from": [src(namespaces=["x"])]}]}))
    assert list(workload(view, "shop/a").authorization_policies) == ["shop/allow-a", NS_KEY]  # sorted


@pytest.mark.parametrize("workload_mode, namespace_mode, mesh_mode, expected", [
    pytest.param(None, None, None, "PERMISSIVE", id="default-permissive"),
    pytest.param(None, None, "STRICT", "STRICT", id="mesh"),
    pytest.param(None, "UNSET", "STRICT", "STRICT", id="namespace-unset"),
    pytest.param(None, "DISABLE", "STRICT", "DISABLE", id="namespace-wins"),
    pytest.param("UNSET", "UNSET", "STRICT", "STRICT", id="all-unset-but-mesh"),
    pytest.param("PERMISSIVE", "STRICT", "STRICT", "PERMISSIVE", id="workload-wins"),
])
def test_effective_mtls(workload_mode, namespace_mode, mesh_mode, expected):
    def pa(mode, selector=None):
        if mode is None:
            return None
        return r.PeerAuthentication(r.Meta("x", "shop"), r.Origin("t.yaml", 1), mode, selector)
    mode, _ = authz.effective_mtls(pa(workload_mode, {"app": "a"}), pa(namespace_mode), pa(mesh_mode))
    assert mode.mode == expected


def test_dry_run_annotation_is_sent():
    """``istio.io/dry-run: "true"`` → ``Authorization.dry_run`` (Istio's field 6), for ztunnel to log only."""
    (resource,) = resources_of("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
                               "metadata: {name: p, namespace: shop, annotations: {istio.io/dry-run: 'true'}}\n"
                               "spec: {action: DENY, rules: [{}]}\n")
    assert authz.translate_policy(resource, ROOT).dry_run is True
    assert translate({"action": "DENY", "rules": [{}]}).dry_run is False
    assert pb.Authorization.DESCRIPTOR.fields_by_name["dry_run"].number == 6


# trustDomains / notTrustDomains: the peer's trust domain, together with the source's other fields.
def _allowed(spec_source: dict, action: str, peer: str | None) -> bool:
    from mesh.identity import SpiffeId
    from ztunnel.policy import ConnectionAttributes, authorize

    compiled = translate({"action": action, "rules": [{"from": [spec_source]}]})
    identity = SpiffeId.parse(peer) if peer else None
    return authorize(ConnectionAttributes("10.0.0.1", identity, "10.0.0.2", 80), [compiled]).allowed


@pytest.mark.parametrize("source, peer, allowed", [
    (src(trustDomains=["corp.example"]), "spiffe://corp.example/ns/a/sa/b", True),
    (src(trustDomains=["corp.example"]), "spiffe://cluster.local/ns/a/sa/b", False),
    (src(trustDomains=["corp.example"]), None, False),
    # a domain that is a prefix of another is not that other
    (src(trustDomains=["corp"]), "spiffe://corp.example/ns/a/sa/b", False),
    (src(trustDomains=["*"]), "spiffe://any.where/ns/a/sa/b", True),
    (src(trustDomains=["*"]), None, False),
    # with principals, both must hold (Istio ANDs a source's fields)
    (src(trustDomains=["corp.example"], principals=["cluster.local/ns/a/sa/b"]), "spiffe://cluster.local/ns/a/sa/b",
     False),
    (src(trustDomains=["corp.example"], principals=["*"]), "spiffe://cluster.local/ns/a/sa/b", False),
    (src(trustDomains=["corp.example"], principals=["corp*"]), "spiffe://corp.example/ns/a/sa/b", True),
    (src(trustDomains=["corp.example"], principals=["*/ns/a/sa/b"]), "spiffe://corp.example/ns/a/sa/b", True),
    (src(trustDomains=["corp.example"], principals=["*/ns/a/sa/b"]), "spiffe://cluster.local/ns/a/sa/b", False),
    # a suffix the intersection cannot express: an ALLOW matches less, never more
    (src(trustDomains=["corp.example"], principals=["*sa/b"]), "spiffe://cluster.local/ns/a/sa/b", False),
    (src(trustDomains=["corp.example"], principals=["*sa/b"]), "spiffe://corp.example/ns/a/sa/b", False),
    (src(trustDomains=["corp.example"], namespaces=["a"]), "spiffe://corp.example/ns/b/sa/b", False),
    (src(notTrustDomains=["corp.example"]), "spiffe://corp.example/ns/a/sa/b", False),
    (src(notTrustDomains=["corp.example"]), "spiffe://cluster.local/ns/a/sa/b", True),
    (src(notTrustDomains=["corp.example"], notPrincipals=["cluster.local/ns/a/*"]), "spiffe://cluster.local/ns/a/sa/b",
     False),
])
def test_trust_domains_in_allow(source, peer, allowed):
    assert _allowed(source, "ALLOW", peer) is allowed


@pytest.mark.parametrize("source, peer, denied", [
    (src(trustDomains=["corp.example"]), "spiffe://corp.example/ns/a/sa/b", True),
    (src(trustDomains=["corp.example"]), "spiffe://cluster.local/ns/a/sa/b", False),
    # a suffix the intersection cannot express: a DENY denies more, never less
    (src(trustDomains=["corp.example"], principals=["*sa/b"]), "spiffe://corp.example/ns/a/sa/b", True),
    (src(trustDomains=["corp.example"], principals=["*sa/b"]), "spiffe://cluster.local/ns/a/sa/b", True),
    (src(notTrustDomains=["cluster.local"]), None, True),
])
def test_trust_domains_in_deny(source, peer, denied):
    assert _allowed(source, "DENY", peer) is not denied


@pytest.mark.parametrize("value", ["corp.*", "*.example", "Corp", "a/b"])
def test_partial_trust_domain_wildcards_are_errors(value):
    from mesh.parse import parse_text

    result = parse_text(yaml_policy(value), "p.yaml")
    assert [p.field for p in result.errors] == ["spec.rules[0].from[0].source.trustDomains[0]"]


def yaml_policy(domain: str) -> str:
    return f"""apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: p, namespace: shop}}
spec:
  rules:
  - from:
    - source: {{trustDomains: ["{domain}"]}}
"""
