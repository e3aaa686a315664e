"""Tables for the waypoint's L7 authorization: (policies built as protos, request) -> decision."""

from __future__ import annotations

from dataclasses import replace

import pytest

from mesh.api import waypoint_pb2 as wp
from mesh.identity import SpiffeId
from tests.controlplane.waypoint_yaml import l7_config_from_yaml
from tests.waypoint.worlds import APPS_WITH_WAYPOINT
from waypoint.authz import L7Authorizer, RequestAttributes
from waypoint.http_match import normalize_path, normalize_target

GW = "apps/waypoint"
SVC = "apps/backend.apps.svc.cluster.local"
SLEEP = SpiffeId("cluster.local", "apps", "sleep")
OTHER = SpiffeId("other.domain", "test", "client")

BASE = RequestAttributes(
    source_identity=SLEEP, source_ip="10.0.0.5", remote_ip="10.0.0.5", destination_ip="10.96.0.10",
    destination_port=8080, host="backend.apps.svc.cluster.local:8080", method="GET", path="/public/a?x=1",
    headers={"x-user": ("alice",), "accept": ("text/html", "application/json")},
)


def rule(**parts: object) -> wp.Rule:
    """A Rule from keyword parts: source=dict, to=dict, when=[(key, values, not_values)]."""
    r = wp.Rule()
    if "source" in parts:
        getattr(r, "from").append(wp.Source(**parts["source"]))  # type: ignore[arg-type]
    if "to" in parts:
        r.to.append(wp.Operation(**parts["to"]))  # type: ignore[arg-type]
    for key, values, not_values in parts.get("when", []):  # type: ignore[attr-defined]
        r.when.append(wp.Condition(key=key, values=values, not_values=not_values))
    return r


def policy(name: str, action: int = wp.L7Policy.ALLOW, rules: list[wp.Rule] | None = None, *,
           dry_run: bool = False, services: tuple[str, ...] = (), gateways: tuple[str, ...] = (GW,)) -> wp.L7Policy:
    return wp.L7Policy(name=name, namespace="apps", action=action, gateways=gateways, services=services,
                       rules=rules or [], dry_run=dry_run)


def decide(policies: list[wp.L7Policy], request: RequestAttributes = BASE, service: str | None = SVC):
    return L7Authorizer.compile(policies).policies_for(GW, service).authorize(request)


ALLOW, DENY, AUDIT, CUSTOM = wp.L7Policy.ALLOW, wp.L7Policy.DENY, wp.L7Policy.AUDIT, wp.L7Policy.CUSTOM

# (name, policies, request changes, allowed, deciding policy)
CASES = [
    ("no policy", [], {}, True, None),
    ("ALLOW with no rules denies all", [policy("a")], {}, False, None),
    ("DENY with no rules denies nothing", [policy("d", DENY)], {}, True, None),
    ("ALLOW {} allows all", [policy("a", rules=[wp.Rule()])], {}, True, "apps/a"),
    ("DENY {} denies all", [policy("d", DENY, [wp.Rule()]), policy("a", rules=[wp.Rule()])], {}, False, "apps/d"),
    ("GET /public allowed", [policy("a", rules=[rule(to={"methods": ["GET"], "paths": ["/public/*"]})])], {},
     True, "apps/a"),
    ("POST refused", [policy("a", rules=[rule(to={"methods": ["GET"], "paths": ["/public/*"]})])],
     {"method": "POST"}, False, None),
    ("methods are case-sensitive", [policy("a", rules=[rule(to={"methods": ["GET"]})])], {"method": "get"},
     False, None),
    ("/private refused", [policy("a", rules=[rule(to={"paths": ["/public/*"]})])], {"path": "/private"},
     False, None),
    ("path compared without query", [policy("a", rules=[rule(to={"paths": ["/public/a"]})])], {}, True, "apps/a"),
    ("dot segments cannot escape a prefix", [policy("d", DENY, [rule(to={"paths": ["/private*"]})])],
     {"path": "/public/../private/x"}, False, "apps/d"),
    ("encoded dots are decoded first", [policy("d", DENY, [rule(to={"paths": ["/private*"]})])],
     {"path": "/public/%2e%2E/private"}, False, "apps/d"),
    ("backslashes are slashes", [policy("d", DENY, [rule(to={"paths": ["/private/*"]})])],
     {"path": "/private\\x"}, False, "apps/d"),
    ("encoded NUL denied", [policy("a", rules=[wp.Rule()])], {"path": "/a%00b"}, False, None),
    ("suffix path", [policy("a", rules=[rule(to={"paths": ["*.png"]})])], {"path": "/img/x.png"}, True, "apps/a"),
    ("path template one segment", [policy("a", rules=[rule(to={"paths": ["/users/{*}/orders"]})])],
     {"path": "/users/7/orders"}, True, "apps/a"),
    ("path template is not two segments", [policy("a", rules=[rule(to={"paths": ["/users/{*}/orders"]})])],
     {"path": "/users/7/8/orders"}, False, None),
    ("path template many segments", [policy("a", rules=[rule(to={"paths": ["/files/{**}"]})])],
     {"path": "/files/a/b/c"}, True, "apps/a"),
    ("not_paths", [policy("a", rules=[rule(to={"not_paths": ["/admin*"]})])], {"path": "/admin/x"}, False, None),
    ("host case-insensitive", [policy("a", rules=[rule(to={"hosts": ["Backend.apps.svc.cluster.local:8080"]})])],
     {}, True, "apps/a"),
    ("host without port does not match host:port",
     [policy("a", rules=[rule(to={"hosts": ["backend.apps.svc.cluster.local"]})])], {}, False, None),
    ("host:* matches any port", [policy("a", rules=[rule(to={"hosts": ["backend.apps.svc.cluster.local:*"]})])],
     {}, True, "apps/a"),
    ("ports", [policy("a", rules=[rule(to={"ports": [8080]})])], {}, True, "apps/a"),
    ("not_ports", [policy("a", rules=[rule(to={"not_ports": [8080]})])], {}, False, None),
    ("principal exact", [policy("a", rules=[rule(source={"principals": ["cluster.local/ns/apps/sa/sleep"]})])],
     {}, True, "apps/a"),
    ("principal with spiffe:// never matches",
     [policy("a", rules=[rule(source={"principals": ["spiffe://cluster.local/ns/apps/sa/sleep"]})])],
     {}, False, None),
    ("principal prefix", [policy("a", rules=[rule(source={"principals": ["cluster.local/ns/apps/*"]})])],
     {}, True, "apps/a"),
    ("principal * needs an identity", [policy("a", rules=[rule(source={"principals": ["*"]})])],
     {"source_identity": None}, False, None),
    ("not_principals * denies plaintext", [policy("d", DENY, [rule(source={"not_principals": ["*"]})])],
     {"source_identity": None}, False, "apps/d"),
    ("not_principals * lets mTLS through", [policy("d", DENY, [rule(source={"not_principals": ["*"]})])],
     {}, True, None),
    ("namespaces", [policy("a", rules=[rule(source={"namespaces": ["apps"]})])], {}, True, "apps/a"),
    ("namespaces, other", [policy("a", rules=[rule(source={"namespaces": ["apps"]})])],
     {"source_identity": OTHER}, False, None),
    ("not_namespaces without identity hold", [policy("d", DENY, [rule(source={"not_namespaces": ["apps"]})])],
     {"source_identity": None}, False, "apps/d"),
    ("service accounts", [policy("a", rules=[rule(source={"service_accounts": ["apps/sleep"]})])], {}, True, "apps/a"),
    ("service accounts, other", [policy("a", rules=[rule(source={"service_accounts": ["apps/other"]})])],
     {}, False, None),
    ("trust domains", [policy("a", rules=[rule(source={"trust_domains": ["other.domain"]})])],
     {"source_identity": OTHER}, True, "apps/a"),
    ("trust domains *", [policy("a", rules=[rule(source={"trust_domains": ["*"]})])],
     {"source_identity": None}, False, None),
    ("ip_blocks CIDR", [policy("a", rules=[rule(source={"ip_blocks": ["10.0.0.0/24"]})])], {}, True, "apps/a"),
    ("ip_blocks v6 never holds a v4", [policy("a", rules=[rule(source={"ip_blocks": ["::/0"]})])], {}, False, None),
    ("ip_blocks v6", [policy("a", rules=[rule(source={"ip_blocks": ["fd00::/8"]})])], {"source_ip": "fd00::1"},
     True, "apps/a"),
    ("unreadable ip_blocks match nothing", [policy("a", rules=[rule(source={"ip_blocks": ["nonsense"]})])], {},
     False, None),
    ("remote_ip_blocks use the forwarded client",
     [policy("d", DENY, [rule(source={"remote_ip_blocks": ["203.0.113.0/24"]})])], {"remote_ip": "203.0.113.9"},
     False, "apps/d"),
    ("ip_blocks ignore the forwarded client",
     [policy("d", DENY, [rule(source={"ip_blocks": ["203.0.113.0/24"]})])], {"remote_ip": "203.0.113.9"},
     True, None),
    ("unreadable remote IP falls back to the peer",
     [policy("a", rules=[rule(source={"remote_ip_blocks": ["10.0.0.5"]})])], {"remote_ip": "garbage"},
     True, "apps/a"),
    ("request principals never match", [policy("a", rules=[rule(source={"request_principals": ["*"]})])], {},
     False, None),
    ("not request principals always match", [policy("a", rules=[rule(source={"not_request_principals": ["*"]})])],
     {}, True, "apps/a"),
    ("some source, some operation", [policy("a", rules=[rule(source={"namespaces": ["nope"]}),
                                                       rule(to={"methods": ["GET"]})])], {}, True, "apps/a"),
    ("every part of a rule", [policy("a", rules=[rule(source={"namespaces": ["apps"]}, to={"methods": ["PUT"]})])],
     {}, False, None),
    ("header condition", [policy("a", rules=[rule(when=[("request.headers[X-User]", ["alice"], [])])])], {},
     True, "apps/a"),
    ("header condition, any value", [policy("a", rules=[rule(when=[("request.headers[accept]",
                                                                   ["application/json"], [])])])], {}, True, "apps/a"),
    ("header condition, comma element", [policy("a", rules=[rule(when=[("request.headers[x-user]", ["bob"], [])])])],
     {"headers": {"x-user": ("alice,bob",)}}, True, "apps/a"),
    ("header condition, prefix", [policy("a", rules=[rule(when=[("request.headers[x-user]", ["al*"], [])])])], {},
     True, "apps/a"),
    ("header condition, absent", [policy("a", rules=[rule(when=[("request.headers[x-role]", ["*"], [])])])], {},
     False, None),
    ("header condition, not_values on absent", [policy("a", rules=[rule(when=[("request.headers[x-role]", [],
                                                                               ["admin"])])])], {}, True, "apps/a"),
    ("source.namespace", [policy("a", rules=[rule(when=[("source.namespace", ["apps"], [])])])], {}, True, "apps/a"),
    ("source.principal", [policy("a", rules=[rule(when=[("source.principal", ["*/sa/sleep"], [])])])], {},
     True, "apps/a"),
    ("source.ip", [policy("a", rules=[rule(when=[("source.ip", ["10.0.0.0/8"], [])])])], {}, True, "apps/a"),
    ("remote.ip not", [policy("a", rules=[rule(when=[("remote.ip", [], ["10.0.0.5"])])])], {}, False, None),
    ("destination.ip", [policy("a", rules=[rule(when=[("destination.ip", ["10.96.0.10"], [])])])], {}, True, "apps/a"),
    ("destination.port", [policy("a", rules=[rule(when=[("destination.port", ["8080"], [])])])], {}, True, "apps/a"),
    ("destination.port unreadable", [policy("a", rules=[rule(when=[("destination.port", ["http"], [])])])], {},
     False, None),
    ("request.auth never", [policy("a", rules=[rule(when=[("request.auth.claims[iss]", ["*"], [])])])], {},
     False, None),
    ("request.auth not_values always", [policy("a", rules=[rule(when=[("request.auth.principal", [], ["x"])])])],
     {}, True, "apps/a"),
    ("connection.sni is empty", [policy("a", rules=[rule(when=[("connection.sni", ["*"], [])])])], {}, False, None),
    ("unknown key: ALLOW rule never holds",
     [policy("a", rules=[rule(when=[("experimental.envoy.filters.a.b[c]", ["x"], [])])])], {}, False, None),
    ("unknown key: DENY rule holds",
     [policy("d", DENY, [rule(when=[("experimental.envoy.filters.a.b[c]", ["x"], [])])])], {}, False, "apps/d"),
    ("unknown key, not_values: DENY still holds",
     [policy("d", DENY, [rule(when=[("source.color", [], ["blue"])])])], {}, False, "apps/d"),
    ("DENY before ALLOW", [policy("a", rules=[wp.Rule()]), policy("d", DENY, [rule(to={"methods": ["GET"]})])], {},
     False, "apps/d"),
    ("one ALLOW of several", [policy("a1", rules=[rule(to={"methods": ["PUT"]})]),
                              policy("a2", rules=[rule(to={"methods": ["GET"]})])], {}, True, "apps/a2"),
    ("AUDIT never decides", [policy("au", AUDIT, [wp.Rule()])], {}, True, None),
    ("CUSTOM skipped", [policy("c", CUSTOM, [wp.Rule()])], {}, True, None),
    ("unknown action counts as DENY", [policy("x", 9, [wp.Rule()])], {}, False, "apps/x"),
    ("policy for the Service applies", [policy("s", DENY, [wp.Rule()], gateways=(), services=(SVC,))], {},
     False, "apps/s"),
    ("policy for another Service does not",
     [policy("s", DENY, [wp.Rule()], gateways=(), services=("apps/other.apps.svc.cluster.local",))], {}, True, None),
    ("policy for another waypoint does not", [policy("g", DENY, [wp.Rule()], gateways=("apps/other",))], {},
     True, None),
]


@pytest.mark.parametrize(("name", "policies", "changes", "allowed", "decided_by"), CASES, ids=[c[0] for c in CASES])
def test_decision(name, policies, changes, allowed, decided_by):
    decision = decide(policies, replace(BASE, **changes))
    assert (decision.allowed, decision.policy) == (allowed, decided_by), decision.reason


def test_reasons_name_the_policy():
    assert decide([policy("d", DENY, [wp.Rule()])]).reason == "denied by DENY policy apps/d"
    assert decide([policy("a")]).reason == "no ALLOW policy matched"
    assert decide([policy("a", rules=[wp.Rule()])]).reason == "allowed by ALLOW policy apps/a"


def test_dry_run_never_decides_and_is_reported():
    dry_deny = policy("dd", DENY, [wp.Rule()], dry_run=True)
    decision = decide([dry_deny])
    assert (decision.allowed, decision.policy, decision.dry_run) == (True, None, ("apps/dd",))
    dry_allow = policy("da", rules=[rule(to={"methods": ["PUT"]})], dry_run=True)
    decision = decide([dry_allow])
    assert (decision.allowed, decision.dry_run) == (True, ("apps/da",))
    # A dry-run that agrees with the enforced decision is not reported.
    assert decide([policy("da", rules=[wp.Rule()], dry_run=True)]).dry_run == ()
    # A dry-run ALLOW that would let through what the enforced ALLOW refuses.
    decision = decide([policy("a"), policy("da", rules=[wp.Rule()], dry_run=True)])
    assert (decision.allowed, decision.dry_run) == (False, ("apps/da",))


def test_policy_sets():
    authorizer = L7Authorizer.compile([
        policy("c", CUSTOM, [wp.Rule()]), policy("au", AUDIT, [wp.Rule()]),
        policy("s", DENY, [wp.Rule()], gateways=(), services=(SVC,)),
    ])
    for_gateway_only = authorizer.policies_for(GW, None)
    assert for_gateway_only.empty
    assert (for_gateway_only.skipped_custom, for_gateway_only.audit) == (("apps/c",), ("apps/au",))
    for_service = authorizer.policies_for(GW, SVC)
    assert not for_service.empty and for_service.names == ("apps/s",)
    assert authorizer.policies_for(GW, SVC) is for_service  # memoised
    assert authorizer.policies_for("other/gw", "x/y").empty
    assert authorizer.skipped_custom == ("apps/c",)
    assert ("apps/s", "DENY", (SVC,)) in authorizer.names()
    dry = L7Authorizer.compile([policy("dd", DENY, [wp.Rule()], dry_run=True)])
    assert not dry.policies_for(GW, None).empty  # dry-run policies are evaluated (and logged)
    assert dry.names() == [("apps/dd", "DENY (dry-run)", (GW,))]


@pytest.mark.parametrize(("raw", "normal"), [
    ("/a/b", "/a/b"),
    ("/a/./b/../c", "/a/c"),
    ("/../../etc", "/etc"),
    ("/a/..", "/"),
    ("/a/.", "/a/"),
    ("/%61%62%7E%2d", "/ab~-"),
    ("/a%2fb", "/a%2fb"),  # encoded slashes stay (BASE does not decode them)
    ("/a%252e", "/a%252e"),  # decoded once: no double decoding
    ("/a\\..\\b", "/b"),
    ("/a//b", "/a//b"),  # slashes are not merged by BASE
    ("/a%00", None),
])
def test_normalize_path(raw, normal):
    assert normalize_path(raw) == normal


def test_normalize_target_keeps_query():
    assert normalize_target("/a/../b?x=/../y") == "/b?x=/../y"
    assert normalize_target("/%00?x") is None


# ---------------------------------------------------------------- from real YAML (parse → view → pack)

YAML_HEAD = APPS_WITH_WAYPOINT + """---
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: apps}
spec: {selector: {app: backend}, ports: [{name: http, port: 8080, targetPort: 80}]}
"""

YAML_POLICIES = YAML_HEAD + """
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: get-public, namespace: apps}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: ALLOW
  rules:
  - from: [{source: {namespaces: [apps]}}]
    to: [{operation: {methods: [GET], paths: ["/public/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-debug, namespace: apps}
spec:
  targetRefs: [{kind: Service, group: "", name: backend}]
  action: DENY
  rules:
  - when: [{key: "request.headers[x-debug]", values: ["*"]}]
"""

YAML_CASES = [
    ("GET /public from apps", {}, True, "apps/get-public"),
    ("POST /public", {"method": "POST"}, False, None),
    ("GET /private", {"path": "/private"}, False, None),
    ("from another namespace", {"source_identity": OTHER}, False, None),
    ("x-debug denied on the Service", {"headers": {"x-debug": ("1",)}}, False, "apps/no-debug"),
]


@pytest.mark.parametrize(("name", "changes", "allowed", "decided_by"), YAML_CASES, ids=[c[0] for c in YAML_CASES])
def test_decision_from_yaml(name, changes, allowed, decided_by):
    policies, _routes, _addresses = l7_config_from_yaml(YAML_POLICIES)
    decision = decide(policies, replace(BASE, **changes))
    assert (decision.allowed, decision.policy) == (allowed, decided_by), decision.reason
