"""Pods as the kubelet runs them, end to end (root; issue #21): env from the downward API and a
ConfigMap, a pod waiting for a ConfigMap (CreateContainerConfigError) until it is added, a failing
liveness probe restarting its container, restartPolicy Never and OnFailure, and a Deployment scaled
live and recreated by a `kubectl rollout restart`-like annotation. One lab of one node, no ztunnel
(nothing here is about the mesh)."""

from __future__ import annotations

import os
import time

import pytest

from tests.e2e.lab_driver import Lab

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the lab creates network namespaces and cgroups"),
]

PODS = """
apiVersion: v1
kind: Namespace
metadata: {name: plain}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: plain}
data: {mode: fast, greeting: hello}
---
apiVersion: v1
kind: Pod
metadata: {name: env, namespace: plain, labels: {app: env}}
spec:
  containers:
  - name: c
    command: [sh, -c, 'env | sort; exec sleep infinity']
    env:
    - {name: MY_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: MY_APP, valueFrom: {fieldRef: {fieldPath: "metadata.labels['app']"}}}
    - {name: MY_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    - {name: MY_NODE, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
    - {name: MODE, valueFrom: {configMapKeyRef: {name: settings, key: mode}}}
    envFrom: [{prefix: CM_, configMapRef: {name: settings}}]
---
apiVersion: v1
kind: Pod
metadata: {name: waiter, namespace: plain}
spec:
  containers:
  - name: c
    command: [sh, -c, 'echo "late=$LATE"; exec sleep infinity']
    env: [{name: LATE, valueFrom: {configMapKeyRef: {name: later, key: value}}}]
---
apiVersion: v1
kind: Pod
metadata: {name: unhealthy, namespace: plain}
spec:
  containers:
  - name: c
    command: [sleep, infinity]
    livenessProbe: {exec: {command: ["false"]}, periodSeconds: 1, failureThreshold: 2}
---
apiVersion: v1
kind: Pod
metadata: {name: never, namespace: plain}
spec:
  restartPolicy: Never
  containers: [{name: c, command: [sh, -c, 'exit 3']}]
---
apiVersion: v1
kind: Pod
metadata: {name: onfailure, namespace: plain}
spec:
  restartPolicy: OnFailure
  containers: [{name: c, command: ["true"]}]
"""

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: plain}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata:
      labels: {{app: web}}
      annotations: {{{annotations}}}
    spec:
      containers: [{{name: c, command: [sleep, infinity]}}]
"""

LATER = """
apiVersion: v1
kind: ConfigMap
metadata: {name: later, namespace: plain}
data: {value: arrived}
"""


def log_of(lab: Lab, pod: str) -> str:
    path = lab.state_root / lab.name / "logs" / "pods" / f"plain_{pod}_c.log"
    return path.read_text() if path.exists() else ""


def wait_for_log(lab: Lab, pod: str, text: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in (log := log_of(lab, pod)):
            return log
        time.sleep(0.1)  # a log file has no change event here; bounded by the deadline
    pytest.fail(f"plain/{pod} never logged {text!r}; its log:\n{log_of(lab, pod)}")


def web_pods(status: dict) -> list[str]:
    return sorted(p["name"] for p in status["pods"] if p["name"].startswith("web-") and p["state"] == "Running")


def test_pods_as_the_kubelet_runs_them(make_lab):
    lab = make_lab([PODS, DEPLOYMENT.format(replicas=1, annotations="")])
    lab.up(nodes=1, ztunnel=False)

    # The downward API and the ConfigMap, in the container's environment.
    env = wait_for_log(lab, "env", "MY_NAME=")
    ip = lab.pod("plain", "env")["ip"]
    for line in ("MY_NAME=env", "MY_APP=env", f"MY_IP={ip}", "MY_NODE=node-0", "MODE=fast", "CM_mode=fast",
                 "CM_greeting=hello"):
        assert line in env.splitlines()

    # Without its ConfigMap the pod waits, as the kubelet's CreateContainerConfigError; added, it starts.
    waiter = lab.pod("plain", "waiter")
    assert waiter["state"] == "CreateContainerConfigError"
    assert waiter["message"] == "CreateContainerConfigError: container 'c': configmap \"later\" not found"
    (lab.config_dir / "later.yaml").write_text(LATER)
    lab.wait_for(lambda s: any(p["name"] == "waiter" and p["state"] == "Running" for p in s["pods"]),
                 "the waiting pod starting")
    wait_for_log(lab, "waiter", "late=arrived")

    # restartPolicy: Never leaves a failed container failed; OnFailure a succeeded one completed.
    lab.wait_for(lambda s: any(p["name"] == "never" and p["state"] == "Error" for p in s["pods"]), "never failing")
    lab.wait_for(lambda s: any(p["name"] == "onfailure" and p["state"] == "Completed" for p in s["pods"]),
                 "onfailure completing")
    assert lab.pod("plain", "never")["restarts"] == 0 and lab.pod("plain", "onfailure")["restarts"] == 0

    # A failing liveness probe restarts its container (RESTARTS goes up), saying why in its log.
    lab.wait_for(lambda s: any(p["name"] == "unhealthy" and p["restarts"] >= 1 for p in s["pods"]),
                 "the unhealthy container restarting")
    assert "Liveness probe failed: exec [false] exited 1; killing pid" in log_of(lab, "unhealthy")

    # replicas scale live; a new restartedAt annotation replaces the pods, as `kubectl rollout restart`.
    (one,) = web_pods(lab.status())
    (lab.config_dir / "apps.yaml").write_text("---".join([PODS, DEPLOYMENT.format(replicas=3, annotations="")]))
    three = web_pods(lab.wait_for(lambda s: len(web_pods(s)) == 3, "scaling to 3"))
    assert one in three
    restarted = DEPLOYMENT.format(replicas=3, annotations="kubectl.kubernetes.io/restartedAt: '2026-12-07T03:00:00Z'")
    (lab.config_dir / "apps.yaml").write_text("---".join([PODS, restarted]))
    status = lab.wait_for(lambda s: len(web_pods(s)) == 3 and not set(web_pods(s)) & set(three), "rollout restart")
    assert len([p for p in status["pods"] if p["name"].startswith("web-")]) == 3
