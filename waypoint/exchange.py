"""One request and its response, whatever HTTP version carries them on each side.

The request pipeline (``waypoint.pipeline``) works on two small interfaces, so that HTTP/1.1 (h11)
and HTTP/2 (h2) on either side are the same to it and a request may change version on the way (an
HTTP/1.1 client to an HTTP/2 upstream, and the other way round):

- ``Downstream``: a client's request as received (``head``, then its body with ``receive_body``)
  and the way to answer it (``respond``, ``send_body``, ``end``; or ``abort``).
- ``Upstream``: a request sent to an endpoint (``send_body``, ``end_body``) and its response as it
  arrives (``response``, then ``receive_body`` and ``trailers``).

Headers travel as ``(name, value)`` pairs of ``str``, names lowercase, without HTTP/2's
pseudo-headers and without the hop-by-hop headers of RFC 9110 section 7.6.1: each side's codec adds
what its version needs (``Host`` or ``:authority``, framing).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from waypoint.routing import RequestHead

Headers = list[tuple[str, str]]

# RFC 9110 7.6.1, plus HTTP/2's own (RFC 9113 8.2.2) and the request's Host (carried as the
# authority); "te: trailers" is re-added for gRPC where the version allows it.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "trailer",
    "proxy-authenticate", "proxy-authorization", "http2-settings", "host",
})


def end_to_end(headers: Iterable[tuple[str, str]]) -> Headers:
    """``headers`` without the hop-by-hop ones, and without those the Connection header names."""
    headers = list(headers)
    named = {token.strip().lower() for name, value in headers if name == "connection" for token in value.split(",")}
    return [(n, v) for n, v in headers if n not in HOP_BY_HOP and n not in named]


def header_value(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    for n, v in headers:
        if n == name:
            return v
    return None


class Downstream(Protocol):
    http_version: str  # "HTTP/1.1" | "HTTP/2"
    head: RequestHead
    received_bytes: int  # request body bytes so far
    sent_bytes: int  # response body bytes so far
    responded: bool  # a response head has gone out

    async def receive_body(self) -> bytes:
        """The next chunk of the request body; b"" at its end."""
        ...

    def request_ended(self) -> bool:
        """Whether the request is known, without waiting, to have no more body."""
        ...

    async def respond(self, status: int, headers: Headers, *, end: bool = False, hold: bool = False) -> None:
        """The response head; ``hold``: it may wait to go out with the first body bytes or the end."""
        ...

    async def send_body(self, data: bytes, *, end: bool = False) -> None:
        """Response body bytes; ``end``: they are the last, and the response ends with them (no trailers):
        one write, an HTTP/2 DATA frame with END_STREAM, one pass through a plugin's body callback."""
        ...

    async def end(self, trailers: Headers | None = None) -> None: ...

    def abort(self) -> None:
        """Give up on the exchange: reset the stream (HTTP/2) or close the connection (HTTP/1.1)."""
        ...


class Upstream(Protocol):
    http_version: str

    async def send_body(self, data: bytes) -> None: ...

    async def end_body(self) -> None: ...

    async def response(self) -> tuple[int, Headers]:
        """The final response's status and headers (informational ones are skipped)."""
        ...

    async def receive_body(self) -> bytes: ...

    def body_at_hand(self) -> bytes | None:
        """The next body chunk if it has already arrived (b"" for the end), else None; never waits."""
        ...

    @property
    def trailers(self) -> Headers | None: ...

    async def release(self, reusable: bool) -> None:
        """Done with the exchange: its connection goes back to its pool if ``reusable`` and clean."""
        ...
