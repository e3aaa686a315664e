"""``ambient demo``: the main job, run by ``make demo``.

The lab demo, through the commands a user types: ``ambient lab up`` on a copy of the sample
manifests; pods outside the mesh talking plain TCP; the ambient pods captured by eBPF (one sk_lookup
program per pod) and served by their node's ztunnel; a request across nodes that crosses the fabric
only as HBONE mTLS (tcpdump shows port 15008 and no readable request), with both ztunnels' access-log
lines; ``ambient ztunnel-config``; an AuthorizationPolicy that denies a client (reset, and the
access-log line naming the policy) while another still gets through; the waypoint: ``ambient
waypoint apply --enroll-namespace`` starts the L7 proxy and requests to Service echo pass it (the echo
server sees the waypoint's address; the waypoint's access log), a v2 of echo rolls out, then an L7
DENY answers 403 beside an allowed request on one connection and a 90/10 HTTPRoute splits 200 requests
(counts printed); ``ambient lab status``, and
``ambient lab down``, checking that nothing of the lab is left. ``--ca`` shows the
certificate authority on its own instead: create a CA, serve it, make a workload token, obtain a
certificate over gRPC/TLS, show and verify the chain, show a refused request, read the CA's metrics,
and stop the server it started (by its PID). The lab needs root; without it the demo says so and
shows the CA.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.client import spiffe_id_of
from lab.launch import CaServerProcess, run_ambient, start_ca_server

IDENTITY = "spiffe://cluster.local/ns/default/sa/demo"
OTHER_IDENTITY = "spiffe://cluster.local/ns/payments/sa/ledger"


def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser("demo", help="run the demonstration (what `make demo` runs)")
    demo.add_argument("--ca", action="store_true", help="show the certificate authority on its own")
    demo.add_argument("--keep", action="store_true", help="keep the CA demo's state directory")
    demo.set_defaults(func=run)


def _step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _describe_chain(path: Path) -> None:
    for i, cert in enumerate(x509.load_pem_x509_certificates(path.read_bytes())):
        role = "leaf" if i == 0 else "CA"
        print(f"  [{i}] {role:4}  subject: {cert.subject.rfc4514_string() or '(empty)'}")
        print(f"        issuer:  {cert.issuer.rfc4514_string()}")
        if i == 0:
            print(f"        SAN:     {spiffe_id_of(cert)} (the only SAN)")
        print(f"        valid:   {cert.not_valid_before_utc:%Y-%m-%d %H:%M} "
              f"to {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")


SAMPLES = Path(__file__).resolve().parents[1] / "manifests" / "samples"
LAB_NAME = "demo"


def _ambient(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``ambient ARGS`` with its output on the terminal as it comes."""
    print(f"$ ambient {' '.join(args)}", flush=True)
    result = subprocess.run([sys.executable, "-m", "ambient", *args], timeout=180)
    if check and result.returncode != 0:
        raise RuntimeError(f"ambient {' '.join(args)} exited {result.returncode}")
    return result


def _curl(client: str, ip: str, path: str, max_time: float = 5, port: int = 8080, quiet: bool = False) -> dict | None:
    """The echo server's answer, or None if curl timed out (or, ``quiet``, failed in any way)."""
    argv = [sys.executable, "-m", "ambient", "exec", "--name", LAB_NAME, client, "--",
            "curl", "-sS", "--max-time", f"{max_time:g}", f"http://{ip}:{port}{path}"]
    if not quiet:
        print(f"$ ambient exec {client} -- curl --max-time {max_time:g} http://{ip}:{port}{path}", flush=True)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if result.returncode == 28 or (quiet and result.returncode != 0):  # 28: curl's operation timed out
        return None
    if result.returncode != 0:
        raise RuntimeError(f"curl from {client} failed ({result.returncode}): {result.stderr.strip()}")
    return json.loads(result.stdout)


def _sk_lookup_links(netns: list[str]) -> int:
    """How many sk_lookup programs are attached to these network namespaces (bpftool's view)."""
    inodes = {os.stat(f"/var/run/netns/{name}").st_ino for name in netns}
    links = json.loads(subprocess.run(["bpftool", "-j", "link", "show"], capture_output=True, text=True,
                                      check=True).stdout or "[]")
    return sum(1 for link in links if link.get("netns_ino") in inodes and link.get("attach_type") == "sk_lookup")


def _access_log(node: str, **match: str) -> dict | None:
    """The last JSON access-log line of ``node``'s ztunnel whose fields include ``match``. A line is
    written as ztunnel closes its side, just after the client is done: give it a moment."""
    for _ in range(50):
        log = subprocess.run([sys.executable, "-m", "ambient", "lab", "logs", "--name", LAB_NAME, f"ztunnel-{node}"],
                             capture_output=True, text=True).stdout
        entries = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        found = next((e for e in reversed(entries) if all(e.get(k) == v for k, v in match.items())), None)
        if found is not None:
            return found
        time.sleep(0.1)
    return None


def _show_entry(entry: dict | None) -> None:
    if entry is None:
        print("  (no access-log line found)")
        return
    keys = ("message", "direction", "src.addr", "src.workload", "src.identity", "dst.addr", "dst.hbone_addr",
            "dst.workload", "dst.identity", "bytes_sent", "bytes_recv", "duration", "policy", "reason")
    print("  " + json.dumps({k: entry[k] for k in keys if k in entry}))


class _FabricCapture:
    """tcpdump (ASCII) on the fabric port of a node while a request runs."""

    def __init__(self, node_index: int) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", f"amb-{LAB_NAME}.fabric", "tcpdump", "--immediate-mode", "-i",
             f"veth-node-{node_index}", "-n", "-l", "-A", "tcp and net 10.244.0.0/16"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace")
        self.proc.stderr.readline()  # "listening on ...": capturing from here

    def stop(self) -> str:
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=10)
        return out


DEMO_POLICY_NAME = "demo/echo-from-demo-only"
DEMO_POLICY = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: echo-from-demo-only, namespace: demo}
spec:
  selector: {matchLabels: {app: echo}}
  action: ALLOW
  rules:
  - from: [{source: {namespaces: [demo]}}]
"""


def run(args: argparse.Namespace) -> int:
    if args.ca:
        return run_ca(args)
    if os.geteuid() != 0:
        print("The lab builds network namespaces and needs root; showing the certificate authority instead.\n"
              "Run `sudo make demo` for the lab.", flush=True)
        return run_ca(args)
    return run_lab()


def run_lab() -> int:
    config = Path(tempfile.mkdtemp(prefix="ambient-demo-"))  # a copy: the demo adds a policy to it
    shutil.copytree(SAMPLES, config, dirs_exist_ok=True)
    _step(f"ambient lab up (the sample manifests, {SAMPLES.name}/apps.yaml, copied to {config}): "
          "2 nodes, the sample pods, the control plane, a node agent and a ztunnel per node")
    _ambient("lab", "up", str(config), "--name", LAB_NAME, "--nodes", "2")
    try:
        status = json.loads(subprocess.run([sys.executable, "-m", "ambient", "lab", "status", "--name", LAB_NAME,
                                            "-o", "json"], capture_output=True, text=True, check=True).stdout)
        pods = {f"{p['namespace']}/{p['name']}": p for p in status["pods"]}
        legacy, legacy_echo = pods["legacy/sleep"], pods["legacy/echo"]
        where = "same node" if legacy["node"] == legacy_echo["node"] else "across nodes"
        _step(f"outside the mesh: legacy/sleep ({legacy['ip']}, {legacy['node']}) to legacy/echo "
              f"({legacy_echo['ip']}, {legacy_echo['node']}), plain TCP")
        answer = _curl("legacy/sleep", legacy_echo["ip"], "/hello?from=legacy")
        print(f"  {where}: {answer['pod']['namespace']}/{answer['pod']['name']} saw {answer['method']} "
              f"{answer['path']} from {answer['client']['address']}")

        ambient = [p for p in status["pods"] if p["dataplane_mode"] == "ambient"]
        _step(f"inside the mesh: the node agents captured the {len(ambient)} ambient pods with eBPF and "
              "handed them to their node's ztunnel")
        for pod in ambient:
            print(f"  {pod['namespace']}/{pod['name']} on {pod['node']}: {pod['capture']}")
        print(f"  sk_lookup programs attached to their network namespaces (bpftool): "
              f"{_sk_lookup_links([p['netns'] for p in ambient])}")

        sleep = pods["demo/sleep"]
        echo = next(p for p in ambient if p["name"].startswith("echo-") and p["node"] != sleep["node"])
        _step(f"mTLS across nodes: demo/sleep ({sleep['ip']}, {sleep['node']}) to demo/{echo['name']} "
              f"({echo['ip']}, {echo['node']}); tcpdump watches {echo['node']}'s port on the fabric")
        capture = _FabricCapture(int(echo["node"].rsplit("-", 1)[1]))
        marker = "/secret-path-in-the-mesh"
        answer = _curl("demo/sleep", echo["ip"], marker)
        wire = capture.stop()
        packets = [line for line in wire.splitlines() if " IP " in line]
        ports = {int(m) for line in packets for m in re.findall(r"\.(\d+)[ :>]", line.split(" IP ", 1)[1])}
        print(f"  {answer['pod']['name']} saw {answer['method']} {answer['path']} from {answer['client']['address']} "
              f"(the client pod's own IP)")
        print(f"  on the fabric: {len(packets)} TCP packets between the pods, on port 15008 (HBONE): "
              f"{'yes' if 15008 in ports and 8080 not in ports else 'NO'}; the request path readable on the wire: "
              f"{'YES: NOT ENCRYPTED' if marker in wire else 'no'}")
        print("  ztunnel access log, client side and server side:")
        _show_entry(_access_log(sleep["node"], direction="outbound", **{"dst.hbone_addr": f"{echo['ip']}:8080"}))
        _show_entry(_access_log(echo["node"], direction="inbound", **{"dst.addr": f"{echo['ip']}:8080"}))

        _step(f"ambient ztunnel-config workloads --node {sleep['node']} (what its ztunnel knows)")
        _ambient("ztunnel-config", "workloads", "--node", sleep["node"], "--lab", LAB_NAME)
        _step(f"ambient ztunnel-config certificates --node {sleep['node']} (one per local identity, from the CA)")
        _ambient("ztunnel-config", "certificates", "--node", sleep["node"], "--lab", LAB_NAME)

        _step("L4 policy: an AuthorizationPolicy lets only namespace demo reach the echo pods (policy.yaml)")
        print("\n".join(f"  {line}" for line in DEMO_POLICY.splitlines()))
        (config / "policy.yaml").write_text(DEMO_POLICY)
        denied = None
        for _ in range(50):  # the lab picks the file up and the control plane pushes it: a second or so
            # Reset, and ztunnel says the policy denied it (a reset alone could have another cause).
            if _try_reset("legacy/sleep", echo["ip"]):
                denied = _access_log(echo["node"], message="connection denied", policy=DEMO_POLICY_NAME)
                if denied:
                    break
            time.sleep(0.2)
        print(f"  legacy/sleep to demo/{echo['name']}: {'connection reset: denied' if denied else 'NOT DENIED'}")
        _show_entry(denied or _access_log(echo["node"], message="connection denied"))
        answer = _curl("demo/sleep", echo["ip"], "/still-allowed")
        print(f"  demo/sleep to demo/{echo['name']}: answered, {answer['path']} from {answer['client']['address']}")
        if not denied:
            raise RuntimeError("the policy did not deny legacy/sleep")

        _waypoint_part(config, status, sleep)
        _wasm_part(config, status)
        _bookinfo_part(config)

        _step("ambient lab status")
        _ambient("lab", "status", "--name", LAB_NAME)
    finally:
        _step("ambient lab down")
        _ambient("lab", "down", "--name", LAB_NAME)
        shutil.rmtree(config, ignore_errors=True)
    left = [n for n in os.listdir("/var/run/netns") if n.startswith(f"amb-{LAB_NAME}.")] \
        if os.path.isdir("/var/run/netns") else []
    print(f"  lab network namespaces left: {len(left)}")
    return 0 if not left else 1


# The waypoint part: a v2 of echo rolls out beside v1, then an L7 policy and a weighted route.
ECHO_V2 = """apiVersion: apps/v1
kind: Deployment
metadata: {name: echo-v2, namespace: demo}
spec:
  replicas: 1
  selector: {matchLabels: {app: echo, version: v2}}
  template:
    metadata: {labels: {app: echo, version: v2}}
    spec:
      serviceAccountName: echo
      containers:
      - name: echo
        command: [python3, echo_server.py, --port, "8080"]
        ports: [{name: http, containerPort: 8080}]
        readinessProbe:
          httpGet: {path: /healthz, port: http}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {name: echo-v1, namespace: demo}
spec:
  selector: {app: echo, version: v1}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: echo-v2, namespace: demo}
spec:
  selector: {app: echo, version: v2}
  ports: [{name: http, port: 80, targetPort: http}]
"""
WAYPOINT_POLICY_NAME = "demo/no-admin"
L7_CONFIG = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: demo}
spec:
  targetRefs: [{kind: Service, group: "", name: echo}]
  action: DENY
  rules:
  - to: [{operation: {paths: [/admin/*]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo-split, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - backendRefs:
    - {name: echo-v1, port: 80, weight: 90}
    - {name: echo-v2, port: 80, weight: 10}
"""
SPLIT_REQUESTS = 200
PROPAGATION_TRIES = 100  # looks at the lab (0.1 s apart) for a change to reach the proxies: about a second


def _status() -> dict:
    return json.loads(subprocess.run([sys.executable, "-m", "ambient", "lab", "status", "--name", LAB_NAME, "-o",
                                      "json"], capture_output=True, text=True, check=True).stdout)


def _keepalive(config: Path, host: str, *lines: str) -> list[dict]:
    """Batches of requests on one keep-alive connection from demo/sleep (``http_client.py``: a line
    ``METHOD PATH COUNT`` per batch, a JSON summary back for each)."""
    argv = [sys.executable, "-m", "ambient", "exec", "--name", LAB_NAME, "demo/sleep", "--", "python3",
            str(config / "http_client.py"), host, "80"]
    result = subprocess.run(argv, input="".join(f"{line}\n" for line in lines), capture_output=True, text=True,
                            timeout=120)
    return [json.loads(line) for line in result.stdout.splitlines()][1:]


def _waypoint_log(tries: int = 50, **match: object) -> dict | None:
    """The waypoint's last access-log line whose fields include ``match``; written as the response
    ends, so it is looked for ``tries`` times, 0.1 s apart."""
    for _ in range(tries):
        log = subprocess.run([sys.executable, "-m", "ambient", "lab", "logs", "--name", LAB_NAME,
                              "demo/waypoint-waypoint"], capture_output=True, text=True).stdout
        entries = [json.loads(line.split(" ambient.waypoint.access: ", 1)[1]) for line in log.splitlines()
                   if " ambient.waypoint.access: " in line]
        found = next((e for e in reversed(entries) if all(e.get(k) == v for k, v in match.items())), None)
        if found is not None:
            return found
        time.sleep(0.1)
    return None


def _show_request(entry: dict | None) -> None:
    if entry is None:
        print("  (no access-log line found)")
        return
    keys = ("method", "path", "protocol", "response_code", "response_flags", "src.workload", "src.identity",
            "dst.workload", "route_name", "policy", "reason", "detail")
    print("  " + json.dumps({k: entry[k] for k in keys if k in entry}))


def _waypoint_part(config: Path, status: dict, sleep: dict) -> None:
    _step("the waypoint: `ambient waypoint apply` runs an L7 proxy for namespace demo (--enroll-namespace labels "
          "it istio.io/use-waypoint: waypoint)")
    _ambient("waypoint", "apply", "-n", "demo", "--enroll-namespace", "--wait", "--lab", LAB_NAME)
    _ambient("waypoint", "list", "-n", "demo", "--lab", LAB_NAME)
    vip = next(s["vip"] for s in status["services"] if (s["namespace"], s["name"]) == ("demo", "echo"))
    through = None
    # `--wait` returned once every ztunnel holds the waypoint as healthy; the namespace label is written
    # after it (as istioctl does), and the client's ztunnel learns the Service's new waypoint just after.
    for _ in range(PROPAGATION_TRIES):
        answer = _curl("demo/sleep", vip, "/through-the-waypoint", max_time=2, port=80, quiet=True)
        if answer is not None and answer["client"]["address"] != sleep["ip"]:
            through = answer
            break
        time.sleep(0.1)
    if through is None:
        raise RuntimeError("no request reached echo through the waypoint")
    print(f"  demo/sleep to Service echo ({vip}:80): {through['pod']['name']} saw {through['method']} "
          f"{through['path']} from {through['client']['address']} (the waypoint's pod, not {sleep['ip']})")
    print("  the waypoint's access log:")
    _show_request(_waypoint_log(path="/through-the-waypoint"))

    _step("a v2 of echo rolls out beside v1 (echo-v2.yaml: a Deployment and the Services echo-v1, echo-v2)")
    (config / "echo-v2.yaml").write_text(ECHO_V2)
    for _ in range(PROPAGATION_TRIES):
        v2 = [p for p in _status()["pods"] if p["name"].startswith("echo-v2-")]
        if v2 and v2[0]["all_ready"]:
            break
        time.sleep(0.1)
    else:
        raise RuntimeError("echo-v2 did not become ready")
    print(f"  demo/{v2[0]['name']} ready on {v2[0]['node']} ({v2[0]['ip']})")

    _step("L7 policy and routing at the waypoint (waypoint-l7.yaml): DENY /admin/* on Service echo, and an "
          "HTTPRoute sending 90% to echo-v1 and 10% to echo-v2")
    print("\n".join(f"  {line}" for line in L7_CONFIG.splitlines()))
    (config / "waypoint-l7.yaml").write_text(L7_CONFIG)
    for _ in range(PROPAGATION_TRIES):  # until the waypoint has both: the 403, and the route's name in its log
        denied, allowed = _keepalive(config, vip, "GET /admin/users 1", "GET /hello 1")
        routed = _waypoint_log(tries=1, path="/hello")
        if "403" in denied["statuses"] and routed is not None and routed.get("route_name") == "demo/echo-split":
            break
        time.sleep(0.1)
    else:
        raise RuntimeError("the waypoint did not apply the policy and the route")
    print(f"  on one keep-alive connection from demo/sleep: GET /admin/users -> {next(iter(denied['statuses']))} "
          f"{denied['bodies'].get('403', '')!r}; GET /hello -> {next(iter(allowed['statuses']))} "
          f"from {next(iter(allowed['pods']))}")
    print("  the waypoint's access log, denied and allowed:")
    _show_request(_waypoint_log(path="/admin/users", response_code=403))
    _show_request(_waypoint_log(path="/hello", response_code=200))

    print(f"$ ambient exec demo/sleep -- python3 http_client.py {vip} 80  <<< 'GET /split {SPLIT_REQUESTS}'")
    (split,) = _keepalive(config, vip, f"GET /split {SPLIT_REQUESTS}")
    v2_count = sum(n for pod, n in split["pods"].items() if pod.startswith("echo-v2-"))
    v1_count = sum(split["pods"].values()) - v2_count
    print(f"  {SPLIT_REQUESTS} requests to Service echo: echo-v1 answered {v1_count}, echo-v2 answered {v2_count} "
          f"(weights 90/10); statuses {dict(split['statuses'])}")


# Where `make wasm-plugins` builds the test plugins (the demo runs from the checkout, as `make demo` does).
WASM_PLUGINS = Path(os.environ.get("AMBIENT_WASM_PLUGINS", "build/wasm-plugins"))
WASM_CONFIG = """apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: greeting, namespace: demo}}
spec:
  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]
  url: file://{add_header}
  pluginConfig: {{header: x-greeting, value: hello-from-wasm}}
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: token-required, namespace: demo}}
spec:
  targetRefs: [{{kind: Service, group: "", name: echo}}]
  url: file://{deny}
  pluginName: deny-without-header
  phase: AUTHZ
  pluginConfig: {{header: x-token}}
"""


def _http(client: str, url: str, *headers: str) -> tuple[int, str]:
    """(status, body) of one GET with curl from ``client`` (0 when curl failed)."""
    argv = [sys.executable, "-m", "ambient", "exec", "--name", LAB_NAME, client, "--", "curl", "-sS", "--max-time",
            "3", "-w", "\n%{http_code}", *[part for header in headers for part in ("-H", header)], url]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    body, _, code = result.stdout.rpartition("\n")
    return (int(code) if result.returncode == 0 and code.isdigit() else 0), body


def _wasm_part(config: Path, status: dict) -> None:
    add_header, deny = WASM_PLUGINS / "add-header-gcore.wasm", WASM_PLUGINS / "deny-without-header-solo.wasm"
    if not (add_header.is_file() and deny.is_file()):
        _step(f"Proxy-Wasm plugins: skipped, none built in {WASM_PLUGINS} (`make wasm-plugins` builds them)")
        return
    _step("Proxy-Wasm plugins in the waypoint (wasm.yaml): one adds a header from its configuration (AssemblyScript, "
          "gcore SDK), one denies requests without x-token (AssemblyScript, solo SDK)")
    text = WASM_CONFIG.format(add_header=add_header.resolve(), deny=deny.resolve())
    print("\n".join(f"  {line}" for line in text.splitlines()))
    (config / "wasm.yaml").write_text(text)
    vip = next(s["vip"] for s in status["services"] if (s["namespace"], s["name"]) == ("demo", "echo"))
    url = f"http://{vip}/wasm"
    for _ in range(PROPAGATION_TRIES):  # the waypoint fetches, compiles and configures both: about a second
        denied, allowed = _http("demo/sleep", url), _http("demo/sleep", url, "x-token: demo")
        if denied[0] == 403 and allowed[0] == 200:
            break
        time.sleep(0.1)
    else:
        raise RuntimeError(f"the plugins did not take effect: {denied}, {allowed}")
    print(f"$ ambient exec demo/sleep -- curl http://{vip}/wasm")
    print(f"  {denied[0]} {denied[1].strip()!r}")
    print(f"$ ambient exec demo/sleep -- curl -H 'x-token: demo' http://{vip}/wasm")
    seen = json.loads(allowed[1])["headers"]
    print(f"  {allowed[0]}; echo saw x-greeting: {seen.get('x-greeting') or seen.get('X-Greeting')!r}")
    print("  the waypoint's access log, denied by the plugin:")
    _show_request(_waypoint_log(path="/wasm", response_code=403))


ISTIO_SAMPLES = Path(__file__).resolve().parents[1] / "manifests" / "istio-samples"
DEFAULT_AMBIENT = ("apiVersion: v1\nkind: Namespace\n"
                   "metadata: {name: default, labels: {istio.io/dataplane-mode: ambient}}\n")
BOOKINFO_READY_TRIES = 600  # looks at the lab, 0.1 s apart, for Bookinfo's six pods to be ready
BOOKINFO_REQUESTS = 30  # productpage views, to see the three reviews versions the round robin spreads them over


def _reviews_version(page: str) -> str:
    """Which reviews version drew a productpage: v1 draws no stars, v2 black ones, v3 red ones."""
    if 'color="red"' in page:
        return "v3"
    return "v2" if 'color="black"' in page else "v1"


def _bookinfo_part(config: Path) -> None:
    _step("Istio's Bookinfo, as Istio publishes it (manifests/istio-samples/bookinfo.yaml, images and all), in "
          "namespace default labelled ambient: the lab runs a built-in equivalent of each sample image")
    shutil.copy(ISTIO_SAMPLES / "bookinfo.yaml", config / "bookinfo.yaml")
    (config / "namespace.default.yaml").write_text(DEFAULT_AMBIENT)
    print("$ ambient lab up  (picks up bookinfo.yaml and namespace.default.yaml live)")
    for _ in range(BOOKINFO_READY_TRIES):
        pods = [p for p in _status()["pods"] if p["namespace"] == "default"]
        if len(pods) >= 6 and all(p["all_ready"] for p in pods):
            break
        time.sleep(0.1)
    else:
        states = ", ".join(f"{p['name']} {p['state']} {p.get('message') or ''}".strip() for p in pods)
        raise RuntimeError(f"Bookinfo's pods did not become ready: {states or 'none planned'}")
    print(f"  {len(pods)} pods ready: " + ", ".join(sorted(p["name"].rsplit("-", 2)[0] for p in pods)))
    url = "http://productpage.default:9080/productpage"
    print(f"$ ambient exec demo/sleep -- curl {url}   (by Service name, answered by ztunnel's DNS proxy; "
          f"{BOOKINFO_REQUESTS} times)")
    versions: dict[str, int] = {}
    title = None
    for _ in range(BOOKINFO_REQUESTS):
        code, page = _http("demo/sleep", url)
        if code != 200:
            raise RuntimeError(f"productpage answered {code}: {page[:200]!r}")
        found = re.search(r"<title>(.*?)</title>", page)
        title = found.group(1) if found else title
        version = _reviews_version(page)
        versions[version] = versions.get(version, 0) + 1
    print(f"  200 x {BOOKINFO_REQUESTS}, title {title!r}; reviews drawn by "
          + ", ".join(f"{v}: {n}" for v, n in sorted(versions.items())))


# curl's exit status for a connection reset, by how far curl got: ztunnel resets a denied
# connection as soon as it accepts it, which a curl slowed down by a loaded machine may see before
# it noticed its connect complete (7), or while sending (55), rather than while receiving (56).
CURL_RESET_EXITS = frozenset({7, 55, 56})


def _try_reset(client: str, ip: str) -> bool:
    """Whether curl from ``client`` to the echo pod is reset (denied) rather than answered."""
    argv = [sys.executable, "-m", "ambient", "exec", "--name", LAB_NAME, client, "--",
            "curl", "-sS", "--max-time", "5", f"http://{ip}:8080/denied?"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    return result.returncode in CURL_RESET_EXITS


def run_ca(args: argparse.Namespace) -> int:
    state = Path(tempfile.mkdtemp(prefix="ambient-demo-"))
    ca_dir, out = state / "ca", state / "workload"
    server: CaServerProcess | None = None
    try:
        _step("ambient ca init: a new self-signed root (ECDSA P-256, 10 years)")
        print(run_ambient("ca", "init", "--dir", str(ca_dir)).stdout, end="")

        _step(f"ambient ca token create --identity {IDENTITY}")
        token = run_ambient("ca", "token", "create", "--dir", str(ca_dir), "--identity", IDENTITY).stdout.strip()
        print(f"  token {token[:8]}... (printed once; the CA keeps only its SHA-256)")

        _step("ambient ca serve: gRPC IstioCertificateService over TLS on loopback")
        log_path = state / "ca.log"
        with open(log_path, "w") as log_file:
            server = start_ca_server(ca_dir, metrics=True, stderr=log_file)
        print(f"  {server.ready_line} (pid {server.proc.pid})")
        address, metrics_url = server.address, server.metrics_url

        _step("ambient ca request: the key is made locally, only a CSR is sent")
        print(run_ambient("ca", "request", "--server", address, "--root", str(ca_dir / "root-cert.pem"),
                       "--token", token, "--identity", IDENTITY, "--out", str(out)).stdout, end="")
        _describe_chain(out / "cert-chain.pem")

        _step("openssl verify: the chain against the mesh root")
        chain = x509.load_pem_x509_certificates((out / "cert-chain.pem").read_bytes())
        (state / "leaf.pem").write_bytes(chain[0].public_bytes(serialization.Encoding.PEM))
        verify = subprocess.run(
            ["openssl", "verify", "-CAfile", str(ca_dir / "root-cert.pem"), str(state / "leaf.pem")],
            capture_output=True, text=True)
        print(f"  {verify.stdout.strip() or verify.stderr.strip()}")

        _step(f"the same token asking for {OTHER_IDENTITY} is refused")
        refused = run_ambient("ca", "request", "--server", address, "--root", str(ca_dir / "root-cert.pem"),
                           "--token", token, "--identity", OTHER_IDENTITY, "--out", str(state / "refused"), check=False)
        print(f"  exit {refused.returncode}: {refused.stderr.strip()}")

        _step(f"CA metrics ({metrics_url})")
        with urllib.request.urlopen(metrics_url, timeout=10) as response:
            for line in response.read().decode().splitlines():
                if line.startswith("ambient_ca_") and not line.startswith("ambient_ca_root") and "_created" not in line:
                    print(f"  {line}")

        _step(f"the CA's log ({log_path.name}): one line per decision")
        for line in log_path.read_text().splitlines():
            print(f"  {line}")
        return 0 if verify.returncode == 0 and refused.returncode != 0 else 1
    finally:
        if server is not None:
            status = server.stop()
            _step(f"stopped the CA server (pid {server.proc.pid}, exit {status})")
        if args.keep:
            print(f"state kept in {state}")
        else:
            shutil.rmtree(state, ignore_errors=True)
