"""The lab end to end, through the commands a user types (root: netns, cgroups).

Each test builds labs from its own YAML directory with a unique name and state root, drives them with
``ambient lab up/status/logs/down`` and ``ambient exec`` as subprocesses, and checks what the machine
looks like afterwards with ``ip`` and /proc, independently of the lab's code. Traffic goes from a
client pod to an echo server (manifests/samples/echo_server.py), which answers with the client
address it saw. Waits for the lab's state (a restart, a live edit) read ``status.json`` whenever it
changes, bounded by a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from ipaddress import ip_network
from pathlib import Path

import pytest

from lab.state import pidfd_wait
from tests.e2e.lab_driver import (
    NAMESPACES,
    Lab,
    cgroup_dirs,
    client_pod,
    echo_pod,
    find_pod,
    lab_netns_inodes,
    living_processes,
    netns_names,
    without_other_labs,
)
from tests.lab.test_network import LAB_NETWORKS, ip_json, root_netns_state

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the lab creates network namespaces and cgroups"),
]


def test_up_traffic_status_logs_restart_edit_and_down_leaves_nothing(make_lab):
    # Plain pods talk plain TCP; the ambient client is captured and served by its node's ztunnel.
    lab = make_lab([NAMESPACES, echo_pod("plain", "echo-a", "node-0"), echo_pod("plain", "echo-b", "node-1"),
                    client_pod("mesh", "client-a", "node-1"), client_pod("plain", "client-b", "node-0")])
    before_root = root_netns_state()
    # This lab's names and names of no lab: other labs (other tests, beside this one) come and go.
    before_netns = without_other_labs(netns_names(), lab.name)
    before_cgroups = without_other_labs(cgroup_dirs(), lab.name)

    up = lab.up(nodes=2)
    assert "is up in" in up.stdout and "running in the background" in up.stdout, up.stdout
    inodes = lab_netns_inodes(lab.name)
    assert len(inodes) == 1 + 1 + 2 + 4  # fabric, control plane, 2 nodes, 4 pods
    # Every name the lab made carries its prefix: netns, and cgroups (the root netns has no new link).
    assert all(n.startswith(f"amb-{lab.name}.") for n in without_other_labs(netns_names(), lab.name) - before_netns)
    assert without_other_labs(cgroup_dirs(), lab.name) - before_cgroups == {f"amb-{lab.name}.lab"}
    assert root_netns_state() == before_root

    status = lab.status()
    assert status["running"] is True
    assert [n["name"] for n in status["nodes"]] == ["node-0", "node-1"]
    pods = {(p["namespace"], p["name"]): p for p in status["pods"]}
    assert set(pods) == {("plain", "echo-a"), ("plain", "echo-b"), ("mesh", "client-a"), ("plain", "client-b")}
    for key, pod in pods.items():
        assert (pod["state"], pod["ready"]) == ("Running", "1/1"), key
    assert pods[("plain", "echo-a")]["node"] == "node-0" and pods[("plain", "echo-b")]["node"] == "node-1"
    assert pods[("plain", "echo-a")]["ip"].startswith("10.244.0.")
    assert pods[("plain", "echo-b")]["ip"].startswith("10.244.1.")
    assert pods[("mesh", "client-a")]["dataplane_mode"] == "ambient"
    assert pods[("plain", "client-b")]["dataplane_mode"] == "none"
    assert status["controlplane"]["state"] == "running"

    # Pod to pod by IP, on the same node and across nodes; the server sees the client's own IP.
    client_a, client_b = pods[("mesh", "client-a")]["ip"], pods[("plain", "client-b")]["ip"]
    same_node = lab.get("plain/client-b", pods[("plain", "echo-a")]["ip"], "/same?x=1")
    assert same_node["client"]["address"] == client_b and same_node["path"] == "/same?x=1"
    assert same_node["pod"] == {"name": "echo-a", "namespace": "plain", "ip": pods[("plain", "echo-a")]["ip"]}
    across = lab.get("plain/client-b", pods[("plain", "echo-b")]["ip"], "/across")
    assert across["client"]["address"] == client_b and across["pod"]["name"] == "echo-b"

    # The ambient pod is captured by its node's agent and taken by its ztunnel; its connection out of
    # the mesh passes through ztunnel (passthrough), and the server still sees the pod's own IP.
    enrolled = lab.wait_for(lambda s: find_pod(s, "mesh", "client-a")["capture"] == "enrolled",
                            "the enrollment of mesh/client-a")
    assert [p["capture"] for p in enrolled["pods"] if p["namespace"] == "plain"] == ["-"] * 3
    passthrough = lab.get("mesh/client-a", pods[("plain", "echo-b")]["ip"], "/from-the-mesh")
    assert passthrough["client"]["address"] == client_a
    ztunnel_log = lab.state_root / lab.name / "logs" / "ztunnel-node-1.log"
    deadline = time.monotonic() + 10  # the access-log line is written as ztunnel closes its side
    while '"dst.workload": "echo-b"' not in ztunnel_log.read_text():  # Istio's field: the pod name
        assert time.monotonic() < deadline, ztunnel_log.read_text()
        time.sleep(0.05)  # a log file has no change event; bounded

    # exec returns the command's exit status, and runs in the pod's network.
    assert lab.exec("mesh/client-a", "sh", "-c", "exit 3", check=False).returncode == 3
    assert lab.exec("mesh/client-a", "no-such-command", check=False).returncode == 127
    addresses = ip_json_in(lab, "mesh/client-a")
    assert client_a in addresses

    # The table names every pod; the logs hold each side's lines.
    table = lab.run("lab", "status", "--name", lab.name).stdout
    for name in ("echo-a", "echo-b", "client-a", "client-b", "node-0", "node-1"):
        assert name in table
    assert '"GET /across HTTP/1.1" 200' in lab.run("lab", "logs", "--name", lab.name, "plain/echo-b").stdout
    assert "serving IstioCertificateService" in lab.run("lab", "logs", "--name", lab.name, "controlplane").stdout
    pods_json = json.loads((lab.state_root / lab.name / "controlplane" / "pods.json").read_text())["pods"]
    assert pods_json["plain/echo-a"] == {"ip": pods[("plain", "echo-a")]["ip"], "node": "node-0", "ready": True}

    # A container whose process dies is restarted, at the same IP.
    victim = pods[("plain", "echo-b")]
    os.kill(victim["containers"][0]["pid"], signal.SIGKILL)
    restarted = lab.wait_for(lambda s: (p := find_pod(s, "plain", "echo-b"))["restarts"] == 1 and p["all_ready"],
                             "the restart of plain/echo-b")
    assert find_pod(restarted, "plain", "echo-b")["ip"] == victim["ip"]
    assert lab.get("plain/client-b", victim["ip"])["pod"]["name"] == "echo-b"
    assert "exited with signal SIGKILL; restarting" in lab.run("lab", "logs", "--name", lab.name, "plain/echo-b").stdout

    # Editing the directory adds a pod live, and removing the file removes it with its netns.
    (lab.config_dir / "extra.yaml").write_text(echo_pod("plain", "extra", "node-1"))
    added = lab.wait_for(lambda s: (p := find_pod(s, "plain", "extra")) is not None and p["all_ready"], "pod extra")
    extra = find_pod(added, "plain", "extra")
    assert lab.get("plain/client-b", extra["ip"])["pod"]["name"] == "extra"
    for key, pod in pods.items():  # the others kept their IPs, and only echo-b was restarted
        now = find_pod(added, *key)
        assert now["ip"] == pod["ip"], key
        assert (now["containers"][0]["pid"] == pod["containers"][0]["pid"]) == (key != ("plain", "echo-b")), key
    (lab.config_dir / "extra.yaml").unlink()
    lab.wait_for(lambda s: find_pod(s, "plain", "extra") is None, "the removal of pod extra")
    assert extra["netns"] not in os.listdir("/var/run/netns")

    down = lab.down()
    assert f"Lab {lab.name!r} is down" in down.stdout
    # Nothing of the lab is left: netns, links and routes, cgroups, processes, state files.
    assert root_netns_state() == before_root
    assert without_other_labs(netns_names(), lab.name) == before_netns
    assert without_other_labs(cgroup_dirs(), lab.name) == before_cgroups
    leftovers = {pid: cmd for pid, (cmd, netns) in living_processes().items()
                 if netns in inodes or lab.name in cmd or str(lab.config_dir) in cmd}
    assert leftovers == {}
    assert not (lab.state_root / lab.name).exists()
    again = lab.down()
    assert "nothing to remove" in again.stdout


def ip_json_in(lab: Lab, pod: str) -> list[str]:
    out = lab.exec(pod, "ip", "-j", "-4", "addr").stdout
    return [a["local"] for link in json.loads(out) for a in link.get("addr_info", [])]


def test_no_lab_netns_routes_to_the_host(make_lab):
    lab = make_lab([NAMESPACES, client_pod("plain", "client", "node-0")])
    lab.up(nodes=2)
    prefix = f"amb-{lab.name}."
    for netns in [n for n in os.listdir("/var/run/netns") if n.startswith(prefix)]:
        for route in ip_json("-n", netns, "-4", "route", "show", "table", "all"):
            if route.get("type") in ("local", "broadcast"):
                continue
            dst = route["dst"]
            assert dst != "default" or route.get("gateway", "").startswith("10.244."), (netns, route)
            if dst != "default":
                assert any(ip_network(dst).subnet_of(net) for net in LAB_NETWORKS), (netns, route)
    # The pod's default route leads only into the lab: the host's addresses are unreachable.
    unreachable = lab.exec("plain/client", "curl", "-sS", "--max-time", "2", "http://192.0.2.1/", check=False)
    assert unreachable.returncode != 0


def test_two_labs_run_side_by_side_without_seeing_each_other(make_lab):
    first = make_lab([NAMESPACES, echo_pod("plain", "echo", "node-0"), client_pod("plain", "client", "node-0")], "a")
    second = make_lab([NAMESPACES, echo_pod("plain", "echo", "node-0"), client_pod("plain", "client", "node-0")], "b")
    first.up(nodes=1)
    second.up(nodes=1)
    ip_first, ip_second = first.pod("plain", "echo")["ip"], second.pod("plain", "echo")["ip"]
    assert ip_first == ip_second  # the same addresses, in separate namespaces
    (first.config_dir / "apps.yaml").write_text("---".join([NAMESPACES, echo_pod("plain", "echo", "node-0"),
                                                            client_pod("plain", "client", "node-0"),
                                                            echo_pod("plain", "only-in-a", "node-0")]))
    first.wait_for(lambda s: (p := find_pod(s, "plain", "only-in-a")) is not None and p["all_ready"], "only-in-a")
    only_a = first.pod("plain", "only-in-a")["ip"]
    assert first.get("plain/client", only_a)["pod"]["name"] == "only-in-a"
    # The same IP from the second lab reaches nothing: its network has no such pod.
    assert second.exec("plain/client", "curl", "-sS", "--max-time", "2", f"http://{only_a}:8080/",
                       check=False).returncode != 0
    assert [p["name"] for p in second.status()["pods"]] == ["client", "echo"]
    # Without --name, a command with two labs asks which one.
    ambiguous = first.run("lab", "status", check=False)
    assert ambiguous.returncode == 1 and "--name" in ambiguous.stderr
    first.down()
    assert second.get("plain/client", ip_second)["pod"]["name"] == "echo"
    second.down()


def test_down_cleans_up_after_a_daemon_that_died(make_lab):
    lab = make_lab([NAMESPACES, echo_pod("plain", "echo", "node-0")])
    lab.up(nodes=1)
    inodes = lab_netns_inodes(lab.name)
    record = json.loads((lab.state_root / lab.name / "lab.json").read_text())
    echo_pid = lab.pod("plain", "echo")["containers"][0]["pid"]
    os.kill(record["pid"], signal.SIGKILL)  # the daemon dies; its pods and network stay
    assert pidfd_wait(record["pid"], 10)
    assert os.path.exists(f"/proc/{echo_pid}")
    assert lab.run("lab", "status", "--name", lab.name).stdout.startswith(f"Lab {lab.name!r}: NOT RUNNING")
    refused = lab.run("lab", "up", str(lab.config_dir), "--name", lab.name, check=False)
    assert refused.returncode == 1 and "lab down" in refused.stderr

    down = lab.down()
    assert "cleaned up after it" in down.stdout
    assert lab_netns_inodes(lab.name) == set()
    assert not any(netns in inodes for _, netns in living_processes().values())
    assert not (lab.state_root / lab.name).exists()


def test_up_refuses_manifests_with_errors_and_builds_nothing(make_lab):
    lab = make_lab(["apiVersion: v1\nkind: Pod\nmetadata: {name: Bad_Name, namespace: x}\nspec: {containers: []}\n"])
    result = lab.run("lab", "up", str(lab.config_dir), "--name", lab.name, check=False)
    assert result.returncode == 1
    assert "apps.yaml:3" in result.stderr and "error(s)" in result.stderr
    assert lab_netns_inodes(lab.name) == set()
    assert not (lab.state_root / lab.name).exists()


def test_pods_that_cannot_run_or_are_not_ready_are_reported(make_lab):
    never_ready = """
apiVersion: v1
kind: Pod
metadata: {name: never-ready, namespace: plain}
spec:
  containers:
  - name: app
    command: [sleep, infinity]
    readinessProbe: {tcpSocket: {port: 9999}}
"""
    image_only = """
apiVersion: v1
kind: Pod
metadata: {name: image-only, namespace: plain}
spec:
  containers: [{name: web, image: "nginx:1.27"}]
"""
    lost = client_pod("plain", "lost", "node-5")
    lab = make_lab([NAMESPACES, never_ready, image_only, lost, client_pod("plain", "fine", "node-0")])
    up = lab.run("lab", "up", str(lab.config_dir), "--name", lab.name, "--nodes", "1", "--timeout", "2")
    assert "Not every pod is ready after 2 s" in up.stdout
    assert "Pod plain/image-only is Error: web: container 'web' has no command" in up.stdout
    assert "Pod plain/lost is Pending: spec.nodeName 'node-5' is not a node of this lab (node-0)" in up.stdout

    status = lab.status()
    pods = {p["name"]: p for p in status["pods"]}
    assert (pods["never-ready"]["state"], pods["never-ready"]["ready"]) == ("Running", "0/1")
    assert pods["never-ready"]["message"] == f"app: connect to {pods['never-ready']['ip']}:9999 refused"
    assert pods["image-only"]["state"] == "Error" and pods["image-only"]["ip"] is not None
    assert (pods["lost"]["state"], pods["lost"]["ip"]) == ("Pending", None)
    assert pods["fine"]["all_ready"]
    # The control plane hears of each running pod, ready or not; a pending pod has no IP to report.
    reported = json.loads((lab.state_root / lab.name / "controlplane" / "pods.json").read_text())["pods"]
    assert reported["plain/never-ready"]["ready"] is False and reported["plain/fine"]["ready"] is True
    assert "plain/lost" not in reported
    table = lab.run("lab", "status", "--name", lab.name).stdout
    assert "Not ready:" in table and "plain/lost: spec.nodeName" in table


CA_PROBE = """
import sys
from ca.client import CaClient, CaRequestFailed
from mesh.identity import SpiffeId
root, token, identity = open(sys.argv[1], "rb").read(), open(sys.argv[2]).read().strip(), sys.argv[3]
try:
    with CaClient("10.255.0.2:15012", root, token, server_name="istiod.istio-system.svc", timeout=10) as client:
        print("issued", client.create_certificate(SpiffeId.parse(identity)).identity)
except CaRequestFailed as exc:
    print(exc.code.name, exc.details)
"""


def test_a_pod_reaches_neither_the_node_s_secrets_nor_its_metrics(make_lab):
    lab = make_lab([NAMESPACES, echo_pod("mesh", "server", "node-0"), client_pod("mesh", "client", "node-1"),
                    client_pod("plain", "thief", "node-0")])
    lab.up(nodes=2)
    status = lab.status()
    server, client, thief = (find_pod(status, *key) for key in (("mesh", "server"), ("mesh", "client"),
                                                                 ("plain", "thief")))
    # The mesh works with the node tokens bound to their nodes: both ztunnels got certificates.
    assert lab.get("mesh/client", server["ip"], "/")["client"]["address"] == client["ip"]

    state = lab.state_root / lab.name
    token, key = state / "nodes/node-0/token", state / "controlplane/ca/ca-key.pem"
    root = state / "controlplane/ca/root-cert.pem"
    for secret in (token, key, state / "status.json"):
        read = lab.exec("plain/thief", "cat", str(secret), check=False)
        assert read.returncode != 0 and "No such file or directory" in read.stderr, (secret, read)

    node_0 = "10.255.0.10"
    assert lab.exec("plain/thief", "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
                    f"http://{node_0}:15021/healthz/ready").stdout == "200"
    for url in (f"http://{node_0}:15020/metrics", "http://10.244.0.1:15020/metrics", "http://10.255.0.2:15014/metrics"):
        scrape = lab.exec("plain/thief", "curl", "-sS", "--max-time", "2", url, check=False)
        assert scrape.returncode == 28, (url, scrape)  # curl: timed out (the SYN was dropped)
    metrics = subprocess.run(["ip", "netns", "exec", f"amb-{lab.name}.node-1", "curl", "-sS", "--max-time", "5",
                              f"http://{node_0}:15020/metrics"], capture_output=True, text=True, check=True).stdout
    assert "istio_tcp_connections_opened_total" in metrics

    # node-0's token (read by the test, as root) works from node-0 and is refused from its pod.
    identity = "spiffe://cluster.local/ns/mesh/sa/default"
    outcomes = {}
    for netns in (f"amb-{lab.name}.node-0", thief["netns"]):
        outcomes[netns] = subprocess.run(
            ["ip", "netns", "exec", netns, sys.executable, "-c", CA_PROBE, str(root), str(token), identity],
            capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[2]).stdout.strip()
    assert outcomes[f"amb-{lab.name}.node-0"] == f"issued {identity}"
    assert outcomes[thief["netns"]].startswith("UNAUTHENTICATED the token of node node-0 is not valid from "
                                               f"{thief['ip']}")
