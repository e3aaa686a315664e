"""eBPF capture in the lab, end to end (root): the node agents enroll ambient pods and hand them over ZDS
to a stand-in ztunnel per node (tests/e2e/standin_ztunnel.py), which opens the three listeners in each
pod's netns and answers every connection with where it landed.

What is checked, through the commands a user types and the kernel's own view (bpftool, ip):
- outbound to a Service VIP and to a remote pod lands on 15001 with the original destination;
  inbound to any port on 15006 with that port; 15008 on the HBONE listener; UDP is untouched; a pod
  outside the mesh is not captured;
- fail closed: with the agent killed (SIGKILL) capture stays; the restarted agent adopts it without a
  second program; with the stand-in stopped, connections to the app are dropped, never delivered;
  the stand-in that comes back gets its pods replayed;
- unlabelling the namespace releases its pods live (plain connectivity back, rules and routes gone),
  labelling another enrolls its pods live; after release and after `lab down` no BPF program, map,
  link or pin of the lab remains.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bpf.enrollment import CAPTURE_TABLE, MARK_RULE_PRIORITY, TCP_RULE_PRIORITY
from tests.e2e.lab_driver import NAMESPACES, SERVICE, Lab, client_pod, echo_pod, find_pod
from tests.lab.test_network import ip_json

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces and eBPF"),
]

REPO = Path(__file__).resolve().parents[2]

UDP_ECHO = """import socket
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", 5353))
while True:
    data, peer = sock.recvfrom(512)
    sock.sendto(data + b" from " + peer[0].encode(), peer)
"""

UDP_POD = """
apiVersion: v1
kind: Pod
metadata: {name: udp, namespace: plain}
spec:
  nodeName: node-1
  containers:
  - name: udp
    command: [python3, udp_echo.py]
"""

# Connect (bounded), then read one line: prints the line, or says which step timed out (exit 2).
PROBE = """import socket, sys
try:
    sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
except (socket.timeout, TimeoutError):
    print("connect timed out"); sys.exit(2)
try:
    print(sock.makefile().readline().strip() or "closed without a line")
except (socket.timeout, TimeoutError):
    print("connected, no answer"); sys.exit(2)
"""

UDP_PROBE = """import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(5)
sock.sendto(b"ping", (sys.argv[1], 5353))
print(sock.recv(512).decode())
"""


def probe(lab: Lab, client: str, ip: str, port: int, timeout: float = 5.0) -> dict | str:
    out = lab.exec(client, "python3", "-c", PROBE, ip, str(port), str(timeout), check=False).stdout.strip()
    return json.loads(out) if out.startswith("{") else out


class StandIn:
    """A stand-in ztunnel process for one node, following that node's agent."""

    def __init__(self, lab: Lab, node: str) -> None:
        self.socket = lab.state_root / lab.name / "nodes" / node / "zds.sock"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.e2e.standin_ztunnel", str(self.socket)],
                                     cwd=REPO, stdout=subprocess.PIPE, text=True)
        with selectors.DefaultSelector() as selector:  # its first "connected" line, bounded
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            assert selector.select(timeout=30), "the stand-in ztunnel did not connect to the node agent"
        assert self.proc.stdout.readline().strip() == "connected"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)
        if self.proc is not None:
            self.proc.stdout.close()
        self.proc = None


@pytest.fixture
def standins():
    started: list[StandIn] = []

    def start(lab: Lab, node: str) -> StandIn:
        standin = StandIn(lab, node)
        started.append(standin)
        standin.start()
        return standin

    yield start
    for standin in started:
        standin.stop()


def bpftool(*args: str):
    out = subprocess.run(["bpftool", "-j", *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out or "[]")


def netns_inode(netns: str) -> int:
    return os.stat(f"/var/run/netns/{netns}").st_ino


def capture_objects(netns_inodes: set[int]) -> dict[str, set[int]]:
    """The ids of the sk_lookup links attached to these netns, their programs and the programs' maps."""
    links = [link for link in bpftool("link", "show") if link.get("netns_ino") in netns_inodes]
    progs = {link["prog_id"] for link in links}
    maps = {map_id for prog in bpftool("prog", "show") if prog["id"] in progs for map_id in prog.get("map_ids", ())}
    return {"links": {link["id"] for link in links}, "progs": progs, "maps": maps}


def still_loaded(objects: dict[str, set[int]]) -> dict[str, set[int]]:
    existing = {"links": {link["id"] for link in bpftool("link", "show")},
                "progs": {prog["id"] for prog in bpftool("prog", "show")},
                "maps": {m["id"] for m in bpftool("map", "show")}}
    return {kind: ids & existing[kind] for kind, ids in objects.items() if ids & existing[kind]}


def capture_rules(netns: str) -> list[dict]:
    return [rule for rule in ip_json("-n", netns, "rule")
            if rule.get("priority") in (MARK_RULE_PRIORITY, TCP_RULE_PRIORITY)]


def enrolled(status: dict, namespace: str) -> bool:
    return all(p["enrolled"] for p in status["pods"] if p["namespace"] == namespace)


def test_capture_fail_closed_release_and_no_leaks(make_lab, standins):
    lab = make_lab([NAMESPACES, SERVICE, echo_pod("mesh", "server", "node-1"), client_pod("mesh", "client", "node-0"),
                    client_pod("plain", "client", "node-0"), echo_pod("plain", "echo", "node-1"), UDP_POD])
    (lab.config_dir / "udp_echo.py").write_text(UDP_ECHO)
    lab.up(nodes=2, ztunnel=False)  # the stand-ins are the ztunnels here
    standins(lab, "node-0")
    node1 = standins(lab, "node-1")
    status = lab.wait_for(lambda s: enrolled(s, "mesh"), "the enrollment of the mesh pods")
    pods = {(p["namespace"], p["name"]): p for p in status["pods"]}
    assert [p["capture"] for p in status["pods"] if p["namespace"] == "mesh"] == ["enrolled"] * 2
    assert all(p["capture"] == "-" and not p["enrolled"] for p in status["pods"] if p["namespace"] == "plain")
    server, client, plain = pods[("mesh", "server")], pods[("mesh", "client")], pods[("plain", "client")]
    vip = next(s["vip"] for s in status["services"] if s["name"] == "server")
    objects = capture_objects({netns_inode(server["netns"]), netns_inode(client["netns"])})
    assert len(objects["links"]) == 2 and len(objects["progs"]) == 2, objects

    # Outbound, to a Service VIP and to a pod on another node: 15001, with the original destination.
    to_vip = probe(lab, "mesh/client", vip, 80)
    assert to_vip == {"pod": "mesh/client", "listener": 15001, "original": [vip, 80], "peer": to_vip["peer"]}
    assert to_vip["peer"][0] == client["ip"]
    to_pod = probe(lab, "mesh/client", server["ip"], 8080)
    assert (to_pod["pod"], to_pod["listener"], to_pod["original"]) == ("mesh/client", 15001, [server["ip"], 8080])
    # Inbound to any port: 15006 with that port and the client's address; 15008: the HBONE listener.
    inbound = probe(lab, "plain/client", server["ip"], 9999)
    assert (inbound["pod"], inbound["listener"], inbound["original"]) == ("mesh/server", 15006, [server["ip"], 9999])
    assert inbound["peer"][0] == plain["ip"]
    hbone = probe(lab, "plain/client", server["ip"], 15008)
    assert (hbone["pod"], hbone["listener"], hbone["original"]) == ("mesh/server", 15008, [server["ip"], 15008])
    # UDP is untouched: the UDP server answers and saw the enrolled client's own address.
    udp = lab.exec("mesh/client", "python3", "-c", UDP_PROBE, pods[("plain", "udp")]["ip"]).stdout.strip()
    assert udp == f"ping from {client['ip']}"
    # A pod outside the mesh is not captured: the app itself answers.
    assert lab.get("plain/client", pods[("plain", "echo")]["ip"])["client"]["address"] == plain["ip"]

    # Fail closed. The agent killed: capture stays (the stand-in's listeners are still in the pinned
    # SOCKMAP), and an inbound plaintext connection still lands on 15006, not on the app.
    agent = next(c for n in status["nodes"] if n["name"] == "node-1" for c in n["components"])
    os.kill(agent["pid"], signal.SIGKILL)
    held = probe(lab, "plain/client", server["ip"], 8080)
    assert (held["listener"], held["original"]) == (15006, [server["ip"], 8080]), held
    # The restarted agent adopts the pinned capture: still one program on the pod's netns.
    lab.wait_for(lambda s: next(c for n in s["nodes"] if n["name"] == "node-1" for c in n["components"])
                 ["restarts"] >= 1 and find_pod(s, "mesh", "server")["enrolled"], "the agent's restart and replay")
    assert "adopted its pinned capture" in lab.run("lab", "logs", "--name", lab.name, agent["name"]).stdout
    now = capture_objects({netns_inode(server["netns"])})["links"]
    assert len(now) == 1 and now <= objects["links"], (now, objects)  # the same link, not a second one
    assert probe(lab, "plain/client", server["ip"], 9999)["listener"] == 15006

    # The stand-in stopped: no listener, so connections to the app are dropped (the SYN unanswered).
    node1.stop()
    lab.wait_for(lambda s: not find_pod(s, "mesh", "server")["enrolled"], "ztunnel's absence in the status")
    assert probe(lab, "plain/client", server["ip"], 8080, timeout=1) == "connect timed out"  # the app would accept
    # It comes back: the agent replays its pods, and capture serves again.
    node1.start()
    lab.wait_for(lambda s: find_pod(s, "mesh", "server")["enrolled"], "the replay to the new stand-in")
    assert probe(lab, "plain/client", server["ip"], 9999)["listener"] == 15006

    # Unlabelling the namespace releases its pods live: plain connectivity, no rules, routes or BPF.
    objects = capture_objects({netns_inode(server["netns"]), netns_inode(client["netns"])})
    (lab.config_dir / "apps.yaml").write_text((lab.config_dir / "apps.yaml").read_text().replace(
        "labels: {istio.io/dataplane-mode: ambient}", "labels: {}"))
    status = lab.wait_for(lambda s: all(p["capture"] == "-" for p in s["pods"]), "the release of the mesh pods")
    assert lab.get("mesh/client", pods[("plain", "echo")]["ip"])["client"]["address"] == client["ip"]
    assert lab.get("plain/client", server["ip"])["pod"]["name"] == "server"
    for pod in (server, client):
        assert capture_rules(pod["netns"]) == []
        assert ip_json("-n", pod["netns"], "route", "show", "table", str(CAPTURE_TABLE)) == []
    assert still_loaded(objects) == {}
    for node in ("node-0", "node-1"):
        pins = lab.state_root / lab.name / "nodes" / node / "bpf"
        assert sorted(p.name for p in pins.iterdir() if p.is_dir()) == []

    # Labelling another namespace enrolls its pods live.
    (lab.config_dir / "apps.yaml").write_text((lab.config_dir / "apps.yaml").read_text().replace(
        "metadata: {name: plain}", "metadata: {name: plain, labels: {istio.io/dataplane-mode: ambient}}"))
    status = lab.wait_for(lambda s: enrolled(s, "plain"), "the enrollment of the plain pods")
    assert probe(lab, "mesh/client", pods[("plain", "echo")]["ip"], 8080)["listener"] == 15006
    assert capture_rules(plain["netns"]) != []
    objects = capture_objects({netns_inode(pods[key]["netns"]) for key in pods if key[0] == "plain"})
    assert len(objects["links"]) == 3

    # lab down: every pin goes with the node's bpffs, and with it every program, map and link.
    state = lab.state_root / lab.name
    lab.down()
    assert still_loaded(objects) == {}
    assert not any(str(state) in line for line in Path("/proc/self/mountinfo").read_text().splitlines())
