"""Parsing manifests: good files give frozen resources; each broken one gives its exact message."""

import re
import subprocess
import sys

import pytest

from controlplane.validate import cross_check
from mesh import resources as r
from mesh.parse import parse_text
from mesh.resources import Probe
from mesh.source import Code

GOOD = """\
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      serviceAccountName: web
      containers:
      - name: web
        command: [python3, -m, http.server, "8080"]
        env: [{name: GREETING, value: hello}]
        ports: [{containerPort: 8080, name: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop, labels: {istio.io/waypoint-for: service}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}, method: GET}]
    backendRefs: [{name: web, port: 80, weight: 90}]
    timeouts: {request: 1m30s}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/web], ipBlocks: [10.244.0.0/16]}}]
    to: [{operation: {ports: ["8080"]}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: shop}
spec: {mtls: {mode: STRICT}}
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: headers, namespace: shop}
spec:
  url: file:///plugins/headers.wasm
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  phase: AUTHZ
  pluginConfig: {header: x-mesh}
"""


def test_good_manifests_parse_cleanly():
    result = parse_text(GOOD, "good.yaml")
    assert [str(p) for p in result.problems] == []
    kinds = [res.kind for res in result.resources]
    assert kinds == ["Namespace", "Deployment", "Service", "Gateway", "HTTPRoute", "AuthorizationPolicy",
                     "PeerAuthentication", "WasmPlugin"]
    assert cross_check(result.resources) == []
    deployment = result.resources[1]
    assert [p.meta.name for p in deployment.pods][0].startswith("web-")
    assert deployment.pods[0].spec.containers[0].env["GREETING"] == "hello"
    route = result.resources[4]
    assert route.rules[0].timeout_seconds == 90.0 and route.rules[0].backends[0].weight == 90
    assert result.resources[7].plugin_config == b'{"header":"x-mesh"}'


def test_deployment_pod_names_are_stable_and_follow_the_template():
    first = parse_text(GOOD, "a.yaml").resources[1].pods
    again = parse_text(GOOD, "b.yaml").resources[1].pods
    assert [p.meta.name for p in first] == [p.meta.name for p in again]
    changed = parse_text(GOOD.replace('"8080"]', '"9090"]'), "c.yaml").resources[1].pods
    assert {p.meta.name for p in changed}.isdisjoint(p.meta.name for p in first)
    assert all(p.meta.labels["app"] == "web" and p.owner == "Deployment/web" for p in first)


def test_resources_are_frozen():
    resource = parse_text(GOOD, "good.yaml").resources[0]
    with pytest.raises(AttributeError):
        resource.meta = None
    with pytest.raises(TypeError):
        resource.meta.labels["x"] = "y"


POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-all
  namespace: default
spec:
  action: DENY
  rules:
  - to:
    - operation:
        ports:
        - http
"""

AP = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  rules:\n"

BROKEN = [
    (POLICY, "policy.yaml:12: AuthorizationPolicy default/deny-all: spec.rules[0].to[0].operation.ports[0]: "
             "'http' is not a port number"),
    ("kind: Pod\nmetadata: {name: a}\n", "x.yaml:1: apiVersion: is required"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c}]\n",
     "x.yaml:5: not valid YAML: expected ',' or '}', but got '<stream end>'"),
    ("apiVersion: v2\nkind: Pod\nmetadata: {name: a}\n",
     "x.yaml:1: apiVersion: v2 is not an apiVersion of Pod (expected v1)"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: Bad_Name}\nspec: {containers: []}\n",
     "x.yaml:3: metadata.name: name 'Bad_Name' is not a valid Kubernetes name"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n", "x.yaml:1: Pod default/a: spec: is required"),
    ("apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n  labels: {enabled: true}\nspec: {containers: []}\n",
     'x.yaml:5: Pod default/a: metadata.labels.enabled: expected a string, got a boolean (true); quote it: "true"'),
    ("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n"
     "  ports:\n  - {port: 80}\n  - {port: 70000, name: b}\n",
     "x.yaml:6: Service default/s: spec.ports[0].name: is required when a Service has more than one port"),
    ("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  ports:\n  - {port: 70000}\n",
     "x.yaml:6: Service default/s: spec.ports[0].port: 70000 is not a port number (1-65535)"),
    ("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  clusterIP: 10.96.0.300\n  ports: [{port: 80}]\n",
     "x.yaml:5: Service default/s: spec.clusterIP: '10.96.0.300' is not an IP address"),
    ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  selector: {matchLabels: {app: a}}\n"
     "  template:\n    metadata:\n      labels: {app: b}\n    spec: {containers: [{name: c}]}\n",
     "x.yaml:8: Deployment default/d: spec.template.metadata.labels: does not match spec.selector.matchLabels"),
    ("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: w}\nspec:\n"
     "  gatewayClassName: istio-waypoint\n  listeners: [{name: mesh, port: 15008, protocol: HTTP}]\n",
     "x.yaml:6: Gateway default/w: spec.listeners: a waypoint needs the listener "
     "{name: mesh, port: 15008, protocol: HBONE}"),
    ("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n"
     "  parentRefs: [{kind: Service, name: s}]\n  rules:\n  - timeouts: {request: 10 seconds}\n",
     "x.yaml:7: HTTPRoute default/r: spec.rules[0].timeouts.request: '10 seconds' is not a duration "
     "like 10s, 500ms or 1m30s"),
    ("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  rules:\n"
     "  - from: [{source: {ipBlocks: [10.0.0.0/33]}}]\n",
     "x.yaml:6: AuthorizationPolicy default/p: spec.rules[0].from[0].source.ipBlocks[0]: '10.0.0.0/33' is not an IP "
     "address or CIDR block"),
    ("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\n"
     "spec:\n  mtls: {mode: STRICTER}\n",
     "x.yaml:5: PeerAuthentication default/p: spec.mtls.mode: 'STRICTER' is not one of "
     "UNSET, DISABLE, PERMISSIVE, STRICT"),
    ("apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: w}\nspec:\n"
     "  url: oci://ghcr.io/x/y:1\n  targetRefs: [{kind: Gateway, name: w}]\n",
     "x.yaml:5: WasmPlugin default/w: spec.url: 'oci://ghcr.io/x/y:1' is an OCI image reference: OCI images are not "
     "supported here, only file:// and http(s):// modules (the plugin is not applied)"),
    ("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  name: b\n",
     "x.yaml:5: metadata.name: duplicate key"),
    (AP + "  - when: [{key: source.ip, values: [x]}]\n",
     "x.yaml:6: AuthorizationPolicy default/p: spec.rules[0].when[0].values[0]: 'x' is not an IP address "
     "or CIDR block"),
    (AP + "  - when:\n    - key: destination.ip\n      notValues:\n      - 10.0.0.1\n      - 10.0.0.0/33\n",
     "x.yaml:10: AuthorizationPolicy default/p: spec.rules[0].when[0].notValues[1]: '10.0.0.0/33' is not an IP "
     "address or CIDR block"),
    (AP + "  - when: [{key: remote.ip, values: ['']}]\n",
     "x.yaml:6: AuthorizationPolicy default/p: spec.rules[0].when[0].values[0]: '' is not an IP address or CIDR block"),
    (AP + "  - when: [{key: destination.port, values: [http]}]\n",
     "x.yaml:6: AuthorizationPolicy default/p: spec.rules[0].when[0].values[0]: 'http' is not a port number"),
    (AP + "  - when: [{key: destination.port, notValues: ['80', '70000']}]\n",
     "x.yaml:6: AuthorizationPolicy default/p: spec.rules[0].when[0].notValues[1]: 70000 is not a port "
     "number (1-65535)"),
    (AP + "  - when: [{key: destination.port, values: ['0']}]\n",
     "x.yaml:6: AuthorizationPolicy default/p: spec.rules[0].when[0].values[0]: 0 is not a port number (1-65535)"),
    (AP + "  - when: [{key: destination.port, values: [8080]}]\n",
     "x.yaml:6: AuthorizationPolicy default/p: spec.rules[0].when[0].values[0]: expected a string, got int 8080"),
    (AP + "  - when: [{key: source.ip, values: [10]}]\n",
     "x.yaml:6: AuthorizationPolicy default/p: spec.rules[0].when[0].values[0]: expected a string, got int 10"),
    (AP + "  - when: [{key: destination.ip, notValues: 10.0.0.1}]\n",
     "x.yaml:6: AuthorizationPolicy default/p: spec.rules[0].when[0].notValues: expected a list, got str '10.0.0.1'"),
    (AP + "  - when:\n    - key: source.namespace\n",
     "x.yaml:7: AuthorizationPolicy default/p: spec.rules[0].when[0]: condition source.namespace needs values or "
     "notValues"),
    (AP + "  - from: [{source: {}}]\n",
     "x.yaml:6: AuthorizationPolicy default/p: spec.rules[0].from[0].source: must not be empty"),
    (AP + "  - to: [{operation: {ports: []}}]\n",
     "x.yaml:6: AuthorizationPolicy default/p: spec.rules[0].to[0].operation: must not be empty"),
]


def _case_id(message: str) -> str:
    """The field and the message, without the file, line and resource."""
    return re.sub(r"^\S+:\d+: (\w+ [\w/.-]+: )?", "", message)[:70]


@pytest.mark.parametrize("text, message", BROKEN, ids=[_case_id(m) for _, m in BROKEN])
def test_broken_file_gives_its_exact_message(text, message):
    file = message.split(":", 1)[0]
    result = parse_text(text, file)
    assert message in [str(p) for p in result.errors]


@pytest.mark.parametrize("text, message", [row for row in BROKEN if row[0].startswith(AP)],
                         ids=[_case_id(m) for t, m in BROKEN if t.startswith(AP)])
def test_a_policy_rule_error_is_reported_once(text, message):
    assert [str(p) for p in parse_text(text, "x.yaml").problems] == [message]


def test_good_conditions_parse_cleanly():
    text = AP + """\
  - when:
    - {key: source.ip, values: [10.0.0.0/8, 10.1.2.3], notValues: ["fd00::/8"]}
    - {key: destination.ip, notValues: [10.96.0.10]}
    - {key: destination.port, values: ["80", "65535"]}
    - {key: remote.ip, values: [1.2.3.4/32]}
    - {key: source.namespace, values: ["*"]}
    - {key: "request.headers[x-id]", values: ["not checked: any text"]}
"""
    result = parse_text(text, "x.yaml")
    assert [str(p) for p in result.problems] == []
    (policy,) = result.resources
    assert [c.key for c in policy.rules[0].conditions][:3] == ["source.ip", "destination.ip", "destination.port"]
    assert policy.rules[0].conditions[0].not_values == ("fd00::/8",)


def test_a_resource_with_an_error_is_not_handed_out():
    assert parse_text(POLICY, "policy.yaml").resources == []


@pytest.mark.parametrize(
    "text, message",
    [
        ("apiVersion: v1\nkind: Secret\nmetadata: {name: c}\n",
         "x.yaml:2: kind: warning: kind Secret (v1) is not used by the mesh; skipped"),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec:\n  containers: [{name: c, colour: blue}]\n",
         "x.yaml:5: Pod default/a: spec.containers[0].colour: warning: unknown field, ignored"),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec:\n  restartPolicy: Always\n  containers: [{name: c}]\n",
         None),
    ],
)
def test_unknown_kinds_and_fields_warn(text, message):
    result = parse_text(text, "x.yaml")
    assert result.errors == []
    assert [str(p) for p in result.problems] == ([message] if message else [])


CROSS = """\
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/use-waypoint: missing}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {selector: {app: nothing}, ports: [{port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: shop}
spec: {parentRefs: [{kind: Service, group: "", name: gone}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: get-only, namespace: shop}
spec:
  action: ALLOW
  rules: [{to: [{operation: {methods: [GET], paths: [/api]}}]}]
"""


def test_cross_references():
    found = [str(p) for p in cross_check(parse_text(CROSS, "x.yaml").resources)]
    assert found == [
        "x.yaml:1: Namespace shop: metadata.labels[istio.io/use-waypoint]: no waypoint Gateway shop/missing "
        "(class istio-waypoint)",
        "x.yaml:5: Service shop/web: spec.selector: warning: matches no pod",
        "x.yaml:10: HTTPRoute shop/r: spec.parentRefs[0]: NoMatchingParent: no Service shop/gone",
        "x.yaml:15: AuthorizationPolicy shop/get-only: spec.rules[0].to[0].operation: warning: L7 fields methods, "
        "paths are enforced by a waypoint only; ztunnel drops this whole ALLOW rule at L4, so it allows nothing "
        "(no waypoint Gateway (class istio-waypoint) in shop: create one and target it with targetRefs)",
    ]


WAYPOINT_ONLY = "(no waypoint Gateway (class istio-waypoint) in default: create one and target it with targetRefs)"
ALLOW_DENIES = f"ztunnel drops this whole ALLOW rule at L4, so it allows nothing {WAYPOINT_ONLY}"
DENY_L4 = f"ztunnel enforces this DENY rule at L4 with its L4 fields only {WAYPOINT_ONLY}"
DENY_NONE = f"this DENY rule has no L4 fields left to match, so it has no effect at L4 {WAYPOINT_ONLY}"


@pytest.mark.parametrize("spec, warnings", [
    pytest.param("rules: [{from: [{source: {requestPrincipals: [iss/sub]}}]}]",
                 [f"spec.rules[0].from[0].source: warning: L7 fields requestPrincipals are enforced by a waypoint "
                  f"only; {ALLOW_DENIES}"], id="allow-request-principals"),
    pytest.param("rules: [{}, {from: [{source: {remoteIpBlocks: [1.2.3.4], notRemoteIpBlocks: [1.2.3.5], "
                 "principals: [a]}}]}]",
                 [f"spec.rules[1].from[0].source: warning: L7 fields remoteIpBlocks, notRemoteIpBlocks are enforced "
                  f"by a waypoint only; {ALLOW_DENIES}"], id="allow-remote-ip-blocks"),
    pytest.param("rules: [{when: [{key: 'request.headers[x-id]', values: ['1']}]}]",
                 [f"spec.rules[0].when[0]: warning: L7 condition request.headers[x-id] is enforced by a waypoint "
                  f"only; {ALLOW_DENIES}"], id="allow-request-condition"),
    pytest.param("rules: [{to: [{operation: {methods: [GET]}}, {operation: {ports: ['80']}}]}]",
                 ["spec.rules[0].to[0].operation: warning: L7 fields methods are enforced by a waypoint only; "
                  + ALLOW_DENIES], id="allow-alternative-beside-l4-ones"),
    pytest.param("action: DENY\n  rules: [{to: [{operation: {notMethods: [GET], hosts: [a]}}]}]",
                 ["spec.rules[0].to[0].operation: warning: L7 fields hosts, notMethods are enforced by a "
                  "waypoint only; " + DENY_NONE], id="deny-operation"),
    pytest.param("action: DENY\n  rules: [{to: [{operation: {methods: [GET], ports: ['80']}}]}]",
                 ["spec.rules[0].to[0].operation: warning: L7 fields methods are enforced by a "
                  "waypoint only; " + DENY_L4], id="deny-operation-with-port"),
    pytest.param("action: DENY\n  rules: [{when: [{key: 'request.auth.claims[iss]', values: [me]}]}]",
                 ["spec.rules[0].when[0]: warning: L7 condition request.auth.claims[iss] is enforced by a waypoint "
                  "only; " + DENY_NONE], id="deny-condition"),
    pytest.param("rules: [{from: [{source: {principals: [a]}}], to: [{operation: {ports: ['80']}}], "
                 "when: [{key: destination.port, values: ['80']}]}]", [], id="l4-only"),
    pytest.param("targetRefs: [{kind: Service, group: '', name: web}]\n"
                 "  rules: [{to: [{operation: {methods: [GET]}}]}]", [], id="waypoint-policy"),
])
def test_l7_fields_in_policies_enforced_at_l4(spec, warnings):
    text = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}\n---\n" \
           f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p}}\nspec:\n  {spec}\n"
    result = parse_text(text, "x.yaml")
    assert [str(p) for p in result.problems] == []
    prefix = "x.yaml:6: AuthorizationPolicy default/p: "
    assert [str(p) for p in cross_check(result.resources)] == [prefix + w for w in warnings]


def test_validate_command_exit_status(tmp_path):
    (tmp_path / "good.yaml").write_text(GOOD)
    ok = subprocess.run([sys.executable, "-m", "ambient", "validate", str(tmp_path)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "8 resources, 0 errors, 0 warnings" in ok.stderr
    (tmp_path / "policy.yaml").write_text(POLICY)
    bad = subprocess.run([sys.executable, "-m", "ambient", "validate", str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode == 1
    assert f"{tmp_path}/policy.yaml:12: AuthorizationPolicy default/deny-all: " in bad.stdout


# Readiness probes: a Pod whose container has ``readinessProbe`` (line 9) with the body given (from line 10).

PROBE_POD = """\
apiVersion: v1
kind: Pod
metadata: {name: a}
spec:
  containers:
  - name: c
    ports: [{containerPort: 8080, name: http}, {containerPort: 9090}]
    livenessProbe: {tcpSocket: {port: 8080}}
    readinessProbe:
"""


def probe_pod(body: str) -> str:
    return PROBE_POD + "".join(f"      {line}\n" for line in body.splitlines())


DEFAULTS = dict(initial_delay_seconds=0, period_seconds=10, timeout_seconds=1, success_threshold=1,
                failure_threshold=3)
EXPLICIT = "initialDelaySeconds: 5\nperiodSeconds: 2\ntimeoutSeconds: 3\nsuccessThreshold: 2\nfailureThreshold: 4"
EXPLICIT_VALUES = dict(initial_delay_seconds=5, period_seconds=2, timeout_seconds=3, success_threshold=2,
                       failure_threshold=4)


@pytest.mark.parametrize("body, probe", [
    pytest.param("tcpSocket: {port: 8080}", Probe("tcpSocket", port=8080), id="tcp-defaults"),
    pytest.param("tcpSocket: {port: http}\n" + EXPLICIT, Probe("tcpSocket", port="http", **EXPLICIT_VALUES),
                 id="tcp-named-explicit"),
    pytest.param("tcpSocket: {port: '9090'}", Probe("tcpSocket", port=9090), id="tcp-numeric-string"),
    pytest.param("httpGet: {port: http}", Probe("httpGet", port="http", path="/"), id="http-defaults"),
    pytest.param("httpGet:\n  port: 9090\n  path: /healthz?full=1\n  scheme: HTTP\n"
                 "  httpHeaders: [{name: X-Probe, value: lab}]\n" + EXPLICIT,
                 Probe("httpGet", port=9090, path="/healthz?full=1", **EXPLICIT_VALUES), id="http-explicit"),
    pytest.param("exec: {command: [cat, /ready]}", Probe("exec", command=("cat", "/ready")), id="exec-defaults"),
    pytest.param("exec:\n  command: [sh, -c, test -f /ready]\ninitialDelaySeconds: 0\nperiodSeconds: 1\n"
                 "timeoutSeconds: 1\nsuccessThreshold: 1\nfailureThreshold: 1",
                 Probe("exec", command=("sh", "-c", "test -f /ready"), initial_delay_seconds=0, period_seconds=1,
                       timeout_seconds=1, success_threshold=1, failure_threshold=1), id="exec-minimums"),
])
def test_readiness_probe_parses(body, probe):
    result = parse_text(probe_pod(body), "x.yaml")
    assert [str(p) for p in result.problems] == []
    (pod,) = result.resources
    assert pod.spec.containers[0].readiness_probe == probe


def test_probe_defaults_are_kubernetes_defaults_and_no_probe_is_none():
    assert {k: getattr(Probe("exec"), k) for k in DEFAULTS} == DEFAULTS
    assert (Probe("exec").port, Probe("exec").path, Probe("exec").command) == (0, "/", ())
    no_probe = PROBE_POD.replace("    readinessProbe:\n", "")
    (pod,) = parse_text(no_probe, "x.yaml").resources
    assert pod.spec.containers[0].readiness_probe is None


def test_a_deployment_gives_its_pods_the_probe():
    text = GOOD.replace("        ports: [{containerPort: 8080, name: http}]\n",
                        "        ports: [{containerPort: 8080, name: http}]\n"
                        "        readinessProbe: {httpGet: {port: http, path: /ready}}\n")
    result = parse_text(text, "good.yaml")
    assert [str(p) for p in result.problems] == []
    pods = result.resources[1].pods
    assert [p.spec.containers[0].readiness_probe for p in pods] == [Probe("httpGet", port="http", path="/ready")] * 2


PROBE = "Pod default/a: spec.containers[0].readinessProbe"
NAME_RULE = "(at most 15 lowercase letters, digits and '-', with at least one letter)"

PROBE_ERRORS = [
    ("initialDelaySeconds: 1", f"x.yaml:10: {PROBE}: needs one of tcpSocket, httpGet, exec"),
    ("tcpSocket: {port: 80}\nexec: {command: [x]}",
     f"x.yaml:10: {PROBE}: has tcpSocket and exec: a probe has exactly one of tcpSocket, httpGet, exec"),
    ("grpc: {port: 9090}", f"x.yaml:10: {PROBE}.grpc: grpc probes are not supported"),
    ("tcpSocket: 8080", f"x.yaml:10: {PROBE}.tcpSocket: expected a mapping, got int 8080"),
    ("tcpSocket: {}", f"x.yaml:10: {PROBE}.tcpSocket.port: is required"),
    ("tcpSocket: {port: 8080, host: 10.0.0.1}",
     f"x.yaml:10: {PROBE}.tcpSocket.host: is not supported: the lab probes the pod's IP"),
    ("tcpSocket: {port: metrics}",
     f"x.yaml:10: {PROBE}.tcpSocket.port: no container port named 'metrics' (named ports: http)"),
    ("tcpSocket: {port: Http_Port}", f"x.yaml:10: {PROBE}.tcpSocket.port: 'Http_Port' is not a port number or a "
                                     f"port name {NAME_RULE}"),
    ("tcpSocket: {port: web--port}", f"x.yaml:10: {PROBE}.tcpSocket.port: 'web--port' is not a port number or a "
                                     f"port name {NAME_RULE}"),
    ("tcpSocket: {port: a234567890123456}", f"x.yaml:10: {PROBE}.tcpSocket.port: 'a234567890123456' is not a port "
                                            f"number or a port name {NAME_RULE}"),
    ("httpGet:\n  path: /ready", f"x.yaml:11: {PROBE}.httpGet.port: is required"),
    ("httpGet:\n  port: 0", f"x.yaml:11: {PROBE}.httpGet.port: 0 is not a port number (1-65535)"),
    ("httpGet:\n  port: 70000", f"x.yaml:11: {PROBE}.httpGet.port: 70000 is not a port number (1-65535)"),
    ("httpGet:\n  port: 80.5", f"x.yaml:11: {PROBE}.httpGet.port: expected a port number, got 80.5"),
    ("httpGet:\n  port: 8080\n  path: healthz", f"x.yaml:12: {PROBE}.httpGet.path: 'healthz' must start with '/'"),
    ("httpGet:\n  port: 8080\n  path: ''", f"x.yaml:12: {PROBE}.httpGet.path: '' must start with '/'"),
    ("httpGet:\n  port: 8080\n  path: /a b", f"x.yaml:12: {PROBE}.httpGet.path: '/a b' must be printable ASCII "
                                             "without spaces (percent-encode the rest)"),
    ("httpGet:\n  port: 8080\n  scheme: HTTPS", f"x.yaml:12: {PROBE}.httpGet.scheme: only HTTP probes are supported"),
    ("httpGet:\n  port: 8080\n  scheme: http", f"x.yaml:12: {PROBE}.httpGet.scheme: 'http' is not one of HTTP, HTTPS"),
    ("httpGet:\n  port: 8080\n  host: example.com",
     f"x.yaml:12: {PROBE}.httpGet.host: is not supported: the lab probes the pod's IP"),
    ("exec: {}", f"x.yaml:10: {PROBE}.exec.command: is required"),
    ("exec: {command: []}", f"x.yaml:10: {PROBE}.exec.command: must not be empty"),
    ("exec: {command: cat /ready}", f"x.yaml:10: {PROBE}.exec.command: expected a list, got str 'cat /ready'"),
    ("exec:\n  command:\n  - cat\n  - 1", f"x.yaml:13: {PROBE}.exec.command[1]: expected a string, got int 1"),
    ("exec: {command: [x]}\ninitialDelaySeconds: -1", f"x.yaml:11: {PROBE}.initialDelaySeconds: -1 must be at least 0"),
    ("exec: {command: [x]}\nperiodSeconds: 0", f"x.yaml:11: {PROBE}.periodSeconds: 0 must be at least 1"),
    ("exec: {command: [x]}\ntimeoutSeconds: 0", f"x.yaml:11: {PROBE}.timeoutSeconds: 0 must be at least 1"),
    ("exec: {command: [x]}\nsuccessThreshold: 0", f"x.yaml:11: {PROBE}.successThreshold: 0 must be at least 1"),
    ("exec: {command: [x]}\nfailureThreshold: 0", f"x.yaml:11: {PROBE}.failureThreshold: 0 must be at least 1"),
    ("exec: {command: [x]}\nperiodSeconds: 1.5",
     f"x.yaml:11: {PROBE}.periodSeconds: expected an integer, got float 1.5"),
    ("exec: {command: [x]}\ntimeoutSeconds: '1'",
     f"x.yaml:11: {PROBE}.timeoutSeconds: expected an integer, got str '1'"),
    ("always", f"x.yaml:10: {PROBE}: expected a mapping, got str 'always'"),
]


@pytest.mark.parametrize("body, message", PROBE_ERRORS, ids=[_case_id(m) for _, m in PROBE_ERRORS])
def test_a_bad_readiness_probe_gives_its_one_exact_error(body, message):
    result = parse_text(probe_pod(body), "x.yaml")
    assert [str(p) for p in result.problems] == [message]
    assert result.resources == []


def test_a_named_port_needs_named_container_ports():
    text = probe_pod("tcpSocket: {port: http}").replace(
        "    ports: [{containerPort: 8080, name: http}, {containerPort: 9090}]\n", "")
    assert [str(p) for p in parse_text(text, "x.yaml").problems] == [
        f"x.yaml:9: {PROBE}.tcpSocket.port: no container port named 'http' (the container names no ports)"]


@pytest.mark.parametrize("body, warning", [
    ("tcpSocket: {port: 8080}\ncolour: blue", f"x.yaml:11: {PROBE}.colour: warning: unknown field, ignored"),
    ("httpGet: {port: 8080, verb: GET}", f"x.yaml:10: {PROBE}.httpGet.verb: warning: unknown field, ignored"),
    ("exec: {command: [x], shell: sh}", f"x.yaml:10: {PROBE}.exec.shell: warning: unknown field, ignored"),
])
def test_unknown_probe_fields_warn_and_the_probe_is_kept(body, warning):
    result = parse_text(probe_pod(body), "x.yaml")
    assert [str(p) for p in result.problems] == [warning]
    assert result.resources[0].spec.containers[0].readiness_probe is not None


def test_l7_warning_names_the_waypoint_to_target():
    text = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: wp}\n" \
           "spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}\n---\n" \
           "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\n" \
           "spec: {rules: [{to: [{operation: {methods: [GET]}}]}]}\n"
    result = parse_text(text, "x.yaml")
    assert [str(p) for p in result.problems] == []
    (warning,) = [str(p) for p in cross_check(result.resources) if p.code != Code.WAYPOINT_UNUSED]
    assert warning.endswith("(attach the policy to the waypoint: targetRefs: [{kind: Gateway, group: "
                            "gateway.networking.k8s.io, name: wp}])")


@pytest.mark.parametrize("action, severity, effect", [
    pytest.param("ALLOW", "", "unknown field: the mesh does not understand it, so this ALLOW rule never matches",
                 id="allow-error"),
    pytest.param("DENY", "warning: ", "unknown field, ignored: this rule is enforced with its known fields only, so "
                 "it denies at least as much as written", id="deny-warning"),
])
def test_unknown_fields_in_a_rule(action, severity, effect):
    """A field the mesh does not understand may only make a rule match less: an error in an ALLOW."""
    text = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n" \
           f"  action: {action}\n  rules: [{{from: [{{source: {{namespaces: [default], serviceAcounts: [a/b]}}}}], " \
           "to: [{operation: {ports: ['80']}, extra: 1}]}]\n"
    result = parse_text(text, "x.yaml")
    assert [str(p) for p in result.problems] == []
    prefix = "x.yaml:1: AuthorizationPolicy default/p: spec.rules[0]."
    assert [str(p) for p in cross_check(result.resources)] == [
        f"{prefix}from[0].source.serviceAcounts: {severity}{effect}", f"{prefix}to[0].extra: {severity}{effect}"]


@pytest.mark.parametrize("value, dry_run", [("true", True), ("True", True), ("false", False), ("yes", False)])
def test_dry_run_annotation(value, dry_run):
    text = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n" \
           f"metadata: {{name: p, annotations: {{istio.io/dry-run: '{value}'}}}}\nspec: {{}}\n"
    (policy,) = parse_text(text, "x.yaml").resources
    assert policy.dry_run is dry_run


@pytest.mark.parametrize("value", ["a/b/c", "/sa", "ns/", "ns/*"])
def test_bad_service_accounts(value):
    text = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\n" \
           f"spec: {{rules: [{{from: [{{source: {{serviceAccounts: ['{value}']}}}}]}}]}}\n"
    result = parse_text(text, "x.yaml")
    assert [p.message for p in result.errors] == [
        f"{value!r} is not a service account (namespace/name, or name; no wildcards)"]


# Istio's other kinds: skipped with one warning saying what ambient mode uses instead, never an error.
@pytest.mark.parametrize("api_version, kind, instead", [
    ("networking.istio.io/v1", "Gateway", "a Gateway API Gateway of class istio-waypoint"),
    ("networking.istio.io/v1beta1", "VirtualService", "HTTPRoute"),
    ("networking.istio.io/v1alpha3", "DestinationRule", "HBONE mTLS"),
    ("networking.istio.io/v1", "ServiceEntry", "Kubernetes Services"),
    ("networking.istio.io/v1", "Sidecar", "no sidecars"),
    ("networking.istio.io/v1alpha3", "EnvoyFilter", "WasmPlugin"),
    ("telemetry.istio.io/v1", "Telemetry", "TCP metrics"),
])
def test_istio_kinds_ambient_does_without_are_skipped_with_a_warning(api_version, kind, instead):
    text = f"apiVersion: {api_version}\nkind: {kind}\nmetadata: {{name: x, namespace: shop}}\n" \
           "spec:\n  anything: [1, {goes: here}]\n"
    result = parse_text(text, "x.yaml")
    assert result.resources == []
    (problem,) = result.problems
    assert problem.severity.value == "warning"
    assert str(problem).startswith(f"x.yaml:2: kind: warning: {kind} ({api_version}) is not used in ambient mode: ")
    assert instead in problem.message and problem.message.endswith("; skipped")


INGRESS = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: bookinfo-gateway, namespace: shop}
spec:
  gatewayClassName: istio
  listeners:
  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: Same}}}
---
apiVersion: v1
kind: Service
metadata: {name: productpage, namespace: shop}
spec: {ports: [{port: 9080}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bookinfo, namespace: shop}
spec:
  parentRefs: [{name: bookinfo-gateway}]
  rules:
  - matches: [{path: {type: Exact, value: /productpage}}]
    backendRefs: [{name: productpage, port: 9080}]
"""


def test_an_ingress_gateway_is_warned_once_and_its_routes_are_not_errors():
    result = parse_text(INGRESS, "x.yaml")
    problems = result.problems + cross_check(result.resources)
    assert [str(p) for p in problems] == [
        "x.yaml:5: Gateway shop/bookinfo-gateway: spec.gatewayClassName: warning: class 'istio' (an ingress gateway) "
        "is not run by the mesh, nor are the routes attached to it: only 'istio-waypoint' gateways are"]


@pytest.mark.parametrize("action, message", [
    ("CUSTOM", "CUSTOM (external authorization) is not enforced by ztunnel, nor by the mesh's waypoint: "
               "the policy is skipped"),
    ("AUDIT", "AUDIT has no effect at L4: ztunnel ignores AUDIT policies, and the mesh writes no audit log: "
              "the policy is skipped"),
])
def test_policy_actions_ztunnel_does_not_enforce_are_a_warning_not_an_error(action, message):
    """As Istio's ambient translation: only ALLOW and DENY reach ztunnel. The rules of a skipped
    policy (here L7 fields, which would otherwise be reported as enforced at L4) are not checked."""
    text = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n" \
           "metadata: {name: ext-authz, namespace: shop}\n" \
           f"spec:\n  selector: {{matchLabels: {{app: web}}}}\n  action: {action}\n  provider: {{name: opa}}\n" \
           "  rules: [{to: [{operation: {paths: [/admin/*]}}]}]\n---\n" \
           "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop, labels: {app: web}}\n" \
           "spec: {containers: [{name: web}]}\n"
    result = parse_text(text, "x.yaml")
    problems = result.problems + cross_check(result.resources)
    assert [str(p) for p in problems] == [
        f"x.yaml:6: AuthorizationPolicy shop/ext-authz: spec.action: warning: {message}"]
    assert [type(res).__name__ for res in result.resources] == ["AuthorizationPolicy", "Pod"]


ENROLMENT = """\
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {istio.io/dataplane-mode: %s}
---
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: shop
  labels: {app: web, istio.io/dataplane-mode: %s}
spec:
  containers: [{name: web, ports: [{name: http, containerPort: 8080}]}]
"""


@pytest.mark.parametrize("ns_mode, pod_mode, warnings", [
    ("ambient", "none", []),
    ("ambient", "Ambient", ["x.yaml:7: Pod shop/web: metadata.labels[istio.io/dataplane-mode]: warning: 'Ambient' is "
                            "neither 'ambient' nor 'none', so it is ignored: neither enrolled nor opted out by it: the "
                            "pod follows the namespace's mode (values are case-sensitive: write 'ambient')"]),
    ("ambient", "sidecar", ["x.yaml:7: Pod shop/web: metadata.labels[istio.io/dataplane-mode]: warning: 'sidecar' is "
                            "neither 'ambient' nor 'none', so it is ignored: neither enrolled nor opted out by it: the "
                            "pod follows the namespace's mode"]),
    ("AMBIENT", "none", ["x.yaml:1: Namespace shop: metadata.labels[istio.io/dataplane-mode]: warning: 'AMBIENT' is "
                         "neither 'ambient' nor 'none', so it is ignored: its pods are not enrolled by it (values are "
                         "case-sensitive: write 'ambient')"]),
])
def test_dataplane_mode_values_istio_cni_ignores_are_warnings(ns_mode, pod_mode, warnings):
    result = parse_text(ENROLMENT % (ns_mode, pod_mode), "x.yaml")
    assert result.problems == []
    problems = cross_check(result.resources)
    assert [str(p) for p in problems] == warnings
    assert {p.code for p in problems} <= {"AMB0105"}


@pytest.mark.parametrize("target_port, warnings", [
    ("http", []),
    (8080, []),
    ("grpc", ["x.yaml:16: Service shop/web: spec.ports[0].targetPort: warning: no container of the 1 pod(s) it "
              "selects declares a TCP port named 'grpc': port 80 has no endpoints"]),
])
def test_a_target_port_name_no_selected_container_declares_is_a_warning(target_port, warnings):
    text = ENROLMENT % ("ambient", "ambient") + "---\napiVersion: v1\nkind: Service\n" \
        f"metadata: {{name: web, namespace: shop}}\nspec:\n  selector: {{app: web}}\n" \
        f"  ports: [{{port: 80, targetPort: {target_port}}}]\n"
    result = parse_text(text, "x.yaml")
    assert result.problems == []
    assert [str(p) for p in cross_check(result.resources)] == warnings


# ---------------------------------------------------------------- routes: filters, GRPCRoute, names


def _route(kind: str, rules: str, parents: str = "[{kind: Service, group: '', name: web, port: 80, sectionName: http}]"
           ) -> str:
    return (f"apiVersion: gateway.networking.k8s.io/v1\nkind: {kind}\nmetadata: {{name: r, namespace: shop}}\n"
            f"spec:\n  parentRefs: {parents}\n  rules:\n{rules}")


def _one_route(text: str):
    result = parse_text(text, "x.yaml")
    assert [str(p) for p in result.problems] == []
    (route,) = result.resources
    return route


def test_http_route_filters_and_names_parse():
    route = _one_route(_route("HTTPRoute", """\
  - name: first
    matches: [{path: {type: PathPrefix, value: /v1}}]
    filters:
    - {type: URLRewrite, urlRewrite: {hostname: in, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}
    - type: RequestMirror
      requestMirror: {backendRef: {name: copy, port: 80}, fraction: {numerator: 1, denominator: 8}}
    - {type: RequestMirror, requestMirror: {backendRef: {name: copy, port: 81}, percent: 5}}
    backendRefs: [{name: web, port: 80}]
  - filters:
    - type: RequestRedirect
      requestRedirect: {scheme: https, port: 443, statusCode: 301, path: {type: ReplaceFullPath, replaceFullPath: /n}}
"""))
    assert isinstance(route, r.HTTPRoute) and route.parents[0].section_name == "http"
    first, second = route.rules
    assert first.name == "first" and first.rewrite == r.URLRewrite("in", r.PathModifier("ReplacePrefixMatch", "/v2"))
    assert [(m.backend.name, m.backend.port, m.percent) for m in first.mirrors] == [("copy", 80, 12.5),
                                                                                     ("copy", 81, 5.0)]
    assert second.redirect == r.RequestRedirect("https", "", r.PathModifier("ReplaceFullPath", "/n"), 443, 301)
    assert (first.retry, second.name) == (False, "")


def test_grpc_route_parses():
    route = _one_route(_route("GRPCRoute", """\
  - matches:
    - method: {service: pkg.Svc, method: Get}
      headers: [{name: x-env, value: dev}]
    - method: {type: RegularExpression, method: 'Get.*'}
    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: a, value: b}]}}]
    backendRefs: [{name: api, port: 9090, weight: 3}]
"""))
    assert isinstance(route, r.GRPCRoute) and route.kind == "GRPCRoute"
    (rule,) = route.rules
    assert [m.grpc_method for m in rule.matches] == [r.GRPCMethodMatch("Exact", "pkg.Svc", "Get"),
                                                     r.GRPCMethodMatch("RegularExpression", "", "Get.*")]
    assert rule.matches[0].headers == (r.HeaderMatchSpec("x-env", "dev"),)
    assert rule.request_headers is not None and dict(rule.request_headers.set) == {"a": "b"}
    assert rule.backends == (r.BackendRef("api", 9090, 3),)


ROUTE_ERRORS = [
    (_route("HTTPRoute", "  - filters: [{type: CORS, cors: {}}]\n"),
     "x.yaml:7: HTTPRoute shop/r: spec.rules[0].filters[0].type: filter CORS is not supported (RequestHeaderModifier, "
     "ResponseHeaderModifier, RequestMirror, RequestRedirect, URLRewrite)"),
    (_route("HTTPRoute", "  - filters: [{type: ExtensionRef, extensionRef: {name: x}}]\n"),
     "x.yaml:7: HTTPRoute shop/r: spec.rules[0].filters[0].type: filter ExtensionRef is not supported "
     "(RequestHeaderModifier, ResponseHeaderModifier, RequestMirror, RequestRedirect, URLRewrite)"),
    (_route("GRPCRoute", "  - filters: [{type: URLRewrite, urlRewrite: {hostname: x}}]\n"),
     "x.yaml:7: GRPCRoute shop/r: spec.rules[0].filters[0].type: filter URLRewrite is not supported "
     "(RequestHeaderModifier, ResponseHeaderModifier, RequestMirror)"),
    (_route("HTTPRoute", "  - filters: [{type: RequestRedirect, requestRedirect: {statusCode: 307}}]\n"),
     "x.yaml:7: HTTPRoute shop/r: spec.rules[0].filters[0].requestRedirect.statusCode: 307 is not one of 301, 302"),
    (_route("HTTPRoute", "  - filters: [{type: RequestRedirect, requestRedirect: {hostname: x}}]\n"
                         "    backendRefs: [{name: web, port: 80}]\n"),
     "x.yaml:8: HTTPRoute shop/r: spec.rules[0].backendRefs: a rule with a RequestRedirect filter answers itself: it "
     "takes no backendRefs"),
    (_route("HTTPRoute", "  - filters:\n    - {type: RequestRedirect, requestRedirect: {hostname: x}}\n"
                         "    - {type: URLRewrite, urlRewrite: {hostname: y}}\n"),
     "x.yaml:8: HTTPRoute shop/r: spec.rules[0].filters: RequestRedirect and URLRewrite cannot both be used in one "
     "rule"),
    (_route("HTTPRoute", "  - filters:\n    - {type: URLRewrite, urlRewrite: {hostname: x}}\n"
                         "    - {type: URLRewrite, urlRewrite: {hostname: y}}\n"),
     "x.yaml:9: HTTPRoute shop/r: spec.rules[0].filters[1].type: filter URLRewrite is given twice; a rule takes it "
     "once"),
    (_route("HTTPRoute", "  - filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, "
                         "replacePrefixMatch: /b}}}]\n"),
     "x.yaml:7: HTTPRoute shop/r: spec.rules[0].filters[0].urlRewrite.path.type: ReplacePrefixMatch needs every match "
     "of the rule to be a PathPrefix path match"),
    (_route("HTTPRoute", "  - filters: [{type: URLRewrite, urlRewrite: {hostname: y}, "
                         "requestRedirect: {hostname: x}}]\n"),
     "x.yaml:7: HTTPRoute shop/r: spec.rules[0].filters[0].requestRedirect: does not belong to a filter of type "
     "URLRewrite"),
    (_route("HTTPRoute", "  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: c, port: 80}, "
                         "percent: 5, fraction: {numerator: 1}}}]\n"),
     "x.yaml:7: HTTPRoute shop/r: spec.rules[0].filters[0].requestMirror: percent and fraction are mutually "
     "exclusive"),
    (_route("HTTPRoute", "  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: c}}}]\n"),
     "x.yaml:7: HTTPRoute shop/r: spec.rules[0].filters[0].requestMirror.backendRef.port: is required"),
    (_route("HTTPRoute", "  - backendRefs: [{name: web, port: 80, filters: [{type: RequestHeaderModifier}]}]\n"),
     "x.yaml:7: HTTPRoute shop/r: spec.rules[0].backendRefs[0].filters: filters on a backendRef are not supported; "
     "put them in the rule's filters"),
    (_route("GRPCRoute", "  - matches: [{method: {type: Exact}}]\n"),
     "x.yaml:7: GRPCRoute shop/r: spec.rules[0].matches[0].method: an Exact method match needs service or method"),
    (_route("GRPCRoute", "  - matches: [{method: {type: RegularExpression, service: '('}}]\n"),
     "x.yaml:7: GRPCRoute shop/r: spec.rules[0].matches[0].method.service: '(' is not a regular expression: "
     "missing ), unterminated subpattern at position 0"),
    (_route("GRPCRoute", "  - timeouts: {request: 1s}\n"),
     "x.yaml:7: GRPCRoute shop/r: spec.rules[0].timeouts: warning: unknown field, ignored"),
]


@pytest.mark.parametrize("text, message", ROUTE_ERRORS, ids=[_case_id(m) for _, m in ROUTE_ERRORS])
def test_route_errors_name_the_field(text, message):
    result = parse_text(text, "x.yaml")
    assert [str(p) for p in result.problems] == [message]
    assert result.resources == ([] if "warning:" not in message else result.resources)
