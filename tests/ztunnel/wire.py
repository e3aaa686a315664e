"""HTTP/2 frames and HPACK fields built by hand (RFC 9113, RFC 7541), so that at least one side of a
test conversation does not share code with ``hbone.http2`` or ``h2``."""

from __future__ import annotations

import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream_id) + payload


def u32(value: int) -> bytes:
    return struct.pack(">I", value)


def setting(key: int, value: int) -> bytes:
    return struct.pack(">HI", key, value)


def literal(name: bytes, value: bytes) -> bytes:
    """HPACK literal header field without indexing, new name, no Huffman (RFC 7541 6.2.2)."""
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def frames_of(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """Split bytes into (type, flags, stream id, payload)."""
    out = []
    while data:
        length = int.from_bytes(data[:3], "big")
        kind, flags = data[3], data[4]
        stream_id = int.from_bytes(data[5:9], "big") & 0x7FFFFFFF
        out.append((kind, flags, stream_id, data[9:9 + length]))
        data = data[9 + length:]
    return out
