"""The ztunnel process's core: serves every pod the node agent hands over (DESIGN.md section 7).

Per pod, three accept loops, on the pod's listeners:

- 15001 outbound: the original destination is where the client was going; ``plan_outbound`` (pure)
  decides, and this module executes the plan, one ``match`` case per plan type: HBONE through the
  pool (client certificate of the pod's own identity, the server's SAN checked against the plan),
  plaintext passthrough, or a reset.
- 15008 HBONE: TLS with the pod's certificate, the client's chain and trust domain checked; each
  CONNECT becomes an ``InboundRequest`` decided by ``decide_inbound`` (pure) with the verified peer
  identity, then the app is dialled from the client's own IP and only then answered 200 (503 if the
  app refuses, 401 if denied).
- 15006 plaintext inbound: the same decision with no identity (STRICT's policy denies it).

What a pod can make ztunnel spend is bounded (``ztunnel.limits``): each accepted connection and
each CONNECT counts against its pod's and the node's connection bounds (over them: reset at once, or
503), a plaintext inbound connection ends when idle, an HBONE one that does not finish its handshake
and send a CONNECT in time is closed. A connection of a pod to one of ztunnel's own listeners in
that pod (a loop) is refused before anything is dialled.

Every connection is tracked for metrics, the access log, ``/config_dump`` and policy re-evaluation;
its record is built once, when it arrives (``ztunnel.connections``). State comes from discovery
(workloads, services, policies) and is swapped whole on each change.

The executor needs little of the world, each piece behind a small interface: the pods and their
networks (``ztunnel.pods.PodSource`` and ``ServedPod``: in production the node agent's pods, whose
sockets are made in their netns), the discovery view (``Discovery``) and the certificates
(``SecretManager``). So the same code runs in production and, over loopback sockets with a real CA,
TLS and HBONE, in an in-process test without root.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, assert_never

import trio

from bpf.capture import Slot
from ca.secrets import SecretManager
from hbone.connect import ConnectRejection
from hbone.driver import HboneRefused, HboneServerDriver, IncomingConnect
from hbone.pool import HbonePool
from hbone.relay import relay, reset
from hbone.tcp_stream import TcpStream
from hbone.tls import ContextCache, HboneTlsError, WorkloadCredentials, client_handshake, server_handshake
from hbone.tls_stream import TlsStream
from mesh.addresses import format_address
from mesh.api import workload_pb2 as wpb
from mesh.api.types import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL
from mesh.certs import CertificateError, CertifiedKey
from mesh.concurrency import accept_loop
from mesh.errors import describe
from mesh.identity import DEFAULT_TRUST_DOMAIN, ROOT_NAMESPACE, SpiffeId
from mesh.outbound import HboneToPod, HboneToWaypoint, Passthrough, Plan, Refuse, RoundRobin, plan_outbound
from mesh.peer_metadata import baggage_header, new_traceparent
from mesh.ports import ZTUNNEL_POD_PORTS
from mesh.proxy_state import ProxyState, identity_of, ip_text
from ztunnel.connections import AccessLog, Connection, ConnectionTracker, inbound_connection, outbound_connection
from ztunnel.inbound import InboundDecision, InboundRequest, decide_inbound
from ztunnel.limits import (
    HANDSHAKE_TIMEOUT,
    HBONE_HANDSHAKE_TIMEOUT,
    IDLE_CHECKS,
    MALFORMED_CONNECT,
    MAX_CONNECTIONS_PER_NODE,
    MAX_CONNECTIONS_PER_POD,
    PLAINTEXT_IDLE_TIMEOUT,
    TLS_HANDSHAKE,
    ConnectionBudget,
    RefusalLog,
    check_limits,
)
from ztunnel.metrics import ZtunnelMetrics
from ztunnel.pods import PodSource, ServedPod
from ztunnel.sockets import accepted_stream

if TYPE_CHECKING:  # dnspython (4 MiB) is loaded only by a ztunnel that runs the DNS proxy
    from ztunnel.dns_proxy import DnsProxy

log = logging.getLogger("ambient.ztunnel")


@dataclass(frozen=True)
class ZtunnelConfig:
    node: str
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    root_namespace: str = ROOT_NAMESPACE
    connect_timeout: float = 10.0  # TCP connect plus TLS handshake, and the app's connect
    certificate_timeout: float = 10.0  # how long a connection waits for its first certificate
    drain_timeout: float = 5.0  # SIGTERM: how long open connections may finish
    # What a pod can make ztunnel spend (ztunnel.limits says why each default has its value).
    max_connections_per_pod: int = MAX_CONNECTIONS_PER_POD
    max_connections_per_node: int = MAX_CONNECTIONS_PER_NODE
    hbone_handshake_timeout: float = HBONE_HANDSHAKE_TIMEOUT  # TLS handshake and first CONNECT on 15008
    plaintext_idle_timeout: float = PLAINTEXT_IDLE_TIMEOUT  # no byte either way on 15006 → closed

    def __post_init__(self) -> None:
        if not self.node:
            raise ValueError("the node name is required")
        for name in ("connect_timeout", "certificate_timeout", "drain_timeout", "hbone_handshake_timeout",
                     "plaintext_idle_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        check_limits(max_connections_per_pod=self.max_connections_per_pod,
                     max_connections_per_node=self.max_connections_per_node)


class Discovery(Protocol):
    """What the executor reads of discovery (``mesh.xds.client.DiscoveryClient``)."""

    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> None: ...

    def view(self, type_url: str) -> Mapping[str, Any]: ...

    @property
    def change_seq(self) -> int: ...

    @property
    def stale(self) -> bool:
        """Serving a view saved before a restart, not yet confirmed by the control plane."""
        ...

    async def wait_until(self, predicate: Callable[[], bool]) -> None: ...


class Ztunnel:
    def __init__(self, config: ZtunnelConfig, discovery: Discovery, secrets: SecretManager, pods: PodSource,
                 metrics: ZtunnelMetrics | None = None, access_log: AccessLog | None = None,
                 dns: DnsProxy | None = None) -> None:
        self.config = config
        self.discovery = discovery
        self.secrets = secrets
        self.metrics = metrics
        self.state = ProxyState.from_addresses({}, root_namespace=config.root_namespace)
        self.dns = dns  # its table of names is rebuilt with the state (``_apply_view``)
        self.contexts = ContextCache()
        self.balancer = RoundRobin()
        self.tracker = ConnectionTracker(metrics, access_log or AccessLog())
        # Open connections by pod: those its listeners accepted and its HBONE connections' CONNECTs.
        self.budget = ConnectionBudget(config.max_connections_per_pod, config.max_connections_per_node)
        self.refusals = RefusalLog(trio.current_time)
        self.pods = pods
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
                nursery.start_soon(self.pods.run, self._serve_pod)
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
        while True:
            await self._view_changed_after(self.discovery.change_seq)
            self._apply_view()
            self.tracker.reevaluate()

    async def _view_changed_after(self, seen: int) -> None:
        await self.discovery.wait_until(lambda: self.discovery.change_seq != seen)

    def _apply_view(self) -> None:
        self.state = ProxyState.from_addresses(dict(self.discovery.view(ADDRESS_TYPE_URL)),
                                               self.discovery.view(AUTHORIZATION_TYPE_URL),
                                               root_namespace=self.config.root_namespace)
        if self.dns is not None:
            from ztunnel.dns import DnsTable  # already loaded with the DNS proxy; only it needs dnspython

            self.dns.table = DnsTable.from_state(self.state)

    # ------------------------------------------------------------ pods

    def pod_identity(self, pod: ServedPod) -> SpiffeId:
        workload = self.state.workloads.get(pod.uid)
        if workload is not None:
            return identity_of(workload)
        return SpiffeId(self.config.trust_domain, pod.namespace, pod.service_account)

    async def _serve_pod(self, pod: ServedPod) -> None:
        identity = self.pod_identity(pod)
        self.secrets.prefetch(identity)
        handlers = {Slot.OUTBOUND: self._outbound, Slot.INBOUND: self._plaintext_inbound,
                    Slot.HBONE: self._hbone_inbound}
        try:
            async with trio.open_nursery() as connections:
                with self._accepting.setdefault(pod.uid, trio.CancelScope()) as accepting:
                    if self.draining:
                        accepting.cancel()
                    async with trio.open_nursery() as acceptors:
                        dns_listeners = getattr(pod, "dns_listeners", None)
                        if self.dns is not None and dns_listeners is not None:
                            udp, tcp = dns_listeners
                            acceptors.start_soon(functools.partial(
                                self.dns.serve, pod.key, pod.namespace, udp, tcp,
                                pod.dns_upstream_socket))  # type: ignore[attr-defined]
                        for slot, sock in pod.listeners.items():
                            listener = slot.name.lower()
                            acceptors.start_soon(self._accept, sock,
                                                 functools.partial(self._counted, pod, handlers[slot]),
                                                 functools.partial(self._admit, pod, listener),
                                                 connections, f"pod {pod.key} {listener}")
        finally:
            self._accepting.pop(pod.uid, None)
            self.refusals.forget(pod.key)
            self._forget_pod(pod, identity)

    def _forget_pod(self, pod: ServedPod, identity: SpiffeId) -> None:
        """The pod left: close its pooled connections (made in its netns), and drop its identity's
        certificate unless another pod served here still has that identity."""
        if self.pool is not None:
            self.pool.close_where(lambda key: isinstance(key, tuple) and key[0] == pod.uid, f"pod {pod.key} left")
        if not any(self.pod_identity(other) == identity for other in self.pods.pods.values() if other is not pod):
            self.secrets.forget(identity)
            self.contexts.forget(identity)
            self._credentials.pop(identity, None)

    @staticmethod
    async def _accept(sock, handle, admit, connections: trio.Nursery, what: str) -> None:
        with trio.socket.from_stdlib_socket(sock) as listener:  # closed when accepting stops: its SOCKMAP slot empties
            await accept_loop(listener, handle, connections, what, admit)

    # ------------------------------------------------------------ bounds (ztunnel.limits)

    def _admit(self, pod: ServedPod, listener: str, tsock, peer: tuple[str, int]) -> bool:
        """Count a connection ``listener`` accepted for ``pod``, or refuse it (the accept loop resets it)."""
        return self._within_budget(pod, listener, peer)

    def _within_budget(self, pod: ServedPod, listener: str, peer: tuple[str, int]) -> bool:
        reason = self.budget.acquire(pod.uid)
        if reason is None:
            return True
        self._refused(pod, listener, reason, f"{listener} connection from {format_address(*peer)}; "
                      f"{self.budget.held(pod.uid)} open for the pod (at most {self.budget.per_pod}), "
                      f"{self.budget.held()} for the node (at most {self.budget.per_node})")
        return False

    def _refused(self, pod: ServedPod, listener: str, reason: str, detail: str) -> None:
        if self.metrics is not None:
            self.metrics.refused(listener, reason)
        self.refusals.refused(pod.key, reason, detail)

    async def _counted(self, pod: ServedPod, handle, tsock, peer: tuple[str, int]) -> None:
        """Run ``handle`` for a connection ``_admit`` counted; it is given back when it ends. A bug that
        one connection runs into ends that connection, logged, never the pod's other connections."""
        try:
            stream = accepted_stream(tsock)
            try:
                await handle(pod, stream, peer)
            except Exception:
                log.exception("pod %s: the connection from %s:%d failed unexpectedly; the pod is served on",
                              pod.key, peer[0], peer[1])
                await reset(stream)  # the client knows at once
        finally:
            self.budget.release(pod.uid)

    async def certificate(self, identity: SpiffeId) -> WorkloadCredentials:
        with trio.fail_after(self.config.certificate_timeout):
            cert = await self.secrets.get(identity)
        held = self._credentials.get(identity)
        if held is None or held[0] is not cert:
            held = self._credentials[identity] = (cert, WorkloadCredentials.from_certified_key(cert))
        return held[1]

    # ------------------------------------------------------------ outbound (15001)

    async def _outbound(self, pod: ServedPod, downstream: TcpStream, client: tuple[str, int]) -> None:
        original = pod.original_destination(downstream)
        state = self.state
        source = state.workloads.get(pod.uid)
        plan: Plan = (plan_outbound(source, original, state, self.balancer) if source is not None
                      else Refuse(f"pod {pod.key} is not in the discovery view yet"))
        loop = _own_listener(pod, source, original, plan)
        if loop is not None:
            plan = Refuse(f"{format_address(*loop)} is ztunnel's own listener in pod {pod.key}: a loop")
        conn = outbound_connection(pod=pod.key, client=client, original=original, source=source,
                                   source_identity=self.pod_identity(pod), plan=plan, state=state)
        with self.tracker.track(conn):
            match plan:
                case Refuse():
                    conn.fail(plan.reason)
                    await reset(downstream)
                case Passthrough() | HboneToPod() | HboneToWaypoint():
                    upstream = await self._open_upstream(conn, pod, plan, client)
                    if upstream is None:
                        await reset(downstream)
                    else:
                        await _relay(conn, downstream, upstream)
                case _:
                    assert_never(plan)

    async def _open_upstream(self, conn: Connection, pod: ServedPod, plan: Passthrough | HboneToPod | HboneToWaypoint,
                             client: tuple[str, int]) -> trio.abc.HalfCloseableStream | None:
        """The upstream ``plan`` names, or None when it cannot be had (why: in ``conn``)."""
        try:
            match plan:
                case Passthrough():
                    with trio.fail_after(self.config.connect_timeout):
                        return await pod.connect_upstream(plan.address)
                case HboneToPod() | HboneToWaypoint():
                    return await self._open_tunnel(pod, plan, client)
                case _:
                    assert_never(plan)
        except HboneRefused as exc:  # 401: denied there; otherwise (503) it could not reach the app
            conn.fail(str(exc), denied=exc.status == 401, connect=exc.status != 401)
        except (OSError, trio.BrokenResourceError, trio.TooSlowError, HboneTlsError, CertificateError) as exc:
            conn.fail(f"cannot reach {format_address(*plan.address)}: {_describe(exc)}", connect=True)
        return None

    async def _open_tunnel(self, pod: ServedPod, plan: HboneToPod | HboneToWaypoint,
                           client: tuple[str, int]) -> trio.abc.HalfCloseableStream:
        assert self.pool is not None
        credentials = await self.certificate(self.pod_identity(pod))
        context = self.contexts.client(credentials)
        expected = frozenset(plan.expected_identities)

        async def dial() -> TlsStream:
            tcp = await pod.connect_upstream(plan.address)
            tls, _ = await client_handshake(tcp, context, expected)
            return tls

        # Istio's peer metadata (DESIGN.md 6): the source workload, for the waypoint's and the far
        # ztunnel's labels when they cannot look the source up; a new trace per connection.
        source = self.state.workloads.get(pod.uid)
        baggage = baggage_header(source) if source is not None else None
        with trio.fail_after(2 * self.config.connect_timeout):  # the handshake, then the far side's dial
            return await self.pool.open_stream((pod.uid, expected, plan.address), dial, plan.authority, client,
                                               baggage, new_traceparent())

    # ------------------------------------------------------------ inbound HBONE (15008)

    async def _hbone_inbound(self, pod: ServedPod, stream: TcpStream, peer: tuple[str, int]) -> None:
        local_ip = pod.original_destination(stream)[0]
        try:
            credentials = await self.certificate(self.pod_identity(pod))
        except (CertificateError, trio.TooSlowError) as exc:
            log.warning("pod %s: HBONE connection from %s refused: %s", pod.key, format_address(*peer),
                        _describe(exc))
            await trio.aclose_forcefully(stream)
            return
        # From here the peer has hbone_handshake_timeout for its TLS handshake and its first CONNECT.
        deadline = trio.current_time() + self.config.hbone_handshake_timeout
        try:
            with trio.fail_at(deadline):
                tls, peer_identity = await server_handshake(stream, self.contexts.server(credentials),
                                                            self.config.trust_domain)
        except trio.TooSlowError:
            self._handshake_timed_out(pod, peer, "no TLS handshake")
            await trio.aclose_forcefully(stream)
            return
        except HboneTlsError as exc:
            self._refused(pod, "hbone", TLS_HANDSHAKE, f"from {format_address(*peer)}: {_describe(exc)}")
            await trio.aclose_forcefully(stream)
            return
        first_connect = trio.Event()
        handler = functools.partial(self._on_connect, pod, peer, peer_identity, first_connect)
        rejected = functools.partial(self._on_malformed, pod, peer, peer_identity)
        server = HboneServerDriver(tls, [local_ip], handler, rejected)
        if self.draining:
            server.drain()
        self.servers.add(server)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._close_without_connect, pod, peer, server, first_connect, deadline)
                await server.serve()
                nursery.cancel_scope.cancel()
        finally:
            self.servers.discard(server)

    async def _close_without_connect(self, pod: ServedPod, peer: tuple[str, int], server: HboneServerDriver,
                                     first_connect: trio.Event, deadline: float) -> None:
        """Close ``server``'s connection unless its first CONNECT arrives by ``deadline``."""
        with trio.move_on_at(deadline):
            await first_connect.wait()
            return
        self._handshake_timed_out(pod, peer, "no CONNECT")
        server.close(f"no CONNECT within {self.config.hbone_handshake_timeout:g} s")

    def _handshake_timed_out(self, pod: ServedPod, peer: tuple[str, int], what: str) -> None:
        self._refused(pod, "hbone", HANDSHAKE_TIMEOUT, f"{what} from {format_address(*peer)} within "
                      f"{self.config.hbone_handshake_timeout:g} s")

    def _on_malformed(self, pod: ServedPod, peer: tuple[str, int], peer_identity: SpiffeId,
                      rejection: ConnectRejection) -> None:
        self._refused(pod, "hbone", MALFORMED_CONNECT, f"from {peer_identity} ({format_address(*peer)}), "
                      f"answered {rejection.status}: {rejection.reason}")

    async def _on_connect(self, pod: ServedPod, peer: tuple[str, int], peer_identity: SpiffeId,
                          first_connect: trio.Event, request: IncomingConnect) -> None:
        first_connect.set()
        # Each CONNECT holds a connection to the app: it counts against the pod's bounds as its own.
        if not self._within_budget(pod, "hbone", peer):
            request.reject(503)
            return
        try:
            await self._serve_connect(pod, peer, peer_identity, request)
        finally:
            self.budget.release(pod.uid)

    async def _serve_connect(self, pod: ServedPod, peer: tuple[str, int], peer_identity: SpiffeId,
                             request: IncomingConnect) -> None:
        target = request.target
        inbound = InboundRequest(pod.uid, pod.uid in self.pods.pods, (target.ip, target.port), peer[0],
                                 peer_identity, hbone=True)
        decision, conn = self._decide_inbound(pod, inbound, target.forwarded_for or peer)
        with self.tracker.track(conn):
            if not decision.allowed:
                request.reject(decision.status)
                return
            try:
                with trio.fail_after(self.config.connect_timeout):
                    app = await pod.connect_app(inbound.destination, peer[0])
            except (OSError, trio.TooSlowError) as exc:
                conn.fail(f"the app at {format_address(*inbound.destination)} did not accept: {_describe(exc)}",
                          connect=True)
                request.reject(503)
                return
            except trio.Cancelled:
                if request.stream.error is not None:  # the driver cancels the dial of a stream the client reset
                    conn.fail(f"the client gave up before the app accepted ({request.stream.error})")
                raise
            try:
                tunnel = request.accept()
            except trio.BrokenResourceError as exc:
                conn.fail(str(exc))
                await reset(app)
                return
            await _relay(conn, tunnel, app)

    # ------------------------------------------------------------ inbound plaintext (15006)

    async def _plaintext_inbound(self, pod: ServedPod, downstream: TcpStream, peer: tuple[str, int]) -> None:
        inbound = InboundRequest(pod.uid, pod.uid in self.pods.pods, pod.original_destination(downstream), peer[0],
                                 None, hbone=False)
        decision, conn = self._decide_inbound(pod, inbound, peer)
        with self.tracker.track(conn):
            if not decision.allowed:
                await reset(downstream)
                return
            try:
                with trio.fail_after(self.config.connect_timeout):
                    app = await pod.connect_app(inbound.destination, peer[0])
            except (OSError, trio.TooSlowError) as exc:
                conn.fail(f"the app at {format_address(*inbound.destination)} did not accept: {_describe(exc)}",
                          connect=True)
                await reset(downstream)
                return
            await _relay(conn, downstream, app, idle_timeout=self.config.plaintext_idle_timeout)

    def _decide_inbound(self, pod: ServedPod, inbound: InboundRequest,
                        client: tuple[str, int]) -> tuple[InboundDecision, Connection]:
        """Decide ``inbound`` and record it; the record decides again, under the state of the day,
        whenever the view changes."""
        state = self.state
        decision = decide_inbound(inbound, state)
        conn = inbound_connection(pod=pod.key, client=client, request=inbound, own_identity=self.pod_identity(pod),
                                  decision=decision, state=state)

        def recheck() -> tuple[bool, str | None, str]:
            again = decide_inbound(inbound, self.state)
            return again.allowed, again.policy, again.reason

        conn.recheck = recheck
        return decision, conn

    # ------------------------------------------------------------ what the admin port shows

    def ready(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining"
        identities = {self.pod_identity(pod) for pod in self.pods.pods.values()}
        missing = sorted(str(identity) for identity in identities if self.secrets.current(identity) is None)
        if missing:
            return False, f"waiting for certificates: {', '.join(missing)}"
        # The first view arrived before any pod was served; a later disconnect keeps the last view.
        if self.discovery.stale:  # serving, from what was saved before a restart (--state-dir)
            return True, f"serving {len(self.pods.pods)} pod(s) with stale config: the view saved before this " \
                         "restart, until the control plane answers"
        return True, f"serving {len(self.pods.pods)} pod(s)"


async def _relay(conn: Connection, downstream: trio.abc.HalfCloseableStream,
                 upstream: trio.abc.HalfCloseableStream, *, idle_timeout: float | None = None) -> None:
    """Relay until both directions end; with an ``idle_timeout``, or until no byte moved either way
    for that long (both sides are reset)."""
    async with trio.open_nursery() as nursery:
        if idle_timeout is not None:
            nursery.start_soon(_close_when_idle, conn, idle_timeout, nursery.cancel_scope)
        try:
            await relay(downstream, upstream, conn.counts)
        except trio.BrokenResourceError as exc:
            conn.error = str(exc)
        nursery.cancel_scope.cancel()


async def _close_when_idle(conn: Connection, timeout: float, relaying: trio.CancelScope) -> None:
    """Cancel ``relaying`` once ``conn``'s byte counts have not moved for ``timeout`` seconds (looked
    at IDLE_CHECKS times per timeout: closed after between 1 and 1 + 1/IDLE_CHECKS timeouts)."""
    seen = (conn.counts.sent, conn.counts.received)
    quiet_since = trio.current_time()
    while True:
        await trio.sleep(timeout / IDLE_CHECKS)
        now = (conn.counts.sent, conn.counts.received)
        if now != seen:
            seen, quiet_since = now, trio.current_time()
        elif trio.current_time() - quiet_since >= timeout:
            conn.error = f"closed: idle for {timeout:g} s (no byte either way)"
            relaying.cancel()
            return


def _own_listener(pod: ServedPod, source: wpb.Workload | None, original: tuple[str, int],
                  plan: Plan) -> tuple[str, int] | None:
    """The address among where ``plan`` sends a connection of ``pod`` that is one of ztunnel's own
    listeners in the pod (its IP, a port of ``ZTUNNEL_POD_PORTS``), if one is: dialling it would come
    back into ztunnel (a forwarding loop), so the executor refuses it before any dial. The far
    side's ztunnel refuses such a CONNECT too (``decide_inbound``); here it costs no dial at all."""
    if source is None:
        return None
    own_ips = {ip for ip in map(ip_text, source.addresses) if ip}
    targets = [original]
    match plan:
        case Passthrough():
            targets.append(plan.address)
        case HboneToPod() if plan.workload_uid == pod.uid:
            host, _, port = plan.authority.rpartition(":")
            if port.isdigit():
                targets.append((host.strip("[]"), int(port)))
        case _:
            pass
    return next((target for target in targets if target[0] in own_ips and target[1] in ZTUNNEL_POD_PORTS), None)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "timed out"  # its own message is empty; the access log says what happened
    return describe(exc)
