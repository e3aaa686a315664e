"""ztunnel in the lab, end to end (root): real capture, real ztunnels, real mTLS across nodes.

One lab for the whole module (the ``mesh`` fixture: up once, down at the end, also after a failure),
then one test per phase, in file order, so that a failure names its phase. Checked through the
commands a user types (``ambient exec``, ``ambient lab``, ``ztunnel-config``) and an independent
view of the wire (tcpdump on the fabric bridge, parsed here):
1. right after `lab up` returned, `lab status` shows both mesh pods enrolled and every pod ready;
2. pod to Service across nodes goes through both ztunnels: on the fabric it is TLS 1.3 to port 15008
   and no plaintext byte of the request crosses; the app sees the client pod's own IP;
3. passthrough to a pod outside the mesh, and plaintext in from outside the mesh, still work;
4. the metric counters of both ztunnels match the connections and bytes sent;
5. ``ztunnel-config`` shows the workloads and certificates a ztunnel holds;
6. adding an L4 DENY closes an open connection it now denies, resets new ones and writes the
   access-log line naming the policy (the policy is removed again, also if the phase fails);
7. STRICT mTLS rejects a plaintext client from a namespace outside the mesh, mTLS still passes
   (STRICT stays on: the last phase only sends mTLS);
8. a ztunnel restart drains (an open connection still works during the drain) and, once the new
   ztunnel has its pods back from the node agent, new connections succeed. Last: it restarts ztunnel.

The phases share the lab and nothing else: each one reads what it needs from the ``mesh`` fixture,
and only phases 6 to 8 change the lab, in that order.
"""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

from tests.e2e.lab_driver import NAMESPACES, SERVICE, Lab, client_pod, echo_pod, find_pod, new_lab

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the lab creates network namespaces and eBPF capture"),
]

DENY_CLIENT = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: mesh}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules:
  - from: [{source: {principals: [cluster.local/ns/mesh/sa/default]}}]
"""

STRICT = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: mesh}
spec:
  mtls: {mode: STRICT}
"""

# One HTTP/1.1 keep-alive exchange per line of stdin, from inside a pod, with exact byte counts:
# prints "ok <request bytes> <response bytes>" or "error <exception>"; "open" once connected.
HTTP_CLIENT = r"""
import socket, sys
host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: e2e\r\n\r\n".encode()
def exchange(sock):
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a response")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed mid-response")
        body += chunk
    return len(head) + 4 + len(body), body
import re
try:
    sock = socket.create_connection((host, port), timeout=10)
    print("open", flush=True)
    for line in sys.stdin:
        n, body = exchange(sock)
        print("ok", len(request), n, body.decode().replace("\n", " "), flush=True)
except Exception as exc:
    print("error", type(exc).__name__, exc, flush=True)
"""


class HeldConnection:
    """A keep-alive connection from a pod, driven one request at a time."""

    def __init__(self, lab: Lab, pod: str, ip: str, port: int, path: str) -> None:
        env = {**os.environ, "AMBIENT_LAB_ROOT": str(lab.state_root)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ambient", "exec", "--name", lab.name, pod, "--", "python3", "-c", HTTP_CLIENT,
             ip, str(port), path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        first = self.proc.stdout.readline().strip()
        self.failed = None if first == "open" else first.split(" ", 3)  # could not connect

    def request(self) -> list[str]:
        if self.failed:
            return self.failed
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().split(" ", 3)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)


def exchange(lab: Lab, pod: str, ip: str, port: int, path: str) -> list[str]:
    held = HeldConnection(lab, pod, ip, port, path)
    try:
        return held.request()
    finally:
        held.close()


def access_log(lab: Lab, node: str) -> list[dict]:
    text = (lab.state_root / lab.name / "logs" / f"ztunnel-{node}.log").read_text()
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def metrics(lab: Lab, node: str) -> str:
    netns = f"amb-{lab.name}.{node}"
    return subprocess.run(["ip", "netns", "exec", netns, "curl", "-sS", "--max-time", "5",
                           "http://127.0.0.1:15020/metrics"], capture_output=True, text=True, check=True).stdout


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the series of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            total += float(match.group(2))
    return total


# ---------------------------------------------------------------- the wire, read from a pcap


def tcp_payloads(pcap: bytes) -> dict[tuple, bytes]:
    """(src, sport, dst, dport) → the TCP payload bytes of that direction, in capture order.
    Ethernet + IPv4 only (the lab's fabric); good enough for a lab without loss."""
    magic = struct.unpack("<I", pcap[:4])[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    offset, flows = 24, {}
    while offset + 16 <= len(pcap):
        _, _, caplen, _ = struct.unpack(endian + "IIII", pcap[offset:offset + 16])
        frame = pcap[offset + 16:offset + 16 + caplen]
        offset += 16 + caplen
        if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
            continue
        ihl = (frame[14] & 0x0F) * 4
        total = struct.unpack("!H", frame[16:18])[0]
        ip = frame[14:14 + total]
        src, dst = ".".join(map(str, ip[12:16])), ".".join(map(str, ip[16:20]))
        tcp = ip[ihl:]
        sport, dport = struct.unpack("!HH", tcp[:4])
        payload = tcp[(tcp[12] >> 4) * 4:]
        if payload:
            flows[(src, sport, dst, dport)] = flows.get((src, sport, dst, dport), b"") + payload
    return flows


def tls_records(stream: bytes) -> list[tuple[int, bytes]]:
    records, i = [], 0
    while i + 5 <= len(stream):
        kind, _version, length = struct.unpack("!BHH", stream[i:i + 5])
        records.append((kind, stream[i + 5:i + 5 + length]))
        i += 5 + length
    return records


def server_hello_version(record: bytes) -> int:
    """The version a ServerHello selects: its supported_versions extension (TLS 1.3) or legacy field."""
    assert record[0] == 2, "not a ServerHello"
    body = record[4:]
    legacy = struct.unpack("!H", body[:2])[0]
    i = 2 + 32
    i += 1 + body[i]  # session id
    i += 2 + 1  # cipher suite, compression
    end = i + 2 + struct.unpack("!H", body[i:i + 2])[0]
    i += 2
    while i < end:
        ext, length = struct.unpack("!HH", body[i:i + 4])
        if ext == 43:  # supported_versions
            return struct.unpack("!H", body[i + 4:i + 6])[0]
        i += 4 + length
    return legacy


class FabricCapture:
    """tcpdump on node-1's port of the fabric bridge (a bridge's own interface sees only its local
    traffic, not what it forwards between nodes)."""

    def __init__(self, lab: Lab, path) -> None:
        self.path = path
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", f"amb-{lab.name}.fabric", "tcpdump", "-Z", "root", "--immediate-mode",
             "-i", "veth-node-1", "-U", "-n", "-s", "0", "-w", str(path), "tcp"], stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()  # "tcpdump: listening on br-fabric ..." once it captures
        assert "listening on" in line, line

    def stop(self) -> bytes:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=10)
        return self.path.read_bytes()


# ---------------------------------------------------------------- one lab, the phases in order


@dataclass(frozen=True)
class MeshLab:
    lab: Lab
    status: dict  # `lab status` right after `lab up` returned

    def pod(self, namespace: str, name: str) -> dict:
        return find_pod(self.status, namespace, name)

    def ip(self, namespace: str, name: str) -> str:
        return self.pod(namespace, name)["ip"]

    @property
    def vip(self) -> str:
        return next(s["vip"] for s in self.status["services"] if s["name"] == "server")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    """mesh/server (echo) on node-1 behind Service mesh/server, mesh/client on node-0; outside the
    mesh plain/echo on node-1 and plain/legacy on node-0."""
    lab = new_lab(tmp_path_factory.mktemp("ztunnel"), [
        NAMESPACES, SERVICE, echo_pod("mesh", "server", "node-1"), client_pod("mesh", "client", "node-0"),
        echo_pod("plain", "echo", "node-1"), client_pod("plain", "legacy", "node-0")])
    try:
        lab.up(nodes=2)
        yield MeshLab(lab, lab.status())
    finally:  # also after a failure: nothing may outlive the module
        lab.run("lab", "down", "--name", lab.name, check=False)


def test_up_returns_with_every_pod_ready_and_the_mesh_pods_enrolled(mesh):
    pods = {(p["namespace"], p["name"]): p for p in mesh.status["pods"]}
    assert {key: (p["state"], p["all_ready"]) for key, p in pods.items()} == dict.fromkeys(pods, ("Running", True))
    assert pods[("mesh", "server")]["capture"] == pods[("mesh", "client")]["capture"] == "enrolled"
    assert pods[("plain", "echo")]["capture"] == pods[("plain", "legacy")]["capture"] == "-"


def test_mtls_across_nodes_on_the_wire(mesh, tmp_path):
    lab, client_ip, server_ip = mesh.lab, mesh.ip("mesh", "client"), mesh.ip("mesh", "server")
    capture = FabricCapture(lab, tmp_path / "fabric.pcap")
    marker = "/marker-7f3a9c-no-plaintext"
    result = exchange(lab, "mesh/client", mesh.vip, 80, marker)
    flows = tcp_payloads(capture.stop())
    assert result[0] == "ok", result
    seen = json.loads(result[3])
    assert seen["pod"]["name"] == "server" and seen["path"] == marker
    assert seen["client"]["address"] == client_ip  # the app sees the client pod, not a proxy
    wire = b"".join(flows.values())
    assert marker.encode() not in wire and b"HTTP/1.1" not in wire and b"e2e" not in wire
    between_pods = {key: data for key, data in flows.items() if {key[0], key[2]} == {client_ip, server_ip}}
    assert between_pods and all(15008 in (key[1], key[3]) for key in between_pods), list(flows)
    server_side = next(data for key, data in between_pods.items() if key[1] == 15008)
    kind, hello = tls_records(server_side)[0]
    assert kind == 22 and server_hello_version(hello) == 0x0304  # TLS 1.3
    assert {k for k, _ in tls_records(server_side)[1:]} <= {23, 20}  # then only encrypted records


def test_passthrough_out_of_the_mesh_and_plaintext_into_it(mesh):
    out = exchange(mesh.lab, "mesh/client", mesh.ip("plain", "echo"), 8080, "/out")
    assert out[0] == "ok" and json.loads(out[3])["client"]["address"] == mesh.ip("mesh", "client")
    into = exchange(mesh.lab, "plain/legacy", mesh.ip("mesh", "server"), 8080, "/in")
    assert into[0] == "ok" and json.loads(into[3])["client"]["address"] == mesh.ip("plain", "legacy")


def test_metrics_of_both_ztunnels_count_the_connections_and_bytes(mesh):
    # N connections of known sizes through both ztunnels
    lab = mesh.lab
    # Both reporters name the Service the client addressed (the destination guesses it from the port).
    labels = dict(source_workload="client", destination_workload="server", connection_security_policy="mutual_tls",
                  destination_service_name="server", response_flags="-")
    before = {node: metrics(lab, node) for node in ("node-0", "node-1")}
    sent = [exchange(lab, "mesh/client", mesh.vip, 80, f"/count/{i}") for i in range(4)]
    assert all(r[0] == "ok" for r in sent), sent
    request_bytes, response_bytes = sum(int(r[1]) for r in sent), sum(int(r[2]) for r in sent)

    def counted(node: str, reporter: str) -> tuple[float, ...]:
        text = metrics(lab, node)
        return tuple(
            metric(text, name, reporter=reporter, **labels) - metric(before[node], name, reporter=reporter, **labels)
            for name in ("istio_tcp_connections_opened_total", "istio_tcp_connections_closed_total",
                         "istio_tcp_received_bytes_total", "istio_tcp_sent_bytes_total"))

    deadline = time.monotonic() + 10
    while (counted("node-0", "source")[1] < 4 or counted("node-1", "destination")[1] < 4) \
            and time.monotonic() < deadline:
        time.sleep(0.05)  # each side counts a close just after the client's exit; bounded
    assert counted("node-0", "source") == (4, 4, request_bytes, response_bytes)
    assert counted("node-1", "destination") == (4, 4, request_bytes, response_bytes)


def test_ztunnel_config_shows_the_workloads_and_certificates_it_holds(mesh):
    lab, client_ip = mesh.lab, mesh.ip("mesh", "client")
    workloads = lab.run("ztunnel-config", "workloads", "--node", "node-0", "--lab", lab.name).stdout
    assert re.search(rf"mesh\s+client\s+{re.escape(client_ip)}\s+node-0\s+\S+\s+HBONE", workloads), workloads
    certificates = lab.run("ztunnel-config", "certificates", "--node", "node-0", "--lab", lab.name).stdout
    assert "spiffe://cluster.local/ns/mesh/sa/default" in certificates and "Available" in certificates


def test_a_deny_policy_closes_the_open_connection_resets_new_ones_and_is_logged(mesh):
    lab, deny = mesh.lab, mesh.lab.config_dir / "deny.yaml"
    held = HeldConnection(lab, "mesh/client", mesh.vip, 80, "/held")
    try:
        assert held.request()[0] == "ok"
        deny.write_text(DENY_CLIENT)
        deadline = time.monotonic() + 15
        while not any(e.get("reason", "").startswith("policy changed") for e in access_log(lab, "node-1")):
            assert time.monotonic() < deadline, "the policy change did not close the held connection"
            time.sleep(0.1)  # the log file has no change event; bounded
        after = held.request()
        held.close()
        assert after[0] == "error" and after[1] in ("ConnectionResetError", "BrokenPipeError"), after
        denied = exchange(lab, "mesh/client", mesh.vip, 80, "/denied")
        assert denied[0] == "error" and denied[1] == "ConnectionResetError", denied
        line = [e for e in access_log(lab, "node-1")
                if e["message"] == "connection denied" and e.get("reason", "").startswith("denied by DENY")]
        assert line and line[-1]["policy"] == "mesh/deny-client"
        assert line[-1]["src.identity"].endswith("/ns/mesh/sa/default")
        assert (line[-1]["src.workload"], line[-1]["src.namespace"], line[-1]["dst.namespace"]) == (
            "client", "mesh", "mesh")
        assert re.fullmatch(r"\d+ms", line[-1]["duration"])
        denied_total = metric(metrics(lab, "node-1"), "istio_tcp_connections_closed_total", reporter="destination",
                              response_flags="DENY", source_workload="client")
        assert denied_total >= 1
    finally:  # the next phases need mesh/client let through again
        held.close()
        deny.unlink(missing_ok=True)


def test_strict_mtls_rejects_plaintext_from_outside_the_mesh_and_mtls_still_passes(mesh):
    # After the DENY phase: its removal reaches ztunnel no later than STRICT, which is waited for.
    lab = mesh.lab
    (lab.config_dir / "strict.yaml").write_text(STRICT)
    deadline = time.monotonic() + 15
    while (r := exchange(lab, "plain/legacy", mesh.ip("mesh", "server"), 8080, "/strict"))[0] == "ok":
        assert time.monotonic() < deadline, "STRICT was never enforced"
        time.sleep(0.2)  # waiting for the control plane's push; bounded
    assert r[1] == "ConnectionResetError", r
    assert exchange(lab, "mesh/client", mesh.vip, 80, "/still")[0] == "ok"


def test_a_ztunnel_restart_drains_then_the_new_one_serves_the_pods_again(mesh):
    # SIGTERM drains (an open connection still works), then the new ztunnel serves. Last: the
    # lab's node-1 runs a new ztunnel from here on.
    lab = mesh.lab
    held = HeldConnection(lab, "mesh/client", mesh.vip, 80, "/drain")
    try:
        assert held.request()[0] == "ok"
        component = next(c for n in lab.status()["nodes"] if n["name"] == "node-1" for c in n["components"]
                         if c["name"] == "ztunnel-node-1")
        os.kill(component["pid"], signal.SIGTERM)
        during = held.request()
    finally:
        held.close()
    assert during[0] == "ok", during

    def restarted(status: dict) -> bool:
        return any(c["name"] == "ztunnel-node-1" and c["state"] == "running" and c["pid"] != component["pid"]
                   for n in status["nodes"] for c in n["components"])

    lab.wait_for(restarted, "the restart of ztunnel-node-1")
    deadline = time.monotonic() + 20
    while (again := exchange(lab, "mesh/client", mesh.vip, 80, "/after-restart"))[0] != "ok":
        assert time.monotonic() < deadline, again
    assert json.loads(again[3])["client"]["address"] == mesh.ip("mesh", "client")
    assert "drain" in (lab.state_root / lab.name / "logs" / "ztunnel-node-1.log").read_text()
    # The lab polls the agent's status every 0.25 s: `lab status` catches up with the replay shortly.
    lab.wait_for(lambda s: find_pod(s, "mesh", "server")["capture"] == "enrolled", "mesh/server enrolled again")


def test_a_ztunnel_restarted_while_the_control_plane_is_away_serves_from_its_saved_state(mesh):
    # Issue 18, defect 6: with the control plane stopped (SIGSTOP) and ztunnel killed, every pod of the
    # node was unreachable until the control plane returned. Now the new ztunnel serves the view and
    # the certificates it saved (--state-dir), and its readiness says the config is stale.
    lab = mesh.lab
    status = lab.status()
    controlplane = status["controlplane"]["pid"]
    ztunnel = next(c for n in status["nodes"] if n["name"] == "node-1" for c in n["components"]
                   if c["name"] == "ztunnel-node-1")
    node_1 = next(n for n in status["nodes"] if n["name"] == "node-1")

    def restarted(status: dict) -> bool:
        return any(c["name"] == "ztunnel-node-1" and c["state"] == "running" and c["pid"] != ztunnel["pid"]
                   for n in status["nodes"] for c in n["components"])

    os.kill(controlplane, signal.SIGSTOP)
    try:
        os.kill(ztunnel["pid"], signal.SIGKILL)
        lab.wait_for(restarted, "the restart of ztunnel-node-1")
        deadline = time.monotonic() + 20
        while (again := exchange(lab, "mesh/client", mesh.vip, 80, "/control-plane-away"))[0] != "ok":
            assert time.monotonic() < deadline, again
        ready = subprocess.run(["ip", "netns", "exec", node_1["netns"], sys.executable, "-c",
                                "import urllib.request as u; print(u.urlopen('http://127.0.0.1:15021/healthz/ready',"
                                " timeout=5).read().decode())"], capture_output=True, text=True, timeout=30)
        assert "stale config" in ready.stdout, ready
    finally:
        os.kill(controlplane, signal.SIGCONT)
    assert json.loads(again[3])["client"]["address"] == mesh.ip("mesh", "client")
