"""HTTP/1.1 on the wire, sans-IO: llhttp parses (Node.js's parser, through ``httptools``), this module
frames and writes. ``waypoint.h1`` drives it over trio streams.

Why not h11 on this path: h11 is correct and readable, and it is what the admin endpoints and the
lab's probes use; but one request and its response cost about 34 µs of pure-Python parsing, state
machine and validation on each side of the waypoint, against about 2 µs with llhttp (measured on
this machine), and the waypoint handles two such exchanges per request. llhttp is strict by
default: no obs-fold, no bare LF, no Content-Length together with Transfer-Encoding, no duplicate
Content-Length, only registered methods; none of its "dangerous leniencies" is turned on.

``Reader`` turns one direction's bytes into events, pulled one at a time with ``next_event``:

    Head            a request or response head (names lowercase, values latin-1 ``str``)
    bytes           body data, the chunked framing removed
    End             the end of a message, with its trailers
    CLOSED          the peer ended the stream between messages
    None            nothing more until more bytes are fed (``feed``, or ``feed_eof``)

A protocol error is queued after the events before it (a valid request is still served, then the
error) and raised as ``ProtocolError`` with the status to answer (400, 431, 505) when reached.
The driver feeds bytes only when the queue is empty, so what is queued is at most one read's worth.

The head bound: llhttp keeps no head in memory, but httptools joins a header's pieces until the
header is complete, so the bytes fed while a head is incomplete are counted and the head is refused
(431) past ``max_head_bytes``. A head that starts a read is counted exactly; one that begins inside
the read that ended the message before it (pipelining) is counted from the next read on, so at most
one read more is held. A complete head is measured exactly, and its headers are counted.

Writing (``response_head``, ``request_head``, ``chunk``, ``last_chunk``) checks every name is a token
and no value carries CR, LF or NUL: a header from configuration can never split a message.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from http import HTTPStatus

import httptools

Headers = list[tuple[str, str]]


class ProtocolError(Exception):
    """The peer broke HTTP/1.1; ``status`` is what to answer a client with (400, 431 or 505)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class LocalProtocolError(Exception):
    """What we were asked to send is not valid HTTP/1.1 (a bad header, more body than its length)."""


@dataclass(slots=True)
class Head:
    method: str  # requests; "" for a response
    target: str  # requests
    status: int  # responses; 0 for a request
    headers: Headers
    version: str  # "1.1" or "1.0"
    keep_alive: bool  # the message lets the connection carry another one
    upgrade: bool  # Connection: upgrade with Upgrade (or CONNECT): the parser stopped after this head


@dataclass(slots=True)
class End:
    trailers: Headers


class _Closed:
    def __repr__(self) -> str:
        return "CLOSED"


CLOSED = _Closed()
Event = Head | bytes | End | _Closed

_VERSIONS = frozenset({"1.1", "1.0"})


def _decoded(raw: list[tuple[bytes, bytes]]) -> Headers:
    # llhttp drops the whitespace before a value, not after it (RFC 9112 5: both are optional whitespace).
    return [(n.decode("latin-1").lower(), v.decode("latin-1").rstrip(" \t")) for n, v in raw]


class Reader:
    """One direction of an HTTP/1.1 connection: requests (a server's reader) or responses (a client's)."""

    def __init__(self, *, responses: bool, max_head_bytes: int, max_headers: int) -> None:
        self._responses = responses
        self._max_head = max_head_bytes
        self._max_headers = max_headers
        self._events: deque[Event | ProtocolError] = deque()
        self._parser = self._new_parser()
        self._failed = False
        self._error: ProtocolError | None = None  # raised inside a callback, to be queued
        # The head in progress.
        self._in_head = False
        self._head_fed = 0
        self._count_this_read = True
        self._ended_this_read = False
        self._target = b""
        self._raw: list[tuple[bytes, bytes]] = []
        self._trailers: list[tuple[bytes, bytes]] | None = None  # after the head: trailers go here
        self._until_eof = False  # a response body that ends with the stream
        self._status = 200  # the response in progress (a request counts as final)
        self._in_message = False
        # After an upgrade head the parser stops; the bytes after it wait here for ``upgraded``/``resume``.
        self._stopped: bytearray | None = None
        # A response to HEAD has the headers of a GET's and no body: its head is cut out of the bytes
        # and parsed alone (``expect_no_body``), since llhttp cannot be told to skip a body.
        self._no_body = False
        self._pending = bytearray()
        self._discarded = False
        self._final_done = False  # a final message ended; another beginning before next_cycle() is extra
        self.extra = False  # bytes came after the final response, before the next request (not reusable)
        self.eof = False

    def _new_parser(self) -> httptools.HttpRequestParser | httptools.HttpResponseParser:
        return httptools.HttpResponseParser(self) if self._responses else httptools.HttpRequestParser(self)

    # ------------------------------------------------------------ the driver's side

    def next_event(self) -> Event | None:
        if not self._events:
            return None
        event = self._events.popleft()
        if isinstance(event, ProtocolError):
            self._events.appendleft(event)  # stays: the connection cannot go on
            raise event
        return event

    def feed(self, data: bytes | bytearray) -> None:
        if self._failed:
            return
        if self._stopped is not None:
            self._stopped += data
            return
        if self._no_body:
            self._feed_no_body(data)
            return
        self._feed(data)

    def feed_eof(self) -> None:
        self.eof = True
        if self._failed:
            return
        if self._until_eof:
            self._until_eof = self._in_message = False
            self._final_done = True
            self._events.append(End([]))
        elif self._in_message or self._pending:
            self._fail(ProtocolError("the peer closed the connection in the middle of a message"))
        else:
            self._events.append(CLOSED)

    def expect_no_body(self) -> None:
        """The next final response answers HEAD: its head alone is the whole message."""
        self._no_body = True

    def next_cycle(self) -> None:
        """A new request goes out on this connection (a client's reader)."""
        self._final_done = False

    def upgraded(self) -> bytes:
        """The bytes after an upgrade's head (101, or a request that asked for one), now raw."""
        data = bytes(self._stopped or b"")
        self._stopped = bytearray()
        return data

    @property
    def broken(self) -> bool:
        """The peer broke the protocol: nothing more will be read."""
        return self._failed

    @property
    def stopped(self) -> bool:
        return self._stopped is not None

    def resume(self) -> None:
        """The upgrade a request asked for did not happen: parse what followed it as HTTP again."""
        data, self._stopped = bytes(self._stopped or b""), None
        self._parser = self._new_parser()
        if data:
            self.feed(data)

    # ------------------------------------------------------------ feeding

    def _feed(self, data: bytes | bytearray) -> None:
        began_before = self._in_head
        self._count_this_read = True
        self._ended_this_read = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._stopped = bytearray(data[int(exc.args[0]):])
            return
        except httptools.HttpParserError as exc:
            error = self._error or ProtocolError(f"malformed HTTP/1.1: {exc}")
            self._fail(error)
            return
        if self._in_head:
            if began_before or self._count_this_read:
                self._head_fed += len(data)
            if self._head_fed > self._max_head:
                self._fail(ProtocolError(f"a head over {self._max_head} bytes", 431))

    def _feed_no_body(self, data: bytes | bytearray) -> None:
        self._pending += data
        while self._no_body:
            end = self._pending.find(b"\r\n\r\n")
            if end < 0:
                if len(self._pending) > self._max_head:
                    self._fail(ProtocolError(f"a head over {self._max_head} bytes", 431))
                return
            head, self._pending = bytes(self._pending[:end + 4]), self._pending[end + 4:]
            self._feed(head)
            self._discarded = False  # the parser the head went through is done with (``_end_now``)
            if self._failed:
                return
        if self._pending:  # bytes after the head of a response to HEAD: nothing may follow it
            rest, self._pending = bytes(self._pending), bytearray()
            self._feed(rest)

    def _fail(self, error: ProtocolError) -> None:
        self._failed = True
        self._in_message = False
        self._events.append(error)

    # ------------------------------------------------------------ httptools' callbacks

    def on_message_begin(self) -> None:
        if self._final_done:
            self.extra = True
        self._in_head = self._in_message = True
        self._count_this_read = not self._ended_this_read
        self._head_fed = 0
        self._target = b""
        self._raw = []
        self._trailers = None

    def on_url(self, piece: bytes) -> None:
        self._target += piece

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._trailers is not None:
            self._trailers.append((name, value))
            if len(self._trailers) > self._max_headers:
                self._raise(ProtocolError(f"more than {self._max_headers} trailers", 431))
            return
        self._raw.append((name, value))
        if len(self._raw) > self._max_headers:
            self._raise(ProtocolError(f"more than {self._max_headers} headers", 431))

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        raw = self._raw
        size = len(self._target) + 16 + sum(len(n) + len(v) + 4 for n, v in raw)
        if size > self._max_head:
            self._raise(ProtocolError(f"a head over {self._max_head} bytes", 431))
        version = parser.get_http_version()
        if version not in _VERSIONS:
            self._raise(ProtocolError(f"HTTP/{version} is not HTTP/1.x", 505))
        headers = _decoded(raw)
        keep_alive = version == "1.1" and parser.should_keep_alive()
        if self._responses:
            assert isinstance(parser, httptools.HttpResponseParser)
            status = self._status = parser.get_status_code()
            head = Head("", "", status, headers, version, keep_alive, parser.should_upgrade())
            if status >= 200:
                if self._no_body:
                    self._no_body = False
                    self._end_now(head)
                    return
                self._until_eof = _until_eof(status, headers)
        else:
            assert isinstance(parser, httptools.HttpRequestParser)
            head = Head(parser.get_method().decode("ascii"), self._target.decode("latin-1"), 0, headers, version,
                        keep_alive, parser.should_upgrade())
        self._trailers = []
        self._events.append(head)

    def on_body(self, data: bytes) -> None:
        self._events.append(data)

    def on_message_complete(self) -> None:
        if self._discarded:  # the end of a response to HEAD, already given (a length of 0, a 204)
            return
        trailers = _decoded(self._trailers) if self._trailers else []
        self._trailers = None
        self._in_message = self._until_eof = False
        self._ended_this_read = True
        if self._status >= 200:  # a 1xx response is followed by the final one
            self._final_done = True
        self._events.append(End(trailers))

    # ------------------------------------------------------------ helpers

    def _raise(self, error: ProtocolError) -> None:
        """Stop llhttp from inside a callback; ``_feed`` queues ``error`` instead of llhttp's."""
        self._error = error
        raise error

    def _end_now(self, head: Head) -> None:
        """A response to HEAD: the head and its end, then a new parser for what follows."""
        self._events.append(head)
        self._events.append(End([]))
        self._in_message = False
        self._final_done = True
        self._parser = self._new_parser()
        self._discarded = True


def _until_eof(status: int, headers: Headers) -> bool:
    """Whether a response's body runs to the end of the stream (no length, not chunked: RFC 9112 6.3)."""
    if status in (204, 304):
        return False
    return not any(n == "content-length" or n == "transfer-encoding" for n, _ in headers)


# ---------------------------------------------------------------- writing

_TOKENS = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+(?:\n[!#$%&'*+\-.^_`|~0-9A-Za-z]+)*")
_FIELD_VALUES = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f]*")
_TARGET = re.compile(r"[\x21-\x7e\x80-\xff]+")
_REASONS = {status.value: status.phrase for status in HTTPStatus}


def reason(status: int) -> str:
    """The standard reason phrase (an HTTP/2 upstream sends none; clients and logs expect one)."""
    return _REASONS.get(status, "")


def _header_lines(headers: Headers) -> str:
    if headers:
        names = "\n".join([n for n, _ in headers])
        if _TOKENS.fullmatch(names) is None or names.count("\n") != len(headers) - 1:
            raise LocalProtocolError(f"a header name is not a token: {[n for n, _ in headers]!r}")
        if _FIELD_VALUES.fullmatch("".join([v for _, v in headers])) is None:
            raise LocalProtocolError("a header value carries a control character (CR, LF, NUL...)")
    return "".join([f"{n}: {v}\r\n" for n, v in headers])


def _latin1(text: str) -> bytes:
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(f"not encodable in HTTP/1.1: {exc}") from None


def response_head(status: int, headers: Headers) -> bytes:
    if not 100 <= status <= 999:
        raise LocalProtocolError(f"status {status}")
    return _latin1(f"HTTP/1.1 {status} {reason(status)}\r\n{_header_lines(headers)}\r\n")


def request_head(method: str, target: str, headers: Headers) -> bytes:
    if _TOKENS.fullmatch(method) is None or "\n" in method:
        raise LocalProtocolError(f"method {method!r}")
    if _TARGET.fullmatch(target) is None:
        raise LocalProtocolError(f"request target {target!r}")
    return _latin1(f"{method} {target} HTTP/1.1\r\n{_header_lines(headers)}\r\n")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def last_chunk(trailers: Headers | None) -> bytes:
    return b"0\r\n" + _latin1(_header_lines(trailers)) + b"\r\n" if trailers else b"0\r\n\r\n"


def content_length(headers: Headers) -> int | None:
    """The one Content-Length among ``headers`` (None if there is none); LocalProtocolError if unusable."""
    found = None
    for name, value in headers:
        if name == "content-length":
            if found is not None or not value.isdigit() or not value.isascii():
                raise LocalProtocolError(f"content-length {value!r}")
            found = int(value)
    return found
