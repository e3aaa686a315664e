"""The lab's kube-proxy, end to end (root): a pod outside the mesh reaches a Service's VIP and gets an
answer from one of its pods (on its own node and on the other: both are endpoints), a Service without
ready pods is refused at once, and an ambient pod's request to the same VIP goes through ztunnel (its
access log has it) without touching the node's DNAT (the Service chain's counter does not move).
The root netns gets no table of the lab's.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest

from tests.e2e.lab_driver import NAMESPACES, Lab

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the lab creates network namespaces and cgroups"),
]

REQUESTS = 16  # with two endpoints chosen at random, all on one: 2 ** -15
TABLE = "ambient-kube-proxy"


def web_pod(name: str, node: str) -> str:
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: plain, labels: {{app: web}}}}
spec:
  nodeName: {node}
  containers:
  - name: echo
    command: [python3, echo_server.py, --port, "8080"]
    ports: [{{name: http, containerPort: 8080}}]
    readinessProbe:
      httpGet: {{path: /healthz, port: http}}
      periodSeconds: 1
"""


def client(namespace: str) -> str:
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {namespace}}}
spec:
  nodeName: node-0
  containers:
  - name: client
    command: [sleep, infinity]
"""


SERVICES = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: plain}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: plain}
spec:
  selector: {app: nobody}
  ports: [{name: http, port: 80, targetPort: 8080}]
"""


# Prints how a TCP connection to argv[1]:argv[2] ended and how long it took.
CONNECT = """
import errno, socket, sys, time
started = time.monotonic()
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).close()
    outcome = "connected"
except OSError as exc:
    outcome = errno.errorcode.get(exc.errno, str(exc))
print(outcome, time.monotonic() - started)
"""


def vip(lab: Lab, name: str) -> str:
    (service,) = [s for s in lab.status()["services"] if (s["namespace"], s["name"]) == ("plain", name)]
    return service["vip"]


def curl(lab: Lab, pod: str, address: str) -> subprocess.CompletedProcess:
    return lab.exec(pod, "curl", "-sS", "--max-time", "5", f"http://{address}/", check=False)


def service_packets(lab: Lab, node: str) -> int:
    chain = subprocess.run(["ip", "netns", "exec", f"amb-{lab.name}.{node}", "nft", "list", "chain", "ip", TABLE,
                            "service-plain/web/tcp/80"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"counter packets (\d+)", chain)
    assert found, chain
    return int(found.group(1))


def access_log(lab: Lab, node: str) -> list[dict]:
    text = (lab.state_root / lab.name / "logs" / f"ztunnel-{node}.log").read_text()
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_service_vips_answer_pods_outside_the_mesh_and_ambient_pods_go_through_ztunnel(make_lab):
    lab = make_lab([NAMESPACES, SERVICES, web_pod("web-0", "node-0"), web_pod("web-1", "node-1"),
                    client("plain"), client("mesh")])
    lab.up()
    web, empty = vip(lab, "web"), vip(lab, "empty")

    answered = set()
    for _ in range(REQUESTS):
        result = curl(lab, "plain/client", web)
        assert result.returncode == 0, result.stderr
        answered.add(json.loads(result.stdout)["pod"]["name"])
    assert answered == {"web-0", "web-1"}  # the same node's endpoint (SNAT to the bridge) and the other's
    assert service_packets(lab, "node-0") >= REQUESTS

    # The node's TCP reset: ECONNREFUSED at once (no route would be ENETUNREACH, a drop a timeout).
    refused = lab.exec("plain/client", "python3", "-c", CONNECT, empty, "80").stdout.split()
    assert refused[0] == "ECONNREFUSED" and float(refused[1]) < 1, refused

    before = service_packets(lab, "node-0")
    result = curl(lab, "mesh/client", web)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["pod"]["name"] in {"web-0", "web-1"}
    assert service_packets(lab, "node-0") == before  # captured in the pod's netns: no VIP reached the node
    deadline = time.monotonic() + 10
    while not any(e.get("src.workload") == "client" and e.get("src.namespace") == "mesh"
                  and e.get("direction") == "outbound" for e in access_log(lab, "node-0")):
        assert time.monotonic() < deadline, access_log(lab, "node-0")
        time.sleep(0.1)  # the line is written when the connection closes; bounded by the deadline

    root = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    assert TABLE not in root
