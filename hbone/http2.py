"""A lean HTTP/2 connection (RFC 9113) for a CONNECT tunnel's subset of the protocol, sans-IO.

Bytes in, events out; method calls queue frames that ``data_to_send()`` hands back. It does what a
CONNECT tunnel needs and no more: streams carry one header block each way (plus trailers, which are
read and dropped), DATA with per-stream and connection flow control, half-close, RST_STREAM, SETTINGS,
PING and GOAWAY. No server push (a PUSH_PROMISE is a protocol error), no priorities (PRIORITY frames
are checked and ignored, as RFC 9113 deprecates them). HPACK is ``hbone.hpack_codec``'s (a stateless
encoder, a full decoder); the ``hpack`` library it replaces cost ztunnel up to 2 MiB of idle memory.

Why not ``h2``: HBONE sends and receives one small DATA frame per proxied write, and h2 spends about
10 µs sending and 14 µs receiving each (frame objects, a state machine per event, an eager
``repr`` per received frame). Here a DATA frame is a 9-byte header from one integer and a slice.

Streams: ``streams`` holds each live stream's HTTP/2 state (RFC 9113 section 5.1: open, half-closed
either way, with its windows). What a stream means to the layer above (a CONNECT awaiting its answer,
say) is that layer's own business: it hears of each header block through ``on_headers`` and of each
stream that leaves the table through ``on_stream_closed``, so it can keep its own table in step.

The peer's faults never raise. A connection error (RFC 9113 section 5.4.1) queues GOAWAY and becomes
``StreamAborted`` for every live stream, then ``ConnectionClosed``; a stream error queues RST_STREAM
and becomes ``StreamAborted`` for that stream. ``LocalProtocolError`` is the caller's bug.

Hostile peers (the bounds are ``hbone.limits``'s; over one, GOAWAY(ENHANCE_YOUR_CALM)): a header block
takes at most MAX_CONTINUATION_FRAMES CONTINUATION frames and is gathered in linear work; control
frames we queue (PING and SETTINGS ACKs, RST_STREAM) wait for ``data_to_send`` at most
MAX_PENDING_CONTROL_FRAMES at a time, so a peer that does not read cannot grow our output; streams the
peer resets before we answer them, and streams over our MAX_CONCURRENT_STREAMS (refused with
REFUSED_STREAM, RFC 9113 section 5.1.2), spend a budget of MAX_PREMATURE_RESETS that each answer refills
by one (rapid reset); a SETTINGS frame has at most MAX_SETTINGS_ENTRIES entries; one ``receive_bytes`` holds
at most MAX_EMPTY_FRAMES_PER_READ frames that carry nothing. A WINDOW_UPDATE becomes
``SendWindowOpened`` only when the window it opens was exhausted, since no sender waits otherwise.

Flow control: received DATA is credited back only when the caller ``acknowledge``s it, and credit is
batched: a WINDOW_UPDATE goes out once half a window has been consumed (the sender still has the
other half in hand, so it never stalls for it). Padding, and data on streams that are gone, are
credited at once, since nobody will read them.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from hbone.hpack_codec import Decoder, Encoder, HpackError
from hbone.limits import (
    DEFAULT_MAX_HEADER_BLOCK,
    MAX_CONTINUATION_FRAMES,
    MAX_EMPTY_FRAMES_PER_READ,
    MAX_PENDING_CONTROL_FRAMES,
    MAX_PREMATURE_RESETS,
    MAX_SETTINGS_ENTRIES,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DEFAULT_WINDOW = 65535
MAX_WINDOW = 2**31 - 1
MAX_STREAM_ID = 2**31 - 1
DEFAULT_MAX_FRAME_SIZE = 16384
LARGEST_FRAME_SIZE = 2**24 - 1


class ErrorCode(enum.IntEnum):
    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD


class Setting(enum.IntEnum):
    HEADER_TABLE_SIZE = 0x1
    ENABLE_PUSH = 0x2
    MAX_CONCURRENT_STREAMS = 0x3
    INITIAL_WINDOW_SIZE = 0x4
    MAX_FRAME_SIZE = 0x5
    MAX_HEADER_LIST_SIZE = 0x6
    ENABLE_CONNECT_PROTOCOL = 0x8


# The values a peer assumes before any SETTINGS (RFC 9113 section 6.5.2); unlimited is None.
_DEFAULT_SETTINGS: dict[int, int | None] = {
    Setting.HEADER_TABLE_SIZE: 4096,
    Setting.ENABLE_PUSH: 1,
    Setting.MAX_CONCURRENT_STREAMS: None,
    Setting.INITIAL_WINDOW_SIZE: DEFAULT_WINDOW,
    Setting.MAX_FRAME_SIZE: DEFAULT_MAX_FRAME_SIZE,
    Setting.MAX_HEADER_LIST_SIZE: None,
}

# Frame types and flags (RFC 9113 section 6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
FLAG_END_STREAM = FLAG_ACK = 0x1
FLAG_END_HEADERS = 0x4
FLAG_PADDED = 0x8
FLAG_PRIORITY = 0x20

_HEADER = struct.Struct(">HBBBL")  # length (24 bits as 16 + 8), type, flags, R + stream id
_SETTING = struct.Struct(">HL")
_U32 = struct.Struct(">L")

Header = tuple[bytes, bytes]


class LocalProtocolError(Exception):
    """Our own bug: a method called on a stream or connection in a state that does not allow it."""


# ---------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class StreamData:
    """Payload for the TCP side; ``acknowledge(stream_id, len(data))`` once it has been consumed."""

    stream_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamHalfClosed:
    """The peer sent END_STREAM: shut the write half of the TCP side."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamAborted:
    """The stream is gone (RST_STREAM, or the connection ended): reset the TCP side."""

    stream_id: int
    error_code: int
    remote: bool


@dataclass(frozen=True, slots=True)
class SendWindowOpened:
    """More may be sent on ``stream_id``; 0 means on any stream."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The connection is over (GOAWAY either way, a peer's protocol error, PING timeout)."""

    error_code: int
    reason: str
    remote: bool


Event = StreamData | StreamHalfClosed | StreamAborted | SendWindowOpened | ConnectionClosed
# The layer above may add events of its own (HBONE's ConnectRequested...) to what ``receive_bytes``
# returns, in order with these: a connection is generic in that type.
UpperEvent = TypeVar("UpperEvent")

# Called while bytes are being received, so that the layer above can answer or reset a stream
# before the frames after its header block are read: (stream id, headers, events so far).
HeadersHook = Callable[[int, list[Header], list[Event | UpperEvent]], None]
PingAckHook = Callable[[bytes, list[Event | UpperEvent]], None]  # (payload, events so far)
# Called as a stream leaves ``streams``: reset either way, closed both ways and all it received
# acknowledged, or the connection ended.
StreamClosedHook = Callable[[int], None]


def _ignore_stream_closed(stream_id: int) -> None:
    pass


class _ConnectionError(Exception):
    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code


# ---------------------------------------------------------------- streams


class Stream:
    """One stream's HTTP/2 state.

    A stream stays in ``Http2Connection.streams`` until it is reset, or until both halves are closed
    and everything it received has been acknowledged.
    """

    __slots__ = ("send_window", "recv_window", "unacked", "credit", "local_closed", "remote_closed", "answered")

    def __init__(self, send_window: int, recv_window: int) -> None:
        self.send_window = send_window  # bytes we may still send
        self.recv_window = recv_window  # bytes the peer may still send
        self.unacked = 0  # delivered, not yet acknowledged by the caller
        self.credit = 0  # acknowledged, not yet returned in a WINDOW_UPDATE
        self.local_closed = False  # END_STREAM sent
        self.remote_closed = False  # END_STREAM received
        self.answered = False  # a header block sent on a stream the peer opened


def _frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return (len(payload) << 48 | kind << 40 | flags << 32 | stream_id).to_bytes(9, "big") + payload


# ---------------------------------------------------------------- the connection


class Http2Connection(Generic[UpperEvent]):
    """One HTTP/2 connection, either side. The preface and our SETTINGS are queued at creation."""

    def __init__(
        self, *, client_side: bool, settings: Mapping[Setting, int], connection_window: int,
        on_headers: HeadersHook[UpperEvent], on_ping_ack: PingAckHook[UpperEvent],
        on_stream_closed: StreamClosedHook = _ignore_stream_closed,
    ) -> None:
        self.client_side = client_side
        self._on_headers_hook = on_headers
        self._on_ping_ack = on_ping_ack
        self._on_stream_closed = on_stream_closed
        self.streams: dict[int, Stream] = {}
        self.closed = False
        self._out: list[bytes | memoryview] = []
        self._local = dict(_DEFAULT_SETTINGS)
        for key, value in settings.items():
            self._local[key] = value
        self._remote = dict(_DEFAULT_SETTINGS)
        self._encoder = Encoder()
        self._decoder = Decoder(max_header_list_size=self._local[Setting.MAX_HEADER_LIST_SIZE] or 2**32,
                                max_table_size=_given(self._local, Setting.HEADER_TABLE_SIZE))
        self._max_block = self._local[Setting.MAX_HEADER_LIST_SIZE] or DEFAULT_MAX_HEADER_BLOCK
        self._max_recv_frame = _given(self._local, Setting.MAX_FRAME_SIZE)
        self._max_send_frame = DEFAULT_MAX_FRAME_SIZE
        self._stream_window = _given(self._local, Setting.INITIAL_WINDOW_SIZE)  # what the peer may send
        self._peer_stream_window = DEFAULT_WINDOW  # what we may send, per the peer's INITIAL_WINDOW_SIZE
        self._send_window = DEFAULT_WINDOW  # connection-level, both ways
        self._recv_window = connection_window
        self._connection_window = connection_window
        self._credit = 0
        self._next_stream_id = 1 if client_side else 2
        self._highest_peer_stream = 0
        self._open_local = 0  # streams we opened that are open or half-closed
        self._open_remote = 0
        self._continuing: int | None = None  # the stream whose header block awaits CONTINUATION
        self._continuing_end = False
        self._fragments: list[bytes] = []  # that header block so far, joined once complete
        self._block_size = 0  # their total length, kept as they come: summing them anew is quadratic
        self._continuations = 0  # CONTINUATION frames in that header block
        self._control_frames = 0  # control frames queued that data_to_send has not taken yet
        self._reset_budget = MAX_PREMATURE_RESETS  # see hbone.limits
        self._empty_frames = 0  # frames carrying nothing in this receive_bytes
        self._preface_left = b"" if client_side else PREFACE
        self._settings_seen = False
        self._pending: list[bytes] = []  # an incomplete frame's bytes so far
        self._pending_len = 0
        self._need = 0
        self._handlers = (self._on_data, self._on_headers, self._on_priority, self._on_rst_stream,
                          self._on_settings, self._on_push_promise, self._on_ping, self._on_goaway,
                          self._on_window_update, self._on_continuation)
        if client_side:
            self._out.append(PREFACE)
        payload = b"".join(_SETTING.pack(k, v) for k, v in settings.items())
        self._out.append(_frame(SETTINGS, 0, 0, payload))
        if connection_window > DEFAULT_WINDOW:
            self._out.append(_frame(WINDOW_UPDATE, 0, 0, _U32.pack(connection_window - DEFAULT_WINDOW)))

    # -- bytes in and out

    def data_to_send(self) -> bytes:
        if not self._out:
            return b""
        data = b"".join(self._out)
        self._out.clear()
        if self._control_frames:
            self._control_frames = 0
        return data

    def receive_bytes(self, data: bytes) -> list[Event | UpperEvent]:
        """Feed bytes read from the transport; return what they meant."""
        if self.closed or not data:
            return []
        if self._pending:  # the rest of an incomplete frame: join once it is all here
            self._pending.append(data)
            self._pending_len += len(data)
            if self._pending_len < self._need:
                return []
            data = b"".join(self._pending)
            self._pending.clear()
        out: list[Event | UpperEvent] = []
        self._empty_frames = 0
        try:
            if self._preface_left:
                data = self._take_preface(data)
            self._receive_frames(data, out)
            if self._control_frames > MAX_PENDING_CONTROL_FRAMES and not self.closed:  # resets made by hooks
                self._too_many_control_frames()
        except _ConnectionError as exc:
            self._fail(exc.code, str(exc), out)
        return out

    def _take_preface(self, data: bytes) -> bytes:
        expected = self._preface_left
        head = data[:len(expected)]
        if not expected.startswith(head):
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "the client did not send the HTTP/2 preface")
        self._preface_left = expected[len(head):]
        return data[len(head):]

    def _receive_frames(self, data: bytes, out: list[Event | UpperEvent]) -> None:
        pos, end = 0, len(data)
        unpack, handlers = _HEADER.unpack_from, self._handlers
        while end - pos >= 9 and not self.closed:
            high, low, kind, flags, stream_id = unpack(data, pos)
            length = high << 8 | low
            if length > self._max_recv_frame:
                raise _ConnectionError(ErrorCode.FRAME_SIZE_ERROR,
                                       f"a {length}-byte frame, over the {self._max_recv_frame} advertised")
            if end - pos - 9 < length:
                break
            start = pos + 9
            pos = start + length
            if not self._settings_seen:
                if kind != SETTINGS or flags & FLAG_ACK:
                    raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "the first frame was not SETTINGS")
                self._settings_seen = True
            if self._continuing is not None and kind != CONTINUATION:
                raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "a header block was interrupted by another frame")
            if kind < 10:
                handlers[kind](flags, stream_id & MAX_STREAM_ID, data, start, pos, out)
            # Unknown frame types are ignored (RFC 9113 section 4.1).
        if pos < end and not self.closed:
            self._pending.append(data[pos:])
            self._pending_len = end - pos
            self._need = 9 if self._pending_len < 9 else 9 + (int.from_bytes(data[pos:pos + 3], "big"))

    # -- frame handlers: (flags, stream id, buffer, payload start, payload end, events)

    def _on_data(self, flags: int, sid: int, data: bytes, start: int, stop: int, out: list[Event | UpperEvent]) -> None:
        if sid == 0:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "DATA on stream 0")
        length = stop - start
        self._recv_window -= length
        if self._recv_window < 0:
            raise _ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, "DATA beyond the connection's window")
        first, last = start, stop  # of the data, padding left out
        if flags & FLAG_PADDED:
            pad = data[start] if length else 256
            if pad >= length:
                raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "DATA padding longer than the frame")
            first, last = start + 1, stop - pad
        stream = self.streams.get(sid)
        if stream is None or stream.remote_closed:
            if not length and not flags & FLAG_END_STREAM:
                self._empty_frame()
            self._check_not_idle(sid, "DATA")
            self._credit_connection(length)  # nobody will read it
            if stream is not None:  # data after END_STREAM
                self._stream_error(sid, ErrorCode.STREAM_CLOSED, out)
            return
        stream.recv_window -= length
        if stream.recv_window < 0:
            self._credit_connection(length)
            self._stream_error(sid, ErrorCode.FLOW_CONTROL_ERROR, out)
            return
        n = last - first
        if n < length:  # padding: credit it now
            self._credit_connection(length - n)
            self._credit_stream(sid, stream, length - n)
        if n:  # copied only now: data for a stream that is gone is never sliced out
            stream.unacked += n
            out.append(StreamData(sid, data[first:last]))
        elif not flags & FLAG_END_STREAM:
            self._empty_frame()
        if flags & FLAG_END_STREAM:
            self._remote_end(sid, stream, out)

    def _on_headers(
        self, flags: int, sid: int, data: bytes, start: int, stop: int, out: list[Event | UpperEvent],
    ) -> None:
        if sid == 0:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "HEADERS on stream 0")
        pad = 0
        if flags & FLAG_PADDED:
            if stop == start:
                raise _ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "HEADERS too short for its padding field")
            pad = data[start]
            start += 1
        if flags & FLAG_PRIORITY:
            start += 5
        if start + pad > stop:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "HEADERS padding or priority longer than the frame")
        block = data[start:stop - pad]
        if not block and not flags & FLAG_END_STREAM:
            self._empty_frame()
        if flags & FLAG_END_HEADERS:
            self._header_block(sid, block, bool(flags & FLAG_END_STREAM), out)
        else:
            self._continuing = sid
            self._continuing_end = bool(flags & FLAG_END_STREAM)
            self._fragments = [block]
            self._block_size = len(block)
            self._continuations = 0
            self._check_block_size(self._block_size)

    def _on_continuation(
        self, flags: int, sid: int, data: bytes, start: int, stop: int, out: list[Event | UpperEvent],
    ) -> None:
        if self._continuing != sid:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, f"CONTINUATION on stream {sid} without HEADERS before it")
        self._continuations += 1
        if self._continuations > MAX_CONTINUATION_FRAMES:  # the CONTINUATION flood: empty ones add no size
            raise _ConnectionError(ErrorCode.ENHANCE_YOUR_CALM,
                                   f"a header block in over {MAX_CONTINUATION_FRAMES} CONTINUATION frames")
        self._block_size += stop - start
        self._check_block_size(self._block_size)
        self._fragments.append(data[start:stop])
        if flags & FLAG_END_HEADERS:
            block = b"".join(self._fragments)
            self._continuing, self._fragments = None, []
            self._header_block(sid, block, self._continuing_end, out)

    def _check_block_size(self, size: int) -> None:
        if size > self._max_block:
            raise _ConnectionError(ErrorCode.ENHANCE_YOUR_CALM,
                                   f"a header block of more than {self._max_block} bytes")

    def _header_block(self, sid: int, block: bytes, end_stream: bool, out: list[Event | UpperEvent]) -> None:
        # Decoded even for a stream that is gone, so that HPACK's table stays in step with the peer's.
        try:
            headers = self._decoder.decode(block)
        except HpackError as exc:
            raise _ConnectionError(ErrorCode.COMPRESSION_ERROR, f"undecodable header block: {exc}") from None
        stream = self.streams.get(sid)
        if stream is None:
            if (sid & 1) == self.client_side or sid <= self._highest_peer_stream:  # ours, or closed
                self._check_not_idle(sid, "HEADERS")
                return
            if self.client_side:
                raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, f"the server opened stream {sid} (push is off)")
            self._highest_peer_stream = sid
            limit = self._local[Setting.MAX_CONCURRENT_STREAMS]
            if limit is not None and self._open_remote >= limit:
                # RFC 9113 section 5.1.2: a stream error, REFUSED_STREAM (the client may retry it on a
                # connection with room); spent from the premature-reset budget, so a client that keeps
                # opening streams over the limit ends as a rapid reset would.
                self._reset_budget -= 1
                if self._reset_budget < 0:
                    raise _ConnectionError(ErrorCode.ENHANCE_YOUR_CALM,
                                           f"over {MAX_PREMATURE_RESETS} streams refused or reset before an answer")
                self._stream_error(sid, ErrorCode.REFUSED_STREAM, out)
                return
            stream = self.streams[sid] = Stream(self._peer_stream_window, self._stream_window)
            self._open_remote += 1
        elif stream.remote_closed:
            self._stream_error(sid, ErrorCode.STREAM_CLOSED, out)
            return
        self._on_headers_hook(sid, headers, out)
        if end_stream and self.streams.get(sid) is stream:  # the hook may have reset it
            self._remote_end(sid, stream, out)

    def _on_priority(
        self, flags: int, sid: int, data: bytes, start: int, stop: int, out: list[Event | UpperEvent],
    ) -> None:
        if sid == 0:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "PRIORITY on stream 0")
        if stop - start != 5:
            self._stream_error(sid, ErrorCode.FRAME_SIZE_ERROR, out)

    def _on_rst_stream(
        self, flags: int, sid: int, data: bytes, start: int, stop: int, out: list[Event | UpperEvent],
    ) -> None:
        if sid == 0:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if stop - start != 4:
            raise _ConnectionError(ErrorCode.FRAME_SIZE_ERROR, f"RST_STREAM of {stop - start} bytes, not 4")
        self._check_not_idle(sid, "RST_STREAM")
        stream = self.streams.pop(sid, None)
        if stream is not None:
            self._dropped(sid, stream)
            out.append(StreamAborted(sid, _U32.unpack_from(data, start)[0], True))
            self._on_stream_closed(sid)
            if not stream.answered and (sid & 1) != self.client_side:  # rapid reset, CVE-2023-44487
                self._reset_budget -= 1
                if self._reset_budget < 0:
                    raise _ConnectionError(ErrorCode.ENHANCE_YOUR_CALM,
                                           f"over {MAX_PREMATURE_RESETS} streams reset before they were answered")

    def _on_settings(
        self, flags: int, sid: int, data: bytes, start: int, stop: int, out: list[Event | UpperEvent],
    ) -> None:
        if sid:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, f"SETTINGS on stream {sid}")
        if flags & FLAG_ACK:
            if stop != start:
                raise _ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "a SETTINGS ACK with a payload")
            return
        if (stop - start) % 6:
            raise _ConnectionError(ErrorCode.FRAME_SIZE_ERROR, f"SETTINGS of {stop - start} bytes, not a multiple of 6")
        if (stop - start) // 6 > MAX_SETTINGS_ENTRIES:
            raise _ConnectionError(ErrorCode.ENHANCE_YOUR_CALM,
                                   f"SETTINGS of {(stop - start) // 6} entries, over {MAX_SETTINGS_ENTRIES}")
        window_grew = False
        for offset in range(start, stop, 6):
            key, value = _SETTING.unpack_from(data, offset)
            window_grew |= self._apply_setting(key, value)
        self._queue_control(_frame(SETTINGS, FLAG_ACK, 0))
        if window_grew:
            out.append(SendWindowOpened(0))

    def _apply_setting(self, key: int, value: int) -> bool:
        """Take one of the peer's settings; True when it opened the send windows."""
        if key == Setting.HEADER_TABLE_SIZE:
            self._encoder.set_max_table_size(value)
        elif key in (Setting.ENABLE_PUSH, Setting.ENABLE_CONNECT_PROTOCOL):
            if value > 1:
                raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, f"setting {Setting(key).name} = {value}, not 0 or 1")
            if key == Setting.ENABLE_PUSH and value and self.client_side:
                raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "a server set ENABLE_PUSH to 1")
        elif key == Setting.INITIAL_WINDOW_SIZE:
            if value > MAX_WINDOW:
                raise _ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, f"INITIAL_WINDOW_SIZE {value} is over 2^31-1")
            delta = value - self._peer_stream_window
            for stream in self.streams.values():
                stream.send_window += delta
                if stream.send_window > MAX_WINDOW:
                    raise _ConnectionError(ErrorCode.FLOW_CONTROL_ERROR,
                                           "INITIAL_WINDOW_SIZE overflows a stream's window")
            self._remote[key] = self._peer_stream_window = value
            return delta > 0
        elif key == Setting.MAX_FRAME_SIZE:
            if not DEFAULT_MAX_FRAME_SIZE <= value <= LARGEST_FRAME_SIZE:
                raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, f"MAX_FRAME_SIZE {value} is out of range")
            self._max_send_frame = value
        if key in self._remote:
            self._remote[key] = value
        return False  # unknown settings are ignored (RFC 9113 section 6.5.2)

    def _on_push_promise(
        self, flags: int, sid: int, data: bytes, start: int, stop: int, out: list[Event | UpperEvent],
    ) -> None:
        raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "PUSH_PROMISE, but push is off")

    def _on_ping(self, flags: int, sid: int, data: bytes, start: int, stop: int, out: list[Event | UpperEvent]) -> None:
        if sid:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, f"PING on stream {sid}")
        if stop - start != 8:
            raise _ConnectionError(ErrorCode.FRAME_SIZE_ERROR, f"PING of {stop - start} bytes, not 8")
        payload = data[start:stop]
        if flags & FLAG_ACK:
            self._on_ping_ack(bytes(payload), out)
        else:
            self._queue_control(_frame(PING, FLAG_ACK, 0, bytes(payload)))

    def _on_goaway(
        self, flags: int, sid: int, data: bytes, start: int, stop: int, out: list[Event | UpperEvent],
    ) -> None:
        if sid:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, f"GOAWAY on stream {sid}")
        if stop - start < 8:
            raise _ConnectionError(ErrorCode.FRAME_SIZE_ERROR, f"GOAWAY of {stop - start} bytes, under 8")
        self._end(_U32.unpack_from(data, start + 4)[0], "GOAWAY received", True, out)

    def _on_window_update(
        self, flags: int, sid: int, data: bytes, start: int, stop: int, out: list[Event | UpperEvent],
    ) -> None:
        if stop - start != 4:
            raise _ConnectionError(ErrorCode.FRAME_SIZE_ERROR, f"WINDOW_UPDATE of {stop - start} bytes, not 4")
        increment = _U32.unpack_from(data, start)[0] & MAX_WINDOW
        if sid == 0:
            if not increment:
                raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0 for the connection")
            exhausted = self._send_window <= 0  # else no sender waits for it: a storm of them is no events
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise _ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, "the connection's send window is over 2^31-1")
            if exhausted:
                out.append(SendWindowOpened(0))
            return
        self._check_not_idle(sid, "WINDOW_UPDATE")
        stream = self.streams.get(sid)
        if stream is None:
            return  # closed: a late update is harmless
        if not increment:
            self._stream_error(sid, ErrorCode.PROTOCOL_ERROR, out)
            return
        exhausted = stream.send_window <= 0
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            self._stream_error(sid, ErrorCode.FLOW_CONTROL_ERROR, out)
        elif exhausted and not stream.local_closed:
            out.append(SendWindowOpened(sid))

    # -- what the caller does

    def open_stream(self, headers: Iterable[Header]) -> int:
        """Client: send a request's HEADERS on a new stream; returns its id."""
        if not self.streams_available():
            raise LocalProtocolError("no stream available on this connection (limit reached or closed)")
        sid = self._next_stream_id
        self._next_stream_id += 2
        self.streams[sid] = Stream(self._peer_stream_window, self._stream_window)
        self._open_local += 1
        self._queue_headers(sid, headers, end_stream=False)
        return sid

    def streams_available(self) -> int:
        """Client: how many more streams may be opened now (the peer's limit and ours)."""
        if self.closed or self._next_stream_id > MAX_STREAM_ID:
            return 0
        limits = [v for v in (self._remote[Setting.MAX_CONCURRENT_STREAMS],
                              self._local[Setting.MAX_CONCURRENT_STREAMS]) if v is not None]
        return max(0, min(limits) - self._open_local) if limits else MAX_STREAM_ID

    def send_headers(self, sid: int, headers: Iterable[Header], *, end_stream: bool = False) -> None:
        stream = self._sendable(sid, "send_headers")
        if not stream.answered:
            stream.answered = True
            if self._reset_budget < MAX_PREMATURE_RESETS:  # an answer earns back a premature reset
                self._reset_budget += 1
        self._queue_headers(sid, headers, end_stream)
        if end_stream:
            self._local_end(sid, stream)

    def send_data(self, sid: int, data: bytes | memoryview) -> int:
        """Queue as much of ``data`` as the windows allow; return how many bytes were taken.
        The bytes are held until ``data_to_send``: pass an immutable buffer."""
        stream = self._sendable(sid, "send_data")
        n = min(len(data), stream.send_window, self._send_window)
        if n <= 0:
            return 0
        stream.send_window -= n
        self._send_window -= n
        step, out = self._max_send_frame, self._out
        if n <= step:
            out.append((n << 48 | sid).to_bytes(9, "big"))  # DATA, no flags
            out.append(data if n == len(data) else data[:n])
            return n
        view = memoryview(data)
        for offset in range(0, n, step):
            size = min(step, n - offset)
            out.append((size << 48 | sid).to_bytes(9, "big"))
            out.append(view[offset:offset + size])
        return n

    def end_stream(self, sid: int) -> None:
        """An empty DATA frame with END_STREAM: we send nothing more on ``sid``."""
        stream = self._sendable(sid, "end_stream")
        self._out.append(_frame(DATA, FLAG_END_STREAM, sid))
        self._local_end(sid, stream)

    def reset_stream(self, sid: int, error_code: int) -> None:
        """RST_STREAM; the stream is gone. A stream already gone is left alone."""
        stream = self.streams.pop(sid, None)
        if stream is None or self.closed:
            return
        self._dropped(sid, stream)
        if not (stream.local_closed and stream.remote_closed):  # nothing but PRIORITY on a closed stream
            self._out.append(_frame(RST_STREAM, 0, sid, _U32.pack(error_code)))
            self._control_frames += 1  # checked by receive_bytes: a caller's call never raises
        self._on_stream_closed(sid)

    def acknowledge(self, sid: int, n: int) -> None:
        """The caller consumed ``n`` bytes of ``StreamData``: credit them back to the peer."""
        stream = self.streams.get(sid)
        if stream is None:
            return  # gone: what it held was credited then
        if not 0 <= n <= stream.unacked:
            raise LocalProtocolError(f"stream {sid}: acknowledging {n} of {stream.unacked} bytes")
        if not n:
            return
        stream.unacked -= n
        self._credit_connection(n)
        if not stream.remote_closed:
            self._credit_stream(sid, stream, n)
        elif stream.local_closed and not stream.unacked:
            del self.streams[sid]
            self._on_stream_closed(sid)

    def send_window(self, sid: int = 0) -> int:
        """How many bytes ``send_data`` would take now on ``sid`` (0: the connection's window)."""
        if sid == 0:
            return self._send_window
        stream = self.streams.get(sid)
        return 0 if stream is None else max(0, min(stream.send_window, self._send_window))

    def ping(self, payload: bytes) -> None:
        self._out.append(_frame(PING, 0, 0, payload))

    def close(self, error_code: int = ErrorCode.NO_ERROR, reason: str = "closed locally") -> list[Event | UpperEvent]:
        """GOAWAY: the connection ends, every stream with it; returns those endings as events."""
        out: list[Event | UpperEvent] = []
        if not self.closed:
            self._end(int(error_code), reason, False, out, send_goaway=True)
        return out

    # -- internals

    def _sendable(self, sid: int, action: str) -> Stream:
        stream = self.streams.get(sid)
        if stream is None:
            raise LocalProtocolError(f"{action}: stream {sid} is not live")
        if stream.local_closed:
            raise LocalProtocolError(f"{action}: stream {sid} is already half-closed")
        return stream

    def _queue_headers(self, sid: int, headers: Iterable[Header], end_stream: bool) -> None:
        block = self._encoder.encode(headers)
        step = self._max_send_frame
        end = FLAG_END_STREAM if end_stream else 0
        if len(block) <= step:
            self._out.append(_frame(HEADERS, FLAG_END_HEADERS | end, sid, block))
            return
        chunks = [block[i:i + step] for i in range(0, len(block), step)]
        self._out.append(_frame(HEADERS, end, sid, chunks[0]))
        for chunk in chunks[1:-1]:
            self._out.append(_frame(CONTINUATION, 0, sid, chunk))
        self._out.append(_frame(CONTINUATION, FLAG_END_HEADERS, sid, chunks[-1]))

    def _check_not_idle(self, sid: int, kind: str) -> None:
        ours = (sid & 1) == self.client_side
        if sid >= self._next_stream_id if ours else sid > self._highest_peer_stream:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, f"{kind} on stream {sid}, which was never opened")

    def _credit_connection(self, n: int) -> None:
        self._credit += n
        if self._credit >= self._connection_window // 2:
            self._out.append(_frame(WINDOW_UPDATE, 0, 0, _U32.pack(self._credit)))
            self._recv_window += self._credit
            self._credit = 0

    def _credit_stream(self, sid: int, stream: Stream, n: int) -> None:
        stream.credit += n
        if stream.credit >= self._stream_window // 2:
            self._out.append(_frame(WINDOW_UPDATE, 0, sid, _U32.pack(stream.credit)))
            stream.recv_window += stream.credit
            stream.credit = 0

    def _local_end(self, sid: int, stream: Stream) -> None:
        stream.local_closed = True
        if stream.remote_closed:
            self._closed_both_ways(sid, stream)

    def _remote_end(self, sid: int, stream: Stream, out: list[Event | UpperEvent]) -> None:
        stream.remote_closed = True
        out.append(StreamHalfClosed(sid))
        if stream.local_closed:
            self._closed_both_ways(sid, stream)

    def _closed_both_ways(self, sid: int, stream: Stream) -> None:
        self._count_closed(sid)
        if not stream.unacked:
            del self.streams[sid]
            self._on_stream_closed(sid)

    def _count_closed(self, sid: int) -> None:
        if (sid & 1) == self.client_side:
            self._open_local -= 1
        else:
            self._open_remote -= 1

    def _dropped(self, sid: int, stream: Stream) -> None:
        """``stream`` was taken out of the table by a reset: its count and unread bytes go with it."""
        if not (stream.local_closed and stream.remote_closed):
            self._count_closed(sid)
        if stream.unacked:
            self._credit_connection(stream.unacked)

    def _stream_error(self, sid: int, code: ErrorCode, out: list[Event | UpperEvent]) -> None:
        stream = self.streams.pop(sid, None)
        if stream is not None:
            self._dropped(sid, stream)
            out.append(StreamAborted(sid, int(code), False))
        if stream is not None:
            self._on_stream_closed(sid)
        self._queue_control(_frame(RST_STREAM, 0, sid, _U32.pack(code)))  # the reset flood, CVE-2019-9514

    def _queue_control(self, frame: bytes) -> None:
        """Queue a control frame the peer provoked; over the bound, end the connection (see hbone.limits)."""
        self._out.append(frame)
        self._control_frames += 1
        if self._control_frames > MAX_PENDING_CONTROL_FRAMES:
            self._too_many_control_frames()

    def _too_many_control_frames(self) -> None:
        raise _ConnectionError(ErrorCode.ENHANCE_YOUR_CALM,
                               f"over {MAX_PENDING_CONTROL_FRAMES} control frames queued that the peer has not read")

    def _empty_frame(self) -> None:
        self._empty_frames += 1
        if self._empty_frames > MAX_EMPTY_FRAMES_PER_READ:
            raise _ConnectionError(ErrorCode.ENHANCE_YOUR_CALM,
                                   f"over {MAX_EMPTY_FRAMES_PER_READ} frames carrying nothing in one read")

    def _fail(self, code: ErrorCode, reason: str, out: list[Event | UpperEvent]) -> None:
        self._end(int(code), f"protocol error: {reason}", False, out, send_goaway=True)

    def _end(
        self, code: int, reason: str, remote: bool, out: list[Event | UpperEvent], *, send_goaway: bool = False,
    ) -> None:
        out.extend(StreamAborted(sid, code, remote) for sid in self.streams)
        gone = list(self.streams)
        self.streams.clear()
        self.closed = True
        for sid in gone:
            self._on_stream_closed(sid)
        self._pending.clear()
        if send_goaway:
            debug = reason.encode("utf-8", "replace")[:256]
            self._out.append(_frame(GOAWAY, 0, 0, _U32.pack(self._highest_peer_stream) + _U32.pack(code) + debug))
        out.append(ConnectionClosed(code, reason, remote))


def _given(settings: Mapping[int, int | None], key: Setting) -> int:
    """A setting that always has a value (only the two limits may be unlimited)."""
    value = settings[key]
    assert value is not None, f"{key.name} has no default"
    return value
