"""The lab's network, built for real in network namespaces (root only).

Pods talk over TCP with small Python programs run inside their netns: the server prints a line once it
listens (the test waits for that line, never sleeps) and sends each client the address it sees. What
the lab built is observed with `ip` (iproute2), independently of the pyroute2 code under test. Every
lab gets a unique name and is destroyed by its fixture, even when a test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, ip_network

import pytest

from lab.network import LabExistsError, add_pod, create, destroy, lab_netns, remove_pod, run_in_netns
from lab.topology import LabPlan, PodSpec, plan_lab

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the lab creates network namespaces"),
]

PORT = 8080
LAB_NETWORKS = [IPv4Network("10.244.0.0/16"), IPv4Network("10.255.0.0/24")]
LOOPBACK = IPv4Network("127.0.0.0/8")

# Answers every connection with the client's address as the server sees it.
SERVER = f"""
import socket
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", {PORT}))
server.listen()
print("listening", flush=True)
while True:
    conn, (client_ip, _) = server.accept()
    conn.sendall(client_ip.encode() + b"\\n")
    conn.close()
"""
CLIENT = f"""
import socket, sys
try:
    with socket.create_connection((sys.argv[1], {PORT}), timeout=5) as conn:
        print(conn.makefile().readline().strip())
except ConnectionRefusedError:
    print("refused")
"""


def ip_json(*args: str):
    if shutil.which("ip") is None:
        pytest.fail("these tests observe the lab with `ip`: install iproute2")
    out = subprocess.run(["ip", "-j", *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out) if out.strip() else []


def root_netns_state() -> dict:
    """The root netns's links, addresses and routes, without the fields that change by themselves."""
    def without(keys, items):
        return [{k: v for k, v in item.items() if k not in keys} for item in items]

    addresses = ip_json("addr")
    for link in addresses:
        link["addr_info"] = without({"valid_life_time", "preferred_life_time"}, link.get("addr_info", []))
    return {
        "links": ip_json("link"),
        "addresses": addresses,
        "routes4": ip_json("-4", "route", "show", "table", "all"),
        "routes6": without({"expires"}, ip_json("-6", "route", "show", "table", "all")),
    }


@pytest.fixture
def make_lab():
    """Plans and creates labs with unique names; destroys each of them afterwards."""
    names = []

    def make(suffix: str, pods: list[PodSpec], node_count: int = 2) -> LabPlan:
        plan = plan_lab(f"t{os.getpid()}-{suffix}", pods, node_count=node_count)
        names.append(plan.name)
        create(plan)
        return plan

    yield make
    for name in names:
        destroy(name)
    assert not [ns for name in names for ns in lab_netns(name)]


@pytest.fixture
def servers():
    """Starts the echo server in a netns and returns once it listens; kills them all afterwards."""
    started = []

    def start(netns: str) -> None:
        server = run_in_netns(netns, [sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
        started.append(server)
        assert server.stdout.readline() == "listening\n", f"the server in {netns} did not start"

    yield start
    for server in started:
        server.kill()
        server.wait()
        server.stdout.close()


def connect(netns: str, address: IPv4Address) -> str:
    """Connects from `netns` to the echo server at `address`: what it answered, or "refused"."""
    client = run_in_netns(netns, [sys.executable, "-c", CLIENT, str(address)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    out, err = client.communicate(timeout=10)
    assert client.returncode == 0, err
    return out.strip()


FOUR_PODS = [PodSpec("shop", "a"), PodSpec("shop", "b"), PodSpec("bank", "c"), PodSpec("bank", "d")]


def test_pods_talk_on_the_same_node_across_nodes_and_to_the_control_plane(make_lab, servers):
    plan = make_lab("talk", FOUR_PODS)
    a, b, c, d = (plan.pod(spec.namespace, spec.name) for spec in FOUR_PODS)
    assert (a.node, b.node, c.node, d.node) == (0, 1, 0, 1)

    servers(a.netns)
    assert connect(c.netns, a.ip) == str(c.ip)  # same node: through br-pods
    assert connect(b.netns, a.ip) == str(b.ip)  # other node: through the fabric, real client IP
    assert connect(d.netns, a.ip) == str(d.ip)

    servers(plan.control_plane.netns)
    assert connect(d.netns, plan.control_plane.address.ip) == str(d.ip)


def test_no_lab_netns_has_a_route_out_of_the_lab(make_lab):
    plan = make_lab("routes", FOUR_PODS)
    pods = {pod.netns: pod for pod in plan.pods}
    for netns in plan.all_netns:
        assert ip_json("-n", netns, "-6", "route", "show", "table", "all") == [], f"{netns} has IPv6 routes"
        for route in ip_json("-n", netns, "-4", "route", "show", "table", "all"):
            if route["dst"] == "default":
                assert netns in pods, f"{netns} has a default route: {route}"
                assert route["gateway"] == str(plan.node_of(pods[netns]).bridge_address.ip)
                continue
            destination = ip_network(route["dst"])
            allowed = LAB_NETWORKS + ([LOOPBACK] if route.get("type") in ("local", "broadcast") else [])
            assert any(destination.subnet_of(net) for net in allowed), f"{netns}: {route}"


def test_destroy_leaves_the_root_netns_as_it_was_and_can_run_twice(make_lab):
    before = root_netns_state()
    plan = make_lab("clean", FOUR_PODS)
    assert sorted(lab_netns(plan.name)) == sorted(plan.all_netns)

    assert sorted(destroy(plan.name)) == sorted(plan.all_netns)
    assert destroy(plan.name) == []
    assert root_netns_state() == before
    listed = subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, text=True).stdout
    assert plan.netns_prefix not in listed


def test_create_refuses_an_existing_lab_and_cleans_up_after_a_failure(make_lab):
    plan = make_lab("twice", FOUR_PODS[:1])
    with pytest.raises(LabExistsError, match="already has namespaces"):
        create(plan)
    assert sorted(lab_netns(plan.name)) == sorted(plan.all_netns)  # the running lab is untouched

    destroy(plan.name)
    # A plan that fails halfway (the same pod twice: its netns exists already) leaves nothing behind.
    failing = replace(plan, pods=(plan.pods[0], plan.pods[0]))
    with pytest.raises(FileExistsError):
        create(failing)
    assert lab_netns(plan.name) == []


def test_a_pod_is_added_and_removed_live(make_lab, servers):
    plan = make_lab("live", FOUR_PODS)
    a, b = plan.pod("shop", "a"), plan.pod("shop", "b")
    servers(a.netns)

    grown = plan_lab(plan.name, FOUR_PODS + [PodSpec("new", "e")], previous=plan)
    e = grown.pod("new", "e")
    add_pod(grown, e)
    assert connect(e.netns, a.ip) == str(e.ip)

    shrunk = plan_lab(plan.name, FOUR_PODS[:1] + FOUR_PODS[2:] + [PodSpec("new", "e")], previous=grown)
    remove_pod(shrunk, b)
    remove_pod(shrunk, b)  # already gone: nothing to do
    assert b.netns not in lab_netns(plan.name)
    node_links = [link["ifname"] for link in ip_json("-n", plan.node_of(b).netns, "link")]
    assert b.node_veth not in node_links and e.node_veth not in node_links
    assert connect(e.netns, a.ip) == str(e.ip)  # the others are untouched
    assert sorted(lab_netns(plan.name)) == sorted(shrunk.all_netns)


def test_two_labs_run_at_once_without_seeing_each_other(make_lab, servers):
    first = make_lab("one", FOUR_PODS[:2])
    second = make_lab("two", FOUR_PODS[:2])
    assert not set(first.all_netns) & set(second.all_netns)
    # Same addresses in both labs: 10.244.0.2 on node 0 and 10.244.1.2 on node 1.
    assert [p.ip for p in first.pods] == [p.ip for p in second.pods]

    target = second.pods[1]
    servers(target.netns)
    assert connect(second.pods[0].netns, target.ip) == str(second.pods[0].ip)
    # From the first lab that address is the first lab's own pod, where nothing listens.
    assert connect(first.pods[0].netns, target.ip) == "refused"


def test_each_node_bridge_has_its_own_fixed_locally_administered_mac():
    from lab.network import pod_bridge_mac

    macs = [pod_bridge_mac(index) for index in range(300)]
    assert len(set(macs)) == 300  # one per node, so pods never see the gateway's MAC change
    for mac in macs:
        first = int(mac.split(":")[0], 16)
        assert first & 0b10 and not first & 0b1  # locally administered, unicast
