"""What a pod, or a client of one, can make the executor spend (issue 18, defect 5), in the loopback
harness of test_proxy.py with small bounds: connections held to the per-pod and per-node caps (the
rest reset at once and counted), idle plaintext connections closed, HBONE connections that never
finish their handshake or never send a CONNECT closed; and connections that would loop back into
ztunnel's own listeners refused before anything is dialled (defect 1)."""

from __future__ import annotations

import contextlib
import os

import pytest
import trio

from bpf.capture import Slot
from ca.authority import SigningAuthority
from hbone.driver import HboneClientDriver, HboneRefused
from hbone.tls import client_context, client_handshake
from mesh.ports import ZTUNNEL_POD_PORTS
from tests.ztunnel.pki import TD, creds
from tests.ztunnel.test_metrics import samples
from tests.ztunnel.test_proxy import (
    APP_PORT,
    CLIENT,
    CLIENT_IP,
    DB_IP,
    OFF_MESH_IP,
    WEB,
    WEB_IP,
    Node,
    assert_reset,
    echo_app,
    node,
    only,
    remote_ztunnel,
    round_trip,
    web_app,
)

REFUSED = "ambient_ztunnel_connections_refused_total"


@pytest.fixture(scope="module")
def authority() -> SigningAuthority:
    return SigningAuthority.self_signed(TD)


def refused(mesh: Node, **labels: str) -> float:
    return sum(value for (name, pairs), value in samples(mesh.metrics).items()
               if name == REFUSED and labels.items() <= dict(pairs).items())


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def plaintext_to(mesh: Node, pod: str) -> trio.SocketStream | None:
    """A plaintext connection to ``pod``'s app port; None if ztunnel reset it before it was even up."""
    try:
        return await mesh.plaintext_to(OFF_MESH_IP, pod, APP_PORT)
    except ConnectionResetError:
        return None


async def echoed(stream: trio.SocketStream | None) -> bool:
    """Whether the connection carries a byte there and back (False: ztunnel reset or closed it)."""
    if stream is None:
        return False
    with trio.fail_after(5):
        try:
            await stream.send_all(b"x")
            return await stream.receive_some() == b"x"
        except trio.BrokenResourceError:
            return False


async def test_a_flood_of_idle_plaintext_connections_to_one_pod_is_held_to_the_pods_cap(authority):
    """Defect 5: 8,000 idle connections from one client to one pod's 15006 took ztunnel to 19,221 of its
    20,000 fds. Twice the cap are opened here: the cap's worth are served, the rest reset at once and
    counted, the fds held grow with the cap only, and another pod is still served."""
    cap = 8
    async with node(authority, max_connections_per_pod=cap, max_connections_per_node=3 * cap) as mesh:
        app = await web_app(mesh)
        outside = await echo_app(mesh.nursery, OFF_MESH_IP)
        before = open_fds()
        streams, served = [], 0
        for _ in range(2 * cap):
            stream = await plaintext_to(mesh, "shop/web-0")
            served += await echoed(stream)
            if stream is not None:
                streams.append(stream)
        held = open_fds() - before
        tracked = len(mesh.ztunnel.tracker)
        # Another pod of the node is still served: the client pod's app reaches an address outside.
        assert await round_trip(await mesh.app_connects("shop/client", outside.address), b"still") == b"still"
        for stream in streams:
            await trio.aclose_forcefully(stream)
        await mesh.settled()
    assert (served, tracked, len(app.peers)) == (cap, cap, cap)
    # Per served connection: the client's socket, ztunnel's two, the app's one; per refused one the
    # client's socket only (ztunnel closed its side at once).
    assert held <= cap * 4 + cap + 4, held
    assert refused(mesh, reason="pod_limit", listener="inbound") == cap
    assert refused(mesh) == cap


async def test_the_node_cap_holds_over_all_pods(authority):
    async with node(authority, max_connections_per_pod=4, max_connections_per_node=6) as mesh:
        await web_app(mesh)
        db_app = await echo_app(mesh.nursery, DB_IP)
        mesh.net.routes[(DB_IP, APP_PORT)] = db_app.address
        streams = [await plaintext_to(mesh, "shop/web-0") for _ in range(4)]
        assert [await echoed(stream) for stream in streams] == [True] * 4
        to_db = [await plaintext_to(mesh, "shop/db") for _ in range(4)]
        assert [await echoed(stream) for stream in to_db] == [True, True, False, False]
        for stream in streams + to_db:
            if stream is not None:
                await trio.aclose_forcefully(stream)
        await mesh.settled()
    assert refused(mesh, reason="node_limit", listener="inbound") == 2
    assert refused(mesh, reason="pod_limit") == 0


async def test_a_pod_flooding_out_is_held_to_its_cap_on_15001_too(authority):
    async with node(authority, max_connections_per_pod=2, max_connections_per_node=10) as mesh:
        outside = await echo_app(mesh.nursery, OFF_MESH_IP)
        streams = []
        for _ in range(3):
            try:
                streams.append(await mesh.app_connects("shop/client", outside.address))
            except ConnectionResetError:  # reset before the connect was even up
                streams.append(None)
        assert [await echoed(stream) for stream in streams] == [True, True, False]
        for stream in streams:
            if stream is not None:
                await trio.aclose_forcefully(stream)
        await mesh.settled()
    assert refused(mesh, reason="pod_limit", listener="outbound") == 1


async def test_the_pods_cap_counts_the_connect_streams_of_its_hbone_connections(authority):
    """Each CONNECT holds a connection to the app: a mesh peer's 100 streams per HBONE connection
    count against the pod's cap, one by one, and the one over it is answered 503."""
    async with node(authority, max_connections_per_pod=3, max_connections_per_node=10) as mesh:
        app = await web_app(mesh)
        async with remote_ztunnel(authority, CLIENT, CLIENT_IP, mesh.pods["shop/web-0"], WEB) as far:
            tunnels = [await far.open(f"{WEB_IP}:{APP_PORT}", None) for _ in range(2)]  # with the connection: 3
            with pytest.raises(HboneRefused) as over:
                await far.open(f"{WEB_IP}:{APP_PORT}", None)
            assert over.value.status == 503
            for tunnel in tunnels:
                await tunnel.aclose()
            await mesh.settled()
    assert len(app.peers) == 2
    assert refused(mesh, reason="pod_limit", listener="hbone") == 1


async def test_an_idle_plaintext_connection_is_closed(authority):
    async with node(authority, plaintext_idle_timeout=0.2) as mesh:
        await web_app(mesh)
        stream = await mesh.plaintext_to(OFF_MESH_IP, "shop/web-0", APP_PORT)
        assert await echoed(stream)
        with trio.fail_after(5), contextlib.suppress(trio.BrokenResourceError):  # the bug: open for ever
            while await stream.receive_some():
                pass
        await stream.aclose()
        await mesh.settled()
    inbound = only(mesh.log(), direction="inbound")
    assert inbound["error"] == "closed: idle for 0.2 s (no byte either way)"


async def test_an_hbone_connection_that_never_starts_its_tls_handshake_is_closed(authority):
    async with node(authority, hbone_handshake_timeout=0.2, connect_timeout=60.0) as mesh:
        sock = trio.socket.socket()
        await sock.connect(mesh.pods["shop/web-0"].address(Slot.HBONE))
        stream = trio.SocketStream(sock)
        with trio.fail_after(10), contextlib.suppress(trio.BrokenResourceError):  # the bug: 60 s
            while await stream.receive_some():
                pass
        await stream.aclose()
    assert refused(mesh, reason="handshake_timeout", listener="hbone") == 1


async def test_an_hbone_connection_that_never_sends_a_connect_is_closed(authority):
    """A peer that completes TLS and answers our PINGs but sends no CONNECT held its connection for ever."""
    async with node(authority, hbone_handshake_timeout=0.5) as mesh:
        sock = trio.socket.socket()
        await sock.bind((CLIENT_IP, 0))
        await sock.connect(mesh.pods["shop/web-0"].address(Slot.HBONE))
        with trio.fail_after(5):
            tls, _ = await client_handshake(trio.SocketStream(sock), client_context(creds(authority, CLIENT)),
                                            frozenset({WEB}))
        driver = HboneClientDriver(tls)
        with trio.fail_after(10):  # the bug: for ever
            await driver.run()  # ends when the server closes the connection
    assert refused(mesh, reason="handshake_timeout", listener="hbone") == 1


@pytest.mark.parametrize("own_port", sorted(ZTUNNEL_POD_PORTS))
async def test_outbound_to_the_pods_own_ztunnel_port_is_refused_before_any_dial(authority, own_port):
    """Defect 1: a pod's connection to its own IP on one of ztunnel's listener ports would come back
    into ztunnel; it is reset at once, and nothing is dialled (no inbound connection is made)."""
    async with node(authority) as mesh:
        client = await mesh.app_connects("shop/client", (CLIENT_IP, own_port))
        await assert_reset(client)
        await mesh.settled()
    lines = mesh.log()
    assert [line["direction"] for line in lines] == ["outbound"]
    assert lines[0]["error"] == f"{CLIENT_IP}:{own_port} is ztunnel's own listener in pod shop/client: a loop"


async def test_failed_tls_handshakes_are_counted_and_logged_once_per_interval(authority, caplog):
    """A peer that floods 15008 with connections that are not TLS, or of another mesh, cannot flood the
    log: each failed handshake is counted, and one line says how many since the last."""
    async with node(authority) as mesh:
        for _ in range(20):
            sock = trio.socket.socket()
            await sock.bind((OFF_MESH_IP, 0))
            await sock.connect(mesh.pods["shop/web-0"].address(Slot.HBONE))
            stream = trio.SocketStream(sock)
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # not a TLS ClientHello
            with trio.fail_after(5), contextlib.suppress(trio.BrokenResourceError):
                while await stream.receive_some():  # until ztunnel closed it, having counted it first
                    pass
            await stream.aclose()
        assert refused(mesh, listener="hbone", reason="tls_handshake") == 20
    lines = [r for r in caplog.records if "tls_handshake" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]


async def test_malformed_connects_are_counted_and_logged_once_per_interval(authority, caplog):
    """A mesh peer (a valid certificate) sending CONNECTs that are not ones cannot flood the log. (The
    HBONE layer answers each 400 and hands it to ztunnel's hook; the hook is driven directly here: our
    own client cannot be made to send a malformed CONNECT.)"""
    from hbone.connect import ConnectRejection

    async with node(authority) as mesh:
        pod = next(p for p in mesh.pods.values() if p.key == "shop/web-0")
        for _ in range(20):
            mesh.ztunnel._on_malformed(pod, (CLIENT_IP, 40000), CLIENT, ConnectRejection(":authority is not ip:port"))
        assert refused(mesh, listener="hbone", reason="malformed_connect") == 20
    lines = [r for r in caplog.records if "malformed_connect" in r.getMessage()]
    assert len(lines) == 1 and "answered 400: :authority is not ip:port" in lines[0].getMessage()
