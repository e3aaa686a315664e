"""Which application protocol a tunnel carries: declared by the Service port, else sniffed.

Istio decides by the port's ``appProtocol``, else by the port name's prefix (``http``, ``http2``,
``grpc``, ...), else by sniffing the first bytes; so does ``declared`` (the control plane has read
the Service), and ``sniff`` looks at the client's first bytes: the HTTP/2 connection preface (prior knowledge, RFC 9113
3.4), else an HTTP/1.x request line (a method token, a space), else opaque TCP. ``sniff`` is pure; the
proxy reads at most ``len(H2_PREFACE)`` bytes for it, within ``DETECTION_TIMEOUT``.
"""

from __future__ import annotations

import enum

import trio

from mesh.api import workload_pb2 as wpb


class Protocol(enum.Enum):
    HTTP1 = "http/1.1"
    HTTP2 = "h2"
    TCP = "tcp"
    UNKNOWN = "unknown"  # not declared: sniff


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_MAX_METHOD = 20  # longer than any registered method


def declared(app_protocol: int) -> Protocol:
    """What the Service port says: the control plane sends its ``appProtocol`` (else its name's
    prefix, as istiod derives it) as ``workload.Port.app_protocol``."""
    if app_protocol == wpb.HTTP11:
        return Protocol.HTTP1
    if app_protocol in (wpb.HTTP2, wpb.GRPC):
        return Protocol.HTTP2
    return Protocol.UNKNOWN


def sniff(data: bytes, ended: bool) -> Protocol:
    """The protocol ``data`` (the first bytes) starts, or UNKNOWN if more bytes are needed to tell;
    ``ended``: no more will come (EOF or the detection time is up)."""
    if data[:len(H2_PREFACE)] == H2_PREFACE[:len(data)]:
        if len(data) >= len(H2_PREFACE):
            return Protocol.HTTP2
        return Protocol.TCP if ended else Protocol.UNKNOWN
    for i, byte in enumerate(data[:_MAX_METHOD + 1]):
        if byte == 0x20:  # a space after a non-empty token: a request line
            return Protocol.HTTP1 if i > 0 else Protocol.TCP
        if byte not in _TOKEN:
            return Protocol.TCP
    if len(data) > _MAX_METHOD or ended:
        return Protocol.TCP
    return Protocol.UNKNOWN


class PrefixedStream(trio.abc.HalfCloseableStream):
    """A stream that first yields bytes already read from it (sniffed bytes, or what a codec had
    buffered when the connection switched protocols)."""

    def __init__(self, stream: trio.abc.HalfCloseableStream, prefix: bytes) -> None:
        self._stream = stream
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            if max_bytes is None or max_bytes >= len(self._prefix):
                data, self._prefix = self._prefix, b""
            else:
                data, self._prefix = self._prefix[:max_bytes], self._prefix[max_bytes:]
            await trio.lowlevel.checkpoint()
            return data
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()
