"""What discovery sends a waypoint, as tables: YAML in (parse → registry → view), L7Policy and Route out.

Every row is real YAML through ``tests.controlplane.waypoint_yaml.l7_config_from_yaml``: the same
pipeline the control plane runs, so a row also checks that the parser keeps what the translation needs.
"""

from __future__ import annotations

import pytest
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import text_format

from controlplane.server import snapshot_resources
from controlplane.validate import validate
from controlplane.view import ClusterState, PodStatus, compute_view
from controlplane.xds.protocol import DeltaStream
from controlplane.xds.snapshot import Snapshot
from mesh.api import waypoint_pb2 as wp
from mesh.api.types import (
    ADDRESS_TYPE_URL,
    AUTHORIZATION_TYPE_URL,
    L7_POLICY_TYPE_URL,
    ROUTE_TYPE_URL,
    WASM_PLUGIN_TYPE_URL,
)
from mesh.parse import parse_text
from mesh.source import Code
from tests.controlplane.waypoint_yaml import l7_config_from_yaml

WEB = "shop/web.shop.svc.cluster.local"
API = "shop/api.shop.svc.cluster.local"

BASE = """\
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: wp}}
---
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec: {selector: {app: api}, ports: [{name: grpc, port: 9090}]}
---
apiVersion: v1
kind: Service
metadata: {name: far, namespace: other}
spec: {selector: {app: far}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec: {containers: [{name: app}]}
---
apiVersion: v1
kind: Pod
metadata: {name: api-1, namespace: shop, labels: {app: api}}
spec: {containers: [{name: app}]}
---
apiVersion: v1
kind: Pod
metadata: {name: far-1, namespace: other, labels: {app: far}}
spec: {containers: [{name: app}]}
"""


def with_base(extra: str) -> str:
    return BASE + "---\n" + extra


def parse_message(cls, text: str):
    return text_format.Parse(text, cls())


# ---------------------------------------------------------------- policies


def policy_yaml(spec: str, ns: str = "shop", name: str = "p", annotations: str = "") -> str:
    meta = f"{{name: {name}, namespace: {ns}{', annotations: ' + annotations if annotations else ''}}}"
    return f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {meta}\nspec:\n{spec}"


GATEWAY_REF = "  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: wp}]\n"
SERVICE_REF = "  targetRefs: [{kind: Service, group: '', name: web}]\n"


@pytest.mark.parametrize("spec, ns, targets", [
    pytest.param(GATEWAY_REF, "shop", (["shop/wp"], []), id="gateway"),
    pytest.param(SERVICE_REF, "shop", ([], [WEB]), id="service"),
    pytest.param("  targetRefs: [{kind: Service, group: core, name: web}]\n", "shop", ([], [WEB]), id="core-group"),
    pytest.param("  targetRefs:\n  - {kind: Service, group: '', name: web}\n  - {kind: Service, group: '', name: api}\n"
                 "  - {kind: Gateway, group: gateway.networking.k8s.io, name: wp}\n"
                 "  - {kind: Service, group: '', name: web}\n", "shop", (["shop/wp"], [WEB, API]), id="several-once"),
    pytest.param("  targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: wp}\n", "shop",
                 (["shop/wp"], []), id="singular-targetRef"),
    pytest.param("  targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}]\n",
                 "istio-system", (["shop/wp"], []), id="gatewayclass-from-root"),
    # Not targets: a wrong group, a missing object, another namespace, a class outside the root.
    pytest.param("  targetRefs: [{kind: Gateway, name: wp}]\n", "shop", None, id="gateway-without-group"),
    pytest.param("  targetRefs: [{kind: Service, group: '', name: gone}]\n", "shop", None, id="missing-service"),
    pytest.param("  targetRefs: [{kind: Service, group: '', name: far, namespace: other}]\n", "shop", None,
                 id="cross-namespace"),
    pytest.param("  targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}]\n",
                 "shop", None, id="gatewayclass-outside-root"),
    pytest.param("  targetRefs: [{kind: Deployment, group: apps, name: web}]\n", "shop", None, id="other-kind"),
    pytest.param("  selector: {matchLabels: {app: web}}\n", "shop", None, id="l4-policy"),
])
def test_policy_targets(spec, ns, targets):
    policies, _, _ = l7_config_from_yaml(with_base(policy_yaml(spec + "  rules: [{}]\n", ns)))
    if targets is None:
        assert policies == []
        return
    (policy,) = policies
    assert (list(policy.gateways), list(policy.services)) == targets
    assert (policy.name, policy.namespace) == ("p", ns)


@pytest.mark.parametrize("spec, expected", [
    pytest.param("  rules: [{}]\n", "rules {}", id="allow-anything"),
    pytest.param("", "", id="no-rules-allows-nothing"),
    pytest.param("  rules:\n  - from: [{source: {serviceAccounts: [sleep, other/curl], notServiceAccounts: [bad]}}]\n",
                 'rules { from { service_accounts: "shop/sleep" service_accounts: "other/curl" '
                 'not_service_accounts: "shop/bad" } }', id="service-accounts-get-the-policy-namespace"),
    pytest.param("  rules:\n  - from: [{source: {principals: ['cluster.local/ns/a/sa/*'], "
                 "trustDomains: [td.example]}}]\n",
                 'rules { from { principals: "cluster.local/ns/a/sa/*" trust_domains: "td.example" } }',
                 id="principals-and-trust-domains-as-written"),
    pytest.param("  rules:\n  - from: [{source: {namespaces: [a], remoteIpBlocks: [10.0.0.0/8]}}]\n"
                 "    to: [{operation: {methods: [GET], paths: ['/api/*'], ports: ['8080'], hosts: [web]}}]\n"
                 "    when: [{key: 'request.headers[x-user]', values: [alice], notValues: [bob]}]\n",
                 'rules { from { namespaces: "a" remote_ip_blocks: "10.0.0.0/8" } to { hosts: "web" ports: 8080 '
                 'methods: "GET" paths: "/api/*" } when { key: "request.headers[x-user]" values: "alice" '
                 'not_values: "bob" } }', id="l7-fields"),
    pytest.param("  rules:\n  - to: [{operation: {methods: [GET], verbs: [POST]}}]\n  - {}\n", "rules {}",
                 id="allow-rule-with-unknown-field-dropped-whole"),
])
def test_allow_rules(spec, expected):
    policies, _, _ = l7_config_from_yaml(with_base(policy_yaml(SERVICE_REF + spec)))
    (policy,) = policies
    assert policy.action == wp.L7Policy.ALLOW
    assert list(policy.rules) == list(parse_message(wp.L7Policy, expected).rules)


@pytest.mark.parametrize("rules, expected", [
    pytest.param("  - to: [{operation: {methods: [DELETE], verbs: [POST]}}]\n",
                 'rules { to { methods: "DELETE" } }', id="known-fields-kept"),
    pytest.param("  - to: [{operation: {verbs: [POST]}}]\n", "rules { to {} }", id="only-unknown-denies-any"),
    pytest.param("  - from: [{source: {namespaces: [a]}, sauce: {}}]\n", 'rules { from { namespaces: "a" } }',
                 id="unknown-beside-source"),
])
def test_deny_rules_keep_their_known_fields(rules, expected):
    policies, _, _ = l7_config_from_yaml(with_base(policy_yaml(GATEWAY_REF + "  action: DENY\n  rules:\n" + rules)))
    (policy,) = policies
    assert policy.action == wp.L7Policy.DENY
    assert list(policy.rules) == list(parse_message(wp.L7Policy, expected).rules)


@pytest.mark.parametrize("action, enum", [("AUDIT", wp.L7Policy.AUDIT), ("CUSTOM", wp.L7Policy.CUSTOM)])
def test_actions_the_waypoint_decides_about_pass_with_their_action(action, enum):
    policies, _, _ = l7_config_from_yaml(with_base(policy_yaml(
        GATEWAY_REF + f"  action: {action}\n  rules: [{{to: [{{operation: {{paths: [/x], verbs: [GET]}}}}]}}]\n")))
    (policy,) = policies
    assert policy.action == enum
    assert list(policy.rules) == list(parse_message(wp.L7Policy, 'rules { to { paths: "/x" } }').rules)


@pytest.mark.parametrize("annotations, dry_run", [("{istio.io/dry-run: 'true'}", True),
                                                  ("{istio.io/dry-run: 'no'}", False), ("", False)])
def test_dry_run(annotations, dry_run):
    policies, _, _ = l7_config_from_yaml(with_base(policy_yaml(GATEWAY_REF, annotations=annotations)))
    assert [p.dry_run for p in policies] == [dry_run]


def test_l7_policies_are_named_like_l4_authorizations():
    docs = policy_yaml(GATEWAY_REF, name="a") + "---\n" + policy_yaml(SERVICE_REF, name="b")
    text = with_base(docs)
    parsed = parse_text(text, "t.yaml")
    state = ClusterState.build(parsed.resources)
    view = compute_view(state)
    assert sorted(view.l7_policies) == ["shop/a", "shop/b"]


# ---------------------------------------------------------------- routes


def route_yaml(spec: str, kind: str = "HTTPRoute", name: str = "r", ns: str = "shop", meta: str = "") -> str:
    return (f"apiVersion: gateway.networking.k8s.io/v1\nkind: {kind}\n"
            f"metadata: {{name: {name}, namespace: {ns}{meta}}}\nspec:\n{spec}")


def one_route(spec: str, kind: str = "HTTPRoute", **kw) -> wp.Route:
    _, routes, _ = l7_config_from_yaml(with_base(route_yaml(spec, kind, **kw)))
    (route,) = routes
    return route


WEB_PARENT = "  parentRefs: [{kind: Service, group: '', name: web}]\n"


@pytest.mark.parametrize("parents, expected, problems", [
    pytest.param("[{kind: Service, group: '', name: web}]", [(WEB, 0)], [], id="service"),
    pytest.param("[{kind: Service, group: core, name: web, port: 80}]", [(WEB, 80)], [], id="service-port"),
    pytest.param("[{kind: Service, group: '', name: web, sectionName: http}]", [(WEB, 0)], [],
                 id="section-name-not-used"),
    pytest.param("[{kind: Service, group: '', name: web, port: 81}]", [],
                 ["spec.parentRefs[0]: NoMatchingParent: Service shop/web has no port 81"], id="port-not-on-service"),
    pytest.param("[{kind: Service, group: '', name: gone}, {kind: Service, group: '', name: api}]", [(API, 0)],
                 ["spec.parentRefs[0]: NoMatchingParent: no Service shop/gone"], id="missing-service"),
    pytest.param("[{kind: Service, group: '', name: far, namespace: other}]", [],
                 ["spec.parentRefs[0]: NotAllowedByListeners: Service other/far is in another namespace; a waypoint "
                  "applies only routes in the Service's own namespace"], id="other-namespace"),
    pytest.param("[{kind: Service, name: web}]", [],
                 ["spec.parentRefs[0]: NoMatchingParent: group 'gateway.networking.k8s.io' has no kind Service (a "
                  "parentRef's group defaults to gateway.networking.k8s.io): write group: \"\" for a Service"],
                 id="service-without-group"),
    pytest.param("[{name: wp}]", [],
                 ["spec.parentRefs[0]: NoMatchingParent: Gateway shop/wp is not served here: the mesh runs no "
                  "ingress gateway, and a waypoint takes routes whose parent is a Service"], id="gateway-parent"),
])
def test_route_parents(parents, expected, problems):
    route = one_route(f"  parentRefs: {parents}\n  rules: [{{backendRefs: [{{name: web, port: 80}}]}}]\n")
    assert [(p.service, p.port) for p in route.parents] == expected
    assert list(route.problems) == problems


@pytest.mark.parametrize("refs, expected, problems", [
    pytest.param("[{name: web, port: 80}]", [(WEB, 80, 1, "")], [], id="weight-default-1"),
    pytest.param("[{name: web, port: 80, weight: 90}, {name: api, port: 9090, weight: 10}, "
                 "{name: api, port: 9090, weight: 0}]",
                 [(WEB, 80, 90, ""), (API, 9090, 10, ""), (API, 9090, 0, "")], [], id="weights"),
    pytest.param("[{name: web, port: 80, weight: 9}, {name: gone, port: 80}]",
                 [(WEB, 80, 9, ""),
                  ("shop/gone.shop.svc.cluster.local", 80, 1, "BackendNotFound: no Service shop/gone")],
                 ["spec.rules[0].backendRefs[1]: BackendNotFound: no Service shop/gone"], id="missing-backend"),
    pytest.param("[{name: web, port: 81}]", [(WEB, 81, 1, "BackendNotFound: Service shop/web has no port 81")],
                 ["spec.rules[0].backendRefs[0]: BackendNotFound: Service shop/web has no port 81"], id="missing-port"),
    pytest.param("[{name: far, namespace: other, port: 80}]",
                 [("other/far.other.svc.cluster.local", 80, 1, "RefNotPermitted: Service other/far is in another "
                   "namespace, and the mesh has no ReferenceGrant to permit it")],
                 ["spec.rules[0].backendRefs[0]: RefNotPermitted: Service other/far is in another namespace, and the "
                  "mesh has no ReferenceGrant to permit it"], id="cross-namespace"),
    pytest.param("[{name: web, kind: ServiceImport, group: multicluster.x-k8s.io}]",
                 [(WEB, 0, 1, "InvalidKind: ServiceImport (multicluster.x-k8s.io) is not a backend the mesh routes "
                   "to: only Services")],
                 ["spec.rules[0].backendRefs[0]: InvalidKind: ServiceImport (multicluster.x-k8s.io) is not a backend "
                  "the mesh routes to: only Services"], id="other-kind"),
])
def test_route_backends(refs, expected, problems):
    route = one_route(WEB_PARENT + f"  rules: [{{backendRefs: {refs}}}]\n")
    (rule,) = route.rules
    assert [(b.service, b.port, b.weight, b.error) for b in rule.backends] == expected
    assert list(route.problems) == problems
    assert list(route.parents) == [wp.ParentRef(service=WEB)]  # a bad backend does not detach the route


@pytest.mark.parametrize("rule, expected", [
    pytest.param("{name: first, backendRefs: [{name: web, port: 80}]}",
                 f'name: "first" backends {{ service: "{WEB}" port: 80 weight: 1 }}', id="rule-name"),
    pytest.param("{matches: [{path: {type: Exact, value: /a}, method: POST, headers: [{name: X-User, value: al}],"
                 " queryParams: [{type: RegularExpression, name: Q, value: 'v.*'}]}, {path: {value: /p}}]}",
                 'matches { path { exact: "/a" } headers { name: "x-user" value { exact: "al" } } '
                 'query_params { name: "Q" value { regex: "v.*" } } method: "POST" } '
                 'matches { path { prefix: "/p" } }', id="matches"),
    pytest.param("{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: a, value: '1'}], "
                 "add: [{name: b, value: '2'}], remove: [c]}}, {type: ResponseHeaderModifier, "
                 "responseHeaderModifier: {remove: [server]}}]}",
                 'request_headers { set { name: "a" value: "1" } add { name: "b" value: "2" } remove: "c" } '
                 'response_headers { remove: "server" }', id="header-modifiers"),
    pytest.param("{filters: [{type: RequestRedirect, requestRedirect: {scheme: https, hostname: x.example, port: 8443, "
                 "statusCode: 301, path: {type: ReplaceFullPath, replaceFullPath: /new}}}]}",
                 'redirect { scheme: "https" hostname: "x.example" replace_full_path: "/new" port: 8443 '
                 'status_code: 301 }', id="redirect"),
    pytest.param("{filters: [{type: RequestRedirect, requestRedirect: {hostname: x.example}}]}",
                 'redirect { hostname: "x.example" status_code: 302 }', id="redirect-default-302"),
    pytest.param("{matches: [{path: {type: PathPrefix, value: /v1}}], filters: [{type: URLRewrite, urlRewrite: "
                 "{hostname: in.example, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}], "
                 "backendRefs: [{name: web, port: 80}]}",
                 f'matches {{ path {{ prefix: "/v1" }} }} backends {{ service: "{WEB}" port: 80 weight: 1 }} '
                 'rewrite { hostname: "in.example" replace_prefix_match: "/v2" }', id="rewrite"),
    pytest.param("{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: api, port: 9090}}}, "
                 "{type: RequestMirror, requestMirror: {backendRef: {name: web, port: 80}, percent: 25}}, "
                 "{type: RequestMirror, requestMirror: {backendRef: {name: web, port: 80}, "
                 "fraction: {numerator: 1, denominator: 1000}}}]}",
                 f'mirrors {{ service: "{API}" port: 9090 percent: 100 }} '
                 f'mirrors {{ service: "{WEB}" port: 80 percent: 25 }} '
                 f'mirrors {{ service: "{WEB}" port: 80 percent: 1 }}', id="mirrors"),
    pytest.param("{timeouts: {request: 10s, backendRequest: 500ms}}",
                 "timeout_seconds: 10 backend_timeout_seconds: 0.5", id="timeouts"),
    pytest.param("{retry: {attempts: 3, codes: [502, 503], backoff: 100ms}}",
                 "retry { attempts: 3 codes: 502 codes: 503 backoff_seconds: 0.1 }", id="retry"),
    pytest.param("{retry: {}}", "retry {}", id="retry-present-but-empty"),
    pytest.param("{}", "", id="no-retry-leaves-istio-default"),
])
def test_route_rules(rule, expected):
    route = one_route(WEB_PARENT + f"  rules: [{rule}]\n")
    (got,) = route.rules
    assert got == parse_message(wp.RouteRule, expected)
    assert list(route.problems) == []


def test_a_mirror_to_nothing_is_dropped_and_reported():
    route = one_route(WEB_PARENT + "  rules: [{filters: [{type: RequestMirror, requestMirror: "
                                   "{backendRef: {name: gone, port: 80}}}]}]\n")
    assert list(route.rules[0].mirrors) == []
    assert list(route.problems) == ["spec.rules[0].filters[RequestMirror 0].backendRef: BackendNotFound: "
                                    "no Service shop/gone"]


def test_route_identity_hostnames_and_created():
    route = one_route(WEB_PARENT + "  hostnames: [web, web.shop]\n  rules: [{}]\n",
                      meta=", creationTimestamp: 2024-01-02T03:04:05Z")
    assert (route.name, route.namespace, route.kind, list(route.hostnames), route.created) == (
        "r", "shop", "HTTPRoute", ["web", "web.shop"], "2024-01-02T03:04:05Z")
    assert one_route(WEB_PARENT).created == ""


@pytest.mark.parametrize("method, path", [
    pytest.param("{service: pkg.Greeter, method: Hello}", 'exact: "/pkg.Greeter/Hello"', id="exact"),
    pytest.param("{type: Exact, service: pkg.Greeter}", 'prefix: "/pkg.Greeter/"', id="service-only"),
    pytest.param("{method: Hello}", 'regex: "/[^/]+/Hello"', id="method-only"),
    pytest.param("{type: RegularExpression, service: 'pkg\\..*', method: 'Get.*'}",
                 'regex: "/(?:pkg\\\\..*)/(?:Get.*)"', id="regex"),
    pytest.param("{type: RegularExpression, method: 'Get.*'}", 'regex: "/[^/]+/(?:Get.*)"', id="regex-method-only"),
])
def test_grpc_method_becomes_a_path_match(method, path):
    route = one_route("  parentRefs: [{kind: Service, group: '', name: api}]\n"
                      f"  rules: [{{matches: [{{method: {method}, headers: [{{name: x-env, value: dev}}]}}], "
                      "backendRefs: [{name: api, port: 9090}]}]\n", kind="GRPCRoute")
    assert route.kind == "GRPCRoute"
    (rule,) = route.rules
    assert list(rule.matches) == [parse_message(
        wp.RouteMatch, f'path {{ {path} }} headers {{ name: "x-env" value {{ exact: "dev" }} }}')]
    assert [(b.service, b.port) for b in rule.backends] == [(API, 9090)]


def test_route_keys_name_kind_and_namespace():
    docs = route_yaml(WEB_PARENT, name="a") + "---\n" + route_yaml(WEB_PARENT, "GRPCRoute", name="a")
    view = compute_view(ClusterState.build(parse_text(with_base(docs), "t.yaml").resources))
    assert sorted(view.routes) == ["shop/GRPCRoute/a", "shop/HTTPRoute/a"]


# ---------------------------------------------------------------- discovery


def test_both_types_are_published_and_served_to_who_asks():
    docs = policy_yaml(GATEWAY_REF) + "---\n" + route_yaml(WEB_PARENT)
    resources = parse_text(with_base(docs), "t.yaml").resources
    state = ClusterState.build(resources, {("shop", "web-1"): PodStatus("10.244.0.2", "node-a")})
    snapshot = Snapshot(1, snapshot_resources(compute_view(state)))
    assert set(snapshot.resources) == {ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, L7_POLICY_TYPE_URL, ROUTE_TYPE_URL,
                                       WASM_PLUGIN_TYPE_URL}
    stream = DeltaStream()
    for type_url, names in ((L7_POLICY_TYPE_URL, ["shop/p"]), (ROUTE_TYPE_URL, ["shop/HTTPRoute/r"])):
        outcome = stream.on_request(discovery_pb2.DeltaDiscoveryRequest(type_url=type_url), snapshot)
        (response,) = outcome.responses
        assert [r.name for r in response.resources] == names
        assert all(r.resource.type_url == type_url for r in response.resources)


# ---------------------------------------------------------------- ambient validate


def findings(tmp_path, text: str) -> list[tuple[str, str, str, str]]:
    (tmp_path / "a.yaml").write_text(text)
    _, problems = validate([tmp_path])
    return [(p.code, p.resource, p.field, p.message) for p in problems]


def test_every_route_problem_is_a_finding(tmp_path):
    text = with_base(route_yaml(
        "  parentRefs: [{kind: Service, group: '', name: gone}, {kind: Service, group: '', name: web}]\n"
        "  rules: [{backendRefs: [{name: far, namespace: other, port: 80}]}]\n", kind="GRPCRoute"))
    assert findings(tmp_path, text) == [
        (Code.ROUTE_UNRESOLVED, "GRPCRoute shop/r", "spec.parentRefs[0]", "NoMatchingParent: no Service shop/gone"),
        (Code.ROUTE_UNRESOLVED, "GRPCRoute shop/r", "spec.rules[0].backendRefs[0]",
         "RefNotPermitted: Service other/far is in another namespace, and the mesh has no ReferenceGrant to permit it"),
    ]


def test_a_route_to_an_ingress_gateway_is_left_to_the_gateways_warning(tmp_path):
    text = with_base(route_yaml("  parentRefs: [{name: wp}, {name: nowhere}]\n"))
    assert findings(tmp_path, text) == [
        (Code.NOT_FOUND, "HTTPRoute shop/r", "spec.parentRefs[1]", "no Gateway shop/nowhere")]


UNUSED = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: idle, namespace: other}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
"""


@pytest.mark.parametrize("user, unused", [
    pytest.param("", True, id="nobody"),
    pytest.param("apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: other, labels: "
                 "{istio.io/use-waypoint: idle}}\nspec: {ports: [{port: 80}]}\n", False, id="a-service"),
    pytest.param("apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: other, labels: "
                 "{istio.io/use-waypoint: idle}}\nspec: {containers: [{name: app}]}\n", False, id="a-pod"),
    pytest.param("apiVersion: v1\nkind: Namespace\nmetadata: {name: third, labels: {istio.io/use-waypoint: idle, "
                 "istio.io/use-waypoint-namespace: other}}\n", True, id="a-namespace-it-does-not-admit"),
])
def test_a_waypoint_nothing_uses_is_a_warning(tmp_path, user, unused):
    found = [f for f in findings(tmp_path, with_base(UNUSED + ("---\n" + user if user else "")))
             if f[0] == Code.WAYPOINT_UNUSED]
    assert [(c, res) for c, res, _, _ in found] == ([(Code.WAYPOINT_UNUSED, "Gateway other/idle")] if unused else [])


@pytest.mark.parametrize("target, code", [
    pytest.param("{kind: Gateway, name: wp}", Code.INVALID, id="missing-group"),
    pytest.param("{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}", Code.INVALID,
                 id="gatewayclass-outside-root"),
    pytest.param("{kind: Service, group: '', name: far, namespace: other}", Code.INVALID, id="cross-namespace"),
    pytest.param("{kind: Service, group: '', name: web}", None, id="fine"),
])
def test_target_refs_that_match_nothing(tmp_path, target, code):
    found = findings(tmp_path, with_base(policy_yaml(f"  targetRefs: [{target}]\n")))
    assert [c for c, *_ in found] == ([code] if code else [])
