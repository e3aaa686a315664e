"""HTTPRoute and GRPCRoute (Gateway API v1) → ``mesh.resources`` routes, for ``mesh.parse``.

Matches (path, headers, query parameters, method; a GRPCRoute's method match), the filters the
waypoint runs (header modifiers, RequestRedirect, URLRewrite, RequestMirror), weighted backendRefs,
timeouts and retry. A filter the mesh does not run, a filter given twice, a redirect beside a rewrite
or beside backendRefs are errors naming the field, as the rest of the parser reports them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mesh import resources as r
from mesh.parse_fields import object_ref, port_field
from mesh.source import Field

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
    port = port_field(f["port"], required=kind == "Service" and group in ("", "core") and required)
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
        port_field(f["port"], required=False),
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
                    if (p := object_ref(item, default_kind="Gateway", default_group="gateway.networking.k8s.io",
                                         with_port=True)))
    if spec["parentRefs"].value == []:
        spec["parentRefs"].report("needs at least one parent (a Service, for the waypoint)")
    grpc = cls is r.GRPCRoute
    rules = tuple(rule for item in spec["rules"].items() if (rule := _route_rule(item, grpc)))
    return cls(meta, origin, parents, spec["hostnames"].str_list(), rules, _created(spec))


def http_route(spec: Field, meta: r.Meta, origin: r.Origin) -> r.HTTPRoute | None:
    return _route(spec, meta, origin, r.HTTPRoute)


def grpc_route(spec: Field, meta: r.Meta, origin: r.Origin) -> r.GRPCRoute | None:
    return _route(spec, meta, origin, r.GRPCRoute)
