"""HTTP/2 exchanges on an ``H2Session``: a client's request as a ``Downstream``, a request to an
endpoint as an ``Upstream`` (``waypoint.exchange``).

A request's pseudo-headers become the ``RequestHead`` (``:method``, ``:path``, ``:authority``);
``:scheme`` is ``http`` inside the mesh (the tunnel is the TLS). A request without ``:method`` or
``:path`` (other than CONNECT) is a malformed stream: h2 already refuses most such requests; what
it lets through is reset with PROTOCOL_ERROR here. So is a request with more than
``MAX_REQUEST_HEADERS`` headers (the count HTTP/1.1 answers with 431; h2 bounds only their bytes). A
response to HEAD carries no DATA, whatever body the pipeline writes (a local reply's text).
"""

from __future__ import annotations

from collections.abc import Callable

import h2.errors
import trio

from waypoint.exchange import Headers
from waypoint.h2session import H2Session, H2Stream, RawHeaders
from waypoint.limits import MAX_REQUEST_HEADERS
from waypoint.routing import RequestHead


def _split(raw: RawHeaders) -> tuple[dict[str, str], Headers]:
    pseudo: dict[str, str] = {}
    regular: Headers = []
    for name, value in raw:
        n, v = name.decode("latin-1"), value.decode("latin-1")
        if n.startswith(":"):
            pseudo[n] = v
        else:
            regular.append((n, v))
    return pseudo, regular


def _encode(headers: Headers) -> RawHeaders:
    return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers]


class MalformedRequest(Exception):
    pass


class H2Downstream:
    http_version = "HTTP/2"

    def __init__(self, session: H2Session, stream: H2Stream) -> None:
        self.session = session
        self.stream = stream
        assert stream.headers is not None
        pseudo, regular = _split(stream.headers)
        method, path = pseudo.get(":method"), pseudo.get(":path")
        if not method or not path:
            raise MalformedRequest("a request without :method or :path")
        if len(regular) > MAX_REQUEST_HEADERS:
            raise MalformedRequest(f"more than {MAX_REQUEST_HEADERS} request headers")
        authority = pseudo.get(":authority") or next((v for n, v in regular if n == "host"), "")
        self.head = RequestHead(method, path, authority, tuple(regular))
        self.upgrade: str | None = None
        self.received_bytes = 0
        self.sent_bytes = 0
        self.responded = False
        self._trailers_sent = False
        self._head_only = method == "HEAD"  # RFC 9110 9.3.2: the head of the GET response, no content

    def request_ended(self) -> bool:
        """Whether the client ended the stream and every byte of it was read (END_STREAM on the headers)."""
        return self.stream.ended and not self.stream.has_data

    async def receive_body(self) -> bytes:
        data = await self.stream.receive_data()
        self.received_bytes += len(data)
        return data

    async def respond(self, status: int, headers: Headers, *, end: bool = False, hold: bool = False) -> None:
        # ``hold`` is for HTTP/1.1: HTTP/2 frames queued together already leave in one write.
        await self.session.send_headers(self.stream.stream_id, [(b":status", str(status).encode()), *_encode(headers)],
                                        end_stream=end)
        self.responded = True

    async def send_body(self, data: bytes, *, end: bool = False) -> None:
        if data and not self._head_only:
            self.sent_bytes += len(data)
            await self.session.send_data(self.stream, data, end_stream=end)  # END_STREAM on the last frame
        elif end:
            await self.session.end_stream(self.stream)

    async def end(self, trailers: Headers | None = None) -> None:
        if trailers:
            await self.session.send_headers(self.stream.stream_id, _encode(trailers), end_stream=True)
        else:
            await self.session.end_stream(self.stream)

    def abort(self) -> None:
        self.session.reset(self.stream.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)


class H2Upstream:
    http_version = "HTTP/2"

    def __init__(self, session: H2Session, on_release: Callable[[H2Session], None]) -> None:
        self.session = session
        self._on_release = on_release
        self.stream: H2Stream | None = None

    async def start(self, head: RequestHead, headers: Headers, *, end_stream: bool) -> None:
        raw = [(b":method", head.method.encode("latin-1")), (b":scheme", b"http"),
               (b":authority", head.authority.encode("latin-1")), (b":path", head.target.encode("latin-1")),
               *_encode(headers)]
        self.stream = await self.session.request(raw, end_stream)

    async def send_body(self, data: bytes) -> None:
        assert self.stream is not None
        if data:
            await self.session.send_data(self.stream, data)

    async def end_body(self) -> None:
        assert self.stream is not None
        await self.session.end_stream(self.stream)

    async def response(self) -> tuple[int, Headers]:
        assert self.stream is not None
        pseudo, regular = _split(await self.stream.wait_headers())
        try:
            return int(pseudo.get(":status", "")), regular
        except ValueError:
            raise MalformedRequest("the upstream's response has no valid :status") from None

    async def receive_body(self) -> bytes:
        assert self.stream is not None
        return await self.stream.receive_data()

    def body_at_hand(self) -> bytes | None:
        """The next chunk of the response body if it has arrived (b"" for its end), else None."""
        assert self.stream is not None
        return self.stream.data_at_hand()

    @property
    def trailers(self) -> Headers | None:
        if self.stream is None or self.stream.trailers is None:
            return None
        return _split(self.stream.trailers)[1]

    async def release(self, reusable: bool) -> None:
        if self.stream is not None:
            self.session.forget(self.stream)
        self._on_release(self.session)
        await trio.lowlevel.checkpoint()
