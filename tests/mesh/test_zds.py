"""ZDS: the sans-IO agent connection as a transcript, then real SOCK_SEQPACKET sockets in tmp_path.

The socket tests run a ``ZdsServer`` and ``ZdsClient``s (or a raw socket playing the other side) in
one trio run, and hand real pipe fds through SCM_RIGHTS. They synchronise on the protocol itself
(the next request received, ``wait_acknowledged``) or on ``wait_all_tasks_blocked`` after a close,
never on a sleep; every wait is bounded by ``fail_after``.
"""

from __future__ import annotations

import array
import contextlib
import logging
import os
import socket
import stat
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing
from hypothesis import given, strategies as st

from mesh.api import zds_pb2
from mesh.zds import (
    MAX_MESSAGE_SIZE,
    AgentConnection,
    Phase,
    Workload,
    ZdsClient,
    ZdsConnectError,
    ZdsPeerClosed,
    ZdsProtocolError,
    ZdsServer,
    check_request,
    connect_zds,
    decode,
    receive_message,
    send_message,
)

BOUND = 5  # seconds: every wait in these tests is bounded


def info(name: str) -> zds_pb2.WorkloadInfo:
    return zds_pb2.WorkloadInfo(name=name, namespace="default", service_account=f"sa-{name}")


def kind(request: zds_pb2.WorkloadRequest) -> str | None:
    return request.WhichOneof("payload")


def uid_of(request: zds_pb2.WorkloadRequest) -> str:
    return getattr(request, kind(request)).uid


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def ack(error: str = "") -> zds_pb2.WorkloadResponse:
    return zds_pb2.WorkloadResponse(ack=zds_pb2.Ack(error=error))


# The sans-IO agent connection: no sockets.


def pods(*uids: str, generation: int = 1) -> dict[str, Workload]:
    return {uid: Workload(info(uid), (), generation) for uid in uids}


def hello(version=zds_pb2.V1) -> zds_pb2.ZdsHello:
    return zds_pb2.ZdsHello(version=version)


def replayed(state: dict[str, Workload]) -> AgentConnection:
    """A connection that has replayed ``state`` and had everything acknowledged."""
    conn = AgentConnection()
    conn.receive_hello(hello())
    while conn.phase is Phase.REPLAY:
        conn.next_request(state)
        conn.receive_response(ack())
    return conn


def test_replay_sends_every_pod_then_snapshot_sent_each_after_the_previous_ack():
    conn, state = AgentConnection(), pods("a", "b")
    assert conn.next_request(state) is None  # nothing before the hello
    conn.receive_hello(hello())
    first = conn.next_request(state)
    assert (first.kind, first.uid, uid_of(first.request)) == ("add", "a", "a")
    assert first.request.add.workload_info == info("a")
    assert conn.next_request(state) is None  # one request in flight at a time
    assert not conn.acknowledged("a", 1)
    conn.receive_response(ack())
    assert conn.acknowledged("a", 1)
    assert conn.next_request(state).uid == "b"
    conn.receive_response(ack())
    assert kind(conn.next_request(state).request) == "snapshot_sent"
    conn.receive_response(ack())
    assert conn.phase is Phase.LIVE and conn.next_request(state) is None


def test_live_changes_are_a_diff_against_what_the_ztunnel_was_told():
    conn = replayed(pods("a", "b"))
    state = pods("b") | pods("a", generation=2) | pods("c")  # a re-added, c new
    assert [conn.next_request(state).uid, conn.receive_response(ack()).uid] == ["a", "a"]
    assert conn.next_request(state).uid == "c"
    conn.receive_response(ack())
    del state["b"]
    removal = conn.next_request(state)
    assert (removal.kind, kind(removal.request), uid_of(removal.request)) == ("del", "del", "b")
    assert conn.receive_response(ack()).kind == "del"
    assert conn.next_request(state) is None


def test_a_pod_added_and_removed_between_two_sends_is_never_sent():
    conn = replayed({})
    assert conn.next_request(pods("a")) is not None
    assert conn.next_request({}) is None  # a's add is still in flight
    conn.receive_response(ack())
    assert conn.next_request({}).kind == "del"  # it was told about a: now it must drop it
    conn.receive_response(ack())
    assert conn.next_request({}) is None


def test_an_error_ack_leaves_the_pod_unacknowledged():
    conn = AgentConnection()
    conn.receive_hello(hello())
    conn.next_request(pods("a"))
    acked = conn.receive_response(ack("no netns"))
    assert (acked.kind, acked.uid, acked.error) == ("add", "a", "no netns")
    assert not conn.acknowledged("a", 1)


def test_a_rejection_holds_for_the_pod_as_sent_until_it_is_sent_again_or_removed():
    conn = replayed({})
    conn.next_request(pods("a"))
    conn.receive_response(ack("no netns"))
    assert conn.rejection("a", 1) == "no netns" and conn.rejection("b", 1) is None
    assert conn.rejection("a", 2) is None  # the pod changed since: not yet refused as it is now
    conn.next_request(pods("a", generation=2))  # sent again: no verdict yet
    assert conn.rejection("a", 2) is None
    conn.receive_response(ack("still no netns"))
    assert conn.rejection("a", 2) == "still no netns"
    assert conn.next_request({}).kind == "del"
    assert conn.rejection("a", 2) is None


@pytest.mark.parametrize(
    "steps, message",
    [
        pytest.param(["ack"], "unexpected ack none while awaiting ZdsHello", id="ack-before-hello"),
        pytest.param(["hello", "hello"], "unexpected hello while replaying", id="second-hello"),
        pytest.param(["hello", "ack"], "unexpected ack none while replaying", id="unsolicited-ack-in-replay"),
        pytest.param(["hello", "send", "ack", "send", "ack", "ack"], "unexpected ack none while live",
                     id="unsolicited-ack-live"),
        pytest.param(["hello", "send", "empty response"], "WorkloadResponse without an ack", id="no-ack"),
        pytest.param(["old hello"], "unsupported ZDS version 0", id="version"),
    ],
)
def test_input_out_of_turn_is_a_protocol_error_and_closes(steps, message):
    conn, state = AgentConnection(), pods("a")
    with pytest.raises(ZdsProtocolError, match=message):
        for step in steps:
            match step:
                case "hello":
                    conn.receive_hello(hello())
                case "old hello":
                    conn.receive_hello(hello(zds_pb2.NOT_USED))
                case "send":
                    assert conn.next_request(state) is not None
                case "ack":
                    conn.receive_response(ack())
                case "empty response":
                    conn.receive_response(zds_pb2.WorkloadResponse())
    assert conn.phase is Phase.CLOSED and conn.next_request(state) is None


@pytest.mark.parametrize(
    "request_, fds, problem",
    [
        (zds_pb2.WorkloadRequest(add=zds_pb2.AddWorkload(uid="a")), 2, None),
        (zds_pb2.WorkloadRequest(keep=zds_pb2.KeepWorkload(uid="a")), 0, None),
        (zds_pb2.WorkloadRequest(snapshot_sent=zds_pb2.SnapshotSent()), 0, None),
        (zds_pb2.WorkloadRequest(), 0, "no payload"),
        (zds_pb2.WorkloadRequest.FromString(b"\x22\x00"), 0, "no payload"),  # field 4: unknown here
        (zds_pb2.WorkloadRequest(add=zds_pb2.AddWorkload()), 1, "add has no uid"),
        (zds_pb2.WorkloadRequest(**{"del": zds_pb2.DelWorkload(uid="a")}), 1, "del must not carry file descriptors"),
        (zds_pb2.WorkloadRequest(snapshot_sent=zds_pb2.SnapshotSent()), 3, "must not carry"),
    ],
)
def test_check_request(request_, fds, problem):
    if problem is None:
        assert check_request(request_, fds) == kind(request_)
    else:
        with pytest.raises(ZdsProtocolError, match=problem):
            check_request(request_, fds)


@given(data=st.binary(max_size=64), fds=st.integers(0, 3))
def test_any_bytes_are_a_request_or_a_protocol_error(data, fds):
    try:
        check_request(decode(zds_pb2.WorkloadRequest, data), fds)
    except ZdsProtocolError:
        pass


# Framing over a real socketpair.


async def test_fds_travel_with_a_message_and_the_senders_copy_stays_open():
    left, right = trio.socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    r, w = os.pipe()
    with left, right:
        message = zds_pb2.WorkloadRequest(add=zds_pb2.AddWorkload(uid="a", workload_info=info("a")))
        await send_message(left, message, [r])
        with trio.fail_after(BOUND):
            received, [fd] = await receive_message(right, zds_pb2.WorkloadRequest, 4)
        assert received == message and fd != r
        os.write(w, b"through the pod's fd")
        assert os.read(fd, 64) == b"through the pod's fd"
        assert os.get_inheritable(fd) is False and fcntl_cloexec(fd)
        left.close()
        with pytest.raises(ZdsPeerClosed):
            await receive_message(right, zds_pb2.WorkloadRequest, 4)
    for each in (r, w, fd):
        os.close(each)


def fcntl_cloexec(fd: int) -> bool:
    import fcntl
    return bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)


def raw_fds(fds: list[int]) -> list[tuple[int, int, bytes]]:
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]


@pytest.mark.parametrize(
    "data, fd_count, max_fds, problem",
    [
        pytest.param(b"\xff\xff\xff", 1, 1, "does not parse", id="garbage"),
        pytest.param(b"\x0a\x00", 1, 0, "more file descriptors than the 0 allowed", id="fds-not-allowed"),
        pytest.param(b"\x0a\x00", 3, 1, "more file descriptors than the 1 allowed", id="too-many-fds"),
        pytest.param(b"\x0a\x00", 2, 1, "more file descriptors than the 1 allowed", id="one-too-many-fds"),
        pytest.param(b"\x0a" * (MAX_MESSAGE_SIZE + 1), 1, 1, "truncated", id="too-long"),
    ],
)
async def test_a_bad_datagram_is_a_protocol_error_and_its_fds_are_closed(data, fd_count, max_fds, problem):
    left, right = trio.socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    r, w = os.pipe()
    with left, right:
        before = open_fds()
        await left.sendmsg([data], raw_fds([r] * fd_count))
        with trio.fail_after(BOUND), pytest.raises(ZdsProtocolError, match=problem):
            await receive_message(right, zds_pb2.WorkloadResponse, max_fds)
        assert open_fds() == before
    os.close(r)
    os.close(w)


async def test_an_empty_message_cannot_be_sent():
    left, right = trio.socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with left, right, pytest.raises(ValueError, match="empty ZdsHello"):
        await send_message(left, zds_pb2.ZdsHello())


# Server and client over a Unix socket in tmp_path.


@contextlib.asynccontextmanager
async def serving(path, **options) -> AsyncIterator[ZdsServer]:
    server = ZdsServer(path, **options)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        try:
            yield server
        finally:
            await server.aclose()


@pytest.fixture
def path(tmp_path):
    return tmp_path / "zds.sock"


async def receive(conn: ZdsClient) -> tuple[zds_pb2.WorkloadRequest, list[int]]:
    with trio.fail_after(BOUND):
        return await anext(conn)


async def receive_snapshot(conn: ZdsClient) -> list[tuple[str, int]]:
    """Ack requests up to and including SnapshotSent; (uid, fd count) of each add, fds closed."""
    adds = []
    while True:
        request, fds = await receive(conn)
        for fd in fds:
            os.close(fd)
        await conn.ack()
        if kind(request) == "snapshot_sent":
            return adds
        assert kind(request) == "add"
        adds.append((request.add.uid, len(fds)))


async def wait_acknowledged(server: ZdsServer, uid: str) -> None:
    with trio.fail_after(BOUND):
        await server.wait_acknowledged(uid)


def pipes(count: int) -> list[tuple[int, int]]:
    return [os.pipe() for _ in range(count)]


async def test_the_pods_fds_really_reach_ztunnel(path):
    [(r, w)] = pipes(1)
    async with serving(path) as server:
        await server.add("a", info("a"), [r])  # the server owns r now
        async with connect_zds(path) as conn:
            request, [fd] = await receive(conn)
            assert (kind(request), request.add.uid, request.add.workload_info) == ("add", "a", info("a"))
            os.write(w, b"hello pod")
            assert os.read(fd, 64) == b"hello pod"
            os.close(fd)
            await conn.ack()
            await wait_acknowledged(server, "a")
    os.close(w)


async def test_the_socket_replaces_a_stale_one_is_private_and_is_removed_on_close(path):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stale.bind(str(path))
    stale.close()
    with pytest.raises(ZdsConnectError, match=str(path)):  # a socket file nobody listens on
        async with connect_zds(path):
            pass
    async with serving(path):
        assert stat.S_ISSOCK(path.stat().st_mode) and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not path.exists()


async def test_a_file_that_is_not_a_socket_is_left_alone(path):
    path.write_text("not a socket")
    with pytest.raises(FileExistsError, match="not a socket"):
        await ZdsServer(path).serve()
    assert path.read_text() == "not a socket"


async def test_connecting_when_nobody_listens_names_the_path(path):
    with pytest.raises(ZdsConnectError, match=f"no ZDS server to connect to at {path}"):
        async with connect_zds(path):
            pass


async def test_a_ztunnel_that_connects_gets_every_pod_with_its_fds_then_snapshot_sent(path):
    pairs = pipes(2)
    async with serving(path) as server:
        await server.add("a", info("a"), [pairs[0][0]])
        await server.add("b", info("b"), [pairs[1][0]])
        assert not server.connected and not server.acknowledged("a")
        async with connect_zds(path) as conn:
            assert await receive_snapshot(conn) == [("a", 1), ("b", 1)]
            await wait_acknowledged(server, "a")
            await wait_acknowledged(server, "b")
            assert server.connected
            await server.add("c", info("c"))  # the next request is c: nothing came after SnapshotSent
            request, fds = await receive(conn)
            assert (kind(request), request.add.uid, fds) == ("add", "c", [])
            await conn.ack()
            await wait_acknowledged(server, "c")
    for _, w in pairs:
        os.close(w)


async def test_live_changes_then_a_reconnect_replays_the_current_state(path):
    (ra, wa), (rb, wb) = pipes(2)
    async with serving(path) as server:
        await server.add("a", info("a"), [ra])
        async with connect_zds(path) as conn:
            assert await receive_snapshot(conn) == [("a", 1)]
            await server.add("b", info("b"), [rb])
            request, [fd] = await receive(conn)
            assert (kind(request), request.add.uid) == ("add", "b")
            os.close(fd)
            assert not server.acknowledged("b")
            await conn.ack()
            await wait_acknowledged(server, "b")

            await server.remove("a")
            assert not server.acknowledged("a")
            request, fds = await receive(conn)
            assert (kind(request), uid_of(request), fds) == ("del", "a", [])
            await conn.ack()
            # The server closed its copy of a's read end and ztunnel's was closed above: nobody reads.
            with pytest.raises(BrokenPipeError):
                os.write(wa, b"x")
        await trio.testing.wait_all_tasks_blocked()
        assert not server.connected and not server.acknowledged("b")

        async with connect_zds(path) as conn:
            request, [fd] = await receive(conn)
            os.close(fd)
            assert (kind(request), request.add.uid) == ("add", "b")
            assert server.connected and not server.acknowledged("b")  # reset until replayed
            await conn.ack()
            await wait_acknowledged(server, "b")
            request, fds = await receive(conn)
            assert kind(request) == "snapshot_sent" and fds == []
            await conn.ack()
    os.close(wa)
    os.close(wb)


async def test_adding_a_pod_again_replaces_it_and_closes_the_old_fds(path):
    (r1, w1), (r2, w2) = pipes(2)
    async with serving(path) as server:
        await server.add("a", info("a"), [r1])
        async with connect_zds(path) as conn:
            assert await receive_snapshot(conn) == [("a", 1)]
            await wait_acknowledged(server, "a")
            await server.add("a", info("a2"), [r2])
            assert not server.acknowledged("a")
            with pytest.raises(BrokenPipeError):
                os.write(w1, b"x")
            request, [fd] = await receive(conn)
            assert request.add.workload_info.name == "a2"
            os.close(fd)
            await conn.ack()
            await wait_acknowledged(server, "a")
    os.close(w1)
    os.close(w2)


async def test_an_error_ack_is_logged_and_leaves_the_pod_unacknowledged(path, caplog):
    async with serving(path) as server:
        await server.add("a", info("a"))
        await server.add("b", info("b"))
        async with connect_zds(path) as conn:
            request, _ = await receive(conn)
            await conn.ack("cannot enter the netns")
            request, _ = await receive(conn)
            await conn.ack()
            request, _ = await receive(conn)  # SnapshotSent: both acks were handled
            assert kind(request) == "snapshot_sent"
            await conn.ack()
            await wait_acknowledged(server, "b")
            assert not server.acknowledged("a")
    [record] = [r for r in caplog.records if r.name == "ambient.zds" and r.levelno == logging.WARNING]
    assert "pod a" in record.getMessage() and "cannot enter the netns" in record.getMessage()


async def test_a_rejected_pod_shows_its_error_until_a_later_add_is_acknowledged(path):
    async with serving(path) as server:
        await server.add("a", info("a"))
        async with connect_zds(path) as conn:
            await receive(conn)
            await conn.ack("cannot enter the netns")
            with trio.fail_after(BOUND):
                while server.rejection("a") is None:
                    await server.changed.wait()
            assert server.rejection("a") == "cannot enter the netns" and not server.acknowledged("a")
            assert kind((await receive(conn))[0]) == "snapshot_sent"
            await conn.ack()
            await server.add("a", info("a"))  # the agent retries
            request, _ = await receive(conn)
            assert request.add.uid == "a"
            await conn_ack_and_wait(conn, server, "a")
            assert server.rejection("a") is None


async def test_a_socket_path_longer_than_sun_path_serves_end_to_end(tmp_path):
    path = tmp_path / ("deep-state-directory-" * 5) / "zds.sock"
    path.parent.mkdir()
    assert len(os.fsencode(path)) > 107  # sockaddr_un cannot hold it
    [(r, w)] = pipes(1)
    before = open_fds()
    async with serving(path) as server:
        assert stat.S_ISSOCK(path.stat().st_mode)
        await server.add("a", info("a"), [r])
        async with connect_zds(path) as conn:
            request, [fd] = await receive(conn)
            assert (kind(request), request.add.uid) == ("add", "a")
            os.close(fd)
            await conn_ack_and_wait(conn, server, "a")
    assert not path.exists()
    assert open_fds() == before - 1  # the server closed r; the directory fds were closed too
    os.close(w)


async def test_the_client_answers_a_malformed_request_with_an_error_and_carries_on(path):
    """A raw socket plays the node agent and sends what a real one never would."""
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    r, w = os.pipe()
    received = []
    with listener:
        await listener.bind(str(path))
        listener.listen(1)
        async with trio.open_nursery() as nursery:
            async def ztunnel():
                async with connect_zds(path) as conn:
                    async for request, fds in conn:
                        received.append((kind(request), len(fds)))
                        for fd in fds:
                            os.close(fd)
                        await conn.ack()
            nursery.start_soon(ztunnel)
            with trio.fail_after(BOUND):
                agent, _ = await listener.accept()
            with agent:
                hello_, _ = await receive_message(agent, zds_pb2.ZdsHello, 0)
                assert hello_.version == zds_pb2.V1

                async def answer_to(data: bytes, fds=()) -> str:
                    await agent.sendmsg([data], raw_fds(list(fds)) if fds else [])
                    with trio.fail_after(BOUND):
                        response, _ = await receive_message(agent, zds_pb2.WorkloadResponse, 0)
                    return response.ack.error

                assert "does not parse" in await answer_to(b"\xff\xff\xff")
                assert "no payload" in await answer_to(b"\x22\x00")  # field 4: no kind ztunnel knows
                assert "no payload" in await answer_to(b"\x30\x07")  # only an unknown varint field 6
                assert "truncated" in await answer_to(b"\x0a" * (MAX_MESSAGE_SIZE + 1))
                delete = zds_pb2.WorkloadRequest(**{"del": zds_pb2.DelWorkload(uid="a")})
                assert "must not carry file descriptors" in await answer_to(delete.SerializeToString(), [r])
                os.close(r)
                with pytest.raises(BrokenPipeError):  # the client closed the copy it was sent
                    os.write(w, b"x")
                assert received == []
                add = zds_pb2.WorkloadRequest(add=zds_pb2.AddWorkload(uid="b"))
                assert await answer_to(add.SerializeToString()) == ""
                assert received == [("add", 0)]
            # The agent closed: the client's iteration ends and its task returns.
    os.close(w)


async def test_a_garbage_hello_closes_that_connection_and_the_server_serves_the_next(path, caplog):
    async with serving(path) as server:
        await server.add("a", info("a"))
        for first in (b"garbage", ack().SerializeToString()):  # not a ZdsHello; a response, not a hello
            raw = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            with raw:
                await raw.connect(str(path))
                await raw.send(first)
                with trio.fail_after(BOUND):
                    assert await raw.recv(100) == b""  # closed by the server
        assert not server.connected
        async with connect_zds(path) as conn:
            assert await receive_snapshot(conn) == [("a", 0)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("ZdsHello does not parse" in m for m in warnings)
    assert any("unsupported ZDS version 0" in m for m in warnings)


async def test_a_second_ztunnel_replaces_the_first(path):
    async with serving(path) as server, contextlib.AsyncExitStack() as stack:
        await server.add("a", info("a"))
        async with connect_zds(path) as first:
            assert await receive_snapshot(first) == [("a", 0)]
            await wait_acknowledged(server, "a")
            second = await stack.enter_async_context(connect_zds(path))
            request, _ = await receive(second)
            assert request.add.uid == "a"
            assert not server.acknowledged("a")  # the second has not acked yet
            await second.ack()
            assert kind((await receive(second))[0]) == "snapshot_sent"
            await second.ack()
            with trio.fail_after(BOUND), pytest.raises(StopAsyncIteration):
                await anext(first)  # closed by the server
            await server.add("b", info("b"))
            request, _ = await receive(second)
            assert request.add.uid == "b"
            await conn_ack_and_wait(second, server, "b")
            assert server.connected


async def conn_ack_and_wait(conn: ZdsClient, server: ZdsServer, uid: str) -> None:
    await conn.ack()
    await wait_acknowledged(server, uid)


async def test_a_ztunnel_that_leaves_mid_replay_or_never_acks_is_dropped(path, caplog, autojump_clock):
    async with serving(path, ack_timeout=10) as server:
        await server.add("a", info("a"))
        await server.add("b", info("b"))
        async with connect_zds(path) as conn:
            request, _ = await receive(conn)
            assert request.add.uid == "a"
        await trio.testing.wait_all_tasks_blocked()
        assert not server.connected  # left without acking: the server waits for the next one

        raw = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)  # a ztunnel that never acks
        with raw:
            await raw.connect(str(path))
            await send_message(raw, zds_pb2.ZdsHello(version=zds_pb2.V1))
            with trio.fail_after(BOUND):
                request, _ = await receive_message(raw, zds_pb2.WorkloadRequest, 1)
            assert request.add.uid == "a"
            start = trio.current_time()
            with trio.fail_after(60), pytest.raises(ZdsPeerClosed):
                await receive_message(raw, zds_pb2.WorkloadRequest, 1)
            assert trio.current_time() - start == pytest.approx(10)
        assert not server.connected
        async with connect_zds(path) as conn:
            assert await receive_snapshot(conn) == [("a", 0), ("b", 0)]
    assert any("no Ack for add a within 10.0 s" in r.getMessage() for r in caplog.records)


async def test_the_client_enforces_one_ack_per_request(path):
    async with serving(path) as server:
        await server.add("a", info("a"))
        async with connect_zds(path) as conn:
            with pytest.raises(RuntimeError, match="no WorkloadRequest awaits an ack"):
                await conn.ack()
            await receive(conn)
            with pytest.raises(RuntimeError, match="ack the previous WorkloadRequest"):
                await anext(conn)
            await conn.ack()
            await wait_acknowledged(server, "a")


async def test_wait_acknowledged_of_a_pod_not_held_raises(path):
    async with serving(path) as server:
        with pytest.raises(KeyError):
            await server.wait_acknowledged("nobody")


async def test_a_full_cycle_leaks_no_fd(path):
    before = open_fds()
    (ra, wa), (rb, wb) = pipes(2)
    async with serving(path) as server:
        await server.add("a", info("a"), [ra])
        await server.add("b", info("b"), [rb])
        async with connect_zds(path) as conn:
            assert await receive_snapshot(conn) == [("a", 1), ("b", 1)]
            await server.remove("a")
            request, fds = await receive(conn)
            assert (kind(request), fds) == ("del", [])
            await conn.ack()
        async with connect_zds(path) as conn:
            assert await receive_snapshot(conn) == [("b", 1)]
    # aclose closed the server's copy of b's read end too.
    assert not path.exists()
    os.close(wa)
    os.close(wb)
    assert open_fds() == before


async def test_after_close_the_server_refuses_pods(path):
    [(r, w)] = pipes(1)
    async with serving(path) as server:
        await server.add("a", info("a"), [r])
    with pytest.raises(BrokenPipeError):  # closing the server closed r
        os.write(w, b"x")
    os.close(w)
    with pytest.raises(RuntimeError, match="closed"):
        await server.add("b", info("b"))
    assert server.workloads == {} and not server.connected
