"""What a node lets its pods send (root): only their own source address, and nothing to the metrics
ports of the nodes and the control plane, while readiness stays open to them.

A server in a netns listens on the ports given and answers each connection with the client address
it sees (it prints a line once it listens; the test waits for that line, never sleeps). A client
connects from a netns, optionally from a given source address, and prints what it got, "refused" or
"timeout": a dropped SYN is a connect that times out, after CONNECT_TIMEOUT, where an allowed
connection inside the machine takes milliseconds.
"""

from __future__ import annotations

import subprocess
import sys
from ipaddress import IPv4Address, IPv4Interface

import pytest

from lab.network import rtnl, run_in_netns
from lab.topology import PodSpec
from tests.lab.test_network import FOUR_PODS, make_lab, pytestmark  # noqa: F401,F811 (a fixture, root marks)

CONNECT_TIMEOUT = 1.0  # seconds: 100x what a connection inside the machine takes
STATS, READINESS, CONTROLPLANE_METRICS = 15020, 15021, 15014

SERVER = """
import selectors, socket, sys
selector = selectors.DefaultSelector()
for port in sys.argv[1:]:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", int(port)))
    server.listen()
    selector.register(server, selectors.EVENT_READ)
print("listening", flush=True)
while True:
    for key, _ in selector.select():
        conn, (client_ip, _) = key.fileobj.accept()
        conn.sendall(client_ip.encode() + b"\\n")
        conn.close()
"""
CLIENT = """
import socket, sys
address, port, source, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
try:
    with socket.create_connection((address, port), timeout=timeout,
                                  source_address=(source, 0) if source else None) as conn:
        print(conn.makefile().readline().strip())
except ConnectionRefusedError:
    print("refused")
except TimeoutError:
    print("timeout")
"""


@pytest.fixture
def servers():
    started = []

    def start(netns: str, *ports: int) -> None:
        argv = [sys.executable, "-c", SERVER, *map(str, ports)]
        server = run_in_netns(netns, argv, stdout=subprocess.PIPE, text=True)
        started.append(server)
        assert server.stdout.readline() == "listening\n", f"the server in {netns} did not start"

    yield start
    for server in started:
        server.kill()
        server.wait()
        server.stdout.close()


def connect(netns: str, address: IPv4Address, port: int, source: IPv4Address | None = None) -> str:
    argv = [sys.executable, "-c", CLIENT, str(address), str(port), str(source or ""), str(CONNECT_TIMEOUT)]
    client = run_in_netns(netns, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = client.communicate(timeout=10)
    assert client.returncode == 0, err
    return out.strip()


def add_address(netns: str, address: IPv4Interface) -> None:
    """What the spoofing pod did: a second address on its own eth0."""
    with rtnl(netns) as ipr:
        (index,) = ipr.link_lookup(ifname="eth0")
        ipr.addr("add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen)


def test_a_pod_connects_from_its_own_address_only(make_lab, servers):  # noqa: F811
    plan = make_lab("spoof", FOUR_PODS)
    a, b, c = plan.pod("shop", "a"), plan.pod("shop", "b"), plan.pod("bank", "c")
    assert a.node == c.node == 0 and b.node == 1
    servers(a.netns, 8080)
    servers(b.netns, 8080)
    spare = IPv4Interface(f"{plan.nodes[0].pod_cidr.broadcast_address - 1}/24")  # free, of c's node CIDR
    add_address(c.netns, spare)

    assert connect(c.netns, a.ip, 8080) == str(c.ip)  # its own address: same node and across nodes
    assert connect(c.netns, b.ip, 8080) == str(c.ip)
    assert connect(c.netns, a.ip, 8080, source=spare.ip) == "timeout"
    assert connect(c.netns, b.ip, 8080, source=spare.ip) == "timeout"
    # Another pod's address, which the CIDR's ipBlocks would trust just the same.
    add_address(c.netns, IPv4Interface(f"{a.ip}/32"))
    assert connect(c.netns, b.ip, 8080, source=a.ip) == "timeout"
    assert connect(a.netns, b.ip, 8080) == str(a.ip)  # a itself is not affected


def test_pods_reach_readiness_but_not_metrics_which_the_fabric_reaches(make_lab, servers):  # noqa: F811
    plan = make_lab("metrics", [PodSpec("shop", "a", node=0), PodSpec("shop", "b", node=1)])
    a = plan.pod("shop", "a")
    node_0, node_1, cp = plan.nodes[0], plan.nodes[1], plan.control_plane
    for node in plan.nodes:
        servers(node.netns, STATS, READINESS)
    servers(cp.netns, CONTROLPLANE_METRICS)

    own_node = (node_0.bridge_address.ip, node_0.fabric_address.ip)
    for address in (*own_node, node_1.fabric_address.ip, node_1.bridge_address.ip):
        assert connect(a.netns, address, READINESS) == str(a.ip), address
        assert connect(a.netns, address, STATS) == "timeout", address
    assert connect(a.netns, cp.address.ip, CONTROLPLANE_METRICS) == "timeout"

    # The fabric side, where scraping happens: another node, the control plane, the node itself.
    assert connect(node_1.netns, node_0.fabric_address.ip, STATS) == str(node_1.fabric_address.ip)
    assert connect(cp.netns, node_0.fabric_address.ip, STATS) == str(cp.address.ip)
    assert connect(node_0.netns, IPv4Address("127.0.0.1"), STATS) == "127.0.0.1"
    assert connect(node_0.netns, cp.address.ip, CONTROLPLANE_METRICS) == str(node_0.fabric_address.ip)
