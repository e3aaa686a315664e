"""Fuzz hbone.http2.Http2Connection.receive_bytes, server and client side.

The promises (the module docstring): the peer's faults never raise, they become events (a stream
error ``StreamAborted`` for that stream, a connection error GOAWAY, ``StreamAborted`` for every live
stream, then ``ConnectionClosed``); control frames the peer provokes wait for ``data_to_send`` at
most MAX_PENDING_CONTROL_FRAMES at a time; after a GOAWAY nothing is read or sent. So for any input:

- ``receive_bytes`` returns events and raises nothing;
- the events are well-formed: known types, a stream's data only before its end, each stream aborted
  and half-closed at most once, ``ConnectionClosed`` once and last;
- what we send is a sequence of well-formed frames, GOAWAY at most once and last, never more than
  OUTPUT_PER_INPUT_BYTE times what the peer sent (plus our opening and one GOAWAY), and from a peer
  that does not read, at most MAX_PENDING_CONTROL_FRAMES + 1 control frames.

Inputs: bytes at random after the preface, and valid-looking frames (``tests.fuzz.frames``), each
cut at random points as a socket's reads would deliver them.
"""

from __future__ import annotations

from collections.abc import Mapping

from hypothesis import example, given, strategies as st

from hbone.hpack_codec import Encoder
from hbone.http2 import (
    DEFAULT_WINDOW,
    FLAG_ACK,
    GOAWAY,
    LARGEST_FRAME_SIZE,
    MAX_STREAM_ID,
    MAX_WINDOW,
    PING,
    PREFACE,
    RST_STREAM,
    SETTINGS,
    ConnectionClosed,
    ErrorCode,
    Header,
    Http2Connection,
    SendWindowOpened,
    Setting,
    StreamAborted,
    StreamData,
    StreamHalfClosed,
)
from hbone.limits import (
    CONNECTION_WINDOW,
    MAX_CONCURRENT_STREAMS,
    MAX_FRAME_SIZE,
    MAX_HEADER_LIST_SIZE,
    MAX_PENDING_CONTROL_FRAMES,
    STREAM_WINDOW,
)
from tests.fuzz import fuzz_settings
from tests.fuzz.frames import frame, frames, frames_of, opening, pieces, skip_preface

# A GOAWAY we send: its header, last stream id, error code and at most 256 bytes of reason.
GOAWAY_MAX = 9 + 8 + 256
# Our output per byte the peer sent: the costliest provocation is a 9-byte frame answered with a
# 13-byte RST_STREAM (1.44), plus the WINDOW_UPDATEs for the data the test acknowledges.
OUTPUT_PER_INPUT_BYTE = 3
# The control frames a peer can make us queue (PING and SETTINGS ACKs, RST_STREAM).
CONTROL_FRAMES = (PING, SETTINGS, RST_STREAM)

# What a connection may advertise: nothing (the protocol's defaults), HBONE's, and small limits
# that a few frames reach.
ADVERTISED: list[tuple[Mapping[Setting, int], int]] = [
    ({}, DEFAULT_WINDOW),
    ({Setting.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS, Setting.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
      Setting.MAX_FRAME_SIZE: MAX_FRAME_SIZE, Setting.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE}, CONNECTION_WINDOW),
    ({Setting.MAX_CONCURRENT_STREAMS: 2, Setting.INITIAL_WINDOW_SIZE: 100, Setting.MAX_HEADER_LIST_SIZE: 200,
      Setting.HEADER_TABLE_SIZE: 0}, DEFAULT_WINDOW),
]
REQUEST: list[Header] = [(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:80")]
REQUEST_BLOCK = Encoder().encode(REQUEST)
# The PING flood (CVE-2019-9512) from a peer that does not read: one frame past the control bound.
PING_FLOOD = frame(PING, 0, 0, bytes(8)) * (MAX_PENDING_CONTROL_FRAMES + 2)


class Peer:
    """Our side of one connection, fed a hostile peer's bytes, checking every promise as it goes.

    ``answer``: the layer above answers each stream the peer opens (200, or a reset for ids 3 mod 4)
    and acknowledges all data, as HBONE does; ``read``: the peer reads what we send."""

    def __init__(self, client_side: bool, advertised: int, *, answer: bool, read: bool) -> None:
        settings, window = ADVERTISED[advertised]
        self.conn: Http2Connection[object] = Http2Connection(
            client_side=client_side, settings=settings, connection_window=window,
            on_headers=self._on_headers, on_ping_ack=self._on_ping_ack, on_stream_closed=self._on_stream_closed)
        self.limit = settings.get(Setting.MAX_CONCURRENT_STREAMS)
        self.answer, self.read = answer, read
        if client_side:
            for _ in range(min(3, self.conn.streams_available())):
                self.conn.open_stream(REQUEST)
        self.opening = len(self.conn.data_to_send())
        self.output = bytearray()
        self.received = 0
        self.answered: set[int] = set()
        self.left_table: set[int] = set()
        self.ended: set[int] = set()  # half-closed by the peer, or aborted
        self.aborted: set[int] = set()
        self.connection_closed = False

    # -- the hooks

    def _on_headers(self, sid: int, headers: list[Header], out: list[object]) -> None:
        assert 0 < sid <= MAX_STREAM_ID
        assert all(type(name) is bytes and type(value) is bytes for name, value in headers)
        stream = self.conn.streams.get(sid)
        if self.answer and sid not in self.answered and stream is not None and not stream.local_closed:
            self.answered.add(sid)
            if sid % 4 == 3:
                self.conn.reset_stream(sid, ErrorCode.CANCEL)
            else:
                self.conn.send_headers(sid, [(b":status", b"200")])

    def _on_ping_ack(self, payload: bytes, out: list[object]) -> None:
        assert len(payload) == 8

    def _on_stream_closed(self, sid: int) -> None:
        assert sid not in self.conn.streams, f"stream {sid} reported closed while still in the table"
        assert sid not in self.left_table, f"stream {sid} left the table twice"
        self.left_table.add(sid)

    # -- feeding

    def feed(self, chunk: bytes) -> None:
        self.received += len(chunk)
        events = self.conn.receive_bytes(chunk)  # the promise: never raises
        assert isinstance(events, list)
        for index, event in enumerate(events):
            self._check(event, last=index == len(events) - 1)
        self._check_state()
        if self.answer:
            for event in events:
                if type(event) is StreamData:
                    self.conn.acknowledge(event.stream_id, len(event.data))
        if self.read:
            self.output += self.conn.data_to_send()

    def _check(self, event: object, *, last: bool) -> None:
        assert not self.connection_closed, f"{event} after ConnectionClosed"
        if type(event) is ConnectionClosed:
            assert last and self.conn.closed
            assert 0 <= event.error_code < 2**32 and isinstance(event.reason, str)
            self.connection_closed = True
            return
        assert type(event) in (StreamData, StreamHalfClosed, StreamAborted, SendWindowOpened), event
        sid = event.stream_id
        if type(event) is SendWindowOpened:
            assert 0 <= sid <= MAX_STREAM_ID
            return
        assert 0 < sid <= MAX_STREAM_ID
        if type(event) is StreamData:
            assert type(event.data) is bytes and event.data, event
            assert sid not in self.ended, f"data on stream {sid} after its end"
        elif type(event) is StreamHalfClosed:
            assert sid not in self.ended, f"stream {sid} half-closed after its end"
            self.ended.add(sid)
        else:
            assert sid not in self.aborted, f"stream {sid} aborted twice"
            assert 0 <= event.error_code < 2**32 and isinstance(event.remote, bool)
            self.aborted.add(sid)
            self.ended.add(sid)

    def _check_state(self) -> None:
        conn = self.conn
        if conn.closed:
            assert not conn.streams, "streams outlived the connection"
        peers = [sid for sid, stream in conn.streams.items()
                 if (sid & 1) != conn.client_side and not (stream.local_closed and stream.remote_closed)]
        if self.limit is not None:
            assert len(peers) <= self.limit, f"{len(peers)} streams open, over the {self.limit} advertised"
        for stream in conn.streams.values():
            assert stream.recv_window >= 0 and stream.send_window <= MAX_WINDOW

    def finish(self) -> None:
        """What we sent, all of it: well-formed, GOAWAY at most once and last, and bounded."""
        self.output += self.conn.data_to_send()
        sent = frames_of(skip_preface(bytes(self.output)))
        assert all(len(payload) <= LARGEST_FRAME_SIZE for _, _, _, payload in sent)
        goaways = [index for index, (kind, _, _, _) in enumerate(sent) if kind == GOAWAY]
        assert goaways in ([], [len(sent) - 1]), f"GOAWAY at frames {goaways} of {len(sent)}"
        assert len(self.output) <= OUTPUT_PER_INPUT_BYTE * self.received + GOAWAY_MAX
        if not self.read:
            control = [kind for kind, flags, _, _ in sent
                       if kind == RST_STREAM or (kind in (PING, SETTINGS) and flags & FLAG_ACK)]
            assert len(control) <= MAX_PENDING_CONTROL_FRAMES + 1, f"{len(control)} control frames queued unread"
        if self.connection_closed:
            assert self.conn.receive_bytes(frame(PING, 0, 0, bytes(8))) == [], "read after the connection closed"


def run(peer: Peer, pieces: list[bytes]) -> None:
    for piece in pieces:
        peer.feed(piece)
    peer.finish()


# The first frame must be SETTINGS: mostly it is, so that the frames after it are read.
settings_first = st.integers(0, 9).map(bool)
peer_options = {"advertised": st.integers(0, len(ADVERTISED) - 1), "answer": st.booleans(), "read": st.booleans()}


@fuzz_settings(300)
@given(data=st.data(), garbage=st.binary(max_size=2000), **peer_options)
@example(data=None, garbage=b"\x00\x00\x00\x04\x00\x00\x00\x00\x00", advertised=1, answer=True, read=True)
def test_server_bytes_at_random_after_the_preface(data, garbage: bytes, advertised: int, answer: bool,
                                                  read: bool) -> None:
    peer = Peer(False, advertised, answer=answer and read, read=read)
    stream = PREFACE + garbage
    run(peer, pieces(data, stream))


@fuzz_settings(300)
@given(data=st.data(), garbage=st.binary(max_size=2000), **peer_options)
def test_client_bytes_at_random(data, garbage: bytes, advertised: int, answer: bool, read: bool) -> None:
    peer = Peer(True, advertised, answer=answer and read, read=read)
    run(peer, pieces(data, garbage))


@fuzz_settings(400)
@given(data=st.data(), settings_first=settings_first, streams=st.integers(0, 3),
       sequence=st.lists(frames(), max_size=12), **peer_options)
@example(data=None, settings_first=True, streams=0, sequence=[PING_FLOOD], advertised=1, answer=False, read=False)
def test_server_frames(data, settings_first: bool, streams: int, sequence: list[bytes], advertised: int,
                       answer: bool, read: bool) -> None:
    peer = Peer(False, advertised, answer=answer and read, read=read)
    stream = PREFACE + (frame(SETTINGS, 0, 0) if settings_first else b"") + opening(streams, REQUEST_BLOCK)
    stream += b"".join(sequence)
    run(peer, pieces(data, stream))


@fuzz_settings(400)
@given(data=st.data(), settings_first=settings_first, sequence=st.lists(frames(), max_size=12), **peer_options)
@example(data=None, settings_first=True, sequence=[PING_FLOOD], advertised=1, answer=False, read=False)
def test_client_frames(data, settings_first: bool, sequence: list[bytes], advertised: int, answer: bool,
                       read: bool) -> None:
    peer = Peer(True, advertised, answer=answer and read, read=read)
    stream = (frame(SETTINGS, 0, 0) if settings_first else b"") + b"".join(sequence)
    run(peer, pieces(data, stream))
