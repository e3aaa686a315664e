"""Parsing manifests: good files give frozen resources; each broken one gives its exact message."""

import re
import subprocess
import sys

import pytest

from mesh.parse import parse_text
from mesh.validate import cross_check

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
    assert result.resources[7].plugin_config == {"header": "x-mesh"}


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
    ("apiVersion: v2\nkind: Pod\nmetadata: {name: a}\n", "x.yaml:1: apiVersion: v2 is not an apiVersion of Pod (expected v1)"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: Bad_Name}\nspec: {containers: []}\n",
     "x.yaml:3: metadata.name: name 'Bad_Name' is not a valid Kubernetes name"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n", "x.yaml:1: Pod default/a: spec: is required"),
    ("apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n  labels: {enabled: true}\nspec: {containers: []}\n",
     'x.yaml:5: Pod default/a: metadata.labels.enabled: expected a string, got a boolean (true); quote it: "true"'),
    ("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  ports:\n  - {port: 80}\n  - {port: 70000, name: b}\n",
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
     "x.yaml:6: Gateway default/w: spec.listeners: a waypoint needs the listener {name: mesh, port: 15008, protocol: HBONE}"),
    ("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n"
     "  parentRefs: [{kind: Service, name: s}]\n  rules:\n  - timeouts: {request: 10 seconds}\n",
     "x.yaml:7: HTTPRoute default/r: spec.rules[0].timeouts.request: '10 seconds' is not a duration like 10s, 500ms or 1m30s"),
    ("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  action: CUSTOM\n",
     "x.yaml:5: AuthorizationPolicy default/p: spec.action: CUSTOM (external authorization) is not supported"),
    ("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  rules:\n"
     "  - from: [{source: {ipBlocks: [10.0.0.0/33]}}]\n",
     "x.yaml:6: AuthorizationPolicy default/p: spec.rules[0].from[0].source.ipBlocks[0]: '10.0.0.0/33' is not an IP "
     "address or CIDR block"),
    ("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec:\n  mtls: {mode: STRICTER}\n",
     "x.yaml:5: PeerAuthentication default/p: spec.mtls.mode: 'STRICTER' is not one of UNSET, DISABLE, PERMISSIVE, STRICT"),
    ("apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: w}\nspec:\n"
     "  url: oci://ghcr.io/x/y:1\n  targetRefs: [{kind: Gateway, name: w}]\n",
     "x.yaml:5: WasmPlugin default/w: spec.url: 'oci://ghcr.io/x/y:1': only file://, http:// and https:// URLs can be "
     "fetched here (no OCI registry)"),
    ("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  name: b\n",
     "x.yaml:5: metadata.name: duplicate key"),
    (AP + "  - when: [{key: source.ip, values: [x]}]\n",
     "x.yaml:6: AuthorizationPolicy default/p: spec.rules[0].when[0].values[0]: 'x' is not an IP address or CIDR block"),
    (AP + "  - when:\n    - key: destination.ip\n      notValues:\n      - 10.0.0.1\n      - 10.0.0.0/33\n",
     "x.yaml:10: AuthorizationPolicy default/p: spec.rules[0].when[0].notValues[1]: '10.0.0.0/33' is not an IP "
     "address or CIDR block"),
    (AP + "  - when: [{key: remote.ip, values: ['']}]\n",
     "x.yaml:6: AuthorizationPolicy default/p: spec.rules[0].when[0].values[0]: '' is not an IP address or CIDR block"),
    (AP + "  - when: [{key: destination.port, values: [http]}]\n",
     "x.yaml:6: AuthorizationPolicy default/p: spec.rules[0].when[0].values[0]: 'http' is not a port number"),
    (AP + "  - when: [{key: destination.port, notValues: ['80', '70000']}]\n",
     "x.yaml:6: AuthorizationPolicy default/p: spec.rules[0].when[0].notValues[1]: 70000 is not a port number (1-65535)"),
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
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n",
         "x.yaml:2: kind: warning: kind ConfigMap (v1) is not used by the mesh; skipped"),
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
        "x.yaml:10: HTTPRoute shop/r: spec.parentRefs[0]: no Service shop/gone",
        "x.yaml:15: AuthorizationPolicy shop/get-only: spec.rules[0].to[0].operation: warning: L7 fields methods, "
        "paths are enforced by a waypoint only; this ALLOW rule can never match at L4, so it denies (attach the "
        "policy to a waypoint with targetRefs)",
    ]


WAYPOINT_ONLY = "(attach the policy to a waypoint with targetRefs)"
ALLOW_DENIES = f"this ALLOW rule can never match at L4, so it denies {WAYPOINT_ONLY}"
DENY_MORE = "ztunnel enforces this DENY rule at L4 without {}, denying more than written"


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
                 ["spec.rules[0].to[0].operation: warning: L7 fields methods are enforced by a waypoint only; this "
                  f"alternative can never match at L4, so the rule matches only through the others {WAYPOINT_ONLY}"],
                 id="allow-alternative-beside-l4-ones"),
    pytest.param("action: DENY\n  rules: [{to: [{operation: {notMethods: [GET], hosts: [a]}}]}]",
                 ["spec.rules[0].to[0].operation: warning: L7 fields hosts, notMethods are enforced by a waypoint only; "
                  + DENY_MORE.format("them")], id="deny-operation"),
    pytest.param("action: DENY\n  rules: [{when: [{key: 'request.auth.claims[iss]', values: [me]}]}]",
                 ["spec.rules[0].when[0]: warning: L7 condition request.auth.claims[iss] is enforced by a waypoint "
                  "only; " + DENY_MORE.format("it")], id="deny-condition"),
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
    ok = subprocess.run([sys.executable, "-m", "mesh", "validate", str(tmp_path)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "8 resources, 0 errors, 0 warnings" in ok.stderr
    (tmp_path / "policy.yaml").write_text(POLICY)
    bad = subprocess.run([sys.executable, "-m", "mesh", "validate", str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode == 1
    assert f"{tmp_path}/policy.yaml:12: AuthorizationPolicy default/deny-all: " in bad.stdout
