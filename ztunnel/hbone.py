"""HBONE's HTTP/2 CONNECT layer, sans-IO (DESIGN.md section 6).

Bytes in, typed events out; method calls queue bytes that ``data_to_send()`` hands back. No sockets,
no clock: a driver passes ``now`` to ``on_timer`` and sleeps until ``next_deadline()``. TLS is a
separate layer; this one sees the plaintext HTTP/2 stream. The framing, HPACK and flow-control
arithmetic are done by ``h2``; this module adds what HBONE means on top of it:

- ``parse_connect`` is a pure function that turns a request's headers into a ``ConnectTarget`` or a
  ``ConnectRejection`` (400). h2's own inbound header validation is switched off on the server,
  because h2 answers a malformed request by killing the whole connection (GOAWAY), while HBONE
  answers it on that stream alone with a 400. ``parse_connect`` therefore checks the pseudo-headers
  itself: present once, before regular headers, ``:method CONNECT``, no ``:scheme``, ``:path`` or
  ``:protocol`` (extended CONNECT is not HBONE), ``:authority`` an IP literal and port of a pod that
  this connection serves. A malformed ``forwarded`` header is ignored (``forwarded_for=None``), as
  Istio's ztunnel does: DESIGN.md lists it among no 400 causes, it only carries the original source
  address, and the driver falls back to the peer's own address.
- ``HboneServerConnection`` answers a malformed CONNECT with 400 by itself (and still reports it, for
  the access log); a well-formed one waits in ``AWAITING`` until the driver calls ``accept`` (200,
  once the upstream is up) or ``reject`` (401/503). A refusal is a complete response with END_STREAM
  followed by RST_STREAM(NO_ERROR), which tells the client to stop sending (RFC 9113 section 8.1).
- ``HboneClientConnection`` opens one CONNECT stream per proxied TCP connection; a 200 makes it
  ``OPEN``, anything else is ``ConnectRefused`` and the stream is cancelled.
- Half-close: END_STREAM received is ``StreamHalfClosed`` (the far TCP side shut its write half);
  ``half_close`` sends END_STREAM. ``reset`` sends RST_STREAM(CONNECT_ERROR), the code RFC 9113
  section 8.5 gives to a TCP-level failure behind a CONNECT stream.
- Flow control: windows of 4 MiB per stream (SETTINGS) and 16 MiB for the connection (WINDOW_UPDATE
  on stream 0 right after the preface). Received bytes are credited back only when the app side calls
  ``acknowledge``, so a slow consumer stops the sender; padding is credited at once. Bytes still
  unacknowledged when a stream is reset or refused are credited then, since nobody will read them.
  ``send_data`` takes what the windows allow and returns that count; ``SendWindowOpened`` says when to
  try again (stream 0: any stream may).
- Limits: at most 100 concurrent streams. A client asks ``streams_available()`` before
  ``open_stream``. A peer that opens more than we advertised is cut off by h2 with GOAWAY
  (PROTOCOL_ERROR), reported as ``ConnectionClosed``.
- Keepalive: a PING every 10 s; a PING unanswered for 20 s ends the connection.

Any GOAWAY, sent or received, ends the connection at once (h2 allows no frame after it): every live
stream is reported as ``StreamAborted``, then ``ConnectionClosed``. Errors: ``LocalProtocolError``
is the caller's bug (a method called in the wrong state); a peer's fault never raises, it becomes
events.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from h2.errors import ErrorCodes
from h2.settings import SettingCodes, Settings

MAX_CONCURRENT_STREAMS = 100
STREAM_WINDOW = 4 * 1024 * 1024
CONNECTION_WINDOW = 16 * 1024 * 1024
# Larger frames than the 16 KiB default: fewer frames, so fewer Python calls per byte.
MAX_FRAME_SIZE = 1024 * 1024
MAX_HEADER_LIST_SIZE = 64 * 1024
PING_INTERVAL = 10.0
PING_TIMEOUT = 20.0
REJECT_STATUSES = frozenset({400, 401, 503})
_DEFAULT_WINDOW = 65535

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
HeaderField = tuple[bytes | str, bytes | str]


class HboneError(Exception):
    """Base class of this module's errors."""


class LocalProtocolError(HboneError):
    """Our own bug: a method called on a stream or connection in a state that does not allow it."""


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


def _host_port_text(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


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
    headers: Iterable[HeaderField], local_addresses: Collection[IPAddress | str],
) -> ConnectTarget | ConnectRejection:
    """Validate an HBONE CONNECT request against the pods served on this connection."""
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
    if ip not in {ipaddress.ip_address(a) for a in local_addresses}:
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
    """Server: a CONNECT arrived. A ``ConnectRejection`` has already been answered with 400."""

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


Event = (ConnectRequested | ConnectAccepted | ConnectRefused | StreamData | StreamHalfClosed
         | StreamAborted | SendWindowOpened | ConnectionClosed)


# ---------------------------------------------------------------- stream states


class Phase(enum.Enum):
    AWAITING = "awaiting"  # CONNECT sent or received, no response yet
    OPEN = "open"  # 200 sent or received


# Which methods each phase allows (anything else is a LocalProtocolError). A stream leaves the
# table when it is refused or reset, or once both halves are closed and all its data acknowledged.
_ALLOWED: dict[str, frozenset[Phase]] = {
    "accept": frozenset({Phase.AWAITING}),
    "reject": frozenset({Phase.AWAITING}),
    "send_data": frozenset({Phase.OPEN}),
    "half_close": frozenset({Phase.OPEN}),
}


class _Stream:
    __slots__ = ("phase", "sent_end", "recv_end", "unacked")

    def __init__(self, phase: Phase) -> None:
        self.phase = phase
        self.sent_end = False
        self.recv_end = False
        self.unacked = 0


# ---------------------------------------------------------------- connections


class _HbonePeer:
    _client_side: bool

    def __init__(self, *, now: float, ping_interval: float, ping_timeout: float) -> None:
        config = h2.config.H2Configuration(
            client_side=self._client_side, header_encoding=None,
            validate_inbound_headers=self._client_side,  # the server validates in parse_connect
        )
        self._conn = h2.connection.H2Connection(config)
        settings = {
            SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
            SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            SettingCodes.MAX_FRAME_SIZE: MAX_FRAME_SIZE,
            SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE,
        }
        if self._client_side:
            settings[SettingCodes.ENABLE_PUSH] = 0
        # Set before the preface so that the first SETTINGS frame carries them.
        self._conn.local_settings = Settings(client=self._client_side, initial_values=settings)
        self._conn.max_inbound_frame_size = MAX_FRAME_SIZE
        self._conn.initiate_connection()
        self._conn.increment_flow_control_window(CONNECTION_WINDOW - _DEFAULT_WINDOW)
        self._streams: dict[int, _Stream] = {}
        self._closed = False
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._next_ping_at = now + ping_interval
        self._ping_sent_at: float | None = None
        self._ping_payload = b""
        self._pings_sent = 0

    # -- bytes in and out

    def data_to_send(self) -> bytes:
        return self._conn.data_to_send()

    def receive_bytes(self, data: bytes) -> list[Event]:
        if self._closed:
            return []
        try:
            h2_events = self._conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:  # the peer's fault; h2 has queued a GOAWAY
            return self._end(int(exc.error_code), f"protocol error: {exc}", remote=False)
        out: list[Event] = []
        for ev in h2_events:
            if self._closed:
                break
            self._translate(ev, out)
        return out

    @property
    def closed(self) -> bool:
        return self._closed

    # -- stream methods shared by both sides

    def send_data(self, stream_id: int, data: bytes) -> int:
        """Queue as much of ``data`` as the windows allow; return how many bytes were taken."""
        stream = self._stream(stream_id, "send_data")
        if stream.sent_end:
            raise LocalProtocolError(f"stream {stream_id}: send_data after half_close")
        n = min(len(data), self._conn.local_flow_control_window(stream_id))
        view = memoryview(data)
        step = self._conn.max_outbound_frame_size
        for start in range(0, n, step):
            self._conn.send_data(stream_id, view[start:min(start + step, n)])
        return n

    def half_close(self, stream_id: int) -> None:
        """END_STREAM: the TCP side has shut its write half."""
        stream = self._stream(stream_id, "half_close")
        if stream.sent_end:
            raise LocalProtocolError(f"stream {stream_id}: already half-closed")
        self._conn.end_stream(stream_id)
        stream.sent_end = True
        self._maybe_forget(stream_id, stream)

    def reset(self, stream_id: int, error_code: int = ErrorCodes.CONNECT_ERROR) -> None:
        """RST_STREAM. Idempotent: a stream already gone is left alone."""
        if stream_id in self._streams:
            self._forget(stream_id)
            self._send_reset(stream_id, error_code)

    def acknowledge(self, stream_id: int, n: int) -> None:
        """The app side consumed ``n`` bytes of ``StreamData``: give the peer that much window back."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return  # gone: its unacknowledged bytes were credited when it went
        if not 0 <= n <= stream.unacked:
            raise LocalProtocolError(f"stream {stream_id}: acknowledging {n} of {stream.unacked} bytes")
        if n:
            stream.unacked -= n
            self._conn.acknowledge_received_data(n, stream_id)
            self._maybe_forget(stream_id, stream)

    def phase(self, stream_id: int) -> Phase | None:
        """The stream's phase, or None once it is gone."""
        stream = self._streams.get(stream_id)
        return stream.phase if stream else None

    def close(self, error_code: int = ErrorCodes.NO_ERROR) -> None:
        """GOAWAY: the connection ends; every stream with it."""
        if not self._closed:
            self._end(int(error_code), "closed locally", remote=False)

    # -- keepalive

    @property
    def ping_outstanding(self) -> bool:
        return self._ping_sent_at is not None

    def next_deadline(self) -> float | None:
        """When the driver should call ``on_timer`` next (None once closed)."""
        if self._closed:
            return None
        if self._ping_sent_at is not None:
            return self._ping_sent_at + self._ping_timeout
        return self._next_ping_at

    def on_timer(self, now: float) -> list[Event]:
        """Send a PING when one is due; end the connection when one went unanswered too long."""
        if self._closed:
            return []
        if self._ping_sent_at is not None:
            if now >= self._ping_sent_at + self._ping_timeout:
                return self._end(int(ErrorCodes.NO_ERROR), "PING timeout", remote=False)
            return []
        if now >= self._next_ping_at:
            self._pings_sent += 1
            self._ping_payload = self._pings_sent.to_bytes(8, "big")
            self._conn.ping(self._ping_payload)
            self._ping_sent_at = now
            self._next_ping_at = now + self._ping_interval
        return []

    # -- internals

    def _stream(self, stream_id: int, action: str) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None:
            raise LocalProtocolError(f"{action}: stream {stream_id} is not live")
        if stream.phase not in _ALLOWED[action]:
            raise LocalProtocolError(f"{action}: stream {stream_id} is {stream.phase.value}")
        return stream

    def _forget(self, stream_id: int) -> None:
        stream = self._streams.pop(stream_id)
        if stream.unacked and not self._closed:
            self._conn.acknowledge_received_data(stream.unacked, stream_id)

    def _maybe_forget(self, stream_id: int, stream: _Stream) -> None:
        if stream.sent_end and stream.recv_end and not stream.unacked:
            del self._streams[stream_id]

    def _send_reset(self, stream_id: int, error_code: int) -> None:
        try:
            self._conn.reset_stream(stream_id, error_code)
        except h2.exceptions.StreamClosedError:
            pass  # the peer closed it in the same batch of frames

    def _end(self, error_code: int, reason: str, *, remote: bool) -> list[Event]:
        out: list[Event] = [StreamAborted(sid, error_code, remote) for sid in self._streams]
        self._streams.clear()
        self._closed = True
        if self._conn.state_machine.state != h2.connection.ConnectionState.CLOSED:
            self._conn.close_connection(error_code)
        out.append(ConnectionClosed(error_code, reason, remote))
        return out

    def _translate(self, ev: h2.events.Event, out: list[Event]) -> None:
        if isinstance(ev, h2.events.DataReceived):
            sid, n = ev.stream_id, len(ev.data)
            padding = ev.flow_controlled_length - n
            stream = self._streams.get(sid)
            if stream is None:  # refused or reset by us while the frame was in flight
                padding += n
            if padding:
                self._conn.acknowledge_received_data(padding, sid)
            if stream is not None and n:
                stream.unacked += n
                out.append(StreamData(sid, ev.data))
        elif isinstance(ev, h2.events.StreamEnded):
            stream = self._streams.get(ev.stream_id)
            if stream is not None:
                stream.recv_end = True
                out.append(StreamHalfClosed(ev.stream_id))
                self._maybe_forget(ev.stream_id, stream)
        elif isinstance(ev, h2.events.StreamReset):
            if ev.stream_id in self._streams:
                self._forget(ev.stream_id)
                out.append(StreamAborted(ev.stream_id, int(ev.error_code), ev.remote_reset))
        elif isinstance(ev, h2.events.WindowUpdated):
            out.append(SendWindowOpened(ev.stream_id))
        elif isinstance(ev, h2.events.RemoteSettingsChanged):
            change = ev.changed_settings.get(SettingCodes.INITIAL_WINDOW_SIZE)
            if change is not None and change.new_value > (change.original_value or _DEFAULT_WINDOW):
                out.append(SendWindowOpened(0))
        elif isinstance(ev, h2.events.PingAckReceived):
            if self._ping_sent_at is not None and ev.ping_data == self._ping_payload:
                self._ping_sent_at = None
        elif isinstance(ev, h2.events.ConnectionTerminated):
            out.extend(self._end(int(ev.error_code), "GOAWAY received", remote=True))
        else:
            self._translate_side(ev, out)

    def _translate_side(self, ev: h2.events.Event, out: list[Event]) -> None:
        """Events only one side handles; anything else (SETTINGS ack, PING, priority...) is h2's."""


class HboneServerConnection(_HbonePeer):
    """The accepting side: one CONNECT stream per proxied TCP connection, for ``local_addresses``."""

    _client_side = False

    def __init__(
        self, local_addresses: Collection[IPAddress | str], *, now: float = 0.0,
        ping_interval: float = PING_INTERVAL, ping_timeout: float = PING_TIMEOUT,
    ) -> None:
        self.local_addresses = frozenset(ipaddress.ip_address(a) for a in local_addresses)
        super().__init__(now=now, ping_interval=ping_interval, ping_timeout=ping_timeout)

    def accept(self, stream_id: int) -> None:
        """200: the upstream connection is up."""
        stream = self._stream(stream_id, "accept")
        self._conn.send_headers(stream_id, [(b":status", b"200")])
        stream.phase = Phase.OPEN

    def reject(self, stream_id: int, status: int) -> None:
        """400 malformed, 401 denied by policy, 503 no such workload or upstream refused."""
        if status not in REJECT_STATUSES:
            raise ValueError(f"status {status} is not one of {sorted(REJECT_STATUSES)}")
        self._stream(stream_id, "reject")
        self._forget(stream_id)
        self._refuse(stream_id, status)

    def _refuse(self, stream_id: int, status: int) -> None:
        try:
            self._conn.send_headers(stream_id, [(b":status", str(status).encode())], end_stream=True)
        except h2.exceptions.StreamClosedError:
            return  # the client reset it in the same batch of frames
        self._send_reset(stream_id, ErrorCodes.NO_ERROR)  # "stop sending" (RFC 9113 section 8.1)

    def _translate_side(self, ev: h2.events.Event, out: list[Event]) -> None:
        if isinstance(ev, h2.events.RequestReceived):
            request = parse_connect(ev.headers, self.local_addresses)
            if isinstance(request, ConnectRejection):
                self._refuse(ev.stream_id, request.status)
            else:
                self._streams[ev.stream_id] = _Stream(Phase.AWAITING)
            out.append(ConnectRequested(ev.stream_id, request))


class HboneClientConnection(_HbonePeer):
    """The connecting side: ``open_stream`` per proxied TCP connection, while ``streams_available()``."""

    _client_side = True

    def __init__(
        self, *, now: float = 0.0, ping_interval: float = PING_INTERVAL, ping_timeout: float = PING_TIMEOUT,
    ) -> None:
        super().__init__(now=now, ping_interval=ping_interval, ping_timeout=ping_timeout)

    def streams_available(self) -> int:
        """How many more streams may be opened now: the peer's limit and ours, less those open."""
        if self._closed or self._conn.highest_outbound_stream_id + 2 > self._conn.HIGHEST_ALLOWED_STREAM_ID:
            return 0
        limit = min(self._conn.remote_settings.max_concurrent_streams, MAX_CONCURRENT_STREAMS)
        return max(0, limit - self._conn.open_outbound_streams)

    def open_stream(
        self, authority: str, forwarded_for: tuple[str, int] | None,
        baggage: str | None = None, traceparent: str | None = None,
    ) -> int:
        """Send a CONNECT to ``authority`` (``ip:port``); the answer is ConnectAccepted or ConnectRefused."""
        split_host_port(authority)  # ValueError: a bad authority is the caller's bug
        if not self.streams_available():
            raise LocalProtocolError("no stream available on this connection (limit reached or closed)")
        headers = [(b":method", b"CONNECT"), (b":authority", authority.encode())]
        if forwarded_for is not None:
            headers.append((b"forwarded", f'for="{_host_port_text(*forwarded_for)}"'.encode()))
        if baggage is not None:
            headers.append((b"baggage", baggage.encode()))
        if traceparent is not None:
            headers.append((b"traceparent", traceparent.encode()))
        stream_id = self._conn.get_next_available_stream_id()
        self._conn.send_headers(stream_id, headers)
        self._streams[stream_id] = _Stream(Phase.AWAITING)
        return stream_id

    def _translate_side(self, ev: h2.events.Event, out: list[Event]) -> None:
        if isinstance(ev, h2.events.ResponseReceived):
            stream = self._streams.get(ev.stream_id)
            if stream is None or stream.phase is not Phase.AWAITING:
                return
            status = int(dict(ev.headers)[b":status"])
            if status == 200:
                stream.phase = Phase.OPEN
                out.append(ConnectAccepted(ev.stream_id))
            else:  # any non-200 fails the client's connection
                self._forget(ev.stream_id)
                self._send_reset(ev.stream_id, ErrorCodes.CANCEL)
                out.append(ConnectRefused(ev.stream_id, status))
