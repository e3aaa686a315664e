"""Protocol detection (``waypoint.detect``): what the first bytes of a tunnel say, as a table."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from mesh.api import workload_pb2 as wpb
from waypoint.detect import H2_PREFACE, PrefixedStream, Protocol, declared, sniff

# A TLS 1.2/1.3 ClientHello record starts with content type 22 (handshake) and version 3.x.
CLIENT_HELLO = bytes.fromhex("16030100f5010000f10303") + bytes(32)

SNIFF = [
    # (first bytes, no more will come, protocol)
    (b"", False, Protocol.UNKNOWN),
    (b"", True, Protocol.TCP),
    (H2_PREFACE, False, Protocol.HTTP2),
    (H2_PREFACE + b"\x00\x00\x12\x04", False, Protocol.HTTP2),
    (H2_PREFACE[:1], False, Protocol.UNKNOWN),
    (H2_PREFACE[:10], False, Protocol.UNKNOWN),
    (H2_PREFACE[:23], False, Protocol.UNKNOWN),
    (H2_PREFACE[:10], True, Protocol.TCP),  # the preface cut short by EOF
    (b"PRI * HTTP/1.1\r\n", False, Protocol.HTTP1),  # "PRI" then a space, not the preface
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", False, Protocol.HTTP1),
    (b"GET", False, Protocol.UNKNOWN),
    (b"GET", True, Protocol.TCP),
    (b"POST ", False, Protocol.HTTP1),
    (b"M-SEARCH * HTTP/1.1\r\n", False, Protocol.HTTP1),
    (b"OPTIONS * HTTP/1.1\r\n", False, Protocol.HTTP1),
    (b" GET / HTTP/1.1", False, Protocol.TCP),  # no method before the space
    (b"GET\r\n", False, Protocol.TCP),
    (b"A" * 21, False, Protocol.TCP),  # longer than any method
    (b"A" * 20, False, Protocol.UNKNOWN),
    (b"\x00\x01\x02\x03", False, Protocol.TCP),
    (b"\xff", False, Protocol.TCP),
    (CLIENT_HELLO, False, Protocol.TCP),
    (CLIENT_HELLO[:1], False, Protocol.TCP),
    (b"SSH-2.0-OpenSSH_9.6\r\n", False, Protocol.TCP),
]


@pytest.mark.parametrize(("data", "ended", "expected"), SNIFF)
def test_sniff(data: bytes, ended: bool, expected: Protocol) -> None:
    assert sniff(data, ended) is expected


def test_sniff_preface_in_pieces() -> None:
    """The preface arriving a byte at a time stays undecided until its last byte."""
    for n in range(1, len(H2_PREFACE)):
        assert sniff(H2_PREFACE[:n], ended=False) is Protocol.UNKNOWN, n
    assert sniff(H2_PREFACE, ended=False) is Protocol.HTTP2


def test_sniff_request_line_in_pieces() -> None:
    line = b"DELETE /x HTTP/1.1\r\n"
    assert [sniff(line[:n], ended=False) for n in range(1, 8)] == [Protocol.UNKNOWN] * 6 + [Protocol.HTTP1]


@pytest.mark.parametrize(("app_protocol", "expected"), [
    (wpb.HTTP11, Protocol.HTTP1), (wpb.HTTP2, Protocol.HTTP2), (wpb.GRPC, Protocol.HTTP2),
    (wpb.UNKNOWN, Protocol.UNKNOWN),
])
def test_declared(app_protocol: int, expected: Protocol) -> None:
    assert declared(app_protocol) is expected


async def test_prefixed_stream_yields_the_prefix_first() -> None:
    left, right = trio.testing.memory_stream_pair()
    prefixed = PrefixedStream(right, b"hello ")
    await left.send_all(b"world")
    assert await prefixed.receive_some(3) == b"hel"
    assert await prefixed.receive_some() == b"lo "
    assert await prefixed.receive_some() == b"world"
    await prefixed.send_all(b"back")
    assert await left.receive_some() == b"back"
    await prefixed.send_eof()
    assert await left.receive_some() == b""
