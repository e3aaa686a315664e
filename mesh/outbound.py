"""The outbound decision of a proxy (ztunnel for its pods, the waypoint for its upstreams): where a
connection goes, as a frozen plan (DESIGN.md 7).

``plan_outbound(source, (ip, port), state, balancer)`` looks only at its arguments and returns one of
four plans; a separate executor does the I/O. The rules, after Istio ztunnel's ``build_request``
(``src/proxy/outbound.rs``) and ``fetch_upstream`` / ``fetch_waypoint`` (``src/state.rs``):

1. The destination IP is a Service VIP.
   - The Service has a waypoint and the source is not one of that waypoint's pods: ``HboneToWaypoint``
     to a waypoint pod (chosen by the balancer among its healthy pods) on its HBONE port, with
     ``:authority`` the original ``VIP:port``. Any port goes to the waypoint, listed or not: it is the
     waypoint's job to route it.
   - Otherwise the balancer picks one of the healthy endpoints that serve that service port:
     ``HboneToPod`` (pod IP, 15008; ``:authority`` = pod IP and the target port) if it is in the mesh,
     else ``Passthrough`` to the pod IP and the target port. A workload waypoint of the chosen pod is
     not used for service-addressed traffic (as Istio: the service's waypoint, or none, decides).
   - A Service's ``load_balancing`` narrows the endpoints first, as Istio's ztunnel does: STRICT keeps
     those that match the client in every scope (``internalTrafficPolicy: Local`` is STRICT NODE:
     only endpoints on the client's node, none is a ``Refuse``); FAILOVER keeps those that match in
     the most leading scopes (``trafficDistribution: PreferClose``).
   - A port the Service does not list, or no healthy endpoint: ``Refuse``. Istio's current ztunnel
     does the same (``NoHealthyUpstream``); older ones passed such a connection through to the VIP
     unchanged, which reaches nothing where only ztunnel knows the VIPs.
2. The destination IP is a workload. If it has a waypoint and the source is not that waypoint:
   ``HboneToWaypoint`` with ``:authority`` the original ``pod IP:port``. Else, in the mesh:
   ``HboneToPod`` to the same port; not in the mesh: ``Passthrough`` to the original destination.
   Workload-addressed traffic keeps its port as is: there is no port map to apply.
3. Anything else (outside the mesh, unknown IP): ``Passthrough`` to the original destination.

A waypoint that names nothing known, or has no healthy pod, is a ``Refuse``: sending around a
required waypoint would skip its policy. "The source is the waypoint" is Istio's test: the source has
the identity and one of the addresses of a pod behind the waypoint.

The expected server identity of an HBONE plan is the next hop pod's own SPIFFE ID (the pod
presents its own certificate); ``service_sans`` adds the Service's ``subject_alt_names``, which a
client accepts as well (DESIGN.md section 6). For a waypoint this is
``spiffe://<td>/ns/<ns>/sa/<gateway name>``, since its pods run as that service account.

Load balancing is a pluggable ``Balancer``: ``RoundRobin`` and ``LeastRequests`` below keep their
state per service key and are deterministic (no clock, no randomness), so plans are testable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from mesh.addresses import format_address
from mesh.api import workload_pb2 as wpb
from mesh.identity import InvalidSpiffeId, SpiffeId
from mesh.ports import HBONE_PORT
from mesh.proxy_state import (
    Endpoint,
    ProxyState,
    capacity_of,
    identity_of,
    ip_text,
    service_key_of,
    subject_alt_names,
)


def _check_address(address: tuple[str, int]) -> None:
    ip, port = address
    if not ip or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"bad address {address!r}")


# ---------------------------------------------------------------- plans


class _HbonePlan:
    """What both HBONE plans do with their fields: check the address, name the identities accepted."""

    __slots__ = ()
    address: tuple[str, int]
    identity: SpiffeId
    service_sans: tuple[SpiffeId, ...]

    def __post_init__(self) -> None:
        _check_address(self.address)

    @property
    def expected_identities(self) -> tuple[SpiffeId, ...]:
        return (self.identity, *self.service_sans)


@dataclass(frozen=True, slots=True)
class HboneToPod(_HbonePlan):
    """mTLS to the destination pod's ztunnel, then ``CONNECT authority``."""

    address: tuple[str, int]  # (pod IP, 15008)
    authority: str  # "<pod IP>:<target port>"
    identity: SpiffeId  # the destination workload's; the server must present it
    workload_uid: str
    service: str | None = None  # "<ns>/<hostname>" when addressed by VIP
    service_sans: tuple[SpiffeId, ...] = ()  # also accepted: the Service's subject_alt_names


@dataclass(frozen=True, slots=True)
class HboneToWaypoint(_HbonePlan):
    """mTLS to a waypoint pod, then ``CONNECT`` to the original destination, which the waypoint
    routes."""

    address: tuple[str, int]  # (waypoint pod IP, its HBONE port: 15008)
    authority: str  # the ORIGINAL destination: "<VIP or pod IP>:<port>"
    identity: SpiffeId  # the waypoint pod's: spiffe://<td>/ns/<ns>/sa/<gateway name>
    waypoint_uid: str  # the waypoint pod chosen
    waypoint: str  # the waypoint's Service key, "<ns>/<hostname>" (or "<ns>/<name>" by address)
    service: str | None = None  # the Service addressed, when by VIP
    workload_uid: str | None = None  # the workload addressed, when by pod IP
    service_sans: tuple[SpiffeId, ...] = ()  # the waypoint Service's subject_alt_names


@dataclass(frozen=True, slots=True)
class Passthrough:
    """Plain TCP to ``address``: the original destination, or the chosen endpoint of a VIP when that
    endpoint is not in the mesh."""

    address: tuple[str, int]
    workload_uid: str | None = None  # the destination workload, if the mesh knows it
    service: str | None = None  # the Service addressed, when by VIP

    def __post_init__(self) -> None:
        _check_address(self.address)


@dataclass(frozen=True, slots=True)
class Refuse:
    """Close the client's connection; ``reason`` goes to the access log."""

    reason: str

    def __post_init__(self) -> None:
        if not self.reason:
            raise ValueError("a refusal needs a reason")


Plan = HboneToPod | HboneToWaypoint | Passthrough | Refuse


# ---------------------------------------------------------------- load balancing


class Candidate(Protocol):
    @property
    def uid(self) -> str: ...


C = TypeVar("C", bound=Candidate)


class Balancer(Protocol):
    def pick(self, service_key: str, candidates: Sequence[C]) -> C:
        """One of ``candidates`` (never empty) for a connection to ``service_key``."""
        ...


def _next_after(candidates: Sequence[C], last: str | None) -> C:
    """The candidate with the smallest uid above ``last``, wrapping to the smallest: a rotation in uid
    order that stays fair when candidates come and go between picks."""
    smallest = after = None
    for candidate in candidates:
        uid = candidate.uid
        if smallest is None or uid < smallest.uid:
            smallest = candidate
        if last is not None and uid > last and (after is None or uid < after.uid):
            after = candidate
    if smallest is None:
        raise ValueError("nothing to pick from")
    return after if after is not None else smallest


def _capacity(candidate: Candidate) -> int:
    workload = getattr(candidate, "workload", None)
    return capacity_of(workload) if isinstance(workload, wpb.Workload) else 1


class RoundRobin:
    """Each service's candidates in turn (by uid), remembering per service the last one picked.

    Weighted by capacity (the default), as Istio's ztunnel weights its choice by each workload's
    ``capacity``: a candidate keeps the turn for ``capacity`` picks in a row, so over a round each
    gets its capacity's share; one of capacity 0 is passed over unless all have 0. With every
    capacity 1 (what the control plane sends for pods) this is a plain rotation.
    ``RoundRobin(weighted=False)`` ignores capacity."""

    def __init__(self, *, weighted: bool = True) -> None:
        self.weighted = weighted
        self._last: dict[str, tuple[str, int]] = {}  # service → (uid picked last, picks in a row)

    def pick(self, service_key: str, candidates: Sequence[C]) -> C:
        last, streak = self._last.get(service_key, (None, 0))
        if not self.weighted:
            chosen = _next_after(candidates, last)
            self._last[service_key] = (chosen.uid, 1)
            return chosen
        capacities = {c.uid: _capacity(c) for c in candidates}
        usable = [c for c in candidates if capacities[c.uid] > 0] or list(candidates)
        for candidate in usable:
            if candidate.uid == last and streak < capacities[last]:
                self._last[service_key] = (last, streak + 1)
                return candidate
        chosen = _next_after(usable, last)
        self._last[service_key] = (chosen.uid, 1)
        return chosen

    def forget(self, service_key: str) -> None:
        """Drop the state of a service that is gone."""
        self._last.pop(service_key, None)


class LeastRequests:
    """The candidate with the fewest open requests; ties in turn, per service, as ``RoundRobin``.

    Open requests are counted per workload uid across services (a pod's load is the pod's): the
    executor calls ``started(uid)`` when it opens a connection to the chosen pod and ``finished(uid)``
    when that connection closes."""

    def __init__(self) -> None:
        self._open: dict[str, int] = {}
        self._ties = RoundRobin()

    def pick(self, service_key: str, candidates: Sequence[C]) -> C:
        least = min((self._open.get(c.uid, 0) for c in candidates), default=None)
        if least is None:
            raise ValueError("nothing to pick from")
        return self._ties.pick(service_key, [c for c in candidates if self._open.get(c.uid, 0) == least])

    def started(self, uid: str) -> None:
        self._open[uid] = self._open.get(uid, 0) + 1

    def finished(self, uid: str) -> None:
        count = self._open.get(uid, 0)
        if count <= 0:
            raise ValueError(f"finished({uid!r}) without a matching started()")  # the caller's bug
        if count == 1:
            del self._open[uid]
        else:
            self._open[uid] = count - 1

    def open_requests(self, uid: str) -> int:
        return self._open.get(uid, 0)

    def forget(self, service_key: str) -> None:
        self._ties.forget(service_key)


# ---------------------------------------------------------------- locality


def _same(scope: int, a: wpb.Workload, b: wpb.Workload) -> bool:
    lb = wpb.LoadBalancing
    if scope == lb.NODE:
        return a.node == b.node
    if scope == lb.REGION:
        return a.locality.region == b.locality.region
    if scope == lb.ZONE:
        return a.locality.zone == b.locality.zone
    if scope == lb.SUBZONE:
        return a.locality.subzone == b.locality.subzone
    if scope == lb.CLUSTER:
        return a.cluster_id == b.cluster_id
    if scope == lb.NETWORK:
        return a.network == b.network
    return True  # UNSPECIFIED_SCOPE or one this ztunnel does not know: no constraint


def closest(source: wpb.Workload, endpoints: Sequence[Endpoint], lb: wpb.LoadBalancing) -> tuple[Endpoint, ...]:
    """The endpoints a Service's ``load_balancing`` lets ``source`` use, as Istio's ztunnel ranks them:
    STRICT keeps those that match the source in every scope of ``routing_preference`` (none may be
    left: the caller refuses); FAILOVER keeps those that match in the most leading scopes. Without a
    mode, all of them."""
    if lb.mode == lb.STRICT:
        return tuple(e for e in endpoints if all(_same(s, source, e.workload) for s in lb.routing_preference))
    if lb.mode != lb.FAILOVER:
        return tuple(endpoints)
    ranked: list[tuple[int, Endpoint]] = []
    for endpoint in endpoints:
        rank = 0
        for scope in lb.routing_preference:
            if not _same(scope, source, endpoint.workload):
                break
            rank += 1
        ranked.append((rank, endpoint))
    best = max((rank for rank, _ in ranked), default=0)
    return tuple(e for rank, e in ranked if rank == best)


# ---------------------------------------------------------------- the decision


def plan_outbound(source: wpb.Workload, destination: tuple[str, int], state: ProxyState,
                  balancer: Balancer) -> Plan:
    """Where the connection ``source`` opened to ``destination`` (its original ``ip, port``) goes."""
    ip, port = destination
    service = state.service_by_vip(ip, source.network)
    if service is not None:
        return _to_service(source, destination, service, state, balancer)
    workload = state.workload_by_ip(ip, source.network)
    if workload is not None:
        return _to_workload(source, destination, workload, state, balancer)
    return Passthrough(destination)


def _to_service(source: wpb.Workload, destination: tuple[str, int], service: wpb.Service,
                state: ProxyState, balancer: Balancer) -> Plan:
    key = service_key_of(service)
    if service.HasField("waypoint") and not state.is_waypoint(source, service.waypoint):
        return _via_waypoint(service.waypoint, destination, state, balancer, f"service {key}", service=key)
    ip, port = destination
    # publishNotReadyAddresses (health policy ALLOW_ALL): endpoints not yet ready take traffic too
    lb = service.load_balancing if service.HasField("load_balancing") else None
    healthy_only = lb is None or lb.health_policy != wpb.LoadBalancing.ALLOW_ALL
    endpoints = state.endpoints(key, port, prefer_ip_version=6 if ":" in ip else 4, healthy_only=healthy_only)
    if not endpoints:
        if all(p.service_port != port for p in service.ports):
            return Refuse(f"service {key} has no port {port}")
        return Refuse(f"service {key} has no healthy endpoint for port {port}")
    if lb is not None:
        endpoints = closest(source, endpoints, lb)
        if not endpoints:
            scopes = ", ".join(wpb.LoadBalancing.Scope.Name(s) for s in lb.routing_preference)
            return Refuse(f"service {key} has no healthy endpoint for port {port} that matches this client "
                          f"in {scopes} ({wpb.LoadBalancing.Mode.Name(lb.mode)}), as its load balancing requires")
    chosen: Endpoint = balancer.pick(key, endpoints)
    if not chosen.hbone:
        return Passthrough((chosen.ip, chosen.port), chosen.uid, key)
    try:
        identity = identity_of(chosen.workload)
    except InvalidSpiffeId as e:
        return Refuse(f"endpoint {chosen.uid} of service {key} has no valid identity: {e}")
    return HboneToPod((chosen.ip, HBONE_PORT), format_address(chosen.ip, chosen.port), identity, chosen.uid,
                      key, subject_alt_names(service))


def _to_workload(source: wpb.Workload, destination: tuple[str, int], workload: wpb.Workload,
                 state: ProxyState, balancer: Balancer) -> Plan:
    if workload.HasField("waypoint") and not state.is_waypoint(source, workload.waypoint):
        return _via_waypoint(workload.waypoint, destination, state, balancer, f"workload {workload.uid}",
                             workload_uid=workload.uid)
    if workload.tunnel_protocol != wpb.HBONE:
        return Passthrough(destination, workload.uid)
    try:
        identity = identity_of(workload)
    except InvalidSpiffeId as e:
        return Refuse(f"workload {workload.uid} has no valid identity: {e}")
    ip, port = destination
    return HboneToPod((ip, HBONE_PORT), format_address(ip, port), identity, workload.uid)


def _via_waypoint(gateway: wpb.GatewayAddress, destination: tuple[str, int], state: ProxyState,
                  balancer: Balancer, what: str, *, service: str | None = None,
                  workload_uid: str | None = None) -> Plan:
    waypoint = state.waypoint_of(gateway)
    if waypoint is None:
        return Refuse(f"waypoint {_describe(gateway)} of {what} is unknown")
    key = waypoint.service_key or f"{waypoint.namespace}/{waypoint.name}"
    if not waypoint.endpoints:
        return Refuse(f"waypoint {key} of {what} has no healthy endpoint")
    chosen: Endpoint = balancer.pick(key, waypoint.endpoints)
    try:
        identity = identity_of(chosen.workload)
    except InvalidSpiffeId as e:
        return Refuse(f"waypoint pod {chosen.uid} has no valid identity: {e}")
    sans = subject_alt_names(waypoint.service) if waypoint.service is not None else ()
    return HboneToWaypoint((chosen.ip, chosen.port), format_address(*destination), identity, chosen.uid, key,
                           service, workload_uid, sans)


def _describe(gateway: wpb.GatewayAddress) -> str:
    if gateway.WhichOneof("destination") == "hostname":
        return f"{gateway.hostname.namespace}/{gateway.hostname.hostname}"
    return ip_text(gateway.address.address) or "(bad address)"
