"""The trio HBONE drivers (hbone/driver.py) over a real socket pair with real TLS 1.3 and
certificates from an in-memory mesh CA: CONNECT streams carry bytes both ways with half-close,
refusals reach the client as their status, flow control holds back a fast sender, resets and
connection loss break the streams, idle client connections close, and a draining server refuses
new streams with 503 while open ones finish."""

from __future__ import annotations

import contextlib
import hashlib
import os

import pytest
import trio
import trio.testing

from ca.authority import SigningAuthority
from hbone.connect import STREAM_WINDOW, ConnectRejection
from hbone.driver import HboneClientDriver, HboneRefused, HboneServerDriver, IncomingConnect
from hbone.tls import client_context, client_handshake, server_context, server_handshake
from mesh.identity import SpiffeId
from tests.ztunnel.pki import TD, creds

CLIENT = SpiffeId(TD, "a", "client")
SERVER = SpiffeId(TD, "b", "server")
POD_IP = "10.244.1.5"


@pytest.fixture(scope="module")
def authority() -> SigningAuthority:
    return SigningAuthority.self_signed(TD)


@contextlib.asynccontextmanager
async def hbone_pair(authority, handler, *, on_rejected=None, idle_timeout=300.0):
    """A client driver connected over TLS to a server driver serving ``handler`` for POD_IP."""
    a, b = trio.socket.socketpair()
    client_ctx = client_context(creds(authority, CLIENT))
    server_ctx = server_context(creds(authority, SERVER))
    async with trio.open_nursery() as nursery:
        server_result = {}

        async def accept():
            tls, peer = await server_handshake(trio.SocketStream(b), server_ctx, TD)
            server_result["peer"] = peer
            server = server_result["driver"] = HboneServerDriver(tls, [POD_IP], handler, on_rejected)
            await server.serve()

        nursery.start_soon(accept)
        tls, identity = await client_handshake(trio.SocketStream(a), client_ctx, frozenset({SERVER}))
        assert identity == SERVER
        client = HboneClientDriver(tls, idle_timeout=idle_timeout)
        await nursery.start(client.run)
        yield client, server_result
        client.close()
        nursery.cancel_scope.deadline = trio.current_time() + 5


async def echo(request: IncomingConnect) -> None:
    """Echo until the client half-closes, then half-close back."""
    stream = request.accept()
    async with stream:
        while data := await stream.receive_some():
            await stream.send_all(data)
        await stream.send_eof()


async def read_all(stream) -> bytes:
    out = bytearray()
    while data := await stream.receive_some():
        out += data
    return bytes(out)


async def test_connect_carries_bytes_both_ways_with_half_close(authority):
    async with hbone_pair(authority, echo) as (client, server):
        stream = await client.open(f"{POD_IP}:8080", ("10.244.0.7", 40000))
        await stream.send_all(b"hello over hbone")
        await stream.send_eof()
        assert await read_all(stream) == b"hello over hbone"
        assert stream.bytes_sent == stream.bytes_received == 16
        assert stream.finished
        await stream.aclose()
        assert server["peer"] == CLIENT


async def test_the_handler_sees_the_target_and_the_forwarded_client(authority):
    seen = []

    async def record(request: IncomingConnect) -> None:
        seen.append(request.target)
        async with request.accept() as stream:
            await stream.send_eof()
            await read_all(stream)

    async with hbone_pair(authority, record) as (client, _):
        stream = await client.open(f"{POD_IP}:9090", ("10.244.0.7", 41000), baggage="k8s.namespace.name=a")
        assert await read_all(stream) == b""
        await stream.send_eof()
    assert seen[0].ip == POD_IP and seen[0].port == 9090
    assert seen[0].forwarded_for == ("10.244.0.7", 41000)
    assert seen[0].baggage == "k8s.namespace.name=a"


@pytest.mark.parametrize("status", [401, 503])
async def test_a_refusal_reaches_the_client_as_its_status(authority, status):
    async def refuse(request: IncomingConnect) -> None:
        request.reject(status)

    async with hbone_pair(authority, refuse) as (client, _):
        with pytest.raises(HboneRefused) as refused:
            await client.open(f"{POD_IP}:8080", None)
        assert refused.value.status == status
        assert not client.streams  # nothing left behind
        # The connection itself is fine: the next CONNECT works.
        assert client.streams_available() > 0


async def test_a_connect_reset_before_any_answer_breaks_the_open(authority):
    async def drop(request: IncomingConnect) -> None:
        await request.stream.aclose()  # neither accept nor reject: RST_STREAM(CONNECT_ERROR)

    async with hbone_pair(authority, drop) as (client, _):
        with trio.fail_after(5), pytest.raises(trio.BrokenResourceError, match="reset by the peer"):
            await client.open(f"{POD_IP}:8080", None)
        assert not client.streams and client.streams_available() > 0


async def test_a_connect_to_an_address_not_served_gets_400_and_the_hook_hears_why(authority):
    rejected: list[ConnectRejection] = []
    async with hbone_pair(authority, echo, on_rejected=rejected.append) as (client, _):
        with pytest.raises(HboneRefused) as refused:
            await client.open("10.244.9.9:8080", None)
    assert refused.value.status == 400
    assert "not a pod served here" in rejected[0].reason


async def test_many_concurrent_streams_carry_their_own_bytes(authority):
    async with hbone_pair(authority, echo) as (client, _):
        async def one(i: int) -> None:
            payload = os.urandom(256 * 1024 + i)
            stream = await client.open(f"{POD_IP}:8080", None)
            async with trio.open_nursery() as nursery:
                async def send():
                    await stream.send_all(payload)
                    await stream.send_eof()
                nursery.start_soon(send)
                got = await read_all(stream)
            assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
            await stream.aclose()

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(one, i)
        assert not client.streams


async def test_a_slow_reader_holds_the_sender_back_to_the_stream_window(authority):
    received = trio.Event()
    progress = {}

    async def slow(request: IncomingConnect) -> None:
        stream = request.accept()
        await received.wait()  # read nothing until told
        progress["read"] = len(await read_all(stream))
        await stream.aclose()

    async with hbone_pair(authority, slow) as (client, _):
        stream = await client.open(f"{POD_IP}:8080", None)
        sent = 0
        chunk = b"x" * 65536
        with trio.move_on_after(1):  # the window, not this bound, must stop it
            while True:
                await stream.send_all(chunk)
                sent += len(chunk)
        assert STREAM_WINDOW <= sent <= STREAM_WINDOW + 2 * 1024 * 1024
        received.set()
        # Now the reader drains and window updates let the rest through.
        await stream.send_all(chunk)
        await stream.send_eof()
        with trio.fail_after(5):
            while "read" not in progress:
                await trio.sleep(0.01)
        assert progress["read"] == stream.bytes_sent


async def test_a_reset_by_the_server_breaks_the_client_stream(authority):
    async def give_up(request: IncomingConnect) -> None:
        stream = request.accept()
        await stream.receive_some()
        await stream.aclose()  # not finished: a reset

    async with hbone_pair(authority, give_up) as (client, _):
        stream = await client.open(f"{POD_IP}:8080", None)
        await stream.send_all(b"one")
        with pytest.raises(trio.BrokenResourceError, match="reset by the peer"):
            with trio.fail_after(5):
                while True:
                    await stream.receive_some()


async def test_losing_the_connection_breaks_every_stream(authority):
    handlers_done = []

    async def hold(request: IncomingConnect) -> None:
        stream = request.accept()
        with pytest.raises(trio.BrokenResourceError):
            await stream.receive_some()
        handlers_done.append(1)

    async with hbone_pair(authority, hold) as (client, server):
        streams = [await client.open(f"{POD_IP}:8080", None) for _ in range(3)]
        await trio.testing.wait_all_tasks_blocked()
        client.close()
        for stream in streams:
            with pytest.raises(trio.BrokenResourceError):
                await stream.receive_some()
        with trio.fail_after(5):
            while len(handlers_done) < 3:
                await trio.sleep(0.01)
        assert server["driver"].closed


async def test_an_idle_client_connection_closes_after_the_idle_timeout(authority, autojump_clock):
    async with hbone_pair(authority, echo, idle_timeout=300.0) as (client, _):
        stream = await client.open(f"{POD_IP}:8080", None)
        await trio.sleep(400)  # a stream is open: not idle, PINGs keep it alive
        assert not client.closed
        await stream.send_eof()
        await read_all(stream)
        await stream.aclose()
        await trio.sleep(299)
        assert not client.closed
        await trio.sleep(2)
        assert client.closed


async def test_a_draining_server_refuses_new_streams_and_finishes_open_ones(authority):
    async with hbone_pair(authority, echo) as (client, server):
        open_stream = await client.open(f"{POD_IP}:8080", None)
        server["driver"].drain()
        with pytest.raises(HboneRefused) as refused:
            await client.open(f"{POD_IP}:8080", None)
        assert refused.value.status == 503
        await open_stream.send_all(b"still here")
        await open_stream.send_eof()
        assert await read_all(open_stream) == b"still here"
