"""ZDS: the node agent hands each enrolled pod to its node's ztunnel over a Unix SOCK_SEQPACKET socket.

Istio's shape (``mesh/api/zds.proto``, package ``istio.workload.zds``): the agent listens, ztunnel
connects and sends ``ZdsHello``; the agent then sends ``WorkloadRequest``s one at a time and waits
for each ``WorkloadResponse{ack}``. Every datagram is one serialized message (at most
``MAX_MESSAGE_SIZE`` bytes); an ``AddWorkload`` carries the pod's file descriptors (its netns and
capture maps, opaque here: a list of ints) as ``SCM_RIGHTS``, at most ``MAX_FDS`` of them.

How it works:

- ``send_message`` / ``receive_message`` frame one message per datagram with sendmsg/recvmsg. A
  received datagram that was truncated (``MSG_TRUNC``, ``MSG_CTRUNC``), does not parse, or brings
  more fds than the caller allows is the peer's fault: ``ZdsProtocolError``, after closing every fd
  that came with it. An empty datagram means the peer closed (``ZdsPeerClosed``).
- ``AgentConnection`` is the agent's side of one connection without I/O: hello and acks in,
  requests out. It knows what this ztunnel was told (uid -> generation of the last AddWorkload),
  so ``next_request`` simply diffs the agent's pods against that: during the replay an AddWorkload
  per pod not yet sent, then SnapshotSent; once live, an AddWorkload for a new or re-added pod and a
  DelWorkload for a pod the ztunnel holds that is gone. A pod added and removed between two sends
  is never sent at all, and a change during the replay is simply part of the diff.
- ``ZdsServer`` (node agent) keeps the pods (uid -> ``Workload``: info, fds, generation) and serves
  one ztunnel at a time: a connection becomes current once its ZdsHello parsed, and closes the
  previous one. Its task loops "next request, send, wait for the ack" and, with nothing to send,
  sleeps until a pod changes or the socket turns readable (the peer closed, or spoke out of turn).
  ``add``/``remove`` only change the pods and wake it; with no ztunnel connected the change waits
  for the replay of the next one. Sending duplicates the server's fds into the datagram (it keeps
  its own: ``remove`` closes them); the task sends its own ``os.dup`` copies, so a ``remove`` while
  a send waits for buffer space never closes an fd under it.
- ``ZdsClient`` (ztunnel, and tests) sends ZdsHello and yields requests with their fds, which the
  caller then owns; the caller answers each with ``ack``. A request it cannot use (does not parse,
  no payload it knows, no uid, fds where none belong) is answered with an error Ack and skipped.

Bounds: a ZdsHello must arrive within ``hello_timeout`` and every Ack within ``ack_timeout``, else
that connection is dropped (logged) and the server waits for the next ztunnel.
"""

from __future__ import annotations

import array
import contextlib
import enum
import itertools
import logging
import os
import socket
import stat
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import trio
from google.protobuf.message import DecodeError, Message

from mesh.api import zds_pb2
from mesh.concurrency import accept_loop, first_of

log = logging.getLogger("ambient.zds")

MAX_MESSAGE_SIZE = 64 * 1024  # bytes of one serialized message (one datagram)
MAX_FDS = 16  # per AddWorkload: the netns plus a few maps
ACK_TIMEOUT = 10.0
HELLO_TIMEOUT = 10.0
SOCKET_MODE = 0o600
_BACKLOG = 8
_FD_SIZE = array.array("i").itemsize

M = TypeVar("M", bound=Message)

# The fds an AddWorkload carries, in this order: the pod's netns, the capture's listener SOCKMAP
# (slots of bpf.capture.Slot) and its bypass map (keys of bpf.capture.bypass_key).
POD_FDS = ("netns", "listeners", "bypass")


class ZdsError(Exception):
    """Base of this module's errors."""


class ZdsProtocolError(ZdsError):
    """The peer broke the protocol (a bad datagram, or a message out of turn)."""


class ZdsPeerClosed(ZdsError):
    """The peer closed the connection."""


class ZdsConnectError(ZdsError, ConnectionError):
    """Nobody listens on the ZDS socket (or it cannot be reached)."""


def close_fds(fds: Iterable[int]) -> None:
    """Close every fd, ignoring ones already closed."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


# Framing: pure parsing, then the two socket calls.


def decode(message_type: type[M], data: bytes) -> M:
    """``data`` parsed as ``message_type``, or ``ZdsProtocolError`` saying why not."""
    try:
        return message_type.FromString(data)
    except DecodeError as exc:
        raise ZdsProtocolError(f"{message_type.DESCRIPTOR.name} does not parse ({len(data)} bytes): {exc}") from None


def check_request(request: zds_pb2.WorkloadRequest, fd_count: int) -> str:
    """The ``WorkloadRequest`` field set in ``request``; ``ZdsProtocolError`` if ztunnel cannot use
    it: no payload it knows (empty, or a field newer than ours), no uid, or fds on anything but add."""
    kind = request.WhichOneof("payload")
    if kind is None:
        raise ZdsProtocolError("WorkloadRequest has no payload this ztunnel knows (empty or unknown)")
    if kind in ("add", "keep", "del") and not getattr(request, kind).uid:
        raise ZdsProtocolError(f"WorkloadRequest {kind} has no uid")
    if fd_count and kind != "add":
        raise ZdsProtocolError(f"WorkloadRequest {kind} must not carry file descriptors (got {fd_count})")
    return kind


def _fds_from(ancdata: Sequence[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            received = array.array("i")
            received.frombytes(data[: len(data) - len(data) % _FD_SIZE])
            fds.extend(received)
    return fds


async def send_message(sock: trio.socket.SocketType, message: Message, fds: Sequence[int] = ()) -> None:
    """Send ``message`` as one datagram, with ``fds`` as SCM_RIGHTS (the kernel duplicates them
    into the peer; the caller still owns its own)."""
    data = message.SerializeToString()
    if len(data) > MAX_MESSAGE_SIZE:
        raise ValueError(f"{message.DESCRIPTOR.name} is {len(data)} bytes; at most {MAX_MESSAGE_SIZE} fit a datagram")
    if not data:
        # The peer would read an empty datagram as "closed". Only a default ZdsHello serializes to
        # nothing, and ZdsHello always names a version.
        raise ValueError(f"an empty {message.DESCRIPTOR.name} cannot be sent")
    ancdata = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    await sock.sendmsg([data], ancdata, socket.MSG_NOSIGNAL)


async def receive_message(sock: trio.socket.SocketType, message_type: type[M], max_fds: int) -> tuple[M, list[int]]:
    """The next datagram parsed as ``message_type``, with the fds that came with it (the caller
    owns them). On ``ZdsProtocolError`` every fd received has been closed already."""
    ancbufsize = socket.CMSG_SPACE(max_fds * _FD_SIZE) if max_fds else 0
    try:
        data, ancdata, flags, _ = await sock.recvmsg(MAX_MESSAGE_SIZE, ancbufsize, socket.MSG_CMSG_CLOEXEC)
    except ConnectionResetError:
        raise ZdsPeerClosed("connection reset by the peer") from None
    fds = _fds_from(ancdata)
    try:
        if flags & socket.MSG_TRUNC:
            raise ZdsProtocolError(f"datagram longer than {MAX_MESSAGE_SIZE} bytes (truncated)")
        if flags & socket.MSG_CTRUNC or len(fds) > max_fds:
            raise ZdsProtocolError(
                f"{message_type.DESCRIPTOR.name} carried more file descriptors than the {max_fds} allowed"
            )
        if not data:
            if fds:
                raise ZdsProtocolError("empty datagram with file descriptors")
            raise ZdsPeerClosed("the peer closed the connection")
        return decode(message_type, data), fds
    except ZdsError:
        close_fds(fds)
        raise


# The agent's side of one connection, without I/O.


class Phase(enum.Enum):
    HELLO = "awaiting ZdsHello"
    REPLAY = "replaying the snapshot"
    LIVE = "live"
    CLOSED = "closed"


# What the peer may send, by phase: (phase, input) -> next phase. An input missing here is the
# peer's fault and closes the connection. Inputs: "hello", or "ack " + the kind of request in
# flight ("ack none" when nothing is: an unsolicited response).
_TRANSITIONS: Mapping[tuple[Phase, str], Phase] = MappingProxyType({
    (Phase.HELLO, "hello"): Phase.REPLAY,
    (Phase.REPLAY, "ack add"): Phase.REPLAY,
    (Phase.REPLAY, "ack snapshot_sent"): Phase.LIVE,
    (Phase.LIVE, "ack add"): Phase.LIVE,
    (Phase.LIVE, "ack del"): Phase.LIVE,
})


@dataclass(frozen=True)
class Workload:
    """One pod the agent holds: its info, its fds (owned by the server) and a generation that
    changes whenever the pod is added again."""

    info: zds_pb2.WorkloadInfo
    fds: tuple[int, ...]
    generation: int


@dataclass(frozen=True)
class Outgoing:
    """The next request to send; ``fds`` (the server's own) go with it as SCM_RIGHTS."""

    kind: str  # "add", "del" or "snapshot_sent"
    uid: str | None
    generation: int
    request: zds_pb2.WorkloadRequest
    fds: tuple[int, ...] = ()


@dataclass(frozen=True)
class Acked:
    """ztunnel answered the request in flight; ``error`` is empty on success."""

    kind: str
    uid: str | None
    error: str


class AgentConnection:
    """The node agent's side of one ztunnel connection: ``receive_hello``, then alternately
    ``next_request(pods)`` and ``receive_response``. Raises ``ZdsProtocolError`` (and ends CLOSED)
    on anything the peer may not send now."""

    def __init__(self) -> None:
        self.phase = Phase.HELLO
        self.in_flight: Outgoing | None = None
        self._told: dict[str, int] = {}  # uid -> generation of the last AddWorkload sent here
        self._acked: dict[str, int] = {}  # uid -> generation ztunnel acknowledged without error
        self._rejected: dict[str, tuple[int, str]] = {}  # uid -> (generation, error) of a refused AddWorkload

    def _advance(self, event: str) -> None:
        next_phase = _TRANSITIONS.get((self.phase, event))
        if next_phase is None:
            phase, self.phase = self.phase, Phase.CLOSED
            raise ZdsProtocolError(f"unexpected {event} while {phase.value}")
        self.phase = next_phase

    def receive_hello(self, hello: zds_pb2.ZdsHello) -> None:
        self._advance("hello")
        if hello.version != zds_pb2.V1:
            self.phase = Phase.CLOSED
            raise ZdsProtocolError(f"unsupported ZDS version {hello.version} (this agent speaks V1)")

    def next_request(self, pods: Mapping[str, Workload]) -> Outgoing | None:
        """What to send next to bring this ztunnel to ``pods``; None if nothing (or not now)."""
        if self.in_flight is not None or self.phase not in (Phase.REPLAY, Phase.LIVE):
            return None
        outgoing = self._next_add(pods)
        if outgoing is None and self.phase is Phase.REPLAY:
            outgoing = Outgoing("snapshot_sent", None, 0, zds_pb2.WorkloadRequest(snapshot_sent=zds_pb2.SnapshotSent()))
        if outgoing is None:
            gone = next((uid for uid in self._told if uid not in pods), None)
            if gone is not None:
                del self._told[gone]
                self._acked.pop(gone, None)
                self._rejected.pop(gone, None)
                payload: dict[str, Any] = {"del": zds_pb2.DelWorkload(uid=gone)}  # `del` is a Python keyword
                outgoing = Outgoing("del", gone, 0, zds_pb2.WorkloadRequest(**payload))
        self.in_flight = outgoing
        return outgoing

    def _next_add(self, pods: Mapping[str, Workload]) -> Outgoing | None:
        for uid, pod in pods.items():
            if self._told.get(uid) != pod.generation:
                self._told[uid] = pod.generation
                self._acked.pop(uid, None)
                self._rejected.pop(uid, None)
                request = zds_pb2.WorkloadRequest(add=zds_pb2.AddWorkload(uid=uid, workload_info=pod.info))
                return Outgoing("add", uid, pod.generation, request, pod.fds)
        return None

    def receive_response(self, response: zds_pb2.WorkloadResponse) -> Acked:
        if response.WhichOneof("payload") != "ack":
            self.phase = Phase.CLOSED
            raise ZdsProtocolError("WorkloadResponse without an ack")
        sent, self.in_flight = self.in_flight, None
        self._advance(f"ack {sent.kind if sent else 'none'}")
        assert sent is not None  # "ack none" is in no transition
        error = response.ack.error
        if sent.kind == "add":
            assert sent.uid is not None  # an add names its pod
            if error:
                self._rejected[sent.uid] = (sent.generation, error)
            else:
                self._acked[sent.uid] = sent.generation
        return Acked(sent.kind, sent.uid, error)

    def acknowledged(self, uid: str, generation: int) -> bool:
        return self._acked.get(uid) == generation

    def rejection(self, uid: str, generation: int) -> str | None:
        rejected = self._rejected.get(uid)
        return rejected[1] if rejected is not None and rejected[0] == generation else None

    def close(self) -> None:
        self.phase = Phase.CLOSED
        self.in_flight = None


# The node agent's driver.


class ZdsServer:
    """The node agent's ZDS socket: holds the pods, replays them to each ztunnel that connects."""

    def __init__(self, socket_path: str | os.PathLike[str], *, ack_timeout: float = ACK_TIMEOUT,
                 hello_timeout: float = HELLO_TIMEOUT) -> None:
        self.socket_path = Path(socket_path)
        self.ack_timeout = ack_timeout
        self.hello_timeout = hello_timeout
        self._pods: dict[str, Workload] = {}
        self._generations = itertools.count(1)
        self._changed = trio.Event()
        self._current: _Connection | None = None
        self._connection_ids = itertools.count(1)
        self._serve_scope: trio.CancelScope | None = None
        self._serve_done: trio.Event | None = None
        self._closed = False

    # The agent's state.

    @property
    def workloads(self) -> Mapping[str, Workload]:
        """The pods held, by uid (read-only view)."""
        return MappingProxyType(self._pods)

    @property
    def connected(self) -> bool:
        """Whether a ztunnel is connected (its ZdsHello received)."""
        return self._current is not None

    async def add(self, uid: str, info: zds_pb2.WorkloadInfo, fds: Sequence[int] = ()) -> None:
        """Hold pod ``uid`` (replacing an earlier add of it) and send it to the ztunnel, if one is
        connected. The server owns ``fds`` from now on; on an error the caller still does."""
        if self._closed:
            raise RuntimeError("the ZDS server is closed")
        if not uid:
            raise ValueError("a pod needs a uid")
        if len(fds) > MAX_FDS:
            raise ValueError(f"at most {MAX_FDS} fds per pod, got {len(fds)}")
        copy = zds_pb2.WorkloadInfo()
        copy.CopyFrom(info)
        old = self._pods.get(uid)
        self._pods[uid] = Workload(copy, tuple(fds), next(self._generations))
        if old is not None:
            close_fds(set(old.fds) - set(fds))
        log.info("pod %s (%s/%s) added with %d fds", uid, info.namespace, info.name, len(fds))
        self._notify()
        await trio.lowlevel.checkpoint()

    async def remove(self, uid: str) -> None:
        """Stop holding pod ``uid`` (no-op if unknown), close its fds, and have the ztunnel drop it."""
        pod = self._pods.pop(uid, None)
        if pod is not None:
            close_fds(pod.fds)
            log.info("pod %s removed", uid)
            self._notify()
        await trio.lowlevel.checkpoint()

    def acknowledged(self, uid: str) -> bool:
        """Whether the current ztunnel acknowledged, without error, the AddWorkload of the pod
        as it is now. False while no ztunnel is connected, and after a reconnect until replayed."""
        pod = self._pods.get(uid)
        current = self._current
        return pod is not None and current is not None and current.core.acknowledged(uid, pod.generation)

    def rejection(self, uid: str) -> str | None:
        """The error the current ztunnel answered the pod's AddWorkload with, if it refused the pod
        as it is now."""
        pod = self._pods.get(uid)
        current = self._current
        return current.core.rejection(uid, pod.generation) if pod is not None and current is not None else None

    async def wait_acknowledged(self, uid: str) -> None:
        """Wait until ``acknowledged(uid)``; ``KeyError`` if the pod is not (or no longer) held.
        Waits across reconnects: bound it with a cancel scope."""
        while not self.acknowledged(uid):
            if uid not in self._pods:
                raise KeyError(f"pod {uid} is not held by the ZDS server")
            await self._changed.wait()

    @property
    def changed(self) -> trio.Event:
        """Set at the next change of the pods held, of the connection, or of what ztunnel acknowledged.
        Take it before reading the state, then wait on it."""
        return self._changed

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # Serving.

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind the socket (replacing a stale one), listen, report started, serve until cancelled or
        ``aclose``; then close everything, the pods' fds included, and unlink the socket."""
        if self._closed or self._serve_done is not None:
            raise RuntimeError("a ZdsServer serves once")
        self._serve_done = trio.Event()
        listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        inode = None
        try:
            with trio.CancelScope() as self._serve_scope:
                remove_stale_socket(self.socket_path)
                try:
                    with addressable(self.socket_path) as address:
                        await listener.bind(address)
                except OSError as exc:
                    raise OSError(exc.errno, f"cannot bind the ZDS socket {self.socket_path}: {exc.strerror}") from exc
                inode = os.stat(self.socket_path).st_ino
                # Before listen(): until then a connect is refused, whatever the umask allowed.
                os.chmod(self.socket_path, SOCKET_MODE)
                listener.listen(_BACKLOG)
                log.info("ZDS listening on %s", self.socket_path)
                task_status.started()
                async with trio.open_nursery() as nursery:
                    await accept_loop(listener, self._accept, nursery, "ZDS")
        finally:
            listener.close()
            if inode is not None:
                _unlink_if_same(self.socket_path, inode)
            self._shut()
            self._serve_done.set()

    async def _accept(self, sock: trio.socket.SocketType, _peer: object) -> None:
        await self._handle(_Connection(next(self._connection_ids), sock))

    async def aclose(self) -> None:
        """Stop serving: close the connection, the listener and every fd held; unlink the socket."""
        if self._serve_scope is not None and self._serve_done is not None:
            self._serve_scope.cancel()
            await self._serve_done.wait()
        self._shut()
        await trio.lowlevel.checkpoint()

    def _shut(self) -> None:
        self._closed = True
        for pod in self._pods.values():
            close_fds(pod.fds)
        self._pods.clear()
        self._notify()

    # One connection.

    async def _handle(self, conn: _Connection) -> None:
        try:
            with conn.scope:
                with trio.fail_after(self.hello_timeout):
                    hello, _ = await receive_message(conn.sock, zds_pb2.ZdsHello, 0)
                conn.core.receive_hello(hello)
                previous, self._current = self._current, conn
                if previous is not None:
                    log.info("ztunnel connection #%d replaces #%d", conn.id, previous.id)
                    previous.scope.cancel()
                log.info("ztunnel connected (#%d); replaying %d pods", conn.id, len(self._pods))
                self._notify()
                await self._drive(conn)
        except trio.TooSlowError:
            log.warning("ztunnel connection #%d: no ZdsHello within %.1f s; closing it", conn.id, self.hello_timeout)
        except ZdsPeerClosed:
            log.info("ztunnel connection #%d closed by ztunnel", conn.id)
        except ZdsProtocolError as exc:
            log.warning("ztunnel connection #%d: %s; closing it", conn.id, exc)
        except OSError as exc:
            log.warning("ztunnel connection #%d failed: %s", conn.id, exc)
        finally:
            conn.core.close()
            conn.sock.close()
            if self._current is conn:
                self._current = None
                self._notify()

    async def _drive(self, conn: _Connection) -> None:
        """Send what the ztunnel lacks, one acknowledged request at a time, for as long as it lasts."""
        while True:
            changed = self._changed  # taken before deciding, so no change slips between the two
            outgoing = conn.core.next_request(self._pods)
            if outgoing is None:
                if await first_of(changed.wait, lambda: trio.lowlevel.wait_readable(conn.sock)) == 1:
                    # Nothing is in flight: this is the peer closing, or speaking out of turn.
                    response, _ = await receive_message(conn.sock, zds_pb2.WorkloadResponse, 0)
                    conn.core.receive_response(response)
                continue
            # The bound covers the send too: a ztunnel that stopped reading fills its buffer.
            with trio.move_on_after(self.ack_timeout) as waited:
                copies = [os.dup(fd) for fd in outgoing.fds]
                try:
                    await send_message(conn.sock, outgoing.request, copies)
                finally:
                    close_fds(copies)
                response, _ = await receive_message(conn.sock, zds_pb2.WorkloadResponse, 0)
            if waited.cancelled_caught:
                log.warning("ztunnel connection #%d: no Ack for %s %s within %.1f s; dropping the connection",
                            conn.id, outgoing.kind, outgoing.uid or "", self.ack_timeout)
                return
            self._log_ack(conn, conn.core.receive_response(response))
            self._notify()

    def _log_ack(self, conn: _Connection, acked: Acked) -> None:
        if acked.kind == "snapshot_sent":
            if acked.error:
                log.warning("ztunnel connection #%d: SnapshotSent answered with error: %s", conn.id, acked.error)
            else:
                log.info("ztunnel connection #%d holds the snapshot", conn.id)
        elif acked.error:
            log.warning("ztunnel rejected %s of pod %s: %s", acked.kind, acked.uid, acked.error)
        else:
            log.debug("ztunnel acknowledged %s of pod %s", acked.kind, acked.uid)


class _Connection:
    def __init__(self, id: int, sock: trio.socket.SocketType) -> None:
        self.id = id
        self.sock = sock
        self.core = AgentConnection()
        self.scope = trio.CancelScope()


SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes, NUL included


@contextlib.contextmanager
def addressable(path: str | os.PathLike[str]):
    """An address for the socket file ``path`` that fits ``sun_path``: the path itself, or, when it
    is longer (deep state directories), the same file reached through a descriptor of its directory."""
    path = Path(path)
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        yield os.fspath(path)
        return
    directory = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{directory}/{path.name}"
    finally:
        os.close(directory)


def remove_stale_socket(path: Path, what: str = "ZDS") -> None:
    """Remove the Unix socket a previous server left at ``path`` (nothing there is fine); anything
    else there is a FileExistsError, never replaced. ``what`` names the socket in the log and error."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(f"{path} exists and is not a socket; not replacing it with the {what} socket")
    log.info("removing stale %s socket %s", what, path)
    path.unlink()


def _unlink_if_same(path: Path, inode: int) -> None:
    """Unlink our socket file, unless another server has bound a new one at the path since."""
    try:
        if path.lstat().st_ino == inode:
            path.unlink()
    except FileNotFoundError:
        pass


# ztunnel's driver.


class ZdsClient:
    """ztunnel's side of a ZDS connection: ``async for request, fds in conn`` then ``await conn.ack()``."""

    def __init__(self, sock: trio.socket.SocketType, socket_path: str) -> None:
        self.socket_path = socket_path
        self._sock = sock
        self._owes_ack = False

    def __aiter__(self) -> ZdsClient:
        return self

    async def __anext__(self) -> tuple[zds_pb2.WorkloadRequest, list[int]]:
        """The next usable request and its fds (the caller owns them and must ``ack`` before asking
        for the next); ends when the agent closes the connection."""
        if self._owes_ack:
            raise RuntimeError("ack the previous WorkloadRequest before receiving the next")
        while True:
            try:
                request, fds = await receive_message(self._sock, zds_pb2.WorkloadRequest, MAX_FDS)
                try:
                    check_request(request, len(fds))
                except ZdsProtocolError:
                    close_fds(fds)
                    raise
            except ZdsPeerClosed:
                raise StopAsyncIteration from None
            except ZdsProtocolError as exc:
                log.warning("ZDS request rejected: %s", exc)
                await send_message(self._sock, zds_pb2.WorkloadResponse(ack=zds_pb2.Ack(error=str(exc))))
                continue
            self._owes_ack = True
            return request, fds

    async def ack(self, error: str = "") -> None:
        """Answer the request last received: success, or the reason it failed."""
        if not self._owes_ack:
            raise RuntimeError("no WorkloadRequest awaits an ack")
        self._owes_ack = False
        await send_message(self._sock, zds_pb2.WorkloadResponse(ack=zds_pb2.Ack(error=error)))

    def close(self) -> None:
        self._sock.close()


@contextlib.asynccontextmanager
async def connect_zds(socket_path: str | os.PathLike[str]) -> AsyncIterator[ZdsClient]:
    """Connect to the node agent's ZDS socket and say hello; closes the connection on exit."""
    path = os.fspath(socket_path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        try:
            with addressable(path) as address:
                await sock.connect(address)
        except (FileNotFoundError, ConnectionRefusedError, PermissionError) as exc:
            raise ZdsConnectError(f"no ZDS server to connect to at {path}: {exc.strerror}") from exc
        await send_message(sock, zds_pb2.ZdsHello(version=zds_pb2.V1))
        client = ZdsClient(sock, path)
        yield client
    finally:
        sock.close()
