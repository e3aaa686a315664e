"""What a proxy (ztunnel or the waypoint) knows about the mesh: the discovery view, indexed for the
per-connection lookups.

``ProxyState.from_addresses`` takes the ``istio.workload.Address`` resources as discovery delivers
them (name → Workload | Service) and indexes them in one pass: workloads by uid and by IP, services
by key (``<ns>/<hostname>``) and by VIP, and for each service the workloads that back it (a
Workload lists the services it backs in its ``services`` map, with its own target ports; as in
Istio, a service's endpoints are derived from its workloads, not the other way round). The state
is immutable: discovery builds a new one on every change and swaps the reference, so a connection
plans against one consistent snapshot without locks.

The state also holds the L4 authorization policies of the same view (``<ns>/<name>`` → policy) and
the root namespace whose GLOBAL policies apply mesh-wide: everything an inbound decision is made
against comes from one snapshot.

Lookups are keyed by ``(network, ip)``; every address on the default network ``""`` is the common
case. Addresses that are not 4 or 16 bytes are ignored (the control plane's fault; the rest of the
resource is still usable).

Endpoints for load balancing follow Istio ztunnel (``src/state.rs``, ``load_balance`` and
``find_upstream_from_service``): only HEALTHY workloads; the target port is the workload's own for
that service port (a named ``targetPort`` resolved per pod), else the service's numeric target; a
service port the Service does not list has no endpoints at all; a workload without an address is no
endpoint. A waypoint (``GatewayAddress``) is resolved the way ``fetch_waypoint`` does: by hostname
to its Service, or by address to a Service VIP or a workload.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from mesh.api import authorization_pb2 as pb, workload_pb2 as wpb
from mesh.identity import DEFAULT_TRUST_DOMAIN, ROOT_NAMESPACE, InvalidSpiffeId, SpiffeId

DEFAULT_SERVICE_ACCOUNT = "default"

MAX_PORT = 65535  # ports are uint32 in the workload API: anything above is not a TCP port


def ip_text(raw: bytes) -> str | None:
    """The text form of a 4- or 16-byte address, or None for anything else."""
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw)
    if len(raw) == 16:
        return socket.inet_ntop(socket.AF_INET6, raw)
    return None


def service_vip(service: wpb.Service | None) -> str | None:
    """The text of a Service's first valid address (its VIP), or None."""
    if service is None:
        return None
    for address in service.addresses:
        ip = ip_text(address.address)
        if ip is not None:
            return ip
    return None


def service_key_of(service: wpb.Service) -> str:
    """A Service's key, ``<ns>/<hostname>``: its discovery name and the key of Workload.services."""
    return f"{service.namespace}/{service.hostname}"


def capacity_of(workload: wpb.Workload) -> int:
    """The workload's ``capacity``: its share of a service's connections; unset means 1, as Istio."""
    return workload.capacity.value if workload.HasField("capacity") else 1


def identity_of(workload: wpb.Workload) -> SpiffeId:
    """The workload's SPIFFE ID; empty trust domain / service account mean the mesh defaults.

    Raises ``InvalidSpiffeId`` if the control plane sent names that do not form one."""
    return SpiffeId(workload.trust_domain or DEFAULT_TRUST_DOMAIN, workload.namespace,
                    workload.service_account or DEFAULT_SERVICE_ACCOUNT)


def subject_alt_names(service: wpb.Service) -> tuple[SpiffeId, ...]:
    """The identities a client also accepts from the service's endpoints; invalid ones are skipped
    (as Istio, which logs and ignores them)."""
    names = []
    for text in service.subject_alt_names:
        try:
            names.append(SpiffeId.parse(text))
        except InvalidSpiffeId:
            continue
    return tuple(names)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One workload behind a service port: where to connect and on which port it listens."""

    uid: str
    workload: wpb.Workload
    ip: str
    port: int  # the target port for the service port asked for

    @property
    def hbone(self) -> bool:
        return self.workload.tunnel_protocol == wpb.HBONE


@dataclass(frozen=True, slots=True)
class ResolvedWaypoint:
    """A ``GatewayAddress`` resolved against the state.

    ``service`` is the waypoint's Service (None when the address names a workload directly);
    ``endpoints`` the healthy waypoint pods that serve its HBONE port, in uid order; ``name`` and
    ``namespace`` those of the Gateway (the waypoint's Service has the Gateway's name, and its pods
    run as the service account of that name)."""

    name: str
    namespace: str
    port: int  # the HBONE port the GatewayAddress names (15008)
    service_key: str | None
    service: wpb.Service | None
    vip: str | None
    endpoints: tuple[Endpoint, ...]

    def identity(self, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> SpiffeId:
        """``spiffe://<td>/ns/<ns>/sa/<gateway name>``: who a waypoint's pods are."""
        return SpiffeId(trust_domain, self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class ProxyState:
    """An immutable, indexed snapshot of the discovery view. Build with ``from_addresses``."""

    workloads: Mapping[str, wpb.Workload]  # uid
    services: Mapping[str, wpb.Service]  # "<ns>/<hostname>"
    _workload_by_ip: Mapping[tuple[str, str], wpb.Workload]
    _service_by_vip: Mapping[tuple[str, str], wpb.Service]
    _backing: Mapping[str, tuple[wpb.Workload, ...]]  # service key → its workloads, by uid
    authorizations: Mapping[str, pb.Authorization] = field(default_factory=lambda: MappingProxyType({}))
    root_namespace: str = ROOT_NAMESPACE  # whose GLOBAL policies apply to every workload

    @classmethod
    def from_addresses(cls, addresses: Mapping[str, wpb.Address],
                       authorizations: Mapping[str, pb.Authorization] | None = None, *,
                       root_namespace: str = ROOT_NAMESPACE) -> ProxyState:
        """Index ``addresses`` (discovery name → Address) in one pass over them; ``authorizations``
        (``<ns>/<name>`` → policy) are kept as given."""
        workloads: dict[str, wpb.Workload] = {}
        services: dict[str, wpb.Service] = {}
        by_ip: dict[tuple[str, str], wpb.Workload] = {}
        by_vip: dict[tuple[str, str], wpb.Service] = {}
        backing: dict[str, list[wpb.Workload]] = {}
        for name, address in addresses.items():
            kind = address.WhichOneof("type")
            if kind == "workload":
                workload = address.workload
                uid = workload.uid or name
                workloads[uid] = workload
                for raw in workload.addresses:
                    ip = ip_text(raw)
                    if ip is not None:
                        by_ip[(workload.network, ip)] = workload
                for key in workload.services:
                    backing.setdefault(key, []).append(workload)
            elif kind == "service":
                service = address.service
                services[service_key_of(service)] = service
                for vip in service.addresses:
                    ip = ip_text(vip.address)
                    if ip is not None:
                        by_vip[(vip.network, ip)] = service
        ordered = {key: tuple(sorted(found, key=lambda w: w.uid)) for key, found in backing.items()}
        return cls(MappingProxyType(workloads), MappingProxyType(services), MappingProxyType(by_ip),
                   MappingProxyType(by_vip), MappingProxyType(ordered),
                   MappingProxyType(dict(authorizations or {})), root_namespace)

    # ------------------------------------------------------------ lookups

    def workload_by_ip(self, ip: str, network: str = "") -> wpb.Workload | None:
        return self._workload_by_ip.get((network, ip))

    def service_by_vip(self, ip: str, network: str = "") -> wpb.Service | None:
        return self._service_by_vip.get((network, ip))

    def backing(self, service_key: str) -> tuple[wpb.Workload, ...]:
        """Every workload that backs the service, healthy or not, in uid order."""
        return self._backing.get(service_key, ())

    def endpoints(self, service_key: str, service_port: int, *, prefer_ip_version: int = 4,
                  healthy_only: bool = True) -> tuple[Endpoint, ...]:
        """The workloads that serve ``service_port`` of the service, each with its target port, in
        uid order; only healthy ones unless ``healthy_only`` is False. Empty if the Service is
        unknown or does not list that port (as Istio: an unlisted port has no upstream).

        Of a dual-stack workload, the address of the family ``prefer_ip_version`` is used."""
        service = self.services.get(service_key)
        if service is None:
            return ()
        default_target = None
        for port in service.ports:
            if port.service_port == service_port:
                default_target = port.target_port
                break
        if default_target is None:
            return ()
        found = []
        for workload in self._backing.get(service_key, ()):
            if healthy_only and workload.status != wpb.HEALTHY:
                continue
            target = default_target
            for port in workload.services[service_key].ports:
                if port.service_port == service_port:
                    target = port.target_port
                    break
            if not 0 < target <= MAX_PORT:  # 0: a named targetPort this pod does not have; above: not a port
                continue
            ip = pick_address(workload, prefer_ip_version)
            if ip is None:
                continue
            found.append(Endpoint(workload.uid, workload, ip, target))
        return tuple(found)

    # ------------------------------------------------------------ waypoints

    def waypoint_of(self, gateway: wpb.GatewayAddress) -> ResolvedWaypoint | None:
        """Resolve a Workload's or Service's ``waypoint``; None if it names nothing this state knows.

        By hostname: the Service ``<ns>/<hostname>`` (the control plane's form). By address: a
        Service VIP, else a workload's IP (the workload itself is then the only waypoint pod)."""
        port = gateway.hbone_mtls_port
        if not 0 < port <= MAX_PORT:  # a uint32 on the wire: a waypoint on no TCP port names nothing
            return None
        kind = gateway.WhichOneof("destination")
        if kind == "hostname":
            key = f"{gateway.hostname.namespace}/{gateway.hostname.hostname}"
            service = self.services.get(key)
            if service is None:
                return None
            return self._resolved_service(key, service, port)
        if kind == "address":
            ip = ip_text(gateway.address.address)
            if ip is None:
                return None
            service = self.service_by_vip(ip, gateway.address.network)
            if service is not None:
                return self._resolved_service(service_key_of(service), service, port)
            workload = self.workload_by_ip(ip, gateway.address.network)
            if workload is None:
                return None
            endpoints = (Endpoint(workload.uid, workload, ip, port),) if workload.status == wpb.HEALTHY else ()
            return ResolvedWaypoint(workload.service_account or DEFAULT_SERVICE_ACCOUNT, workload.namespace,
                                    port, None, None, None, endpoints)
        return None

    def _resolved_service(self, key: str, service: wpb.Service, port: int) -> ResolvedWaypoint:
        vip = next((ip for a in service.addresses if (ip := ip_text(a.address)) is not None), None)
        return ResolvedWaypoint(service.name, service.namespace, port, key, service, vip,
                                self.endpoints(key, port))

    def is_waypoint(self, workload: wpb.Workload, gateway: wpb.GatewayAddress) -> bool:
        """Whether ``workload`` is one of the pods of the waypoint ``gateway`` names (healthy or
        not). As Istio's ``check_gateway_address``: same identity and one of the same IPs as a pod
        behind the waypoint's Service, or as the workload the address names."""
        kind = gateway.WhichOneof("destination")
        if kind == "hostname":
            pods = self.backing(f"{gateway.hostname.namespace}/{gateway.hostname.hostname}")
        elif kind == "address":
            ip = ip_text(gateway.address.address)
            service = self.service_by_vip(ip, gateway.address.network) if ip else None
            if service is not None:
                pods = self.backing(service_key_of(service))
            else:
                named = self.workload_by_ip(ip, gateway.address.network) if ip else None
                pods = (named,) if named is not None else ()
        else:
            return False
        mine = set(workload.addresses)
        return any(_same_identity(pod, workload) and mine.intersection(pod.addresses) for pod in pods)


def _same_identity(a: wpb.Workload, b: wpb.Workload) -> bool:
    return ((a.trust_domain or DEFAULT_TRUST_DOMAIN, a.namespace, a.service_account or DEFAULT_SERVICE_ACCOUNT)
            == (b.trust_domain or DEFAULT_TRUST_DOMAIN, b.namespace, b.service_account or DEFAULT_SERVICE_ACCOUNT))


def pick_address(workload: wpb.Workload, ip_version: int = 4) -> str | None:
    """The workload's first address of the given IP version, else its first valid one."""
    first = None
    want = 4 if ip_version == 4 else 16
    for raw in workload.addresses:
        ip = ip_text(raw)
        if ip is None:
            continue
        if len(raw) == want:
            return ip
        first = first or ip
    return first
