"""The sockets ztunnel makes inside a pod's network namespace (DESIGN.md section 5).

A socket belongs to the netns its creating thread was in at ``socket()``; after that it can be used
from any thread. So each socket here is made by entering the pod's netns (``setns``, per thread),
creating it and returning at once, all without yielding to the event loop: a pair of ``setns`` costs
about 5 µs here, far less than a hop to a worker thread.

- ``open_pod_listeners``: the three listeners. 15001 needs ``IP_TRANSPARENT`` (it accepts
  connections to any address, steered to it by the sk_lookup program); 15006 and 15008 carry
  ``SO_MARK 0x539`` like every socket of ztunnel, so their replies take the main routing table.
- ``upstream_socket``: a connection from the pod (HBONE to another node, or passthrough), marked so
  the pod's own capture routing leaves it alone; its source address is the pod's IP.
- ``open_dns_listeners``: the DNS proxy's UDP and TCP sockets on 127.0.0.1:15053, where the node
  agent's redirect sends the pod's DNS; ``dns_upstream_socket``: a marked socket of the pod for the
  queries the proxy forwards, which the redirect (and capture) lets through.
- ``connect_as_client``: the connection to the app that carries the client's own IP as its source:
  ``IP_TRANSPARENT`` + bind to that IP, and an entry for the 4-tuple in the pod's ``bypass`` map
  while the SYN is in flight, so the program does not steer ztunnel's own connection back to it.
"""

from __future__ import annotations

import errno
import socket
import struct
from dataclasses import dataclass

import trio

from bpf.capture import PROXY_MARK, Slot, bypass_key
from bpf.libbpf import Map
from hbone.tcp_stream import TcpStream
from mesh.netns import inside_netns_fd
from mesh.ports import DNS_PROXY_PORT, HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT

IP_TRANSPARENT = 19  # linux/in.h; not exported by the socket module
LISTENER_PORTS = {Slot.OUTBOUND: OUTBOUND_PORT, Slot.INBOUND: INBOUND_PLAINTEXT_PORT, Slot.HBONE: HBONE_PORT}
LISTEN_BACKLOG = 1024
DNS_LISTEN_HOST = "127.0.0.1"  # the redirect of locally made packets lands on the loopback address
# Large kernel buffers: fewer, larger reads and writes per Python call.
SOCKET_BUFFER = 4 * 1024 * 1024
_BYPASS_VALUE = b"\x01"


# Runs its block with the calling thread in the pod's netns and always comes back. The block must
# not yield to other tasks (they would run in the pod's netns).
in_netns = inside_netns_fd


def _tcp_socket(*, mark: bool = True, transparent: bool = False) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        if mark:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, PROXY_MARK)
        if transparent:
            sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        sock.close()
        raise
    return sock


def open_pod_listeners(netns_fd: int, ports: dict[Slot, int] | None = None) -> dict[Slot, socket.socket]:
    """The outbound, inbound and HBONE listeners, made inside the pod's netns."""
    sockets: dict[Slot, socket.socket] = {}
    try:
        with in_netns(netns_fd):
            for slot, port in (ports or LISTENER_PORTS).items():
                outbound = slot is Slot.OUTBOUND
                sock = sockets[slot] = _tcp_socket(mark=not outbound, transparent=outbound)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("0.0.0.0", port))
                sock.listen(LISTEN_BACKLOG)
    except BaseException:
        for sock in sockets.values():
            sock.close()
        raise
    return sockets


def put_in_sockmap(listeners: Map, sockets: dict[Slot, socket.socket]) -> None:
    """Steer the pod's captured connections to ``sockets`` (replacing whatever the slots held)."""
    for slot, sock in sockets.items():
        listeners.update(struct.pack("=I", slot), struct.pack("=Q", sock.fileno()))


def open_dns_listeners(netns_fd: int, port: int = DNS_PROXY_PORT) -> tuple[socket.socket, socket.socket]:
    """The DNS proxy's UDP and TCP sockets, on the pod's loopback (only the redirect reaches them)."""
    sockets: list[socket.socket] = []
    try:
        with in_netns(netns_fd):
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                sock = socket.socket(socket.AF_INET, kind | socket.SOCK_CLOEXEC)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((DNS_LISTEN_HOST, port))
                if kind == socket.SOCK_STREAM:
                    sock.listen(LISTEN_BACKLOG)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets[0], sockets[1]


def dns_upstream_socket(netns_fd: int, kind: int) -> socket.socket:
    """An unconnected UDP or TCP socket of the pod, marked: the DNS redirect and capture pass it by."""
    with in_netns(netns_fd):
        sock = socket.socket(socket.AF_INET, kind | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, PROXY_MARK)
    except BaseException:
        sock.close()
        raise
    return sock


def upstream_socket(netns_fd: int) -> socket.socket:
    """An unconnected socket of the pod, marked so that capture lets it through."""
    with in_netns(netns_fd):
        return _tcp_socket()


async def connect(sock: socket.socket, address: tuple[str, int]) -> TcpStream:
    """Connect ``sock`` (ours from now on: closed on failure) and wrap it as a stream."""
    tsock = trio.socket.from_stdlib_socket(sock)
    try:
        await tsock.connect(address)
    except BaseException:
        tsock.close()
        raise
    return _stream(socket.socket(fileno=tsock.detach()))


def _stream(sock: socket.socket) -> TcpStream:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as trio.SocketStream: relayed writes go now
    return TcpStream(sock)


def accepted_stream(tsock: trio.socket.SocketType) -> TcpStream:
    return _stream(socket.socket(fileno=tsock.detach()))


@dataclass(frozen=True)
class AppAddress:
    """Where the app listens in its pod, and the pod netns and bypass map to reach it through."""

    netns_fd: int
    bypass: Map
    pod_ip: str
    port: int


async def connect_as_client(app: AppAddress, client_ip: str) -> TcpStream:
    """Connect to the app from ``client_ip`` (an address not of this pod: the app sees its client)."""
    with in_netns(app.netns_fd):
        sock = _tcp_socket(transparent=True)
    try:
        sock.bind((client_ip, 0))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRNOTAVAIL:  # no IP_TRANSPARENT (not root): a clear error, not a hang
            raise OSError(exc.errno, f"cannot bind to the client address {client_ip}: {exc.strerror}") from None
        raise
    key = bypass_key(client_ip, sock.getsockname()[1], app.pod_ip, app.port)
    try:
        app.bypass.update(key, _BYPASS_VALUE)  # fails if the map is full (E2BIG)
    except BaseException:
        sock.close()
        raise
    try:
        return await connect(sock, (app.pod_ip, app.port))
    finally:
        # sk_lookup runs for the SYN only: once connected (or failed) the entry has done its work.
        app.bypass.delete(key)
