"""HTTP/1.1 in the waypoint (``waypoint.h1``) over memory streams: the server side (``serve_h1``)
against raw client bytes, the client side (``H1Upstream``) against an h11 server driven by the test.

Time is trio's MockClock (autojump): a timeout fires when every task waits, never by sleeping."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import h11
import pytest
import trio
import trio.testing
from trio.testing import MockClock

from waypoint.h1 import H1Downstream, H1Upstream, PeerGone, serve_h1
from waypoint.limits import (
    HEADER_READ_TIMEOUT,
    IDLE_TIMEOUT,
    MAX_REQUEST_HEAD_BYTES,
    MAX_REQUEST_HEADERS,
    RETRY_BUFFER_BYTES,
)
from waypoint.routing import RequestHead

# ---------------------------------------------------------------- server harness


@dataclass
class Server:
    client: trio.StapledStream
    seen: list[H1Downstream] = field(default_factory=list)
    finished: trio.Event = field(default_factory=trio.Event)
    finished_at: float | None = None
    parser: h11.Connection = field(default_factory=lambda: h11.Connection(h11.CLIENT))

    async def send(self, data: bytes) -> None:
        await self.client.send_all(data)

    async def response(self, method: bytes = b"GET") -> tuple[h11.Response, bytes, list[tuple[bytes, bytes]]]:
        """The next whole response (parsed by an h11 client that believes it sent ``method``)."""
        if self.parser.our_state is h11.DONE and self.parser.their_state is h11.DONE:
            self.parser.start_next_cycle()
        if self.parser.our_state is h11.IDLE:
            self.parser.send(h11.Request(method=method, target="/", headers=[("host", "a")]))
            self.parser.send(h11.EndOfMessage())
        head, body, trailers = None, b"", []
        while True:
            event = self.parser.next_event()
            if event is h11.NEED_DATA:
                self.parser.receive_data(bytes(await self.client.receive_some()))
                continue
            if isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                trailers = list(event.headers)
                assert head is not None
                return head, body, trailers
            else:
                raise AssertionError(f"unexpected {event!r}")

    async def rest(self) -> bytes:
        """Everything until the server closes the connection."""
        data = b""
        while chunk := await self.client.receive_some():
            data += chunk
        return data


Handler = Callable[[H1Downstream], Awaitable[None]]


@asynccontextmanager
async def h1_server(handler: Handler) -> AsyncIterator[Server]:
    client, server_side = trio.testing.memory_stream_pair()
    server = Server(client)

    async def handle(down: H1Downstream) -> None:
        server.seen.append(down)
        await handler(down)

    async def serve() -> None:
        try:
            await serve_h1(server_side, handle)
        finally:
            server.finished_at = trio.current_time()
            server.finished.set()
            await trio.aclose_forcefully(server_side)  # as the proxy closes the tunnel

    # A test that waits for something that never comes fails here (the clock jumps) instead of hanging.
    with trio.fail_after(3 * IDLE_TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            yield server
            nursery.cancel_scope.cancel()


async def echo(down: H1Downstream) -> None:
    """Answers with what it read: method, target, body length, body."""
    body = b""
    while chunk := await down.receive_body():
        body += chunk
    text = f"{down.head.method} {down.head.target} {len(body)} ".encode() + body
    await down.respond(200, [("content-length", str(len(text)))])
    await down.send_body(text)
    await down.end()


async def deny(down: H1Downstream) -> None:
    """Answers 403 without reading the body, as a policy denial does."""
    body = b"RBAC: access denied"
    await down.respond(403, [("content-type", "text/plain"), ("content-length", str(len(body)))])
    await down.send_body(body)
    await down.end()


GET = b"GET /%d HTTP/1.1\r\nHost: svc\r\n\r\n"


# ---------------------------------------------------------------- server: keep-alive


async def test_keep_alive_serves_two_requests_on_one_connection(autojump_clock: MockClock) -> None:
    async with h1_server(echo) as server:
        await server.send(GET % 1)
        head, body, _ = await server.response()
        assert (head.status_code, body) == (200, b"GET /1 0 ")
        await server.send(b"POST /2 HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\n\r\nabc")
        head, body, _ = await server.response()
        assert (head.status_code, body) == (200, b"POST /2 3 abc")
        assert not server.finished.is_set()
        assert [d.head.authority for d in server.seen] == ["svc", "svc"]


async def test_pipelined_requests_are_answered_in_order(autojump_clock: MockClock) -> None:
    async with h1_server(echo) as server:
        await server.send(GET % 1 + b"POST /2 HTTP/1.1\r\nHost: svc\r\nContent-Length: 2\r\n\r\nhi" + GET % 3)
        bodies = [(await server.response())[1] for _ in range(3)]
        assert bodies == [b"GET /1 0 ", b"POST /2 2 hi", b"GET /3 0 "]


async def test_connection_close_from_the_client_ends_after_the_response(autojump_clock: MockClock) -> None:
    async with h1_server(echo) as server:
        await server.send(b"GET / HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n")
        head, _, _ = await server.response()
        assert head.status_code == 200
        assert await server.rest() == b""
        await server.finished.wait()


# ---------------------------------------------------------------- server: bad input


async def expect_refusal(server: Server, status: int) -> None:
    head, _, _ = await server.response()
    assert head.status_code == status
    assert (b"connection", b"close") in head.headers
    assert await server.rest() == b""
    await server.finished.wait()
    assert server.seen == []  # the handler never saw it


@pytest.mark.parametrize("request_line", [
    b"GET\r\n\r\n",
    b"GET / HTTP/1.1 extra\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nbad header\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
])
async def test_malformed_request_gets_400_and_close(request_line: bytes, autojump_clock: MockClock) -> None:
    async with h1_server(echo) as server:
        await server.send(request_line)
        await expect_refusal(server, 400)


async def test_head_over_the_byte_limit_gets_431(autojump_clock: MockClock) -> None:
    async with h1_server(echo) as server:
        await server.send(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * MAX_REQUEST_HEAD_BYTES + b"\r\n\r\n")
        await expect_refusal(server, 431)


async def test_request_line_over_the_byte_limit_gets_431_before_it_ends(autojump_clock: MockClock) -> None:
    async with h1_server(echo) as server:
        await server.send(b"GET /" + b"a" * (MAX_REQUEST_HEAD_BYTES + 1))  # no end of line yet
        await expect_refusal(server, 431)


async def test_too_many_headers_get_431(autojump_clock: MockClock) -> None:
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(MAX_REQUEST_HEADERS))
    async with h1_server(echo) as server:
        await server.send(b"GET / HTTP/1.1\r\nHost: a\r\n" + headers + b"\r\n")
        await expect_refusal(server, 431)


async def test_as_many_headers_as_allowed_are_served(autojump_clock: MockClock) -> None:
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(MAX_REQUEST_HEADERS - 1))
    async with h1_server(echo) as server:
        await server.send(b"GET / HTTP/1.1\r\nHost: a\r\n" + headers + b"\r\n")
        head, _, _ = await server.response()
        assert head.status_code == 200


async def trickle(server: Server, data: bytes) -> None:
    """One byte a second, until the server hangs up."""
    try:
        for byte in data:
            await server.send(bytes([byte]))
            await trio.sleep(1)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def test_a_slow_head_is_closed_after_the_header_read_timeout(autojump_clock: MockClock) -> None:
    async with h1_server(echo) as server:
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle, server, b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"s" * 100 + b"\r\n\r\n")
            await server.finished.wait()
        assert server.finished_at is not None
        assert HEADER_READ_TIMEOUT <= server.finished_at - start < HEADER_READ_TIMEOUT + 1
        assert server.seen == []


async def test_a_slow_second_head_is_closed_after_the_header_read_timeout(autojump_clock: MockClock) -> None:
    async with h1_server(echo) as server:
        await server.send(GET % 1)
        await server.response()
        await trio.sleep(IDLE_TIMEOUT / 2)  # quiet, but within the idle timeout
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle, server, b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"s" * 100 + b"\r\n\r\n")
            await server.finished.wait()
        assert server.finished_at is not None
        assert HEADER_READ_TIMEOUT <= server.finished_at - start < HEADER_READ_TIMEOUT + 1
        assert len(server.seen) == 1


async def test_a_silent_new_connection_is_closed_after_the_header_read_timeout(autojump_clock: MockClock) -> None:
    async with h1_server(echo) as server:
        start = trio.current_time()
        assert await server.rest() == b""
        assert server.finished_at is not None and server.finished_at - start == pytest.approx(HEADER_READ_TIMEOUT)


async def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(autojump_clock: MockClock) -> None:
    async with h1_server(echo) as server:
        await server.send(GET % 1)
        await server.response()
        answered = trio.current_time()
        assert await server.rest() == b""
        assert server.finished_at is not None and server.finished_at - answered == pytest.approx(IDLE_TIMEOUT)


# ---------------------------------------------------------------- server: bodies


async def test_an_unread_body_is_drained_and_the_connection_reused(autojump_clock: MockClock) -> None:
    async with h1_server(deny) as server:
        body = b"x" * 1000
        await server.send(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n" + body + GET % 2)
        head, text, _ = await server.response()
        assert (head.status_code, text) == (403, b"RBAC: access denied")
        head, _, _ = await server.response()
        assert head.status_code == 403
        assert [d.head.target for d in server.seen] == ["/a", "/2"]
        assert not server.finished.is_set()


async def test_an_unread_chunked_body_is_drained_and_the_connection_reused(autojump_clock: MockClock) -> None:
    async with h1_server(deny) as server:
        await server.send(b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"5\r\nhello\r\n0\r\n\r\n" + GET % 2)
        await server.response()
        await server.response()
        assert [d.head.target for d in server.seen] == ["/a", "/2"]


async def test_an_unread_body_over_the_limit_closes_the_connection(autojump_clock: MockClock) -> None:
    size = RETRY_BUFFER_BYTES + 1
    async with h1_server(deny) as server:
        await server.send(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size + GET % 2)
        head, _, _ = await server.response()
        assert head.status_code == 403
        assert await server.rest() == b""
        assert len(server.seen) == 1


async def test_a_client_that_stops_sending_an_unread_body_is_closed(autojump_clock: MockClock) -> None:
    async with h1_server(deny) as server:
        await server.send(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nonly some")
        head, _, _ = await server.response()
        assert head.status_code == 403
        assert await server.rest() == b""
        assert len(server.seen) == 1


async def test_a_client_that_hangs_up_inside_an_unread_body_ends_only_its_connection(autojump_clock: MockClock) -> None:
    async with h1_server(deny) as server:
        await server.send(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nonly some")
        head, _, _ = await server.response()
        assert head.status_code == 403
        await server.client.send_eof()
        await server.finished.wait()  # serve_h1 returned instead of raising


async def test_chunked_request_body_with_trailers(autojump_clock: MockClock) -> None:
    async with h1_server(echo) as server:
        await server.send(b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"3\r\nabc\r\n4\r\ndefg\r\n0\r\nX-Checksum: 1\r\n\r\n" + GET % 2)
        _, body, _ = await server.response()
        assert body == b"POST /c 7 abcdefg"
        assert server.seen[0].request_ended()
        _, body, _ = await server.response()
        assert body == b"GET /2 0 "


async def test_a_response_without_length_is_chunked_and_carries_trailers(autojump_clock: MockClock) -> None:
    async def streamed(down: H1Downstream) -> None:
        await down.respond(200, [("content-type", "application/grpc")])
        await down.send_body(b"part1")
        await down.send_body(b"part2")
        await down.end([("grpc-status", "0")])

    async with h1_server(streamed) as server:
        await server.send(GET % 1)
        head, body, trailers = await server.response()
        assert (b"transfer-encoding", b"chunked") in head.headers
        assert body == b"part1part2"
        assert trailers == [(b"grpc-status", b"0")]


async def test_head_response_carries_no_body_and_the_connection_stays_usable(autojump_clock: MockClock) -> None:
    """A reply written with its body (a local 403, or an upstream's GET-like answer) to a HEAD
    request goes out as the head alone."""
    async with h1_server(deny) as server:
        await server.send(b"HEAD /a HTTP/1.1\r\nHost: a\r\n\r\n" + GET % 2)
        head, body, _ = await server.response(b"HEAD")
        assert head.status_code == 403
        assert (b"content-length", b"19") in head.headers
        assert body == b""
        head, body, _ = await server.response()
        assert (head.status_code, body) == (403, b"RBAC: access denied")
        assert server.seen[0].sent_bytes == 0


async def test_no_content_gets_no_content_length(autojump_clock: MockClock) -> None:
    async def no_content(down: H1Downstream) -> None:
        await down.respond(204, [], end=True)

    async with h1_server(no_content) as server:
        await server.send(GET % 1 + GET % 2)
        head, _, _ = await server.response()
        assert head.status_code == 204
        assert not [v for n, v in head.headers if n == b"content-length"]
        head, _, _ = await server.response()
        assert head.status_code == 204


async def test_expect_100_continue_gets_100_when_the_body_is_read(autojump_clock: MockClock) -> None:
    async with h1_server(echo) as server:
        await server.send(b"POST /e HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        with trio.fail_after(1):  # curl waits 1 s before it sends the body anyway
            interim = await server.client.receive_some()
        assert interim.startswith(b"HTTP/1.1 100 ")
        await server.send(b"body")
        parser = h11.Connection(h11.CLIENT)
        parser.send(h11.Request(method="POST", target="/", headers=[("host", "a"), ("content-length", "4")]))
        parser.receive_data(bytes(interim))
        server.parser = parser
        assert isinstance(parser.next_event(), h11.InformationalResponse)
        parser.send(h11.Data(data=b"body"))
        parser.send(h11.EndOfMessage())
        _, body, _ = await server.response()
        assert body == b"POST /e 4 body"


async def test_expect_100_continue_refused_without_reading_gets_no_100(autojump_clock: MockClock) -> None:
    async with h1_server(deny) as server:
        await server.send(b"POST /e HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        head, _, _ = await server.response(b"POST")
        assert head.status_code == 403


async def test_upgrade_101_then_raw_bytes_both_ways(autojump_clock: MockClock) -> None:
    async def upgrade(down: H1Downstream) -> None:
        assert down.upgrade == "websocket"
        assert await down.receive_body() == b""
        await down.respond(101, [("connection", "upgrade"), ("upgrade", "websocket")])
        raw = down.switched()
        while data := await raw.receive_some():
            await raw.send_all(data.upper())

    async with h1_server(upgrade) as server:
        # The first raw bytes come in the same segment as the head: h11 holds them, switched() returns them.
        await server.send(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nhello")
        data = b""
        while b"HELLO" not in data:
            data += await server.client.receive_some()
        assert data.startswith(b"HTTP/1.1 101 ")
        assert data.endswith(b"\r\n\r\nHELLO")
        await server.send(b"more")
        assert await server.client.receive_some() == b"MORE"
        await server.client.send_eof()
        assert await server.client.receive_some() == b""
        await server.finished.wait()


async def test_a_handler_that_gives_up_closes_the_connection(autojump_clock: MockClock) -> None:
    async def abort(down: H1Downstream) -> None:
        await down.respond(200, [("content-length", "10")])
        await down.send_body(b"short")
        down.abort()

    async with h1_server(abort) as server:
        await server.send(GET % 1 + GET % 2)
        data = await server.rest()
        assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"short")
        assert len(server.seen) == 1


# ---------------------------------------------------------------- client: H1Upstream


@dataclass
class Origin:
    """The far end of an upstream connection: an h11 server the test drives."""

    stream: trio.abc.Stream
    conn: h11.Connection = field(default_factory=lambda: h11.Connection(h11.SERVER))

    async def request(self) -> tuple[h11.Request, bytes, list[tuple[bytes, bytes]]]:
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        head, body = None, b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(bytes(await self.stream.receive_some()))
            elif isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return head, body, list(event.headers)
            else:
                raise AssertionError(f"unexpected {event!r}")

    async def send(self, *events: h11.Event) -> None:
        for event in events:
            data = self.conn.send(event)
            if data:
                await self.stream.send_all(data)


@asynccontextmanager
async def upstream() -> AsyncIterator[tuple[H1Upstream, Origin, list[bool]]]:
    ours, theirs = trio.testing.memory_stream_pair()
    released: list[bool] = []
    with trio.fail_after(60):
        yield H1Upstream(ours, lambda _up, clean: released.append(clean)), Origin(theirs), released


HEAD = RequestHead("POST", "/x", "svc:80", (("content-type", "text/plain"),))


async def exchange(up: H1Upstream, origin: Origin, response: list[h11.Event], body: bytes = b"ping"
                   ) -> tuple[int, bytes]:
    await up.start(HEAD, [("content-type", "text/plain")], body_length=len(body))
    await up.send_body(body)
    await up.end_body()
    request, received, _ = await origin.request()
    assert (request.method, request.target, received) == (b"POST", b"/x", body)
    assert (b"host", b"svc:80") in request.headers
    await origin.send(*response)
    status, _ = await up.response()
    data = b""
    while chunk := await up.receive_body():
        data += chunk
    return status, data


OK = [h11.Response(status_code=200, headers=[("content-length", "2")]), h11.Data(data=b"ok"), h11.EndOfMessage()]


async def test_upstream_is_reused_after_a_clean_exchange(autojump_clock: MockClock) -> None:
    async with upstream() as (up, origin, released):
        assert await exchange(up, origin, OK) == (200, b"ok")
        await up.release(True)
        assert released == [True]
        assert await exchange(up, origin, OK, b"second") == (200, b"ok")
        await up.release(True)
        assert released == [True, True]


async def test_upstream_is_not_reused_when_the_caller_gave_up(autojump_clock: MockClock) -> None:
    async with upstream() as (up, origin, released):
        await up.start(HEAD, [], body_length=4)
        await up.send_body(b"ping")
        await up.end_body()
        await origin.request()
        await origin.send(h11.Response(status_code=200, headers=[("content-length", "2")]))
        await up.response()
        await up.release(True)  # the body was never read: the exchange is not complete
        assert released == [False]


async def test_upstream_closed_inside_its_body_is_not_reused(autojump_clock: MockClock) -> None:
    async with upstream() as (up, origin, released):
        await up.start(HEAD, [], body_length=0)
        await up.end_body()
        await origin.request()
        await origin.send(h11.Response(status_code=200, headers=[("content-length", "10")]), h11.Data(data=b"short"))
        await origin.stream.aclose()
        assert await up.response() == (200, [("content-length", "10")])
        assert await up.receive_body() == b"short"
        with pytest.raises(PeerGone):
            await up.receive_body()
        await up.release(True)
        assert released == [False]


async def test_upstream_that_says_connection_close_is_not_reused(autojump_clock: MockClock) -> None:
    async with upstream() as (up, origin, released):
        response = [h11.Response(status_code=200, headers=[("content-length", "2"), ("connection", "close")]),
                    h11.Data(data=b"ok"), h11.EndOfMessage()]
        assert await exchange(up, origin, response) == (200, b"ok")
        await up.release(True)
        assert released == [False]


async def test_upstream_response_without_length_is_read_to_eof_and_not_reused(autojump_clock: MockClock) -> None:
    async with upstream() as (up, origin, released):
        await up.start(HEAD, [], body_length=0)
        await up.end_body()
        await origin.request()
        origin.conn = h11.Connection(h11.SERVER)  # answer as an HTTP/1.0 server would: raw bytes
        await origin.stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
        await origin.stream.aclose()
        assert (await up.response())[0] == 200
        data = b""
        while chunk := await up.receive_body():
            data += chunk
        assert data == b"until the end"
        await up.release(True)
        assert released == [False]


async def test_upstream_trailers_and_interim_responses(autojump_clock: MockClock) -> None:
    async with upstream() as (up, origin, released):
        response = [h11.InformationalResponse(status_code=100, headers=[]),
                    h11.Response(status_code=200, headers=[("transfer-encoding", "chunked")]),
                    h11.Data(data=b"ok"), h11.EndOfMessage(headers=[("grpc-status", "0"), ("grpc-message", "fine")])]
        assert await exchange(up, origin, response) == (200, b"ok")
        assert up.trailers == [("grpc-status", "0"), ("grpc-message", "fine")]
        await up.release(True)
        assert released == [True]
        assert await exchange(up, origin, OK) == (200, b"ok")
        assert up.trailers is None


async def test_upstream_chunked_request_body(autojump_clock: MockClock) -> None:
    async with upstream() as (up, origin, _released):
        await up.start(HEAD, [], body_length=None)
        await up.send_body(b"ab")
        await up.send_body(b"cd")
        await up.end_body()
        request, body, _ = await origin.request()
        assert (b"transfer-encoding", b"chunked") in request.headers
        assert body == b"abcd"


async def test_upstream_head_response_has_no_body(autojump_clock: MockClock) -> None:
    async with upstream() as (up, origin, released):
        await up.start(RequestHead("HEAD", "/", "svc", ()), [], body_length=0)
        await up.end_body()
        await origin.request()
        await origin.send(h11.Response(status_code=200, headers=[("content-length", "100")]), h11.EndOfMessage())
        assert await up.response() == (200, [("content-length", "100")])
        assert await up.receive_body() == b""
        await up.release(True)
        assert released == [True]


async def test_upstream_switches_protocols_on_101(autojump_clock: MockClock) -> None:
    async with upstream() as (up, origin, _released):
        head = RequestHead("GET", "/ws", "svc", ())
        await up.start(head, [("connection", "upgrade"), ("upgrade", "websocket")], body_length=0)
        await up.end_body()
        await origin.request()
        await origin.stream.send_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                                     b"Upgrade: websocket\r\n\r\nfirst")
        status, headers = await up.response()
        assert status == 101 and ("upgrade", "websocket") in headers
        raw = up.switched()
        assert await raw.receive_some() == b"first"
        await raw.send_all(b"back")
        assert await origin.stream.receive_some() == b"back"


async def test_a_request_body_that_stalls_ends_the_exchange_after_the_idle_timeout(
        autojump_clock: MockClock) -> None:
    failures: list[Exception] = []

    async def reader(down: H1Downstream) -> None:
        try:
            await echo(down)
        except PeerGone as exc:
            failures.append(exc)
            raise

    async with h1_server(reader) as server:
        await server.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
        start = trio.current_time()
        assert await server.rest() == b""
        assert server.finished_at is not None and server.finished_at - start == pytest.approx(IDLE_TIMEOUT)
        assert len(failures) == 1


async def test_a_body_sent_with_its_end_goes_out_in_one_write_and_the_connection_goes_on(autojump_clock: MockClock
                                                                                         ) -> None:
    async def whole(down: H1Downstream) -> None:
        assert down.request_ended()  # a GET without Content-Length or Transfer-Encoding has no body (RFC 9112 6.3)
        await down.respond(200, [("content-type", "text/plain")], hold=True)  # no length: chunked
        await down.send_body(b"all of it", end=True)

    async with h1_server(whole) as server:
        await server.send(GET % 1)
        head, body, _ = await server.response()
        assert (b"transfer-encoding", b"chunked") in head.headers and body == b"all of it"
        await server.send(GET % 2)
        _, body, _ = await server.response()
        assert body == b"all of it" and len(server.seen) == 2


async def test_a_request_with_a_length_is_not_known_to_have_ended_before_its_body_is_read(autojump_clock: MockClock
                                                                                          ) -> None:
    ended: list[bool] = []

    async def look(down: H1Downstream) -> None:
        ended.append(down.request_ended())
        await echo(down)
        ended.append(down.request_ended())

    async with h1_server(look) as server:
        await server.send(b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
        _, body, _ = await server.response()
    assert body == b"POST /p 2 hi" and ended == [False, True]
