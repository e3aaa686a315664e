"""Fuzz mesh.zds, the node agent's and ztunnel's messages over their Unix SOCK_SEQPACKET socket.

The promises (the module docstring): a received datagram that was truncated, does not parse, or
brings more fds than the caller allows is ``ZdsProtocolError``, after closing every fd that came
with it; an empty one is ``ZdsPeerClosed``; ``check_request`` names what ztunnel cannot use;
``AgentConnection`` raises ``ZdsProtocolError`` (and ends CLOSED) on anything the peer may not send
now; ``ZdsClient`` answers a request it cannot use with an error Ack and goes on.

Datagrams are sent over a real socketpair with real fds (of a pipe made for each), so the fds'
fate is checked by looking for that pipe among this process's open fds.
"""

from __future__ import annotations

import array
import os
import socket

import trio
from hypothesis import example, given, strategies as st

from mesh.api import zds_pb2
from mesh.zds import (
    MAX_FDS,
    MAX_MESSAGE_SIZE,
    AgentConnection,
    Phase,
    Workload,
    ZdsClient,
    ZdsPeerClosed,
    ZdsProtocolError,
    check_request,
    close_fds,
    decode,
    receive_message,
)
from tests.fuzz import fuzz_settings
from tests.fuzz.protobufs import messages, wire_bytes

# A peer's datagram: protobuf-shaped bytes, a message that decodes, bytes at random; now and then
# one longer than a datagram may be.
datagrams = (wire_bytes() | messages(zds_pb2.WorkloadRequest).map(lambda m: m.SerializeToString())
             | st.binary(min_size=1, max_size=64))
payloads = datagrams | st.just(b"") | st.integers(MAX_MESSAGE_SIZE - 1, MAX_MESSAGE_SIZE + 100).map(bytes)


def send_datagram(sock: socket.socket, data: bytes, fd_count: int) -> str:
    """Send ``data`` with ``fd_count`` copies of a fresh pipe's read end, closing our own ends; returns
    the pipe's name in /proc (``pipe:[inode]``), so that a copy left open anywhere can be found."""
    read_end, write_end = os.pipe()
    try:
        name = os.readlink(f"/proc/self/fd/{read_end}")
        ancdata = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [read_end] * fd_count).tobytes())]
        sock.sendmsg([data], ancdata if fd_count else [])
    finally:
        close_fds([read_end, write_end])
    return name


def left_open(names: set[str]) -> list[int]:
    """This process's fds that are one of the pipes ``names``: by name, not by count, since other
    threads of the test session (gRPC's) open and close fds of their own meanwhile."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") in names:
                found.append(int(fd))
        except OSError:
            continue  # closed since the listing (the listing's own fd, among others)
    return found


# ---------------------------------------------------------------- parsing


@fuzz_settings(500)
@given(data=payloads | wire_bytes(12), fd_count=st.integers(0, MAX_FDS + 1))
@example(data=b"\x0a\x00", fd_count=0)  # add, with no uid
@example(data=b"\x22\x00", fd_count=0)  # the reserved field 4 only: no payload this ztunnel knows
def test_a_request_is_usable_or_a_protocol_error(data: bytes, fd_count: int) -> None:
    try:
        kind = check_request(decode(zds_pb2.WorkloadRequest, data), fd_count)
    except ZdsProtocolError as exc:
        assert str(exc)
        return
    assert kind in ("add", "keep", "del", "snapshot_sent")
    assert fd_count == 0 or kind == "add"


@fuzz_settings(300)
@given(data=payloads, message_type=st.sampled_from([zds_pb2.ZdsHello, zds_pb2.WorkloadResponse,
                                                     zds_pb2.WorkloadRequest]))
def test_any_bytes_decode_or_are_a_protocol_error(data: bytes, message_type: type) -> None:
    try:
        message = decode(message_type, data)
    except ZdsProtocolError as exc:
        assert message_type.DESCRIPTOR.name in str(exc)
    else:
        assert isinstance(message, message_type)


# ---------------------------------------------------------------- one datagram over a socket


@fuzz_settings(300)
@given(data=payloads, fd_count=st.integers(0, MAX_FDS + 2), max_fds=st.sampled_from([0, 1, 3, MAX_FDS]))
@example(data=b"", fd_count=2, max_fds=MAX_FDS)  # an empty datagram with fds
@example(data=b"\x08\x01", fd_count=4, max_fds=3)  # more fds than allowed
@example(data=bytes(MAX_MESSAGE_SIZE + 1), fd_count=1, max_fds=1)  # truncated
def test_a_datagram_is_a_message_or_an_error_and_no_fd_leaks(data: bytes, fd_count: int, max_fds: int) -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with left, right:
        pipe = send_datagram(left, data, fd_count)

        async def receive() -> None:
            sock = trio.socket.from_stdlib_socket(right)
            try:
                message, fds = await receive_message(sock, zds_pb2.WorkloadRequest, max_fds)
            except ZdsPeerClosed:
                assert not data and not fd_count
            except ZdsProtocolError as exc:
                assert str(exc)
            else:
                assert isinstance(message, zds_pb2.WorkloadRequest) and data
                assert len(fds) == fd_count <= max_fds
                close_fds(fds)
            finally:
                sock.detach()

        trio.run(receive)
        assert not left_open({pipe}), "an fd that came with the datagram was left open"


# ---------------------------------------------------------------- the agent's side of a connection


agent_inputs = st.lists(
    st.tuples(st.sampled_from(["hello", "response", "next"]),
              st.binary(max_size=8) | wire_bytes(3) | st.sampled_from([b"\x08\x01", b"\x0a\x00", b"\x0a\x02\x0a\x00"]),
              st.sets(st.sampled_from(["uid-1", "uid-2", "uid-3"]))),
    max_size=12)


@fuzz_settings(400)
@given(inputs=agent_inputs)
@example(inputs=[("hello", b"\x08\x01", set()), ("next", b"", {"uid-1"}), ("response", b"\x0a\x00", set()),
                 ("next", b"", set()), ("response", b"\x0a\x00", set()), ("next", b"", set()),
                 ("response", b"\x0a\x02\x0a\x00", set())])
def test_the_agent_takes_any_answer_or_ends_with_a_protocol_error(inputs: list[tuple[str, bytes, set[str]]]) -> None:
    agent = AgentConnection()
    info = zds_pb2.WorkloadInfo(name="pod", namespace="ns", service_account="sa")
    for step, data, uids in inputs:
        try:
            if step == "hello":
                agent.receive_hello(decode(zds_pb2.ZdsHello, data))
            elif step == "response":
                acked = agent.receive_response(decode(zds_pb2.WorkloadResponse, data))
                assert acked.kind in ("add", "del", "snapshot_sent") and isinstance(acked.error, str)
            else:
                pods = {uid: Workload(info, (), generation) for generation, uid in enumerate(sorted(uids), 1)}
                outgoing = agent.next_request(pods)
                if outgoing is not None:
                    assert check_request(outgoing.request, len(outgoing.fds)) == outgoing.kind
        except ZdsProtocolError as exc:
            assert str(exc)
            if agent.phase is not Phase.CLOSED:
                # A datagram that does not parse is the driver's to drop; the agent saw nothing.
                assert "does not parse" in str(exc), f"{exc} left the agent {agent.phase}"
                continue
            return


# ---------------------------------------------------------------- ztunnel's side of a connection


@fuzz_settings(200)
@given(sent=st.lists(st.tuples(datagrams.filter(bool), st.integers(0, 3)), max_size=5))
def test_the_client_yields_usable_requests_and_answers_the_rest(sent: list[tuple[bytes, int]]) -> None:
    """Every datagram gets exactly one Ack: an error for one ztunnel cannot use, the caller's for the rest."""
    agent, ztunnel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with agent, ztunnel:
        pipes = {send_datagram(agent, data, fd_count) for data, fd_count in sent}
        agent.shutdown(socket.SHUT_WR)
        yielded: list[str] = []

        async def serve() -> None:
            client = ZdsClient(trio.socket.from_stdlib_socket(ztunnel), "fuzz")
            try:
                async for request, fds in client:
                    yielded.append(check_request(request, len(fds)))
                    close_fds(fds)
                    await client.ack()
            finally:
                client._sock.detach()

        trio.run(serve)
        assert not left_open(pipes), "an fd that came with a request was left open"
        agent.setblocking(False)
        acks = []
        while True:
            try:
                acks.append(decode(zds_pb2.WorkloadResponse, agent.recv(MAX_MESSAGE_SIZE)))
            except BlockingIOError:
                break
        assert len(acks) == len(sent)
        assert sum(not ack.ack.error for ack in acks) == len(yielded)
