"""The request pipeline (``waypoint.pipeline``) end to end in memory: a client speaks HTTP/1.1 or
HTTP/2 to the real codecs (``serve_h1``, ``H2Session``), the pipeline decides against a view built
from real YAML, and the "endpoints" are origins the test runs behind a fake ``Upstreams`` that hands
out real ``H1Upstream``/``H2Upstream`` over memory streams (or fails to connect, as told).

Time is trio's MockClock (autojump): route timeouts fire when every task waits."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

import h2.events
import h11
import pytest
import trio
import trio.testing
from trio.testing import MockClock

from mesh.identity import SpiffeId
from mesh.outbound import HboneToPod, Passthrough, RoundRobin
from mesh.proxy_state import ProxyState, ip_text, service_key_of
from tests.controlplane.waypoint_yaml import l7_config_from_yaml
from tests.waypoint.test_h2session import Peer, _client
from tests.waypoint.worlds import APPS_WITH_WAYPOINT
from waypoint.authz import L7Authorizer
from waypoint.h1 import H1Downstream, H1Upstream, serve_h1
from waypoint.h2 import H2Downstream, H2Upstream
from waypoint.h2session import H2Session, H2Stream
from waypoint.limits import RETRY_BUFFER_BYTES
from waypoint.pipeline import Pipeline, Tunnel, WaypointView
from waypoint.records import RequestRecord
from waypoint.routing import RouteTable
from waypoint.upstream import UpstreamConnectError
from waypoint.wasm.types import Continue
from waypoint.wasm_stage import AppliedPlugin, Phase

WORLD = APPS_WITH_WAYPOINT + """---
apiVersion: apps/v1
kind: Deployment
metadata: {name: backend, namespace: apps}
spec:
  replicas: 3
  selector: {matchLabels: {app: backend}}
  template:
    metadata: {labels: {app: backend}}
    spec: {serviceAccountName: backend, containers: [{name: web, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: apps}
spec:
  selector: {app: backend}
  ports: [{name: http, port: 8080, targetPort: 80}, {name: grpc, port: 9090, targetPort: 90}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-debug, namespace: apps}
spec:
  targetRefs: [{kind: Service, group: "", name: backend}]
  action: DENY
  rules:
  - when: [{key: "request.headers[x-debug]", values: ["*"]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: apps}
spec:
  parentRefs: [{group: "", kind: Service, name: backend, port: 8080}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new},
                                                          statusCode: 301}}]
  - matches: [{path: {type: PathPrefix, value: /mirrored}}]
    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: backend, port: 8080}}}]
    backendRefs: [{name: backend, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /slow}}]
    timeouts: {request: 5s}
    backendRefs: [{name: backend, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /try}}]
    timeouts: {request: 30s, backendRequest: 2s}
    backendRefs: [{name: backend, port: 8080}]
  - filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: x-served-by, value: waypoint}],
                                                                      remove: [x-internal]}}]
    backendRefs: [{name: backend, port: 8080}]
"""

POLICIES, ROUTES, ADDRESSES = l7_config_from_yaml(WORLD)
STATE = ProxyState.from_addresses(ADDRESSES)
VIEW = WaypointView(STATE, L7Authorizer.compile(POLICIES), RouteTable.compile(ROUTES))
SERVICE = STATE.services["apps/backend.apps.svc.cluster.local"]
VIP = next(ip for a in SERVICE.addresses if (ip := ip_text(a.address)) is not None)
ME = STATE.workloads["Kubernetes//Pod/apps/waypoint-waypoint"]
CLIENT_ID = SpiffeId("cluster.local", "apps", "client")

Origin = Callable[[trio.abc.Stream], Awaitable[None]]
FAIL = "connect failure"


@dataclass
class FakeUpstreams:
    """Connections to endpoints: each new one takes the next scripted behaviour (an origin served on
    a memory stream, or FAIL), and records the endpoint it was for."""

    nursery: trio.Nursery
    script: list[Origin | str]
    h2_origin: Callable[[H2Stream], Awaitable[None]] | None = None
    endpoints: list[str] = field(default_factory=list)
    released: list[bool] = field(default_factory=list)

    def _next(self, plan: HboneToPod | Passthrough) -> trio.abc.HalfCloseableStream:
        self.endpoints.append(plan.address[0])
        behaviour = self.script.pop(0)
        if behaviour == FAIL:
            raise UpstreamConnectError("connection refused")
        ours, theirs = trio.testing.memory_stream_pair()
        assert callable(behaviour)
        self.nursery.start_soon(behaviour, theirs)
        return ours

    async def http1(self, plan: HboneToPod | Passthrough, client: tuple[str, int]) -> H1Upstream:
        await trio.lowlevel.checkpoint()
        stream = self._next(plan)
        return H1Upstream(stream, lambda _up, clean: self.released.append(clean))

    async def http2(self, plan: HboneToPod | Passthrough, client: tuple[str, int]) -> H2Upstream:
        self.endpoints.append(plan.address[0])
        ours, theirs = trio.testing.memory_stream_pair()
        assert self.h2_origin is not None
        origin = H2Session(theirs, client_side=False, on_request=self.h2_origin)
        self.nursery.start_soon(origin.run)
        session = H2Session(ours, client_side=True)
        await self.nursery.start(session.run)
        return H2Upstream(session, lambda _session: None)

    def spawn(self, task: Callable[..., Awaitable[object]], *args: object) -> None:
        self.nursery.start_soon(task, *args)


def tunnel(port: int = 8080) -> Tunnel:
    return Tunnel(CLIENT_ID, ("10.244.0.99", 40000), None, (VIP, port), SERVICE, service_key_of(SERVICE), None, ME)


# ---------------------------------------------------------------- origins


def origin(status: int = 200, body: bytes = b"hello", headers: list[tuple[str, str]] | None = None,
           trailers: list[tuple[str, str]] | None = None, delay: float = 0.0,
           seen: list[tuple[h11.Request, bytes]] | None = None) -> Origin:
    """An HTTP/1.1 endpoint that answers every request on its connection the same way."""

    async def serve(stream: trio.abc.Stream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request, received = None, b""
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = await stream.receive_some()
                        conn.receive_data(bytes(data))
                        continue
                    if isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        received += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    else:
                        return
                assert request is not None
                if seen is not None:
                    seen.append((request, received))
                await trio.sleep(delay)
                out = list(headers or [])
                if trailers is None:
                    out.append(("content-length", str(len(body))))
                await stream.send_all(conn.send(h11.Response(status_code=status, headers=out)))
                await stream.send_all(conn.send(h11.Data(data=body)))
                await stream.send_all(conn.send(h11.EndOfMessage(headers=trailers or [])))
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass

    return serve


# ---------------------------------------------------------------- HTTP/1.1 client harness


@dataclass
class World:
    upstreams: FakeUpstreams
    records: list[RequestRecord]
    client: trio.StapledStream
    parser: h11.Connection = field(default_factory=lambda: h11.Connection(h11.CLIENT))

    async def exchange(self, raw: bytes, method: str = "GET") -> tuple[int, dict[bytes, bytes], bytes]:
        await self.client.send_all(raw)
        if self.parser.our_state is h11.DONE and self.parser.their_state is h11.DONE:
            self.parser.start_next_cycle()
        self.parser.send(h11.Request(method=method, target="/", headers=[("host", "a")]))
        self.parser.send(h11.EndOfMessage())
        status, headers, body = 0, {}, b""
        while True:
            event = self.parser.next_event()
            if event is h11.NEED_DATA:
                self.parser.receive_data(bytes(await self.client.receive_some()))
            elif isinstance(event, h11.Response):
                status, headers = event.status_code, dict(event.headers)
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                await trio.testing.wait_all_tasks_blocked()  # the pipeline writes its record after the response
                return status, headers, body
            else:
                raise AssertionError(f"unexpected {event!r}")


@asynccontextmanager
async def h1_world(*script: Origin | str, h2_origin: Callable[[H2Stream], Awaitable[None]] | None = None,
                   port: int = 8080, view: WaypointView = VIEW) -> AsyncIterator[World]:
    records: list[RequestRecord] = []
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            upstreams = FakeUpstreams(nursery, list(script), h2_origin)
            pipeline = Pipeline("apps/waypoint", lambda: view, upstreams, RoundRobin(),  # type: ignore[arg-type]
                                records.append)
            client, server = trio.testing.memory_stream_pair()

            async def handler(down: H1Downstream) -> None:
                await pipeline.handle(down, tunnel(port))

            nursery.start_soon(serve_h1, server, handler)
            yield World(upstreams, records, client)
            nursery.cancel_scope.cancel()


def get(path: str, *extra: str, body: bytes = b"", method: str = "GET") -> bytes:
    headers = "".join(f"{h}\r\n" for h in extra)
    length = f"Content-Length: {len(body)}\r\n" if body else ""
    return f"{method} {path} HTTP/1.1\r\nHost: backend.apps:8080\r\n{headers}{length}\r\n".encode() + body


# ---------------------------------------------------------------- policy and routes


async def test_policy_deny_is_403_and_the_connection_stays_usable(autojump_clock: MockClock) -> None:
    async with h1_world(origin()) as world:
        status, _, body = await world.exchange(get("/x", "X-Debug: 1", body=b"unread body", method="POST"))
        assert (status, body) == (403, b"RBAC: access denied")
        status, _, body = await world.exchange(get("/x"))
        assert (status, body) == (200, b"hello")
        assert [(r.status, r.response_flags, r.policy) for r in world.records] == [
            (403, "RBAC", "apps/no-debug"), (200, "-", None)]
        assert len(world.upstreams.endpoints) == 1


async def test_route_local_reply_redirects(autojump_clock: MockClock) -> None:
    async with h1_world() as world:
        status, headers, _ = await world.exchange(get("/old/page"))
        assert status == 301
        assert headers[b"location"].endswith(b"/new/page")
        assert world.upstreams.endpoints == []
        assert world.records[0].route is not None and "web" in world.records[0].route


async def test_response_header_modifiers(autojump_clock: MockClock) -> None:
    async with h1_world(origin(headers=[("x-internal", "secret"), ("x-app", "1")])) as world:
        status, headers, _ = await world.exchange(get("/"))
        assert status == 200
        assert headers[b"x-served-by"] == b"waypoint" and headers[b"x-app"] == b"1"
        assert b"x-internal" not in headers


# ---------------------------------------------------------------- retries


async def test_a_503_is_retried_on_another_endpoint(autojump_clock: MockClock) -> None:
    async with h1_world(origin(503, b"busy"), origin(200, b"fine")) as world:
        status, _, body = await world.exchange(get("/", body=b"small", method="POST"))
        assert (status, body) == (200, b"fine")
        first, second = world.upstreams.endpoints
        assert first != second
        assert world.records[-1].response_flags == "-"


async def test_a_connect_failure_is_retried_on_another_endpoint(autojump_clock: MockClock) -> None:
    async with h1_world(FAIL, origin()) as world:
        status, _, _ = await world.exchange(get("/"))
        assert status == 200
        assert len(set(world.upstreams.endpoints)) == 2


async def test_retries_exhausted_on_503_keep_the_last_answer_with_urx(autojump_clock: MockClock) -> None:
    async with h1_world(origin(503, b"a"), origin(503, b"b"), origin(503, b"c")) as world:
        status, _, body = await world.exchange(get("/"))
        assert (status, body) == (503, b"c")
        assert len(world.upstreams.endpoints) == 3  # Istio's default: 2 retries
        assert "URX" in world.records[-1].response_flags.split(",")


async def test_retries_exhausted_on_503_keep_the_last_answer(autojump_clock: MockClock) -> None:
    async with h1_world(origin(503, b"a"), origin(503, b"b"), origin(503, b"c"), origin()) as world:
        status, _, body = await world.exchange(get("/"))
        assert (status, body) == (503, b"c")
        assert len(world.upstreams.endpoints) == 3  # Istio's default: 2 retries


async def test_connect_failures_exhausted_are_503_uf_urx(autojump_clock: MockClock) -> None:
    async with h1_world(FAIL, FAIL, FAIL) as world:
        status, _, _ = await world.exchange(get("/"))
        assert status == 503
        assert set(world.records[-1].response_flags.split(",")) == {"UF", "URX"}


async def test_connect_failures_exhausted_are_503_uf(autojump_clock: MockClock) -> None:
    async with h1_world(FAIL, FAIL, FAIL) as world:
        status, _, _ = await world.exchange(get("/"))
        assert status == 503
        assert "UF" in world.records[-1].response_flags.split(",")
        assert len(world.upstreams.endpoints) == 3


async def test_a_streamed_body_is_not_retried(autojump_clock: MockClock) -> None:
    seen: list[tuple[h11.Request, bytes]] = []
    big = b"b" * (RETRY_BUFFER_BYTES + 1)
    async with h1_world(origin(503, b"busy", seen=seen), origin()) as world:
        status, _, body = await world.exchange(get("/", body=big, method="POST"))
        assert (status, body) == (503, b"busy")
        assert len(world.upstreams.endpoints) == 1
        assert seen[0][1] == big and world.records[-1].request_bytes == len(big)


async def test_a_buffered_body_reaches_each_try_whole(autojump_clock: MockClock) -> None:
    seen: list[tuple[h11.Request, bytes]] = []
    async with h1_world(origin(503, seen=seen), origin(seen=seen)) as world:
        status, _, _ = await world.exchange(get("/", body=b"payload", method="PUT"))
        assert status == 200
        assert [body for _, body in seen] == [b"payload", b"payload"]
        assert all((b"content-length", b"7") in r.headers for r, _ in seen)


# ---------------------------------------------------------------- timeouts


async def test_the_whole_request_timeout_is_504_ut(autojump_clock: MockClock) -> None:
    async with h1_world(origin(delay=60)) as world:
        start = trio.current_time()
        status, _, body = await world.exchange(get("/slow"))
        assert (status, body) == (504, b"upstream request timeout")
        assert trio.current_time() - start == pytest.approx(5)
        assert "UT" in world.records[-1].response_flags.split(",")


async def test_the_per_try_timeout_is_504_ut(autojump_clock: MockClock) -> None:
    async with h1_world(origin(delay=60)) as world:
        start = trio.current_time()
        status, _, _ = await world.exchange(get("/try"))
        assert status == 504
        assert trio.current_time() - start == pytest.approx(2)
        assert "UT" in world.records[-1].response_flags.split(",")


# ---------------------------------------------------------------- versions, trailers, upgrade


async def grpc_origin(stream: H2Stream) -> None:
    session = stream.session
    body = b""
    while chunk := await stream.receive_data():
        body += chunk
    await session.send_headers(stream.stream_id, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    await session.send_data(stream, b"reply:" + body)
    await session.send_headers(stream.stream_id, [(b"grpc-status", b"0"), (b"grpc-message", b"ok")], end_stream=True)


async def test_http1_client_to_http2_upstream_and_back(autojump_clock: MockClock) -> None:
    async with h1_world(h2_origin=grpc_origin, port=9090) as world:
        status, headers, body = await world.exchange(get("/pkg.Svc/Call", "TE: trailers", body=b"req", method="POST"))
        assert (status, body) == (200, b"reply:req")
        assert headers[b"content-type"] == b"application/grpc"
        record = world.records[-1]
        assert (record.http_version, record.grpc_status) == ("HTTP/1.1", "0")


async def test_grpc_trailers_pass_through_http2_on_both_sides(autojump_clock: MockClock) -> None:
    records: list[RequestRecord] = []
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            upstreams = FakeUpstreams(nursery, [], grpc_origin)
            pipeline = Pipeline("apps/waypoint", lambda: VIEW, upstreams, RoundRobin(),  # type: ignore[arg-type]
                                records.append)
            ours, theirs = trio.testing.memory_stream_pair()
            session: H2Session

            async def on_stream(stream: H2Stream) -> None:
                await pipeline.handle(H2Downstream(session, stream), tunnel(9090))

            session = H2Session(ours, client_side=False, on_request=on_stream)
            nursery.start_soon(session.run)
            peer = Peer(_client(), theirs)
            peer.conn.initiate_connection()
            stream_id = peer.conn.get_next_available_stream_id()
            peer.conn.send_headers(stream_id, [
                (b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"backend.apps:9090"),
                (b":path", b"/pkg.Svc/Call"), (b"content-type", b"application/grpc"), (b"te", b"trailers")])
            peer.conn.send_data(stream_id, b"msg", end_stream=True)
            await peer.flush()
            headers, body, trailers = await peer.response(stream_id)
            assert dict(headers)[b":status"] == b"200"
            assert body == b"reply:msg"
            assert trailers == [(b"grpc-status", b"0"), (b"grpc-message", b"ok")]
            await trio.testing.wait_all_tasks_blocked()  # the record is written after the response went out
            assert records[-1].grpc_status == "0" and records[-1].http_version == "HTTP/2"
            assert not any(isinstance(e, h2.events.StreamReset) for e in peer.events)
            nursery.cancel_scope.cancel()


async def websocket_origin(stream: trio.abc.Stream) -> None:
    conn = h11.Connection(h11.SERVER)
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await stream.receive_some()))
        elif isinstance(event, h11.EndOfMessage):
            break
    await stream.send_all(conn.send(h11.InformationalResponse(
        status_code=101, headers=[("connection", "upgrade"), ("upgrade", "websocket")])))
    early, _ = conn.trailing_data
    if early:
        await stream.send_all(bytes(early).upper())
    while data := await stream.receive_some():
        await stream.send_all(bytes(data).upper())
    await stream.aclose()  # the client's end, echoed: the relay ends when both directions have


class PassingStream:
    """A plugin's HTTP context that lets everything through unchanged."""

    async def request_headers(self, headers: list, end_of_stream: bool) -> Continue:
        return Continue()

    async def request_body(self, data: bytes, end_of_stream: bool) -> Continue:
        return Continue()

    response_headers = request_headers
    response_body = request_body

    def done(self) -> None:
        pass


class PassingPlugins:
    """A WasmPlugins view with one plugin that changes nothing (the wrapper of the exchange is in place)."""

    def plugins_for(self, gateway: str, service_key: str | None, port: int = 0) -> list[AppliedPlugin]:
        plugin = type("Plugin", (), {"stream": lambda self, info: PassingStream()})()
        return [AppliedPlugin("apps/pass", Phase.UNSPECIFIED, 0, False, plugin)]

    def request_info(self, down: object, tunnel: object) -> None:
        return None


@pytest.mark.parametrize("view", [VIEW, replace(VIEW, wasm=PassingPlugins())], ids=["plain", "through-a-plugin"])
async def test_upgrade_101_relays_raw_bytes(view: WaypointView, autojump_clock: MockClock) -> None:
    async with h1_world(websocket_origin, view=view) as world:
        await world.client.send_all(get("/ws", "Connection: Upgrade", "Upgrade: websocket"))
        data = b""
        while b"\r\n\r\n" not in data:
            data += await world.client.receive_some()
        assert data.startswith(b"HTTP/1.1 101 ")
        assert b"upgrade: websocket" in data.lower()
        await world.client.send_all(b"frame")
        echoed = b""
        while len(echoed) < 5:
            echoed += await world.client.receive_some()
        assert echoed == b"FRAME"
        await world.client.send_eof()
        assert await world.client.receive_some() == b""
        await trio.testing.wait_all_tasks_blocked()
        assert world.records[-1].status == 101


def test_request_ids_are_unique_uuid4_across_refills_of_the_random_buffer():
    import re

    from waypoint.request_ids import REQUEST_IDS_PER_READ, new_request_id

    ids = [new_request_id() for _ in range(3 * REQUEST_IDS_PER_READ + 7)]
    assert len(set(ids)) == len(ids)
    shape = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
    assert all(shape.fullmatch(i) for i in ids)


async def test_a_mirrored_request_reaches_the_mirror_whole_with_a_shadow_authority(autojump_clock: MockClock) -> None:
    served: list[tuple[h11.Request, bytes]] = []
    mirrored: list[tuple[h11.Request, bytes]] = []
    async with h1_world(origin(seen=served), origin(seen=mirrored)) as world:
        status, _, body = await world.exchange(get("/mirrored", body=b"payload", method="POST"))
        assert (status, body) == (200, b"hello")
        await trio.testing.wait_all_tasks_blocked()  # the mirror runs beside the request
    assert [(r.target, b) for r, b in served] == [(b"/mirrored", b"payload")]
    ((request, copy),) = mirrored
    assert (request.method, request.target, copy) == (b"POST", b"/mirrored", b"payload")
    assert dict(request.headers)[b"host"].split(b":")[0].endswith(b"-shadow")
    assert [name for name, _ in request.headers].count(b"content-length") == 1

