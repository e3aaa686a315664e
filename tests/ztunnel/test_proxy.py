"""The executor (ztunnel/proxy.py) in process, without root: real certificates from an in-memory
mesh CA, real TLS 1.3 and real HBONE, over loopback sockets.

Production makes each pod's sockets inside its netns and reaches its app through the capture's
bypass map (``ztunnel.pods.Pod``). Here every pod is a ``LoopbackPod``: its IP is an address of
127.0.0.0/8 (every one of which is local), its three listeners listen there on ports of the
kernel's choosing, and ``Loopback`` plays the node's network: ``routes`` says where a pod's
well-known address (its HBONE port 15008, its app's port) really listens, ``captured`` what each
client of a pod was dialling (what sk_lookup keeps as the accepted socket's local address). A
connection out of a pod leaves from the pod's IP, a connection to an app from the client's own IP,
as in production, so the far side sees who is connecting.

The discovery view is what the control plane sends for a small Kubernetes world (the pipeline of
tests/ztunnel/worlds.py), and one ztunnel serves the three pods of the node: client, web-0 and db.
The waypoint of db is a stand-in HBONE server with the waypoint's certificate; a "remote ztunnel"
is an ``HboneClientDriver`` with a certificate of its own. Every test reads what a user reads: the
bytes the apps exchange, who the apps saw connecting, the access log and the metrics.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import pytest
import trio

from bpf.capture import Slot
from ca.authority import SigningAuthority
from ca.secrets import SecretManager
from hbone.connect import ConnectTarget
from hbone.driver import HboneClientDriver, HboneRefused, HboneServerDriver, IncomingConnect
from hbone.tcp_stream import TcpStream
from hbone.tls import client_context, client_handshake, server_context, server_handshake
from mesh.identity import SpiffeId
from mesh.peer_metadata import Baggage, parse_baggage
from mesh.ports import HBONE_PORT
from tests.ztunnel.pki import TD, certified, creds
from tests.ztunnel.test_metrics import samples
from tests.ztunnel.worlds import WAYPOINT_PODS, discovery_view, uid
from ztunnel.connections import AccessLog
from ztunnel.metrics import ZtunnelMetrics
from ztunnel.pods import ServedPod
from ztunnel.proxy import Ztunnel, ZtunnelConfig
from ztunnel.sockets import connect

# ---------------------------------------------------------------- the world

IPS = {"shop/client": "127.0.0.10", "shop/web-0": "127.0.0.11", "shop/db": "127.0.0.20",
       "shop/impostor": "127.0.0.30", "shop/wp-waypoint": "127.0.0.50"}
VIPS = {"shop/wp": "10.96.0.99", "shop/web": "10.96.0.11"}
CLIENT_IP, WEB_IP, DB_IP, WAYPOINT_IP = IPS["shop/client"], IPS["shop/web-0"], IPS["shop/db"], IPS["shop/wp-waypoint"]
OFF_MESH_IP = "127.0.0.99"
WEB_VIP = VIPS["shop/web"]
APP_PORT = 8080  # where web-0's app listens (behind the route)
DENIED_PORT = 9090  # web-0's port that a DENY policy closes
DEAD_PORT = 7070  # web-0's port where nothing listens
WEB_SERVICE = "shop/web.shop.svc.cluster.local"

# The shared waypoint world (db's traffic goes through the waypoint wp), a Service in front of web-0,
# and an L4 DENY of web-0's port 9090.
WORLD = WAYPOINT_PODS + """---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin-port, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules: [{to: [{operation: {ports: ["9090"]}}]}]
"""
# The same, with a second DENY that closes web-0's app port too.
WORLD_APP_DENIED = WORLD + """---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-app-port, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules: [{to: [{operation: {ports: ["8080"]}}]}]
"""


def spiffe(account: str) -> SpiffeId:
    return SpiffeId(TD, "shop", account)


CLIENT, WEB, DB, WAYPOINT = spiffe("client"), spiffe("web"), spiffe("db"), spiffe("wp")


@pytest.fixture(scope="module")
def authority() -> SigningAuthority:
    return SigningAuthority.self_signed(TD)


# ---------------------------------------------------------------- the node, over loopback


@dataclass
class Loopback:
    """The node's network as the pods see it."""

    routes: dict[tuple[str, int], tuple[str, int]] = field(default_factory=dict)  # well-known → real address
    captured: dict[tuple[str, int], tuple[str, int]] = field(default_factory=dict)  # client → what it dialled

    def route(self, address: tuple[str, int]) -> tuple[str, int]:
        return self.routes.get(address, address)


def _listening(ip: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.bind((ip, 0))
    sock.listen(64)
    return sock


async def _dial(source_ip: str, address: tuple[str, int]) -> TcpStream:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.bind((source_ip, 0))
    return await connect(sock, address)


class LoopbackPod:
    """A ``ServedPod`` whose network is loopback: what the executor needs, without a netns."""

    def __init__(self, net: Loopback, key: str, service_account: str) -> None:
        self.namespace, self.name = key.split("/")
        self.uid = uid(key)
        self.service_account = service_account
        self.ip = IPS[key]
        self._net = net
        self.listeners: dict[Slot, socket.socket] = {slot: _listening(self.ip) for slot in Slot}
        net.routes[(self.ip, HBONE_PORT)] = self.address(Slot.HBONE)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def address(self, slot: Slot) -> tuple[str, int]:
        return self.listeners[slot].getsockname()[:2]

    def original_destination(self, accepted: TcpStream) -> tuple[str, int]:
        client = accepted.socket.getpeername()[:2]
        return self._net.captured.get(client) or accepted.socket.getsockname()[:2]

    async def connect_upstream(self, address: tuple[str, int]) -> TcpStream:
        return await _dial(self.ip, self._net.route(address))

    async def connect_app(self, app: tuple[str, int], client_ip: str) -> TcpStream:
        return await _dial(client_ip, self._net.route(app))

    def close(self) -> None:
        for sock in self.listeners.values():
            sock.close()


class StaticPods:
    """A ``PodSource`` that serves the pods it was given, until cancelled."""

    def __init__(self, pods: list[LoopbackPod]) -> None:
        self.pods: Mapping[str, LoopbackPod] = {pod.uid: pod for pod in pods}

    async def run(self, serve: Callable[[ServedPod], Awaitable[None]]) -> None:
        async with trio.open_nursery() as nursery:
            for pod in self.pods.values():
                nursery.start_soon(serve, pod)


class StaticDiscovery:
    """A ``Discovery`` whose view the test sets (``publish``), as a control plane pushes one."""

    def __init__(self, docs: str) -> None:
        self._view = self._resolve(docs)
        self.change_seq = 0
        self.stale = False  # True: as if restored from a view saved before a restart
        self._changed = trio.Event()

    @staticmethod
    def _resolve(docs: str) -> dict[str, dict]:
        return discovery_view(docs, IPS, VIPS)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    def view(self, type_url: str) -> Mapping[str, object]:
        return self._view.get(type_url, {})

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._changed.wait()

    def publish(self, docs: str) -> None:
        self._view = self._resolve(docs)
        self.change_seq += 1
        self._changed.set()
        self._changed = trio.Event()


@dataclass
class Node:
    """One ztunnel serving client, web-0 and db, and what the test reads back."""

    ztunnel: Ztunnel
    discovery: StaticDiscovery
    net: Loopback
    pods: dict[str, LoopbackPod]
    nursery: trio.Nursery
    metrics: ZtunnelMetrics
    out: io.StringIO

    def log(self) -> list[dict]:
        return [json.loads(line) for line in self.out.getvalue().splitlines()]

    def counted(self, name: str, **labels: str) -> float:
        """The sum of ``istio_tcp_<name>_total`` over the series with these labels."""
        return sum(value for (sample, pairs), value in samples(self.metrics).items()
                   if sample == f"istio_tcp_{name}_total" and labels.items() <= dict(pairs).items())

    async def settled(self) -> None:
        """Every connection has ended (and been logged and counted)."""
        with trio.fail_after(5):
            await self.ztunnel.tracker.wait_empty()

    async def app_connects(self, pod: str, destination: tuple[str, int]) -> trio.SocketStream:
        """The app of ``pod`` connects to ``destination``; capture brings it to the pod's 15001."""
        return await self._captured(IPS[pod], self.pods[pod].address(Slot.OUTBOUND), destination)

    async def plaintext_to(self, source_ip: str, pod: str, port: int) -> trio.SocketStream:
        """A client outside the mesh connects to ``pod:port``; capture brings it to the pod's 15006."""
        return await self._captured(source_ip, self.pods[pod].address(Slot.INBOUND), (IPS[pod], port))

    async def _captured(self, source_ip: str, listener: tuple[str, int],
                        destination: tuple[str, int]) -> trio.SocketStream:
        sock = trio.socket.socket()
        await sock.bind((source_ip, 0))
        self.net.captured[sock.getsockname()[:2]] = destination
        await sock.connect(listener)
        return trio.SocketStream(sock)


@contextlib.asynccontextmanager
async def node(authority: SigningAuthority, **config: object) -> AsyncIterator[Node]:
    """One ztunnel serving the three pods; ``config`` overrides fields of its ``ZtunnelConfig``."""
    net = Loopback()
    pods = {key: LoopbackPod(net, key, account) for key, account in
            (("shop/client", "client"), ("shop/web-0", "web"), ("shop/db", "db"))}

    async def fetch(identity: SpiffeId):
        return certified(authority, identity)

    discovery = StaticDiscovery(WORLD)
    metrics, out = ZtunnelMetrics(build_tag="test"), io.StringIO()
    settings: dict = {"node": "node-a", "connect_timeout": 5.0, **config}
    ztunnel = Ztunnel(ZtunnelConfig(**settings), discovery, SecretManager(fetch),
                      StaticPods(list(pods.values())), metrics, AccessLog(out))
    try:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(5):
                await nursery.start(ztunnel.run)
            yield Node(ztunnel, discovery, net, pods, nursery, metrics, out)
            nursery.cancel_scope.cancel()
    finally:
        for pod in pods.values():
            pod.close()


# ---------------------------------------------------------------- apps and peers


@dataclass
class App:
    """An echo server; ``peers`` are the addresses its clients came from."""

    address: tuple[str, int]
    peers: list[tuple[str, int]] = field(default_factory=list)


async def echo_app(nursery: trio.Nursery, ip: str) -> App:
    async def handle(stream: trio.SocketStream) -> None:
        app.peers.append(stream.socket.getpeername()[:2])
        with contextlib.suppress(trio.BrokenResourceError):
            while data := await stream.receive_some():
                await stream.send_all(data)
            await stream.send_eof()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handle, 0, host=ip))
    app = App(listeners[0].socket.getsockname()[:2])
    return app


async def web_app(mesh: Node) -> App:
    """web-0's app, reached at (web-0, 8080) and at the port policy denies (9090), so that a denied
    connection the proxy let through would show in ``peers``; web-0's port 7070 refuses connections."""
    app = await echo_app(mesh.nursery, WEB_IP)
    mesh.net.routes[(WEB_IP, APP_PORT)] = mesh.net.routes[(WEB_IP, DENIED_PORT)] = app.address
    refusing = socket.socket()
    refusing.bind((WEB_IP, 0))  # bound, never listening: a connect is refused at once
    mesh.nursery.start_soon(_close_when_cancelled, refusing)
    mesh.net.routes[(WEB_IP, DEAD_PORT)] = refusing.getsockname()[:2]
    return app


async def _close_when_cancelled(sock: socket.socket) -> None:
    with sock:
        await trio.sleep_forever()


async def round_trip(stream: trio.abc.HalfCloseableStream, payload: bytes = b"hello through the mesh") -> bytes:
    """Send ``payload``, half-close, and read until the other side ends: what came back."""
    with trio.fail_after(5):
        await stream.send_all(payload)
        await stream.send_eof()
        got = b""
        while data := await stream.receive_some():
            got += data
    await stream.aclose()
    return got


async def assert_reset(stream: trio.SocketStream) -> None:
    """The proxy closed the connection with a reset, not a clean end."""
    with trio.fail_after(5), pytest.raises(trio.BrokenResourceError):
        while await stream.receive_some():
            pass
        raise AssertionError("the connection ended cleanly instead of being reset")
    await stream.aclose()


@contextlib.asynccontextmanager
async def remote_ztunnel(authority: SigningAuthority, identity: SpiffeId, source_ip: str, pod: LoopbackPod,
                         expect: SpiffeId) -> AsyncIterator[HboneClientDriver]:
    """An HBONE connection to ``pod``'s 15008 from another node's ztunnel, with ``identity``."""
    sock = trio.socket.socket()
    await sock.bind((source_ip, 0))
    await sock.connect(pod.address(Slot.HBONE))
    with trio.fail_after(5):
        tls, server = await client_handshake(trio.SocketStream(sock), client_context(creds(authority, identity)),
                                             frozenset({expect}))
    assert server == expect
    driver = HboneClientDriver(tls)
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run)
        yield driver
        driver.close()


@dataclass
class Waypoint:
    """db's waypoint: an HBONE server with the waypoint's certificate that records each CONNECT and
    echoes it (the L7 proxy's own routing is not ztunnel's business)."""

    connects: list[tuple[SpiffeId, str, int, tuple[str, int] | None]] = field(default_factory=list)
    targets: list[ConnectTarget] = field(default_factory=list)  # each CONNECT's target, with its headers


async def waypoint(mesh: Node, authority: SigningAuthority) -> Waypoint:
    seen = Waypoint()
    context = server_context(creds(authority, WAYPOINT))

    async def handle_connect(peer: SpiffeId, request: IncomingConnect) -> None:
        target = request.target
        seen.connects.append((peer, target.ip, target.port, target.forwarded_for))
        seen.targets.append(target)
        async with request.accept() as tunnel:
            with contextlib.suppress(trio.BrokenResourceError):
                while data := await tunnel.receive_some():
                    await tunnel.send_all(data)
                await tunnel.send_eof()

    async def handle(stream: trio.SocketStream) -> None:
        tls, peer = await server_handshake(stream, context, TD)
        await HboneServerDriver(tls, [DB_IP, WEB_VIP], lambda request: handle_connect(peer, request)).serve()

    listeners = await mesh.nursery.start(functools.partial(trio.serve_tcp, handle, 0, host=WAYPOINT_IP))
    mesh.net.routes[(WAYPOINT_IP, HBONE_PORT)] = listeners[0].socket.getsockname()[:2]
    return seen


def only(lines: list[dict], **fields: object) -> dict:
    """The one log line with these fields."""
    found = [line for line in lines if fields.items() <= line.items()]
    assert len(found) == 1, (fields, lines)
    return found[0]


# ---------------------------------------------------------------- outbound


async def test_outbound_to_a_pod_goes_over_hbone_to_its_ztunnel_and_the_app_sees_the_client(authority):
    async with node(authority) as mesh:
        app = await web_app(mesh)
        client = await mesh.app_connects("shop/client", (WEB_IP, APP_PORT))
        assert await round_trip(client) == b"hello through the mesh"
        await mesh.settled()
    assert [ip for ip, _ in app.peers] == [CLIENT_IP]  # from the client's own address, not ztunnel's
    lines = mesh.log()
    outbound = only(lines, direction="outbound")
    assert {k: outbound[k] for k in ("message", "protocol", "src.workload", "src.namespace", "src.identity",
                                     "dst.addr", "dst.hbone_addr", "dst.workload", "dst.namespace", "dst.identity",
                                     "bytes_sent", "bytes_recv")} == {
        "message": "connection complete", "protocol": "HBONE", "src.workload": "client", "src.namespace": "shop",
        "src.identity": str(CLIENT), "dst.addr": f"{WEB_IP}:15008", "dst.hbone_addr": f"{WEB_IP}:{APP_PORT}",
        "dst.workload": "web-0", "dst.namespace": "shop", "dst.identity": str(WEB), "bytes_sent": 22,
        "bytes_recv": 22}
    assert re.fullmatch(r"\d+ms", outbound["duration"])
    inbound = only(lines, direction="inbound")
    assert {k: inbound[k] for k in ("message", "protocol", "src.workload", "src.identity", "dst.addr",
                                    "dst.hbone_addr", "dst.workload", "decision")} == {
        "message": "connection complete", "protocol": "HBONE", "src.workload": "client",
        "src.identity": str(CLIENT), "dst.addr": f"{WEB_IP}:{APP_PORT}", "dst.hbone_addr": f"{WEB_IP}:{APP_PORT}",
        "dst.workload": "web-0", "decision": "allow"}
    assert inbound["src.addr"] == outbound["src.addr"]  # the client's address, forwarded in the CONNECT
    for reporter in ("source", "destination"):
        labels = dict(reporter=reporter, source_workload="client", destination_workload="web-0",
                      source_principal=str(CLIENT), destination_principal=str(WEB),
                      connection_security_policy="mutual_tls")
        assert mesh.counted("connections_opened", **labels) == mesh.counted("connections_closed", **labels) == 1
        assert mesh.counted("received_bytes", **labels) == mesh.counted("sent_bytes", **labels) == 22


async def test_outbound_to_a_service_vip_reaches_an_endpoint_on_its_target_port(authority):
    async with node(authority) as mesh:
        app = await web_app(mesh)
        client = await mesh.app_connects("shop/client", (WEB_VIP, 80))
        assert await round_trip(client, b"via the VIP") == b"via the VIP"
        await mesh.settled()
    assert [ip for ip, _ in app.peers] == [CLIENT_IP]
    outbound = only(mesh.log(), direction="outbound")
    assert (outbound["dst.hbone_addr"], outbound["dst.service"], outbound["dst.workload"]) == (
        f"{WEB_IP}:{APP_PORT}", "web.shop.svc.cluster.local", "web-0")
    # Both reporters name the service: the destination guesses it from the port its app was asked on.
    for reporter in ("source", "destination"):
        assert mesh.counted("connections_opened", reporter=reporter, destination_service="web.shop.svc.cluster.local",
                            destination_service_name="web", destination_service_namespace="shop") == 1


async def test_outbound_to_a_pod_with_a_waypoint_goes_to_the_waypoint(authority):
    async with node(authority) as mesh:
        seen = await waypoint(mesh, authority)
        client = await mesh.app_connects("shop/client", (DB_IP, APP_PORT))
        assert await round_trip(client, b"through the waypoint") == b"through the waypoint"
        await mesh.settled()
    # The waypoint verified the client pod's own identity and was asked for the ORIGINAL destination.
    ((peer, ip, port, forwarded),) = seen.connects
    assert (peer, ip, port) == (CLIENT, DB_IP, APP_PORT)
    assert forwarded is not None and forwarded[0] == CLIENT_IP
    outbound = only(mesh.log(), direction="outbound")
    assert (outbound["message"], outbound["protocol"], outbound["dst.workload"], outbound["dst.identity"]) == (
        "connection complete", "HBONE", "db", str(WAYPOINT))


async def test_hbone_connects_carry_the_source_as_baggage_and_a_new_trace_each(authority):
    async with node(authority) as mesh:
        seen = await waypoint(mesh, authority)
        for _ in range(2):
            client = await mesh.app_connects("shop/client", (DB_IP, APP_PORT))
            assert await round_trip(client, b"x") == b"x"
        await mesh.settled()
    first, second = seen.targets
    assert parse_baggage(first.baggage) == Baggage(cluster="Kubernetes", namespace="shop", workload_name="client",
                                                   service_name="client", revision="latest")
    assert first.baggage is not None and "k8s.pod.name=client" in first.baggage.split(",")  # a bare pod
    for target in (first, second):
        assert target.traceparent is not None
        assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-00", target.traceparent)
    assert first.traceparent.split("-")[1] != second.traceparent.split("-")[1]  # one trace per connection


async def test_outbound_to_an_address_outside_the_mesh_passes_through_in_plaintext(authority):
    async with node(authority) as mesh:
        outside = await echo_app(mesh.nursery, OFF_MESH_IP)
        client = await mesh.app_connects("shop/client", outside.address)
        assert await round_trip(client, b"plain") == b"plain"
        await mesh.settled()
    assert [ip for ip, _ in outside.peers] == [CLIENT_IP]  # from the pod's address
    outbound = only(mesh.log(), direction="outbound")
    assert (outbound["message"], outbound["protocol"], outbound["dst.addr"]) == (
        "connection complete", "TCP", f"{OFF_MESH_IP}:{outside.address[1]}")
    assert "dst.identity" not in outbound and "dst.workload" not in outbound
    assert "dst.hbone_addr" not in outbound and "src.identity" not in outbound  # plaintext proves no identity
    assert mesh.counted("connections_opened", reporter="source", connection_security_policy="unknown") == 1


async def test_outbound_the_plan_refuses_is_reset(authority):
    async with node(authority) as mesh:
        app = await web_app(mesh)
        client = await mesh.app_connects("shop/client", (WEB_VIP, 81))  # a port the Service does not have
        await assert_reset(client)
        await mesh.settled()
    assert app.peers == []
    outbound = only(mesh.log(), direction="outbound")
    assert (outbound["message"], outbound["error"]) == ("connection failed", f"service {WEB_SERVICE} has no port 81")


async def test_outbound_the_far_side_denies_is_reset_and_logged_denied(authority):
    async with node(authority) as mesh:
        app = await web_app(mesh)
        client = await mesh.app_connects("shop/client", (WEB_IP, DENIED_PORT))
        await assert_reset(client)
        await mesh.settled()
    assert app.peers == []
    lines = mesh.log()
    outbound = only(lines, direction="outbound")
    assert (outbound["message"], outbound["decision"], outbound["error"]) == (
        "connection denied", "deny", "HBONE CONNECT refused with 401")
    inbound = only(lines, direction="inbound")
    assert (inbound["message"], inbound["policy"], inbound["reason"]) == (
        "connection denied", "shop/deny-admin-port", "denied by DENY policy shop/deny-admin-port")
    # Both sides count it opened, then closed with DENY; neither as a failed connect.
    for reporter in ("source", "destination"):
        assert mesh.counted("connections_opened", reporter=reporter, response_flags="-") == 1
        assert mesh.counted("connections_closed", reporter=reporter, response_flags="DENY") == 1
        assert mesh.counted("connections_closed", reporter=reporter) == 1
    assert mesh.counted("connections_failed") == 0


async def test_outbound_to_an_unreachable_address_is_reset_with_the_reason(authority):
    async with node(authority) as mesh:
        refusing = socket.socket()
        refusing.bind((OFF_MESH_IP, 0))  # bound, not listening
        with refusing:
            client = await mesh.app_connects("shop/client", refusing.getsockname()[:2])
            await assert_reset(client)
            await mesh.settled()
    outbound = only(mesh.log(), direction="outbound")
    assert outbound["message"] == "connection failed"
    assert mesh.counted("connections_closed", reporter="source", response_flags="CONNECT") == 1
    assert mesh.counted("connections_failed", reporter="source", response_flags="CONNECT") == 1
    assert outbound["error"].startswith(f"cannot reach {OFF_MESH_IP}:")
    assert "refused" in outbound["error"].lower()


# ---------------------------------------------------------------- inbound HBONE


async def test_inbound_allowed_connect_reaches_the_app_from_the_peers_address(authority):
    async with node(authority) as mesh:
        app = await web_app(mesh)
        async with remote_ztunnel(authority, CLIENT, CLIENT_IP, mesh.pods["shop/web-0"], WEB) as far:
            tunnel = await far.open(f"{WEB_IP}:{APP_PORT}", (CLIENT_IP, 40000))
            assert await round_trip(tunnel, b"inbound") == b"inbound"
            await mesh.settled()
    assert [ip for ip, _ in app.peers] == [CLIENT_IP]
    inbound = only(mesh.log(), direction="inbound")
    assert {k: inbound[k] for k in ("message", "src.addr", "src.workload", "src.identity", "dst.identity",
                                    "decision", "reason")} == {
        "message": "connection complete", "src.addr": f"{CLIENT_IP}:40000", "src.workload": "client",
        "src.identity": str(CLIENT), "dst.identity": str(WEB), "decision": "allow", "reason": "no ALLOW policies"}


async def test_inbound_denied_by_policy_is_401_and_never_reaches_the_app(authority):
    async with node(authority) as mesh:
        app = await web_app(mesh)
        async with remote_ztunnel(authority, CLIENT, CLIENT_IP, mesh.pods["shop/web-0"], WEB) as far:
            with pytest.raises(HboneRefused) as refused:
                await far.open(f"{WEB_IP}:{DENIED_PORT}", (CLIENT_IP, 40000))
            assert refused.value.status == 401
            await mesh.settled()
    assert app.peers == []
    inbound = only(mesh.log(), direction="inbound")
    assert (inbound["message"], inbound["decision"], inbound["policy"]) == (
        "connection denied", "deny", "shop/deny-admin-port")
    assert mesh.counted("connections_opened", reporter="destination", response_flags="-") == 1  # as Istio's ztunnel
    assert mesh.counted("connections_closed", reporter="destination", response_flags="DENY") == 1


async def test_inbound_to_a_pod_with_a_waypoint_from_elsewhere_is_401(authority):
    async with node(authority) as mesh:
        async with remote_ztunnel(authority, CLIENT, CLIENT_IP, mesh.pods["shop/db"], DB) as far:
            with pytest.raises(HboneRefused) as refused:
                await far.open(f"{DB_IP}:{APP_PORT}", None)
            assert refused.value.status == 401
            await mesh.settled()
    inbound = only(mesh.log(), direction="inbound")
    assert inbound["reason"] == "bypassed waypoint: shop/db must be reached through its waypoint"


async def test_inbound_when_the_app_refuses_is_503(authority):
    async with node(authority) as mesh:
        await web_app(mesh)
        async with remote_ztunnel(authority, CLIENT, CLIENT_IP, mesh.pods["shop/web-0"], WEB) as far:
            with pytest.raises(HboneRefused) as refused:
                await far.open(f"{WEB_IP}:{DEAD_PORT}", None)
            assert refused.value.status == 503
            await mesh.settled()
    inbound = only(mesh.log(), direction="inbound")
    assert inbound["message"] == "connection failed"
    assert inbound["error"].startswith(f"the app at {WEB_IP}:{DEAD_PORT} did not accept: ")
    assert mesh.counted("connections_failed", reporter="destination", response_flags="CONNECT") == 1


@pytest.mark.parametrize("own_port", [15001, 15006, 15008])
async def test_inbound_connect_to_a_ztunnel_listener_port_is_503_and_dials_nothing(authority, own_port):
    """A CONNECT naming one of ztunnel's own ports in the pod would be dialled back into ztunnel's own
    listener (a forwarding loop): it is refused before any dial."""
    async with node(authority) as mesh:
        app = await web_app(mesh)
        async with remote_ztunnel(authority, CLIENT, CLIENT_IP, mesh.pods["shop/web-0"], WEB) as far:
            with pytest.raises(HboneRefused) as refused:
                await far.open(f"{WEB_IP}:{own_port}", None)
            assert refused.value.status == 503
            await mesh.settled()
    assert app.peers == []
    inbound = only(mesh.log(), direction="inbound")
    assert (inbound["message"], inbound["reason"]) == (
        "connection denied", f"port {own_port} is ztunnel's own listener, not the app's")


async def test_inbound_from_a_peer_of_another_trust_domain_is_refused_at_the_handshake(authority):
    other = SigningAuthority.self_signed("elsewhere.example")
    async with node(authority) as mesh:
        await web_app(mesh)
        with pytest.raises(Exception):  # noqa: B017 - whichever TLS error: the handshake must not succeed
            async with remote_ztunnel(other, SpiffeId("elsewhere.example", "shop", "client"), CLIENT_IP,
                                      mesh.pods["shop/web-0"], WEB) as far:
                await far.open(f"{WEB_IP}:{APP_PORT}", None)
    assert mesh.log() == []  # no CONNECT was ever decided


async def test_a_policy_change_closes_an_open_connection_it_now_denies(authority):
    async with node(authority) as mesh:
        await web_app(mesh)
        client = await mesh.app_connects("shop/client", (WEB_IP, APP_PORT))
        with trio.fail_after(5):
            await client.send_all(b"ping")
            assert await client.receive_some() == b"ping"  # open, both ways
        mesh.discovery.publish(WORLD_APP_DENIED)
        with trio.fail_after(5), contextlib.suppress(trio.BrokenResourceError):
            while await client.receive_some():
                pass
        await client.aclose()
        await mesh.settled()
    inbound = only(mesh.log(), direction="inbound")
    assert (inbound["message"], inbound["policy"], inbound["reason"], inbound["error"]) == (
        "connection denied", "shop/deny-app-port", "policy changed: denied by DENY policy shop/deny-app-port",
        "closed: denied by a policy change")


# ---------------------------------------------------------------- inbound plaintext


async def test_inbound_plaintext_is_decided_without_an_identity(authority):
    async with node(authority) as mesh:
        app = await web_app(mesh)
        allowed = await mesh.plaintext_to(OFF_MESH_IP, "shop/web-0", APP_PORT)
        assert await round_trip(allowed, b"plain in") == b"plain in"
        denied = await mesh.plaintext_to(OFF_MESH_IP, "shop/web-0", DENIED_PORT)
        await assert_reset(denied)
        await mesh.settled()
    assert [ip for ip, _ in app.peers] == [OFF_MESH_IP]
    lines = mesh.log()
    # (in either order: the allowed connection is still open when the denied one is logged)
    assert sorted((line["protocol"], line["message"], line.get("src.identity")) for line in lines) == [
        ("TCP", "connection complete", None), ("TCP", "connection denied", None)]
    # As Istio's ztunnel: plaintext is "unknown"; the denied one is opened too, and closed with DENY.
    assert mesh.counted("connections_opened", reporter="destination", connection_security_policy="unknown") == 2
    assert mesh.counted("connections_closed", reporter="destination", connection_security_policy="unknown",
                        response_flags="DENY") == 1


async def test_readiness_says_when_the_config_is_the_one_saved_before_a_restart(authority):
    async with node(authority) as n:
        with trio.fail_after(5):  # the certificates of the pods it serves
            for pod in n.ztunnel.pods.pods.values():
                await n.ztunnel.secrets.get(n.ztunnel.pod_identity(pod))
        assert n.ztunnel.ready()[0] and "stale" not in n.ztunnel.ready()[1]
        n.discovery.stale = True
        ready, reason = n.ztunnel.ready()
        assert ready and "stale config" in reason


async def test_a_bug_one_connection_meets_ends_only_that_connection(authority, monkeypatch, caplog):
    import ztunnel.proxy as proxy_module

    real = proxy_module.plan_outbound
    calls = []

    def first_one_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OverflowError("a bug")  # e.g. a port the dial cannot take
        return real(*args, **kwargs)

    monkeypatch.setattr(proxy_module, "plan_outbound", first_one_fails)
    async with node(authority) as mesh:
        await web_app(mesh)
        broken = await mesh.app_connects("shop/client", (WEB_IP, APP_PORT))
        await assert_reset(broken)
        again = await mesh.app_connects("shop/client", (WEB_IP, APP_PORT))
        assert await round_trip(again) == b"hello through the mesh"
        await mesh.settled()
    assert any("failed unexpectedly; the pod is served on" in r.getMessage() for r in caplog.records)


async def test_a_connect_the_client_resets_while_the_app_is_dialled_is_logged_with_why(authority, monkeypatch):
    dialling = trio.Event()

    async def slow_app(self, app, client_ip):  # an app that takes its time to accept
        dialling.set()
        await trio.sleep_forever()

    monkeypatch.setattr(LoopbackPod, "connect_app", slow_app)
    async with node(authority) as mesh:
        async with remote_ztunnel(authority, CLIENT, CLIENT_IP, mesh.pods["shop/web-0"], WEB) as far:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(far.open, f"{WEB_IP}:{APP_PORT}", (CLIENT_IP, 40000))
                with trio.fail_after(5):
                    await dialling.wait()
                nursery.cancel_scope.cancel()  # the client gives up: its stream is reset
            await mesh.settled()
    inbound = only(mesh.log(), direction="inbound")
    assert "the client gave up before the app accepted" in inbound["error"]
