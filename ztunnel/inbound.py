"""Inbound decisions, as pure functions (DESIGN.md section 7): may this connection reach this pod?

The executor describes each inbound connection once, when it arrives, as an ``InboundRequest``
(which pod it was captured for, the address it asked for, who connects, the identity mTLS verified,
whether it came over HBONE). ``decide_inbound(request, state)`` is called with it for every CONNECT
on 15008 and every plaintext connection on 15006, and again with the same request for open
connections whenever the view changes, so that a connection a new policy denies is closed. Its
order follows Istio's ztunnel (inbound.rs):

1. the target must be a workload this proxy serves, on a port that is not one of ztunnel's own
   listeners in the pod (503 otherwise: nothing to connect to; dialling 15001/15006/15008 would
   loop back into ztunnel, as Istio's ztunnel also refuses);
2. HBONE traffic to a workload that has a waypoint must come from that waypoint (401,
   "bypassed waypoint"), so L7 policy cannot be skipped by tunnelling straight to the pod; whether
   the peer is that waypoint (its identity, from one of its pods' addresses) is looked up in the
   state of each decision. This is the check of Istio's ztunnel up to 1.21 (``check_from_waypoint``
   on the destination workload's own ``waypoint``). A *Service*'s waypoint is not checked here, as
   in every Istio version: it applies to traffic addressed to the Service, which the source's
   ztunnel sends to the waypoint, while a CONNECT to a pod names the pod's IP whether the client
   addressed the VIP or the pod, and pod-addressed traffic does not use a service waypoint
   (``istio.io/waypoint-for: service``). Istio's ztunnel today has no bypass check at all and
   documents an L4 ALLOW for the waypoint's principal as the way to make a workload reachable only
   through its waypoint; that policy works here unchanged (tests/ztunnel/test_inbound.py);
3. L4 AuthorizationPolicy, with the verified peer identity (``None`` for plaintext, which STRICT's
   converted policy denies).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mesh.api import authorization_pb2 as pb, workload_pb2 as wpb
from mesh.identity import SpiffeId
from mesh.ports import ZTUNNEL_POD_PORTS
from mesh.proxy_state import ProxyState, identity_of
from ztunnel.policy import ConnectionAttributes, applicable_policies, authorize


@dataclass(frozen=True, slots=True)
class InboundRequest:
    """One inbound connection as the decision sees it; built once per connection.

    ``source_ip`` is the connecting peer: for HBONE the pod whose ztunnel (or waypoint) opened the
    tunnel, for plaintext the client itself. The policy attributes are derived once, here, so that
    deciding again under a new policy parses nothing."""

    pod_uid: str  # the pod whose listener took the connection: the destination workload
    served: bool  # whether this ztunnel serves that pod (it may be on its way out)
    destination: tuple[str, int]  # the address asked for: the CONNECT target, or the captured socket's
    source_ip: str
    peer_identity: SpiffeId | None  # verified by mTLS; None for plaintext
    hbone: bool
    attributes: ConnectionAttributes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ip, port = self.destination
        object.__setattr__(self, "attributes", ConnectionAttributes(
            source_ip=self.source_ip, source_identity=self.peer_identity, destination_ip=ip, destination_port=port))


@dataclass(frozen=True, slots=True)
class InboundDecision:
    allowed: bool
    status: int  # what an HBONE CONNECT is answered with: 200, 401 or 503
    reason: str
    policy: str | None = None  # "<ns>/<name>" of the policy that decided, if one did


def decide_inbound(request: InboundRequest, state: ProxyState) -> InboundDecision:
    """The verdict on ``request`` under ``state`` (its workloads, waypoints and policies)."""
    destination = state.workloads.get(request.pod_uid)
    if destination is None or not request.served:
        return InboundDecision(False, 503, f"no workload at {request.destination[0]} is served by this ztunnel")
    if request.destination[1] in ZTUNNEL_POD_PORTS:
        return InboundDecision(False, 503, f"port {request.destination[1]} is ztunnel's own listener, not the app's")
    if request.hbone and destination.HasField("waypoint") and not _from_waypoint(destination, request, state):
        return InboundDecision(False, 401,
                               f"bypassed waypoint: {_name(destination)} must be reached through its waypoint")
    policies = applicable_policies(destination, state.authorizations, state.root_namespace)
    decision = authorize(request.attributes, policies)
    policy = decision.policy
    if not decision.allowed and policy is None:  # no ALLOW matched: name the ones that did not
        policy = ",".join(f"{p.namespace}/{p.name}" for p in policies if p.action == pb.ALLOW and not p.dry_run) or None
    return InboundDecision(decision.allowed, 200 if decision.allowed else 401, decision.reason, policy)


def _from_waypoint(destination: wpb.Workload, request: InboundRequest, state: ProxyState) -> bool:
    if request.peer_identity is None:
        return False
    peer = state.workload_by_ip(request.source_ip, destination.network)
    return (peer is not None and identity_of(peer) == request.peer_identity
            and state.is_waypoint(peer, destination.waypoint))


def _name(workload: wpb.Workload) -> str:
    return f"{workload.namespace}/{workload.name}"
