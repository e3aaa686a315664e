"""What the waypoint knows of one finished request or TCP connection, handed to telemetry.

The proxy fills one ``RequestRecord`` per HTTP request (or gRPC call) when its response has ended
(or failed), and one ``TcpRecord`` per opaque TCP tunnel when it closes; ``waypoint.metrics`` and
``waypoint.access_log`` read them and nothing else. Times are seconds of the proxy's clock.

``response_flags`` use Envoy's short names, as Istio's metrics and access logs do: "-" none, "UF"
upstream connect failure, "UH" no healthy upstream, "NR" no route, "URX" retry limit reached, "UT"
upstream timeout, "DC" downstream connection ended, "UC" upstream connection ended, "RBAC" denied
by policy (Envoy reports it as the response code detail ``rbac_access_denied``; Istio's
``response_flags`` label shows "-" for it and the access log "RBAC": we show "RBAC" in both).
"""

from __future__ import annotations

from dataclasses import dataclass

from mesh.api import workload_pb2 as wpb
from mesh.identity import SpiffeId

NO_FLAGS = "-"


@dataclass(frozen=True, slots=True)
class RequestRecord:
    start: float
    duration: float  # seconds from the request's first byte to the response's last
    protocol: str  # "http" (HTTP/1.1 or HTTP/2) or "grpc", as Istio's request_protocol
    http_version: str  # "HTTP/1.1" | "HTTP/2"
    method: str
    path: str
    authority: str
    status: int  # 0: no response was sent (the client went away first)
    response_flags: str  # NO_FLAGS or a comma-joined list of Envoy's flags
    request_bytes: int  # body bytes received from the client
    response_bytes: int  # body bytes sent to the client
    source_address: tuple[str, int]  # the original client (forwarded for), else the peer
    source: wpb.Workload | None  # the source workload, if the mesh knows its address
    source_principal: SpiffeId | None  # the peer's verified identity (the source ztunnel's client cert)
    destination_service: wpb.Service | None  # the Service addressed (None: a workload by pod IP)
    destination: wpb.Workload | None  # the endpoint the request went to, if it got one
    destination_principal: SpiffeId | None
    upstream_address: tuple[str, int] | None  # the endpoint's address (pod IP, target port)
    grpc_status: str | None = None  # the grpc-status of the response (trailers or headers), if any
    route: str | None = None  # "<ns>/<name>" of the HTTPRoute/GRPCRoute that matched, None: default
    policy: str | None = None  # "<ns>/<name>" of the L7 policy that decided, if one did
    detail: str | None = None  # why it failed or was refused, in words
    request_id: str | None = None  # x-request-id


@dataclass(frozen=True, slots=True)
class TcpRecord:
    start: float
    duration: float
    sent_bytes: int  # to the client
    received_bytes: int  # from the client
    source_address: tuple[str, int]
    source: wpb.Workload | None
    source_principal: SpiffeId | None
    destination_service: wpb.Service | None
    destination: wpb.Workload | None
    destination_principal: SpiffeId | None
    upstream_address: tuple[str, int] | None
    response_flags: str = NO_FLAGS
    detail: str | None = None
