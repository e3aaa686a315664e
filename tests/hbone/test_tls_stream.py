"""hbone/tls_stream.py: TLS driven straight on a socket, over a real socket pair with real certificates.

The stream sends new records straight from OpenSSL when nothing is queued and queues only what the
socket does not take; it reads OpenSSL only when there is something to work on, and waits for the
socket after a read that drained it. These tests drive both paths: bytes must arrive whole and in
order when the socket takes a little at a time, and small exchanges must keep going back and forth.
(HBONE ends a connection with HTTP/2's GOAWAY; ``aclose`` sends no TLS close_notify.)
"""

from __future__ import annotations

import hashlib
import socket

import pytest
import trio

from ca.authority import SigningAuthority
from hbone.tls import ContextCache, client_handshake, server_handshake
from mesh.identity import SpiffeId
from tests.ztunnel.pki import TD, creds

CLIENT = SpiffeId(TD, "shop", "client")
SERVER = SpiffeId(TD, "shop", "server")
SMALL_BUFFER = 4096  # bytes of socket buffer each way: the socket takes little of each send


@pytest.fixture(scope="module")
def authority() -> SigningAuthority:
    return SigningAuthority.self_signed(TD)


async def tls_pair(authority: SigningAuthority, *, buffer: int | None = None):
    a, b = trio.socket.socketpair()
    if buffer is not None:
        for sock in (a, b):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
    client_ctx = ContextCache().client(creds(authority, CLIENT))
    server_ctx = ContextCache().server(creds(authority, SERVER))
    pair: dict[str, object] = {}

    async def client() -> None:
        pair["client"], _ = await client_handshake(trio.SocketStream(a), client_ctx, frozenset({SERVER}))

    async def server() -> None:
        pair["server"], _ = await server_handshake(trio.SocketStream(b), server_ctx, TD)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client)
        nursery.start_soon(server)
    return pair["client"], pair["server"]


async def test_a_large_send_to_a_slow_reader_arrives_whole_and_in_order(authority):
    client, server = await tls_pair(authority, buffer=SMALL_BUFFER)
    payload = bytes(range(256)) * (4 * 1024 * 1024 // 256)  # 4 MiB, far over both socket buffers
    received = bytearray()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            async def send() -> None:
                for offset in range(0, len(payload), 300_000):  # sends that each fill the socket many times
                    await server.send_all(payload[offset:offset + 300_000])
                await server.aclose()

            nursery.start_soon(send)
            while len(received) < len(payload):
                await trio.testing.wait_all_tasks_blocked()  # the sender stalls on a full socket first
                received += await client.receive_some(7_000)
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    await client.aclose()


async def test_small_exchanges_go_back_and_forth(authority):
    client, server = await tls_pair(authority)
    with trio.fail_after(30):
        for i in range(500):  # each read drains the socket: the next waits for it to be readable
            await client.send_all(b"ping %d" % i)
            assert await server.receive_some(65536) == b"ping %d" % i
            await server.send_all(b"pong %d" % i)
            assert await client.receive_some(65536) == b"pong %d" % i
    await server.aclose()
    await client.aclose()
