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
import time
from pathlib import Path

import pytest

from tests.e2e.lab_driver import NAMESPACES, SERVICE, Lab, echo_pod

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
