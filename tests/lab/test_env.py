"""A container's environment and restart policy as the lab makes them (``lab.env``, ``lab.workloads``):
the downward API's fields, ConfigMap keys and envFrom, a missing ConfigMap keeping the pod waiting."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.view import ClusterState
from lab.env import config_problem, pod_uid
from lab.processes import RestartPolicy
from lab.state import LabPaths
from lab.topology import PodSpec, plan_lab
from lab.workloads import container_plans, desired_pods, pod_phase
from mesh import resources as r
from mesh.parse import parse_text

POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: shop
  labels: {app: web}
  annotations: {team: blue}
spec:
  serviceAccountName: web-sa
  nodeName: node-1
  restartPolicy: OnFailure
  containers:
  - name: app
    command: [sleep, infinity]
    env:
    - {name: MY_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: MY_NS, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
    - {name: MY_UID, valueFrom: {fieldRef: {fieldPath: metadata.uid}}}
    - {name: MY_APP, valueFrom: {fieldRef: {fieldPath: "metadata.labels['app']"}}}
    - {name: MY_NONE, valueFrom: {fieldRef: {fieldPath: "metadata.labels['none']"}}}
    - {name: MY_TEAM, valueFrom: {fieldRef: {fieldPath: "metadata.annotations['team']"}}}
    - {name: MY_NODE, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
    - {name: MY_SA, valueFrom: {fieldRef: {fieldPath: spec.serviceAccountName}}}
    - {name: MY_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    - {name: MY_HOST, valueFrom: {fieldRef: {fieldPath: status.hostIP}}}
    - {name: MODE, valueFrom: {configMapKeyRef: {name: settings, key: mode}}}
    - {name: MAYBE, valueFrom: {configMapKeyRef: {name: settings, key: absent, optional: true}}}
    - {name: LEVEL, value: from-env}
    envFrom:
    - configMapRef: {name: settings}
    - {prefix: OPT_, configMapRef: {name: optional-one, optional: true}}
"""
SETTINGS = """
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: shop}
data: {mode: fast, LEVEL: from-config-map, extra: "1", "1bad": skipped}
"""
OPTIONAL = """
---
apiVersion: v1
kind: ConfigMap
metadata: {name: optional-one, namespace: shop}
data: {a: b}
"""


def lab_pod(text: str, node_count: int = 2):
    result = parse_text(text, "pods.yaml")
    assert not result.errors, result.errors
    config_maps = {(c.meta.namespace, c.meta.name): c for c in result.resources if isinstance(c, r.ConfigMap)}
    return desired_pods(ClusterState.build(result.resources), node_count, config_maps)[("shop", "web")]


def plans(text: str, tmp_path: Path):
    plan = plan_lab("shop", [PodSpec("shop", "web", node=1)], node_count=2)
    return container_plans(LabPaths.of("shop", tmp_path), lab_pod(text), plan.pod("shop", "web"), Path("/cfg"))


def test_the_downward_api_and_config_maps_fill_the_environment(tmp_path):
    (app,) = plans(POD + SETTINGS + OPTIONAL, tmp_path)
    env = app.process.environment
    assert {k: v for k, v in env.items() if k.startswith("MY_")} == {
        "MY_NAME": "web", "MY_NS": "shop", "MY_UID": pod_uid("shop", "web"), "MY_APP": "web", "MY_NONE": "",
        "MY_TEAM": "blue", "MY_NODE": "node-1", "MY_SA": "web-sa", "MY_IP": "10.244.1.2", "MY_HOST": "10.255.0.11",
    }
    assert env["MODE"] == "fast" and "MAYBE" not in env  # an optional key that is missing: unset
    assert env["LEVEL"] == "from-env"  # env over envFrom
    assert env["extra"] == "1" and "1bad" not in env  # a key that is no variable name is skipped, as the kubelet
    assert env["OPT_a"] == "b"
    assert app.process.restart_policy is RestartPolicy.ON_FAILURE


def test_pod_uids_are_made_up_stable_and_distinct():
    assert pod_uid("shop", "web") == pod_uid("shop", "web") != pod_uid("shop", "web2") != pod_uid("other", "web")


def test_an_optional_config_map_may_be_missing(tmp_path):
    (app,) = plans(POD + SETTINGS, tmp_path)
    assert app.problem is None and not any(k.startswith("OPT_") for k in app.process.environment)


@pytest.mark.parametrize("text, problem", [
    (POD, "CreateContainerConfigError: container 'app': configmap \"settings\" not found"),
    (POD + SETTINGS.replace("mode: fast, ", ""),
     "CreateContainerConfigError: container 'app': couldn't find key mode in ConfigMap shop/settings"),
    (POD + SETTINGS.replace("namespace: shop", "namespace: elsewhere"),  # another namespace's does not count
     "CreateContainerConfigError: container 'app': configmap \"settings\" not found"),
])
def test_a_missing_config_map_or_key_keeps_the_pod_waiting(text, problem, tmp_path):
    waiting = lab_pod(text)
    assert waiting.config_error == problem
    (app,) = plans(text, tmp_path)
    assert app.process is None and app.problem == problem
    assert pod_phase({}, {"app": problem}, None, waiting.config_error) == "CreateContainerConfigError"
    # Once the ConfigMap is there, the pod's runtime spec changes: the lab recreates (starts) it.
    ready = lab_pod(POD + SETTINGS)
    assert ready.config_error is None and ready.runtime_spec() != waiting.runtime_spec()


def test_a_config_map_edit_does_not_restart_a_running_pod():
    before = lab_pod(POD + SETTINGS)
    after = lab_pod(POD + SETTINGS.replace("mode: fast", "mode: slow"))
    assert after.config_maps["settings"].data["mode"] == "slow"
    assert before.runtime_spec() == after.runtime_spec()  # as the kubelet: env is read when a container starts


def test_config_problem_without_references():
    pod = r.Pod(r.Meta("p", "ns"), r.Origin("f", 1), r.PodSpec((r.Container("c", command=("x",)),)))
    assert config_problem(pod, {}) is None


@pytest.mark.parametrize("policy, expected", [
    ("", RestartPolicy.ALWAYS), ("  restartPolicy: Never\n", RestartPolicy.NEVER),
    ("  restartPolicy: OnFailure\n", RestartPolicy.ON_FAILURE), ("  restartPolicy: Always\n", RestartPolicy.ALWAYS),
])
def test_restart_policy_goes_to_every_container(policy, expected, tmp_path):
    text = ("apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop}\nspec:\n  nodeName: node-1\n"
            f"{policy}  containers: [{{name: a, command: [x]}}, {{name: b, command: [y]}}]\n")
    assert [p.process.restart_policy for p in plans(text, tmp_path)] == [expected, expected]
