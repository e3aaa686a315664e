"""L4 authorization: may this inbound connection reach this workload? (DESIGN.md sections 2 and 7.)

Sans-IO and pure. The caller describes the connection once (``ConnectionAttributes``: source IP,
the peer's verified SPIFFE identity or None for plaintext, destination IP and port), picks the
policies that govern the destination workload (``applicable_policies``) and asks ``authorize`` for a
``Decision``, whose reason goes to the access log and whose ``allowed`` becomes 200 or 401.

Evaluation follows Istio's ztunnel (``src/rbac.rs`` ``Authorization::matches``; ``src/state.rs``
``assert_rbac``), over the messages ``controlplane.authz`` produces:

- a dry-run policy (``dry_run``, from ``istio.io/dry-run``) never changes a decision: ``authorize``
  decides without it, then logs (once per connection) what it would have decided with it.
- any matching DENY policy denies; else, with no ALLOW policy, allow; else at least one ALLOW policy
  must match, or deny. The proto offers only ALLOW and DENY (AUDIT and CUSTOM policies are never
  sent to ztunnel: ``controlplane.authz.translate_policy`` keeps them off the wire). An action number this
  module does not know is counted as DENY, the safe side (Istio's ztunnel rejects such a resource
  at decode time, so it never reaches its evaluation at all).
- a policy matches if any of its groups does, and no groups match nothing (an ALLOW without rules
  allows nothing); a group matches if all its clauses (``Rules``) do, and no clauses match
  everything (the rule ``{}``); a clause holds if any of its ``Match``es does, but a clause with no
  matches at all holds; a ``Match`` that sets no field is skipped (it never holds).
- in a ``Match`` every field set must hold: a positive field when any entry matches, its ``not_``
  twin when none does. Strings: exact, prefix, suffix, presence (any value); principals compare
  ``<trust domain>/ns/<ns>/sa/<sa>`` (the SPIFFE ID without ``spiffe://``); namespaces and service
  accounts ignore the trust domain. IPs: CIDR containment, IPv4 and IPv6 never contain each other.
- no identity (plaintext): ``principals``, ``namespaces`` and ``service_accounts`` never match, so
  their ``not_`` twins always hold. That is Istio's code (an absent identity is the empty string,
  which matches no principal and no service account), and it is what makes a converted STRICT
  PeerAuthentication (a DENY with ``not_principals: [presence]``) deny exactly the plaintext
  connections. One corner differs on purpose: Istio compares the empty string with namespace
  patterns, so a degenerate ``exact: ""`` or ``prefix: ""`` would match plaintext; here nothing
  about the source's namespace matches when there is no source identity.
- destination port 0 means unknown: it matches no ``destination_ports`` entry (and satisfies every
  ``not_destination_ports``); a 0 in a policy matches no connection, nor do ports above 65535
  (Istio truncates those to 16 bits).
- an entry that cannot be read (a ``StringMatch`` with no kind set, an ``Address`` whose bytes are
  not 4 or 16 long or whose prefix is too long) matches no connection. Istio drops such entries,
  which turns a field made only of them into "no condition" and widens the rule; keeping the field
  and never matching it cannot widen an ALLOW.

Each ``Authorization`` is compiled once into tuples of predicates (CIDRs parsed, strings grouped)
and memoised by message identity: discovery replaces messages rather than mutating them (the view
says so), so a message seen again is the same policy.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mesh.api import authorization_pb2 as pb, workload_pb2 as wpb
from mesh.api.types import policy_key
from mesh.identity import ROOT_NAMESPACE, SpiffeId

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
AddressLike = IPAddress | str | bytes | int  # what ``ipaddress.ip_address`` reads
log = logging.getLogger("ambient.ztunnel.policy")


def _ip(value: AddressLike, what: str) -> IPAddress:
    try:
        ip = ipaddress.ip_address(value)  # str, int, 4 or 16 bytes, or an address already
    except ValueError:
        raise ValueError(f"{what} {value!r} is not an IP address") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # a dual-stack socket's view of an IPv4 peer: compare as IPv4
    return ip


@dataclass(frozen=True)
class ConnectionAttributes:
    """What L4 policy can see of one inbound connection.

    ``source_identity`` is the peer's verified SPIFFE ID (HBONE, mTLS) or None (plaintext). IPs may
    be given as text, bytes or ``ipaddress`` objects and are stored as ``ipaddress`` objects, an
    IPv4-mapped IPv6 address as IPv4. ``destination_port`` 0 means unknown.
    """

    source_ip: AddressLike  # an IPAddress once built
    source_identity: SpiffeId | None
    destination_ip: AddressLike  # an IPAddress once built
    destination_port: int = 0
    # Derived from the identity, once: what principals, namespaces and service accounts compare.
    source_principal: str | None = field(init=False, repr=False, compare=False)
    source_namespace: str | None = field(init=False, repr=False, compare=False)
    source_service_account: tuple[str, str] | None = field(init=False, repr=False, compare=False)
    # The dry-run outcomes already logged for this connection (``authorize`` logs each once, however
    # often the connection is decided again).
    dry_run_logged: set[str] = field(init=False, repr=False, compare=False, default_factory=set)

    def __post_init__(self) -> None:
        identity = self.source_identity
        if identity is not None and not isinstance(identity, SpiffeId):
            raise TypeError(f"source identity must be a SpiffeId or None, not {type(identity).__name__}")
        port = self.destination_port
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"destination port {port!r} is not in 0-65535")
        set_field = object.__setattr__  # frozen: the derived fields are set once, here
        set_field(self, "source_ip", _ip(self.source_ip, "source IP"))
        set_field(self, "destination_ip", _ip(self.destination_ip, "destination IP"))
        if identity is None:
            principal, namespace, account = None, None, None
        else:
            principal = str(identity).removeprefix("spiffe://")
            namespace, account = identity.namespace, (identity.namespace, identity.service_account)
        set_field(self, "source_principal", principal)
        set_field(self, "source_namespace", namespace)
        set_field(self, "source_service_account", account)


@dataclass(frozen=True)
class Decision:
    """The verdict on one connection; ``policy`` is the key (``<ns>/<name>``) of the deciding policy."""

    allowed: bool
    policy: str | None
    reason: str
    dry_run: str | None = None  # what the dry-run policies would have done, if any applies


# ---------------------------------------------------------------- compiling a policy

# A predicate over one attribute of the connection: "does any entry of the field match this value?"
# The value is whatever type that attribute has (an address, a string, a pair, or None): Any.
_Test = Callable[[Any], bool]
# One Match: (attribute of ConnectionAttributes, positive test or None, negative test or None), ...
_Match = tuple[tuple[str, _Test | None, _Test | None], ...]
# A clause: its alternatives (Matches that set no field are left out, so an empty tuple never holds).
_Clause = tuple[_Match, ...]
# A group: the clauses that must all hold (a clause with no matches always holds and is left out).
_Group = tuple[_Clause, ...]


def _never(_value: Any) -> bool:
    return False


def _strings(matches: Iterable[pb.StringMatch]) -> _Test | None:
    exact: set[str] = set()
    prefixes: list[str] = []
    suffixes: list[str] = []
    presence = False
    declared = False
    for m in matches:
        declared = True
        kind = m.WhichOneof("match_type")
        if kind == "exact":
            exact.add(m.exact)
        elif kind == "prefix":
            prefixes.append(m.prefix)
        elif kind == "suffix":
            suffixes.append(m.suffix)
        elif kind == "presence":
            presence = True
        # no kind set: an entry that matches nothing
    if not declared:
        return None
    starts, ends = tuple(prefixes), tuple(suffixes)

    def test(value: str | None) -> bool:
        if value is None:  # no identity: no principal or namespace, not even for presence
            return False
        return (value in exact or presence
                or value.startswith(starts) or value.endswith(ends))

    return test


def _service_accounts(matches: Iterable[pb.ServiceAccountMatch]) -> _Test | None:
    accounts = frozenset((m.namespace, m.service_account) for m in matches)
    return accounts.__contains__ if accounts else None  # None (no identity) is never in it


def _network(address: pb.Address) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        ip = ipaddress.ip_address(address.address)  # exactly 4 or 16 bytes
        return ipaddress.ip_network((ip, address.length), strict=False)  # host bits allowed, as Istio
    except ValueError:
        return None


def _addresses(addresses: Iterable[pb.Address]) -> _Test | None:
    entries = list(addresses)
    if not entries:
        return None
    networks = tuple(n for n in map(_network, entries) if n is not None)
    if not networks:
        return _never

    def test(ip: IPAddress) -> bool:
        return any(ip.version == n.version and ip in n for n in networks)

    return test


def _ports(ports: Iterable[int]) -> _Test | None:
    entries = list(ports)
    if not entries:
        return None
    return frozenset(p for p in entries if p).__contains__  # 0 is "unknown": no entry matches it


def _compile_match(m: pb.Match) -> _Match:
    fields = (
        ("source_ip", _addresses(m.source_ips), _addresses(m.not_source_ips)),
        ("destination_ip", _addresses(m.destination_ips), _addresses(m.not_destination_ips)),
        ("destination_port", _ports(m.destination_ports), _ports(m.not_destination_ports)),
        ("source_service_account", _service_accounts(m.service_accounts), _service_accounts(m.not_service_accounts)),
        ("source_principal", _strings(m.principals), _strings(m.not_principals)),
        ("source_namespace", _strings(m.namespaces), _strings(m.not_namespaces)),
    )
    return tuple(f for f in fields if f[1] is not None or f[2] is not None)


def _compile_clause(rules: pb.Rules) -> _Clause | None:
    """None for a clause with no matches (it always holds)."""
    if not rules.matches:
        return None
    return tuple(compiled for m in rules.matches if (compiled := _compile_match(m)))


def _compile_group(group: pb.Group) -> _Group:
    return tuple(c for c in map(_compile_clause, group.rules) if c is not None)


def _match_holds(match: _Match, conn: ConnectionAttributes) -> bool:
    for attribute, positive, negative in match:
        value = getattr(conn, attribute)
        if positive is not None and not positive(value):
            return False
        if negative is not None and negative(value):
            return False
    return True


def _group_holds(group: _Group, conn: ConnectionAttributes) -> bool:
    return all(any(_match_holds(m, conn) for m in clause) for clause in group)


@dataclass(frozen=True)
class CompiledPolicy:
    """An ``Authorization`` ready to evaluate: its key, whether it is an ALLOW, its groups."""

    key: str
    action: int
    groups: tuple[_Group, ...]
    dry_run: bool = False

    @property
    def is_allow(self) -> bool:
        return self.action == pb.ALLOW

    def matches(self, conn: ConnectionAttributes) -> bool:
        return any(_group_holds(g, conn) for g in self.groups)  # no groups: matches nothing


def compile_policy(policy: pb.Authorization) -> CompiledPolicy:
    return CompiledPolicy(policy_key(policy.namespace, policy.name), policy.action,
                          tuple(_compile_group(g) for g in policy.groups), policy.dry_run)


_CACHE_SIZE = 4096
_cache: OrderedDict[int, tuple[pb.Authorization, CompiledPolicy]] = OrderedDict()


def compiled(policy: pb.Authorization) -> CompiledPolicy:
    """``compile_policy``, memoised by message identity (the message is kept alive while cached, so
    its id cannot be reused by another one)."""
    entry = _cache.get(id(policy))
    if entry is not None:
        _cache.move_to_end(id(policy))
        return entry[1]
    result = compile_policy(policy)
    _cache[id(policy)] = (policy, result)
    if len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)
    return result


# ---------------------------------------------------------------- matching, one level at a time


def match_holds(match: pb.Match, conn: ConnectionAttributes) -> bool:
    """Every field ``match`` sets holds; a ``Match`` that sets nothing never holds (as Istio)."""
    compiled_match = _compile_match(match)
    return bool(compiled_match) and _match_holds(compiled_match, conn)


def clause_holds(rules: pb.Rules, conn: ConnectionAttributes) -> bool:
    """Any of the clause's matches holds; a clause with no matches holds."""
    clause = _compile_clause(rules)
    return clause is None or any(_match_holds(m, conn) for m in clause)


def group_holds(group: pb.Group, conn: ConnectionAttributes) -> bool:
    """All of the group's clauses hold; a group with no clauses holds."""
    return _group_holds(_compile_group(group), conn)


def policy_matches(policy: pb.Authorization, conn: ConnectionAttributes) -> bool:
    """Any group of the policy holds; a policy with no groups matches nothing."""
    return compiled(policy).matches(conn)


# ---------------------------------------------------------------- which policies, and the verdict


def applicable_policies(workload: wpb.Workload, authorizations: Mapping[str, pb.Authorization],
                        root_namespace: str = ROOT_NAMESPACE) -> list[pb.Authorization]:
    """The policies that govern connections to ``workload``, from ``authorizations`` keyed as
    ``controlplane.view`` keys them (``<ns>/<name>``): GLOBAL ones of the root namespace, NAMESPACE ones of
    the workload's namespace, then those the workload names in ``authorization_policies`` (selector
    policies and converted PeerAuthentications), each once. A name with no policy is skipped, as
    Istio does while a policy is still on its way.

    GLOBAL is also the proto's default scope, so a GLOBAL policy outside the root namespace (which
    ``controlplane.authz`` never produces) is taken as namespace-wide rather than mesh-wide: no namespace
    can write rules for the whole mesh by leaving the scope unset.
    """
    mesh_wide: list[pb.Authorization] = []
    namespace_wide: list[pb.Authorization] = []
    seen: set[str] = set()
    for key, policy in authorizations.items():
        if policy.scope == pb.GLOBAL and policy.namespace == root_namespace:
            mesh_wide.append(policy)
        elif policy.scope in (pb.NAMESPACE, pb.GLOBAL) and policy.namespace == workload.namespace:
            namespace_wide.append(policy)
        else:
            continue
        seen.add(key)
    chosen = mesh_wide + namespace_wide
    for key in workload.authorization_policies:
        named = authorizations.get(key)
        if named is not None and key not in seen:
            seen.add(key)
            chosen.append(named)
    return chosen


def authorize(conn: ConnectionAttributes, policies: Iterable[pb.Authorization]) -> Decision:
    """DENY first (any match denies), then ALLOW (none present: allow; else one must match).

    Dry-run policies (``istio.io/dry-run``) never change the decision: it is made without them.
    When some apply, ``Decision.dry_run`` says what the decision would be were they enforced,
    naming the dry-run policies that would decide, and it is logged once per connection."""
    compiled_policies = [compiled(p) for p in policies]
    enforced = [p for p in compiled_policies if not p.dry_run]
    decision = _decide(conn, enforced)
    if len(enforced) == len(compiled_policies):
        return decision
    would = _decide(conn, compiled_policies)
    dry = [p.key for p in compiled_policies if p.dry_run]
    if would.policy in dry:
        names = would.policy
    elif would.allowed == decision.allowed:
        names = ",".join(dry)
    else:  # no ALLOW matched once the dry-run ALLOW policies count
        names = ",".join(p.key for p in compiled_policies if p.dry_run and p.is_allow)
    note = f"dry-run policy {names} would {'allow' if would.allowed else 'deny'}: {would.reason}"
    if note not in conn.dry_run_logged:
        conn.dry_run_logged.add(note)
        log.info("%s (enforced: %s)", note, decision.reason)
    return Decision(decision.allowed, decision.policy, decision.reason, note)


def _decide(conn: ConnectionAttributes, policies: list[CompiledPolicy]) -> Decision:
    allow: list[CompiledPolicy] = []
    for policy in policies:
        if policy.is_allow:
            allow.append(policy)
        elif policy.matches(conn):
            if policy.action == pb.DENY:
                return Decision(False, policy.key, f"denied by DENY policy {policy.key}")
            return Decision(False, policy.key, f"denied by policy {policy.key} with unsupported action {policy.action}")
    if not allow:
        return Decision(True, None, "no ALLOW policies")
    for policy in allow:
        if policy.matches(conn):
            return Decision(True, policy.key, f"allowed by {policy.key}")
    return Decision(False, None, "no ALLOW policy matched")


__all__ = [
    "CompiledPolicy", "ConnectionAttributes", "Decision", "applicable_policies", "authorize",
    "clause_holds", "compile_policy", "compiled", "group_holds", "match_holds", "policy_matches",
]
