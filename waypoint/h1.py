"""HTTP/1.1 inside a tunnel, both sides: h11 is the sans-IO core, this is its trio driver.

``serve_h1(stream, handler)`` reads one request after another from a client (keep-alive, each
answered before the next is read) and hands each to ``handler`` as an ``H1Downstream``. The client's
faults end only its own connection: a malformed request gets h11's status hint (400, or 431 for a
head over ``MAX_REQUEST_HEAD_BYTES`` or with more than ``MAX_REQUEST_HEADERS`` headers) with
``Connection: close``, and so does one framed by both Content-Length and Transfer-Encoding (request
smuggling, refused as Envoy does); a head that takes longer than ``HEADER_READ_TIMEOUT`` to arrive, a
keep-alive connection idle for ``IDLE_TIMEOUT``, or a request body that stalls for ``IDLE_TIMEOUT``, is
closed. A request body the handler did not read (it answered without needing it, e.g. a 403) is read
and dropped up to ``RETRY_BUFFER_BYTES``; past that the connection closes instead. A client waiting
on ``Expect: 100-continue`` gets its 100 when the body is first read, and a response to HEAD goes out
without the body the handler writes.

``H1Upstream`` is the client side on one upstream connection: ``start`` sends a request head, then
the body streams, while the response is read. After a complete exchange on a connection both sides
keep open, ``release(reusable=True)`` puts it back in its pool.

An ``Upgrade`` (WebSocket) passes through: when the upstream answers 101, both connections switch
to raw bytes, relayed both ways (``switched`` gives each side's stream with what h11 had buffered).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from http import HTTPStatus

import h11
import trio

from waypoint.detect import PrefixedStream
from waypoint.exchange import Headers
from waypoint.limits import (
    HEADER_READ_TIMEOUT,
    IDLE_TIMEOUT,
    MAX_LOCAL_REPLY_BYTES,
    MAX_REQUEST_HEAD_BYTES,
    MAX_REQUEST_HEADERS,
    READ_CHUNK,
    RETRY_BUFFER_BYTES,
)
from waypoint.routing import RequestHead

log = logging.getLogger("ambient.waypoint.h1")


class PeerGone(Exception):
    """The connection ended (or broke) in the middle of a message."""


_REASONS = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}


def _reason(status: int) -> bytes:
    """The standard reason phrase (an HTTP/2 upstream sends none; clients and logs expect one)."""
    return _REASONS.get(status, b"")


def _decode(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    return [(n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in headers]


def _encode(headers: Headers) -> list[tuple[bytes, bytes]]:
    return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers]


_NEVER = float("inf")


async def _next_event(conn: h11.Connection, stream: trio.abc.Stream, idle: float = _NEVER) -> object:
    """The next event; PeerGone if the peer breaks the protocol, goes away, or sends nothing for ``idle``."""
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise PeerGone(f"malformed HTTP/1.1 from the peer: {exc}") from exc
        if event is not h11.NEED_DATA:
            return event
        if idle == _NEVER:  # no cancel scope to enter and leave (a cost per read) where no deadline applies
            conn.receive_data(bytes(await _receive(stream)))
            continue
        with trio.move_on_after(idle):
            conn.receive_data(bytes(await _receive(stream)))
            continue
        raise PeerGone(f"nothing from the peer for {idle:g} s")


async def _receive(stream: trio.abc.Stream) -> bytes | bytearray:
    try:
        return await stream.receive_some(READ_CHUNK)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise PeerGone(str(exc)) from exc


# ---------------------------------------------------------------- server


class _H1Side:
    """What both sides of an h11 connection share: sending its events, a head held back to go out with
    the bytes after it (one write instead of two), and the raw stream after a protocol switch."""

    stream: trio.abc.HalfCloseableStream
    conn: h11.Connection
    _held: bytes

    async def _send(self, event: h11.Event, hold: bool = False) -> None:
        try:
            data = self.conn.send(event) or b""
        except h11.LocalProtocolError as exc:
            raise PeerGone(f"cannot send {type(event).__name__}: {exc}") from exc
        await self._write(data, hold)

    async def _write(self, data: bytes, hold: bool) -> None:
        if self._held:
            data, self._held = self._held + data, b""
        if hold:
            self._held = data
        elif data:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise PeerGone(str(exc)) from exc

    def switched(self) -> trio.abc.HalfCloseableStream:
        """The peer's raw stream after a 101, with what h11 already read of it."""
        data, _closed = self.conn.trailing_data
        return PrefixedStream(self.stream, bytes(data))


class H1Downstream(_H1Side):
    http_version = "HTTP/1.1"

    def __init__(self, stream: trio.abc.HalfCloseableStream, conn: h11.Connection, request: h11.Request,
                 headers: Headers) -> None:
        """``headers``: the request's, decoded (``_decode``)."""
        self.stream = stream
        self.conn = conn
        authority = next((v for n, v in headers if n == "host"), "")
        self.head = RequestHead(request.method.decode("latin-1"), request.target.decode("latin-1"), authority,
                                tuple(headers))
        self.upgrade = next((v for n, v in headers if n == "upgrade"), None)
        # A response to HEAD has the head of the GET response and no body (RFC 9110 9.3.2): what the
        # handler writes as its body (a local reply's text, say) is not sent.
        self._head_only = request.method == b"HEAD"
        self.received_bytes = 0
        self.sent_bytes = 0
        self.responded = False
        self.aborted = False
        self._body_done = False
        self._chunked = False
        self._held = b""  # a response head kept to go out with the first body bytes

    def request_ended(self) -> bool:
        """Whether the request is known to have no more body (HTTP/1.1 says so by its framing)."""
        return self._body_done

    async def receive_body(self) -> bytes:
        if self._body_done:
            return b""
        if self.conn.client_is_waiting_for_100_continue and not self.responded:
            # The client sends its body only once told to go on (RFC 9110 10.1.1): reading it is the go-ahead.
            await self._send(h11.InformationalResponse(status_code=100, headers=[]))
        event = await _next_event(self.conn, self.stream, IDLE_TIMEOUT)
        if isinstance(event, h11.Data):
            self.received_bytes += len(event.data)
            return bytes(event.data)
        if isinstance(event, h11.EndOfMessage):
            self._body_done = True
            return b""
        raise PeerGone(f"the client's request ended early ({type(event).__name__})")

    async def respond(self, status: int, headers: Headers, *, end: bool = False, hold: bool = False) -> None:
        """Send the response head; ``hold``: keep it to go out with the first body bytes (or the end),
        one write instead of two, when the caller has them at hand."""
        if status == 101:
            await self._send(h11.InformationalResponse(status_code=101, headers=_encode(headers)))
            self.responded = True
            return
        names = {n for n, _ in headers}
        if end and "content-length" not in names and status not in (204, 304):  # 204 carries none (RFC 9110 8.6)
            headers = [*headers, ("content-length", "0")]
        # Without a length h11 frames the body chunked for an HTTP/1.1 client, which can carry trailers.
        self._chunked = ("content-length" not in names and self.conn.their_http_version == b"1.1"
                         and not self._head_only and status not in (204, 304))
        await self._send(h11.Response(status_code=status, headers=_encode(headers), reason=_reason(status)),
                         hold=hold and not end)
        self.responded = True
        if end:
            await self._send(h11.EndOfMessage())

    async def send_body(self, data: bytes) -> None:
        if data and not self._head_only:
            self.sent_bytes += len(data)
            await self._send(h11.Data(data=data))

    async def end(self, trailers: Headers | None = None) -> None:
        # h11 sends trailers only with chunked framing; a content-length response has none to carry.
        await self._send(h11.EndOfMessage(headers=_encode(trailers) if trailers and self._chunked else []))

    def abort(self) -> None:
        self.aborted = True


Handler = Callable[[H1Downstream], Awaitable[None]]


async def serve_h1(stream: trio.abc.HalfCloseableStream, handler: Handler, initial: bytes = b"") -> None:
    """Serve requests on ``stream`` until the client is done (or misbehaves), then return."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES)
    if initial:  # h11 takes b"" as the end of the stream
        conn.receive_data(initial)
    first = True
    while True:
        try:
            request = await _read_head(conn, stream, first)
        except h11.RemoteProtocolError as exc:
            await _refuse(stream, conn, exc.error_status_hint, f"malformed request: {exc}")
            return
        if request is None:
            return
        first = False
        # Decoded once, from h11's list (iterating its Headers goes through a Python __getitem__ per item).
        headers = _decode(request.headers.raw_items())
        if len(headers) > MAX_REQUEST_HEADERS:
            await _refuse(stream, conn, 431, f"more than {MAX_REQUEST_HEADERS} request headers")
            return
        if _head_size(request, headers) > MAX_REQUEST_HEAD_BYTES:
            # h11 bounds a head only while it is incomplete: one that arrives whole in a read is let through.
            await _refuse(stream, conn, 431, f"a request head over {MAX_REQUEST_HEAD_BYTES} bytes")
            return
        names = {name for name, _ in headers}
        if "transfer-encoding" in names and "content-length" in names:
            # RFC 9112 6.3: Transfer-Encoding wins, but the pair is how requests are smuggled past a proxy
            # that reads the other; Envoy refuses it (unless allow_chunked_length), and so do we.
            await _refuse(stream, conn, 400, "both Content-Length and Transfer-Encoding")
            return
        exchange = H1Downstream(stream, conn, request, headers)
        try:
            await handler(exchange)
            if exchange.aborted or conn.our_state is h11.SWITCHED_PROTOCOL:
                return
            if conn.our_state is not h11.DONE:
                return  # the response did not complete: the connection cannot carry another
            if conn.their_state is h11.SEND_BODY and not await _drain_body(exchange):
                return
        except PeerGone:
            return
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return
        try:
            conn.start_next_cycle()
        except h11.LocalProtocolError:
            return


async def _read_head(conn: h11.Connection, stream: trio.abc.Stream, first: bool) -> h11.Request | None:
    """The next request head, or None when the client is done (or too slow). A keep-alive connection
    may stay quiet for IDLE_TIMEOUT; once a head starts, it must be whole within HEADER_READ_TIMEOUT."""
    deadline = trio.current_time() + (HEADER_READ_TIMEOUT if first else IDLE_TIMEOUT)
    started = first
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event if isinstance(event, h11.Request) else None
        with trio.move_on_at(deadline):
            try:
                data = await stream.receive_some(READ_CHUNK)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None
            if not started:
                started = True
                deadline = trio.current_time() + HEADER_READ_TIMEOUT
            conn.receive_data(bytes(data))
            continue
        return None


def _head_size(request: h11.Request, headers: Headers) -> int:
    """The request head's size on the wire, near enough (h11 has dropped optional whitespace); ``headers``
    decoded from latin-1, a character a byte."""
    line = len(request.method) + len(request.target) + len(b" HTTP/1.1\r\n") + 1
    return line + sum(len(name) + len(value) + 4 for name, value in headers) + 2


async def _drain_body(exchange: H1Downstream) -> bool:
    """Read and drop the rest of a request body the handler did not need; False if it is too long."""
    if exchange.conn.client_is_waiting_for_100_continue:
        return False  # the client has not sent it and will not until told: nothing to drain, just close
    left = RETRY_BUFFER_BYTES
    with trio.move_on_after(HEADER_READ_TIMEOUT):
        while left > 0:
            data = await exchange.receive_body()
            if not data:
                return True
            left -= len(data)
    return False


async def _refuse(stream: trio.abc.Stream, conn: h11.Connection, status: int, reason: str) -> None:
    log.debug("HTTP/1.1 client refused with %d: %s", status, reason)
    body = reason.encode("utf-8", "replace")[:MAX_LOCAL_REPLY_BYTES]
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    try:
        data = conn.send(h11.Response(status_code=status, headers=headers, reason=_reason(status))) or b""
        data += conn.send(h11.Data(data=body)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
    except h11.LocalProtocolError:
        # h11 will not answer in this state (e.g. a response already started): just close.
        return
    with trio.move_on_after(1):
        try:
            await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


# ---------------------------------------------------------------- client


class H1Upstream(_H1Side):
    http_version = "HTTP/1.1"

    def __init__(self, stream: trio.abc.HalfCloseableStream, on_release: Callable[[H1Upstream, bool], None]) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)
        self._held = b""  # a request head kept to go out with the body
        self._on_release = on_release
        self._trailers: Headers | None = None
        self._response_done = False
        self.status = 0

    async def start(self, head: RequestHead, headers: Headers, *, body_length: int | None,
                    hold: bool = False) -> None:
        """Send the request head; ``body_length`` None means chunked, 0 no body. ``hold``: keep the head
        to go out with the body (or its end), one write instead of two."""
        self._trailers = None
        self._response_done = False
        self.status = 0
        out = [("host", head.authority), *headers]
        if body_length:  # a request without a length or chunking has no body (RFC 9112 6.3)
            out.append(("content-length", str(body_length)))
        elif body_length is None:
            out.append(("transfer-encoding", "chunked"))
        await self._send(h11.Request(method=head.method, target=head.target, headers=_encode(out)), hold)

    async def send_body(self, data: bytes) -> None:
        if data:
            await self._send(h11.Data(data=data))

    async def end_body(self) -> None:
        await self._send(h11.EndOfMessage())

    async def response(self) -> tuple[int, Headers]:
        if self._held:  # a held head goes out before we wait for its answer
            await self._write(b"", hold=False)
        while True:
            event = await _next_event(self.conn, self.stream)
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:
                    self.status = 101
                    return 101, _decode(event.headers.raw_items())
                continue
            if isinstance(event, h11.Response):
                self.status = event.status_code
                return event.status_code, _decode(event.headers.raw_items())
            raise PeerGone(f"the upstream closed before its response ({type(event).__name__})")

    async def receive_body(self) -> bytes:
        if self._response_done:
            return b""
        event = await _next_event(self.conn, self.stream)
        if isinstance(event, h11.Data):
            return bytes(event.data)
        if isinstance(event, h11.EndOfMessage):
            self._response_done = True
            self._trailers = _decode(event.headers.raw_items()) or None
            return b""
        raise PeerGone(f"the upstream's response ended early ({type(event).__name__})")

    @property
    def trailers(self) -> Headers | None:
        return self._trailers

    async def release(self, reusable: bool) -> None:
        # Never waits (no await here, nor in the pool's callback): the pipeline calls it without a shield.
        # h11 leaves their_state DONE after a response read to the end of the stream (no length), and
        # after the origin closed right behind its response: the end of the stream seen, or bytes past the
        # response, make the connection unfit for another request.
        extra, eof = self.conn.trailing_data
        clean = (reusable and self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE
                 and not eof and not extra)
        if clean:
            try:
                self.conn.start_next_cycle()
            except h11.LocalProtocolError:
                clean = False
        self._on_release(self, clean)

    def body_at_hand(self) -> bytes | None:
        """The next chunk of the response body if it has already arrived (b"" for its end), else None:
        lets the caller send the response head with it in one write."""
        if self._response_done:
            return b""
        try:
            event = self.conn.next_event()
        except h11.RemoteProtocolError:
            return None  # receive_body raises it
        if isinstance(event, h11.Data):
            return bytes(event.data)
        if isinstance(event, h11.EndOfMessage):
            self._response_done = True
            self._trailers = _decode(event.headers.raw_items()) or None
            return b""
        if event is h11.NEED_DATA:
            return None
        raise PeerGone(f"the upstream's response ended early ({type(event).__name__})")
