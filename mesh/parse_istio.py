"""Istio's resources → ``mesh.resources``, for ``mesh.parse``: AuthorizationPolicy (with Istio's
string forms, trust domains, service accounts and conditions, and every field the mesh does not
understand recorded so that it can only make a rule match less), and PeerAuthentication. WasmPlugin
is ``mesh.parse_wasm``."""

from __future__ import annotations

import ipaddress
import re

from mesh import resources as r
from mesh.parse_fields import labels_selector, object_ref, port_field
from mesh.source import Code, Field, Severity


def _target_refs(spec: Field) -> tuple[r.ObjectRef, ...]:
    """``targetRefs``, plus the older singular ``targetRef``."""
    fields = spec["targetRefs"].items() + ([spec["targetRef"]] if spec["targetRef"].present else [])
    return tuple(ref for item in fields if (ref := object_ref(item)))


def _cidrs(f: Field) -> tuple[str, ...]:
    result = []
    for item in f.items():
        value = item.str(required=True)
        if value is None:
            continue
        try:
            ipaddress.ip_network(value, strict=False)
            result.append(value)
        except ValueError:
            item.report(f"{value!r} is not an IP address or CIDR block")
    return tuple(result)


def _ports(f: Field) -> tuple[int, ...]:
    return tuple(p for item in f.items() if (p := port_field(item)))


_SOURCE_FIELDS = {"principals", "notPrincipals", "requestPrincipals", "notRequestPrincipals", "namespaces",
                  "notNamespaces", "ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks",
                  "serviceAccounts", "notServiceAccounts", "trustDomains", "notTrustDomains"}
_OPERATION_FIELDS = {"hosts", "notHosts", "ports", "notPorts", "methods", "notMethods", "paths", "notPaths"}


def _service_accounts(f: Field) -> tuple[str, ...]:
    """Istio's ``serviceAccounts``: exact ``ns/sa`` names, or ``sa`` in the policy's namespace."""
    result = []
    for item in f.items():
        value = item.str(required=True)
        if value is None:
            continue
        parts = value.split("/")
        if len(parts) > 2 or not all(parts) or "*" in value:
            item.report(f"{value!r} is not a service account (namespace/name, or name; no wildcards)")
            continue
        result.append(value)
    return tuple(result)


_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")  # SPIFFE's trust domain characters


def _trust_domains(f: Field) -> tuple[str, ...]:
    """Istio's ``trustDomains``: the peer's trust domain, exactly, or ``*`` for any peer with one.
    Partial wildcards are refused: a principal match cannot express them together with the rest."""
    result = []
    for item in f.items():
        value = item.str(required=True)
        if value is None:
            continue
        if value != "*" and not _TRUST_DOMAIN.fullmatch(value):
            item.report(f"{value!r} is not a trust domain (lower-case letters, digits, '.', '-', '_'; "
                        "or '*' alone)")
            continue
        result.append(value)
    return tuple(result)


def _rule(f: Field) -> r.Rule | None:
    """A rule; the fields it does not know are collected in ``Rule.unknown`` (``validate`` reports
    them: what they do depends on the action) rather than warned about as ignored."""
    unknown: list[str] = []

    def note(where: str, names: list[str]) -> tuple[str, ...]:
        paths = tuple(f"{where}.{name}" if where else name for name in names)
        unknown.extend(paths)
        return paths

    names: list[str] = []
    if not f.mapping({"from", "to", "when"}, unknown=names):
        return None
    note("", names)
    sources = []
    for i, item in enumerate(f["from"].items()):
        outer: list[str] = []
        inner: list[str] = []
        if item.mapping({"source"}, unknown=outer) and item["source"].mapping(_SOURCE_FIELDS, required=True,
                                                                               unknown=inner):
            s = item["source"]
            if not any(s[name].value for name in _SOURCE_FIELDS) and not inner:  # as Istio: a mistake, not "anyone"
                s.report("must not be empty")
            sources.append(r.Source(
                s["principals"].str_list(), s["notPrincipals"].str_list(), s["requestPrincipals"].str_list(),
                s["notRequestPrincipals"].str_list(), s["namespaces"].str_list(), s["notNamespaces"].str_list(),
                _cidrs(s["ipBlocks"]), _cidrs(s["notIpBlocks"]), _cidrs(s["remoteIpBlocks"]),
                _cidrs(s["notRemoteIpBlocks"]), _service_accounts(s["serviceAccounts"]),
                _service_accounts(s["notServiceAccounts"]), _trust_domains(s["trustDomains"]),
                _trust_domains(s["notTrustDomains"]),
                note(f"from[{i}]", outer) + note(f"from[{i}].source", inner),
            ))
    operations = []
    for i, item in enumerate(f["to"].items()):
        outer, inner = [], []
        if item.mapping({"operation"}, unknown=outer) and item["operation"].mapping(
                _OPERATION_FIELDS, required=True, unknown=inner):
            o = item["operation"]
            if not any(o[name].value for name in _OPERATION_FIELDS) and not inner:
                o.report("must not be empty")
            operations.append(r.Operation(
                o["hosts"].str_list(), o["notHosts"].str_list(), _ports(o["ports"]), _ports(o["notPorts"]),
                o["methods"].str_list(), o["notMethods"].str_list(), o["paths"].str_list(), o["notPaths"].str_list(),
                note(f"to[{i}]", outer) + note(f"to[{i}].operation", inner),
            ))
    conditions = []
    for i, item in enumerate(f["when"].items()):
        names = []
        if item.mapping({"key", "values", "notValues"}, unknown=names) and (key := item["key"].str(required=True)):
            note(f"when[{i}]", names)
            if not item["values"].value and not item["notValues"].value:
                item.report(f"condition {key} needs values or notValues")
            conditions.append(r.Condition(key, _condition_values(item["values"], key),
                                          _condition_values(item["notValues"], key)))
    return r.Rule(tuple(sources), tuple(operations), tuple(conditions), tuple(unknown))


_IP_KEYS = ("source.ip", "destination.ip", "remote.ip")


def _condition_values(f: Field, key: str) -> tuple[str, ...]:
    """A condition's values; those of keys that name addresses or ports must be ones (as Istio
    checks them): ztunnel evaluates these, and a typo must not become a rule that never matches."""
    values = f.str_list()  # reports what is not a list of strings
    for item in f.items() if isinstance(f.value, list) else ():
        if not isinstance(item.value, str):
            continue
        if key in _IP_KEYS:
            try:
                ipaddress.ip_network(item.value, strict=False)
            except ValueError:
                item.report(f"{item.value!r} is not an IP address or CIDR block")
        elif key == "destination.port":
            port_field(item)
    return values


def authorization_policy(spec: Field, meta: r.Meta, origin: r.Origin) -> r.AuthorizationPolicy | None:
    if spec.present and not spec.mapping({"selector", "targetRef", "targetRefs", "action", "rules", "provider"}):
        return None
    action = spec["action"].str(default="ALLOW", choices=("ALLOW", "DENY", "AUDIT", "CUSTOM"))
    # As Istio's ambient translation: ztunnel enforces ALLOW and DENY only; it skips the others.
    if action == "CUSTOM":
        spec["action"].report("CUSTOM (external authorization) is not enforced by ztunnel, nor by the mesh's "
                              "waypoint: the policy is skipped", Severity.WARNING, code=Code.ACTION_NOT_ENFORCED)
    elif action == "AUDIT":
        spec["action"].report("AUDIT has no effect at L4: ztunnel ignores AUDIT policies, and the mesh writes no "
                              "audit log: the policy is skipped", Severity.WARNING, code=Code.ACTION_NOT_ENFORCED)
    selector = labels_selector(spec["selector"])
    targets = _target_refs(spec)
    if selector is not None and targets:
        spec["selector"].report("selector and targetRefs cannot both be set")
    rules = tuple(rule for item in spec["rules"].items() if (rule := _rule(item)))
    return r.AuthorizationPolicy(meta, origin, action, rules, r.frozen_map(selector) if selector is not None else None,
                                 targets, _dry_run(meta))


def _dry_run(meta: r.Meta) -> bool:
    """``istio.io/dry-run``, read as Istio does (Go's ``strconv.ParseBool``: anything else is false)."""
    return meta.annotations.get(r.DRY_RUN, "") in ("1", "t", "T", "TRUE", "true", "True")


_MTLS_MODES = ("UNSET", "DISABLE", "PERMISSIVE", "STRICT")


def peer_authentication(spec: Field, meta: r.Meta, origin: r.Origin) -> r.PeerAuthentication | None:
    if spec.present and not spec.mapping({"selector", "mtls", "portLevelMtls"}):
        return None
    mode = "UNSET"
    if spec["mtls"].mapping({"mode"}):
        mode = spec["mtls"]["mode"].str(default="UNSET", choices=_MTLS_MODES)
    port_modes = {}
    for key, entry in spec["portLevelMtls"].entries():
        port = port_field(entry, value=key)
        if entry.mapping({"mode"}) and port:
            port_modes[port] = entry["mode"].str(default="UNSET", choices=_MTLS_MODES)
    selector = labels_selector(spec["selector"])
    return r.PeerAuthentication(meta, origin, mode, r.frozen_map(selector) if selector is not None else None,
                                r.MappingProxyType(port_modes))
