"""``ambient validate PATH...``: every problem in a set of manifests, before they reach a mesh.

Per-resource problems come from ``mesh.parse``. This module adds the checks that need the whole
set: selectors that match nothing, ``istio.io/use-waypoint`` naming a Gateway that does not exist,
a waypoint Gateway that nothing uses, HTTPRoutes and GRPCRoutes whose parents or backends do not
resolve (``controlplane.waypoint_config`` resolves them as discovery sends them, and every problem it
finds is reported here), WasmPlugins and policies whose target is missing, WasmPlugins that no waypoint
runs (no targetRefs, a CLIENT-only match, a target Service that uses no waypoint), L7 fields in a policy that the
destination ztunnel will enforce at L4 (as Istio: such an ALLOW rule is dropped whole, a DENY rule
keeps its L4 fields), and fields of a rule the mesh does not understand (an error in an ALLOW rule,
which then never matches; a warning in a DENY rule, which keeps its known fields).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from controlplane import authz, waypoint_config
from controlplane.view import (
    USE_WAYPOINT_NAMESPACE,
    ClusterState,
    MeshConfig,
    serves,
    service_waypoint,
    waypoint_ref,
)
from mesh import resources as r
from mesh.parse import parse_paths
from mesh.source import Code, Problem, Severity


def _problem(resource: r.Resource, field: str, message: str, severity: Severity = Severity.ERROR,
             code: str = "") -> Problem:
    return Problem(severity, resource.origin.file, resource.origin.line, resource.label, field, message, code)


def _pods_by_namespace(resources: Iterable[r.Resource]) -> dict[str, list[r.Pod]]:
    pods: dict[str, list[r.Pod]] = defaultdict(list)
    for resource in resources:
        if isinstance(resource, r.Pod):
            pods[resource.meta.namespace].append(resource)
        elif isinstance(resource, r.Deployment):
            pods[resource.meta.namespace].extend(resource.pods)
    return pods


def _selects_a_pod(res: r.Resource, selector, pods: dict[str, list[r.Pod]]) -> bool:
    """Whether ``selector`` matches the labels of some pod in ``res``'s namespace."""
    return any(all(p.meta.labels.get(k) == v for k, v in selector.items()) for p in pods.get(res.meta.namespace, ()))


INGRESS_USE_WAYPOINT = "istio.io/ingress-use-waypoint"


def cross_check(resources: list[r.Resource]) -> list[Problem]:
    problems: list[Problem] = []
    pods = _pods_by_namespace(resources)
    state = ClusterState.build(resources)
    gateways = set(state.gateways)  # the waypoint Gateways
    services = {(s.meta.namespace, s.meta.name) for s in resources if isinstance(s, r.Service)}
    # Every Gateway, run or not: a route attached to an ingress Gateway is not a dangling reference
    # (the Gateway's own warning says neither runs).
    any_gateways = {(g.meta.namespace, g.meta.name) for g in resources if isinstance(g, r.Gateway)}

    for res in resources:
        problems.extend(_use_waypoint(res, state))
        problems.extend(_ingress_use_waypoint(res))

        problems.extend(_dataplane_mode(res))
        if isinstance(res, r.Service) and res.selector:
            problems.extend(_target_port_names(res, pods))

        selector_field = {r.Service: "spec.selector", r.AuthorizationPolicy: "spec.selector.matchLabels",
                          r.PeerAuthentication: "spec.selector.matchLabels"}.get(type(res))
        selector = getattr(res, "selector", None)
        if selector_field and selector and not _selects_a_pod(res, selector, pods):
            problems.append(_problem(res, selector_field, "matches no pod", Severity.WARNING, Code.MATCHES_NOTHING))

        if isinstance(res, r.Route):
            problems.extend(_route(res, state, any_gateways))

        if isinstance(res, (r.AuthorizationPolicy, r.WasmPlugin)):
            for i, target in enumerate(res.target_refs):
                problems.extend(_target_ref(res, i, target, gateways, services))
        if isinstance(res, r.WasmPlugin):
            problems.extend(_wasm_plugin(res, state))

        if isinstance(res, r.AuthorizationPolicy) and res.action in ("ALLOW", "DENY"):  # others: skipped
            problems.extend(_unknown_fields(res))
            if not res.enforced_at_l7:
                in_namespace = sorted(name for ns, name in gateways if ns == res.meta.namespace)
                problems.extend(_l7_at_l4(res, in_namespace))
    problems.extend(_unused_waypoints(resources, state))
    return problems


# Each kind a targetRef may name, with its group: as Istio's CRD validation has them.
_TARGET_GROUPS = {"Gateway": (waypoint_config.GATEWAY_GROUP,), "Service": waypoint_config.CORE_GROUPS,
                  "GatewayClass": (waypoint_config.GATEWAY_GROUP,)}


def _target_ref(res: r.AuthorizationPolicy | r.WasmPlugin, i: int, target: r.ObjectRef,
                gateways: set[tuple[str, str]], services: set[tuple[str, str]]) -> list[Problem]:
    where = f"spec.targetRefs[{i}]"
    key = (target.namespace or res.meta.namespace, target.name)
    # A GatewayClass is a target only for a policy (or WasmPlugin) in the root namespace: every waypoint (Istio).
    by_class = res.meta.namespace == MeshConfig().root_namespace
    targetable = {"Gateway": gateways, "Service": services,
                  **({"GatewayClass": {("", r.WAYPOINT_CLASS)}} if by_class else {})}.get(target.kind)
    if targetable is None:
        kinds = "Gateway, Service, or GatewayClass from the root namespace"
        return [_problem(res, f"{where}.kind", f"{target.kind!r} cannot be targeted ({kinds})")]
    groups = _TARGET_GROUPS[target.kind]
    if target.group not in groups:
        return [_problem(res, f"{where}.group", f"{target.group!r} is not the group of a {target.kind} "
                         f"({' or '.join(repr(g) for g in groups)}), so the reference matches nothing")]
    if target.kind == "GatewayClass":
        if target.name != r.WAYPOINT_CLASS:
            return [_problem(res, where, f"GatewayClass {target.name!r} runs no waypoint (only "
                             f"{r.WAYPOINT_CLASS!r} does)", code=Code.NOT_FOUND)]
        return []
    if target.namespace not in ("", res.meta.namespace):
        return [_problem(res, f"{where}.namespace", "a targetRef must be in the policy's own namespace (Istio "
                         "does not support cross-namespace targets), so the reference matches nothing")]
    if key not in targetable:
        return [_problem(res, where, f"no {target.kind} {key[0]}/{key[1]}", code=Code.NOT_FOUND)]
    return []


def _wasm_plugin(plugin: r.WasmPlugin, state: ClusterState) -> list[Problem]:
    """Why no waypoint runs a WasmPlugin that is valid (AMB0111: ``waypoint_config.wasm_problems``), and
    each Service it targets that sends its traffic through no waypoint (AMB0112): the plugin never sees
    that traffic. A target that does not exist is AMB0101 (``_target_ref``)."""
    problems = [_problem(plugin, field, message, Severity.WARNING, Code.WASM_NO_WAYPOINT)
                for field, message in waypoint_config.wasm_problems(plugin)]
    if problems:
        return problems
    for i, target in enumerate(plugin.target_refs):
        service = state.services.get((plugin.meta.namespace, target.name))
        if (target.kind != "Service" or target.group not in waypoint_config.CORE_GROUPS
                or target.namespace not in ("", plugin.meta.namespace) or service is None):
            continue
        if service_waypoint(service, state, MeshConfig()) is None:
            problems.append(_problem(
                plugin, f"spec.targetRefs[{i}]", f"Service {plugin.meta.namespace}/{target.name} uses no waypoint "
                f"(label {r.USE_WAYPOINT} on it or its namespace, naming a waypoint that admits it and takes "
                "service traffic), so the plugin never sees its traffic", Severity.WARNING,
                Code.WASM_SERVICE_NO_WAYPOINT))
    return problems


def _route(route: r.Route, state: ClusterState, any_gateways: set[tuple[str, str]]) -> list[Problem]:
    """What in an HTTPRoute or GRPCRoute does not resolve: every problem its Route resource carries to
    the waypoint (AMB0109). A Gateway parent is no such problem when the Gateway exists: no ingress
    Gateway runs here, and the Gateway's own warning (AMB0007) says so; a missing one is AMB0101."""
    problems = []
    for i, parent in enumerate(route.parents):
        if parent.kind != "Service":
            key = (parent.namespace or route.meta.namespace, parent.name)
            if key not in any_gateways:
                problems.append(_problem(route, f"spec.parentRefs[{i}]", f"no {parent.kind} {key[0]}/{key[1]}",
                                         code=Code.NOT_FOUND))
    gateway_parents = {f"spec.parentRefs[{i}]" for i, p in enumerate(route.parents) if p.kind != "Service"}
    for field, message in waypoint_config.route_problems(route, state, MeshConfig()):
        if field not in gateway_parents:
            problems.append(_problem(route, field, message, code=Code.ROUTE_UNRESOLVED))
    return problems


def _unused_waypoints(resources: list[r.Resource], state: ClusterState) -> list[Problem]:
    """A waypoint Gateway that no namespace, Service or pod sends traffic to (``istio.io/use-waypoint``
    naming it, from a namespace its listener admits): it runs, but what is attached to it applies to
    nothing. A mismatch of traffic type is not counted here: AMB0108 reports it."""
    used: set[tuple[str, str]] = set()
    for res in resources:
        if isinstance(res, r.Namespace):  # its own labels; waypoint_ref reads an object's namespace's
            labels, namespace = res.meta.labels, res.meta.name
            name = labels.get(r.USE_WAYPOINT)
            refs = [(labels.get(USE_WAYPOINT_NAMESPACE, namespace), name)] if name and name != "none" else []
        elif isinstance(res, (r.Service, r.Pod, r.Deployment)):
            namespace = res.meta.namespace
            metas = [p.meta for p in res.pods] if isinstance(res, r.Deployment) else [res.meta]
            refs = [ref for m in metas if (ref := waypoint_ref(m, {})) is not None]
        else:
            continue
        for ref in refs:
            gateway = state.gateways.get(ref)
            if gateway is not None and state.attachment_allowed(gateway, namespace):
                used.add(ref)
    return [_problem(gateway, "metadata.name", f"no namespace, Service or pod uses this waypoint (label "
                     f"{r.USE_WAYPOINT}: {name}, from a namespace it admits): it takes no traffic, so the policies "
                     "and routes attached to it apply to nothing", Severity.WARNING, Code.WAYPOINT_UNUSED)
            for (_, name), gateway in sorted(state.gateways.items()) if (gateway.meta.namespace, name) not in used]


def _use_waypoint(res: r.Resource, state: ClusterState) -> list[Problem]:
    """``istio.io/use-waypoint`` naming a waypoint that is missing, that does not admit the object's
    namespace (its listener's allowedRoutes), or that does not take this kind of traffic: as in
    Istio, such an object has no waypoint and its traffic goes directly, without the waypoint's L7
    policy. The first two are errors; the third is a warning (Istio's status says the same)."""
    if not isinstance(res, (r.Namespace, r.Service, r.Pod, r.Deployment)):
        return []
    waypoint = res.meta.labels.get(r.USE_WAYPOINT)
    if not waypoint or waypoint == "none":
        return []
    own_namespace = res.meta.name if isinstance(res, r.Namespace) else res.meta.namespace
    namespace = res.meta.labels.get(USE_WAYPOINT_NAMESPACE, own_namespace)
    where = f"metadata.labels[{r.USE_WAYPOINT}]"
    gateway = state.gateways.get((namespace, waypoint))
    if gateway is None:
        return [_problem(res, where, f"no waypoint Gateway {namespace}/{waypoint} (class {r.WAYPOINT_CLASS})",
                         code=Code.NOT_FOUND)]
    if not state.attachment_allowed(gateway, own_namespace):
        allowed = gateway.allowed_namespaces
        return [_problem(res, where, f"waypoint {namespace}/{waypoint} does not admit namespace {own_namespace} "
                         f"(its HBONE listener's allowedRoutes.namespaces.from is {allowed.source}), so this "
                         "traffic bypasses it; set from: All, or a Selector matching this namespace",
                         code=Code.WAYPOINT_NOT_ADMITTED)]
    traffic = state.waypoint_for(gateway)
    kinds = {r.Service: ("service",), r.Pod: ("workload",), r.Deployment: ("workload",),
             r.Namespace: ("service", "workload")}[type(res)]
    if not any(serves(traffic, kind) for kind in kinds):
        return [_problem(res, where, f"waypoint {namespace}/{waypoint} is for {traffic!r} traffic "
                         f"({r.WAYPOINT_FOR}), so it takes none addressed to this {kinds[0]}", Severity.WARNING,
                         Code.WAYPOINT_TRAFFIC_TYPE)]
    return []


def _ingress_use_waypoint(res: r.Resource) -> list[Problem]:
    """``istio.io/ingress-use-waypoint`` tells Istio's ingress gateways to send a Service's traffic
    through its waypoint. This mesh runs no ingress gateway, so it changes nothing here; mesh traffic
    to the Service goes through its waypoint with or without it."""
    if not isinstance(res, (r.Service, r.Namespace)) or INGRESS_USE_WAYPOINT not in res.meta.labels:
        return []
    return [_problem(res, f"metadata.labels[{INGRESS_USE_WAYPOINT}]", "has no effect: the mesh runs no ingress "
                     "gateway (Gateways of class 'istio' are not run); traffic from enrolled pods uses the "
                     "Service's waypoint regardless", Severity.WARNING, Code.INGRESS_ONLY)]


def _dataplane_mode(res: r.Resource) -> list[Problem]:
    """``istio.io/dataplane-mode`` other than ``ambient`` or ``none``: istio-cni ignores it (on a pod it
    does not opt out; on a namespace it does not enrol), which a typo should not do silently."""
    follows = "neither enrolled nor opted out by it: {} the namespace's mode"
    if isinstance(res, r.Deployment):
        labels, where, effect = res.template_labels, "spec.template.metadata.labels", follows.format("its pods follow")
    elif isinstance(res, r.Pod):
        labels, where, effect = res.meta.labels, "metadata.labels", follows.format("the pod follows")
    elif isinstance(res, r.Namespace):
        labels, where, effect = res.meta.labels, "metadata.labels", "its pods are not enrolled by it"
    else:
        return []
    mode = labels.get(r.DATAPLANE_MODE)
    if mode is None or mode in ("ambient", "none"):
        return []
    hint = f" (values are case-sensitive: write {mode.lower()!r})" if mode.lower() in ("ambient", "none") else ""
    return [_problem(res, f"{where}[{r.DATAPLANE_MODE}]", f"{mode!r} is neither 'ambient' nor 'none', so it is "
                     f"ignored: {effect}{hint}", Severity.WARNING, Code.DATAPLANE_MODE)]


def _target_port_names(service: r.Service, pods: dict[str, list[r.Pod]]) -> list[Problem]:
    """A named targetPort that none of the selected pods declares: the Service has no endpoint on
    that port (as Kubernetes). Nothing to say when it selects no pod (reported on its own)."""
    selected = [p for p in pods.get(service.meta.namespace, ())
                if all(p.meta.labels.get(k) == v for k, v in (service.selector or {}).items())]
    problems = []
    for i, port in enumerate(service.ports):
        if not isinstance(port.target_port, str) or not selected:
            continue
        if not any(c.name == port.target_port and c.protocol == port.protocol
                   for p in selected for container in p.spec.containers for c in container.ports):
            problems.append(_problem(service, f"spec.ports[{i}].targetPort",
                                     f"no container of the {len(selected)} pod(s) it selects declares a "
                                     f"{port.protocol} port named {port.target_port!r}: port {port.port} has no "
                                     "endpoints",
                                     Severity.WARNING, Code.TARGET_PORT))
    return problems


def _l7_at_l4(policy: r.AuthorizationPolicy, waypoints: list[str]) -> list[Problem]:
    """An L4-enforced policy cannot see request attributes (``controlplane.authz.l7_parts_of_rule``): say
    what that does to each rule, as istiod's translation does it, and which waypoint to target."""
    problems = []
    if waypoints:
        fix = f"attach the policy to the waypoint: targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, " \
              f"name: {waypoints[0]}}}]"
    else:
        fix = f"no waypoint Gateway (class {r.WAYPOINT_CLASS}) in {policy.meta.namespace}: create one and target " \
              "it with targetRefs"
    for i, rule in enumerate(policy.rules):
        for where, names in authz.l7_parts_of_rule(rule):
            condition = where.startswith("when")
            if policy.action == "ALLOW":
                effect = "ztunnel drops this whole ALLOW rule at L4, so it allows nothing"
            elif authz.can_match_at_l4(rule, policy.action):
                effect = "ztunnel enforces this DENY rule at L4 with its L4 fields only"
            else:
                effect = "this DENY rule has no L4 fields left to match, so it has no effect at L4"
            what = f"L7 condition {names[0]} is" if condition else f"L7 fields {', '.join(map(_yaml_name, names))} are"
            problems.append(_problem(policy, f"spec.rules[{i}].{where}",
                                     f"{what} enforced by a waypoint only; {effect} ({fix})", Severity.WARNING,
                                     Code.L7_AT_L4))
    return problems


def _unknown_fields(policy: r.AuthorizationPolicy) -> list[Problem]:
    """Fields of a rule the mesh does not understand: they may only make the rule match less."""
    problems = []
    for i, rule in enumerate(policy.rules):
        for where in rule.unknown:
            field = f"spec.rules[{i}].{where}"
            if policy.enforced_at_l7:
                problems.append(_problem(policy, field, "unknown field, ignored", Severity.WARNING,
                                         Code.UNKNOWN_RULE_FIELD))
            elif policy.action == "ALLOW":
                problems.append(_problem(policy, field, "unknown field: the mesh does not understand it, so this "
                                         "ALLOW rule never matches", code=Code.UNKNOWN_RULE_FIELD))
            else:
                problems.append(_problem(policy, field, "unknown field, ignored: this rule is enforced with its "
                                         "known fields only, so it denies at least as much as written",
                                         Severity.WARNING, Code.UNKNOWN_RULE_FIELD))
    return problems


def _yaml_name(field: str) -> str:
    """``not_remote_ip_blocks`` → ``notRemoteIpBlocks``, as the user wrote it."""
    return re.sub(r"_(\w)", lambda m: m.group(1).upper(), field)


def validate(paths: list[Path]) -> tuple[list[r.Resource], list[Problem]]:
    parsed = parse_paths(paths)
    return parsed.resources, parsed.problems + cross_check(parsed.resources)


def register(subparsers: argparse._SubParsersAction) -> None:
    cmd = subparsers.add_parser("validate", help="check Kubernetes-format YAML for the mesh")
    cmd.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files or directories of YAML")
    cmd.add_argument("-o", "--output", choices=("text", "json"), default="text",
                     help="text: one line per finding, ending in its code; json: one document")
    cmd.set_defaults(func=run)


def to_json(resources: list[r.Resource], problems: list[Problem]) -> dict:
    """The ``-o json`` document: counts, then every finding with its stable code."""
    errors = sum(p.severity is Severity.ERROR for p in problems)
    return {
        "resources": len(resources), "errors": errors, "warnings": len(problems) - errors,
        "findings": [{"code": p.code, "severity": p.severity.value, "file": p.file, "line": p.line,
                      "resource": p.resource, "field": p.field, "message": p.message} for p in problems],
    }


def run(args: argparse.Namespace) -> int:
    missing = [p for p in args.paths if not p.exists()]
    if missing:
        print(f"ambient: error: no such file or directory: {', '.join(map(str, missing))}", file=sys.stderr)
        return 1
    resources, problems = validate(args.paths)
    problems = sorted(problems, key=lambda p: (p.file, p.line))
    summary = to_json(resources, problems)
    if getattr(args, "output", "text") == "json":
        print(json.dumps(summary, indent=2))
    else:
        for problem in problems:
            print(f"{problem} [{problem.code}]")
    print(f"{summary['resources']} resources, {summary['errors']} errors, {summary['warnings']} warnings",
          file=sys.stderr)
    return 1 if summary["errors"] else 0
