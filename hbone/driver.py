"""HBONE's trio drivers for the sans-IO connections of ``hbone.connect``.

A driver owns one HTTP/2 connection over a ``FrameTransport`` (``hbone.transport``: in production a
``TlsStream``) and three tasks: the reader feeds received bytes to the sans-IO peer and hands its
events to the streams; the writer finishes sends the transport could not take at once; the timer
calls ``on_timer`` (PINGs) and closes an idle client connection. Each proxied TCP connection is an
``HboneStream``, a trio ``HalfCloseableStream``, so the relay treats it like a socket.

- Frames go out at once, from whichever task queued them (``send_nowait``; over TLS one TLS
  write and one ``send``, no task switch). When the socket does not take everything, the writer task
  waits for it and sends the rest, with whatever was queued meanwhile, in order. Nobody else waits on
  a send, least of all the reader: two proxies whose reader each blocked on a full send buffer would
  deadlock. ``send_all`` returns once its bytes are queued and the queue is under ``HIGH_WATER``.
- Received data is acknowledged (WINDOW_UPDATE credit) when the stream's reader takes it, so a slow
  app stops its sender through the HTTP/2 windows rather than through our memory.
- A stream the peer resets, or a connection that ends, makes the stream's next operation raise
  ``trio.BrokenResourceError``. ``aclose`` of a stream not cleanly finished both ways resets it.
- Server: a CONNECT the client reset before its handler could be started (in the same read: rapid
  reset) never reaches the handler, and a handler still reaching the upstream when its stream is reset,
  or the connection ends, is cancelled. The HTTP/2 layer bounds how often a client may do either.
- A peer that sends and does not read: control frames it provokes are bounded in the HTTP/2 layer; and
  while more than ``MAX_QUEUED_OUTPUT_BYTES`` wait for the socket the reader reads nothing more, until
  the writer has sent them (or the PING timeout ends the connection).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

import trio

from hbone.connect import (
    ConnectAccepted,
    ConnectRefused,
    ConnectRejection,
    ConnectRequested,
    ConnectTarget,
    Event,
    HboneClientConnection,
    HboneConnection,
    HboneServerConnection,
    IPAddress,
    PingAnswered,
)
from hbone.connect_state import ConnectState
from hbone.http2 import (
    ConnectionClosed,
    LocalProtocolError,
    SendWindowOpened,
    StreamAborted,
    StreamData,
    StreamHalfClosed,
)
from hbone.limits import (  # the limits, importable from here as before
    CLOSE_GRACE as CLOSE_GRACE,
    HIGH_WATER as HIGH_WATER,
    IDLE_TIMEOUT as IDLE_TIMEOUT,
    MAX_QUEUED_OUTPUT_BYTES,
    READ_SIZE as READ_SIZE,
    SERVER_IDLE_TIMEOUT,
)
from hbone.transport import FrameTransport
from mesh.errors import describe

log = logging.getLogger("ambient.hbone")

SideEvent = ConnectRequested | ConnectAccepted | ConnectRefused  # what only one side's driver handles


class HboneRefused(Exception):
    """The server answered the CONNECT with ``status`` (400, 401, 503...)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HBONE CONNECT refused with {status}")
        self.status = status


class HboneStream(trio.abc.HalfCloseableStream):
    """One CONNECT stream: bytes both ways, with half-close. Counts what it carried."""

    def __init__(self, driver: _Driver, stream_id: int) -> None:
        self._driver = driver
        self.stream_id = stream_id
        self._chunks: deque[bytes] = deque()
        self._eof = False  # the peer half-closed
        self._error: str | None = None  # why the stream broke
        self._readable = trio.Event()
        self._sent_eof = False
        self._closed = False
        self._receiving = False
        self._sending = False
        self.bytes_sent = 0
        self.bytes_received = 0

    # -- fed by the driver's reader

    def _deliver(self, data: bytes) -> None:
        self._chunks.append(data)
        self._readable.set()

    def _end(self) -> None:
        self._eof = True
        self._readable.set()

    def _break(self, reason: str) -> None:
        if self._error is None:
            self._error = reason
        self._readable.set()

    @property
    def error(self) -> str | None:
        """Why the stream broke (reset, connection lost), or None."""
        return self._error

    # -- the stream interface

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this stream")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            while not self._chunks:
                if self._closed:
                    raise trio.ClosedResourceError("the stream was closed")
                if self._eof:  # a clean end arrived before anything broke
                    return b""
                if self._error is not None:
                    raise trio.BrokenResourceError(self._error)
                self._readable = trio.Event()
                await self._readable.wait()
            chunk = self._chunks.popleft()
            if max_bytes is not None and len(chunk) > max_bytes:
                self._chunks.appendleft(chunk[max_bytes:])
                chunk = chunk[:max_bytes]
            self.bytes_received += len(chunk)
            self._driver.acknowledge(self.stream_id, len(chunk))
            return chunk
        finally:
            self._receiving = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            # Wait for room first, not only after: else every stream of a connection may add its
            # chunk before any of them waits, and the output grows to streams x chunk (26 MiB for 100
            # relays of 256 KiB) instead of staying near HIGH_WATER.
            await self._driver.wait_writable()
            # The HTTP/2 layer holds what it takes until the socket has it, and our caller may
            # reuse its buffer once we return: only immutable bytes may be held.
            rest: bytes | memoryview = data if type(data) is bytes else bytes(data)
            while rest:
                self._check_sendable()
                n = self._driver.send_data(self.stream_id, rest)
                self.bytes_sent += n
                if n == len(rest):
                    break
                rest = memoryview(rest)[n:]
                await self._driver.window_opened()
            await self._driver.wait_writable()
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        await self._driver.wait_writable()

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        if self._sent_eof:
            return
        self._check_sendable()
        self._sent_eof = True
        self._driver.half_close(self.stream_id)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._readable.set()
            self._driver.finish(self)
        await trio.lowlevel.checkpoint()

    def _check_sendable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the stream was closed")
        if self._error is not None:
            raise trio.BrokenResourceError(self._error)
        if self._sent_eof:
            raise trio.ClosedResourceError("send_eof was already called")

    @property
    def finished(self) -> bool:
        """Both halves closed cleanly and everything received was read."""
        return self._sent_eof and self._eof and not self._chunks and self._error is None


class _Driver:
    """What the client and server drivers share; see the module docstring."""

    peer: HboneConnection

    def __init__(self, transport: FrameTransport, idle_timeout: float | None) -> None:
        self.transport = transport
        self.streams: dict[int, HboneStream] = {}
        # Closed after this long without streams (None: never); counted from now, or the last stream.
        self._idle_timeout = idle_timeout
        self._idle_since: float | None = trio.current_time()
        self.closed = False
        self.close_reason = ""
        self._queued = 0  # DATA bytes the peer holds that were not handed to the socket yet
        self._write_wanted = trio.Event()
        self._writer_busy = False  # the writer owns sending until it has flushed
        self._flush_scope = trio.CancelScope()  # the writer's flush in progress (_closed_by bounds it)
        # Any number of senders wait on these; a ParkingLot wakes them all.
        self._writable = trio.lowlevel.ParkingLot()
        self._window = trio.lowlevel.ParkingLot()
        self._timer_changed = trio.Event()
        self._read_scope = trio.CancelScope()

    # -- called by streams

    def send_data(self, stream_id: int, data: bytes | memoryview) -> int:
        try:
            n = self.peer.send_data(stream_id, data)
        except LocalProtocolError:  # the stream went (reset, refused) in this very batch
            raise trio.BrokenResourceError(f"stream {stream_id} is gone") from None
        self._kick(n)
        return n

    def half_close(self, stream_id: int) -> None:
        self.peer.half_close(stream_id)
        self._kick()
        self._maybe_forget(stream_id)

    def acknowledge(self, stream_id: int, n: int) -> None:
        self.peer.acknowledge(stream_id, n)
        self._kick()

    def finish(self, stream: HboneStream) -> None:
        """The stream's owner is done with it: reset it unless it ended cleanly."""
        if not self.closed and self.peer.state(stream.stream_id) is not ConnectState.CLOSED and not stream.finished:
            self.peer.reset(stream.stream_id)
            self._kick()
        self.streams.pop(stream.stream_id, None)
        self._stream_count_changed()

    async def window_opened(self) -> None:
        if self.closed:
            raise trio.BrokenResourceError(self.close_reason)
        await self._window.park()

    async def wait_writable(self) -> None:
        while self._queued + self.transport.unsent >= HIGH_WATER and not self.closed:
            await self._writable.park()
        if self.closed:
            raise trio.BrokenResourceError(self.close_reason)

    # -- running

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._reader)
                nursery.start_soon(self._timer)
                task_status.started()
                # The writer ends once the connection is closed and its last frames (GOAWAY,
                # RST_STREAM) are sent: cancelling a TLS write halfway would break the stream.
                await self._writer()
                nursery.cancel_scope.cancel()
        finally:
            self._closed_by(self.close_reason or "the connection was closed")
            with trio.CancelScope() as forcefully:  # as trio.aclose_forcefully: close, never wait
                forcefully.cancel()
                await self.transport.aclose()

    def close(self, reason: str = "the connection was closed locally") -> None:
        """GOAWAY now (sent as the driver stops); every stream breaks."""
        if not self.closed:
            self.peer.close()
            self._closed_by(reason)

    async def _reader(self) -> None:
        try:
            with self._read_scope:
                while not self.closed:
                    while self._queued + self.transport.unsent >= MAX_QUEUED_OUTPUT_BYTES and not self.closed:
                        await self._writable.park()  # backpressure: the writer wakes us as it sends
                    data = await self.transport.receive_some(READ_SIZE)
                    if not data:
                        self._closed_by("the peer closed the connection")
                        return
                    self._dispatch(self.peer.receive_bytes(data))
                    self._kick()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._closed_by(f"the connection broke while reading: {describe(exc)}")

    async def _writer(self) -> None:
        try:
            while True:
                while not self._write_wanted.is_set():
                    await self._write_wanted.wait()
                self._write_wanted = trio.Event()
                self._writer_busy = True
                try:
                    data = self.peer.data_to_send()
                    self._queued = 0
                    if self.closed:
                        with trio.move_on_after(CLOSE_GRACE):
                            self.transport.send_nowait(data)
                            await self.transport.flush()
                        return
                    self.transport.send_nowait(data)
                    # Cancelled by _closed_by after CLOSE_GRACE: a peer that stopped reading must not
                    # hold the connection (and its socket buffers) open once we have closed it.
                    with self._new_flush_scope() as flushing:
                        await self.transport.flush()
                    if flushing.cancelled_caught:
                        return
                finally:
                    self._writer_busy = False
                self._writable.unpark_all()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._closed_by(f"the connection broke while writing: {describe(exc)}")

    async def _timer(self) -> None:
        while not self.closed:
            deadline = self._deadline()
            self._timer_changed = trio.Event()
            with trio.move_on_at(deadline if deadline is not None else float("inf")):
                await self._timer_changed.wait()
                continue
            self._dispatch(self.peer.on_timer(trio.current_time()))
            self._on_deadline()
            self._kick()

    def _deadline(self) -> float | None:
        deadline = self.peer.next_deadline()
        if self._idle_since is not None and self._idle_timeout is not None:
            idle_at = self._idle_since + self._idle_timeout
            deadline = idle_at if deadline is None else min(deadline, idle_at)
        return deadline

    def _on_deadline(self) -> None:
        timeout = self._idle_timeout
        if timeout is not None and self._idle_since is not None and trio.current_time() >= self._idle_since + timeout:
            log.debug("closing an HBONE connection idle for %.0f s", timeout)
            self.close(f"no stream for {timeout:.0f} s")

    def _stream_count_changed(self) -> None:
        if not self.streams and self._idle_since is None:
            self._idle_since = trio.current_time()
        elif self.streams:
            self._idle_since = None
        self._timer_changed.set()

    def _kick(self, queued: int = 0) -> None:
        """The peer may have queued frames: send them now, unless the writer owns sending."""
        self._queued += queued
        if self._writer_busy or self.closed:
            self._write_wanted.set()
            return
        data = self.peer.data_to_send()
        self._queued = 0
        if not data:
            return
        try:
            sent = self.transport.send_nowait(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._closed_by(f"the connection broke while writing: {describe(exc)}")
            return
        if not sent:  # the socket is full: the writer waits for it
            self._writer_busy = True
            self._write_wanted.set()

    def _maybe_forget(self, stream_id: int) -> None:
        if self.peer.state(stream_id) is ConnectState.CLOSED:
            stream = self.streams.get(stream_id)
            if stream is not None and stream.finished:
                self.streams.pop(stream_id, None)
                self._stream_count_changed()

    def _new_flush_scope(self) -> trio.CancelScope:
        self._flush_scope = trio.CancelScope()
        return self._flush_scope

    def _closed_by(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        # A write in progress may finish (and the GOAWAY follow) within the grace, then it is given up.
        self._flush_scope.deadline = min(self._flush_scope.deadline, trio.current_time() + CLOSE_GRACE)
        for stream in list(self.streams.values()):
            stream._break(reason)
        self.streams.clear()
        self._window.unpark_all()
        self._writable.unpark_all()
        self._write_wanted.set()
        self._timer_changed.set()
        self._read_scope.cancel()

    def _dispatch(self, events: list[Event]) -> None:
        for event in events:
            # ``type(...) is``, not isinstance: the cheapest test, on a path taken per DATA frame.
            if type(event) is StreamData:
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream._deliver(event.data)
                else:  # its owner already let it go: nobody will read it
                    self.peer.acknowledge(event.stream_id, len(event.data))
            elif type(event) is SendWindowOpened:
                self._window.unpark_all()
            elif type(event) is StreamHalfClosed:
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream._end()
            elif type(event) is StreamAborted:
                stream = self.streams.pop(event.stream_id, None)
                if stream is not None:
                    who = "the peer" if event.remote else "this proxy"
                    stream._break(f"stream reset by {who} (error code {event.error_code})")
                    self._window.unpark_all()  # a sender waiting for window must see the break
                    self._stream_count_changed()
                    self._stream_aborted(event.stream_id)
            elif type(event) is ConnectionClosed:
                self._closed_by(f"connection closed ({event.reason}, error code {event.error_code})")
            elif type(event) is PingAnswered:
                self._timer_changed.set()  # the next PING is due before the timeout it waited for
            elif isinstance(event, (ConnectRequested, ConnectAccepted, ConnectRefused)):
                self._dispatch_side(event)

    def _dispatch_side(self, event: SideEvent) -> None:
        raise NotImplementedError

    def _stream_aborted(self, stream_id: int) -> None:
        """A subclass's hook: the stream went before its owner let it go."""


# ---------------------------------------------------------------- server


@dataclass(frozen=True)
class IncomingConnect:
    """A CONNECT for the handler to answer: ``accept()`` once the upstream is up, or ``reject``."""

    driver: HboneServerDriver
    stream: HboneStream
    target: ConnectTarget

    def accept(self) -> HboneStream:
        """200; the stream then carries the tunnel. ``trio.BrokenResourceError`` if the client gave
        up (or the connection ended) while the upstream was being reached."""
        return self.driver.accept_connect(self.stream)

    def reject(self, status: int) -> None:
        """401 denied by policy, 503 no upstream (400 is the connection's own, for malformed requests)."""
        self.driver.reject_connect(self.stream, status)


Handler = Callable[[IncomingConnect], Awaitable[None]]
RejectionHook = Callable[[ConnectRejection], None]


class HboneServerDriver(_Driver):
    """Serves one accepted HBONE connection: each valid CONNECT runs ``handler`` in its own task;
    a malformed one has already been answered 400 and is passed to ``on_rejected`` for the log."""

    peer: HboneServerConnection

    def __init__(self, transport: FrameTransport, local_addresses: Collection[IPAddress | str] | None, handler: Handler,
                 on_rejected: RejectionHook | None = None, *, idle_timeout: float | None = SERVER_IDLE_TIMEOUT,
                 ) -> None:
        super().__init__(transport, idle_timeout)
        self.peer = HboneServerConnection(local_addresses, now=trio.current_time())
        self._handler = handler
        self._on_rejected = on_rejected
        self._handlers: trio.Nursery | None = None
        # The handlers of CONNECTs not answered yet, by stream: a reset of the stream cancels its handler.
        self._unanswered: dict[int, trio.CancelScope] = {}
        self.draining = False

    async def serve(self) -> None:
        """Until the connection ends and every handler has finished."""
        async with trio.open_nursery() as handlers:
            self._handlers = handlers
            await self._run(trio.TASK_STATUS_IGNORED)

    def drain(self) -> None:
        """Refuse new CONNECTs with 503 (a GOAWAY would end the open streams too: our HTTP/2 layer
        ends a connection at GOAWAY), and let the open ones finish."""
        self.draining = True

    def accept_connect(self, stream: HboneStream) -> HboneStream:
        """Answer ``stream``'s CONNECT with 200 (``IncomingConnect.accept``)."""
        if self.closed or self.peer.state(stream.stream_id) is not ConnectState.AWAITING:
            raise trio.BrokenResourceError(stream.error or "the client gave up on the CONNECT")
        self._unanswered.pop(stream.stream_id, None)  # the tunnel's, from now on: no longer cancelled here
        self.peer.accept(stream.stream_id)
        self._kick()
        return stream

    def reject_connect(self, stream: HboneStream, status: int) -> None:
        """Refuse ``stream``'s CONNECT with ``status``, unless it is gone already (``IncomingConnect.reject``)."""
        self._unanswered.pop(stream.stream_id, None)
        if not self.closed and self.peer.state(stream.stream_id) is ConnectState.AWAITING:
            self.peer.reject(stream.stream_id, status)
            self._kick()
        self.streams.pop(stream.stream_id, None)
        self._stream_count_changed()

    def _dispatch_side(self, event: SideEvent) -> None:
        if type(event) is not ConnectRequested:
            return
        request = event.request
        if isinstance(request, ConnectRejection):
            if self._on_rejected is not None:
                self._on_rejected(request)
            return
        if self.closed or self.peer.state(event.stream_id) is not ConnectState.AWAITING:
            return  # reset (or the connection ended) later in the same read: never handed over
        if self.draining or self._handlers is None:
            self.peer.reject(event.stream_id, 503)
            return
        stream = self.streams[event.stream_id] = HboneStream(self, event.stream_id)
        self._stream_count_changed()
        scope = self._unanswered[event.stream_id] = trio.CancelScope()
        self._handlers.start_soon(self._handle, IncomingConnect(self, stream, request), scope)

    async def _handle(self, request: IncomingConnect, scope: trio.CancelScope) -> None:
        try:
            with scope:
                await self._handler(request)
        finally:
            self._unanswered.pop(request.stream.stream_id, None)

    def _stream_aborted(self, stream_id: int) -> None:
        scope = self._unanswered.pop(stream_id, None)  # its upstream is being reached for nobody
        if scope is not None:
            scope.cancel()

    def _closed_by(self, reason: str) -> None:
        super()._closed_by(reason)
        for scope in self._unanswered.values():
            scope.cancel()
        self._unanswered.clear()


# ---------------------------------------------------------------- client


class HboneClientDriver(_Driver):
    """One client HTTP/2 connection; ``open`` a CONNECT stream per proxied TCP connection."""

    peer: HboneClientConnection

    def __init__(self, transport: FrameTransport, *, idle_timeout: float = IDLE_TIMEOUT) -> None:
        super().__init__(transport, idle_timeout)
        self.peer = HboneClientConnection(now=trio.current_time())
        self._answers: dict[int, trio.Event] = {}
        self._refused: dict[int, int] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._run(task_status)

    def streams_available(self) -> int:
        return 0 if self.closed else self.peer.streams_available()

    async def open(self, authority: str, forwarded_for: tuple[str, int] | None,
                   baggage: str | None = None, traceparent: str | None = None) -> HboneStream:
        """CONNECT to ``authority``; returns once the server answered 200, else ``HboneRefused``."""
        if self.closed:
            raise trio.BrokenResourceError(self.close_reason)
        stream_id = self.peer.open_stream(authority, forwarded_for, baggage, traceparent)
        stream = self.streams[stream_id] = HboneStream(self, stream_id)
        answered = self._answers[stream_id] = trio.Event()
        self._idle_since = None
        self._stream_count_changed()
        self._kick()
        try:
            await answered.wait()
        except BaseException:
            await stream.aclose()
            raise
        finally:
            self._answers.pop(stream_id, None)
        status = self._refused.pop(stream_id, None)
        if status is not None:
            raise HboneRefused(status)
        if stream.error is not None:
            raise trio.BrokenResourceError(stream.error)
        return stream

    def _dispatch_side(self, event: SideEvent) -> None:
        if type(event) is ConnectAccepted:
            answered = self._answers.get(event.stream_id)
            if answered is not None:
                answered.set()
        elif type(event) is ConnectRefused:
            self._refused[event.stream_id] = event.status
            self.streams.pop(event.stream_id, None)
            self._stream_count_changed()
            answered = self._answers.get(event.stream_id)
            if answered is not None:
                answered.set()

    def _stream_aborted(self, stream_id: int) -> None:
        answered = self._answers.get(stream_id)  # reset before any answer: ``open`` raises
        if answered is not None:
            answered.set()

    def _closed_by(self, reason: str) -> None:
        super()._closed_by(reason)
        for answered in self._answers.values():
            answered.set()

