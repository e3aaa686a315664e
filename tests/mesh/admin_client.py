"""An HTTP/1.1 client for the tests of the admin servers (``mesh.http_admin``), over real sockets."""

from __future__ import annotations

import logging

import h11
import trio

LOCAL = "127.0.0.1"


class Client:
    """One connection, spoken to through h11's client role."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, port: int) -> Client:
        return cls(await trio.open_tcp_stream(LOCAL, port))

    async def request(self, method: str, path: str, headers=(), body: bytes = b"") -> tuple[h11.Response, bytes]:
        if self.h11.our_state is h11.DONE:
            self.h11.start_next_cycle()
        headers = [("Host", "ztunnel"), *headers]
        if body:
            headers.append(("Content-Length", str(len(body))))
        data = self.h11.send(h11.Request(method=method, target=path, headers=headers))
        if body:
            data += self.h11.send(h11.Data(data=body))
        await self.stream.send_all(data + self.h11.send(h11.EndOfMessage()))
        return await self.response()

    async def response(self) -> tuple[h11.Response, bytes]:
        head, body = None, b""
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None  # h11 gives the head before the end
                return head, body

    async def aclose(self) -> None:
        await self.stream.aclose()


def header(response: h11.Response, name: str) -> str | None:
    for key, value in response.headers:
        if key.decode() == name.lower():
            return value.decode()
    return None


async def get(port: int, path: str, method: str = "GET") -> tuple[h11.Response, bytes]:
    client = await Client.open(port)
    try:
        return await client.request(method, path)
    finally:
        await client.aclose()


async def raw_exchange(port: int, data: bytes) -> bytes:
    """Send ``data``, half-close, and read everything until the server closes."""
    stream = await trio.open_tcp_stream(LOCAL, port)
    try:
        await stream.send_all(data)
        await stream.send_eof()
        received = b""
        while chunk := await stream.receive_some(65536):
            received += chunk
        return received
    finally:
        await stream.aclose()


def isolated_root(level: int) -> logging.Logger:
    """A root logger with its own hierarchy, so that the tests do not change the process's levels."""
    root = logging.RootLogger(level)
    root.manager = logging.Manager(root)
    return root
