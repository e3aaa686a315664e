"""The agent's CNI socket in process: the mode and the stale-socket rule, then each bound a peer could
make us spend (request size, connections, time to send, time to decide), over a real Unix socket."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path

import pytest
import trio

from bpf.cni_protocol import ERR_DECODE, ERR_TRY_AGAIN_LATER, MAX_REQUEST_BYTES, AddPod, DeletePod, Reply
from bpf.cni_server import HANDLE_TIMEOUT, MAX_CONNECTIONS, READ_TIMEOUT, CniServer

ENV = {"CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/x", "CNI_IFNAME": "eth0",
       "CNI_ARGS": "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web"}


@pytest.fixture
def socket_path():
    directory = Path(tempfile.mkdtemp(prefix="cnisrv-"))
    yield directory / "run" / "cni.sock"
    shutil.rmtree(directory, ignore_errors=True)


def request(command: str = "ADD") -> bytes:
    return json.dumps({"command": command, "env": {**ENV, "CNI_COMMAND": command},
                       "config": json.dumps({"cniVersion": "1.0.0"})}).encode()


async def ask(path: Path, data: bytes) -> tuple[int, str]:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with sock:
        await sock.connect(str(path))
        view = memoryview(data)
        while view:
            view = view[await sock.send(view):]
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := await sock.recv(65536):
            answer += chunk
    status, _, out = answer.decode().partition("\n")
    return int(status), out


OK = Reply(0, "ok")


class Handler:
    def __init__(self, reply: Reply = OK, forever: bool = False) -> None:
        self.reply, self.forever = reply, forever
        self.seen: list[AddPod | DeletePod] = []

    async def __call__(self, decision: AddPod | DeletePod) -> Reply:
        self.seen.append(decision)
        if self.forever:
            await trio.sleep_forever()
        return self.reply


async def test_the_socket_is_private_and_each_decision_reaches_the_handler(nursery, socket_path):
    handler = Handler()
    server = CniServer(socket_path, handler)
    await nursery.start(server.serve)
    assert stat.S_IMODE(os.stat(socket_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(socket_path.parent).st_mode) == 0o700
    assert await ask(socket_path, request("ADD")) == (0, "ok")
    assert await ask(socket_path, request("DEL")) == (0, "ok")
    assert await ask(socket_path, request("CHECK")) == (0, "")  # decided without the handler
    assert [type(d) for d in handler.seen] == [AddPod, DeletePod]


async def test_a_stale_socket_is_replaced_and_removed_on_exit_but_another_file_is_refused(socket_path):
    socket_path.parent.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(socket_path))
    stale.close()
    async with trio.open_nursery() as nursery:
        await nursery.start(CniServer(socket_path, Handler()).serve)
        assert await ask(socket_path, request()) == (0, "ok")
        nursery.cancel_scope.cancel()
    assert not socket_path.exists()
    socket_path.write_text("not a socket")
    with pytest.raises(FileExistsError, match="not a socket"):
        await CniServer(socket_path, Handler()).serve()
    assert socket_path.read_text() == "not a socket"


async def test_a_request_over_the_bound_is_refused_unread(nursery, socket_path):
    handler = Handler()
    await nursery.start(CniServer(socket_path, handler).serve)
    status, out = await ask(socket_path, b" " * (MAX_REQUEST_BYTES + 1))  # all of it read: no reset
    assert status == 1 and json.loads(out)["code"] == ERR_DECODE and "too large" in json.loads(out)["msg"]
    assert handler.seen == []


async def test_a_peer_that_never_finishes_its_request_is_closed_after_the_read_timeout(
        nursery, socket_path, autojump_clock):
    await nursery.start(CniServer(socket_path, Handler()).serve)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with sock:
        await sock.connect(str(socket_path))
        await sock.send(request()[:10])
        started = trio.current_time()
        assert await sock.recv(100) == b""  # closed, no answer
        assert trio.current_time() - started >= READ_TIMEOUT


async def test_a_handler_past_its_deadline_is_answered_try_again_later(nursery, socket_path, autojump_clock):
    await nursery.start(CniServer(socket_path, Handler(forever=True)).serve)
    status, out = await ask(socket_path, request())
    error = json.loads(out)
    assert (status, error["code"], error["cniVersion"]) == (1, ERR_TRY_AGAIN_LATER, "1.0.0")
    assert "shop/web" in error["details"] and f"{HANDLE_TIMEOUT:.0f} s" in error["details"]


async def test_connections_over_the_bound_are_reset(nursery, socket_path):
    server = CniServer(socket_path, Handler())
    await nursery.start(server.serve)
    held = []
    try:
        for _ in range(MAX_CONNECTIONS):
            sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            await sock.connect(str(socket_path))
            held.append(sock)
        while server.active < MAX_CONNECTIONS:
            await trio.lowlevel.checkpoint()
        extra = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with extra:
            await extra.connect(str(socket_path))
            try:
                assert await extra.recv(100) == b""
            except ConnectionResetError:
                pass
        assert server.active == MAX_CONNECTIONS
    finally:
        for sock in held:
            sock.close()
    while server.active:  # each held connection ends when its peer goes
        await trio.lowlevel.checkpoint()
    assert await ask(socket_path, request()) == (0, "ok")
