"""A pod's DNS redirected to ztunnel's proxy port, in a real netns (root): a query to the pod's
nameserver over UDP and TCP reaches the socket on 127.0.0.1:15053 and its reply comes back from the
nameserver's address and port 53; ztunnel's own marked sockets reach the nameserver itself; removal
gives the pod its plain DNS back; both are idempotent."""

from __future__ import annotations

import os
import socket
import subprocess
import uuid

import pytest

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces and nftables"),
]

from bpf.capture import PROXY_MARK  # noqa: E402
from bpf.dns_capture import TABLE, install_dns_redirect, redirect_ruleset, remove_dns_redirect  # noqa: E402
from mesh.netns import inside_netns, netns_path  # noqa: E402
from mesh.ports import DNS_PROXY_PORT  # noqa: E402

NAMESERVER = "10.99.0.53"


def test_ruleset_redirects_udp_and_tcp_port_53_and_spares_marked_and_loopback():
    script = redirect_ruleset()
    assert f"meta mark {PROXY_MARK:#x} return" in script
    assert "ip daddr 127.0.0.0/8 return" in script
    assert f"udp dport 53 redirect to :{DNS_PROXY_PORT}" in script
    assert f"tcp dport 53 redirect to :{DNS_PROXY_PORT}" in script
    # the exceptions come before the redirects: nft evaluates a chain's rules in order
    assert script.index("meta mark") < script.index("udp dport") and script.index("127.0.0.0/8") < script.index("udp")


@pytest.fixture
def pod_netns():
    """A netns standing in for a pod: lo up and an uplink (a veth pair of its own: this kernel has no
    dummy links) that holds the nameserver's address,
    so a query that is not redirected is answered by a server bound there."""
    name = f"ambdns-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for command in (["link", "set", "lo", "up"], ["link", "add", "eth0", "type", "veth", "peer", "name", "eth1"],
                        ["addr", "add", f"{NAMESERVER}/24", "dev", "eth0"], ["link", "set", "eth0", "up"],
                        ["link", "set", "eth1", "up"]):
            subprocess.run(["ip", "-n", name, *command], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=True)


def _socket(netns: str, kind: int, *, mark: bool = False) -> socket.socket:
    with inside_netns(netns):
        sock = socket.socket(socket.AF_INET, kind)
    sock.settimeout(5)
    if mark:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, PROXY_MARK)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return sock


def _servers(netns: str, address: tuple[str, int]) -> tuple[socket.socket, socket.socket]:
    udp, tcp = _socket(netns, socket.SOCK_DGRAM), _socket(netns, socket.SOCK_STREAM)
    udp.bind(address)
    tcp.bind(address)
    tcp.listen()
    return udp, tcp


def _ask_udp(netns: str, servers: dict[str, tuple[socket.socket, socket.socket]], *, mark: bool = False):
    """Send one datagram to the nameserver; return (which server got it, the reply's source)."""
    client = _socket(netns, socket.SOCK_DGRAM, mark=mark)
    with client:
        client.sendto(b"query", (NAMESERVER, 53))
        readable = _first_readable({name: udp for name, (udp, _) in servers.items()})
        data, peer = servers[readable][0].recvfrom(100)
        servers[readable][0].sendto(b"answer-from-" + readable.encode(), peer)
        reply, source = client.recvfrom(100)
    return readable, reply.decode(), source


def _ask_tcp(netns: str, servers: dict[str, tuple[socket.socket, socket.socket]]):
    client = _socket(netns, socket.SOCK_STREAM)
    with client:
        client.connect((NAMESERVER, 53))
        readable = _first_readable({name: tcp for name, (_, tcp) in servers.items()})
        conn, _ = servers[readable][1].accept()
        with conn:
            return readable, conn.getsockname(), client.getpeername()


def _first_readable(sockets: dict[str, socket.socket]) -> str:
    import select

    ready, _, _ = select.select(list(sockets.values()), [], [], 5)
    assert ready, "no server got the query within 5 s"
    return next(name for name, sock in sockets.items() if sock is ready[0])


def test_redirect_sends_the_pods_dns_to_the_proxy_port_and_back_from_the_nameserver(pod_netns):
    proxy = _servers(pod_netns, ("127.0.0.1", DNS_PROXY_PORT))
    nameserver = _servers(pod_netns, (NAMESERVER, 53))
    servers = {"proxy": proxy, "nameserver": nameserver}
    try:
        assert _ask_udp(pod_netns, servers)[0] == "nameserver"  # before: plain DNS

        install_dns_redirect(netns_path(pod_netns))
        install_dns_redirect(netns_path(pod_netns))  # idempotent: one table, same rules
        listed = subprocess.run(["ip", "netns", "exec", pod_netns, "nft", "list", "tables"], check=True,
                                capture_output=True, text=True).stdout
        assert listed.split().count(TABLE) == 1

        which, reply, source = _ask_udp(pod_netns, servers)
        assert (which, reply) == ("proxy", "answer-from-proxy")
        assert source == (NAMESERVER, 53)  # the pod's resolver accepts only this source

        which, local, peer = _ask_tcp(pod_netns, servers)
        assert which == "proxy" and local == ("127.0.0.1", DNS_PROXY_PORT) and peer == (NAMESERVER, 53)

        # ztunnel's forwarder (marked) reaches the real nameserver
        assert _ask_udp(pod_netns, servers, mark=True)[:2] == ("nameserver", "answer-from-nameserver")

        remove_dns_redirect(netns_path(pod_netns))
        remove_dns_redirect(netns_path(pod_netns))  # idempotent
        assert _ask_udp(pod_netns, servers)[0] == "nameserver"
    finally:
        for pair in servers.values():
            for sock in pair:
                sock.close()


def test_a_missing_netns_is_a_clear_error():
    with pytest.raises(FileNotFoundError):
        install_dns_redirect("/run/netns/ambdns-does-not-exist")
