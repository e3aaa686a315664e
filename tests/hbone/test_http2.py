"""The lean HTTP/2 layer under HBONE: interoperation with h2 as the peer, frames built by hand for
what a hostile or broken peer sends, and flow-control credit."""

from __future__ import annotations

import h2.events
import pytest
from hypothesis import given, settings, strategies as st

from hbone.http2 import (
    ConnectionClosed,
    ErrorCode,
    Http2Connection,
    LocalProtocolError,
    SendWindowOpened,
    Setting,
    StreamAborted,
    StreamData,
    StreamHalfClosed,
)
from hbone.limits import MAX_PREMATURE_RESETS
from tests.hbone.test_connect import Raw, of, pump
from tests.ztunnel.wire import (
    ACK,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PUSH_PROMISE,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    frame,
    frames_of,
    literal,
    setting,
    u32,
)

STREAM_WINDOW = 1 << 20
CONNECTION_WINDOW = 4 << 20
REQUEST = literal(b":method", b"CONNECT") + literal(b":authority", b"10.0.0.1:80")


class Peer:
    """An ``Http2Connection`` that records the header blocks it gets, with the h2-like receive/send pair."""

    def __init__(self, client_side: bool, **limits: int) -> None:
        self.headers: list[tuple[int, list[tuple[bytes, bytes]]]] = []
        self.ping_acks: list[bytes] = []
        settings = {Setting.INITIAL_WINDOW_SIZE: STREAM_WINDOW, Setting.MAX_CONCURRENT_STREAMS: 10,
                    Setting.MAX_HEADER_LIST_SIZE: 64 * 1024} | {Setting[k.upper()]: v for k, v in limits.items()}
        self.conn = Http2Connection(
            client_side=client_side, settings=settings, connection_window=CONNECTION_WINDOW,
            on_headers=lambda sid, headers, out: self.headers.append((sid, headers)),
            on_ping_ack=lambda payload, out: self.ping_acks.append(payload),
        )

    def receive_bytes(self, data: bytes) -> list:
        return self.conn.receive_bytes(data)

    def data_to_send(self) -> bytes:
        return self.conn.data_to_send()


def server_with_stream() -> Peer:
    """A server that has read the client's preface and one request on stream 1."""
    server = Peer(client_side=False)
    events = server.receive_bytes(PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, END_HEADERS, 1, REQUEST))
    assert events == [] and server.headers[0][0] == 1
    server.data_to_send()
    return server


def goaway_code(data: bytes) -> int:
    [goaway] = [f for f in frames_of(data) if f[0] == GOAWAY]
    return int.from_bytes(goaway[3][4:8], "big")


# ---------------------------------------------------------------- with h2 as the peer


def test_request_response_and_data_both_ways_with_an_h2_server():
    client, raw = Peer(client_side=True), Raw(client_side=False)
    pump(client, raw)
    sid = client.conn.open_stream([(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:80")])
    _, raw_events = pump(client, raw)
    [request] = of(raw_events, h2.events.RequestReceived)
    assert request.headers == [(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:80")]
    raw.conn.send_headers(sid, [(b":status", b"200")])
    raw.conn.send_data(sid, b"padded", pad_length=20)
    raw.conn.send_data(sid, b"end", end_stream=True)
    client_events, _ = pump(client, raw)
    assert client.headers == [(sid, [(b":status", b"200")])]
    assert client_events == [StreamData(sid, b"padded"), StreamData(sid, b"end"), StreamHalfClosed(sid)]
    assert client.conn.send_data(sid, b"x" * 100_000) == 65535  # h2's default stream window
    client.conn.end_stream(sid)  # the rest is not sent: the stream just ends
    _, raw_events = pump(client, raw)
    assert sum(len(e.data) for e in of(raw_events, h2.events.DataReceived)) == 65535
    assert max(len(e.data) for e in of(raw_events, h2.events.DataReceived)) == 16384  # h2's frame size
    assert of(raw_events, h2.events.StreamEnded)
    assert sid in client.conn.streams  # 9 bytes delivered but not yet acknowledged
    client.conn.acknowledge(sid, 9)
    assert sid not in client.conn.streams


def test_header_blocks_larger_than_a_frame_use_continuation_both_ways():
    raw, server = Raw(client_side=True), Peer(client_side=False)
    pump(raw, server)
    big = b"v" * 40_000  # over h2's and our 16 KiB frames
    raw.conn.send_headers(1, [(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:80"), (b"x-big", big)])
    pump(raw, server)
    assert server.headers == [(1, [(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:80"), (b"x-big", big)])]
    server.conn.send_headers(1, [(b":status", b"200"), (b"x-big", big)])
    frames = frames_of(server.data_to_send())
    assert [(kind, flags & END_HEADERS) for kind, flags, _, _ in frames] == [
        (HEADERS, 0), (CONTINUATION, 0), (CONTINUATION, END_HEADERS)]
    [response] = of(raw.receive_bytes(b"".join(frame(*f) for f in frames)), h2.events.ResponseReceived)
    assert response.headers == [(b":status", b"200"), (b"x-big", big)]


def test_ping_is_answered_and_our_ping_acknowledged():
    client, raw = Peer(client_side=True), Raw(client_side=False)
    pump(client, raw)
    client.conn.ping(b"12345678")
    raw.conn.ping(b"abcdefgh")
    _, raw_events = pump(client, raw)
    assert client.ping_acks == [b"12345678"]
    assert [e.ping_data for e in of(raw_events, h2.events.PingAckReceived)] == [b"abcdefgh"]


def test_a_peer_goaway_ends_every_stream():
    client, raw = Peer(client_side=True), Raw(client_side=False)
    pump(client, raw)
    sids = [client.conn.open_stream([(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:80")]) for _ in range(2)]
    pump(client, raw)
    raw.conn.close_connection(error_code=ErrorCode.ENHANCE_YOUR_CALM)
    client_events, _ = pump(client, raw)
    assert client_events == [StreamAborted(sid, ErrorCode.ENHANCE_YOUR_CALM, True) for sid in sids] + [
        ConnectionClosed(ErrorCode.ENHANCE_YOUR_CALM, "GOAWAY received", True)]
    assert client.conn.closed and client.conn.streams_available() == 0
    with pytest.raises(LocalProtocolError):
        client.conn.send_data(sids[0], b"x")


def test_a_lower_initial_window_from_the_peer_shrinks_open_streams():
    client = Peer(client_side=True)
    client.receive_bytes(frame(SETTINGS, 0, 0))
    sid = client.conn.open_stream([(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:80")])
    assert client.conn.send_data(sid, b"x" * 60_000) == 60_000
    assert client.receive_bytes(frame(SETTINGS, 0, 0, setting(Setting.INITIAL_WINDOW_SIZE, 50_000))) == []
    assert client.conn.send_window(sid) == 0  # 50,000 - 60,000 is below zero: nothing may be sent
    assert client.receive_bytes(frame(SETTINGS, 0, 0, setting(Setting.INITIAL_WINDOW_SIZE, 70_000))) == [
        SendWindowOpened(0)]
    assert client.conn.send_window(sid) == 5535  # the connection's 65,535 less the 60,000 sent


# ---------------------------------------------------------------- byte boundaries


def _client_transcript() -> bytes:
    """What an h2 client sends for a request, padded data, a PING, a big header block and an end."""
    raw = Raw(client_side=True)
    raw.conn.send_headers(1, [(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:80")])
    raw.conn.send_data(1, b"hello", pad_length=7)
    raw.conn.ping(b"pingpong")
    raw.conn.send_headers(3, [(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:81"), (b"x", b"y" * 20_000)])
    raw.conn.send_data(3, b"world" * 1000, end_stream=True)
    return raw.data_to_send()


TRANSCRIPT = _client_transcript()


def _events_in_pieces(cuts: list[int]) -> tuple[list, list, bytes]:
    server = Peer(client_side=False)
    events: list = []
    last = 0
    for cut in sorted(set(cuts)) + [len(TRANSCRIPT)]:
        events += server.receive_bytes(TRANSCRIPT[last:cut])
        last = cut
    return events, server.headers, server.data_to_send()


WHOLE = _events_in_pieces([])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(TRANSCRIPT)), max_size=12))
def test_bytes_cut_anywhere_mean_the_same(cuts):
    assert _events_in_pieces(cuts) == WHOLE


def test_byte_by_byte_means_the_same():
    assert _events_in_pieces(list(range(len(TRANSCRIPT)))) == WHOLE
    events, headers, _ = WHOLE
    assert [sid for sid, _ in headers] == [1, 3]
    assert events[0] == StreamData(1, b"hello") and events[-1] == StreamHalfClosed(3)


# ---------------------------------------------------------------- a peer's connection errors

CONNECTION_ERRORS = [
    ("data-on-stream-0", frame(DATA, 0, 0, b"x"), ErrorCode.PROTOCOL_ERROR),
    ("data-on-idle-stream", frame(DATA, 0, 5, b"x"), ErrorCode.PROTOCOL_ERROR),
    ("data-beyond-connection-window",
     b"".join(frame(HEADERS, END_HEADERS, s, REQUEST) + frame(DATA, 0, s, b"x" * 16384) * 64 for s in (3, 5, 7, 9))
     + frame(DATA, 0, 11, b"x"), ErrorCode.FLOW_CONTROL_ERROR),
    ("padding-over-length", frame(DATA, PADDED, 1, bytes([9]) + b"abc"), ErrorCode.PROTOCOL_ERROR),
    ("headers-on-stream-0", frame(HEADERS, END_HEADERS, 0, REQUEST), ErrorCode.PROTOCOL_ERROR),
    ("header-block-interrupted", frame(HEADERS, 0, 3, REQUEST) + frame(DATA, 0, 1, b"x"), ErrorCode.PROTOCOL_ERROR),
    ("continuation-alone", frame(CONTINUATION, END_HEADERS, 1, REQUEST), ErrorCode.PROTOCOL_ERROR),
    ("continuation-other-stream", frame(HEADERS, 0, 3, REQUEST) + frame(CONTINUATION, END_HEADERS, 5, b""),
     ErrorCode.PROTOCOL_ERROR),
    ("continuation-flood", frame(HEADERS, 0, 3, REQUEST) + frame(CONTINUATION, 0, 3, b"\x00" * 16000) * 5,
     ErrorCode.ENHANCE_YOUR_CALM),
    ("hpack-garbage", frame(HEADERS, END_HEADERS, 3, b"\xff\xff\xff\xff\xff\xff"), ErrorCode.COMPRESSION_ERROR),
    ("push-promise", frame(PUSH_PROMISE, END_HEADERS, 1, u32(2) + REQUEST), ErrorCode.PROTOCOL_ERROR),
    ("settings-odd-length", frame(SETTINGS, 0, 0, b"\x00\x04\x00"), ErrorCode.FRAME_SIZE_ERROR),
    ("settings-on-a-stream", frame(SETTINGS, 0, 1, b""), ErrorCode.PROTOCOL_ERROR),
    ("settings-ack-with-payload", frame(SETTINGS, ACK, 0, setting(4, 1)), ErrorCode.FRAME_SIZE_ERROR),
    ("window-over-2^31", frame(SETTINGS, 0, 0, setting(Setting.INITIAL_WINDOW_SIZE, 2**31)),
     ErrorCode.FLOW_CONTROL_ERROR),
    ("frame-size-too-small", frame(SETTINGS, 0, 0, setting(Setting.MAX_FRAME_SIZE, 100)), ErrorCode.PROTOCOL_ERROR),
    ("enable-push-2", frame(SETTINGS, 0, 0, setting(Setting.ENABLE_PUSH, 2)), ErrorCode.PROTOCOL_ERROR),
    ("ping-7-bytes", frame(PING, 0, 0, b"1234567"), ErrorCode.FRAME_SIZE_ERROR),
    ("ping-on-a-stream", frame(PING, 0, 1, b"12345678"), ErrorCode.PROTOCOL_ERROR),
    ("goaway-short", frame(GOAWAY, 0, 0, b"\x00\x00"), ErrorCode.FRAME_SIZE_ERROR),
    ("window-update-0", frame(WINDOW_UPDATE, 0, 0, u32(0)), ErrorCode.PROTOCOL_ERROR),
    ("window-update-overflow", frame(WINDOW_UPDATE, 0, 0, u32(2**31 - 1)), ErrorCode.FLOW_CONTROL_ERROR),
    ("window-update-idle-stream", frame(WINDOW_UPDATE, 0, 7, u32(1)), ErrorCode.PROTOCOL_ERROR),
    ("rst-on-stream-0", frame(RST_STREAM, 0, 0, u32(0)), ErrorCode.PROTOCOL_ERROR),
    ("rst-3-bytes", frame(RST_STREAM, 0, 1, b"\x00\x00\x00"), ErrorCode.FRAME_SIZE_ERROR),
    ("priority-on-stream-0", frame(PRIORITY, 0, 0, b"\x00" * 5), ErrorCode.PROTOCOL_ERROR),
    ("over-max-frame-size", b"\x00\x40\x01\x00\x00\x00\x00\x00\x01", ErrorCode.FRAME_SIZE_ERROR),  # header only
]


@pytest.mark.parametrize("data, code", [(d, c) for _, d, c in CONNECTION_ERRORS],
                         ids=[i for i, _, _ in CONNECTION_ERRORS])
def test_a_peer_connection_error_ends_the_connection_with_goaway(data, code):
    server = server_with_stream()
    events = server.receive_bytes(data)
    assert StreamAborted(1, code, False) in events
    closed = events[-1]
    assert isinstance(closed, ConnectionClosed) and closed.error_code == code and not closed.remote
    assert closed.reason.startswith("protocol error: ")
    assert goaway_code(server.data_to_send()) == code
    assert server.conn.closed and server.conn.streams == {}
    assert server.receive_bytes(frame(PING, 0, 0, b"12345678")) == []  # nothing is read after GOAWAY
    assert server.data_to_send() == b""


def test_a_client_that_does_not_speak_http2_gets_goaway():
    server = Peer(client_side=False)
    [closed] = server.receive_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert closed.error_code == ErrorCode.PROTOCOL_ERROR and "preface" in closed.reason
    assert goaway_code(server.data_to_send()) == ErrorCode.PROTOCOL_ERROR


def test_the_first_frame_must_be_settings():
    server = Peer(client_side=False)
    [closed] = server.receive_bytes(PREFACE + frame(PING, 0, 0, b"12345678"))
    assert closed.error_code == ErrorCode.PROTOCOL_ERROR and "SETTINGS" in closed.reason


def test_a_server_may_not_open_streams_on_a_client():
    client = Peer(client_side=True)
    [closed] = client.receive_bytes(frame(SETTINGS, 0, 0) + frame(HEADERS, END_HEADERS, 2, literal(b":status", b"200")))
    assert closed.error_code == ErrorCode.PROTOCOL_ERROR and "push" in closed.reason


def test_a_stream_over_the_advertised_limit_is_refused_and_the_connection_lives():
    # RFC 9113 section 5.1.2: a stream error (REFUSED_STREAM), so the client may retry it elsewhere.
    server = Peer(client_side=False, max_concurrent_streams=2)
    server.receive_bytes(PREFACE + frame(SETTINGS, 0, 0) + b"".join(
        frame(HEADERS, END_HEADERS, sid, REQUEST) for sid in (1, 3, 5)))
    assert not server.conn.closed and set(server.conn.streams) == {1, 3}
    assert (RST_STREAM, 0, 5, u32(ErrorCode.REFUSED_STREAM)) in frames_of(server.data_to_send())


def test_a_client_that_keeps_opening_over_the_limit_ends_as_a_rapid_reset_would():
    server = Peer(client_side=False, max_concurrent_streams=1)
    events = server.receive_bytes(PREFACE + frame(SETTINGS, 0, 0) + b"".join(
        frame(HEADERS, END_HEADERS, sid, REQUEST) for sid in range(1, 2 * (MAX_PREMATURE_RESETS + 3), 2)))
    assert events[-1].error_code == ErrorCode.ENHANCE_YOUR_CALM and server.conn.closed


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_after_the_preface_never_raises(garbage):
    server = server_with_stream()
    events = server.receive_bytes(garbage)
    assert all(isinstance(e, (StreamData, StreamHalfClosed, StreamAborted, SendWindowOpened, ConnectionClosed))
               for e in events)
    if server.conn.closed:
        assert isinstance(events[-1], ConnectionClosed)


# ---------------------------------------------------------------- a peer's stream errors


STREAM_ERRORS = [
    ("window-update-0", frame(WINDOW_UPDATE, 0, 1, u32(0)), ErrorCode.PROTOCOL_ERROR),
    ("window-update-overflow", frame(WINDOW_UPDATE, 0, 1, u32(2**31 - 1)), ErrorCode.FLOW_CONTROL_ERROR),
    ("data-beyond-stream-window", frame(DATA, 0, 1, b"x" * 16384) * 65, ErrorCode.FLOW_CONTROL_ERROR),
    ("data-after-end-stream", frame(DATA, END_STREAM, 1, b"") + frame(DATA, 0, 1, b"x"), ErrorCode.STREAM_CLOSED),
    ("headers-after-end-stream", frame(DATA, END_STREAM, 1, b"") + frame(HEADERS, END_HEADERS, 1, REQUEST),
     ErrorCode.STREAM_CLOSED),
    ("priority-4-bytes", frame(PRIORITY, 0, 1, b"\x00" * 4), ErrorCode.FRAME_SIZE_ERROR),
]


@pytest.mark.parametrize("data, code", [(d, c) for _, d, c in STREAM_ERRORS], ids=[i for i, _, _ in STREAM_ERRORS])
def test_a_peer_stream_error_resets_that_stream_only(data, code):
    server = server_with_stream()
    events = server.receive_bytes(data + frame(HEADERS, END_HEADERS, 3, REQUEST) + frame(DATA, 0, 3, b"next"))
    assert StreamAborted(1, code, False) in events and not of(events, ConnectionClosed)
    assert (RST_STREAM, 0, 1, u32(code)) in frames_of(server.data_to_send())
    assert events[-1] == StreamData(3, b"next") and 1 not in server.conn.streams
    assert server.conn.send_window() > 0  # the connection still sends


def test_unknown_frames_and_priority_are_ignored():
    server = server_with_stream()
    events = server.receive_bytes(frame(0x42, 0xFF, 1, b"whatever") + frame(PRIORITY, 0, 1, b"\x00" * 5)
                                  + frame(DATA, 0, 1, b"ok"))
    assert events == [StreamData(1, b"ok")]


def test_frames_for_a_stream_we_reset_are_dropped_and_credited():
    server = server_with_stream()
    server.conn.reset_stream(1, ErrorCode.CANCEL)
    assert frames_of(server.data_to_send()) == [(RST_STREAM, 0, 1, u32(ErrorCode.CANCEL))]
    late = frame(DATA, 0, 1, b"x" * 16384) * 200 + frame(WINDOW_UPDATE, 0, 1, u32(5)) + frame(RST_STREAM, 0, 1, u32(8))
    assert server.receive_bytes(late) == []
    [update] = frames_of(server.data_to_send())  # half the connection window, credited in one frame
    assert update[:3] == (WINDOW_UPDATE, 0, 0) and int.from_bytes(update[3], "big") >= CONNECTION_WINDOW // 2


# ---------------------------------------------------------------- credit


def test_credit_is_returned_in_batches_of_half_a_window():
    server = server_with_stream()
    half = STREAM_WINDOW // 2
    events = server.receive_bytes(frame(DATA, 0, 1, b"x" * 16384) * (half // 16384 + 1))
    assert sum(len(e.data) for e in events) == half + 16384
    server.conn.acknowledge(1, half - 1)
    assert server.data_to_send() == b""  # under half a window: nothing yet
    server.conn.acknowledge(1, 1)
    assert frames_of(server.data_to_send()) == [(WINDOW_UPDATE, 0, 1, u32(half))]
    with pytest.raises(LocalProtocolError):
        server.conn.acknowledge(1, 16385)  # more than is unread


def test_padding_is_credited_at_once():
    server = server_with_stream()
    padded = bytes([255]) + b"a" + b"\x00" * 255
    events = server.receive_bytes(frame(DATA, PADDED, 1, padded) * 2100)  # 257 bytes each, 1 of them data
    assert sum(len(e.data) for e in events) == 2100
    credited = {f[2]: int.from_bytes(f[3], "big") for f in frames_of(server.data_to_send()) if f[0] == WINDOW_UPDATE}
    assert credited[1] >= STREAM_WINDOW // 2  # 2100 * 256 bytes of padding, over half the stream's window


def test_our_settings_preface_and_connection_window():
    client = Peer(client_side=True)
    data = client.data_to_send()
    assert data.startswith(PREFACE)
    settings_frame, update = frames_of(data[len(PREFACE):])
    assert settings_frame[:3] == (SETTINGS, 0, 0)
    assert settings_frame[3] == (setting(Setting.INITIAL_WINDOW_SIZE, STREAM_WINDOW)
                                 + setting(Setting.MAX_CONCURRENT_STREAMS, 10)
                                 + setting(Setting.MAX_HEADER_LIST_SIZE, 65536))
    assert update == (WINDOW_UPDATE, 0, 0, u32(CONNECTION_WINDOW - 65535))
    client.receive_bytes(frame(SETTINGS, 0, 0))
    assert frames_of(client.data_to_send()) == [(SETTINGS, ACK, 0, b"")]


def test_a_late_header_block_for_a_gone_stream_is_decoded_and_dropped():
    raw, server = Raw(client_side=True), Peer(client_side=False)
    pump(raw, server)
    raw.conn.send_headers(1, [(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:80")])
    server.receive_bytes(raw.data_to_send())
    server.conn.reset_stream(1, ErrorCode.CANCEL)  # the client has not seen the reset yet:
    raw.conn.send_headers(1, [(b"x-trailer", b"t")], end_stream=True)  # its trailers enter HPACK's table
    assert server.receive_bytes(raw.data_to_send()) == []
    raw.conn.send_headers(3, [(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:81"), (b"x-trailer", b"t")])
    server.receive_bytes(raw.data_to_send())  # refers to the table entry the dropped block made
    assert server.headers[1:] == [
        (3, [(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:81"), (b"x-trailer", b"t")])]


def test_no_reset_is_sent_for_a_stream_closed_both_ways():
    server = server_with_stream()
    server.receive_bytes(frame(DATA, END_STREAM, 1, b"unread"))
    server.conn.send_headers(1, [(b":status", b"200")], end_stream=True)
    server.data_to_send()
    assert 1 in server.conn.streams  # closed both ways, but 6 bytes were never acknowledged
    server.conn.reset_stream(1, ErrorCode.CANCEL)
    assert 1 not in server.conn.streams and server.data_to_send() == b""  # RFC 9113 5.1: no frames on closed
