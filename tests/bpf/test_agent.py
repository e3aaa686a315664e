"""The node agent's capture half: which pods to capture (from Workloads), the reconcile plan as
tables and properties, then (root) enrolling, adopting and releasing a pod of a real lab network,
observed with bpftool and `ip -j`, independently of the binding under test."""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import subprocess
import time
import uuid

import pytest
from hypothesis import given, strategies as st

from bpf.agent import (
    POD_FDS,
    Held,
    PodTarget,
    ReconcilePlan,
    adopt_pinned,
    enroll_pod,
    netns_inode,
    plan_reconcile,
    pod_fds,
    pods_to_capture,
    release_pod,
    route_captured,
)
from bpf.capture import LINK_PIN, MAPS, PodCapture, Slot, bypass_key, socket_cookie
from bpf.dns_capture import TABLE as DNS_TABLE
from bpf.enrollment import CAPTURE_TABLE, MARK_RULE_PRIORITY, TCP_RULE_PRIORITY
from bpf.libbpf import Map
from lab import network
from lab.topology import PodSpec, plan_lab
from mesh.api import workload_pb2 as wpb
from tests.bpf.test_capture import bpftool, netns_links
from tests.bpf.test_enrollment import ip_json

NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces and eBPF")


def root(test):
    """Mark a test that needs root (tests/bpf/test_capture.py marks its whole module so)."""
    return pytest.mark.root(NEEDS_ROOT(test))


IP, OTHER_IP = "10.244.0.5", "10.244.0.9"
NETNS, OTHER_NETNS = 4026532001, 4026532002  # netns inodes


def target(name: str, ip: str = IP, namespace: str = "default") -> PodTarget:
    return PodTarget(f"uid-{name}", namespace, name, f"sa-{name}", ip)


def targets(*pods: PodTarget) -> dict[str, PodTarget]:
    return {pod.key: pod for pod in pods}


# Which pods to capture.


def address(name: str = "web", namespace: str = "default", node: str = "node-0", ips: tuple[str, ...] = (IP,),
            protocol: int = wpb.HBONE) -> wpb.Address:
    return wpb.Address(workload=wpb.Workload(
        uid=f"cluster/pod/{namespace}/{name}", name=name, namespace=namespace, service_account=f"sa-{name}",
        node=node, tunnel_protocol=protocol, addresses=[ipaddress.ip_address(ip).packed for ip in ips]))


def test_a_hbone_workload_on_the_node_is_captured_under_its_pin_name():
    addresses = {"a": address("web", "shop", ips=(OTHER_IP,)), "b": address("db", "shop", node="node-1")}
    assert pods_to_capture(addresses, "node-0") == {
        "shop_web": PodTarget("cluster/pod/shop/web", "shop", "web", "sa-web", OTHER_IP),
    }


@pytest.mark.parametrize("resource", [
    pytest.param(address(node="node-1"), id="on another node"),
    pytest.param(address(protocol=wpb.NONE), id="not in the mesh (tunnel protocol NONE)"),
    pytest.param(address(ips=()), id="no address"),
    pytest.param(address(ips=("fd00::5",)), id="IPv6 only"),
    pytest.param(wpb.Address(service=wpb.Service(name="web", namespace="default")), id="a Service"),
])
def test_what_is_not_captured(resource):
    assert pods_to_capture({"x": resource, "y": address("kept")}, "node-0").keys() == {"default_kept"}


# The reconcile plan.


@pytest.mark.parametrize("wanted, held, inodes, plan", [
    pytest.param(targets(target("a")), {}, {"default_a": NETNS},
                 ReconcilePlan(enroll=("default_a",)), id="new pod: enroll"),
    pytest.param({}, {"default_a": Held(IP, NETNS)}, {},
                 ReconcilePlan(release=("default_a",)), id="no longer wanted: release"),
    pytest.param(targets(target("a")), {"default_a": Held(IP, NETNS)}, {"default_a": NETNS},
                 ReconcilePlan(keep=("default_a",)), id="same IP and netns: keep"),
    pytest.param(targets(target("a", OTHER_IP)), {"default_a": Held(IP, NETNS)}, {"default_a": NETNS},
                 ReconcilePlan(release=("default_a",), enroll=("default_a",)), id="IP changed: replace"),
    pytest.param(targets(target("a")), {"default_a": Held(IP, NETNS)}, {"default_a": OTHER_NETNS},
                 ReconcilePlan(release=("default_a",), enroll=("default_a",)), id="pod recreated: replace"),
    pytest.param(targets(target("a")), {}, {"default_a": None},
                 ReconcilePlan(waiting=("default_a",)), id="no netns yet: wait"),
    pytest.param(targets(target("a")), {"default_a": Held(IP, NETNS)}, {"default_a": None},
                 ReconcilePlan(release=("default_a",), waiting=("default_a",)), id="netns gone: release, wait"),
    pytest.param(targets(target("a")), {"default_a": Held(IP, 0)}, {"default_a": NETNS},
                 ReconcilePlan(release=("default_a",), enroll=("default_a",)), id="link gone: replace"),
    pytest.param(targets(target("a")), {"default_a": Held(None, NETNS)}, {"default_a": NETNS},
                 ReconcilePlan(release=("default_a",), enroll=("default_a",)), id="no config: replace"),
    pytest.param(
        targets(target("new"), target("same"), target("moved", OTHER_IP), target("pending")),
        {"default_gone": Held(IP, NETNS), "default_same": Held(IP, NETNS), "default_moved": Held(IP, NETNS)},
        {"default_new": NETNS, "default_same": NETNS, "default_moved": NETNS},
        ReconcilePlan(release=("default_gone", "default_moved"), enroll=("default_moved", "default_new"),
                      keep=("default_same",), waiting=("default_pending",)),
        id="mixture"),
])
def test_plan_reconcile(wanted, held, inodes, plan):
    assert plan_reconcile(wanted, held, inodes) == plan


NAMES = st.sampled_from(["a", "b", "c", "d"])


@given(wanted=st.dictionaries(NAMES, st.sampled_from([IP, OTHER_IP])),
       held=st.dictionaries(NAMES, st.builds(Held, st.sampled_from([IP, OTHER_IP, None]),
                                             st.sampled_from([0, NETNS, OTHER_NETNS]))),
       inodes=st.dictionaries(NAMES, st.sampled_from([None, NETNS, OTHER_NETNS])))
def test_after_the_plan_exactly_the_pods_with_a_netns_are_captured_each_bound_to_it(wanted, held, inodes):
    wanted = targets(*(target(name, ip) for name, ip in wanted.items()))
    held = {f"default_{name}": value for name, value in held.items()}
    inodes = {f"default_{name}": value for name, value in inodes.items()}
    plan = plan_reconcile(wanted, held, inodes)
    assert sorted(plan.enroll + plan.keep + plan.waiting) == sorted(wanted)  # each target once
    assert sorted(plan.release + plan.keep) == sorted(held)  # each held capture kept or released, once
    assert (held.keys() - plan.release) | set(plan.enroll) == {k for k in wanted if inodes.get(k) is not None}
    for key in plan.keep:
        assert held[key] == Held(wanted[key].ip, inodes[key])


# Enrolling, adopting and releasing in a real lab network (root).


@pytest.fixture
def lab():
    plan = plan_lab(f"agent{uuid.uuid4().hex[:6]}", [PodSpec("default", "web", 0)], 1)
    network.create(plan)
    yield plan
    network.destroy(plan.name)


@pytest.fixture
def pod(lab):
    return lab.pod("default", "web")


@pytest.fixture
def enrolled(pod, bpffs):
    enrollment = enroll_pod(bpffs, target("web", str(pod.ip)), pod.netns)
    yield enrollment
    enrollment.capture.close()


def inode_of(netns: str) -> int:
    return os.stat(network.netns_path(netns)).st_ino


def capture_rules(netns: str) -> list[int]:
    return sorted(rule["priority"] for rule in ip_json(netns, "rule")
                  if rule["priority"] in (MARK_RULE_PRIORITY, TCP_RULE_PRIORITY))


def capture_routes(netns: str) -> list[dict]:
    return ip_json(netns, "route", "show", "table", str(CAPTURE_TABLE))


def accept_local(netns: str) -> str:
    with network.inside_netns(netns):
        file = open("/proc/sys/net/ipv4/conf/eth0/accept_local")
    with file:
        return file.read().strip()


def ids(kind: str) -> set[int]:
    return {each["id"] for each in bpftool(kind, "show")}


@root
def test_enroll_attaches_one_program_to_the_pod_netns_pins_it_and_routes(pod, bpffs, enrolled):
    inode = inode_of(pod.netns)
    assert (enrolled.key, enrolled.held) == ("default_web", Held(str(pod.ip), inode))
    [link] = netns_links(inode)
    pins = bpffs / "default_web"
    assert sorted(os.listdir(pins)) == sorted([LINK_PIN, *MAPS])
    assert bpftool("link", "show", "pinned", str(pins / LINK_PIN))["id"] == link["id"]
    assert capture_rules(pod.netns) == [MARK_RULE_PRIORITY, TCP_RULE_PRIORITY]
    [route] = capture_routes(pod.netns)
    assert (route["type"], route["dev"], route["prefsrc"]) == ("local", "lo", str(pod.ip))
    assert accept_local(pod.netns) == "1"


@root
def test_enroll_replaces_pins_left_half_made(pod, bpffs):
    stray = PodCapture.load(IP)
    (bpffs / "default_web").mkdir()
    stray.maps["config"].pin(bpffs / "default_web" / "config")
    stray.close()
    enrollment = enroll_pod(bpffs, target("web", str(pod.ip)), pod.netns)
    try:
        assert enrollment.capture.pod_ip() == str(pod.ip)
        pinned = PodCapture.adopt(bpffs / "default_web")
        assert pinned.pod_ip() == str(pod.ip)  # the pins are the new capture's
        pinned.close()
    finally:
        enrollment.capture.close()


@root
def test_a_restarted_agent_adopts_the_pinned_pod_without_attaching_twice(pod, bpffs, enrolled):
    inode = inode_of(pod.netns)
    [link] = netns_links(inode)
    enrolled.capture.close()  # the agent exits: the pins keep the capture
    assert [each["id"] for each in netns_links(inode)] == [link["id"]]

    adopted = adopt_pinned(bpffs)
    try:
        assert list(adopted) == ["default_web"]
        assert adopted["default_web"].held == Held(str(pod.ip), inode)
        assert adopted["default_web"].target is None
        assert [each["id"] for each in netns_links(inode)] == [link["id"]]
        wanted = targets(target("web", str(pod.ip)))
        held = {key: e.held for key, e in adopted.items()}
        assert plan_reconcile(wanted, held, {"default_web": inode}) == ReconcilePlan(keep=("default_web",))
    finally:
        for enrollment in adopted.values():
            enrollment.capture.close()


def pin_partially(bpffs, name: str) -> int:
    """Pin only two maps of a capture under ``name``; returns the id of one of them."""
    half = PodCapture.load(IP)
    (bpffs / name).mkdir()
    half.maps["listeners"].pin(bpffs / name / "listeners")
    half.maps["config"].pin(bpffs / name / "config")
    half.close()
    return bpftool("map", "show", "pinned", str(bpffs / name / "listeners"))["id"]


@root
def test_adopt_skips_the_kernels_files_and_removes_pins_that_are_not_a_whole_capture(bpffs):
    kernel_files = sorted(os.listdir(bpffs))  # maps.debug and progs.debug, where the kernel has them
    pin_partially(bpffs, "default_half")
    assert adopt_pinned(bpffs) == {}
    assert sorted(os.listdir(bpffs)) == kernel_files


@root
def test_removed_partial_pins_leave_no_map_behind(bpffs):
    map_id = pin_partially(bpffs, "default_half")
    adopt_pinned(bpffs)
    # The unloaded program drops its own references to the maps after an RCU grace period; the
    # kernel offers no event for that, so the check polls, bounded.
    deadline = time.monotonic() + 5
    while map_id in ids("map") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert map_id not in ids("map")


@root
def test_pod_fds_are_the_netns_and_the_capture_maps_in_order(pod, enrolled):
    fds = pod_fds(enrolled, pod.netns)
    try:
        assert len(fds) == len(POD_FDS) == 3
        assert os.fstat(fds[0]).st_ino == inode_of(pod.netns)
        key = bypass_key(OTHER_IP, 40000, str(pod.ip), 8080)
        Map(fds[POD_FDS.index("bypass")], "bypass").update(key, b"\x01")
        assert enrolled.capture.maps["bypass"].lookup(key, 1) == b"\x01"
        with socket.create_server(("127.0.0.1", 0)) as sock:  # as ztunnel puts its listener in
            slot = Slot.INBOUND.to_bytes(4, "little")
            Map(fds[POD_FDS.index("listeners")], "listeners").update(slot, struct.pack("=Q", sock.fileno()))
            assert enrolled.capture.maps["listeners"].lookup(slot, 8) == struct.pack("=Q", socket_cookie(sock))
    finally:
        for fd in fds:
            os.close(fd)


@pytest.mark.parametrize("adopted", [False, True], ids=["held since enrolled", "adopted after a restart"])
@root
def test_release_removes_the_pins_the_program_and_the_routing(adopted, pod, bpffs, enrolled):
    info = enrolled.capture.link.info()
    assert info.id in ids("link") and info.prog_id in ids("prog")
    enrollment = enrolled
    if adopted:
        enrolled.capture.close()
        enrollment = adopt_pinned(bpffs)["default_web"]
    try:
        release_pod(bpffs, enrollment, pod.netns)
    finally:
        enrollment.capture.close()
    assert not (bpffs / "default_web").exists()
    assert info.id not in ids("link") and info.prog_id not in ids("prog")
    assert netns_links(inode_of(pod.netns)) == []
    assert capture_rules(pod.netns) == [] and capture_routes(pod.netns) == []
    assert accept_local(pod.netns) == "0"


def dns_tables(netns: str) -> list[str]:
    listed = subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "tables"], check=True,
                            capture_output=True, text=True).stdout
    return [line.split()[-1] for line in listed.splitlines() if line.startswith("table")]


@root
def test_an_adopted_capture_gets_its_routing_and_dns_redirect_whole_again(pod, bpffs, enrolled):
    """What the agent re-applies to an adopted capture (an agent that died halfway, a pod captured at
    CNI ADD): the routing and, with DNS capture on, the redirect; twice is the same as once; release
    removes both."""
    assert dns_tables(pod.netns) == []  # enrolled without DNS capture
    for _ in range(2):
        route_captured(pod.netns, str(pod.ip), dns_capture=True)
        assert capture_rules(pod.netns) == [MARK_RULE_PRIORITY, TCP_RULE_PRIORITY]
        assert dns_tables(pod.netns) == [DNS_TABLE]
    release_pod(bpffs, enrolled, pod.netns)
    assert capture_rules(pod.netns) == [] and dns_tables(pod.netns) == []


@root
def test_releasing_a_pod_whose_netns_is_gone_does_not_raise(lab, pod, bpffs, enrolled):
    info = enrolled.capture.link.info()
    network.remove_pod(lab, pod)
    assert netns_inode(pod.netns) is None
    release_pod(bpffs, enrolled, pod.netns)
    assert not (bpffs / "default_web").exists()
    assert info.id not in ids("link") and info.prog_id not in ids("prog")
