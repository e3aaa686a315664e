"""The trio HBONE drivers over in-memory pipes (tests/hbone/memory_transport.py) and a mock clock:
what depends on time (PINGs, the PING timeout, the idle timeout) to the exact second, and what
depends on a transport that stops taking bytes (the writer task, HIGH_WATER), without a socket."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from hbone.connect import PING_INTERVAL, PING_TIMEOUT, HboneServerConnection
from hbone.driver import HIGH_WATER, HboneClientDriver, HboneRefused, HboneServerDriver, IncomingConnect
from tests.hbone.memory_transport import MemoryTransport, memory_transport_pair
from tests.ztunnel.wire import PING, frames_of

POD_IP = "10.244.1.5"


async def echo(request: IncomingConnect) -> None:
    async with request.accept() as stream:
        while data := await stream.receive_some():
            await stream.send_all(data)
        await stream.send_eof()


async def read_all(stream: trio.abc.ReceiveStream) -> bytes:
    out = bytearray()
    while data := await stream.receive_some():
        out += data
    return bytes(out)


@contextlib.asynccontextmanager
async def memory_pair(handler=echo, *, idle_timeout: float = 300.0,
                      capacity: int | None = None) -> AsyncIterator[tuple[HboneClientDriver, HboneServerDriver]]:
    client_end, server_end = memory_transport_pair(capacity)
    async with trio.open_nursery() as nursery:
        server = HboneServerDriver(server_end, [POD_IP], handler)
        nursery.start_soon(server.serve)
        client = HboneClientDriver(client_end, idle_timeout=idle_timeout)
        await nursery.start(client.run)
        yield client, server
        client.close()


class QuietServer:
    """The far end of a client driver, sans-IO: answers (SETTINGS, PINGs) until told to stop, and
    notes when each PING arrived."""

    def __init__(self, transport: MemoryTransport) -> None:
        self.transport = transport
        self.connection = HboneServerConnection([POD_IP], now=trio.current_time())
        self.answering = True
        self.pings_at: list[float] = []

    async def run(self) -> None:
        self.transport.send_nowait(self.connection.data_to_send())
        while data := await self.transport.receive_some():
            if PING in (kind for kind, flags, _, _ in frames_of(data) if not flags):
                self.pings_at.append(trio.current_time())
            self.connection.receive_bytes(data)
            if self.answering:
                self.transport.send_nowait(self.connection.data_to_send())


async def test_bytes_cross_memory_pipes_both_ways_with_half_close():
    async with memory_pair() as (client, _):
        stream = await client.open(f"{POD_IP}:8080", ("10.244.0.7", 40000))
        await stream.send_all(b"hello over memory")
        await stream.send_eof()
        assert await read_all(stream) == b"hello over memory"
        assert stream.finished


async def test_send_all_in_a_cancelled_scope_sends_nothing():
    async with memory_pair() as (client, _):
        stream = await client.open(f"{POD_IP}:8080", ("10.244.0.7", 40000))
        with trio.CancelScope() as scope:
            scope.cancel()
            await stream.send_all(b"never")
        assert scope.cancelled_caught and stream.bytes_sent == 0
        await stream.send_eof()
        assert await read_all(stream) == b""  # the echo saw nothing


async def test_pings_every_interval_and_a_silent_peer_is_dropped_after_the_timeout(autojump_clock):
    client_end, server_end = memory_transport_pair()
    server = QuietServer(server_end)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.run)
        start = trio.current_time()
        client = HboneClientDriver(client_end)
        await nursery.start(client.run)
        await trio.sleep_until(start + 2.5 * PING_INTERVAL)
        assert [at - start for at in server.pings_at] == [PING_INTERVAL, 2 * PING_INTERVAL]
        assert not client.closed  # answered
        server.answering = False
        last_ping = start + 3 * PING_INTERVAL  # the first PING that goes unanswered
        await trio.sleep_until(last_ping + PING_TIMEOUT - 0.1)
        assert not client.closed
        await trio.sleep_until(last_ping + PING_TIMEOUT + 0.1)
        assert client.closed and "PING timeout" in client.close_reason
        nursery.cancel_scope.cancel()


async def test_an_idle_client_connection_closes_after_the_idle_timeout_to_the_second(autojump_clock):
    async with memory_pair(idle_timeout=300.0) as (client, _):
        stream = await client.open(f"{POD_IP}:8080", None)
        await trio.sleep(1000)  # a stream is open: not idle, and PINGs are answered
        assert not client.closed
        await stream.send_eof()
        await read_all(stream)
        await stream.aclose()
        idle_since = trio.current_time()
        await trio.sleep_until(idle_since + 299.9)
        assert not client.closed
        await trio.sleep_until(idle_since + 300.1)
        assert client.closed


async def test_a_transport_that_stops_taking_bytes_holds_the_sender_at_high_water(autojump_clock):
    """The server stops reading: its pipe fills, the client's transport queues the rest, and once that
    queue reaches HIGH_WATER ``send_all`` waits (well inside the stream's 4 MiB window) until the
    server reads again; then everything arrives."""
    received = []

    async def sink(request: IncomingConnect) -> None:
        async with request.accept() as stream:
            received.append(len(await read_all(stream)))
            await stream.send_eof()

    payload = b"x" * (2 * HIGH_WATER)
    async with memory_pair(sink, capacity=64 * 1024) as (client, server):
        stream = await client.open(f"{POD_IP}:8080", None)
        server.transport.pause_receiving()
        with trio.move_on_after(5) as stuck:  # before any PING is due
            await stream.send_all(payload)
        assert stuck.cancelled_caught
        assert client.transport.unsent >= HIGH_WATER - 64 * 1024
        server.transport.resume_receiving()
        with trio.fail_after(5):
            await stream.send_all(payload)
            await stream.send_eof()
            await read_all(stream)
        assert received == [stream.bytes_sent] and stream.bytes_sent >= 2 * HIGH_WATER


async def test_a_handler_answers_through_the_driver():
    """``IncomingConnect`` answers through the driver's public methods; a refused CONNECT, or one the
    handler let go before answering, leaves nothing behind on either side."""
    done = trio.Event()

    async def handler(request: IncomingConnect) -> None:
        if request.target.port == 401:
            request.reject(401)
        else:
            await request.stream.aclose()  # let go unanswered: a reset
            with pytest.raises(trio.BrokenResourceError, match="gave up"):
                request.accept()
        done.set()

    async with memory_pair(handler) as (client, server):
        with pytest.raises(HboneRefused):
            await client.open(f"{POD_IP}:401", None)
        await done.wait()
        assert not server.streams and not client.streams
        done = trio.Event()
        with pytest.raises(trio.BrokenResourceError, match="reset by the peer"):
            await client.open(f"{POD_IP}:8080", None)
        await done.wait()
        assert not server.streams and not client.streams
