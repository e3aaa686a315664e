"""The attacker's frames, read back with hyperframe and hpack (independent of bench/attacks/frames.py
and of hbone.http2), and the attacker's bounds on what it sends."""

from __future__ import annotations

import struct

import hpack
import pytest
from hyperframe.frame import ContinuationFrame, Frame, GoAwayFrame, HeadersFrame, PingFrame, RstStreamFrame

from attacks import attacker, frames


def parse_all(data: bytes) -> list[Frame]:
    out = []
    while data:
        parsed, length = Frame.parse_frame_header(memoryview(data[:9]))
        parsed.parse_body(memoryview(data[9:9 + length]))
        out.append(parsed)
        data = data[9 + length:]
    return out


def test_a_connect_request_is_one_headers_frame_whose_block_decodes_to_connect_and_the_authority():
    (headers,) = parse_all(frames.connect_request("10.244.1.4:9000", stream_id=3))
    assert isinstance(headers, HeadersFrame) and headers.stream_id == 3 and "END_HEADERS" in headers.flags
    assert hpack.Decoder().decode(headers.data) == [(":method", "CONNECT"), (":authority", "10.244.1.4:9000")]


def test_the_opening_is_the_preface_then_an_empty_settings_frame():
    opening = frames.opening()
    assert opening.startswith(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert opening[len(frames.PREFACE):] == b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def test_the_continuation_flood_is_an_open_header_block_then_count_empty_continuations():
    flood = frames.continuation_flood(1000, "10.244.1.4:9000")
    parsed = parse_all(flood)
    assert isinstance(parsed[0], HeadersFrame) and "END_HEADERS" not in parsed[0].flags
    rest = parsed[1:]
    assert len(rest) == 1000 and all(isinstance(f, ContinuationFrame) and f.stream_id == 1 for f in rest)
    assert not any(f.data or "END_HEADERS" in f.flags for f in rest)
    # The 100,000 frames are 900 KB: 9 bytes each.
    assert len(frames.continuation_flood(100_000, "10.244.1.4:9000")) == len(flood) + 99_000 * 9


def test_rapid_resets_are_connect_then_cancel_on_each_new_client_stream():
    parsed = parse_all(frames.rapid_resets(50, "10.244.1.4:9000"))
    assert len(parsed) == 100
    headers, resets = parsed[0::2], parsed[1::2]
    assert [f.stream_id for f in headers] == [f.stream_id for f in resets] == list(range(1, 100, 2))
    assert all(isinstance(f, HeadersFrame) and "END_HEADERS" in f.flags for f in headers)
    assert all(isinstance(f, RstStreamFrame) and f.error_code == 0x8 for f in resets)


def test_pings_are_17_bytes_each_with_distinct_payloads():
    data = frames.pings(100)
    assert len(data) == 100 * 17
    parsed = parse_all(data)
    assert all(isinstance(f, PingFrame) and f.stream_id == 0 and not f.flags for f in parsed)
    assert len({f.opaque_data for f in parsed}) == 100


def test_the_reader_keeps_a_partial_frame_until_its_rest_arrives():
    goaway = GoAwayFrame(0, last_stream_id=401, error_code=0xB, additional_data=b"calm down").serialize()
    data = frames.settings_ack() + goaway
    reader = frames.FrameReader()
    first = list(reader.feed(data[:20]))
    assert [f.kind for f in first] == [frames.SETTINGS] and reader.pending == 11
    (rest,) = reader.feed(data[20:])
    assert rest.kind == frames.GOAWAY and reader.pending == 0
    assert frames.goaway(rest.payload) == (401, 0xB, "calm down")
    assert frames.error_name(0xB) == "ENHANCE_YOUR_CALM" and frames.error_name(0x42) == "0x42"


def test_a_goaway_payload_under_8_bytes_is_named():
    with pytest.raises(ValueError, match="GOAWAY payload of 4 bytes"):
        frames.goaway(struct.pack(">I", 1))


def test_a_header_value_too_long_for_a_short_literal_is_refused():
    with pytest.raises(ValueError, match="at most 126 bytes"):
        frames.literal(b"x", b"v" * 127)


@pytest.mark.parametrize(("argv", "problem"), [
    (["ping-flood", "--target", "10.0.0.1", "--certs", "/c", "--count", "10000001"], "--count for ping-flood"),
    (["plain-flood", "--target", "10.0.0.1", "--count", "0"], "--count for plain-flood"),
    (["continuation", "--target", "10.0.0.1", "--count", "10"], "needs --certs"),
    (["loop-plain", "--target", "10.0.0.1", "--seconds", "61"], "within 60 s"),
])
def test_the_attacker_refuses_an_attack_beyond_its_bounds(argv, problem, capsys):
    with pytest.raises(SystemExit):
        attacker.parse_args(argv)
    assert problem in capsys.readouterr().err
