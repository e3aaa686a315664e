"""The capture program in the kernel (root): its classification through BPF_PROG_TEST_RUN, and its
life in a real network namespace: attach, pin, outlive its loader, adopt, unpin.

Test runs give the program a `bpf_sk_lookup` context and read back its verdict and the cookie of the
socket it selected; the three listeners are real listening sockets in the `listeners` SOCKMAP, so a
steering decision is checked by socket identity, not by a return code alone. What is attached and
loaded is observed with bpftool, independently of the binding under test.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import uuid

import pytest

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: loads eBPF programs into the kernel"),
]

from bpf.capture import OBJECT_PATH, SK_DROP, SK_PASS, Decision, PodCapture, Slot, bypass_key, socket_cookie  # noqa: E402

POD = "10.244.0.2"
OTHER_POD = "10.244.1.7"
VIP = "10.96.0.10"


@pytest.fixture
def capture():
    if not OBJECT_PATH.exists():
        pytest.fail(f"{OBJECT_PATH} is missing: `make bpf` builds it (make test does)")
    loaded = PodCapture.load(POD)
    listeners = {}
    for slot in Slot:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        loaded.set_listener(slot, sock)
        listeners[slot] = sock
    yield loaded, {slot: socket_cookie(sock) for slot, sock in listeners.items()}
    loaded.close()
    for sock in listeners.values():
        sock.close()


@pytest.mark.parametrize("name, remote, local, protocol, verdict, slot, decision", [
    ("outbound to a VIP", (POD, 40000), (VIP, 80), "tcp", SK_PASS, Slot.OUTBOUND, Decision.OUTBOUND),
    ("outbound to a remote pod", (POD, 40000), (OTHER_POD, 8080), "tcp", SK_PASS, Slot.OUTBOUND, Decision.OUTBOUND),
    ("outbound to port 15008", (POD, 40000), (OTHER_POD, 15008), "tcp", SK_PASS, Slot.OUTBOUND, Decision.OUTBOUND),
    ("inbound plaintext", (OTHER_POD, 40000), (POD, 8080), "tcp", SK_PASS, Slot.INBOUND, Decision.INBOUND),
    ("inbound HBONE", (OTHER_POD, 40000), (POD, 15008), "tcp", SK_PASS, Slot.HBONE, Decision.HBONE),
    ("loopback", ("127.0.0.1", 40000), ("127.0.0.1", 8080), "tcp", SK_PASS, None, Decision.PASS_LOOPBACK),
    ("pod to itself", (POD, 40000), (POD, 8080), "tcp", SK_PASS, None, Decision.PASS_SELF),
    ("UDP", (POD, 40000), (VIP, 53), "udp", SK_PASS, None, Decision.PASS_NOT_TCP4),
    ("to another local address", (OTHER_POD, 40000), ("10.244.0.99", 80), "tcp", SK_PASS, None, Decision.PASS_OTHER),
])
def test_classification(capture, name, remote, local, protocol, verdict, slot, decision):
    loaded, cookies = capture
    proto = socket.IPPROTO_TCP if protocol == "tcp" else socket.IPPROTO_UDP
    before = loaded.counters()
    assert loaded.test_run(remote, local, proto) == (verdict, cookies[slot] if slot is not None else 0), name
    after = loaded.counters()
    assert {d: after[d] - before[d] for d in Decision if after[d] != before[d]} == {decision: 1}


def test_bypass_lets_ztunnels_own_connection_reach_the_app(capture):
    loaded, cookies = capture
    loaded.maps["bypass"].update(bypass_key(OTHER_POD, 40001, POD, 8080), b"\x01")
    assert loaded.test_run((OTHER_POD, 40001), (POD, 8080)) == (SK_PASS, 0)
    # Only that exact 4-tuple: the same client on another port is captured.
    assert loaded.test_run((OTHER_POD, 40002), (POD, 8080)) == (SK_PASS, cookies[Slot.INBOUND])
    assert loaded.maps["bypass"].delete(bypass_key(OTHER_POD, 40001, POD, 8080))
    assert loaded.test_run((OTHER_POD, 40001), (POD, 8080)) == (SK_PASS, cookies[Slot.INBOUND])


def test_fails_closed_without_a_listener_and_open_only_when_told(capture):
    loaded, cookies = capture
    loaded.clear_listener(Slot.INBOUND)
    assert loaded.test_run((OTHER_POD, 40000), (POD, 8080)) == (SK_DROP, 0)
    assert loaded.counters()[Decision.DROP_NO_LISTENER] == 1
    loaded.set_enabled(POD, True, fail_open=True)
    assert loaded.test_run((OTHER_POD, 40000), (POD, 8080)) == (SK_PASS, 0)
    # The other listeners still steer.
    assert loaded.test_run((OTHER_POD, 40000), (POD, 15008)) == (SK_PASS, cookies[Slot.HBONE])


def test_disabled_config_passes_everything(capture):
    loaded, _ = capture
    loaded.set_enabled(POD, False)
    assert loaded.test_run((POD, 40000), (VIP, 80)) == (SK_PASS, 0)
    assert loaded.counters()[Decision.PASS_DISABLED] == 1


def bpftool(*args: str):
    if shutil.which("bpftool") is None:
        pytest.fail("these tests observe the kernel with bpftool: install it (make test does)")
    return json.loads(subprocess.run(["bpftool", "-j", *args], check=True, capture_output=True, text=True).stdout)


def netns_links(netns_inode: int) -> list[dict]:
    return [link for link in bpftool("link", "show") if link.get("type") == "netns"
            and link.get("netns_ino") == netns_inode]


@pytest.fixture
def pod_netns():
    from pyroute2 import netns

    name = f"amb-bpftest{uuid.uuid4().hex[:6]}.pod"
    netns.create(name)
    path = f"/var/run/netns/{name}"
    fd = os.open(path, os.O_RDONLY)
    yield fd, os.stat(path).st_ino
    os.close(fd)
    netns.remove(name)


def test_pinned_capture_outlives_its_loader_and_is_adopted_not_attached_twice(pod_netns, bpffs):
    netns_fd, netns_inode = pod_netns
    loaded = PodCapture.load(POD)
    loaded.attach(netns_fd)
    (link,) = netns_links(netns_inode)
    loaded.pin(bpffs / "pod-a")
    loaded.close()  # the agent goes away
    assert [held["id"] for held in netns_links(netns_inode)] == [link["id"]]

    adopted = PodCapture.adopt(bpffs / "pod-a")
    assert [held["id"] for held in netns_links(netns_inode)] == [link["id"]]  # the same link, no second one
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    adopted.set_listener(Slot.INBOUND, sock)  # the adopted maps are the program's maps
    slot = Slot.INBOUND.to_bytes(4, "little")
    assert int.from_bytes(adopted.maps["listeners"].lookup(slot, 8), "little") == socket_cookie(sock)
    sock.close()

    PodCapture.unpin(bpffs / "pod-a")
    assert not (bpffs / "pod-a").exists()
    assert len(netns_links(netns_inode)) == 1  # still held by the adopter's fd
    adopted.close()
    assert netns_links(netns_inode) == []
    assert link["prog_id"] not in {p["id"] for p in bpftool("prog", "show")}  # its program went with it


BPF_LINK_TYPE_NETNS, BPF_SK_LOOKUP = 5, 36  # from the kernel's uapi/linux/bpf.h


def test_link_info_names_the_netns_and_program_as_bpftool_does(pod_netns):
    netns_fd, netns_inode = pod_netns
    loaded = PodCapture.load(OTHER_POD)
    try:
        assert loaded.netns_inode() == 0  # not attached yet
        loaded.attach(netns_fd)
        info = loaded.link.info()
        [link] = netns_links(netns_inode)
        assert (info.id, info.prog_id, info.netns_inode) == (link["id"], link["prog_id"], netns_inode)
        assert (info.type, info.attach_type) == (BPF_LINK_TYPE_NETNS, BPF_SK_LOOKUP)
        assert bpftool("prog", "show", "id", str(info.prog_id))["name"] == "capture"
        assert loaded.netns_inode() == netns_inode
        assert loaded.pod_ip() == OTHER_POD
    finally:
        loaded.close()
