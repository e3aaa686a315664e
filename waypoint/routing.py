"""Route planning in the waypoint: HTTPRoute and GRPCRoute attached to Services (Gateway API GAMMA).

Pure: ``RouteTable.compile(routes)`` runs once per discovery change. It flattens every match of
every rule of every route attached to a (Service, port) into one list (a parent port 0 attaches to
every port, and such entries are merged into each explicit port's list) and sorts it by Gateway API
precedence, as Istio orders it: Exact path > PathPrefix > RegularExpression (Istio's ranks; the spec
leaves regexes to the implementation), then the longer path or pattern, then a method match, then
more header matches, then more query matches; ties go to the oldest route (``created``, "" first),
then "<ns>/<name>" alphabetically, then rule order, then match order. A rule with no matches is one
PathPrefix "/" match. Regexes are compiled here; one that does not compile or uses what RE2 does
not have matches nothing and is reported in ``problems``.

``plan(service, port, head, pick)`` then returns a frozen plan and does nothing else:

- the request target is normalised first (Istio's default, ``http_match.normalize_target``), and the
  normalised target is what matches and what is sent on; an encoded NUL gets 400;
- no route attached: ``Forward`` to the Service unchanged, Istio's default retry policy, route None;
- the first matching entry decides; none: ``LocalReply`` 404, flag "NR";
- RequestRedirect: ``LocalReply`` 302 (or 301) with ``location``; ``scheme`` defaults to http,
  the host to the request's, the port to the scheme's well-known port when a scheme is given, else
  the request's port (left out of the URL when it is the scheme's default);
- else a backend by weight (``pick(weights)`` returns an index into the positive weights; it is
  called only when there is a choice); no backend, all weights 0, or a backend whose reference
  did not resolve (``error``): ``LocalReply`` 500 (Gateway API);
- URLRewrite (hostname → authority, ReplaceFullPath, ReplacePrefixMatch by whole segments) and
  RequestHeaderModifier (remove, then set, then add: Envoy's order) shape ``Forward.head``;
  ResponseHeaderModifier comes back as a ``ResponseHeaderChange`` for ``apply_response_headers``;
  RequestMirror entries come back in ``mirrors``.

Route ``hostnames`` are not matched: for Service parents the Service is the host (GAMMA).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from mesh.api import waypoint_pb2 as wp
from waypoint.http_match import (
    EXACT,
    NEVER,
    PREFIX,
    PathMatch,
    UnsupportedRegex,
    ValueMatch,
    join_header,
    normalize_target,
    path_match,
    query_first_values,
    split_target,
    value_match,
)

# Istio's default retry policy for HTTP routes (pilot's retry.DefaultPolicy): 2 retries on connect
# failure, refused stream, gRPC UNAVAILABLE and CANCELLED, and HTTP 503; Envoy's default backoff base.
DEFAULT_RETRY_ATTEMPTS = 2
DEFAULT_RETRY_CODES = frozenset({503})
DEFAULT_RETRY_BACKOFF_SECONDS = 0.025
GRPC_CANCELLED, GRPC_UNAVAILABLE = 1, 14
DEFAULT_REDIRECT_STATUS = 302
_SCHEME_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: str
    target: str  # raw path with query, as received
    authority: str
    headers: tuple[tuple[str, str], ...]  # lowercase names, in order (repeats allowed)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int  # retries after the first try
    codes: frozenset[int]  # response codes that are retried
    backoff: float  # base interval, seconds
    connect_failure: bool = True  # always, as Istio
    refused_stream: bool = True  # HTTP/2 REFUSED_STREAM
    grpc_statuses: frozenset[int] = frozenset({GRPC_CANCELLED, GRPC_UNAVAILABLE})


ISTIO_DEFAULT_RETRY = RetryPolicy(DEFAULT_RETRY_ATTEMPTS, DEFAULT_RETRY_CODES, DEFAULT_RETRY_BACKOFF_SECONDS)


@dataclass(frozen=True)
class ResponseHeaderChange:
    set: tuple[tuple[str, str], ...] = ()  # lowercase names: replace every value
    add: tuple[tuple[str, str], ...] = ()  # append
    remove: frozenset[str] = frozenset()  # lowercase names


@dataclass(frozen=True)
class Forward:
    service: str  # backend Service key "<ns>/<hostname>"
    port: int  # backend service port
    head: RequestHead  # the request to send: filters applied, target normalised
    response_headers: ResponseHeaderChange | None
    timeout: float | None  # timeouts.request (the whole request, retries included)
    backend_timeout: float | None  # per try
    retry: RetryPolicy
    mirrors: tuple[tuple[str, int, int], ...] = ()  # (service, port, percent)
    route: str | None = None  # "<ns>/<name>" of the route; None: no route attached
    rule: str | None = None  # the rule's name, if it has one


@dataclass(frozen=True)
class LocalReply:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    flag: str  # Envoy response flag: "NR" no route; "-" otherwise (redirect, backend error, bad path)
    route: str | None
    detail: str


RoutePlan = Forward | LocalReply


def _modify(headers: Iterable[tuple[str, str]], remove: frozenset[str], set_: tuple[tuple[str, str], ...],
            add: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    replaced = remove | {name for name, _ in set_}
    out = [(n, v) for n, v in headers if n.lower() not in replaced]
    out.extend(set_)
    out.extend(add)
    return out


def apply_response_headers(change: ResponseHeaderChange, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The response headers with ``change`` applied (remove, then set, then add)."""
    return _modify(headers, change.remove, change.set, change.add)


# ---------------------------------------------------------------- compiled form


def _pairs(headers: Iterable[wp.Header]) -> tuple[tuple[str, str], ...]:
    return tuple((h.name.lower(), h.value) for h in headers)


@dataclass(frozen=True)
class _HeaderModifier:
    set: tuple[tuple[str, str], ...]
    add: tuple[tuple[str, str], ...]
    remove: frozenset[str]


def _header_modifier(message: wp.HeaderModifier) -> _HeaderModifier | None:
    if not (message.set or message.add or message.remove):
        return None
    return _HeaderModifier(_pairs(message.set), _pairs(message.add), frozenset(n.lower() for n in message.remove))


@dataclass(frozen=True)
class _Rule:
    route: str
    name: str | None
    backends: tuple[tuple[str, int, str], ...]  # (service, port, error) of the positive-weight backends
    weights: tuple[int, ...]
    declared_backends: int
    request_headers: _HeaderModifier | None
    response_headers: ResponseHeaderChange | None
    redirect: wp.Redirect | None
    rewrite: wp.Rewrite | None
    mirrors: tuple[tuple[str, int, int], ...]
    timeout: float | None
    backend_timeout: float | None
    retry: RetryPolicy


@dataclass(frozen=True)
class _Entry:
    """One match of one rule, with what it needs from the request."""

    path: PathMatch
    method: str
    headers: tuple[tuple[str, ValueMatch], ...]
    query: tuple[tuple[str, ValueMatch], ...]
    rule: _Rule
    order: tuple[object, ...] = field(repr=False)


def _compile_rule(route: wp.Route, key: str, rule: wp.RouteRule) -> _Rule:
    positive = [b for b in rule.backends if b.weight > 0]
    response = _header_modifier(rule.response_headers)
    if rule.HasField("retry"):
        retry = RetryPolicy(rule.retry.attempts, frozenset(rule.retry.codes),
                            rule.retry.backoff_seconds or DEFAULT_RETRY_BACKOFF_SECONDS)
    else:
        retry = ISTIO_DEFAULT_RETRY
    return _Rule(
        route=key, name=rule.name or None,
        backends=tuple((b.service, b.port, b.error) for b in positive), weights=tuple(b.weight for b in positive),
        declared_backends=len(rule.backends),
        request_headers=_header_modifier(rule.request_headers),
        response_headers=ResponseHeaderChange(response.set, response.add, response.remove) if response else None,
        redirect=rule.redirect if rule.HasField("redirect") else None,
        rewrite=rule.rewrite if rule.HasField("rewrite") else None,
        mirrors=tuple((m.service, m.port, m.percent) for m in rule.mirrors if m.percent > 0),
        timeout=rule.timeout_seconds or None, backend_timeout=rule.backend_timeout_seconds or None,
        retry=retry,
    )


def _compile_match(match: wp.RouteMatch | None, problems: list[str], where: str
                   ) -> tuple[PathMatch, str, tuple[tuple[str, ValueMatch], ...], tuple[tuple[str, ValueMatch], ...]]:
    if match is None:
        return path_match(None), "", (), ()

    def value(m: wp.StringMatch, what: str) -> ValueMatch:
        try:
            return value_match(m)
        except UnsupportedRegex as e:
            problems.append(f"{where}.{what}: {e}")
            return NEVER

    try:
        path = path_match(match.path if match.HasField("path") else None)
    except UnsupportedRegex as e:
        problems.append(f"{where}.path: {e}")
        never: tuple[tuple[str, ValueMatch], ...] = (("", NEVER),)  # holds for no request
        return PathMatch(EXACT, "", 0, None), "", never, ()
    headers = tuple((h.name.lower(), value(h.value, f"headers[{h.name}]")) for h in match.headers)
    query = tuple((q.name, value(q.value, f"queryParams[{q.name}]")) for q in match.query_params)
    return path, match.method, headers, query


def _order(entry: _Entry) -> tuple[object, ...]:
    return entry.order


class RouteTable:
    """Every route attached to the Services this waypoint serves, compiled for ``plan``."""

    def __init__(self, entries: dict[tuple[str, int], tuple[_Entry, ...]], problems: dict[str, tuple[str, ...]],
                 routes: tuple[tuple[str, str, tuple[tuple[str, int], ...]], ...]) -> None:
        self._entries = entries
        self.problems = problems  # route key "<ns>/<kind>/<name>" → what did not resolve or compile
        self._routes = routes

    @classmethod
    def compile(cls, routes: Iterable[wp.Route]) -> RouteTable:
        by_parent: dict[tuple[str, int], list[_Entry]] = {}
        problems: dict[str, tuple[str, ...]] = {}
        described: list[tuple[str, str, tuple[tuple[str, int], ...]]] = []
        for route in routes:
            key = f"{route.namespace}/{route.name}"
            resource = f"{route.namespace}/{route.kind}/{route.name}"
            route_problems = list(route.problems)
            parents = tuple(dict.fromkeys((p.service, p.port) for p in route.parents))
            described.append((resource, route.kind, parents))
            entries: list[_Entry] = []
            for i, rule_message in enumerate(route.rules):
                rule = _compile_rule(route, key, rule_message)
                matches: Sequence[wp.RouteMatch | None] = list(rule_message.matches) or [None]
                for j, match in enumerate(matches):
                    path, method, headers, query = _compile_match(
                        match, route_problems, f"spec.rules[{i}].matches[{j}]")
                    order = (-path.kind, -path.length, 0 if method else 1, -len(headers), -len(query),
                             route.created, key, route.kind, i, j)
                    entries.append(_Entry(path, method, headers, query, rule, order))
            if route_problems:
                problems[resource] = tuple(route_problems)
            for parent in parents:
                by_parent.setdefault(parent, []).extend(entries)
        merged: dict[tuple[str, int], tuple[_Entry, ...]] = {}
        for (service, port), entries in by_parent.items():
            every_port = by_parent.get((service, 0), []) if port else []
            merged[(service, port)] = tuple(sorted([*entries, *every_port], key=_order))
        return cls(merged, problems, tuple(sorted(described)))

    def _lookup(self, service: str, port: int) -> tuple[_Entry, ...]:
        entries = self._entries.get((service, port))
        return entries if entries is not None else self._entries.get((service, 0), ())

    def has_routes(self, service: str, port: int) -> bool:
        return bool(self._lookup(service, port))

    def routes(self) -> tuple[tuple[str, str, tuple[tuple[str, int], ...]], ...]:
        """For the config dump: (``<ns>/<kind>/<name>``, kind, parents) of every route."""
        return self._routes

    def plan(self, service: str, port: int, head: RequestHead, pick: Callable[[Sequence[int]], int]) -> RoutePlan:
        target = normalize_target(head.target)
        if target is None:
            return LocalReply(400, (), b"", "-", None, "request path has an encoded NUL")
        if target != head.target:
            head = replace(head, target=target)
        entries = self._lookup(service, port)
        if not entries:
            return Forward(service, port, head, None, None, None, ISTIO_DEFAULT_RETRY)
        path, query_text = split_target(target)
        request = _Request(head, path, query_text)
        for entry in entries:
            if request.matches(entry):
                return _plan_rule(entry, request, port, pick)
        return LocalReply(404, (), b"", "NR", None, "no route matched")


class _Request:
    """The request in the forms matches compare; headers and query are indexed on first use."""

    def __init__(self, head: RequestHead, path: str, query: str) -> None:
        self.head = head
        self.path = path
        self.query_text = query
        self._headers: dict[str, str] | None = None
        self._query: dict[str, str] | None = None

    def header(self, name: str) -> str | None:
        if self._headers is None:
            grouped: dict[str, list[str]] = {}
            for n, v in self.head.headers:
                grouped.setdefault(n.lower(), []).append(v)
            self._headers = {n: join_header(vs) for n, vs in grouped.items()}
        return self._headers.get(name)

    def query(self, name: str) -> str | None:
        if self._query is None:
            self._query = query_first_values(self.query_text)
        return self._query.get(name)

    def matches(self, entry: _Entry) -> bool:
        if entry.method and entry.method != self.head.method:
            return False
        if not entry.path.matches(self.path):
            return False
        for name, match in entry.headers:
            value = self.header(name)
            if value is None or not match.matches(value):
                return False
        for name, match in entry.query:
            value = self.query(name)
            if value is None or not match.matches(value):
                return False
        return True


def _replace_prefix(path: str, matched: PathMatch, replacement: str) -> str | None:
    """Gateway API ReplacePrefixMatch: the matched prefix (whole segments) becomes ``replacement``;
    None when the rule did not match by PathPrefix."""
    if matched.kind != PREFIX:
        return None
    rest = path[len(matched.value):]  # "" or starts with "/"
    return (replacement.rstrip("/") + rest) or "/"


def _host_and_port(authority: str) -> tuple[str, int | None]:
    host, sep, port = authority.rpartition(":")
    if sep and port.isdigit() and (not host.startswith("[") or host.endswith("]")):
        return host, int(port)
    return authority, None


def _redirect(entry: _Entry, request: _Request, redirect: wp.Redirect, service_port: int) -> LocalReply:
    rule = entry.rule
    host, request_port = _host_and_port(request.head.authority)
    scheme = redirect.scheme or "http"
    if redirect.port:
        port = redirect.port
    elif redirect.scheme:
        port = _SCHEME_PORTS.get(scheme, request_port or service_port)
    else:
        port = request_port or service_port
    hostname = redirect.hostname or host
    path: str | None = request.path
    if redirect.replace_full_path:
        path = redirect.replace_full_path
    elif redirect.replace_prefix_match:
        path = _replace_prefix(request.path, entry.path, redirect.replace_prefix_match)
        if path is None:
            return LocalReply(500, (), b"", "-", rule.route, "ReplacePrefixMatch without a PathPrefix match")
    authority = hostname if _SCHEME_PORTS.get(scheme) == port else f"{hostname}:{port}"
    query = f"?{request.query_text}" if request.query_text else ""
    status = redirect.status_code or DEFAULT_REDIRECT_STATUS
    return LocalReply(status, (("location", f"{scheme}://{authority}{path}{query}"),), b"", "-", rule.route,
                      "redirect")


def _plan_rule(entry: _Entry, request: _Request, service_port: int,
               pick: Callable[[Sequence[int]], int]) -> RoutePlan:
    rule = entry.rule
    if rule.redirect is not None:
        return _redirect(entry, request, rule.redirect, service_port)
    if not rule.backends:
        detail = "all backends have weight 0" if rule.declared_backends else "rule has no backends"
        return LocalReply(500, (), b"", "-", rule.route, detail)
    index = 0 if len(rule.backends) == 1 else pick(rule.weights)
    if not 0 <= index < len(rule.backends):
        raise ValueError(f"pick returned {index} for {len(rule.backends)} weights")
    backend, backend_port, error = rule.backends[index]
    if error:
        return LocalReply(500, (), b"", "-", rule.route, f"backend {backend}:{backend_port}: {error}")
    head = request.head
    rewrite = rule.rewrite
    if rewrite is not None:
        path: str | None = None
        if rewrite.replace_full_path:
            path = rewrite.replace_full_path
        elif rewrite.replace_prefix_match:
            path = _replace_prefix(request.path, entry.path, rewrite.replace_prefix_match)
            if path is None:
                return LocalReply(500, (), b"", "-", rule.route, "ReplacePrefixMatch without a PathPrefix match")
        if path is not None:
            head = replace(head, target=path + (f"?{request.query_text}" if request.query_text else ""))
        if rewrite.hostname:
            head = replace(head, authority=rewrite.hostname)
    modifier = rule.request_headers
    if modifier is not None:
        head = replace(head, headers=tuple(_modify(head.headers, modifier.remove, modifier.set, modifier.add)))
    return Forward(backend, backend_port, head, rule.response_headers, rule.timeout, rule.backend_timeout,
                   rule.retry, rule.mirrors, rule.route, rule.name)


__all__ = [
    "DEFAULT_RETRY_ATTEMPTS", "DEFAULT_RETRY_BACKOFF_SECONDS", "DEFAULT_RETRY_CODES", "Forward",
    "ISTIO_DEFAULT_RETRY", "LocalReply", "RequestHead", "ResponseHeaderChange", "RetryPolicy", "RouteTable",
    "RoutePlan", "apply_response_headers",
]
