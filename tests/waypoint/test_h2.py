"""HTTP/2 exchanges (``waypoint.h2``): a client's stream as a ``Downstream`` and a request to an
endpoint as an ``Upstream``, over ``H2Session`` and a real h2 peer on memory streams."""

from __future__ import annotations

import h2.errors
import h2.events
import pytest
import trio
from trio.testing import MockClock

from tests.waypoint.test_h2session import GET, Peer, h2_client, h2_server
from waypoint.h2 import H2Downstream, H2Upstream, MalformedRequest
from waypoint.h2session import H2Session, H2Stream
from waypoint.limits import MAX_REQUEST_HEADERS
from waypoint.routing import RequestHead


async def local_reply(session: H2Session, stream: H2Stream) -> None:
    """What the pipeline does for a 403: a head with a length, the text, the end."""
    try:
        down = H2Downstream(session, stream)
    except MalformedRequest:
        session.reset(stream.stream_id, h2.errors.ErrorCodes.PROTOCOL_ERROR)
        return
    text = f"denied {down.head.method} {down.head.target} at {down.head.authority}".encode()
    await down.respond(403, [("content-type", "text/plain"), ("content-length", str(len(text)))])
    await down.send_body(text)
    await down.end()


async def send(peer: Peer, headers: list[tuple[bytes, bytes]]) -> int:
    stream_id = peer.conn.get_next_available_stream_id()
    peer.conn.send_headers(stream_id, headers, end_stream=True)
    await peer.flush()
    return stream_id


async def test_downstream_head_and_reply(autojump_clock: MockClock) -> None:
    async with h2_server(local_reply) as served:
        stream_id = await send(served.peer, GET)
        headers, body, _ = await served.peer.response(stream_id)
        assert dict(headers)[b":status"] == b"403"
        assert body == b"denied GET / at svc"


async def test_downstream_reply_to_head_has_no_data(autojump_clock: MockClock) -> None:
    async with h2_server(local_reply) as served:
        head = [(b":method", b"HEAD"), *GET[1:]]
        stream_id = await send(served.peer, head)
        headers, body, _ = await served.peer.response(stream_id)
        assert dict(headers)[b":status"] == b"403" and body == b""
        assert not any(isinstance(e, h2.events.StreamReset) for e in served.peer.events)


async def test_downstream_with_too_many_headers_is_reset(autojump_clock: MockClock) -> None:
    async with h2_server(local_reply) as served:
        many = [*GET, *((f"x-h{i}".encode(), b"v") for i in range(MAX_REQUEST_HEADERS + 1))]
        stream_id = await send(served.peer, many)
        reset = await served.peer.until(lambda e: isinstance(e, h2.events.StreamReset))
        assert (reset.stream_id, reset.error_code) == (stream_id, h2.errors.ErrorCodes.PROTOCOL_ERROR)
        ok = await send(served.peer, GET)
        headers, _, _ = await served.peer.response(ok)
        assert dict(headers)[b":status"] == b"403"


async def test_upstream_request_response_and_trailers(autojump_clock: MockClock) -> None:
    released: list[H2Session] = []
    async with h2_client() as (session, peer, _):
        up = H2Upstream(session, released.append)
        await up.start(RequestHead("POST", "/pkg.Svc/Call", "svc:9090", ()), [("te", "trailers")], end_stream=False)
        await up.send_body(b"msg")
        await up.end_body()
        headers, body, _ = await peer.response(up.stream.stream_id if up.stream else 0)
        assert dict(headers)[b":path"] == b"/pkg.Svc/Call" and dict(headers)[b":authority"] == b"svc:9090"
        assert body == b"msg"
        assert up.stream is not None
        peer.conn.send_headers(up.stream.stream_id, [(b":status", b"200"), (b"content-type", b"application/grpc")])
        peer.conn.send_data(up.stream.stream_id, b"reply")
        peer.conn.send_headers(up.stream.stream_id, [(b"grpc-status", b"0")], end_stream=True)
        await peer.flush()
        assert await up.response() == (200, [("content-type", "application/grpc")])
        assert await up.receive_body() == b"reply"
        assert await up.receive_body() == b""
        assert up.trailers == [("grpc-status", "0")]
        await up.release(True)
        assert released == [session] and session.available()


async def test_upstream_response_without_status_is_malformed(autojump_clock: MockClock) -> None:
    async with h2_client() as (session, peer, _):
        peer.conn.config.validate_outbound_headers = False
        up = H2Upstream(session, lambda _s: None)
        await up.start(RequestHead("GET", "/", "svc", ()), [], end_stream=True)
        assert up.stream is not None
        await peer.until(lambda e: isinstance(e, h2.events.RequestReceived))
        peer.conn.send_headers(up.stream.stream_id, [(b":status", b"abc")], end_stream=True)
        await peer.flush()
        with pytest.raises(MalformedRequest):
            await up.response()
        await up.release(False)
        await trio.lowlevel.checkpoint()
