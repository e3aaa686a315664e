"""A pod enrolled into capture, in a real lab network (root): its outbound TCP lands on the outbound
listener with the original destination as getsockname(), inbound lands on the inbound listener with
the original port, and releasing the pod restores plain connectivity and removes every rule and route.
The listeners stand in for ztunnel's: created inside the pod's netns, as DESIGN.md section 5 says."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid

import pytest

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces and eBPF"),
]

from bpf.capture import PROXY_MARK, PodCapture, Slot  # noqa: E402
from bpf.enrollment import CAPTURE_TABLE, install_routing, remove_routing  # noqa: E402
from lab import network  # noqa: E402
from lab.topology import PodSpec, plan_lab  # noqa: E402

IP_TRANSPARENT = 19
CONNECT = ("import socket, sys\n"
           "s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)\n"
           "print(s.recv(100).decode())")


@pytest.fixture
def lab():
    plan = plan_lab(f"bpfe{uuid.uuid4().hex[:6]}", [PodSpec("a", "client", 0), PodSpec("b", "server", 0)], 1)
    network.create(plan)
    yield plan
    network.destroy(plan.name)


def listener(netns: str, port: int, transparent: bool = False) -> socket.socket:
    sock = network.socket_in_netns(netns)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, PROXY_MARK)
    if transparent:
        sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    sock.bind(("0.0.0.0", port))
    sock.listen()
    sock.settimeout(5)
    return sock


def connect_from(netns: str, ip: str, port: int) -> subprocess.Popen:
    return network.run_in_netns(netns, [sys.executable, "-c", CONNECT, ip, str(port)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def ip_json(netns: str, *args: str):
    shown = subprocess.run(["ip", "-n", netns, "-j", *args], check=True, capture_output=True, text=True)
    return json.loads(shown.stdout or "[]")


def test_enrolled_pod_is_captured_both_ways_and_release_restores_it(lab):
    client, server = lab.pod("a", "client"), lab.pod("b", "server")
    rules_before = ip_json(client.netns, "rule")
    install_routing(client.netns, str(client.ip))
    capture = PodCapture.load(str(client.ip))
    fd = os.open(f"/var/run/netns/{client.netns}", os.O_RDONLY)
    capture.attach(fd)
    os.close(fd)
    outbound, inbound = listener(client.netns, 15001, transparent=True), listener(client.netns, 15006)
    capture.set_listener(Slot.OUTBOUND, outbound)
    capture.set_listener(Slot.INBOUND, inbound)
    try:
        # Outbound: to the server pod's IP, landing on 15001 with the original destination.
        proc = connect_from(client.netns, str(server.ip), 8080)
        conn, peer = outbound.accept()
        assert conn.getsockname() == (str(server.ip), 8080) and peer[0] == str(client.ip)
        conn.sendall(b"captured outbound")
        assert proc.communicate(timeout=10)[0].strip() == "captured outbound"
        conn.close()
        # Inbound: from the server pod to any port of the client, landing on 15006 with that port.
        proc = connect_from(server.netns, str(client.ip), 9999)
        conn, peer = inbound.accept()
        assert conn.getsockname() == (str(client.ip), 9999) and peer[0] == str(server.ip)
        conn.sendall(b"captured inbound")
        assert proc.communicate(timeout=10)[0].strip() == "captured inbound"
        conn.close()
        assert ip_json(client.netns, "route", "show", "table", str(CAPTURE_TABLE))
    finally:
        outbound.close()
        inbound.close()
        capture.close()  # not pinned: the link goes with the loader
        remove_routing(client.netns)

    assert ip_json(client.netns, "rule") == rules_before
    assert ip_json(client.netns, "route", "show", "table", str(CAPTURE_TABLE)) == []
    # Released: the connection goes to the server pod itself (nothing listens there: refused).
    proc = connect_from(client.netns, str(server.ip), 8080)
    assert "ConnectionRefusedError" in proc.communicate(timeout=10)[1]
