"""HTTP/2 sessions (``waypoint.h2session``) against a real h2 peer the test drives over memory
streams: our server side against an h2 client, our client side against an h2 server.

Time is trio's MockClock (autojump): the idle timeout and the rate of resets are clock readings."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest
import trio
import trio.testing
from trio.testing import MockClock

from waypoint.h2session import SEND_HIGH_WATER, H2Session, H2Stream, StreamReset
from waypoint.limits import (
    CONNECTION_WINDOW,
    IDLE_TIMEOUT,
    MAX_CONCURRENT_STREAMS,
    MAX_RESETS_PER_SECOND,
    STREAM_WINDOW,
)

REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"svc"), (b":path", b"/echo")]
GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"svc"), (b":path", b"/")]
BIG_WINDOW = 2**31 - 1


@dataclass
class Peer:
    """The h2 library on the other end of the connection, driven by the test."""

    conn: h2.connection.H2Connection
    stream: trio.abc.Stream
    events: list[h2.events.Event] = field(default_factory=list)
    eof: bool = False

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            await self.stream.send_all(data)

    async def read(self) -> list[h2.events.Event]:
        """Take what has arrived (at least one read), answer what h2 must (ACKs), return the events."""
        data = await self.stream.receive_some()
        if not data:
            self.eof = True
            return []
        new = self.conn.receive_data(bytes(data))
        self.events += new
        await self.flush()
        return new

    async def until(self, predicate: Callable[[h2.events.Event], bool]) -> Any:  # the event matched
        for event in self.events:
            if predicate(event):
                return event
        while not self.eof:
            for event in await self.read():
                if predicate(event):
                    return event
        raise AssertionError("the connection ended first")

    async def response(self, stream_id: int) -> tuple[list[tuple[bytes, bytes]], bytes, list[tuple[bytes, bytes]]]:
        """The whole response on ``stream_id``, reading as it comes (and acknowledging its data)."""
        headers: list[tuple[bytes, bytes]] = []
        body = b""
        trailers: list[tuple[bytes, bytes]] = []
        seen = 0
        while True:
            while seen < len(self.events):
                event = self.events[seen]
                seen += 1
                if getattr(event, "stream_id", None) != stream_id:
                    continue
                if isinstance(event, (h2.events.ResponseReceived, h2.events.RequestReceived)):
                    headers = list(event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    self.conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                elif isinstance(event, h2.events.TrailersReceived):
                    trailers = list(event.headers)
                elif isinstance(event, h2.events.StreamEnded):
                    await self.flush()
                    return headers, body, trailers
                elif isinstance(event, h2.events.StreamReset):
                    raise AssertionError(f"stream {stream_id} reset: {event.error_code!r}")
            await self.flush()
            await self.read()
            assert not self.eof, "the connection ended first"


def _client() -> h2.connection.H2Connection:
    return h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))


def _server() -> h2.connection.H2Connection:
    return h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))


async def echo(session: H2Session, stream: H2Stream) -> None:
    """Answers with the request's body (and its trailers as ours)."""
    body = b""
    while chunk := await stream.receive_data():
        body += chunk
    await session.send_headers(stream.stream_id, [(b":status", b"200"), (b"x-length", str(len(body)).encode())])
    trailers = stream.trailers
    await session.send_data(stream, body, end_stream=not trailers)
    if trailers:
        await session.send_headers(stream.stream_id, trailers, end_stream=True)


@dataclass
class Served:
    session: H2Session
    peer: Peer
    finished: trio.Event
    handled: list[H2Stream]


@asynccontextmanager
async def h2_server(handler: Callable[[H2Session, H2Stream], Awaitable[None]] = echo, *, lockstep: bool = False,
                    window: int | None = None) -> AsyncIterator[Served]:
    """Our server side on one end, an h2 client (settings exchanged) on the other."""
    ours, theirs = trio.testing.lockstep_stream_pair() if lockstep else trio.testing.memory_stream_pair()
    handled: list[H2Stream] = []
    session: H2Session

    async def on_request(stream: H2Stream) -> None:
        handled.append(stream)
        await handler(session, stream)

    session = H2Session(ours, client_side=False, on_request=on_request)
    peer = Peer(_client(), theirs)
    peer.conn.initiate_connection()
    if window is not None:
        peer.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        peer.conn.increment_flow_control_window(window - 65535)
    finished = trio.Event()

    async def run() -> None:
        try:
            await session.run()
        finally:
            finished.set()

    with trio.fail_after(3 * IDLE_TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            await peer.flush()
            await peer.until(lambda e: isinstance(e, h2.events.RemoteSettingsChanged))
            await peer.until(lambda e: isinstance(e, h2.events.SettingsAcknowledged))
            yield Served(session, peer, finished, handled)
            nursery.cancel_scope.cancel()


async def request(peer: Peer, body: bytes = b"", headers: list[tuple[bytes, bytes]] = REQUEST,
                  trailers: list[tuple[bytes, bytes]] | None = None) -> int:
    stream_id = peer.conn.get_next_available_stream_id()
    peer.conn.send_headers(stream_id, headers, end_stream=not body and not trailers)
    view = memoryview(body)
    while view:
        window = min(peer.conn.local_flow_control_window(stream_id), peer.conn.max_outbound_frame_size)
        if window == 0:
            await peer.flush()
            await peer.read()
            continue
        peer.conn.send_data(stream_id, view[:window].tobytes(), end_stream=len(view) <= window and not trailers)
        view = view[window:]
    if trailers:
        peer.conn.send_headers(stream_id, trailers, end_stream=True)
    await peer.flush()
    return stream_id


# ---------------------------------------------------------------- server side


async def test_requests_and_responses_with_trailers(autojump_clock: MockClock) -> None:
    async with h2_server() as served:
        one = await request(served.peer, b"hello")
        two = await request(served.peer, b"grpc frame", trailers=[(b"grpc-status", b"0")])
        headers, body, trailers = await served.peer.response(one)
        assert (headers, body, trailers) == ([(b":status", b"200"), (b"x-length", b"5")], b"hello", [])
        headers, body, trailers = await served.peer.response(two)
        assert (body, trailers) == (b"grpc frame", [(b"grpc-status", b"0")])


async def test_bodies_larger_than_the_windows_flow_both_ways(autojump_clock: MockClock) -> None:
    """A request body past our stream and connection windows arrives whole (we open the window as the
    handler reads), and so does a response past the peer's default 64 KiB window."""
    body = bytes(range(256)) * ((CONNECTION_WINDOW + STREAM_WINDOW) // 256)
    async with h2_server() as served:
        stream_id = await request(served.peer, body)
        _, echoed, _ = await served.peer.response(stream_id)
        assert echoed == body


async def test_a_handler_that_does_not_read_holds_at_most_the_window(autojump_clock: MockClock) -> None:
    """Unread request data is bounded by the window we advertised: the peer cannot send more."""
    gate = trio.Event()

    async def slow(session: H2Session, stream: H2Stream) -> None:
        await gate.wait()
        await echo(session, stream)

    async with h2_server(slow) as served:
        peer = served.peer
        stream_id = peer.conn.get_next_available_stream_id()
        peer.conn.send_headers(stream_id, REQUEST)
        sent = 0
        while (window := peer.conn.local_flow_control_window(stream_id)) > 0:
            chunk = min(window, peer.conn.max_outbound_frame_size)
            peer.conn.send_data(stream_id, b"x" * chunk)
            sent += chunk
        await peer.flush()
        assert sent == STREAM_WINDOW
        with trio.move_on_after(5):  # nothing opens the window while the handler does not read
            await peer.until(lambda e: isinstance(e, h2.events.WindowUpdated) and e.stream_id == stream_id)
        assert peer.conn.local_flow_control_window(stream_id) == 0
        gate.set()
        peer.conn.end_stream(stream_id)
        await peer.flush()
        _, echoed, _ = await peer.response(stream_id)
        assert len(echoed) == STREAM_WINDOW


async def test_a_peer_that_does_not_read_makes_us_buffer_a_bounded_amount(autojump_clock: MockClock) -> None:
    """The peer opens a 2 GiB window and then reads nothing: the handler's sends block once about
    SEND_HIGH_WATER is queued, rather than filling memory up to the window."""
    progress = {"sent": 0}

    async def firehose(session: H2Session, stream: H2Stream) -> None:
        await session.send_headers(stream.stream_id, [(b":status", b"200")])
        chunk = b"y" * 16384
        while True:
            await session.send_data(stream, chunk)
            progress["sent"] += len(chunk)

    async with h2_server(firehose, lockstep=True, window=BIG_WINDOW) as served:
        await request(served.peer)
        # The peer stops reading; the clock jumps until every task waits.
        await trio.sleep(10)
        assert served.session.unsent <= SEND_HIGH_WATER + 16384 + 1024
        assert progress["sent"] <= 2 * SEND_HIGH_WATER + 65536


async def test_a_closed_session_does_not_wait_for_a_peer_that_does_not_read(autojump_clock: MockClock) -> None:
    async def firehose(session: H2Session, stream: H2Stream) -> None:
        await session.send_headers(stream.stream_id, [(b":status", b"200")])
        while True:
            await session.send_data(stream, b"z" * 16384)

    async with h2_server(firehose, lockstep=True, window=BIG_WINDOW) as served:
        await request(served.peer)
        await trio.sleep(10)
        start = trio.current_time()
        served.session.close(reason="test")
        await served.finished.wait()
        assert trio.current_time() - start <= 1.5


async def test_a_reset_from_the_peer_ends_only_that_stream(autojump_clock: MockClock) -> None:
    outcomes: dict[int, str] = {}

    async def waits(session: H2Session, stream: H2Stream) -> None:
        try:
            await echo(session, stream)
            outcomes[stream.stream_id] = "answered"
        except StreamReset as exc:
            outcomes[stream.stream_id] = f"reset: {exc}"

    async with h2_server(waits) as served:
        peer = served.peer
        one = await request(peer, headers=REQUEST)
        doomed = peer.conn.get_next_available_stream_id()
        peer.conn.send_headers(doomed, REQUEST)
        peer.conn.send_data(doomed, b"part")
        await peer.flush()
        while len(served.handled) < 2:
            await trio.sleep(0.01)
        peer.conn.reset_stream(doomed, h2.errors.ErrorCodes.CANCEL)
        await peer.flush()
        _, body, _ = await peer.response(one)
        three = await request(peer, b"after")
        _, body, _ = await peer.response(three)
        assert body == b"after"
        while doomed not in outcomes:
            await trio.sleep(0.01)
        assert outcomes[doomed].startswith("reset: the peer reset the stream (CANCEL)")
        assert served.session.closed is None


async def test_a_rapid_reset_flood_gets_goaway_enhance_your_calm(autojump_clock: MockClock) -> None:
    async def never(session: H2Session, stream: H2Stream) -> None:
        await trio.sleep_forever()

    async with h2_server(never) as served:
        peer = served.peer
        for _ in range(MAX_RESETS_PER_SECOND + 1):
            stream_id = peer.conn.get_next_available_stream_id()
            peer.conn.send_headers(stream_id, REQUEST)
            peer.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        await peer.flush()
        goaway = await peer.until(lambda e: isinstance(e, h2.events.ConnectionTerminated))
        assert goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
        await served.finished.wait()


async def test_resets_spread_over_time_are_not_a_flood(autojump_clock: MockClock) -> None:
    async with h2_server() as served:
        peer = served.peer
        for _ in range(3):
            for _ in range(MAX_RESETS_PER_SECOND // 2):
                stream_id = peer.conn.get_next_available_stream_id()
                peer.conn.send_headers(stream_id, REQUEST)
                peer.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
            await peer.flush()
            await trio.sleep(1.5)
        stream_id = await request(peer, b"still here")
        _, body, _ = await peer.response(stream_id)
        assert body == b"still here"


async def test_streams_past_the_limit_are_refused_and_the_connection_lives(autojump_clock: MockClock) -> None:
    gate = trio.Event()

    async def held(session: H2Session, stream: H2Stream) -> None:
        await gate.wait()
        await echo(session, stream)

    async with h2_server(held) as served:
        peer = served.peer
        assert peer.conn.remote_settings.max_concurrent_streams == MAX_CONCURRENT_STREAMS
        # Act as a client that ignores the advertised limit.
        peer.conn.remote_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = 10 * MAX_CONCURRENT_STREAMS
        peer.conn.remote_settings.acknowledge()
        ids = [await request(peer, b"b") for _ in range(MAX_CONCURRENT_STREAMS + 1)]
        refused = await peer.until(lambda e: isinstance(e, h2.events.StreamReset))
        assert (refused.stream_id, refused.error_code) == (ids[-1], h2.errors.ErrorCodes.REFUSED_STREAM)
        assert len(served.handled) == MAX_CONCURRENT_STREAMS
        gate.set()
        for stream_id in ids[:3]:
            _, body, _ = await peer.response(stream_id)
            assert body == b"b"
        assert served.session.closed is None


@pytest.mark.parametrize("headers", [
    [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"svc")],  # no :path
    [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"svc"), (b":path", b"/"), (b"Upper", b"x")],
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"connection", b"keep-alive")],
    [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/"), (b"content-length", b"x")],
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":path", b"/again")],
])
async def test_a_malformed_request_resets_its_stream_only(headers: list[tuple[bytes, bytes]],
                                                           autojump_clock: MockClock) -> None:
    async with h2_server() as served:
        peer = served.peer
        peer.conn.config.validate_outbound_headers = False
        peer.conn.config.normalize_outbound_headers = False
        bad = peer.conn.get_next_available_stream_id()
        peer.conn.send_headers(bad, headers, end_stream=True)
        await peer.flush()
        reset = await peer.until(lambda e: isinstance(e, h2.events.StreamReset))
        assert (reset.stream_id, reset.error_code) == (bad, h2.errors.ErrorCodes.PROTOCOL_ERROR)
        peer.conn.config.validate_outbound_headers = True
        peer.conn.config.normalize_outbound_headers = True
        good = await request(peer, b"fine")
        _, body, _ = await peer.response(good)
        assert body == b"fine"
        assert served.handled[-1].stream_id == good and len(served.handled) == 1


async def test_garbage_gets_goaway_protocol_error_and_the_connection_ends(autojump_clock: MockClock) -> None:
    async with h2_server() as served:
        await served.peer.stream.send_all(b"\x00\x00\x08\x07\x00\x00\x00\x00\x01" + b"\xff" * 64)  # GOAWAY on stream 1
        goaway = await served.peer.until(lambda e: isinstance(e, h2.events.ConnectionTerminated))
        assert goaway.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
        await served.finished.wait()


async def test_not_a_preface_ends_the_connection() -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    session = H2Session(ours, client_side=False, on_request=lambda stream: trio.lowlevel.checkpoint())
    await theirs.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    with trio.fail_after(5):
        await session.run()
    assert session.closed is not None and "protocol error" in session.closed


async def test_an_idle_connection_closes_after_the_idle_timeout(autojump_clock: MockClock) -> None:
    async with h2_server() as served:
        stream_id = await request(served.peer, b"x")
        await served.peer.response(stream_id)
        answered = trio.current_time()
        goaway = await served.peer.until(lambda e: isinstance(e, h2.events.ConnectionTerminated))
        assert goaway.error_code == h2.errors.ErrorCodes.NO_ERROR
        await served.finished.wait()
        assert IDLE_TIMEOUT <= trio.current_time() - answered <= IDLE_TIMEOUT * 1.2


async def test_a_connection_with_an_open_request_is_not_idle(autojump_clock: MockClock) -> None:
    async def never(session: H2Session, stream: H2Stream) -> None:
        await trio.sleep_forever()

    async with h2_server(never) as served:
        await request(served.peer, headers=REQUEST)
        await trio.sleep(2 * IDLE_TIMEOUT)
        assert served.session.closed is None


async def test_goaway_from_the_peer_ends_the_session_and_its_streams(autojump_clock: MockClock) -> None:
    outcomes: list[str] = []

    async def waits(session: H2Session, stream: H2Stream) -> None:
        try:
            await stream.receive_data()
        except StreamReset as exc:
            outcomes.append(str(exc))

    async with h2_server(waits) as served:
        served.peer.conn.send_headers(served.peer.conn.get_next_available_stream_id(), REQUEST)
        await served.peer.flush()
        while not served.handled:
            await trio.sleep(0.01)
        served.peer.conn.close_connection()
        await served.peer.flush()
        await served.finished.wait()
        assert outcomes == ["the peer sent GOAWAY (NO_ERROR)"]


# ---------------------------------------------------------------- client side


@asynccontextmanager
async def h2_client(window: int | None = None) -> AsyncIterator[tuple[H2Session, Peer, trio.Event]]:
    ours, theirs = trio.testing.memory_stream_pair()
    session = H2Session(ours, client_side=True)
    peer = Peer(_server(), theirs)
    peer.conn.initiate_connection()
    finished = trio.Event()

    async def run() -> None:
        try:
            await session.run()
        finally:
            finished.set()

    with trio.fail_after(3 * IDLE_TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            await peer.flush()
            await peer.until(lambda e: isinstance(e, h2.events.RemoteSettingsChanged))
            yield session, peer, finished
            nursery.cancel_scope.cancel()


async def test_client_request_with_a_large_body_and_trailers_both_ways(autojump_clock: MockClock) -> None:
    body = b"q" * (3 * 65535)  # past the peer's default windows
    async with h2_client() as (session, peer, _):
        stream = await session.request(REQUEST, end_stream=False)

        async def send() -> None:
            await session.send_data(stream, body)
            await session.send_headers(stream.stream_id, [(b"x-sum", b"1")], end_stream=True)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            headers, received, trailers = await peer.response(stream.stream_id)
        assert (dict(headers)[b":path"], len(received), trailers) == (b"/echo", len(body), [(b"x-sum", b"1")])
        peer.conn.send_headers(stream.stream_id, [(b":status", b"200")])
        for _ in range(10):
            peer.conn.send_data(stream.stream_id, b"r" * 10000)
        peer.conn.send_headers(stream.stream_id, [(b"grpc-status", b"0")], end_stream=True)
        await peer.flush()
        response = await stream.wait_headers()
        assert response == [(b":status", b"200")]

        async def drain_peer() -> None:
            while True:
                await peer.read()
                await peer.flush()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain_peer)
            data = b""
            while chunk := await stream.receive_data():
                data += chunk
            nursery.cancel_scope.cancel()
        assert len(data) == 100000 and stream.trailers == [(b"grpc-status", b"0")]
        session.forget(stream)
        assert session.available()


async def test_client_stream_reset_by_the_server(autojump_clock: MockClock) -> None:
    async with h2_client() as (session, peer, _):
        stream = await session.request(GET, end_stream=True)
        await peer.until(lambda e: isinstance(e, h2.events.RequestReceived))
        peer.conn.reset_stream(stream.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
        await peer.flush()
        with pytest.raises(StreamReset, match="REFUSED_STREAM"):
            await stream.wait_headers()
        session.forget(stream)
        assert session.available()


async def test_client_goaway_from_the_server_makes_it_unavailable(autojump_clock: MockClock) -> None:
    async with h2_client() as (session, peer, finished):
        stream = await session.request(GET, end_stream=True)
        await peer.until(lambda e: isinstance(e, h2.events.RequestReceived))
        peer.conn.close_connection(last_stream_id=0)
        await peer.flush()
        with pytest.raises(StreamReset, match="GOAWAY"):
            await stream.wait_headers()
        assert not session.available()
        await finished.wait()


async def test_client_respects_the_servers_stream_limit(autojump_clock: MockClock) -> None:
    async with h2_client() as (session, peer, _):
        peer.conn.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 2})
        await peer.flush()
        await peer.until(lambda e: isinstance(e, h2.events.SettingsAcknowledged))
        await session.request(GET, end_stream=False)
        assert session.available()
        await session.request(GET, end_stream=False)
        assert not session.available()
