"""Cluster DNS in a lab, end to end (root): pods resolve Services by their full name, by
``<svc>.<ns>`` and by ``<svc>`` through their namespace's search path, headless Services and pod names,
from inside the mesh and outside it; a Service added live resolves; names outside cluster.local fail;
and the host's /etc/resolv.conf is untouched throughout.

A resolver pod runs ``resolve.py`` (below): it resolves its names with ``socket.getaddrinfo``, as any
program in the pod would through glibc and the pod's /etc/resolv.conf, and prints each name's result
whenever it changes. The test reads that container's log until the line it expects appears, within a
deadline.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.lab_driver import NAMESPACES, SERVICE, Lab, client_pod, echo_pod

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the lab creates network namespaces and cgroups"),
]

RESOLVE_PY = """
import socket, sys, time
seen = {}
while True:
    for name in sys.argv[1:]:
        try:
            found = sorted({info[4][0] for info in socket.getaddrinfo(name, 80, proto=socket.IPPROTO_TCP)})
        except socket.gaierror as exc:
            found = f"error {exc.errno}"
        if seen.get(name) != found:
            seen[name] = found
            print(f"{name} -> {found}", flush=True)
    time.sleep(0.2)
"""
NAMES = ["web.plain.svc.cluster.local", "web.plain", "web", "server.mesh", "server.mesh.svc.cluster.local",
         "db.plain.svc.cluster.local", "late", "nothing", "example.com"]

PLAIN_SERVICES = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: plain}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: plain}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
"""
LATE_SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: late, namespace: plain}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
"""


def resolver_pod(namespace: str, name: str, node: str) -> str:
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  nodeName: {node}
  containers:
  - name: resolve
    command: [python3, resolve.py, {", ".join(NAMES)}]
"""


def log_lines(lab: Lab, namespace: str, pod: str) -> list[str]:
    path = lab.state_root / lab.name / "logs" / "pods" / f"{namespace}_{pod}_resolve.log"
    return path.read_text().splitlines() if path.exists() else []


def wait_for_line(lab: Lab, namespace: str, pod: str, line: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if line in log_lines(lab, namespace, pod):
            return
        time.sleep(0.1)  # a log file has no change event here; bounded by the deadline
    pytest.fail(f"{namespace}/{pod} never printed {line!r}; its log:\n" + "\n".join(log_lines(lab, namespace, pod)))


def resolved(lab: Lab, namespace: str, pod: str, name: str) -> str:
    """The last result the pod printed for ``name`` (waiting for the first)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        lines = log_lines(lab, namespace, pod)
        results = [line.split(" -> ", 1)[1] for line in lines if line.startswith(f"{name} -> ")]
        if results:
            return results[-1]
        time.sleep(0.1)
    pytest.fail(f"{namespace}/{pod} printed nothing for {name}")


def host_resolv_conf() -> tuple[bytes, int, int, list[str]]:
    """The host's file (content, inode, mtime) and whatever is mounted on it in the host's namespace."""
    path = Path("/etc/resolv.conf")
    st = os.stat(path)
    mounts = [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
              if line.split()[4] == "/etc/resolv.conf"]
    return path.read_bytes(), st.st_ino, st.st_mtime_ns, mounts


def test_pods_resolve_services_by_name_and_search_path(make_lab):
    before = host_resolv_conf()
    lab = make_lab([NAMESPACES, SERVICE, PLAIN_SERVICES, echo_pod("mesh", "server", "node-0"),
                    echo_pod("plain", "web", "node-1"), resolver_pod("plain", "resolver", "node-0"),
                    resolver_pod("mesh", "resolver", "node-1")])
    (lab.config_dir / "resolve.py").write_text(RESOLVE_PY)
    lab.up(nodes=2)
    status = lab.status()
    assert status["dns"]["state"] == "running" and status["dns"]["address"] == "10.255.0.2:53"
    vips = {(s["namespace"], s["name"]): s["vip"] for s in status["services"]}
    web_ip = lab.pod("plain", "web")["ip"]

    for namespace in ("plain", "mesh"):  # outside the mesh and inside it (UDP to the DNS is not captured)
        wait_for_line(lab, namespace, "resolver", f"web.plain.svc.cluster.local -> {[vips['plain', 'web']]}")
        assert resolved(lab, namespace, "resolver", "web.plain") == str([vips["plain", "web"]])
        assert resolved(lab, namespace, "resolver", "server.mesh") == str([vips["mesh", "server"]])
        assert resolved(lab, namespace, "resolver", "server.mesh.svc.cluster.local") == str([vips["mesh", "server"]])
        # headless: the ready endpoint's own address
        wait_for_line(lab, namespace, "resolver", f"db.plain.svc.cluster.local -> {[web_ip]}")
        assert resolved(lab, namespace, "resolver", "nothing").startswith("error")
        assert resolved(lab, namespace, "resolver", "example.com").startswith("error")  # no upstream in a lab
        assert resolved(lab, namespace, "resolver", "late").startswith("error")  # not there yet
    # <svc> alone goes through the pod's own namespace first
    assert resolved(lab, "plain", "resolver", "web") == str([vips["plain", "web"]])
    assert resolved(lab, "mesh", "resolver", "web").startswith("error")  # web.mesh does not exist

    (lab.config_dir / "late.yaml").write_text(LATE_SERVICE)  # a Service added live: resolvable within seconds
    late_vip = lab.wait_for(lambda s: any(v["name"] == "late" and v["vip"] for v in s["services"]),
                            "the late Service's VIP")
    vip = next(v["vip"] for v in late_vip["services"] if v["name"] == "late")
    wait_for_line(lab, "plain", "resolver", f"late -> {[vip]}")

    # The pod's own resolv.conf is ClusterFirst's; the view the server answers from is the lab's.
    state = lab.state_root / lab.name
    assert (state / "dns" / "resolv" / "plain.conf").read_text() == (
        "nameserver 10.255.0.2\nsearch plain.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n")
    assert {s["name"] for s in json.loads((state / "dns" / "view.json").read_text())["services"]} >= {"web", "late"}
    assert host_resolv_conf() == before
    lab.down()
    assert host_resolv_conf() == before


def test_exec_into_a_pod_sees_its_resolv_conf(make_lab):
    lab = make_lab([NAMESPACES, PLAIN_SERVICES, echo_pod("plain", "web", "node-0")])
    lab.up(nodes=1)
    assert lab.exec("plain/web", "cat", "/etc/resolv.conf").stdout.startswith("nameserver 10.255.0.2\n")
    assert lab.exec("plain/web", "getent", "hosts", "web").stdout.split()[:2] == [
        next(s["vip"] for s in lab.status()["services"] if s["name"] == "web"), "web.plain.svc.cluster.local"]


# One A query, by hand (a pod's python3 is the system's, without dnspython): prints who answered, the
# rcode, and each answer's type, TTL and address. ztunnel's DNS proxy answers with TTL 30 (Istio's
# ztunnel), the lab's cluster DNS with TTL 5 (CoreDNS's): the TTL says which of them answered.
ASK_PY = """
import socket, struct, sys
name, transport = sys.argv[1], sys.argv[2]
query = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
query += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\\0" + struct.pack("!HH", 1, 1)
if transport == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
    s.sendto(query, ("10.255.0.2", 53)); reply, peer = s.recvfrom(4096)
else:
    s = socket.create_connection(("10.255.0.2", 53), timeout=5); peer = s.getpeername()
    s.sendall(struct.pack("!H", len(query)) + query); size = struct.unpack("!H", s.recv(2))[0]; reply = b""
    while len(reply) < size: reply += s.recv(size - len(reply))
def skip_name(i):
    while reply[i]:
        if reply[i] >= 0xC0: return i + 2
        i += reply[i] + 1
    return i + 1
count = struct.unpack("!H", reply[6:8])[0]; i = skip_name(12) + 4; found = []
for _ in range(count):
    i = skip_name(i); rtype, _, ttl, size = struct.unpack("!HHIH", reply[i:i + 10]); i += 10
    found.append(f"{rtype}/{ttl}/" + (socket.inet_ntoa(reply[i:i + 4]) if rtype == 1 else "")); i += size
print(f"{peer[0]}:{peer[1]} rcode={reply[3] & 15} {' '.join(found)}")
"""


def ztunnel_dns_counts(lab: Lab, node: int) -> dict[str, int]:
    address = f"10.255.0.{10 + node}"
    scrape = subprocess.run(["ip", "netns", "exec", f"amb-{lab.name}.node-{node}", "curl", "-sS", "--max-time", "5",
                             f"http://{address}:15020/metrics"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0]: int(line.split()[1]) for line in scrape.splitlines() if line.startswith("istio_dns_")}


def test_ambient_pods_dns_is_answered_by_ztunnels_proxy(make_lab):
    """An ambient pod's DNS (UDP and TCP to its nameserver) is captured to ztunnel's proxy on 15053,
    which answers Services from the mesh's view (TTL 30) and forwards other names to the cluster DNS;
    a pod outside the mesh talks to the cluster DNS itself (TTL 5). Both see the nameserver's address."""
    lab = make_lab([NAMESPACES, SERVICE, PLAIN_SERVICES, echo_pod("mesh", "server", "node-0"),
                    echo_pod("plain", "web", "node-1"), client_pod("mesh", "client", "node-1"),
                    client_pod("plain", "outsider", "node-1")])
    lab.up(nodes=2)
    vip = next(s["vip"] for s in lab.status()["services"] if s["name"] == "web")
    before = ztunnel_dns_counts(lab, 1)

    def ask(pod: str, name: str, transport: str) -> str:
        return lab.exec(pod, "python3", "-c", ASK_PY, name, transport).stdout.strip()

    for transport in ("udp", "tcp"):
        assert ask("mesh/client", "web.plain.svc.cluster.local", transport) == f"10.255.0.2:53 rcode=0 1/30/{vip}"
        assert ask("plain/outsider", "web.plain.svc.cluster.local", transport) == f"10.255.0.2:53 rcode=0 1/5/{vip}"
        # a name the mesh does not hold: forwarded to the cluster DNS, whose NXDOMAIN comes back
        assert ask("mesh/client", "nothing.plain.svc.cluster.local", transport) == "10.255.0.2:53 rcode=3"
    # glibc in an ambient pod, through the search path: <svc>.<ns> is answered by ztunnel's CNAME
    hosts = lab.exec("mesh/client", "getent", "hosts", "web.plain").stdout.split()
    assert hosts[0] == vip
    after = ztunnel_dns_counts(lab, 1)
    assert after["istio_dns_requests_total"] - before.get("istio_dns_requests_total", 0) >= 5
    assert after["istio_dns_upstream_requests_total"] - before.get("istio_dns_upstream_requests_total", 0) >= 2
    assert after["istio_dns_upstream_failures_total"] == before.get("istio_dns_upstream_failures_total", 0)
