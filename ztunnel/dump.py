"""``/config_dump``: what a ztunnel knows and holds, as the JSON that ``ambient ztunnel-config``
(ambient/ztunnel_config.py) reads: node, workloads, services, policies, certificates with serial and
expiry, and open connections (``ConnectionTracker.snapshot``). Built on request from the live
state; never cached.
"""

from __future__ import annotations

from mesh.api import authorization_pb2 as pb, workload_pb2 as wpb
from ztunnel.state import ip_text


def _waypoint(workload_or_service) -> str:
    if not workload_or_service.HasField("waypoint"):
        return ""
    gateway = workload_or_service.waypoint
    kind = gateway.WhichOneof("destination")
    if kind == "hostname":
        return f"{gateway.hostname.namespace}/{gateway.hostname.hostname}"
    if kind == "address":
        return ip_text(gateway.address.address) or ""
    return ""


def _workload(workload: wpb.Workload, local: bool) -> dict:
    return {
        "uid": workload.uid, "name": workload.name, "namespace": workload.namespace,
        "service_account": workload.service_account or "default", "node": workload.node,
        "addresses": [ip for ip in map(ip_text, workload.addresses) if ip],
        "protocol": "HBONE" if workload.tunnel_protocol == wpb.HBONE else "TCP",
        "waypoint": _waypoint(workload), "local": local,
    }


def _service(key: str, service: wpb.Service, endpoints: int) -> dict:
    return {
        "name": service.name, "namespace": service.namespace, "hostname": service.hostname,
        "vips": [ip for ip in (ip_text(vip.address) for vip in service.addresses) if ip],
        "ports": {str(port.service_port): port.target_port for port in service.ports},
        "endpoints": endpoints, "waypoint": _waypoint(service),
    }


def _policy(policy: pb.Authorization) -> dict:
    return {"name": policy.name, "namespace": policy.namespace, "scope": pb.Scope.Name(policy.scope),
            "action": pb.Action.Name(policy.action), "rules": len(policy.groups)}


def _certificate(identity, cert, error: str | None) -> dict:
    if cert is None:
        return {"identity": str(identity), "state": "unavailable" if error else "pending", "serial": None,
                "not_before": None, "not_after": None, "error": error}
    return {"identity": str(identity), "state": "available", "serial": format(cert.leaf.serial_number, "x"),
            "not_before": cert.not_before.isoformat(), "not_after": cert.not_after.isoformat(), "error": None}


def config_dump(ztunnel) -> dict:
    state = ztunnel.state
    local = set(ztunnel.pods.pods)
    return {
        "node": ztunnel.config.node,
        "workloads": [_workload(w, uid in local) for uid, w in sorted(state.workloads.items())],
        "services": [_service(key, s, len(state.backing(key))) for key, s in sorted(state.services.items())],
        "policies": [_policy(p) for _, p in sorted(state.authorizations.items())],
        "certificates": [_certificate(identity, ztunnel.secrets.current(identity), None)
                         for identity in ztunnel.secrets.identities()],
        "connections": ztunnel.tracker.snapshot(),
    }
