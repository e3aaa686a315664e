"""HTTP/1.1 inside a tunnel, both sides: ``waypoint.h1codec`` (llhttp) is the sans-IO core, this is
its trio driver.

``serve_h1(stream, handler)`` reads one request after another from a client (keep-alive, each
answered before the next is read) and hands each to ``handler`` as an ``H1Downstream``. The client's
faults end only its own connection: a malformed request gets the codec's status with ``Connection:
close`` (400; 505 for a version other than 1.x; 431 for a head over ``MAX_REQUEST_HEAD_BYTES`` or
with more than ``MAX_REQUEST_HEADERS`` headers), and so does one framed by both Content-Length and
Transfer-Encoding (request smuggling, refused as Envoy does) or an HTTP/1.1 request without Host; a
head that takes longer than ``HEADER_READ_TIMEOUT`` to arrive, a keep-alive connection idle for
``IDLE_TIMEOUT``, or a request body that stalls for ``IDLE_TIMEOUT``, is closed. A request body the
handler did not read (it answered without needing it, e.g. a 403) is read and dropped up to
``RETRY_BUFFER_BYTES``; past that the connection closes instead. A client waiting on ``Expect:
100-continue`` gets its 100 when the body is first read, and a response to HEAD goes out without the
body the handler writes. CONNECT is refused (405): a tunnel inside a tunnel is not proxied.

``H1Upstream`` is the client side on one upstream connection: ``start`` sends a request head, then
the body streams, while the response is read. After a complete exchange on a connection both sides
keep open, ``release(reusable=True)`` puts it back in its pool.

Each side frames what it sends as RFC 9112 6 says: the length given, else chunked towards an
HTTP/1.1 peer (which can carry trailers), else (an HTTP/1.0 client) to the end of the connection;
more or fewer body bytes than a Content-Length announced is the sender's error (``PeerGone``).

An ``Upgrade`` (WebSocket) passes through: when the upstream answers 101, both connections switch
to raw bytes, relayed both ways (``switched`` gives each side's stream with the bytes already read
past the head).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from waypoint import h1codec
from waypoint.detect import PrefixedStream
from waypoint.exchange import Headers
from waypoint.h1codec import End, Head, LocalProtocolError, ProtocolError, Reader
from waypoint.limits import (
    HEADER_READ_TIMEOUT,
    IDLE_TIMEOUT,
    MAX_LOCAL_REPLY_BYTES,
    MAX_REQUEST_HEAD_BYTES,
    MAX_REQUEST_HEADERS,
    MAX_RESPONSE_HEAD_BYTES,
    MAX_RESPONSE_HEADERS,
    READ_CHUNK,
    RETRY_BUFFER_BYTES,
)
from waypoint.routing import RequestHead

log = logging.getLogger("ambient.waypoint.h1")


class PeerGone(Exception):
    """The connection ended (or broke) in the middle of a message."""


_NEVER = float("inf")
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


async def _next_event(reader: Reader, stream: trio.abc.Stream, idle: float = _NEVER) -> object:
    """The next event; PeerGone if the peer breaks the protocol, goes away, or sends nothing for ``idle``."""
    while True:
        try:
            event = reader.next_event()
        except ProtocolError as exc:
            raise PeerGone(str(exc)) from exc
        if event is not None:
            return event
        if idle == _NEVER:  # no cancel scope to enter and leave (a cost per read) where no deadline applies
            _feed(reader, await _receive(stream))
            continue
        with trio.move_on_after(idle):
            _feed(reader, await _receive(stream))
            continue
        raise PeerGone(f"nothing from the peer for {idle:g} s")


def _feed(reader: Reader, data: bytes | bytearray) -> None:
    if data:
        reader.feed(data)
    else:
        reader.feed_eof()


async def _receive(stream: trio.abc.Stream) -> bytes | bytearray:
    try:
        return await stream.receive_some(READ_CHUNK)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise PeerGone(str(exc)) from exc


# ---------------------------------------------------------------- both sides

_LENGTH, _CHUNKED, _TO_CLOSE, _NO_BODY = range(4)  # how a message we send is framed


class _H1Side:
    """What both sides share: the framing of what they send, a head held back to go out with the
    bytes after it (one write instead of two), and the raw stream after a protocol switch."""

    stream: trio.abc.HalfCloseableStream
    reader: Reader
    _held: bytes
    _framing: int
    _left: int  # body bytes still owed under _LENGTH
    sent_done: bool  # our message is complete

    async def _send_head(self, data: bytes, framing: int, length: int, hold: bool) -> None:
        self._framing, self._left, self.sent_done = framing, length, False
        await self._write(data, hold)

    async def _send_data(self, data: bytes) -> None:
        framing = self._framing
        if framing == _LENGTH:
            if len(data) > self._left:
                raise PeerGone(f"cannot send {len(data)} body bytes: {self._left} left of the Content-Length")
            self._left -= len(data)
        elif framing == _CHUNKED:
            data = h1codec.chunk(data)
        elif framing == _NO_BODY:
            return
        await self._write(data, False)

    async def _send_end(self, trailers: Headers | None = None) -> None:
        if self._framing == _LENGTH and self._left:
            raise PeerGone(f"cannot end the message: {self._left} bytes short of its Content-Length")
        data = b""
        if self._framing == _CHUNKED:
            try:
                data = h1codec.last_chunk(trailers)
            except LocalProtocolError as exc:
                raise PeerGone(f"cannot send the trailers: {exc}") from exc
        self.sent_done = True
        await self._write(data, False)

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
        """The peer's raw stream after a 101, with what was already read past the head."""
        return PrefixedStream(self.stream, self.reader.upgraded())


# ---------------------------------------------------------------- server


class H1Downstream(_H1Side):
    http_version = "HTTP/1.1"

    def __init__(self, stream: trio.abc.HalfCloseableStream, reader: Reader, request: Head) -> None:
        self.stream = stream
        self.reader = reader
        headers = request.headers
        authority = ""
        upgrade = None
        expect = False
        framed = False  # a Content-Length other than 0, or a Transfer-Encoding: a body may follow
        for name, value in headers:
            if name == "host":
                authority = value
            elif name == "upgrade":
                upgrade = value
            elif name == "expect":
                expect = value.lower() == "100-continue"
            elif name == "transfer-encoding" or (name == "content-length" and value != "0"):
                framed = True
        self.head = RequestHead(request.method, request.target, authority, tuple(headers))
        self.upgrade = upgrade if request.upgrade else None
        # A response to HEAD has the head of the GET response and no body (RFC 9110 9.3.2): what the
        # handler writes as its body (a local reply's text, say) is not sent.
        self._head_only = request.method == "HEAD"
        self._http11 = request.version == "1.1"
        self.keep_alive = request.keep_alive
        self._waiting_100 = expect and self._http11
        self.received_bytes = 0
        self.sent_bytes = 0
        self.responded = False
        self.aborted = False
        self.switched_protocols = False
        self._body_done = False  # the request's end has been read
        self._bodiless = not framed and not self.upgrade  # RFC 9112 6.3: no length, no chunks, no body
        self._held = b""  # a response head kept to go out with the first body bytes
        self._framing, self._left, self.sent_done = _NO_BODY, 0, False

    @property
    def waiting_for_100(self) -> bool:
        """The client asked for a 100 (Continue) and has not been given one: it holds its body back."""
        return self._waiting_100

    def request_ended(self) -> bool:
        """Whether the request is known to have no more body (HTTP/1.1 says so by its framing)."""
        return self._body_done or self._bodiless

    @property
    def end_read(self) -> bool:
        """Whether the request's end has been read from the connection (else it is drained after)."""
        return self._body_done

    async def receive_body(self) -> bytes:
        if self._body_done:
            return b""
        if self._waiting_100:
            # The client sends its body only once told to go on (RFC 9110 10.1.1): reading it is the go-ahead.
            self._waiting_100 = False
            if not self.responded:
                await self._write(_CONTINUE, False)
        event = await _next_event(self.reader, self.stream, IDLE_TIMEOUT)
        if type(event) is bytes:
            self.received_bytes += len(event)
            return event
        if type(event) is End:
            self._body_done = True
            return b""
        raise PeerGone(f"the client's request ended early ({event!r})")

    async def respond(self, status: int, headers: Headers, *, end: bool = False, hold: bool = False) -> None:
        """Send the response head; ``hold``: keep it to go out with the first body bytes (or the end),
        one write instead of two, when the caller has them at hand."""
        try:
            if status == 101:
                await self._write(h1codec.response_head(101, headers), False)
                self.responded = self.switched_protocols = True
                return
            headers = [(n, v) for n, v in headers if n != "transfer-encoding"]  # the framing is ours to choose
            length = h1codec.content_length(headers)
            if end and length is None and status not in (204, 304):  # 204 carries none (RFC 9110 8.6)
                headers.append(("content-length", "0"))
                length = 0
            if self._head_only or status in (204, 304) or status < 200:
                framing = _NO_BODY
            elif length is not None:
                framing = _LENGTH
            elif self._http11:
                framing = _CHUNKED  # which can carry trailers
                headers.append(("transfer-encoding", "chunked"))
            else:
                framing = _TO_CLOSE  # an HTTP/1.0 client reads the body to the end of the connection
                self.keep_alive = False
            if not self.keep_alive:
                headers.append(("connection", "close"))
            data = h1codec.response_head(status, headers)
        except LocalProtocolError as exc:
            raise PeerGone(f"cannot send the response head: {exc}") from exc
        await self._send_head(data, framing, length or 0, hold and not end)
        self.responded = True
        if end:
            await self._send_end()

    async def send_body(self, data: bytes, *, end: bool = False) -> None:
        if data and not self._head_only:
            self.sent_bytes += len(data)
            if end and self._framing == _CHUNKED:  # the chunk and the last chunk in one write
                self.sent_done = True
                await self._write(h1codec.chunk(data) + h1codec.last_chunk(None), False)
                return
            await self._send_data(data)
        if end:
            await self._send_end()

    async def end(self, trailers: Headers | None = None) -> None:
        # Trailers go only with chunked framing; a content-length response has none to carry.
        await self._send_end(trailers)

    def abort(self) -> None:
        self.aborted = True


Handler = Callable[[H1Downstream], Awaitable[None]]


def _refusal(request: Head) -> tuple[int, str] | None:
    """Why a well-formed request is still refused, before any handler sees it."""
    names = {name for name, _ in request.headers}
    if "transfer-encoding" in names and "content-length" in names:
        # RFC 9112 6.3: Transfer-Encoding wins, but the pair is how requests are smuggled past a proxy
        # that reads the other; Envoy refuses it (unless allow_chunked_length), and so do we (llhttp too).
        return 400, "both Content-Length and Transfer-Encoding"
    if request.version == "1.1" and "host" not in names:
        return 400, "an HTTP/1.1 request without Host (RFC 9112 3.2)"
    if request.method == "CONNECT":
        return 405, "CONNECT is not proxied inside the mesh's HTTP/1.1"
    return None


async def serve_h1(stream: trio.abc.HalfCloseableStream, handler: Handler, initial: bytes = b"") -> None:
    """Serve requests on ``stream`` until the client is done (or misbehaves), then return."""
    reader = Reader(responses=False, max_head_bytes=MAX_REQUEST_HEAD_BYTES, max_headers=MAX_REQUEST_HEADERS)
    if initial:
        reader.feed(initial)
    first = True
    while True:
        try:
            request = await _read_head(reader, stream, first)
        except ProtocolError as exc:
            await _refuse(stream, exc.status, f"malformed request: {exc}")
            return
        if request is None:
            return
        first = False
        refusal = _refusal(request)
        if refusal is not None:
            await _refuse(stream, *refusal)
            return
        exchange = H1Downstream(stream, reader, request)
        try:
            await handler(exchange)
            if exchange.aborted or exchange.switched_protocols:
                return
            if not exchange.sent_done:
                return  # the response did not complete: the connection cannot carry another
            if not exchange.end_read and not await _drain_body(exchange):
                return
        except PeerGone:
            return
        if not exchange.keep_alive:
            return
        if reader.stopped:
            reader.resume()  # it asked for an upgrade and did not get one: what follows is HTTP again


async def _read_head(reader: Reader, stream: trio.abc.Stream, first: bool) -> Head | None:
    """The next request head, or None when the client is done (or too slow). A keep-alive connection
    may stay quiet for IDLE_TIMEOUT; once a head starts, it must be whole within HEADER_READ_TIMEOUT."""
    deadline = trio.current_time() + (HEADER_READ_TIMEOUT if first else IDLE_TIMEOUT)
    started = first
    while True:
        event = reader.next_event()  # raises ProtocolError
        if event is not None:
            return event if type(event) is Head else None
        with trio.move_on_at(deadline):
            try:
                data = await stream.receive_some(READ_CHUNK)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None
            if not started:
                started = True
                deadline = trio.current_time() + HEADER_READ_TIMEOUT
            _feed(reader, data)
            continue
        return None


async def _drain_body(exchange: H1Downstream) -> bool:
    """Read and drop the rest of a request body the handler did not need; False if it is too long."""
    if exchange.waiting_for_100:
        return False  # the client has not sent it and will not until told: nothing to drain, just close
    left = RETRY_BUFFER_BYTES
    with trio.move_on_after(HEADER_READ_TIMEOUT):
        while left > 0:
            data = await exchange.receive_body()
            if not data:
                return True
            left -= len(data)
    return False


async def _refuse(stream: trio.abc.Stream, status: int, reason: str) -> None:
    log.debug("HTTP/1.1 client refused with %d: %s", status, reason)
    body = reason.encode("utf-8", "replace")[:MAX_LOCAL_REPLY_BYTES]
    data = h1codec.response_head(status, [("content-type", "text/plain"), ("content-length", str(len(body))),
                                          ("connection", "close")]) + body
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
        self.reader = Reader(responses=True, max_head_bytes=MAX_RESPONSE_HEAD_BYTES, max_headers=MAX_RESPONSE_HEADERS)
        self._held = b""  # a request head kept to go out with the body
        self._on_release = on_release
        self._trailers: Headers | None = None
        self._response_done = False
        self._keep_alive = False
        self._framing, self._left, self.sent_done = _NO_BODY, 0, False
        self.status = 0

    async def start(self, head: RequestHead, headers: Headers, *, body_length: int | None,
                    hold: bool = False) -> None:
        """Send the request head; ``body_length`` None means chunked, 0 no body. ``hold``: keep the head
        to go out with the body (or its end), one write instead of two."""
        self._trailers = None
        self._response_done = False
        self.status = 0
        self.reader.next_cycle()
        if head.method == "HEAD":
            self.reader.expect_no_body()
        out = [("host", head.authority), *headers]
        if body_length:  # a request without a length or chunking has no body (RFC 9112 6.3)
            out.append(("content-length", str(body_length)))
            framing = _LENGTH
        elif body_length is None:
            out.append(("transfer-encoding", "chunked"))
            framing = _CHUNKED
        else:
            framing = _LENGTH
        try:
            data = h1codec.request_head(head.method, head.target, out)
        except LocalProtocolError as exc:
            raise PeerGone(f"cannot send the request head: {exc}") from exc
        await self._send_head(data, framing, body_length or 0, hold)

    async def send_body(self, data: bytes) -> None:
        if data:
            await self._send_data(data)

    async def end_body(self) -> None:
        await self._send_end()

    async def response(self) -> tuple[int, Headers]:
        if self._held:  # a held head goes out before we wait for its answer
            await self._write(b"", hold=False)
        while True:
            event = await _next_event(self.reader, self.stream)
            if type(event) is Head:
                if event.status == 101:
                    self.status = 101
                    return 101, event.headers
                if event.status >= 200:
                    self.status = event.status
                    self._keep_alive = event.keep_alive
                    return event.status, event.headers
                continue  # an interim response (100, 103): its End follows, then the final one
            if type(event) is End:
                continue
            raise PeerGone(f"the upstream closed before its response ({event!r})")

    async def receive_body(self) -> bytes:
        if self._response_done:
            return b""
        return self._body_event(await _next_event(self.reader, self.stream))

    def _body_event(self, event: object) -> bytes:
        if type(event) is bytes:
            return event
        if type(event) is End:
            self._response_done = True
            self._trailers = event.trailers or None
            return b""
        raise PeerGone(f"the upstream's response ended early ({event!r})")

    @property
    def trailers(self) -> Headers | None:
        return self._trailers

    async def release(self, reusable: bool) -> None:
        # Never waits (no await here, nor in the pool's callback): the pipeline calls it without a shield.
        # A response read to the end of the stream (no length), an origin that closed right behind its
        # response or sent bytes past it, or one that said Connection: close, leave the connection unfit.
        reader = self.reader
        clean = (reusable and self.sent_done and self._response_done and self._keep_alive
                 and not reader.eof and not reader.extra and not reader.stopped and not reader.broken)
        self._on_release(self, clean)

    def body_at_hand(self) -> bytes | None:
        """The next chunk of the response body if it has already arrived (b"" for its end), else None:
        lets the caller send the response head with it in one write."""
        if self._response_done:
            return b""
        try:
            event = self.reader.next_event()
        except ProtocolError:
            return None  # receive_body raises it
        if event is None:
            return None
        return self._body_event(event)
