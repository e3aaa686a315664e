"""Inbound decisions, as pure functions (DESIGN.md section 7): may this connection reach this pod?

``decide_inbound`` is called for every CONNECT on 15008 and every plaintext connection on 15006,
and again for open connections whenever policy or workloads change, so that a connection a new
policy denies is closed. Its order follows Istio's ztunnel (inbound.rs):

1. the target must be a workload this proxy serves (503 otherwise: nothing to connect to);
2. HBONE traffic to a workload that has a waypoint must come from that waypoint (401,
   "bypassed waypoint"), so L7 policy cannot be skipped by tunnelling straight to the pod;
3. L4 AuthorizationPolicy, with the verified peer identity (``None`` for plaintext, which STRICT's
   converted policy denies).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mesh.api import authorization_pb2 as pb
from mesh.api import workload_pb2 as wpb
from mesh.identity import ROOT_NAMESPACE, SpiffeId
from ztunnel.policy import ConnectionAttributes, applicable_policies, authorize
from ztunnel.state import ProxyState, identity_of


@dataclass(frozen=True, slots=True)
class InboundDecision:
    allowed: bool
    status: int  # what an HBONE CONNECT is answered with: 200, 401 or 503
    reason: str
    policy: str | None = None  # "<ns>/<name>" of the policy that decided, if one did


def decide_inbound(
    *, destination: wpb.Workload | None, served: bool, source_ip: str, source_identity: SpiffeId | None,
    destination_ip: str, destination_port: int, state: ProxyState,
    authorizations: Mapping[str, pb.Authorization], hbone: bool, root_namespace: str = ROOT_NAMESPACE,
) -> InboundDecision:
    if destination is None or not served:
        return InboundDecision(False, 503, f"no workload at {destination_ip} is served by this ztunnel")
    if hbone and destination.HasField("waypoint") and not _from_waypoint(destination, source_ip, source_identity, state):
        return InboundDecision(False, 401, f"bypassed waypoint: {_name(destination)} must be reached through its waypoint")
    conn = ConnectionAttributes(source_ip=source_ip, source_identity=source_identity,
                                destination_ip=destination_ip, destination_port=destination_port)
    policies = applicable_policies(destination, authorizations, root_namespace)
    decision = authorize(conn, policies)
    policy = decision.policy
    if not decision.allowed and policy is None:  # no ALLOW matched: name the ones that did not
        policy = ",".join(f"{p.namespace}/{p.name}" for p in policies if p.action == pb.ALLOW) or None
    return InboundDecision(decision.allowed, 200 if decision.allowed else 401, decision.reason, policy)


def _from_waypoint(destination: wpb.Workload, source_ip: str, source_identity: SpiffeId | None,
                   state: ProxyState) -> bool:
    if source_identity is None:
        return False
    peer = state.workload_by_ip(source_ip, destination.network)
    return peer is not None and identity_of(peer) == source_identity and state.is_waypoint(peer, destination.waypoint)


def _name(workload: wpb.Workload) -> str:
    return f"{workload.namespace}/{workload.name}"
