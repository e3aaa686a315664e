"""Tables for the waypoint's route planning: compiled routes (protos, and real YAML) + a request -> plan."""

from __future__ import annotations

import pytest

from mesh.api import waypoint_pb2 as wp
from tests.controlplane.waypoint_yaml import l7_config_from_yaml
from tests.waypoint.worlds import APPS_WITH_WAYPOINT
from waypoint.routing import (
    ISTIO_DEFAULT_RETRY,
    Forward,
    LocalReply,
    RequestHead,
    ResponseHeaderChange,
    RouteTable,
    apply_response_headers,
)

SVC = "apps/backend.apps.svc.cluster.local"
V1 = "apps/backend-v1.apps.svc.cluster.local"
V2 = "apps/backend-v2.apps.svc.cluster.local"


def first(_weights):
    return 0


def head(target="/", method="GET", headers=(), authority="backend.apps.svc.cluster.local:8080"):
    return RequestHead(method, target, authority, tuple(headers))


def match(path=None, kind="prefix", method="", headers=(), query=()):
    m = wp.RouteMatch(method=method)
    if path is not None:
        m.path.CopyFrom(wp.StringMatch(**{kind: path}))
    for name, value in headers:
        m.headers.append(wp.HeaderMatch(name=name, value=wp.StringMatch(exact=value)))
    for name, value in query:
        m.query_params.append(wp.QueryMatch(name=name, value=wp.StringMatch(exact=value)))
    return m


def rule(name="", matches=(), backends=((V1, 80, 1),), **fields):
    r = wp.RouteRule(name=name, matches=list(matches), **fields)
    for service, port, weight in backends:
        r.backends.append(wp.Backend(service=service, port=port, weight=weight))
    return r


def route(name, rules, port=0, created="", kind="HTTPRoute"):
    return wp.Route(name=name, namespace="apps", kind=kind, parents=[wp.ParentRef(service=SVC, port=port)],
                    rules=rules, created=created)


def plan(routes, request, port=8080, pick=first):
    return RouteTable.compile(routes).plan(SVC, port, request, pick)


def test_no_route_forwards_unchanged_with_istio_retry():
    result = plan([], head("/a?b=1"))
    assert result == Forward(SVC, 8080, head("/a?b=1"), None, None, None, ISTIO_DEFAULT_RETRY)
    assert (ISTIO_DEFAULT_RETRY.attempts, ISTIO_DEFAULT_RETRY.codes) == (2, frozenset({503}))
    assert ISTIO_DEFAULT_RETRY.connect_failure and ISTIO_DEFAULT_RETRY.refused_stream


def test_route_for_another_port_does_not_apply():
    table = RouteTable.compile([route("r", [rule()], port=9090)])
    assert table.has_routes(SVC, 9090) and not table.has_routes(SVC, 8080)
    assert plan([route("r", [rule()], port=9090)], head()).route is None


# (name, routes, request, expected backend service or (status, flag))
PRECEDENCE = [
    ("exact beats a longer prefix", [route("r", [rule(matches=[match("/api/v1/users", "prefix")]),
                                                 rule(matches=[match("/api", "exact")], backends=[(V2, 80, 1)])])],
     head("/api"), V2),
    ("longest prefix wins", [route("r", [rule(matches=[match("/api")]),
                                         rule(matches=[match("/api/v2")], backends=[(V2, 80, 1)])])],
     head("/api/v2/x"), V2),
    ("prefix is by whole segments", [route("r", [rule(matches=[match("/api")])])], head("/apix"), (404, "NR")),
    ("prefix matches itself with a slash", [route("r", [rule(matches=[match("/api/")])])], head("/api"), V1),
    ("prefix beats regex", [route("r", [rule(matches=[match("/a.*", "regex")], backends=[(V2, 80, 1)]),
                                        rule(matches=[match("/a")])])], head("/a/b"), V1),
    ("regex is a full match", [route("r", [rule(matches=[match("/a[0-9]", "regex")])])], head("/a12"), (404, "NR")),
    ("method match beats none", [route("r", [rule(matches=[match("/")]),
                                             rule(matches=[match("/", method="POST")], backends=[(V2, 80, 1)])])],
     head("/x", "POST"), V2),
    ("more headers win", [route("r", [rule(matches=[match("/", headers=[("x-a", "1")])]),
                                      rule(matches=[match("/", headers=[("x-a", "1"), ("x-b", "2")])],
                                           backends=[(V2, 80, 1)])])],
     head("/", headers=[("x-a", "1"), ("x-b", "2")]), V2),
    ("more query params win", [route("r", [rule(matches=[match("/")]),
                                           rule(matches=[match("/", query=[("v", "2")])], backends=[(V2, 80, 1)])])],
     head("/?v=2"), V2),
    ("oldest route wins a tie", [route("new", [rule(backends=[(V2, 80, 1)])], created="2026-02-01T00:00:00Z"),
                                 route("old", [rule()], created="2026-01-01T00:00:00Z")], head(), V1),
    ("then the name", [route("b", [rule(backends=[(V2, 80, 1)])]), route("a", [rule()])], head(), V1),
    ("then rule order", [route("r", [rule(), rule(backends=[(V2, 80, 1)])])], head(), V1),
    ("header names are case-insensitive", [route("r", [rule(matches=[match(headers=[("x-user", "bob")])])])],
     head(headers=[("X-User", "bob")]), V1),
    ("repeated headers are joined with a comma", [route("r", [rule(matches=[match(headers=[("x-a", "1,2")])])])],
     head(headers=[("x-a", "1"), ("x-a", "2")]), V1),
    ("query: first value", [route("r", [rule(matches=[match(query=[("v", "1")])])])], head("/?v=1&v=2"), V1),
    ("query: second value does not count", [route("r", [rule(matches=[match(query=[("v", "2")])])])],
     head("/?v=1&v=2"), (404, "NR")),
    ("query names are case-sensitive", [route("r", [rule(matches=[match(query=[("V", "1")])])])], head("/?v=1"),
     (404, "NR")),
    ("header value mismatch", [route("r", [rule(matches=[match(headers=[("x-user", "bob")])])])],
     head(headers=[("x-user", "eve")]), (404, "NR")),
    ("path is normalised before matching", [route("r", [rule(matches=[match("/admin")], backends=[(V2, 80, 1)]),
                                                        rule(matches=[match("/public")])])],
     head("/public/../admin"), V2),
    ("encoded NUL is refused", [route("r", [rule()])], head("/%00"), (400, "-")),
    ("no backends: 500", [route("r", [rule(backends=())])], head(), (500, "-")),
    ("all weights zero: 500", [route("r", [rule(backends=[(V1, 80, 0), (V2, 80, 0)])])], head(), (500, "-")),
    ("unsupported regex matches nothing", [route("r", [rule(matches=[match("(?=x).*", "regex")])])], head("/x"),
     (404, "NR")),
    ("GRPCRoute method as an exact path", [route("g", [rule(matches=[match("/pkg.Svc/Get", "exact")])],
                                                 kind="GRPCRoute")], head("/pkg.Svc/Get", "POST"), V1),
]


@pytest.mark.parametrize(("name", "routes", "request_head", "expected"), PRECEDENCE, ids=[c[0] for c in PRECEDENCE])
def test_plan(name, routes, request_head, expected):
    result = plan(routes, request_head)
    if isinstance(expected, tuple):
        assert isinstance(result, LocalReply), result
        assert (result.status, result.flag) == expected, result.detail
    else:
        assert isinstance(result, Forward), result
        assert result.service == expected


def test_forward_names_route_rule_and_timeouts():
    r = rule("named", timeout_seconds=3.0, backend_timeout_seconds=1.0,
             retry=wp.Retry(attempts=4, codes=[502, 504], backoff_seconds=0.1))
    result = plan([route("r", [r])], head("/x/../y"))
    assert isinstance(result, Forward)
    assert (result.route, result.rule, result.timeout, result.backend_timeout) == ("apps/r", "named", 3.0, 1.0)
    assert (result.retry.attempts, result.retry.codes, result.retry.backoff) == (4, frozenset({502, 504}), 0.1)
    assert result.head.target == "/y"  # the normalised target is what is sent


def test_weighted_pick():
    seen = []

    def pick(weights):
        seen.append(tuple(weights))
        return 1

    r = rule(backends=[(V1, 80, 90), ("apps/dead", 80, 0), (V2, 81, 10)])
    result = plan([route("r", [r])], head(), pick=pick)
    assert seen == [(90, 10)]  # zero weights are never offered
    assert (result.service, result.port) == (V2, 81)


def test_backend_error_is_500_with_detail():
    r = rule(backends=())
    r.backends.append(wp.Backend(service="apps/missing", port=80, weight=1, error="BackendNotFound: no Service"))
    result = plan([route("r", [r])], head())
    assert isinstance(result, LocalReply) and result.status == 500 and "BackendNotFound" in result.detail


def test_request_header_modifier():
    mod = wp.HeaderModifier(set=[wp.Header(name="X-Env", value="prod")], add=[wp.Header(name="x-add", value="2")],
                            remove=["x-drop"])
    result = plan([route("r", [rule(request_headers=mod)])],
                  head(headers=[("x-env", "dev"), ("x-env", "qa"), ("x-add", "1"), ("x-drop", "a"), ("keep", "k")]))
    assert result.head.headers == (("x-add", "1"), ("keep", "k"), ("x-env", "prod"), ("x-add", "2"))


def test_response_header_modifier():
    mod = wp.HeaderModifier(set=[wp.Header(name="server", value="waypoint")], remove=["x-internal"])
    result = plan([route("r", [rule(response_headers=mod)])], head())
    assert result.response_headers == ResponseHeaderChange((("server", "waypoint"),), (), frozenset({"x-internal"}))
    got = apply_response_headers(result.response_headers, [("server", "gunicorn"), ("x-internal", "1"), ("a", "b")])
    assert got == [("a", "b"), ("server", "waypoint")]


@pytest.mark.parametrize(("path", "prefix", "replacement", "expected"), [
    ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
    ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
    ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
    ("/foo", "/foo", "/xyz", "/xyz"),
    ("/foo/", "/foo", "/xyz", "/xyz/"),
    ("/foo/bar", "/foo", "", "/bar"),
    ("/foo/", "/foo", "", "/"),
    ("/foo", "/foo", "", "/"),
    ("/foo/", "/foo", "/", "/"),
    ("/foo", "/foo", "/", "/"),
])
def test_rewrite_replace_prefix_match(path, prefix, replacement, expected):
    # The Gateway API spec's table for ReplacePrefixMatch. (An empty replacement cannot be sent in proto3,
    # "" meaning unset; "/" gives the same result.)
    r = rule(matches=[match(prefix)], rewrite=wp.Rewrite(replace_prefix_match=replacement or "/",
                                                         hostname="new.example"))
    result = plan([route("r", [r])], head(path + "?q=1"))
    assert (result.head.target, result.head.authority) == (expected + "?q=1", "new.example")


def test_rewrite_full_path_and_prefix_without_prefix_match():
    result = plan([route("r", [rule(rewrite=wp.Rewrite(replace_full_path="/new"))])], head("/old/x"))
    assert result.head.target == "/new"
    bad = rule(matches=[match("/x", "exact")], rewrite=wp.Rewrite(replace_prefix_match="/y"))
    result = plan([route("r", [bad])], head("/x"))
    assert isinstance(result, LocalReply) and result.status == 500


@pytest.mark.parametrize(("redirect", "request_head", "location", "status"), [
    (wp.Redirect(), head("/a?x=1"), "http://backend.apps.svc.cluster.local:8080/a?x=1", 302),
    (wp.Redirect(scheme="https"), head("/a"), "https://backend.apps.svc.cluster.local/a", 302),
    (wp.Redirect(hostname="example.com", port=80, status_code=301), head("/a"), "http://example.com/a", 301),
    (wp.Redirect(replace_full_path="/b"), head("/a", authority="svc"), "http://svc:8080/b", 302),
    (wp.Redirect(replace_prefix_match="/new"), head("/old/x", authority="svc:80"), "http://svc/new/x", 302),
])
def test_redirect(redirect, request_head, location, status):
    r = rule(matches=[match("/old")], backends=(), redirect=redirect) if redirect.replace_prefix_match \
        else rule(backends=(), redirect=redirect)
    result = plan([route("r", [r])], request_head)
    assert isinstance(result, LocalReply)
    assert (result.status, result.headers, result.flag, result.route) == (status, (("location", location),), "-",
                                                                          "apps/r")


def test_mirrors_and_problems():
    r = rule(mirrors=[wp.Mirror(service=V2, port=80, percent=100), wp.Mirror(service=V2, port=81, percent=0)],
             matches=[match("(", "regex"), match("/")])
    table = RouteTable.compile([route("r", [r])])
    result = table.plan(SVC, 8080, head(), first)
    assert result.mirrors == ((V2, 80, 100),)
    assert list(table.problems) == ["apps/HTTPRoute/r"] and "does not compile" in table.problems["apps/HTTPRoute/r"][0]
    assert table.routes() == (("apps/HTTPRoute/r", "HTTPRoute", ((SVC, 0),)),)


# ---------------------------------------------------------------- from real YAML (parse → view → pack)

YAML = APPS_WITH_WAYPOINT + """---
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: apps}
spec: {selector: {app: backend}, ports: [{name: http, port: 8080, targetPort: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: backend-v2, namespace: apps}
spec: {selector: {app: backend, version: v2}, ports: [{name: http, port: 8080, targetPort: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: split, namespace: apps}
spec:
  parentRefs: [{group: "", kind: Service, name: backend, port: 8080}]
  rules:
  - matches: [{headers: [{name: x-canary, value: "yes"}]}]
    backendRefs: [{name: backend-v2, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new},
                                                          statusCode: 301}}]
  - backendRefs: [{name: backend, port: 8080, weight: 90}, {name: backend-v2, port: 8080, weight: 10}]
"""


def test_routes_from_yaml():
    _policies, routes, _addresses = l7_config_from_yaml(YAML)
    table = RouteTable.compile(routes)
    v2 = "apps/backend-v2.apps.svc.cluster.local"
    assert table.plan(SVC, 8080, head(headers=[("x-canary", "yes")]), first).service == v2
    weights = []
    result = table.plan(SVC, 8080, head("/x"), lambda w: weights.append(tuple(w)) or 1)
    assert (weights, result.service, result.route) == ([(90, 10)], v2, "apps/split")
    redirect = table.plan(SVC, 8080, head("/old/a", authority="backend:8080"), first)
    assert (redirect.status, redirect.headers) == (301, (("location", "http://backend:8080/new/a"),))
    assert table.plan(SVC, 9090, head(), first).route is None  # the route names port 8080 only
