"""AuthorizationPolicy and PeerAuthentication → the L4 ``istio.security.Authorization`` ztunnel enforces.

Shape (as Istio's): a policy rule becomes a ``Group``; its ``from``, ``to`` and each ``when``
condition become clauses (``Rules``) that must all hold; a clause holds when any of its ``Match``es
does; a ``Match`` holds when every field it sets does. An ALLOW policy with no groups matches nothing
(Istio's "allow nothing"); a group with no clauses matches everything (the rule ``{}``).

ztunnel sees only L4: peer identity, addresses and ports. Parts of a rule that need L7 (methods,
paths, hosts, request principals, remote IPs, conditions on request attributes) cannot be evaluated
there, so the translation does what Istio does (DESIGN.md section 2; istiod's ``handleRule``, and
ztunnel skipping an empty ``Match``): an ALLOW rule with any L7 part is dropped whole; a DENY rule
keeps the L4 fields of each alternative, and an alternative left empty matches nothing (so a DENY of
``methods`` alone has no effect at L4). A field the mesh does not understand (``Rule.unknown``) may
only make a rule match less: it drops an ALLOW rule whole, and a DENY keeps its known fields.
A policy annotated ``istio.io/dry-run: "true"`` is sent with ``dry_run`` set: ztunnel only logs it.

PeerAuthentication: the effective mode of a workload is its own selector policy, else its namespace's,
else the mesh's (root namespace), per port where ``portLevelMtls`` says so. STRICT becomes a DENY of
connections without a peer identity (plaintext). These converted policies are attached to workloads
by name, so that a more specific PERMISSIVE policy really overrides a namespace-wide STRICT one.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.empty_pb2 import Empty

from mesh import resources as r
from mesh.api import authorization_pb2 as pb
from mesh.api.types import policy_key

# Conditions ztunnel can evaluate, by key; everything else is a request attribute (L7).
L4_CONDITION_KEYS = ("source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port")
SOURCE_L7_FIELDS = ("request_principals", "not_request_principals", "remote_ip_blocks", "not_remote_ip_blocks")
CONVERTED_PEER_AUTHENTICATION = "converted_peer_authentication_"


def l7_parts_of_rule(rule: r.Rule) -> list[tuple[str, tuple[str, ...]]]:
    """``[(field path inside the rule, L7 field names)]``: what ztunnel cannot evaluate."""
    parts = []
    for i, source in enumerate(rule.sources):
        if names := tuple(f for f in SOURCE_L7_FIELDS if getattr(source, f)):
            parts.append((f"from[{i}].source", names))
    for i, operation in enumerate(rule.operations):
        if names := operation.l7_fields():
            parts.append((f"to[{i}].operation", names))
    for i, condition in enumerate(rule.conditions):
        if condition.key not in L4_CONDITION_KEYS:
            parts.append((f"when[{i}]", (condition.key,)))
    return parts


def string_match(value: str) -> pb.StringMatch:
    """Istio's wildcard forms: ``*`` any (presence), ``prefix*``, ``*suffix``, else exact."""
    if value == "*":
        return pb.StringMatch(presence=Empty())
    if value.startswith("*"):  # checked first, as Istio does: "*mid*" is a suffix match on "mid*"
        return pb.StringMatch(suffix=value[1:])
    if value.endswith("*"):
        return pb.StringMatch(prefix=value[:-1])
    return pb.StringMatch(exact=value)


def _principal(value: str) -> pb.StringMatch:
    # Istio principals are "<trust domain>/ns/<ns>/sa/<sa>"; accept a full SPIFFE ID too.
    return string_match(value.removeprefix("spiffe://"))


@functools.lru_cache(maxsize=4096)
def _address(cidr: str) -> pb.Address:  # cached: parsing is slow, and messages are copied on use
    network = ipaddress.ip_network(cidr, strict=False)
    return pb.Address(address=network.network_address.packed, length=network.prefixlen)


def _service_account(value: str, namespace: str) -> pb.ServiceAccountMatch:
    """``ns/sa``, or ``sa`` in the policy's namespace (istiod's ``stringToServiceAccountMatch``)."""
    ns, _, sa = value.rpartition("/")
    return pb.ServiceAccountMatch(namespace=ns or namespace, service_account=sa)


def _within_trust_domain(principal: pb.StringMatch, domain: str, action: str) -> pb.StringMatch | None:
    """The principals that both match ``principal`` and are in ``domain``; None for none.

    A principal is ``<trust domain>/ns/<ns>/sa/<sa>`` and a trust domain has no ``/``, so an exact or
    prefix match narrows to one that names the domain, or to nothing. A suffix match cannot carry a
    second condition in one ``StringMatch``: an ALLOW keeps it only where the suffix spells out the
    rest of the principal (``*/ns/a/sa/b``), else drops it (matching less); a DENY keeps it as written
    (denying more). Neither can widen an ALLOW.
    """
    head = domain + "/"
    kind = principal.WhichOneof("match_type")
    if kind == "presence":
        return pb.StringMatch(prefix=head)
    if kind == "exact":
        return principal if principal.exact.startswith(head) else None
    if kind == "prefix":
        if principal.prefix.startswith(head):
            return principal
        return pb.StringMatch(prefix=head) if head.startswith(principal.prefix) else None
    if kind == "suffix" and re.fullmatch(r"/ns/[^/]+/sa/[^/]+", principal.suffix):
        return pb.StringMatch(exact=domain + principal.suffix)
    return principal if action == "DENY" and kind == "suffix" else None


def _principals(source: r.Source, action: str) -> list[list[pb.StringMatch]]:
    """The ``principals`` of each Match a source becomes: one Match unless ``trustDomains`` is set,
    which must hold together with ``principals``. A Match holds one list per field, so the pairs
    are intersected here (``_within_trust_domain``); an empty list of lists means the source matches
    no principal at all."""
    principals = [_principal(p) for p in source.principals]
    if not source.trust_domains:
        return [principals]
    if not principals:
        return [[string_match(d) if d == "*" else pb.StringMatch(prefix=d + "/") for d in source.trust_domains]]
    if "*" in source.trust_domains:
        return [principals]
    narrowed = [m for p in principals for d in source.trust_domains
                if (m := _within_trust_domain(p, d, action)) is not None]
    return [narrowed] if narrowed else []


def _source_match(source: r.Source, namespace: str, action: str) -> list[pb.Match]:
    not_principals = [_principal(p) for p in source.not_principals]
    # "none of these principals and none of these domains" is one list of exclusions
    not_principals += [string_match(d) if d == "*" else pb.StringMatch(prefix=d + "/")
                       for d in source.not_trust_domains]
    return [_source_fields(source, namespace, principals, not_principals)
            for principals in _principals(source, action)]


def _source_fields(source: r.Source, namespace: str, principals: list[pb.StringMatch],
                   not_principals: list[pb.StringMatch]) -> pb.Match:
    return pb.Match(
        principals=principals,
        not_principals=not_principals,
        namespaces=[string_match(n) for n in source.namespaces],
        not_namespaces=[string_match(n) for n in source.not_namespaces],
        service_accounts=[_service_account(a, namespace) for a in source.service_accounts],
        not_service_accounts=[_service_account(a, namespace) for a in source.not_service_accounts],
        source_ips=[_address(c) for c in source.ip_blocks],
        not_source_ips=[_address(c) for c in source.not_ip_blocks],
    )


def _operation_match(operation: r.Operation, _namespace: str, _action: str) -> list[pb.Match]:
    return [pb.Match(destination_ports=operation.ports, not_destination_ports=operation.not_ports)]


def _condition_match(condition: r.Condition) -> pb.Match:
    """One L4 condition; its values must already be valid (``mesh.parse`` checks them)."""
    key, values, not_values = condition.key, condition.values, condition.not_values
    if key == "source.ip":
        return pb.Match(source_ips=map(_address, values), not_source_ips=map(_address, not_values))
    if key == "destination.ip":
        return pb.Match(destination_ips=map(_address, values), not_destination_ips=map(_address, not_values))
    if key == "destination.port":
        return pb.Match(destination_ports=map(int, values), not_destination_ports=map(int, not_values))
    if key == "source.namespace":
        return pb.Match(namespaces=map(string_match, values), not_namespaces=map(string_match, not_values))
    if key == "source.principal":
        return pb.Match(principals=map(_principal, values), not_principals=map(_principal, not_values))
    raise ValueError(f"condition key {key!r} is not evaluated at L4")


_ANY = pb.Match()


def _group(rule: r.Rule, action: str, namespace: str = "") -> pb.Group | None:
    """The group for one rule, or None when at L4 it can never match.

    As istiod (``handleRule``) and ztunnel (which skips an empty ``Match``): an ALLOW rule with any
    L7 part is dropped whole, and so is one with a field the mesh does not understand. A DENY rule
    keeps the L4 fields of each alternative; an alternative left empty by removing its L7 fields is
    skipped (it matches nothing), so a clause made only of such alternatives, or an L7 condition,
    makes the rule match nothing. An alternative with an unknown field keeps its known L4 fields,
    even if none: then it matches anyone, the deny as wide as what the mesh understands of it.
    """
    if action == "ALLOW" and (rule.unknown or l7_parts_of_rule(rule)):
        return None
    clauses: list[pb.Rules] = []
    kinds: tuple[tuple[tuple[Any, ...], Callable[[Any, str, str], list[pb.Match]]], ...] = (
        (rule.sources, _source_match), (rule.operations, _operation_match))
    for items, to_match in kinds:
        if not items:
            continue
        matches = [m for item in items for m in to_match(item, namespace, action) if m != _ANY or item.unknown]
        if not matches:
            return None
        if _ANY not in matches:  # an alternative that always holds makes the clause hold: left out
            clauses.append(pb.Rules(matches=matches))
    for condition in rule.conditions:
        if condition.key not in L4_CONDITION_KEYS:
            return None
        clauses.append(pb.Rules(matches=[_condition_match(condition)]))
    return pb.Group(rules=clauses)


def can_match_at_l4(rule: r.Rule, action: str = "ALLOW") -> bool:
    """Whether the rule, enforced by ztunnel in a policy of ``action``, can match any connection."""
    return _group(rule, action) is not None


def scope_of(policy: r.AuthorizationPolicy, root_namespace: str) -> pb.Scope:
    if policy.selector:
        return pb.WORKLOAD_SELECTOR
    return pb.GLOBAL if policy.meta.namespace == root_namespace else pb.NAMESPACE


def translate_policy(policy: r.AuthorizationPolicy, root_namespace: str) -> pb.Authorization | None:
    """The L4 form of a policy ztunnel enforces; None for one it does not (waypoint-bound, AUDIT)."""
    if policy.enforced_at_l7 or policy.action not in ("ALLOW", "DENY"):
        return None
    namespace = policy.meta.namespace
    groups = [g for rule in policy.rules if (g := _group(rule, policy.action, namespace)) is not None]
    return pb.Authorization(
        name=policy.meta.name,
        namespace=namespace,
        scope=scope_of(policy, root_namespace),
        action=pb.ALLOW if policy.action == "ALLOW" else pb.DENY,
        groups=groups,
        dry_run=policy.dry_run,
    )


# ---------------------------------------------------------------- PeerAuthentication


@dataclass(frozen=True)
class MtlsMode:
    """A workload's effective mTLS mode: a default and per-port exceptions."""

    mode: str  # STRICT | PERMISSIVE | DISABLE
    ports: Mapping[int, str]

    def strict_ports(self) -> tuple[int, ...]:
        return tuple(sorted(p for p, m in self.ports.items() if m == "STRICT"))

    def lenient_ports(self) -> tuple[int, ...]:
        return tuple(sorted(p for p, m in self.ports.items() if m != "STRICT"))


def pick_policy(policies: Iterable[r.PeerAuthentication]) -> r.PeerAuthentication | None:
    # Istio takes the oldest of several; without creation times, the first by name is as stable.
    return min(policies, key=lambda p: p.meta.name, default=None)


def effective_mtls(
    workload_policy: r.PeerAuthentication | None,
    namespace_policy: r.PeerAuthentication | None,
    mesh_policy: r.PeerAuthentication | None,
) -> tuple[MtlsMode, r.PeerAuthentication | None]:
    """The mode a workload gets and the policy it comes from (the most specific that is present)."""
    inherited = "PERMISSIVE"
    for policy in (mesh_policy, namespace_policy):
        if policy is not None and policy.mode != "UNSET":
            inherited = policy.mode
    if workload_policy is not None:
        mode = inherited if workload_policy.mode == "UNSET" else workload_policy.mode
        ports = {p: (mode if m == "UNSET" else m) for p, m in workload_policy.port_modes.items()}
        return MtlsMode(mode, ports), workload_policy
    source = namespace_policy if namespace_policy is not None and namespace_policy.mode != "UNSET" else mesh_policy
    return MtlsMode(inherited, {}), source


def translate_mtls(policy: r.PeerAuthentication, mode: MtlsMode) -> pb.Authorization | None:
    """A DENY of plaintext (no peer identity) where ``mode`` is STRICT; None when nothing is strict."""
    no_identity = [pb.StringMatch(presence=Empty())]
    if mode.mode == "STRICT":
        match = pb.Match(not_principals=no_identity, not_destination_ports=mode.lenient_ports())
    elif mode.strict_ports():
        match = pb.Match(not_principals=no_identity, destination_ports=mode.strict_ports())
    else:
        return None
    return pb.Authorization(
        name=CONVERTED_PEER_AUTHENTICATION + policy.meta.name,
        namespace=policy.meta.namespace,
        scope=pb.WORKLOAD_SELECTOR,  # attached by name to exactly the workloads it governs
        action=pb.DENY,
        groups=[pb.Group(rules=[pb.Rules(matches=[match])])],
    )


__all__ = [
    "L4_CONDITION_KEYS", "MtlsMode", "can_match_at_l4", "effective_mtls", "l7_parts_of_rule", "policy_key", "scope_of",
    "string_match", "translate_mtls", "translate_policy",
]
