"""HBONE's HTTP/2 CONNECT layer, sans-IO (DESIGN.md section 6).

Bytes in, typed events out; method calls queue bytes that ``data_to_send()`` hands back. No sockets,
no clock: a driver passes ``now`` to ``on_timer`` and sleeps until ``next_deadline()``. TLS is a
separate layer; this one sees the plaintext HTTP/2 stream. The framing, HPACK and flow-control
arithmetic are ``hbone.http2``'s (which also defines the stream events and ``LocalProtocolError``);
this module adds what HBONE means on top of it:

- ``parse_connect`` is a pure function that turns a request's headers into a ``ConnectTarget`` or a
  ``ConnectRejection`` (400). A malformed request is answered on its stream alone with a 400, not by
  ending the whole connection, so ``parse_connect`` checks the pseudo-headers itself: present once,
  before regular headers, ``:method CONNECT``, no ``:scheme``, ``:path`` or ``:protocol`` (extended
  CONNECT is not HBONE), ``:authority`` an IP literal and port of a pod that this connection serves.
  A malformed ``forwarded`` header is ignored (``forwarded_for=None``), as Istio's ztunnel does:
  DESIGN.md lists it among no 400 causes, it only carries the original source address, and the
  driver falls back to the peer's own address.
- Each stream's CONNECT state (AWAITING its answer, OPEN) is this layer's own, in its own table, moved
  only through ``hbone.connect_state``'s transition table; HTTP/2 tells it of each header block and
  of each stream it lets go. A method called in a state the table has no move for raises
  ``LocalProtocolError`` and closes the stream (reset with INTERNAL_ERROR): CLOSED is terminal.
- ``HboneServerConnection`` answers a malformed CONNECT with 400 by itself (and still reports it, for
  the access log); a well-formed one waits in ``AWAITING`` until the driver calls ``accept`` (200,
  once the upstream is up) or ``reject`` (401/503). A refusal is a complete response with END_STREAM
  followed by RST_STREAM(NO_ERROR), which tells the client to stop sending (RFC 9113 section 8.1).
- ``HboneClientConnection`` opens one CONNECT stream per proxied TCP connection; a 200 makes it
  ``OPEN``, any other final status is ``ConnectRefused`` and the stream is cancelled (1xx are skipped;
  a response without a valid ``:status`` resets the stream with PROTOCOL_ERROR).
- Half-close: END_STREAM received is ``StreamHalfClosed`` (the far TCP side shut its write half);
  ``half_close`` sends END_STREAM. ``reset`` sends RST_STREAM(CONNECT_ERROR), the code RFC 9113
  section 8.5 gives to a TCP-level failure behind a CONNECT stream.
- Flow control: windows of 4 MiB per stream (SETTINGS) and 16 MiB for the connection (WINDOW_UPDATE
  on stream 0 right after the preface). Received bytes are credited back only when the app side calls
  ``acknowledge``, so a slow consumer stops the sender, and are returned once half a window has been
  consumed (one WINDOW_UPDATE per 2 MiB, not one per read); padding is credited at once. Bytes still
  unacknowledged when a stream is reset or refused are credited then, since nobody will read them.
  ``send_data`` takes what the windows allow and returns that count; ``SendWindowOpened`` says when to
  try again (stream 0: any stream may).
- Limits (all in ``hbone.limits``): at most 100 concurrent streams. A client asks
  ``streams_available()`` before ``open_stream``. A stream over what we advertised is refused
  (RST_STREAM REFUSED_STREAM) and spends a premature reset; one that floods us (CONTINUATION,
  PING, SETTINGS, resets, rapid reset) with GOAWAY(ENHANCE_YOUR_CALM), as ``hbone.http2`` describes.
- Keepalive: a PING every 10 s; a PING unanswered for 20 s ends the connection. ``PingAnswered``
  tells the driver that ``next_deadline`` moved from the PING timeout back to the next PING.

Any GOAWAY, sent or received, ends the connection at once (no frame is read or sent after it): every live
stream is reported as ``StreamAborted``, then ``ConnectionClosed``. Errors: ``LocalProtocolError``
is the caller's bug (a method called in the wrong state); a peer's fault never raises, it becomes
events.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from hbone.connect_state import ConnectInput, ConnectState, ConnectStateError, advance
from hbone.http2 import (
    ErrorCode,
    Event as Http2Event,
    Header,
    Http2Connection,
    LocalProtocolError,
    Setting,
    StreamAborted,
)
from hbone.limits import (  # the limits, importable from here as before
    CONNECTION_WINDOW as CONNECTION_WINDOW,
    MAX_CONCURRENT_STREAMS as MAX_CONCURRENT_STREAMS,
    MAX_FRAME_SIZE as MAX_FRAME_SIZE,
    MAX_HEADER_LIST_SIZE as MAX_HEADER_LIST_SIZE,
    PING_INTERVAL as PING_INTERVAL,
    PING_TIMEOUT as PING_TIMEOUT,
    STREAM_WINDOW as STREAM_WINDOW,
)
from mesh.addresses import format_address

REJECT_STATUSES = frozenset({400, 401, 503})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
HeaderField = tuple[bytes | str, bytes | str]


# ---------------------------------------------------------------- validation


@dataclass(frozen=True, slots=True)
class ConnectTarget:
    """A well-formed HBONE CONNECT: where to go, and what the client said about itself."""

    ip: str
    port: int
    forwarded_for: tuple[str, int] | None = None
    baggage: str | None = None
    traceparent: str | None = None


@dataclass(frozen=True, slots=True)
class ConnectRejection:
    """A CONNECT that gets a 400, and why."""

    reason: str
    status: int = 400


_HOST_PORT = re.compile(r"(?:\[([0-9A-Fa-f:.]+)\]|([0-9.]+)):([0-9]{1,5})")
_REQUEST_PSEUDO = frozenset({b":method", b":authority", b":scheme", b":path", b":protocol"})


def split_host_port(text: str) -> tuple[IPAddress, int]:
    """``"10.0.0.1:80"`` or ``"[fd00::1]:80"`` → (address, port); ``ValueError`` naming the fault."""
    match = _HOST_PORT.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not <ip>:<port> (IPv6 in brackets)")
    v6, v4, port_text = match.groups()
    try:
        ip: IPAddress = ipaddress.IPv6Address(v6) if v6 else ipaddress.IPv4Address(v4)
    except ValueError:
        raise ValueError(f"{text!r} does not hold an IP address") from None
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} of {text!r} is out of range")
    return ip, port


def _as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


def _parse_forwarded(values: list[bytes]) -> tuple[str, int] | None:
    """The ``for=`` of the first element of ``forwarded`` (RFC 7239) if it is ip:port, else None."""
    if not values:
        return None
    element = values[0].decode("latin-1").split(",", 1)[0]
    for pair in element.split(";"):
        key, sep, value = pair.strip().partition("=")
        if sep and key.strip().lower() == "for":
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            try:
                ip, port = split_host_port(value)
            except ValueError:
                return None
            return ip.compressed, port
    return None


def parse_connect(
    headers: Iterable[HeaderField], local_addresses: Collection[IPAddress | str] | None,
) -> ConnectTarget | ConnectRejection:
    """Validate an HBONE CONNECT request against the pods served on this connection; ``None``: any
    address (a waypoint, whose ``:authority`` is the original destination it routes)."""
    pseudo: dict[bytes, bytes] = {}
    regular_seen = False
    forwarded: list[bytes] = []
    baggage: list[bytes] = []
    traceparent: list[bytes] = []
    for raw_name, raw_value in headers:
        name, value = _as_bytes(raw_name), _as_bytes(raw_value)
        if name.startswith(b":"):
            if regular_seen:
                return ConnectRejection(f"pseudo-header {name.decode('latin-1')} after a regular header")
            if name not in _REQUEST_PSEUDO:
                return ConnectRejection(f"pseudo-header {name.decode('latin-1')} is not allowed in a request")
            if name in pseudo:
                return ConnectRejection(f"duplicate {name.decode('latin-1')}")
            pseudo[name] = value
            continue
        regular_seen = True
        if name == b"forwarded":
            forwarded.append(value)
        elif name == b"baggage":
            baggage.append(value)
        elif name == b"traceparent":
            traceparent.append(value)

    method = pseudo.get(b":method")
    if method is None:
        return ConnectRejection("missing :method")
    if method != b"CONNECT":
        return ConnectRejection(f":method {method.decode('latin-1')!r} is not CONNECT")
    if b":protocol" in pseudo:
        return ConnectRejection(":protocol present: extended CONNECT is not HBONE")
    extra = [n.decode() for n in (b":scheme", b":path") if n in pseudo]
    if extra:
        return ConnectRejection(f"{' and '.join(extra)} not allowed in a classic CONNECT")
    authority = pseudo.get(b":authority")
    if authority is None:
        return ConnectRejection("missing :authority")
    try:
        ip, port = split_host_port(authority.decode("latin-1"))
    except ValueError as exc:
        return ConnectRejection(f"bad :authority: {exc}")
    if local_addresses is not None and ip not in {ipaddress.ip_address(a) for a in local_addresses}:
        return ConnectRejection(f":authority IP {ip.compressed} is not a pod served here")
    return ConnectTarget(
        ip=ip.compressed,
        port=port,
        forwarded_for=_parse_forwarded(forwarded),
        baggage=",".join(v.decode("latin-1") for v in baggage) if baggage else None,
        traceparent=traceparent[0].decode("latin-1") if len(traceparent) == 1 else None,
    )


# ---------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class ConnectRequested:
    """Server: a CONNECT arrived. A ``ConnectRejection`` has already been answered with 400.

    The client may have reset the stream later in the same ``receive_bytes``: a stream whose ``state``
    is no longer AWAITING is gone, and is not to be handed to an application (rapid reset)."""

    stream_id: int
    request: ConnectTarget | ConnectRejection


@dataclass(frozen=True, slots=True)
class ConnectAccepted:
    """Client: the server answered 200; data may flow both ways."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class ConnectRefused:
    """Client: the server answered ``status`` (not 200); the stream is gone."""

    stream_id: int
    status: int


@dataclass(frozen=True, slots=True)
class PingAnswered:
    """Our PING was answered: the next one is due sooner than the PING timeout ``next_deadline``
    gave before, so a driver asks again."""


ConnectEvent = ConnectRequested | ConnectAccepted | ConnectRefused | PingAnswered
# What ``receive_bytes`` and ``on_timer`` return: these, and ``hbone.http2``'s stream events
# (StreamData, StreamHalfClosed, StreamAborted, SendWindowOpened, ConnectionClosed).
Event = ConnectEvent | Http2Event

_IDLE, _AWAITING, _OPEN, _CLOSED = ConnectState.IDLE, ConnectState.AWAITING, ConnectState.OPEN, ConnectState.CLOSED


# ---------------------------------------------------------------- connections


class HboneConnection:
    """What both sides share: bytes in and out, the streams' data, half-close and reset, PINGs."""

    _client_side: bool

    def __init__(self, *, now: float, ping_interval: float, ping_timeout: float) -> None:
        settings = {
            Setting.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
            Setting.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            Setting.MAX_FRAME_SIZE: MAX_FRAME_SIZE,
            Setting.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE,
        }
        if self._client_side:
            settings[Setting.ENABLE_PUSH] = 0
        # Live CONNECT streams (AWAITING or OPEN), moved only by ``_step``; see hbone.connect_state.
        self._streams: dict[int, ConnectState] = {}
        self._http2: Http2Connection[ConnectEvent] = Http2Connection(
            client_side=self._client_side, settings=settings, connection_window=CONNECTION_WINDOW,
            on_headers=self._on_headers, on_ping_ack=self._on_ping_ack, on_stream_closed=self._on_stream_closed,
        )
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._next_ping_at = now + ping_interval
        self._ping_sent_at: float | None = None
        self._ping_payload = b""
        self._pings_sent = 0

    # -- bytes in and out

    def data_to_send(self) -> bytes:
        return self._http2.data_to_send()

    def receive_bytes(self, data: bytes) -> list[Event]:
        return self._http2.receive_bytes(data)

    @property
    def closed(self) -> bool:
        return self._http2.closed

    # -- stream methods shared by both sides

    def send_data(self, stream_id: int, data: bytes | memoryview) -> int:
        """Queue as much of ``data`` as the windows allow; return how many bytes were taken.
        ``data`` is held until ``data_to_send``: pass bytes, or a view of bytes."""
        if self._streams.get(stream_id) is not _OPEN:  # the hot path's check; the table has the rest
            self._step(stream_id, ConnectInput.SEND_DATA)
        return self._http2.send_data(stream_id, data)

    def half_close(self, stream_id: int) -> None:
        """END_STREAM: the TCP side has shut its write half."""
        if self._streams.get(stream_id) is not _OPEN:
            self._step(stream_id, ConnectInput.SEND_END_STREAM)
        self._http2.end_stream(stream_id)

    def reset(self, stream_id: int, error_code: int = ErrorCode.CONNECT_ERROR) -> None:
        """RST_STREAM. Idempotent: a stream already gone is left alone."""
        self._http2.reset_stream(stream_id, error_code)

    def acknowledge(self, stream_id: int, n: int) -> None:
        """The app side consumed ``n`` bytes of ``StreamData``: give the peer that much window back."""
        self._http2.acknowledge(stream_id, n)

    def state(self, stream_id: int) -> ConnectState:
        """The stream's CONNECT state: AWAITING or OPEN while it lives, CLOSED once it is gone (and
        for an id that never carried a CONNECT)."""
        return self._streams.get(stream_id, _CLOSED)

    def send_window(self, stream_id: int = 0) -> int:
        """How many bytes ``send_data`` would take now (stream 0: the connection's window)."""
        return self._http2.send_window(stream_id)

    def close(self, error_code: int = ErrorCode.NO_ERROR) -> None:
        """GOAWAY: the connection ends; every stream with it."""
        self._http2.close(error_code)

    # -- keepalive

    @property
    def ping_outstanding(self) -> bool:
        return self._ping_sent_at is not None

    def next_deadline(self) -> float | None:
        """When the driver should call ``on_timer`` next (None once closed)."""
        if self._http2.closed:
            return None
        if self._ping_sent_at is not None:
            return self._ping_sent_at + self._ping_timeout
        return self._next_ping_at

    def on_timer(self, now: float) -> list[Event]:
        """Send a PING when one is due; end the connection when one went unanswered too long."""
        if self._http2.closed:
            return []
        if self._ping_sent_at is not None:
            if now >= self._ping_sent_at + self._ping_timeout:
                return self._http2.close(ErrorCode.NO_ERROR, "PING timeout")
            return []
        if now >= self._next_ping_at:
            self._pings_sent += 1
            self._ping_payload = self._pings_sent.to_bytes(8, "big")
            self._http2.ping(self._ping_payload)
            self._ping_sent_at = now
            self._next_ping_at = now + self._ping_interval
        return []

    def _on_ping_ack(self, payload: bytes, out: list[Event]) -> None:
        if self._ping_sent_at is not None and payload == self._ping_payload:
            self._ping_sent_at = None
            out.append(PingAnswered())

    # -- the state machine

    def _step(self, stream_id: int, input_: ConnectInput, unknown: ConnectState = _CLOSED) -> ConnectState:
        """Move the stream by ``input_`` (``unknown``: the state of an id not in the table). A move the
        table lacks closes the stream, resetting it, and raises ``LocalProtocolError``."""
        try:
            state = advance(self._streams.get(stream_id, unknown), input_)
        except ConnectStateError as exc:
            if self._streams.pop(stream_id, None) is not None:
                self._http2.reset_stream(stream_id, ErrorCode.INTERNAL_ERROR)
            raise LocalProtocolError(f"stream {stream_id}: {exc}") from None
        if state is _CLOSED:
            self._streams.pop(stream_id, None)
        else:
            self._streams[stream_id] = state
        return state

    def _on_stream_closed(self, stream_id: int) -> None:
        if stream_id in self._streams:
            self._step(stream_id, ConnectInput.STREAM_ENDED)

    def _on_headers(self, stream_id: int, headers: list[Header], out: list[Event]) -> None:
        raise NotImplementedError


class HboneServerConnection(HboneConnection):
    """The accepting side: one CONNECT stream per proxied TCP connection, for ``local_addresses``
    (``None``: for any address, as a waypoint accepts them)."""

    _client_side = False

    def __init__(
        self, local_addresses: Collection[IPAddress | str] | None, *, now: float = 0.0,
        ping_interval: float = PING_INTERVAL, ping_timeout: float = PING_TIMEOUT,
    ) -> None:
        self.local_addresses = (None if local_addresses is None
                                else frozenset(ipaddress.ip_address(a) for a in local_addresses))
        super().__init__(now=now, ping_interval=ping_interval, ping_timeout=ping_timeout)

    def accept(self, stream_id: int) -> None:
        """200: the upstream connection is up."""
        self._step(stream_id, ConnectInput.SEND_ACCEPT)
        self._http2.send_headers(stream_id, [(b":status", b"200")])

    def reject(self, stream_id: int, status: int) -> None:
        """400 malformed, 401 denied by policy, 503 no such workload or upstream refused."""
        if status not in REJECT_STATUSES:
            raise ValueError(f"status {status} is not one of {sorted(REJECT_STATUSES)}")
        self._step(stream_id, ConnectInput.SEND_REFUSAL)
        self._refuse(stream_id, status)

    def _refuse(self, stream_id: int, status: int) -> None:
        """A complete response, then RST_STREAM(NO_ERROR): "stop sending" (RFC 9113 section 8.1)."""
        self._http2.send_headers(stream_id, [(b":status", str(status).encode())], end_stream=True)
        self._http2.reset_stream(stream_id, ErrorCode.NO_ERROR)

    def _on_headers(self, stream_id: int, headers: list[Header], out: list[Event]) -> None:
        if stream_id in self._streams:
            self._step(stream_id, ConnectInput.RECV_TRAILERS)  # HBONE has no use for them
            return
        request = parse_connect(headers, self.local_addresses)
        if isinstance(request, ConnectRejection):
            self._step(stream_id, ConnectInput.RECV_MALFORMED_CONNECT, _IDLE)
            self._refuse(stream_id, request.status)
        else:
            self._step(stream_id, ConnectInput.RECV_CONNECT, _IDLE)
        out.append(ConnectRequested(stream_id, request))


class HboneClientConnection(HboneConnection):
    """The connecting side: ``open_stream`` per proxied TCP connection, while ``streams_available()``."""

    _client_side = True

    def __init__(
        self, *, now: float = 0.0, ping_interval: float = PING_INTERVAL, ping_timeout: float = PING_TIMEOUT,
    ) -> None:
        super().__init__(now=now, ping_interval=ping_interval, ping_timeout=ping_timeout)

    def streams_available(self) -> int:
        """How many more streams may be opened now: the peer's limit and ours, less those open."""
        return self._http2.streams_available()

    def open_stream(
        self, authority: str, forwarded_for: tuple[str, int] | None,
        baggage: str | None = None, traceparent: str | None = None,
    ) -> int:
        """Send a CONNECT to ``authority`` (``ip:port``); the answer is ConnectAccepted or ConnectRefused."""
        split_host_port(authority)  # ValueError: a bad authority is the caller's bug
        headers = [(b":method", b"CONNECT"), (b":authority", authority.encode())]
        if forwarded_for is not None:
            headers.append((b"forwarded", f'for="{format_address(*forwarded_for)}"'.encode()))
        if baggage is not None:
            headers.append((b"baggage", baggage.encode()))
        if traceparent is not None:
            headers.append((b"traceparent", traceparent.encode()))
        stream_id = self._http2.open_stream(headers)
        self._step(stream_id, ConnectInput.SEND_CONNECT, _IDLE)
        return stream_id

    def _on_headers(self, stream_id: int, headers: list[Header], out: list[Event]) -> None:
        if self._streams.get(stream_id) is not _AWAITING:
            self._step(stream_id, ConnectInput.RECV_TRAILERS)
            return
        status = _response_status(headers)
        if status is None:
            self._step(stream_id, ConnectInput.RECV_BAD_RESPONSE)
            self._http2.reset_stream(stream_id, ErrorCode.PROTOCOL_ERROR)
            out.append(StreamAborted(stream_id, ErrorCode.PROTOCOL_ERROR, remote=False))
        elif status == 200:
            self._step(stream_id, ConnectInput.RECV_ACCEPT)
            out.append(ConnectAccepted(stream_id))
        elif status >= 200:  # any other final status fails the client's connection
            self._step(stream_id, ConnectInput.RECV_REFUSAL)
            self._http2.reset_stream(stream_id, ErrorCode.CANCEL)
            out.append(ConnectRefused(stream_id, status))
        else:
            self._step(stream_id, ConnectInput.RECV_INFORMATIONAL)  # 1xx: the answer is still to come


def _response_status(headers: list[Header]) -> int | None:
    """The ``:status`` of a response header block, if it has exactly one of three digits first."""
    statuses = [value for name, value in headers if name == b":status"]
    if len(statuses) != 1 or headers[0][0] != b":status" or len(statuses[0]) != 3 or not statuses[0].isdigit():
        return None
    return int(statuses[0])
