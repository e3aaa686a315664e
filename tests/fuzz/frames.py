"""HTTP/2 frames as a hostile peer writes them, for the HTTP/2 and CONNECT fuzz targets.

``frames`` draws valid-looking frames: every frame type (and unknown ones), their flags, stream ids
at the edges, payloads shaped for their type (SETTINGS entries, window increments, HPACK blocks) and,
now and then, a length field that lies or a frame repeated as a flood. ``frames_of`` reads our own
output back, to check that what we send is well-formed.
"""

from __future__ import annotations

import struct

from hypothesis import strategies as st

from hbone.hpack_codec import Encoder
from hbone.http2 import (
    CONTINUATION,
    DATA,
    FLAG_ACK,
    FLAG_END_HEADERS,
    FLAG_END_STREAM,
    FLAG_PADDED,
    FLAG_PRIORITY,
    GOAWAY,
    HEADERS,
    MAX_STREAM_ID,
    PING,
    PREFACE,
    PRIORITY,
    PUSH_PROMISE,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
)

Frame = tuple[int, int, int, bytes]  # (type, flags, stream id, payload)

# A frame repeated this many times at most: past every per-connection flood bound of hbone.limits
# (1000 control frames, 200 premature resets, 100 empty frames) while keeping an input under ~50 KiB.
MAX_REPEAT = 1200
# How many times a flood repeats its frame: mostly just over (or at) one of those bounds.
FLOODS = st.sampled_from([2, 100, 101, 200, 201, 1000, 1001, 1002, MAX_REPEAT]) | st.integers(1, MAX_REPEAT)


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"", length: int | None = None) -> bytes:
    """One frame; ``length`` overrides the length field (a lie), else it is the payload's."""
    size = len(payload) if length is None else length
    return struct.pack(">I", size)[1:] + bytes((kind, flags)) + struct.pack(">I", stream_id) + payload


def frames_of(data: bytes) -> list[Frame]:
    """The frames in ``data``; AssertionError if it is not a whole number of well-formed frames."""
    out: list[Frame] = []
    pos = 0
    while pos < len(data):
        assert len(data) - pos >= 9, f"{len(data) - pos} bytes left over after the last whole frame"
        length = int.from_bytes(data[pos:pos + 3], "big")
        kind, flags = data[pos + 3], data[pos + 4]
        stream_id = int.from_bytes(data[pos + 5:pos + 9], "big")
        assert stream_id <= MAX_STREAM_ID, f"the reserved bit is set in stream id {stream_id:#x}"
        payload = data[pos + 9:pos + 9 + length]
        assert len(payload) == length, f"a frame of type {kind} claims {length} bytes, {len(payload)} follow"
        out.append((kind, flags, stream_id, payload))
        pos += 9 + length
    return out


def skip_preface(data: bytes) -> bytes:
    return data[len(PREFACE):] if data.startswith(PREFACE) else data


stream_ids = st.sampled_from([0, 1, 2, 3, 4, 5, 7, 9, 11, 13, 101, 201, MAX_STREAM_ID]) | st.integers(0, 2**32 - 1)
u32_values = st.sampled_from([0, 1, 100, 65535, 65536, 2**24, 2**31 - 1, 2**31, 2**32 - 1]) | st.integers(0, 2**32 - 1)
flag_bytes = st.sampled_from([0, FLAG_END_STREAM, FLAG_END_HEADERS, FLAG_END_STREAM | FLAG_END_HEADERS,
                              FLAG_PADDED, FLAG_PRIORITY, FLAG_PADDED | FLAG_PRIORITY | FLAG_END_HEADERS,
                              0xFF]) | st.integers(0, 255)

# What a CONNECT request's (or a response's) header list is made of: right and wrong pseudo-headers,
# good and bad authorities, the headers HBONE reads.
header_names = st.sampled_from([b":method", b":authority", b":scheme", b":path", b":protocol", b":status",
                                b":bogus", b"forwarded", b"baggage", b"traceparent", b"content-length",
                                b"x-other", b""]) | st.binary(min_size=1, max_size=12)
header_values = st.sampled_from([b"CONNECT", b"GET", b"connect", b"10.0.0.1:80", b"10.0.0.1:8080", b"10.0.0.2:80",
                                 b"[fd00::1]:443", b"[fd00::1]", b"10.0.0.1", b"10.0.0.1:0", b"10.0.0.1:65536",
                                 b"10.0.0.1:99999", b"256.0.0.1:80", b"host:80", b"[zz::1]:80", b"for=10.1.1.1:5",
                                 b'for="[fd00::9]:7"', b"200", b"400", b"100", b"2000", b"20", b"abc", b"",
                                 "\u00e9".encode(), b"\xff\xfe", b"\x00"]) | st.binary(max_size=24)
header_lists = st.lists(st.tuples(header_names, header_values), max_size=8)


@st.composite
def header_blocks(draw: st.DrawFn) -> bytes:
    """An HPACK block: what our encoder makes of a header list, or bytes at random."""
    if draw(st.integers(0, 4)):
        return Encoder().encode(draw(header_lists))
    return draw(st.binary(max_size=40))


@st.composite
def padded(draw: st.DrawFn, body: bytes, flags: int, with_priority: bool) -> bytes:
    """``body`` with the pad length, priority fields and padding its flags announce (pad length at
    times too long)."""
    prefix = b""
    pad = b""
    if flags & FLAG_PADDED:
        pad_length = draw(st.integers(0, 8) | st.just(255))
        prefix += bytes((pad_length,))
        pad = bytes(pad_length if draw(st.integers(0, 5)) else draw(st.integers(0, pad_length)))
    if with_priority and flags & FLAG_PRIORITY:
        prefix += draw(st.binary(min_size=5, max_size=5))
    return prefix + body + pad


@st.composite
def payloads(draw: st.DrawFn, kind: int, flags: int) -> bytes:
    """A payload shaped for ``kind``, sometimes of the wrong size."""
    if draw(st.integers(0, 19)) == 0:
        return draw(st.binary(max_size=30))
    if kind == DATA:
        return draw(padded(draw(st.binary(max_size=64)), flags, with_priority=False))
    if kind in (HEADERS, CONTINUATION, PUSH_PROMISE):
        return draw(padded(draw(header_blocks()), flags, with_priority=kind == HEADERS))
    if kind == PRIORITY:
        return draw(st.binary(min_size=5, max_size=5))
    if kind in (RST_STREAM, WINDOW_UPDATE):
        return struct.pack(">I", draw(u32_values))
    if kind == SETTINGS:
        entries = draw(st.lists(st.tuples(st.integers(0, 9) | st.integers(0, 0xFFFF), u32_values), max_size=8))
        return b"".join(struct.pack(">HI", key, value) for key, value in entries)
    if kind == PING:
        return draw(st.binary(min_size=8, max_size=8))
    if kind == GOAWAY:
        return struct.pack(">II", draw(u32_values), draw(u32_values)) + draw(st.binary(max_size=16))
    return draw(st.binary(max_size=30))  # unknown frame types


UNKNOWN_KIND = -1  # drawn as one of the types RFC 9113 does not define (10 to 255)
# Frame types weighted towards those that carry a conversation (streams opened, data, credit), so
# that inputs get past the first frames; GOAWAY and PUSH_PROMISE end a connection, so are rarer.
kinds = st.sampled_from([HEADERS] * 4 + [DATA] * 6 + [WINDOW_UPDATE, SETTINGS, PING, RST_STREAM] * 2
                        + [CONTINUATION, PRIORITY, GOAWAY, PUSH_PROMISE, UNKNOWN_KIND])
CONNECTION_FRAMES = (SETTINGS, PING, GOAWAY)
FLAGS_BY_KIND = {
    HEADERS: st.sampled_from([FLAG_END_HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 0, FLAG_END_STREAM,
                              FLAG_END_HEADERS | FLAG_PADDED, FLAG_END_HEADERS | FLAG_PRIORITY]),
    CONTINUATION: st.sampled_from([FLAG_END_HEADERS, 0]),
    DATA: st.sampled_from([0, 0, FLAG_END_STREAM, FLAG_PADDED, FLAG_PADDED | FLAG_END_STREAM]),
    SETTINGS: st.sampled_from([0, 0, 0, FLAG_ACK]),
    PING: st.sampled_from([0, FLAG_ACK]),
}


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """One frame as a peer might send it, or a flood of it. Streams are mostly the first few a
    client opens (1, 3, 5, 7: the client side of these targets opens three); flags, sizes and ids
    are wrong now and then."""
    kind = draw(kinds)
    if kind == UNKNOWN_KIND:
        kind = draw(st.integers(10, 255))
    wild = draw(st.integers(0, 9)) == 0
    flags = draw(flag_bytes if wild or kind not in FLAGS_BY_KIND else FLAGS_BY_KIND[kind])
    payload = draw(payloads(kind, flags))
    if draw(st.integers(0, 9)) == 0:
        stream_id = draw(stream_ids)
    elif kind in CONNECTION_FRAMES:
        stream_id = 0
    else:
        stream_id = 1 + 2 * draw(st.integers(0, 3))
    length = draw(st.integers(0, 2**24 - 1)) if draw(st.integers(0, 49)) == 0 else None
    one = frame(kind, flags, stream_id, payload, length)
    repeat = draw(FLOODS) if draw(st.integers(0, 19)) == 0 else 1
    return one * repeat


def opening(streams: int, block: bytes) -> bytes:
    """HEADERS with ``block`` on the first ``streams`` client streams (1, 3, 5...): streams that the
    frames after them can then carry data for, reset, credit."""
    return b"".join(frame(HEADERS, FLAG_END_HEADERS, 1 + 2 * index, block) for index in range(streams))


@st.composite
def cut(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut at random points, as reads from a socket may deliver it."""
    if not data or draw(st.booleans()):
        return [data]
    points = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    pieces, last = [], 0
    for point in points + [len(data)]:
        pieces.append(data[last:point])
        last = point
    return pieces


def pieces(data: st.DataObject | None, stream: bytes) -> list[bytes]:
    """``stream`` cut at random by ``data``; whole for an explicit ``@example``, which passes None."""
    return [stream] if data is None else data.draw(cut(stream))
