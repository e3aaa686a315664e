"""``/config_dump``: what a ztunnel knows and holds, in the shape of Istio's ztunnel.

Tools written for ``istioctl ztunnel-config -o json`` read it unchanged: camelCase ``workloads``,
``services`` (with their endpoints by workload uid), ``policies`` (with their rules nested as Istio
nests them: rules, clauses, matches), ``certificates`` (``certChain`` and ``rootCerts``, each
certificate with its PEM, serial and validity), plus ``config`` and ``version``. What Istio's dump
lacks and ``ambient ztunnel-config`` shows is added beside it: ``node``, each workload's ``local``
(served by this ztunnel), a certificate's ``error``, and the open ``connections``. Built on request
from the live state; never cached. ``ambient ztunnel-config`` (ambient/ztunnel_config.py) reads it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cryptography import x509

import mesh
from mesh.api import authorization_pb2 as pb, workload_pb2 as wpb
from mesh.certs import CertifiedKey
from mesh.identity import DEFAULT_TRUST_DOMAIN
from mesh.proxy_state import ip_text

_PROTOCOLS = {wpb.HBONE: "HBONE"}  # anything else: plain TCP, as Istio's dump names it
_HEALTHY = "Healthy"


def gateway_destination(workload_or_service: wpb.Workload | wpb.Service) -> dict[str, str] | None:
    """Istio's ``{"destination": ...}`` for a waypoint: ``<ns>/<hostname>`` or ``<network>/<ip>``."""
    if not workload_or_service.HasField("waypoint"):
        return None
    gateway = workload_or_service.waypoint
    kind = gateway.WhichOneof("destination")
    if kind == "hostname":
        return {"destination": f"{gateway.hostname.namespace}/{gateway.hostname.hostname}"}
    if kind == "address":
        return {"destination": f"{gateway.address.network}/{ip_text(gateway.address.address) or ''}"}
    return None


def _workload(workload: wpb.Workload, local: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "uid": workload.uid,
        "workloadIps": [ip for ip in map(ip_text, workload.addresses) if ip],
        "protocol": _PROTOCOLS.get(workload.tunnel_protocol, "TCP"),
        "name": workload.name, "namespace": workload.namespace,
        "serviceAccount": workload.service_account or "default",
        "workloadName": workload.workload_name, "workloadType": wpb.WorkloadType.Name(workload.workload_type).lower(),
        "canonicalName": workload.canonical_name, "canonicalRevision": workload.canonical_revision,
        "clusterId": workload.cluster_id, "trustDomain": workload.trust_domain or DEFAULT_TRUST_DOMAIN,
        "locality": {key: value for key, value in (("region", workload.locality.region),
                                                   ("zone", workload.locality.zone),
                                                   ("subzone", workload.locality.subzone)) if value},
        "node": workload.node, "network": workload.network,
        "status": _HEALTHY if workload.status == wpb.HEALTHY else "Unhealthy",
        "hostname": workload.hostname,
        "authorizationPolicies": list(workload.authorization_policies),
        # Istio's ztunnel reads an absent capacity as 1
        "capacity": workload.capacity.value if workload.HasField("capacity") else 1,
        "local": local,
    }
    waypoint = gateway_destination(workload)
    if waypoint is not None:
        entry["waypoint"] = waypoint
    return entry


def _service(key: str, service: wpb.Service, backing: Iterable[wpb.Workload]) -> dict[str, Any]:
    endpoints = {}
    for workload in backing:
        ports = {str(port.service_port): port.target_port
                 for port in (workload.services[key].ports if key in workload.services else ())}
        addresses = [ip for ip in map(ip_text, workload.addresses) if ip]
        endpoints[workload.uid] = {"workloadUid": workload.uid, "service": f"{service.namespace}/{service.hostname}",
                                   **({"address": f"{workload.network}/{addresses[0]}"} if addresses else {}),
                                   "port": ports}
    entry: dict[str, Any] = {
        "name": service.name, "namespace": service.namespace, "hostname": service.hostname,
        "vips": [f"{vip.network}/{ip}" for vip in service.addresses if (ip := ip_text(vip.address))],
        "ports": {str(port.service_port): port.target_port for port in service.ports},
        "endpoints": endpoints,
        "subjectAltNames": list(service.subject_alt_names),
        "ipFamilies": "IPv4",
    }
    app_protocols = {str(port.service_port): _APP_PROTOCOLS[port.app_protocol]
                     for port in service.ports if port.app_protocol in _APP_PROTOCOLS}
    if app_protocols:  # Istio's dump leaves the map out when empty
        entry["appProtocols"] = app_protocols
    if service.HasField("load_balancing"):
        entry["loadBalancer"] = load_balancer(service.load_balancing)
    waypoint = gateway_destination(service)
    if waypoint is not None:
        entry["waypoint"] = waypoint
    return entry


# As Istio's ztunnel names them in its dump (serde of its AppProtocol and LoadBalancer enums).
_APP_PROTOCOLS = {wpb.HTTP11: "Http11", wpb.HTTP2: "Http2", wpb.GRPC: "Grpc"}
_LB_MODES = {wpb.LoadBalancing.STRICT: "Strict", wpb.LoadBalancing.FAILOVER: "Failover"}
_HEALTH_POLICIES = {wpb.LoadBalancing.ALLOW_ALL: "AllowAll"}


def load_balancer(lb: wpb.LoadBalancing) -> dict[str, Any]:
    return {
        "routingPreferences": [_title(wpb.LoadBalancing.Scope.Name(s)) for s in lb.routing_preference],
        "mode": _LB_MODES.get(lb.mode, "Standard"),
        "healthPolicy": _HEALTH_POLICIES.get(lb.health_policy, "OnlyHealthy"),
    }


def _string_matches(matches: Iterable[pb.StringMatch]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for match in matches:
        kind = match.WhichOneof("match_type")
        if kind == "presence":
            out.append({"Presence": {}})
        else:
            kind = kind or "exact"
            out.append({kind.capitalize(): getattr(match, kind)})
    return out


def _cidrs(addresses: Iterable[pb.Address]) -> list[str]:
    return [f"{ip_text(a.address)}/{a.length}" for a in addresses if ip_text(a.address)]


def _accounts(accounts: Iterable[pb.ServiceAccountMatch]) -> list[dict[str, str]]:
    return [{"namespace": a.namespace, "serviceAccount": a.service_account} for a in accounts]


def policy_match(match: pb.Match) -> dict[str, Any]:
    """One match in Istio's dump names; fields left empty are left out, as Istio's are."""
    fields: dict[str, Any] = {
        "namespaces": _string_matches(match.namespaces), "notNamespaces": _string_matches(match.not_namespaces),
        "principals": _string_matches(match.principals), "notPrincipals": _string_matches(match.not_principals),
        "sourceIps": _cidrs(match.source_ips), "notSourceIps": _cidrs(match.not_source_ips),
        "destinationIps": _cidrs(match.destination_ips), "notDestinationIps": _cidrs(match.not_destination_ips),
        "destinationPorts": list(match.destination_ports), "notDestinationPorts": list(match.not_destination_ports),
        "serviceAccounts": _accounts(match.service_accounts),
        "notServiceAccounts": _accounts(match.not_service_accounts),
    }
    return {name: value for name, value in fields.items() if value}


def _policy(policy: pb.Authorization) -> dict[str, Any]:
    return {
        "name": policy.name, "namespace": policy.namespace,
        "scope": _title(pb.Scope.Name(policy.scope)), "action": _title(pb.Action.Name(policy.action)),
        "dryRun": policy.dry_run,
        "rules": [[[policy_match(m) for m in rules.matches] for rules in group.rules] for group in policy.groups],
    }


def _title(enum_name: str) -> str:
    """``WORKLOAD_SELECTOR`` → ``WorkloadSelector``, as Istio's ztunnel writes its enums."""
    return "".join(part.capitalize() for part in enum_name.split("_"))


def _cert(pem: str) -> dict[str, str]:
    cert = x509.load_pem_x509_certificate(pem.encode())
    return {"pem": pem, "serialNumber": format(cert.serial_number, "x"),
            "validFrom": cert.not_valid_before_utc.isoformat(), "expirationTime": cert.not_valid_after_utc.isoformat()}


def certificate_entry(identity: object, cert: CertifiedKey | None, error: str | None = None) -> dict[str, Any]:
    """Istio's ``CertsDump`` for ``identity``: ``Available`` with the chain, else ``Initializing`` (no
    certificate yet) or ``Unavailable`` (with why, in ``error``)."""
    if cert is None:
        return {"identity": str(identity), "state": "Unavailable" if error else "Initializing",
                "certChain": [], "rootCerts": [], "error": error}
    return {"identity": str(identity), "state": "Available",
            "certChain": [_cert(pem) for pem in cert.chain_pem[:-1]], "rootCerts": [_cert(cert.chain_pem[-1])],
            "error": None}


def config_dump(ztunnel: Any) -> dict[str, Any]:
    state = ztunnel.state
    local = set(ztunnel.pods.pods)
    config = ztunnel.config
    return {
        "workloads": [_workload(w, uid in local) for uid, w in sorted(state.workloads.items())],
        "services": [_service(key, s, state.backing(key)) for key, s in sorted(state.services.items())],
        "policies": [_policy(p) for _, p in sorted(state.authorizations.items())],
        "certificates": [certificate_entry(identity, ztunnel.secrets.current(identity))
                         for identity in ztunnel.secrets.identities()],
        "config": {"node": config.node, "trustDomain": config.trust_domain, "rootNamespace": config.root_namespace,
                   "connectTimeout": config.connect_timeout, "drainTimeout": config.drain_timeout,
                   # the bounds of ztunnel.limits in force
                   "maxConnectionsPerPod": config.max_connections_per_pod,
                   "maxConnectionsPerNode": config.max_connections_per_node,
                   "hboneHandshakeTimeout": config.hbone_handshake_timeout,
                   "plaintextIdleTimeout": config.plaintext_idle_timeout},
        "version": mesh.__version__,
        "node": config.node,
        "connections": ztunnel.tracker.snapshot(),
    }
