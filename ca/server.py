"""The CA over gRPC: ``istio.v1.auth.IstioCertificateService/CreateCertificate`` on TLS.

A thin adapter around ``ca.service``: it decodes the request, hands it over, and turns the outcome
into a response or a gRPC status with a log line and a metric. The request is registered as raw
bytes and decoded here, so that a message that is not an ``IstioCertificateRequest`` gets a clear
INVALID_ARGUMENT rather than grpc's generic failure; an unexpected exception becomes INTERNAL and
the server goes on serving.

The server's own TLS certificate is issued by the same CA at start (DNS and IP names configurable),
held in memory only, and replaced at half of its lifetime on the next handshake.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from ca.authority import CaRefusal, Status, utcnow
from ca.client import IMPERSONATED_IDENTITY
from ca.proto import ca_pb2
from ca.service import CertificateRequest, CertificateService, Issued
from ca.tokens import NodeCaller, parse_peer

log = logging.getLogger("ambient.ca")

SERVICE_NAME = "istio.v1.auth.IstioCertificateService"
DEFAULT_PORT = 15012
DEFAULT_SERVER_NAMES = ("localhost", "127.0.0.1", "istiod.istio-system.svc")
SERVER_CERT_LIFETIME = dt.timedelta(days=30)
MAX_REQUEST_BYTES = 256 * 1024  # a CreateCertificate request: a CSR and a little metadata
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # any message on the port: a reconnecting discovery client
# lists every resource it holds (initial_resource_versions), about 100 bytes each
KEEPALIVE_OPTIONS = (
    # Ping idle connections so that a vanished peer is noticed in under a minute, not at TCP timeout;
    # and accept the clients' own pings at that rate.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
)


@dataclass(frozen=True)
class ServeConfig:
    listen: str = f"127.0.0.1:{DEFAULT_PORT}"
    server_names: tuple[str, ...] = DEFAULT_SERVER_NAMES
    workers: int = 8

    def __post_init__(self) -> None:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ValueError(f"listen address {self.listen!r} is not HOST:PORT")
        if not self.server_names:
            raise ValueError("the server certificate needs at least one name")


class CaMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.issued = Counter(
            "ambient_ca_certificates_issued", "Workload certificates issued, by kind of caller",
            ["caller"], registry=registry,
        )
        self.rejected = Counter(
            "ambient_ca_requests_rejected", "CreateCertificate requests refused, by reason",
            ["reason"], registry=registry,
        )
        self.root_expiry = Gauge(
            "ambient_ca_root_cert_expiry_timestamp_seconds", "Unix time at which the mesh root expires",
            registry=registry,
        )


@dataclass
class _ServerCertificate:
    """The CA endpoint's TLS certificate, renewed on a handshake after half of its lifetime."""

    service: CertificateService
    names: tuple[str, ...]
    renew_at: dt.datetime = field(init=False)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def issue(self) -> grpc.ServerCertificateConfiguration:
        key, chain = self.service.authority.issue_server_certificate(list(self.names), SERVER_CERT_LIFETIME)
        self.renew_at = utcnow() + SERVER_CERT_LIFETIME / 2
        return grpc.ssl_server_certificate_configuration([(key, chain)])

    def maybe_renew(self) -> grpc.ServerCertificateConfiguration | None:
        with self.lock:
            return self.issue() if utcnow() >= self.renew_at else None


def _decode(raw: bytes, authorization: str | None, peer: str = "") -> CertificateRequest:
    if len(raw) > MAX_REQUEST_BYTES:
        raise CaRefusal(Status.INVALID_ARGUMENT, "malformed_request",
                        f"request of {len(raw)} bytes is over the limit of {MAX_REQUEST_BYTES}")
    try:
        message = ca_pb2.IstioCertificateRequest.FromString(raw)
    except DecodeError as exc:
        raise CaRefusal(
            Status.INVALID_ARGUMENT, "malformed_request", f"request is not an IstioCertificateRequest: {exc}"
        ) from None
    metadata = json_format.MessageToDict(message.metadata) if message.HasField("metadata") else {}
    return CertificateRequest(
        authorization=authorization,
        csr=message.csr,
        validity_seconds=message.validity_duration,
        impersonated_identity=metadata.get(IMPERSONATED_IDENTITY),
        peer_address=parse_peer(peer),  # a node token bound to addresses is checked against it
    )


def _authorization(context: grpc.ServicerContext) -> str | None:
    # Only keys ending in -bin carry bytes.
    values = [v for k, v in context.invocation_metadata() if k == "authorization" and isinstance(v, str)]
    if len(values) > 1:
        raise CaRefusal(Status.UNAUTHENTICATED, "missing_token", "more than one authorization header")
    return values[0] if values else None


class CaServer:
    """The gRPC server. ``start()`` binds and returns the port; ``stop()`` drains."""

    def __init__(
        self,
        service: CertificateService,
        config: ServeConfig,
        metrics: CaMetrics,
        extra_handlers: tuple[grpc.GenericRpcHandler, ...] = (),
    ) -> None:
        """``extra_handlers`` are other services served on the same TLS port (discovery, in the
        control plane); each streaming client holds one of ``config.workers`` threads."""
        self._service = service
        self._config = config
        self._metrics = metrics
        metrics.root_expiry.set(service.authority.root.not_valid_after_utc.timestamp())
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="ca-grpc"),
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                *KEEPALIVE_OPTIONS,
                # grpcio sets SO_REUSEPORT by default: a second CA on the same port would then
                # bind silently and take half the connections.
                ("grpc.so_reuseport", 0),
            ],
        )
        handler: grpc.RpcMethodHandler[bytes, ca_pb2.IstioCertificateResponse] = grpc.unary_unary_rpc_method_handler(
            self._create_certificate,
            request_deserializer=None,  # raw bytes: decoded in _decode with a clear error
            response_serializer=ca_pb2.IstioCertificateResponse.SerializeToString,
        )
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE_NAME, {"CreateCertificate": handler}), *extra_handlers)
        )
        self._certificate = _ServerCertificate(service, config.server_names)

    def start(self) -> int:
        credentials = grpc.dynamic_ssl_server_credentials(
            # maybe_renew returns None to keep the current certificate, as grpcio allows; the stub says no.
            self._certificate.issue(), self._certificate.maybe_renew,  # type: ignore[arg-type]
            require_client_authentication=False,
        )
        try:
            port = self._server.add_secure_port(self._config.listen, credentials)
        except RuntimeError:  # grpcio's only signal; the cause is in its debug log
            port = 0
        if port == 0:
            raise OSError(f"cannot listen on {self._config.listen}: address in use or not available here")
        self._server.start()
        return port

    def stop(self, grace: float | None = 5.0) -> None:
        self._server.stop(grace).wait()

    def _create_certificate(self, raw: bytes, context: grpc.ServicerContext) -> ca_pb2.IstioCertificateResponse:
        try:
            issued = self._service.create_certificate(_decode(raw, _authorization(context), context.peer()))
        except CaRefusal as refusal:
            self._metrics.rejected.labels(refusal.reason).inc()
            log.warning(
                "CreateCertificate refused: %s (%s): %s; caller %s, peer %s",
                refusal.status.name, refusal.reason, refusal, refusal.caller or "unknown", context.peer(),
            )
            context.abort(grpc.StatusCode[refusal.status.name], str(refusal))
        except Exception:
            self._metrics.rejected.labels("internal").inc()
            log.exception("CreateCertificate failed; peer %s", context.peer())
            context.abort(grpc.StatusCode.INTERNAL, "internal error in the CA; see its log")
        self._metrics.issued.labels(_caller_kind(issued)).inc()
        log.info(
            "issued %s to %s: serial %x, expires %s; peer %s",
            issued.identity, issued.caller, issued.serial, issued.not_after.isoformat(), context.peer(),
        )
        return ca_pb2.IstioCertificateResponse(cert_chain=issued.cert_chain)


def _caller_kind(issued: Issued) -> str:
    """The metric's ``caller`` label: ``node`` for a certificate obtained on a pod's behalf (a node
    token, or a Kubernetes node proxy impersonating), ``workload`` for a caller's own."""
    if isinstance(issued.caller, NodeCaller):
        return "node"
    return "workload" if issued.identity == issued.caller.identity else "node"


def start_metrics_server(listen: str, registry: CollectorRegistry):
    """Serve ``/metrics`` in a background thread; returns the HTTP server (``.server_port``)."""
    host, _, port = listen.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host, registry=registry)
    return server
