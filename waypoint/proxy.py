"""The waypoint: HBONE in, L7 inside each tunnel, HBONE out (DESIGN.md 8).

``Waypoint.run`` starts the certificate manager (the waypoint's own identity,
``spiffe://<td>/ns/<ns>/sa/<gateway>``), waits for the first discovery view, binds the HBONE listener
(15008) and reports started. Each accepted connection is mTLS (the client must chain to the mesh root
and be of our trust domain: a source ztunnel presenting its workload's certificate), then HTTP/2
CONNECT streams (``hbone.HboneServerDriver``, any ``:authority``: the original destination). Per
CONNECT, ``_tunnel``:

1. resolves the destination against the current view: a Service VIP or a pod IP whose waypoint is
   this one; anything else is refused with 503 (the source ztunnel sends only what the view routes
   here; after a change it may briefly send more);
2. answers 200 and decides the protocol: the Service port's ``appProtocol`` if the control plane sent
   one, else the first bytes (``waypoint.detect``);
3. serves HTTP/1.1 (``waypoint.h1``) or HTTP/2 (``waypoint.h2session``), handing each request to the
   ``Pipeline``; or relays opaque TCP to an endpoint after L4-only policy (the L7 policies evaluated
   with no request attributes: a rule that needs any cannot match).

Every change of the discovery view rebuilds one ``WaypointView`` (state, compiled policies, compiled
routes), swapped whole: a request decides against one snapshot. ``drain`` (SIGTERM) refuses new
CONNECTs, lets open requests finish up to the drain deadline, then stops.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from ca.secrets import SecretManager
from hbone.driver import HboneServerDriver, IncomingConnect
from hbone.relay import Counts, relay
from hbone.tls import ContextCache, HboneTlsError, WorkloadCredentials, server_handshake
from mesh.addresses import format_address
from mesh.api import waypoint_pb2 as wp, workload_pb2 as wpb
from mesh.api.types import ADDRESS_TYPE_URL, L7_POLICY_TYPE_URL, ROUTE_TYPE_URL, WASM_PLUGIN_TYPE_URL
from mesh.certs import CertificateError
from mesh.identity import SpiffeId
from mesh.outbound import HboneToPod, Passthrough, RoundRobin, plan_outbound
from mesh.peer_metadata import baggage_header
from mesh.ports import HBONE_PORT
from mesh.proxy_state import ProxyState, service_key_of
from waypoint.authz import L7Authorizer, RequestAttributes
from waypoint.detect import PrefixedStream, Protocol as AppProtocol, declared, sniff
from waypoint.dispatch import http_call
from waypoint.exchange import Downstream
from waypoint.h1 import H1Downstream, serve_h1
from waypoint.h2 import H2Downstream, MalformedRequest
from waypoint.h2session import H2Session, H2Stream
from waypoint.limits import (
    DETECTION_TIMEOUT,
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_PEER,
    MAX_TUNNELS,
    MAX_TUNNELS_PER_PEER,
    READ_CHUNK,
)
from waypoint.pipeline import Pipeline, Tunnel, WaypointView, endpoint_address
from waypoint.records import NO_FLAGS, RequestRecord, TcpRecord
from waypoint.routing import RouteTable
from waypoint.upstream import UpstreamConnectError, Upstreams
from waypoint.wasm.types import HttpCallResult, RequestInfo
from waypoint.wasm_manager import PluginStatus, WasmManager, plugin_config

log = logging.getLogger("ambient.waypoint")
wasm_log = logging.getLogger("ambient.waypoint.wasm")  # the plugins' own lines (proxy_log, WASI fd_write)

# Seconds a client has for its TLS handshake and first CONNECT, as ztunnel gives it.
HANDSHAKE_TIMEOUT = 10.0
# Seconds to wait for the CA on the first certificate (a connection waits for it).
CERTIFICATE_TIMEOUT = 10.0


@dataclass(frozen=True)
class WaypointConfig:
    namespace: str
    name: str  # the Gateway's
    trust_domain: str
    listen: tuple[str, int] = ("0.0.0.0", HBONE_PORT)
    drain_timeout: float = 5.0

    def __post_init__(self) -> None:
        if not self.namespace or not self.name:
            raise ValueError("a waypoint needs its Gateway's namespace and name")
        if self.drain_timeout < 0:
            raise ValueError("drain_timeout must not be negative")
        _ = self.identity  # a name that makes no SPIFFE ID is refused here, not at the first request

    @functools.cached_property
    def gateway(self) -> str:
        return f"{self.namespace}/{self.name}"

    @functools.cached_property
    def identity(self) -> SpiffeId:
        """Made once (a SpiffeId validates its parts): requests read it."""
        return SpiffeId(self.trust_domain, self.namespace, self.name)

    @functools.cached_property
    def principal(self) -> str:
        return str(self.identity)


class Discovery(Protocol):
    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> None: ...

    def view(self, type_url: str) -> Mapping[str, Any]: ...

    @property
    def change_seq(self) -> int: ...

    async def wait_until(self, predicate: Callable[[], bool]) -> None: ...


class Telemetry(Protocol):
    def request(self, record: RequestRecord) -> None: ...

    def tcp(self, record: TcpRecord) -> None: ...


class Waypoint:
    def __init__(self, config: WaypointConfig, discovery: Discovery, secrets: SecretManager,
                 telemetry: Sequence[Telemetry] = ()) -> None:
        self.config = config
        self.discovery = discovery
        self.secrets = secrets
        self._telemetry = tuple(telemetry)
        self._contexts = ContextCache()
        self._view: WaypointView | None = None
        self._policies: tuple[wp.L7Policy, ...] = ()
        self._routes: tuple[wp.Route, ...] = ()
        self._served: tuple[str, ...] = ()
        self._credentials: tuple[object, WorkloadCredentials] | None = None
        self._cancel = trio.CancelScope()
        self._accepting = trio.CancelScope()
        self.servers: set[HboneServerDriver] = set()
        self.hbone_address: tuple[str, int] | None = None
        self.synced = False
        self.draining = False
        self.open_tunnels = 0
        self.refused = 0  # HBONE connections closed and CONNECTs answered 503 for being over a bound
        self._connections = 0
        self._connections_by_peer: dict[str, int] = {}
        self._tunnels_by_peer: dict[str, int] = {}
        self._me: wpb.Workload | None = None  # our own workload, once a tunnel has shown our address
        self._me_baggage: tuple[wpb.Workload, str] | None = None
        self.pipeline: Pipeline | None = None
        # The WasmPlugins for this waypoint: nothing is loaded (nor wasmtime imported) until one targets it.
        self.wasm = WasmManager(self.gateway, self._load_plugin, self._request_info)
        self._node_id = f"waypoint~{self.gateway}"  # node.id, as a plugin reads it

    # ------------------------------------------------------------ DumpView / OpenCounts

    @property
    def gateway(self) -> str:
        return self.config.gateway

    @property
    def identity(self) -> SpiffeId:
        return self.config.identity

    @property
    def certificate(self) -> WorkloadCredentials | None:
        current = self.secrets.current(self.identity)
        if current is None:
            return None
        return self._credentials_of(current)

    @property
    def policies(self) -> Sequence[wp.L7Policy]:
        return self._policies

    @property
    def routes(self) -> Sequence[wp.Route]:
        return self._routes

    @property
    def served_services(self) -> Sequence[str]:
        return self._served

    @property
    def wasm_plugins(self) -> Sequence[PluginStatus]:
        return self.wasm.statuses()

    def plugin_samples(self) -> Iterator[tuple[str, str, str, int | tuple[int, int]]]:
        return self.wasm.metric_samples()

    @property
    def open_requests(self) -> int:
        return self.pipeline.open_requests if self.pipeline is not None else 0

    # ------------------------------------------------------------ running

    async def run(self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled or drained; ``started`` with the HBONE listener's address."""
        with self._cancel:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.secrets.run)
                self.secrets.prefetch(self.identity)
                log.info("waypoint %s: waiting for the discovery view", self.gateway)
                await nursery.start(self.discovery.run)
                self.synced = True
                self._apply_view()
                nursery.start_soon(self._follow_discovery)
                upstreams = Upstreams(nursery, self._own_credentials, self._own_baggage)
                self.pipeline = Pipeline(self.gateway, self._current_view, upstreams, RoundRobin(), self._record)
                nursery.start_soon(self.wasm.run)
                listeners = await trio.open_tcp_listeners(self.config.listen[1], host=self.config.listen[0])
                sockname = listeners[0].socket.getsockname()
                self.hbone_address = (sockname[0], sockname[1])
                nursery.start_soon(self._accept, listeners, nursery)
                log.info("waypoint %s serving HBONE on %s as %s", self.gateway, format_address(*self.hbone_address),
                         self.identity)
                task_status.started(self.hbone_address)

    async def _accept(self, listeners: list[trio.SocketListener], nursery: trio.Nursery) -> None:
        with self._accepting:
            await trio.serve_listeners(self._connection, listeners, handler_nursery=nursery)

    async def drain(self) -> None:
        """Refuse new tunnels (503), let open requests finish up to the drain deadline, stop."""
        self.draining = True
        self._accepting.cancel()
        for server in self.servers:
            server.drain()
        log.info("draining: %d open tunnel(s), %d open request(s), up to %.1f s", self.open_tunnels,
                 self.open_requests, self.config.drain_timeout)
        with trio.move_on_after(self.config.drain_timeout) as timer:
            if self.pipeline is not None:
                await self.pipeline.wait_idle()  # a tunnel with no request open is an idle keep-alive
        if timer.cancelled_caught:
            log.warning("drain deadline: ending %d request(s) still open", self.open_requests)
        self._cancel.cancel()

    # ------------------------------------------------------------ WasmPlugins

    def _load_plugin(self, resource: wp.WasmPlugin, module: bytes) -> Any:
        """Load a plugin with the Proxy-Wasm host: the first call imports it (and wasmtime). In a worker thread."""
        from waypoint.wasm.plugin import LoadedPlugin

        return LoadedPlugin.load(plugin_config(resource, module, os.environ), self._http_call, wasm_log)

    def _request_info(self, down: Downstream, tunnel: Tunnel) -> RequestInfo:
        head = down.head
        request_id = next((value for name, value in head.headers if name == "x-request-id"), "")
        return RequestInfo(
            method=head.method, path=head.target, authority=head.authority, protocol=down.http_version,
            request_id=request_id, time_ns=time.time_ns(), source_address=tunnel.source_address[0],
            source_port=tunnel.source_address[1], source_principal=str(tunnel.peer_identity),
            destination_address=tunnel.destination[0], destination_port=tunnel.destination[1],
            destination_principal=self.config.principal, mtls=True, node_id=self._node_id)

    async def _http_call(self, upstream: str, headers: list[tuple[str, str]], body: bytes,
                         trailers: list[tuple[str, str]], timeout: float) -> HttpCallResult | None:
        """A plugin's proxy_http_call, through the waypoint's own endpoint choice and tunnels."""
        pipeline, view = self.pipeline, self._view
        if pipeline is None or view is None:
            return None
        answer = await http_call(view.state, self._me, pipeline.upstreams, pipeline.balancer, upstream, headers,
                                 body, timeout)
        return None if answer is None else HttpCallResult(answer.status, answer.headers, answer.body, answer.trailers)

    # ------------------------------------------------------------ the view

    async def _follow_discovery(self) -> None:
        while True:
            await self._changed_after(self.discovery.change_seq)
            try:
                self._apply_view()
            except Exception:  # a bad update keeps the last good view
                log.exception("waypoint %s: the new discovery view could not be applied; keeping the last",
                              self.gateway)

    async def _changed_after(self, seen: int) -> None:
        await self.discovery.wait_until(lambda: self.discovery.change_seq != seen)

    def _apply_view(self) -> None:
        state = ProxyState.from_addresses(dict(self.discovery.view(ADDRESS_TYPE_URL)))
        served = tuple(sorted(key for key, service in state.services.items() if self._serves(state, service)))
        served_set = frozenset(served)
        policies = tuple(p for p in self.discovery.view(L7_POLICY_TYPE_URL).values()
                         if self.gateway in p.gateways or served_set.intersection(p.services))
        routes = tuple(self.discovery.view(ROUTE_TYPE_URL).values())
        authorizer = L7Authorizer.compile(policies)
        for name in authorizer.skipped_custom:
            log.warning("policy %s is CUSTOM: no external authorizer runs here, so it is not enforced", name)
        self.wasm.update(self.discovery.view(WASM_PLUGIN_TYPE_URL), served_set)
        self._view = WaypointView(state, authorizer, RouteTable.compile(routes),
                                  self.wasm if self.wasm.active else None)
        self._policies, self._routes, self._served = policies, routes, served

    def _own_baggage(self) -> str | None:
        """The waypoint's own peer metadata for the upstream tunnels it opens."""
        me = self._me
        if me is None:
            return None
        held = self._me_baggage
        if held is None or held[0] is not me:
            held = self._me_baggage = (me, baggage_header(me))
        return held[1]

    def _current_view(self) -> WaypointView:
        assert self._view is not None
        return self._view

    def _is_me(self, state: ProxyState, gateway: wpb.GatewayAddress) -> bool:
        resolved = state.waypoint_of(gateway)
        return resolved is not None and (resolved.namespace, resolved.name) == (self.config.namespace,
                                                                                self.config.name)

    def _serves(self, state: ProxyState, service: wpb.Service) -> bool:
        return service.HasField("waypoint") and self._is_me(state, service.waypoint)

    # ------------------------------------------------------------ certificates

    def _credentials_of(self, cert: object) -> WorkloadCredentials:
        held = self._credentials
        if held is None or held[0] is not cert:
            held = self._credentials = (cert, WorkloadCredentials.from_certified_key(cert))  # type: ignore[arg-type]
        return held[1]

    async def _own_credentials(self) -> WorkloadCredentials:
        with trio.fail_after(CERTIFICATE_TIMEOUT):
            cert = await self.secrets.get(self.identity)
        return self._credentials_of(cert)

    # ------------------------------------------------------------ connections

    async def _connection(self, stream: trio.SocketStream) -> None:
        peer = stream.socket.getpeername()
        local_ip = stream.socket.getsockname()[0]
        from_peer = self._connections_by_peer.get(peer[0], 0)
        if self._connections >= MAX_CONNECTIONS or from_peer >= MAX_CONNECTIONS_PER_PEER:
            self.refused += 1
            log.debug("HBONE connection from %s refused: %d open (%d from it)", format_address(peer[0], peer[1]),
                      self._connections, from_peer)
            await trio.aclose_forcefully(stream)
            return
        self._connections += 1
        self._connections_by_peer[peer[0]] = from_peer + 1
        try:
            await self._serve_connection(stream, (peer[0], peer[1]), local_ip)
        finally:
            self._connections -= 1
            left = self._connections_by_peer[peer[0]] - 1
            if left:
                self._connections_by_peer[peer[0]] = left
            else:
                del self._connections_by_peer[peer[0]]

    async def _serve_connection(self, stream: trio.SocketStream, peer: tuple[str, int], local_ip: str) -> None:
        deadline = trio.current_time() + HANDSHAKE_TIMEOUT
        try:
            credentials = await self._own_credentials()
            with trio.fail_at(deadline):
                tls, peer_identity = await server_handshake(stream, self._contexts.server(credentials),
                                                            self.config.trust_domain)
        except (HboneTlsError, CertificateError, trio.TooSlowError) as exc:
            # No certificate of ours yet (the CA is slow or away), a handshake that failed or took too
            # long: this connection only; the source ztunnel retries.
            log.info("HBONE connection from %s refused: %s", format_address(peer[0], peer[1]), exc)
            await trio.aclose_forcefully(stream)
            return
        handler = functools.partial(self._tunnel, peer, local_ip, peer_identity)
        server = HboneServerDriver(tls, None, handler, functools.partial(self._malformed, peer, peer_identity))
        if self.draining:
            server.drain()
        self.servers.add(server)
        try:
            await server.serve()
        finally:
            self.servers.discard(server)

    def _malformed(self, peer: tuple[str, int], identity: SpiffeId, rejection: object) -> None:
        log.info("malformed CONNECT from %s (%s): %s", identity, format_address(peer[0], peer[1]), rejection)

    async def _tunnel(self, peer: tuple[str, int], local_ip: str, peer_identity: SpiffeId,
                      request: IncomingConnect) -> None:
        view = self._current_view()
        target = request.target
        destination = (target.ip, target.port)
        log.debug("CONNECT %s from %s (%s)", format_address(*destination), peer_identity, format_address(*peer))
        service = view.state.service_by_vip(target.ip)
        workload = None if service is not None else view.state.workload_by_ip(target.ip)
        if service is not None and not self._serves(view.state, service):
            log.info("CONNECT %s from %s refused: service %s does not use waypoint %s",
                     format_address(*destination), peer_identity, service_key_of(service), self.gateway)
            request.reject(503)
            return
        if service is None and (workload is None or not workload.HasField("waypoint")
                                or not self._is_me(view.state, workload.waypoint)):
            log.info("CONNECT %s from %s refused: no service or workload there uses waypoint %s",
                     format_address(*destination), peer_identity, self.gateway)
            request.reject(503)
            return
        from_peer = self._tunnels_by_peer.get(peer[0], 0)
        if self.open_tunnels >= MAX_TUNNELS or from_peer >= MAX_TUNNELS_PER_PEER:
            self.refused += 1
            log.debug("CONNECT from %s refused: %d tunnels open (%d from it)", peer_identity, self.open_tunnels,
                      from_peer)
            request.reject(503)
            return
        source_address = target.forwarded_for or peer
        me = self._me = view.state.workload_by_ip(local_ip)
        tunnel = Tunnel(peer_identity, source_address, view.state.workload_by_ip(source_address[0]), destination,
                        service, service_key_of(service) if service is not None else None, workload, me)
        try:
            stream = request.accept()
        except trio.BrokenResourceError:
            return
        self.open_tunnels += 1
        self._tunnels_by_peer[peer[0]] = from_peer + 1
        try:
            await self._serve_tunnel(stream, tunnel, service)
            # Served to the end (the client closed its side): end ours too, so the tunnel closes
            # cleanly; a stream closed with a half still open is reset, which ztunnel logs as failed.
            with trio.move_on_after(HANDSHAKE_TIMEOUT):
                try:
                    await stream.send_eof()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # already reset or closed by the other side: nothing left to end
        finally:
            self.open_tunnels -= 1
            left = self._tunnels_by_peer[peer[0]] - 1
            if left:
                self._tunnels_by_peer[peer[0]] = left
            else:
                del self._tunnels_by_peer[peer[0]]
            await trio.aclose_forcefully(stream)

    async def _serve_tunnel(self, stream: trio.abc.HalfCloseableStream, tunnel: Tunnel,
                            service: wpb.Service | None) -> None:
        declared_protocol = AppProtocol.UNKNOWN
        if service is not None:
            for port in service.ports:
                if port.service_port == tunnel.destination[1]:
                    declared_protocol = declared(port.app_protocol)
        # A declared HTTP port is still sniffed, for the client's HTTP version only: Envoy's HTTP
        # listener takes both HTTP/1.1 and HTTP/2 prior knowledge there (codec AUTO), and the port's
        # protocol decides what goes upstream (``pipeline._upstream_http2``). Bytes that are not HTTP
        # on a declared HTTP port are served as HTTP/1.1, which answers them 400.
        protocol = AppProtocol.UNKNOWN
        initial = b""
        with trio.move_on_after(DETECTION_TIMEOUT):
            while protocol is AppProtocol.UNKNOWN:
                data = await stream.receive_some(READ_CHUNK)
                initial += data
                protocol = sniff(initial, ended=not data)
        if declared_protocol is not AppProtocol.UNKNOWN:
            protocol = AppProtocol.HTTP2 if protocol is AppProtocol.HTTP2 else AppProtocol.HTTP1
        elif protocol is AppProtocol.UNKNOWN:
            protocol = AppProtocol.TCP
        assert self.pipeline is not None
        pipeline = self.pipeline
        log.debug("tunnel to %s from %s: %s", format_address(*tunnel.destination), tunnel.peer_identity, protocol.value)
        if protocol is AppProtocol.HTTP1:
            async def one_request(down: H1Downstream) -> None:
                await pipeline.handle(down, tunnel)

            await serve_h1(stream, one_request, initial)
        elif protocol is AppProtocol.HTTP2:
            session: H2Session | None = None

            async def on_stream(h2_stream: H2Stream) -> None:
                assert session is not None
                try:
                    down = H2Downstream(session, h2_stream)
                except MalformedRequest as exc:
                    log.info("HTTP/2 request from %s reset: %s", tunnel.peer_identity, exc)
                    session.reset(h2_stream.stream_id)
                    return
                await pipeline.handle(down, tunnel)

            session = H2Session(PrefixedStream(stream, initial), client_side=False, on_request=on_stream)
            await session.run()
        else:
            await self._relay_tcp(PrefixedStream(stream, initial), tunnel)

    async def _relay_tcp(self, stream: trio.abc.HalfCloseableStream, tunnel: Tunnel) -> None:
        """Opaque TCP: L4 policy only, then a relay to an endpoint."""
        view = self._current_view()
        start = trio.current_time()
        counts = Counts()
        flags, detail = NO_FLAGS, None
        upstream_address = None
        destination = None
        principal = None
        try:
            policies = view.authz.policies_for(self.gateway, tunnel.service_key)
            if not policies.empty:
                decision = policies.authorize(RequestAttributes(
                    tunnel.peer_identity, tunnel.source_address[0], tunnel.source_address[0], tunnel.destination[0],
                    tunnel.destination[1], "", "", "", {}))
                if not decision.allowed:
                    flags, detail = "RBAC", decision.reason
                    return
            if tunnel.me is None:
                flags, detail = "UH", "the waypoint does not know its own workload"
                return
            assert self.pipeline is not None
            choice = plan_outbound(tunnel.me, tunnel.destination, view.state, self.pipeline.balancer)
            if not isinstance(choice, (HboneToPod, Passthrough)):
                flags, detail = "UH", getattr(choice, "reason", "no endpoint")
                return
            destination = view.state.workloads.get(choice.workload_uid or "")
            principal = choice.identity if isinstance(choice, HboneToPod) else None
            try:  # bounded by CONNECT_TIMEOUT (waypoint.upstream)
                upstream = await self.pipeline.upstreams.raw(choice, tunnel.source_address)
            except UpstreamConnectError as exc:
                flags, detail = "UF", str(exc)
                return
            upstream_address = endpoint_address(choice)  # the pod and its port, as a request's record has it
            try:
                await relay(stream, upstream, counts)
            except trio.BrokenResourceError as exc:
                detail = str(exc)
        finally:
            record = TcpRecord(start, trio.current_time() - start, counts.sent, counts.received,
                               tunnel.source_address, tunnel.source, tunnel.peer_identity, tunnel.service,
                               destination, principal, upstream_address, flags, detail)
            for sink in self._telemetry:
                try:
                    sink.tcp(record)
                except Exception:
                    log.exception("recording a tunnel failed")

    def _record(self, record: RequestRecord) -> None:
        for sink in self._telemetry:
            sink.request(record)

    def ready(self) -> tuple[bool, str]:
        from waypoint.admin import readiness

        return readiness(self, self.synced)
