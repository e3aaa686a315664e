"""The ztunnel process's core: serves every pod the node agent hands over (DESIGN.md section 7).

Per pod, three accept loops (in the pod's netns, on sockets made there):

- 15001 outbound: the original destination is ``getsockname()``; ``plan_outbound`` (pure) decides,
  and this module executes the plan: HBONE through the pool (client certificate of the pod's own
  identity, the server's SAN checked against the plan), plaintext passthrough, or a reset.
- 15008 HBONE: TLS with the pod's certificate, the client's chain and trust domain checked; each
  CONNECT is decided by ``decide_inbound`` (pure) with the verified peer identity, then the app is
  dialled from the client's own IP and only then answered 200 (503 if the app refuses, 401 if
  denied).
- 15006 plaintext inbound: the same decision with no identity (STRICT's policy denies it).

Every connection is tracked for metrics, the access log, ``/config_dump`` and policy re-evaluation.
State comes from discovery (workloads, services, policies) and is swapped whole on each change.
"""

from __future__ import annotations

import errno
import functools
import logging
from dataclasses import dataclass

import trio

from mesh.certs import CertificateError, CertifiedKey
from ca.secrets import SecretManager
from mesh.api.types import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL
from mesh.identity import DEFAULT_TRUST_DOMAIN, ROOT_NAMESPACE, SpiffeId
from mesh.xds.client import DiscoveryClient
from ztunnel.connections import AccessLog, Connection, ConnectionTracker
from hbone.connect import ConnectRejection
from hbone.driver import HboneRefused, HboneServerDriver, IncomingConnect
from ztunnel.inbound import InboundRequest, decide_inbound
from ztunnel.metrics import tcp_labels
from ztunnel.outbound import HboneToPod, HboneToWaypoint, Passthrough, Plan, Refuse, RoundRobin, plan_outbound
from ztunnel.pods import Pod, PodSet
from hbone.pool import HbonePool
from hbone.relay import relay, reset
from ztunnel.sockets import AppAddress, accepted_stream, connect, connect_as_client, upstream_socket
from ztunnel.state import ProxyState, identity_of
from hbone.tls import ContextCache, HboneTlsError, WorkloadCredentials, client_handshake, server_handshake
from bpf.capture import Slot

log = logging.getLogger("ambient.ztunnel")

_ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


@dataclass(frozen=True)
class ZtunnelConfig:
    node: str
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    root_namespace: str = ROOT_NAMESPACE
    connect_timeout: float = 10.0  # TCP connect plus TLS handshake, and the app's connect
    certificate_timeout: float = 10.0  # how long a connection waits for its first certificate
    drain_timeout: float = 5.0  # SIGTERM: how long open connections may finish

    def __post_init__(self) -> None:
        if not self.node:
            raise ValueError("the node name is required")
        for name in ("connect_timeout", "certificate_timeout", "drain_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")


class Ztunnel:
    def __init__(self, config: ZtunnelConfig, discovery: DiscoveryClient, secrets: SecretManager,
                 zds_path: str, metrics=None, access_log: AccessLog | None = None) -> None:
        self.config = config
        self.discovery = discovery
        self.secrets = secrets
        self.metrics = metrics
        self.state = ProxyState.from_addresses({}, root_namespace=config.root_namespace)
        self.contexts = ContextCache()
        self.balancer = RoundRobin()
        self.tracker = ConnectionTracker(metrics, access_log or AccessLog())
        self.pods = PodSet(zds_path, self._serve_pod)
        self.pool: HbonePool | None = None
        self.servers: set[HboneServerDriver] = set()
        self.draining = False
        self._credentials: dict[SpiffeId, tuple[CertifiedKey, WorkloadCredentials]] = {}
        self._accepting: dict[str, trio.CancelScope] = {}  # pod uid → its accept loops
        self._cancel = trio.CancelScope()

    # ------------------------------------------------------------ running

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self._cancel:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.secrets.run)
                log.info("waiting for the discovery view")
                await nursery.start(self.discovery.run)
                self._apply_view()
                self.pool = HbonePool(nursery)
                nursery.start_soon(self._follow_discovery)
                nursery.start_soon(self.pods.run)
                task_status.started()

    async def drain(self) -> None:
        """Stop accepting (new connections to our pods are held by capture until a ztunnel is back),
        refuse new CONNECTs with 503, let open connections finish up to the drain timeout, stop."""
        self.draining = True
        for scope in self._accepting.values():
            scope.cancel()
        for server in self.servers:
            server.drain()
        open_now = len(self.tracker)
        log.info("draining: %d open connection(s), up to %.1f s", open_now, self.config.drain_timeout)
        with trio.move_on_after(self.config.drain_timeout) as timer:
            await self.tracker.wait_empty()
        if timer.cancelled_caught:
            log.warning("drain deadline: closing %d connection(s) still open", len(self.tracker))
        self._cancel.cancel()

    async def _follow_discovery(self) -> None:
        seen = self.discovery.change_seq
        while True:
            await self.discovery.wait_until(lambda: self.discovery.change_seq != seen)
            seen = self.discovery.change_seq
            self._apply_view()
            self.tracker.reevaluate()

    def _apply_view(self) -> None:
        self.state = ProxyState.from_addresses(dict(self.discovery.view(ADDRESS_TYPE_URL)),
                                               self.discovery.view(AUTHORIZATION_TYPE_URL),
                                               root_namespace=self.config.root_namespace)

    # ------------------------------------------------------------ pods

    def pod_identity(self, pod: Pod) -> SpiffeId:
        workload = self.state.workloads.get(pod.uid)
        if workload is not None:
            return identity_of(workload)
        return SpiffeId(self.config.trust_domain, pod.namespace, pod.service_account)

    async def _serve_pod(self, pod: Pod) -> None:
        identity = self.pod_identity(pod)
        self.secrets.prefetch(identity)
        handlers = {Slot.OUTBOUND: self._outbound, Slot.INBOUND: self._plaintext_inbound, Slot.HBONE: self._hbone_inbound}
        try:
            async with trio.open_nursery() as connections:
                with self._accepting.setdefault(pod.uid, trio.CancelScope()) as accepting:
                    if self.draining:
                        accepting.cancel()
                    async with trio.open_nursery() as acceptors:
                        for slot, sock in pod.sockets.items():
                            acceptors.start_soon(self._accept, pod, sock, handlers[slot], connections)
        finally:
            self._accepting.pop(pod.uid, None)
            self._forget_pod(pod, identity)

    def _forget_pod(self, pod: Pod, identity: SpiffeId) -> None:
        """The pod left: close its pooled connections (made in its netns), and drop its identity's
        certificate unless another pod served here still has that identity."""
        if self.pool is not None:
            self.pool.close_where(lambda key: key[0] == pod.uid, f"pod {pod.key} left")
        if not any(self.pod_identity(other) == identity for other in self.pods.pods.values() if other is not pod):
            self.secrets.forget(identity)
            self.contexts.forget(identity)
            self._credentials.pop(identity, None)

    async def _accept(self, pod: Pod, sock, handle, connections: trio.Nursery) -> None:
        listener = trio.socket.from_stdlib_socket(sock)
        with listener:  # closed when accepting stops: its SOCKMAP slot empties with it
            while True:
                try:
                    tsock, peer = await listener.accept()
                except OSError as exc:
                    if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                        raise
                    log.error("pod %s: cannot accept: %s", pod.key, exc)
                    await trio.sleep(0.1)
                    continue
                connections.start_soon(handle, pod, tsock, peer)

    async def certificate(self, identity: SpiffeId) -> WorkloadCredentials:
        with trio.fail_after(self.config.certificate_timeout):
            cert = await self.secrets.get(identity)
        held = self._credentials.get(identity)
        if held is None or held[0] is not cert:
            held = self._credentials[identity] = (cert, WorkloadCredentials.from_certified_key(cert))
        return held[1]

    # ------------------------------------------------------------ outbound (15001)

    async def _outbound(self, pod: Pod, tsock, peer: tuple[str, int]) -> None:
        downstream = accepted_stream(tsock)
        original = downstream.socket.getsockname()[:2]
        source = self.state.workloads.get(pod.uid)
        plan: Plan = (plan_outbound(source, original, self.state, self.balancer) if source is not None
                      else Refuse(f"pod {pod.key} is not in the discovery view yet"))
        conn = self._outbound_connection(pod, source, peer, original, plan)
        with self.tracker.track(conn):
            if isinstance(plan, Refuse):
                conn.fail(plan.reason)
                await reset(downstream)
                return
            try:
                upstream = await self._open_upstream(pod, plan, peer)
            except HboneRefused as exc:
                conn.fail(str(exc), denied=exc.status == 401)
                await reset(downstream)
                return
            except (OSError, trio.BrokenResourceError, trio.TooSlowError, HboneTlsError, CertificateError) as exc:
                conn.fail(f"cannot reach {plan.address[0]}:{plan.address[1]}: {_describe(exc)}")
                await reset(downstream)
                return
            await _relay(conn, downstream, upstream)

    def _outbound_connection(self, pod: Pod, source, peer, original, plan: Plan) -> Connection:
        hbone = isinstance(plan, (HboneToPod, HboneToWaypoint))
        destination = None
        uid = getattr(plan, "workload_uid", None)
        if uid:
            destination = self.state.workloads.get(uid)
        elif isinstance(plan, HboneToWaypoint):
            destination = self.state.workloads.get(plan.waypoint_uid)
        service_key = getattr(plan, "service", None)
        service = self.state.services.get(service_key) if service_key else None
        source_identity = self.pod_identity(pod)
        destination_identity = plan.identity if hbone else None
        labels = tcp_labels(
            reporter="source", source=source, source_principal=str(source_identity) if hbone else None,
            destination=destination, destination_principal=str(destination_identity) if destination_identity else None,
            destination_service=service, mutual_tls=hbone)
        return Connection(
            direction="outbound", pod=pod.key, protocol="HBONE" if hbone else "TCP", source=peer,
            destination=original, source_workload=pod.key, source_identity=source_identity,
            destination_workload=_key(destination), destination_identity=destination_identity,
            destination_service=service_key, labels=labels)

    async def _open_upstream(self, pod: Pod, plan: Plan, peer: tuple[str, int]) -> trio.abc.HalfCloseableStream:
        if isinstance(plan, Passthrough):
            with trio.fail_after(self.config.connect_timeout):
                return await connect(upstream_socket(pod.netns_fd), plan.address)
        assert isinstance(plan, (HboneToPod, HboneToWaypoint)) and self.pool is not None
        credentials = await self.certificate(self.pod_identity(pod))
        context = self.contexts.client(credentials)
        expected = frozenset(plan.expected_identities)

        async def dial() -> trio.abc.Stream:
            tcp = await connect(upstream_socket(pod.netns_fd), plan.address)
            tls, _ = await client_handshake(tcp, context, expected)
            return tls

        with trio.fail_after(2 * self.config.connect_timeout):  # the handshake, then the far side's dial
            return await self.pool.open_stream((pod.uid, expected, plan.address), dial, plan.authority, peer)

    # ------------------------------------------------------------ inbound HBONE (15008)

    async def _hbone_inbound(self, pod: Pod, tsock, peer: tuple[str, int]) -> None:
        stream = accepted_stream(tsock)
        local_ip = stream.socket.getsockname()[0]
        try:
            credentials = await self.certificate(self.pod_identity(pod))
            with trio.fail_after(self.config.connect_timeout):
                tls, peer_identity = await server_handshake(stream, self.contexts.server(credentials),
                                                            self.config.trust_domain)
        except (HboneTlsError, CertificateError, trio.TooSlowError) as exc:
            log.warning("pod %s: HBONE connection from %s:%d refused: %s", pod.key, *peer, _describe(exc))
            await trio.aclose_forcefully(stream)
            return
        handler = functools.partial(self._on_connect, pod, peer, peer_identity)
        rejected = functools.partial(self._on_malformed, pod, peer, peer_identity)
        server = HboneServerDriver(tls, [local_ip], handler, rejected)
        if self.draining:
            server.drain()
        self.servers.add(server)
        try:
            await server.serve()
        finally:
            self.servers.discard(server)

    def _on_malformed(self, pod: Pod, peer, peer_identity: SpiffeId, rejection: ConnectRejection) -> None:
        log.warning("pod %s: malformed CONNECT from %s (%s:%d) answered %d: %s", pod.key, peer_identity,
                    *peer, rejection.status, rejection.reason)

    async def _on_connect(self, pod: Pod, peer: tuple[str, int], peer_identity: SpiffeId,
                          request: IncomingConnect) -> None:
        target = request.target
        source_ip = peer[0]

        inbound = InboundRequest(pod.uid, pod.uid in self.pods.pods, (target.ip, target.port), source_ip,
                                 peer_identity, hbone=True)

        def decide():
            return decide_inbound(inbound, self.state)

        decision = decide()
        conn = self._inbound_connection(pod, "HBONE", target.forwarded_for or peer, (target.ip, target.port),
                                        peer_identity, decision, decide)
        with self.tracker.track(conn):
            if not decision.allowed:
                request.reject(decision.status)
                return
            try:
                with trio.fail_after(self.config.connect_timeout):
                    app = await connect_as_client(AppAddress(pod.netns_fd, pod.bypass, target.ip, target.port), source_ip)
            except (OSError, trio.TooSlowError) as exc:
                conn.fail(f"the app at {target.ip}:{target.port} did not accept: {_describe(exc)}")
                request.reject(503)
                return
            try:
                tunnel = request.accept()
            except trio.BrokenResourceError as exc:
                conn.fail(str(exc))
                await reset(app)
                return
            await _relay(conn, tunnel, app)

    # ------------------------------------------------------------ inbound plaintext (15006)

    async def _plaintext_inbound(self, pod: Pod, tsock, peer: tuple[str, int]) -> None:
        downstream = accepted_stream(tsock)
        ip, port = downstream.socket.getsockname()[:2]

        inbound = InboundRequest(pod.uid, pod.uid in self.pods.pods, (ip, port), peer[0], None, hbone=False)

        def decide():
            return decide_inbound(inbound, self.state)

        decision = decide()
        conn = self._inbound_connection(pod, "TCP", peer, (ip, port), None, decision, decide)
        with self.tracker.track(conn):
            if not decision.allowed:
                await reset(downstream)
                return
            try:
                with trio.fail_after(self.config.connect_timeout):
                    app = await connect_as_client(AppAddress(pod.netns_fd, pod.bypass, ip, port), peer[0])
            except (OSError, trio.TooSlowError) as exc:
                conn.fail(f"the app at {ip}:{port} did not accept: {_describe(exc)}")
                await reset(downstream)
                return
            await _relay(conn, downstream, app)

    def _inbound_connection(self, pod: Pod, protocol: str, source, destination, peer_identity, decision,
                            decide) -> Connection:
        source_workload = self.state.workload_by_ip(source[0])
        workload = self.state.workloads.get(pod.uid)
        own = self.pod_identity(pod)
        labels = tcp_labels(
            reporter="destination", source=source_workload,
            source_principal=str(peer_identity) if peer_identity else None, destination=workload,
            destination_principal=str(own), destination_service=None, mutual_tls=peer_identity is not None)

        def recheck():
            again = decide()
            return again.allowed, again.policy, again.reason

        return Connection(
            direction="inbound", pod=pod.key, protocol=protocol, source=tuple(source), destination=destination,
            source_workload=_key(source_workload), source_identity=peer_identity, destination_workload=pod.key,
            destination_identity=own, labels=labels, decision="allow" if decision.allowed else "deny",
            policy=decision.policy, reason=decision.reason, recheck=recheck)

    # ------------------------------------------------------------ what the admin port shows

    def ready(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining"
        identities = {self.pod_identity(pod) for pod in self.pods.pods.values()}
        missing = sorted(str(identity) for identity in identities if self.secrets.current(identity) is None)
        if missing:
            return False, f"waiting for certificates: {', '.join(missing)}"
        # The first view arrived before any pod was served; a later disconnect keeps the last view.
        return True, f"serving {len(self.pods.pods)} pod(s)"


async def _relay(conn: Connection, downstream, upstream) -> None:
    try:
        await relay(downstream, upstream, conn.counts)
    except trio.BrokenResourceError as exc:
        conn.error = str(exc)


def _key(workload) -> str | None:
    return f"{workload.namespace}/{workload.name}" if workload is not None else None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    return str(exc) or type(exc).__name__
