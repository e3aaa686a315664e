"""Fuzz hbone.connect, the CONNECT layer: what a client asks for, and what a server answers.

The promises (the module docstring): a malformed CONNECT is answered on its stream alone with a 400
(a complete response with END_STREAM, then RST_STREAM(NO_ERROR)), never by ending the connection,
and is still reported as ``ConnectRequested`` with a ``ConnectRejection``; a well-formed one waits in
AWAITING for ``accept`` or ``reject``; a client's answer is ``ConnectAccepted``, ``ConnectRefused`` or
a reset stream; a peer's fault never raises. And ``parse_connect`` (pure) returns a target only for
one ``:method CONNECT`` and one ``:authority`` naming a pod served here, pseudo-headers first.

The CONNECT layer keeps its own table of streams beside HTTP/2's: every stream it holds as live
(AWAITING or OPEN) must be live in HTTP/2 too, or the driver's next ``accept`` or ``send_data`` on it
would raise.
"""

from __future__ import annotations

import ipaddress

from hypothesis import example, given, strategies as st

from hbone.connect import (
    ConnectAccepted,
    ConnectRefused,
    ConnectRejection,
    ConnectRequested,
    ConnectTarget,
    HboneClientConnection,
    HboneServerConnection,
    PingAnswered,
    parse_connect,
)
from hbone.connect_state import ConnectState
from hbone.hpack_codec import Decoder, Encoder
from hbone.http2 import (
    FLAG_END_HEADERS,
    FLAG_END_STREAM,
    HEADERS,
    PREFACE,
    RST_STREAM,
    SETTINGS,
    ConnectionClosed,
    ErrorCode,
    Header,
    SendWindowOpened,
    StreamAborted,
    StreamData,
    StreamHalfClosed,
)
from tests.fuzz import fuzz_settings
from tests.fuzz.frames import frame, frames, frames_of, header_lists, pieces, skip_preface

PODS = ("10.0.0.1", "fd00::1")
LOCAL = frozenset(ipaddress.ip_address(pod) for pod in PODS)
KNOWN_EVENTS = (ConnectRequested, ConnectAccepted, ConnectRefused, PingAnswered, StreamData, StreamHalfClosed,
                StreamAborted, SendWindowOpened, ConnectionClosed)
LIVE = (ConnectState.AWAITING, ConnectState.OPEN)


def request_frames(blocks: list[bytes], end_stream: list[bool]) -> bytes:
    """One HEADERS per block on streams 1, 3, 5...: a CONNECT each, well-formed or not."""
    return b"".join(frame(HEADERS, FLAG_END_HEADERS | (FLAG_END_STREAM if end else 0), 1 + 2 * index, block)
                    for index, (block, end) in enumerate(zip(blocks, end_stream, strict=False)))


def check_tables_agree(conn: HboneServerConnection | HboneClientConnection) -> None:
    """Every stream the CONNECT layer holds as live is live in HTTP/2 (see the module docstring)."""
    for sid, state in conn._streams.items():
        assert state in LIVE
        assert sid in conn._http2.streams, f"stream {sid} is {state.value} to CONNECT, gone from HTTP/2"
    if conn.closed:
        assert not conn._streams


# A well-formed CONNECT to a pod here, then a few mutations: most requests stay near the boundary.
authorities = st.sampled_from([b"10.0.0.1:80", b"[fd00::1]:443", b"10.0.0.1:15008"]) | st.builds(
    lambda ip, port: (f"[{ip}]" if ip.version == 6 else str(ip)).encode() + b":" + str(port).encode(),
    st.sampled_from(sorted(LOCAL, key=str)) | st.ip_addresses(), st.integers(0, 70000))
regular_headers = st.lists(st.tuples(st.sampled_from([b"forwarded", b"baggage", b"traceparent", b"x-other"]),
                                     st.sampled_from([b"for=10.1.1.1:5", b'for="[fd00::9]:7"', b"for=x", b"a=b",
                                                      b"00-aa-bb-01", b""]) | st.binary(max_size=16)),
                           max_size=3)


@st.composite
def connect_requests(draw: st.DrawFn) -> list[Header]:
    headers = [(b":method", b"CONNECT"), (b":authority", draw(authorities))] + draw(regular_headers)
    for _ in range(draw(st.integers(0, 2))):
        where = draw(st.integers(0, len(headers)))
        mutation = draw(st.sampled_from(["drop", "duplicate", "insert", "swap"]))
        if mutation == "insert" or not headers:
            headers.insert(where, draw(header_lists.filter(bool))[0])
        elif mutation == "drop":
            del headers[min(where, len(headers) - 1)]
        elif mutation == "duplicate":
            headers.insert(where, headers[min(where, len(headers) - 1)])
        else:
            headers.reverse()
    return headers


request_headers = connect_requests() | header_lists


# ---------------------------------------------------------------- parse_connect


@fuzz_settings(500)
@given(headers=request_headers)
@example(headers=[(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:80")])
@example(headers=[(b":method", b"CONNECT"), (b":authority", b"[fd00::1]:443"), (b"forwarded", b"for=10.1.1.1:5")])
def test_parse_connect_accepts_exactly_the_well_formed(headers: list[Header]) -> None:
    result = parse_connect(headers, PODS)
    if isinstance(result, ConnectRejection):
        assert result.status == 400 and result.reason
        return
    assert isinstance(result, ConnectTarget)
    pseudo = [(name, value) for name, value in headers if name.startswith(b":")]
    assert headers[:len(pseudo)] == pseudo, "pseudo-headers after a regular header"
    assert sorted(name for name, _ in pseudo) == [b":authority", b":method"]
    assert dict(pseudo)[b":method"] == b"CONNECT"
    assert ipaddress.ip_address(result.ip) in LOCAL and 0 < result.port < 65536
    assert dict(pseudo)[b":authority"].decode("latin-1").endswith(f":{result.port}")


# ---------------------------------------------------------------- the server


class Server:
    """An HBONE server fed a client's bytes; the driver accepts, rejects or resets what awaits."""

    def __init__(self, actions: list[int]) -> None:
        self.conn = HboneServerConnection(PODS)
        self.actions = actions  # per stream, in order: 0 leave, 1 accept, 2 reject 401, 3 reject 503, 4 reset
        self.output = bytearray(self.conn.data_to_send())
        self.rejected: set[int] = set()
        self.closed = False

    def feed(self, chunk: bytes) -> None:
        events = self.conn.receive_bytes(chunk)  # the promise: never raises
        for index, event in enumerate(events):
            assert isinstance(event, KNOWN_EVENTS), event
            assert not self.closed, f"{event} after ConnectionClosed"
            if isinstance(event, ConnectionClosed):
                assert index == len(events) - 1
                self.closed = True
            if isinstance(event, ConnectRequested):
                self._requested(event, later=events[index + 1:])
        check_tables_agree(self.conn)
        for event in events:
            if isinstance(event, ConnectRequested) and self.conn.state(event.stream_id) is ConnectState.AWAITING:
                self._act(event.stream_id)
        check_tables_agree(self.conn)
        self.output += self.conn.data_to_send()

    def _requested(self, event: ConnectRequested, later: list[object]) -> None:
        sid, request = event.stream_id, event.request
        assert sid % 2 == 1
        if isinstance(request, ConnectRejection):
            assert request.status == 400 and request.reason
            assert self.conn.state(sid) is ConnectState.CLOSED
            self.rejected.add(sid)
            return
        assert isinstance(request, ConnectTarget)
        assert ipaddress.ip_address(request.ip) in LOCAL and 0 < request.port < 65536
        gone = any(isinstance(e, StreamAborted | ConnectionClosed) and getattr(e, "stream_id", sid) == sid
                   for e in later)
        assert self.conn.state(sid) is ConnectState.AWAITING or gone

    def _act(self, sid: int) -> None:
        action = self.actions.pop(0) if self.actions else 0
        if action == 1:
            self.conn.accept(sid)
            self.conn.send_data(sid, b"hello")
        elif action in (2, 3):
            self.conn.reject(sid, 401 if action == 2 else 503)
        elif action == 4:
            self.conn.reset(sid)

    def finish(self) -> None:
        """Each malformed CONNECT got its 400 with END_STREAM, then RST_STREAM(NO_ERROR), on its stream."""
        self.output += self.conn.data_to_send()
        decoder = Decoder(max_header_list_size=2**32)  # our encoder never indexes: blocks decode alone
        answers: dict[int, list[tuple[str, object]]] = {}
        for kind, flags, sid, payload in frames_of(skip_preface(bytes(self.output))):
            if kind == HEADERS:
                headers = decoder.decode(payload)
                answers.setdefault(sid, []).append(("headers", (headers, bool(flags & FLAG_END_STREAM))))
            elif kind == RST_STREAM:
                answers.setdefault(sid, []).append(("reset", int.from_bytes(payload, "big")))
        for sid in self.rejected:
            assert answers.get(sid, [])[:2] == [("headers", ([(b":status", b"400")], True)),
                                                ("reset", ErrorCode.NO_ERROR)], f"stream {sid}: {answers.get(sid)}"


@fuzz_settings(400)
@given(data=st.data(), requests=st.lists(request_headers, max_size=6), end_stream=st.lists(st.booleans(), max_size=6),
       actions=st.lists(st.integers(0, 4), max_size=6), sequence=st.lists(frames(), max_size=8))
@example(data=None, requests=[[(b":method", b"GET")], [(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:80")]],
         end_stream=[], actions=[1], sequence=[])
def test_server_answers_every_connect_and_never_raises(data, requests: list[list[Header]], end_stream: list[bool],
                                                       actions: list[int], sequence: list[bytes]) -> None:
    server = Server(actions)
    blocks = [Encoder().encode(headers) for headers in requests]
    stream = PREFACE + frame(SETTINGS, 0, 0) + request_frames(blocks, end_stream + [False] * len(blocks))
    stream += b"".join(sequence)
    for piece in pieces(data, stream):
        server.feed(piece)
    server.finish()


# ---------------------------------------------------------------- the client


class Client:
    """An HBONE client with CONNECTs in flight, fed a server's bytes."""

    def __init__(self, streams: int) -> None:
        self.conn = HboneClientConnection()
        self.opened = [self.conn.open_stream(f"10.0.0.{n + 1}:80", ("10.9.9.9", 5000)) for n in range(streams)]
        self.conn.data_to_send()
        self.over: set[int] = set()  # refused, reset or aborted: nothing more may be said of it
        self.closed = False

    def feed(self, chunk: bytes) -> None:
        events = self.conn.receive_bytes(chunk)  # the promise: never raises
        for event in events:
            assert isinstance(event, KNOWN_EVENTS) and not isinstance(event, ConnectRequested), event
            assert not self.closed, f"{event} after ConnectionClosed"
            if isinstance(event, ConnectionClosed):
                self.closed = True
                continue
            sid = getattr(event, "stream_id", None)
            if sid:
                assert sid not in self.over, f"{event} after the stream was over"
            if isinstance(event, ConnectRefused):
                assert event.status != 200 and 200 <= event.status <= 999
                self.over.add(event.stream_id)
            elif isinstance(event, StreamAborted):
                self.over.add(event.stream_id)
        check_tables_agree(self.conn)
        for sid in self.opened:  # the driver writes to every tunnel that is open
            if self.conn.state(sid) is ConnectState.OPEN and self.conn._http2.streams[sid].local_closed is False:
                self.conn.send_data(sid, b"ping")
        self.conn.data_to_send()


status_lists = st.lists(st.tuples(st.sampled_from([b":status", b":status", b"x-other", b":path"]),
                                  st.sampled_from([b"200", b"200", b"401", b"503", b"100", b"103", b"99", b"2000",
                                                   b"abc", b"", b"20"]) | st.binary(max_size=4)),
                        max_size=3)


@fuzz_settings(400)
@given(data=st.data(), streams=st.integers(1, 3), responses=st.lists(status_lists, max_size=6),
       end_stream=st.lists(st.booleans(), max_size=6), sequence=st.lists(frames(), max_size=8))
def test_client_reads_any_answer_and_never_raises(data, streams: int, responses: list[list[Header]],
                                                  end_stream: list[bool], sequence: list[bytes]) -> None:
    client = Client(streams)
    blocks = [Encoder().encode(headers) for headers in responses]
    # Responses go to the client's streams in turn (1, 3, 5, then 1 again: informational, trailers).
    answers = b"".join(frame(HEADERS, FLAG_END_HEADERS | (FLAG_END_STREAM if end else 0), 1 + 2 * (i % streams), b)
                       for i, (b, end) in enumerate(zip(blocks, end_stream + [False] * len(blocks), strict=False)))
    stream = frame(SETTINGS, 0, 0) + answers + b"".join(sequence)
    for piece in pieces(data, stream):
        client.feed(piece)
