"""HTTP/2 inside a tunnel, both sides: the h2 library is the sans-IO core, this is its trio driver.

One ``H2Session`` serves one connection, as the server (the client's requests, each handed to
``on_request`` in its own task) or as the client (``request`` opens a stream on an upstream). Three
kinds of task touch it:

- the reader (``run``) feeds received bytes to h2 and dispatches its events to the streams; it never
  waits on a send, so a peer that does not read cannot stop us reading (and acknowledging) the other
  direction;
- the writer sends what h2 has queued (``data_to_send``, moved to our ``_outbox`` as it is made)
  whenever it is kicked;
- stream tasks (request handlers, body pumps) queue frames and wait for flow-control window and for
  the bytes queued and not yet sent to drop below ``SEND_HIGH_WATER``, which is the backpressure
  towards a slow peer: a peer that opens a large window and then does not read makes us hold at most
  that much, not the window. Once the session is closing, the writer has a second to send what is
  left (the GOAWAY): a peer that does not read cannot keep a closed session alive.

Inbound flow control is by consumption: received DATA is acknowledged to h2 (which sends
WINDOW_UPDATE) only when a stream's reader takes it, so what a fast peer can pin in our memory is the
window we advertised (``waypoint.limits``). A peer that resets streams faster than
``MAX_RESETS_PER_SECOND`` ("rapid reset") gets GOAWAY ENHANCE_YOUR_CALM and the connection closes.

Two stream errors that h2 (4.x) raises as connection errors are kept to their stream, as RFC 9113
says (``_Connection``): a stream past our ``MAX_CONCURRENT_STREAMS`` is refused (RST_STREAM
REFUSED_STREAM, 5.1.2), and a malformed header block (a request without ``:path``, an uppercase
name, a bad content-length...) resets its stream with PROTOCOL_ERROR (8.1.1). HPACK errors and
oversized header lists stay connection errors: the decoder's state is no longer shared.

h2 takes nothing after a GOAWAY (its connection is CLOSED), so a GOAWAY from the peer ends every
stream at once, even those below its last-stream-id; a client side ``available()`` says no from then on.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hpack
import trio
from hyperframe.frame import Frame, HeadersFrame

from waypoint.limits import (
    CONNECTION_WINDOW,
    IDLE_TIMEOUT,
    MAX_CONCURRENT_STREAMS,
    MAX_FRAME_SIZE,
    MAX_REQUEST_HEAD_BYTES,
    MAX_RESETS_PER_SECOND,
    READ_CHUNK,
    STREAM_WINDOW,
)

log = logging.getLogger("ambient.waypoint.h2")

# Bytes handed to the writer and not yet sent, above which a stream's sender waits.
SEND_HIGH_WATER = 1024 * 1024
_DEFAULT_WINDOW = 65535
# Seconds the writer has to send what is left (a GOAWAY) once the session is closing.
_LAST_WORDS = 1.0

RawHeaders = list[tuple[bytes, bytes]]


class _Connection(h2.connection.H2Connection):
    """h2's connection, with a refused or malformed stream an error of that stream only (RFC 9113
    5.1.2, 8.1.1) where h2 would end the whole connection."""

    def _receive_headers_frame(self, frame: HeadersFrame) -> tuple[list[Frame], list[h2.events.Event]]:
        stream_id = frame.stream_id
        if (not self.config.client_side and stream_id not in self.streams
                and self.open_inbound_streams >= self.local_settings.max_concurrent_streams):
            return self._refuse(frame)
        try:
            return super()._receive_headers_frame(frame)
        except h2.exceptions.ProtocolError as exc:
            # Validation (h2.utilities.validate_headers) and content-length parsing raise a plain
            # ProtocolError once the block is decoded and the stream exists; anything else is the
            # connection's (HPACK state, stream ids, flow control, closed streams).
            if (type(exc) is not h2.exceptions.ProtocolError or stream_id not in self.streams
                    or isinstance(exc.__cause__, (hpack.HPACKError, IndexError, TypeError, UnicodeDecodeError))):
                raise
            log.debug("HTTP/2 stream %d reset: %s", stream_id, exc)
            self.reset_stream(stream_id, h2.errors.ErrorCodes.PROTOCOL_ERROR)
            return [], []

    def _refuse(self, frame: HeadersFrame) -> tuple[list[Frame], list[h2.events.Event]]:
        """Open the stream as h2 would (the header block decoded, so HPACK stays in step; the id
        used), then reset it with REFUSED_STREAM: the client may retry it elsewhere."""
        headers = h2.connection._decode_headers(self.decoder, frame.data)
        self.state_machine.process_input(h2.connection.ConnectionInputs.RECV_HEADERS)
        stream = self._get_or_create_stream(frame.stream_id, h2.connection.AllowedStreamIDs.ODD)
        try:
            stream.receive_headers(headers, "END_STREAM" in frame.flags, self.config.header_encoding)
        except h2.exceptions.ProtocolError:
            pass  # refused either way
        if stream.closed:  # the peer reset it in the same breath: nothing to refuse
            return [], []
        self.reset_stream(frame.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
        return [], []


class StreamReset(Exception):
    """The stream (or its whole connection) ended before its data did."""


class H2Stream:
    """One stream's received side: its header blocks, its data in order, its end."""

    def __init__(self, session: H2Session, stream_id: int) -> None:
        self.session = session
        self.stream_id = stream_id
        self.headers: RawHeaders | None = None  # the request's, or the final response's
        self.trailers: RawHeaders | None = None
        self._data: deque[tuple[bytes, int]] = deque()  # (data, flow-controlled length)
        self.ended = False
        self.reset: str | None = None
        self._changed = trio.Event()  # headers, data, end or reset arrived
        self._window = trio.Event()  # send window may have grown

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _wake_window(self) -> None:
        self._window.set()
        self._window = trio.Event()

    @property
    def has_data(self) -> bool:
        return bool(self._data)

    async def wait_headers(self) -> RawHeaders:
        while self.headers is None:
            if self.reset is not None:
                raise StreamReset(self.reset)
            await self._changed.wait()
        return self.headers

    def data_at_hand(self) -> bytes | None:
        """What ``receive_data`` would return now without waiting, or None if it would wait (or raise)."""
        if self._data:
            data, flow = self._data.popleft()
            self.session.consumed(self.stream_id, flow)
            return data
        if self.ended and self.reset is None:
            return b""
        return None

    async def receive_data(self) -> bytes:
        """The next chunk of the body, b"" at its end; StreamReset if it ended otherwise."""
        while not self._data:
            if self.reset is not None:
                raise StreamReset(self.reset)
            if self.ended:
                return b""
            await self._changed.wait()
        data, flow = self._data.popleft()
        self.session.consumed(self.stream_id, flow)
        return data


class H2Session:
    def __init__(self, stream: trio.abc.Stream, *, client_side: bool,
                 on_request: Callable[[H2Stream], Awaitable[None]] | None = None) -> None:
        config = h2.config.H2Configuration(client_side=client_side, header_encoding=None,
                                           validate_inbound_headers=True, normalize_inbound_headers=True)
        self.conn = _Connection(config)
        self.stream = stream
        self.client_side = client_side
        self._on_request = on_request
        self.streams: dict[int, H2Stream] = {}
        self.closed: str | None = None
        self._kick = trio.Event()
        self._drained = trio.Event()
        self._outbox = bytearray()  # bytes h2 queued that the writer has not taken
        self._inflight = 0  # bytes the writer took and has not sent
        self._send_scope: trio.CancelScope | None = None  # the writer's send in progress
        self._resets: deque[float] = deque()
        self._idle_since: float | None = trio.current_time()
        self._handlers: trio.Nursery | None = None
        self._ready = trio.Event()

    # ------------------------------------------------------------ running

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the connection until it ends; handlers (server side) run inside and end with it."""
        self.conn.initiate_connection()
        self.conn.update_settings({
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            h2.settings.SettingCodes.MAX_FRAME_SIZE: MAX_FRAME_SIZE,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_REQUEST_HEAD_BYTES,
        })
        self.conn.increment_flow_control_window(CONNECTION_WINDOW - _DEFAULT_WINDOW)
        try:
            async with trio.open_nursery() as nursery:
                self._handlers = nursery
                nursery.start_soon(self._writer, nursery.cancel_scope)
                nursery.start_soon(self._idle_timer)
                self._kick.set()
                task_status.started()
                await self._reader()
        finally:
            self._end(self.closed or "the connection closed")
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.stream)

    async def _reader(self) -> None:
        while self.closed is None:
            try:
                data = await self.stream.receive_some(READ_CHUNK)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._end(f"the connection broke: {exc}")
                return
            if not data:
                self._end("the peer closed the connection")
                return
            try:
                events = self.conn.receive_data(data)
            except h2.exceptions.ProtocolError as exc:
                # h2 has queued a GOAWAY naming the error: the writer sends it, then ends everything.
                log.debug("HTTP/2 protocol error from the peer: %s", exc)
                self._end(f"protocol error: {exc}")
                return
            for event in events:
                self._dispatch(event)
            self._kick.set()

    async def _writer(self, everything: trio.CancelScope) -> None:
        """Send what h2 queued, whenever kicked; once the session is closed, send the last of it (a
        GOAWAY) within a second, then end the session's tasks."""
        while True:
            await self._kick.wait()
            self._kick = trio.Event()
            self._outbox += self.conn.data_to_send()
            if self._outbox:
                data = bytes(self._outbox)
                self._outbox.clear()
                self._inflight = len(data)
                try:
                    with trio.CancelScope() as self._send_scope:
                        if self.closed is not None:
                            self._send_scope.deadline = trio.current_time() + _LAST_WORDS
                        await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    self._end(f"the connection broke: {exc}")
                finally:
                    self._send_scope = None
                    self._inflight = 0
                    self._drained.set()
                    self._drained = trio.Event()
            if self.closed is not None:
                everything.cancel()
                return

    async def _idle_timer(self) -> None:
        while True:
            await trio.sleep(IDLE_TIMEOUT / 8)
            if self._idle_since is not None and trio.current_time() - self._idle_since >= IDLE_TIMEOUT:
                self.close(reason=f"idle for {IDLE_TIMEOUT:g} s")
                return

    def close(self, error: h2.errors.ErrorCodes = h2.errors.ErrorCodes.NO_ERROR,
              reason: str = "closed locally") -> None:
        """GOAWAY, then end the connection: the writer sends the GOAWAY if it can within a second."""
        if self.closed is not None:
            return
        try:
            self.conn.close_connection(error_code=error)
        except h2.exceptions.ProtocolError:
            pass
        self._end(reason)

    def _end(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason
        if self._send_scope is not None:  # a send the peer is not reading: give it the last second only
            self._send_scope.deadline = min(self._send_scope.deadline, trio.current_time() + _LAST_WORDS)
        for stream in self.streams.values():
            if not stream.ended and stream.reset is None:
                stream.reset = reason
            stream._wake()
            stream._wake_window()
        self._drained.set()
        self._kick.set()

    # ------------------------------------------------------------ events

    def _dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, (h2.events.RequestReceived, h2.events.ResponseReceived)):
            stream = self.streams.get(event.stream_id)
            if stream is None:
                if self.client_side or self._on_request is None:
                    return
                stream = self.streams[event.stream_id] = H2Stream(self, event.stream_id)
                stream.headers = list(event.headers)
                self._idle_since = None
                assert self._handlers is not None
                self._handlers.start_soon(self._handle, stream)
                return
            stream.headers = list(event.headers)
            stream._wake()
        elif isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is None:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                return
            stream._data.append((event.data, event.flow_controlled_length))
            stream._wake()
        elif isinstance(event, h2.events.TrailersReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.trailers = list(event.headers)
                stream._wake()
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.ended = True
                stream._wake()
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.reset = f"the peer reset the stream ({_code(event.error_code)})"
                stream._wake()
                stream._wake_window()
            if event.remote_reset:
                self._count_reset()
        elif isinstance(event, h2.events.WindowUpdated):
            if event.stream_id == 0:
                for stream in self.streams.values():
                    stream._wake_window()
            elif (stream := self.streams.get(event.stream_id)) is not None:
                stream._wake_window()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            for stream in self.streams.values():
                stream._wake_window()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._end(f"the peer sent GOAWAY ({_code(event.error_code)})")

    def _count_reset(self) -> None:
        now = trio.current_time()
        self._resets.append(now)
        while self._resets and self._resets[0] < now - 1.0:
            self._resets.popleft()
        if len(self._resets) > MAX_RESETS_PER_SECOND:
            log.warning("closing an HTTP/2 connection: more than %d stream resets per second", MAX_RESETS_PER_SECOND)
            self.close(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, "too many stream resets")

    async def _handle(self, stream: H2Stream) -> None:
        """Run one request's handler; whatever ends it ends that stream only, never its neighbours."""
        assert self._on_request is not None
        try:
            await self._on_request(stream)
        except StreamReset as exc:
            log.debug("HTTP/2 stream %d ended: %s", stream.stream_id, exc)
        except Exception:
            # Our bug, in one request: log it and reset that stream (forget does), keep the others.
            log.exception("HTTP/2 stream %d: the request handler failed", stream.stream_id)
        finally:
            self.forget(stream)

    def forget(self, stream: H2Stream) -> None:
        """The stream's owner is done with it: reset it if it is still open, drop our state."""
        if self.streams.pop(stream.stream_id, None) is None:
            return
        if self.closed is None:
            try:
                state_open = not self.conn._get_stream_by_id(stream.stream_id).closed
            except (h2.exceptions.StreamClosedError, KeyError):
                state_open = False
            if state_open:
                self.reset(stream.stream_id, h2.errors.ErrorCodes.CANCEL)
        for _chunk, flow in stream._data:  # unread data still counts against the connection's window
            self.consumed(stream.stream_id, flow)
        stream._data.clear()
        if not self.streams:
            self._idle_since = trio.current_time()

    # ------------------------------------------------------------ sending

    @property
    def unsent(self) -> int:
        """Bytes queued for the peer and not yet sent."""
        return len(self._outbox) + self._inflight

    def consumed(self, stream_id: int, length: int) -> None:
        if self.closed is not None or length == 0:
            return
        try:  # h2 opens the connection's window even when the stream is gone
            self.conn.acknowledge_received_data(length, stream_id)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return
        self._kick.set()

    def _check_open(self) -> None:
        if self.closed is not None:
            raise StreamReset(self.closed)

    async def send_headers(self, stream_id: int, headers: RawHeaders, end_stream: bool = False) -> None:
        self._check_open()
        try:
            self.conn.send_headers(stream_id, headers, end_stream=end_stream)
        except h2.exceptions.StreamClosedError as exc:
            raise StreamReset(f"stream {stream_id} is closed") from exc
        await self._queued()

    async def send_data(self, stream: H2Stream, data: bytes | memoryview, end_stream: bool = False) -> None:
        view = memoryview(data)
        while view:
            self._check_open()
            if stream.reset is not None:
                raise StreamReset(stream.reset)
            try:
                window = min(self.conn.local_flow_control_window(stream.stream_id), self.conn.max_outbound_frame_size)
            except h2.exceptions.StreamClosedError as exc:
                raise StreamReset(f"stream {stream.stream_id} is closed") from exc
            if window <= 0:
                await stream._window.wait()
                continue
            chunk, view = view[:window], view[window:]
            self.conn.send_data(stream.stream_id, chunk.tobytes(), end_stream=end_stream and not view)
            await self._queued()
        if end_stream and not data:
            await self.end_stream(stream)

    async def end_stream(self, stream: H2Stream) -> None:
        self._check_open()
        try:
            self.conn.end_stream(stream.stream_id)
        except h2.exceptions.StreamClosedError as exc:
            raise StreamReset(f"stream {stream.stream_id} is closed") from exc
        await self._queued()

    def reset(self, stream_id: int, error: h2.errors.ErrorCodes = h2.errors.ErrorCodes.CANCEL) -> None:
        if self.closed is not None:
            return
        try:
            self.conn.reset_stream(stream_id, error_code=error)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return
        self._kick.set()

    async def _queued(self) -> None:
        """Kick the writer; wait while more than the high-water mark is queued and not sent."""
        self._outbox += self.conn.data_to_send()
        self._kick.set()
        while self.unsent > SEND_HIGH_WATER and self.closed is None:
            await self._drained.wait()
        await trio.lowlevel.checkpoint()

    # ------------------------------------------------------------ client side

    def available(self) -> bool:
        """Whether a new request may go on this connection now."""
        if self.closed is not None or self.conn.state_machine.state == h2.connection.ConnectionState.CLOSED:
            return False
        limit = min(self.conn.remote_settings.max_concurrent_streams, MAX_CONCURRENT_STREAMS)
        return self.conn.open_outbound_streams < limit

    async def request(self, headers: RawHeaders, end_stream: bool) -> H2Stream:
        """Open a stream with ``headers``; its response arrives on the returned stream."""
        self._check_open()
        stream_id = self.conn.get_next_available_stream_id()
        stream = self.streams[stream_id] = H2Stream(self, stream_id)
        self._idle_since = None
        await self.send_headers(stream_id, headers, end_stream)
        return stream


def _code(code: object) -> str:
    return getattr(code, "name", str(code))
