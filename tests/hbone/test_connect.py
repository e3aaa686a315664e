"""HBONE's HTTP/2 CONNECT layer, sans-IO: client and server objects pump bytes in memory.

Malformed requests are crafted with a plain ``h2`` connection whose outbound validation is off; the
wire-level test builds frames and HPACK by hand (struct, literal fields) so that at least one side of
one conversation is independent of h2.
"""

from __future__ import annotations

import struct

import h2.config
import h2.connection
import h2.events
import pytest
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hypothesis import given, strategies as st

from hbone.connect import (
    CONNECTION_WINDOW,
    MAX_CONCURRENT_STREAMS,
    MAX_FRAME_SIZE,
    STREAM_WINDOW,
    ConnectAccepted,
    ConnectRefused,
    ConnectRejection,
    ConnectRequested,
    ConnectTarget,
    HboneClientConnection,
    HboneServerConnection,
    PingAnswered,
    parse_connect,
    split_host_port,
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
from tests.ztunnel.wire import (
    ACK,
    DATA,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    PREFACE,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    frame,
    frames_of,
    literal,
)

POD = "10.0.0.1"
POD6 = "fd00::1"
MiB = 1024 * 1024


class Raw:
    """A plain h2 connection with the same receive_bytes/data_to_send shape as ours."""

    def __init__(self, client_side: bool, validate: bool = True) -> None:
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=client_side, header_encoding=None,
            validate_outbound_headers=validate, validate_inbound_headers=validate,
        ))
        self.conn.initiate_connection()

    def receive_bytes(self, data: bytes) -> list:
        return self.conn.receive_data(data)

    def data_to_send(self) -> bytes:
        return self.conn.data_to_send()


def pump(a, b) -> tuple[list, list]:
    """Move bytes both ways until neither side has anything to say; return (a's events, b's)."""
    a_events: list = []
    b_events: list = []
    while True:
        from_a, from_b = a.data_to_send(), b.data_to_send()
        if not from_a and not from_b:
            return a_events, b_events
        if from_a:
            b_events += b.receive_bytes(from_a)
        if from_b:
            a_events += a.receive_bytes(from_b)


def of(events: list, kind: type) -> list:
    return [e for e in events if isinstance(e, kind)]


def received(events: list, stream_id: int) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, StreamData) and e.stream_id == stream_id)


def pair(**server_kw) -> tuple[HboneClientConnection, HboneServerConnection]:
    client, server = HboneClientConnection(), HboneServerConnection([POD, POD6], **server_kw)
    pump(client, server)
    return client, server


def open_accepted(client, server, authority=f"{POD}:8080") -> int:
    sid = client.open_stream(authority, ("10.0.0.9", 40000))
    pump(client, server)
    server.accept(sid)
    client_events, _ = pump(client, server)
    assert ConnectAccepted(sid) in client_events
    return sid


# ---------------------------------------------------------------- parse_connect (pure)

GOOD = [(":method", "CONNECT"), (":authority", f"{POD}:8080")]


def test_parse_connect_full_request():
    headers = GOOD + [("forwarded", 'for="10.0.0.9:40000"'), ("baggage", "k8s.namespace.name=a"),
                      ("baggage", "k8s.pod.name=b"), ("traceparent", "00-0af7-b7ad-01")]
    assert parse_connect(headers, [POD]) == ConnectTarget(
        POD, 8080, ("10.0.0.9", 40000), "k8s.namespace.name=a,k8s.pod.name=b", "00-0af7-b7ad-01")


@pytest.mark.parametrize("authority, local, expected", [
    ("10.0.0.1:1", ["10.0.0.1"], ("10.0.0.1", 1)),
    ("10.0.0.1:65535", ["10.0.0.1"], ("10.0.0.1", 65535)),
    ("[fd00::1]:443", ["fd00::1"], ("fd00::1", 443)),
    ("[FD00:0::1]:443", ["fd00::1"], ("fd00::1", 443)),
], ids=["port-1", "port-65535", "ipv6", "ipv6-canonicalised"])
def test_parse_connect_accepts(authority, local, expected):
    target = parse_connect([(":method", "CONNECT"), (":authority", authority)], local)
    assert isinstance(target, ConnectTarget)
    assert (target.ip, target.port) == expected


@pytest.mark.parametrize("forwarded, expected", [
    ('for="10.0.0.9:40000"', ("10.0.0.9", 40000)),
    ('for="[fd00::9]:40000"', ("fd00::9", 40000)),
    ("proto=https;For=10.0.0.9:1, for=10.9.9.9:2", ("10.0.0.9", 1)),
    ('for="10.0.0.9"', None),
    ('for="pod.example:80"', None),
    ('for="10.0.0.9:0"', None),
    ("by=10.0.0.9:80", None),
    ("garbage", None),
], ids=["ipv4", "ipv6", "first-element-case-insensitive", "no-port", "hostname", "port-0", "no-for",
        "garbage"])
def test_forwarded_malformed_is_ignored(forwarded, expected):
    target = parse_connect(GOOD + [("forwarded", forwarded)], [POD])
    assert isinstance(target, ConnectTarget)
    assert target.forwarded_for == expected


@given(st.lists(st.tuples(st.binary(max_size=24), st.binary(max_size=48)), max_size=8))
def test_parse_connect_never_raises(headers):
    assert isinstance(parse_connect(headers, [POD, POD6]), (ConnectTarget, ConnectRejection))


@given(st.ip_addresses(), st.integers(1, 65535))
def test_any_ip_literal_authority_round_trips(ip, port):
    text = f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
    target = parse_connect([(":method", "CONNECT"), (":authority", text)], [ip])
    assert isinstance(target, ConnectTarget) and (target.ip, target.port) == (ip.compressed, port)
    assert isinstance(parse_connect([(":method", "CONNECT"), (":authority", text)], []), ConnectRejection)


def test_duplicate_traceparent_is_dropped():
    target = parse_connect(GOOD + [("traceparent", "a"), ("traceparent", "b")], [POD])
    assert isinstance(target, ConnectTarget) and target.traceparent is None


BAD = [
    ("get", [(":method", "GET"), (":scheme", "https"), (":path", "/"), (":authority", f"{POD}:80")],
     "is not CONNECT"),
    ("no-method", [(":authority", f"{POD}:80")], "missing :method"),
    ("scheme", [(":method", "CONNECT"), (":scheme", "https"), (":authority", f"{POD}:80")], ":scheme"),
    ("path", [(":method", "CONNECT"), (":path", "/"), (":authority", f"{POD}:80")], ":path"),
    ("extended-connect", [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"),
                          (":path", "/"), (":authority", f"{POD}:80")], "extended CONNECT"),
    ("no-authority", [(":method", "CONNECT")], "missing :authority"),
    ("no-port", [(":method", "CONNECT"), (":authority", POD)], "not <ip>:<port>"),
    ("port-0", [(":method", "CONNECT"), (":authority", f"{POD}:0")], "out of range"),
    ("port-65536", [(":method", "CONNECT"), (":authority", f"{POD}:65536")], "out of range"),
    ("port-too-long", [(":method", "CONNECT"), (":authority", f"{POD}:000080")], "not <ip>:<port>"),
    ("hostname", [(":method", "CONNECT"), (":authority", "web.default.svc:80")], "not <ip>:<port>"),
    ("bad-ipv4", [(":method", "CONNECT"), (":authority", "10.0.0.300:80")], "does not hold an IP"),
    ("ipv6-no-brackets", [(":method", "CONNECT"), (":authority", f"{POD6}:80")], "not <ip>:<port>"),
    ("ipv6-zone", [(":method", "CONNECT"), (":authority", "[fe80::1%eth0]:80")], "not <ip>:<port>"),
    ("ipv4-in-brackets", [(":method", "CONNECT"), (":authority", f"[{POD}]:80")], "does not hold an IP"),
    ("not-this-pod", [(":method", "CONNECT"), (":authority", "10.0.0.2:80")], "not a pod served here"),
    ("duplicate-authority", GOOD + [(":authority", f"{POD}:81")], "duplicate :authority"),
    ("pseudo-after-regular", [(":method", "CONNECT"), ("baggage", "x"), (":authority", f"{POD}:80")],
     "after a regular header"),
    ("status-in-request", GOOD + [(":status", "200")], "not allowed in a request"),
]


@pytest.mark.parametrize("headers, reason", [(h, r) for _, h, r in BAD], ids=[i for i, _, _ in BAD])
def test_parse_connect_rejects(headers, reason):
    result = parse_connect(headers, [POD, POD6])
    assert isinstance(result, ConnectRejection)
    assert result.status == 400
    assert reason in result.reason


# ---------------------------------------------------------------- CONNECT over the wire


def test_connect_accepted_only_when_server_accepts_then_data_both_ways():
    client, server = pair()
    sid = client.open_stream(f"{POD}:8080", ("10.0.0.9", 40000), baggage="k=v", traceparent="00-ab")
    client_events, server_events = pump(client, server)
    assert server_events == [ConnectRequested(sid, ConnectTarget(POD, 8080, ("10.0.0.9", 40000), "k=v", "00-ab"))]
    assert client_events == []  # no 200 until the upstream is up
    assert client.state(sid) is ConnectState.AWAITING
    server.accept(sid)
    client_events, _ = pump(client, server)
    assert client_events == [ConnectAccepted(sid)]
    assert client.state(sid) is server.state(sid) is ConnectState.OPEN
    assert client.send_data(sid, b"ping") == 4
    assert server.send_data(sid, b"pong") == 4
    client_events, server_events = pump(client, server)
    assert received(server_events, sid) == b"ping" and received(client_events, sid) == b"pong"


@pytest.mark.parametrize("misuse", ["client sends before the 200", "server sends before its 200",
                                    "server half-closes before its 200", "server answers twice"])
def test_a_call_out_of_turn_raises_and_resets_the_stream(misuse):
    """The state machine's rule: an input it has no move for is an error, and the stream ends (CLOSED
    is terminal), reset with INTERNAL_ERROR so that the peer and both layers agree it is gone."""
    client, server = pair()
    sid = client.open_stream(f"{POD}:8080", None)
    pump(client, server)
    if misuse == "server answers twice":
        server.accept(sid)
    culprit, victim = (client, server) if misuse.startswith("client") else (server, client)
    with pytest.raises(LocalProtocolError, match=f"stream {sid}: cannot"):
        if misuse == "server half-closes before its 200":
            culprit.half_close(sid)
        elif misuse == "server answers twice":
            culprit.accept(sid)
        else:
            culprit.send_data(sid, b"early")
    assert culprit.state(sid) is ConnectState.CLOSED
    client_events, server_events = pump(client, server)
    victim_events = server_events if victim is server else client_events
    assert StreamAborted(sid, ErrorCodes.INTERNAL_ERROR, remote=True) in victim_events
    assert victim.state(sid) is ConnectState.CLOSED
    assert open_accepted(client, server) != sid  # the connection goes on


def test_ipv6_authority_round_trip():
    client, server = pair()
    sid = client.open_stream(f"[{POD6}]:443", ("fd00::9", 1234))
    _, server_events = pump(client, server)
    assert server_events == [ConnectRequested(sid, ConnectTarget(POD6, 443, ("fd00::9", 1234)))]


def raw_request(headers) -> tuple[Raw, HboneServerConnection, list, list, int]:
    raw, server = Raw(client_side=True, validate=False), HboneServerConnection([POD, POD6])
    pump(raw, server)
    sid = raw.conn.get_next_available_stream_id()
    raw.conn.send_headers(sid, [(n.encode(), v.encode()) for n, v in headers])
    raw_events, server_events = pump(raw, server)
    return raw, server, raw_events, server_events, sid


@pytest.mark.parametrize("headers, reason", [(h, r) for _, h, r in BAD], ids=[i for i, _, _ in BAD])
def test_malformed_connect_gets_400_on_its_stream_only(headers, reason):
    raw, server, raw_events, server_events, sid = raw_request(headers)
    [requested] = server_events
    assert requested.stream_id == sid and isinstance(requested.request, ConnectRejection)
    assert reason in requested.request.reason
    [response] = of(raw_events, h2.events.ResponseReceived)
    assert dict(response.headers)[b":status"] == b"400"
    assert of(raw_events, h2.events.StreamEnded)
    assert [(e.error_code, e.remote_reset) for e in of(raw_events, h2.events.StreamReset)] == [
        (ErrorCodes.NO_ERROR, True)]
    assert server.state(sid) is ConnectState.CLOSED
    # The connection lives on: the next, well-formed CONNECT is requested.
    sid2 = raw.conn.get_next_available_stream_id()
    raw.conn.send_headers(sid2, [(b":method", b"CONNECT"), (b":authority", f"{POD}:80".encode())])
    _, server_events = pump(raw, server)
    assert server_events == [ConnectRequested(sid2, ConnectTarget(POD, 80))]


def test_data_in_flight_on_rejected_streams_is_dropped_and_credited():
    raw, server = Raw(client_side=True), HboneServerConnection([POD])
    pump(raw, server)
    for _ in range(4):  # 16 MiB sent before the 400s come back: nobody reads it, the window returns
        sid = raw.conn.get_next_available_stream_id()
        raw.conn.send_headers(sid, [(b":method", b"CONNECT"), (b":authority", b"10.0.0.2:80")])
        for _ in range(STREAM_WINDOW // MAX_FRAME_SIZE):
            raw.conn.send_data(sid, b"x" * MAX_FRAME_SIZE)
    assert raw.conn.outbound_flow_control_window == 0
    _, server_events = pump(raw, server)
    assert [type(e) for e in server_events] == [ConnectRequested] * 4
    # Credited (WINDOW_UPDATEs are batched, holding back less than half a window): without it, 0.
    assert raw.conn.outbound_flow_control_window >= CONNECTION_WINDOW // 2


@pytest.mark.parametrize("status", [401, 503], ids=["denied-by-policy", "no-upstream"])
def test_reject_reaches_the_client_as_connect_refused(status):
    client, server = pair()
    sid = client.open_stream(f"{POD}:8080", None)
    pump(client, server)
    server.reject(sid, status)
    client_events, server_events = pump(client, server)
    assert client_events == [ConnectRefused(sid, status)]
    assert server_events == []  # the client's cancel of a finished stream is not news
    assert client.state(sid) is ConnectState.CLOSED and server.state(sid) is ConnectState.CLOSED
    assert client.streams_available() == MAX_CONCURRENT_STREAMS
    with pytest.raises(LocalProtocolError):
        client.send_data(sid, b"x")


def test_reject_only_with_contract_statuses():
    client, server = pair()
    sid = client.open_stream(f"{POD}:8080", None)
    pump(client, server)
    with pytest.raises(ValueError):
        server.reject(sid, 404)
    with pytest.raises(LocalProtocolError):
        server.reject(sid + 2, 503)


def test_non_200_from_any_server_refuses_and_cancels():
    client, raw = HboneClientConnection(), Raw(client_side=False)
    pump(client, raw)
    sid = client.open_stream(f"{POD}:8080", None)
    pump(client, raw)
    raw.conn.send_headers(sid, [(b":status", b"204")])  # not 200, no END_STREAM
    client_events, raw_events = pump(client, raw)
    assert client_events == [ConnectRefused(sid, 204)]
    assert [e.error_code for e in of(raw_events, h2.events.StreamReset)] == [ErrorCodes.CANCEL]


# ---------------------------------------------------------------- half-close and reset


@pytest.mark.parametrize("first", ["client", "server"])
def test_half_close_each_direction_independently(first):
    client, server = pair()
    sid = open_accepted(client, server)
    closer, other = (client, server) if first == "client" else (server, client)
    closer.send_data(sid, b"last words")
    closer.half_close(sid)
    ev = pump(client, server)
    other_events = ev[1] if first == "client" else ev[0]
    assert other_events == [StreamData(sid, b"last words"), StreamHalfClosed(sid)]
    with pytest.raises(LocalProtocolError):
        closer.send_data(sid, b"more")
    # The other direction still flows.
    assert other.send_data(sid, b"reply") == 5
    ev = pump(client, server)
    closer_events = ev[0] if first == "client" else ev[1]
    assert closer_events == [StreamData(sid, b"reply")]
    other.half_close(sid)
    ev = pump(client, server)
    closer_events = ev[0] if first == "client" else ev[1]
    assert closer_events == [StreamHalfClosed(sid)]
    # Both halves closed: a side forgets the stream once it has acknowledged what it read.
    assert other.state(sid) is ConnectState.OPEN
    other.acknowledge(sid, len(b"last words"))
    assert other.state(sid) is ConnectState.CLOSED
    closer.acknowledge(sid, len(b"reply"))
    assert closer.state(sid) is ConnectState.CLOSED


@pytest.mark.parametrize("resetter", ["client", "server"])
def test_reset_aborts_the_stream_on_the_other_side(resetter):
    client, server = pair()
    sid = open_accepted(client, server)
    keep = open_accepted(client, server)
    me, peer = (client, server) if resetter == "client" else (server, client)
    me.reset(sid)
    me.reset(sid)  # idempotent
    ev = pump(client, server)
    peer_events = ev[1] if resetter == "client" else ev[0]
    assert peer_events == [StreamAborted(sid, ErrorCodes.CONNECT_ERROR, remote=True)]
    assert peer.state(sid) is ConnectState.CLOSED and me.state(sid) is ConnectState.CLOSED
    with pytest.raises(LocalProtocolError):
        peer.send_data(sid, b"x")
    assert client.send_data(keep, b"still") == 5  # other streams are untouched
    _, server_events = pump(client, server)
    assert received(server_events, keep) == b"still"


def test_reset_credits_unread_bytes_to_the_connection_window():
    client, server = pair()
    sids = [open_accepted(client, server) for _ in range(4)]
    for sid in sids:
        assert client.send_data(sid, b"x" * STREAM_WINDOW) == STREAM_WINDOW
    pump(client, server)
    assert client.send_window() == 0
    for sid in sids:
        server.reset(sid)  # 16 MiB never read by the app side
    pump(client, server)
    # Credited (WINDOW_UPDATEs are batched, holding back less than half a window): without it, 0.
    assert client.send_window() >= CONNECTION_WINDOW // 2


def test_close_sends_goaway_and_ends_every_stream():
    client, server = pair()
    sid = open_accepted(client, server)
    server.close()
    assert server.closed
    with pytest.raises(LocalProtocolError):
        server.send_data(sid, b"x")
    client_events, _ = pump(client, server)
    assert client_events == [StreamAborted(sid, ErrorCodes.NO_ERROR, remote=True),
                             ConnectionClosed(ErrorCodes.NO_ERROR, "GOAWAY received", remote=True)]
    assert client.closed and client.streams_available() == 0
    with pytest.raises(LocalProtocolError):
        client.open_stream(f"{POD}:80", None)


# ---------------------------------------------------------------- flow control


def test_stream_window_holds_until_the_receiver_acknowledges():
    client, server = pair()
    sid = open_accepted(client, server)
    assert client.send_data(sid, b"a" * (STREAM_WINDOW + MiB)) == STREAM_WINDOW
    _, server_events = pump(client, server)
    assert len(received(server_events, sid)) == STREAM_WINDOW
    assert client.send_data(sid, b"b") == 0
    server.acknowledge(sid, MiB)  # a little: credit waits for half a window
    server.acknowledge(sid, STREAM_WINDOW - MiB)
    client_events, _ = pump(client, server)
    assert SendWindowOpened(sid) in client_events
    assert client.send_data(sid, b"b" * MiB) == MiB
    with pytest.raises(LocalProtocolError):
        server.acknowledge(sid, 2 * MiB)  # more than was delivered


def test_connection_window_is_16_mib():
    client, server = pair()
    sids = [open_accepted(client, server) for _ in range(5)]
    assert [client.send_data(sid, b"z" * STREAM_WINDOW) for sid in sids] == [STREAM_WINDOW] * 4 + [0]


def test_windows_and_limits_are_advertised_to_a_plain_h2_peer():
    raw = Raw(client_side=False)
    client = HboneClientConnection()
    _, raw_events = pump(client, raw)
    [settings] = of(raw_events, h2.events.RemoteSettingsChanged)
    assert {k: v.new_value for k, v in settings.changed_settings.items()} == {
        SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
        SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
        SettingCodes.MAX_FRAME_SIZE: MAX_FRAME_SIZE,
        SettingCodes.MAX_HEADER_LIST_SIZE: 64 * 1024,
        SettingCodes.ENABLE_PUSH: 0,
    }
    assert raw.conn.outbound_flow_control_window == CONNECTION_WINDOW
    raw = Raw(client_side=True)
    server = HboneServerConnection([POD])
    pump(raw, server)
    assert raw.conn.remote_settings.max_concurrent_streams == MAX_CONCURRENT_STREAMS
    assert raw.conn.remote_settings.initial_window_size == STREAM_WINDOW
    assert raw.conn.outbound_flow_control_window == CONNECTION_WINDOW


# ---------------------------------------------------------------- concurrency limit


def test_client_stops_at_100_streams():
    client, server = pair()
    sids = [client.open_stream(f"{POD}:{1000 + i}", None) for i in range(MAX_CONCURRENT_STREAMS)]
    assert client.streams_available() == 0
    with pytest.raises(LocalProtocolError):
        client.open_stream(f"{POD}:9", None)
    _, server_events = pump(client, server)
    assert len(of(server_events, ConnectRequested)) == MAX_CONCURRENT_STREAMS
    server.reject(sids[0], 503)
    pump(client, server)
    assert client.streams_available() == 1


def test_client_honours_a_lower_peer_limit():
    raw = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    raw.local_settings = h2.settings.Settings(client=False, initial_values={
        SettingCodes.MAX_CONCURRENT_STREAMS: 3})
    raw.initiate_connection()
    client = HboneClientConnection()
    assert client.streams_available() == MAX_CONCURRENT_STREAMS  # before the peer's SETTINGS
    client.receive_bytes(raw.data_to_send())
    assert client.streams_available() == 3


def test_server_refuses_a_stream_over_the_limit_and_keeps_the_connection():
    raw, server = Raw(client_side=True), HboneServerConnection([POD])
    # The plain client is never shown the server's SETTINGS: it believes streams are unbounded.
    def connect():
        sid = raw.conn.get_next_available_stream_id()
        raw.conn.send_headers(sid, [(b":method", b"CONNECT"), (b":authority", f"{POD}:80".encode())])

    for _ in range(MAX_CONCURRENT_STREAMS):
        connect()
    events = server.receive_bytes(raw.data_to_send())
    assert len(of(events, ConnectRequested)) == MAX_CONCURRENT_STREAMS
    connect()
    events = server.receive_bytes(raw.data_to_send())
    assert of(events, ConnectRequested) == [] and not server.closed  # RFC 9113 section 5.1.2: a stream error
    [refused] = of(raw.receive_bytes(server.data_to_send()), h2.events.StreamReset)
    assert refused.error_code == ErrorCodes.REFUSED_STREAM


# ---------------------------------------------------------------- PING


def test_ping_every_10s_and_answered():
    client, server = pair()
    assert client.next_deadline() == 10.0
    assert client.on_timer(9.99) == [] and client.data_to_send() == b""
    assert client.on_timer(10.0) == []
    assert client.ping_outstanding
    client_events, _ = pump(client, server)  # the server's HTTP/2 layer answers the PING itself
    assert client_events == [PingAnswered()]  # the deadline is the next PING again, no longer the timeout
    assert not client.ping_outstanding
    assert client.next_deadline() == 20.0
    assert client.on_timer(15.0) == [] and client.data_to_send() == b""


def test_ping_unanswered_for_20s_drops_the_connection():
    client, server = pair()
    sid = open_accepted(client, server)
    client.on_timer(10.0)
    assert client.ping_outstanding and client.data_to_send() != b""  # the PING is lost
    assert client.next_deadline() == 30.0
    assert client.on_timer(29.99) == []
    assert client.on_timer(30.0) == [
        StreamAborted(sid, ErrorCodes.NO_ERROR, remote=False),
        ConnectionClosed(ErrorCodes.NO_ERROR, "PING timeout", remote=False)]
    assert client.closed and client.next_deadline() is None and client.on_timer(99.0) == []
    assert client.streams_available() == 0
    server_events = server.receive_bytes(client.data_to_send())  # the GOAWAY
    assert server_events[0] == StreamAborted(sid, ErrorCodes.NO_ERROR, remote=True)
    assert isinstance(server_events[1], ConnectionClosed) and server_events[1].remote


def test_a_ping_sent_to_a_plain_peer_is_seen_as_a_ping():
    client, raw = HboneClientConnection(now=100.0), Raw(client_side=False)
    pump(client, raw)
    client.on_timer(110.0)
    _, raw_events = pump(client, raw)
    assert len(of(raw_events, h2.events.PingReceived)) == 1
    assert not client.ping_outstanding


# ---------------------------------------------------------------- interoperability


def test_our_client_against_a_strict_plain_h2_server():
    client, raw = HboneClientConnection(), Raw(client_side=False)  # h2's header validation on
    pump(client, raw)
    sid = client.open_stream(f"{POD}:8080", ("10.0.0.9", 40000), baggage="k=v", traceparent="00-ab")
    _, raw_events = pump(client, raw)
    [request] = of(raw_events, h2.events.RequestReceived)
    assert request.headers == [
        (b":method", b"CONNECT"), (b":authority", b"10.0.0.1:8080"),
        (b"forwarded", b'for="10.0.0.9:40000"'), (b"baggage", b"k=v"), (b"traceparent", b"00-ab")]
    raw.conn.send_headers(sid, [(b":status", b"200")])
    raw.conn.send_data(sid, b"hello", end_stream=True)
    client_events, _ = pump(client, raw)
    assert client_events == [ConnectAccepted(sid), StreamData(sid, b"hello"), StreamHalfClosed(sid)]
    client.send_data(sid, b"bye")
    client.half_close(sid)
    _, raw_events = pump(client, raw)
    assert b"".join(e.data for e in of(raw_events, h2.events.DataReceived)) == b"bye"
    assert of(raw_events, h2.events.StreamEnded)


def test_our_server_against_a_strict_plain_h2_client():
    raw, server = Raw(client_side=True), HboneServerConnection([POD])
    pump(raw, server)
    sid = raw.conn.get_next_available_stream_id()
    raw.conn.send_headers(sid, [(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:80")])
    raw.conn.send_data(sid, b"early")  # before the 200: held until the driver decides
    _, server_events = pump(raw, server)
    assert server_events == [ConnectRequested(sid, ConnectTarget(POD, 80)), StreamData(sid, b"early")]
    server.accept(sid)
    # The plain peer keeps h2's defaults: a 65535-byte window, 16 KiB frames.
    assert server.send_data(sid, b"x" * (3 * MiB)) == 65535
    raw_events, _ = pump(raw, server)
    [response] = of(raw_events, h2.events.ResponseReceived)
    assert response.headers == [(b":status", b"200")]
    chunks = of(raw_events, h2.events.DataReceived)
    assert sum(len(e.data) for e in chunks) == 65535 and max(len(e.data) for e in chunks) == 16384
    assert server.send_data(sid, b"x") == 0
    raw.conn.acknowledge_received_data(65535, sid)
    _, server_events = pump(raw, server)
    assert SendWindowOpened(sid) in server_events
    assert server.send_data(sid, b"tail") == 4
    server.half_close(sid)
    raw_events, _ = pump(raw, server)
    assert b"".join(e.data for e in of(raw_events, h2.events.DataReceived)) == b"tail"
    assert of(raw_events, h2.events.StreamEnded)


def test_wire_transcript_with_hand_built_frames():
    """Frames and HPACK built by hand (RFC 9113, RFC 7541), not by h2."""
    server = HboneServerConnection([POD])
    preface = PREFACE + frame(SETTINGS, 0, 0, b"")
    good = literal(b":method", b"CONNECT") + literal(b":authority", b"10.0.0.1:443")
    bad = literal(b":method", b"CONNECT") + literal(b":authority", b"10.0.0.7:443")
    events = server.receive_bytes(
        preface + frame(HEADERS, END_HEADERS, 1, good) + frame(DATA, 0, 1, b"abc")
        + frame(HEADERS, END_HEADERS, 3, bad))
    assert events[:2] == [ConnectRequested(1, ConnectTarget(POD, 443)), StreamData(1, b"abc")]
    assert isinstance(events[2].request, ConnectRejection)
    server.accept(1)
    out = frames_of(server.data_to_send())
    settings = out[0]
    assert settings[:3] == (SETTINGS, 0, 0)
    advertised = {int.from_bytes(settings[3][i:i + 2], "big"): int.from_bytes(settings[3][i + 2:i + 6], "big")
                  for i in range(0, len(settings[3]), 6)}
    assert advertised[0x3] == 100 and advertised[0x4] == STREAM_WINDOW  # MAX_CONCURRENT, INITIAL_WINDOW
    assert out[1] == (WINDOW_UPDATE, 0, 0, struct.pack(">I", CONNECTION_WINDOW - 65535))
    assert out[2] == (SETTINGS, ACK, 0, b"")
    # 400 is index 12 of HPACK's static table, 200 index 8: a single indexed byte each.
    assert out[3] == (HEADERS, END_HEADERS | END_STREAM, 3, b"\x8c")
    assert out[4] == (RST_STREAM, 0, 3, struct.pack(">I", 0))
    assert out[5] == (HEADERS, END_HEADERS, 1, b"\x88")
    server.acknowledge(1, 3)
    server.half_close(1)
    assert frames_of(server.data_to_send()) == [(DATA, END_STREAM, 1, b"")]


def test_split_host_port():
    ip, port = split_host_port("[FD00::1]:80")
    assert (ip.compressed, port) == ("fd00::1", 80)
    with pytest.raises(ValueError):
        HboneClientConnection().open_stream("web:80", None)
