"""What the lab runs for a set of resources: scheduling by nodeName, each container's process, and
the pod state shown by `lab status` (pure functions, no root needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.view import ClusterState
from lab.state import LabPaths
from lab.topology import PodSpec, plan_lab
from lab.workloads import container_plans, desired_pods, pod_phase
from mesh.parse import parse_text

YAML = """
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop}
spec:
  serviceAccountName: web
  nodeName: node-1
  containers:
  - name: app
    command: [python3, server.py]
    args: [--port, "8080"]
    env: [{name: MODE, value: fast}, {name: POD_NAME, value: overridden}]
  - name: image-only
    image: nginx:1.27
---
apiVersion: v1
kind: Pod
metadata: {name: lost, namespace: shop}
spec:
  nodeName: node-7
  containers: [{name: c, command: [sleep, infinity]}]
---
apiVersion: v1
kind: Pod
metadata: {name: free, namespace: shop}
spec:
  containers: [{name: c, command: [sleep, infinity]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
"""


@pytest.fixture
def state() -> ClusterState:
    result = parse_text(YAML, "apps.yaml")
    assert not result.errors, result.errors
    return ClusterState.build(result.resources)


def test_nodename_picks_the_node_and_an_unknown_one_leaves_the_pod_pending(state):
    pods = desired_pods(state, node_count=2)
    assert pods[("shop", "web")].node == 1 and pods[("shop", "web")].unschedulable is None
    assert pods[("shop", "free")].node is None
    lost = pods[("shop", "lost")]
    assert lost.unschedulable == "spec.nodeName 'node-7' is not a node of this lab (node-0, node-1)"
    assert pods[("shop", "waypoint-waypoint")].is_waypoint
    assert not pods[("shop", "web")].is_waypoint
    # With 8 nodes, node-7 exists.
    assert desired_pods(state, node_count=8)[("shop", "lost")].node == 7


def test_container_processes_have_the_pod_environment_netns_cgroup_and_log(state, tmp_path):
    pods = desired_pods(state, node_count=2)
    plan = plan_lab("shop", [PodSpec("shop", "web", node=1)], node_count=2)
    paths = LabPaths.of("shop", tmp_path)
    app, image_only = container_plans(paths, pods[("shop", "web")], plan.pod("shop", "web"), Path("/cfg"))

    spec = app.process
    assert spec.argv == ("python3", "server.py", "--port", "8080")
    assert spec.netns == plan.pod("shop", "web").netns
    assert spec.cwd == Path("/cfg")
    assert spec.log_path == tmp_path / "shop" / "logs" / "pods" / "shop_web_app.log"
    assert spec.cgroup.parent.name == "amb-shop.lab"
    env = spec.environment
    assert env["POD_IP"] == "10.244.1.2" and env["POD_NAMESPACE"] == "shop"
    assert env["SERVICE_ACCOUNT"] == "web" and env["MODE"] == "fast"
    assert env["POD_NAME"] == "overridden"  # the container's own env wins, as in Kubernetes
    assert image_only.process is None
    assert image_only.problem is not None and image_only.problem.startswith(
        "container 'image-only' has no command: the lab runs commands, not images, and 'nginx:1.27' is not one of "
        "Istio's sample images")
    assert image_only.problem.endswith("give the container a `command:` (and `args:`) to run")


@pytest.mark.parametrize("containers, problems, unschedulable, phase", [
    ({"a": "running", "b": "running"}, {}, None, "Running"),
    ({"a": "running", "b": "starting"}, {}, None, "ContainerCreating"),
    ({"a": "running", "b": "backoff"}, {}, None, "CrashLoopBackOff"),
    ({"a": "failed", "b": "backoff"}, {}, None, "Error"),
    ({"a": "stopped"}, {}, None, "Completed"),
    ({"a": "running"}, {"b": "no command"}, None, "Error"),
    ({}, {}, "no such node", "Pending"),
    ({}, {}, None, "Pending"),
])
def test_pod_phase_in_kubectl_words(containers, problems, unschedulable, phase):
    assert pod_phase(containers, problems, unschedulable) == phase


SECURITY = """
apiVersion: v1
kind: Pod
metadata: {name: secure, namespace: shop}
spec:
  securityContext: {runAsUser: 1000, runAsGroup: 3000, fsGroup: 2000, seccompProfile: {type: RuntimeDefault}}
  containers:
  - name: inherits
    command: [sleep, infinity]
  - name: overrides
    command: [sleep, infinity]
    securityContext: {runAsUser: 2000, allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
---
apiVersion: v1
kind: Pod
metadata: {name: nonroot, namespace: shop}
spec:
  securityContext: {runAsNonRoot: true}
  containers:
  - {name: as-root, command: [sleep, infinity]}
  - {name: as-user, command: [sleep, infinity], securityContext: {runAsUser: 1001}}
"""


def test_security_context_runs_containers_as_its_user_and_group(tmp_path):
    # Issue 18, defect 9: "where the YAML's securityContext asks, as another user".
    result = parse_text(SECURITY, "secure.yaml")
    assert not result.errors and not result.problems, result.problems  # its other fields are not warned about
    state = ClusterState.build(result.resources)
    pods = desired_pods(state, node_count=1)
    plan = plan_lab("shop", [PodSpec("shop", "secure", node=0), PodSpec("shop", "nonroot", node=0)], node_count=1)
    paths = LabPaths.of("shop", tmp_path)
    inherits, overrides = container_plans(paths, pods[("shop", "secure")], plan.pod("shop", "secure"), Path("/cfg"))
    assert (inherits.process.sandbox.run_as_user, inherits.process.sandbox.run_as_group) == (1000, 3000)
    assert (overrides.process.sandbox.run_as_user, overrides.process.sandbox.run_as_group) == (2000, 3000)
    as_root, as_user = container_plans(paths, pods[("shop", "nonroot")], plan.pod("shop", "nonroot"), Path("/cfg"))
    assert as_root.process is None and "runAsNonRoot" in as_root.problem
    assert as_user.process.sandbox.run_as_user == 1001


def test_a_security_context_user_out_of_range_is_an_error():
    result = parse_text(SECURITY.replace("runAsUser: 1000", "runAsUser: -1"), "secure.yaml")
    assert [p.field for p in result.errors] == ["spec.securityContext.runAsUser"]
