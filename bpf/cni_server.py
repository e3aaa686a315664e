"""The node agent's CNI socket: the trio driver around ``bpf.cni_protocol``.

One connection per plugin invocation: the plugin writes its request and shuts its write side, the
server reads to EOF (at most ``MAX_REQUEST_BYTES``, within ``READ_TIMEOUT``), decides with
``parse_request``, lets the agent act on an ``AddPod``/``DeletePod`` (``handle``, within
``HANDLE_TIMEOUT``, shorter than the plugin's own 30 s so that the plugin prints our error rather
than its timeout), writes ``<status>\\n<stdout>`` and closes.

The socket is the node's root-only door into pod enrolment: mode 0600 before ``listen()``, in a
directory the caller owns; at most ``MAX_CONNECTIONS`` at once (the runtime starts pods in parallel,
but a kubelet runs a few dozen sandbox operations at most); a stale socket file is replaced, any other
file at the path is refused.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from bpf.cni_protocol import (
    ERR_TRY_AGAIN_LATER,
    MAX_REQUEST_BYTES,
    AddPod,
    DeletePod,
    Reply,
    error_reply,
    parse_request,
)
from mesh.concurrency import accept_loop
from mesh.errors import describe
from mesh.zds import remove_stale_socket

log = logging.getLogger("ambient.nodeagent.cni")

DEFAULT_SOCKET = Path("/var/run/ambient/cni.sock")  # the plugin's default too (bpf/cni/ambient-cni.c)
SOCKET_MODE = 0o600
MAX_CONNECTIONS = 64  # concurrent plugin invocations; more are reset (the runtime retries the sandbox)
READ_TIMEOUT = 5.0  # the plugin writes its whole request at once: a slow one is not our plugin
HANDLE_TIMEOUT = 25.0  # the API lookup and the attach; under the plugin's default AGENT_TIMEOUT_S (30 s)
WRITE_TIMEOUT = 5.0
_BACKLOG = 64

Handler = Callable[[AddPod | DeletePod], Awaitable[Reply]]


class CniServer:
    def __init__(self, socket_path: Path, handle: Handler) -> None:
        self.socket_path = socket_path
        self.handle = handle
        self.active = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind (0600, before listen), report started, serve until cancelled; unlink the socket after."""
        self.socket_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        remove_stale_socket(self.socket_path, "CNI")
        listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        inode = None
        try:
            try:
                await listener.bind(str(self.socket_path))
            except OSError as exc:
                raise OSError(exc.errno, f"cannot bind the CNI socket {self.socket_path}: {exc.strerror}") from exc
            inode = os.stat(self.socket_path).st_ino
            os.chmod(self.socket_path, SOCKET_MODE)  # before listen(): until then a connect is refused
            listener.listen(_BACKLOG)
            log.info("CNI requests on %s", self.socket_path)
            task_status.started()
            async with trio.open_nursery() as nursery:
                await accept_loop(listener, self._connection, nursery, "CNI socket", self._admit)
        finally:
            listener.close()
            if inode is not None:
                try:
                    if self.socket_path.lstat().st_ino == inode:
                        self.socket_path.unlink()
                except FileNotFoundError:
                    pass

    def _admit(self, _sock: trio.socket.SocketType, _peer: object) -> bool:
        if self.active >= MAX_CONNECTIONS:
            log.warning("CNI socket: %d requests in progress; refusing one", self.active)
            return False
        self.active += 1
        return True

    async def _connection(self, sock: trio.socket.SocketType, _peer: object) -> None:
        try:
            with trio.move_on_after(READ_TIMEOUT) as reading:
                data = await _read_to_eof(sock, MAX_REQUEST_BYTES + 1)
            if reading.cancelled_caught:
                log.warning("CNI socket: no whole request within %.0f s; closing", READ_TIMEOUT)
                return
            reply = await self._answer(data)
            with trio.move_on_after(WRITE_TIMEOUT):
                await _send_all(sock, reply.encode())
        except OSError as exc:
            log.warning("CNI socket: %s", describe(exc))
        finally:
            self.active -= 1
            sock.close()

    async def _answer(self, data: bytes) -> Reply:
        decision = parse_request(data)
        if isinstance(decision, Reply):
            return decision
        with trio.move_on_after(HANDLE_TIMEOUT):
            return await self.handle(decision)
        return error_reply(decision.version, ERR_TRY_AGAIN_LATER, "the node agent timed out",
                           f"pod {decision.namespace}/{decision.name}, after {HANDLE_TIMEOUT:.0f} s")


async def _read_to_eof(sock: trio.socket.SocketType, limit: int) -> bytes:
    chunks, size = [], 0
    while size < limit:
        chunk = await sock.recv(min(65536, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


async def _send_all(sock: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        sent = await sock.send(view)
        view = view[sent:]
