"""The waypoint process (waypoint/proxy.py) in process, without root: real certificates from an
in-memory mesh CA, real TLS 1.3 and HBONE, over loopback addresses, as tests/ztunnel/test_proxy.py
runs ztunnel.

Every pod's IP is an address of 127.0.0.0/8 (all of them are local). The waypoint listens on its
own pod's IP (``WAYPOINT_IP``, a port of the kernel's choosing): it finds its own workload by the
address a tunnel arrived on, as in production. The endpoints (web-0) are opted out of the mesh
(``istio.io/dataplane-mode: none``), so the waypoint's upstream plan for them is ``Passthrough``: a
plain TCP connection to web-0's IP and the Service's ``targetPort``, where the test's HTTP and echo
servers listen; the target ports are the ones the kernel gave those servers, written into the YAML.

The discovery view is what the control plane sends for the YAML of ``world`` (the real parse →
view → pack pipeline, ``tests.ztunnel.worlds.discovery_view``), with pods and VIPs at the loopback
addresses below. A "source ztunnel" is an ``HboneClientDriver`` over mTLS with the client pod's
certificate, dialling from the client pod's IP; inside a tunnel the test speaks HTTP/1.1 with h11.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import h11
import trio

from ca.authority import SigningAuthority
from ca.client import CertifiedKey
from ca.secrets import SecretManager
from hbone.connect import ConnectTarget
from hbone.driver import HboneClientDriver, HboneServerDriver, IncomingConnect
from hbone.tls import client_context, client_handshake, server_context, server_handshake
from hbone.tls_stream import TlsStream
from mesh.identity import SpiffeId
from mesh.ports import HBONE_PORT
from tests.ztunnel.pki import TD, certified, creds
from tests.ztunnel.worlds import discovery_view
from waypoint.proxy import Waypoint, WaypointConfig
from waypoint.records import RequestRecord, TcpRecord

# ---------------------------------------------------------------- the world

# 127.0.19.0/24: apart from the addresses of tests/ztunnel (127.0.0.x), though every port here is
# the kernel's choice anyway.
IPS = {"shop/client": "127.0.19.10", "shop/web-0": "127.0.19.11", "shop/other-0": "127.0.19.12",
       "shop/api-0": "127.0.19.13", "shop/wp-waypoint": "127.0.19.50"}
VIPS = {"shop/web": "10.96.19.11", "shop/other": "10.96.19.12", "shop/api": "10.96.19.13", "shop/wp": "10.96.19.99"}
CLIENT_IP, WEB_IP, OTHER_IP, API_IP, WAYPOINT_IP = (IPS[k] for k in (
    "shop/client", "shop/web-0", "shop/other-0", "shop/api-0", "shop/wp-waypoint"))
STRANGER_IP = "127.0.19.99"  # an address nothing in the mesh has
WEB_VIP, OTHER_VIP, API_VIP = VIPS["shop/web"], VIPS["shop/other"], VIPS["shop/api"]
API_PORT = 8080  # api-0's app port: only named in the CONNECT to its ztunnel
HTTP_PORT = 80  # web's HTTP port (the route's parent)
OPAQUE_PORT = 9000  # web's port for opaque TCP
CLOSED_PORT = 9001  # web's port an L4-only DENY targeting the Gateway closes
WEB_SERVICE = "shop/web.shop.svc.cluster.local"
API_SERVICE = "shop/api.shop.svc.cluster.local"
API_HOST = "api.shop.svc.cluster.local"
WEB_HOST = "web.shop.svc.cluster.local"


def spiffe(account: str) -> SpiffeId:
    return SpiffeId(TD, "shop", account)


CLIENT, WEB, API, WAYPOINT = spiffe("client"), spiffe("web"), spiffe("api"), spiffe("wp")


def world(http_port: int, tcp_port: int) -> str:
    """An ambient namespace with the waypoint ``wp`` (for services), which Service web uses and
    Service other does not; both are served by pods outside the mesh, whose apps listen at
    ``http_port`` (HTTP) and ``tcp_port`` (echo); Service api uses the waypoint too, and its pod is
    in the mesh (HBONE). An L7 DENY of /private on web, an L4-only DENY of
    port 9001 on the Gateway, a policy on other (not this waypoint's business), a route on web that
    marks what it forwards, and a route whose backend does not exist."""
    return f"""
apiVersion: v1
kind: Namespace
metadata: {{name: shop, labels: {{istio.io/dataplane-mode: ambient}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: wp, namespace: shop}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: shop, labels: {{app: client}}}}
spec: {{serviceAccountName: client, containers: [{{name: app}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: web-0, namespace: shop, labels: {{app: web, istio.io/dataplane-mode: none}}}}
spec: {{serviceAccountName: web, containers: [{{name: app}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: other-0, namespace: shop, labels: {{app: other, istio.io/dataplane-mode: none}}}}
spec: {{serviceAccountName: other, containers: [{{name: app}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop, labels: {{istio.io/use-waypoint: wp}}}}
spec:
  selector: {{app: web}}
  ports:
  - {{name: web, port: {HTTP_PORT}, targetPort: {http_port}}}
  - {{name: opaque, port: {OPAQUE_PORT}, targetPort: {tcp_port}}}
  - {{name: closed, port: {CLOSED_PORT}, targetPort: {tcp_port}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: api-0, namespace: shop, labels: {{app: api}}}}
spec: {{serviceAccountName: api, containers: [{{name: app}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: api, namespace: shop, labels: {{istio.io/use-waypoint: wp}}}}
spec: {{selector: {{app: api}}, ports: [{{name: web, port: 80, targetPort: {API_PORT}}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: other, namespace: shop}}
spec: {{selector: {{app: other}}, ports: [{{name: web, port: {HTTP_PORT}, targetPort: {http_port}}}]}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-private, namespace: shop}}
spec:
  targetRefs: [{{kind: Service, group: "", name: web}}]
  action: DENY
  rules: [{{to: [{{operation: {{paths: ["/private*"]}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-closed-port, namespace: shop}}
spec:
  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: wp}}]
  action: DENY
  rules: [{{to: [{{operation: {{ports: ["{CLOSED_PORT}"]}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-other, namespace: shop}}
spec:
  targetRefs: [{{kind: Service, group: "", name: other}}]
  action: DENY
  rules: [{{}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web, namespace: shop}}
spec:
  parentRefs: [{{kind: Service, group: "", name: web, port: {HTTP_PORT}}}]
  rules:
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {{set: [{{name: x-routed-by, value: wp}}]}}
    backendRefs: [{{name: web, port: {HTTP_PORT}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: broken, namespace: shop}}
spec:
  parentRefs: [{{kind: Service, group: "", name: web, port: {HTTP_PORT}}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /gone}}}}]
    backendRefs: [{{name: missing, port: 80}}]
"""


class StaticDiscovery:
    """A ``Discovery`` serving the view of ``docs``; ``gate`` (if given) holds back its first answer."""

    def __init__(self, docs: str, gate: trio.Event | None = None) -> None:
        self._view = discovery_view(docs, IPS, VIPS)
        self.change_seq = 0
        self._gate = gate
        self._changed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self._gate is not None:
            await self._gate.wait()
        task_status.started()
        await trio.sleep_forever()

    def view(self, type_url: str) -> Mapping[str, object]:
        return self._view.get(type_url, {})

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._changed.wait()


class Records:
    """A ``Telemetry`` sink that keeps every record and lets a test wait for them."""

    def __init__(self) -> None:
        self.requests: list[RequestRecord] = []
        self.tunnels: list[TcpRecord] = []
        self._added = trio.Event()

    def request(self, record: RequestRecord) -> None:
        self.requests.append(record)
        self._added.set()

    def tcp(self, record: TcpRecord) -> None:
        self.tunnels.append(record)
        self._added.set()

    async def wait_for(self, *, requests: int = 0, tunnels: int = 0) -> None:
        """Until at least this many of each have been recorded (a record is made after the response
        has gone out, so the client can read it before the record exists)."""
        with trio.fail_after(5):
            while len(self.requests) < requests or len(self.tunnels) < tunnels:
                self._added = trio.Event()
                await self._added.wait()


# ---------------------------------------------------------------- the endpoint's apps


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]
    peer: tuple[str, int]


@dataclass
class HttpApp:
    """web-0's HTTP server: answers ``200 <path>``; a request for /slow waits for ``release``."""

    name: str = "web-0"
    address: tuple[str, int] = ("", 0)
    seen: list[Seen] = field(default_factory=list)
    arrived: trio.Event = field(default_factory=trio.Event)  # a request for /slow came in
    release: trio.Event = field(default_factory=trio.Event)


async def serve_http(app: HttpApp, stream: trio.abc.HalfCloseableStream, peer: tuple[str, int]) -> None:
    """Answer HTTP/1.1 requests on ``stream`` until the client closes it."""
    conn = h11.Connection(h11.SERVER)
    with contextlib.suppress(trio.BrokenResourceError, h11.RemoteProtocolError):
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some()))  # b"": the waypoint closed
            elif isinstance(event, h11.ConnectionClosed):
                return
            elif isinstance(event, h11.Request):
                app.seen.append(Seen(event.method.decode(), event.target.decode(),
                                     {n.decode(): v.decode() for n, v in event.headers}, peer))
            elif isinstance(event, h11.EndOfMessage):
                target = app.seen[-1].target
                if target.startswith("/slow"):
                    app.arrived.set()
                    await app.release.wait()
                body = f"{app.name} says {target}".encode()
                for out in (h11.Response(status_code=200, headers=[("content-length", str(len(body)))]),
                            h11.Data(data=body), h11.EndOfMessage()):
                    await stream.send_all(conn.send(out) or b"")
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()


async def http_app(nursery: trio.Nursery, ip: str) -> HttpApp:
    """An HTTP server on ``ip``, at a port of the kernel's choosing (web-0's app)."""
    app = HttpApp()

    async def handle(stream: trio.SocketStream) -> None:
        await serve_http(app, stream, stream.socket.getpeername()[:2])

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handle, 0, host=ip))
    app.address = listeners[0].socket.getsockname()[:2]
    return app


@dataclass
class DestinationZtunnel:
    """api-0's ztunnel, standing in: an HBONE server on (api-0's IP, 15008) with api-0's certificate;
    each CONNECT it accepts carries HTTP to ``app``, and is kept as (client identity, target)."""

    app: HttpApp
    connects: list[tuple[SpiffeId, ConnectTarget]] = field(default_factory=list)


async def destination_ztunnel(nursery: trio.Nursery, authority: SigningAuthority) -> DestinationZtunnel:
    """Listens on api-0's HBONE port: 15008 itself, since the waypoint dials a mesh pod there. The
    address is 127.0.19.13, which nothing else here binds."""
    ztunnel = DestinationZtunnel(HttpApp(name="api-0"))
    context = server_context(creds(authority, API))

    async def on_connect(peer: SpiffeId, request: IncomingConnect) -> None:
        ztunnel.connects.append((peer, request.target))
        async with request.accept() as tunnel:
            await serve_http(ztunnel.app, tunnel, request.target.forwarded_for or ("", 0))
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await tunnel.send_eof()

    async def handle(stream: trio.SocketStream) -> None:
        with trio.fail_after(5):
            tls, peer = await server_handshake(stream, context, TD)
        await HboneServerDriver(tls, [API_IP], functools.partial(on_connect, peer)).serve()

    await nursery.start(functools.partial(trio.serve_tcp, handle, HBONE_PORT, host=API_IP))
    return ztunnel


@dataclass
class EchoApp:
    address: tuple[str, int] = ("", 0)
    peers: list[tuple[str, int]] = field(default_factory=list)


async def echo_app(nursery: trio.Nursery, ip: str) -> EchoApp:
    app = EchoApp()

    async def handle(stream: trio.SocketStream) -> None:
        app.peers.append(stream.socket.getpeername()[:2])
        with contextlib.suppress(trio.BrokenResourceError):
            while data := await stream.receive_some():
                await stream.send_all(data)
            await stream.send_eof()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handle, 0, host=ip))
    app.address = listeners[0].socket.getsockname()[:2]
    return app


# ---------------------------------------------------------------- the waypoint


@dataclass
class Mesh:
    waypoint: Waypoint
    records: Records
    web: HttpApp
    echo: EchoApp
    nursery: trio.Nursery
    stopped: trio.Event  # run() returned
    address: tuple[str, int] | None = None  # the HBONE listener, once bound
    stopped_at: float | None = None


class Gates:
    """Hold the waypoint back: ``certificate`` before the CA answers, ``discovery`` before the first view."""

    def __init__(self) -> None:
        self.certificate = trio.Event()
        self.discovery = trio.Event()


@contextlib.asynccontextmanager
async def running_waypoint(authority: SigningAuthority, *, gates: Gates | None = None,
                           drain_timeout: float = 5.0, extra: str = "") -> AsyncIterator[Mesh]:
    """The waypoint of the world, serving; with ``gates``, ``address`` stays None until it binds.
    ``extra``: more YAML documents for the world (each starting with ``---``)."""

    async def fetch(identity: SpiffeId) -> CertifiedKey:
        if gates is not None:
            await gates.certificate.wait()
        return certified(authority, identity)

    async with trio.open_nursery() as nursery:
        web = await http_app(nursery, WEB_IP)
        echo = await echo_app(nursery, WEB_IP)
        discovery = StaticDiscovery(world(web.address[1], echo.address[1]) + extra,
                                    gates.discovery if gates is not None else None)
        records = Records()
        waypoint = Waypoint(WaypointConfig("shop", "wp", TD, listen=(WAYPOINT_IP, 0), drain_timeout=drain_timeout),
                            discovery, SecretManager(fetch), [records])
        mesh = Mesh(waypoint, records, web, echo, nursery, trio.Event())

        async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            async with trio.open_nursery() as inner:
                mesh.address = await inner.start(waypoint.run)
                task_status.started()
            mesh.stopped_at = trio.current_time()
            mesh.stopped.set()

        if gates is None:
            with trio.fail_after(5):
                await nursery.start(run)
        else:
            nursery.start_soon(run)
        yield mesh
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- a source ztunnel


@contextlib.asynccontextmanager
async def source_ztunnel(authority: SigningAuthority, address: tuple[str, int], *, identity: SpiffeId = CLIENT,
                         source_ip: str = CLIENT_IP) -> AsyncIterator[HboneClientDriver]:
    """An HBONE connection to the waypoint from ``source_ip`` with ``identity``'s certificate."""
    tls = await handshake(authority, address, identity=identity, source_ip=source_ip)
    driver = HboneClientDriver(tls)
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run)
        yield driver
        driver.close()


async def handshake(authority: SigningAuthority, address: tuple[str, int], *, identity: SpiffeId = CLIENT,
                    source_ip: str = CLIENT_IP) -> TlsStream:
    """mTLS to the waypoint, which must present its own identity."""
    sock = trio.socket.socket()
    await sock.bind((source_ip, 0))
    await sock.connect(address)
    with trio.fail_after(5):
        tls, server = await client_handshake(trio.SocketStream(sock), client_context(creds(authority, identity)),
                                             frozenset({WAYPOINT}))
    assert server == WAYPOINT
    return tls


# ---------------------------------------------------------------- HTTP/1.1 inside a tunnel


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


class H1Client:
    """HTTP/1.1 over one tunnel, keep-alive: one request after the other."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def request(self, method: str, path: str, host: str = WEB_HOST,
                      extra_headers: Sequence[tuple[str, str]] = ()) -> Response:
        with trio.fail_after(5):
            if self.conn.our_state is h11.DONE:
                self.conn.start_next_cycle()
            for out in (h11.Request(method=method, target=path, headers=[("host", host), *extra_headers]),
                        h11.EndOfMessage()):
                await self.stream.send_all(self.conn.send(out) or b"")
            status, headers, body = 0, dict[str, str](), b""
            while True:
                event = self.conn.next_event()
                if event is h11.NEED_DATA:
                    self.conn.receive_data(bytes(await self.stream.receive_some()))
                elif isinstance(event, h11.Response):
                    status, headers = event.status_code, {n.decode(): v.decode() for n, v in event.headers}
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    return Response(status, headers, body)
                else:
                    raise AssertionError(f"unexpected {event!r}")


async def round_trip(stream: trio.abc.HalfCloseableStream, payload: bytes) -> bytes:
    """Send ``payload``, half-close, and read until the other side ends: what came back."""
    with trio.fail_after(5):
        await stream.send_all(payload)
        await stream.send_eof()
        got = b""
        while data := await stream.receive_some():
            got += data
    await stream.aclose()
    return got


async def eventually(predicate: Callable[[], bool]) -> None:
    """Until ``predicate`` holds (state the waypoint updates when it notices a peer closed, which
    has no event to wait on), failing after 5 s."""
    with trio.fail_after(5):
        while not predicate():
            await trio.sleep(0.005)
