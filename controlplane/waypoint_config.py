"""What discovery sends the waypoints: L7 AuthorizationPolicies, routes and WasmPlugins, resolved
(mesh/api/waypoint.proto).

Pure functions of the same ``ClusterState`` the dataplane view is built from. Every reference is
resolved here, once, to the discovery key the waypoint already knows from its Address resources: a
Service becomes ``"<ns>/<hostname>"``, a waypoint Gateway ``"<ns>/<name>"``. A waypoint subscribes to
every L7Policy, Route and WasmPlugin and keeps those that concern it.

Policies (``l7_policies``): every AuthorizationPolicy with ``targetRefs``, as Istio attaches them: a
Gateway (group gateway.networking.k8s.io) of class istio-waypoint, or a Service (group "" or core),
in the policy's own namespace; or, from the root namespace, the GatewayClass istio-waypoint, which
means every waypoint. A reference to anything else, or to nothing that exists, is skipped (``ambient
validate`` reports it). Rules follow the L4 translation's rule for fields the mesh does not understand
(``controlplane.authz``): an ALLOW rule with one is dropped whole, a DENY rule keeps its known fields,
so an unknown field only ever makes a policy match less. ``principals`` and ``trustDomains`` are passed
as written: the waypoint intersects them at match time, where both are plain strings to compare.

Routes (``routes``): every HTTPRoute and GRPCRoute. Parents are Services in the route's namespace
(producer routes, the only kind a waypoint applies); a Gateway parent, another namespace's Service or a
missing one is a problem, not a parent. A backend that does not resolve stays in the rule with its
``error`` set (Gateway API: requests routed to it get 500, so a weighted split keeps its shares) and is
also a problem. ``problems`` are ``"<field>: <Reason>: <what>"``, the field as in the user's YAML;
``route_problems`` gives them structured to ``ambient validate``.

WasmPlugins (``wasm_plugins``): attached as policies are (``policy_targets``: a waypoint Gateway or a
Service in the plugin's namespace, or from the root namespace the GatewayClass istio-waypoint). As in
Istio, a waypoint never applies a plugin without targetRefs, not even one in the root namespace:
``selector`` and namespace-wide plugins are for sidecars. ``match`` is read as Istio reads it for a
waypoint, whose filter chain is the server side (its listener class is SidecarInbound): an entry of
mode CLIENT never holds, and a plugin whose entries are all CLIENT runs nowhere. The ports of the
entries that hold become the plugin's ``ports`` (none if one entry names no port: every port); Istio's
waypoint chain has no port, so there a ``ports`` entry never matches; here it is the Service port the
client addressed, which is what the field says for inbound traffic. ``wasm_problems`` says why a plugin
runs nowhere (``ambient validate``, AMB0111).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Protocol

from mesh import resources as r
from mesh.api import waypoint_pb2 as wp
from mesh.api.types import (
    L7_POLICY_TYPE_URL,
    ROUTE_TYPE_URL,
    WASM_PLUGIN_TYPE_URL,
    policy_key,
    route_key,
    wasm_plugin_key,
)


# What is read of controlplane.view's ClusterState and MeshConfig, as protocols: the view imports
# this module to publish what it computes, so this one cannot import the view.
class ClusterState(Protocol):
    @property
    def gateways(self) -> Mapping[tuple[str, str], r.Gateway]: ...
    @property
    def services(self) -> Mapping[tuple[str, str], r.Service]: ...
    @property
    def policies(self) -> tuple[r.AuthorizationPolicy, ...]: ...
    @property
    def routes(self) -> tuple[r.Route, ...]: ...
    @property
    def wasm_plugins(self) -> tuple[r.WasmPlugin, ...]: ...


class MeshConfig(Protocol):
    @property
    def root_namespace(self) -> str: ...
    @property
    def domain_suffix(self) -> str: ...

    def service_hostname(self, namespace: str, name: str) -> str: ...


GATEWAY_GROUP = "gateway.networking.k8s.io"
CORE_GROUPS = ("", "core")  # a Service's group, as Gateway API and Istio write it
_ACTIONS = {"ALLOW": wp.L7Policy.ALLOW, "DENY": wp.L7Policy.DENY, "AUDIT": wp.L7Policy.AUDIT,
            "CUSTOM": wp.L7Policy.CUSTOM}


def waypoint_resources(state: ClusterState, config: MeshConfig
                       ) -> dict[str, dict[str, wp.L7Policy | wp.Route | wp.WasmPlugin]]:
    """``{L7_POLICY_TYPE_URL: {"<ns>/<name>": L7Policy}, ROUTE_TYPE_URL: {"<ns>/<kind>/<name>": Route},
    WASM_PLUGIN_TYPE_URL: {"<ns>/<name>": WasmPlugin}}``."""
    return {L7_POLICY_TYPE_URL: dict(l7_policies(state, config)), ROUTE_TYPE_URL: dict(routes(state, config)),
            WASM_PLUGIN_TYPE_URL: dict(wasm_plugins(state, config))}


def _service_key(namespace: str, name: str, config: MeshConfig) -> str:
    """As ``controlplane.view.service_key`` names a Service's Address."""
    return f"{namespace}/{config.service_hostname(namespace, name)}"


# ---------------------------------------------------------------- policies


def policy_targets(policy: r.AuthorizationPolicy | r.WasmPlugin, state: ClusterState, config: MeshConfig
                   ) -> tuple[list[str], list[str]]:
    """``(gateways, services)`` the policy's (or WasmPlugin's) targetRefs resolve to, each once, in order."""
    gateways: list[str] = []
    services: list[str] = []
    own = policy.meta.namespace
    for ref in policy.target_refs:
        if ref.namespace not in ("", own):  # Istio: cross-namespace targetRefs are not supported
            continue
        if ref.kind == "Gateway" and ref.group == GATEWAY_GROUP and (own, ref.name) in state.gateways:
            found, into = [f"{own}/{ref.name}"], gateways
        elif ref.kind == "Service" and ref.group in CORE_GROUPS and (own, ref.name) in state.services:
            found, into = [_service_key(own, ref.name, config)], services
        elif (ref.kind == "GatewayClass" and ref.group == GATEWAY_GROUP and ref.name == r.WAYPOINT_CLASS
              and own == config.root_namespace):
            found, into = [f"{ns}/{name}" for ns, name in sorted(state.gateways)], gateways
        else:
            continue
        into.extend(key for key in found if key not in into)
    return gateways, services


def _source(source: r.Source, namespace: str) -> wp.Source:
    def accounts(values: Iterable[str]) -> list[str]:  # "sa" is in the policy's namespace (Istio)
        return [v if "/" in v else f"{namespace}/{v}" for v in values]

    return wp.Source(
        principals=source.principals, not_principals=source.not_principals,
        request_principals=source.request_principals, not_request_principals=source.not_request_principals,
        namespaces=source.namespaces, not_namespaces=source.not_namespaces,
        ip_blocks=source.ip_blocks, not_ip_blocks=source.not_ip_blocks,
        remote_ip_blocks=source.remote_ip_blocks, not_remote_ip_blocks=source.not_remote_ip_blocks,
        service_accounts=accounts(source.service_accounts), not_service_accounts=accounts(source.not_service_accounts),
        trust_domains=source.trust_domains, not_trust_domains=source.not_trust_domains,
    )


def _operation(operation: r.Operation) -> wp.Operation:
    return wp.Operation(
        hosts=operation.hosts, not_hosts=operation.not_hosts, ports=operation.ports, not_ports=operation.not_ports,
        methods=operation.methods, not_methods=operation.not_methods, paths=operation.paths,
        not_paths=operation.not_paths,
    )


def l7_rule(rule: r.Rule, action: str, namespace: str) -> wp.Rule | None:
    """The rule as the waypoint evaluates it, or None when it must never match: an ALLOW rule with a
    field the mesh does not understand. A DENY (or AUDIT, CUSTOM) rule keeps its known fields: a
    source or operation made only of unknown fields stays as an empty one, which matches anyone, so
    the deny is as wide as what the mesh understands of it (as ``controlplane.authz``)."""
    if action == "ALLOW" and rule.unknown:
        return None
    return wp.Rule(
        **{"from": [_source(s, namespace) for s in rule.sources]},
        to=[_operation(o) for o in rule.operations],
        when=[wp.Condition(key=c.key, values=c.values, not_values=c.not_values) for c in rule.conditions],
    )


def l7_policy(policy: r.AuthorizationPolicy, state: ClusterState, config: MeshConfig) -> wp.L7Policy | None:
    """The L7Policy of one AuthorizationPolicy, or None when it is not for a waypoint (no
    targetRefs) or none of its targets exists."""
    if not policy.target_refs:
        return None
    gateways, services = policy_targets(policy, state, config)
    if not gateways and not services:
        return None
    namespace = policy.meta.namespace
    rules = [rule for item in policy.rules if (rule := l7_rule(item, policy.action, namespace)) is not None]
    return wp.L7Policy(name=policy.meta.name, namespace=namespace, action=_ACTIONS[policy.action],
                       gateways=gateways, services=services, rules=rules, dry_run=policy.dry_run)


def l7_policies(state: ClusterState, config: MeshConfig) -> Mapping[str, wp.L7Policy]:
    result = {}
    for policy in state.policies:
        translated = l7_policy(policy, state, config)
        if translated is not None:
            result[policy_key(policy.meta.namespace, policy.meta.name)] = translated
    return result


# ---------------------------------------------------------------- routes


def grpc_method_path(match: r.GRPCMethodMatch) -> wp.StringMatch:
    """A GRPCRoute method match as a match on the request's path, ``/<service>/<method>``."""
    if match.type == "Exact":
        if match.service and match.method:
            return wp.StringMatch(exact=f"/{match.service}/{match.method}")
        if match.service:
            return wp.StringMatch(prefix=f"/{match.service}/")
        return wp.StringMatch(regex=f"/[^/]+/{re.escape(match.method)}")
    service = f"(?:{match.service})" if match.service else "[^/]+"
    method = f"(?:{match.method})" if match.method else "[^/]+"
    return wp.StringMatch(regex=f"/{service}/{method}")


_STRING_MATCH = {"Exact": "exact", "PathPrefix": "prefix", "RegularExpression": "regex"}


def _string_match(spec: r.StringMatchSpec | r.HeaderMatchSpec) -> wp.StringMatch:
    return wp.StringMatch(**{_STRING_MATCH[spec.type]: spec.value})


def _match(match: r.RouteMatch) -> wp.RouteMatch:
    path: wp.StringMatch | None = None
    if match.grpc_method is not None:
        path = grpc_method_path(match.grpc_method)
    elif match.path is not None:
        path = _string_match(match.path)
    return wp.RouteMatch(
        path=path,
        headers=[wp.HeaderMatch(name=h.name.lower(), value=_string_match(h)) for h in match.headers],
        query_params=[wp.QueryMatch(name=q.name, value=_string_match(q)) for q in match.query_params],
        method=match.method,
    )


def _header_modifier(modifier: r.HeaderModifier | None) -> wp.HeaderModifier | None:
    if modifier is None:
        return None
    return wp.HeaderModifier(set=[wp.Header(name=k, value=v) for k, v in modifier.set.items()],
                             add=[wp.Header(name=k, value=v) for k, v in modifier.add.items()],
                             remove=modifier.remove)


def _path_fields(path: r.PathModifier | None) -> dict[str, str]:
    if path is None:
        return {}
    return {"replace_full_path" if path.type == "ReplaceFullPath" else "replace_prefix_match": path.value}


def backend_error(ref: r.BackendRef, route: r.Route, state: ClusterState) -> str:
    """Why a backendRef (or a mirror's) does not resolve, as Gateway API's ResolvedRefs reason; ""
    when it does."""
    namespace = ref.namespace or route.meta.namespace
    if ref.kind != "Service" or ref.group not in CORE_GROUPS:
        return f"InvalidKind: {ref.kind} ({ref.group or 'core'}) is not a backend the mesh routes to: only Services"
    if namespace != route.meta.namespace:
        # Gateway API allows it only with a ReferenceGrant in the backend's namespace; the mesh has none.
        return (f"RefNotPermitted: Service {namespace}/{ref.name} is in another namespace, and the mesh has no "
                "ReferenceGrant to permit it")
    service = state.services.get((namespace, ref.name))
    if service is None:
        return f"BackendNotFound: no Service {namespace}/{ref.name}"
    if ref.port is None:
        return f"UnsupportedValue: port is required for Service {namespace}/{ref.name}"
    if all(p.port != ref.port for p in service.ports):
        return f"BackendNotFound: Service {namespace}/{ref.name} has no port {ref.port}"
    return ""


def _rule(rule: r.RouteRule, i: int, route: r.Route, state: ClusterState, config: MeshConfig,
          problems: list[tuple[str, str]]) -> wp.RouteRule:
    backends = []
    for j, ref in enumerate(rule.backends):
        error = backend_error(ref, route, state)
        if error:
            problems.append((f"spec.rules[{i}].backendRefs[{j}]", error))
        namespace = ref.namespace or route.meta.namespace
        backends.append(wp.Backend(service=_service_key(namespace, ref.name, config), port=ref.port or 0,
                                   weight=ref.weight, error=error))
    mirrors = []
    for j, mirror in enumerate(rule.mirrors):
        error = backend_error(mirror.backend, route, state)
        if error:  # a copy nobody waits for: dropped, and reported
            problems.append((f"spec.rules[{i}].filters[RequestMirror {j}].backendRef", error))
            continue
        # The wire carries whole percents; a fraction below 1% still mirrors some (1%), never none.
        percent = min(100, max(1, round(mirror.percent))) if mirror.percent > 0 else 0
        mirrors.append(wp.Mirror(service=_service_key(mirror.backend.namespace or route.meta.namespace,
                                                      mirror.backend.name, config),
                                 port=mirror.backend.port or 0, percent=percent))
    redirect = rule.redirect
    rewrite = rule.rewrite
    return wp.RouteRule(
        name=rule.name,
        matches=[_match(m) for m in rule.matches if m != r.RouteMatch()],  # an empty match is every request
        backends=backends,
        request_headers=_header_modifier(rule.request_headers),
        response_headers=_header_modifier(rule.response_headers),
        redirect=wp.Redirect(scheme=redirect.scheme, hostname=redirect.hostname, port=redirect.port or 0,
                             status_code=redirect.status_code, **_path_fields(redirect.path))
        if redirect is not None else None,
        rewrite=wp.Rewrite(hostname=rewrite.hostname, **_path_fields(rewrite.path)) if rewrite is not None else None,
        mirrors=mirrors,
        timeout_seconds=rule.timeout_seconds or 0.0,
        backend_timeout_seconds=rule.backend_timeout_seconds or 0.0,
        retry=wp.Retry(attempts=rule.retry_attempts, codes=rule.retry_codes,
                       backoff_seconds=rule.retry_backoff_seconds or 0.0) if rule.retry else None,
    )


def _parents(route: r.Route, state: ClusterState, config: MeshConfig,
             problems: list[tuple[str, str]]) -> list[wp.ParentRef]:
    parents = []
    own = route.meta.namespace
    for i, ref in enumerate(route.parents):
        where = f"spec.parentRefs[{i}]"
        namespace = ref.namespace or own
        if ref.kind == "Service" and ref.group not in CORE_GROUPS:
            # Gateway API's default group is its own: a Service parent must say group "" to be one.
            problems.append((where, f"NoMatchingParent: group {ref.group!r} has no kind Service (a parentRef's group "
                                    "defaults to gateway.networking.k8s.io): write group: \"\" for a Service"))
            continue
        if ref.kind != "Service":
            problems.append((where, f"NoMatchingParent: {ref.kind} {namespace}/{ref.name} is not served here: the "
                                    "mesh runs no ingress gateway, and a waypoint takes routes whose parent is a "
                                    "Service"))
            continue
        if namespace != own:
            problems.append((where, f"NotAllowedByListeners: Service {namespace}/{ref.name} is in another namespace; "
                                    "a waypoint applies only routes in the Service's own namespace"))
            continue
        service = state.services.get((namespace, ref.name))
        if service is None:
            problems.append((where, f"NoMatchingParent: no Service {namespace}/{ref.name}"))
            continue
        if ref.port is not None and all(p.port != ref.port for p in service.ports):
            problems.append((where, f"NoMatchingParent: Service {namespace}/{ref.name} has no port {ref.port}"))
            continue
        parents.append(wp.ParentRef(service=_service_key(namespace, ref.name, config), port=ref.port or 0))
    return parents


def route_problems(route: r.Route, state: ClusterState, config: MeshConfig) -> list[tuple[str, str]]:
    """``[(field, "<Reason>: <what>")]``: what in the route does not resolve."""
    return _route(route, state, config)[1]


def _route(route: r.Route, state: ClusterState, config: MeshConfig) -> tuple[wp.Route, list[tuple[str, str]]]:
    problems: list[tuple[str, str]] = []
    parents = _parents(route, state, config, problems)
    rules = [_rule(rule, i, route, state, config, problems) for i, rule in enumerate(route.rules)]
    message = wp.Route(name=route.meta.name, namespace=route.meta.namespace, kind=route.kind, parents=parents,
                       hostnames=route.hostnames, rules=rules, problems=[f"{f}: {m}" for f, m in problems],
                       created=route.created)
    return message, problems


def route_resource(route: r.Route, state: ClusterState, config: MeshConfig) -> wp.Route:
    return _route(route, state, config)[0]


def routes(state: ClusterState, config: MeshConfig) -> Mapping[str, wp.Route]:
    return {route_key(route.meta.namespace, route.kind, route.meta.name): route_resource(route, state, config)
            for route in state.routes}


# ---------------------------------------------------------------- Wasm plugins

_PHASES = {"UNSPECIFIED_PHASE": wp.WasmPlugin.UNSPECIFIED_PHASE, "AUTHN": wp.WasmPlugin.AUTHN,
           "AUTHZ": wp.WasmPlugin.AUTHZ, "STATS": wp.WasmPlugin.STATS}
# The mode of the traffic a waypoint sees (Istio's workloadModeForListenerClass(SidecarInbound)).
WAYPOINT_MODE = "SERVER"


def wasm_ports(plugin: r.WasmPlugin) -> tuple[int, ...] | None:
    """The destination ports the plugin runs for on a waypoint: () for every port, None for none
    (every ``match`` entry is of mode CLIENT)."""
    if not plugin.match:
        return ()
    holding = [m for m in plugin.match if m.mode in ("UNDEFINED", "CLIENT_AND_SERVER", WAYPOINT_MODE)]
    if not holding:
        return None
    if any(not m.ports for m in holding):
        return ()
    return tuple(sorted({port for m in holding for port in m.ports}))


def wasm_problems(plugin: r.WasmPlugin) -> list[tuple[str, str]]:
    """``[(field, message)]``: why no waypoint runs the plugin, whatever exists. A target that does not
    resolve is not here: ``ambient validate`` reports it as for policies (AMB0101)."""
    if not plugin.target_refs:
        where = "spec.selector" if plugin.selector is not None else "spec"
        how = "a selector" if plugin.selector is not None else "no targetRefs"
        return [(where, f"with {how}, the plugin is for sidecars only (Istio: waypoints apply WasmPlugins by "
                        "targetRefs alone, even from the root namespace), so no waypoint runs it; target the "
                        "waypoint: targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: <waypoint>}]")]
    if wasm_ports(plugin) is None:
        return [("spec.match", "every entry has mode CLIENT, and a waypoint sees server-side traffic only (as "
                               "Istio's waypoint), so no waypoint runs the plugin; use SERVER or CLIENT_AND_SERVER")]
    return []


def wasm_plugin(plugin: r.WasmPlugin, state: ClusterState, config: MeshConfig) -> wp.WasmPlugin | None:
    """The WasmPlugin resource of one plugin, or None when no waypoint runs it (``wasm_problems``) or
    none of its targets exists."""
    ports = wasm_ports(plugin)
    if not plugin.target_refs or ports is None:
        return None
    gateways, services = policy_targets(plugin, state, config)
    if not gateways and not services:
        return None
    return wp.WasmPlugin(
        name=plugin.meta.name, namespace=plugin.meta.namespace, url=plugin.url, sha256=plugin.sha256,
        plugin_name=plugin.plugin_name, phase=_PHASES[plugin.phase], priority=plugin.priority,
        plugin_config=plugin.plugin_config, fail_open=plugin.fail_open,
        vm_env={e.name: e.value for e in plugin.vm_env if not e.from_host},
        vm_host_env=[e.name for e in plugin.vm_env if e.from_host],
        gateways=gateways, services=services, ports=ports,
    )


def wasm_plugins(state: ClusterState, config: MeshConfig) -> Mapping[str, wp.WasmPlugin]:
    result = {}
    for plugin in state.wasm_plugins:
        resource = wasm_plugin(plugin, state, config)
        if resource is not None:
            result[wasm_plugin_key(plugin.meta.namespace, plugin.meta.name)] = resource
    return result
