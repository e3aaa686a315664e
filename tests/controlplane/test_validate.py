"""``ambient validate``: stable analyzer-style codes per finding, the text and ``-o json`` forms."""

import json
import re
import subprocess
import sys
from pathlib import Path

from controlplane.validate import validate
from mesh.source import Code

README = Path(__file__).resolve().parents[2] / "README.md"

FINDINGS = """\
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {istio.io/dataplane-mode: Ambient, istio.io/use-waypoint: missing}
---
apiVersion: v1
kind: Secret
metadata: {name: settings, namespace: shop}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit, namespace: shop}
spec: {action: AUDIT, selector: {matchLabels: {app: nothing}}, colour: blue}
"""


def run_validate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ambient", "validate", *args], capture_output=True, text=True)


def test_each_finding_carries_its_stable_code(tmp_path):
    (tmp_path / "a.yaml").write_text(FINDINGS)
    (tmp_path / "b.yaml").write_text("kind: [\n")
    out = run_validate(str(tmp_path))
    assert out.returncode == 1
    codes = [line.rsplit(" ", 1)[1] for line in out.stdout.splitlines()]
    assert sorted(codes) == ["[AMB0001]", "[AMB0003]", "[AMB0005]", "[AMB0006]", "[AMB0008]", "[AMB0101]",
                             "[AMB0102]", "[AMB0105]"]
    assert f"{tmp_path}/a.yaml:1: Namespace shop: metadata.labels[istio.io/use-waypoint]: no waypoint Gateway " \
           "shop/missing (class istio-waypoint) [AMB0101]" in out.stdout.splitlines()


def test_json_output(tmp_path):
    (tmp_path / "a.yaml").write_text(FINDINGS)
    out = run_validate("-o", "json", str(tmp_path))
    assert out.returncode == 1, out.stderr
    document = json.loads(out.stdout)
    assert (document["resources"], document["errors"], document["warnings"]) == (2, 1, 6)
    by_code = {f["code"]: f for f in document["findings"]}
    assert by_code["AMB0102"] == {
        "code": "AMB0102", "severity": "warning", "file": f"{tmp_path}/a.yaml", "line": 15,
        "resource": "AuthorizationPolicy shop/audit", "field": "spec.selector.matchLabels", "message": "matches no pod"}
    assert by_code["AMB0101"]["severity"] == "error"
    assert by_code["AMB0003"]["field"] == "spec.colour"


def test_a_clean_directory_gives_an_empty_json_document(tmp_path):
    (tmp_path / "ns.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n")
    out = run_validate("-o", "json", str(tmp_path))
    assert out.returncode == 0
    assert json.loads(out.stdout) == {"resources": 1, "errors": 0, "warnings": 0, "findings": []}


def test_readme_documents_every_code_once():
    table = re.findall(r"^\| (AMB\d{4}) \|", README.read_text(), re.MULTILINE)
    codes = [value for name, value in vars(Code).items() if name.isupper()]
    assert sorted(table) == sorted(codes)
    assert len(set(codes)) == len(codes)


def test_problems_found_in_code_have_codes(tmp_path):
    (tmp_path / "a.yaml").write_text(FINDINGS)
    _, problems = validate([tmp_path])
    assert all(re.fullmatch(r"AMB\d{4}", p.code) for p in problems)


WAYPOINTS = """\
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: istio-waypoint, labels: {istio.io/waypoint-for: workload}}
spec: {controllerName: istio.io/mesh-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: private, namespace: infra}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: shared, namespace: infra, labels: {istio.io/waypoint-for: service}}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
    allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {mesh: shared}}}}
---
apiVersion: v1
kind: Namespace
metadata: {name: infra}
"""


def _findings(tmp_path, extra: str) -> list[tuple[str, str, str]]:
    (tmp_path / "a.yaml").write_text(WAYPOINTS + "---\n" + extra)
    _, problems = validate([tmp_path])
    # These tables are about the waypoints' users; the two waypoints also warn when nobody uses them
    # (AMB0110, tested in test_waypoint_config).
    return [(p.code, p.resource, p.message) for p in problems if p.code != Code.WAYPOINT_UNUSED]


def test_a_waypoint_that_refuses_the_namespace_is_an_error(tmp_path):
    found = _findings(tmp_path, """\
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {istio.io/use-waypoint: private, istio.io/use-waypoint-namespace: infra}
""")
    assert [(c, res) for c, res, _ in found] == [(Code.WAYPOINT_NOT_ADMITTED, "Namespace shop")]
    assert "does not admit namespace shop" in found[0][2] and "from is Same" in found[0][2]


def test_a_selector_that_admits_the_namespace_is_clean(tmp_path):
    assert _findings(tmp_path, """\
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {mesh: shared, istio.io/use-waypoint: shared, istio.io/use-waypoint-namespace: infra}
""") == []


def test_a_waypoint_for_other_traffic_is_a_warning(tmp_path):
    # "private" inherits waypoint-for: workload from its GatewayClass; a Service cannot use it.
    found = _findings(tmp_path, """\
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: infra
  labels: {istio.io/use-waypoint: private}
spec: {ports: [{port: 80}]}
""")
    assert [c for c, _, _ in found] == [Code.WAYPOINT_TRAFFIC_TYPE]
    assert "is for 'workload' traffic" in found[0][2]


def test_ingress_use_waypoint_is_recognised_and_said_to_have_no_effect(tmp_path):
    found = _findings(tmp_path, """\
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: infra
  labels: {istio.io/ingress-use-waypoint: "true"}
spec: {ports: [{port: 80}]}
""")
    assert [(c, res) for c, res, _ in found] == [(Code.INGRESS_ONLY, "Service infra/web")]
    assert "no ingress gateway" in found[0][2]


def test_a_file_over_the_size_bound_is_refused_unread(tmp_path):
    from mesh.source import MAX_FILE_BYTES

    big = tmp_path / "big.yaml"
    with open(big, "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: nothing is written, and nothing should be read
    _, problems = validate([tmp_path])
    assert [(p.code, p.file) for p in problems] == [(Code.YAML, str(big))]
    assert "larger than" in problems[0].message
