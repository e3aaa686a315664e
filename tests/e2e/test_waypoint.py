"""The waypoint in the lab, end to end (root): client pod → ztunnel → waypoint → ztunnel → server (issue 19).

One lab for the whole module (the ``wlab`` fixture: up once, down at the end, also after a failure),
then one test per phase, in file order, each changing the lab's YAML directory as a user would (the
lab applies it live) and waiting on what the waypoint says (its ``/config_dump``) or on the traffic
itself, never on a fixed sleep. Checked through ``ambient exec`` and ``ambient waypoint``, and read
back from the waypoint's access log (``logs/waypoint-mesh.waypoint.log``), its metrics (:15020),
ztunnel's access log, and what the echo server saw (the address it was called from: the client pod
over L4, the waypoint pod through the waypoint).

1. without a Gateway no waypoint runs and the Service is L4 (the app sees the client's own address);
2. ``ambient waypoint apply`` starts it; the Service (``istio.io/use-waypoint`` in the YAML from the
   start) goes through it: its access log, ``istio_requests_total{reporter="waypoint"}``, and the
   destination ztunnel sees the waypoint's identity;
3. an L7 ALLOW for GET /public (targetRefs: the Service) answers POST and /private 403 ``RBAC: access
   denied`` and GET /public 200, all on one keep-alive connection;
4. a 90/10 weighted HTTPRoute splits 1,000 requests within 4 binomial sigmas; 5. a header match;
6. HTTP/2 prior knowledge with h2load on the ``http`` port (HTTP/1.1 upstream);
7. gRPC with grpcio (the venv's interpreter in the pods): OK with trailers, and an error status;
8. an HTTP/1.1 Upgrade answered 101, then raw bytes both ways;
9. an L4 ALLOW for the waypoint's principal only: straight to the pod is refused by the destination
   ztunnel, through the Service it passes;
10. ``ambient waypoint delete``: the waypoint stops and the Service is L4 again, live. Last.

The pod-side programs are ``tests/e2e/waypoint_apps/`` and the samples' ``http_client.py`` (copied into
the lab's directory).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.lab_driver import SAMPLES, Lab, find_pod, living_processes, new_lab

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the lab creates network namespaces and eBPF capture"),
]

APPS = Path(__file__).resolve().parent / "waypoint_apps"
CLIENT_IDENTITY = "spiffe://cluster.local/ns/mesh/sa/default"
WAYPOINT_IDENTITY = "spiffe://cluster.local/ns/mesh/sa/waypoint"
# Seconds for a change of the lab's YAML to reach the proxies (lab → control plane → discovery):
# about a second here; the bound only says when to give up.
PROPAGATION_TIMEOUT = 20.0
POLL = 0.1  # seconds between two looks at a file or an answer that has no change event; bounded
SPLIT_REQUESTS = 1000
SPLIT_V2_PERCENT = 10
SPLIT_SIGMAS = 4  # binomial bound on the v2 count: fails a correct split about once in 16,000 runs


def _echo_pod(name: str, version: str) -> str:
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: mesh, labels: {{app: echo, version: {version}}}}}
spec:
  nodeName: node-1
  containers:
  - name: echo
    command: [python3, echo_server.py, --port, "8080"]
    ports: [{{name: http, containerPort: 8080}}]
    readinessProbe: {{httpGet: {{path: /healthz, port: http}}, periodSeconds: 1}}
"""


def _service(name: str, selector: str, port: str, waypoint: bool) -> str:
    labels = "{istio.io/use-waypoint: waypoint}" if waypoint else "{}"
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: mesh, labels: {labels}}}
spec:
  selector: {selector}
  ports: [{port}]
"""


# mesh/client on node-0; the servers on node-1. Services echo, grpc and upgrade ask for waypoint
# "waypoint" from the start: until its Gateway exists they are L4 (istiod's reading too).
DOCUMENTS = [
    "\napiVersion: v1\nkind: Namespace\nmetadata: {name: mesh, labels: {istio.io/dataplane-mode: ambient}}\n",
    """
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: mesh, labels: {app: client}}
spec:
  nodeName: node-0
  containers:
  - {name: client, command: [sleep, infinity]}
""",
    _echo_pod("echo-v1", "v1"), _echo_pod("echo-v2", "v2"),
    _service("echo", "{app: echo}", "{name: http, port: 80, targetPort: http}", waypoint=True),
    _service("echo-v1", "{app: echo, version: v1}", "{name: http, port: 80, targetPort: http}", waypoint=False),
    _service("echo-v2", "{app: echo, version: v2}", "{name: http, port: 80, targetPort: http}", waypoint=False),
    f"""
apiVersion: v1
kind: Pod
metadata: {{name: grpc, namespace: mesh, labels: {{app: grpc}}}}
spec:
  nodeName: node-1
  containers:
  - name: grpc
    command: [{sys.executable}, grpc_echo.py, serve, --port, "9090"]
    ports: [{{name: grpc, containerPort: 9090}}]
    readinessProbe: {{tcpSocket: {{port: 9090}}, periodSeconds: 1}}
""",
    _service("grpc", "{app: grpc}", "{name: grpc, port: 9090, targetPort: 9090}", waypoint=True),
    """
apiVersion: v1
kind: Pod
metadata: {name: upgrade, namespace: mesh, labels: {app: upgrade}}
spec:
  nodeName: node-1
  containers:
  - name: upgrade
    command: [python3, upgrade_echo.py, --port, "8081"]
    ports: [{name: http, containerPort: 8081}]
    readinessProbe: {tcpSocket: {port: 8081}, periodSeconds: 1}
""",
    _service("upgrade", "{app: upgrade}", "{name: http, port: 80, targetPort: 8081}", waypoint=True),
]

L7_POLICY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: public-get, namespace: mesh}
spec:
  targetRefs: [{kind: Service, group: "", name: echo}]
  action: ALLOW
  rules:
  - to: [{operation: {methods: [GET], paths: [/public]}}]
"""

ROUTE = f"""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: echo-split, namespace: mesh}}
spec:
  parentRefs: [{{group: "", kind: Service, name: echo, port: 80}}]
  rules:
  - matches: [{{headers: [{{name: x-version, value: v2}}]}}]
    backendRefs: [{{name: echo-v2, port: 80}}]
  - backendRefs:
    - {{name: echo-v1, port: 80, weight: {100 - SPLIT_V2_PERCENT}}}
    - {{name: echo-v2, port: 80, weight: {SPLIT_V2_PERCENT}}}
"""

WAYPOINT_ONLY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: echo-via-waypoint, namespace: mesh}
spec:
  selector: {matchLabels: {app: echo}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/mesh/sa/waypoint]}}]
"""

# curl's exit statuses for a reset connection (see lab/demo.py: how far curl got when it came).
CURL_RESET = frozenset({7, 52, 55, 56})


@dataclass(frozen=True)
class WaypointLab:
    lab: Lab
    status: dict  # `lab status` right after `lab up` returned

    def ip(self, name: str) -> str:
        return find_pod(self.status, "mesh", name)["ip"]

    def vip(self, service: str) -> str:
        return next(s["vip"] for s in self.status["services"] if s["name"] == service)

    @property
    def logs(self) -> Path:
        return self.lab.state_root / self.lab.name / "logs"

    def exec(self, *command: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        env = {**os.environ, "AMBIENT_LAB_ROOT": str(self.lab.state_root)}
        return subprocess.run([sys.executable, "-m", "ambient", "exec", "--name", self.lab.name, "mesh/client", "--",
                               *command], input=stdin, capture_output=True, text=True, env=env, timeout=timeout)

    def curl(self, url: str, max_time: float = 3) -> tuple[int, dict | None]:
        """(curl's exit status, the echo server's answer if there was one)."""
        result = self.exec("curl", "-sS", "--max-time", f"{max_time:g}", url)
        return result.returncode, json.loads(result.stdout) if result.returncode == 0 else None

    def keepalive(self, host: str, port: int, *lines: str) -> list[dict]:
        """One connection, each line ``METHOD PATH COUNT [NAME=VALUE...]`` a batch of requests on it."""
        result = self.exec("python3", str(self.lab.config_dir / "http_client.py"), host, str(port),
                           stdin="".join(f"{line}\n" for line in lines), timeout=300)
        answers = [json.loads(line) for line in result.stdout.splitlines()]
        assert answers and answers[0] == {"open": True}, result.stdout + result.stderr
        assert len(answers) == len(lines) + 1 and "error" not in answers[-1], answers
        return answers[1:]

    def waypoint_pod(self) -> dict | None:
        return find_pod(self.lab.status(), "mesh", "waypoint-waypoint")

    def waypoint_get(self, path: str, port: int = 15000) -> str:
        pod = self.waypoint_pod()
        assert pod is not None, "no waypoint pod"
        return subprocess.run(["ip", "netns", "exec", pod["netns"], "curl", "-sS", "--max-time", "5",
                               f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, check=True).stdout

    def config_dump(self) -> dict:
        return json.loads(self.waypoint_get("/config_dump"))

    def waypoint_log(self) -> list[dict]:
        """The access-log lines written so far: buffered, a line appears within a second of its request
        (ACCESS_LOG_FLUSH_INTERVAL), so a check for one goes through ``eventually``."""
        path = self.logs / "waypoint-mesh.waypoint.log"
        return [json.loads(line.split(" ambient.waypoint.access: ", 1)[1]) for line in path.read_text().splitlines()
                if " ambient.waypoint.access: " in line]

    def ztunnel_log(self, node: str) -> list[dict]:
        text = (self.logs / f"ztunnel-{node}.log").read_text()
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def eventually(check, what: str, timeout: float = PROPAGATION_TIMEOUT):
    """``check()``'s first truthy result, tried until ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout:g} s"
        time.sleep(POLL)
    return result


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            total += float(match.group(2))
    return total


@pytest.fixture(scope="module")
def wlab(tmp_path_factory):
    lab = new_lab(tmp_path_factory.mktemp("waypoint"), DOCUMENTS)
    for app in [*APPS.glob("*.py"), SAMPLES / "http_client.py"]:
        shutil.copy(app, lab.config_dir)
    try:
        lab.up(nodes=2)
        yield WaypointLab(lab, lab.status())
    finally:  # also after a failure: nothing may outlive the module
        lab.run("lab", "down", "--name", lab.name, check=False)


def _waypoint_processes(lab: Lab) -> list[str]:
    return [cmd for cmd, _ in living_processes().values()
            if " waypoint run " in cmd and str(lab.state_root / lab.name) in cmd]


def _through_the_waypoint(wlab: WaypointLab, path: str) -> dict | None:
    """The echo server's answer to ``path`` on Service echo if it came through the waypoint."""
    code, answer = wlab.curl(f"http://{wlab.vip('echo')}{path}")
    pod = wlab.waypoint_pod()
    return answer if code == 0 and pod is not None and answer["client"]["address"] == pod["ip"] else None


def _lines_once(wlab: WaypointLab, path: str, count: int) -> list[dict] | None:
    """The waypoint's access-log lines for ``path`` once there are ``count`` of them."""
    lines = [e for e in wlab.waypoint_log() if e.get("path") == path]
    return lines if len(lines) >= count else None


# ---------------------------------------------------------------- the phases, in order


def test_without_a_gateway_no_waypoint_runs_and_the_service_is_l4(wlab):
    assert wlab.status["waypoints"] == [] and wlab.waypoint_pod() is None
    assert _waypoint_processes(wlab.lab) == []
    code, answer = wlab.curl(f"http://{wlab.vip('echo')}/l4-before")
    assert code == 0 and answer["client"]["address"] == wlab.ip("client")  # no proxy in between at L7
    # ztunnel writes its line as the connection closes, just after curl is done.
    inbound = eventually(lambda: [e for e in wlab.ztunnel_log("node-1") if e.get("direction") == "inbound"
                                  and e["dst.addr"] == f"{wlab.ip(answer['pod']['name'])}:8080"], "ztunnel's line")
    assert inbound[-1]["src.identity"] == CLIENT_IDENTITY


def test_waypoint_apply_sends_the_service_through_the_waypoint(wlab):
    out = wlab.lab.run("waypoint", "apply", "-n", "mesh", "--lab", wlab.lab.name, "--wait").stdout
    assert "waypoint mesh/waypoint applied" in out and "is ready" in out, out
    assert len(_waypoint_processes(wlab.lab)) == 1
    dump = wlab.config_dump()
    assert dump["identity"] == WAYPOINT_IDENTITY
    assert {"mesh/echo.mesh.svc.cluster.local", "mesh/grpc.mesh.svc.cluster.local"} <= set(dump["services"])
    # `--wait` returns once every node's ztunnel has the waypoint Healthy: the very first request passes it.
    code, answer = wlab.curl(f"http://{wlab.vip('echo')}/through-the-waypoint")
    assert code == 0 and answer["client"]["address"] == wlab.waypoint_pod()["ip"], (code, answer)
    line = eventually(lambda: _lines_once(wlab, "/through-the-waypoint", 1), "its access-log line")[-1]
    assert (line["response_code"], line["src.identity"], line["src.workload"]) == (200, CLIENT_IDENTITY, "client")
    assert (line["dst.workload"], line["dst.service"]) == (answer["pod"]["name"], "echo.mesh.svc.cluster.local")
    stats = wlab.waypoint_get("/metrics", port=15020)
    assert metric(stats, "istio_requests_total", reporter="waypoint", destination_service_name="echo",
                  source_workload="client", response_code="200") >= 1
    # The destination ztunnel saw the waypoint's identity (its upstream connection stays open, kept
    # alive: ztunnel counts it at the open, and logs it only at the close).
    node_1 = subprocess.run(["ip", "netns", "exec", f"amb-{wlab.lab.name}.node-1", "curl", "-sS", "--max-time", "5",
                             "http://127.0.0.1:15020/metrics"], capture_output=True, text=True, check=True).stdout
    assert metric(node_1, "istio_tcp_connections_opened_total", reporter="destination",
                  source_principal=WAYPOINT_IDENTITY, destination_workload=answer["pod"]["name"]) >= 1


def test_an_l7_allow_answers_403_to_what_it_does_not_allow_on_one_connection(wlab):
    policy = wlab.lab.config_dir / "l7-policy.yaml"
    policy.write_text(L7_POLICY)
    try:
        eventually(lambda: any(p["name"] == "public-get" for p in wlab.config_dump()["policies"]), "the policy")
        answers = wlab.keepalive(wlab.vip("echo"), 80, "GET /public 1", "POST /public 1", "GET /private 1",
                                 "GET /public 1")
        assert [a["statuses"] for a in answers] == [{"200": 1}, {"403": 1}, {"403": 1}, {"200": 1}]
        assert answers[1]["bodies"]["403"] == answers[2]["bodies"]["403"] == "RBAC: access denied"
        def denials() -> set[tuple[str, str]]:
            denied = [e for e in wlab.waypoint_log() if e["response_code"] == 403 and e.get("response_flags") == "RBAC"]
            return {(e["method"], e["path"]) for e in denied[-2:]}

        eventually(lambda: denials() == {("POST", "/public"), ("GET", "/private")}, "both denials in the access log")
    finally:
        policy.unlink()
    eventually(lambda: not wlab.config_dump()["policies"], "the policy's removal")


def _route_attached(wlab: WaypointLab) -> bool:
    return any(r["name"] == "echo-split" and r["attached"] and r["status"]["accepted"]
               for r in wlab.config_dump()["routes"])


def test_a_weighted_route_splits_requests_within_binomial_bounds(wlab):
    (wlab.lab.config_dir / "route.yaml").write_text(ROUTE)
    eventually(lambda: _route_attached(wlab), "the route")
    (answer,) = wlab.keepalive(wlab.vip("echo"), 80, f"GET /split {SPLIT_REQUESTS}")
    assert answer["statuses"] == {"200": SPLIT_REQUESTS}
    v2 = answer["pods"].get("echo-v2", 0)
    assert answer["pods"].get("echo-v1", 0) + v2 == SPLIT_REQUESTS
    p = SPLIT_V2_PERCENT / 100
    mean, sigma = SPLIT_REQUESTS * p, math.sqrt(SPLIT_REQUESTS * p * (1 - p))
    print(f"split of {SPLIT_REQUESTS}: echo-v1 {SPLIT_REQUESTS - v2}, echo-v2 {v2} (expected {mean:g} ± {sigma:.1f})")
    assert abs(v2 - mean) <= SPLIT_SIGMAS * sigma, answer["pods"]
    # A line is written as its response ends: the last may follow the client's read by a moment.
    routed = eventually(lambda: _lines_once(wlab, "/split", SPLIT_REQUESTS), "the access-log lines")
    assert len(routed) == SPLIT_REQUESTS and {e.get("route_name") for e in routed} == {"mesh/echo-split"}


def test_a_header_match_routes_to_its_backend(wlab):
    try:
        matched, unmatched = wlab.keepalive(wlab.vip("echo"), 80, "GET /header 50 x-version=v2",
                                            "GET /header 50 x-version=v1")
        assert matched["pods"] == {"echo-v2": 50}
        assert unmatched["statuses"] == {"200": 50} and unmatched["pods"].get("echo-v1", 0) > 25
    finally:
        (wlab.lab.config_dir / "route.yaml").unlink()
    eventually(lambda: not wlab.config_dump()["routes"], "the route's removal")


def test_http2_prior_knowledge_with_h2load(wlab):
    # Port "http": the client's h2c is accepted (Envoy's AUTO codec) and goes upstream as HTTP/1.1.
    result = wlab.exec("h2load", "-n", "1000", "-c", "2", "-m", "10", f"http://{wlab.vip('echo')}:80/h2load",
                       timeout=120)
    out = result.stdout
    assert "Application protocol: h2c" in out, out
    assert re.search(r"requests: 1000 total, 1000 started, 1000 done, 1000 succeeded, 0 failed", out), out
    assert "status codes: 1000 2xx" in out, out
    print(re.search(r"finished in .*", out).group(0))
    lines = eventually(lambda: _lines_once(wlab, "/h2load", 1000), "the access-log lines")
    assert len(lines) == 1000 and {e["protocol"] for e in lines} == {"HTTP/2"}


def test_a_grpc_call_through_the_waypoint(wlab):
    target = f"{wlab.vip('grpc')}:9090"
    app = str(wlab.lab.config_dir / "grpc_echo.py")
    ok = json.loads(wlab.exec(sys.executable, app, "call", target, "Say", "hello").stdout)
    assert (ok["code"], ok["reply"], ok["trailers"]) == ("OK", "echo:hello", {"x-pod": "grpc"}), ok
    failed = json.loads(wlab.exec(sys.executable, app, "call", target, "Fail", "hello").stdout)
    assert (failed["code"], failed["details"]) == ("PERMISSION_DENIED", "not for you"), failed
    def both_calls() -> dict[str, dict] | None:
        calls = {e["path"]: e for e in wlab.waypoint_log() if e["path"].startswith("/echo.Echo/")}
        return calls if {"/echo.Echo/Say", "/echo.Echo/Fail"} <= calls.keys() else None

    calls = eventually(both_calls, "both calls in the access log")
    assert calls["/echo.Echo/Say"]["grpc_status"] == "0" and calls["/echo.Echo/Fail"]["grpc_status"] == "7"
    stats = wlab.waypoint_get("/metrics", port=15020)
    assert metric(stats, "istio_requests_total", reporter="waypoint", request_protocol="grpc",
                  grpc_response_status="7") >= 1


def test_an_http1_upgrade_switches_to_raw_bytes_both_ways(wlab):
    result = wlab.exec("python3", str(wlab.lab.config_dir / "upgrade_echo.py"), "--call", f"{wlab.vip('upgrade')}:80")
    answer = json.loads(result.stdout)
    assert answer["status_line"].startswith("HTTP/1.1 101"), answer
    assert answer["echoed"] == "switched:hello again", answer
    eventually(lambda: any(e["path"] == "/chat" and e["response_code"] == 101 for e in wlab.waypoint_log()),
               "the upgrade in the access log")


def test_a_connection_that_bypasses_the_waypoint_is_refused_by_the_destination_ztunnel(wlab):
    # Istio's way to make a service waypoint unskippable: an L4 ALLOW for the waypoint's principal.
    policy = wlab.lab.config_dir / "waypoint-only.yaml"
    direct = f"http://{wlab.ip('echo-v1')}:8080/bypass"
    policy.write_text(WAYPOINT_ONLY)
    try:
        eventually(lambda: wlab.curl(direct)[0] in CURL_RESET, "the refusal of a direct connection")
        denied = [e for e in wlab.ztunnel_log("node-1") if e["message"] == "connection denied"
                  and e.get("policy") == "mesh/echo-via-waypoint"]
        assert denied and denied[-1]["src.identity"] == CLIENT_IDENTITY
        assert _through_the_waypoint(wlab, "/via-the-waypoint") is not None
    finally:
        policy.unlink()
    eventually(lambda: wlab.curl(direct)[0] == 0, "direct connections allowed again")


def test_deleting_the_gateway_returns_the_service_to_l4_live(wlab):
    # Last: the waypoint is gone from here on.
    out = wlab.lab.run("waypoint", "delete", "waypoint", "-n", "mesh", "--lab", wlab.lab.name).stdout
    assert "waypoint mesh/waypoint deleted" in out
    wlab.lab.wait_for(lambda s: not s["waypoints"] and find_pod(s, "mesh", "waypoint-waypoint") is None,
                      "the waypoint pod's removal")
    eventually(lambda: not _waypoint_processes(wlab.lab), "the waypoint process's exit")

    def l4(path: str) -> dict | None:
        code, answer = wlab.curl(f"http://{wlab.vip('echo')}{path}")
        return answer if code == 0 and answer["client"]["address"] == wlab.ip("client") else None

    eventually(lambda: l4("/l4-again"), "L4 traffic to the Service")
    assert not any(e.get("path") == "/l4-again" for e in wlab.waypoint_log())
