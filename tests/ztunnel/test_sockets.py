"""ztunnel's sockets in a pod's network namespace (ztunnel/sockets.py), for real (root).

Each test builds a throwaway "pod" netns (lo, and an eth0 veth to a second "client" netns that
plays the network) and removes both afterwards. The sockets' netns is read back from the kernel
(SIOCGSKNS), their options with getsockopt, the listeners with ``ss`` run inside the netns. For
``connect_as_client`` the pod is enrolled as the node agent does it (capture routing, the sk_lookup
program attached, ztunnel's listeners in its SOCKMAP), so the bypass entry has to work: without it
the connection would be captured by the inbound listener instead of reaching the app.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import subprocess
import uuid
from dataclasses import dataclass

import pytest

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces, IP_TRANSPARENT and eBPF"),
]

from pyroute2 import netns as pyroute2_netns  # noqa: E402

from bpf.capture import OBJECT_PATH, PROXY_MARK, Decision, PodCapture, Slot, bypass_key  # noqa: E402
from bpf.enrollment import install_routing  # noqa: E402
from lab.network import netns_path, rtnl  # noqa: E402
from ztunnel.sockets import (  # noqa: E402
    IP_TRANSPARENT,
    LISTENER_PORTS,
    AppAddress,
    connect,
    connect_as_client,
    in_netns,
    open_pod_listeners,
    put_in_sockmap,
    upstream_socket,
)

POD_IP = "10.244.77.2"
CLIENT_IP = "10.244.77.9"  # not an address of the pod: the client on the other side of eth0
APP_PORT = 8080
SIOCGSKNS = 0x894C  # linux/sockios.h: an fd of the netns a socket belongs to


@dataclass(frozen=True)
class Netns:
    name: str
    fd: int
    inode: int


def thread_netns() -> str:
    return os.readlink("/proc/thread-self/ns/net")


def netns_of(sock: socket.socket) -> int:
    fd = fcntl.ioctl(sock.fileno(), SIOCGSKNS)
    try:
        return os.fstat(fd).st_ino
    finally:
        os.close(fd)


def option(sock: socket.socket, level: int, name: int) -> int:
    return sock.getsockopt(level, name)


@contextlib.contextmanager
def throwaway_netns(name: str):
    pyroute2_netns.create(name)
    fd = -1
    try:
        fd = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
        with rtnl(name) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        yield Netns(name, fd, os.fstat(fd).st_ino)
    finally:
        if fd >= 0:
            os.close(fd)
        pyroute2_netns.remove(name)


@pytest.fixture
def pod():
    """(pod netns, client netns), joined by a veth: eth0 (POD_IP) in the pod, CLIENT_IP at the other end."""
    base = f"ztsock-{uuid.uuid4().hex[:8]}"  # not the lab's "amb-" prefix: no lab tool takes it for a lab
    with throwaway_netns(f"{base}-pod") as pod_ns, throwaway_netns(f"{base}-client") as client_ns:
        with rtnl(pod_ns.name) as ipr:
            ipr.link("add", ifname="eth0", kind="veth", peer={"ifname": "eth0", "net_ns_fd": client_ns.name})
            eth0 = ipr.link_lookup(ifname="eth0")[0]
            ipr.addr("add", index=eth0, address=POD_IP, prefixlen=24)
            ipr.link("set", index=eth0, state="up")
        with rtnl(client_ns.name) as ipr:
            eth0 = ipr.link_lookup(ifname="eth0")[0]
            ipr.addr("add", index=eth0, address=CLIENT_IP, prefixlen=24)
            ipr.link("set", index=eth0, state="up")
        yield pod_ns, client_ns


def listening_in(netns: str) -> set[str]:
    out = subprocess.run(["ip", "netns", "exec", netns, "ss", "-ltnH"], check=True, capture_output=True,
                         text=True).stdout
    return {line.split()[3] for line in out.splitlines() if line.strip()}


def open_sockets() -> set[str]:
    """This process's open sockets, as /proc names them ("socket:[inode]")."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the directory's own fd is gone by now
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:"):
                found.add(target)
    return found


def close_all(sockets) -> None:
    for sock in sockets:
        sock.close()


# ---------------------------------------------------------------- in_netns


def test_in_netns_enters_the_pod_and_always_comes_back(pod):
    pod_ns, _ = pod
    home = thread_netns()
    with in_netns(pod_ns.fd):
        assert thread_netns() == f"net:[{pod_ns.inode}]"
    assert thread_netns() == home
    with pytest.raises(RuntimeError, match="inside"):
        with in_netns(pod_ns.fd):
            raise RuntimeError("failed inside the pod's netns")
    assert thread_netns() == home
    with open("/proc/self/status") as not_a_netns:  # setns refuses it: nothing entered, nothing to undo
        with pytest.raises(OSError):
            with in_netns(not_a_netns.fileno()):
                pytest.fail("the block must not run")  # pragma: no cover
    assert thread_netns() == home


# ---------------------------------------------------------------- listeners and upstream sockets


def test_open_pod_listeners_listens_inside_the_pod_with_the_capture_options(pod):
    pod_ns, _ = pod
    home = thread_netns()
    sockets = open_pod_listeners(pod_ns.fd)
    try:
        assert thread_netns() == home
        assert {slot: sock.getsockname() for slot, sock in sockets.items()} == {
            Slot.OUTBOUND: ("0.0.0.0", 15001), Slot.INBOUND: ("0.0.0.0", 15006), Slot.HBONE: ("0.0.0.0", 15008)}
        assert LISTENER_PORTS == {Slot.OUTBOUND: 15001, Slot.INBOUND: 15006, Slot.HBONE: 15008}
        assert {slot: netns_of(sock) for slot, sock in sockets.items()} == dict.fromkeys(Slot, pod_ns.inode)
        assert listening_in(pod_ns.name) >= {"0.0.0.0:15001", "0.0.0.0:15006", "0.0.0.0:15008"}
        # 15001 accepts connections to any address (IP_TRANSPARENT); 15006 and 15008 are marked.
        transparent = {slot: option(sock, socket.SOL_IP, IP_TRANSPARENT) for slot, sock in sockets.items()}
        marks = {slot: option(sock, socket.SOL_SOCKET, socket.SO_MARK) for slot, sock in sockets.items()}
        assert transparent == {Slot.OUTBOUND: 1, Slot.INBOUND: 0, Slot.HBONE: 0}
        assert marks == {Slot.OUTBOUND: 0, Slot.INBOUND: PROXY_MARK, Slot.HBONE: PROXY_MARK}
        assert all(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) for sock in sockets.values())
    finally:
        close_all(sockets.values())
    assert not listening_in(pod_ns.name) & {"0.0.0.0:15001", "0.0.0.0:15006", "0.0.0.0:15008"}


def test_open_pod_listeners_fails_whole_and_closes_what_it_opened(pod):
    pod_ns, _ = pod
    with in_netns(pod_ns.fd):
        squatter = socket.socket()
    with squatter:
        squatter.bind(("0.0.0.0", 15006))
        squatter.listen()
        home = thread_netns()
        with pytest.raises(OSError) as failed:
            open_pod_listeners(pod_ns.fd)
        assert failed.value.errno == 98  # EADDRINUSE
        assert thread_netns() == home
        assert listening_in(pod_ns.name) == {"0.0.0.0:15006"}  # only the squatter: 15001 was closed again


async def test_upstream_socket_is_the_pods_and_marked(pod):
    pod_ns, _ = pod
    home = thread_netns()
    sock = upstream_socket(pod_ns.fd)
    assert thread_netns() == home
    assert netns_of(sock) == pod_ns.inode
    assert option(sock, socket.SOL_SOCKET, socket.SO_MARK) == PROXY_MARK
    assert option(sock, socket.SOL_IP, IP_TRANSPARENT) == 0
    # Usable from this (the node's) thread: it connects inside the pod, from the pod's address.
    with in_netns(pod_ns.fd):
        app = socket.socket()
    with app:
        app.bind((POD_IP, APP_PORT))
        app.listen()
        app.settimeout(2)
        stream = await connect(sock, (POD_IP, APP_PORT))
        accepted, peer = app.accept()
        accepted.close()
        assert peer == stream.socket.getsockname() and peer[0] == POD_IP
        await stream.aclose()


# ---------------------------------------------------------------- connect_as_client through capture


@pytest.fixture
def enrolled(pod):
    """The pod enrolled in capture: routing, the program attached, ztunnel's listeners steered to, an
    app listening on APP_PORT. Yields (pod netns, client netns, capture, listeners, app)."""
    if not OBJECT_PATH.exists():
        pytest.fail(f"{OBJECT_PATH} is missing: `make bpf` builds it (make test does)")
    pod_ns, client_ns = pod
    install_routing(pod_ns.name, POD_IP)
    capture = PodCapture.load(POD_IP)
    listeners = {}
    app = None
    try:
        capture.attach(pod_ns.fd)
        listeners = open_pod_listeners(pod_ns.fd)
        put_in_sockmap(capture.maps["listeners"], listeners)
        with in_netns(pod_ns.fd):
            app = socket.socket()
        app.bind((POD_IP, APP_PORT))
        app.listen()
        app.settimeout(2)
        for sock in listeners.values():
            sock.settimeout(2)
        yield pod_ns, client_ns, capture, listeners, app
    finally:
        if app is not None:
            app.close()
        close_all(listeners.values())
        capture.close()


class RecordingMap:
    """The real bypass map, remembering the keys connect_as_client wrote."""

    def __init__(self, real) -> None:
        self.real, self.keys = real, []

    def update(self, key: bytes, value: bytes) -> None:
        self.keys.append(key)
        self.real.update(key, value)

    def delete(self, key: bytes) -> bool:
        return self.real.delete(key)


def test_without_a_bypass_entry_the_client_address_is_captured(enrolled):
    """The control for the next tests: capture is live, so a connection from a foreign address to
    the app's port lands on the inbound listener, not on the app."""
    pod_ns, client_ns, capture, listeners, app = enrolled
    with in_netns(client_ns.fd):
        client = socket.socket()
    with client:
        client.settimeout(2)
        client.connect((POD_IP, APP_PORT))
        accepted, peer = listeners[Slot.INBOUND].accept()
        with accepted:
            assert accepted.getsockname() == (POD_IP, APP_PORT) and peer[0] == CLIENT_IP
    assert capture.counters()[Decision.INBOUND] == 1


async def test_connect_as_client_reaches_the_app_from_the_clients_address(enrolled):
    pod_ns, _, capture, listeners, app = enrolled
    bypass = RecordingMap(capture.maps["bypass"])
    home = thread_netns()
    stream = await connect_as_client(AppAddress(pod_ns.fd, bypass, POD_IP, APP_PORT), CLIENT_IP)
    assert thread_netns() == home
    accepted, peer = app.accept()
    with accepted:
        assert peer[0] == CLIENT_IP  # the app sees its real client
        assert stream.socket.getsockname() == peer
        assert netns_of(stream.socket) == pod_ns.inode
        assert option(stream.socket, socket.SOL_SOCKET, socket.SO_MARK) == PROXY_MARK
        await stream.send_all(b"from the client")
        assert accepted.recv(100) == b"from the client"
        accepted.sendall(b"from the app")
        assert await stream.receive_some(100) == b"from the app"
    await stream.aclose()
    # The program let exactly this connection through, and the entry is gone once connected.
    assert bypass.keys == [bypass_key(CLIENT_IP, peer[1], POD_IP, APP_PORT)]
    assert capture.maps["bypass"].lookup(bypass.keys[0], 1) is None
    counters = capture.counters()
    assert (counters[Decision.PASS_BYPASS], counters[Decision.INBOUND]) == (1, 0)
    listeners[Slot.INBOUND].setblocking(False)
    with pytest.raises(BlockingIOError):
        listeners[Slot.INBOUND].accept()  # nothing was captured


async def test_connect_as_client_removes_the_bypass_entry_when_the_app_refuses(enrolled):
    pod_ns, _, capture, _, _ = enrolled
    bypass = RecordingMap(capture.maps["bypass"])
    with pytest.raises(ConnectionRefusedError):
        await connect_as_client(AppAddress(pod_ns.fd, bypass, POD_IP, APP_PORT + 1), CLIENT_IP)
    (key,) = bypass.keys
    assert capture.maps["bypass"].lookup(key, 1) is None
    assert capture.counters()[Decision.PASS_BYPASS] == 1  # it was the app's refusal, not capture's


async def test_connect_as_client_closes_its_socket_when_the_bypass_map_refuses(enrolled):
    pod_ns, _, _, _, _ = enrolled

    class FullMap:
        def update(self, key: bytes, value: bytes) -> None:
            raise OSError(7, "update of map bypass: Argument list too long")  # E2BIG: the map is full

        def delete(self, key: bytes) -> bool:  # pragma: no cover
            return False

    before = open_sockets()
    with pytest.raises(OSError, match="map bypass") as failed:
        await connect_as_client(AppAddress(pod_ns.fd, FullMap(), POD_IP, APP_PORT), CLIENT_IP)
    # Closed by connect_as_client itself, not by the garbage collector: the error (kept here, as a
    # caller's log or handler may keep it) still references the frame that made the socket.
    assert failed.value.errno == 7
    assert open_sockets() == before
