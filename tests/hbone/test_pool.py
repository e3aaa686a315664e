"""The HBONE client pool (hbone/pool.py) over real TLS 1.3 connections and real HBONE drivers.

``connect`` is what the proxy gives the pool: it returns a verified TLS stream. Here it makes a
socket pair, serves the far end as a ztunnel would (TLS with a mesh certificate, then an
``HboneServerDriver``) and counts the handshakes, so every assertion is about connections that
really exist: how many were made, which streams share one, what happens when the server goes away.
"""

from __future__ import annotations

import contextlib

import pytest
import trio
import trio.testing

from ca.authority import SigningAuthority
from hbone.connect import MAX_CONCURRENT_STREAMS
from hbone.driver import HboneRefused, HboneServerDriver, IncomingConnect
from hbone.pool import HbonePool
from hbone.tls import client_context, client_handshake, server_context, server_handshake
from mesh.identity import SpiffeId
from tests.ztunnel.pki import TD, creds

CLIENT = SpiffeId(TD, "a", "client")
SERVER = SpiffeId(TD, "b", "server")
POD_IP = "10.244.1.5"
TARGET = f"{POD_IP}:8080"
REFUSED_TARGET = f"{POD_IP}:9999"  # the server answers 401 to this one
KEY = ("pod-a", frozenset({SERVER}), (POD_IP, 15008))


@pytest.fixture(scope="module")
def authority() -> SigningAuthority:
    return SigningAuthority.self_signed(TD)


async def echo_or_refuse(request: IncomingConnect) -> None:
    """Echo until the client half-closes; refuse REFUSED_TARGET with 401."""
    if request.target.port == 9999:
        request.reject(401)
        return
    async with request.accept() as stream:
        with contextlib.suppress(trio.BrokenResourceError):  # the client reset it, or the connection went
            while data := await stream.receive_some():
                await stream.send_all(data)
            await stream.send_eof()


class FakeServer:
    """The far ztunnel: each ``connect`` is a new TLS connection it serves with HBONE."""

    def __init__(self, nursery: trio.Nursery, authority: SigningAuthority) -> None:
        self._nursery = nursery
        self._client_ctx = client_context(creds(authority, CLIENT))
        self._server_ctx = server_context(creds(authority, SERVER))
        self.handshakes = 0
        self.drivers: list[HboneServerDriver] = []
        self.sockets: list[trio.socket.SocketType] = []
        self.gate: trio.Event | None = None  # when set, connect waits for it before the handshake

    async def connect(self) -> trio.abc.Stream:
        self.handshakes += 1
        if self.gate is not None:
            await self.gate.wait()
        a, b = trio.socket.socketpair()
        self.sockets.append(b.dup())  # the handshake takes b over; a dup shuts the same socket down
        self._nursery.start_soon(self._serve, b)
        tls, identity = await client_handshake(trio.SocketStream(a), self._client_ctx, frozenset({SERVER}))
        assert identity == SERVER
        return tls

    async def _serve(self, sock: trio.socket.SocketType) -> None:
        tls, peer = await server_handshake(trio.SocketStream(sock), self._server_ctx, TD)
        assert peer == CLIENT
        driver = HboneServerDriver(tls, [POD_IP], echo_or_refuse)
        self.drivers.append(driver)
        await driver.serve()


@contextlib.asynccontextmanager
async def pool_and_server(authority, *, idle_timeout: float = 300.0):
    async with trio.open_nursery() as nursery:
        pool = HbonePool(nursery, idle_timeout=idle_timeout)
        yield pool, FakeServer(nursery, authority)
        pool.close_all()
        nursery.cancel_scope.deadline = trio.current_time() + 5


async def open_on(pool: HbonePool, server: FakeServer, key=KEY, target: str = TARGET):
    return await pool.open_stream(key, server.connect, target, ("10.244.0.7", 40000))


async def round_trip(stream, payload: bytes = b"ping") -> None:
    """Use the stream to the end, cleanly: it is then no longer open on its connection."""
    await stream.send_all(payload)
    await stream.send_eof()
    got = b""
    while data := await stream.receive_some():
        got += data
    assert got == payload
    await stream.aclose()


# ---------------------------------------------------------------- sharing


async def test_sequential_streams_of_one_key_share_one_connection(authority):
    async with pool_and_server(authority) as (pool, server):
        for i in range(10):
            await round_trip(await open_on(pool, server), b"request %d" % i)
        assert pool.connections_opened == server.handshakes == 1
        assert pool.count() == 1


async def test_concurrent_streams_of_one_key_share_one_connection(authority):
    async with pool_and_server(authority) as (pool, server):
        streams = []

        async def one() -> None:
            streams.append(await open_on(pool, server))

        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(one)
        assert len(streams) == 50
        assert pool.connections_opened == server.handshakes == 1
        async with trio.open_nursery() as nursery:
            for stream in streams:
                nursery.start_soon(round_trip, stream)
        assert pool.count() == 1


async def test_concurrent_first_users_wait_for_one_handshake(authority):
    async with pool_and_server(authority) as (pool, server):
        server.gate = trio.Event()
        streams = []

        async def one() -> None:
            streams.append(await open_on(pool, server))

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(one)
            await trio.testing.wait_all_tasks_blocked()
            assert server.handshakes == 1  # the others wait for it rather than dial their own
            server.gate.set()
        assert len(streams) == 20
        assert pool.connections_opened == server.handshakes == 1


async def test_different_keys_get_different_connections(authority):
    other_pod = ("pod-b", *KEY[1:])
    other_address = (KEY[0], KEY[1], ("10.244.1.6", 15008))
    async with pool_and_server(authority) as (pool, server):
        for key in (KEY, other_pod, other_address, KEY, other_pod, other_address):
            await round_trip(await open_on(pool, server, key))
        assert pool.connections_opened == server.handshakes == 3
        assert pool.count() == 3


async def test_more_than_the_stream_limit_opens_a_second_connection(authority):
    count = MAX_CONCURRENT_STREAMS + 20
    async with pool_and_server(authority) as (pool, server):
        streams = []

        async def one() -> None:
            streams.append(await open_on(pool, server))

        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(one)
        assert len(streams) == count
        assert pool.connections_opened == server.handshakes == 2
        assert sorted(len(d.streams) for d in server.drivers) == [20, MAX_CONCURRENT_STREAMS]
        # Every stream works, whichever connection it is on.
        async with trio.open_nursery() as nursery:
            for i, stream in enumerate(streams):
                nursery.start_soon(round_trip, stream, b"stream %d" % i)
        # Streams freed on the first connection are used again before a third is made.
        await round_trip(await open_on(pool, server))
        assert pool.connections_opened == 2


# ---------------------------------------------------------------- failures


async def test_a_connection_the_server_closed_is_replaced_on_the_next_open(authority):
    async with pool_and_server(authority) as (pool, server):
        await round_trip(await open_on(pool, server))
        server.drivers[0].close("the far ztunnel restarts")  # GOAWAY, then the connection ends
        await trio.testing.wait_all_tasks_blocked()
        assert pool.count() == 0  # the pool saw it go
        await round_trip(await open_on(pool, server))
        assert pool.connections_opened == server.handshakes == 2
        assert pool.count() == 1


async def test_a_pooled_connection_found_dead_on_use_is_retried_on_a_fresh_one(authority):
    async with pool_and_server(authority) as (pool, server):
        first = await open_on(pool, server)
        await trio.testing.wait_all_tasks_blocked()
        # The server vanishes; nothing has run since, so the pool still holds the connection.
        server.sockets[0].shutdown(trio.socket.SHUT_RDWR)
        assert pool.count() == 1
        second = await open_on(pool, server)  # no error for the caller: a second connection is made
        assert pool.connections_opened == server.handshakes == 2
        await round_trip(second)
        with pytest.raises(trio.BrokenResourceError):
            await first.receive_some()
        assert pool.count() == 1


async def test_a_refusal_propagates_and_the_connection_stays_usable(authority):
    async with pool_and_server(authority) as (pool, server):
        with pytest.raises(HboneRefused) as refused:
            await open_on(pool, server, target=REFUSED_TARGET)
        assert refused.value.status == 401
        await round_trip(await open_on(pool, server))
        with pytest.raises(HboneRefused):
            await open_on(pool, server, target=REFUSED_TARGET)
        await round_trip(await open_on(pool, server))
        assert pool.connections_opened == server.handshakes == 1
        assert pool.count() == 1


async def test_a_failed_connect_propagates_and_the_next_open_dials_again(authority):
    async with pool_and_server(authority) as (pool, server):
        calls = 0

        async def refused() -> trio.abc.Stream:
            nonlocal calls
            calls += 1
            raise OSError(111, "Connection refused")

        with pytest.raises(OSError, match="Connection refused"):
            await pool.open_stream(KEY, refused, TARGET, None)
        assert pool.count() == 0 and pool.connections_opened == 0
        await round_trip(await open_on(pool, server))
        assert pool.connections_opened == 1 and calls == 1


# ---------------------------------------------------------------- idle and shutdown


async def test_an_idle_connection_closes_and_leaves_the_pool(authority, autojump_clock):
    async with pool_and_server(authority, idle_timeout=60.0) as (pool, server):
        stream = await open_on(pool, server)
        await trio.sleep(120)  # a stream is open: not idle
        assert pool.count() == 1
        await round_trip(stream)
        await trio.sleep(59)
        assert pool.count() == 1
        await trio.sleep(2)
        assert pool.count() == 0
        assert server.drivers[0].closed  # the server saw it end too
        await round_trip(await open_on(pool, server))  # a new one when needed again
        assert pool.connections_opened == 2


async def test_close_all_ends_every_connection_and_its_streams(authority):
    async with pool_and_server(authority) as (pool, server):
        open_streams = [await open_on(pool, server, key) for key in (KEY, ("pod-b", *KEY[1:]))]
        assert pool.count() == 2
        pool.close_all()
        for stream in open_streams:
            with pytest.raises(trio.BrokenResourceError):
                await stream.receive_some()
        await trio.testing.wait_all_tasks_blocked()
        assert pool.count() == 0
        assert all(driver.closed for driver in server.drivers)
