"""The lab's sample manifests: they validate cleanly, mean what they say, and the echo server echoes."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from controlplane.validate import cross_check
from controlplane.view import ClusterState, PodStatus, compute_view
from mesh.api import workload_pb2 as wpb
from mesh.parse import parse_paths

SAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "samples"


def test_samples_validate_without_a_problem():
    result = parse_paths([SAMPLES])
    assert result.problems == [] and cross_check(result.resources) == []


def test_samples_put_one_namespace_in_the_mesh_and_not_the_other():
    state = ClusterState.build(parse_paths([SAMPLES]).resources)
    statuses = {key: PodStatus(f"10.244.0.{i + 2}", "node-0") for i, key in enumerate(sorted(state.pods))}
    vips = {("demo", "echo"): "10.96.0.10"}
    view = compute_view(ClusterState.build(parse_paths([SAMPLES]).resources, statuses, vips))
    modes = {(w.namespace, w.canonical_name): w.tunnel_protocol for w in view.workloads.values()}
    assert modes == {("demo", "echo"): wpb.HBONE, ("demo", "sleep"): wpb.HBONE,
                     ("legacy", "echo"): wpb.NONE, ("legacy", "sleep"): wpb.NONE}
    echo = [w for w in view.workloads.values() if w.namespace == "demo" and w.canonical_name == "echo"]
    assert len(echo) == 2 and all(
        [(p.service_port, p.target_port) for p in w.services["demo/echo.demo.svc.cluster.local"].ports] == [(80, 8080)]
        for w in echo)


@pytest.fixture
def echo_server():
    env = {"PATH": os.environ["PATH"], "POD_NAME": "echo-1", "POD_NAMESPACE": "demo", "POD_IP": "10.244.0.7"}
    proc = subprocess.Popen([sys.executable, str(SAMPLES / "echo_server.py"), "--host", "127.0.0.1", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        line = proc.stdout.readline()  # printed once bound
        assert line.startswith("listening on "), line
        yield int(line.rsplit(":", 1)[1])
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_echo_server_answers_with_what_it_saw(echo_server):
    connection = http.client.HTTPConnection("127.0.0.1", echo_server, timeout=10)
    connection.request("POST", "/orders?id=7", body=b"12345", headers={"X-Trace": "abc"})
    local_port = connection.sock.getsockname()[1]
    response = connection.getresponse()
    seen = json.loads(response.read())
    connection.close()
    assert response.status == 200
    assert seen["method"] == "POST" and seen["path"] == "/orders?id=7" and seen["body_bytes"] == 5
    assert seen["headers"]["X-Trace"] == "abc"
    assert seen["client"] == {"address": "127.0.0.1", "port": local_port}
    assert seen["pod"] == {"name": "echo-1", "namespace": "demo", "ip": "10.244.0.7"}
