"""L7 AuthorizationPolicy in the waypoint, evaluated as Istio's waypoint (Envoy RBAC) evaluates it.

Pure: ``L7Authorizer.compile(policies)`` runs once per discovery change and turns every
``L7Policy`` into predicates (patterns grouped into sets and prefix tuples, CIDRs parsed, path
templates compiled). ``policies_for(gateway, service)`` picks, once per (waypoint, Service) pair,
the policies that apply, and ``PolicySet.authorize(request)`` decides one request:

- Applicable: policies whose ``gateways`` hold the waypoint's key, and those whose ``services`` hold
  the addressed Service's key. CUSTOM policies are not run (no external authorizer here): they are
  listed in ``skipped_custom`` for the proxy to warn about once. AUDIT policies never decide (Istio's
  AUDIT only marks requests for an audit log; no audit sink exists here): listed in ``audit``.
- Decision: any matching DENY denies; else, when some ALLOW applies, one must match; else allow.
  Dry-run policies (``istio.io/dry-run``) are evaluated too, never decide, and are reported in
  ``L7Decision.dry_run`` when enforcing them would have decided otherwise. An action number this
  module does not know counts as DENY (the safe side).
- A policy matches when one of its rules does; no rules: it matches nothing (an ALLOW without rules
  denies all, a DENY without rules denies nothing). A rule matches when every part it has does: some
  Source of ``from``, some Operation of ``to``, every Condition of ``when``; ``{}`` matches all. In a
  Source or Operation every field set must hold: a positive field when an entry matches, a ``not_``
  field when none does.
- Strings keep Istio's syntax: "*", "prefix*", "*suffix", exact (paths also "{*}", "{**}" templates).
  "*" is "any non-empty value" for principals, namespaces and paths (istiod's regex ``.+``), and "any
  value" where istiod emits a presence match (hosts, methods, header conditions). Principals compare
  "<td>/ns/<ns>/sa/<sa>"; with no peer identity, principals, namespaces, service accounts and trust
  domains never match, so their ``not_`` forms hold. Hosts are case-insensitive and exact about ports
  ("example.com" does not match "example.com:80": write "example.com:*" too, as Istio says).
  Paths are compared without their query, normalised as Istio's default (``http_match.normalize_path``);
  a path that cannot be normalised (an encoded NUL) is denied outright.
- No RequestAuthentication runs in this mesh, so no request has a request principal or JWT claims:
  ``request_principals`` and ``request.auth.*`` values never match and their ``not_`` forms always do.
  ``connection.sni`` is the empty string (requests arrive inside HBONE, not over their own TLS).
- Condition keys this module does not know (``experimental.*`` among them): the condition never holds
  in an ALLOW rule and always holds in a DENY rule, so an unknown key only ever makes the waypoint
  stricter. Dry-run policies get the same treatment by their action.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

from mesh.api import waypoint_pb2 as wp
from mesh.api.types import policy_key
from mesh.identity import SpiffeId
from waypoint.http_match import (
    IPAddress,
    IpBlocks,
    IstioStrings,
    ip_blocks,
    istio_strings,
    normalize_path,
    parse_ip,
    split_target,
)

ALLOW, DENY, AUDIT, CUSTOM = wp.L7Policy.ALLOW, wp.L7Policy.DENY, wp.L7Policy.AUDIT, wp.L7Policy.CUSTOM
_ACTION_NAMES: dict[int, str] = {ALLOW: "ALLOW", DENY: "DENY", AUDIT: "AUDIT", CUSTOM: "CUSTOM"}


@dataclass(frozen=True, slots=True)
class RequestAttributes:
    """What L7 policy sees of one request (the proxy builds it once per request)."""

    source_identity: SpiffeId | None  # the peer's verified SPIFFE ID (the source workload's certificate)
    source_ip: str  # the source workload's IP (forwarded-for of the HBONE CONNECT)
    remote_ip: str  # x-forwarded-for's first entry if present, else source_ip
    destination_ip: str  # the original destination the client addressed (VIP or pod IP)
    destination_port: int
    host: str  # :authority / Host, as sent
    method: str
    path: str  # the raw request target (may contain ?query)
    headers: Mapping[str, tuple[str, ...]]  # lowercase name -> values


@dataclass(frozen=True)
class L7Decision:
    allowed: bool
    policy: str | None  # "<ns>/<name>" of the deciding policy (the DENY or ALLOW that matched)
    reason: str  # for the access log
    dry_run: tuple[str, ...] = ()  # dry-run policies that would have decided otherwise (logged only)


ALLOWED_NO_POLICY = L7Decision(True, None, "no L7 policy applies")


class _Facts:
    """The request's attributes in the forms the predicates compare, each derived once, on first use."""

    def __init__(self, request: RequestAttributes) -> None:
        self.request = request
        identity = request.source_identity
        self.identity = identity
        self.principal = None if identity is None else str(identity).removeprefix("spiffe://")

    @cached_property
    def source_ip(self) -> IPAddress | None:
        return parse_ip(self.request.source_ip)

    @cached_property
    def remote_ip(self) -> IPAddress | None:
        # An x-forwarded-for entry that is not an address: Envoy falls back to the direct peer.
        parsed = parse_ip(self.request.remote_ip)
        return parsed if parsed is not None else self.source_ip

    @cached_property
    def destination_ip(self) -> IPAddress | None:
        return parse_ip(self.request.destination_ip)

    @cached_property
    def path(self) -> str | None:
        return normalize_path(split_target(self.request.path)[0])


_Test = Callable[[_Facts], bool]


def _all(tests: list[_Test]) -> _Test:
    if len(tests) == 1:
        return tests[0]
    frozen = tuple(tests)
    return lambda facts: all(t(facts) for t in frozen)


def _always(_facts: _Facts) -> bool:
    return True


def _never(_facts: _Facts) -> bool:
    return False


def _field(tests: list[_Test], positive: _Test | None, negative: _Test | None) -> None:
    """Add the tests of one field and its ``not_`` twin, when set."""
    if positive is not None:
        tests.append(positive)
    if negative is not None:
        tests.append(lambda facts: not negative(facts))


# ---------------------------------------------------------------- attribute tests


def _principal_test(strings: IstioStrings | None) -> _Test | None:
    if strings is None:
        return None
    return lambda f: f.principal is not None and strings.matches(f.principal)


def _namespace_test(strings: IstioStrings | None) -> _Test | None:
    if strings is None:
        return None
    return lambda f: f.identity is not None and strings.matches(f.identity.namespace)


def _service_account_test(entries: Iterable[str]) -> _Test | None:
    declared = list(entries)
    if not declared:
        return None
    accounts = frozenset(tuple(e.split("/", 1)) for e in declared if "/" in e)  # "<ns>/<sa>", exact
    return lambda f: f.identity is not None and (f.identity.namespace, f.identity.service_account) in accounts


def _trust_domain_test(entries: Iterable[str]) -> _Test | None:
    declared = list(entries)
    if not declared:
        return None
    domains = frozenset(declared)
    star = "*" in domains
    return lambda f: f.identity is not None and (star or f.identity.trust_domain in domains)


def _ip_test(blocks: IpBlocks | None, attribute: str) -> _Test | None:
    if blocks is None:
        return None
    getter: Callable[[_Facts], IPAddress | None] = {
        "source_ip": lambda f: f.source_ip,
        "remote_ip": lambda f: f.remote_ip,
        "destination_ip": lambda f: f.destination_ip,
    }[attribute]
    return lambda f: blocks.matches(getter(f))


def _port_test(ports: Iterable[int]) -> _Test | None:
    declared = list(ports)
    if not declared:
        return None
    allowed = frozenset(declared)
    return lambda f: f.request.destination_port in allowed


def _string_test(strings: IstioStrings | None, getter: Callable[[_Facts], str | None]) -> _Test | None:
    if strings is None:
        return None

    def test(f: _Facts) -> bool:
        value = getter(f)
        return value is not None and strings.matches(value)

    return test


def _header_test(name: str, strings: IstioStrings | None) -> _Test | None:
    """Istio matches a header condition against each comma-separated element of the header's values
    joined with "," (its regex ``^v$|^v,.*|.*,v,.*|.*,v$``); "*" only asks that the header be present."""
    if strings is None:
        return None

    def test(f: _Facts) -> bool:
        values = f.request.headers.get(name)
        if not values:
            return False
        if strings.any_value:
            return True
        return any(strings.matches(element) for value in values for element in value.split(","))

    return test


# ---------------------------------------------------------------- compiling rules


def _compile_source(source: wp.Source) -> _Test:
    tests: list[_Test] = []
    strings = istio_strings
    _field(tests, _principal_test(strings(source.principals, star_matches_empty=False)),
           _principal_test(strings(source.not_principals, star_matches_empty=False)))
    # No request authentication: nothing has a request principal.
    _field(tests, _never if source.request_principals else None,
           _never if source.not_request_principals else None)
    _field(tests, _namespace_test(strings(source.namespaces, star_matches_empty=False)),
           _namespace_test(strings(source.not_namespaces, star_matches_empty=False)))
    _field(tests, _ip_test(ip_blocks(source.ip_blocks), "source_ip"),
           _ip_test(ip_blocks(source.not_ip_blocks), "source_ip"))
    _field(tests, _ip_test(ip_blocks(source.remote_ip_blocks), "remote_ip"),
           _ip_test(ip_blocks(source.not_remote_ip_blocks), "remote_ip"))
    _field(tests, _service_account_test(source.service_accounts), _service_account_test(source.not_service_accounts))
    _field(tests, _trust_domain_test(source.trust_domains), _trust_domain_test(source.not_trust_domains))
    return _all(tests) if tests else _always


def _compile_operation(operation: wp.Operation) -> _Test:
    tests: list[_Test] = []

    def hosts(entries: Iterable[str]) -> _Test | None:
        return _string_test(istio_strings(entries, star_matches_empty=True, fold_case=True), lambda f: f.request.host)

    def methods(entries: Iterable[str]) -> _Test | None:
        return _string_test(istio_strings(entries, star_matches_empty=True), lambda f: f.request.method)

    def paths(entries: Iterable[str]) -> _Test | None:
        return _string_test(istio_strings(entries, star_matches_empty=False, templates=True), lambda f: f.path)

    _field(tests, hosts(operation.hosts), hosts(operation.not_hosts))
    _field(tests, _port_test(operation.ports), _port_test(operation.not_ports))
    _field(tests, methods(operation.methods), methods(operation.not_methods))
    _field(tests, paths(operation.paths), paths(operation.not_paths))
    return _all(tests) if tests else _always


# Condition keys (Istio's "Authorization Policy Conditions"), each: how its values are compiled.
_HEADER_KEY = re.compile(r"^request\.headers\[([^\]]+)\]$")


def _ports_of(values: Iterable[str]) -> list[int]:
    ports: list[int] = []
    for value in values:
        try:
            ports.append(int(value))
        except ValueError:
            ports.append(-1)  # unreadable: matches no port
    return ports


def _condition_field(key: str, values: list[str]) -> _Test | None:
    """The test for ``values`` of condition ``key``; None for no values. Raises KeyError for an
    unknown key."""
    if not values:
        return None
    header = _HEADER_KEY.match(key)
    if header is not None:
        return _header_test(header.group(1).strip().lower(), istio_strings(values, star_matches_empty=True))
    if key in ("source.ip", "remote.ip", "destination.ip"):
        return _ip_test(ip_blocks(values), key.replace(".", "_"))
    if key == "destination.port":
        return _port_test(_ports_of(values))
    if key == "source.principal":
        return _principal_test(istio_strings(values, star_matches_empty=False))
    if key == "source.namespace":
        return _namespace_test(istio_strings(values, star_matches_empty=False))
    if key == "connection.sni":
        return _string_test(istio_strings(values, star_matches_empty=False), lambda f: "")
    if key in ("request.auth.principal", "request.auth.audiences", "request.auth.presenter") \
            or key.startswith("request.auth.claims["):
        return _never  # no request authentication here
    raise KeyError(key)


def _compile_condition(condition: wp.Condition, action: int) -> _Test:
    tests: list[_Test] = []
    try:
        _field(tests, _condition_field(condition.key, list(condition.values)),
               _condition_field(condition.key, list(condition.not_values)))
    except KeyError:
        # Unknown key: only ever stricter (see the module's docstring).
        return _never if action == ALLOW else _always
    return _all(tests) if tests else _always


def _compile_rule(rule: wp.Rule, action: int) -> _Test:
    tests: list[_Test] = []
    from_ = getattr(rule, "from")  # "from" is a Python keyword
    if from_:
        sources = tuple(_compile_source(s) for s in from_)
        tests.append(lambda f: any(s(f) for s in sources))
    if rule.to:
        operations = tuple(_compile_operation(o) for o in rule.to)
        tests.append(lambda f: any(o(f) for o in operations))
    tests.extend(_compile_condition(c, action) for c in rule.when)
    return _all(tests) if tests else _always


@dataclass(frozen=True)
class CompiledL7Policy:
    key: str
    action: int  # DENY for an action this module does not know
    dry_run: bool
    gateways: tuple[str, ...]
    services: tuple[str, ...]
    rules: tuple[_Test, ...] = field(repr=False)

    def matches(self, facts: _Facts) -> bool:
        return any(rule(facts) for rule in self.rules)  # no rules: matches nothing


def compile_policy(policy: wp.L7Policy) -> CompiledL7Policy:
    action = policy.action if policy.action in _ACTION_NAMES else DENY
    return CompiledL7Policy(policy_key(policy.namespace, policy.name), action, policy.dry_run,
                            tuple(policy.gateways), tuple(policy.services),
                            tuple(_compile_rule(r, action) for r in policy.rules))


# ---------------------------------------------------------------- deciding


def _decide(facts: _Facts, deny: Iterable[CompiledL7Policy], allow: list[CompiledL7Policy]) -> L7Decision:
    for policy in deny:
        if policy.matches(facts):
            return L7Decision(False, policy.key, f"denied by DENY policy {policy.key}")
    if not allow:
        return L7Decision(True, None, "no ALLOW policy applies")
    for policy in allow:
        if policy.matches(facts):
            return L7Decision(True, policy.key, f"allowed by ALLOW policy {policy.key}")
    return L7Decision(False, None, "no ALLOW policy matched")


@dataclass(frozen=True)
class PolicySet:
    """The policies that apply to requests for one Service (or workload) through one waypoint."""

    deny: tuple[CompiledL7Policy, ...] = ()
    allow: tuple[CompiledL7Policy, ...] = ()
    dry_deny: tuple[CompiledL7Policy, ...] = ()
    dry_allow: tuple[CompiledL7Policy, ...] = ()
    skipped_custom: tuple[str, ...] = ()  # CUSTOM policies that would apply: not run, warn once
    audit: tuple[str, ...] = ()  # AUDIT policies that would apply: they never decide

    @property
    def empty(self) -> bool:
        """True: nothing to evaluate, the proxy skips the stage."""
        return not (self.deny or self.allow or self.dry_deny or self.dry_allow)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.key for p in (*self.deny, *self.allow, *self.dry_deny, *self.dry_allow))

    def authorize(self, request: RequestAttributes) -> L7Decision:
        if self.empty:
            return ALLOWED_NO_POLICY
        facts = _Facts(request)
        if facts.path is None:
            return L7Decision(False, None, "request path cannot be normalised (encoded NUL)")
        decision = _decide(facts, self.deny, list(self.allow))
        if not (self.dry_deny or self.dry_allow):
            return decision
        would = _decide(facts, (*self.deny, *self.dry_deny), [*self.allow, *self.dry_allow])
        if would.allowed == decision.allowed:
            return decision
        dry_keys = {p.key for p in (*self.dry_deny, *self.dry_allow)}
        if would.policy in dry_keys:  # a dry-run DENY matched, or a dry-run ALLOW let it through
            names: tuple[str, ...] = (would.policy,) if would.policy is not None else ()
        else:  # dry-run ALLOWs exist and none matched: together they would have denied
            names = tuple(p.key for p in self.dry_allow)
        return L7Decision(decision.allowed, decision.policy, decision.reason, names)


NO_POLICIES = PolicySet()


class L7Authorizer:
    """Every L7 policy of the mesh, compiled; ``policies_for`` is memoised per (gateway, service)."""

    def __init__(self, policies: tuple[CompiledL7Policy, ...]) -> None:
        self._policies = policies
        self._sets: dict[tuple[str, str | None], PolicySet] = {}

    @classmethod
    def compile(cls, policies: Iterable[wp.L7Policy]) -> L7Authorizer:
        compiled = [compile_policy(p) for p in policies]
        compiled.sort(key=lambda p: p.key)  # a stable order: the same config decides the same way
        return cls(tuple(compiled))

    @property
    def skipped_custom(self) -> tuple[str, ...]:
        """Every CUSTOM policy (not run here): the proxy warns once for each."""
        return tuple(p.key for p in self._policies if p.action == CUSTOM)

    def policies_for(self, gateway: str, service: str | None) -> PolicySet:
        cache_key = (gateway, service)
        cached = self._sets.get(cache_key)
        if cached is not None:
            return cached
        applicable = [p for p in self._policies
                      if gateway in p.gateways or (service is not None and service in p.services)]
        result = PolicySet(
            deny=tuple(p for p in applicable if p.action == DENY and not p.dry_run),
            allow=tuple(p for p in applicable if p.action == ALLOW and not p.dry_run),
            dry_deny=tuple(p for p in applicable if p.action == DENY and p.dry_run),
            dry_allow=tuple(p for p in applicable if p.action == ALLOW and p.dry_run),
            skipped_custom=tuple(p.key for p in applicable if p.action == CUSTOM),
            audit=tuple(p.key for p in applicable if p.action == AUDIT),
        ) if applicable else NO_POLICIES
        self._sets[cache_key] = result
        return result

    def names(self) -> list[tuple[str, str, tuple[str, ...]]]:
        """For the config dump: (``<ns>/<name>``, action, targets) of every policy; a dry-run
        policy's action reads e.g. "DENY (dry-run)"; targets are gateway and Service keys."""
        return [(p.key, _ACTION_NAMES[p.action] + (" (dry-run)" if p.dry_run else ""),
                 (*p.gateways, *p.services)) for p in self._policies]


__all__ = [
    "ALLOWED_NO_POLICY", "CompiledL7Policy", "L7Authorizer", "L7Decision", "NO_POLICIES", "PolicySet",
    "RequestAttributes", "compile_policy",
]
