"""Pods as the kubelet runs them (issue #21): restartPolicy, env from the downward API and ConfigMaps,
the ConfigMap kind, liveness probes, and a Deployment's pod names under scaling and rollout restart."""

from __future__ import annotations

import pytest

from mesh import resources as r
from mesh.parse import parse_text

POD = """\
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop}
spec:
  containers:
  - name: c
    command: [sleep, infinity]
"""


def pod_with(container_lines: str = "", spec_lines: str = "") -> str:
    """POD with ``spec_lines`` under spec and ``container_lines`` under its container (line 8 on)."""
    text = POD + "".join(f"    {line}\n" for line in container_lines.splitlines())
    return text + "".join(f"  {line}\n" for line in spec_lines.splitlines())


def parsed(text: str) -> r.Resource:
    result = parse_text(text, "x.yaml")
    assert [str(p) for p in result.problems] == []
    (resource,) = result.resources
    return resource


def problems(text: str) -> list[str]:
    result = parse_text(text, "x.yaml")
    return [str(p) for p in result.problems]


# ---------------------------------------------------------------- restartPolicy

@pytest.mark.parametrize("lines, policy", [
    ("", "Always"),
    ("restartPolicy: Always", "Always"),
    ("restartPolicy: OnFailure", "OnFailure"),
    ("restartPolicy: Never", "Never"),
])
def test_a_pods_restart_policy(lines, policy):
    pod = parsed(pod_with(spec_lines=lines))
    assert isinstance(pod, r.Pod) and pod.spec.restart_policy == policy


def test_an_unknown_restart_policy_is_an_error():
    assert problems(pod_with(spec_lines="restartPolicy: Sometimes")) == [
        "x.yaml:8: Pod shop/web: spec.restartPolicy: 'Sometimes' is not one of Always, OnFailure, Never"]


DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: shop}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata:
      labels: {{app: web}}
      annotations: {{{annotations}}}
    spec:
      containers: [{{name: c, command: [sleep, infinity]}}]
{extra}"""


def deployment(replicas: int = 2, annotations: str = "", extra: str = "") -> str:
    return DEPLOYMENT.format(replicas=replicas, annotations=annotations, extra=extra)


@pytest.mark.parametrize("policy", ["OnFailure", "Never"])
def test_a_deployments_pods_restart_always_only(policy):
    assert problems(deployment(extra=f"      restartPolicy: {policy}\n")) == [
        f"x.yaml:13: Deployment shop/web: spec.template.spec.restartPolicy: {policy!r} is not allowed in a "
        "Deployment's pod template: only Always (as the API server refuses others)"]
    assert parsed(deployment(extra="      restartPolicy: Always\n")).template.restart_policy == "Always"


# ---------------------------------------------------------------- Deployments: scaling, rollout restart

def pod_names(text: str) -> list[str]:
    return [p.meta.name for p in parsed(text).pods]


def test_replicas_scale_the_same_pods_and_a_restarted_at_annotation_replaces_them():
    two, three, none = pod_names(deployment(2)), pod_names(deployment(3)), pod_names(deployment(0))
    assert len(two) == 2 and three[:2] == two and none == []  # scaling keeps the pods there are
    restarted = pod_names(deployment(2, annotations="kubectl.kubernetes.io/restartedAt: '2026-12-07T03:00:00Z'"))
    again = pod_names(deployment(2, annotations="kubectl.kubernetes.io/restartedAt: '2026-12-07T04:00:00Z'"))
    # As `kubectl rollout restart`: each new restartedAt is a new template, so new pods.
    assert len({*two, *restarted, *again}) == 6
    restarted_pod = parsed(deployment(1, annotations="kubectl.kubernetes.io/restartedAt: x")).pods[0]
    assert restarted_pod.meta.annotations == {"kubectl.kubernetes.io/restartedAt": "x"}


# ---------------------------------------------------------------- env: downward API

@pytest.mark.parametrize("path", [
    "metadata.name", "metadata.namespace", "metadata.uid", "spec.nodeName", "spec.serviceAccountName",
    "status.podIP", "status.hostIP", "metadata.labels['app']", "metadata.annotations['a.b/c']",
])
def test_a_field_ref_the_lab_fills_in(path):
    pod = parsed(pod_with(f'env: [{{name: X, valueFrom: {{fieldRef: {{fieldPath: "{path}"}}}}}}]'))
    (container,) = pod.spec.containers
    assert container.env_refs == (r.EnvRef("X", field_path=path),) and dict(container.env) == {}


@pytest.mark.parametrize("path", ["metadata.generation", "status.phase", "metadata.labels", "metadata.labels['']",
                                  'metadata.labels["app"]', "spec.nodename"])
def test_an_unknown_field_path_is_an_error_naming_it(path):
    (problem,) = problems(pod_with(f"env: [{{name: X, valueFrom: {{fieldRef: {{fieldPath: '{path}'}}}}}}]"
                                   .replace("'" + path + "'", repr(path) if "'" in path else f"'{path}'")))
    assert problem.startswith(f"x.yaml:8: Pod shop/web: spec.containers[0].env[0].valueFrom.fieldRef.fieldPath: "
                              f"{path!r} is not a field the lab can give a container (it gives metadata.name, ")
    assert problem.endswith("status.hostIP, metadata.labels['<key>'], metadata.annotations['<key>'])")


# ---------------------------------------------------------------- env: ConfigMaps

def test_config_map_key_refs_and_env_from():
    pod = parsed(pod_with("""\
env:
- {name: A, value: one}
- {name: B, valueFrom: {configMapKeyRef: {name: settings, key: mode}}}
- {name: C, valueFrom: {configMapKeyRef: {name: maybe, key: k, optional: true}}}
- {name: A, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
- {name: B, value: literal}
envFrom:
- configMapRef: {name: settings}
- {prefix: X_, configMapRef: {name: other, optional: true}}"""))
    (container,) = pod.spec.containers
    # A later entry of a name replaces an earlier one, whichever its kind.
    assert dict(container.env) == {"B": "literal"}
    assert container.env_refs == (r.EnvRef("C", config_map="maybe", key="k", optional=True),
                                  r.EnvRef("A", field_path="metadata.name"))
    assert container.env_from == (r.EnvFrom("settings"), r.EnvFrom("other", "X_", optional=True))


@pytest.mark.parametrize("lines, message", [
    ("env: [{name: A, value: x, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]",
     "spec.containers[0].env[0].value: may not be set together with valueFrom"),
    ("env: [{name: A, valueFrom: {}}]",
     "spec.containers[0].env[0].valueFrom: needs exactly one of fieldRef, configMapKeyRef, secretKeyRef, "
     "resourceFieldRef"),
    ("env: [{name: A, valueFrom: {fieldRef: {fieldPath: metadata.name}, configMapKeyRef: {name: a, key: b}}}]",
     "spec.containers[0].env[0].valueFrom: needs exactly one of fieldRef, configMapKeyRef, secretKeyRef, "
     "resourceFieldRef (has fieldRef and configMapKeyRef)"),
    ("env: [{name: A, valueFrom: {configMapKeyRef: {name: a}}}]",
     "spec.containers[0].env[0].valueFrom.configMapKeyRef.key: is required"),
    ("env: [{name: A, valueFrom: {configMapKeyRef: {name: a, key: 'b c'}}}]",
     "spec.containers[0].env[0].valueFrom.configMapKeyRef.key: 'b c' is not a ConfigMap key (letters, digits, "
     "'-', '_' and '.')"),
    ("env: [{name: A, valueFrom: {configMapKeyRef: {name: Bad_Name, key: k}}}]",
     "spec.containers[0].env[0].valueFrom.configMapKeyRef.name: "),
    ("envFrom: [{configMapRef: {}}]", "spec.containers[0].envFrom[0].configMapRef.name: is required"),
    ("envFrom: [{prefix: X}]", "spec.containers[0].envFrom[0].configMapRef: is required"),
])
def test_bad_env_sources_are_errors(lines, message):
    (problem,) = problems(pod_with(lines))
    assert problem.startswith("x.yaml:") and f"Pod shop/web: {message}" in problem


@pytest.mark.parametrize("lines, warning", [
    ("env: [{name: A, valueFrom: {secretKeyRef: {name: s, key: k}}}]",
     "spec.containers[0].env[0].valueFrom.secretKeyRef: warning: secretKeyRef is not supported by the lab; the "
     "variable is left unset"),
    ("envFrom: [{secretRef: {name: s}}]",
     "spec.containers[0].envFrom[0].secretRef: warning: secretRef is not supported by the lab; its variables are "
     "left unset"),
])
def test_secrets_warn_and_leave_the_variables_unset(lines, warning):
    result = parse_text(pod_with(lines), "x.yaml")
    assert [str(p).split("Pod shop/web: ")[1] for p in result.problems] == [warning]
    (pod,) = result.resources
    assert pod.spec.containers[0].env_refs == () and pod.spec.containers[0].env_from == ()


def test_a_config_map_is_its_data():
    config_map = parsed("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, namespace: shop}\n"
                        "data: {mode: fast, app.properties: 'a=1'}\nimmutable: true\n")
    assert isinstance(config_map, r.ConfigMap) and config_map.key == ("ConfigMap", "shop", "settings")
    assert dict(config_map.data) == {"mode": "fast", "app.properties": "a=1"}
    assert dict(parsed("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: empty}\n").data) == {}


@pytest.mark.parametrize("rest, message", [
    ("data: {'a b': x}", "x.yaml:4: ConfigMap default/c: data: 'a b' is not a ConfigMap key (letters, digits, "
                         "'-', '_' and '.', at most 253)"),
    ("spec: {a: b}", "x.yaml:4: ConfigMap default/c: spec: a ConfigMap has no spec: its keys go under data"),
    ("binaryData: {a: AA==}", "x.yaml:4: ConfigMap default/c: binaryData: warning: binaryData is not read by the "
                              "lab (pods read data only)"),
])
def test_config_map_problems(rest, message):
    assert problems(f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\n{rest}\n") == [message]


# ---------------------------------------------------------------- liveness probes

def test_a_liveness_probe_is_read_as_a_readiness_probe_is():
    pod = parsed(pod_with("livenessProbe: {exec: {command: [test, -f, /tmp/up]}, initialDelaySeconds: 2, "
                          "failureThreshold: 1, periodSeconds: 1}"))
    (container,) = pod.spec.containers
    assert container.liveness_probe == r.Probe("exec", command=("test", "-f", "/tmp/up"), initial_delay_seconds=2,
                                               period_seconds=1, failure_threshold=1)
    assert container.readiness_probe is None


@pytest.mark.parametrize("probe, message", [
    ("{tcpSocket: {port: 80}, successThreshold: 2}",
     "spec.containers[0].livenessProbe.successThreshold: must be 1 for a liveness probe"),
    ("{grpc: {port: 80}}", "spec.containers[0].livenessProbe.grpc: grpc probes are not supported"),
    ("{}", "spec.containers[0].livenessProbe: needs one of tcpSocket, httpGet, exec"),
])
def test_bad_liveness_probes(probe, message):
    assert problems(pod_with(f"livenessProbe: {probe}")) == [f"x.yaml:8: Pod shop/web: {message}"]
