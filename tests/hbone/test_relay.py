"""The relay (hbone/relay.py) between real sockets: a TCP connection on each side, as a client app
and a server app would see them through the proxy, and an HBONE stream (real TLS, from
tests/ztunnel/test_hbone_io.py) in place of one of them. Bytes both ways with the counts metrics use,
half-close in both orders, a reset carried across as a reset (ECONNRESET, never a clean end), the
same on cancellation, and a large transfer intact."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import socket

import pytest
import trio
import trio.testing

from ca.authority import SigningAuthority
from hbone.driver import IncomingConnect
from hbone.relay import Counts, relay
from tests.hbone.test_driver import POD_IP, hbone_pair, read_all
from tests.ztunnel.pki import TD


async def tcp_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    """Two ends of one loopback TCP connection: (the connecting side, the accepted side)."""
    listener = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with listener:
        await listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        await client.connect(listener.getsockname())
        server, _ = await listener.accept()
    return trio.SocketStream(client), trio.SocketStream(server)


def reset_now(stream: trio.SocketStream) -> None:
    """Close with a TCP RST, as an app that crashed or gave up."""
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    stream.socket.close()


async def sees_reset(stream: trio.SocketStream) -> bool:
    """Whether the peer of ``stream`` reset the connection (rather than ending it cleanly)."""
    with trio.fail_after(1):
        try:
            while await stream.receive_some(65536):
                pass
        except trio.BrokenResourceError as exc:
            cause = exc.__cause__
            return isinstance(cause, OSError) and cause.errno == errno.ECONNRESET
    return False


@contextlib.asynccontextmanager
async def relayed():
    """A client app and a server app with a relay between them:
    client ─ tcp ─ (downstream) relay (upstream) ─ tcp ─ server. Yields (client, server, counts, done,
    finished): ``finished`` is set when relay returns, and ``done["error"]`` is then what it raised."""
    client, downstream = await tcp_pair()
    upstream, server = await tcp_pair()
    counts = Counts()
    done: dict[str, BaseException | None] = {}
    finished = trio.Event()

    async def run() -> None:
        try:
            await relay(downstream, upstream, counts)
            done["error"] = None
        except trio.BrokenResourceError as exc:
            done["error"] = exc
        finally:
            finished.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        try:
            yield client, server, counts, done, finished
        finally:
            nursery.cancel_scope.deadline = trio.current_time() + 1
        await client.aclose()
        await server.aclose()


async def test_bytes_both_ways_and_the_counts_follow_the_downstream(autojump_clock):
    async with relayed() as (client, server, counts, done, finished):
        await client.send_all(b"GET / HTTP/1.0\r\n\r\n")
        assert await server.receive_some(100) == b"GET / HTTP/1.0\r\n\r\n"
        await server.send_all(b"HTTP/1.0 200 OK\r\n\r\nhello")
        got = b""
        while len(got) < 24:
            got += await client.receive_some(100)
        assert got == b"HTTP/1.0 200 OK\r\n\r\nhello"
        await client.send_eof()
        assert await server.receive_some(100) == b""
        await server.send_eof()
        assert await client.receive_some(100) == b""
        await finished.wait()
    assert done == {"error": None}
    assert (counts.received, counts.sent) == (18, 24)  # received from the client, sent back to it


async def test_the_client_ends_first_and_the_server_goes_on(autojump_clock):
    async with relayed() as (client, server, counts, done, finished):
        await client.send_all(b"request")
        await client.send_eof()
        assert await read_all(server) == b"request"  # the EOF reached the server
        for _ in range(3):  # the other direction still works after the half-close
            await server.send_all(b"more ")
        await server.aclose()
        assert await read_all(client) == b"more more more "
        await finished.wait()
    assert done == {"error": None}
    assert (counts.received, counts.sent) == (7, 15)


async def test_the_server_ends_first_and_the_client_goes_on(autojump_clock):
    async with relayed() as (client, server, counts, done, finished):
        await server.send_all(b"banner")
        await server.send_eof()
        assert await read_all(client) == b"banner"
        await client.send_all(b"still talking")
        got = b""
        while len(got) < 13:
            got += await server.receive_some(100)
        assert got == b"still talking"
        await client.aclose()
        assert await read_all(server) == b""
        await finished.wait()
    assert done == {"error": None}
    assert (counts.received, counts.sent) == (13, 6)


@pytest.mark.parametrize("side", ["server", "client"])
async def test_a_reset_on_one_side_resets_the_other(side, autojump_clock):
    async with relayed() as (client, server, counts, done, finished):
        await client.send_all(b"ping")
        assert await server.receive_some(100) == b"ping"
        reset, other = (server, client) if side == "server" else (client, server)
        reset_now(reset)
        assert await sees_reset(other), "the reset must reach the other side as a reset, not a clean end"
        await finished.wait()
    assert isinstance(done["error"], trio.BrokenResourceError)
    assert counts.received == 4


async def test_a_reset_after_a_half_close_is_still_a_reset(autojump_clock):
    async with relayed() as (client, server, counts, done, finished):
        await client.send_eof()
        assert await server.receive_some(100) == b""
        await server.send_all(b"partial respo")
        assert await client.receive_some(100) == b"partial respo"
        reset_now(server)  # the server dies mid-response: the client must not take it as complete
        assert await sees_reset(client)
        await finished.wait()
    assert isinstance(done["error"], trio.BrokenResourceError)


async def test_cancelling_the_relay_resets_both_sides(autojump_clock):
    client, downstream = await tcp_pair()
    upstream, server = await tcp_pair()
    counts = Counts()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(relay, downstream, upstream, counts)
        await client.send_all(b"hello")
        assert await server.receive_some(100) == b"hello"
        nursery.cancel_scope.cancel()  # a policy change, or the pod went away
    assert await sees_reset(client)
    assert await sees_reset(server)
    await client.aclose()
    await server.aclose()


class CancelOnFailure(trio.abc.HalfCloseableStream):
    """A real socket stream whose receive failure also cancels ``scope`` on the spot: a reset that
    arrives just as a policy change closes the connection (an interleaving real traffic can hit)."""

    def __init__(self, inner: trio.SocketStream, scope: trio.CancelScope) -> None:
        self.inner, self.scope = inner, scope

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        try:
            return await self.inner.receive_some(max_bytes)
        except trio.BrokenResourceError:
            self.scope.cancel()
            raise

    async def send_all(self, data) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_failure_during_cancellation_is_no_exception_group(autojump_clock):
    """The proxy catches ``trio.BrokenResourceError`` from relay and lets its cancel scope take
    ``Cancelled``; an exception group escaping both would end every connection of the pod."""
    client, downstream = await tcp_pair()
    upstream, server = await tcp_pair()
    relayed_to_the_end = False
    with trio.CancelScope() as scope:  # the connection's scope, as ConnectionTracker.track gives it
        async with trio.open_nursery() as nursery:
            async def run() -> None:
                try:
                    await relay(downstream, CancelOnFailure(upstream, scope), Counts())
                except trio.BrokenResourceError:
                    pass

            nursery.start_soon(run)
            await trio.testing.wait_all_tasks_blocked()
            reset_now(server)
            await trio.sleep_forever()
        relayed_to_the_end = True
    assert scope.cancelled_caught and not relayed_to_the_end
    assert await sees_reset(client)
    await client.aclose()


async def test_a_large_transfer_arrives_intact_both_ways(autojump_clock):
    size = 32 * 1024 * 1024
    up, down = os.urandom(size), os.urandom(size // 2)
    async with relayed() as (client, server, counts, done, finished):
        digests = {}

        async def send(stream, data):
            await stream.send_all(data)
            await stream.send_eof()

        async def receive(stream, name):
            digest, n = hashlib.sha256(), 0
            while chunk := await stream.receive_some(1 << 20):
                digest.update(chunk)
                n += len(chunk)
            digests[name] = (n, digest.digest())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send, client, up)
            nursery.start_soon(send, server, down)
            nursery.start_soon(receive, server, "at the server")
            nursery.start_soon(receive, client, "at the client")
        await finished.wait()
    assert digests == {"at the server": (size, hashlib.sha256(up).digest()),
                       "at the client": (size // 2, hashlib.sha256(down).digest())}
    assert done == {"error": None}
    assert (counts.received, counts.sent) == (size, size // 2)


# ---------------------------------------------------------------- TCP on one side, HBONE on the other


@pytest.fixture(scope="module")
def authority() -> SigningAuthority:
    return SigningAuthority.self_signed(TD)


async def test_tcp_to_hbone_carries_bytes_and_half_close(authority):
    async def server_app(request: IncomingConnect) -> None:
        async with request.accept() as stream:
            request_bytes = await read_all(stream)
            await stream.send_all(b"got " + request_bytes)
            await stream.send_eof()

    async with hbone_pair(authority, server_app) as (hbone, _):
        tunnel = await hbone.open(f"{POD_IP}:8080", ("10.244.0.7", 40000))
        client, downstream = await tcp_pair()
        counts = Counts()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(relay, downstream, tunnel, counts)
            await client.send_all(b"hello")
            await client.send_eof()
            assert await read_all(client) == b"got hello"
        assert (counts.received, counts.sent) == (5, 9)
        assert tunnel.finished  # ended cleanly both ways: no reset
        await client.aclose()


async def test_an_hbone_reset_resets_the_tcp_client(authority):
    async def give_up(request: IncomingConnect) -> None:
        stream = request.accept()
        await stream.receive_some()
        await stream.aclose()  # unfinished: RST_STREAM

    async with hbone_pair(authority, give_up) as (hbone, _):
        tunnel = await hbone.open(f"{POD_IP}:8080", None)
        client, downstream = await tcp_pair()
        async with trio.open_nursery() as nursery:
            async def run() -> None:
                with pytest.raises(trio.BrokenResourceError, match="reset by the peer"):
                    await relay(downstream, tunnel, Counts())

            nursery.start_soon(run)
            await client.send_all(b"hello")
            assert await sees_reset(client)
        await client.aclose()


async def test_a_tcp_reset_resets_the_hbone_stream(authority):
    server_saw: list[str] = []
    server_done = trio.Event()

    async def server_app(request: IncomingConnect) -> None:
        stream = request.accept()
        try:
            await read_all(stream)
            server_saw.append("clean end")
        except trio.BrokenResourceError as exc:
            server_saw.append(str(exc))
        finally:
            server_done.set()

    async with hbone_pair(authority, server_app) as (hbone, _):
        tunnel = await hbone.open(f"{POD_IP}:8080", None)
        client, downstream = await tcp_pair()
        async with trio.open_nursery() as nursery:
            async def run() -> None:
                with pytest.raises(trio.BrokenResourceError):
                    await relay(downstream, tunnel, Counts())

            nursery.start_soon(run)
            await client.send_all(b"hello")
            await trio.testing.wait_all_tasks_blocked()
            reset_now(client)
        with trio.fail_after(2):
            await server_done.wait()
        assert len(server_saw) == 1 and "reset by the peer" in server_saw[0]
